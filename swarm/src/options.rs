//! The swarm's command line: flags, defaults, and the checks that refuse a run that cannot work (bad addresses, too many agents).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
Usage:
  BasicAgentSwarm --server IP:PORT[,IP:PORT...] --ca PEM [--name NAME]
                  [--cert PEM --key PEM | --cert-dir DIR]
                  [--agents N] [--first K] [--seed TEXT] [--prefix NAME]
                  [--source IP | IP-IP | COUNT] [--concurrency C] [--rate PER_S]
                  [--plugins LIST] [--heartbeat SECS] [--think MS]
                  [--connect-timeout SECS] [--handshake-timeout SECS]
                  [--max-redirects N] [--max-frame BYTES] [--retry]
                  [--threads T] [--duration SECS] [--status-file FILE]
                  [--progress SECS] [--task-ms MS]
  BasicAgentSwarm --print-ids [--agents N] [--first K] [--seed TEXT]
      prints the agents' host ids, one a line (for make-certs.sh --agent)

Plays N agents from one process: TLS verified against --ca and --name as the
agent does, init with distinct host ids, answers ping, getinfo.kernel,
sync.bash and agent.info with canned data (3022 for any other method),
follows redirects, sends heartbeats. With several --server addresses each
connection round tries them in order, like the agent's server list (a lost
session starts a new round). async.bash (when in --plugins) answers a task
id at once and pushes task.done --task-ms later (default 200), kept in an
in-memory outbox and pushed again after every init until task.ack. Runs for --duration seconds, or until
SIGTERM/SIGINT, then prints one JSON report line on stdout. SIGUSR1 closes
the ramp: attempts in flight finish, agents not yet started give up
(counted as abandoned), sessions up stay up.

Defaults: --name config.cargo.com, --agents 1, --first 1, --seed swarm,
--prefix swarm, --source 127.0.1.1-127.0.1.20, --concurrency 256,
--rate 0 (no limit), --plugins getinfo.kernel,sync.bash, --heartbeat 30,
--think 0, --connect-timeout 10, --handshake-timeout 10, --max-redirects 3,
--max-frame 1048576, --threads 1 (one thread, current-thread runtime),
--progress 5 (0: none). A --source COUNT means COUNT addresses from
127.0.1.1. --cert-dir DIR: each agent presents its own certificate,
DIR/agent-HOST_ID.pem and DIR/agent-HOST_ID.key (what make-certs.sh --agent
DIR ID... writes), for a server that binds host ids to certificates.
Log level: RUST_LOG (default warn).";

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The first of `servers`.
    pub server: SocketAddr,
    /// The server list, tried in order at every connection round.
    pub servers: Vec<SocketAddr>,
    /// `async.bash`: how long a task "runs" before its `task.done`.
    pub task_time: Duration,
    /// The name the server certificate must be valid for.
    pub name: String,
    pub ca: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
    /// Per-agent certificates: DIR/agent-ID.pem and .key.
    pub cert_dir: Option<PathBuf>,
    pub agents: u64,
    /// Index of the first agent (ids and names derive from it).
    pub first: u64,
    pub seed: String,
    pub prefix: String,
    /// Local addresses to bind, agent `i` uses `sources[i % len]`.
    pub sources: Vec<Ipv4Addr>,
    /// Connects, handshakes and inits in flight at once.
    pub concurrency: usize,
    /// New connection attempts per second (0: only the concurrency bound).
    pub rate: f64,
    pub plugins: Vec<String>,
    pub heartbeat: Duration,
    pub think: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_redirects: u32,
    pub max_frame: usize,
    /// Try again after a refusal or a lost session, with the agent's backoff.
    pub retry: bool,
    pub threads: usize,
    pub duration: Option<Duration>,
    pub status_file: Option<PathBuf>,
    pub progress: Option<Duration>,
    /// `--print-ids`: print the host ids and exit.
    pub print_ids: bool,
}

