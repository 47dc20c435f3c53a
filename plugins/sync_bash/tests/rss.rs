//! Memory stays bounded while a command prints 200 MB (alone in its
//! process, so that no other test's buffers count).

mod common;

use basicagent_abi::retcode;
use serde_json::json;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn peak_rss_bounded_while_printing_200mb() {
    let p = common::plugin("{}");
    // Warm up: the executor thread, its buffers, the allocator.
    let _ = common::run_with(p, json!({"cmd":"echo warm"}));
    std::fs::write("/proc/self/clear_refs", "5").unwrap(); // reset VmHWM
    let idle = status_kib("VmRSS:");
    let a = common::run_with(p, json!({"cmd":"head -c 200000000 /dev/zero | tr '\\0' a"}));
    let peak = status_kib("VmHWM:");
    assert_eq!(a.retcode, retcode::SUCCESS);
    assert_eq!(a.data["stdout_bytes"], 200_000_000u64);
    assert_eq!(a.data["stdout_truncated"], true);
    let growth = peak.saturating_sub(idle);
    eprintln!("idle {idle} KiB, peak {peak} KiB, growth {growth} KiB (cap 1024 KiB)");
    // The capture is 1 MiB; the answer's JSON and the host's copy are the
    // other transient buffers. Generous bound: cap + 6 MiB.
    assert!(growth < 1024 + 6 * 1024, "peak RSS grew by {growth} KiB");
}
