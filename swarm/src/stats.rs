//! What the swarm counts (sessions, refusals by reason, redirects, answers by method, latency) and the JSON report built from it.
//!
//! Counters are relaxed atomics shared by every session task; latency is a
//! log-linear histogram (8 buckets per power of two, so a percentile is
//! within 9 % of the true value) of microseconds from the moment a request
//! line was decoded to the moment its answer was handed to the socket.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why an agent did not get a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// TCP connect failed (refused, unreachable, no local port, timeout).
    Connect,
    /// The TLS handshake failed (bad certificate, wrong name, alert).
    Tls,
    /// The server answered init with a rejection.
    InitRejected,
    /// The init reply was not a valid reply.
    InitInvalid,
    /// No TLS handshake or init reply within the handshake timeout.
    Timeout,
    /// The server closed the connection before replying to init.
    Closed,
    /// More redirects in a row than `--max-redirects`, or a redirect list
    /// with no address the swarm can use (host names are not resolved).
    Redirect,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Connect,
        Refusal::Tls,
        Refusal::InitRejected,
        Refusal::InitInvalid,
        Refusal::Timeout,
        Refusal::Closed,
        Refusal::Redirect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connect => "connect",
            Refusal::Tls => "tls",
            Refusal::InitRejected => "init_rejected",
            Refusal::InitInvalid => "init_invalid",
            Refusal::Timeout => "timeout",
            Refusal::Closed => "closed",
            Refusal::Redirect => "redirect",
        }
    }
}

/// What a request was, for the per-method counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ping,
    Kernel,
    SyncBash,
    AgentInfo,
    /// Answered 3022.
    Unknown,
    /// Answered 3020 (not a request, frame too long).
    Invalid,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Ping,
        Method::Kernel,
        Method::SyncBash,
        Method::AgentInfo,
        Method::Unknown,
        Method::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::Kernel => "getinfo.kernel",
            Method::SyncBash => "sync.bash",
            Method::AgentInfo => "agent.info",
            Method::Unknown => "unknown",
            Method::Invalid => "invalid",
        }
    }
}

const SUB: usize = 8;
const BUCKETS: usize = 64 * SUB;

/// Microsecond latencies, log-linear buckets.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

/// The bucket of `v`: values below 8 have one each, then 8 per power of two.
fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as usize; // >= 3
    let frac = ((v >> (exp - 3)) & 7) as usize;
    ((exp - 2) * SUB + frac).min(BUCKETS - 1)
}

/// The upper bound of bucket `b` (inclusive), the value reported.
fn bucket_top(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let exp = b / SUB + 2;
    let frac = (b % SUB) as u64;
    let base = 1u64.checked_shl(exp as u32).unwrap_or(u64::MAX);
    let step = base >> 3;
    step.checked_mul(frac + 1)
        .and_then(|s| base.checked_add(s))
        .map_or(u64::MAX, |t| t - 1)
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.buckets[bucket(micros)].fetch_add(1, Relaxed);
        self.max.fetch_max(micros, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), nearest rank; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_top(b).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }
}

/// Every counter of one swarm process.
#[derive(Default)]
pub struct Stats {
    /// Agents that have started their first attempt.
    pub started: AtomicU64,
    /// Sessions up right now.
    pub up: AtomicU64,
    pub peak_up: AtomicU64,
    /// Sessions that came up (reconnections counted again).
    pub sessions: AtomicU64,
    /// Sessions that were up and ended other than by our shutdown.
    pub lost: AtomicU64,
    /// Agents that gave up without an attempt because the ramp was closed (SIGUSR1).
    pub abandoned: AtomicU64,
    refused: [AtomicU64; 7],
    pub redirects: AtomicU64,
    answered: [AtomicU64; 6],
    pub heartbeats: AtomicU64,
    /// Frames from the server that needed no answer (replies to our pings, task.ack).
    pub ignored: AtomicU64,
    pub latency: Histogram,
    /// Microseconds from the first connect to the last session up of the ramp.
    pub ramp_us: AtomicU64,
    /// Microseconds from a lost session to the same agent's next session up
    /// (the re-home time when a server node dies).
    pub rehome: Histogram,
    /// `async.bash` tasks accepted (a task id answered).
    pub tasks: AtomicU64,
    /// `task.done` frames sent (re-pushes counted again).
    pub tasks_pushed: AtomicU64,
    /// Tasks acknowledged by a server (`task.ack`), each counted once.
    pub tasks_acked: AtomicU64,
}

