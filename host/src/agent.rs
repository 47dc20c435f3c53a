//! Start-up and shutdown of the daemon, in order: configuration and TLS
//! (fail fast, on the terminal), detach and pid file, logging, signals,
//! state directory, host id and task outbox, then the reactor; the pid
//! file goes when `run` returns. A detached daemon reports success to the
//! starting process only once the host id and the outbox are open, so an
//! init script sees every start-up failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_abi::{HostSettings, PluginRegistry};
use basicagent_proto::Init;
use rustls::ClientConfig;

use crate::config::Config;
use crate::core::dispatch::{AgentFacts, Dispatcher};
use crate::core::session::{Session, SessionConfig};
use crate::core::tasks::TaskLimits;
use crate::core::{Core, Reconfig};
use crate::io::logfile::{self, LogHandle};
use crate::io::mailbox::Mailbox;
use crate::io::process::{self, PidFile};
use crate::io::reactor::{Reactor, Reloader};
use crate::io::resolve::Resolver;
use crate::io::{signals, taskfiles};
use crate::{hostid, tls};

/// The daemon's command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub foreground: bool,
    pub level: log::LevelFilter,
}

/// Why the daemon could not start; printed on the terminal (or passed back
/// to it by the detached daemon) and the exit status is 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    PidFile(#[from] process::PidFileError),
    #[error(transparent)]
    Log(#[from] logfile::LogError),
    #[error(transparent)]
    HostId(#[from] hostid::HostIdError),
    #[error("state directory: {0}")]
    StateDir(#[from] taskfiles::DirError),
    #[error(transparent)]
    Core(#[from] crate::core::CoreError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

/// The session settings a configuration gives.
pub fn session_config(config: &Config) -> SessionConfig {
    let s = &config.server;
    SessionConfig {
        name: s.name.clone(),
        port: s.port,
        connect_timeout: s.connect_timeout,
        handshake_timeout: s.handshake_timeout,
        max_redirects: s.max_redirects,
        heartbeat: config.agent.heartbeat,
        max_frame: s.max_frame,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        seed: seed(),
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ (u64::from(std::process::id()) << 32)
}

/// TLS settings a configuration gives (warnings logged).
pub fn tls_config(config: &Config) -> Result<Arc<ClientConfig>, tls::TlsError> {
    let setup = tls_setup(config)?;
    for w in &setup.warnings {
        log::warn!("{w}");
    }
    Ok(setup.config)
}

/// TLS settings a configuration gives, with the warnings to log.
pub fn tls_setup(config: &Config) -> Result<tls::TlsSetup, tls::TlsError> {
    let s = &config.server;
    let client = match (&s.cert, &s.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    tls::client_setup(&s.ca, client)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_owned())
}

struct AgentReloader {
    config_path: Option<PathBuf>,
    log: LogHandle,
}

impl Reloader for AgentReloader {
    fn reopen_log(&mut self) {
        if let Err(e) = self.log.reopen() {
            eprintln!("BasicAgent: cannot reopen the log: {e}");
        } else {
            log::info!("log reopened");
        }
    }

    fn reload_config(&mut self) -> Option<Reconfig> {
        let config = match Config::load(self.config_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                return None;
            }
        };
        match tls_config(&config) {
            Ok(tls) => Some(Reconfig {
                session: session_config(&config),
                tls,
            }),
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                None
            }
        }
    }
}

fn nodename() -> String {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.nodename.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Runs the daemon to completion.
pub fn run(opts: Options) -> Result<(), StartError> {
    crate::io::memory::tune_malloc();
    let config_path = opts.config.as_deref().map(absolute);
    let config = Config::load(config_path.as_deref())?;
    // Checked before detaching (a refused CA fails on the terminal); the
    // warnings are logged once the log is open.
    let tls::TlsSetup {
        config: tls,
        warnings: tls_warnings,
    } = tls_setup(&config)?;
    let log_file = opts.log_file.as_deref().map(absolute);
    let pid_path = opts.pid_file.as_deref().map(absolute);

    // Detach first (no thread may exist yet), then take the pid file in
    // the daemon itself so the lock belongs to the right process.
    let detached = if opts.foreground {
        None
    } else {
        Some(process::daemonize().map_err(|e| StartError::Io("detach", e))?)
    };
    let started = (|| -> Result<_, StartError> {
        let mut pid = match &pid_path {
            Some(p) => Some(PidFile::acquire(p)?),
            None => None,
        };
        if let Some(p) = pid.as_mut() {
            p.write_pid()?;
        }
        let log = logfile::init_logging(log_file.as_deref(), opts.level)?;
        let signals = signals::block_signals().map_err(|e| StartError::Io("signalfd", e))?;
        // The state directory is private (0700, ours, not shared), then
        // the host id and the outbox: all before reporting success.
        taskfiles::prepare_dir(&config.agent.state_dir)?;
        let host_id = hostid::host_id(
            config.agent.host_id.as_deref(),
            Path::new("/etc/machine-id"),
            &config.agent.state_dir,
        )?;
        let tasks = taskfiles::open(
            &config.agent.state_dir.join("tasks"),
            TaskLimits {
                max_tasks: config.agent.max_tasks,
                max_bytes: config.agent.max_outbox_bytes,
                retention: config.agent.task_retention,
                max_frame: config.server.max_frame,
            },
        )?;
        Ok((pid, log, signals, host_id, tasks))
    })();
    let (pid, log, signals, host_id, tasks) = match (started, detached) {
        (Ok(parts), Some(d)) => {
            let _ = d.ready();
            parts
        }
        (Ok(parts), None) => parts,
        (Err(e), Some(d)) => {
            d.fail(&e.to_string());
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    for w in &tls_warnings {
        log::warn!("{w}");
    }
    let crashed = match crate::crashmark::arm(&config.agent.state_dir) {
        Ok(crate::crashmark::Previous::Crash(c)) => Some(c),
        Ok(crate::crashmark::Previous::Clean) => None,
        Err(e) => {
            log::error!("crash marker: {e}; a plugin that crashes the daemon will not be named");
            None
        }
    };

    let name = nodename();
    log::info!(
        "BasicAgent {} starting: host id {host_id}, server {}:{}",
        env!("CARGO_PKG_VERSION"),
        config.server.name,
        config.server.port
    );

    let poll = mio::Poll::new().map_err(|e| StartError::Io("poll", e))?;
    let waker = Reactor::waker(&poll).map_err(|e| StartError::Io("waker", e))?;
    let plugin_dir = basicagent_abi::plugin_dir(config.agent.plugin_dir.as_deref());
    log::info!("plugin directory {}", plugin_dir.display());
    let settings = HostSettings {
        config_json: config.plugin_settings_json(),
        max_log_level: log::max_level() as u32,
    };
    let policy = config.signature_policy()?;
    if policy.require {
        log::info!(
            "plugins must be signed by one of {} trusted key(s)",
            policy.trusted.len()
        );
    }
    let registry = PluginRegistry::with_signatures(plugin_dir, settings, policy);
    let now = Instant::now();
    let facts_host_id = host_id.clone();
    let facts = AgentFacts {
        host_id: host_id.clone(),
        name: name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: now,
    };
    let mailbox = Mailbox::new(Arc::clone(&waker));
    mailbox
        .start_files(
            config.agent.state_dir.join("tasks"),
            config.server.max_frame,
        )
        .map_err(|e| StartError::Io("task files", e))?;
    let mut dispatcher = Dispatcher::new(
        registry,
        config.agent.max_concurrent,
        Arc::clone(&mailbox) as Arc<dyn crate::core::dispatch::Sink>,
        facts,
        tasks,
    );
    dispatcher.set_max_frame(config.server.max_frame);
    if config.audit.enabled {
        let audit = crate::audit::Audit::start(&config.audit_path(), &config.audit)
            .map_err(|e| StartError::Io("audit log", e))?;
        dispatcher.set_audit(audit);
    }
    let schedules = crate::schedule::ScheduleTable::open(
        config.agent.state_dir.join("schedules"),
        crate::schedule::ScheduleLimits {
            max_schedules: config.agent.max_schedules,
            min_interval: config.agent.schedule_min_interval,
            keep_results: config.agent.schedule_keep_results,
        },
        &facts_host_id,
        &dispatcher.plugin_methods(),
        Arc::clone(&waker),
    )?;
    dispatcher.set_schedules(schedules);
    dispatcher.set_limits(config.plugins.limits());
    let helpers = config
        .plugins
        .isolate
        .iter()
        .map(|m| {
            let h = crate::io::isolate::Helper::new(m, config_path.clone(), dispatcher.max_frame());
            (
                m.clone(),
                Box::new(h) as Box<dyn crate::core::dispatch::Isolated>,
            )
        })
        .collect();
    dispatcher.set_isolated(helpers);
    if let Some(c) = crashed {
        log::error!(
            "the previous run died of signal {} in a call of plugin {} {} ({}): quarantined until its file changes",
            c.signal,
            c.name,
            c.version,
            c.path.display()
        );
        let reason = format!("it crashed the daemon (signal {}) in a call", c.signal);
        dispatcher
            .quarantine_mut()
            .until_changed(&c.path, &c.name, &c.version, reason);
    }
    let init = Init {
        hostname: host_id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        name,
        plugins: dispatcher.plugin_methods(),
        extra: Default::default(),
    };
    let session = Session::new(session_config(&config), init, now);
    let resolver = if config.server.dns {
        Resolver::spawn(
            Arc::clone(&waker),
            config.server.hosts_file.clone(),
            config.server.nameservers.clone(),
        )
    } else {
        Resolver::spawn_hosts_only(Arc::clone(&waker), config.server.hosts_file.clone())
    }
    .map_err(|e| StartError::Io("resolver", e))?;
    let core = Core::new(
        session,
        dispatcher,
        tls,
        &config.server.name,
        config.server.max_frame,
    )?;
    let mut reactor = Reactor::new(poll, core, mailbox, resolver, signals)
        .map_err(|e| StartError::Io("reactor", e))?;
    if !config.agent.ctl_socket.as_os_str().is_empty() {
        reactor.serve_ctl(&config.agent.ctl_socket, config.server.max_frame);
    }
    let mut reloader = AgentReloader { config_path, log };
    let result = reactor
        .run(&mut reloader)
        .map_err(|e| StartError::Io("event loop", e));
    drop(pid);
    result
}
