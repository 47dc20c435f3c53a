//! Cluster mode (`--nats URL --db postgres://…`): this node's part in a cluster of server nodes.
//!
//! The distributed parts are not home-made: `basicagent-cluster` (core
//! NATS) gives membership, placement, routing to the node holding a host
//! and the fan-out; PostgreSQL (`PgStore`) is the shared memory. This
//! module wires them into the server:
//!
//! - a held session answers requests routed to its host subject
//!   ([`serve_hold`]): the payload is [`encode_request`]'s, the reply is the
//!   agent's response JSON, or a line of the server's own (31xx);
//! - the fan-out handler answers for this node's own sessions matching the
//!   caller's filter ([`on_fanout`]);
//! - a dead or departed node's agents are marked offline in PostgreSQL
//!   (`node_gone`), by every node that notices (idempotent);
//! - `ba.ctl.<node>.drain` drains this node on request of another
//!   ([`start_drain`] closes its sessions at [`DRAIN_RATE`] per second).

use std::sync::{Arc, Weak};
use std::time::Duration;

use basicagent_cluster::{Cluster, FanoutRequest, FanoutSink, MemberEvent};
use basicagent_proto::{Request, Response, Retcode};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::glob_match;
use crate::call::ServerCode;
use crate::registry::{CallEvent, SendError};
use crate::state::Shared;
use crate::storage::now_millis;

/// Sessions closed per second while draining.
pub const DRAIN_RATE: u64 = 500;
/// What a holder or a fan-out node keeps of the caller's budget for its
/// own answer to travel back (the caller waits this much longer).
pub const ROUTE_MARGIN: Duration = Duration::from_millis(500);

/// After a peer (re)joins, the agents table is resynced at once and again
/// this much later (see the membership task).
pub const REJOIN_RESYNC_AGAIN: Duration = Duration::from_secs(5);

/// `--nats` / `--db` values: `@FILE` reads the URL (with its password)
/// from FILE, so it is never on a command line (`ps`, shell history); any
/// other value is the URL itself. FILE must be a regular file of at most
/// 4 KiB, readable by its owner only, holding one line.
pub fn url_arg(flag: &str, arg: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = arg.strip_prefix('@') else {
        return Ok(arg.to_owned());
    };
    let bad = |why: String| format!("--{flag} @{path}: {why}");
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            "readable or writable by others (it holds a password: chmod 600)".into(),
        ));
    }
    let mut text = String::new();
    file.take(4097)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() > 4096 {
        return Err(bad("longer than 4 KiB".into()));
    }
    let url = text.trim();
    if url.is_empty() || url.contains('\n') {
        return Err(bad("must hold one URL on one line".into()));
    }
    Ok(url.to_owned())
}

/// Descriptors cluster mode holds beyond the one-node server's
/// [`crate::serve::FD_BASE`]: PostgreSQL's pool (8) and the NATS socket.
/// (Measured: 19-20 descriptors besides the sessions with part of the pool
/// open, against about 18 for one node with SQLite's 3 files.)
pub fn cluster_fds() -> u64 {
    let pool = basicagent_store::PgOptions::default().pool_size;
    u64::try_from(pool).unwrap_or(u64::MAX).saturating_add(1)
}

/// The most sessions a node may hold so the cluster's own descriptors fit
/// beside the reserve (no limit for a one-node server).
pub fn room_after_cluster(nofile: u64, clustered: bool) -> usize {
    if !clustered {
        return usize::MAX;
    }
    let room = nofile
        .saturating_sub(crate::serve::fd_reserve(nofile))
        .saturating_sub(cluster_fds());
    usize::try_from(room).unwrap_or(usize::MAX)
}

/// This node's cluster handle and name.
pub struct ClusterMode {
    pub cluster: Cluster,
    pub name: String,
}

/// The subject another node's drain request goes to.
pub fn drain_subject(node: &str) -> String {
    format!("ba.ctl.{node}.drain")
}