/// A command line that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("bad --{flag} {value:?}: {why}")]
    Bad {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
}

fn bad(flag: &'static str, value: &str, why: &'static str) -> OptionsError {
    OptionsError::Bad {
        flag,
        value: value.to_owned(),
        why,
    }
}

/// Parses `IP`, `IP-IP` (inclusive, same /24 or not) or `COUNT` (that many
/// addresses from 127.0.1.1). Only loopback addresses (127.0.0.0/8) are
/// accepted, at most 65 536 of them.
pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>, OptionsError> {
    let text = text.trim();
    let loopback = |s: &str| -> Result<Ipv4Addr, OptionsError> {
        let ip: Ipv4Addr = s
            .trim()
            .parse()
            .map_err(|_| bad("source", text, "not an IPv4 address"))?;
        if !ip.is_loopback() {
            return Err(bad(
                "source",
                text,
                "only 127.0.0.0/8 addresses are allowed",
            ));
        }
        Ok(ip)
    };
    let (first, last) = if let Ok(count) = text.parse::<u32>() {
        if count == 0 || count > 65_536 {
            return Err(bad("source", text, "a count must be 1..=65536"));
        }
        let start = u32::from(Ipv4Addr::new(127, 0, 1, 1));
        (start, start + count - 1)
    } else if let Some((a, b)) = text.split_once('-') {
        (u32::from(loopback(a)?), u32::from(loopback(b)?))
    } else {
        let ip = u32::from(loopback(text)?);
        (ip, ip)
    };
    if last < first {
        return Err(bad("source", text, "the range ends before it starts"));
    }
    if last - first >= 65_536 {
        return Err(bad("source", text, "at most 65536 addresses"));
    }
    let out: Vec<Ipv4Addr> = (first..=last).map(Ipv4Addr::from).collect();
    if out.iter().any(|ip| !ip.is_loopback()) {
        return Err(bad(
            "source",
            text,
            "only 127.0.0.0/8 addresses are allowed",
        ));
    }
    Ok(out)
}

