//! The store seen from the server: one writer thread that batches writes, and blocking reads for the API.
//!
//! Sessions and calls never write to the store themselves: they queue an
//! [`Op`] and go on. The writer thread takes everything queued (up to
//! [`BATCH`] ops), groups it by kind and writes each group with one store
//! call (one transaction): a fan-out to 19 000 hosts becomes a handful of
//! `call_results` transactions, not 19 000. Task results are the exception
//! to "fire and forget": the session waits for the commit (a oneshot
//! answer) before it acknowledges `task.done`, so an acked result is on
//! disk. Reads (`GET /v1/...`) call the store on tokio's blocking pool.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basicagent_store::{AgentRecord, CallId, HostResult, Millis, Retention, Store, TaskResult};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Most ops written in one round.
pub const BATCH: usize = 8192;

/// Unix time in milliseconds.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One queued write.
pub enum Op {
    Seen(AgentRecord),
    Gone {
        host: String,
        at: Millis,
    },
    Fact {
        host: String,
        method: String,
        data: String,
        at: Millis,
    },
    Results(CallId, Vec<HostResult>),
    CallEnd {
        call: CallId,
        summary: String,
        at: Millis,
    },
    Task(TaskResult, oneshot::Sender<Result<(), String>>),
}

/// Why a read (or `call_begin`) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The database cannot be reached now (PostgreSQL down or restarting);
    /// the API answers 503.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure.
    #[error("{0}")]
    Failed(String),
}

/// The server's handle: queue writes, run reads.
#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn Store>,
    tx: Sender<Op>,
    metrics: Arc<Metrics>,
    /// Set when an `agents_seen`/`agents_gone` write failed (the store was
    /// down): the agents table may lag this node's sessions until a resync.
    agents_stale: Arc<std::sync::atomic::AtomicBool>,
}

impl Storage {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> std::io::Result<Storage> {
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = store.clone();
        let writer_metrics = metrics.clone();
        let agents_stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stale = agents_stale.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&*writer, &rx, &writer_metrics, &stale))?;
        Ok(Storage {
            store,
            tx,
            metrics,
            agents_stale,
        })
    }

    /// Marks the agents table stale again (a resync that could not run).
    pub fn queue_stale(&self) {
        self.agents_stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once after an agents write failed (then cleared).
    pub fn take_agents_stale(&self) -> bool {
        self.agents_stale
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a write (never blocks).
    pub fn queue(&self, op: Op) {
        if self.tx.send(op).is_err() {
            log::error!("store writer is gone; a write was dropped");
        }
    }

    /// Stores one task result and waits for the commit; `Ok` once durable.
    pub async fn put_task(&self, result: TaskResult) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.queue(Op::Task(result, tx));
        rx.await
            .unwrap_or_else(|_| Err("store writer is gone".into()))
    }

    /// Runs a read (or `call_begin`) on the blocking pool; timed as op `read`.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, basicagent_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let done = tokio::task::spawn_blocking(move || f(&*store)).await;
        let ok = matches!(done, Ok(Ok(_)));
        metrics.store_op("read", started.elapsed().as_secs_f64(), ok);
        match done {
            Ok(r) => r.map_err(|e| match e {
                basicagent_store::StoreError::Unavailable(_) => {
                    ReadError::Unavailable(e.to_string())
                }
                e => ReadError::Failed(e.to_string()),
            }),
            Err(e) => Err(ReadError::Failed(format!("store task: {e}"))),
        }
    }

    /// Prunes by `retention` every `every` (the first time right away).
    pub fn spawn_pruner(&self, retention: Retention, every: Duration, metrics: Arc<Metrics>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let store = store.clone();
                let retention = retention.clone();
                let started = Instant::now();
                let done =
                    tokio::task::spawn_blocking(move || store.prune(now_millis(), &retention))
                        .await;
                let ok = matches!(done, Ok(Ok(_)));
                metrics.store_op("prune", started.elapsed().as_secs_f64(), ok);
                match done {
                    Ok(Ok(p)) => log::info!(
                        "store pruned: {} calls, {} results, {} tasks",
                        p.calls,
                        p.results,
                        p.tasks
                    ),
                    Ok(Err(e)) => log::error!("store prune: {e}"),
                    Err(e) => log::error!("store prune task: {e}"),
                }
            }
        });
    }
}

fn timed<T>(
    metrics: &Metrics,
    op: &str,
    f: impl FnOnce() -> Result<T, basicagent_store::StoreError>,
) -> Result<T, String> {
    let started = Instant::now();
    let r = f();
    metrics.store_op(op, started.elapsed().as_secs_f64(), r.is_ok());
    r.map_err(|e| {
        log::error!("store {op}: {e}");
        e.to_string()
    })
}

/// Facts written per round at most: each is its own transaction in the
/// store, so a fan-out of `getinfo.*` to a whole fleet must not hold up
/// task acknowledgements and call results behind thousands of them.
pub const FACTS_PER_ROUND: usize = 128;

