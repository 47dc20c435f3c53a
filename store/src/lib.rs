//! The control server's durable store: agents seen, operator calls with their
//! per-host results, and `async.bash` task results.
//!
//! Key design decision: one synchronous [`Store`] trait with nothing
//! SQLite-specific in it, so that the server calls it from a writer thread
//! (or `spawn_blocking`) and a PostgreSQL backend sits behind the same
//! trait. Three backends: [`SqliteStore`] (embedded, the default,
//! durable: a write that returned `Ok` survives `kill -9` and power loss),
//! `PgStore` (feature `postgres`, on by default: PostgreSQL, shared by the
//! nodes of a cluster, as durable) and [`MemoryStore`] (same semantics,
//! nothing on disk; tests and `--state-dir none`). All run the same test
//! suite (`store/tests/`).
//!
//! Semantics shared by both backends (the tests pin every one of them):
//! - Every `String` documented as JSON is checked to be one JSON value before
//!   anything of the batch is written; a bad one fails the whole call with
//!   [`StoreError::InvalidJson`] and stores nothing.
//! - `agents_seen` upserts on the host id and keeps `first_seen`;
//!   `last_seen` only moves forward. `agents_gone` clears `connected_at`
//!   only if the session it ends is not newer than `at` (a late "gone" for an
//!   old session does not mark a reconnected agent offline).
//! - `node_gone` is `agents_gone` for every agent connected through a node
//!   that died, so the cluster-wide list does not show them on a dead node.
//! - `agent_fact` keeps the latest fact per (host, method) by `at`; on a tie
//!   the later write wins.
//! - Call ids increase and are never reused, even after `prune`. A host has
//!   at most one result per call: the first one stored wins, as it is the one
//!   the operator's stream showed. `call()` lists results in arrival order.
//! - `put_tasks` is idempotent on (host, task): the first copy wins.
//!   "Newest first" for tasks means by `received_at`, then by arrival.
//! - `prune` removes whole calls (never part of a call's results): older
//!   than the retention, then the oldest beyond `max_calls`, then the oldest
//!   while more than `max_results` result rows remain; then tasks older than
//!   the retention and the oldest beyond `max_tasks`.
#![deny(clippy::undocumented_unsafe_blocks)]

mod memory;
#[cfg(feature = "postgres")]
mod pg;
mod sqlite;

use std::time::Duration;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use pg::{PgInfo, PgOptions, PgStore, PG_SCHEMA_VERSION};
pub use sqlite::{SqliteOptions, SqliteStore, StoreInfo, Synchronous, FILE_NAME, SCHEMA_VERSION};

/// Unix time in milliseconds (UTC).
pub type Millis = i64;

/// The id of a stored call; increasing, never reused.
pub type CallId = i64;

/// An agent session that came up (or is still up): what `agents_seen` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub host: String,
    pub name: String,
    pub addr: String,
    pub version: String,
    pub plugins: Vec<String>,
    /// The server node that holds the session (multi-node, later issue).
    pub node: Option<String>,
    pub connected_at: Millis,
}

/// An agent as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRow {
    pub host: String,
    pub name: String,
    pub addr: String,
    pub version: String,
    pub plugins: Vec<String>,
    pub node: Option<String>,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// `None` when the agent is not connected.
    pub connected_at: Option<Millis>,
    /// Only filled by [`Store::agent`] (sorted by method); empty in [`Store::agents`].
    pub facts: Vec<Fact>,
}

/// The latest answer of one collector (e.g. `getinfo.kernel`) for a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub method: String,
    /// JSON text.
    pub data: String,
    pub at: Millis,
}

/// An operator call as it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Who asked (token name, user); free text.
    pub who: String,
    pub at: Millis,
    /// JSON text: the target as the operator gave it.
    pub target: String,
    /// JSON text: the request sent to the hosts.
    pub request: String,
}

/// A stored call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRow {
    pub id: CallId,
    pub who: String,
    pub at: Millis,
    pub target: String,
    pub request: String,
    pub finished_at: Option<Millis>,
    /// JSON text, set by [`Store::call_end`].
    pub summary: Option<String>,
}

/// One host's answer to a call (or the server's own line for an offline or
/// timed-out host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostResult {
    pub host: String,
    pub at: Millis,
    pub retcode: i64,
    /// JSON text: the response line.
    pub response: String,
}

