//! Every `Store` method, written once and run against every backend
//! (`memory::*`, `sqlite::*` and, with the `postgres` feature, `pg::*`
//! against a real PostgreSQL), so they cannot drift apart.

use std::sync::Arc;

#[cfg(feature = "postgres")]
mod common;
use std::time::Duration;

use basicagent_store::{
    AgentRecord, CallRecord, HostResult, MemoryStore, Pruned, Retention, SqliteOptions,
    SqliteStore, Store, StoreError, TaskResult,
};

fn agent(host: &str, at: i64) -> AgentRecord {
    AgentRecord {
        host: host.into(),
        name: format!("name-{host}"),
        addr: "127.0.0.1:4000".into(),
        version: "0.1.0".into(),
        plugins: vec!["getinfo.kernel".into(), "sync.bash".into()],
        node: None,
        connected_at: at,
    }
}

fn call_rec(at: i64) -> CallRecord {
    CallRecord {
        who: "operator".into(),
        at,
        target: r#"{"all":true}"#.into(),
        request: r#"{"method":"getinfo.kernel"}"#.into(),
    }
}

fn result(host: &str, at: i64, retcode: i64) -> HostResult {
    HostResult {
        host: host.into(),
        at,
        retcode,
        response: format!(r#"{{"host":"{host}","retcode":{retcode}}}"#),
    }
}

fn task(host: &str, id: &str, at: i64) -> TaskResult {
    TaskResult {
        host: host.into(),
        task: id.into(),
        received_at: at,
        retcode: 0,
        message: "done".into(),
        frame: format!(r#"{{"event":"task.done","task":"{id}"}}"#),
        schedule: None,
    }
}

fn ids(tasks: &[TaskResult]) -> Vec<(String, String)> {
    tasks
        .iter()
        .map(|t| (t.host.clone(), t.task.clone()))
        .collect()
}

fn pair(h: &str, t: &str) -> (String, String) {
    (h.into(), t.into())
}

fn no_limits() -> Retention {
    Retention {
        calls: Duration::MAX,
        tasks: Duration::MAX,
        max_calls: u64::MAX,
        max_results: u64::MAX,
        max_tasks: u64::MAX,
    }
}

// ---------------------------------------------------------------- agents

fn agents_seen_upserts_and_keeps_first_seen(s: &dyn Store) {
    s.agents_seen(&[agent("h1", 100), agent("h2", 110)])
        .unwrap();
    let mut again = agent("h1", 200);
    again.name = "renamed".into();
    again.plugins = vec!["ping".into()];
    again.node = Some("node-a".into());
    s.agents_seen(&[again]).unwrap();
    let h1 = s.agent("h1").unwrap().unwrap();
    assert_eq!(h1.name, "renamed");
    assert_eq!(h1.plugins, vec!["ping".to_string()]);
    assert_eq!(h1.node.as_deref(), Some("node-a"));
    assert_eq!(h1.first_seen, 100);
    assert_eq!(h1.last_seen, 200);
    assert_eq!(h1.connected_at, Some(200));
    // A session that connected earlier than last_seen (clock skew between
    // nodes) does not move last_seen back.
    s.agents_seen(&[agent("h1", 150)]).unwrap();
    let h1 = s.agent("h1").unwrap().unwrap();
    assert_eq!((h1.first_seen, h1.last_seen), (100, 200));
    assert_eq!(h1.connected_at, Some(150));
}

fn agents_seen_same_host_twice_in_one_batch_keeps_the_last(s: &dyn Store) {
    let mut second = agent("h1", 20);
    second.version = "2".into();
    s.agents_seen(&[agent("h1", 10), second]).unwrap();
    let all = s.agents().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].version, "2");
    assert_eq!((all[0].first_seen, all[0].last_seen), (10, 20));
}

