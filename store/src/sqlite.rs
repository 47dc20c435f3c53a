//! `SqliteStore`: the embedded, durable [`Store`] (one SQLite file in WAL mode).
//!
//! One writer connection behind a mutex (SQLite has one writer at a time
//! anyway; every write method is one `BEGIN IMMEDIATE` transaction) and a
//! few read-only connections, so API reads never wait behind a batch of
//! writes. Statements are prepared once per connection and cached.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`. With NORMAL a
//! commit in WAL mode survives the death of the process (`kill -9`: the
//! WAL's pages are in the kernel's page cache) but not a power loss or a
//! kernel crash, which may roll back the last commits. An acked `task.done`
//! is deleted by the agent, so losing it is losing it for good; FULL fsyncs
//! the WAL at every commit. The server batches task results, so the cost is
//! one fsync per batch, not per result (numbers: docs/store-notes.md).
//!
//! The file is the operator's history and may hold secrets (requests carry
//! whatever the operator sent): it is created 0600 in a directory that must
//! not be group- or world-writable, symlinks are refused, `-wal`/`-shm` are
//! kept 0600, and deleted rows are zeroed (`secure_delete=FAST`).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

mod schema;
mod sql;

use schema::MIGRATIONS;

use crate::{
    call_victims, check_json, cutoff, sql_limit, AgentRecord, AgentRow, CallId, CallRecord,
    CallRow, CallSize, Fact, HostResult, Millis, Pruned, Retention, Store, StoreError, TaskResult,
};

/// The schema version this code writes; a file with a newer one is refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The store's file name in the server's `--state-dir`.
pub const FILE_NAME: &str = "store.db";

/// `PRAGMA application_id` of a BasicAgent store ("BAst").
const APPLICATION_ID: i64 = 0x4241_7374;

/// `PRAGMA synchronous` for the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// Survives `kill -9`, not power loss. Only for measurements.
    Normal,
    /// Survives power loss: the default.
    Full,
}

/// How [`SqliteStore::open_with`] opens the file.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Read-only connections for the query methods (0: the writer serves
    /// reads too). Each costs two file descriptors (the writer: three).
    pub readers: usize,
    /// Rows (call results or tasks) that `prune` removes per transaction,
    /// so a large prune never holds the writer long: task acks wait behind
    /// it. At least one call is removed per transaction whatever its size.
    pub prune_chunk: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            readers: 2,
            prune_chunk: 20_000,
        }
    }
}

/// What [`SqliteStore::info`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    pub schema_version: i64,
    /// `wal`.
    pub journal_mode: String,
    /// `full` unless opened with [`Synchronous::Normal`].
    pub synchronous: &'static str,
    pub foreign_keys: bool,
    /// Size of the database file's pages (without the WAL).
    pub db_bytes: u64,
    pub wal_bytes: u64,
}

/// The embedded store: one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    prune_chunk: u64,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A connection is left consistent by a panic in a caller (an open
    // transaction is rolled back when its guard drops).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn insecure(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Insecure {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn open_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        source,
    }
}