/// A `task.done` received from an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub host: String,
    pub task: String,
    pub received_at: Millis,
    pub retcode: i64,
    pub message: String,
    /// JSON text: the whole `task.done` frame as received.
    pub frame: String,
    pub schedule: Option<String>,
}

/// How much history [`Store::prune`] keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Calls (with their results) older than this are removed.
    pub calls: Duration,
    /// Task results received longer ago than this are removed.
    pub tasks: Duration,
    /// At most this many calls are kept (the oldest go first).
    pub max_calls: u64,
    /// At most this many per-host call results are kept, counted over all
    /// kept calls; whole calls go, oldest first. A call to 19 000 hosts is
    /// 19 000 rows, so this, not `max_calls`, bounds the file at fleet scale.
    pub max_results: u64,
    /// At most this many task results are kept (the oldest go first).
    pub max_tasks: u64,
}

impl Default for Retention {
    /// Calls and tasks for 30 days; at most 100 000 calls, 5 000 000 call
    /// results (about 1–2 GB with `getinfo`-sized answers) and 1 000 000
    /// task results.
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Retention {
            calls: DAY.saturating_mul(30),
            tasks: DAY.saturating_mul(30),
            max_calls: 100_000,
            max_results: 5_000_000,
            max_tasks: 1_000_000,
        }
    }
}

/// What one [`Store::prune`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub calls: u64,
    /// Per-host call results removed with their calls.
    pub results: u64,
    pub tasks: u64,
}

/// Errors of the store. `Open`, `Insecure`, `NotOurs`, `FutureSchema` and
/// `Migrate` come only from opening; `Corrupt` from opening or from any call
/// that read a damaged page. After an error from a call the store stays
/// usable, and nothing of the failed call was stored.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path} is not safe to use: {reason}")]
    Insecure {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("store {path} is not a BasicAgent store: {reason}")]
    NotOurs {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "store {path} has schema version {found}, newer than {supported} that this server knows; \
         run the newer server or restore a backup"
    )]
    FutureSchema {
        path: std::path::PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("migrating the store to schema version {version} failed: {source}")]
    Migrate {
        version: i64,
        /// A `rusqlite::Error` or a `tokio_postgres::Error`.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the store's file is corrupt or not a database: {0}")]
    Corrupt(String),
    /// The file system (or the store's size limit) is full: nothing of the
    /// failed call was stored; what was committed before is intact.
    #[error("the store's disk is full: {0}")]
    DiskFull(String),
    #[error("{field} is not valid JSON: {reason}")]
    InvalidJson { field: &'static str, reason: String },
    #[error("no call with id {0}")]
    UnknownCall(CallId),
    #[error("store query failed: {0}")]
    Sql(#[source] rusqlite::Error),
    /// The database server cannot be reached now (down, restarting, too
    /// many connections, the network, a timeout). The store reconnects by
    /// itself on a later call. A write that failed so may or may not have
    /// committed (the connection can die during the commit): every write
    /// except `call_begin` can be repeated safely.
    #[error("the store's database is unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused a statement (not a connection problem).
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL refused: {}", pg::detail(.0))]
    Pg(#[source] tokio_postgres::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                StoreError::Corrupt(e.to_string())
            }
            Some(ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            _ => StoreError::Sql(e),
        }
    }
}

/// The store. Synchronous; every method is one transaction (a batch is
/// all-or-nothing). Methods taking `limit` return at most that many rows.
pub trait Store: Send + Sync + 'static {
    /// Upsert agents by host id: name, addr, version, plugins, node and
    /// `connected_at` are replaced, `first_seen` is kept, `last_seen` moves
    /// forward to `connected_at`.
    fn agents_seen(&self, batch: &[AgentRecord]) -> Result<(), StoreError>;
    /// Sessions ended at `at`: `last_seen` moves forward to `at`;
    /// `connected_at` is cleared unless it is newer than `at`. Unknown hosts
    /// are ignored.
    fn agents_gone(&self, hosts: &[String], at: Millis) -> Result<(), StoreError>;
    /// Server node `node` died or stopped at `at`: every agent whose session
    /// is on that node (its `node`, with `connected_at` not newer than `at`)
    /// is marked offline as by `agents_gone`. Agents that reconnected to
    /// another node since (their `node` changed) or anew to this one (a
    /// later `connected_at`) are left alone, and so are agents already
    /// offline. Returns how many were marked offline.
    fn node_gone(&self, node: &str, at: Millis) -> Result<u64, StoreError>;
    /// Record the latest fact per (host, method); an older `at` than the one
    /// stored is ignored. `data` is JSON.
    fn agent_fact(
        &self,
        host: &str,
        method: &str,
        data: &str,
        at: Millis,
    ) -> Result<(), StoreError>;
    /// One agent with its facts, or `None` if it was never seen.
    fn agent(&self, host: &str) -> Result<Option<AgentRow>, StoreError>;
    /// All agents, sorted by host id, without facts.
    fn agents(&self) -> Result<Vec<AgentRow>, StoreError>;
    /// Store a call as it starts; returns its new id.
    fn call_begin(&self, call: &CallRecord) -> Result<CallId, StoreError>;
    /// Store results of a call in one transaction; a host that already has a
    /// result for this call keeps its first one.
    fn call_results(&self, call: CallId, results: &[HostResult]) -> Result<(), StoreError>;
    /// Mark a call finished with its summary (JSON).
    fn call_end(&self, call: CallId, summary: &str, at: Millis) -> Result<(), StoreError>;
    /// Calls, newest (highest id) first; with `before`, only ids below it.
    fn calls(&self, limit: usize, before: Option<CallId>) -> Result<Vec<CallRow>, StoreError>;
    /// One call with its results in arrival order.
    fn call(&self, id: CallId) -> Result<Option<(CallRow, Vec<HostResult>)>, StoreError>;
    /// The calls that have a result from `host`, newest first, with that result.
    fn host_calls(
        &self,
        host: &str,
        limit: usize,
    ) -> Result<Vec<(CallRow, HostResult)>, StoreError>;
    /// Durable when it returns Ok (committed; survives kill -9 of the process). Idempotent on (host, task):
    /// a re-delivered result is not stored twice. Returns how many were new.
    fn put_tasks(&self, results: &[TaskResult]) -> Result<usize, StoreError>;
    /// Task results, newest first, of one host or of all.
    fn tasks(&self, host: Option<&str>, limit: usize) -> Result<Vec<TaskResult>, StoreError>;
    /// The results of one task id (it may repeat across hosts), in arrival order.
    fn task(&self, task: &str) -> Result<Vec<TaskResult>, StoreError>;
    /// Remove history beyond `retention`, as of `now`.
    fn prune(&self, now: Millis, retention: &Retention) -> Result<Pruned, StoreError>;
}

