//! Schedules through the HTTP API with the real server and real BasicAgent daemons: add, list, get, pause, resume, remove, results by schedule, errors.

mod util;

use std::time::Duration;

use basicagent_testsupport::Agent;
use serde_json::{json, Value};
use util::{real_agent, wait_for, Pki, Server, WAIT};

/// The server and `n` real agents connected to it; their host ids, sorted.
fn fleet(n: usize) -> (Pki, Server, Vec<Agent>, Vec<String>) {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    // Each agent its host id: 5ced0a91-0000-4000-8000-00000000000N.
    let daemons: Vec<Agent> = (0..n)
        .map(|i| {
            real_agent(
                &pki,
                &[server.listen],
                Some(format!("5ced0a91-0000-4000-8000-{i:012}")),
            )
        })
        .collect();
    let hosts = wait_for("the agents", Duration::from_secs(60), || {
        let agents = server.get("/v1/agents");
        let mut hosts: Vec<String> = agents
            .as_array()?
            .iter()
            .filter_map(|a| a["host"].as_str().map(str::to_owned))
            .collect();
        hosts.sort();
        (hosts.len() == n).then_some(hosts)
    });
    (pki, server, daemons, hosts)
}

/// One request to the API with a JSON body; (status, NDJSON lines or the error body).
fn send(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Vec<Value>) {
    let text = body.map(|b| b.to_string());
    let (status, answer) = server.http(method, path, text.as_deref(), None);
    let lines = answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    (status, lines)
}

/// A streamed answer: host lines by host, and the summary.
fn stream(server: &Server, method: &str, path: &str, body: Option<Value>) -> (Vec<Value>, Value) {
    let (status, mut lines) = send(server, method, path, body);
    assert_eq!(status, 200, "{method} {path}: {lines:?}");
    let summary = lines.pop().expect("a summary")["summary"].clone();
    assert!(
        summary.is_object(),
        "the last line is the summary: {summary}"
    );
    lines.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
    (lines, summary)
}

/// `GET /v1/schedules/SID?host=H` → the agent's `schedule.get` line.
fn get_one(server: &Server, sid: &str, host: &str) -> Value {
    let (lines, _) = stream(
        server,
        "GET",
        &format!("/v1/schedules/{sid}?host={host}"),
        None,
    );
    lines[0].clone()
}