/// A routed request: `u64 BE timeout in ms | request JSON (without id)`.
pub fn encode_request(request: &str, timeout: Duration) -> Bytes {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut b = BytesMut::with_capacity(8 + request.len());
    b.put_u64(ms);
    b.put_slice(request.as_bytes());
    b.freeze()
}

/// Splits [`encode_request`]'s bytes; `None` if malformed. The timeout is
/// capped at one hour (a peer's bytes are not trusted).
pub fn decode_request(payload: &[u8]) -> Option<(Duration, &str)> {
    let ms: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let ms = u64::from_be_bytes(ms).min(3_600_000);
    let text = std::str::from_utf8(payload.get(8..)?).ok()?;
    Some((Duration::from_millis(ms), text))
}

/// How a line from another node came about, by its retcode.
pub fn outcome_of(response: &Response) -> crate::call::Outcome {
    use crate::call::Outcome;
    match response.retcode {
        ServerCode::OFFLINE => Outcome::Offline,
        ServerCode::TIMED_OUT => Outcome::TimedOut,
        ServerCode::DISCONNECTED => Outcome::Disconnected,
        ServerCode::QUEUE_FULL => Outcome::Busy,
        _ => Outcome::Answered,
    }
}

/// Sends `request` to this node's sessions of `hosts` and hands every
/// host's answer (or the server's own 3100..3103 line) to `each`, at most
/// `timeout` after sending.
pub async fn ask_local(
    shared: &Shared,
    hosts: &[String],
    request: &str,
    timeout: Duration,
    mut each: impl FnMut(&str, Response),
) {
    let failed = |code: Retcode, m: String| Response::failed(None, code, m);
    let Ok(req) = Request::parse(request.as_bytes()) else {
        for h in hosts {
            each(
                h,
                failed(Retcode::INVALID_REQUEST, "malformed routed request".into()),
            );
        }
        return;
    };
    let id = shared.registry.next_request_id();
    let Ok(raw) = RawValue::from_string(id.to_string()) else {
        return;
    };
    let mut frame = req.with_id(&raw).into_bytes();
    frame.push(b'\n');
    let frame = Bytes::from(frame);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queued = shared.registry.fan_out(hosts, id, &frame, &tx);
    drop(tx);
    let mut waiting = vec![false; hosts.len()];
    let mut left = 0usize;
    for (tag, r) in queued.into_iter().enumerate() {
        let host = &hosts[tag];
        match r {
            Ok(()) => {
                waiting[tag] = true;
                left += 1;
            }
            Err(SendError::Offline(_)) => each(
                host,
                failed(
                    ServerCode::OFFLINE,
                    format!("no agent with host id {host:?} is connected"),
                ),
            ),
            Err(SendError::Busy(_)) => each(
                host,
                failed(
                    ServerCode::QUEUE_FULL,
                    format!("host {host}: its outgoing queue is full; not sent"),
                ),
            ),
        }
    }
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
    while left > 0 {
        let event = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => break,
        };
        let (tag, response) = match event {
            CallEvent::Answered { tag, response } => (tag, Some(response)),
            CallEvent::Gone { tag } => (tag, None),
        };
        let Some(slot) = waiting.get_mut(tag) else {
            continue;
        };
        if !std::mem::replace(slot, false) {
            continue;
        }
        left -= 1;
        let host = &hosts[tag];
        each(
            host,
            response.unwrap_or_else(|| {
                failed(
                    ServerCode::DISCONNECTED,
                    format!("host {host}: disconnected before answering"),
                )
            }),
        );
    }
    let secs = timeout.as_secs_f64();
    for (tag, still) in waiting.iter().enumerate() {
        if *still {
            let host = &hosts[tag];
            each(
                host,
                failed(
                    ServerCode::TIMED_OUT,
                    format!("host {host}: no response within {secs} s"),
                ),
            );
        }
    }
}

