//! The real `BasicAgent` daemon against the real `BasicAgentServer` on
//! loopback, with certificates made here by rcgen and a private hosts file
//! (the `hosts_file` key). Needs the whole workspace built (`scripts/test.sh`)
//! and root for the identity checks of sync.bash.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use basicagent_testsupport::*;
use serde_json::Value;

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn lands_on_the_second_hosts_line_and_serves_every_request_on_one_connection() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    // 127.0.0.1:port has nothing listening: refused, next line.
    let agent = Agent::start(&pki, port, &["127.0.0.1", "127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    assert!(is_uuid(&host), "init carries a UUID host id: {host}");
    let init = &server.inits()[0];
    assert_eq!(init["listen"], server.listen.to_string());
    let plugins: Vec<&str> = init["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        plugins.contains(&"getinfo.kernel") && plugins.contains(&"sync.bash"),
        "{plugins:?}"
    );
    assert!(
        agent.log().contains("127.0.0.1"),
        "the first address was tried:\n{}",
        agent.log()
    );

    let ping = server.call(&host, r#"{"id":"p1","method":"ping"}"#);
    assert_eq!(ping["id"], "p1");
    assert_eq!(ping["retcode"], 2);

    let kernel = server.call(&host, r#"{"method":"getinfo.kernel"}"#);
    assert_eq!(kernel["resp"], "success");
    let uname_r =
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    assert_eq!(kernel["data"]["release"], uname_r.trim());

    let bash = server.call(
        &host,
        r#"{"method":"sync.bash","cmd":"echo hi; echo oops >&2; exit 3"}"#,
    );
    assert_eq!(bash["resp"], "success", "{bash}");
    assert_eq!(bash["data"]["stdout"], "hi\n");
    assert_eq!(bash["data"]["stderr"], "oops\n");
    assert_eq!(bash["data"]["exitcode"], 3);

    let bad = server.call(&host, r#"{"method":"sync.bash","cmd":"true","timeout":0}"#);
    assert_eq!(bad["retcode"], 3021, "{bad}");
    let unknown = server.call(&host, r#"{"method":"getinfo.nosuch"}"#);
    assert_eq!(unknown["retcode"], 3022, "{unknown}");
    for path_like in [
        r#"{"method":"../../etc/passwd"}"#,
        r#"{"method":"getinfo./tmp/x"}"#,
        r#"{"method":"getinfo.Users"}"#,
    ] {
        let v = server.call(&host, path_like);
        assert_eq!(v["retcode"], 3022, "{v}");
    }
    let users = server.call(&host, r#"{"method":"getinfo.users","args":"-U root"}"#);
    assert_eq!(users["data"]["users"][0]["uid"], 0, "{users}");

    // Garbage, an array, a request without method: 3020, the id echoed when readable.
    let answer = server.send(&host, b"this is not json\n");
    let v: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["retcode"], 3020);
    let answer = server.send(&host, b"[1,2,3]\n");
    assert!(answer.contains("3020"), "{answer}");
    let answer = server.send(&host, b"{\"params\":1}\n");
    assert!(
        answer.contains("3020") && answer.contains("method"),
        "{answer}"
    );
    // Invalid UTF-8 and an oversized frame (the agent's max_frame is 16 MiB).
    let answer = server.send(&host, b"\xff\xfe{\"method\":\"ping\"}\n");
    assert!(answer.contains("3020"), "{answer}");
    let mut big = vec![b'x'; 17 << 20];
    big.push(b'\n');
    let answer = server.send(&host, &big);
    assert!(
        answer.contains("3020") && answer.contains("longer than"),
        "{answer}"
    );

    // Still the same single connection, still serving.
    let again = server.call(&host, r#"{"method":"ping"}"#);
    assert_eq!(again["retcode"], 2);
    assert_eq!(
        server.inits().len(),
        1,
        "one connection throughout: {:?}",
        server.events()
    );
    drop(agent);
}

#[test]
fn a_slow_command_does_not_delay_a_fast_request() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    // The hosts file only (server.dns = false).
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "dns = false", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let slow = {
        let admin = server.admin.clone();
        let host = host.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let out = Command::new(server_bin())
                .arg("call")
                .arg("--admin")
                .arg(admin)
                .args([
                    "--host",
                    &host,
                    r#"{"method":"sync.bash","cmd":"sleep 3; echo slow"}"#,
                ])
                .output()
                .unwrap();
            (
                start.elapsed(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let fast = server.call(&host, r#"{"method":"getinfo.kernel"}"#);
    let fast_took = start.elapsed();
    assert_eq!(fast["retcode"], 2);
    let (slow_took, slow_out) = slow.join().unwrap();
    assert!(slow_out.contains("slow"), "{slow_out}");
    assert!(slow_took >= Duration::from_secs(3));
    // Ordering, not speed: the fast answer came while the slow one ran.
    assert!(
        fast_took < Duration::from_millis(2500),
        "getinfo.kernel waited for the sleep: {fast_took:?}"
    );
}

#[test]
fn a_redirect_is_followed_to_the_next_live_address_with_the_same_host_id() {
    let pki = Pki::new();
    let port = free_port();
    let target = Server::serve(&pki, &format!("127.0.0.3:{port}"), "server", &[]);
    let list = format!("127.0.0.9:{port},127.0.0.3:{port}");
    let front = Server::serve(
        &pki,
        &format!("127.0.0.2:{port}"),
        "server",
        &["--redirect", &list],
    );
    let _agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = target.wait_agent(Duration::from_secs(15));
    let redirects: Vec<Value> = front
        .events()
        .into_iter()
        .filter(|e| e["event"] == "redirect")
        .collect();
    assert_eq!(redirects.len(), 1, "{:?}", front.events());
    assert_eq!(
        redirects[0]["host"], host,
        "the same host id at both servers"
    );
    let v = target.call(&host, r#"{"method":"ping"}"#);
    assert_eq!(v["retcode"], 2);
}

#[test]
fn a_redirect_loop_stops_after_max_redirects_and_backs_off() {
    let pki = Pki::new();
    let port = free_port();
    let me = format!("127.0.0.2:{port}");
    let server = Server::serve(&pki, &me, "server", &["--redirect", &me]);
    let agent = Agent::start(&pki, port, &["127.0.0.2"], "max_redirects = 2", "", &["-f"]);
    // 1 first init + 2 redirects followed = 3 inits, each answered with a
    // redirect; then a backoff of at least half a second.
    let redirects = || {
        server
            .events()
            .iter()
            .filter(|e| e["event"] == "redirect")
            .count()
    };
    wait_for("three redirects", Duration::from_secs(15), || {
        (redirects() >= 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(redirects(), 3, "the loop stops: {:?}", server.events());
    wait_for(
        &format!("the backoff log line in {}", agent.log()),
        Duration::from_secs(5),
        || agent.log().contains("exceeds max_redirects").then_some(()),
    );
}

#[test]
fn a_server_with_a_bad_certificate_never_receives_init() {
    let pki = Pki::new();
    let port = free_port();
    let other_ca = Server::serve(&pki, &format!("127.0.0.4:{port}"), "otherca", &[]);
    let wrong_name = Server::serve(&pki, &format!("127.0.0.5:{port}"), "wrongname", &[]);
    let good = Server::serve(&pki, &format!("127.0.0.6:{port}"), "server", &[]);
    let agent = Agent::start(
        &pki,
        port,
        &["127.0.0.4", "127.0.0.5", "127.0.0.6"],
        "",
        "",
        &["-f"],
    );
    good.wait_agent(Duration::from_secs(15));
    for bad in [&other_ca, &wrong_name] {
        let events = bad.events();
        assert!(
            events.iter().any(|e| e["event"] == "tls_handshake_failed"),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| e["event"] == "init"),
            "init leaked to a bad server: {events:?}"
        );
    }
    let log = agent.log();
    assert!(
        log.contains("127.0.0.4") && log.contains("127.0.0.5"),
        "{log}"
    );
}

#[test]
fn mutual_tls_works_when_the_server_requires_a_client_certificate() {
    let pki = Pki::new();
    let port = free_port();
    let ca = pki.path("ca.pem");
    let server = Server::serve(
        &pki,
        &format!("127.0.0.2:{port}"),
        "server",
        &["--client-ca", ca.to_str().unwrap()],
    );
    // Without a client certificate: refused, never registered.
    let without = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    wait_for("a refused handshake", Duration::from_secs(15), || {
        server
            .events()
            .iter()
            .any(|e| e["event"] == "tls_handshake_failed")
            .then_some(())
    });
    assert!(server.inits().is_empty());
    drop(without);
    let client = format!(
        "cert = \"{}\"\nkey = \"{}\"",
        pki.path("host-client.pem").display(),
        pki.path("host-client.key").display()
    );
    // Its host id is the one its certificate is issued for (the server checks).
    let id = format!("host_id = \"{}\"", CLIENT_HOST_ID);
    let _with = Agent::start(&pki, port, &["127.0.0.2"], &client, &id, &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    assert_eq!(host, CLIENT_HOST_ID);
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
}

#[test]
fn the_agent_comes_back_after_the_server_restarts() {
    let pki = Pki::new();
    let port = free_port();
    let listen = format!("127.0.0.2:{port}");
    let server = Server::serve(&pki, &listen, "server", &[]);
    let agent = Agent::start(&pki, port, &["127.0.0.1", "127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::serve(&pki, &listen, "server", &[]);
    // First backoff steps are 1, 2, 4 s (with jitter): back well within 10 s.
    let again = server.wait_agent(Duration::from_secs(10));
    assert_eq!(again, host);
    assert!(
        agent.log().contains("lost") || agent.log().contains("closed"),
        "{}",
        agent.log()
    );
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
}

#[test]
fn pid_file_second_instance_sigterm_and_sighup() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    // In the foreground: a detached first daemon would survive the SIGTERM
    // sent to its starter and then fight the restart for the host id.
    let mut agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let pid_file = agent.path("agent.pid");
    // Restart it with the pid file (the first start had none).
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(5));
    agent.spawn(&["-f", "-P", pid_file.to_str().unwrap()]);
    let host = server.wait_agent(Duration::from_secs(15));
    let pid: i32 = wait_for("the pid file", Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    });
    assert_eq!(pid, agent.pid());

    // A second instance with the same pid file exits at once, non-zero.
    let second = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .arg("-c")
        .arg(agent.path("agent.toml"))
        .args(["-f", "-P", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(second.status.code(), Some(0));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&pid.to_string()),
        "names the running pid: {err}"
    );
    // Also when detaching (no -f): the starter reports the failure.
    let detached = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .arg("-c")
        .arg(agent.path("agent.toml"))
        .args(["-P", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(
        detached.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );

    // SIGHUP: the log is reopened (logrotate's create mode).
    let rotated = agent.path("agent.log.1");
    std::fs::rename(agent.path("agent.log"), &rotated).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for("a fresh log file", Duration::from_secs(5), || {
        agent.path("agent.log").exists().then_some(())
    });
    assert_eq!(
        server.call(&host, r#"{"method":"ping"}"#)["retcode"],
        2,
        "still serving after SIGHUP"
    );
    wait_for("lines in the fresh log", Duration::from_secs(5), || {
        (!agent.log().is_empty()).then_some(())
    });

    // SIGHUP with a broken configuration: logged, the running one kept.
    let config = agent.path("agent.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[server]\nbogus = 1\n")).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for(
        "the refused reload in the log",
        Duration::from_secs(5),
        || {
            agent
                .log()
                .contains("keeping the running configuration")
                .then_some(())
        },
    );
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    std::fs::write(&config, good).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for(
        "the accepted reload in the log",
        Duration::from_secs(5),
        || agent.log().contains("configuration reloaded").then_some(()),
    );

    // SIGTERM: clean exit within 2 s, pid file removed, TLS closed.
    let start = Instant::now();
    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(5));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        start.elapsed()
    );
    assert_eq!(code, Some(0));
    assert!(!pid_file.exists(), "pid file removed");
    wait_for(
        "the server to see the disconnect",
        Duration::from_secs(5),
        || {
            server
                .events()
                .iter()
                .any(|e| e["event"] == "disconnect")
                .then_some(())
        },
    );
}

#[test]
fn sigterm_stops_a_running_command_and_leaves_nothing_behind() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.0.2:{port}"), "server", &[]);
    let mut agent = Agent::start(&pki, port, &["127.0.0.2"], "", "", &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let admin = server.admin.clone();
    // A duration of this test run's own (GNU sleep takes fractions), matched
    // as the whole command line: neither the `call` client (whose argv holds
    // the request) nor another run's sleep can match.
    let seconds = format!("1077.{}", std::process::id());
    let pattern = format!("^sleep {}$", seconds.replace('.', "\\."));
    let request = format!(r#"{{"method":"sync.bash","cmd":"sleep {seconds}"}}"#);
    let call = std::thread::spawn(move || {
        Command::new(server_bin())
            .arg("call")
            .arg("--admin")
            .arg(admin)
            .args(["--host", &host, &request])
            .output()
            .unwrap()
    });
    wait_for("the command to run", Duration::from_secs(10), || {
        pgrep(&pattern).then_some(())
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!pgrep(&pattern), "the command was stopped");
    let out = call.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3028"),
        "the server got the cancellation: {text}"
    );
}

#[test]
fn a_bad_configuration_or_certificate_fails_at_start_with_a_clear_message() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| -> Output {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
            .arg("-c")
            .arg(&path)
            .arg("-f")
            .output()
            .unwrap()
    };
    let cases: Vec<(String, &str)> = vec![
        ("[server]\nprot = 1\n".to_owned(), "prot"),
        ("[server]\nport = \"x\"\n".to_owned(), "port"),
        (
            format!(
                "[server]\nca = \"{}\"\n",
                dir.path().join("missing.pem").display()
            ),
            "missing.pem",
        ),
        (
            format!("[server]\nca = \"{}\"\n", pki.path("server.key").display()),
            "server.key",
        ),
        (
            format!(
                "[server]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.path("ca.pem").display(),
                pki.path("host-client.pem").display(),
                pki.path("server.key").display()
            ),
            "client",
        ),
    ];
    for (config, needle) in cases {
        let out = run(&config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{config}: {err}");
        assert!(
            err.contains(needle),
            "{config}: message names {needle}: {err}"
        );
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .args(["-c", "/nonexistent/agent.toml", "-f"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/agent.toml"));
}
