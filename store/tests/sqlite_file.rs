//! `SqliteStore` and its file: migrations, refusal of a future schema or a
//! foreign database, corrupt files as typed errors, file modes and an unsafe
//! directory refused.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use basicagent_store::{
    SqliteOptions, SqliteStore, Store, StoreError, Synchronous, TaskResult, SCHEMA_VERSION,
};

fn task(host: &str, id: &str, at: i64) -> TaskResult {
    TaskResult {
        host: host.into(),
        task: id.into(),
        received_at: at,
        retcode: 0,
        message: "x".repeat(200),
        frame: format!(r#"{{"event":"task.done","task":"{id}"}}"#),
        schedule: None,
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.db")
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn reopening_applies_no_migration_twice_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    for i in 0..3 {
        let store = SqliteStore::open(&path).unwrap();
        store.put_tasks(&[task("h", &format!("t{i}"), i)]).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.tasks(None, 10).unwrap().len(), 3);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    SqliteStore::open(&path)
        .unwrap()
        .put_tasks(&[task("h", "t", 1)])
        .unwrap();
    let future = SCHEMA_VERSION + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at, description) VALUES (?1, 0, 'from the future')",
            [future],
        )
        .unwrap();
    }
    let err = SqliteStore::open(&path)
        .err()
        .expect("a future schema must be refused");
    match &err {
        StoreError::FutureSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (future, SCHEMA_VERSION));
        }
        other => panic!("expected FutureSchema, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("newer"), "{text}");
    assert!(text.contains(&future.to_string()), "{text}");
    // Untouched: the data and the future row are still there.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn another_applications_database_is_refused_and_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, secret TEXT)")
            .unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let before = fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).err().expect("must be refused");
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err:?}");
    assert!(
        fs::read(&path).unwrap() == before,
        "the foreign file was modified"
    );
}

#[test]
fn an_empty_existing_file_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    fs::write(&path, b"").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.put_tasks(&[task("h", "t", 1)]).unwrap(), 1);
}

#[test]
fn a_file_that_is_not_a_database_is_a_corrupt_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut junk = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..16384 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        junk.push(x as u8);
    }
    for content in [
        &junk[..],
        b"hello, I am a text file\n",
        b"SQLite format 3\0garbage",
    ] {
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Corrupt(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok(_) => panic!("a junk file opened as a store"),
        }
        let _ = fs::remove_file(sidecar(&path, "-wal"));
        let _ = fs::remove_file(sidecar(&path, "-shm"));
    }
}

#[test]
fn damaged_pages_give_corrupt_errors_and_the_store_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let store = SqliteStore::open(&path).unwrap();
        let batch: Vec<TaskResult> = (0..2000)
            .map(|i| task(&format!("h{}", i % 7), &format!("t{i}"), i))
            .collect();
        store.put_tasks(&batch).unwrap();
    } // last connection closed: WAL checkpointed into the file
    assert!(!sidecar(&path, "-wal").exists());
    let mut bytes = fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 8 * page, "{} bytes", bytes.len());
    // Keep page 1 (header and schema), smash every other page's b-tree header.
    for p in (1..bytes.len() / page).step_by(1) {
        for b in &mut bytes[p * page..p * page + 16] {
            *b = 0xA5;
        }
    }
    fs::write(&path, &bytes).unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::Corrupt(_)) => {}
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(store) => {
            let err = store.quick_check().unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
            for _ in 0..2 {
                let err = store.tasks(None, 5000).unwrap_err();
                assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
            }
        }
    }
}

#[test]
fn a_missing_directory_is_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/sub/store.db");
    SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&dir.path().join("state/sub")), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_group_or_world_writable_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    for bad in [0o777, 0o770, 0o702, 0o1777] {
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(bad)).unwrap();
        let err = SqliteStore::open(&path).err().expect("must be refused");
        match &err {
            StoreError::Insecure { reason, .. } => assert!(reason.contains("writable"), "{reason}"),
            other => panic!("mode {bad:o}: expected Insecure, got {other:?}"),
        }
        assert!(!path.exists(), "nothing is created in an unsafe directory");
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_directory_owned_by_someone_else_is_refused() {
    if !is_root() {
        eprintln!("not root: cannot chown, nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("theirs");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&sub, Some(65534), Some(65534)).unwrap();
    let err = SqliteStore::open(&sub.join("store.db"))
        .err()
        .expect("must be refused");
    assert!(matches!(err, StoreError::Insecure { .. }), "{err:?}");
}

#[test]
fn symlinks_for_the_database_or_its_wal_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let elsewhere = dir.path().join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let err = SqliteStore::open(&path).err().expect("must be refused");
    assert!(matches!(err, StoreError::Insecure { .. }), "{err:?}");
    fs::remove_file(&path).unwrap();

    std::os::unix::fs::symlink(&elsewhere, sidecar(&path, "-wal")).unwrap();
    let err = SqliteStore::open(&path).err().expect("must be refused");
    assert!(matches!(err, StoreError::Insecure { .. }), "{err:?}");
    assert!(fs::read(&elsewhere).unwrap().is_empty());
}

#[test]
fn an_existing_file_with_a_loose_mode_is_tightened_to_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(SqliteStore::open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    store.put_tasks(&[task("h", "t", 1)]).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&sidecar(&path, "-wal")), 0o600);
}

