//! Polling until a condition holds, with a generous bound: the bound
//! turns a hang into a failure, it never measures anything.

use std::time::{Duration, Instant};

/// The default bound: far above what anything here needs on a loaded
/// two-core machine shared by several builds.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it gives `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it is true, up to [`WAIT`]; returns how long it took.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_for(what, WAIT, || f().then_some(()));
    start.elapsed()
}

/// Polls `f` up to `limit`; whether it became true (for conditions a
/// test expects to stay false, or reports on itself).
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(POLL);
    }
}
