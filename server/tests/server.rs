//! Integration tests: the real BasicAgentServer binary against a fake agent (a rustls client in the test).

mod util;

use std::io::Read;

use basicagent_proto::{InitReply, Response, Retcode, ServerAddr};
use serde_json::Value;
use util::{stdout_lines, Agent, Pki, Server};

#[test]
fn init_success_ping_and_list() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--heartbeat", "7"]);
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    let reply = agent.init("host-a");
    assert_eq!(
        InitReply::parse(reply.as_bytes(), 8443).unwrap(),
        InitReply::Accepted { heartbeat: Some(7) }
    );
    assert_eq!(
        reply,
        r#"{"method":"init","resp":"success","retcode":2,"message":"Normal termination","heartbeat":7}"#
    );

    agent.send(r#"{"id":"p1","method":"ping"}"#).unwrap();
    let pong = Response::parse(agent.recv().unwrap().unwrap().as_bytes()).unwrap();
    assert_eq!(pong.id.unwrap().get(), "\"p1\"");
    assert_eq!(pong.retcode, Retcode::SUCCESS);

    let init = server.wait_event("init", |e| e["host"] == "host-a");
    assert_eq!(init["name"], "node-host-a");
    assert_eq!(init["plugins"][1], "sync.bash");
    assert_eq!(init["listen"], server.listen.to_string());

    let out = server.admin(&["list"]);
    assert!(out.status.success());
    let agents = stdout_lines(&out);
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["host"], "host-a");
    assert_eq!(agents[0]["version"], "0.1.0");
}

#[test]
fn redirect_policy_sends_the_list_and_closes() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--redirect", "127.0.0.9:1234, backup.example"]);
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    let reply = agent.init("host-r");
    assert_eq!(
        reply,
        r#"{"method":"redirect","server":"127.0.0.9:1234, backup.example"}"#
    );
    assert_eq!(
        InitReply::parse(reply.as_bytes(), 8443).unwrap(),
        InitReply::Redirect(vec![
            ServerAddr::Ip("127.0.0.9:1234".parse().unwrap()),
            ServerAddr::Name {
                host: "backup.example".into(),
                port: 8443
            },
        ])
    );
    // The server closes cleanly after a redirect.
    assert!(agent.recv().unwrap().is_none());
    server.wait_event("redirect", |e| e["host"] == "host-r");
    assert!(!server.has_event("init"));
    assert!(stdout_lines(&server.admin(&["list"])).is_empty());
}

#[test]
fn spread_policy_is_deterministic_and_keeps_its_own_share() {
    let pki = Pki::new();
    let own = util::free_addr();
    let spread = format!("{own},127.0.0.250:9");
    let server = Server::start_at(
        own,
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &["--spread", &spread],
    );
    let mut accepted = 0;
    let mut redirected = 0;
    for i in 0..12 {
        let host = format!("spread-{i}");
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
            answers.push(agent.init(&host));
        }
        assert_eq!(answers[0], answers[1], "same host, same answer");
        if answers[0].contains("\"resp\":\"success\"") {
            accepted += 1;
        } else {
            assert_eq!(
                answers[0],
                r#"{"method":"redirect","server":"127.0.0.250:9"}"#
            );
            redirected += 1;
        }
    }
    assert!(
        accepted > 0 && redirected > 0,
        "accepted {accepted}, redirected {redirected}"
    );
}

#[test]
fn reject_policy() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--reject", "maintenance until 14:00"]);
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    let reply = agent.init("host-x");
    assert_eq!(
        InitReply::parse(reply.as_bytes(), 1).unwrap(),
        InitReply::rejected(Retcode::PERMISSION_DENIED, "maintenance until 14:00")
    );
    server.wait_event("rejected", |e| e["host"] == "host-x");
}

#[test]
fn mutual_tls_required_refuses_a_client_without_certificate() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let server = Server::start(&pki, &["--client-ca", ca.to_str().unwrap()]);

    // Without a certificate: the handshake or the first read fails; no init reply ever.
    let outcome = Agent::connect(server.listen, pki.client_config(false)).and_then(|mut a| {
        a.send(r#"{"method":"init","hostname":"no-cert"}"#)?;
        a.recv()
    });
    assert!(matches!(outcome, Err(_) | Ok(None)), "{outcome:?}");
    let failed = server.wait_event("tls_handshake_failed", |_| true);
    assert!(
        failed["reason"].as_str().unwrap().contains("TLS"),
        "{failed}"
    );
    assert!(!server.has_event("init"));

    // With one (its CN is "agent", the host id it may claim): accepted.
    let _agent = Agent::ready(&server, &pki, "agent");
    server.wait_event("init", |e| e["host"] == "agent");
}

