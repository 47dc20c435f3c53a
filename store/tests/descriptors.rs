//! Alone in its binary because it counts the process' open descriptors:
//! the store holds a small, fixed number of them (the server reserves them),
//! however many calls it serves, and gives them all back when dropped.

use basicagent_store::{SqliteStore, Store, TaskResult};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn the_store_holds_7_descriptors_and_returns_them() {
    let dir = tempfile::tempdir().unwrap();
    let before = open_fds();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    for i in 0..200 {
        store
            .put_tasks(&[TaskResult {
                host: "h".into(),
                task: format!("t{i}"),
                received_at: i,
                retcode: 0,
                message: String::new(),
                frame: "{}".into(),
                schedule: None,
            }])
            .unwrap();
        store.tasks(None, 10).unwrap();
        store.agents().unwrap();
    }
    // Concurrent readers use the reader connections, not new ones.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    store.tasks(Some("h"), 10).unwrap();
                }
            });
        }
    });
    let held = open_fds() - before;
    eprintln!("the store holds {held} descriptors");
    assert!(held <= 7, "the store holds {held} descriptors");
    drop(store);
    assert_eq!(open_fds(), before);
}
