//! `BasicAgentServer loadtest` against a fake agent (a rustls client in the test): init, pipelined requests, the agent's ping answered, bad input refused.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{free_addr, Agent, Pki, BIN};

/// Starts `loadtest` on a free address; returns the child and the address.
fn start(pki: &Pki, args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let addr = free_addr();
    let child = Command::new(BIN)
        .arg("loadtest")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--cert")
        .arg(pki.path("server.pem"))
        .arg("--key")
        .arg(pki.path("server.key"))
        .args(["--timeout", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadtest starts");
    (child, addr)
}

/// Connects once the load tester listens.
fn connect(pki: &Pki, addr: std::net::SocketAddr) -> Agent {
    let until = Instant::now() + util::WAIT;
    loop {
        match Agent::connect(addr, pki.client_config(false)) {
            Ok(agent) => return agent,
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("loadtest never listened on {addr}: {e}"),
        }
    }
}

#[test]
fn loadtest_measures_pipelined_requests_and_answers_the_agents_ping() {
    let pki = Pki::new();
    let (child, addr) = start(
        &pki,
        &[
            "--requests",
            "300",
            "--depth",
            "16",
            "--warmup",
            "20",
            "--json",
            r#"{"method":"getinfo.kernel","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ],
    );
    let mut agent = connect(&pki, addr);
    let reply = agent.init("loadtest-host");
    assert!(reply.contains("\"resp\":\"success\""), "{reply}");
    // Every request is answered in order; a ping of our own goes first.
    agent.send(r#"{"id":"hb-1","method":"ping"}"#).unwrap();
    let mut answered = 0;
    let mut pong = None;
    while answered < 320 {
        let Some(line) = agent.recv().unwrap() else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("resp").is_some() {
            assert_eq!(v["id"], "hb-1", "only our ping gets an answer: {v}");
            pong = Some(v);
            continue;
        }
        assert_eq!(v["method"], "getinfo.kernel", "{v}");
        assert_eq!(v["pad"].as_str().map(str::len), Some(62));
        let id = v["id"].as_u64().expect("numeric id");
        assert_eq!(id, answered, "requests come in id order");
        let answer = format!(
            r#"{{"id":{id},"resp":"success","retcode":2,"message":"Normal termination","result":{{"kernel":"Linux"}}}}"#
        );
        agent.send(&answer).unwrap();
        answered += 1;
    }
    assert_eq!(answered, 320, "warm-up and measured requests");
    let pong = pong.expect("the ping was answered");
    assert_eq!(pong["retcode"], 2);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["requests"], 300);
    assert_eq!(report["depth"], 16);
    assert_eq!(report["errors"], 0);
    assert!(report["rate_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn loadtest_counts_failed_answers_and_unknown_ids_as_errors() {
    let pki = Pki::new();
    let (child, addr) = start(&pki, &["--requests", "4", "--depth", "1"]);
    let mut agent = connect(&pki, addr);
    agent.init("loadtest-errors");
    for i in 0..4u64 {
        let v = agent.recv_json();
        let id = v["id"].as_u64().unwrap();
        assert_eq!(id, i);
        if i == 1 {
            // An answer to an id never sent, then garbage, then the real one.
            agent
                .send(r#"{"id":999,"resp":"success","retcode":2,"message":"x"}"#)
                .unwrap();
            agent.send("this is not json").unwrap();
        }
        let retcode = if i == 2 { 3025 } else { 2 };
        let resp = if i == 2 { "failed" } else { "success" };
        agent
            .send(&format!(
                r#"{{"id":{id},"resp":"{resp}","retcode":{retcode},"message":"m"}}"#
            ))
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["requests"], 4);
    assert_eq!(report["errors"], 3, "unknown id, garbage, one failure");
}

#[test]
fn loadtest_refuses_an_invalid_init_with_3020() {
    let pki = Pki::new();
    let (child, addr) = start(&pki, &["--requests", "1", "--depth", "1"]);
    let mut agent = connect(&pki, addr);
    agent.send(r#"{"method":"hello"}"#).unwrap();
    let v = agent.recv_json();
    assert_eq!(v["method"], "init");
    assert_eq!(v["retcode"], 3020);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("expected init: "),
        "{v}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init was refused"), "{err}");
}

#[test]
fn loadtest_reports_a_tls_failure() {
    let pki = Pki::new();
    let (child, addr) = start(&pki, &["--requests", "1", "--depth", "1"]);
    let until = Instant::now() + util::WAIT;
    let mut sock = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    use std::io::{Read, Write};
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut back = Vec::new();
    let _ = sock.read_to_end(&mut back);
    assert_eq!(back.first(), Some(&0x15), "a TLS alert comes back");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "{err}");
}