/// Results stored for schedule `sid` on `host`.
fn results(server: &Server, host: &str, sid: &str) -> Vec<Value> {
    server
        .get(&format!("/v1/tasks?host={host}&schedule={sid}&limit=10000"))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_schedule_added_through_the_api_runs_on_two_agents_and_its_results_list_with_the_tasks() {
    let (_pki, server, daemons, hosts) = fleet(2);
    let (lines, summary) = stream(
        &server,
        "POST",
        "/v1/schedules",
        Some(json!({"target": {"all": true},
                    "schedule": {"every": 1, "overlap": "skip"},
                    "request": {"method": "async.bash", "cmd": "echo tick"},
                    "timeout": 10})),
    );
    let add_summary = summary.clone();
    assert_eq!(summary["targeted"], 2, "{summary}");
    assert_eq!(summary["answered"], 2, "{summary} {lines:?}");
    assert!(
        summary["call"].is_number(),
        "recorded in the history: {summary}"
    );
    let mut sids = Vec::new();
    for (line, host) in lines.iter().zip(&hosts) {
        assert_eq!(line["host"], host.as_str());
        assert_eq!(line["retcode"], 2, "{line}");
        let next = line["data"]["next"].as_array().expect("next fire times");
        assert!(!next.is_empty(), "{line}");
        sids.push(line["data"]["schedule"].as_str().unwrap().to_owned());
    }

    // Runs happen on both agents; the results list by schedule, with their fields.
    for (host, sid) in hosts.iter().zip(&sids) {
        let got = wait_for("two results of the schedule", WAIT, || {
            let r = results(&server, host, sid);
            (r.len() >= 2).then_some(r)
        });
        let mut runs: Vec<u64> = Vec::new();
        for t in &got {
            assert_eq!(t["host"], host.as_str());
            assert_eq!(t["schedule"], sid.as_str(), "{t}");
            assert!(t["scheduled_at"].is_number(), "{t}");
            assert_eq!(t["data"]["stdout"], "tick\n", "{t}");
            runs.push(t["run"].as_u64().unwrap_or_else(|| panic!("run: {t}")));
        }
        // Newest first, one result per run.
        let mut sorted = runs.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(runs, sorted, "newest first, no repeats");
        // Another schedule id filters everything out; the host's list has them too.
        assert!(results(&server, host, "0000-other").is_empty());
        let all = server.get(&format!("/v1/tasks?host={host}&limit=10000"));
        assert!(all
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["schedule"] == sid.as_str()));
    }
    // Without a host: the schedule's results from everywhere.
    let anywhere = server.get(&format!("/v1/tasks?schedule={}&limit=1", sids[0]));
    assert_eq!(anywhere.as_array().unwrap().len(), 1, "limit applies");
    assert_eq!(anywhere[0]["schedule"], sids[0].as_str());

    // GET /v1/schedules fans schedule.list out to every connected agent.
    let (lines, summary) = stream(&server, "GET", "/v1/schedules", None);
    assert_eq!(summary["answered"], 2, "{summary}");
    for (line, sid) in lines.iter().zip(&sids) {
        assert_eq!(line["data"]["count"], 1, "{line}");
        assert_eq!(line["data"]["schedules"][0]["schedule"], sid.as_str());
    }
    // ... or to one host.
    let (lines, summary) = stream(
        &server,
        "GET",
        &format!("/v1/schedules?host={}", hosts[1]),
        None,
    );
    assert_eq!(summary["targeted"], 1);
    assert_eq!(
        lines[0]["data"]["schedules"][0]["schedule"],
        sids[1].as_str()
    );

    // The add is in the call history with the request the server built.
    let call = server.get(&format!("/v1/calls/{}", add_summary["call"]));
    assert_eq!(call["request"]["method"], "schedule.add", "{call}");
    assert_eq!(call["request"]["request"]["cmd"], "echo tick", "{call}");
    assert_eq!(call["request"]["every"], 1, "{call}");
    assert_eq!(call["results"].as_array().unwrap().len(), 2, "{call}");

    // Each host made its own id: removing the first host's id everywhere
    // (a body target) removes it there and is the other's 3021.
    let (lines, summary) = stream(
        &server,
        "DELETE",
        &format!("/v1/schedules/{}", sids[0]),
        Some(json!({"target": {"all": true}})),
    );
    assert_eq!(summary["answered"], 1, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert_eq!(lines[0]["data"]["state"], "removed", "{lines:?}");
    assert_eq!(lines[1]["retcode"], 3021, "{lines:?}");
    let (lines, _) = stream(&server, "GET", "/v1/schedules?name=*", None);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["data"]["count"], 0, "{lines:?}");
    assert_eq!(lines[1]["data"]["count"], 1, "{lines:?}");
    drop(daemons);
}

