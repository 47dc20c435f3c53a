//! `PgStore`: the [`Store`] in PostgreSQL, shared by the nodes of a cluster.
//!
//! Key design decisions:
//! - `tokio-postgres`, each connection driven by a private current-thread
//!   runtime (no threads of its own), behind the synchronous [`Store`]
//!   trait; no tokio leaks out of this module. Not the `postgres` crate (the
//!   same thing, made synchronous): it has no way to bound a call, and a
//!   frozen server would hang a call for ever. Here every round trip is
//!   bounded (`statement_timeout` + 2 s), then the connection is given up.
//! - A small fixed pool of our own (`Pool`): at most N connections behind a
//!   Mutex and a Condvar, each with its prepared statements. It fails fast:
//!   with PostgreSQL down, a call gets [`StoreError::Unavailable`] as soon as
//!   the connection attempt is refused (at most `connect_timeout` when the
//!   host does not answer), never a wait of its own. A connection that broke
//!   is dropped with every idle one (a restart breaks them all), and the
//!   next call connects again: the store recovers by itself.
//! - Every batch is one statement with arrays (`unnest`), see `sql.rs`.
//! - All tables live in one schema (`basicagent` unless told otherwise), so
//!   the database may be shared; a schema with other tables in it and no
//!   `schema_migrations` is refused as not ours.
//! - Migrations take a transaction-level advisory lock: nodes starting at
//!   once migrate once, the others wait and find the work done.
//! - `put_tasks` is `INSERT … ON CONFLICT (host, task) DO NOTHING`: two
//!   nodes storing the same re-delivered result at once store it once (the
//!   second waits on the first's row lock, then finds the conflict), and it
//!   is durable when it returns Ok (`synchronous_commit` is forced on for
//!   our sessions if the server has it off).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

mod schema;
mod sql;

use schema::MIGRATIONS;

use crate::{
    call_victims, check_json, cutoff, sql_limit, AgentRecord, AgentRow, CallId, CallRecord,
    CallRow, CallSize, Fact, HostResult, Millis, Pruned, Retention, Store, StoreError, TaskResult,
};

/// The schema version this code writes; a database with a newer one is refused.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How [`PgStore::open_with`] connects.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The PostgreSQL schema that holds the tables (created if missing):
    /// lower-case letters, digits and `_`, at most 63, not starting with a digit.
    pub schema: String,
    /// At most this many connections (each is one PostgreSQL backend).
    pub pool_size: usize,
    /// A connection attempt gives up after this long.
    pub connect_timeout: Duration,
    /// A statement (or a wait for a row lock) gives up after this long,
    /// as does a caller waiting for a free connection.
    pub statement_timeout: Duration,
    /// Rows (call results or tasks) that `prune` removes per transaction.
    pub prune_chunk: u64,
    /// A batch of `put_tasks` or `call_results` larger than this (bytes of
    /// text) is sent as several statements, in one transaction.
    pub batch_bytes: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "basicagent".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            prune_chunk: 20_000,
            batch_bytes: 32 << 20,
        }
    }
}

/// What [`PgStore::info`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgInfo {
    pub schema_version: i64,
    pub server_version: String,
    /// Connections open now (idle or in use).
    pub connections: usize,
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    display: String,
    schema: String,
    prune_chunk: u64,
    batch_bytes: usize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.display)
            .finish_non_exhaustive()
    }
}

/// One synchronous PostgreSQL connection: a `tokio_postgres` client driven
/// by a private current-thread runtime (no threads of its own), every round
/// trip bounded by `answer`. A server that does not answer in time (frozen,
/// or a network that drops packets after the kernel's ACK) is given up on:
/// the connection is marked broken and closed, the call fails with
/// `Unavailable`. Keepalives and the TCP user timeout cannot see that case,
/// and `statement_timeout` runs in the server that does not answer.
struct Client {
    inner: tokio_postgres::Client,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    answer: Duration,
    broken: AtomicBool,
}

impl Drop for Client {
    /// Without blocking: a connection may be dropped by a caller inside an
    /// async runtime, where dropping a runtime normally would panic.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Run `fut` on `rt` for at most `limit`; `None` if it took longer. Called
/// from inside another tokio runtime (a server calling the store from async
/// code), where tokio forbids blocking the thread on a second runtime, the
/// future runs on a scoped thread of its own instead.
fn block_on<F>(rt: &tokio::runtime::Runtime, limit: Duration, fut: F) -> Option<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || {
        rt.block_on(async move { tokio::time::timeout(limit, fut).await })
            .ok()
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().ok().flatten())
    } else {
        run()
    }
}

