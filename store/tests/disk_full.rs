//! A full file system: `put_tasks` fails with `StoreError::DiskFull`,
//! everything committed before is intact and readable, and once there is
//! space again the same store writes again. Uses a small tmpfs (needs root;
//! says so and checks nothing without it).

use std::path::{Path, PathBuf};
use std::process::Command;

use basicagent_store::{Retention, SqliteStore, Store, StoreError, TaskResult};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Mount(dir.to_owned()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn task(n: usize) -> TaskResult {
    TaskResult {
        host: format!("host-{}", n % 13),
        task: format!("t{n}"),
        received_at: n as i64,
        retcode: 0,
        message: "m".repeat(100),
        frame: format!(r#"{{"task":"t{n}","out":"{}"}}"#, "o".repeat(800)),
        schedule: None,
    }
}

#[test]
fn a_full_disk_is_a_typed_error_and_the_store_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(dir.path(), "384k") else {
        eprintln!("cannot mount a tmpfs here (not root?): nothing to check");
        return;
    };
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut acked = 0usize;
    let mut n = 0usize;
    let err = loop {
        let batch: Vec<TaskResult> = (n..n + 20).map(task).collect();
        match store.put_tasks(&batch) {
            Ok(new) => {
                assert_eq!(new, 20);
                acked += 20;
                n += 20;
            }
            Err(e) => break e,
        }
        assert!(n < 100_000, "384 KiB never filled up");
    };
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(acked > 0);
    // Reads still answer, with every acked result and nothing of the failed batch.
    let stored = store.tasks(None, usize::MAX).unwrap();
    assert_eq!(stored.len(), acked);
    assert!(store.task(&format!("t{n}")).unwrap().is_empty());
    // A second try while still full fails the same way, and does no harm.
    let again = store.put_tasks(&[task(n)]).unwrap_err();
    assert!(matches!(again, StoreError::DiskFull(_)), "{again:?}");

    mount.resize("4m");
    let batch: Vec<TaskResult> = (n..n + 20).map(task).collect();
    assert_eq!(store.put_tasks(&batch).unwrap(), 20);
    assert_eq!(store.tasks(None, usize::MAX).unwrap().len(), acked + 20);
    store
        .prune(
            0,
            &Retention {
                max_tasks: 10,
                ..Retention::default()
            },
        )
        .unwrap();
    store.quick_check().unwrap();
    drop(store);
    // And the file reopens cleanly.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.tasks(None, usize::MAX).unwrap().len(), 10);
    drop(store);
    drop(mount);
}