/// The directory must be a directory owned by us (or root) that nobody
/// else can write to: whoever can write there can swap the database.
/// A missing directory is created 0700.
fn check_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_err(dir, e)),
        Err(e) => Err(open_err(dir, e)),
        Ok(m) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if !m.is_dir() {
                Err(insecure(dir, "not a directory"))
            } else if m.uid() != euid && m.uid() != 0 {
                Err(insecure(
                    dir,
                    format!("directory owned by uid {}, not by us or root", m.uid()),
                ))
            } else if m.mode() & 0o022 != 0 {
                Err(insecure(
                    dir,
                    format!(
                        "directory is group- or world-writable (mode {:o}); chmod go-w it",
                        m.mode() & 0o7777
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// A database file, or its `-wal`/`-shm`: if present, a regular file of
/// ours, made 0600. With `create`, a missing one is created 0600.
fn check_file(path: &Path, create: bool) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if create {
                match fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(path)
                {
                    Ok(_) => Ok(()),
                    // Another opener created it meanwhile: check theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_file(path, false),
                    Err(e) => Err(open_err(path, e)),
                }
            } else {
                Ok(())
            }
        }
        Err(e) => Err(open_err(path, e)),
        Ok(m) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if m.file_type().is_symlink() {
                Err(insecure(path, "is a symbolic link"))
            } else if !m.is_file() {
                Err(insecure(path, "not a regular file"))
            } else if m.uid() != euid {
                Err(insecure(
                    path,
                    format!("owned by uid {}, not by us", m.uid()),
                ))
            } else {
                if m.mode() & 0o077 != 0 {
                    log::warn!(
                        "store {}: mode {:o} was too open, now 0600",
                        path.display(),
                        m.mode() & 0o7777
                    );
                    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                        .map_err(|e| open_err(path, e))?;
                }
                Ok(())
            }
        }
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Refuse, before anything is written, a file that is not ours or whose
/// schema is newer than this code.
fn check_identity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    // One read transaction: the three reads see the same snapshot even while
    // another opener commits the first migration.
    let tx = conn.unchecked_transaction()?;
    let app_id: i64 = tx.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let objects: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if app_id != APPLICATION_ID && !(app_id == 0 && objects == 0) {
        return Err(StoreError::NotOurs {
            path: path.to_owned(),
            reason: format!(
                "application_id {app_id:#x} and {objects} schema objects; \
                 expected {APPLICATION_ID:#x} or an empty file"
            ),
        });
    }
    let current = current_version(&tx)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::FutureSchema {
            path: path.to_owned(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Bring the schema up to `migrations.len()` (in the store: [`MIGRATIONS`],
/// i.e. [`SCHEMA_VERSION`]), one transaction per migration.
fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[(&str, &str)],
) -> Result<(), StoreError> {
    let supported = migrations.len() as i64;
    for (i, (description, sql)) in migrations.iter().enumerate() {
        let version = i as i64 + 1;
        let failed = |source: rusqlite::Error| match StoreError::from(source) {
            StoreError::Sql(source) => StoreError::Migrate {
                version,
                source: Box::new(source),
            },
            corrupt => corrupt,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        // Read inside the write transaction: another process may have
        // migrated meanwhile.
        let current = current_version(&tx).map_err(failed)?;
        if current > supported {
            return Err(StoreError::FutureSchema {
                path: path.to_owned(),
                found: current,
                supported,
            });
        }
        if current >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at, description) VALUES (?1, ?2, ?3)",
            params![version, now_millis(), description],
        )
        .map_err(failed)?;
        if version == 1 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(failed)?;
        }
        tx.commit().map_err(failed)?;
        log::info!(
            "store {}: schema migrated to version {version} ({description})",
            path.display()
        );
    }
    Ok(())
}

fn current_version(conn: &Connection) -> rusqlite::Result<i64> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
}

/// Run `f` again while SQLite answers BUSY without waiting: switching a new
/// file to WAL needs the exclusive lock, and SQLite skips the busy handler
/// where waiting could deadlock (two openers both upgrading their shared
/// lock). Bounded: about 10 s, then the BUSY error is returned.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut tries = 0u32;
    loop {
        match f() {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && tries < 1000 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

fn agent_row(r: &Row<'_>) -> rusqlite::Result<(AgentRow, String)> {
    Ok((
        AgentRow {
            host: r.get(0)?,
            name: r.get(1)?,
            addr: r.get(2)?,
            version: r.get(3)?,
            plugins: Vec::new(),
            node: r.get(5)?,
            first_seen: r.get(6)?,
            last_seen: r.get(7)?,
            connected_at: r.get(8)?,
            facts: Vec::new(),
        },
        r.get(4)?,
    ))
}

fn with_plugins((mut row, plugins): (AgentRow, String)) -> Result<AgentRow, StoreError> {
    row.plugins = serde_json::from_str(&plugins)
        .map_err(|e| StoreError::Corrupt(format!("plugins of agent {:?}: {e}", row.host)))?;
    Ok(row)
}

/// A call row from columns `offset..offset + 7`: id, who, at, target,
/// request, finished_at, summary.
fn call_row(r: &Row<'_>, offset: usize) -> rusqlite::Result<CallRow> {
    Ok(CallRow {
        id: r.get(offset)?,
        who: r.get(offset + 1)?,
        at: r.get(offset + 2)?,
        target: r.get(offset + 3)?,
        request: r.get(offset + 4)?,
        finished_at: r.get(offset + 5)?,
        summary: r.get(offset + 6)?,
    })
}

/// A host result from columns `offset..offset + 4`: host, at, retcode, response.
fn host_result(r: &Row<'_>, offset: usize) -> rusqlite::Result<HostResult> {
    Ok(HostResult {
        host: r.get(offset)?,
        at: r.get(offset + 1)?,
        retcode: r.get(offset + 2)?,
        response: r.get(offset + 3)?,
    })
}

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskResult> {
    Ok(TaskResult {
        host: r.get(0)?,
        task: r.get(1)?,
        received_at: r.get(2)?,
        retcode: r.get(3)?,
        message: r.get(4)?,
        frame: r.get(5)?,
        schedule: r.get(6)?,
    })
}

impl SqliteStore {
    /// Open (creating if missing) the store at `path` with the defaults:
    /// `synchronous=FULL`, two reader connections.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// Open (creating if missing) [`FILE_NAME`] in the server's state
    /// directory, with the defaults.
    pub fn open_in(state_dir: &Path) -> Result<Self, StoreError> {
        Self::open(&state_dir.join(FILE_NAME))
    }

    /// Open with explicit options.
    pub fn open_with(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        check_dir(dir)?;
        check_file(path, true)?;
        let wal = sidecar(path, "-wal");
        let shm = sidecar(path, "-shm");
        check_file(&wal, false)?;
        check_file(&shm, false)?;

        // No URI parsing (a path is a path), no following symlinks, our own
        // mutex around each connection.
        let base = OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(
            path,
            base | OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        configure(&writer)?;
        check_identity(&writer, path)?;
        let mode: String = retry_busy(|| {
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: io::Error::other(format!(
                    "the file system does not support WAL (journal_mode is {mode})"
                )),
            });
        }
        let sync = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        writer.pragma_update(None, "synchronous", sync)?;
        writer.pragma_update(None, "foreign_keys", true)?;
        writer.pragma_update(None, "secure_delete", "FAST")?;
        writer.pragma_update(None, "temp_store", "MEMORY")?;
        // Truncate the WAL back to 64 MiB after a checkpoint that emptied it.
        writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        migrate(&mut writer, path, MIGRATIONS)?;
        // SQLite creates the sidecars with the database's mode; make sure.
        check_file(&wal, false)?;
        check_file(&shm, false)?;

        let mut readers = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let r = Connection::open_with_flags(path, base | OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            configure(&r)?;
            r.pragma_update(None, "query_only", true)?;
            readers.push(Mutex::new(r));
        }
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            prune_chunk: options.prune_chunk.max(1),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file is and how it is configured (for logs and `/metrics`).
    pub fn info(&self) -> Result<StoreInfo, StoreError> {
        let conn = lock(&self.writer);
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let page_count: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let wal_bytes = fs::metadata(sidecar(&self.path, "-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(StoreInfo {
            schema_version: current_version(&conn)?,
            journal_mode: conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
            synchronous: match conn
                .pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))?
            {
                0 => "off",
                1 => "normal",
                2 => "full",
                _ => "extra",
            },
            foreign_keys: conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?,
            db_bytes: u64::try_from(page_size.saturating_mul(page_count)).unwrap_or(0),
            wal_bytes,
        })
    }

    /// `PRAGMA quick_check`: reads every page (slow on a big file); an
    /// inconsistency is [`StoreError::Corrupt`].
    pub fn quick_check(&self) -> Result<(), StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let problems: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        if problems.len() == 1 && problems[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(problems.join("; ")))
        }
    }

    /// A connection for reading: a free reader if there is one, else the
    /// next in turn (or the writer if there are no readers).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return lock(&self.writer);
        }
        for r in &self.readers {
            if let Ok(guard) = r.try_lock() {
                return guard;
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[i])
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction on the writer; commit if
    /// it returns Ok, roll back otherwise.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn agents_seen(&self, batch: &[AgentRecord]) -> Result<(), StoreError> {
        let plugins = batch
            .iter()
            .map(|a| {
                serde_json::to_string(&a.plugins).map_err(|e| StoreError::InvalidJson {
                    field: "plugins",
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<String>, _>>()?;
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(sql::AGENT_UPSERT)?;
            for (a, plugins) in batch.iter().zip(&plugins) {
                stmt.execute(params![
                    a.host,
                    a.name,
                    a.addr,
                    a.version,
                    plugins,
                    a.node,
                    a.connected_at
                ])?;
            }
            Ok(())
        })
    }

    fn agents_gone(&self, hosts: &[String], at: Millis) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(sql::AGENT_GONE)?;
            for h in hosts {
                stmt.execute(params![h, at])?;
            }
            Ok(())
        })
    }

    fn node_gone(&self, node: &str, at: Millis) -> Result<u64, StoreError> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached(sql::NODE_GONE)?
                .execute(params![node, at])? as u64)
        })
    }

    fn agent_fact(
        &self,
        host: &str,
        method: &str,
        data: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        check_json("fact data", data)?;
        self.write(|tx| {
            tx.prepare_cached(sql::FACT_UPSERT)?
                .execute(params![host, method, data, at])?;
            Ok(())
        })
    }

    fn agent(&self, host: &str) -> Result<Option<AgentRow>, StoreError> {
        let conn = self.reader();
        // One read transaction, so the agent and its facts agree.
        let tx = conn.unchecked_transaction()?;
        let row = tx
            .prepare_cached(sql::AGENT)?
            .query_row([host], agent_row)
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut row = with_plugins(row)?;
        row.facts = tx
            .prepare_cached(sql::FACTS_OF)?
            .query_map([host], |r| {
                Ok(Fact {
                    method: r.get(0)?,
                    data: r.get(1)?,
                    at: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(row))
    }

    fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(sql::AGENTS)?;
        let rows = stmt.query_map([], agent_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(with_plugins(row?)?);
        }
        Ok(out)
    }

    fn call_begin(&self, call: &CallRecord) -> Result<CallId, StoreError> {
        check_json("call target", &call.target)?;
        check_json("call request", &call.request)?;
        self.write(|tx| {
            tx.prepare_cached(sql::CALL_INSERT)?.execute(params![
                call.who,
                call.at,
                call.target,
                call.request
            ])?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn call_results(&self, call: CallId, results: &[HostResult]) -> Result<(), StoreError> {
        for r in results {
            check_json("host result response", &r.response)?;
        }
        self.write(|tx| {
            let exists = tx.prepare_cached(sql::CALL_EXISTS)?.exists([call])?;
            if !exists {
                return Err(StoreError::UnknownCall(call));
            }
            let mut stmt = tx.prepare_cached(sql::RESULT_INSERT)?;
            let mut new: i64 = 0;
            for r in results {
                let n = stmt.execute(params![call, r.host, r.at, r.retcode, r.response])?;
                new = new.saturating_add(n as i64);
            }
            tx.prepare_cached(sql::CALL_COUNT_RESULTS)?
                .execute(params![call, new])?;
            Ok(())
        })
    }

    fn call_end(&self, call: CallId, summary: &str, at: Millis) -> Result<(), StoreError> {
        check_json("call summary", summary)?;
        self.write(|tx| {
            let n = tx
                .prepare_cached(sql::CALL_END)?
                .execute(params![call, at, summary])?;
            if n == 0 {
                return Err(StoreError::UnknownCall(call));
            }
            Ok(())
        })
    }

    fn calls(&self, limit: usize, before: Option<CallId>) -> Result<Vec<CallRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(sql::CALLS_BEFORE)?;
        let rows = stmt.query_map(
            params![before.unwrap_or(CallId::MAX), sql_limit(limit)],
            |r| call_row(r, 0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn call(&self, id: CallId) -> Result<Option<(CallRow, Vec<HostResult>)>, StoreError> {
        let conn = self.reader();
        let tx = conn.unchecked_transaction()?;
        let row = tx
            .prepare_cached(sql::CALL)?
            .query_row([id], |r| call_row(r, 0))
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let results = tx
            .prepare_cached(sql::RESULTS_OF)?
            .query_map([id], |r| host_result(r, 0))?
            .collect::<Result<_, _>>()?;
        Ok(Some((row, results)))
    }

    fn host_calls(
        &self,
        host: &str,
        limit: usize,
    ) -> Result<Vec<(CallRow, HostResult)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(sql::HOST_CALLS)?;
        let rows = stmt.query_map(params![host, sql_limit(limit)], |r| {
            Ok((call_row(r, 0)?, host_result(r, 7)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_tasks(&self, results: &[TaskResult]) -> Result<usize, StoreError> {
        for t in results {
            check_json("task frame", &t.frame)?;
        }
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(sql::TASK_INSERT)?;
            let mut new = 0usize;
            for t in results {
                new += stmt.execute(params![
                    t.host,
                    t.task,
                    t.received_at,
                    t.retcode,
                    t.message,
                    t.frame,
                    t.schedule
                ])?;
            }
            Ok(new)
        })
    }

    fn tasks(&self, host: Option<&str>, limit: usize) -> Result<Vec<TaskResult>, StoreError> {
        let conn = self.reader();
        let limit = sql_limit(limit);
        let rows = match host {
            Some(h) => conn
                .prepare_cached(sql::TASKS_OF_HOST)?
                .query_map(params![h, limit], task_row)?
                .collect::<Result<_, _>>()?,
            None => conn
                .prepare_cached(sql::TASKS)?
                .query_map([limit], task_row)?
                .collect::<Result<_, _>>()?,
        };
        Ok(rows)
    }

    fn task(&self, task: &str) -> Result<Vec<TaskResult>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(sql::TASK)?;
        let rows = stmt.query_map([task], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prune(&self, now: Millis, retention: &Retention) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let chunk_rows = self.prune_chunk;
        let calls: Vec<CallSize> = {
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(sql::PRUNE_CALL_SIZES)?;
            let rows = stmt.query_map([], |r| {
                Ok(CallSize {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    results: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        // Delete the victims in transactions of about chunk_rows result
        // rows (at least one call each), releasing the writer in between.
        let victims = call_victims(&calls, now, retention);
        let mut rest = victims.as_slice();
        while !rest.is_empty() {
            let mut rows = 0u64;
            let mut n = 0;
            while n < rest.len() && (n == 0 || rows.saturating_add(rest[n].results) <= chunk_rows) {
                rows = rows.saturating_add(rest[n].results);
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let (calls, results) = self.write(|tx| {
                let mut del = tx.prepare_cached(sql::PRUNE_CALL)?;
                let mut count = tx.prepare_cached(sql::PRUNE_COUNT_RESULTS)?;
                let (mut calls, mut results) = (0u64, 0u64);
                for c in chunk {
                    let r: i64 = count.query_row([c.id], |r| r.get(0))?;
                    if del.execute([c.id])? > 0 {
                        calls += 1;
                        results = results.saturating_add(r.max(0) as u64);
                    }
                }
                Ok((calls, results))
            })?;
            pruned.calls += calls;
            pruned.results += results;
        }

        let old = cutoff(now, retention.tasks);
        loop {
            let n = self.write(|tx| {
                Ok(tx
                    .prepare_cached(sql::PRUNE_OLD_TASKS)?
                    .execute(params![old, i64::try_from(chunk_rows).unwrap_or(i64::MAX)])?)
            })?;
            pruned.tasks += n as u64;
            if (n as u64) < chunk_rows {
                break;
            }
        }
        loop {
            let n = self.write(|tx| {
                let total: i64 = tx
                    .prepare_cached(sql::COUNT_TASKS)?
                    .query_row([], |r| r.get(0))?;
                let excess = (total.max(0) as u64)
                    .saturating_sub(retention.max_tasks)
                    .min(chunk_rows);
                if excess == 0 {
                    return Ok(0);
                }
                Ok(tx
                    .prepare_cached(sql::PRUNE_OLDEST_TASKS)?
                    .execute([excess as i64])?)
            })?;
            pruned.tasks += n as u64;
            if n == 0 {
                break;
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(conn: &Connection) -> Vec<i64> {
        conn.prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// An older file gets exactly the migrations it lacks, in order, each in
    /// its own transaction: a failing one leaves the ones before it applied
    /// and nothing of itself.
    #[test]
    fn migrations_apply_in_order_once_each_and_a_failing_one_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = Connection::open(&path).unwrap();
        let v1 = MIGRATIONS[0];
        let v2 = (
            "add a",
            "CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (2);",
        );
        let v3 = (
            "add b",
            "CREATE TABLE b (x INTEGER); INSERT INTO a VALUES (3);",
        );
        let bad = (
            "fails halfway",
            "CREATE TABLE c (x INTEGER); INSERT INTO nowhere VALUES (1);",
        );

        migrate(&mut conn, &path, &[v1]).unwrap();
        assert_eq!(versions(&conn), [1]);
        migrate(&mut conn, &path, &[v1, v2]).unwrap();
        assert_eq!(versions(&conn), [1, 2]);
        // Already at 2: only 3 runs (v2's INSERT does not run twice).
        migrate(&mut conn, &path, &[v1, v2, v3]).unwrap();
        assert_eq!(versions(&conn), [1, 2, 3]);
        let a: Vec<i64> = conn
            .prepare("SELECT x FROM a ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(a, [2, 3]);

        let err = migrate(&mut conn, &path, &[v1, v2, v3, bad]).unwrap_err();
        assert!(
            matches!(err, StoreError::Migrate { version: 4, .. }),
            "{err:?}"
        );
        assert_eq!(versions(&conn), [1, 2, 3]);
        assert!(!tables(&conn).contains(&"c".to_string()));

        // This code knows 2 versions; the file has 3.
        let err = migrate(&mut conn, &path, &[v1, v2]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::FutureSchema {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Every statement finds its rows through an index: no full scan and no
    /// sort beyond the few each entry of `sql::ALL` names.
    #[test]
    fn every_statement_uses_the_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        for (_, migration) in MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        for (name, statement, allowed) in sql::ALL {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
                .unwrap();
            let params = stmt.parameter_count();
            let nulls: Vec<rusqlite::types::Null> = vec![rusqlite::types::Null; params];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for step in &plan {
                let full_scan = step.starts_with("SCAN") && !step.contains("USING");
                let sort = step.contains("TEMP B-TREE");
                if (full_scan || sort) && !allowed.iter().any(|a| step.contains(a)) {
                    panic!("{name}: plan step {step:?} (plan {plan:?})");
                }
            }
        }
    }
}
