//! `kill -9` of nodes writing to PostgreSQL: two child processes (two
//! "nodes", this test binary re-run with an environment variable) receive
//! the same task results at the same time, as when an agent re-delivers to
//! another node a batch whose ack it lost; each prints (host, task) after
//! `put_tasks` returned. The parent SIGKILLs both at random moments, then
//! checks that every result either node acked is in PostgreSQL exactly
//! once, and that every call's result counter matches its rows. Several
//! rounds on the same schema, each re-delivering earlier acked results.
#![cfg(feature = "postgres")]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use basicagent_store::{CallRecord, HostResult, PgOptions, PgStore, Store, TaskResult};
use common::pg;

const CHILD_ENV: &str = "BASICAGENT_STORE_PG_KILL_CHILD";

fn task(host: &str, id: &str, node: &str) -> TaskResult {
    TaskResult {
        host: host.into(),
        task: id.into(),
        received_at: 1,
        retcode: 0,
        message: format!("via {node}"),
        frame: format!(
            r#"{{"event":"task.done","task":"{id}","output":"{}"}}"#,
            "x".repeat(200)
        ),
        schedule: None,
    }
}

/// Only does something in a child: stores batches until killed.
#[test]
fn child_node() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('\t');
    let (url, schema, round, node) = (
        parts.next().expect("url"),
        parts.next().expect("schema"),
        parts.next().expect("round"),
        parts.next().expect("node"),
    );
    let store = PgStore::open_with(
        url,
        &PgOptions {
            schema: schema.into(),
            pool_size: 2,
            ..PgOptions::default()
        },
    )
    .expect("child opens the store");
    let mut out = std::io::stdout().lock();
    for batch_no in 0..5_000u32 {
        let size = 1 + (batch_no as usize * 7) % 40;
        let host = format!("host-{}", batch_no % 5);
        // Both nodes get the same results; this round's and, re-delivered,
        // a few of the previous round's.
        let mut batch: Vec<TaskResult> = (0..size)
            .map(|i| task(&host, &format!("r{round}-b{batch_no}-{i}"), node))
            .collect();
        if let Some(prev) = round.parse::<u32>().ok().and_then(|r| r.checked_sub(1)) {
            batch.push(task(&host, &format!("r{prev}-b{batch_no}-0"), node));
        }
        store.put_tasks(&batch).expect("put_tasks");
        for t in &batch {
            if writeln!(out, "ACK {} {}", t.host, t.task).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
        if batch_no % 5 == 0 {
            let id = store
                .call_begin(&CallRecord {
                    who: node.into(),
                    at: 1,
                    target: "{}".into(),
                    request: "{}".into(),
                })
                .expect("call_begin");
            let results: Vec<HostResult> = (0..50)
                .map(|h| HostResult {
                    host: format!("host-{h}"),
                    at: 1,
                    retcode: 0,
                    response: r#"{"retcode":0}"#.into(),
                })
                .collect();
            store.call_results(id, &results).expect("call_results");
        }
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn spawn(url: &str, schema: &str, round: u32, node: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_node", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{url}\t{schema}\t{round}\t{node}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Read `child`'s acks into `acked` until it printed `n` (or ended).
fn read_acks(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    acked: &mut HashSet<(String, String)>,
    n: u64,
) -> u64 {
    let mut seen = 0;
    for line in lines {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (h, t) = rest.split_once(' ').unwrap();
            acked.insert((h.to_owned(), t.to_owned()));
            seen += 1;
            if seen >= n {
                break;
            }
        }
    }
    seen
}

#[test]
fn two_nodes_killed_while_storing_the_same_results_lose_and_duplicate_nothing() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id());
    eprintln!("seed {seed:#x}");
    let mut rng = Rng(seed | 1);
    let options = pg::options();
    let store = pg::open(&options);
    let url = &pg::pg().url;
    let mut acked: HashSet<(String, String)> = HashSet::new();

    for round in 0..4u32 {
        let mut a = spawn(url, &options.schema, round, "node-a");
        let mut b = spawn(url, &options.schema, round, "node-b");
        let mut a_lines = BufReader::new(a.stdout.take().unwrap()).lines();
        let mut b_lines = BufReader::new(b.stdout.take().unwrap()).lines();
        let seen_a = read_acks(&mut a_lines, &mut acked, 1 + rng.below(800));
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        a.kill().unwrap(); // SIGKILL, in the middle of whatever it does
        let seen_b = read_acks(&mut b_lines, &mut acked, 1 + rng.below(800));
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        b.kill().unwrap();
        // Acks printed before death are acks too.
        read_acks(&mut a_lines, &mut acked, u64::MAX);
        read_acks(&mut b_lines, &mut acked, u64::MAX);
        for (name, child) in [("a", &mut a), ("b", &mut b)] {
            let status = child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "round {round}: node {name} was to be killed, not {status:?}"
            );
        }

        let stored = store.tasks(None, usize::MAX).unwrap();
        let mut count: HashMap<(String, String), usize> = HashMap::new();
        for t in &stored {
            *count.entry((t.host.clone(), t.task.clone())).or_default() += 1;
        }
        for (key, n) in &count {
            assert_eq!(*n, 1, "round {round}: {key:?} stored {n} times");
        }
        let missing: Vec<_> = acked.iter().filter(|k| !count.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed:#x}): {} acked results lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let wrong: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {0}.calls c WHERE results !=
                       (SELECT count(*) FROM {0}.call_results r WHERE r.call = c.id)",
                    options.schema
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(wrong, 0, "round {round}: calls with a wrong result count");
        eprintln!(
            "round {round}: node a killed after {seen_a}+ acks, node b after {seen_b}+; \
             {} acked, {} stored",
            acked.len(),
            stored.len()
        );
    }
    assert!(!acked.is_empty());
}