impl Client {
    fn connect(
        config: &tokio_postgres::Config,
        limit: Duration,
        answer: Duration,
    ) -> Result<Client, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start an I/O runtime: {e}")))?;
        let connected = block_on(&rt, limit, config.connect(NoTls))
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "PostgreSQL did not complete the connection within {limit:?}"
                ))
            })
            .and_then(|r| r.map_err(map_err));
        let (inner, connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                // Not a plain drop: we may be inside the caller's runtime.
                rt.shutdown_background();
                return Err(e);
            }
        };
        // Runs whenever this connection's runtime runs, i.e. during our calls.
        rt.spawn(connection);
        Ok(Client {
            inner,
            rt: Some(rt),
            answer,
            broken: AtomicBool::new(false),
        })
    }

    /// Drive `fut` to its end, or give the connection up after `answer`.
    fn wait<T: Send>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>> + Send,
    ) -> Result<T, StoreError> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(StoreError::Unavailable("the connection is closed".into()));
        };
        match block_on(rt, self.answer, fut) {
            Some(r) => r.map_err(map_err),
            None => {
                self.set_broken();
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {:?}",
                    self.answer
                )))
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.inner.is_closed()
    }

    fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Does the server answer a trivial query within a second?
    fn is_valid(&self) -> bool {
        !self.is_closed()
            && matches!(
                self.rt.as_ref().and_then(|rt| block_on(
                    rt,
                    Duration::from_secs(1),
                    self.inner.simple_query("")
                )),
                Some(Ok(_))
            )
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.wait(self.inner.batch_execute(sql))
    }

    fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        self.wait(self.inner.query_one(sql, params))
    }
}

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
    /// Not yet used for a call: an error on it is not a stale connection.
    fresh: bool,
}

impl Conn {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.wait(self.client.inner.prepare(sql))?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    /// One statement outside a transaction (autocommit): one round trip.
    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let stmt = self.stmt(sql)?;
        self.client.wait(self.client.inner.query(&stmt, params))
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let stmt = self.stmt(sql)?;
        self.client.wait(self.client.inner.execute(&stmt, params))
    }

    /// Run `f` between `begin` and COMMIT; ROLLBACK if it fails (a
    /// connection where even that fails is marked broken).
    fn transaction<T>(
        &mut self,
        begin: &str,
        began: &mut bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.client.batch(begin)?;
        *began = true;
        match f(&mut Tx { conn: self }) {
            Ok(v) => {
                self.client.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                // A connection already given up is not asked again (it
                // would cost another full wait on a frozen server).
                if !self.client.is_closed() && self.client.batch("ROLLBACK").is_err() {
                    self.client.set_broken();
                }
                Err(e)
            }
        }
    }
}

struct PoolState {
    idle: Vec<Conn>,
    /// Connections that exist (idle, in use, or being opened).
    open: usize,
}

struct Pool {
    config: tokio_postgres::Config,
    size: usize,
    wait: Duration,
    /// Connecting, all included, gives up after this long.
    connect_limit: Duration,
    /// A round trip gives up after this long.
    answer: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
}

fn lock(m: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    // The state is two counters and a list, consistent at every unlock.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A connection: an idle one, else a new one if fewer than `size` are
    /// open, else the first freed within `wait`.
    fn get(&self) -> Result<Conn, StoreError> {
        let deadline = Instant::now().checked_add(self.wait);
        let mut st = lock(&self.state);
        loop {
            if let Some(c) = st.idle.pop() {
                if c.client.is_closed() {
                    st.open = st.open.saturating_sub(1);
                    drop(st);
                    drop(c);
                    st = lock(&self.state);
                    continue;
                }
                return Ok(c);
            }
            if st.open < self.size {
                st.open += 1;
                drop(st);
                return match Client::connect(&self.config, self.connect_limit, self.answer) {
                    Ok(client) => Ok(Conn {
                        client,
                        stmts: HashMap::new(),
                        fresh: true,
                    }),
                    Err(e) => {
                        let mut st = lock(&self.state);
                        st.open = st.open.saturating_sub(1);
                        drop(st);
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline
                .and_then(|d| d.checked_duration_since(Instant::now()))
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "all {} database connections stayed busy for {:?}",
                        self.size, self.wait
                    ))
                })?;
            st = match self.freed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Give a connection back; a broken one is closed.
    fn put(&self, mut c: Conn, healthy: bool) {
        c.fresh = false;
        let mut st = lock(&self.state);
        if healthy && !c.client.is_closed() {
            st.idle.push(c);
            drop(st);
        } else {
            st.open = st.open.saturating_sub(1);
            drop(st);
            drop(c);
        }
        self.freed.notify_one();
    }

    /// Close every idle connection (after one broke: PostgreSQL restarted,
    /// or the network went; the others are as dead).
    fn discard_idle(&self) {
        let idle = {
            let mut st = lock(&self.state);
            let idle = std::mem::take(&mut st.idle);
            st.open = st.open.saturating_sub(idle.len());
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }

    fn open_count(&self) -> usize {
        lock(&self.state).open
    }
}

/// A connection inside a transaction (see [`Conn::transaction`]).
struct Tx<'a> {
    conn: &'a mut Conn,
}

impl Tx<'_> {
    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.conn.query(sql, params)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.conn.execute(sql, params)
    }

    /// A statement that is not cached (migrations).
    fn execute_once(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = &self.conn.client;
        c.wait(c.inner.execute(sql, params))
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        self.conn.client.query_one(sql, params)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.client.batch(sql)
    }
}

/// SQLSTATE classes that mean "the database is not there now": connection
/// exceptions (08), operator intervention (57: shutdown, cannot connect now,
/// statement timeout via 57014), insufficient resources' "too many
/// connections" (53300), and `lock_timeout` (55P03: something else holds
/// the rows for longer than we wait).
fn unavailable_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08")
        || c.starts_with("57")
        || c == "53300"
        || *code == SqlState::LOCK_NOT_AVAILABLE
}

