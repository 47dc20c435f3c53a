//! `serve`: the tokio runtime, the three listeners (agents, HTTP API, admin socket), limits, and a clean stop on SIGTERM/SIGINT.
//!
//! Runtime: tokio, multi-threaded with one worker per core. Each agent
//! session is one task on one socket descriptor (no thread, no eventfd per
//! session). Descriptors: the process raises its soft RLIMIT_NOFILE to the
//! hard limit and keeps [`FD_RESERVE`] of them (see [`fd_reserve`]): the
//! process's own [`FD_BASE`], then pools for over-limit refusals, API
//! connections and admin clients, each bounded; the session limit is the
//! rest (or `--max-sessions`). Past the limit an agent still gets TLS and a
//! clean init refusal (3026 Busy, or a redirect to the configured peers)
//! while a refusal slot is free; beyond that a connection is closed right
//! after accept. API and admin clients past their pool wait in the listen
//! backlog. So no pool takes another's descriptors, and the operator's API
//! is never starved.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_store::{MemoryStore, Retention, SqliteStore, Store};
use serde_json::json;
use tokio::net::{TcpListener, UnixListener};

use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::state::{Settings, Shared};
use crate::storage::Storage;
use crate::tls::{server_config, TlsSetupError};
use crate::{admin, api, session};

/// Descriptors kept for everything that is not an agent session (half the
/// limit when the limit is below 256).
pub const FD_RESERVE: u64 = 64;
/// Of the reserve, what the process itself holds: stdio, the runtime's
/// epoll and wakers, the three listeners, the store's files, the events
/// file and logs (about 18 measured, kept with a margin).
pub const FD_BASE: u64 = 24;
/// Over-limit sessions being refused at once, at most.
pub const REFUSING_MAX: usize = 16;

/// The reserve for a descriptor limit.
pub fn fd_reserve(nofile: u64) -> u64 {
    if nofile >= 4 * FD_RESERVE {
        FD_RESERVE
    } else {
        nofile / 2
    }
}

/// The reserve minus the base, shared 2:2:1 by refusals, API connections
/// and admin clients (16, 16 and 8 with the full reserve; at least 1 each).
fn pool(nofile: u64, share: u64) -> usize {
    let pool = fd_reserve(nofile).saturating_sub(FD_BASE);
    usize::try_from(pool * share / 5).unwrap_or(1).max(1)
}

/// How many over-limit refusals may run at once (each holds a descriptor for its TLS + init).
pub fn refusing_max(nofile: u64) -> usize {
    pool(nofile, 2).min(REFUSING_MAX)
}

/// Most API connections open at once; more wait in the listen backlog.
pub fn api_connections(nofile: u64) -> usize {
    pool(nofile, 2)
}

/// Most admin-socket clients served at once; more wait in the backlog.
pub fn admin_connections(nofile: u64) -> usize {
    pool(nofile, 1)
}

/// The `--heartbeat` range in seconds (0: none sent, the agent's own applies).
pub const HEARTBEAT_MAX: u64 = 3600;
/// How often the store is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The store's file under `--state-dir`.
pub const STORE_FILE: &str = "basicagent-server.sqlite";

/// Everything `serve` was told on the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub admin: PathBuf,
    pub events: Option<PathBuf>,
    /// `None`: no API (`--api none`).
    pub api: Option<SocketAddr>,
    pub api_token_file: Option<PathBuf>,
    /// `None`: a memory store (`--state-dir none` or not given).
    pub state_dir: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    pub retention: Retention,
    /// `Some`: cluster mode (`--nats`, `--db`).
    pub cluster: Option<ClusterOptions>,
    pub settings: Settings,
}

/// Cluster mode's flags.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--nats URL`.
    pub nats: String,
    /// `--db postgres://…` (never logged: it holds the password).
    pub db: String,
    /// `--node-name N`: unique in the cluster.
    pub node_name: String,
    /// `--peer-addr ADDR`: where other nodes redirect agents to this one.
    pub peer_addr: String,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot bind the API on {addr}: {source}")]
    Api { addr: SocketAddr, source: io::Error },
    #[error("the API on {0} is not on loopback: give --api-token-file")]
    ApiNeedsToken(SocketAddr),
    #[error("API token file {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error("admin socket {path}: {source}")]
    Admin { path: PathBuf, source: io::Error },
    #[error("admin socket {0} is in use by a running server")]
    AdminInUse(PathBuf),
    #[error("events file {path}: {source}")]
    Events { path: PathBuf, source: io::Error },
    #[error("state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("store: {0}")]
    Store(#[from] basicagent_store::StoreError),
    #[error("cluster: {0}")]
    Cluster(#[from] basicagent_cluster::ClusterError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServeError {
    move |source| ServeError::Io { what, source }
}

/// The soft RLIMIT_NOFILE now.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the valid local `r`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) read and write the valid local `r`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                log::warn!(
                    "cannot raise the descriptor limit to {}: {}",
                    r.rlim_max,
                    io::Error::last_os_error()
                );
            }
        }
    }
    nofile_limit()
}

