//! Limits and identity against the real server binary: session limit, descriptor reserve, mTLS host-id binding, kill -9 durability.

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basicagent_proto::{InitReply, Retcode};
use serde_json::{json, Value};
use util::{free_addr, stdout_lines, Agent, Pki, Server, WAIT};

fn refused_reason(server: &Server, reason: &str) -> f64 {
    let (_, text) = server.http("GET", "/metrics", None, None);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "basicagent_sessions_refused_total"
                && s.labels.get("reason") == Some(reason)
        })
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
}

fn rejected_code(reply: &str) -> Retcode {
    match InitReply::parse(reply.as_bytes(), 8443).unwrap() {
        InitReply::Rejected { retcode, .. } => retcode,
        other => panic!("not a rejection: {other:?}"),
    }
}

#[test]
fn at_the_session_limit_an_agent_is_refused_cleanly_and_the_api_answers() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--max-sessions", "5"]);
    let mut agents: Vec<Agent> = (0..5)
        .map(|i| Agent::ready(&server, &pki, &format!("lim-{i}")))
        .collect();
    let mut sixth = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    let reply = sixth.init("lim-5");
    assert_eq!(rejected_code(&reply), Retcode::BUSY, "{reply}");
    assert!(reply.contains("limit of 5"), "{reply}");
    assert!(matches!(sixth.recv(), Ok(None) | Err(_)), "then closed");
    server.wait_event("refused", |e| e["host"] == "lim-5" && e["limit"] == 5);

    // The operator is not locked out.
    assert_eq!(server.get("/v1/agents/count")["count"], 5);
    assert_eq!(stdout_lines(&server.admin(&["list"])).len(), 5);
    assert_eq!(refused_reason(&server, "limit"), 1.0);

    // A slot freed is a slot usable.
    drop(agents.pop());
    server.wait_event("disconnect", |e| e["host"] == "lim-4");
    let start = Instant::now();
    loop {
        let mut a = Agent::connect(server.listen, pki.client_config(false)).unwrap();
        if a.init("lim-6").contains("\"resp\":\"success\"") {
            break;
        }
        assert!(start.elapsed() < WAIT, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn at_the_limit_with_spread_peers_the_agent_is_redirected() {
    let pki = Pki::new();
    let listen = free_addr();
    let spread = format!("{listen},127.0.0.9:9999");
    let server = Server::start_at(
        listen,
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &["--spread", &spread, "--max-sessions", "1"],
    );
    // Find two host ids that the spread keeps here.
    let mut mine = Vec::new();
    for i in 0..64 {
        let host = format!("sp-{i}");
        let mut a = Agent::connect(server.listen, pki.client_config(false)).unwrap();
        let reply = a.init(&host);
        if reply.contains("\"resp\":\"success\"") {
            mine.push(a);
            break;
        }
    }
    assert_eq!(mine.len(), 1, "some host id hashes to this server");
    // Every further agent: the limit (or the spread) sends it to the peer.
    for i in 100..110 {
        let mut a = Agent::connect(server.listen, pki.client_config(false)).unwrap();
        let reply = a.init(&format!("sp-{i}"));
        assert_eq!(
            reply, r#"{"method":"redirect","server":"127.0.0.9:9999"}"#,
            "{reply}"
        );
    }
    assert!(refused_reason(&server, "limit") >= 1.0);
}

#[test]
fn under_a_64_descriptor_limit_the_reserve_keeps_the_operator_in() {
    let pki = Pki::new();
    let server = Server::start_wrapped(
        &["prlimit", "--nofile=64:64"],
        free_addr(),
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &["--handshake-timeout", "3"],
    );
    let listening = server.wait_event("listening", |_| true);
    assert_eq!(listening["session_limit"], 32);
    let agents: Vec<Agent> = (0..32)
        .map(|i| Agent::ready(&server, &pki, &format!("fd-{i}")))
        .collect();
    // A flood of connections that never even start TLS.
    let flood: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(server.listen).ok())
        .collect();
    assert!(flood.len() >= 32);
    // The API, the metrics and the admin socket all still answer.
    assert_eq!(server.get("/v1/agents/count")["count"], 32);
    assert_eq!(stdout_lines(&server.admin(&["list"])).len(), 32);
    let start = Instant::now();
    while refused_reason(&server, "limit_flood") < 1.0 {
        assert!(start.elapsed() < WAIT, "no flood refusals counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(flood);
    // After the flood: a clean Busy refusal, and a call still works.
    let start = Instant::now();
    loop {
        // While refusal slots are still taken, a connection is closed at once: try again.
        assert!(start.elapsed() < WAIT, "never a clean refusal");
        let Ok(mut extra) = Agent::connect(server.listen, pki.client_config(false)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if extra
            .send(r#"{"method":"init","hostname":"fd-extra"}"#)
            .is_err()
        {
            continue;
        }
        if let Ok(Some(reply)) = extra.recv() {
            assert_eq!(rejected_code(&reply), Retcode::BUSY, "{reply}");
            break;
        }
    }
    let mut first = agents.into_iter().next().unwrap();
    let (tx, rx) = mpsc::channel();
    let url = format!("http://{}/v1/call", server.api.unwrap());
    std::thread::spawn(move || {
        let body =
            json!({"target": {"hosts": ["fd-0"]}, "request": {"method": "ping"}, "timeout": 20});
        let text = ureq::post(&url)
            .send_string(&body.to_string())
            .unwrap()
            .into_string()
            .unwrap();
        let _ = tx.send(text);
    });
    let r = first.recv_json();
    first
        .send(&json!({"id": r["id"], "resp": "success", "retcode": 2, "message": "ok"}).to_string())
        .unwrap();
    let text = rx.recv_timeout(WAIT).unwrap();
    assert!(text.contains(r#""answered":1"#), "{text}");
}

#[test]
fn mtls_binds_the_host_id_to_the_certificate() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let server = Server::start(&pki, &["--client-ca", ca.to_str().unwrap()]);
    let real_config = pki.client_config_for("host-real");
    let mut real = Agent::connect(server.listen, real_config.clone()).unwrap();
    assert!(real.init("host-real").contains("\"resp\":\"success\""));

    // An impostor: a valid certificate from the CA, for another host id.
    let mut impostor = Agent::connect(server.listen, pki.client_config_for("host-evil")).unwrap();
    let reply = impostor.init("host-real");
    assert_eq!(rejected_code(&reply), Retcode::PERMISSION_DENIED, "{reply}");
    assert!(reply.contains("host-evil"), "{reply}");
    server.wait_event("identity_mismatch", |e| e["host"] == "host-real");

    // Another certificate for the same host id never replaces the holder.
    let mut twin = Agent::connect(server.listen, pki.client_config_for("host-real")).unwrap();
    let reply = twin.init("host-real");
    assert_eq!(rejected_code(&reply), Retcode::PERMISSION_DENIED, "{reply}");
    assert!(reply.contains("another certificate"), "{reply}");

    assert_eq!(refused_reason(&server, "identity"), 1.0);
    assert_eq!(refused_reason(&server, "held"), 1.0);

    // The real host still gets and answers the operator's calls.
    for round in 0..3 {
        let (tx, rx) = mpsc::channel();
        let url = format!("http://{}/v1/call", server.api.unwrap());
        std::thread::spawn(move || {
            let body = json!({"target": {"hosts": ["host-real"]},
                              "request": {"method": "sync.bash", "cmd": "echo secret"}, "timeout": 20});
            let text = ureq::post(&url)
                .send_string(&body.to_string())
                .unwrap()
                .into_string()
                .unwrap();
            let _ = tx.send(text);
        });
        let r = real.recv_json();
        assert_eq!(r["cmd"], "echo secret");
        real.send(
            &json!({"id": r["id"], "resp": "success", "retcode": 2, "message": "ok", "data": round})
                .to_string(),
        )
        .unwrap();
        let text = rx.recv_timeout(WAIT).unwrap();
        assert!(text.contains(r#""answered":1"#), "round {round}: {text}");
    }

    // The same certificate reconnecting replaces the old session (a restart of the agent).
    let mut again = Agent::connect(server.listen, real_config).unwrap();
    assert!(again.init("host-real").contains("\"resp\":\"success\""));
    assert!(matches!(real.recv(), Ok(None) | Err(_)));
}

/// One fake agent that pushes `count` task results and records the acks it got.
fn push_tasks(server: &Server, pki: &Pki, host: &str, count: usize) -> mpsc::Receiver<String> {
    let mut agent = Agent::ready(server, pki, host);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..count {
            let line = format!(
                r#"{{"method":"task.done","task":"t-{i}","resp":"success","retcode":2,"message":"Normal termination","data":{{"n":{i}}}}}"#
            );
            if agent.send(&line).is_err() {
                break;
            }
            match agent.recv() {
                Ok(Some(ack)) => {
                    let v: Value = serde_json::from_str(&ack).unwrap();
                    assert_eq!(v["method"], "task.ack");
                    if tx.send(v["task"].as_str().unwrap().to_owned()).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    rx
}

#[test]
fn acked_task_results_survive_kill_9() {
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let mut server = Server::start(&pki, &["--state-dir", &state_dir]);
    let hosts = ["dur-a", "dur-b", "dur-c"];
    let streams: Vec<_> = hosts
        .iter()
        .map(|h| push_tasks(&server, &pki, h, 100_000))
        .collect();
    // Let results flow, then kill -9 in the middle of it.
    let mut acked: HashMap<&str, Vec<String>> = HashMap::new();
    let start = Instant::now();
    while acked.values().map(Vec::len).sum::<usize>() < 300 {
        for (h, rx) in hosts.iter().zip(&streams) {
            while let Ok(t) = rx.try_recv() {
                acked.entry(h).or_default().push(t);
            }
        }
        assert!(start.elapsed() < WAIT, "acks too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for (h, rx) in hosts.iter().zip(&streams) {
        while let Ok(t) = rx.recv_timeout(Duration::from_secs(2)) {
            acked.entry(h).or_default().push(t);
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total >= 300);

    let server = Server::start(&pki, &["--state-dir", &state_dir]);
    let stored = server.get("/v1/tasks?limit=10000");
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for t in stored.as_array().unwrap() {
        let key = (
            t["host"].as_str().unwrap().to_owned(),
            t["task"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    for (host, tasks) in &acked {
        for task in tasks {
            assert_eq!(
                seen.get(&(host.to_string(), task.clone())),
                Some(&1),
                "acked {host}/{task} stored exactly once"
            );
        }
    }
    // A re-delivery after the restart (the agent did not get the ack) is not stored twice.
    let mut a = Agent::ready(&server, &pki, "dur-a");
    let again = &acked["dur-a"][0];
    a.send(&format!(
        r#"{{"method":"task.done","task":"{again}","resp":"success","retcode":2,"message":"again"}}"#
    ))
    .unwrap();
    assert_eq!(a.recv_json()["task"], again.as_str());
    let copies: Vec<Value> = server
        .get("/v1/tasks?host=dur-a&limit=10000")
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["task"] == again.as_str())
        .cloned()
        .collect();
    assert_eq!(copies.len(), 1, "one copy: {copies:?}");
    assert_eq!(
        copies[0]["message"], "Normal termination",
        "the first copy wins"
    );
    assert!(server.get("/v1/agents/dur-b")["first_seen"].is_i64());
}

#[test]
fn make_certs_issues_agent_certificates_the_server_binds() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-certs.sh");
    let id = "0b7e4a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    for args in [
        vec![dir.path().to_str().unwrap()],
        vec!["--agent", dir.path().to_str().unwrap(), id],
    ] {
        let out = std::process::Command::new("sh")
            .arg(script)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let p = |name: &str| dir.path().join(name);
    let server = Server::start_with(
        &Pki::new(),
        &p("server.pem"),
        &p("server.key"),
        &["--client-ca", p("ca.pem").to_str().unwrap()],
    );
    use rustls::pki_types::pem::PemObject;
    let config = |cert: &str, key: &str| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(p("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(p(cert))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(p(key)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    };
    let agent_config = config(&format!("agent-{id}.pem"), &format!("agent-{id}.key"));
    let mut a = Agent::connect(server.listen, agent_config.clone()).unwrap();
    assert!(a.init(id).contains("\"resp\":\"success\""));
    // The generic client certificate (CN basicagent-client) may not claim that id.
    let mut other = Agent::connect(server.listen, config("client.pem", "client.key")).unwrap();
    assert_eq!(rejected_code(&other.init(id)), Retcode::PERMISSION_DENIED);
    // Nor may the agent certificate claim another id.
    let mut wrong = Agent::connect(server.listen, agent_config).unwrap();
    assert_eq!(
        rejected_code(&wrong.init("someone-else")),
        Retcode::PERMISSION_DENIED
    );
}

#[test]
fn a_flood_of_idle_api_connections_takes_only_the_api_pool() {
    let pki = Pki::new();
    let server = Server::start_wrapped(
        &["prlimit", "--nofile=64:64"],
        free_addr(),
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &[],
    );
    let api = server.api.unwrap();
    // Far more idle connections than the API's pool (3 at this limit).
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(api).ok())
        .collect();
    assert!(flood.len() > 10);
    // Agents and the admin socket are unaffected.
    let agents: Vec<Agent> = (0..20)
        .map(|i| Agent::ready(&server, &pki, &format!("pool-{i}")))
        .collect();
    assert_eq!(stdout_lines(&server.admin(&["list"])).len(), 20);
    // When the flood goes, the API answers again.
    drop(flood);
    assert_eq!(server.get("/v1/agents/count")["count"], 20);
    drop(agents);
}

#[test]
fn heartbeat_zero_sends_none_and_out_of_range_refuses_to_start() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--heartbeat", "0"]);
    let mut a = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    let reply = a.init("hb-0");
    assert_eq!(
        InitReply::parse(reply.as_bytes(), 8443).unwrap(),
        InitReply::Accepted { heartbeat: None }
    );
    let out = std::process::Command::new(util::BIN)
        .args([
            "serve",
            "--heartbeat",
            "3601",
            "--api",
            "none",
            "--cert",
            "x",
            "--key",
            "y",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0..=3600"),
        "{out:?}"
    );
}

#[test]
fn agent_sockets_have_tcp_keepalive() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let _a = Agent::ready(&server, &pki, "ka-1");
    // The server's end of the connection: source address = the listen address.
    // Its keepalive timer shows once nothing else (a retransmission) is pending.
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established", "src"])
            .arg(server.listen.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("keepalive") {
            break;
        }
        assert!(start.elapsed() < WAIT, "no keepalive timer: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
