//! A cluster member from the command line, to watch the layer work:
//!
//!     scripts/nats.sh start /tmp/n
//!     cargo run -p basicagent-cluster --example node -- nats://127.0.0.1:PORT node-1 127.0.0.1:9001 100
//!     cargo run -p basicagent-cluster --example node -- nats://127.0.0.1:PORT node-2 127.0.0.1:9002 100
//!
//! Each holds N synthetic hosts (`<node>-host-<i>`), answers requests and
//! fan-outs for them from memory, prints membership changes, and every 5 s
//! runs a fan-out and one request to a host of another node. Ctrl-C (or
//! SIGTERM) leaves cleanly; SIGKILL shows a dead node.

use std::time::{Duration, Instant};

use basicagent_cluster::{Cluster, ClusterOptions, FanoutEvent};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, peer, count] = args.as_slice() else {
        eprintln!("usage: node NATS_URL NODE_NAME PEER_ADDR HOSTS");
        std::process::exit(2);
    };
    let count: usize = count.parse()?;
    let c = Cluster::connect(ClusterOptions::new(url, name, peer)).await?;
    let hosts: Vec<String> = (0..count).map(|i| format!("{name}-host-{i}")).collect();
    for h in &hosts {
        let mut hold = c.hold(h).await?;
        tokio::spawn(async move {
            while let Some(req) = hold.next().await {
                let reply = format!(
                    "{}: {}",
                    hold.host_id(),
                    String::from_utf8_lossy(req.payload())
                );
                let _ = req.respond(reply.into()).await;
            }
        });
    }
    let mine = std::sync::Arc::new(hosts);
    c.on_fanout(move |_req, sink| {
        let mine = mine.clone();
        async move {
            for h in mine.iter() {
                if sink.send(h.as_str(), "ok".into()).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut events = c.subscribe_members();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            println!("membership: {ev:?}");
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let members = c.members();
        println!(
            "members: {:?}",
            members
                .iter()
                .map(|n| (&n.name, n.sessions))
                .collect::<Vec<_>>()
        );
        let t = Instant::now();
        let (mut replies, mut nodes) = (0usize, 0usize);
        match c
            .fanout(
                "all".into(),
                "getinfo.kernel".into(),
                Duration::from_secs(3),
            )
            .await
        {
            Ok(mut s) => {
                while let Some(ev) = s.next().await {
                    match ev {
                        FanoutEvent::Reply { .. } => replies += 1,
                        FanoutEvent::NodeDone { .. } => nodes += 1,
                        other => println!("fan-out: {other:?}"),
                    }
                }
                println!(
                    "fan-out: {replies} replies from {nodes} nodes in {:?}",
                    t.elapsed()
                );
            }
            Err(e) => println!("fan-out failed: {e}"),
        }
        if let Some(other) = members.iter().find(|n| n.name != c.node_name()) {
            let host = format!("{}-host-0", other.name);
            let t = Instant::now();
            match c
                .request_host(&host, "ping".into(), Duration::from_secs(2))
                .await
            {
                Ok(r) => println!(
                    "request {host}: {} in {:?}",
                    String::from_utf8_lossy(&r),
                    t.elapsed()
                ),
                Err(e) => println!("request {host}: {e}"),
            }
        }
    }
    c.leave().await;
    Ok(())
}
