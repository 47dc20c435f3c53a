//! PostgreSQL-only behaviour: several nodes (several `PgStore`s, each with
//! its own connections) on one database at once, migrations, refusals, and
//! batches at fleet size. Against a real PostgreSQL (scripts/pg.sh).
#![cfg(feature = "postgres")]

mod common;

use std::sync::{Arc, Barrier};

use basicagent_store::{
    AgentRecord, CallRecord, HostResult, PgOptions, PgStore, Store, StoreError, TaskResult,
    PG_SCHEMA_VERSION,
};
use common::pg;

fn task(host: &str, id: &str, at: i64) -> TaskResult {
    TaskResult {
        host: host.into(),
        task: id.into(),
        received_at: at,
        retcode: 0,
        message: format!("from {host}"),
        frame: format!(r#"{{"event":"task.done","task":"{id}"}}"#),
        schedule: None,
    }
}

/// A raw client on the test cluster, with `search_path` set to `schema`.
fn raw(schema: &str) -> postgres::Client {
    let mut c = postgres::Client::connect(&pg::pg().url, postgres::NoTls).unwrap();
    c.batch_execute(&format!("SET search_path = {schema}"))
        .unwrap();
    c
}

/// Four nodes receive the same re-delivered results at the same moment
/// (each batch in another order, overlapping): every result is stored
/// exactly once, and the "new" counts the nodes report add up to the number
/// of distinct results: each was new on exactly one node.
#[test]
fn concurrent_put_tasks_of_the_same_results_store_each_once() {
    let options = pg::options();
    let first = pg::open(&options);
    let nodes: Vec<Arc<PgStore>> = std::iter::once(first)
        .chain((1..4).map(|_| pg::open(&options)))
        .map(Arc::new)
        .collect();
    let rounds: usize = 20;
    let per_round: usize = 50;
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let store = Arc::clone(store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut new = 0usize;
                for round in 0..rounds {
                    let mut batch: Vec<TaskResult> = (0..per_round)
                        .map(|i| task(&format!("h{}", i % 7), &format!("r{round}-t{i}"), i as i64))
                        .collect();
                    // Each node gets the batch in another order.
                    batch.rotate_left((n * 13) % per_round);
                    if n % 2 == 1 {
                        batch.reverse();
                    }
                    barrier.wait();
                    new += store.put_tasks(&batch).unwrap();
                }
                new
            })
        })
        .collect();
    let new: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(new, rounds * per_round);
    let stored = nodes[0].tasks(None, usize::MAX).unwrap();
    assert_eq!(stored.len(), rounds * per_round);
    let mut keys: Vec<(String, String)> = stored
        .iter()
        .map(|t| (t.host.clone(), t.task.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), rounds * per_round);
}

/// Four nodes start at once on an empty database: the schema is migrated
/// once (one row per migration), every node opens, and they share it.
#[test]
fn nodes_migrating_the_same_empty_database_at_once_make_one_schema() {
    let options = pg::options();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let options = options.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::open_with(&pg::pg().url, &options)
            })
        })
        .collect();
    let stores: Vec<PgStore> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let mut c = raw(&options.schema);
    let versions: Vec<i64> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=PG_SCHEMA_VERSION).collect::<Vec<_>>());
    for s in &stores {
        assert_eq!(s.info().unwrap().schema_version, PG_SCHEMA_VERSION);
    }
    // One database: what one node writes, the others read.
    stores[0].put_tasks(&[task("h", "t", 1)]).unwrap();
    assert_eq!(stores[3].task("t").unwrap().len(), 1);
}

