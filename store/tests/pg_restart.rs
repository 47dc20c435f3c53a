//! PostgreSQL stopped under a running `PgStore`, then started again: calls
//! made meanwhile fail with `StoreError::Unavailable` (they do not hang),
//! and the same store works again afterwards, by itself. A test binary of
//! its own: it stops its cluster, which no other test may share.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Instant;

use basicagent_store::{PgOptions, PgStore, Store, StoreError, TaskResult};
use common::pg;

fn task(id: &str) -> TaskResult {
    TaskResult {
        host: "h1".into(),
        task: id.into(),
        received_at: 1,
        retcode: 0,
        message: String::new(),
        frame: "{}".into(),
        schedule: None,
    }
}

fn unavailable<T: std::fmt::Debug>(what: &str, call: impl FnOnce() -> Result<T, StoreError>) {
    let started = Instant::now();
    match call() {
        Err(StoreError::Unavailable(reason)) => {
            eprintln!(
                "{what}: Unavailable after {:?}: {reason}",
                started.elapsed()
            )
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// The tests that stop or freeze this binary's cluster take turns.
static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn postgres_restarted_under_a_store_fails_fast_then_recovers() {
    let _turn = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let options = PgOptions {
        pool_size: 3,
        ..pg::options()
    };
    let store = Arc::new(pg::open(&options));
    // Every pooled connection is open and idle when the server goes away.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let s = Arc::clone(&store);
            std::thread::spawn(move || s.put_tasks(&[task(&format!("before-{i}"))]).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.info().unwrap().connections >= 1);

    pg::ctl("pause");
    let t = Instant::now();
    unavailable("put_tasks", || store.put_tasks(&[task("during")]));
    unavailable("tasks", || store.tasks(None, 10));
    unavailable("agents", || store.agents());
    unavailable("call_begin", || {
        store.call_begin(&basicagent_store::CallRecord {
            who: "w".into(),
            at: 1,
            target: "{}".into(),
            request: "{}".into(),
        })
    });
    unavailable("open", || PgStore::open_with(&pg::pg().url, &options));
    eprintln!(
        "five calls while PostgreSQL was down took {:?}",
        t.elapsed()
    );

    pg::ctl("resume");
    // The same store, without being told: the dead connections were
    // dropped, new ones are made.
    assert_eq!(store.put_tasks(&[task("after")]).unwrap(), 1);
    let ids: Vec<String> = store
        .tasks(None, 10)
        .unwrap()
        .into_iter()
        .map(|t| t.task)
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(!ids.contains(&"during".to_string()));
    // Restarted again while connections sit idle: the first call after it
    // finds its connection stale and is repeated on a new one, unseen.
    pg::ctl("pause");
    pg::ctl("resume");
    assert_eq!(store.put_tasks(&[task("after-2")]).unwrap(), 1);
    assert_eq!(store.tasks(None, 10).unwrap().len(), 5);
}

fn pg_sh(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(pg::script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("pg.sh {args:?}: {e}"))
}

/// scripts/pg.sh as the cluster scripts use it: start prints a URL that
/// works, url repeats it, status tells, a second start on the same
/// directory is refused, stop stops it and removes the directory.
#[test]
fn pg_sh_start_url_status_stop() {
    let parent = tempfile::Builder::new()
        .prefix("cp-pg-sh.")
        .tempdir()
        .unwrap();
    // pg.sh creates DIR itself; the postgres user must reach it.
    std::fs::set_permissions(
        parent.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let dir = parent.path().join("pg");
    let d = dir.to_str().unwrap();
    let out = pg_sh(&["start", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.starts_with("postgres://basicagent:"), "{url}");
    assert!(url.contains("@127.0.0.1:"), "{url}");
    let again = pg_sh(&["url", d]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), url);
    assert!(pg_sh(&["status", d]).status.success());
    let twice = pg_sh(&["start", d]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("not empty"));
    let store = PgStore::open(&url).unwrap();
    assert_eq!(store.put_tasks(&[task("sh")]).unwrap(), 1);
    drop(store);
    assert!(pg_sh(&["stop", d]).status.success());
    assert!(!dir.exists());
    assert!(!pg_sh(&["status", d]).status.success());
    // The URL's server is gone: typed error, at once.
    assert!(matches!(
        PgStore::open(&url),
        Err(StoreError::Unavailable(_))
    ));
}

/// The postmaster of this binary's cluster and its children.
fn cluster_pids() -> Vec<i32> {
    let pidfile = std::fs::read_to_string(pg::pg().dir.join("data/postmaster.pid")).unwrap();
    let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    let mut pids = vec![postmaster];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    pids
}

fn signal_all(pids: &[i32], sig: i32) {
    for &pid in pids {
        // SAFETY: kill has no memory effects; the pids are this test's own
        // PostgreSQL processes (read from its data directory's pid file).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// PostgreSQL frozen (SIGSTOP: the kernel still accepts and ACKs, nothing
/// answers): calls give up after statement_timeout + 2 s, or the connect
/// limit, with `Unavailable`, instead of hanging; thawed, the same store
/// works again.
#[test]
fn a_frozen_postgres_fails_calls_instead_of_hanging_them() {
    let _turn = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let options = PgOptions {
        pool_size: 2,
        statement_timeout: std::time::Duration::from_millis(300),
        connect_timeout: std::time::Duration::from_millis(300),
        ..pg::options()
    };
    let store = pg::open(&options);
    assert_eq!(store.put_tasks(&[task("before-freeze")]).unwrap(), 1);
    let pids = cluster_pids();
    signal_all(&pids, libc::SIGSTOP);
    // Thaw whatever happens below, so the cluster's watcher can stop it.
    struct Thaw(Vec<i32>);
    impl Drop for Thaw {
        fn drop(&mut self) {
            signal_all(&self.0, libc::SIGCONT);
        }
    }
    let thaw = Thaw(pids);
    // On the idle connection: no answer, given up.
    unavailable("put_tasks", || store.put_tasks(&[task("frozen")]));
    // A new connection: the TCP connect succeeds, the startup never ends.
    unavailable("tasks", || store.tasks(None, 10));
    drop(thaw);
    // Thawed: the same store, new connections.
    assert_eq!(store.put_tasks(&[task("after-thaw")]).unwrap(), 1);
    let ids: Vec<String> = store
        .tasks(None, 10)
        .unwrap()
        .into_iter()
        .map(|t| t.task)
        .collect();
    assert!(ids.contains(&"before-freeze".to_string()), "{ids:?}");
    assert!(ids.contains(&"after-thaw".to_string()), "{ids:?}");
}