/// The whole message of a `tokio_postgres::Error`: its `Display` alone says
/// "db error" for everything the server reported, and hides the I/O cause.
pub(crate) fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A `tokio_postgres::Error` as the store's error.
fn map_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(detail(&e));
    }
    match e.code() {
        Some(code) if unavailable_state(code) => StoreError::Unavailable(detail(&e)),
        Some(code) if *code == SqlState::DISK_FULL => StoreError::DiskFull(detail(&e)),
        Some(code) if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED => {
            StoreError::Corrupt(detail(&e))
        }
        Some(_) => StoreError::Pg(e),
        // No SQLSTATE: the error is the connection's (I/O, timeout, protocol).
        None => StoreError::Unavailable(detail(&e)),
    }
}

/// A conflict between concurrent transactions that PostgreSQL resolved by
/// aborting ours: running it again is the cure.
fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Pg(e) => matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ),
        _ => false,
    }
}

/// A valid unquoted PostgreSQL identifier of ours.
fn check_schema_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = matches!(chars.next(), Some('a'..='z' | '_'));
    if !first_ok || s.len() > 63 || !s.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_')) {
        return Err(format!(
            "schema name {s:?}: use 1 to 63 lower-case letters, digits or '_', not starting with a digit"
        ));
    }
    Ok(())
}

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis_str(d: Duration) -> String {
    d.as_millis().clamp(1, i32::MAX as u128).to_string()
}

fn text(v: Vec<u8>, what: &str) -> Result<String, StoreError> {
    String::from_utf8(v).map_err(|e| StoreError::Corrupt(format!("{what} is not UTF-8: {e}")))
}

fn agent_row(r: &Row) -> Result<AgentRow, StoreError> {
    let host = text(r.try_get(0).map_err(map_err)?, "agent host")?;
    let plugins: String = r.try_get(4).map_err(map_err)?;
    let plugins = serde_json::from_str(&plugins)
        .map_err(|e| StoreError::Corrupt(format!("plugins of agent {host:?}: {e}")))?;
    let node: Option<Vec<u8>> = r.try_get(5).map_err(map_err)?;
    Ok(AgentRow {
        name: text(r.try_get(1).map_err(map_err)?, "agent name")?,
        addr: text(r.try_get(2).map_err(map_err)?, "agent addr")?,
        version: text(r.try_get(3).map_err(map_err)?, "agent version")?,
        plugins,
        node: node.map(|n| text(n, "agent node")).transpose()?,
        first_seen: r.try_get(6).map_err(map_err)?,
        last_seen: r.try_get(7).map_err(map_err)?,
        connected_at: r.try_get(8).map_err(map_err)?,
        facts: Vec::new(),
        host,
    })
}

/// A call row from columns `offset..offset + 7`.
fn call_row(r: &Row, o: usize) -> Result<CallRow, StoreError> {
    Ok(CallRow {
        id: r.try_get(o).map_err(map_err)?,
        who: text(r.try_get(o + 1).map_err(map_err)?, "call who")?,
        at: r.try_get(o + 2).map_err(map_err)?,
        target: r.try_get(o + 3).map_err(map_err)?,
        request: r.try_get(o + 4).map_err(map_err)?,
        finished_at: r.try_get(o + 5).map_err(map_err)?,
        summary: r.try_get(o + 6).map_err(map_err)?,
    })
}

/// A host result from columns `offset..offset + 4`.
fn host_result(r: &Row, o: usize) -> Result<HostResult, StoreError> {
    Ok(HostResult {
        host: text(r.try_get(o).map_err(map_err)?, "result host")?,
        at: r.try_get(o + 1).map_err(map_err)?,
        retcode: r.try_get(o + 2).map_err(map_err)?,
        response: r.try_get(o + 3).map_err(map_err)?,
    })
}

fn task_row(r: &Row) -> Result<TaskResult, StoreError> {
    let schedule: Option<Vec<u8>> = r.try_get(6).map_err(map_err)?;
    Ok(TaskResult {
        host: text(r.try_get(0).map_err(map_err)?, "task host")?,
        task: text(r.try_get(1).map_err(map_err)?, "task id")?,
        received_at: r.try_get(2).map_err(map_err)?,
        retcode: r.try_get(3).map_err(map_err)?,
        message: text(r.try_get(4).map_err(map_err)?, "task message")?,
        frame: r.try_get(5).map_err(map_err)?,
        schedule: schedule.map(|s| text(s, "task schedule")).transpose()?,
    })
}

/// `items` cut into consecutive pieces of at most `max_bytes` (by `size`),
/// at least one item each: one statement per piece keeps every message to
/// PostgreSQL far below its 1 GiB limit, whatever the batch.
fn pieces<T>(items: &[T], max_bytes: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let mut bytes = 0usize;
        let mut n = 0;
        while n < rest.len() {
            let s = size(&rest[n]);
            if n > 0 && bytes.saturating_add(s) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(s);
            n += 1;
        }
        let (piece, tail) = rest.split_at(n);
        out.push(piece);
        rest = tail;
    }
    out
}

fn rows<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

/// How a failed attempt may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Running it twice stores the same as once: repeat after a broken
    /// connection even if it may have committed.
    Idempotent,
    /// Repeat only if it certainly did not reach the database (the
    /// connection was found dead at `BEGIN`).
    Once,
}