/// Facts waiting to be written: the latest per (host, method) only.
type PendingFacts = std::collections::HashMap<(String, String), (String, Millis)>;

fn write_loop(
    store: &dyn Store,
    rx: &Receiver<Op>,
    metrics: &Metrics,
    agents_stale: &std::sync::atomic::AtomicBool,
) {
    let mut facts = PendingFacts::new();
    loop {
        let first = if facts.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        } else {
            rx.try_recv().ok()
        };
        let mut ops: Vec<Op> = first.into_iter().collect();
        while !ops.is_empty() && ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if !write_batch(store, ops, &mut facts, metrics) {
            agents_stale.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        write_facts(store, &mut facts, metrics);
    }
}

fn write_facts(store: &dyn Store, facts: &mut PendingFacts, metrics: &Metrics) {
    let keys: Vec<(String, String)> = facts.keys().take(FACTS_PER_ROUND).cloned().collect();
    for key in keys {
        if let Some((data, at)) = facts.remove(&key) {
            let (host, method) = key;
            let _ = timed(metrics, "agent_fact", || {
                store.agent_fact(&host, &method, &data, at)
            });
        }
    }
}

/// Writes one batch, keeping the order that matters: task commits first
/// (agents wait for them), agents before their facts, a call's results
/// before its end. Facts join the pending set (written a few per round).
/// False when an agents write failed.
fn write_batch(
    store: &dyn Store,
    ops: Vec<Op>,
    facts: &mut PendingFacts,
    metrics: &Metrics,
) -> bool {
    let mut agents_ok = true;
    let mut seen = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    let mut gone_at: Millis = 0;
    let mut results: BTreeMap<CallId, Vec<HostResult>> = BTreeMap::new();
    let mut ends = Vec::new();
    let mut tasks = Vec::new();
    let mut waiting = Vec::new();
    for op in ops {
        match op {
            Op::Seen(r) => seen.push(r),
            Op::Gone { host, at } => {
                gone.push(host);
                gone_at = gone_at.max(at);
            }
            Op::Fact {
                host,
                method,
                data,
                at,
            } => {
                facts.insert((host, method), (data, at));
            }
            Op::Results(call, r) => results.entry(call).or_default().extend(r),
            Op::CallEnd { call, summary, at } => ends.push((call, summary, at)),
            Op::Task(t, reply) => {
                tasks.push(t);
                waiting.push(reply);
            }
        }
    }
    if !tasks.is_empty() {
        let outcome = timed(metrics, "put_tasks", || store.put_tasks(&tasks));
        if outcome.is_ok() {
            metrics.task_results.inc_by(tasks.len() as u64);
        }
        for reply in waiting {
            let _ = reply.send(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        }
    }
    if !seen.is_empty() {
        agents_ok &= timed(metrics, "agents_seen", || store.agents_seen(&seen)).is_ok();
    }
    if !gone.is_empty() {
        // One transaction; last_seen is the batch's latest time (a few ms late at most).
        agents_ok &= timed(metrics, "agents_gone", || store.agents_gone(&gone, gone_at)).is_ok();
    }
    for (call, r) in results {
        let _ = timed(metrics, "call_results", || store.call_results(call, &r));
    }
    for (call, summary, at) in ends {
        let _ = timed(metrics, "call_end", || store.call_end(call, &summary, at));
    }
    agents_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_store::MemoryStore;

    #[test]
    fn a_fact_storm_does_not_hold_up_tasks_and_keeps_the_latest_fact() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let storage = Storage::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        storage.queue(Op::Seen(AgentRecord {
            host: "h".into(),
            name: "n".into(),
            addr: "a".into(),
            version: "v".into(),
            plugins: vec![],
            node: None,
            connected_at: 1,
        }));
        for i in 0..5_000 {
            storage.queue(Op::Fact {
                host: "h".into(),
                method: format!("getinfo.m{}", i % 300),
                data: format!("{{\"i\":{i}}}"),
                at: i,
            });
        }
        let (tx, rx) = oneshot::channel();
        storage.queue(Op::Task(
            TaskResult {
                host: "h".into(),
                task: "t".into(),
                received_at: 1,
                retcode: 2,
                message: "m".into(),
                frame: "{}".into(),
                schedule: None,
            },
            tx,
        ));
        assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
        assert_eq!(store.task("t").unwrap().len(), 1);
        // Eventually every method has its latest value.
        let start = Instant::now();
        loop {
            // (The task may be committed before the agent row of the same batch.)
            let facts = store
                .agent("h")
                .unwrap()
                .map(|a| a.facts)
                .unwrap_or_default();
            let last = facts.iter().find(|f| f.method == "getinfo.m299");
            if facts.len() == 300 && last.is_some_and(|f| f.data == "{\"i\":4799}") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
