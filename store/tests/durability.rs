//! Durability across `kill -9`: a child process (this test binary re-run
//! with an environment variable) stores task results and prints each
//! (host, task) after `put_tasks` returned; the parent SIGKILLs it at a
//! random moment, reopens the file and checks that every acked result is
//! there exactly once. Several rounds on the same file, each re-delivering
//! results acked before, as an agent does after a lost ack. The child also
//! stores calls and prunes, so kills land in those transactions too; the
//! parent checks the file's integrity and the call bookkeeping after each.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use basicagent_store::{CallRecord, HostResult, Retention, SqliteStore, Store, TaskResult};

const CHILD_ENV: &str = "BASICAGENT_STORE_DURABILITY_CHILD";

fn task(host: &str, id: &str) -> TaskResult {
    TaskResult {
        host: host.into(),
        task: id.into(),
        received_at: 1,
        retcode: 0,
        message: "ok".into(),
        frame: format!(
            r#"{{"event":"task.done","task":"{id}","output":"{}"}}"#,
            "x".repeat(300)
        ),
        schedule: None,
    }
}

/// Only does something in the child: writes batches until killed (or until
/// its bound, or until the parent is gone and stdout fails).
#[test]
fn child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, round) = spec.split_once('\t').expect("spec is PATH\\tROUND");
    let store = SqliteStore::open(Path::new(path)).expect("child opens the store");
    let mut out = std::io::stdout().lock();
    let mut previous: Vec<TaskResult> = Vec::new();
    for batch_no in 0..20_000u32 {
        let size = 1 + (batch_no as usize * 7) % 60;
        let host = format!("host-{}", batch_no % 5);
        let mut batch: Vec<TaskResult> = (0..size)
            .map(|i| task(&host, &format!("r{round}-b{batch_no}-{i}")))
            .collect();
        // Re-deliver a few of the last batch (acked, but say the ack was lost).
        batch.extend(previous.iter().take(3).cloned());
        store.put_tasks(&batch).expect("put_tasks");
        for t in &batch {
            if writeln!(out, "ACK {} {}", t.host, t.task).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
        previous = batch;
        // Calls and prunes in between, so kills land in those transactions too.
        if batch_no % 7 == 0 {
            let id = store
                .call_begin(&CallRecord {
                    who: "child".into(),
                    at: 1,
                    target: r#"{"all":true}"#.into(),
                    request: r#"{"method":"ping"}"#.into(),
                })
                .expect("call_begin");
            let results: Vec<HostResult> = (0..30)
                .map(|h| HostResult {
                    host: format!("host-{h}"),
                    at: 1,
                    retcode: 0,
                    response: r#"{"retcode":0}"#.into(),
                })
                .collect();
            store.call_results(id, &results).expect("call_results");
            store
                .call_end(id, r#"{"answered":30}"#, 2)
                .expect("call_end");
        }
        if batch_no % 50 == 49 {
            let keep_20_calls = Retention {
                max_calls: 20,
                ..Retention::default()
            };
            store.prune(1_000, &keep_20_calls).expect("prune");
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn acked_task_results_survive_kill_9_exactly_once() {
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashSet<(String, String)> = HashSet::new();

    for round in 0..8 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}\t{round}", path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 1 + rng.below(1500);
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (h, t) = rest.split_once(' ').unwrap();
                acked.insert((h.to_owned(), t.to_owned()));
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        // Land the kill at a random point of the next put_tasks.
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().unwrap(); // SIGKILL
                               // Acks the child printed before it died are acks too.
        for line in lines {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (h, t) = rest.split_once(' ').unwrap();
                acked.insert((h.to_owned(), t.to_owned()));
            }
        }
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the child was to be killed, not {status:?}"
        );

        let store = SqliteStore::open(&path).unwrap();
        store.quick_check().unwrap();
        // Every call's stored result count (what prune sizes calls by)
        // matches its rows: call_results and its counter commit together.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let wrong: i64 = conn
                .query_row(
                    "SELECT count(*) FROM calls c
                     WHERE results != (SELECT count(*) FROM call_results r WHERE r.call = c.id)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(wrong, 0, "round {round}: calls with a wrong result count");
            let orphans: i64 = conn
                .query_row(
                    "SELECT count(*) FROM call_results WHERE call NOT IN (SELECT id FROM calls)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(orphans, 0, "round {round}: results of pruned calls left");
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
        eprintln!(
            "round {round}: killed after {seen}+ acks, {} acked, {} stored",
            acked.len(),
            stored.len()
        );
    }
    assert!(!acked.is_empty());
}
