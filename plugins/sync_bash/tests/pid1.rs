//! Issue 12 item 9: as PID 1 (a container's entrypoint) the process that
//! hosts the plugin reaps the orphans its commands leave, without taking
//! the exit status of a command it waits for.
//!
//! The test re-runs itself as PID 1 of a new pid namespace
//! (`unshare -p -f --mount-proc`).

mod common;

use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use basicagent_testsupport::ns::unshared;
use serde_json::json;

const INNER: &str = "SYNC_BASH_PID1_INNER";

#[test]
fn as_pid_1_orphans_are_reaped() {
    if unshared(
        INNER,
        &["-p", "-f", "--mount-proc"],
        "as_pid_1_orphans_are_reaped",
    ) {
        inner();
    }
}

/// (pid, state) of every child of ours.
fn children() -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        if rest.get(1) == Some(&"1") {
            out.push((pid, rest[0].chars().next().unwrap()));
        }
    }
    out
}

fn inner() {
    assert_eq!(std::process::id(), 1, "not PID 1");
    let p = common::plugin("{}");
    for i in 0..20 {
        let a = common::run_with(p, json!({"cmd":"(sleep 0.2 &); sleep 0.1 & echo started"}));
        assert_eq!(a.retcode, retcode::SUCCESS, "{i}: {a:?}");
        // Our own command's status is never taken by the reaper.
        assert_eq!(a.data["exitcode"], 0, "{i}: {a:?}");
        assert_eq!(a.data["stdout"], "started\n");
    }
    // The 40 sleeps end within 0.2 s and come back to PID 1; the reaper
    // must reap them all (it runs at least once a second).
    let t0 = Instant::now();
    loop {
        let left = children();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "children left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("no children left after {:?}", t0.elapsed());
}
