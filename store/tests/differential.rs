//! Differential test: the same random sequence of operations (small key
//! spaces, so upserts, duplicates, ties and unknown ids happen often) is run
//! against `MemoryStore` and `SqliteStore` (and `PgStore`); every answer must be equal,
//! errors by kind. Seeded; the seed is printed on failure.

use std::time::Duration;

#[cfg(feature = "postgres")]
mod common;

use basicagent_store::{
    AgentRecord, CallRecord, HostResult, MemoryStore, Retention, SqliteOptions, SqliteStore, Store,
    StoreError, Synchronous, TaskResult,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick(&mut self, n: u64) -> usize {
        self.below(n) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn kind<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::UnknownCall(_)) => "unknown call",
        Err(StoreError::InvalidJson { .. }) => "invalid json",
        Err(_) => "other error",
    }
}

/// Compare the two answers: equal values, or errors of the same kind.
fn same<T: PartialEq + std::fmt::Debug>(
    op: &str,
    seed: u64,
    step: usize,
    a: Result<T, StoreError>,
    b: Result<T, StoreError>,
) {
    match (&a, &b) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "seed {seed:#x} step {step}: {op}"),
        _ => assert_eq!(
            kind(&a),
            kind(&b),
            "seed {seed:#x} step {step}: {op}: memory {a:?} vs other {b:?}"
        ),
    }
    // An error from an operation that should never fail is a failure.
    if let Err(e) = &a {
        assert!(
            !matches!(kind(&a), "other error"),
            "seed {seed:#x} step {step}: {op}: {e}"
        );
    }
}

fn json(rng: &mut Rng, text: &str) -> String {
    if rng.chance(3) {
        format!("{{\"broken\": {text}")
    } else {
        format!("{{\"v\": \"{text}\"}}")
    }
}