/// Answers the requests other nodes route to `host` while its session
/// lives here (the task is aborted when the session ends, which drops the
/// hold and so the subscription).
pub async fn serve_hold(shared: Arc<Shared>, mut hold: basicagent_cluster::HostHold) {
    let host = hold.host_id().to_owned();
    while let Some(req) = hold.next().await {
        let shared = shared.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let reply = match decode_request(req.payload()) {
                Some((timeout, request)) => {
                    let mut out = None;
                    ask_local(
                        &shared,
                        std::slice::from_ref(&host),
                        request,
                        timeout,
                        |_, r| out = Some(r),
                    )
                    .await;
                    out.unwrap_or_else(|| {
                        Response::failed(None, ServerCode::OFFLINE, "no answer".to_owned())
                    })
                }
                None => Response::failed(
                    None,
                    Retcode::INVALID_REQUEST,
                    "malformed routed request".to_owned(),
                ),
            };
            if let Err(e) = req.respond(Bytes::from(reply.to_json())).await {
                log::warn!("{host}: routed answer not sent: {e}");
            }
        });
    }
}

/// The fan-out filter: `{"all":true}` or `{"name":GLOB}`.
pub fn filter_keeps(filter: &Value, name: &str) -> Option<bool> {
    if filter.get("all") == Some(&Value::Bool(true)) {
        return Some(true);
    }
    filter
        .get("name")
        .and_then(Value::as_str)
        .map(|g| glob_match(g, name))
}

async fn on_fanout(shared: Weak<Shared>, req: FanoutRequest, sink: FanoutSink) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let Ok(filter) = serde_json::from_slice::<Value>(&req.filter) else {
        log::warn!("fan-out from {}: malformed filter ignored", req.from);
        return;
    };
    let Some((timeout, request)) = decode_request(&req.payload) else {
        log::warn!("fan-out from {}: malformed request ignored", req.from);
        return;
    };
    let hosts: Vec<String> = shared
        .registry
        .agents()
        .iter()
        .filter(|a| filter_keeps(&filter, &a.name) == Some(true))
        .map(|a| a.host.clone())
        .collect();
    if hosts.is_empty() {
        return;
    }
    // Answers go out as they come, through a channel (the sink is async).
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Response)>();
    let request = request.to_owned();
    let asker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            ask_local(&shared, &hosts, &request, timeout, |h, r| {
                let _ = tx.send((h.to_owned(), r));
            })
            .await;
        })
    };
    while let Some((host, response)) = rx.recv().await {
        let mut line = Bytes::from(response.to_json());
        if let Err(basicagent_cluster::ClusterError::PayloadTooLarge { size, .. }) =
            sink.send(host.clone(), line.clone()).await
        {
            line = Bytes::from(
                Response::failed(
                    None,
                    Retcode::INVALID_REQUEST,
                    format!("the answer of {size} bytes is too large for the cluster route"),
                )
                .to_json(),
            );
            let _ = sink.send(host, line).await;
        }
    }
    let _ = asker.await;
}