#[test]
fn pause_resume_and_remove_through_the_api() {
    let (_pki, server, daemons, hosts) = fleet(1);
    let host = &hosts[0];
    let (lines, _) = stream(
        &server,
        "POST",
        "/v1/schedules",
        Some(
            json!({"target": {"hosts": [host]}, "schedule": {"every": 1},
                    "request": {"method": "getinfo.kernel"}}),
        ),
    );
    let sid = lines[0]["data"]["schedule"]
        .as_str()
        .unwrap_or_else(|| panic!("{lines:?}\n{}", daemons[0].log()))
        .to_owned();
    wait_for("a first result", WAIT, || {
        (!results(&server, host, &sid).is_empty()).then_some(())
    });

    // Pause (query target): the agent says paused, and no run starts while it is.
    let (lines, summary) = stream(
        &server,
        "POST",
        &format!("/v1/schedules/{sid}/pause?host={host}"),
        None,
    );
    assert_eq!(summary["answered"], 1, "{lines:?}");
    let paused = get_one(&server, &sid, host);
    assert_eq!(paused["data"]["state"], "paused", "{paused}");
    let runs = paused["data"]["runs"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let still = get_one(&server, &sid, host);
    assert_eq!(still["data"]["runs"].as_u64(), Some(runs), "{still}");

    // Resume (body target): runs again.
    let (_, summary) = stream(
        &server,
        "POST",
        &format!("/v1/schedules/{sid}/resume"),
        Some(json!({"target": {"hosts": [host]}, "timeout": 10})),
    );
    assert_eq!(summary["answered"], 1);
    wait_for("a run after resume", WAIT, || {
        let g = get_one(&server, &sid, host);
        (g["data"]["runs"].as_u64() > Some(runs)).then_some(())
    });

    // Remove: gone from the list; the agent's own 3021 for the unknown id is passed through.
    let (lines, summary) = stream(
        &server,
        "DELETE",
        &format!("/v1/schedules/{sid}?host={host}"),
        None,
    );
    assert_eq!(summary["answered"], 1, "{lines:?}");
    assert_eq!(lines[0]["data"]["state"], "removed");
    let (lines, _) = stream(&server, "GET", &format!("/v1/schedules?host={host}"), None);
    assert_eq!(lines[0]["data"]["count"], 0, "{lines:?}");
    let (lines, summary) = stream(
        &server,
        "DELETE",
        &format!("/v1/schedules/{sid}?host={host}"),
        None,
    );
    assert_eq!(summary["failed"], 1);
    assert_eq!(lines[0]["retcode"], 3021, "{lines:?}");
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("\"schedule\""),
        "{lines:?}"
    );
    drop(daemons);
}

