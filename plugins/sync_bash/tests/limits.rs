//! Host config limits (max_concurrent, max_output) and `fini`, in their own
//! process because the host's config is process-wide.

mod common;

use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use common::{gone, live, start, wait, Reap};
use serde_json::json;

const CONFIG: &str =
    r#"{"max_concurrent":2,"max_output":8,"max_output_limit":16,"kill_grace_ms":200}"#;

#[test]
fn busy_output_limits_and_fini() {
    let _reap = Reap(vec![vec!["sleep", "1005"], vec!["sleep", "1006"]]);
    let p = common::plugin(CONFIG);

    // Configured default and limit for max_output.
    let a = common::run_with(p, json!({"cmd":"echo 0123456789"}));
    assert_eq!(a.data["stdout"], "01234567");
    let a = common::run_with(p, json!({"cmd":"echo 0123456789","max_output":16}));
    assert_eq!(a.data["stdout"], "0123456789\n");
    let a = common::run_with(p, json!({"cmd":"true","max_output":17}));
    assert_eq!(
        (a.retcode, a.message.as_str()),
        (
            retcode::INVALID_PARAMS,
            "Invalid params: max_output must be <= 16"
        )
    );

    // Two running: the third is Busy at once; a slot frees when one ends.
    let (id1, rx1) = start(p, &json!({"cmd":"sleep 1005"}));
    let (_id2, rx2) = start(p, &json!({"cmd":"sleep 1006"}));
    let a = common::run_with(p, json!({"cmd":"true"}));
    assert_eq!(a.retcode, retcode::BUSY, "{a:?}");
    p.cancel(id1);
    assert_eq!(wait(&rx1).retcode, retcode::CANCELLED);
    let a = common::run_with(p, json!({"cmd":"echo again"}));
    assert_eq!(
        (a.retcode, a.data["stdout"].as_str()),
        (retcode::SUCCESS, Some("again\n"))
    );

    // fini kills what still runs and answers it.
    let t0 = Instant::now();
    while live(&["sleep", "1006"]).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    p.fini();
    let a = wait(&rx2);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert!(a.message.contains("shutting down"), "{}", a.message);
    assert_eq!(a.data["signal"], "SIGKILL");
    assert!(gone(&["sleep", "1006"], Duration::from_secs(1)));

    // A call after fini starts a new executor.
    let a = common::run_with(p, json!({"cmd":"echo after"}));
    assert_eq!(a.data["stdout"], "after\n");
}
