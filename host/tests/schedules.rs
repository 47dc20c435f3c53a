//! Scheduled requests end to end: the real daemon, the real reference server, real commands; runs go on while the server is away, survive `kill -9` without running a slot twice, and follow their overlap, catch-up and on-boot rules.

use std::collections::HashSet;
use std::time::Duration;

use basicagent_testsupport::*;
use serde_json::{json, Value};

/// `task_done` events the server recorded for schedule `sid`, in arrival order.
fn runs(server: &Server, sid: &str) -> Vec<Value> {
    server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "task_done" && e["schedule"] == sid)
        .collect()
}

fn add(server: &Server, host: &str, params: Value) -> String {
    let mut req = params;
    req["method"] = json!("schedule.add");
    let v = server.call(host, &req.to_string());
    assert_eq!(v["retcode"], 2, "{v}");
    v["data"]["schedule"].as_str().unwrap().to_owned()
}

fn start(pki: &Pki, ip: &str, agent_extra: &str) -> (Server, Agent, String, String) {
    let port = free_port();
    let listen = format!("{ip}:{port}");
    let server = Server::serve(pki, &listen, "server", &[]);
    let agent = Agent::start(pki, port, &[ip], "dns = false", agent_extra, &["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    (server, agent, host, listen)
}

/// Every run's slot is unique and runs are numbered 1, 2, 3 … in order.
fn assert_in_order_once(events: &[Value]) {
    let mut tasks = HashSet::new();
    let mut slots = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        assert!(
            tasks.insert(e["task"].as_str().unwrap().to_owned()),
            "task delivered twice: {e}"
        );
        assert!(
            slots.insert(e["scheduled_at"].as_u64().unwrap()),
            "slot run twice: {e}"
        );
        if i > 0 {
            let prev = &events[i - 1];
            assert!(
                e["run"].as_u64() > prev["run"].as_u64(),
                "out of order: {prev} then {e}"
            );
            assert!(
                e["scheduled_at"].as_u64() > prev["scheduled_at"].as_u64(),
                "out of order: {prev} then {e}"
            );
        }
    }
}

#[test]
fn every_second_while_the_server_is_away_is_delivered_once_each_in_order() {
    let pki = Pki::new();
    let (server, _agent, host, listen) = start(&pki, "127.0.16.1", "");
    let sid = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 1}),
    );
    wait_for("a first run", Duration::from_secs(10), || {
        (!runs(&server, &sid).is_empty()).then_some(())
    });
    server.stop();
    std::thread::sleep(Duration::from_secs(5));
    let server = Server::serve(&pki, &listen, "server", &[]);
    server.wait_agent(Duration::from_secs(15));
    let got = wait_for("the runs made while away", Duration::from_secs(15), || {
        let r = runs(&server, &sid);
        (r.len() >= 4).then_some(r)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let got_later = runs(&server, &sid);
    assert!(got_later.len() >= got.len());
    assert_in_order_once(&got_later);
    // About five made while away (the count per second, not a timing).
    let first_run = got_later[0]["run"].as_u64().unwrap();
    assert!(
        first_run >= 2,
        "runs made before the server left were delivered then"
    );
    let away: Vec<&Value> = got_later
        .iter()
        .filter(|e| e["scheduled_at"].as_u64() < got_later.last().unwrap()["scheduled_at"].as_u64())
        .collect();
    assert!(away.len() >= 4, "about five runs while away: {got_later:?}");
    assert_eq!(got_later[0]["retcode"], 2, "{}", got_later[0]);
    // The server lists them with the tasks, with their schedule fields.
    let out = std::process::Command::new(server_bin())
        .arg("tasks")
        .arg("--admin")
        .arg(server.admin.clone())
        .output()
        .unwrap();
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|t: &Value| t["schedule"] == sid.as_str())
        .collect();
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|t| t["run"].as_u64().is_some() && t["data"]["sysname"] == "Linux"),
        "{listed:?}"
    );
    // agent.info counts the schedule.
    let info = server.call(&host, r#"{"method":"agent.info"}"#);
    assert_eq!(info["data"]["schedules"], 1, "{info}");
}

