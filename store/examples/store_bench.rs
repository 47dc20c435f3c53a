//! Measures the store at fleet scale: put_tasks throughput (batches of 1,
//! 100, 1000; synchronous FULL vs NORMAL), call_results of 19 000 rows in
//! one batch, agents_seen of 19 000 agents, agents() at 19 000 rows, and a
//! few reads and a prune. Bounded: a few seconds in release mode.
//!
//! `cargo run --release -p basicagent-store --example store_bench [DIR [full|normal|prune|memory|pg|all]]`
//! (DIR: where the database files go, on the disk to measure; default: a
//! temporary directory under the system's temp dir).
//!
//! `pg` (in `all` too, with the `postgres` feature): the same against
//! PostgreSQL at `$BA_PG_URL`, or, without it, a throwaway cluster that
//! `scripts/pg.sh` starts in the temp dir and stops when the bench exits. The
//! tables go into a schema of their own, dropped at the end. PostgreSQL's
//! own CPU is in another process: its "cpu" column is the client's only.

use std::path::Path;
use std::time::{Duration, Instant};

use basicagent_store::{
    AgentRecord, CallRecord, HostResult, MemoryStore, Retention, SqliteOptions, SqliteStore, Store,
    Synchronous, TaskResult,
};

const HOSTS: usize = 19_000;

fn task(host: usize, n: usize) -> TaskResult {
    TaskResult {
        host: format!("{host:08x}-0000-4000-8000-000000000000"),
        task: format!("task-{n}"),
        received_at: n as i64,
        retcode: 0,
        message: "exit 0".into(),
        frame: format!(
            r#"{{"event":"task.done","task":"task-{n}","retcode":0,"stdout":"{}","stderr":""}}"#,
            "o".repeat(200)
        ),
        schedule: None,
    }
}

fn agent(i: usize, at: i64) -> AgentRecord {
    AgentRecord {
        host: format!("{i:08x}-0000-4000-8000-000000000000"),
        name: format!("web-{i:05}.example.org"),
        addr: format!("127.0.{}.{}:{}", i / 250, 1 + i % 250, 40_000 + i % 20_000),
        version: "0.1.0".into(),
        plugins: [
            "getinfo.kernel",
            "getinfo.os",
            "getinfo.cpu",
            "getinfo.memory",
            "sync.bash",
            "async.bash",
        ]
        .map(String::from)
        .to_vec(),
        node: None,
        connected_at: at,
    }
}

