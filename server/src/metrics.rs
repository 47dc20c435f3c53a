//! Prometheus metrics (`GET /metrics`): sessions, refusals, requests by method and retcode, latencies, descriptors.
//!
//! Built on `prometheus-client` (the text format and its escaping are the
//! crate's, not ours). Method labels are bounded: anything that is not a
//! short `[a-z0-9._-]` name is counted as `other`, so a caller cannot grow
//! the label set without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodRetcode {
    pub method: String,
    pub retcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: String,
}

/// All metrics of one server process.
pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    pub agents: Gauge,
    pub session_limit: Gauge,
    pub refused: Family<Reason, Counter>,
    pub sent: Family<Method, Counter>,
    pub answered: Family<MethodRetcode, Counter>,
    pub answer_seconds: Histogram,
    pub fanout_seconds: Histogram,
    pub store_seconds: Family<Op, Histogram>,
    pub store_errors: Family<Op, Counter>,
    pub task_results: Counter,
    pub fds_open: Gauge,
    pub fds_limit: Gauge,
}

/// A label value for a method name: itself when short and plain, else `other`.
pub fn method_label(method: &str) -> String {
    let plain = !method.is_empty()
        && method.len() <= 48
        && method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if plain {
        method.to_owned()
    } else {
        "other".to_owned()
    }
}

fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("basicagent");
        let m = Metrics {
            sessions: Gauge::default(),
            agents: Gauge::default(),
            session_limit: Gauge::default(),
            refused: Family::default(),
            sent: Family::default(),
            answered: Family::default(),
            answer_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            fanout_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            store_seconds: Family::new_with_constructor(store_histogram),
            store_errors: Family::default(),
            task_results: Counter::default(),
            fds_open: Gauge::default(),
            fds_limit: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Agent connections open (TLS handshake or later)",
            m.sessions.clone(),
        );
        registry.register("agents", "Agents accepted (init done)", m.agents.clone());
        registry.register(
            "session_limit",
            "Most agent sessions held at once (--max-sessions or descriptor limit minus reserve)",
            m.session_limit.clone(),
        );
        registry.register(
            "sessions_refused",
            "Agent sessions refused, by reason (owner, limit, identity, held, policy, invalid_init, tls)",
            m.refused.clone(),
        );
        registry.register(
            "requests_sent",
            "Requests sent to agents, by method",
            m.sent.clone(),
        );
        registry.register(
            "requests_answered",
            "Answers received from agents, by method and retcode",
            m.answered.clone(),
        );
        registry.register(
            "answer_seconds",
            "Time from sending a request to its answer, per host",
            m.answer_seconds.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Time from the start of a call to its last answer (or timeout)",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "store_seconds",
            "Store operation latency, by operation",
            m.store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by operation",
            m.store_errors.clone(),
        );
        registry.register(
            "task_results",
            "task.done results stored",
            m.task_results.clone(),
        );
        registry.register(
            "fds_open",
            "File descriptors open in the server process",
            m.fds_open.clone(),
        );
        registry.register(
            "fds_limit",
            "RLIMIT_NOFILE soft limit of the server process",
            m.fds_limit.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a refused session.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Times one store operation.
    pub fn store_op(&self, op: &str, seconds: f64, ok: bool) {
        let label = Op { op: op.to_owned() };
        self.store_seconds.get_or_create(&label).observe(seconds);
        if !ok {
            self.store_errors.get_or_create(&label).inc();
        }
    }

    /// The text exposition (descriptor gauges refreshed first).
    pub fn render(&self) -> String {
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds_open.set(dir.count() as i64);
        }
        self.fds_limit
            .set(i64::try_from(crate::serve::nofile_limit()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("metrics encoding: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("getinfo.kernel"), "getinfo.kernel");
        assert_eq!(method_label("Evil\"{}"), "other");
        assert_eq!(method_label(&"a".repeat(100)), "other");
    }
}