/// Closes this node's sessions, [`DRAIN_RATE`] per second; agents come
/// back through their server list and are redirected to their owner.
pub fn start_drain(shared: &Arc<Shared>) {
    let Some(cm) = &shared.cluster else { return };
    if cm.cluster.is_draining() {
        return;
    }
    cm.cluster.drain();
    log::info!("node {}: draining", cm.name);
    shared
        .events
        .emit("draining", serde_json::json!({"node": cm.name}));
    let shared = shared.clone();
    tokio::spawn(async move {
        let pause = Duration::from_millis(1000 / DRAIN_RATE.max(1));
        // Rounds until no session is left (agents whose owner is this node
        // anyway, with every node draining, stay).
        for _ in 0..3 {
            let agents = shared.registry.agents();
            if agents.is_empty() {
                break;
            }
            for a in agents {
                if let Some(cm) = &shared.cluster {
                    if cm.cluster.redirect_for(&a.host).is_none() {
                        continue;
                    }
                }
                shared.registry.close_host(&a.host, "node draining");
                tokio::time::sleep(pause).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Starts the node's background parts: the fan-out handler, the drain
/// subject, and `node_gone` for dead peers (and for this node's previous run).
pub async fn start(shared: &Arc<Shared>) -> Result<(), basicagent_cluster::ClusterError> {
    let Some(cm) = &shared.cluster else {
        return Ok(());
    };
    let weak = Arc::downgrade(shared);
    cm.cluster
        .on_fanout(move |req, sink| on_fanout(weak.clone(), req, sink));

    // Agents the previous run of this node held are not connected any more.
    let me = cm.name.clone();
    let at = now_millis();
    if let Err(e) = shared.storage.read(move |s| s.node_gone(&me, at)).await {
        log::error!("store node_gone for this node's previous run: {e}");
    }

    let mut events = cm.cluster.subscribe_members();
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("membership events lagged by {n}");
                    continue;
                }
                Err(_) => return,
            };
            let node = match ev {
                MemberEvent::Dead(node) | MemberEvent::Left(node) => node,
                MemberEvent::Joined(_) => {
                    // A peer (re)joined our view. If this node was the one
                    // cut off or stalled (it saw everyone die, or everyone
                    // saw it die), its peers have run node_gone for it:
                    // write our sessions again, now and once more after
                    // the peers' own node_gone calls have surely landed.
                    let Some(shared) = weak.upgrade() else { return };
                    shared.storage.queue_stale();
                    let later = weak.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(REJOIN_RESYNC_AGAIN).await;
                        if let Some(shared) = later.upgrade() {
                            shared.storage.queue_stale();
                        }
                    });
                    continue;
                }
                _ => continue,
            };
            let Some(shared) = weak.upgrade() else { return };
            let at = now_millis();
            let name = node.name.clone();
            shared.events.emit(
                "node_gone",
                serde_json::json!({"node": name, "peer_addr": node.peer_addr}),
            );
            // Retried: PostgreSQL may be down right now.
            for attempt in 0..30u32 {
                let name = name.clone();
                match shared.storage.read(move |s| s.node_gone(&name, at)).await {
                    Ok(n) => {
                        log::info!("node {} gone: {n} agents marked offline", node.name);
                        break;
                    }
                    Err(e) => {
                        log::warn!("store node_gone {} (attempt {attempt}): {e}", node.name);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });

    tokio::spawn(resync_loop(Arc::downgrade(shared)));

    let mut sub = cm
        .cluster
        .nats()
        .subscribe(drain_subject(&cm.name))
        .await
        .map_err(|e| basicagent_cluster::ClusterError::Nats(e.to_string()))?;
    let weak = Arc::downgrade(shared);
    let client = cm.cluster.nats().clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(shared) = weak.upgrade() else { return };
            start_drain(&shared);
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, Bytes::from_static(b"ok")).await;
            }
        }
    });
    Ok(())
}

