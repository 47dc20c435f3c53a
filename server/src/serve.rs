//! `serve`: bind, accept agents and admin clients, stop cleanly on SIGTERM/SIGINT.
//!
//! The main thread polls the TCP listener, the admin Unix listener and the
//! signal pipe with one `mio::Poll`; each agent connection and each admin
//! client gets its own thread (see `conn` and `admin`).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use serde_json::json;

use crate::events::EventLog;
use crate::policy::InitPolicy;
use crate::registry::Registry;
use crate::tls::{server_config, TlsSetupError};
use crate::{admin, conn, signal};

const LISTENER: Token = Token(0);
const ADMIN: Token = Token(1);
const SIGNAL: Token = Token(2);

/// Everything `serve` was told on the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub admin: PathBuf,
    pub events: Option<PathBuf>,
    pub settings: Settings,
}

/// What connection threads need to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub policy: InitPolicy,
    pub heartbeat: Option<u64>,
    pub auto_ack: bool,
    pub handshake_timeout: Duration,
    pub max_frame: usize,
}

/// State shared by all threads.
pub struct Shared {
    pub registry: Registry,
    pub events: EventLog,
    pub settings: Settings,
    pub tls: Arc<ServerConfig>,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("admin socket {path}: {source}")]
    Admin { path: PathBuf, source: io::Error },
    #[error("admin socket {0} is in use by a running server")]
    AdminInUse(PathBuf),
    #[error("events file {path}: {source}")]
    Events { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServeError {
    move |source| ServeError::Io { what, source }
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
    // is restored right after the bind, before any other thread exists.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: ServeOptions) -> Result<(), ServeError> {
    let tls = server_config(&options.cert, &options.key, options.client_ca.as_deref())?;
    let events = match &options.events {
        Some(path) => EventLog::open(path).map_err(|source| ServeError::Events {
            path: path.clone(),
            source,
        })?,
        None => EventLog::default(),
    };
    let mut signals = signal::install().map_err(io_err("signal handlers"))?;
    let mut listener = TcpListener::bind(options.listen).map_err(|source| ServeError::Listen {
        addr: options.listen,
        source,
    })?;
    let mut admin_listener = bind_admin(&options.admin)?;
    let listen = listener.local_addr().unwrap_or(options.listen);
    let mut settings = options.settings.clone();
    settings.listen = listen;
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        events,
        settings,
        tls,
    });

    let mut poll = Poll::new().map_err(io_err("poll"))?;
    let registry = poll.registry();
    registry
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(io_err("register listener"))?;
    registry
        .register(&mut admin_listener, ADMIN, Interest::READABLE)
        .map_err(io_err("register admin"))?;
    registry
        .register(&mut signals.receiver, SIGNAL, Interest::READABLE)
        .map_err(io_err("register signals"))?;

    log::info!(
        "listening on {listen}, admin socket {}",
        options.admin.display()
    );
    shared.events.emit(
        "listening",
        json!({"listen": listen, "admin": options.admin, "mtls": options.client_ca.is_some(),
               "policy": format!("{:?}", shared.settings.policy)}),
    );

    let mut events = Events::with_capacity(64);
    let outcome = 'outer: loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(ServeError::Io {
                what: "poll",
                source: e,
            });
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_agents(&shared, &listener),
                ADMIN => accept_admin(&shared, &admin_listener),
                SIGNAL => break 'outer Ok(()),
                _ => {}
            }
        }
    };

    log::info!("shutting down");
    shared.registry.close_all("server shutdown");
    let deadline = Instant::now() + Duration::from_secs(2);
    while shared.registry.conn_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&options.admin);
    shared.events.emit("shutdown", json!({"listen": listen}));
    outcome
}

fn accept_agents(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((sock, peer)) => {
                log::debug!("connection from {peer}");
                if let Err(e) = conn::spawn(shared.clone(), sock, peer) {
                    log::error!("cannot start a thread for {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: log and wait for the next readiness.
                log::error!("accept: {e}");
                return;
            }
        }
    }
}

fn accept_admin(shared: &Arc<Shared>, listener: &UnixListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let spawned = into_blocking(stream).and_then(|stream| {
                    std::thread::Builder::new()
                        .name("admin".into())
                        .spawn(move || admin::serve_client(shared, stream))
                });
                if let Err(e) = spawned {
                    log::error!("admin client: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("admin accept: {e}");
                return;
            }
        }
    }
}

fn into_blocking(stream: mio::net::UnixStream) -> io::Result<std::os::unix::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(stream);
    stream.set_nonblocking(false)?;
    Ok(stream)
}