#[test]
fn bad_expressions_and_parameters_are_3021_naming_the_field_and_the_agent_keeps_serving() {
    let pki = Pki::new();
    let (server, _agent, host, _) = start(&pki, "127.0.16.2", "max_schedules = 1");
    let cases = [
        (
            json!({"request": {"method": "getinfo.kernel"}, "cron": "*/5 * * * *"}),
            "\"cron\"",
            "six fields",
        ),
        (
            json!({"request": {"method": "getinfo.kernel"}, "cron": "0 99 * * * *"}),
            "\"cron\"",
            "99",
        ),
        (
            json!({"request": {"method": "getinfo.kernel"}, "cron": "0 0 * * * *", "tz": "Nowhere/City"}),
            "\"tz\"",
            "unknown time zone",
        ),
        (
            json!({"request": {"method": "getinfo.kernel"}, "every": 0}),
            "\"every\"",
            "minimum interval",
        ),
        (
            json!({"request": {"method": "getinfo.kernel"}, "at": "soon"}),
            "\"at\"",
            "RFC 3339",
        ),
        (
            json!({"request": {"method": "getinfo.kernel"}, "every": 5, "overlap": "later"}),
            "\"overlap\"",
            "skip",
        ),
        (
            json!({"request": {"method": "getinfo.nothing"}, "every": 5}),
            "\"request\"",
            "no plugin",
        ),
        (json!({"every": 5}), "\"request\"", "missing"),
    ];
    for (params, field, reason) in cases {
        let mut req = params.clone();
        req["method"] = json!("schedule.add");
        let v = server.call(&host, &req.to_string());
        assert_eq!(v["retcode"], 3021, "{params}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(field) && msg.contains(reason),
            "{params}: {msg}"
        );
        assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    }
    for method in ["schedule.get", "schedule.remove", "schedule.pause"] {
        let v = server.call(
            &host,
            &json!({"method": method, "schedule": "0000-nope"}).to_string(),
        );
        assert_eq!(v["retcode"], 3021, "{v}");
        let v = server.call(
            &host,
            &json!({"method": method, "schedule": "../x"}).to_string(),
        );
        assert_eq!(v["retcode"], 3021, "{v}");
    }
    add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 3600}),
    );
    let v = server.call(
        &host,
        r#"{"method":"schedule.add","request":{"method":"getinfo.kernel"},"every":60}"#,
    );
    assert_eq!(v["retcode"], 3021, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_schedules"),
        "{v}"
    );
    let list = server.call(&host, r#"{"method":"schedule.list"}"#);
    assert_eq!(list["data"]["count"], 1, "{list}");
    assert_eq!(
        server.call(&host, r#"{"method":"getinfo.kernel"}"#)["retcode"],
        2
    );
}

#[test]
fn kill_9_and_restart_never_run_a_slot_twice() {
    let pki = Pki::new();
    let (server, mut agent, host, _) = start(&pki, "127.0.16.3", "");
    let sid = add(
        &server,
        &host,
        json!({"request": {"method": "async.bash", "cmd": "echo tick"}, "every": 1}),
    );
    wait_for("three runs", Duration::from_secs(15), || {
        (runs(&server, &sid).len() >= 3).then_some(())
    });
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(5));
    agent.spawn(&["-f"]);
    let before = runs(&server, &sid).len();
    wait_for("runs after the restart", Duration::from_secs(20), || {
        (runs(&server, &sid).len() >= before + 3).then_some(())
    });
    let all = runs(&server, &sid);
    let mut slots = HashSet::new();
    let mut numbers = HashSet::new();
    for e in &all {
        assert!(
            slots.insert(e["scheduled_at"].as_u64().unwrap()),
            "slot run twice: {e} in {all:?}"
        );
        assert!(
            numbers.insert(e["run"].as_u64().unwrap()),
            "run number twice: {e}"
        );
    }
    let listed = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": sid}).to_string(),
    );
    assert_eq!(listed["retcode"], 2, "{listed}");
    assert!(listed["data"]["runs"].as_u64().unwrap() >= all.len() as u64);
}

#[test]
fn overlap_skip_queue_and_replace_on_a_command_longer_than_its_interval() {
    let pki = Pki::new();
    let (server, _agent, host, _) = start(&pki, "127.0.16.4", "");
    let cmd = json!({"method": "async.bash", "cmd": "sleep 2.5; echo done"});
    let skip = add(
        &server,
        &host,
        json!({"request": cmd, "every": 1, "overlap": "skip"}),
    );
    let queue = add(
        &server,
        &host,
        json!({"request": cmd, "every": 1, "overlap": "queue"}),
    );
    let replace = add(
        &server,
        &host,
        json!({"request": cmd, "every": 1, "overlap": "replace"}),
    );
    wait_for("two skip runs", Duration::from_secs(20), || {
        (runs(&server, &skip).len() >= 2).then_some(())
    });
    wait_for("three queue runs", Duration::from_secs(20), || {
        (runs(&server, &queue).len() >= 3).then_some(())
    });
    wait_for("three replace results", Duration::from_secs(20), || {
        (runs(&server, &replace).len() >= 3).then_some(())
    });
    // skip: every run finished, and slots were skipped between them.
    let s = runs(&server, &skip);
    assert!(s.iter().all(|e| e["retcode"] == 2), "{s:?}");
    let gap = s[1]["scheduled_at"].as_u64().unwrap() - s[0]["scheduled_at"].as_u64().unwrap();
    assert!(gap >= 2, "slots during the run were skipped: {s:?}");
    // queue: runs back to back, never two at once, numbered in order.
    let q = runs(&server, &queue);
    assert!(q.iter().all(|e| e["retcode"] == 2), "{q:?}");
    assert_in_order_once(&q);
    // replace: the earlier runs were cancelled by the next slot.
    let r = runs(&server, &replace);
    assert!(
        r.iter().any(|e| e["retcode"] == 3028),
        "a replaced run ends cancelled: {r:?}"
    );
    let log_line = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": queue}).to_string(),
    );
    assert_eq!(log_line["data"]["overlap"], "queue");
}