#[test]
fn a_server_with_an_untrusted_certificate_never_receives_init() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = Server::start_with(
        &pki,
        &other.path("server.pem"),
        &other.path("server.key"),
        &[],
    );
    let err = Agent::connect(server.listen, pki.client_config(false))
        .err()
        .expect("must not verify");
    assert!(err.to_string().contains("certificate"), "{err}");
    let failed = server.wait_event("tls_handshake_failed", |_| true);
    assert!(
        failed["reason"].as_str().unwrap().contains("TLS"),
        "{failed}"
    );
    assert!(!server.has_event("init"));
}

/// A fake agent that answers every request in the order given by `order`
/// once it holds `order.len()` requests (so answers can come out of order).
fn answer_batch(agent: &mut Agent, count: usize, reverse: bool) -> Vec<Value> {
    let mut requests: Vec<Value> = (0..count).map(|_| agent.recv_json()).collect();
    if reverse {
        requests.reverse();
    }
    for r in &requests {
        let answer = format!(
            r#"{{"id":{},"resp":"success","retcode":2,"message":"Normal termination","data":{{"echo":{}}}}}"#,
            r["id"], r["method"]
        );
        agent.send(&answer).unwrap();
    }
    requests
}

#[test]
fn call_round_trip_with_requests_in_flight_answered_out_of_order() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut agent = Agent::ready(&server, &pki, "host-c");

    let first = server.admin_spawn(&[
        "call",
        "--host",
        "host-c",
        "--timeout",
        "20",
        r#"{"method":"getinfo.kernel"}"#,
    ]);
    server.wait_event("request", |e| e["method"] == "getinfo.kernel");
    let second = server.admin_spawn(&[
        "call",
        "--host",
        "host-c",
        "--timeout",
        "20",
        r#"{"id":"mine","method":"getinfo.users"}"#,
    ]);
    // Both are in flight; the agent answers the second first.
    let requests = answer_batch(&mut agent, 2, true);
    assert!(
        requests.iter().all(|r| r["id"].is_u64()),
        "server assigns numeric ids: {requests:?}"
    );
    assert_eq!(requests[1]["method"], "getinfo.kernel");

    let second = second.wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let line = stdout_lines(&second);
    assert_eq!(line.len(), 1);
    assert_eq!(line[0]["id"], "mine", "the caller's id is given back");
    assert_eq!(line[0]["data"]["echo"], "getinfo.users");

    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    let line = stdout_lines(&first);
    assert_eq!(line[0]["data"]["echo"], "getinfo.kernel");
    assert!(line[0]["id"].is_u64());
    server.wait_event("response", |e| e["host"] == "host-c");
}