/// Run `steps` random operations on a new `MemoryStore` and on `other`
/// (an empty store of another backend).
fn run(seed: u64, steps: usize, other: &dyn Store) {
    let mut rng = Rng(seed | 1);
    let memory = MemoryStore::new();
    let stores: [&dyn Store; 2] = [&memory, other];
    let host = |rng: &mut Rng| format!("h{}", rng.below(6));
    let mut last_call = 0i64;

    for step in 0..steps {
        let at = rng.below(60) as i64;
        match rng.below(16) {
            0 => {
                let batch: Vec<AgentRecord> = (0..rng.below(4))
                    .map(|i| AgentRecord {
                        host: host(&mut rng),
                        name: format!("n{}", rng.below(3)),
                        addr: "127.0.0.1:1".into(),
                        version: format!("v{i}"),
                        plugins: (0..rng.below(3)).map(|p| format!("p{p}")).collect(),
                        node: rng.chance(30).then(|| "node".to_string()),
                        connected_at: rng.below(60) as i64,
                    })
                    .collect();
                let [a, b] = stores.map(|s| s.agents_seen(&batch));
                same("agents_seen", seed, step, a, b);
            }
            1 if rng.chance(20) => {
                let node = if rng.chance(50) { "node" } else { "other" };
                let [a, b] = stores.map(|s| s.node_gone(node, at));
                same("node_gone", seed, step, a, b);
            }
            1 => {
                let hosts: Vec<String> = (0..rng.below(3)).map(|_| host(&mut rng)).collect();
                let [a, b] = stores.map(|s| s.agents_gone(&hosts, at));
                same("agents_gone", seed, step, a, b);
            }
            2 => {
                let (h, m) = (host(&mut rng), format!("m{}", rng.below(3)));
                let data = json(&mut rng, &format!("{step}"));
                let [a, b] = stores.map(|s| s.agent_fact(&h, &m, &data, at));
                same("agent_fact", seed, step, a, b);
            }
            3 => {
                let h = host(&mut rng);
                let [a, b] = stores.map(|s| s.agent(&h));
                same("agent", seed, step, a, b);
            }
            4 => {
                let [a, b] = stores.map(|s| s.agents());
                same("agents", seed, step, a, b);
            }
            5 => {
                let call = CallRecord {
                    who: "w".into(),
                    at,
                    target: json(&mut rng, "t"),
                    request: json(&mut rng, "r"),
                };
                let [a, b] = stores.map(|s| s.call_begin(&call));
                if let Ok(id) = a {
                    last_call = id;
                }
                same("call_begin", seed, step, a, b);
            }
            6 | 7 => {
                let id = last_call - rng.below(3) as i64 + i64::from(rng.chance(5));
                let results: Vec<HostResult> = (0..rng.below(5))
                    .map(|i| HostResult {
                        host: host(&mut rng),
                        at,
                        retcode: i as i64,
                        response: json(&mut rng, "resp"),
                    })
                    .collect();
                let [a, b] = stores.map(|s| s.call_results(id, &results));
                same("call_results", seed, step, a, b);
            }
            8 => {
                let id = last_call - rng.below(3) as i64 + i64::from(rng.chance(5));
                let summary = json(&mut rng, "sum");
                let [a, b] = stores.map(|s| s.call_end(id, &summary, at));
                same("call_end", seed, step, a, b);
            }
            9 => {
                let limit = rng.pick(6);
                let before = rng.chance(50).then(|| last_call - rng.below(4) as i64 + 1);
                let [a, b] = stores.map(|s| s.calls(limit, before));
                same("calls", seed, step, a, b);
            }
            10 => {
                let id = last_call - rng.below(4) as i64 + 1;
                let [a, b] = stores.map(|s| s.call(id));
                same("call", seed, step, a, b);
            }
            11 => {
                let h = host(&mut rng);
                let limit = rng.pick(5);
                let [a, b] = stores.map(|s| s.host_calls(&h, limit));
                same("host_calls", seed, step, a, b);
            }
            12 | 13 => {
                let batch: Vec<TaskResult> = (0..rng.below(5))
                    .map(|_| TaskResult {
                        host: host(&mut rng),
                        task: format!("t{}", rng.below(20)),
                        received_at: rng.below(60) as i64,
                        retcode: rng.below(3) as i64,
                        message: format!("m{step}"),
                        frame: json(&mut rng, "frame"),
                        schedule: rng.chance(20).then(|| "hourly".to_string()),
                    })
                    .collect();
                let [a, b] = stores.map(|s| s.put_tasks(&batch));
                same("put_tasks", seed, step, a, b);
            }
            14 => {
                let h = rng.chance(50).then(|| host(&mut rng));
                let limit = rng.pick(8);
                let [a, b] = stores.map(|s| s.tasks(h.as_deref(), limit));
                same("tasks", seed, step, a, b);
                let t = format!("t{}", rng.below(20));
                let [a, b] = stores.map(|s| s.task(&t));
                same("task", seed, step, a, b);
            }
            _ => {
                if rng.chance(70) {
                    continue; // prune now and then only
                }
                let retention = Retention {
                    calls: Duration::from_millis(rng.below(80)),
                    tasks: Duration::from_millis(rng.below(80)),
                    max_calls: rng.below(12),
                    max_results: rng.below(30),
                    max_tasks: rng.below(40),
                };
                let now = rng.below(120) as i64;
                let [a, b] = stores.map(|s| s.prune(now, &retention));
                same("prune", seed, step, a, b);
            }
        }
    }
    // The end states agree too.
    let [a, b] = stores.map(|s| s.tasks(None, usize::MAX));
    same("final tasks", seed, steps, a, b);
    let [a, b] = stores.map(|s| s.calls(usize::MAX, None));
    same("final calls", seed, steps, a, b);
    let [a, b] = stores.map(|s| s.agents());
    same("final agents", seed, steps, a, b);
}

#[test]
fn memory_and_sqlite_answer_the_same_random_operations() {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Two fixed seeds (reproducible) and two new ones each run.
    for seed in [0x5eed_0001, 0x5eed_0002, base, base.rotate_left(17)] {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open_with(
            &dir.path().join("store.db"),
            &SqliteOptions {
                // Semantics, not durability, are compared here.
                synchronous: Synchronous::Normal,
                readers: 1,
                prune_chunk: 3,
            },
        )
        .unwrap();
        run(seed, 1500, &sqlite);
    }
}

/// The same against PostgreSQL (a throwaway cluster, scripts/pg.sh), each
/// seed in a schema of its own, prune in chunks of 3 rows, batches cut
/// into several statements.
#[cfg(feature = "postgres")]
#[test]
fn memory_and_postgres_answer_the_same_random_operations() {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for seed in [0x5eed_0001, 0x5eed_0002, base, base.rotate_left(17)] {
        let pg = common::pg::open(&basicagent_store::PgOptions {
            prune_chunk: 3,
            // Batches cut into statements of one or two rows.
            batch_bytes: 100,
            ..common::pg::options()
        });
        run(seed, 1500, &pg);
    }
}
