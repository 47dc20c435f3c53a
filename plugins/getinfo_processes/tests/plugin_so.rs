//! Loads the real `libgetinfo_processes.so` through the host's loader and
//! checks its answers against what this test knows independently: its own
//! pid, parent pid and argv, `id`, and children it spawns (and kills while
//! the plugin walks /proc).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{call, call_args, data, load_built};
use serde_json::Value;

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Kills and reaps the child when dropped, even if an assertion fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn descriptor_and_usage() {
    let p = load_built("getinfo_processes");
    assert_eq!(p.info().name, "getinfo_processes");
    assert_eq!(p.info().methods, vec!["getinfo.processes".to_owned()]);
    for word in [
        "-p PID",
        "-U USER",
        "-s rss|cpu|pid",
        "-n N",
        "ppid",
        "cmdline",
        "comm",
        "rss_bytes",
        "cpu_seconds",
        "start_time",
        "threads",
        "state",
    ] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn own_process() {
    let p = load_built("getinfo_processes");
    let me = std::process::id();
    let v = data(&call_args(&p, &format!("-p {me}")));
    assert_eq!(v["count"], 1);
    let proc = &v["processes"][0];
    assert_eq!(proc["pid"], me);
    assert_eq!(proc["ppid"], std::os::unix::process::parent_id());
    assert_eq!(proc["uid"].as_u64().map(|u| u.to_string()), Some(id("-u")));
    assert_eq!(proc["user"].as_str(), Some(id("-un").as_str()));
    let argv: Vec<String> = std::env::args().collect();
    assert_eq!(proc["cmdline"].as_str(), Some(argv.join(" ").as_str()));
    assert!(proc["threads"].as_u64().is_some_and(|t| t >= 1));
    assert!(proc["rss_bytes"].as_u64().is_some_and(|r| r > 0));
    // The state is the main thread's (the harness waits there: S).
    assert!(["R", "S"].contains(&proc["state"].as_str().unwrap_or("")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let start = proc["start_time"].as_u64().expect("start_time");
    assert!(
        start <= now + 1 && start + 600 > now,
        "started {start}, now {now}"
    );
    // The parent is there too, in the full list.
    let all = data(&call_args(&p, ""));
    let pids: Vec<u64> = all["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert!(pids.contains(&u64::from(me)));
    assert!(pids.contains(&u64::from(std::os::unix::process::parent_id())));
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "ascending pids");
}

#[test]
fn spawned_child_found_with_cmdline_and_user() {
    let p = load_built("getinfo_processes");
    let unique = format!("0.{}{}", std::process::id(), 7);
    let child = Reaped(
        Command::new("sleep")
            .args(["30", &unique])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = child.0.id();
    let want = format!("sleep 30 {unique}");
    // exec may not have happened yet: the cmdline is the test's until then.
    let mut found = Value::Null;
    for _ in 0..200 {
        let v = data(&call_args(&p, &format!("-U {}", id("-u"))));
        if let Some(c) = v["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .find(|c| c["cmdline"] == want.as_str())
        {
            found = c.clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(found["pid"], pid, "child not found by its cmdline");
    assert_eq!(found["ppid"], std::process::id());
    assert_eq!(found["comm"], "sleep");
    assert_eq!(found["user"].as_str(), Some(id("-un").as_str()));
    assert!(["S", "R"].contains(&found["state"].as_str().unwrap_or("")));
}

#[test]
fn user_filter_sort_and_limit() {
    let p = load_built("getinfo_processes");
    let uid: u64 = id("-u").parse().expect("uid");
    for args in [format!("-U {uid}"), format!("-U {}", id("-un"))] {
        let v = data(&call_args(&p, &args));
        let procs = v["processes"].as_array().expect("processes");
        assert!(!procs.is_empty());
        assert!(procs.iter().all(|p| p["uid"] == uid), "{args}");
    }
    let v = data(&call_args(&p, "-s rss -n 3"));
    let rss: Vec<u64> = v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["rss_bytes"].as_u64())
        .collect();
    assert_eq!(rss.len(), 3);
    assert!(rss.windows(2).all(|w| w[0] >= w[1]), "{rss:?}");
    assert_eq!(v["count"], 3);
    assert!(v["total"].as_u64().is_some_and(|t| t >= 3));
    let v = data(&call_args(&p, "-s cpu -n 5"));
    let cpu: Vec<f64> = v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["cpu_seconds"].as_f64())
        .collect();
    assert!(cpu.windows(2).all(|w| w[0] >= w[1]), "{cpu:?}");
    let v = data(&call_args(&p, "-p 1"));
    assert_eq!(v["processes"][0]["ppid"], 0);
    let v = data(&call_args(&p, "-p 4194304"));
    assert_eq!(v["count"], 0, "a pid above pid_max is simply not there");
}

/// Children are spawned and killed as fast as possible while the plugin
/// walks /proc: every answer must be a success with valid data.
#[test]
fn churn_never_fails() {
    let p = load_built("getinfo_processes");
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut spawned = 0u32;
                // A few live at a time; the oldest is killed (and reaped)
                // as each new one starts, so exits land mid-walk.
                let mut alive = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(c) = Command::new("sleep").arg("5").stdin(Stdio::null()).spawn() {
                        alive.push_back(Reaped(c));
                        spawned += 1;
                    }
                    if alive.len() > 8 {
                        drop(alive.pop_front());
                    }
                }
                spawned
            })
        })
        .collect();
    for i in 0..60 {
        let args = ["", "-s cpu", "-s rss -n 5", "-U 0"][i % 4];
        let v = data(&call_args(&p, args));
        assert!(v["count"].as_u64().is_some());
    }
    stop.store(true, Ordering::Relaxed);
    let spawned: u32 = churners
        .into_iter()
        .map(|t| t.join().expect("churner"))
        .sum();
    assert!(spawned > 0);
}

