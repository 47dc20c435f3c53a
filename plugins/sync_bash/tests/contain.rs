//! Issue 15 items 1-3, as root on the host's own cgroup layout: a cgroup
//! per command (every process it started dies at the timeout and the
//! cancel, counted in `processes_killed`), limits (`pids_max`,
//! `memory_max` reported as `killed_by: "oom"`, bad values 3021 naming
//! the key) and usage (against `/usr/bin/time -v` of the same work).

mod common;

use std::time::Duration;

use basicagent_abi::retcode;
use common::{gone, live, Reap};
use serde_json::json;

fn plugin() -> &'static basicagent_abi::Plugin {
    common::plugin(r#"{"kill_grace_ms":500,"pids_max_limit":100000}"#)
}

fn contained(a: &common::Answer) -> bool {
    a.data["containment"].as_str().is_some_and(|c| c != "none")
}

fn stopped(cmd: &str, argv: &[&'static str]) -> common::Answer {
    let _reap = Reap(vec![argv.to_vec()]);
    let a = common::run_with(plugin(), json!({"cmd":cmd,"timeout":1}));
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    assert!(contained(&a), "this host has cgroups: {a:?}");
    assert_eq!(a.data["killed_by"], "timeout", "{a:?}");
    assert!(gone(argv, Duration::from_secs(10)), "{:?}", live(argv));
    a
}

#[test]
fn setsid_child_dies_at_the_timeout_and_is_counted() {
    let a = stopped("setsid sleep 1041 & sleep 60", &["sleep", "1041"]);
    // bash (exec'd into sleep 60) and the setsid sleep.
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 2, "{a:?}");
}

#[test]
fn job_control_child_dies_at_the_timeout() {
    let a = stopped("set -m; sleep 1042 & sleep 60", &["sleep", "1042"]);
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 2, "{a:?}");
}

#[test]
fn double_fork_dies_at_the_timeout() {
    let a = stopped("set -m; (sleep 1043 &); sleep 60", &["sleep", "1043"]);
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 2, "{a:?}");
}

#[test]
fn double_fork_with_setsid_dies_too() {
    // Left both its session and its parent before the stop: the process
    // group and the subreaper's search cannot find it; the cgroup does.
    let a = stopped(
        "(setsid sleep 1044 > /dev/null 2>&1 &); sleep 60",
        &["sleep", "1044"],
    );
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 2, "{a:?}");
}