#[test]
fn catch_up_one_runs_a_single_missed_slot_after_a_restart() {
    let pki = Pki::new();
    let (server, mut agent, host, _) = start(&pki, "127.0.16.5", "");
    let one = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 2, "catch_up": "one"}),
    );
    let none = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 2}),
    );
    wait_for("a first run", Duration::from_secs(10), || {
        (!runs(&server, &one).is_empty() && !runs(&server, &none).is_empty()).then_some(())
    });
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (one_before, none_before) = (runs(&server, &one), runs(&server, &none));
    std::thread::sleep(Duration::from_secs(7));
    let restart_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    agent.spawn(&["-f"]);
    let caught = wait_for("the caught-up run", Duration::from_secs(15), || {
        let r = runs(&server, &one);
        (r.len() > one_before.len()).then(|| r[one_before.len()].clone())
    });
    // The latest missed slot ran, once: the next result is a later regular slot.
    let last_before = one_before.last().unwrap()["scheduled_at"].as_u64().unwrap();
    let slot = caught["scheduled_at"].as_u64().unwrap();
    assert!(
        slot >= last_before + 6,
        "the latest missed slot: {caught} after {last_before}"
    );
    let after = wait_for("a regular run", Duration::from_secs(15), || {
        let r = runs(&server, &one);
        (r.len() > one_before.len() + 1).then(|| r[one_before.len() + 1].clone())
    });
    assert!(after["scheduled_at"].as_u64().unwrap() > slot);
    // catch_up none: nothing from the time the agent was down.
    let n = wait_for("a run after the restart", Duration::from_secs(15), || {
        let r = runs(&server, &none);
        (r.len() > none_before.len()).then(|| r[none_before.len()].clone())
    });
    let down_from = none_before.last().unwrap()["scheduled_at"]
        .as_u64()
        .unwrap();
    let first_after = n["scheduled_at"].as_u64().unwrap();
    assert!(
        first_after >= restart_wall,
        "catch_up none ran a slot from while the agent was down: {n} (down from {down_from}, restarted at {restart_wall})"
    );
    // catch_up one: its caught-up slot is from the down time.
    assert!(
        slot <= restart_wall + 1,
        "{caught} (restarted at {restart_wall})"
    );
}