#[test]
fn errors() {
    let p = load_built("getinfo_processes");
    for bad in [
        "-x", "-p", "-p abc", "-p 0", "-s mem", "-n 0", "-n x", "123", "-U 'a",
    ] {
        let c = call_args(&p, bad);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{bad}: {}", c.message);
        assert!(
            c.message.contains("cpu_seconds"),
            "usage missing: {}",
            c.message
        );
        assert!(c.data.is_none());
    }
    let c = call_args(&p, "-U no-such-user-xyz");
    assert_eq!(c.retcode, retcode::UNKNOWN_USER, "{}", c.message);
    for bad in ["[1]", "\"x\"", "{", "42"] {
        assert_eq!(call(&p, bad).retcode, retcode::INVALID_REQUEST, "{bad}");
    }
}

/// Issue 12 item 14: the walk of /proc (whose cmdline reads can block)
/// never runs on the caller's thread (the daemon's loop): `call` returns
/// having only queued it, and the completion comes from the plugin's
/// worker, with the right answer. A bad request is still refused at once.
#[test]
fn call_returns_before_the_walk_and_completes_from_the_worker() {
    let p = load_built("getinfo_processes");
    let caller = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::channel();
    let request = format!(r#"{{"args":"-p {}"}}"#, std::process::id());
    p.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send((std::thread::current().id(), c));
        }),
    );
    let (thread, c) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("completion");
    assert_ne!(thread, caller, "completed on the caller's thread");
    let d = data(&c);
    assert_eq!(d["count"], 1, "{d}");
    assert_eq!(d["processes"][0]["pid"], std::process::id());

    let (tx, rx) = std::sync::mpsc::channel();
    p.call(
        br#"{"args":"-q"}"#,
        Box::new(move |c| {
            let _ = tx.send((std::thread::current().id(), c));
        }),
    );
    let (thread, c) = rx.recv_timeout(Duration::from_secs(30)).expect("refusal");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert_eq!(thread, caller, "a refusal is answered at once");
    // Still serving.
    assert_eq!(call_args(&p, "-n 1").retcode, retcode::SUCCESS);
}
