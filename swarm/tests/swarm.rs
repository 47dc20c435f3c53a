//! The real BasicAgentSwarm against the real BasicAgentServer on loopback: sessions, fan-out answers, refusals by reason, redirects, heartbeats, hostile frames, limits.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};

use common::{start_server, Pki, Swarm};
use serde_json::Value;

#[test]
fn fifty_sessions_come_up_and_answer_a_fan_out() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 50, &["--concurrency", "8"]);
    swarm.wait("50 sessions up", |s| s["up"] == 50);

    let agents = server.admin_lines(&["list"]);
    assert_eq!(agents.len(), 50, "{agents:?}");
    let hosts: HashSet<&str> = agents.iter().map(|a| a["host"].as_str().unwrap()).collect();
    let names: HashSet<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!((hosts.len(), names.len()), (50, 50));
    assert!(
        names.contains("swarm-00001") && names.contains("swarm-00050"),
        "{names:?}"
    );
    // Sessions come from the four source addresses of the range.
    let peers: HashSet<String> = agents
        .iter()
        .map(|a| {
            a["peer"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .0
                .to_owned()
        })
        .collect();
    assert_eq!(peers.len(), 4, "{peers:?}");
    assert!(agents[0]["plugins"]
        .as_array()
        .unwrap()
        .contains(&Value::from("sync.bash")));

    let answers = server.admin_lines(&[
        "call",
        "--all",
        "--timeout",
        "30",
        r#"{"method":"getinfo.kernel"}"#,
    ]);
    assert_eq!(answers.len(), 50, "{answers:?}");
    for a in &answers {
        assert_eq!(a["retcode"], 2, "{a}");
        assert_eq!(a["data"]["sysname"], "Linux", "{a}");
        assert!(
            a["data"]["nodename"]
                .as_str()
                .unwrap()
                .starts_with("swarm-"),
            "{a}"
        );
    }
    let one = agents[0]["host"].as_str().unwrap();
    let bash = server.admin_lines(&[
        "call",
        "--host",
        one,
        r#"{"method":"sync.bash","cmd":"true"}"#,
    ]);
    assert_eq!(bash[0]["data"]["exitcode"], 0, "{bash:?}");
    let info = server.admin_lines(&["call", "--host", one, r#"{"method":"agent.info"}"#]);
    assert_eq!(info[0]["data"]["host_id"], one, "{info:?}");
    let unknown = server.admin_lines(&["call", "--host", one, r#"{"method":"getinfo.users"}"#]);
    assert_eq!(unknown[0]["retcode"], 3022, "{unknown:?}");

    let report = swarm.stop();
    assert_eq!(report["peak_up"], 50, "{report}");
    assert_eq!(report["refused_total"], 0, "{report}");
    assert_eq!(report["answered"]["getinfo.kernel"], 50, "{report}");
    assert_eq!(report["answered"]["sync.bash"], 1, "{report}");
    assert_eq!(report["answered"]["agent.info"], 1, "{report}");
    assert_eq!(report["answered"]["unknown"], 1, "{report}");
    assert_eq!(report["latency"]["count"], 53, "{report}");
    assert!(
        report["latency"]["p99_us"].as_u64().unwrap()
            >= report["latency"]["p50_us"].as_u64().unwrap()
    );
    assert!(
        report["rss_per_session_bytes"].as_u64().is_some(),
        "{report}"
    );
    assert_eq!(report["threads"], 1, "one thread by default: {report}");
    assert!(report["ramp_seconds"].as_f64().is_some(), "{report}");
    // The sessions ended with the swarm: the server lists nobody.
    common::wait_for("the server to see the swarm go", || {
        server.admin_lines(&["list"]).is_empty().then_some(())
    });
}

#[test]
fn a_rejected_init_is_counted_as_refused() {
    let pki = Pki::new();
    let server = start_server(&pki, &["--reject", "swarm test: go away"]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 3, &[]);
    // Without --retry each agent tries once; the swarm ends by itself.
    let report = swarm.finish();
    assert_eq!(report["refused"]["init_rejected"], 3, "{report}");
    assert_eq!(report["refused_total"], 3, "{report}");
    assert_eq!(report["peak_up"], 0, "{report}");
    assert!(
        report["refused_first"]["init_rejected"]
            .as_str()
            .unwrap()
            .contains("swarm test: go away"),
        "{report}"
    );
}

#[test]
fn retry_backs_off_and_tries_again() {
    let pki = Pki::new();
    let server = start_server(&pki, &["--reject", "full"]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 2, &["--retry"]);
    // The first retry comes after 0.5..1 s of backoff.
    swarm.wait("a second round of refusals", |s| {
        s["refused"]["init_rejected"].as_u64() >= Some(4)
    });
    let report = swarm.stop();
    assert_eq!(report["peak_up"], 0, "{report}");
}

/// async.bash: a task id at once, `task.done` later, kept until acked and
/// pushed again on the next session; a lost session goes through the
/// server list (here to the second server) and its re-home is timed.
#[test]
fn async_tasks_are_pushed_until_acked_across_a_server_loss() {
    let pki = Pki::new();
    let mut first = start_server(&pki, &["--no-auto-ack"]);
    let second = start_server(&pki, &[]);
    let servers = format!("{},{}", first.listen, second.listen);
    let mut swarm = Swarm::start_list(
        &pki,
        &servers,
        "ca.pem",
        3,
        &[
            "--retry",
            "--plugins",
            "getinfo.kernel,async.bash",
            "--task-ms",
            "50",
        ],
    );
    swarm.wait("3 sessions up", |s| s["up"] == 3);
    assert_eq!(
        first.admin_lines(&["list"]).len(),
        3,
        "the first server of the list"
    );
    let answers = first.admin_lines(&[
        "call",
        "--all",
        "--timeout",
        "30",
        r#"{"method":"async.bash","cmd":"true"}"#,
    ]);
    assert_eq!(answers.len(), 3, "{answers:?}");
    for a in &answers {
        assert_eq!(a["retcode"], 2, "{a}");
        assert!(
            a["data"]["task"].as_str().is_some_and(|t| t.len() == 36),
            "{a}"
        );
    }
    // Pushed to the first server, which does not acknowledge.
    swarm.wait("3 task.done pushed", |s| s["tasks_pushed"] == 3);
    assert_eq!(swarm.status()["tasks_acked"], 0);
    let _ = first.child.kill();
    let _ = first.child.wait();
    // Lost, re-homed on the second server, pushed again, acked there.
    let s = swarm.wait("tasks acked on the second server", |s| {
        s["tasks_acked"] == 3
    });
    assert_eq!(s["rehome"]["count"], 3, "{s}");
    assert!(s["tasks_pushed"].as_u64() >= Some(6), "{s}");
    let stored = second.admin_lines(&["tasks"]);
    let ids: HashSet<&str> = answers
        .iter()
        .map(|a| a["data"]["task"].as_str().unwrap())
        .collect();
    let got: HashSet<&str> = stored.iter().filter_map(|t| t["task"].as_str()).collect();
    assert_eq!(ids, got, "{stored:?}");
    let report = swarm.stop();
    assert_eq!(report["tasks"], 3, "{report}");
}

#[test]
fn a_redirect_is_followed() {
    let pki = Pki::new();
    let target = start_server(&pki, &[]);
    let front = start_server(&pki, &["--redirect", &target.listen.to_string()]);
    let mut swarm = Swarm::start(&pki, front.listen, "ca.pem", 5, &[]);
    swarm.wait("5 sessions up on the target", |s| s["up"] == 5);
    assert_eq!(target.admin_lines(&["list"]).len(), 5);
    assert!(front.admin_lines(&["list"]).is_empty());
    let report = swarm.stop();
    assert_eq!(report["redirects"], 5, "{report}");
    assert_eq!(report["refused_total"], 0, "{report}");
    let redirected = front
        .events()
        .iter()
        .filter(|e| e["event"] == "redirect")
        .count();
    assert_eq!(redirected, 5);
}

#[test]
fn a_redirect_loop_is_refused_after_the_limit() {
    let pki = Pki::new();
    // A server that redirects to itself.
    let ip = common::server_ip();
    let probe = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let api: Vec<String> = if common::server_has_api() {
        vec!["--api".into(), format!("{ip}:0")]
    } else {
        Vec::new()
    };
    let mut child = Command::new(common::server_bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--redirect",
            &addr.to_string(),
        ])
        .args(&api)
        .arg("--cert")
        .arg(pki.path("server.pem"))
        .arg("--key")
        .arg(pki.path("server.key"))
        .arg("--admin")
        .arg(dir.path().join("admin.sock"))
        .arg("--events")
        .arg(&events)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for("listening", || {
        common::json_lines(&events)
            .iter()
            .any(|e| e["event"] == "listening")
            .then_some(())
    });
    let mut swarm = Swarm::start(&pki, addr, "ca.pem", 1, &["--max-redirects", "2"]);
    let report = swarm.finish();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(report["refused"]["redirect"], 1, "{report}");
    assert_eq!(report["redirects"], 2, "{report}");
}

#[test]
fn a_bad_ca_is_a_tls_refusal() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let mut swarm = Swarm::start(&pki, server.listen, "other-ca.pem", 4, &[]);
    let report = swarm.finish();
    assert_eq!(report["refused"]["tls"], 4, "{report}");
    assert_eq!(report["peak_up"], 0, "{report}");
    assert!(server.admin_lines(&["list"]).is_empty());
    let first = report["refused_first"]["tls"].as_str().unwrap();
    assert!(
        first.contains("UnknownIssuer") || first.contains("certificate"),
        "{first}"
    );
}

#[test]
fn a_wrong_server_name_is_a_tls_refusal() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let mut swarm = Swarm::start(
        &pki,
        server.listen,
        "ca.pem",
        2,
        &["--name", "other.example"],
    );
    let report = swarm.finish();
    assert_eq!(report["refused"]["tls"], 2, "{report}");
}

#[test]
fn mutual_tls_with_per_agent_certificates() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let server = start_server(&pki, &["--client-ca", ca.to_str().unwrap()]);
    let certs = tempfile::tempdir().unwrap();
    let ids = common::host_ids(&["--agents", "3", "--seed", "mtls"]);
    assert_eq!(ids.len(), 3);
    pki.agent_certs(certs.path(), &ids);
    let mut good = Swarm::start(
        &pki,
        server.listen,
        "ca.pem",
        3,
        &[
            "--seed",
            "mtls",
            "--cert-dir",
            certs.path().to_str().unwrap(),
        ],
    );
    good.wait("3 sessions up with their own certificates", |s| {
        s["up"] == 3
    });
    let listed: HashSet<String> = server
        .admin_lines(&["list"])
        .iter()
        .map(|a| a["host"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect::<HashSet<_>>());

    // No client certificate: the handshake fails.
    let mut bare = Swarm::start(&pki, server.listen, "ca.pem", 2, &["--seed", "nocert"]);
    let report = bare.finish();
    assert_eq!(report["refused"]["tls"], 2, "{report}");

    // An agent whose certificate file is missing is refused before
    // connecting (agents 1-3 have files and come up until the duration).
    let mut missing = Swarm::start(
        &pki,
        server.listen,
        "ca.pem",
        4,
        &[
            "--seed",
            "mtls",
            "--cert-dir",
            certs.path().to_str().unwrap(),
            "--duration",
            "2",
        ],
    );
    let report = missing.finish();
    assert_eq!(report["refused"]["tls"], 1, "agent 4 has no file: {report}");
    assert!(report["refused_first"]["tls"]
        .as_str()
        .unwrap()
        .contains(&format!(
            "agent-{}",
            common::host_ids(&["--first", "4", "--seed", "mtls"])[0]
        )));

    // The first agent's files missing: the swarm stops at start, naming the file.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(common::swarm_bin())
        .args([
            "--server",
            &server.listen.to_string(),
            "--ca",
            ca.to_str().unwrap(),
        ])
        .args(["--cert-dir", empty.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent-"));
    assert_eq!(good.stop()["peak_up"], 3);
}

#[test]
fn a_shared_client_certificate_works_where_host_ids_are_not_bound() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let server = start_server(&pki, &["--client-ca", ca.to_str().unwrap()]);
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let mut swarm = Swarm::start(
        &pki,
        server.listen,
        "ca.pem",
        2,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    if common::server_has_api() {
        // This server binds host ids to certificates: one certificate for
        // "agent" cannot claim these host ids.
        let report = swarm.finish();
        assert_eq!(report["peak_up"], 0, "{report}");
        assert_eq!(report["refused_total"], 2, "{report}");
    } else {
        swarm.wait("2 sessions up", |s| s["up"] == 2);
        assert_eq!(swarm.stop()["peak_up"], 2);
    }
}

#[test]
fn nothing_listening_is_a_connect_refusal() {
    let pki = Pki::new();
    let ip = common::server_ip();
    let probe = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut swarm = Swarm::start(&pki, addr, "ca.pem", 3, &[]);
    let report = swarm.finish();
    assert_eq!(report["refused"]["connect"], 3, "{report}");
}

#[test]
fn heartbeats_follow_the_servers_period() {
    let pki = Pki::new();
    let server = start_server(&pki, &["--heartbeat", "1"]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 2, &[]);
    swarm.wait("heartbeats sent and answered", |s| {
        s["heartbeats"].as_u64() >= Some(4) && s["ignored"].as_u64() >= Some(2)
    });
    let report = swarm.stop();
    assert_eq!(report["lost"], 0, "{report}");
}

#[test]
fn hostile_frames_get_3020_and_the_session_stays_up() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 1, &["--max-frame", "1024"]);
    swarm.wait("1 session up", |s| s["up"] == 1);
    let host = server.admin_lines(&["list"])[0]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let garbage = server.admin_lines(&["send", "--host", &host, "this is not json"]);
    assert_eq!(garbage[0]["retcode"], 3020, "{garbage:?}");
    let long = "x".repeat(5000);
    let too_long = server.admin_lines(&["send", "--host", &host, &long]);
    assert_eq!(too_long[0]["retcode"], 3020, "{too_long:?}");
    assert!(
        too_long[0]["message"].as_str().unwrap().contains("1024"),
        "{too_long:?}"
    );
    let ping = server.admin_lines(&["call", "--host", &host, r#"{"method":"ping"}"#]);
    assert_eq!(ping[0]["retcode"], 2, "{ping:?}");
    let report = swarm.stop();
    assert_eq!(report["answered"]["invalid"], 2, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["peak_up"], 1, "{report}");
}

#[test]
fn a_run_that_cannot_fit_is_refused_with_a_clear_message() {
    let out = Command::new(common::swarm_bin())
        .args([
            "--server",
            "127.0.0.1:9",
            "--ca",
            "/nonexistent.pem",
            "--agents",
            "900000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("file descriptors") && err.contains("900000"),
        "{err}"
    );

    let out = Command::new(common::swarm_bin())
        .args(["--server", "127.0.0.1:9", "--ca", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent.pem"), "{err}");

    let out = Command::new(common::swarm_bin())
        .args([
            "--server",
            "127.0.0.1:9",
            "--ca",
            "x",
            "--source",
            "10.1.2.3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
}

#[test]
fn duration_ends_the_run() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 2, &["--duration", "1"]);
    // Ends by itself; how many came up within the second is not asserted.
    let report = swarm.finish();
    assert!(report["peak_up"].as_u64().unwrap() <= 2, "{report}");
}

#[test]
fn sigusr1_closes_the_ramp() {
    let pki = Pki::new();
    // A peer that accepts TCP and never speaks TLS: the first attempt hangs.
    let listener = std::net::TcpListener::bind(format!("{}:0", common::server_ip())).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut swarm = Swarm::start(
        &pki,
        addr,
        "ca.pem",
        5,
        &["--concurrency", "1", "--handshake-timeout", "120"],
    );
    let (held, _) = listener.accept().unwrap();
    let pid = swarm.child.as_ref().unwrap().id();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    swarm.wait("the four waiting agents to give up", |s| {
        s["abandoned"] == 4
    });
    drop(held);
    let report = swarm.finish();
    assert_eq!(report["abandoned"], 4, "{report}");
    assert_eq!(report["refused"]["closed"], 1, "{report}");
}

#[test]
fn a_fan_out_through_the_http_api_streams_every_answer() {
    let pki = Pki::new();
    let server = start_server(&pki, &[]);
    let Some(api) = server.api else {
        eprintln!("this server has no HTTP API (thread-per-session server): skipped");
        return;
    };
    let mut swarm = Swarm::start(&pki, server.listen, "ca.pem", 20, &[]);
    swarm.wait("20 sessions up", |s| s["up"] == 20);
    // `call --api` is the API's own client (POST /v1/call, NDJSON).
    let out = Command::new(common::server_bin())
        .args([
            "call",
            "--api",
            &api.to_string(),
            "--all",
            "--timeout",
            "30",
        ])
        .arg(r#"{"method":"getinfo.kernel"}"#)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let answers: Vec<&Value> = lines.iter().filter(|l| l.get("host").is_some()).collect();
    assert_eq!(answers.len(), 20, "{text}");
    assert!(
        answers
            .iter()
            .all(|a| a["retcode"] == 2 && a["data"]["sysname"] == "Linux"),
        "{text}"
    );
    let report = swarm.stop();
    assert_eq!(report["answered"]["getinfo.kernel"], 20, "{report}");
}