#[test]
fn call_all_timeout_and_unknown_host() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut a = Agent::ready(&server, &pki, "all-a");
    let mut b = Agent::ready(&server, &pki, "all-b");
    let call = server.admin_spawn(&["call", "--all", "--timeout", "20", r#"{"method":"ping"}"#]);
    answer_batch(&mut a, 1, false);
    answer_batch(&mut b, 1, false);
    let out = call.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut hosts: Vec<String> = stdout_lines(&out)
        .iter()
        .map(|l| l["host"].as_str().unwrap().to_owned())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["all-a", "all-b"]);

    let out = server.admin(&["call", "--host", "nobody", r#"{"method":"ping"}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    // all-a never answers: timeout, non-zero exit.
    let out = server.admin(&[
        "call",
        "--host",
        "all-a",
        "--timeout",
        "0.3",
        r#"{"method":"ping"}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no response"),
        "{out:?}"
    );
    assert!(stdout_lines(&out).is_empty());
    // The request did arrive.
    assert_eq!(a.recv_json()["method"], "ping");

    let out = server.admin(&["call", "--host", "all-a", "not json"]);
    assert!(!out.status.success());
}

#[test]
fn garbage_and_oversized_lines_from_the_agent_are_answered_and_the_server_keeps_serving() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-frame", "200"]);
    let mut agent = Agent::ready(&server, &pki, "host-g");
    agent.send("this is not json").unwrap();
    let answer = Response::parse(agent.recv().unwrap().unwrap().as_bytes()).unwrap();
    assert!(answer.id.is_none());
    assert_eq!(answer.retcode, Retcode::INVALID_REQUEST);
    agent.send(&"x".repeat(500)).unwrap();
    let answer = Response::parse(agent.recv().unwrap().unwrap().as_bytes()).unwrap();
    assert_eq!(answer.retcode, Retcode::INVALID_REQUEST);
    assert!(answer.message.contains("too long"), "{}", answer.message);
    server.wait_event("invalid_frame", |e| e["host"] == "host-g");

    agent.send(r#"{"id":9,"method":"ping"}"#).unwrap();
    assert_eq!(agent.recv_json()["id"], 9);
    // And a second agent is still served.
    let _other = Agent::ready(&server, &pki, "host-g2");
}

#[test]
fn send_raw_line_and_print_the_null_id_answer() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut agent = Agent::ready(&server, &pki, "host-s");
    let send = server.admin_spawn(&["send", "--host", "host-s", "--timeout", "20", "{broken"]);
    assert_eq!(agent.recv().unwrap().unwrap(), "{broken");
    agent
        .send(&Response::failed(None, Retcode::INVALID_REQUEST, "not JSON").to_json())
        .unwrap();
    let out = send.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout_lines(&out)[0]["message"], "not JSON");

    // From stdin, bytes that are not UTF-8, nothing answered: prints nothing.
    let out = server.admin_stdin(
        &["send", "--host", "host-s", "--timeout", "0.2", "-"],
        b"\xff\xfe\n",
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let mut raw = Vec::new();
    let _ = (&mut agent.stream).take(3).read_to_end(&mut raw);
    assert_eq!(raw, b"\xff\xfe\n");
}

#[test]
fn task_done_is_recorded_and_acknowledged() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut agent = Agent::ready(&server, &pki, "host-t");
    agent
        .send(r#"{"method":"task.done","task":"t-1","resp":"success","retcode":2,"message":"Normal termination","data":{"exitcode":0}}"#)
        .unwrap();
    assert_eq!(
        agent.recv().unwrap().unwrap(),
        r#"{"method":"task.ack","task":"t-1"}"#
    );
    let tasks = stdout_lines(&server.admin(&["tasks"]));
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["host"], "host-t");
    assert_eq!(tasks[0]["task"], "t-1");
    assert_eq!(tasks[0]["data"]["exitcode"], 0);
    server.wait_event("task_done", |e| e["task"] == "t-1");
}

#[test]
fn no_auto_ack() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--no-auto-ack"]);
    let mut agent = Agent::ready(&server, &pki, "host-n");
    agent
        .send(r#"{"method":"task.done","task":"t-2","retcode":3023}"#)
        .unwrap();
    agent.send(r#"{"id":1,"method":"ping"}"#).unwrap();
    // Frames are handled in order: the next line is the ping's answer, no ack before it.
    assert_eq!(agent.recv_json()["id"], 1);
    assert_eq!(stdout_lines(&server.admin(&["tasks"]))[0]["retcode"], 3023);
}

#[test]
fn a_reconnect_replaces_the_old_connection() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut old = Agent::ready(&server, &pki, "host-re");
    let _new = Agent::ready(&server, &pki, "host-re");
    assert!(matches!(old.recv(), Ok(None) | Err(_)));
    server.wait_event("disconnect", |e| e["host"] == "host-re");
    let agents = stdout_lines(&server.admin(&["list"]));
    assert_eq!(agents.len(), 1);
}

#[test]
fn sigterm_stops_cleanly() {
    let pki = Pki::new();
    let mut server = Server::start(&pki, &[]);
    let mut agent = Agent::ready(&server, &pki, "host-q");
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(matches!(agent.recv(), Ok(None) | Err(_)));
    assert!(!server.admin.exists(), "admin socket removed");
    server.wait_event("shutdown", |_| true);
}