impl Stats {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    pub fn answered(&self, method: Method, micros: u64) {
        self.answered[method as usize].fetch_add(1, Relaxed);
        self.latency.record(micros);
    }

    pub fn answered_count(&self, method: Method) -> u64 {
        self.answered[method as usize].load(Relaxed)
    }

    pub fn session_up(&self) {
        self.sessions.fetch_add(1, Relaxed);
        let now = self.up.fetch_add(1, Relaxed) + 1;
        self.peak_up.fetch_max(now, Relaxed);
    }

    pub fn session_down(&self) {
        self.up.fetch_sub(1, Relaxed);
    }
}

/// Process facts sampled outside the counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Process {
    pub rss_kib: u64,
    /// RSS before the first connection.
    pub rss_base_kib: u64,
    /// RSS when the most sessions were up.
    pub rss_peak_kib: u64,
    /// (rss_peak - rss_base) / peak_up, in bytes.
    pub rss_per_session_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    pub fd_limit: u64,
}

#[derive(Serialize)]
struct Latency {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(rename = "final")]
    done: bool,
    seconds: f64,
    agents: u64,
    started: u64,
    up: u64,
    peak_up: u64,
    sessions: u64,
    lost: u64,
    abandoned: u64,
    refused_total: u64,
    refused: serde_json::Map<String, serde_json::Value>,
    redirects: u64,
    answered_total: u64,
    answered: serde_json::Map<String, serde_json::Value>,
    heartbeats: u64,
    ignored: u64,
    latency: Latency,
    rehome: Latency,
    tasks: u64,
    tasks_pushed: u64,
    tasks_acked: u64,
    ramp_seconds: Option<f64>,
    #[serde(flatten)]
    process: &'a Process,
}

impl Stats {
    /// The report as one JSON object (no newline).
    pub fn report(&self, agents: u64, seconds: f64, done: bool, process: &Process) -> String {
        let mut refused = serde_json::Map::new();
        for r in Refusal::ALL {
            refused.insert(r.label().into(), self.refused_count(r).into());
        }
        let mut answered = serde_json::Map::new();
        for m in Method::ALL {
            answered.insert(m.label().into(), self.answered_count(m).into());
        }
        let ramp = self.ramp_us.load(Relaxed);
        let report = Report {
            done,
            seconds: (seconds * 1000.0).round() / 1000.0,
            agents,
            started: self.started.load(Relaxed),
            up: self.up.load(Relaxed),
            peak_up: self.peak_up.load(Relaxed),
            sessions: self.sessions.load(Relaxed),
            lost: self.lost.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            refused_total: Refusal::ALL.iter().map(|&r| self.refused_count(r)).sum(),
            refused,
            redirects: self.redirects.load(Relaxed),
            answered_total: Method::ALL.iter().map(|&m| self.answered_count(m)).sum(),
            answered,
            heartbeats: self.heartbeats.load(Relaxed),
            ignored: self.ignored.load(Relaxed),
            latency: Latency {
                count: self.latency.count(),
                p50_us: self.latency.quantile(0.5),
                p99_us: self.latency.quantile(0.99),
                max_us: self.latency.max(),
            },
            rehome: Latency {
                count: self.rehome.count(),
                p50_us: self.rehome.quantile(0.5),
                p99_us: self.rehome.quantile(0.99),
                max_us: self.rehome.max(),
            },
            tasks: self.tasks.load(Relaxed),
            tasks_pushed: self.tasks_pushed.load(Relaxed),
            tasks_acked: self.tasks_acked.load(Relaxed),
            ramp_seconds: (ramp > 0).then(|| ramp as f64 / 1e6),
            process,
        };
        serde_json::to_string(&report).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            assert!(bucket_top(b) >= v, "{v} top {}", bucket_top(b));
            if v > 8 {
                assert!((bucket_top(b) - v) as f64 <= v as f64 * 0.13, "{v}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((470..=560).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((980..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn report_is_json() {
        let s = Stats::default();
        s.session_up();
        s.refused(Refusal::Tls);
        s.answered(Method::Kernel, 12);
        let v: serde_json::Value =
            serde_json::from_str(&s.report(3, 1.0, true, &Process::default())).unwrap();
        assert_eq!(v["up"], 1);
        assert_eq!(v["refused"]["tls"], 1);
        assert_eq!(v["refused_total"], 1);
        assert_eq!(v["answered"]["getinfo.kernel"], 1);
        assert_eq!(v["final"], true);
        assert!(v["rss_kib"].is_u64());
    }
}