fn seconds(flag: &'static str, text: &str, zero_ok: bool) -> Result<Duration, OptionsError> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| bad(flag, text, "not a number"))?;
    if !v.is_finite() || v < 0.0 || (!zero_ok && v == 0.0) {
        return Err(bad(flag, text, "out of range"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| bad(flag, text, "out of range"))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Option<Options>, OptionsError> {
    let mut o = getopts::Options::new();
    for (name, hint) in [
        ("server", "IP:PORT"),
        ("name", "NAME"),
        ("ca", "PEM"),
        ("cert", "PEM"),
        ("key", "PEM"),
        ("cert-dir", "DIR"),
        ("agents", "N"),
        ("first", "K"),
        ("seed", "TEXT"),
        ("prefix", "NAME"),
        ("source", "RANGE"),
        ("concurrency", "C"),
        ("rate", "PER_S"),
        ("plugins", "LIST"),
        ("heartbeat", "SECS"),
        ("think", "MS"),
        ("connect-timeout", "SECS"),
        ("handshake-timeout", "SECS"),
        ("max-redirects", "N"),
        ("max-frame", "BYTES"),
        ("threads", "T"),
        ("duration", "SECS"),
        ("status-file", "FILE"),
        ("progress", "SECS"),
        ("task-ms", "MS"),
    ] {
        o.optopt("", name, "", hint);
    }
    o.optflag("", "retry", "retry refused agents and lost sessions");
    o.optflag("", "print-ids", "print the host ids and exit");
    o.optflag("h", "help", "show usage");
    let m = o
        .parse(args)
        .map_err(|e| OptionsError::Usage(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(None);
    }
    if !m.free.is_empty() {
        return Err(OptionsError::Usage(format!(
            "unexpected argument {:?}",
            m.free[0]
        )));
    }
    if m.opt_present("print-ids") {
        return Ok(Some(Options::ids_only(&m)?));
    }
    let server_text = m
        .opt_str("server")
        .ok_or_else(|| OptionsError::Usage("--server IP:PORT is required".into()))?;
    let servers = server_text
        .split(',')
        .map(|s| s.trim().parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("server", &server_text, "want IP:PORT[,IP:PORT...]"))?;
    let Some(&server) = servers.first() else {
        return Err(bad("server", &server_text, "want IP:PORT[,IP:PORT...]"));
    };
    if servers.len() > 64 {
        return Err(bad("server", &server_text, "at most 64 addresses"));
    }
    let ca = m
        .opt_str("ca")
        .ok_or_else(|| OptionsError::Usage("--ca PEM is required".into()))?;
    let client = match (m.opt_str("cert"), m.opt_str("key")) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => return Err(OptionsError::Usage("--cert and --key go together".into())),
    };
    let cert_dir = m.opt_str("cert-dir").map(PathBuf::from);
    if cert_dir.is_some() && client.is_some() {
        return Err(OptionsError::Usage(
            "--cert-dir and --cert/--key cannot be combined".into(),
        ));
    }
    let int = |flag: &'static str, default: u64, min: u64, max: u64| -> Result<u64, OptionsError> {
        match m.opt_str(flag) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| bad(flag, &v, "not a whole number in range")),
        }
    };
    let agents = int("agents", 1, 1, 1_000_000)?;
    let first = int("first", 1, 0, u64::MAX / 2)?;
    let concurrency = int("concurrency", 256, 1, 100_000)?;
    let max_redirects = int("max-redirects", 3, 0, 100)?;
    let max_frame = int("max-frame", 1024 * 1024, 1024, 1 << 30)?;
    let threads = int("threads", 1, 1, 64)?;
    let think_ms = int("think", 0, 0, 3_600_000)?;
    let task_ms = int("task-ms", 200, 0, 3_600_000)?;
    let rate = match m.opt_str("rate") {
        None => 0.0,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| bad("rate", &v, "not a number >= 0"))?,
    };
    let dur =
        |flag: &'static str, default: &str, zero_ok: bool| -> Result<Duration, OptionsError> {
            seconds(
                flag,
                &m.opt_str(flag).unwrap_or_else(|| default.to_owned()),
                zero_ok,
            )
        };
    let plugins: Vec<String> = m
        .opt_str("plugins")
        .unwrap_or_else(|| "getinfo.kernel,sync.bash".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let progress = dur("progress", "5", true)?;
    let duration = match m.opt_str("duration") {
        None => None,
        Some(v) => Some(seconds("duration", &v, false)?),
    };
    Ok(Some(Options {
        server,
        servers,
        task_time: Duration::from_millis(task_ms),
        name: m
            .opt_str("name")
            .unwrap_or_else(|| "config.cargo.com".to_owned()),
        ca: PathBuf::from(ca),
        client,
        cert_dir,
        agents,
        first,
        seed: m.opt_str("seed").unwrap_or_else(|| "swarm".to_owned()),
        prefix: m.opt_str("prefix").unwrap_or_else(|| "swarm".to_owned()),
        sources: parse_sources(
            &m.opt_str("source")
                .unwrap_or_else(|| "127.0.1.1-127.0.1.20".to_owned()),
        )?,
        concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
        rate,
        plugins,
        heartbeat: dur("heartbeat", "30", false)?,
        think: Duration::from_millis(think_ms),
        connect_timeout: dur("connect-timeout", "10", false)?,
        handshake_timeout: dur("handshake-timeout", "10", false)?,
        max_redirects: u32::try_from(max_redirects).unwrap_or(u32::MAX),
        max_frame: usize::try_from(max_frame).unwrap_or(usize::MAX),
        retry: m.opt_present("retry"),
        threads: usize::try_from(threads).unwrap_or(1),
        duration,
        status_file: m.opt_str("status-file").map(PathBuf::from),
        progress: (!progress.is_zero()).then_some(progress),
        print_ids: false,
    }))
}

