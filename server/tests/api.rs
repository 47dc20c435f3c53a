//! The HTTP API against the real server binary: every endpoint, its errors, NDJSON streaming, tokens, metrics.

mod util;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use util::{stdout_lines, wait_for, Agent, Pki, Server, BIN, WAIT};

/// Answers the next request on `agent` with success and `data`; returns the request.
fn answer(agent: &mut Agent, data: Value) -> Value {
    let r = agent.recv_json();
    let line = json!({"id": r["id"], "resp": "success", "retcode": 2,
                      "message": "Normal termination", "data": data});
    agent.send(&line.to_string()).unwrap();
    r
}

/// Polls `f` until it gives `Some` (store writes are asynchronous).
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for(what, WAIT, f)
}

#[test]
fn agents_list_filters_count_and_detail() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let _a = Agent::ready(&server, &pki, "web-1");
    let _b = Agent::ready(&server, &pki, "web-2");
    let _c = Agent::ready(&server, &pki, "db-1");

    let all = server.get("/v1/agents");
    assert_eq!(all.as_array().unwrap().len(), 3);
    let one = &all.as_array().unwrap()[0];
    for key in ["host", "name", "addr", "version", "plugins", "connected_at"] {
        assert!(one.get(key).is_some(), "{key} missing in {one}");
    }
    let web = server.get("/v1/agents?name=node-web-*");
    let mut hosts: Vec<&str> = web
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["host"].as_str().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["web-1", "web-2"]);
    assert_eq!(server.get("/v1/agents?host=db-1")[0]["name"], "node-db-1");
    assert_eq!(
        server
            .get("/v1/agents?plugin=sync.bash")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(server
        .get("/v1/agents?plugin=nope")
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(server.get("/v1/agents/count")["count"], 3);
    assert_eq!(server.get("/v1/agents/count?name=node-web-?")["count"], 2);

    let (status, body) = server.http("GET", "/v1/agents?bogus=1", None, None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "bad_params"
    );

    let detail = eventually("web-1 in the store", || {
        let d = server.get("/v1/agents/web-1");
        d.get("first_seen").is_some().then_some(d)
    });
    assert_eq!(detail["online"], true);
    assert_eq!(detail["name"], "node-web-1");
    let (status, body) = server.http("GET", "/v1/agents/nobody", None, None);
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "unknown_host"
    );
}

