//! Issue 12 item 7: a user lookup that hangs (a stand-in for an LDAP or
//! sssd outage: a FIFO bind-mounted over /etc/passwd, in a mount
//! namespace of this test's own) neither freezes the executor's timers
//! nor keeps its call from being answered.
//!
//! The test re-runs itself under `unshare -m` so that the bind mount is
//! seen by nobody else.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use basicagent_testsupport::ns::unshared;
use common::{live, Reap};
use serde_json::json;

const INNER: &str = "SYNC_BASH_NSS_HANG_INNER";

#[test]
fn a_hung_user_lookup_does_not_stop_the_executor() {
    if unshared(
        INNER,
        &["-m", "--propagation", "private"],
        "a_hung_user_lookup_does_not_stop_the_executor",
    ) {
        inner();
    }
}

struct Unmount(&'static str, std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", self.0]).status();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn inner() {
    let _reap = Reap(vec![vec!["sleep", "1041"]]);
    // On the old code a lookup blocked the executor thread that also
    // times out the commands it runs.
    let p = common::plugin(r#"{"kill_grace_ms":500,"start_timeout_ms":60000}"#);
    let passwd = std::fs::read("/etc/passwd").unwrap();
    // A command running before the outage, with a timeout to enforce.
    let (_, running) = common::start(p, &json!({"cmd":"sleep 1041","timeout":3}));
    let t0 = Instant::now();
    while live(&["sleep", "1041"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    // The outage: opening /etc/passwd now blocks until a writer comes.
    let fifo = std::env::temp_dir().join(format!("hard-exec-passwd-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let st = Command::new("mount")
        .args(["--bind", fifo.to_str().unwrap(), "/etc/passwd"])
        .status()
        .unwrap();
    assert!(st.success());
    let unmount = Unmount("/etc/passwd", fifo.clone());

    // Every executor gets one hung lookup (round robin over up to 4).
    let t1 = Instant::now();
    let hung: Vec<_> = (0..4)
        .map(|_| common::start(p, &json!({"cmd":"echo never","user":"nobody","timeout":2})).1)
        .collect();
    // Each hung call is answered at its deadline (2 s), the lookup still
    // hanging: nothing has written to the FIFO yet.
    for rx in &hung {
        let a = common::wait(rx);
        assert_eq!(a.retcode, retcode::PLUGIN_FAILURE, "{a:?}");
        assert!(
            a.message.contains("looking up user \"nobody\"")
                && a.message.contains("nothing was run"),
            "{}",
            a.message
        );
    }
    eprintln!(
        "hung lookups answered after {:?} (timeout 2 s)",
        t1.elapsed()
    );
    // And the command that was running is still timed out (3 s).
    let a = common::wait(&running);
    eprintln!(
        "running command answered after {:?} (timeout 3 s)",
        t0.elapsed()
    );
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");

    // A call stuck in its lookup can be peeked (the answer waits for the
    // start) and cancelled: both are answered at once, nothing runs.
    let (id, stuck) = common::start(p, &json!({"cmd":"echo never","user":"nobody","timeout":60}));
    let (_, peeked) = common::start(p, &json!({"peek":id}));
    p.cancel(id);
    let a = common::wait(&stuck);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert!(
        a.message.contains("before the command started"),
        "{}",
        a.message
    );
    let a = common::wait(&peeked);
    assert_eq!(a.retcode, retcode::INVALID_PARAMS, "{a:?}");

    // The outage ends: the hung lookups read the real file and give up
    // (their calls are answered); a new command runs as nobody.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("the hung lookups hold the FIFO open for reading");
    let _ = w.write_all(&passwd);
    drop(w);
    drop(unmount);
    let a = common::run_with(p, json!({"cmd":"id -un","user":"nobody"}));
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    assert_eq!(a.data["stdout"], "nobody\n");
}