#[test]
fn on_boot_fires_once_per_boot_id() {
    let pki = Pki::new();
    let (server, mut agent, host, _) = start(&pki, "127.0.16.6", "");
    let sid = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "on_boot": true}),
    );
    wait_for("the boot run", Duration::from_secs(10), || {
        (runs(&server, &sid).len() == 1).then_some(())
    });
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10));
    agent.spawn(&["-f"]);
    // A canary with a short interval shows the restarted agent is deciding.
    let canary = {
        wait_for("the agent back", Duration::from_secs(15), || {
            let v = server.call_raw(&host, r#"{"method":"ping"}"#);
            String::from_utf8_lossy(&v.stdout)
                .contains("\"retcode\":2")
                .then_some(())
        });
        add(
            &server,
            &host,
            json!({"request": {"method": "getinfo.kernel"}, "every": 1}),
        )
    };
    wait_for("canary runs", Duration::from_secs(10), || {
        (runs(&server, &canary).len() >= 2).then_some(())
    });
    assert_eq!(runs(&server, &sid).len(), 1, "same boot id: no second run");
    let g = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": sid}).to_string(),
    );
    assert_eq!(g["data"]["runs"], 1, "{g}");
    // A different boot id (the stored one edited) fires it again once.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10));
    let file = agent.path(&format!("state/schedules/{sid}.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    v["state"]["boot"] = json!("00000000-0000-0000-0000-000000000000");
    std::fs::write(&file, v.to_string()).unwrap();
    agent.spawn(&["-f"]);
    wait_for("a run for the new boot id", Duration::from_secs(15), || {
        (runs(&server, &sid).len() == 2).then_some(())
    });
}

#[test]
fn remove_and_pause_stop_runs_at_once() {
    let pki = Pki::new();
    let (server, _agent, host, _) = start(&pki, "127.0.16.7", "");
    let a = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 1}),
    );
    let b = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 1}),
    );
    wait_for("runs", Duration::from_secs(10), || {
        (runs(&server, &a).len() >= 2 && runs(&server, &b).len() >= 2).then_some(())
    });
    let r = server.call(
        &host,
        &json!({"method": "schedule.remove", "schedule": a}).to_string(),
    );
    assert_eq!(r["retcode"], 2, "{r}");
    let p = server.call(
        &host,
        &json!({"method": "schedule.pause", "schedule": b}).to_string(),
    );
    assert_eq!(p["data"]["state"], "paused", "{p}");
    // Results made before the answer may still arrive; count after a settle.
    std::thread::sleep(Duration::from_millis(800));
    let (ra, rb) = (runs(&server, &a).len(), runs(&server, &b).len());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&server, &a).len(), ra, "removed: no more runs");
    assert_eq!(runs(&server, &b).len(), rb, "paused: no more runs");
    let g = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": a}).to_string(),
    );
    assert_eq!(g["retcode"], 3021, "{g}");
    let r = server.call(
        &host,
        &json!({"method": "schedule.resume", "schedule": b}).to_string(),
    );
    assert_eq!(r["retcode"], 2, "{r}");
    wait_for("runs after resume", Duration::from_secs(10), || {
        (runs(&server, &b).len() > rb).then_some(())
    });
    // Paused slots are not made up after the resume.
    let after = runs(&server, &b);
    assert!(after.len() <= rb + 3, "{after:?}");
}

#[test]
fn results_kept_per_schedule_are_bounded_oldest_dropped_and_async_tasks_still_run() {
    let pki = Pki::new();
    let (server, agent, host, listen) = start(
        &pki,
        "127.0.16.8",
        "schedule_keep_results = 3\nmax_tasks = 2",
    );
    let sid = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "every": 1}),
    );
    wait_for("a first run", Duration::from_secs(10), || {
        (!runs(&server, &sid).is_empty()).then_some(())
    });
    server.stop();
    wait_for(
        "results dropped while away",
        Duration::from_secs(30),
        || {
            agent
                .log()
                .contains(&format!(
                    "schedule {sid}: 1 unacknowledged result(s) dropped"
                ))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::serve(&pki, &listen, "server", &[]);
    server.wait_agent(Duration::from_secs(15));
    // More results than max_tasks are kept, yet async.bash is admitted.
    let v = server.call(
        &host,
        r#"{"method":"async.bash","cmd":"echo still served"}"#,
    );
    assert_eq!(v["retcode"], 2, "{v}");
    std::thread::sleep(Duration::from_millis(1500));
    let got = runs(&server, &sid);
    assert_in_order_once(&got);
    // Runs go on at one a second; the away ones were cut to the newest 3.
    let g = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": sid}).to_string(),
    );
    let dropped = g["data"]["results_dropped"].as_u64().unwrap();
    assert!(dropped >= 1, "{g}");
    let made = g["data"]["runs"].as_u64().unwrap();
    assert!(
        (got.len() as u64) + dropped <= made,
        "{} delivered + {dropped} dropped of {made} runs",
        got.len()
    );
}

#[test]
fn at_runs_once_and_cron_with_seconds_in_a_named_zone_runs_on_its_slots() {
    let pki = Pki::new();
    let (server, _agent, host, _) = start(&pki, "127.0.16.9", "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let when = rfc3339_utc(now + 2);
    let once = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "at": when}),
    );
    let cron = add(
        &server,
        &host,
        json!({"request": {"method": "getinfo.kernel"}, "cron": "*/2 * * * * *", "tz": "Europe/Berlin"}),
    );
    wait_for("the at run and cron runs", Duration::from_secs(20), || {
        (runs(&server, &once).len() == 1 && runs(&server, &cron).len() >= 3).then_some(())
    });
    assert_eq!(runs(&server, &once)[0]["scheduled_at"], now + 2);
    let c = runs(&server, &cron);
    assert_in_order_once(&c);
    assert!(
        c.iter()
            .all(|e| e["scheduled_at"].as_u64().unwrap() % 2 == 0),
        "{c:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(&server, &once).len(), 1, "at runs once");
    let g = server.call(
        &host,
        &json!({"method": "schedule.get", "schedule": once}).to_string(),
    );
    assert_eq!(g["data"]["state"], "finished", "{g}");
}

/// `secs` as an RFC 3339 UTC time.
fn rfc3339_utc(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
