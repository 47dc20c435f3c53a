//! Alone in its binary because it sets the process' umask to 0: a fresh
//! store is in WAL mode with synchronous=FULL, migrated, and its file and
//! `-wal`/`-shm` are 0600 whatever the umask.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use basicagent_store::{SqliteStore, Store, TaskResult, SCHEMA_VERSION};

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

#[test]
fn fresh_file_is_migrated_in_wal_mode_with_full_sync_and_mode_0600() {
    // Even with a umask that lets everything through.
    // SAFETY: umask only changes this process' file creation mask.
    let old = unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_tasks(&[TaskResult {
            host: "h".into(),
            task: "t".into(),
            received_at: 1,
            retcode: 0,
            message: String::new(),
            frame: "{}".into(),
            schedule: None,
        }])
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old) };

    let info = store.info().unwrap();
    assert_eq!(info.schema_version, SCHEMA_VERSION);
    assert_eq!(info.journal_mode, "wal");
    assert_eq!(info.synchronous, "full");
    assert!(info.foreign_keys);
    assert!(info.db_bytes > 0);
    for p in [path.clone(), sidecar(&path, "-wal"), sidecar(&path, "-shm")] {
        assert!(p.exists(), "{} missing", p.display());
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_ne!(app, 0);
}