/// Check that `text` is exactly one JSON value.
pub(crate) fn check_json(field: &'static str, text: &str) -> Result<(), StoreError> {
    serde_json::from_str::<&serde_json::value::RawValue>(text)
        .map(|_| ())
        .map_err(|e| StoreError::InvalidJson {
            field,
            reason: e.to_string(),
        })
}

/// The instant `age` before `now`, saturating at the ends of the range.
pub(crate) fn cutoff(now: Millis, age: Duration) -> Millis {
    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    now.saturating_sub(age)
}

/// A `limit` as SQLite wants it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// One stored call as `prune` sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallSize {
    pub id: CallId,
    pub at: Millis,
    pub results: u64,
}

/// The calls `prune` removes, given every stored call in increasing id
/// order: those older than the retention, then the oldest beyond
/// `max_calls`, then the oldest while more than `max_results` results
/// remain. Shared by both backends so their semantics cannot drift.
pub(crate) fn call_victims(
    calls: &[CallSize],
    now: Millis,
    retention: &Retention,
) -> Vec<CallSize> {
    let old = cutoff(now, retention.calls);
    let (mut victims, kept): (Vec<CallSize>, Vec<CallSize>) =
        calls.iter().partition(|c| c.at < old);
    let excess = (kept.len() as u64).saturating_sub(retention.max_calls);
    let excess = usize::try_from(excess)
        .unwrap_or(usize::MAX)
        .min(kept.len());
    victims.extend_from_slice(&kept[..excess]);
    let kept = &kept[excess..];
    let mut total: u64 = kept.iter().map(|c| c.results).fold(0, u64::saturating_add);
    for c in kept {
        if total <= retention.max_results {
            break;
        }
        total = total.saturating_sub(c.results);
        victims.push(*c);
    }
    victims
}