/// Reads NDJSON lines of one POST /v1/call as they arrive.
fn stream_call(server: &Server, body: Value) -> mpsc::Receiver<Value> {
    let url = format!("http://{}/v1/call", server.api.unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = ureq::post(&url).send_string(&body.to_string()).unwrap();
        assert_eq!(r.header("Content-Type"), Some("application/x-ndjson"));
        for line in BufReader::new(r.into_reader()).lines() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn call_streams_lines_as_answers_arrive_then_the_summary() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut a = Agent::ready(&server, &pki, "s-a");
    let mut b = Agent::ready(&server, &pki, "s-b");
    let mut c = Agent::ready(&server, &pki, "s-c");
    let lines = stream_call(
        &server,
        json!({"target": {"hosts": ["s-a", "s-b", "s-c", "s-offline"]},
               "request": {"id": "mine", "method": "getinfo.kernel"}, "timeout": 3}),
    );
    let next = || lines.recv_timeout(WAIT).expect("a line");

    // The offline host's line comes at once, before anybody answered.
    let offline = next();
    assert_eq!(offline["host"], "s-offline");
    assert_eq!(offline["retcode"], 3100);
    assert_eq!(offline["resp"], "failed");
    assert_eq!(offline["id"], "mine");

    // b answers first: its line arrives while a has not answered yet.
    let rb = answer(&mut b, json!({"release": "b"}));
    assert!(rb["id"].is_u64(), "the server's own numeric id: {rb}");
    let line = next();
    assert_eq!(line["host"], "s-b");
    assert_eq!(line["data"]["release"], "b");
    assert_eq!(line["id"], "mine", "the caller's id comes back");
    let ra = answer(&mut a, json!({"release": "a"}));
    assert_eq!(ra["id"], rb["id"], "one id per call");
    assert_eq!(next()["host"], "s-a");

    // c holds the request and never answers: the server's timeout line.
    assert_eq!(c.recv_json()["method"], "getinfo.kernel");
    let late = next();
    assert_eq!(late["host"], "s-c");
    assert_eq!(late["retcode"], 3101);
    assert!(late["message"].as_str().unwrap().contains("no response"));

    let summary = next();
    let s = &summary["summary"];
    assert_eq!(s["targeted"], 4, "{summary}");
    assert_eq!(s["answered"], 2);
    assert_eq!(s["failed"], 0);
    assert_eq!(s["offline"], 1);
    assert_eq!(s["timed_out"], 1);
    assert!(s["seconds"].as_f64().unwrap() > 0.0);
    assert!(
        lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "summary is last"
    );

    // A failed answer and a disconnect count as failed.
    let lines = stream_call(
        &server,
        json!({"target": {"name": "node-s-*"}, "request": {"method": "x.y"}, "timeout": 20}),
    );
    let r = a.recv_json();
    a.send(&json!({"id": r["id"], "resp": "failed", "retcode": 3022, "message": "no"}).to_string())
        .unwrap();
    answer(&mut b, json!(null));
    assert_eq!(c.recv_json()["method"], "x.y");
    drop(c);
    let mut got: Vec<Value> = (0..4).map(|_| lines.recv_timeout(WAIT).unwrap()).collect();
    let summary = got.pop().unwrap();
    assert_eq!(summary["summary"]["targeted"], 3, "{summary}");
    assert_eq!(summary["summary"]["answered"], 1);
    assert_eq!(summary["summary"]["failed"], 2);
    let gone = got.iter().find(|l| l["host"] == "s-c").unwrap();
    assert_eq!(gone["retcode"], 3102, "{gone}");
}

#[test]
fn call_errors_have_json_bodies_and_status_codes() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let _a = Agent::ready(&server, &pki, "e-a");
    let code = |method: &str, path: &str, body: Option<&str>| -> (u16, String) {
        let (status, text) = server.http(method, path, body, None);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let code = v["error"]["code"].as_str().unwrap().to_owned();
        assert!(v["error"]["message"].as_str().is_some(), "{text}");
        (status, code)
    };
    let post = |body: &str| code("POST", "/v1/call", Some(body));
    assert_eq!(post("{not json").0, 400);
    assert_eq!(post("{not json").1, "bad_json");
    assert_eq!(
        post(r#"{"target":{"all":true},"request":{"nomethod":1}}"#),
        (400, "bad_request".into())
    );
    assert_eq!(
        post(r#"{"target":{"everyone":true},"request":{"method":"ping"}}"#),
        (400, "bad_target".into())
    );
    assert_eq!(
        post(r#"{"target":{"hosts":[]},"request":{"method":"ping"}}"#),
        (400, "bad_target".into())
    );
    assert_eq!(
        post(r#"{"target":{"name":"nothing-*"},"request":{"method":"ping"}}"#),
        (404, "no_target".into())
    );
    assert_eq!(
        post(r#"{"target":{"all":true},"request":{"method":"ping"},"timeout":-1}"#),
        (400, "bad_timeout".into())
    );
    assert_eq!(
        post(r#"{"target":{"all":true},"request":{"method":"ping"},"extra":1}"#),
        (400, "bad_json".into())
    );
    let huge = format!(
        r#"{{"target":{{"all":true}},"request":{{"method":"ping","pad":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let mut raw = format!(
        "POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    )
    .into_bytes();
    raw.extend_from_slice(huge.as_bytes());
    let answer = server.raw_http(raw);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    assert_eq!(
        code("GET", "/v1/call", None),
        (405, "method_not_allowed".into())
    );
    assert_eq!(code("DELETE", "/v1/agents", None).0, 405);
    assert_eq!(code("GET", "/v2/nothing", None), (404, "not_found".into()));
    assert_eq!(
        code("GET", "/v1/tasks/nope", None),
        (404, "unknown_task".into())
    );
    assert_eq!(
        code("GET", "/v1/calls/abc", None),
        (400, "bad_params".into())
    );
    assert_eq!(
        code("GET", "/v1/calls/987654", None),
        (404, "unknown_call".into())
    );
    assert_eq!(
        code("GET", "/v1/tasks?limit=0", None),
        (400, "bad_params".into())
    );

    // After all that, the server still serves.
    assert_eq!(server.get("/v1/agents/count")["count"], 1);
}

#[test]
fn bearer_token_is_required_and_checked() {
    let pki = Pki::new();
    let token_file = pki.path("token");
    std::fs::write(&token_file, "s3cret-token-for-tests-0123\n").unwrap();
    let server = Server::start(&pki, &["--api-token-file", token_file.to_str().unwrap()]);
    let (status, body) = server.http("GET", "/v1/agents", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no_token"));
    let (status, body) = server.http("GET", "/v1/agents", None, Some("wrong-token-wrong-token"));
    assert_eq!(status, 401);
    assert!(body.contains("bad_token"));
    let (status, _) = server.http("GET", "/metrics", None, None);
    assert_eq!(status, 401, "metrics need the token too");
    let (status, body) = server.http(
        "GET",
        "/v1/agents",
        None,
        Some("s3cret-token-for-tests-0123"),
    );
    assert_eq!((status, body.as_str()), (200, "[]"));

    // The CLI client with the token file.
    let out = Command::new(BIN)
        .args(["list", "--api", &server.api.unwrap().to_string()])
        .args(["--api-token-file", token_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .args(["list", "--api", &server.api.unwrap().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
}

#[test]
fn an_api_off_loopback_without_a_token_refuses_to_start() {
    let pki = Pki::new();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin"])
            .arg(pki.path("admin.sock"))
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--api", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--api-token-file"),
        "{out:?}"
    );
    std::fs::write(pki.path("short"), "abc").unwrap();
    let out = run(&[
        "--api",
        "127.0.0.1:0",
        "--api-token-file",
        pki.path("short").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
    let out = run(&["--heartbeat", "100000", "--api", "none"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat"));
}

#[test]
fn api_none_disables_the_api() {
    let pki = Pki::new();
    let server = Server::start(&pki, &["--api", "none"]);
    assert!(server.api.is_none());
    let _a = Agent::ready(&server, &pki, "n-a");
    assert_eq!(stdout_lines(&server.admin(&["list"])).len(), 1);
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(h) => h.last().map(|c| c.count),
            _ => None,
        })
}

#[test]
fn metrics_parse_with_a_prometheus_parser() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut a = Agent::ready(&server, &pki, "m-a");
    let rx = stream_call(
        &server,
        json!({"target": {"all": true}, "request": {"method": "ping"}, "timeout": 20}),
    );
    answer(&mut a, json!(null));
    while rx.recv_timeout(WAIT).unwrap().get("summary").is_none() {}

    let (status, text) = server.http("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        sample(&scrape, "basicagent_sessions", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&scrape, "basicagent_agents", &[]), Some(1.0));
    assert_eq!(
        sample(
            &scrape,
            "basicagent_requests_sent_total",
            &[("method", "ping")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "basicagent_requests_answered_total",
            &[("method", "ping"), ("retcode", "2")]
        ),
        Some(1.0)
    );
    assert!(sample(&scrape, "basicagent_fds_open", &[]).unwrap() > 3.0);
    assert!(sample(&scrape, "basicagent_fds_limit", &[]).unwrap() >= 64.0);
    assert!(sample(&scrape, "basicagent_session_limit", &[]).unwrap() > 0.0);
    for h in [
        "basicagent_fanout_seconds_count",
        "basicagent_answer_seconds_count",
    ] {
        assert!(text.contains(h), "{h} in {text}");
    }
    // The call's call_begin went through the store's read path.
    assert!(
        sample(&scrape, "basicagent_store_seconds_count", &[("op", "read")]).unwrap() >= 1.0,
        "{text}"
    );
}

#[test]
fn call_history_facts_and_tasks_are_served_from_the_store() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut a = Agent::ready(&server, &pki, "h-a");
    let rx = stream_call(
        &server,
        json!({"target": {"hosts": ["h-a"]}, "request": {"method": "getinfo.kernel"}, "timeout": 20}),
    );
    answer(&mut a, json!({"release": "6.1.0-test"}));
    let summary = loop {
        let l = rx.recv_timeout(WAIT).unwrap();
        if l.get("summary").is_some() {
            break l;
        }
    };
    let id = summary["summary"]["call"].as_i64().expect("the call's id");

    let call = eventually("the call's end in the store", || {
        let (status, body) = server.http("GET", &format!("/v1/calls/{id}"), None, None);
        let v: Value = serde_json::from_str(&body).unwrap();
        (status == 200 && !v["finished_at"].is_null()).then_some(v)
    });
    assert_eq!(call["request"]["method"], "getinfo.kernel");
    assert_eq!(call["target"]["hosts"][0], "h-a");
    assert_eq!(call["results"][0]["host"], "h-a");
    assert_eq!(call["results"][0]["data"]["release"], "6.1.0-test");
    assert_eq!(call["summary"]["answered"], 1);
    assert!(call["who"].as_str().unwrap().starts_with("api"));
    let calls = server.get("/v1/calls");
    assert_eq!(calls[0]["id"], id);
    let mine = server.get("/v1/calls?host=h-a");
    assert_eq!(mine[0]["result"]["data"]["release"], "6.1.0-test");

    let facts = eventually("the fact", || {
        let d = server.get("/v1/agents/h-a");
        d["facts"].get("getinfo.kernel").cloned()
    });
    assert_eq!(facts["data"]["release"], "6.1.0-test");

    a.send(r#"{"method":"task.done","task":"t-9","resp":"success","retcode":2,"message":"Normal termination","data":{"exitcode":0}}"#).unwrap();
    assert_eq!(a.recv_json()["method"], "task.ack");
    let tasks = server.get("/v1/tasks?host=h-a");
    assert_eq!(tasks[0]["task"], "t-9", "stored before the ack: {tasks}");
    assert_eq!(tasks[0]["data"]["exitcode"], 0);
    assert_eq!(server.get("/v1/tasks/t-9")[0]["host"], "h-a");
    assert!(server
        .get("/v1/tasks?host=other")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn list_tasks_and_call_as_api_clients() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut a = Agent::ready(&server, &pki, "c-a");
    let api = server.api.unwrap().to_string();
    let out = Command::new(BIN)
        .args(["list", "--api", &api])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(stdout_lines(&out)[0]["host"], "c-a");

    let call = Command::new(BIN)
        .args(["call", "--api", &api, "--host", "c-a", "--timeout", "20"])
        .arg(r#"{"id":7,"method":"getinfo.kernel"}"#)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    answer(&mut a, json!({"release": "x"}));
    let out = call.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], 7);
    assert!(
        lines[0].get("host").is_none(),
        "--host prints the bare answer"
    );

    let out = Command::new(BIN)
        .args([
            "call",
            "--api",
            &api,
            "--host",
            "nobody",
            r#"{"method":"ping"}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    a.send(r#"{"method":"task.done","task":"t-c","retcode":2}"#)
        .unwrap();
    assert_eq!(a.recv_json()["method"], "task.ack");
    let out = Command::new(BIN)
        .args(["tasks", "--api", &api])
        .output()
        .unwrap();
    assert_eq!(stdout_lines(&out)[0]["task"], "t-c");
}