/// The session limit for a descriptor limit and an optional `--max-sessions`.
pub fn session_limit(nofile: u64, wanted: Option<usize>) -> usize {
    let reserve = fd_reserve(nofile);
    let room = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX);
    match wanted {
        Some(n) if n > room => {
            log::warn!(
                "--max-sessions {n} is more than the descriptor limit {nofile} allows \
                 after the reserve of {reserve}: using {room}"
            );
            room
        }
        Some(n) => n,
        None => room,
    }
}

/// Binds the admin socket with mode 0600, replacing a stale file.
fn bind_admin(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Admin {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::AdminInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // SAFETY: umask(2) only changes this process's file-creation mask; it
    // is restored right after the bind. A file another thread (the store)
    // creates meanwhile gets at most mode 0600: stricter, never looser.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(listener).map_err(err)
}

fn read_token(path: &Path) -> Result<String, ServeError> {
    let bad = |message: String| ServeError::Token {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > 4096 {
        return Err(bad("longer than 4096 bytes".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(bad("the token must be at least 16 characters".into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the token must be printable ASCII without spaces".into()
        ));
    }
    Ok(token)
}

fn open_store(state_dir: Option<&Path>) -> Result<Arc<dyn Store>, ServeError> {
    let Some(dir) = state_dir else {
        log::warn!(
            "no --state-dir: agents, calls and task results are kept in memory only \
             and lost when the server stops"
        );
        return Ok(Arc::new(MemoryStore::default()));
    };
    let err = |source| ServeError::StateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(Arc::new(SqliteStore::open(&dir.join(STORE_FILE))?))
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: ServeOptions) -> Result<(), ServeError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("server")
        .build()
        .map_err(io_err("tokio runtime"))?;
    let outcome = runtime.block_on(serve(options));
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let tls_config = server_config(&options.cert, &options.key, options.client_ca.as_deref())?;
    let events = match &options.events {
        Some(path) => EventLog::open(path).map_err(|source| ServeError::Events {
            path: path.clone(),
            source,
        })?,
        None => EventLog::default(),
    };
    let token = match &options.api_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    if let Some(addr) = options.api {
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(ServeError::ApiNeedsToken(addr));
        }
    }
    let nofile = raise_nofile();
    let limit = session_limit(nofile, options.max_sessions).min(crate::node::room_after_cluster(
        nofile,
        options.cluster.is_some(),
    ));
    let metrics = Arc::new(Metrics::new());
    metrics
        .session_limit
        .set(i64::try_from(limit).unwrap_or(i64::MAX));
    let store: Arc<dyn Store> = match &options.cluster {
        Some(c) => {
            let url = c.db.clone();
            // Opening connects and migrates: blocking work, off the runtime's workers.
            let pg = tokio::task::spawn_blocking(move || basicagent_store::PgStore::open(&url))
                .await
                .map_err(|e| ServeError::Io {
                    what: "store open",
                    source: io::Error::other(e.to_string()),
                })??;
            log::info!("cluster store: PostgreSQL {}", pg.describe());
            Arc::new(pg)
        }
        None => open_store(options.state_dir.as_deref())?,
    };
    let cluster = match &options.cluster {
        Some(c) => {
            let cluster =
                basicagent_cluster::Cluster::connect(basicagent_cluster::ClusterOptions::new(
                    c.nats.clone(),
                    c.node_name.clone(),
                    c.peer_addr.clone(),
                ))
                .await?;
            Some(crate::node::ClusterMode {
                cluster,
                name: c.node_name.clone(),
            })
        }
        None => None,
    };
    let storage = Storage::start(store, metrics.clone()).map_err(io_err("store writer"))?;

    let listener =
        TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: options.listen,
                source,
            })?;
    let api_listener = match options.api {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Api { addr, source })?,
        ),
        None => None,
    };
    let admin_listener = bind_admin(&options.admin)?;
    let listen = listener.local_addr().unwrap_or(options.listen);
    let api_addr = api_listener.as_ref().and_then(|l| l.local_addr().ok());
    let mut settings = options.settings.clone();
    settings.listen = listen;
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        events,
        settings,
        tls: tls_config,
        mtls: options.client_ca.is_some(),
        metrics: metrics.clone(),
        storage,
        limit,
        active: AtomicUsize::new(0),
        refusing: AtomicUsize::new(0),
        refusing_max: refusing_max(nofile),
        cluster,
    });
    crate::node::start(&shared).await?;
    shared
        .storage
        .spawn_pruner(options.retention.clone(), PRUNE_EVERY, metrics.clone());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io_err("signal handlers"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io_err("signal handlers"))?;

    tokio::spawn(accept_agents(shared.clone(), listener));
    tokio::spawn(accept_admin(
        shared.clone(),
        admin_listener,
        admin_connections(nofile),
    ));
    if let Some(l) = api_listener {
        let l = api::LimitedListener::new(l, api_connections(nofile));
        let open = token.is_none();
        let app = api::router(shared.clone(), token)
            .merge(crate::console::routes())
            .layer(axum::middleware::from_fn_with_state(
                open,
                crate::console::browser_guard,
            ))
            .into_make_service_with_connect_info::<api::Peer>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                log::error!("API server: {e}");
            }
        });
    }

    log::info!(
        "listening on {listen}, API on {}, admin socket {}, session limit {limit} \
         (descriptor limit {nofile}, reserve {})",
        api_addr.map_or("(none)".to_owned(), |a| a.to_string()),
        options.admin.display(),
        fd_reserve(nofile)
    );
    shared.events.emit(
        "listening",
        json!({"listen": listen, "admin": options.admin, "api": api_addr,
               "mtls": options.client_ca.is_some(),
               "policy": format!("{:?}", shared.settings.policy),
               "session_limit": limit, "state_dir": options.state_dir,
               "node": options.cluster.as_ref().map(|c| c.node_name.clone()),
               "peer_addr": options.cluster.as_ref().map(|c| c.peer_addr.clone())}),
    );

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }

    log::info!("shutting down");
    if let Some(cm) = &shared.cluster {
        // Peers see the leave at once and stop placing agents here.
        cm.cluster.leave().await;
    }
    shared.registry.close_all("server shutdown");
    let deadline = Instant::now() + Duration::from_secs(2);
    while shared.registry.conn_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_file(&options.admin);
    shared.events.emit("shutdown", json!({"listen": listen}));
    shared.events.sync();
    Ok(())
}

