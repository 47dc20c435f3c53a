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

#[test]
fn postgres_restarted_under_a_store_fails_fast_then_recovers() {
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
