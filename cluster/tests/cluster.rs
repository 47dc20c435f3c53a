//! The cluster layer against a real nats-server 2.9 (Debian's, started by
//! scripts/nats.sh per test): membership, death, routing, fan-out, drain,
//! NATS restarts, hostile input.

mod util;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basicagent_cluster::{Cluster, ClusterError, ConnectionState, FanoutEvent, MemberEvent};
use bytes::Bytes;
use futures_util::StreamExt;
use util::*;

const T: Duration = Duration::from_secs(5);

/// The client's core features on the installed server: pub/sub,
/// request/reply with headers, "no responders". No JetStream is involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_core_features_work_against_installed_server() {
    let nats = Nats::start();
    let c = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    let info = c.server_info();
    eprintln!(
        "nats-server version {}, headers {}, max_payload {}",
        info.version, info.headers, info.max_payload
    );
    assert!(info.headers, "server must support headers");

    let mut sub = c.subscribe("t.pub").await.unwrap();
    c.publish("t.pub", "hello".into()).await.unwrap();
    let m = sub.next().await.unwrap();
    assert_eq!(&m.payload[..], b"hello");

    let mut svc = c.subscribe("t.svc").await.unwrap();
    let c2 = c.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let h = m
                .headers
                .as_ref()
                .and_then(|h| h.get("X-Test"))
                .map(|v| v.as_str().to_string());
            c2.publish(
                m.reply.unwrap(),
                format!("re:{}", h.unwrap_or_default()).into(),
            )
            .await
            .unwrap();
        }
    });
    c.flush().await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Test", "v");
    let r = c
        .request_with_headers("t.svc", h, "q".into())
        .await
        .unwrap();
    assert_eq!(&r.payload[..], b"re:v");

    let started = Instant::now();
    let e = c.request("t.nobody", "q".into()).await.unwrap_err();
    assert_eq!(e.kind(), async_nats::RequestErrorKind::NoResponders);
    eprintln!("no responders after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused_with_a_clear_error() {
    for name in ["", "a b", "a.*", "x>"] {
        let e = Cluster::connect(opts("nats://127.0.0.1:1", name))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(e, ClusterError::InvalidOptions(_)),
            "{name:?}: {e}"
        );
    }
    let mut o = opts("nats://127.0.0.1:1", "n1");
    o.dead_after = o.heartbeat_interval;
    assert!(matches!(
        Cluster::connect(o).await,
        Err(ClusterError::InvalidOptions(_))
    ));
    // Nothing listens there: a Connect error, not a hang.
    let dir = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    drop(dir);
    let e = Cluster::connect(opts(&format!("nats://127.0.0.1:{port}"), "n1"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClusterError::Connect { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_converges_and_clean_leave_is_seen_at_once() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    let c = node(&nats.url, "node-c").await;
    converge(&[&a, &b, &c]).await;
    let me = a
        .members()
        .into_iter()
        .find(|n| n.name == "node-b")
        .unwrap();
    assert_eq!(me.peer_addr, b.me().peer_addr);
    assert!(!me.draining);

    let mut ev = a.subscribe_members();
    let t = Instant::now();
    c.leave().await;
    loop {
        match ev.recv().await.unwrap() {
            MemberEvent::Left(n) if n.name == "node-c" => break,
            _ => {}
        }
    }
    eprintln!("clean leave seen after {:?}", t.elapsed());
    converge(&[&a, &b]).await;
}

/// A separate process joins, holds a host and answers fan-outs; it is then
/// SIGKILLed and must be seen dead by the others. The measured time is
/// printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_member_process_is_seen_dead() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    let mut child = spawn_child(&nats.url, "node-k", &["held-by-k"], false);
    wait_for("child to join", || {
        names(&a).contains(&"node-k".to_string())
    })
    .await;
    // Its host answers from the other node.
    let r = b.request_host("held-by-k", "ping".into(), T).await.unwrap();
    assert_eq!(&r[..], b"node-k:held-by-k:ping");
    assert_eq!(
        a.members()
            .iter()
            .find(|n| n.name == "node-k")
            .unwrap()
            .sessions,
        1
    );

    let mut ev = a.subscribe_members();
    let killed = Instant::now();
    child.kill();
    loop {
        match ev.recv().await.unwrap() {
            MemberEvent::Dead(n) if n.name == "node-k" => break,
            MemberEvent::Left(n) if n.name == "node-k" => {
                panic!("a SIGKILLed node cannot leave cleanly")
            }
            _ => {}
        }
    }
    eprintln!(
        "MEASURED: SIGKILLed node seen dead after {:?} (dead_after 3 s)",
        killed.elapsed()
    );
    assert!(
        !names(&b).contains(&"node-k".to_string()) || {
            wait_for("b to see k dead", || {
                !names(&b).contains(&"node-k".to_string())
            })
            .await;
            true
        }
    );
    // And its host now has no holder.
    wait_for_no_holder(&b, "held-by-k").await;
}

async fn wait_for_no_holder(c: &Cluster, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.request_host(host, "x".into(), T).await {
            Err(ClusterError::NoHolder) => return,
            other => {
                assert!(Instant::now() < deadline, "still answered: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_member_without_leave_is_seen_dead() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    let mut ev = a.subscribe_members();
    let t = Instant::now();
    drop(b);
    loop {
        if let MemberEvent::Dead(n) = ev.recv().await.unwrap() {
            assert_eq!(n.name, "node-b");
            break;
        }
    }
    eprintln!("MEASURED: dropped node seen dead after {:?}", t.elapsed());
    assert_eq!(names(&a), vec!["node-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reaches_the_holder_on_another_node_and_unheld_fails_at_once() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    // Ids with subject metacharacters are escaped, not broken.
    let hosts = [
        "0b7f5d1c-445e-49c0-8612-111b741b920f",
        "web.01",
        "a*b",
        "x >",
        "%2E",
    ];
    let mut holds = Vec::new();
    for h in hosts {
        let mut hold = a.hold(h).await.unwrap();
        assert_eq!(hold.host_id(), h);
        let host = h.to_string();
        holds.push(tokio::spawn(async move {
            while let Some(req) = hold.next().await {
                let reply = format!("{host}:{}", String::from_utf8_lossy(req.payload()));
                req.respond(reply.into()).await.unwrap();
            }
        }));
    }
    a.sync().await.unwrap();
    for h in hosts {
        let r = b.request_host(h, "q".into(), T).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&r), format!("{h}:q"));
    }
    wait_for("sessions in heartbeat", || {
        b.members()
            .iter()
            .any(|n| n.name == "node-a" && n.sessions == hosts.len() as u64)
    })
    .await;
    // "web.01" is held, "web" and "web.*" are other hosts.
    for h in ["web", "web.*", ".", "%252E", "unheld"] {
        let t = Instant::now();
        let e = b
            .request_host(h, "q".into(), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(matches!(e, ClusterError::NoHolder), "{h}: {e}");
        eprintln!(
            "NoHolder for {h:?} after {:?} (timeout was 20 s)",
            t.elapsed()
        );
    }
    for bad in ["", &"x".repeat(300)] {
        assert!(matches!(
            b.request_host(bad, "q".into(), T).await,
            Err(ClusterError::InvalidHostId(_))
        ));
        assert!(matches!(
            a.hold(bad).await,
            Err(ClusterError::InvalidHostId(_))
        ));
    }
    // A holder that never answers: Timeout, not NoHolder.
    let _silent = a.hold("silent").await.unwrap();
    a.sync().await.unwrap();
    let e = b
        .request_host("silent", "q".into(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Timeout), "{e}");
    // Dropping the hold unsubscribes.
    for h in holds {
        h.abort();
        let _ = h.await;
    }
    wait_for_no_holder(&b, "web.01").await;
    // Only the silent hold is left in the heartbeat's session count.
    assert_eq!(a.me().sessions, 1);
    wait_for("sessions to drop", || {
        b.members()
            .iter()
            .any(|n| n.name == "node-a" && n.sessions == 1)
    })
    .await;
}

/// Drives `n` requests from `b` to a host held on `a`; prints p50/p99.
async fn measure_requests(n: usize) {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    let mut hold = a.hold("bench-host").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = hold.next().await {
            let _ = req
                .respond(Bytes::from_static(b"{\"retcode\":0,\"data\":\"6.1.0\"}"))
                .await;
        }
    });
    a.sync().await.unwrap();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        b.request_host(
            "bench-host",
            Bytes::from_static(b"{\"method\":\"getinfo.kernel\"}"),
            T,
        )
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "MEASURED: {n} requests to a host on another node: p50 {:?}, p99 {:?}, max {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_latency_small() {
    measure_requests(500).await;
}

/// The 10 000-request measurement: `cargo test -p basicagent-cluster --release -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_request_latency_10000() {
    measure_requests(10_000).await;
}

/// Registers a handler answering for `hosts` (the filter is ignored: every
/// host matches), from memory.
fn answer_from_memory(c: &Cluster, hosts: Vec<String>) {
    let hosts = std::sync::Arc::new(hosts);
    c.on_fanout(move |req, sink| {
        let hosts = hosts.clone();
        async move {
            for h in hosts.iter() {
                let reply = format!(
                    "{{\"retcode\":0,\"data\":\"6.1.0\",\"p\":{}}}",
                    req.payload.len()
                );
                if sink.send(h.as_str(), reply.into()).await.is_err() {
                    return;
                }
            }
        }
    });
}

async fn fanout_over(nodes: usize, hosts: usize) -> Duration {
    let nats = Nats::start();
    let mut cs = Vec::new();
    for i in 0..nodes {
        cs.push(node(&nats.url, &format!("node-{i}")).await);
    }
    converge(&cs.iter().collect::<Vec<_>>()).await;
    let mut want = HashMap::new();
    for (i, c) in cs.iter().enumerate() {
        let mine: Vec<String> = (0..hosts)
            .filter(|h| h % nodes == i)
            .map(|h| format!("host-{h:06}"))
            .collect();
        for h in &mine {
            want.insert(h.clone(), c.node_name().to_string());
        }
        answer_from_memory(c, mine);
    }
    let t = Instant::now();
    let mut s = cs[0]
        .fanout(
            "all".into(),
            "getinfo.kernel".into(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let (mut replies, mut done, mut last) = (0usize, HashSet::new(), Duration::ZERO);
    let mut seen = HashSet::new();
    while let Some(ev) = s.next().await {
        match ev {
            FanoutEvent::Reply { node, host, reply } => {
                assert_eq!(want.get(&host), Some(&node), "{host} answered by {node}");
                assert!(seen.insert(host), "duplicate answer");
                assert!(reply.starts_with(b"{\"retcode\":0"));
                replies += 1;
                last = t.elapsed();
            }
            FanoutEvent::NodeDone {
                node,
                hosts: n,
                complete,
            } => {
                assert!(complete, "{node} incomplete");
                assert_eq!(n as usize, want.values().filter(|v| **v == node).count());
                assert!(done.insert(node));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replies, hosts);
    assert_eq!(done.len(), nodes);
    eprintln!(
        "MEASURED: fan-out of {hosts} hosts over {nodes} nodes: last answer {last:?}, all end markers {:?}",
        t.elapsed()
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_across_three_nodes_gathers_all_answers_and_end_markers() {
    fanout_over(3, 3_000).await;
}

/// The 76 000-host measurement: `cargo test -p basicagent-cluster --release -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_fanout_76000_over_4_nodes() {
    fanout_over(4, 76_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_node_without_handler_sends_an_empty_end_marker() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    answer_from_memory(&a, vec!["h1".into()]);
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), T)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(evs.contains(&FanoutEvent::NodeDone {
        node: "node-b".into(),
        hosts: 0,
        complete: true
    }));
    assert!(evs.contains(&FanoutEvent::NodeDone {
        node: "node-a".into(),
        hosts: 1,
        complete: true
    }));
    assert_eq!(evs.len(), 3);
}

/// A node that answers part of a fan-out and is then SIGKILLed: the
/// caller stops waiting for it once membership says dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_caller_stops_waiting_for_a_node_that_dies_midway() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    answer_from_memory(&a, vec!["a1".into(), "a2".into()]);
    let mut child = spawn_child(&nats.url, "node-slow", &["s1"], true);
    wait_for("child to join", || {
        names(&a).contains(&"node-slow".to_string())
    })
    .await;
    let mut s = a
        .fanout("all".into(), "p".into(), Duration::from_secs(120))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut killed = None;
    while let Some(ev) = s.next().await {
        if matches!(&ev, FanoutEvent::Reply { node, .. } if node == "node-slow") {
            // It answered one host and now hangs: kill it.
            child.kill();
            killed = Some(Instant::now());
        }
        got.push(ev);
    }
    let killed = killed.expect("the slow node answered");
    eprintln!(
        "MEASURED: fan-out gave up on the killed node after {:?}",
        killed.elapsed()
    );
    assert!(got.contains(&FanoutEvent::NodeDone {
        node: "node-a".into(),
        hosts: 2,
        complete: true
    }));
    assert!(
        got.contains(&FanoutEvent::NodeLost {
            node: "node-slow".into(),
            hosts: 1
        }),
        "{got:?}"
    );
    assert!(!got
        .iter()
        .any(|e| matches!(e, FanoutEvent::TimedOut { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_times_out_with_the_pending_nodes() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    b.on_fanout(|_req, sink| async move {
        let _keep = sink;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), Duration::from_millis(500))
        .await
        .unwrap()
        .collect()
        .await;
    // node-b's deadline is the same as ours: either its cut end marker
    // arrives first or we give up first.
    let b_cut = evs.contains(&FanoutEvent::NodeDone {
        node: "node-b".into(),
        hosts: 0,
        complete: false,
    });
    let b_pending = evs.contains(&FanoutEvent::TimedOut {
        pending: vec!["node-b".into()],
    });
    assert!(b_cut || b_pending, "{evs:?}");
    assert!(evs.contains(&FanoutEvent::NodeDone {
        node: "node-a".into(),
        hosts: 0,
        complete: true
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_a_node_out_of_placement() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    let c = node(&nats.url, "node-c").await;
    converge(&[&a, &b, &c]).await;
    let hosts: Vec<String> = (0..3000).map(|i| format!("h-{i}")).collect();
    // All nodes agree on owners, and the owner does not redirect.
    let mut on_b = 0;
    for h in &hosts {
        let o = a.owner(h).unwrap();
        assert_eq!(Some(&o), b.owner(h).as_ref());
        assert_eq!(Some(&o), c.owner(h).as_ref());
        let owner = [&a, &b, &c]
            .into_iter()
            .find(|n| n.node_name() == o.name)
            .unwrap();
        assert_eq!(owner.redirect_for(h), None);
        if o.name == "node-b" {
            on_b += 1;
            assert_eq!(a.redirect_for(h), Some(b.me().peer_addr));
        }
    }
    assert!(on_b > 500 && on_b < 1500, "{on_b}");
    b.drain();
    assert!(b.is_draining());
    wait_for("a to see b draining", || {
        a.members().iter().any(|n| n.name == "node-b" && n.draining)
    })
    .await;
    wait_for("c to see b draining", || {
        c.members().iter().any(|n| n.name == "node-b" && n.draining)
    })
    .await;
    for h in &hosts {
        for n in [&a, &b, &c] {
            assert_ne!(n.owner(h).unwrap().name, "node-b");
        }
        // b sends every agent away.
        assert!(b.redirect_for(h).is_some());
    }
    b.set_draining(false);
    wait_for("b back in placement", || {
        a.members()
            .iter()
            .any(|n| n.name == "node-b" && !n.draining)
    })
    .await;
    assert_eq!(
        hosts
            .iter()
            .filter(|h| a.owner(h).unwrap().name == "node-b")
            .count(),
        on_b
    );
    // Every node draining: no owner, and nobody redirects (agents stay).
    for n in [&a, &b, &c] {
        n.drain();
    }
    wait_for("a sees all draining", || {
        a.members().iter().all(|n| n.draining)
    })
    .await;
    assert_eq!(a.owner("h-1"), None);
    assert_eq!(a.redirect_for("h-1"), None);
}

/// NATS killed: calls fail with Disconnected (not hang); restarted: the
/// cluster reconnects by itself, holds are re-subscribed and heartbeats
/// resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_calls_fail_disconnected_and_restart_recovers() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    let mut hold = a.hold("h1").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = hold.next().await {
            let _ = req.respond("ok".into()).await;
        }
    });
    a.sync().await.unwrap();
    assert_eq!(
        &b.request_host("h1", "q".into(), T).await.unwrap()[..],
        b"ok"
    );

    let t = Instant::now();
    nats.kill9();
    wait_for("b to notice the loss", || {
        b.connection_state() != ConnectionState::Connected
    })
    .await;
    eprintln!("MEASURED: NATS loss noticed after {:?}", t.elapsed());
    let e = b
        .request_host("h1", "q".into(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Disconnected), "{e}");
    assert!(matches!(
        b.fanout("f".into(), "p".into(), T).await.err(),
        Some(ClusterError::Disconnected)
    ));
    // Peers fall out of the view while cut off; this node stays.
    wait_for("a alone", || names(&a) == vec!["node-a"]).await;

    let t = Instant::now();
    nats.restart();
    wait_for("a reconnects", || {
        a.connection_state() == ConnectionState::Connected
    })
    .await;
    wait_for("b reconnects", || {
        b.connection_state() == ConnectionState::Connected
    })
    .await;
    converge(&[&a, &b]).await;
    eprintln!(
        "MEASURED: reconnected and converged {:?} after restart",
        t.elapsed()
    );
    // The hold was re-subscribed by the client.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match b.request_host("h1", "q".into(), T).await {
            Ok(r) => {
                assert_eq!(&r[..], b"ok");
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "h1 not reachable after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Garbage on every cluster subject is dropped with a log line; the nodes
/// keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_on_cluster_subjects_are_ignored() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    answer_from_memory(&b, vec!["b1".into()]);
    let evil = async_nats::connect(nats.url.as_str()).await.unwrap();
    let big = "x".repeat(10_000);
    let bad_heartbeats = [
        "not json".to_string(),
        "{}".into(),
        r#"{"node":"a b","peer_addr":"x","sessions":1,"draining":false,"started_at":0}"#.into(),
        r#"{"node":"ok-name","peer_addr":"x","sessions":-1,"draining":false,"started_at":0}"#.into(),
        format!(r#"{{"node":"n2","peer_addr":"{big}","sessions":1,"draining":false,"started_at":0}}"#),
        // Someone else claiming node-a's name: b takes it for a restart of
        // node-a (NATS authorization is what keeps strangers off these
        // subjects); node-a itself ignores it, and its next heartbeat puts
        // b right. Its leave does not match node-a's instance.
        r#"{"node":"node-a","peer_addr":"evil:1","sessions":1,"draining":true,"started_at":0,"instance":"other"}"#.into(),
    ];
    for hb in &bad_heartbeats {
        evil.publish("ba.nodes.heartbeat", hb.clone().into())
            .await
            .unwrap();
        evil.publish("ba.nodes.leave", hb.clone().into())
            .await
            .unwrap();
    }
    // Malformed fan-out requests: short, lying length, no reply subject.
    for body in [&b""[..], &[0, 0], &[0xff, 0xff, 0xff, 0xff, 1]] {
        evil.publish_with_reply("ba.fanout", "evil.inbox", Bytes::copy_from_slice(body))
            .await
            .unwrap();
    }
    evil.publish("ba.fanout", "x".into()).await.unwrap();
    evil.flush().await.unwrap();

    // A caller's inbox gets forged chunks and end markers too.
    let mut s = a.fanout("f".into(), "p".into(), T).await.unwrap();
    let first = s.next().await;
    assert!(first.is_some());
    let mut evs = vec![first.unwrap()];
    evs.extend(s.collect::<Vec<_>>().await);
    assert!(evs.contains(&FanoutEvent::Reply {
        node: "node-b".into(),
        host: "b1".into(),
        reply: evs_reply(&evs)
    }));
    assert!(evs.contains(&FanoutEvent::NodeDone {
        node: "node-b".into(),
        hosts: 1,
        complete: true
    }));

    let mut want = vec!["node-a".to_string(), "node-b".to_string()];
    want.sort();
    assert_eq!(names(&a), want);
    // The forged "restart" of node-a and its matching leave may have
    // removed node-a from b's view; node-a's next heartbeat brings it back.
    wait_for("b to see node-a again", || names(&b) == want).await;
    assert!(!a.me().draining);
    assert_eq!(a.me().peer_addr, opts(&nats.url, "node-a").peer_addr);
    wait_for("b to see the real node-a again", || {
        b.members()
            .iter()
            .any(|n| n.name == "node-a" && !n.draining && n.peer_addr != "evil:1")
    })
    .await;
}

fn evs_reply(evs: &[FanoutEvent]) -> Bytes {
    evs.iter()
        .find_map(|e| match e {
            FanoutEvent::Reply { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_fanout_answers_do_not_break_the_caller() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let evil = async_nats::connect(nats.url.as_str()).await.unwrap();
    // Watch ba.fanout and answer with garbage before the real node.
    let mut spy = evil.subscribe("ba.fanout").await.unwrap();
    evil.flush().await.unwrap();
    let evil2 = evil.clone();
    tokio::spawn(async move {
        while let Some(m) = spy.next().await {
            let inbox = m.reply.unwrap();
            let mut h = async_nats::HeaderMap::new();
            h.insert("Ba-Node", "node-evil");
            h.insert("Ba-Kind", "chunk");
            evil2
                .publish_with_headers(inbox.clone(), h, Bytes::from_static(&[0, 9, 1]))
                .await
                .unwrap();
            let mut h = async_nats::HeaderMap::new();
            h.insert("Ba-Node", "bad name*");
            h.insert("Ba-Kind", "end");
            evil2
                .publish_with_headers(inbox.clone(), h, Bytes::new())
                .await
                .unwrap();
            evil2.publish(inbox, "no headers".into()).await.unwrap();
        }
    });
    answer_from_memory(&a, vec!["a1".into()]);
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), T)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        evs.contains(&FanoutEvent::NodeDone {
            node: "node-a".into(),
            hosts: 1,
            complete: true
        }),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, FanoutEvent::TimedOut { .. })),
        "{evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_refused() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let max = a.nats().server_info().max_payload;
    let big = Bytes::from(vec![b'x'; max + 1]);
    assert!(matches!(
        a.request_host("h", big.clone(), T).await,
        Err(ClusterError::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        a.fanout("f".into(), big, T).await,
        Err(ClusterError::PayloadTooLarge { .. })
    ));
    // A handler's oversized reply is refused by the sink; it can send an error instead.
    a.on_fanout(move |_req, sink| async move {
        let e = sink
            .send("h", Bytes::from(vec![b'y'; max]))
            .await
            .unwrap_err();
        assert!(matches!(e, ClusterError::PayloadTooLarge { .. }));
        sink.send("h", "too large".into()).await.unwrap();
    });
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), T)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(evs.contains(&FanoutEvent::Reply {
        node: "node-a".into(),
        host: "h".into(),
        reply: "too large".into()
    }));
}

/// Spawns this test binary as a cluster member in its own process (see
/// `child_member`). `slow`: its fan-out handler answers one host and hangs.
fn spawn_child(url: &str, name: &str, hosts: &[&str], slow: bool) -> Kid {
    spawn_child_env(url, name, hosts, slow, &[])
}

/// [`spawn_child`] with more environment (`BA_CLUSTER_CHILD_EVENTS=FILE`:
/// the child appends each membership event it sees to FILE, one a line).
fn spawn_child_env(url: &str, name: &str, hosts: &[&str], slow: bool, env: &[(&str, &str)]) -> Kid {
    Kid(Command::new(std::env::current_exe().unwrap())
        .envs(env.iter().copied())
        .args(["--exact", "child_member", "--nocapture", "--test-threads=1"])
        .env("BA_CLUSTER_CHILD_URL", url)
        .env("BA_CLUSTER_CHILD_NAME", name)
        .env("BA_CLUSTER_CHILD_HOSTS", hosts.join(","))
        .env("BA_CLUSTER_CHILD_SLOW", if slow { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap())
}

/// A child member, SIGKILLed and reaped on drop (so a failing test leaves
/// no process behind).
struct Kid(Child);

impl Kid {
    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test on its own: a no-op unless started by `spawn_child`, when it
/// runs a member until killed.
#[test]
fn child_member() {
    let Ok(url) = std::env::var("BA_CLUSTER_CHILD_URL") else {
        return;
    };
    let name = std::env::var("BA_CLUSTER_CHILD_NAME").unwrap();
    let hosts: Vec<String> = std::env::var("BA_CLUSTER_CHILD_HOSTS")
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let slow = std::env::var("BA_CLUSTER_CHILD_SLOW").as_deref() == Ok("1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let c = node(&url, &name).await;
        if let Ok(path) = std::env::var("BA_CLUSTER_CHILD_EVENTS") {
            let mut ev = c.subscribe_members();
            tokio::spawn(async move {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                while let Ok(e) = ev.recv().await {
                    let _ = writeln!(f, "{e:?}");
                }
            });
        }
        let node_name = name.clone();
        let answer: Vec<String> = hosts.clone();
        c.on_fanout(move |_req, sink| {
            let answer = answer.clone();
            async move {
                for h in &answer {
                    let _ = sink.send(h.as_str(), "child".into()).await;
                    if slow {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            }
        });
        for h in hosts {
            let mut hold = c.hold(&h).await.unwrap();
            let node_name = node_name.clone();
            tokio::spawn(async move {
                while let Some(req) = hold.next().await {
                    let r = format!("{node_name}:{h}:{}", String::from_utf8_lossy(req.payload()));
                    let _ = req.respond(r.into()).await;
                }
            });
        }
        // A safety net should the parent die without killing us.
        tokio::time::sleep(Duration::from_secs(300)).await;
    });
}

/// A node started while NATS is down (`retry_initial_connect`) is usable at
/// once (calls fail with Disconnected) and joins by itself when NATS comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_started_before_nats_joins_when_it_comes() {
    let nats = Nats::start();
    nats.kill9();
    let mut o = opts(&nats.url, "node-early");
    o.retry_initial_connect = true;
    let early = Cluster::connect(o)
        .await
        .expect("connect returns while NATS is down");
    assert_ne!(early.connection_state(), ConnectionState::Connected);
    assert!(matches!(
        early.request_host("h", "q".into(), T).await,
        Err(ClusterError::Disconnected)
    ));
    assert_eq!(names(&early), vec!["node-early"]);
    // A hold taken while NATS is down works once it is back.
    let mut hold = early.hold("early-host").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = hold.next().await {
            let _ = req.respond("early".into()).await;
        }
    });
    nats.restart();
    let late = node(&nats.url, "node-late").await;
    wait_for("early connects", || {
        early.connection_state() == ConnectionState::Connected
    })
    .await;
    converge(&[&early, &late]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match late.request_host("early-host", "q".into(), T).await {
            Ok(r) => break assert_eq!(&r[..], b"early"),
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The membership watch follows joins, drains and deaths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_members_follows_changes() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let mut w = a.watch_members();
    let b = node(&nats.url, "node-b").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Vec<String> = w
            .borrow_and_update()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if list == ["node-a", "node-b"] {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .ok();
    }
    let mut ev = a.subscribe_members();
    b.drain();
    loop {
        if let MemberEvent::Changed(n) = ev.recv().await.unwrap() {
            assert!(n.draining);
            break;
        }
    }
    assert!(w.borrow().iter().any(|n| n.name == "node-b" && n.draining));
}

/// With the nodes' own NATS account (scripts/nats.sh NATS_AUTH=1) a
/// client without it cannot connect, so it cannot publish on ba.fanout
/// (or claim a node's name); the nodes, with the credentials in their URL,
/// work as before, and an error never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_cannot_publish_on_ba_fanout() {
    let (nats, auth_url) = Nats::start_with_auth();
    assert!(auth_url.contains('@') && !nats.url.contains('@'));
    let stranger = async_nats::connect(nats.url.as_str()).await;
    assert!(
        stranger.is_err(),
        "a client without credentials was admitted"
    );
    let a = node(&auth_url, "node-a").await;
    let b = node(&auth_url, "node-b").await;
    wait_for("both nodes see each other", || {
        a.members().len() == 2 && b.members().len() == 2
    })
    .await;
    // A fan-out published with the account reaches every node.
    b.on_fanout(|_req, sink| async move {
        let _ = sink.send("h-b", Bytes::from_static(b"r")).await;
    });
    let mut events = a
        .fanout(Bytes::from_static(b"f"), Bytes::from_static(b"p"), T)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(ev) = events.next().await {
        if let FanoutEvent::Reply { host, .. } = ev {
            got.push(host);
        }
    }
    assert_eq!(got, vec!["h-b".to_string()]);
    let pass = auth_url
        .rsplit_once('@')
        .and_then(|(l, _)| l.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap();
    let wrong = auth_url.replace(&pass, "wrong-password");
    match Cluster::connect(opts(&wrong, "node-c")).await {
        Ok(_) => panic!("connected with a wrong password"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                !text.contains("wrong-password") && !text.contains(&pass),
                "{text}"
            );
        }
    }
}

/// scripts/nats.sh binds loopback only.
#[test]
fn nats_script_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nats.sh"))
        .arg("start")
        .arg(dir.path())
        .env("NATS_ADDR", "0.0.0.0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    assert!(!dir.path().join("pid").exists());
}

/// Two holders of one host (an agent re-homed while its old node still
/// holds it): each request is answered once, by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_held_twice_answers_each_request_once() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    let c = node(&nats.url, "node-c").await;
    for n in [&a, &b] {
        let mut hold = n.hold("twice").await.unwrap();
        let name = n.node_name().to_string();
        tokio::spawn(async move {
            while let Some(req) = hold.next().await {
                let _ = req.respond(name.clone().into()).await;
            }
        });
    }
    // Count every reply that reaches the inbox, not just the first.
    let mut by = HashMap::new();
    for _ in 0..200 {
        let inbox = c.nats().new_inbox();
        let mut sub = c.nats().subscribe(inbox.clone()).await.unwrap();
        c.nats()
            .publish_with_reply("ba.host.twice", inbox, "q".into())
            .await
            .unwrap();
        let first = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
        *by.entry(String::from_utf8_lossy(&first.payload).to_string())
            .or_insert(0) += 1;
        c.sync().await.unwrap();
        // Anything else would have arrived before our own round trip came back
        // from the holders' side; give it a moment too.
        let second = tokio::time::timeout(Duration::from_millis(5), sub.next()).await;
        assert!(second.is_err(), "answered twice");
    }
    eprintln!("answers per holder: {by:?}");
    assert_eq!(by.values().sum::<i32>(), 200);
}

/// A forged node name's answers are passed on but not waited for, and an
/// end marker whose counts disagree with what arrived says incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_detects_missing_chunks_and_does_not_wait_for_strangers() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let b = node(&nats.url, "node-b").await;
    converge(&[&a, &b]).await;
    // node-b's handler is replaced by a hand-made responder on a raw client
    // that claims 3 chunks but sends 1; a stranger sends a chunk, no end.
    b.leave().await;
    wait_for("b gone", || names(&a) == vec!["node-a"]).await;
    let raw = async_nats::connect(nats.url.as_str()).await.unwrap();
    let hb = r#"{"node":"node-b","peer_addr":"x:1","sessions":0,"draining":false,"started_at":1,"instance":"raw"}"#;
    let mut spy = raw.subscribe("ba.fanout").await.unwrap();
    raw.flush().await.unwrap();
    let r2 = raw.clone();
    tokio::spawn(async move {
        loop {
            r2.publish("ba.nodes.heartbeat", hb.into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    wait_for("raw node-b joins", || {
        names(&a).contains(&"node-b".to_string())
    })
    .await;
    let r3 = raw.clone();
    tokio::spawn(async move {
        while let Some(m) = spy.next().await {
            let inbox = m.reply.unwrap();
            let mut chunk = vec![0u8, 2, b'h', b'1', 0, 0, 0, 1, b'x'];
            for (node, end) in [("node-b", true), ("stranger", false)] {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Ba-Node", node);
                h.insert("Ba-Kind", "chunk");
                r3.publish_with_headers(inbox.clone(), h, Bytes::from(chunk.clone()))
                    .await
                    .unwrap();
                if end {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Ba-Node", node);
                    h.insert("Ba-Kind", "end");
                    h.insert("Ba-Count", "3");
                    h.insert("Ba-Chunks", "3");
                    r3.publish_with_headers(inbox.clone(), h, Bytes::new())
                        .await
                        .unwrap();
                }
                chunk[3] = b'2';
            }
        }
    });
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), Duration::from_secs(60))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        evs.contains(&FanoutEvent::NodeDone {
            node: "node-b".into(),
            hosts: 1,
            complete: false
        }),
        "{evs:?}"
    );
    assert!(
        evs.contains(&FanoutEvent::NodeDone {
            node: "node-a".into(),
            hosts: 0,
            complete: true
        }),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, FanoutEvent::TimedOut { .. })),
        "{evs:?}"
    );
}

/// Huge timeouts saturate instead of overflowing the clock (a panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timeouts_do_not_overflow() {
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    answer_from_memory(&a, vec!["h".into()]);
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), Duration::MAX)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        evs.contains(&FanoutEvent::NodeDone {
            node: "node-a".into(),
            hosts: 1,
            complete: true
        }),
        "{evs:?}"
    );
    assert!(matches!(
        a.request_host("nobody", "q".into(), Duration::MAX).await,
        Err(ClusterError::NoHolder)
    ));
}

/// A flood of fan-outs does not pile up handler tasks: past
/// MAX_CONCURRENT_FANOUTS a fan-out is answered at once, empty and cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_flood_is_refused_past_the_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let nats = Nats::start();
    let a = node(&nats.url, "node-a").await;
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    a.on_fanout(move |_req, sink| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let _keep = sink;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
    let limit = basicagent_cluster::MAX_CONCURRENT_FANOUTS;
    let mut running = Vec::new();
    for _ in 0..limit {
        running.push(
            a.fanout("f".into(), "p".into(), Duration::from_secs(60))
                .await
                .unwrap(),
        );
    }
    let evs: Vec<FanoutEvent> = a
        .fanout("f".into(), "p".into(), Duration::from_secs(60))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(
        evs,
        vec![FanoutEvent::NodeDone {
            node: "node-a".into(),
            hosts: 0,
            complete: false
        }]
    );
    assert_eq!(calls.load(Ordering::SeqCst), limit);
    // Still serving requests meanwhile.
    assert!(matches!(
        a.request_host("nobody", "q".into(), T).await,
        Err(ClusterError::NoHolder)
    ));
}

/// Regression (issue #14, the 76 000-agent bench): a node whose main
/// connection is flooded with fan-out-sized messages while its runtime's
/// only worker is busy (here: blocked for twice `dead_after`) is not
/// declared dead by its peer, and does not declare it dead either: its
/// membership runs on its own connection and thread. With membership on
/// the main connection and runtime, its heartbeats stopped for the whole
/// block and the peer declared it dead after 3 s. Afterwards its main
/// connection serves again (the NATS server may have cut it as a slow
/// consumer meanwhile; it reconnects by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_flooded_main_connection_and_busy_workers_is_not_declared_dead() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let nats = Nats::start();
    let b = node(&nats.url, "member-b").await;
    // Node A on its own runtime with one worker, as a loaded server node.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hosts: Vec<String> = (0..16).map(|i| format!("member-flood-{i}")).collect();
    let (a, holds) = {
        let url = nats.url.clone();
        let hosts = hosts.clone();
        rt_a.spawn(async move {
            let a = node(&url, "member-a").await;
            let mut holds = Vec::new();
            for h in &hosts {
                holds.push(a.hold(h).await.unwrap());
            }
            (a, holds)
        })
        .await
        .unwrap()
    };
    // One host answers; the other holds are never read (their messages
    // pile up and are dropped by the client, as a slow consumer).
    let mut holds = holds.into_iter();
    let mut served = holds.next().unwrap();
    let _unread: Vec<_> = holds.collect();
    rt_a.spawn(async move {
        while let Some(req) = served.next().await {
            let _ = req.respond("pong".into()).await;
        }
    });
    converge(&[&a, &b]).await;
    let mut ev_b = b.subscribe_members();
    let mut ev_a = a.subscribe_members();

    // The flood: 256 KiB messages on A's host subjects, about 40 MB/s,
    // more than the server's 64 MiB pending limit for A while it reads
    // nothing.
    let flooder = async_nats::connect(nats.url.as_str()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent, hosts) = (stop.clone(), sent.clone(), hosts.clone());
        tokio::spawn(async move {
            let big = Bytes::from(vec![b'x'; 256 * 1024]);
            while !stop.load(Ordering::SeqCst) {
                for h in &hosts {
                    let s = basicagent_cluster::host_subject(h).unwrap();
                    if flooder.publish(s, big.clone()).await.is_ok() {
                        sent.fetch_add(big.len() as u64, Ordering::SeqCst);
                    }
                }
                let _ = flooder.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A's only worker is busy for twice dead_after.
    let busy = Duration::from_secs(6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rt_a.spawn(async move { std::thread::sleep(busy) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    flood.await.unwrap();
    eprintln!(
        "MEASURED: flooded node-a's main connection with {} MB while its worker was blocked {busy:?}",
        sent.load(Ordering::SeqCst) / 1_000_000
    );
    // Its main connection serves again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match b.request_host(&hosts[0], "ping".into(), T).await {
            Ok(r) => {
                assert_eq!(&r[..], b"pong");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "node-a never served again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // A while longer, for a late verdict either way.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (who, ev, peer) in [("b", &mut ev_b, "member-a"), ("a", &mut ev_a, "member-b")] {
        loop {
            match ev.try_recv() {
                Ok(MemberEvent::Dead(n)) | Ok(MemberEvent::Left(n)) if n.name == peer => {
                    panic!("{who} declared {peer} dead or gone")
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(names(&b), vec!["member-a", "member-b"]);
    assert_eq!(names(&a), vec!["member-a", "member-b"]);
    drop(a);
    rt_a.shutdown_background();
}

/// Issue #14, item 2, with real processes: a member stopped (SIGSTOP) for
/// longer than `dead_after` is declared dead by its peer, as it must be;
/// on waking (SIGCONT) it sees its own stall and declares nobody dead
/// (the peer's heartbeats of that time were queued, unread), and reports
/// the peer as rejoined once heard again (so a server writes its sessions
/// again). The peer sees it rejoin too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_past_dead_after_declares_nobody_dead_on_waking() {
    let nats = Nats::start();
    let a = node(&nats.url, "member-a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let log_s = log.to_str().unwrap().to_string();
    let child = spawn_child_env(
        &nats.url,
        "member-k",
        &[],
        false,
        &[("BA_CLUSTER_CHILD_EVENTS", log_s.as_str())],
    );
    wait_for("child to join", || {
        names(&a).contains(&"member-k".to_string())
    })
    .await;
    // The child's own view has us (it logged our join).
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("child to see a", || logged().contains("member-a")).await;
    let mut ev = a.subscribe_members();
    let pid = child.0.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    loop {
        match ev.recv().await.unwrap() {
            MemberEvent::Dead(n) if n.name == "member-k" => break,
            _ => {}
        }
    }
    // Past the child's death timeout for us, by a margin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal("-CONT");
    loop {
        match ev.recv().await.unwrap() {
            MemberEvent::Joined(n) if n.name == "member-k" => break,
            _ => {}
        }
    }
    wait_for("child to report a rejoined", || {
        logged().matches("Joined(Node { name: \"member-a\"").count() >= 2
    })
    .await;
    // A while longer for a late verdict.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let l = logged();
    assert!(
        !l.contains("Dead(Node { name: \"member-a\""),
        "the stalled child declared a dead: {l}"
    );
    assert_eq!(names(&a), vec!["member-a", "member-k"]);
}
