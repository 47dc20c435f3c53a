//! Running one test again, alone, inside new namespaces (`unshare`), for
//! what must not touch the machine: a private mount table, a pid
//! namespace where the test is pid 1.

use std::process::Command;

/// Whether this is the inner run of [`unshared`] (`marker` is set).
pub fn is_inner(marker: &str) -> bool {
    std::env::var_os(marker).is_some()
}

/// In the outer run: runs the test `test` of this executable again, alone
/// (`--exact`), under `unshare UNSHARE_ARGS` with `marker` set, asserts it
/// passed, and returns false. In the inner run it returns true at once:
/// the caller then does the work.
pub fn unshared(marker: &str, unshare_args: &[&str], test: &str) -> bool {
    if is_inner(marker) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let st = Command::new("unshare")
        .args(unshare_args)
        .arg(&exe)
        .args(["--exact", test, "--nocapture"])
        .env(marker, "1")
        .status()
        .expect("unshare runs");
    assert!(st.success(), "the test in its own namespace failed: {st}");
    false
}