/// Attempts of one call: a stale connection (PostgreSQL restarted since it
/// was last used) costs one; deadlocks a few.
const ATTEMPTS: u32 = 4;

impl PgStore {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or
    /// key=value form) with the defaults, migrating the schema.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &PgOptions::default())
    }

    /// Connect with explicit options.
    pub fn open_with(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let bad_url = |reason: String| StoreError::Open {
            path: PathBuf::from("postgres URL"),
            source: io::Error::new(io::ErrorKind::InvalidInput, reason),
        };
        check_schema_name(&options.schema).map_err(bad_url)?;
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| bad_url(e.to_string()))?;
        use tokio_postgres::config::SslMode;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(bad_url(
                "sslmode=require: TLS to PostgreSQL is not supported yet \
                 (use a local or private-network server, or a TLS tunnel)"
                    .into(),
            ));
        }
        let display = display_url(&config, &options.schema);
        // Our session settings come after the URL's own options, so win.
        let mut session = config.get_options().unwrap_or("").to_string();
        for (k, v) in [
            ("search_path", options.schema.clone()),
            ("statement_timeout", millis_str(options.statement_timeout)),
            ("lock_timeout", millis_str(options.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis_str(options.statement_timeout.saturating_mul(2)),
            ),
            ("client_encoding", "UTF8".into()),
        ] {
            session.push_str(&format!(" -c {k}={v}"));
        }
        config
            .options(session.trim())
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            // An unacknowledged write (peer gone without a RST) fails in
            // seconds rather than the kernel's 15 minutes.
            .tcp_user_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("BasicAgentServer");
        }
        let pool_size = options.pool_size.max(1);
        // The server enforces statement_timeout; we wait that and a margin
        // for the answer to travel, then give the connection up.
        let answer = options
            .statement_timeout
            .saturating_add(Duration::from_secs(2));
        let connect_limit = options
            .connect_timeout
            .saturating_add(Duration::from_secs(2));
        let mut store = PgStore {
            pool: Pool {
                config,
                size: pool_size,
                wait: answer.saturating_add(connect_limit),
                connect_limit,
                answer,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            display,
            schema: options.schema.clone(),
            prune_chunk: options.prune_chunk.max(1),
            batch_bytes: options.batch_bytes.max(1),
        };
        store.check_server()?;
        store.migrate(MIGRATIONS)?;
        Ok(store)
    }

    /// The URL without its password, and the schema, for logs.
    pub fn describe(&self) -> &str {
        &self.display
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(&self.display)
    }

    /// Refuse a server that cannot hold our strings; make sure commits are
    /// durable for our sessions.
    fn check_server(&mut self) -> Result<(), StoreError> {
        let c = self.pool.get()?;
        let got = (|| -> Result<(String, String, String), StoreError> {
            let show = |what: &str| -> Result<String, StoreError> {
                c.client
                    .query_one(&format!("SHOW {what}"), &[])?
                    .try_get(0)
                    .map_err(map_err)
            };
            Ok((
                show("server_encoding")?,
                show("synchronous_commit")?,
                show("fsync")?,
            ))
        })();
        let healthy = got.is_ok();
        self.pool.put(c, healthy);
        let (enc, sync, fsync) = got?;
        if !enc.eq_ignore_ascii_case("UTF8") {
            return Err(StoreError::Open {
                path: self.path(),
                source: io::Error::other(format!(
                    "the database's encoding is {enc}, not UTF8: create it with ENCODING 'UTF8'"
                )),
            });
        }
        if sync == "off" {
            log::warn!(
                "store {}: the server has synchronous_commit=off; this store's sessions set it on",
                self.display
            );
            let opts = self.pool.config.get_options().unwrap_or("").to_string();
            self.pool
                .config
                .options(format!("{opts} -c synchronous_commit=on"));
            self.pool.discard_idle();
        }
        if fsync == "off" {
            log::warn!(
                "store {}: the server runs with fsync=off: a crash of the database's machine can lose acknowledged task results",
                self.display
            );
        }
        Ok(())
    }

    /// Bring the schema up to `migrations.len()`, one transaction per
    /// migration, each under the schema's advisory lock.
    fn migrate(&self, migrations: &[(&str, &str)]) -> Result<(), StoreError> {
        let supported = migrations.len() as i64;
        let key = format!("basicagent migrate {}", self.schema);
        let create_schema = format!("CREATE SCHEMA {}", self.schema);
        for (i, (description, sql)) in migrations.iter().enumerate() {
            let version = i as i64 + 1;
            let failed = |e: StoreError| match e {
                StoreError::Pg(source) => StoreError::Migrate {
                    version,
                    source: Box::new(source),
                },
                other => other,
            };
            let applied = self.write(Replay::Idempotent, |tx| {
                tx.execute_once("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
                let (exists, objects, has_table): (bool, i64, bool) = {
                    let r = tx.query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n
                                       ON n.oid = c.relnamespace WHERE n.nspname = $1),
                                    EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n
                                       ON n.oid = c.relnamespace
                                     WHERE n.nspname = $1 AND c.relname = 'schema_migrations'
                                       AND c.relkind = 'r')",
                        &[&self.schema],
                    )?;
                    (
                        r.try_get(0).map_err(map_err)?,
                        r.try_get(1).map_err(map_err)?,
                        r.try_get(2).map_err(map_err)?,
                    )
                };
                if !exists {
                    tx.batch(&create_schema)?;
                } else if !has_table && objects > 0 {
                    return Err(StoreError::NotOurs {
                        path: self.path(),
                        reason: format!(
                            "schema {} has {objects} objects and no schema_migrations table",
                            self.schema
                        ),
                    });
                }
                let current: i64 = if has_table {
                    tx.query_one(
                        "SELECT coalesce(max(version), 0)::int8 FROM schema_migrations",
                        &[],
                    )?
                    .try_get(0)
                    .map_err(map_err)?
                } else {
                    0
                };
                if current > supported {
                    return Err(StoreError::FutureSchema {
                        path: self.path(),
                        found: current,
                        supported,
                    });
                }
                if current >= version {
                    return Ok(false);
                }
                tx.batch(sql)?;
                tx.execute_once(
                    "INSERT INTO schema_migrations (version, applied_at, description)
                     VALUES ($1, $2, $3)",
                    &[&version, &now_millis(), description],
                )?;
                Ok(true)
            });
            if applied.map_err(failed)? {
                log::info!(
                    "store {}: schema migrated to version {version} ({description})",
                    self.display
                );
            }
        }
        Ok(())
    }

    /// Schema version, server version, open connections.
    pub fn info(&self) -> Result<PgInfo, StoreError> {
        let (schema_version, server_version) = self.read(|tx| {
            let v: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0)::int8 FROM schema_migrations",
                    &[],
                )?
                .try_get(0)
                .map_err(map_err)?;
            let s: String = tx
                .query_one("SHOW server_version", &[])?
                .try_get(0)
                .map_err(map_err)?;
            Ok((v, s))
        })?;
        Ok(PgInfo {
            schema_version,
            server_version,
            connections: self.pool.open_count(),
        })
    }

    /// Run `f` in one transaction; commit if it returns Ok. Repeated on a
    /// fresh connection when the one used turned out stale (see [`Replay`]),
    /// and when PostgreSQL aborted it for a deadlock.
    fn write<T>(
        &self,
        replay: Replay,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.attempts(replay, |conn, began| {
            conn.transaction("BEGIN", began, &mut f)
        })
    }

    /// Run the reads of `f` in one read-only REPEATABLE READ transaction
    /// (one snapshot).
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.attempts(Replay::Idempotent, |conn, began| {
            conn.transaction(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                began,
                &mut f,
            )
        })
    }

    /// One read statement, without a transaction around it (a statement
    /// sees one snapshot by itself): one round trip instead of three.
    fn read_one<T>(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        f: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.attempts(Replay::Idempotent, |conn, began| {
            *began = true;
            rows(conn.query(sql, params)?, &f)
        })
    }

    fn attempts<T>(
        &self,
        replay: Replay,
        mut f: impl FnMut(&mut Conn, &mut bool) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut conn = self.pool.get()?;
            let fresh = conn.fresh;
            let mut began = false;
            let out = f(&mut conn, &mut began);
            match out {
                Ok(v) => {
                    self.pool.put(conn, true);
                    return Ok(v);
                }
                Err(e) => {
                    // A timeout leaves the connection fine; a restart or a
                    // network failure does not. Ask it (on errors only).
                    // A connection given up for not answering: the server
                    // is frozen or cut off; a second try would wait as long.
                    let timed_out = conn.client.broken.load(Ordering::Relaxed);
                    let broken = conn.client.is_closed()
                        || (matches!(e, StoreError::Unavailable(_)) && !conn.client.is_valid());
                    self.pool.put(conn, !broken);
                    if broken {
                        self.pool.discard_idle();
                    }
                    let stale =
                        broken && !timed_out && !fresh && (replay == Replay::Idempotent || !began);
                    if attempt < ATTEMPTS && (stale || is_conflict(&e)) {
                        log::debug!(
                            "store {}: attempt {attempt} failed ({e}); again",
                            self.display
                        );
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}

fn display_url(config: &tokio_postgres::Config, schema: &str) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            Host::Tcp(h) => format!("{h}:{p}"),
            Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{} (schema {schema})",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl Store for PgStore {
    fn agents_seen(&self, batch: &[AgentRecord]) -> Result<(), StoreError> {
        // Upserting the same host twice in one statement is an error in
        // PostgreSQL: fold the batch per host as applying it in order would
        // (the last record's fields, the first's time as first_seen, the
        // latest as last_seen), in host order.
        struct Folded<'a> {
            last: &'a AgentRecord,
            first_at: Millis,
            max_at: Millis,
        }
        let mut folded: BTreeMap<&str, Folded<'_>> = BTreeMap::new();
        for a in batch {
            folded
                .entry(a.host.as_str())
                .and_modify(|f| {
                    f.last = a;
                    f.max_at = f.max_at.max(a.connected_at);
                })
                .or_insert(Folded {
                    last: a,
                    first_at: a.connected_at,
                    max_at: a.connected_at,
                });
        }
        if folded.is_empty() {
            return Ok(());
        }
        let n = folded.len();
        let mut hosts: Vec<&[u8]> = Vec::with_capacity(n);
        let mut names: Vec<&[u8]> = Vec::with_capacity(n);
        let mut addrs: Vec<&[u8]> = Vec::with_capacity(n);
        let mut versions: Vec<&[u8]> = Vec::with_capacity(n);
        let mut plugins = Vec::with_capacity(folded.len());
        let mut nodes: Vec<Option<&[u8]>> = Vec::with_capacity(folded.len());
        let (mut first, mut last, mut conn) = (Vec::new(), Vec::new(), Vec::new());
        for (host, f) in &folded {
            hosts.push(host.as_bytes());
            names.push(f.last.name.as_bytes());
            addrs.push(f.last.addr.as_bytes());
            versions.push(f.last.version.as_bytes());
            plugins.push(serde_json::to_string(&f.last.plugins).map_err(|e| {
                StoreError::InvalidJson {
                    field: "plugins",
                    reason: e.to_string(),
                }
            })?);
            nodes.push(f.last.node.as_deref().map(str::as_bytes));
            first.push(f.first_at);
            last.push(f.max_at);
            conn.push(f.last.connected_at);
        }
        self.write(Replay::Idempotent, |tx| {
            tx.execute(
                sql::AGENTS_UPSERT,
                &[
                    &hosts, &names, &addrs, &versions, &plugins, &nodes, &first, &last, &conn,
                ],
            )?;
            Ok(())
        })
    }

    fn agents_gone(&self, hosts: &[String], at: Millis) -> Result<(), StoreError> {
        if hosts.is_empty() {
            return Ok(());
        }
        let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        self.write(Replay::Idempotent, |tx| {
            tx.execute(sql::AGENTS_GONE, &[&hosts, &at])?;
            Ok(())
        })
    }

    fn node_gone(&self, node: &str, at: Millis) -> Result<u64, StoreError> {
        self.write(Replay::Idempotent, |tx| {
            tx.execute(sql::NODE_GONE, &[&node.as_bytes(), &at])
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
        // A fan-out of getinfo.* to a fleet writes one fact per host, one
        // transaction each: with a synchronous commit that is one WAL flush
        // per host (76 000 after one fan-out, minutes of fsyncs that every
        // call's record waits behind). A fact is the latest answer of a
        // host, a cache the next call refreshes, so its commit does not
        // wait for the flush (`synchronous_commit` off for this transaction
        // only: a PostgreSQL crash may lose the last fraction of a second
        // of facts, never anything else). BEGIN, SET, the upsert and COMMIT
        // go in one round trip (pipelined).
        let (h, m) = (host.as_bytes(), method.as_bytes());
        self.attempts(Replay::Idempotent, |conn, began| {
            let stmt = conn.stmt(sql::FACT_UPSERT)?;
            let params: [&(dyn ToSql + Sync); 4] = [&h, &m, &data, &at];
            let inner = &conn.client.inner;
            let (b, set, up, commit) = conn.client.wait(async {
                let r = tokio::join!(
                    inner.batch_execute("BEGIN"),
                    inner.batch_execute("SET LOCAL synchronous_commit TO off"),
                    inner.execute(&stmt, &params),
                    inner.batch_execute("COMMIT"),
                );
                Ok(r)
            })?;
            b.map_err(map_err)?;
            *began = true;
            set.map_err(map_err)?;
            up.map_err(map_err)?;
            commit.map_err(map_err)
        })
    }

    fn agent(&self, host: &str) -> Result<Option<AgentRow>, StoreError> {
        self.read(|tx| {
            let found = tx.query(sql::AGENT, &[&host.as_bytes()])?;
            let Some(row) = found.first() else {
                return Ok(None);
            };
            let mut row = agent_row(row)?;
            row.facts = rows(tx.query(sql::FACTS_OF, &[&host.as_bytes()])?, |r| {
                Ok(Fact {
                    method: text(r.try_get(0).map_err(map_err)?, "fact method")?,
                    data: r.try_get(1).map_err(map_err)?,
                    at: r.try_get(2).map_err(map_err)?,
                })
            })?;
            Ok(Some(row))
        })
    }

    fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.read_one(sql::AGENTS, &[], agent_row)
    }

    fn call_begin(&self, call: &CallRecord) -> Result<CallId, StoreError> {
        check_json("call target", &call.target)?;
        check_json("call request", &call.request)?;
        // In front of every cluster call (nothing is sent before the call
        // is recorded), so one round trip: BEGIN, the INSERT and COMMIT are
        // pipelined (tokio-postgres sends requests polled together back to
        // back) instead of three round trips. Still one transaction,
        // durable when this returns; `began` is known from BEGIN's answer,
        // so a connection found dead at BEGIN is retried, as before.
        let who = call.who.as_bytes();
        self.attempts(Replay::Once, |conn, began| {
            let stmt = conn.stmt(sql::CALL_INSERT)?;
            let params: [&(dyn ToSql + Sync); 4] = [&who, &call.at, &call.target, &call.request];
            let inner = &conn.client.inner;
            let (b, rows, commit) = conn.client.wait(async {
                let (b, rows, commit) = tokio::join!(
                    inner.batch_execute("BEGIN"),
                    inner.query(&stmt, &params),
                    inner.batch_execute("COMMIT"),
                );
                Ok((b, rows, commit))
            })?;
            b.map_err(map_err)?;
            *began = true;
            // A failed INSERT leaves the transaction aborted: its COMMIT
            // is answered ROLLBACK, and the connection is clean again.
            let rows = rows.map_err(map_err)?;
            commit.map_err(map_err)?;
            rows.first()
                .ok_or_else(|| StoreError::Unavailable("INSERT … RETURNING gave no row".into()))?
                .try_get(0)
                .map_err(map_err)
        })
    }

    fn call_results(&self, call: CallId, results: &[HostResult]) -> Result<(), StoreError> {
        for r in results {
            check_json("host result response", &r.response)?;
        }
        let pieces = pieces(results, self.batch_bytes, |r| {
            r.host.len() + r.response.len() + 32
        });
        self.write(Replay::Idempotent, |tx| {
            if tx.query(sql::CALL_LOCK, &[&call])?.is_empty() {
                return Err(StoreError::UnknownCall(call));
            }
            let mut new = 0u64;
            for piece in &pieces {
                let hosts: Vec<&[u8]> = piece.iter().map(|r| r.host.as_bytes()).collect();
                let ats: Vec<i64> = piece.iter().map(|r| r.at).collect();
                let codes: Vec<i64> = piece.iter().map(|r| r.retcode).collect();
                let responses: Vec<&str> = piece.iter().map(|r| r.response.as_str()).collect();
                new = new.saturating_add(tx.execute(
                    sql::RESULTS_INSERT,
                    &[&call, &hosts, &ats, &codes, &responses],
                )?);
            }
            if new > 0 {
                let new = i64::try_from(new).unwrap_or(i64::MAX);
                tx.execute(sql::CALL_COUNT_RESULTS, &[&call, &new])?;
            }
            Ok(())
        })
    }

    fn call_end(&self, call: CallId, summary: &str, at: Millis) -> Result<(), StoreError> {
        check_json("call summary", summary)?;
        self.write(Replay::Idempotent, |tx| {
            if tx.execute(sql::CALL_END, &[&call, &at, &summary])? == 0 {
                return Err(StoreError::UnknownCall(call));
            }
            Ok(())
        })
    }

    fn calls(&self, limit: usize, before: Option<CallId>) -> Result<Vec<CallRow>, StoreError> {
        let before = before.unwrap_or(CallId::MAX);
        let limit = sql_limit(limit);
        self.read_one(sql::CALLS_BEFORE, &[&before, &limit], |r| call_row(r, 0))
    }

    fn call(&self, id: CallId) -> Result<Option<(CallRow, Vec<HostResult>)>, StoreError> {
        self.read(|tx| {
            let found = tx.query(sql::CALL, &[&id])?;
            let Some(row) = found.first() else {
                return Ok(None);
            };
            let row = call_row(row, 0)?;
            let results = rows(tx.query(sql::RESULTS_OF, &[&id])?, |r| host_result(r, 0))?;
            Ok(Some((row, results)))
        })
    }

    fn host_calls(
        &self,
        host: &str,
        limit: usize,
    ) -> Result<Vec<(CallRow, HostResult)>, StoreError> {
        let limit = sql_limit(limit);
        self.read_one(sql::HOST_CALLS, &[&host.as_bytes(), &limit], |r| {
            Ok((call_row(r, 0)?, host_result(r, 7)?))
        })
    }

    fn put_tasks(&self, results: &[TaskResult]) -> Result<usize, StoreError> {
        for t in results {
            check_json("task frame", &t.frame)?;
        }
        if results.is_empty() {
            return Ok(0);
        }
        // Idempotent: repeated after a lost connection, a result that did
        // commit the first time is not stored twice (it counts as not new).
        let pieces = pieces(results, self.batch_bytes, |t| {
            t.host.len() + t.task.len() + t.message.len() + t.frame.len() + 64
        });
        self.write(Replay::Idempotent, |tx| {
            let mut new = 0u64;
            for piece in &pieces {
                let hosts: Vec<&[u8]> = piece.iter().map(|t| t.host.as_bytes()).collect();
                let ids: Vec<&[u8]> = piece.iter().map(|t| t.task.as_bytes()).collect();
                let at: Vec<i64> = piece.iter().map(|t| t.received_at).collect();
                let codes: Vec<i64> = piece.iter().map(|t| t.retcode).collect();
                let messages: Vec<&[u8]> = piece.iter().map(|t| t.message.as_bytes()).collect();
                let frames: Vec<&str> = piece.iter().map(|t| t.frame.as_str()).collect();
                let schedules: Vec<Option<&[u8]>> = piece
                    .iter()
                    .map(|t| t.schedule.as_deref().map(str::as_bytes))
                    .collect();
                new = new.saturating_add(tx.execute(
                    sql::TASKS_INSERT,
                    &[&hosts, &ids, &at, &codes, &messages, &frames, &schedules],
                )?);
            }
            Ok(usize::try_from(new).unwrap_or(usize::MAX))
        })
    }

    fn tasks(&self, host: Option<&str>, limit: usize) -> Result<Vec<TaskResult>, StoreError> {
        let limit = sql_limit(limit);
        match host {
            Some(h) => self.read_one(sql::TASKS_OF_HOST, &[&h.as_bytes(), &limit], task_row),
            None => self.read_one(sql::TASKS, &[&limit], task_row),
        }
    }

    fn task(&self, task: &str) -> Result<Vec<TaskResult>, StoreError> {
        self.read_one(sql::TASK, &[&task.as_bytes()], task_row)
    }

    fn prune(&self, now: Millis, retention: &Retention) -> Result<Pruned, StoreError> {
        // One node prunes at a time: a session advisory lock on one
        // connection, held over the chunks; a node that finds it taken
        // leaves the work to the holder.
        let key = format!("basicagent prune {}", self.schema);
        let mut conn = self.pool.get()?;
        let locked = conn
            .client
            .query_one(sql::PRUNE_TRY_LOCK, &[&key])
            .and_then(|r| r.try_get::<_, bool>(0).map_err(map_err));
        let locked = match locked {
            Ok(l) => l,
            Err(e) => {
                self.pool.put(conn, false);
                return Err(e);
            }
        };
        if !locked {
            self.pool.put(conn, true);
            return Ok(Pruned::default());
        }
        let out = self.prune_locked(&mut conn, now, retention);
        let unlocked = conn.client.query_one(sql::PRUNE_UNLOCK, &[&key]).is_ok();
        self.pool.put(conn, unlocked);
        out
    }
}

impl PgStore {
    fn prune_locked(
        &self,
        conn: &mut Conn,
        now: Millis,
        retention: &Retention,
    ) -> Result<Pruned, StoreError> {
        fn chunk_tx<T>(
            conn: &mut Conn,
            f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
        ) -> Result<T, StoreError> {
            conn.transaction("BEGIN", &mut false, f)
        }
        let mut pruned = Pruned::default();
        let chunk_rows = self.prune_chunk;
        let calls: Vec<CallSize> = chunk_tx(conn, |tx| {
            rows(tx.query(sql::PRUNE_CALL_SIZES, &[])?, |r| {
                Ok(CallSize {
                    id: r.try_get(0).map_err(map_err)?,
                    at: r.try_get(1).map_err(map_err)?,
                    results: r.try_get::<_, i64>(2).map_err(map_err)?.max(0) as u64,
                })
            })
        })?;
        let victims = call_victims(&calls, now, retention);
        let mut rest = victims.as_slice();
        while !rest.is_empty() {
            let mut rows_n = 0u64;
            let mut n = 0;
            while n < rest.len() && (n == 0 || rows_n.saturating_add(rest[n].results) <= chunk_rows)
            {
                rows_n = rows_n.saturating_add(rest[n].results);
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let ids: Vec<i64> = chunk.iter().map(|c| c.id).collect();
            let (calls, results) = chunk_tx(conn, |tx| {
                let present: Vec<i64> = rows(tx.query(sql::PRUNE_LOCK_CALLS, &[&ids])?, |r| {
                    r.try_get(0).map_err(map_err)
                })?;
                let results: i64 = tx
                    .query(sql::PRUNE_COUNT_RESULTS, &[&present])?
                    .first()
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(map_err)?
                    .unwrap_or(0);
                let calls = tx.execute(sql::PRUNE_CALLS, &[&present])?;
                Ok((calls, results.max(0) as u64))
            })?;
            pruned.calls += calls;
            pruned.results += results;
        }

        let old = cutoff(now, retention.tasks);
        let chunk = i64::try_from(chunk_rows).unwrap_or(i64::MAX);
        loop {
            let n = chunk_tx(conn, |tx| tx.execute(sql::PRUNE_OLD_TASKS, &[&old, &chunk]))?;
            pruned.tasks += n;
            if n < chunk_rows {
                break;
            }
        }
        loop {
            let n = chunk_tx(conn, |tx| {
                let total: i64 = tx
                    .query(sql::COUNT_TASKS, &[])?
                    .first()
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(map_err)?
                    .unwrap_or(0);
                let excess = (total.max(0) as u64)
                    .saturating_sub(retention.max_tasks)
                    .min(chunk_rows);
                if excess == 0 {
                    return Ok(0);
                }
                let excess = excess as i64;
                tx.execute(sql::PRUNE_OLDEST_TASKS, &[&excess])
            })?;
            pruned.tasks += n;
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

    #[test]
    fn pieces_respect_the_size_and_keep_order() {
        let items: Vec<usize> = vec![5, 5, 5, 20, 1, 1, 1];
        let got: Vec<Vec<usize>> = pieces(&items, 10, |x| *x)
            .into_iter()
            .map(|p| p.to_vec())
            .collect();
        assert_eq!(got, vec![vec![5, 5], vec![5], vec![20], vec![1, 1, 1]]);
        assert!(pieces(&items[..0], 10, |x| *x).is_empty());
        assert_eq!(pieces(&items, usize::MAX, |x| *x).len(), 1);
    }

    #[test]
    fn schema_names_are_checked() {
        for ok in ["basicagent", "_x", "t_1", &"a".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a b",
            "a;drop",
            "\"a\"",
            &"a".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_url_or_schema_is_a_typed_error_without_connecting() {
        let err = PgStore::open("postgres://[::1")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("postgres URL"));
        let opts = PgOptions {
            schema: "x; DROP TABLE t".into(),
            ..PgOptions::default()
        };
        let err = PgStore::open_with("postgres://u@127.0.0.1/db", &opts)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("schema name"));
    }
}