fn kernel_result(i: usize) -> HostResult {
    HostResult {
        host: format!("{i:08x}-0000-4000-8000-000000000000"),
        at: 1_000,
        retcode: 0,
        response: format!(
            r#"{{"id":7,"retcode":0,"data":{{"sysname":"Linux","release":"6.1.0-{i}-amd64","version":"SMP PREEMPT_DYNAMIC Debian 6.1.112-1","machine":"x86_64"}}}}"#
        ),
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn put_tasks_throughput(store: &dyn Store, label: &str) {
    let mut n = 0;
    // (batch size, batches): about 300–20 000 results each.
    for (size, batches) in [(1usize, 300usize), (100, 100), (1000, 20)] {
        let batches_of: Vec<Vec<TaskResult>> = (0..batches)
            .map(|b| {
                (0..size)
                    .map(|i| task((b * size + i) % HOSTS, n + b * size + i))
                    .collect()
            })
            .collect();
        n += size * batches;
        let t = Timer::start();
        let wall = Instant::now();
        let mut each = Vec::with_capacity(batches);
        for batch in &batches_of {
            let one = Instant::now();
            store.put_tasks(batch).expect("put_tasks");
            each.push(one.elapsed());
        }
        let d = wall.elapsed();
        each.sort_unstable();
        let at = |q: f64| ms(each[((each.len() - 1) as f64 * q) as usize]);
        println!(
            "{label:<14} put_tasks batch {size:>4}: {:>7.0} results/s; per batch {}; p50 {:.3} p99 {:.3} max {:.3} ms",
            per_sec(size * batches, d),
            t.per(batches),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

fn host(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

fn fleet(store: &dyn Store, label: &str) {
    let agents: Vec<AgentRecord> = (0..HOSTS).map(|i| agent(i, 1)).collect();
    let t = Timer::start();
    store.agents_seen(&agents).expect("agents_seen");
    println!("{label:<14} agents_seen {HOSTS} new      {}", t.per(1));
    let agents: Vec<AgentRecord> = (0..HOSTS).map(|i| agent(i, 2)).collect();
    let t = Timer::start();
    store.agents_seen(&agents).expect("agents_seen");
    println!("{label:<14} agents_seen {HOSTS} upsert   {}", t.per(1));
    let t = Timer::start();
    let all = store.agents().expect("agents");
    assert_eq!(all.len(), HOSTS);
    println!("{label:<14} agents() at {HOSTS}          {}", t.per(1));
    let t = Timer::start();
    for i in (0..HOSTS).step_by(19) {
        store.agent(&host(i)).expect("agent");
    }
    println!("{label:<14} agent(host), per call      {}", t.per(1000));

    let results: Vec<HostResult> = (0..HOSTS).map(kernel_result).collect();
    let calls = 5;
    let mut ids = Vec::new();
    let t = Timer::start();
    for c in 0..calls {
        let id = store
            .call_begin(&CallRecord {
                who: "bench".into(),
                at: c,
                target: r#"{"all":true}"#.into(),
                request: r#"{"method":"getinfo.kernel"}"#.into(),
            })
            .expect("call_begin");
        store.call_results(id, &results).expect("call_results");
        store
            .call_end(id, r#"{"targeted":19000}"#, c)
            .expect("call_end");
        ids.push(id);
    }
    println!(
        "{label:<14} call_results {HOSTS} rows     {} (per call, begin+results+end, mean of {calls})",
        t.per(calls as usize)
    );
    let t = Timer::start();
    let (_, rows) = store.call(ids[2]).expect("call").expect("the call");
    assert_eq!(rows.len(), HOSTS);
    println!("{label:<14} call(id) with {HOSTS} rows  {}", t.per(1));
    let t = Timer::start();
    for i in (0..HOSTS).step_by(19) {
        store.host_calls(&host(i), 10).expect("host_calls");
    }
    println!("{label:<14} host_calls, per call       {}", t.per(1000));
    let t = Timer::start();
    for i in (0..HOSTS).step_by(19) {
        store.tasks(Some(&host(i)), 10).expect("tasks");
    }
    println!("{label:<14} tasks(host, 10), per call  {}", t.per(1000));
    let t = Timer::start();
    let pruned = store
        .prune(
            i64::MAX / 2,
            &Retention {
                max_calls: 2,
                ..Retention::default()
            },
        )
        .expect("prune");
    println!(
        "{label:<14} prune {} calls, {} results, {} tasks: {}",
        pruned.calls,
        pruned.results,
        pruned.tasks,
        t.per(1)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of this thread (SQLite runs in the caller's thread, so this is
/// the store's CPU cost; waiting for fsync is not in it). The machine is
/// shared, so wall times carry other processes' load; CPU times do less.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; the clock id is a constant
    // the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Wall and CPU time since it was started.
struct Timer {
    wall: Instant,
    cpu: Duration,
}

impl Timer {
    fn start() -> Self {
        Timer {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }
    /// "W ms wall, C ms cpu", each divided by `n`.
    fn per(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        format!(
            "{:>8.3} ms wall {:>8.3} ms cpu",
            ms(self.wall.elapsed()) / n,
            ms(thread_cpu().saturating_sub(self.cpu)) / n
        )
    }
}

fn main() {
    let arg = std::env::args_os().nth(1);
    let tmp;
    let dir: &Path = match &arg {
        Some(d) => Path::new(d),
        None => {
            tmp = std::env::temp_dir().join(format!("store-bench-{}", std::process::id()));
            &tmp
        }
    };
    println!("database files in {}", dir.display());
    let which = std::env::args().nth(2).unwrap_or_else(|| "all".into());
    for (sync, label) in [
        (Synchronous::Full, "sqlite FULL"),
        (Synchronous::Normal, "sqlite NORMAL"),
    ] {
        if which != "all" && !label.to_lowercase().ends_with(&which) {
            continue;
        }
        let path = dir.join(format!("{label}.db").replace(' ', "-"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let store = SqliteStore::open_with(
            &path,
            &SqliteOptions {
                synchronous: sync,
                ..SqliteOptions::default()
            },
        )
        .expect("open");
        put_tasks_throughput(&store, label);
        fleet(&store, label);
        let info = store.info().expect("info");
        println!(
            "{label:<14} file {:.1} MiB, wal {:.1} MiB",
            info.db_bytes as f64 / 1048576.0,
            info.wal_bytes as f64 / 1048576.0
        );
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if which == "all" || which == "prune" {
        // A prune with nothing to remove, at 10 000 calls (it reads one small
        // row per call; the cost does not depend on the sync mode).
        let path = dir.join("prune.db");
        let store = SqliteStore::open_with(
            &path,
            &SqliteOptions {
                synchronous: Synchronous::Normal,
                ..SqliteOptions::default()
            },
        )
        .expect("open");
        for c in 0..10_000 {
            store
                .call_begin(&CallRecord {
                    who: "bench".into(),
                    at: c,
                    target: "{}".into(),
                    request: "{}".into(),
                })
                .expect("call_begin");
        }
        let t = Timer::start();
        let pruned = store.prune(10_000, &Retention::default()).expect("prune");
        assert_eq!(pruned.calls, 0);
        println!(
            "sqlite         prune, nothing to remove, 10 000 calls: {}",
            t.per(1)
        );
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    #[cfg(feature = "postgres")]
    if which == "all" || which == "pg" {
        postgres_bench();
    }
    if which != "all" && which != "memory" {
        return;
    }
    let memory = MemoryStore::new();
    put_tasks_throughput(&memory, "memory");
    fleet(&memory, "memory");
    if arg.is_none() {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(feature = "postgres")]
fn postgres_bench() {
    use basicagent_store::{PgOptions, PgStore};
    let url = match std::env::var("BA_PG_URL") {
        Ok(url) => url,
        Err(_) => {
            // Under the system's temp dir: the postgres user must reach it.
            let pg_dir =
                std::env::temp_dir().join(format!("store-bench-pg-{}", std::process::id()));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg("start")
                .arg(&pg_dir)
                .arg("--watch")
                .arg(std::process::id().to_string())
                .output()
                .expect("run scripts/pg.sh");
            assert!(
                out.status.success(),
                "pg.sh start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let schema = format!("bench_{}", std::process::id());
    let store = PgStore::open_with(
        &url,
        &PgOptions {
            schema: schema.clone(),
            ..PgOptions::default()
        },
    )
    .expect("open PostgreSQL");
    let info = store.info().expect("info");
    println!(
        "postgres       {} (server {})",
        store.describe(),
        info.server_version
    );
    put_tasks_throughput(&store, "postgres");
    fleet(&store, "postgres");
    drop(store);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .expect("drop the bench schema");
}
