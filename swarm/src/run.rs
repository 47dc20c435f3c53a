//! A whole swarm run: check the limits, build TLS and the runtime, start N agent tasks behind the ramp, report every second, stop on the duration or a signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::agent::{self, Ctx};
use crate::options::Options;
use crate::stats::Process;
use crate::sys;

/// Descriptors kept for everything that is not a session: the runtime's
/// epoll and eventfd, stdio, the status file, the CA file, /proc reads.
pub const FD_RESERVE: u64 = 64;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(
        "--agents {agents} needs {need} file descriptors (one per session plus {FD_RESERVE} \
         reserved) but the limit is {limit} (RLIMIT_NOFILE, raised to its hard limit): \
         use fewer agents per process and run several swarm processes"
    )]
    TooManyAgents { agents: u64, need: u64, limit: u64 },
    #[error(
        "--agents {agents} over {sources} source address(es) is {per} connections per \
         address, more than the {ports} ephemeral ports one address has towards one server: \
         give a wider --source range"
    )]
    TooFewPorts {
        agents: u64,
        sources: usize,
        per: u64,
        ports: u64,
    },
    #[error("cannot raise the descriptor limit: {0}")]
    Rlimit(std::io::Error),
    #[error("{0}")]
    Tls(#[from] basicagent_host::tls::TlsError),
    #[error("--cert-dir: {0}")]
    AgentCert(#[from] crate::certs::CertError),
    #[error("--name {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Checks that `agents` sessions fit the descriptor limit and the port range.
pub fn check_limits(opts: &Options, fd_limit: u64, ports: Option<u64>) -> Result<(), SwarmError> {
    let need = opts.agents.saturating_add(FD_RESERVE);
    if need > fd_limit {
        return Err(SwarmError::TooManyAgents {
            agents: opts.agents,
            need,
            limit: fd_limit,
        });
    }
    let sources = opts.sources.len().max(1);
    let per = opts.agents.div_ceil(sources as u64);
    if let Some(ports) = ports {
        if per > ports {
            return Err(SwarmError::TooFewPorts {
                agents: opts.agents,
                sources,
                per,
                ports,
            });
        }
    }
    Ok(())
}

/// Runs the swarm to the end; returns the final report (one JSON object).
pub fn run(opts: Options) -> Result<String, SwarmError> {
    let fd_limit = sys::raise_nofile().map_err(SwarmError::Rlimit)?;
    check_limits(&opts, fd_limit, sys::ephemeral_ports())?;
    let client = opts
        .client
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    let config = basicagent_host::tls::client_config(&opts.ca, client)?;
    // The agent's configuration, with one change: no session resumption.
    // A real agent resumes with tickets of its own; sharing one cache
    // across N simulated agents would let agent 2 resume agent 1's session,
    // so every handshake here is a full one, as for a fleet starting cold.
    let mut config = Arc::unwrap_or_clone(config);
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    if let Some(dir) = &opts.cert_dir {
        // Fail at start, naming the file, if the first agent has no usable pair.
        let first = crate::ident::host_id(&opts.seed, opts.first);
        crate::certs::agent_config(&config, dir, &first)?;
    }
    let server_name = ServerName::try_from(opts.name.clone())
        .map_err(|_| SwarmError::ServerName(opts.name.clone()))?;
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    }
    .map_err(SwarmError::Runtime)?;
    let ctx = Arc::new(Ctx {
        tls: TlsConnector::from(config.clone()),
        base_config: config,
        server_name,
        stats: Default::default(),
        ramp: Semaphore::new(opts.concurrency),
        started: Instant::now(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        pace: Mutex::new(Instant::now()),
        first_refusal: Mutex::new(Vec::new()),
        last_up_us: AtomicU64::new(0),
        opts,
    });
    runtime.block_on(drive(ctx, fd_limit))
}

/// Writes `text` to `path` atomically (temp file + rename); errors are logged.
fn write_status(path: &Path, text: &str) {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let result =
        std::fs::write(&tmp, format!("{text}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        log::warn!("status file {}: {e}", path.display());
    }
}

struct Sampler {
    process: Process,
    best_up: u64,
}

impl Sampler {
    fn sample(&mut self, ctx: &Ctx) -> Process {
        let rss = sys::rss_kib();
        let up = ctx.stats.up.load(Relaxed);
        if up >= self.best_up && up > 0 {
            self.best_up = up;
            self.process.rss_peak_kib = rss;
            let grown = rss.saturating_sub(self.process.rss_base_kib);
            self.process.rss_per_session_bytes = grown.saturating_mul(1024) / up;
        }
        self.process.rss_kib = rss;
        self.process.cpu_seconds = (sys::cpu_seconds() * 100.0).round() / 100.0;
        self.process.threads = sys::threads();
        self.process
    }
}

fn report(ctx: &Ctx, process: &Process, done: bool) -> String {
    let text = ctx.stats.report(
        ctx.opts.agents,
        ctx.started.elapsed().as_secs_f64(),
        done,
        process,
    );
    // Add the first message of each refusal reason and the last-up time.
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return text;
    };
    let first = ctx
        .first_refusal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(r, m)| (r.label().to_owned(), serde_json::Value::from(m.clone())))
        .collect::<serde_json::Map<_, _>>();
    map.insert("refused_first".into(), first.into());
    let last = ctx.last_up_us.load(Relaxed);
    map.insert(
        "last_up_seconds".into(),
        if last > 0 {
            (last as f64 / 1e6).into()
        } else {
            serde_json::Value::Null
        },
    );
    serde_json::Value::Object(map).to_string()
}

async fn drive(ctx: Arc<Ctx>, fd_limit: u64) -> Result<String, SwarmError> {
    let mut term = signal(SignalKind::terminate()).map_err(SwarmError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SwarmError::Signals)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(SwarmError::Signals)?;
    let mut sampler = Sampler {
        process: Process {
            rss_base_kib: sys::rss_kib(),
            fd_limit,
            ..Process::default()
        },
        best_up: 0,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let first = ctx.opts.first;
    for i in 0..ctx.opts.agents {
        tasks.spawn(agent::run(
            ctx.clone(),
            first.saturating_add(i),
            stop_rx.clone(),
        ));
    }
    let deadline = ctx
        .opts
        .duration
        .and_then(|d| tokio::time::Instant::now().checked_add(d));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr1.recv() => {
                // Stop the ramp: attempts in flight finish, agents still
                // waiting for their turn give up; sessions up stay up.
                log::warn!("SIGUSR1: ramp closed");
                ctx.ramp.close();
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break "duration reached",
            done = tasks.join_next() => {
                if done.is_none() {
                    break "every agent finished";
                }
            }
            _ = tick.tick() => {
                let process = sampler.sample(&ctx);
                if let Some(path) = &ctx.opts.status_file {
                    write_status(path, &report(&ctx, &process, false));
                }
                if let Some(every) = ctx.opts.progress {
                    if last_progress.elapsed() >= every {
                        last_progress = Instant::now();
                        let s = &ctx.stats;
                        eprintln!(
                            "[swarm] {:.0}s up {} refused {} lost {} answered {} rss {} MiB cpu {:.1}s",
                            ctx.started.elapsed().as_secs_f64(),
                            s.up.load(Relaxed),
                            crate::stats::Refusal::ALL.iter().map(|&r| s.refused_count(r)).sum::<u64>(),
                            s.lost.load(Relaxed),
                            crate::stats::Method::ALL.iter().map(|&m| s.answered_count(m)).sum::<u64>(),
                            process.rss_kib / 1024,
                            process.cpu_seconds,
                        );
                    }
                }
            }
        }
    };
    log::info!("stopping: {why}");
    let process = sampler.sample(&ctx);
    let _ = stop_tx.send(true);
    // Sessions send close_notify (each bounded to 1 s); do not wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let mut process = process;
    process.cpu_seconds = (sys::cpu_seconds() * 100.0).round() / 100.0;
    let text = report(&ctx, &process, true);
    if let Some(path) = &ctx.opts.status_file {
        write_status(path, &text);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(agents: u64, sources: &str) -> Options {
        let mut o = crate::options::parse(&[
            "--server".into(),
            "127.0.0.1:1".into(),
            "--ca".into(),
            "x".into(),
            "--source".into(),
            sources.into(),
        ])
        .unwrap()
        .unwrap();
        o.agents = agents;
        o
    }

    #[test]
    fn limits() {
        check_limits(&opts(19_000, "20"), 20_000, Some(28_232)).unwrap();
        let e = check_limits(&opts(19_990, "20"), 20_000, Some(28_232)).unwrap_err();
        assert!(
            matches!(e, SwarmError::TooManyAgents { need: 20_054, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("several swarm processes"));
        let e = check_limits(&opts(19_000, "1"), 20_000, Some(10_000)).unwrap_err();
        assert!(
            matches!(e, SwarmError::TooFewPorts { per: 19_000, .. }),
            "{e}"
        );
        check_limits(&opts(19_000, "2"), 20_000, Some(10_000)).unwrap();
    }
}
