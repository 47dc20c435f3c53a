//! Issue 12 item 8: processes that leave a command's process group
//! (`setsid`, `set -m`, a double fork) are killed when the agent stops the
//! command, and counted in the answer (`survivors_killed`).
//! Run with `containment = "off"`: the fallback without cgroups (the
//! cgroup path is tested in contain.rs).

mod common;

use std::time::Duration;

use basicagent_abi::retcode;
use common::{gone, live, Reap};
use serde_json::json;

fn stopped(cmd: &str) -> common::Answer {
    let p = common::plugin(r#"{"kill_grace_ms":500,"containment":"off"}"#);
    common::run_with(p, json!({"cmd":cmd,"timeout":1}))
}

#[test]
fn setsid_child_is_killed_at_the_timeout() {
    let _reap = Reap(vec![vec!["sleep", "1031"]]);
    let a = stopped("setsid sleep 1031 & sleep 60");
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    assert_eq!(a.data["survivors_killed"], 1, "{a:?}");
    assert!(
        gone(&["sleep", "1031"], Duration::from_secs(10)),
        "{:?}",
        live(&["sleep", "1031"])
    );
}

#[test]
fn job_control_child_is_killed_at_the_timeout() {
    let _reap = Reap(vec![vec!["sleep", "1032"]]);
    let a = stopped("set -m; sleep 1032 & sleep 60");
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    // With job control every job has its own group: the background
    // sleep, and the foreground one if bash forked it.
    let n = a.data["survivors_killed"].as_u64().unwrap();
    assert!((1..=2).contains(&n), "{a:?}");
    assert!(gone(&["sleep", "1032"], Duration::from_secs(10)));
}

#[test]
fn double_fork_is_killed_at_the_timeout() {
    // Re-parented to the agent at once, still in the process group.
    let _reap = Reap(vec![vec!["sleep", "1033"]]);
    let a = stopped("(sleep 1033 &); sleep 60");
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    assert!(gone(&["sleep", "1033"], Duration::from_secs(10)));
}

#[test]
fn double_fork_out_of_the_group_is_killed_at_the_timeout() {
    // Re-parented to the agent at once and in a group of its own: found
    // as an orphan of ours still in the command's session.
    let _reap = Reap(vec![vec!["sleep", "1034"]]);
    let a = stopped("set -m; (sleep 1034 &); sleep 60");
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    // (bash execs the last command itself: `sleep 60` is bash.)
    assert_eq!(a.data["survivors_killed"], 1, "{a:?}");
    assert!(gone(&["sleep", "1034"], Duration::from_secs(10)));
}

#[test]
fn cancel_kills_the_escaped_too() {
    let _reap = Reap(vec![vec!["sleep", "1035"]]);
    let p = common::plugin(r#"{"kill_grace_ms":500,"containment":"off"}"#);
    let (id, rx) = common::start(
        p,
        &json!({"cmd":"setsid sleep 1035 & sleep 60","timeout":60}),
    );
    let t0 = std::time::Instant::now();
    while live(&["sleep", "1035"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    p.cancel(id);
    let a = common::wait(&rx);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert_eq!(a.data["survivors_killed"], 1, "{a:?}");
    assert!(gone(&["sleep", "1035"], Duration::from_secs(10)));
}

#[test]
fn a_command_that_ends_by_itself_keeps_its_daemon() {
    // Documented: only a command the agent stops has its escaped
    // processes killed; no survivors_killed key otherwise.
    let _reap = Reap(vec![vec!["sleep", "1036"]]);
    let p = common::plugin(r#"{"kill_grace_ms":500,"containment":"off"}"#);
    let a = common::run_with(p, json!({"cmd":"setsid sleep 1036 > /dev/null 2>&1 &"}));
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert!(a.data.get("survivors_killed").is_none(), "{a:?}");
    let t0 = std::time::Instant::now();
    while live(&["sleep", "1036"]).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(live(&["sleep", "1036"]).len(), 1);
}