#[test]
fn options_normal_sync_and_no_readers_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(
        &db(&dir),
        &SqliteOptions {
            synchronous: Synchronous::Normal,
            readers: 0,
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.info().unwrap().synchronous, "normal");
    store.put_tasks(&[task("h", "t", 1)]).unwrap();
    assert_eq!(store.task("t").unwrap().len(), 1);
}

#[test]
fn concurrent_opens_of_a_new_file_all_succeed_and_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let stores: Vec<SqliteStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| s.spawn(|| SqliteStore::open(&path)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for (i, s) in stores.iter().enumerate() {
        s.put_tasks(&[task("h", &format!("t{i}"), i as i64)])
            .unwrap();
    }
    for s in &stores {
        assert_eq!(s.tasks(None, 100).unwrap().len(), 12);
    }
}

#[test]
fn open_in_uses_store_db_in_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).unwrap();
    assert_eq!(store.path(), dir.path().join(basicagent_store::FILE_NAME));
    assert!(dir.path().join("store.db").exists());
}

#[test]
fn default_retention_is_30_days_and_bounded() {
    let r = basicagent_store::Retention::default();
    let day = std::time::Duration::from_secs(86_400);
    assert_eq!((r.calls, r.tasks), (day * 30, day * 30));
    assert_eq!(
        (r.max_calls, r.max_results, r.max_tasks),
        (100_000, 5_000_000, 1_000_000)
    );
}

#[test]
fn an_online_backup_taken_while_writing_is_a_valid_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let backup = dir.path().join("backup.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..100 {
        store.put_tasks(&[task("h", &format!("t{i}"), i)]).unwrap();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 100..300 {
                store.put_tasks(&[task("h", &format!("t{i}"), i)]).unwrap();
            }
        });
        // What `sqlite3 store.db "VACUUM INTO '...'"` does, from another connection.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
    });
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o600)).unwrap();
    let copy = SqliteStore::open(&backup).unwrap();
    copy.quick_check().unwrap();
    let n = copy.tasks(None, 1000).unwrap().len();
    assert!((100..=300).contains(&n), "{n} tasks in the backup");
    // A consistent snapshot: a prefix of the writes, no gaps.
    for i in 0..n {
        assert_eq!(copy.task(&format!("t{i}")).unwrap().len(), 1, "t{i}");
    }
}

#[test]
fn a_failing_migration_is_rolled_back_whole_and_reported_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        // Ours by application_id, but with a table in the way of migration 1.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA application_id = 0x42417374; CREATE TABLE tasks (x INTEGER);")
            .unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = SqliteStore::open(&path).err().expect("migration must fail");
    match &err {
        StoreError::Migrate { version, .. } => assert_eq!(*version, 1),
        other => panic!("expected Migrate, got {other:?}"),
    }
    assert!(err.to_string().contains("version 1"), "{err}");
    // Nothing of migration 1 was left behind.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["tasks"]);
}

fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let rows = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

#[test]
fn a_file_written_by_schema_1_opens_reads_and_matches_a_fresh_schema() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1.db");
    {
        let conn = rusqlite::Connection::open(&old).unwrap();
        conn.execute_batch(include_str!("fixtures/schema-v1.sql"))
            .unwrap();
    }
    fs::set_permissions(&old, fs::Permissions::from_mode(0o600)).unwrap();
    let store = SqliteStore::open(&old).unwrap();
    assert_eq!(store.info().unwrap().schema_version, SCHEMA_VERSION);

    let h1 = "0b9f1c3e-0000-4000-8000-000000000001";
    let h2 = "0b9f1c3e-0000-4000-8000-000000000002";
    let a1 = store.agent(h1).unwrap().unwrap();
    assert_eq!(a1.name, "web-1");
    assert_eq!(a1.plugins, ["getinfo.kernel", "sync.bash"]);
    assert_eq!(
        (a1.first_seen, a1.last_seen, a1.connected_at),
        (1000, 2000, None)
    );
    assert_eq!(a1.facts.len(), 1);
    assert_eq!(a1.facts[0].data, r#"{"release":"6.1.0"}"#);
    let a2 = store.agent(h2).unwrap().unwrap();
    assert_eq!(
        (a2.node.as_deref(), a2.connected_at),
        (Some("node-a"), Some(1500))
    );
    let (call, results) = store.call(1).unwrap().unwrap();
    assert_eq!(
        call.summary.as_deref(),
        Some(r#"{"targeted":2,"answered":1,"offline":1}"#)
    );
    let hosts: Vec<&str> = results.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, [h1, h2]);
    assert_eq!(store.host_calls(h2, 10).unwrap()[0].1.retcode, 255);
    let t = store.task("t-1").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].schedule.as_deref(), Some("hourly"));
    // It keeps working: a new call gets a new id, a re-delivered task is not new.
    let id = store
        .call_begin(&basicagent_store::CallRecord {
            who: "op".into(),
            at: 3000,
            target: "{}".into(),
            request: "{}".into(),
        })
        .unwrap();
    assert!(id > 1);
    let mut again = t[0].clone();
    again.received_at = 9999;
    assert_eq!(store.put_tasks(&[again]).unwrap(), 0);
    drop(store);

    // Migrated, the old file has exactly the schema a new file gets (no
    // migration was edited after it shipped, none is missing).
    let fresh = dir.path().join("fresh.db");
    drop(SqliteStore::open(&fresh).unwrap());
    assert_eq!(schema_of(&old), schema_of(&fresh));
}