impl Options {
    /// True when the run only prints host ids (`--print-ids`).
    pub fn print_ids_only(&self) -> bool {
        self.print_ids
    }

    fn ids_only(m: &getopts::Matches) -> Result<Options, OptionsError> {
        let num = |flag: &'static str, default: u64| -> Result<u64, OptionsError> {
            match m.opt_str(flag) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= 1_000_000_000)
                    .ok_or_else(|| bad(flag, &v, "not a whole number in range")),
            }
        };
        let mut args = vec![
            "--server".to_owned(),
            "127.0.0.1:1".to_owned(),
            "--ca".to_owned(),
            "-".to_owned(),
        ];
        if let Some(seed) = m.opt_str("seed") {
            args.extend(["--seed".to_owned(), seed]);
        }
        let mut o = parse(&args)?.ok_or_else(|| OptionsError::Usage("--help".into()))?;
        o.agents = num("agents", 1)?.max(1);
        o.first = num("first", 1)?;
        o.print_ids = true;
        Ok(o)
    }

    /// The host ids of this run's agents, in order.
    pub fn host_ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.agents).map(|i| crate::ident::host_id(&self.seed, self.first.saturating_add(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn sources() {
        assert_eq!(
            parse_sources("127.0.1.1-127.0.1.3").unwrap(),
            vec![
                Ipv4Addr::new(127, 0, 1, 1),
                Ipv4Addr::new(127, 0, 1, 2),
                Ipv4Addr::new(127, 0, 1, 3)
            ]
        );
        assert_eq!(parse_sources("2").unwrap().len(), 2);
        assert_eq!(parse_sources("2").unwrap()[1], Ipv4Addr::new(127, 0, 1, 2));
        assert_eq!(parse_sources("127.0.0.9").unwrap().len(), 1);
        // Ranges cross a /24.
        assert_eq!(parse_sources("127.0.1.250-127.0.2.5").unwrap().len(), 12);
        for bad in [
            "10.0.0.1",
            "127.0.0.5-127.0.0.1",
            "0",
            "127.0.0.1-128.0.0.1",
            "x",
            "127.0.0.1-127.2.0.0",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags() {
        let o = parse(&args(&["--server", "127.0.0.1:8443", "--ca", "ca.pem"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.agents, 1);
        assert_eq!(o.sources.len(), 20);
        assert_eq!(o.plugins, ["getinfo.kernel", "sync.bash"]);
        assert_eq!(o.progress, Some(Duration::from_secs(5)));
        assert!(parse(&args(&["--ca", "x"])).is_err());
        assert!(parse(&args(&["--server", "nope", "--ca", "x"])).is_err());
        assert!(parse(&args(&["--server", "127.0.0.1:1,", "--ca", "x"])).is_err());
        let list = parse(&args(&["--server", "127.0.0.1:1,127.0.0.2:2", "--ca", "x"]))
            .unwrap()
            .unwrap();
        assert_eq!(list.server, "127.0.0.1:1".parse().unwrap());
        assert_eq!(list.servers.len(), 2);
        assert_eq!(list.task_time, Duration::from_millis(200));
        assert!(parse(&args(&[
            "--server",
            "127.0.0.1:1",
            "--ca",
            "x",
            "--cert",
            "c"
        ]))
        .is_err());
        assert!(parse(&args(&[
            "--server",
            "127.0.0.1:1",
            "--ca",
            "x",
            "--agents",
            "0"
        ]))
        .is_err());
        assert!(parse(&args(&[
            "--server",
            "127.0.0.1:1",
            "--ca",
            "x",
            "--heartbeat",
            "-1"
        ]))
        .is_err());
        assert!(parse(&args(&["--help"])).unwrap().is_none());
    }
}