/// After a failed agents write (PostgreSQL was down), makes the agents
/// table match this node's sessions again: rows of ours that are gone are
/// marked offline, sessions missing or on another node are written again.
async fn resync_loop(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.storage.take_agents_stale() {
            continue;
        }
        let Some(me) = shared.cluster.as_ref().map(|c| c.name.clone()) else {
            return;
        };
        // Rows written after this moment (a host re-homed meanwhile) are
        // newer than the "gone" below and stay connected.
        let read_at = now_millis();
        let rows = match shared.storage.read(|s| s.agents()).await {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("agents resync: {e} (retried)");
                // Put the flag back: try again next round.
                shared.storage.queue_stale();
                continue;
            }
        };
        let local = shared.registry.agents();
        let mine: std::collections::HashSet<&str> = local.iter().map(|a| a.host.as_str()).collect();
        let stale: Vec<String> = rows
            .iter()
            .filter(|r| {
                r.connected_at.is_some()
                    && r.node.as_deref() == Some(me.as_str())
                    && !mine.contains(r.host.as_str())
            })
            .map(|r| r.host.clone())
            .collect();
        let by_host: std::collections::HashMap<&str, &basicagent_store::AgentRow> =
            rows.iter().map(|r| (r.host.as_str(), r)).collect();
        let mut again = 0usize;
        for a in &local {
            let ok = by_host.get(a.host.as_str()).is_some_and(|r| {
                r.connected_at.is_some() && r.node.as_deref() == Some(me.as_str())
            });
            if !ok {
                again += 1;
                shared
                    .storage
                    .queue(crate::storage::Op::Seen(basicagent_store::AgentRecord {
                        host: a.host.clone(),
                        name: a.name.clone(),
                        addr: a.peer.to_string(),
                        version: a.version.clone(),
                        plugins: a.plugins.clone(),
                        node: Some(me.clone()),
                        connected_at: (a.connected_at * 1000.0) as i64,
                    }));
            }
        }
        let gone = stale.len();
        for host in stale {
            shared
                .storage
                .queue(crate::storage::Op::Gone { host, at: read_at });
        }
        log::info!("agents resync: {again} sessions written again, {gone} stale rows offline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_from_private_files() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(url_arg("nats", "nats://h:1").unwrap(), "nats://h:1");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "nats://node:pw@127.0.0.1:4222\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let arg = format!("@{}", f.display());
        assert_eq!(
            url_arg("nats", &arg).unwrap(),
            "nats://node:pw@127.0.0.1:4222"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(url_arg("nats", &arg).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&f, "a\nb\n").unwrap();
        assert!(url_arg("db", &arg).unwrap_err().contains("one line"));
        std::fs::write(&f, "x".repeat(5000)).unwrap();
        assert!(url_arg("db", &arg).unwrap_err().contains("4 KiB"));
        let d = format!("@{}", dir.path().display());
        assert!(url_arg("db", &d).is_err());
        assert!(url_arg("db", "@/nonexistent/x")
            .unwrap_err()
            .contains("--db @/nonexistent/x"));
    }

    /// Regression: with 20 000 descriptors a cluster node allowed 19 936
    /// sessions, the one-node figure, although its PostgreSQL pool and NATS
    /// socket take 9 descriptors the reserve's base does not count.
    #[test]
    fn cluster_sessions_leave_room_for_the_pool_and_nats() {
        assert_eq!(room_after_cluster(20_000, false), usize::MAX);
        assert_eq!(room_after_cluster(20_000, true), 20_000 - 64 - 9);
        assert_eq!(room_after_cluster(10, true), 0);
    }

    #[test]
    fn routed_requests_round_trip_and_bad_bytes_are_refused() {
        let b = encode_request(r#"{"method":"ping"}"#, Duration::from_millis(1500));
        let (t, r) = decode_request(&b).unwrap();
        assert_eq!(t, Duration::from_millis(1500));
        assert_eq!(r, r#"{"method":"ping"}"#);
        assert!(decode_request(b"short").is_none());
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert_eq!(decode_request(&huge).unwrap().0, Duration::from_secs(3600));
        let mut bad = 5u64.to_be_bytes().to_vec();
        bad.push(0xff);
        assert!(decode_request(&bad).is_none());
    }

    #[test]
    fn filters() {
        let all: Value = serde_json::json!({"all": true});
        let web: Value = serde_json::json!({"name": "web-*"});
        assert_eq!(filter_keeps(&all, "x"), Some(true));
        assert_eq!(filter_keeps(&web, "web-1"), Some(true));
        assert_eq!(filter_keeps(&web, "db-1"), Some(false));
        assert_eq!(filter_keeps(&serde_json::json!({"x": 1}), "web-1"), None);
    }
}
