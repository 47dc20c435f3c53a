//! Issue 15 item 1: the agent's shutdown (`fini`) kills the whole cgroup
//! of a running command, escaped processes included, and answers it
//! (`killed_by: "shutdown"`, `processes_killed`). Its own binary: `fini`
//! ends the plugin for the process.

mod common;

use std::time::Duration;

use basicagent_abi::retcode;
use common::{gone, live, Reap};
use serde_json::json;

#[test]
fn shutdown_kills_the_whole_cgroup() {
    let _reap = Reap(vec![vec!["sleep", "1051"], vec!["sleep", "1052"]]);
    let p = common::plugin(r#"{"kill_grace_ms":500}"#);
    let (_, rx) = common::start(
        p,
        &json!({"cmd":"setsid sleep 1051 & (setsid sleep 1052 > /dev/null 2>&1 &); sleep 60","timeout":60}),
    );
    let t0 = std::time::Instant::now();
    while live(&["sleep", "1051"]).is_empty() || live(&["sleep", "1052"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    p.fini();
    let a = common::wait(&rx);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert_eq!(a.data["killed_by"], "shutdown", "{a:?}");
    assert_ne!(a.data["containment"], "none", "{a:?}");
    assert!(a.data["processes_killed"].as_u64().unwrap() >= 3, "{a:?}");
    assert!(gone(&["sleep", "1051"], Duration::from_secs(10)));
    assert!(gone(&["sleep", "1052"], Duration::from_secs(10)));
}
