//! `{"peek":CALL_ID}` through the real shared object: the output so far of
//! a running call. One test, run in order, in its own process: the config
//! (max_concurrent 1) shows that a peek takes no slot.

mod common;

use std::time::{Duration, Instant};

use basicagent_abi::{retcode, Plugin};
use common::{start, wait, Answer, Reap};
use serde_json::{json, Value};

const CONFIG: &str =
    r#"{"max_concurrent":1,"max_output":1048576,"max_output_limit":1048576,"kill_grace_ms":200}"#;

fn peek(p: &Plugin, request: Value) -> Answer {
    let t0 = Instant::now();
    let a = common::run_with(p, request);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "peek took {:?}",
        t0.elapsed()
    );
    a
}

/// Peeks at `id` after ~300 ms, again every 100 ms (a loaded machine)
/// until its stdout holds `bytes` bytes, for at most 3 s.
fn peek_at(p: &Plugin, id: u64, bytes: u64) -> Answer {
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    loop {
        let a = peek(p, json!({"method":"sync.bash","peek":id}));
        if a.data["stdout_bytes"].as_u64() >= Some(bytes) || t0.elapsed() > Duration::from_secs(3) {
            return a;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(a: &Answer, message: &str) {
    assert_eq!(
        (a.retcode, a.message.as_str(), &a.data),
        (retcode::INVALID_PARAMS, message, &Value::Null),
        "{a:?}"
    );
}

#[test]
fn peek_contract() {
    let p = common::plugin(CONFIG);
    assert!(p.info().usage.contains(r#"{"peek":CALL_ID}"#));
    running_then_finished(p);
    bad_ids(p);
    incomplete_character(p);
    many_peeks_stay_bounded(p);
}

fn running_then_finished(p: &Plugin) {
    let (id, rx) = start(
        p,
        &json!({"method":"sync.bash","cmd":"echo first; sleep 2; echo second"}),
    );
    let a = peek_at(p, id, 6);
    assert_eq!(
        (a.retcode, a.message.as_str()),
        (retcode::SUCCESS, ""),
        "{a:?}"
    );
    let d = &a.data;
    assert_eq!(d["running"], true);
    assert_eq!(
        (d["stdout"].as_str(), d["stderr"].as_str()),
        (Some("first\n"), Some(""))
    );
    assert_eq!(
        (d["stdout_bytes"].as_u64(), d["stderr_bytes"].as_u64()),
        (Some(6), Some(0))
    );
    for flag in [
        "stdout_truncated",
        "stderr_truncated",
        "stdout_lossy",
        "stderr_lossy",
    ] {
        assert_eq!(d[flag], false, "{flag}");
    }
    let pid = d["pid"].as_i64().unwrap();
    let elapsed = d["elapsed_ms"].as_u64().unwrap();
    assert!(pid > 1 && (250..2000).contains(&elapsed), "{d}");
    let mut keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "elapsed_ms",
            "pid",
            "running",
            "stderr",
            "stderr_bytes",
            "stderr_lossy",
            "stderr_truncated",
            "stdout",
            "stdout_bytes",
            "stdout_lossy",
            "stdout_truncated"
        ]
    );

    // Other keys are ignored, even invalid ones; a peek takes no slot of
    // max_concurrent (1 here, held by the command) and starts nothing.
    let a = peek(p, json!({"peek":id,"cmd":"","timeout":0,"max_output":-1}));
    assert_eq!(
        (a.retcode, &a.data["stdout"]),
        (retcode::SUCCESS, &json!("first\n"))
    );
    assert_eq!(a.data["pid"], pid);
    let busy = common::run_with(p, json!({"cmd":"true"}));
    assert_eq!(busy.retcode, retcode::BUSY, "{busy:?}");

    // The capture is unchanged by peeks: the answer has everything.
    let done = wait(&rx);
    assert_eq!(done.retcode, retcode::SUCCESS, "{done:?}");
    assert_eq!(done.data["stdout"], "first\nsecond\n");
    assert_eq!(done.data["pid"], pid);

    let a = peek(p, json!({"peek":id}));
    refused(
        &a,
        &format!("Invalid params: no running command with call id {id}"),
    );
}

fn bad_ids(p: &Plugin) {
    for bogus in [123_456_789_u64, 0, u64::MAX] {
        let a = peek(p, json!({"method":"sync.bash","peek":bogus}));
        refused(
            &a,
            &format!("Invalid params: no running command with call id {bogus}"),
        );
    }
    for bad in [
        json!("x"),
        json!(-1),
        json!(1.5),
        json!(true),
        json!([1]),
        json!({}),
    ] {
        let a = peek(p, json!({"method":"sync.bash","peek":bad}));
        refused(
            &a,
            "Invalid params: peek must be a call id (an unsigned integer)",
        );
    }
}

/// A character whose bytes have not all arrived is left out of a peek
/// (neither U+FFFD nor lossy), and counted in stdout_bytes.
fn incomplete_character(p: &Plugin) {
    let (id, rx) = start(
        p,
        &json!({"cmd":r"printf 'a\xe2\x82'; sleep 1; printf '\xac'"}),
    );
    let a = peek_at(p, id, 3);
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert_eq!(
        (
            &a.data["stdout"],
            &a.data["stdout_bytes"],
            &a.data["stdout_lossy"]
        ),
        (&json!("a"), &json!(3), &json!(false))
    );
    let done = wait(&rx);
    assert_eq!(done.data["stdout"], "a\u{20AC}");
    assert_eq!(done.data["stdout_lossy"], false);
}

/// Hundreds of peeks, sent without waiting, while the command prints
/// without end: each answer holds at most max_output bytes per stream.
fn many_peeks_stay_bounded(p: &Plugin) {
    const CAP: usize = 4096;
    let _reap = Reap(vec![vec!["yes", "peek-bounded-test"]]);
    let (id, rx) = start(
        p,
        &json!({"cmd":"yes peek-bounded-test; echo never","timeout":30,"max_output":CAP}),
    );
    let line = "peek-bounded-test\n";
    let mut last_bytes = 0;
    let mut saw_truncated = false;
    for round in 0..10 {
        let pending: Vec<_> = (0..50).map(|_| start(p, &json!({"peek":id})).1).collect();
        for rx in &pending {
            let a = wait(rx);
            assert_eq!(a.retcode, retcode::SUCCESS, "round {round}: {a:?}");
            let out = a.data["stdout"].as_str().unwrap();
            let bytes = a.data["stdout_bytes"].as_u64().unwrap();
            assert!(out.len() <= CAP, "{} bytes", out.len());
            assert!(line.repeat(CAP / line.len() + 1).starts_with(out));
            assert_eq!(a.data["stdout_truncated"], bytes > CAP as u64);
            saw_truncated |= bytes > CAP as u64;
            if bytes > CAP as u64 {
                assert_eq!(out.len(), CAP);
            }
            last_bytes = last_bytes.max(bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_truncated && last_bytes > 2 * CAP as u64, "{last_bytes}");

    p.cancel(id);
    let done = wait(&rx);
    assert_eq!(done.retcode, retcode::CANCELLED, "{done:?}");
    assert_eq!(done.data["stdout"].as_str().unwrap().len(), CAP);
    assert!(done.data["stdout_bytes"].as_u64().unwrap() >= last_bytes);
    refused(
        &peek(p, json!({"peek":id})),
        &format!("Invalid params: no running command with call id {id}"),
    );
}