/// A schema written by a newer server is refused, untouched.
#[test]
fn a_future_schema_is_refused() {
    let options = pg::options();
    drop(pg::open(&options));
    let mut c = raw(&options.schema);
    c.execute(
        "INSERT INTO schema_migrations VALUES ($1, 0, 'from the future')",
        &[&(PG_SCHEMA_VERSION + 1)],
    )
    .unwrap();
    match PgStore::open_with(&pg::pg().url, &options) {
        Err(StoreError::FutureSchema {
            found, supported, ..
        }) => {
            assert_eq!(
                (found, supported),
                (PG_SCHEMA_VERSION + 1, PG_SCHEMA_VERSION)
            );
        }
        Err(e) => panic!("expected FutureSchema, got {e:?}"),
        Ok(_) => panic!("a future schema was opened"),
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, PG_SCHEMA_VERSION + 1);
}

/// A schema that holds someone else's tables is refused, untouched.
#[test]
fn a_schema_of_another_application_is_refused() {
    let options = pg::options();
    let mut c = postgres::Client::connect(&pg::pg().url, postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "CREATE SCHEMA {0}; CREATE TABLE {0}.agents (x int); INSERT INTO {0}.agents VALUES (1)",
        options.schema
    ))
    .unwrap();
    match PgStore::open_with(&pg::pg().url, &options) {
        Err(StoreError::NotOurs { reason, .. }) => assert!(reason.contains("schema_migrations")),
        Err(e) => panic!("expected NotOurs, got {e:?}"),
        Ok(_) => panic!("another application's schema was opened"),
    }
    let n: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {}.agents", options.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Nothing listens on the port: opening is a typed `Unavailable`, at once.
#[test]
fn no_database_listening_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is closed here: nothing listens on `port`.
    let url = format!("postgres://basicagent:x@127.0.0.1:{port}/postgres");
    match PgStore::open(&url) {
        Err(StoreError::Unavailable(reason)) => assert!(!reason.is_empty()),
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
}

/// A wrong password is a clear error (not "unavailable": retrying will not
/// help), and does not leak the URL's password in the message.
#[test]
fn a_wrong_password_is_a_clear_error() {
    let url = pg::pg().url.replacen("basicagent:", "basicagent:wrong", 1);
    let err = PgStore::open(&url).expect_err("opened with a wrong password");
    assert!(
        matches!(err, StoreError::Pg(_)),
        "expected Pg(authentication), got {err:?}"
    );
    let text = format!("{err}");
    assert!(text.contains("password"), "{text}");
}