fn agents_sorted_by_host_without_facts(s: &dyn Store) {
    s.agents_seen(&[agent("c", 1), agent("a", 1), agent("b", 1)])
        .unwrap();
    s.agent_fact("a", "getinfo.kernel", r#"{"release":"6.1"}"#, 5)
        .unwrap();
    let all = s.agents().unwrap();
    let hosts: Vec<&str> = all.iter().map(|a| a.host.as_str()).collect();
    assert_eq!(hosts, ["a", "b", "c"]);
    assert!(all.iter().all(|a| a.facts.is_empty()));
    assert_eq!(s.agent("a").unwrap().unwrap().facts.len(), 1);
}

fn agents_empty_batches_and_unknown_host(s: &dyn Store) {
    s.agents_seen(&[]).unwrap();
    s.agents_gone(&[], 5).unwrap();
    assert!(s.agents().unwrap().is_empty());
    assert_eq!(s.agent("nobody").unwrap(), None);
    s.agents_gone(&["nobody".into()], 5).unwrap();
    assert_eq!(s.agent("nobody").unwrap(), None);
}

fn agents_gone_clears_connected_at_unless_a_newer_session(s: &dyn Store) {
    s.agents_seen(&[agent("h1", 100), agent("h2", 100)])
        .unwrap();
    s.agents_gone(&["h1".into()], 150).unwrap();
    let h1 = s.agent("h1").unwrap().unwrap();
    assert_eq!(h1.connected_at, None);
    assert_eq!(h1.last_seen, 150);
    assert_eq!(s.agent("h2").unwrap().unwrap().connected_at, Some(100));
    // h2 reconnected at 300; the "gone" of its old session arrives late.
    s.agents_seen(&[agent("h2", 300)]).unwrap();
    s.agents_gone(&["h2".into()], 200).unwrap();
    let h2 = s.agent("h2").unwrap().unwrap();
    assert_eq!(h2.connected_at, Some(300));
    assert_eq!(h2.last_seen, 300);
    // Gone twice: harmless; last_seen never goes back.
    s.agents_gone(&["h1".into()], 120).unwrap();
    assert_eq!(s.agent("h1").unwrap().unwrap().last_seen, 150);
}

fn node_gone_marks_offline_only_the_sessions_still_on_that_node(s: &dyn Store) {
    let on = |host: &str, node: Option<&str>, at: i64| {
        let mut a = agent(host, at);
        a.node = node.map(String::from);
        a
    };
    s.agents_seen(&[
        on("a", Some("n1"), 10),
        on("b", Some("n1"), 10),
        on("c", Some("n2"), 10),
        on("d", None, 10),
        on("e", Some("n1"), 10),
    ])
    .unwrap();
    // b moved to n2 before n1 died; e reconnected to n1 after "death" time
    // (n1 restarted); a stays on n1.
    s.agents_seen(&[on("b", Some("n2"), 20), on("e", Some("n1"), 60)])
        .unwrap();
    assert_eq!(s.node_gone("n1", 50).unwrap(), 1);
    let a = s.agent("a").unwrap().unwrap();
    assert_eq!((a.connected_at, a.last_seen), (None, 50));
    assert_eq!(s.agent("b").unwrap().unwrap().connected_at, Some(20));
    assert_eq!(s.agent("c").unwrap().unwrap().connected_at, Some(10));
    assert_eq!(s.agent("d").unwrap().unwrap().connected_at, Some(10));
    assert_eq!(s.agent("e").unwrap().unwrap().connected_at, Some(60));
    // Again, later: a is already offline and keeps its last_seen.
    assert_eq!(s.node_gone("n1", 55).unwrap(), 0);
    assert_eq!(s.agent("a").unwrap().unwrap().last_seen, 50);
    assert_eq!(s.node_gone("nobody", 100).unwrap(), 0);
    // The node keeps showing as the last node the agent was on.
    assert_eq!(s.agent("a").unwrap().unwrap().node.as_deref(), Some("n1"));
}

fn agent_fact_keeps_the_latest_per_method(s: &dyn Store) {
    s.agents_seen(&[agent("h1", 1)]).unwrap();
    s.agent_fact("h1", "getinfo.kernel", r#"{"v":1}"#, 10)
        .unwrap();
    s.agent_fact("h1", "getinfo.kernel", r#"{"v":2}"#, 20)
        .unwrap();
    s.agent_fact("h1", "getinfo.kernel", r#"{"v":0}"#, 5)
        .unwrap(); // older: ignored
    s.agent_fact("h1", "getinfo.cpu", r#"{"n":2}"#, 7).unwrap();
    s.agent_fact("h1", "getinfo.cpu", r#"{"n":4}"#, 7).unwrap(); // tie: later write wins
    s.agent_fact("h2", "getinfo.cpu", r#"{"n":8}"#, 7).unwrap(); // not seen: no agent
    let h1 = s.agent("h1").unwrap().unwrap();
    let facts: Vec<(&str, &str, i64)> = h1
        .facts
        .iter()
        .map(|f| (f.method.as_str(), f.data.as_str(), f.at))
        .collect();
    assert_eq!(
        facts,
        [
            ("getinfo.cpu", r#"{"n":4}"#, 7),
            ("getinfo.kernel", r#"{"v":2}"#, 20)
        ]
    );
    assert_eq!(s.agent("h2").unwrap(), None);
    // The fact is kept and shows once the agent is seen.
    s.agents_seen(&[agent("h2", 9)]).unwrap();
    assert_eq!(s.agent("h2").unwrap().unwrap().facts.len(), 1);
}

fn odd_strings_round_trip(s: &dyn Store) {
    let mut a = agent("host\u{0}with-nul", 1);
    a.name = "ünïcødé \"quoted\" 'single' ; DROP TABLE agents; --".into();
    a.plugins = vec!["a\nb".into(), String::new(), "\u{1F600}".into()];
    s.agents_seen(std::slice::from_ref(&a)).unwrap();
    let got = s.agent(&a.host).unwrap().unwrap();
    assert_eq!(got.name, a.name);
    assert_eq!(got.plugins, a.plugins);
    assert_eq!(s.agents().unwrap().len(), 1);
}

// ---------------------------------------------------------------- calls

fn calls_ids_increase_and_list_newest_first(s: &dyn Store) {
    let a = s.call_begin(&call_rec(10)).unwrap();
    let b = s.call_begin(&call_rec(20)).unwrap();
    let c = s.call_begin(&call_rec(15)).unwrap();
    assert!(a < b && b < c);
    let ids: Vec<i64> = s.calls(10, None).unwrap().iter().map(|c| c.id).collect();
    assert_eq!(ids, [c, b, a]);
    let ids: Vec<i64> = s.calls(2, None).unwrap().iter().map(|c| c.id).collect();
    assert_eq!(ids, [c, b]);
    let ids: Vec<i64> = s.calls(10, Some(c)).unwrap().iter().map(|c| c.id).collect();
    assert_eq!(ids, [b, a]);
    let ids: Vec<i64> = s.calls(1, Some(b)).unwrap().iter().map(|c| c.id).collect();
    assert_eq!(ids, [a]);
    assert!(s.calls(0, None).unwrap().is_empty());
    assert!(s.calls(10, Some(a)).unwrap().is_empty());
    let row = &s.calls(1, None).unwrap()[0];
    assert_eq!(row.who, "operator");
    assert_eq!(row.at, 15);
    assert_eq!(row.target, r#"{"all":true}"#);
    assert_eq!(row.request, r#"{"method":"getinfo.kernel"}"#);
    assert_eq!((row.finished_at, row.summary.as_deref()), (None, None));
}

fn call_results_first_wins_in_arrival_order(s: &dyn Store) {
    let id = s.call_begin(&call_rec(1)).unwrap();
    s.call_results(id, &[result("zz", 5, 0), result("aa", 6, 0)])
        .unwrap();
    // A second result for "zz" (e.g. a late answer after the server's own
    // timeout line) is not stored; "mm" is new.
    s.call_results(id, &[result("zz", 7, 255), result("mm", 8, 1)])
        .unwrap();
    s.call_results(id, &[]).unwrap();
    let (row, results) = s.call(id).unwrap().unwrap();
    assert_eq!(row.id, id);
    assert_eq!(
        results,
        vec![result("zz", 5, 0), result("aa", 6, 0), result("mm", 8, 1)]
    );
    s.call_end(id, r#"{"targeted":3,"answered":3}"#, 9).unwrap();
    let (row, _) = s.call(id).unwrap().unwrap();
    assert_eq!(row.finished_at, Some(9));
    assert_eq!(
        row.summary.as_deref(),
        Some(r#"{"targeted":3,"answered":3}"#)
    );
    assert_eq!(s.call(id + 1000).unwrap(), None);
}

fn call_results_and_end_of_an_unknown_call_are_errors(s: &dyn Store) {
    let err = s.call_results(42, &[result("h", 1, 0)]).unwrap_err();
    assert!(matches!(err, StoreError::UnknownCall(42)), "{err:?}");
    let err = s.call_end(42, "{}", 1).unwrap_err();
    assert!(matches!(err, StoreError::UnknownCall(42)), "{err:?}");
    // The store keeps serving.
    let id = s.call_begin(&call_rec(1)).unwrap();
    s.call_results(id, &[result("h", 1, 0)]).unwrap();
}

fn host_calls_newest_first_with_that_hosts_result(s: &dyn Store) {
    let a = s.call_begin(&call_rec(1)).unwrap();
    let b = s.call_begin(&call_rec(2)).unwrap();
    let c = s.call_begin(&call_rec(3)).unwrap();
    s.call_results(a, &[result("h1", 1, 0), result("h2", 1, 0)])
        .unwrap();
    s.call_results(b, &[result("h2", 2, 7)]).unwrap();
    s.call_results(c, &[result("h1", 3, 1)]).unwrap();
    let got: Vec<(i64, i64)> = s
        .host_calls("h1", 10)
        .unwrap()
        .iter()
        .map(|(c, r)| {
            assert_eq!(r.host, "h1");
            (c.id, r.retcode)
        })
        .collect();
    assert_eq!(got, [(c, 1), (a, 0)]);
    let got: Vec<i64> = s
        .host_calls("h2", 1)
        .unwrap()
        .iter()
        .map(|(c, _)| c.id)
        .collect();
    assert_eq!(got, [b]);
    assert!(s.host_calls("h3", 10).unwrap().is_empty());
}

fn invalid_json_is_refused_and_nothing_of_the_batch_stored(s: &dyn Store) {
    let is_json_err = |r: Result<(), StoreError>, field: &str| match r {
        Err(StoreError::InvalidJson { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected InvalidJson for {field}, got {other:?}"),
    };
    let mut bad = call_rec(1);
    bad.target = "{not json".into();
    is_json_err(s.call_begin(&bad).map(drop), "call target");
    let mut bad = call_rec(1);
    bad.request = r#"{"a":1} trailing"#.into();
    is_json_err(s.call_begin(&bad).map(drop), "call request");
    assert!(s.calls(10, None).unwrap().is_empty());

    let id = s.call_begin(&call_rec(1)).unwrap();
    let mut r = result("h2", 1, 0);
    r.response = String::new();
    is_json_err(
        s.call_results(id, &[result("h1", 1, 0), r]),
        "host result response",
    );
    assert!(s.call(id).unwrap().unwrap().1.is_empty());
    is_json_err(s.call_end(id, "nope", 2), "call summary");
    assert_eq!(s.call(id).unwrap().unwrap().0.finished_at, None);

    s.agents_seen(&[agent("h1", 1)]).unwrap();
    is_json_err(s.agent_fact("h1", "m", "{", 1), "fact data");
    assert!(s.agent("h1").unwrap().unwrap().facts.is_empty());

    let mut t = task("h1", "t2", 1);
    t.frame = "[1,2".into();
    is_json_err(
        s.put_tasks(&[task("h1", "t1", 1), t]).map(drop),
        "task frame",
    );
    assert!(s.tasks(None, 10).unwrap().is_empty());
}

fn hostile_json_is_a_typed_error_not_a_crash(s: &dyn Store) {
    // 100 000 levels of nesting: refused (serde_json's depth limit, the
    // same as proto's), without exhausting the stack.
    let deep = "[".repeat(100_000);
    let mut t = task("h1", "deep", 1);
    t.frame = deep.clone();
    assert!(matches!(
        s.put_tasks(&[t]),
        Err(StoreError::InvalidJson { .. })
    ));
    // 100 levels (what a real nested answer might have) is fine.
    let mut t = task("h1", "nested", 1);
    t.frame = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(s.put_tasks(&[t]).unwrap(), 1);
    // Not JSON at all, or two values, or not quite JSON. (A lone surrogate
    // escape such as "\ud800" is valid JSON grammar and is kept as sent.)
    for bad in [
        "",
        " ",
        "{}{}",
        "\"\\x\"",
        "NaN",
        "[1,]",
        "{\"a\" 1}",
        "'a'",
    ] {
        let mut t = task("h1", "bad", 1);
        t.frame = bad.to_string();
        assert!(
            matches!(s.put_tasks(&[t]), Err(StoreError::InvalidJson { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!(s.tasks(None, 10).unwrap().len(), 1);
}

fn a_large_frame_round_trips(s: &dyn Store) {
    let mut t = task("h1", "big", 1);
    t.frame = format!("{{\"stdout\":\"{}\"}}", "x".repeat(4 << 20));
    assert_eq!(s.put_tasks(std::slice::from_ref(&t)).unwrap(), 1);
    assert_eq!(s.task("big").unwrap(), vec![t]);
}

// ---------------------------------------------------------------- tasks

fn put_tasks_is_idempotent_on_host_and_task(s: &dyn Store) {
    assert_eq!(s.put_tasks(&[]).unwrap(), 0);
    let batch = [
        task("h1", "t1", 10),
        task("h1", "t2", 11),
        task("h2", "t1", 12),
    ];
    assert_eq!(s.put_tasks(&batch).unwrap(), 3);
    // Re-delivered: nothing new; the first copy is kept.
    let mut redelivered = task("h1", "t1", 99);
    redelivered.retcode = 5;
    assert_eq!(s.put_tasks(&[redelivered]).unwrap(), 0);
    // Duplicates inside one batch count once.
    assert_eq!(
        s.put_tasks(&[
            task("h3", "t9", 13),
            task("h3", "t9", 14),
            task("h1", "t2", 15)
        ])
        .unwrap(),
        1
    );
    let t1 = s.task("t1").unwrap();
    assert_eq!(ids(&t1), [pair("h1", "t1"), pair("h2", "t1")]);
    assert_eq!(t1[0], task("h1", "t1", 10));
    assert_eq!(s.task("t9").unwrap(), vec![task("h3", "t9", 13)]);
    assert!(s.task("nope").unwrap().is_empty());
    assert_eq!(s.tasks(None, 100).unwrap().len(), 4);
}

fn tasks_newest_first_by_received_then_arrival(s: &dyn Store) {
    let mut with_schedule = task("h1", "c", 20);
    with_schedule.schedule = Some("hourly".into());
    with_schedule.message = "multi\nline".into();
    s.put_tasks(&[task("h1", "a", 10), task("h2", "b", 30)])
        .unwrap();
    s.put_tasks(std::slice::from_ref(&with_schedule)).unwrap();
    s.put_tasks(&[task("h1", "d", 20)]).unwrap(); // same time as "c", arrived later
    assert_eq!(
        ids(&s.tasks(None, 10).unwrap()),
        [
            pair("h2", "b"),
            pair("h1", "d"),
            pair("h1", "c"),
            pair("h1", "a")
        ]
    );
    assert_eq!(
        ids(&s.tasks(Some("h1"), 2).unwrap()),
        [pair("h1", "d"), pair("h1", "c")]
    );
    assert_eq!(s.tasks(Some("h1"), 10).unwrap()[1], with_schedule);
    assert!(s.tasks(Some("h9"), 10).unwrap().is_empty());
    assert!(s.tasks(None, 0).unwrap().is_empty());
}

// ---------------------------------------------------------------- prune

fn prune_nothing_when_within_retention(s: &dyn Store) {
    assert_eq!(
        s.prune(1_000, &Retention::default()).unwrap(),
        Pruned::default()
    );
    let id = s.call_begin(&call_rec(900)).unwrap();
    s.call_results(id, &[result("h", 900, 0)]).unwrap();
    s.put_tasks(&[task("h", "t", 900)]).unwrap();
    assert_eq!(s.prune(1_000, &no_limits()).unwrap(), Pruned::default());
    // Extreme clocks and retentions saturate instead of overflowing.
    assert_eq!(
        s.prune(i64::MIN, &Retention::default()).unwrap(),
        Pruned::default()
    );
    assert_eq!(s.prune(i64::MAX, &no_limits()).unwrap(), Pruned::default());
    assert_eq!(s.calls(10, None).unwrap().len(), 1);
}

fn prune_calls_by_age_then_count_then_results(s: &dyn Store) {
    // Five calls at t = 100..=500, call i has i results.
    let mut ids = Vec::new();
    for i in 1..=5i64 {
        let id = s.call_begin(&call_rec(i * 100)).unwrap();
        let results: Vec<HostResult> = (0..i).map(|h| result(&format!("h{h}"), i, 0)).collect();
        s.call_results(id, &results).unwrap();
        ids.push(id);
    }
    let remaining = |s: &dyn Store| -> Vec<i64> {
        let mut v: Vec<i64> = s.calls(100, None).unwrap().iter().map(|c| c.id).collect();
        v.reverse();
        v
    };
    // By age: keeping 240 ms at now = 450 (cut at 210), calls at 100 and 200 go.
    let r = Retention {
        calls: Duration::from_millis(240),
        ..no_limits()
    };
    assert_eq!(
        s.prune(450, &r).unwrap(),
        Pruned {
            calls: 2,
            results: 3,
            tasks: 0
        }
    );
    assert_eq!(remaining(s), ids[2..]);
    // By count: keep 2, the oldest (call 3) goes.
    let r = Retention {
        max_calls: 2,
        ..no_limits()
    };
    assert_eq!(
        s.prune(450, &r).unwrap(),
        Pruned {
            calls: 1,
            results: 3,
            tasks: 0
        }
    );
    assert_eq!(remaining(s), ids[3..]);
    // By results: 4 + 5 = 9 rows; keeping at most 6 removes call 4 whole.
    let r = Retention {
        max_results: 6,
        ..no_limits()
    };
    assert_eq!(
        s.prune(450, &r).unwrap(),
        Pruned {
            calls: 1,
            results: 4,
            tasks: 0
        }
    );
    assert_eq!(remaining(s), ids[4..]);
    assert_eq!(s.call(ids[3]).unwrap(), None);
    assert_eq!(s.call(ids[4]).unwrap().unwrap().1.len(), 5);
    assert!(s.host_calls("h0", 10).unwrap().len() == 1);
    // Keeping fewer results than the newest call has removes it too.
    let r = Retention {
        max_results: 4,
        ..no_limits()
    };
    assert_eq!(s.prune(450, &r).unwrap().calls, 1);
    assert!(s.calls(10, None).unwrap().is_empty());
    assert!(s.host_calls("h0", 10).unwrap().is_empty());
    // Ids are never reused, even after the newest was pruned.
    let next = s.call_begin(&call_rec(600)).unwrap();
    assert!(next > ids[4], "{next} <= {}", ids[4]);
}

fn prune_tasks_by_age_then_count(s: &dyn Store) {
    s.put_tasks(&[
        task("h1", "a", 100),
        task("h1", "b", 300),
        task("h2", "c", 200),
        task("h2", "d", 400),
        task("h3", "e", 300),
    ])
    .unwrap();
    let r = Retention {
        tasks: Duration::from_millis(250),
        ..no_limits()
    };
    assert_eq!(s.prune(500, &r).unwrap().tasks, 2); // 100 and 200
    assert_eq!(
        ids(&s.tasks(None, 10).unwrap()),
        [pair("h2", "d"), pair("h3", "e"), pair("h1", "b")]
    );
    let r = Retention {
        max_tasks: 1,
        ..no_limits()
    };
    assert_eq!(
        s.prune(500, &r).unwrap(),
        Pruned {
            calls: 0,
            results: 0,
            tasks: 2
        }
    );
    assert_eq!(ids(&s.tasks(None, 10).unwrap()), [pair("h2", "d")]);
    // A pruned task is forgotten: re-delivered now, it is new again.
    assert_eq!(s.put_tasks(&[task("h1", "a", 600)]).unwrap(), 1);
    let r = Retention {
        max_tasks: 0,
        ..no_limits()
    };
    assert_eq!(s.prune(600, &r).unwrap().tasks, 2);
    assert!(s.tasks(None, 10).unwrap().is_empty());
}

// ---------------------------------------------------------------- threads

fn concurrent_writers_and_readers(s: Arc<dyn Store>) {
    let mut threads = Vec::new();
    for w in 0..4 {
        let s = Arc::clone(&s);
        threads.push(std::thread::spawn(move || {
            for i in 0..50 {
                let host = format!("w{w}");
                s.put_tasks(&[task(&host, &format!("t{i}"), i)]).unwrap();
                s.agents_seen(&[agent(&host, i)]).unwrap();
                let _ = s.tasks(Some(&host), 5).unwrap();
                let _ = s.agents().unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.tasks(None, 1000).unwrap().len(), 200);
    assert_eq!(s.agents().unwrap().len(), 4);
}

/// The SQLite variants: the defaults, and one with the writer serving
/// reads and prune deleting two rows per transaction (every chunk boundary).
fn sqlite_options(variant: &str) -> SqliteOptions {
    match variant {
        "default" => SqliteOptions::default(),
        _ => SqliteOptions {
            readers: 0,
            prune_chunk: 2,
            ..SqliteOptions::default()
        },
    }
}

macro_rules! sqlite_backend {
    ($module:ident, $variant:literal, $($name:ident),*) => {
        mod $module {
            use super::*;
            fn open(dir: &tempfile::TempDir) -> SqliteStore {
                SqliteStore::open_with(&dir.path().join("store.db"), &sqlite_options($variant))
                    .unwrap()
            }
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = open(&dir);
                    super::$name(&store);
                    // Everything the test left is still there after a reopen.
                    let before = (store.agents().unwrap(), store.calls(1000, None).unwrap(),
                                  store.tasks(None, 1000).unwrap());
                    drop(store);
                    let store = open(&dir);
                    let after = (store.agents().unwrap(), store.calls(1000, None).unwrap(),
                                 store.tasks(None, 1000).unwrap());
                    assert_eq!(before, after);
                }
            )*
            #[test]
            fn concurrent_writers_and_readers() {
                let dir = tempfile::tempdir().unwrap();
                super::concurrent_writers_and_readers(Arc::new(open(&dir)));
            }
        }
    };
}

/// PostgreSQL (scripts/pg.sh, one cluster for this binary): each test in a
/// schema of its own, reopened at the end like SQLite.
#[cfg(feature = "postgres")]
macro_rules! pg_backend {
    ($module:ident, $chunk:literal, $bytes:expr, $($name:ident),*) => {
        mod $module {
            use super::*;
            use basicagent_store::PgOptions;
            fn options() -> PgOptions {
                PgOptions { prune_chunk: $chunk, batch_bytes: $bytes, ..common::pg::options() }
            }
            $(
                #[test]
                fn $name() {
                    let options = options();
                    let store = common::pg::open(&options);
                    super::$name(&store);
                    let before = (store.agents().unwrap(), store.calls(1000, None).unwrap(),
                                  store.tasks(None, 1000).unwrap());
                    drop(store);
                    let store = common::pg::open(&options);
                    let after = (store.agents().unwrap(), store.calls(1000, None).unwrap(),
                                 store.tasks(None, 1000).unwrap());
                    assert_eq!(before, after);
                }
            )*
            #[test]
            fn concurrent_writers_and_readers() {
                super::concurrent_writers_and_readers(Arc::new(common::pg::open(&options())));
            }
        }
    };
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $( #[test] fn $name() { super::$name(&MemoryStore::new()); } )*
            #[test]
            fn concurrent_writers_and_readers() {
                super::concurrent_writers_and_readers(Arc::new(MemoryStore::new()));
            }
        }
        sqlite_backend!(sqlite, "default", $($name),*);
        sqlite_backend!(sqlite_small_chunks, "small", $($name),*);
        #[cfg(feature = "postgres")]
        pg_backend!(pg, 20_000, 32 << 20, $($name),*);
        // Prune 2 rows per transaction; every batch cut into statements of
        // about one row.
        #[cfg(feature = "postgres")]
        pg_backend!(pg_small_chunks, 2, 64, $($name),*);
    };
}

both_backends!(
    agents_seen_upserts_and_keeps_first_seen,
    agents_seen_same_host_twice_in_one_batch_keeps_the_last,
    agents_sorted_by_host_without_facts,
    agents_empty_batches_and_unknown_host,
    agents_gone_clears_connected_at_unless_a_newer_session,
    node_gone_marks_offline_only_the_sessions_still_on_that_node,
    agent_fact_keeps_the_latest_per_method,
    odd_strings_round_trip,
    calls_ids_increase_and_list_newest_first,
    call_results_first_wins_in_arrival_order,
    call_results_and_end_of_an_unknown_call_are_errors,
    host_calls_newest_first_with_that_hosts_result,
    invalid_json_is_refused_and_nothing_of_the_batch_stored,
    hostile_json_is_a_typed_error_not_a_crash,
    a_large_frame_round_trips,
    put_tasks_is_idempotent_on_host_and_task,
    tasks_newest_first_by_received_then_arrival,
    prune_nothing_when_within_retention,
    prune_calls_by_age_then_count_then_results,
    prune_tasks_by_age_then_count,
);
