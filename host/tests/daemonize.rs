//! `daemon::daemonize` + `PidFile` for real, in a process of their own.
//!
//! `fork` must not happen inside libtest's multi-threaded harness, so this
//! test has `harness = false`: its `main` is the driver, and it re-runs its
//! own executable (single-threaded) as the would-be daemon.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basicagent_host::daemon::{daemonize, PidFile};

const ROLE: &str = "BASICAGENT_DAEMONIZE_TEST_DIR";

fn main() {
    if let Some(dir) = std::env::var_os(ROLE) {
        daemon_role(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut passed = 0;
    let mut failed = 0;
    for (name, test) in [
        (
            "detaches_reports_ready_and_refuses_a_second_instance",
            detaches_reports_ready_and_refuses_a_second_instance as fn(&Path),
        ),
        (
            "a_stale_pid_file_does_not_block",
            a_stale_pid_file_does_not_block,
        ),
    ] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).expect("mkdir");
        let ok = std::panic::catch_unwind(|| test(&sub)).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The would-be daemon: detach, take the pid file, say ready, write a
/// report, and run until `stop` appears in the directory.
fn daemon_role(dir: &Path) -> ! {
    let dir = std::path::absolute(dir).expect("absolute");
    let detached = match daemonize() {
        Ok(d) => d,
        Err(_) => std::process::exit(3),
    };
    let mut pid_file = match PidFile::acquire(&dir.join("agent.pid")) {
        Ok(p) => p,
        Err(e) => {
            detached.fail(&e.to_string());
            std::process::exit(1);
        }
    };
    if let Err(e) = pid_file.write_pid() {
        detached.fail(&e.to_string());
        std::process::exit(1);
    }
    let cwd = std::env::current_dir().expect("cwd");
    // SAFETY: plain queries of this process's ids.
    let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
    let stdin = std::fs::read_link("/proc/self/fd/0").expect("fd 0");
    let report = format!(
        "cwd={}\nsession_leader={}\nstdin={}\n",
        cwd.display(),
        sid == pid,
        stdin.display()
    );
    std::fs::write(dir.join("report"), report).expect("report");
    detached.ready().expect("ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("stop").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(pid_file);
    std::process::exit(0)
}

fn start(dir: &Path) -> std::process::Output {
    Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    // A reaped or never-existing pid has no /proc entry; a zombie's state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn stop_and_check_cleanup(dir: &Path, pid: u32, pid_path: &Path) {
    std::fs::write(dir.join("stop"), "").expect("stop");
    wait_until("the daemon to exit", || !alive(pid));
    assert!(!pid_path.exists(), "pid file removed on a clean exit");
}

fn detaches_reports_ready_and_refuses_a_second_instance(dir: &Path) {
    let started = Instant::now();
    let first = start(dir);
    assert!(first.status.success(), "{first:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid_path = dir.join("agent.pid");
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(pid), "the daemon runs after its starter exited");
    let report = std::fs::read_to_string(dir.join("report")).expect("report");
    assert!(report.contains("cwd=/\n"), "{report}");
    assert!(report.contains("session_leader=false\n"), "{report}");
    assert!(report.contains("stdin=/dev/null\n"), "{report}");

    let second = start(dir);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_path).expect("pid file").trim(),
        pid.to_string(),
        "the loser leaves the pid file alone"
    );
    stop_and_check_cleanup(dir, pid, &pid_path);
}

fn a_stale_pid_file_does_not_block(dir: &Path) {
    let pid_path = dir.join("agent.pid");
    std::fs::write(&pid_path, "1\n").expect("stale");
    let out = start(dir);
    assert!(out.status.success(), "{out:?}");
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert_ne!(pid, 1);
    stop_and_check_cleanup(dir, pid, &pid_path);
}