/// The fleet's sizes in one call each: 19 000 results of one call, 19 000
/// agents with the node holding each; all stored, first-wins kept.
#[test]
fn fleet_sized_batches_and_the_node_of_each_agent() {
    let options = pg::options();
    let a = pg::open(&options);
    let b = pg::open(&options);
    let agent = |i: usize, node: &str| AgentRecord {
        host: format!("{i:08x}"),
        name: format!("web-{i}"),
        addr: "127.0.0.1:1".into(),
        version: "0.1.0".into(),
        plugins: vec!["getinfo.kernel".into()],
        node: Some(node.into()),
        connected_at: 5,
    };
    let on_a: Vec<AgentRecord> = (0..19_000)
        .filter(|i| i % 2 == 0)
        .map(|i| agent(i, "node-a"))
        .collect();
    let on_b: Vec<AgentRecord> = (0..19_000)
        .filter(|i| i % 2 == 1)
        .map(|i| agent(i, "node-b"))
        .collect();
    a.agents_seen(&on_a).unwrap();
    b.agents_seen(&on_b).unwrap();
    let all = b.agents().unwrap();
    assert_eq!(all.len(), 19_000);
    for (i, row) in all.iter().enumerate() {
        assert_eq!(row.host, format!("{i:08x}"));
        let want = if i % 2 == 0 { "node-a" } else { "node-b" };
        assert_eq!(row.node.as_deref(), Some(want));
    }

    let id = a
        .call_begin(&CallRecord {
            who: "op".into(),
            at: 1,
            target: "{}".into(),
            request: "{}".into(),
        })
        .unwrap();
    let results: Vec<HostResult> = (0..19_000)
        .map(|i| HostResult {
            host: format!("{i:08x}"),
            at: 2,
            retcode: (i % 3) as i64,
            response: format!(r#"{{"i":{i},"nul":"\u0000"}}"#),
        })
        .collect();
    a.call_results(id, &results).unwrap();
    // Re-sent (by another node): nothing changes.
    b.call_results(id, &results[..100]).unwrap();
    let (_, got) = b.call(id).unwrap().unwrap();
    assert_eq!(got, results);
}

/// TLS is not supported yet: asking for it is refused before connecting,
/// not silently downgraded (and not reported as "unavailable").
#[test]
fn sslmode_require_is_refused_not_downgraded() {
    let url = format!("{}?sslmode=require", pg::pg().url);
    match PgStore::open(&url) {
        Err(StoreError::Open { source, .. }) => {
            assert!(source.to_string().contains("TLS"), "{source}")
        }
        Err(e) => panic!("expected Open, got {e:?}"),
        Ok(_) => panic!("connected without TLS although sslmode=require"),
    }
    // sslmode=disable (and the default, prefer) connect in clear.
    let url = format!("{}?sslmode=disable", pg::pg().url);
    let options = pg::options();
    PgStore::open_with(&url, &options).unwrap();
}

/// Something holds the tasks table locked (an operator's transaction left
/// open, a long migration): a write gives up after `statement_timeout` with
/// `Unavailable` instead of hanging, and works once the lock is gone.
#[test]
fn a_locked_table_times_out_as_unavailable_then_works() {
    let options = PgOptions {
        statement_timeout: std::time::Duration::from_millis(500),
        ..pg::options()
    };
    let url = format!("{}?application_name=cp_pg_lock_test", pg::pg().url);
    let store = PgStore::open_with(&url, &options).unwrap();
    let mut holder = raw(&options.schema);
    let mut watcher = postgres::Client::connect(&pg::pg().url, postgres::NoTls).unwrap();
    let mut connections = || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cp_pg_lock_test'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(connections(), 1);
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    match store.put_tasks(&[task("h", "t", 1)]) {
        Err(StoreError::Unavailable(reason)) => eprintln!("while locked: {reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A timeout is not a broken connection: it is kept, not reopened.
    assert_eq!(connections(), 1);
    // Other tables are not blocked.
    assert!(store.agents().unwrap().is_empty());
    tx.rollback().unwrap();
    assert_eq!(store.put_tasks(&[task("h", "t", 1)]).unwrap(), 1);
}

/// A pool of one connection shared by six threads: every call gets its
/// turn, none fails, and no second connection is opened.
#[test]
fn a_pool_of_one_serves_many_threads() {
    let options = PgOptions {
        pool_size: 1,
        ..pg::options()
    };
    let store = Arc::new(pg::open(&options));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..30 {
                    store
                        .put_tasks(&[task(&format!("h{t}"), &format!("t{i}"), i)])
                        .unwrap();
                    store.tasks(Some(&format!("h{t}")), 5).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.tasks(None, 1000).unwrap().len(), 180);
    assert_eq!(store.info().unwrap().connections, 1);
}

/// A server may call the store from async code by mistake (not through
/// spawn_blocking): tokio forbids blocking on a second runtime there, so
/// the store runs its I/O on a thread of its own instead of panicking.
#[test]
fn called_from_inside_an_async_runtime_it_works() {
    let store = pg::open(&pg::options());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(store.put_tasks(&[task("h", "t", 1)]).unwrap(), 1);
        assert_eq!(store.task("t").unwrap().len(), 1);
        assert_eq!(store.agent("h").unwrap(), None);
        // Its connections closed here too, without blocking.
        drop(store);
        // And a connection that fails (nothing listens) fails cleanly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://basicagent:x@127.0.0.1:{port}/postgres");
        assert!(matches!(
            PgStore::open(&url),
            Err(StoreError::Unavailable(_))
        ));
    });
}