/// The error body's code and message.
fn error(status_and_lines: (u16, Vec<Value>)) -> (u16, String, String) {
    let (status, lines) = status_and_lines;
    let e = &lines[0]["error"];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn bad_bodies_are_400_naming_the_field_and_agent_errors_and_offline_hosts_are_lines() {
    let (_pki, server, daemons, hosts) = fleet(1);
    let host = &hosts[0];
    let ok_target = json!({"hosts": [host]});
    let cases = [
        (
            json!({"target": ok_target, "schedule": "every minute",
                   "request": {"method": "getinfo.kernel"}}),
            "bad_schedule",
            "\"schedule\"",
        ),
        (
            json!({"target": ok_target, "schedule": {},
                   "request": {"method": "getinfo.kernel"}}),
            "bad_schedule",
            "trigger",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5, "request": {}},
                   "request": {"method": "getinfo.kernel"}}),
            "bad_schedule",
            "\"request\"",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5}, "request": {"cmd": "x"}}),
            "bad_request",
            "\"request\"",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5}, "request": [1]}),
            "bad_request",
            "\"request\"",
        ),
        (
            json!({"target": {"hosts": []}, "schedule": {"every": 5},
                   "request": {"method": "getinfo.kernel"}}),
            "bad_target",
            "target",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5},
                   "request": {"method": "getinfo.kernel"}, "timeout": 0}),
            "bad_timeout",
            "\"timeout\"",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5}}),
            "bad_json",
            "request",
        ),
        (
            json!({"target": ok_target, "schedule": {"every": 5},
                   "request": {"method": "getinfo.kernel"}, "extra": 1}),
            "bad_json",
            "extra",
        ),
    ];
    for (body, code, field) in cases {
        let (status, c, message) =
            error(send(&server, "POST", "/v1/schedules", Some(body.clone())));
        assert_eq!(status, 400, "{body}");
        assert_eq!(c, code, "{body}: {message}");
        assert!(message.contains(field), "{body}: {message:?} names {field}");
    }
    let (status, _, message) = error(send(&server, "POST", "/v1/schedules", None));
    assert_eq!(status, 400, "{message}");
    for (method, path, code) in [
        ("DELETE", "/v1/schedules/abc", "bad_target"),
        (
            "POST",
            "/v1/schedules/abc/pause?host=a&name=b",
            "bad_target",
        ),
        ("POST", "/v1/schedules/abc/resume?bogus=1", "bad_params"),
        ("GET", "/v1/schedules/a%2Fb?host=x", "bad_params"),
        ("GET", "/v1/schedules?timeout=-1", "bad_timeout"),
        ("GET", "/v1/tasks?schedule=a%0Ab", "bad_params"),
        ("GET", "/v1/tasks?schedules=x", "bad_params"),
    ] {
        let (status, c, message) = error(send(&server, method, path, None));
        assert_eq!(
            (status, c.as_str()),
            (400, code),
            "{method} {path}: {message}"
        );
    }
    let (status, c, _) = error(send(
        &server,
        "POST",
        "/v1/schedules",
        Some(
            json!({"target": {"name": "no-such-*"}, "schedule": {"every": 5},
                    "request": {"method": "getinfo.kernel"}}),
        ),
    ));
    assert_eq!((status, c.as_str()), (404, "no_target"));

    // The agent's 3021 for a bad cron expression, and an offline host's 3100 line.
    let (lines, summary) = stream(
        &server,
        "POST",
        "/v1/schedules",
        Some(json!({"target": {"hosts": [host, "sched-api-offline"]},
                    "schedule": {"cron": "*/5 * * * *"},
                    "request": {"method": "getinfo.kernel"}})),
    );
    assert_eq!(summary["targeted"], 2);
    assert_eq!(summary["failed"], 1, "{summary}");
    assert_eq!(summary["offline"], 1, "{summary}");
    let agent = lines.iter().find(|l| l["host"] == host.as_str()).unwrap();
    assert_eq!(agent["retcode"], 3021, "{agent}");
    assert!(
        agent["message"].as_str().unwrap().contains("\"cron\""),
        "{agent}"
    );
    let offline = lines
        .iter()
        .find(|l| l["host"] == "sched-api-offline")
        .unwrap();
    assert_eq!(offline["retcode"], 3100, "{offline}");
    assert_eq!(offline["resp"], "failed");

    // More of the agent's own refusals, each naming its field, passed through.
    for (schedule, request, field) in [
        (
            json!({"every": 0}),
            json!({"method": "getinfo.kernel"}),
            "\"every\"",
        ),
        (
            json!({"cron": "0 * * * * *", "tz": "Nowhere/City"}),
            json!({"method": "getinfo.kernel"}),
            "\"tz\"",
        ),
        (
            json!({"every": 5, "overlap": "later"}),
            json!({"method": "getinfo.kernel"}),
            "\"overlap\"",
        ),
        (
            json!({"every": 5}),
            json!({"method": "ping"}),
            "\"request\"",
        ),
    ] {
        let (lines, summary) = stream(
            &server,
            "POST",
            "/v1/schedules",
            Some(json!({"target": {"hosts": [host]}, "schedule": schedule, "request": request})),
        );
        assert_eq!(summary["failed"], 1, "{schedule}: {lines:?}");
        assert_eq!(lines[0]["retcode"], 3021, "{schedule}: {lines:?}");
        let message = lines[0]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{schedule}: {message:?} names {field}"
        );
    }

    // Both keep serving: a good schedule is added next.
    let (lines, summary) = stream(
        &server,
        "POST",
        "/v1/schedules",
        Some(
            json!({"target": {"hosts": [host]}, "schedule": {"every": 3600},
                    "request": {"method": "getinfo.kernel"}}),
        ),
    );
    assert_eq!(summary["answered"], 1, "{lines:?}");
    drop(daemons);
}
