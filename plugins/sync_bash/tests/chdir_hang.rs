//! Issue 12 item 7, the `chdir` half: a command whose working directory
//! hangs (a stand-in for a home on a dead hard-mounted NFS share: a FUSE
//! mount whose server never answers, so every lookup under it waits) is
//! answered at its deadline and its stuck child killed, while the other
//! commands keep running and their timeouts keep firing.
//!
//! The test re-runs itself under `unshare -m` so that the mount is seen
//! by nobody else.

mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use basicagent_testsupport::ns::unshared;
use common::{live, Reap};
use serde_json::json;

const INNER: &str = "SYNC_BASH_CHDIR_HANG_INNER";

#[test]
fn a_hung_working_directory_does_not_stop_the_executor() {
    if unshared(
        INNER,
        &["-m", "--propagation", "private"],
        "a_hung_working_directory_does_not_stop_the_executor",
    ) {
        inner();
    }
}

/// Children of this process in state D (uninterruptible wait).
fn stuck_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        if rest.get(1) == Some(&me.as_str()) && rest[0] == "D" {
            out.push(stat);
        }
    }
    out
}

fn inner() {
    let _reap = Reap(vec![vec!["sleep", "1051"]]);
    let p = common::plugin(r#"{"kill_grace_ms":500}"#);
    // A command running before the hang, with a timeout to enforce.
    let (_, running) = common::start(p, &json!({"cmd":"sleep 1051","timeout":3}));
    let t0 = Instant::now();
    while live(&["sleep", "1051"]).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    // A FUSE mount whose server never answers (not even INIT).
    let mnt = std::env::temp_dir().join(format!("hard-exec-fuse-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    // SAFETY: open(2) of a static path.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "/dev/fuse: {}", std::io::Error::last_os_error());
    let target = CString::new(mnt.to_str().unwrap()).unwrap();
    let opts = CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0")).unwrap();
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"hard-exec".as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount fuse: {}", std::io::Error::last_os_error());
    let cwd = mnt.join("home");

    // Every executor gets a hung start (round robin over up to 4).
    let t1 = Instant::now();
    let hung: Vec<_> = (0..4)
        .map(|_| {
            common::start(
                p,
                &json!({"cmd":"echo never","cwd":cwd.to_str().unwrap(),"timeout":2}),
            )
            .1
        })
        .collect();
    // Meanwhile a command elsewhere runs and is answered.
    let a = common::run_with(p, json!({"cmd":"echo fine","timeout":30}));
    assert_eq!(
        (a.retcode, a.data["stdout"].as_str()),
        (retcode::SUCCESS, Some("fine\n")),
        "{a:?}"
    );
    for rx in &hung {
        let a = common::wait(rx);
        assert_eq!(a.retcode, retcode::PLUGIN_FAILURE, "{a:?}");
        assert!(
            a.message.contains("did not reach execve") && a.message.contains("was killed"),
            "{}",
            a.message
        );
    }
    eprintln!(
        "hung starts answered after {:?} (timeout 2 s)",
        t1.elapsed()
    );
    // The command that was running is still timed out (3 s).
    let a = common::wait(&running);
    eprintln!(
        "running command answered after {:?} (timeout 3 s)",
        t0.elapsed()
    );
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    // The stuck children were killed (the FUSE wait is killable) and
    // reaped: none is left waiting.
    let t2 = Instant::now();
    loop {
        let stuck = stuck_children();
        if stuck.is_empty() {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(30),
            "still stuck: {stuck:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: umount2 with a valid path; close our descriptor.
    unsafe {
        libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        libc::close(fd);
    }
    let _ = std::fs::remove_dir(&mnt);
    // And the plugin keeps serving.
    let a = common::run_with(p, json!({"cmd":"echo after"}));
    assert_eq!(a.data["stdout"], "after\n");
}