#[test]
fn cancel_kills_the_whole_cgroup() {
    let _reap = Reap(vec![vec!["sleep", "1045"], vec!["sleep", "1046"]]);
    let p = plugin();
    let (id, rx) = common::start(
        p,
        &json!({"cmd":"setsid sleep 1045 & (setsid sleep 1046 &); sleep 60","timeout":60}),
    );
    let t0 = std::time::Instant::now();
    while live(&["sleep", "1045"]).is_empty() || live(&["sleep", "1046"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    p.cancel(id);
    let a = common::wait(&rx);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert_eq!(a.data["killed_by"], "cancel", "{a:?}");
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 3, "{a:?}");
    assert!(gone(&["sleep", "1045"], Duration::from_secs(10)));
    assert!(gone(&["sleep", "1046"], Duration::from_secs(10)));
}

#[test]
fn fork_bomb_is_contained_by_pids_max() {
    let a = common::run_with(
        plugin(),
        json!({"cmd":"b() { b | b & }; b; sleep 60","timeout":3,"pids_max":50,"max_output":1000}),
    );
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    let killed = a.data["processes_killed"].as_u64().unwrap();
    assert!((1..=50).contains(&killed), "at most pids_max: {a:?}");
    if let Some(peak) = a.data["usage"]["pids_peak"].as_u64() {
        assert!(peak <= 50, "{a:?}");
    }
    // The plugin keeps serving.
    let ok = common::run_with(plugin(), json!({"cmd":"echo still here"}));
    assert_eq!(ok.retcode, retcode::SUCCESS, "{ok:?}");
    assert_eq!(ok.data["stdout"], "still here\n");
}

#[test]
fn memory_limit_kill_is_reported_as_oom() {
    // tail keeps the whole (newline-free) GiB in memory.
    let a = common::run_with(
        plugin(),
        json!({"cmd":"head -c 1G /dev/zero | tail -n 1 > /dev/null","memory_max":"64M","timeout":60}),
    );
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert_eq!(a.data["killed_by"], "oom", "{a:?}");
    assert_eq!(a.data["exitcode"], 128 + 9, "{a:?}");
    let peak = a.data["usage"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 64 << 20, "{a:?}");
    // bash itself killed: a signal, and still "oom".
    let b = common::run_with(
        plugin(),
        json!({"cmd":"x=$(head -c 1G /dev/zero | tr '\\0' a)","memory_max":67108864,"timeout":60}),
    );
    assert_eq!(b.data["killed_by"], "oom", "{b:?}");
}

#[test]
fn bad_limits_are_refused_naming_the_key() {
    let p = plugin();
    for (req, key) in [
        (json!({"cmd":"true","memory_max":"lots"}), "memory_max"),
        (json!({"cmd":"true","memory_max":-1}), "memory_max"),
        (json!({"cmd":"true","memory_max":1000}), "memory_max"),
        (json!({"cmd":"true","pids_max":0}), "pids_max"),
        (json!({"cmd":"true","pids_max":1000001}), "pids_max"),
        (json!({"cmd":"true","cpu_max":"half"}), "cpu_max"),
        (json!({"cmd":"true","cpu_max":0}), "cpu_max"),
        (json!({"cmd":"true","nice":20}), "nice"),
        (json!({"cmd":"true","nice":"low"}), "nice"),
    ] {
        let a = common::run_with(p, req.clone());
        assert_eq!(a.retcode, retcode::INVALID_PARAMS, "{req}: {a:?}");
        assert!(a.message.contains(key), "{req}: {a:?}");
    }
    let ok = common::run_with(
        p,
        json!({"cmd":"cat /proc/self/stat | cut -d' ' -f19","nice":7,"cpu_max":0.5,"pids_max":20,"memory_max":"256M"}),
    );
    assert_eq!(ok.retcode, retcode::SUCCESS, "{ok:?}");
    assert_eq!(ok.data["stdout"], "7\n", "{ok:?}");
}

#[test]
fn usage_agrees_with_time_v() {
    // About 150 MB held by tail, and a second or so of CPU.
    let cmd = "/usr/bin/time -f '%U %S %M' -o /dev/stderr bash -c \
               'head -c 150M /dev/zero | tail -n 1 > /dev/null; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'";
    // A memory limit, so that the hybrid host measures the peak in the
    // cgroup (without one it is wait4's largest RSS).
    let a = common::run_with(plugin(), json!({"cmd":cmd,"timeout":120,"memory_max":"1G"}));
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    let u = &a.data["usage"];
    assert_eq!(u["source"], "cgroup", "{a:?}");
    let f: Vec<f64> = a.data["stderr"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (user_ms, sys_ms, max_kb) = (f[0] * 1000.0, f[1] * 1000.0, f[2]);
    let cpu = (u["cpu_user_ms"].as_u64().unwrap() + u["cpu_system_ms"].as_u64().unwrap()) as f64;
    let time_cpu = user_ms + sys_ms;
    // time(1) rounds to 10 ms and does not count itself or the outer bash.
    assert!(
        cpu >= time_cpu * 0.8 - 30.0 && cpu <= time_cpu * 1.25 + 100.0,
        "cgroup {cpu} ms vs time {time_cpu} ms: {a:?}"
    );
    let peak = u["memory_peak_bytes"].as_u64().unwrap() as f64;
    let rss = max_kb * 1024.0;
    // The cgroup's peak counts every process at once and kernel memory:
    // at least the largest one's RSS, not much more.
    assert!(
        peak >= rss * 0.9 && peak <= rss + (64 << 20) as f64,
        "cgroup peak {peak} vs max RSS {rss}: {a:?}"
    );
    assert!(u["elapsed_ms"].as_u64().unwrap() <= a.data["elapsed_ms"].as_u64().unwrap() + 1);
}

#[test]
fn a_command_that_ends_by_itself_keeps_its_daemon_and_the_cgroup_goes_later() {
    let _reap = Reap(vec![vec!["sleep", "1047"]]);
    let a = common::run_with(
        plugin(),
        json!({"cmd":"setsid sleep 1047 > /dev/null 2>&1 &"}),
    );
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert!(a.data.get("processes_killed").is_none(), "{a:?}");
    assert!(a.data["killed_by"].is_null(), "{a:?}");
    let t0 = std::time::Instant::now();
    while live(&["sleep", "1047"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sha256_of_the_full_streams_matches_sha256sum() {
    // About 1 MB on each stream, interleaved, well past max_output; the
    // command also saves both streams for sha256sum.
    let dir = std::env::temp_dir().join(format!("contain-sha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let cmd = format!(
        "for i in $(seq 1 2000); do head -c 500 /dev/urandom | od -An -tx1 | tr -d ' \\n'          | tee -a {d}/out; echo \"err $i $RANDOM\" | tee -a {d}/err >&2; done"
    );
    let a = common::run_with(plugin(), json!({"cmd":cmd,"timeout":120,"max_output":1000}));
    assert_eq!(a.retcode, retcode::SUCCESS, "{}", a.message);
    let sum = |f: &str| {
        let out = std::process::Command::new("sha256sum")
            .arg(dir.join(f))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    };
    assert!(a.data["stdout_bytes"].as_u64().unwrap() >= 1_000_000);
    assert_eq!(a.data["stdout_truncated"], true);
    assert_eq!(a.data["stdout_sha256"], sum("out"));
    assert_eq!(a.data["stderr_sha256"], sum("err"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncate_head_tail_and_head_plus_tail_on_interleaved_streams() {
    // About 1.6 MB on each stream, interleaved.
    let cmd =
        "awk 'BEGIN{for(i=1;i<=150000;i++){print \"out \" i; print \"err \" i > \"/dev/stderr\"}}'";
    let p = plugin();
    let a = common::run_with(
        p,
        json!({"cmd":cmd,"max_output":1000,"truncate":{"stdout":"tail","stderr":"head+tail"}}),
    );
    assert_eq!(a.retcode, retcode::SUCCESS, "{}", a.message);
    let (out, err) = (
        a.data["stdout"].as_str().unwrap(),
        a.data["stderr"].as_str().unwrap(),
    );
    assert!(a.data["stdout_bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(a.data["stdout_truncated"], true);
    assert_eq!(out.len(), 1000, "{out}");
    assert!(out.ends_with("\nout 149999\nout 150000\n"), "{out}");
    assert!(
        err.len() == 1000 && err.starts_with("err 1\nerr 2\n"),
        "{err}"
    );
    assert!(err.ends_with("\nerr 150000\n"), "{err}");
    let h = common::run_with(p, json!({"cmd":cmd,"max_output":1000,"truncate":"head"}));
    let out = h.data["stdout"].as_str().unwrap();
    assert!(
        out.len() == 1000 && out.starts_with("out 1\nout 2\n"),
        "{out}"
    );
    for bad in [
        json!("middle"),
        json!(3),
        json!({"stdin":"tail"}),
        json!({"stdout":"x"}),
    ] {
        let b = common::run_with(p, json!({"cmd":"true","truncate":bad}));
        assert_eq!(b.retcode, retcode::INVALID_PARAMS, "{bad}: {b:?}");
        assert!(b.message.contains("truncate"), "{b:?}");
    }
}

#[test]
fn transcript_interleaves_both_streams_under_the_caps() {
    let p = plugin();
    let a = common::run_with(
        p,
        json!({"cmd":"echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c","transcript":true}),
    );
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert_eq!(
        a.data["transcript"],
        json!([{"stream":"stdout","text":"a\n"},{"stream":"stderr","text":"b\n"},{"stream":"stdout","text":"c\n"}]),
        "{a:?}"
    );
    assert_eq!(a.data["transcript_truncated"], false);
    // ~1.6 MB on each stream, a small cap: at most max_output bytes in
    // all, from the start.
    let cmd = "awk 'BEGIN{for(i=1;i<=150000;i++){print \"out \" i; fflush(); print \"err \" i > \"/dev/stderr\"; fflush(\"/dev/stderr\")}}'";
    let b = common::run_with(
        p,
        json!({"cmd":cmd,"max_output":5000,"transcript":true,"timeout":120}),
    );
    assert_eq!(b.retcode, retcode::SUCCESS, "{}", b.message);
    let chunks = b.data["transcript"].as_array().unwrap();
    let total: usize = chunks
        .iter()
        .map(|c| c["text"].as_str().unwrap().len())
        .sum();
    assert!(total <= 5000 && total > 4000, "{total}");
    assert_eq!(b.data["transcript_truncated"], true);
    assert!(
        chunks[0]["text"].as_str().unwrap().starts_with("out 1\n"),
        "{chunks:?}"
    );
    // (Whether stderr shows within the first 5000 bytes depends on the
    // order of the reads: 64 KiB pipes, a loaded machine.)
    let bad = common::run_with(p, json!({"cmd":"true","transcript":"yes"}));
    assert_eq!(bad.retcode, retcode::INVALID_PARAMS);
    assert!(bad.message.contains("transcript"), "{bad:?}");
}