async fn accept_agents(shared: Arc<Shared>, listener: TcpListener) {
    let mut last_complaint: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                log::debug!("connection from {peer}");
                let active = shared.active.fetch_add(1, Ordering::Relaxed);
                if active < shared.limit {
                    shared.metrics.sessions.inc();
                    tokio::spawn(session::run(shared.clone(), sock, peer, false));
                    continue;
                }
                shared.active.fetch_sub(1, Ordering::Relaxed);
                let refusing = shared.refusing.fetch_add(1, Ordering::Relaxed);
                if refusing < shared.refusing_max {
                    tokio::spawn(session::run(shared.clone(), sock, peer, true));
                } else {
                    // Too many refusals in progress: close at once, keep the reserve.
                    shared.refusing.fetch_sub(1, Ordering::Relaxed);
                    shared.metrics.refuse("limit_flood");
                    drop(sock);
                }
            }
            Err(e) => {
                // EMFILE and friends: never spin; complain at most once a second.
                if last_complaint.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    log::error!("accept: {e}");
                    last_complaint = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_admin(shared: Arc<Shared>, listener: UnixListener, clients: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(clients));
    loop {
        // At most `clients` at once; more wait in the socket's backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    admin::serve_client(shared, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                log::error!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_limit_keeps_the_reserve() {
        assert_eq!(session_limit(20_000, None), 19_936);
        assert_eq!(session_limit(64, None), 32);
        assert_eq!(refusing_max(64), 3);
        assert_eq!(refusing_max(20_000), REFUSING_MAX);
        assert_eq!(api_connections(20_000), 16);
        assert_eq!(admin_connections(20_000), 8);
        assert_eq!(admin_connections(64), 1);
        // The worst case fits: sessions + base + every pool full.
        for nofile in [64u64, 100, 255, 256, 1024, 20_000] {
            let pools = refusing_max(nofile) + api_connections(nofile) + admin_connections(nofile);
            let total = session_limit(nofile, None) as u64 + FD_BASE + pools as u64;
            assert!(total <= nofile, "{nofile}: {total}");
        }
        assert_eq!(session_limit(1024, Some(5)), 5);
        assert_eq!(session_limit(100, Some(500)), 50);
    }
}
