//! The server's cluster layer over core NATS: live membership, placement by
//! rendezvous hashing, request/reply routing to the node holding a host, and
//! a cluster-wide fan-out with per-node end markers.
//!
//! Only core NATS is used (publish, subscribe, queue groups, request/reply,
//! headers and "no responders"), all of which Debian's nats-server 2.9
//! has; no JetStream. Nothing here knows the server's internals: payloads,
//! fan-out filters and replies are opaque bytes.
//!
//! Subjects:
//!
//! | subject | who publishes | what |
//! |---|---|---|
//! | `ba.nodes.heartbeat` | every node, every `heartbeat_interval` | [`wire::Heartbeat`] JSON |
//! | `ba.nodes.leave` | a node on [`Cluster::leave`] | the same JSON |
//! | `ba.host.<escaped id>` | [`Cluster::request_host`] | a request for the holder (queue group `holders`) |
//! | `ba.fanout` | [`Cluster::fanout`] | filter + payload, answered on the caller's inbox |
//!
//! ```no_run
//! # async fn demo() -> Result<(), basicagent_cluster::ClusterError> {
//! use basicagent_cluster::{Cluster, ClusterOptions, FanoutEvent};
//! use futures_util::StreamExt;
//! use std::time::Duration;
//!
//! let cluster = Cluster::connect(ClusterOptions::new(
//!     "nats://127.0.0.1:4222", "node-1", "127.0.0.1:9443")).await?;
//!
//! // At `init`: send the agent to its owner, or keep it and hold its subject.
//! if let Some(peer) = cluster.redirect_for("0b7f5d1c-445e-49c0-8612-111b741b920f") {
//!     println!("redirect to {peer}");
//! } else {
//!     let mut hold = cluster.hold("0b7f5d1c-445e-49c0-8612-111b741b920f").await?;
//!     tokio::spawn(async move {
//!         while let Some(req) = hold.next().await {
//!             // ... pass req.payload() to the agent, then:
//!             let _ = req.respond(bytes::Bytes::from_static(b"{}")).await;
//!         }
//!     });
//! }
//!
//! // Any node reaches any held host; an unheld one fails at once.
//! let reply = cluster.request_host("some-host", "req".into(), Duration::from_secs(5)).await;
//!
//! // Fan-out: every node answers for its own hosts.
//! cluster.on_fanout(|req, sink| async move {
//!     let _ = sink.send("host-a", bytes::Bytes::from_static(b"answer")).await;
//! });
//! let mut answers = cluster.fanout("all".into(), "req".into(), Duration::from_secs(3)).await?;
//! while let Some(ev) = answers.next().await {
//!     match ev {
//!         FanoutEvent::Reply { node, host, reply } => { /* ... */ }
//!         FanoutEvent::NodeDone { .. } | FanoutEvent::NodeLost { .. } => {}
//!         FanoutEvent::TimedOut { pending } => { /* these nodes' hosts did not answer */ }
//!     }
//! }
//! cluster.leave().await;
//! # Ok(()) }
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod creds;
pub mod liveness;
pub mod placement;
pub mod subject;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderMap;
use async_nats::{Client, ConnectOptions, Message, Subject, Subscriber};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

pub use subject::{escape_host_id, host_subject, MAX_HOST_ID_LEN};

/// Errors at the crate boundary.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The options are unusable (bad node name, zero intervals, ...).
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
    /// The first connection to NATS failed.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A host id that cannot be routed (empty or too long).
    #[error("invalid host id: {0}")]
    InvalidHostId(String),
    /// No node holds a session for the host ("no responders", answered at once).
    #[error("no node holds this host")]
    NoHolder,
    /// The holder did not answer in time.
    #[error("timed out waiting for the holder")]
    Timeout,
    /// This node is not connected to NATS right now (it reconnects by itself).
    #[error("not connected to NATS")]
    Disconnected,
    /// A payload larger than the NATS server's `max_payload`.
    #[error("payload of {size} bytes is over the NATS limit of {max}")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The fan-out caller is gone (its stream was dropped or timed out).
    #[error("the fan-out caller is gone")]
    FanoutClosed,
    /// Any other NATS error.
    #[error("NATS: {0}")]
    Nats(String),
}

/// How to join the cluster. Build with [`ClusterOptions::new`] and adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// NATS URL, e.g. `nats://127.0.0.1:4222` (a comma-separated list works).
    pub url: String,
    /// This node's name: unique in the cluster, 1-64 bytes of `[A-Za-z0-9._-]`.
    pub node_name: String,
    /// The address agents are redirected to (`host:port`), sent in heartbeats.
    pub peer_addr: String,
    /// NATS client ping interval; two unanswered pings close the connection,
    /// so a dead NATS server is noticed in about three intervals. Default 1 s.
    pub ping_interval: Duration,
    /// How often this node heartbeats. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is dead. Default 3 s.
    pub dead_after: Duration,
    /// Timeout of the first connect and of each reconnect attempt. Default 2 s.
    pub connect_timeout: Duration,
    /// Keep retrying the first connect in the background instead of failing.
    /// Default false: [`Cluster::connect`] fails with a clear error.
    pub retry_initial_connect: bool,
    /// Largest fan-out answer chunk in bytes (capped by the server's
    /// `max_payload`). Default 64 KiB.
    pub fanout_chunk_bytes: usize,
    /// Longest a fan-out answer waits in a part-filled chunk. Default 2 ms.
    pub fanout_linger: Duration,
}

impl ClusterOptions {
    /// Options with the defaults documented on each field.
    pub fn new(
        url: impl Into<String>,
        node_name: impl Into<String>,
        peer_addr: impl Into<String>,
    ) -> Self {
        ClusterOptions {
            url: url.into(),
            node_name: node_name.into(),
            peer_addr: peer_addr.into(),
            ping_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            retry_initial_connect: false,
            fanout_chunk_bytes: 64 * 1024,
            fanout_linger: Duration::from_millis(2),
        }
    }

    fn check(&self) -> Result<(), ClusterError> {
        subject::check_node_name(&self.node_name).map_err(ClusterError::InvalidOptions)?;
        if self.peer_addr.is_empty() || self.peer_addr.len() > 256 {
            return Err(ClusterError::InvalidOptions(
                "peer_addr must be 1 to 256 bytes".into(),
            ));
        }
        for (what, d) in [
            ("ping_interval", self.ping_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("dead_after", self.dead_after),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(ClusterError::InvalidOptions(format!(
                    "{what} must be above zero"
                )));
            }
        }
        if self.dead_after <= self.heartbeat_interval {
            return Err(ClusterError::InvalidOptions(
                "dead_after must be longer than heartbeat_interval".into(),
            ));
        }
        if self.fanout_chunk_bytes < 1024 {
            return Err(ClusterError::InvalidOptions(
                "fanout_chunk_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

/// A live node as the membership view sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// The address agents are redirected to.
    pub peer_addr: String,
    /// Agent sessions it holds (its live [`HostHold`]s).
    pub sessions: u64,
    /// Draining: placement skips it.
    pub draining: bool,
    /// When it started, Unix milliseconds.
    pub started_at: u64,
}

impl Node {
    fn from_heartbeat(hb: &wire::Heartbeat) -> Self {
        Node {
            name: hb.node.clone(),
            peer_addr: hb.peer_addr.clone(),
            sessions: hb.sessions,
            draining: hb.draining,
            started_at: hb.started_at,
        }
    }
}

/// A change of membership, from [`Cluster::subscribe_members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node was heard for the first time (or again after being dead).
    Joined(Node),
    /// A node left cleanly.
    Left(Node),
    /// A node fell silent for `dead_after`.
    Dead(Node),
    /// A node restarted (new instance) or changed its peer address or
    /// draining flag. Session counts change without an event.
    Changed(Node),
}

/// The state of this node's NATS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected to a NATS server.
    Connected,
    /// Not connected; the client is reconnecting by itself.
    Disconnected,
    /// Not yet connected for the first time.
    Pending,
}

struct Peer {
    hb: wire::Heartbeat,
    last_seen: Instant,
    /// Set when this node was stalled for `dead_after` or more: the peer
    /// has likely declared us dead. Its next heartbeat is reported as
    /// [`MemberEvent::Joined`], so the server writes its sessions again.
    rejoin: bool,
}

type FanoutFn = Arc<
    dyn Fn(FanoutRequest, FanoutSink) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

struct Inner {
    /// The main connection: host subjects, requests, fan-outs.
    client: Client,
    /// The membership connection, driven by the membership thread:
    /// heartbeats and leaves only, so bulk traffic on `client` never
    /// queues in front of them.
    mclient: Client,
    opts: ClusterOptions,
    started_at: u64,
    instance: String,
    draining: AtomicBool,
    held: AtomicU64,
    peers: Mutex<HashMap<String, Peer>>,
    events: broadcast::Sender<MemberEvent>,
    members_tx: watch::Sender<Vec<Node>>,
    beat_now: Arc<Notify>,
    fanout_handler: RwLock<Option<FanoutFn>>,
    left: AtomicBool,
    fanouts_running: AtomicUsize,
}

/// Aborts the background tasks and stops the membership thread when the
/// last [`Cluster`] handle goes, without a leave message (peers then see
/// the node dead after `dead_after`, as after a crash).
struct Tasks {
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Dropping it stops the membership thread (its runtime, tasks and
    /// connection go with it).
    membership: Mutex<Option<oneshot::Sender<()>>>,
}

impl Tasks {
    fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        if let Ok(mut m) = self.membership.lock() {
            m.take();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node's handle on the cluster. Cheap to clone; the background tasks
/// (heartbeat, membership, fan-out answers) stop when the last clone is
/// dropped. Call [`Cluster::leave`] first for a clean leave.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `now + d`, saturating at about a year from now (a huge timeout from a
/// caller or a peer must not overflow the clock).
fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

fn nats_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// One NATS connection with the cluster's options. `role` names it in
/// logs and in the server's connection list (`""` for the main one);
/// `beat_on_event`, for the membership connection, asks for a heartbeat
/// at once after every connection event, so peers that were cut off with
/// us see us again within a round trip.
async fn connect_client(
    opts: &ClusterOptions,
    split: &creds::Split,
    role: &'static str,
    beat_on_event: Option<Arc<Notify>>,
) -> Result<Client, ClusterError> {
    let name = format!("{}{role}", opts.node_name);
    let mut co = ConnectOptions::new()
        .name(format!("basicagent-{name}"))
        .ping_interval(opts.ping_interval)
        .connection_timeout(opts.connect_timeout)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(
                100u64.saturating_mul(u64::try_from(attempts).unwrap_or(u64::MAX)),
            )
            .min(Duration::from_secs(1))
        })
        .event_callback(move |ev| {
            let name = name.clone();
            let beat = beat_on_event.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        log::info!("cluster {name}: connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        log::warn!("cluster {name}: NATS connection lost, reconnecting")
                    }
                    other => log::warn!("cluster {name}: NATS event: {other}"),
                }
                if let Some(b) = beat {
                    b.notify_one();
                }
            }
        });
    if opts.retry_initial_connect {
        co = co.retry_on_initial_connect();
    }
    if let Some((user, password)) = split.user_password.clone() {
        co = co.user_and_password(user, password);
    }
    co.connect(split.urls.as_str())
        .await
        .map_err(|e| ClusterError::Connect {
            url: split.urls.clone(),
            reason: e.to_string(),
        })
}

/// The membership thread's whole life, on its own current-thread runtime:
/// connect the membership client and hand it over, wait for the shared
/// state, subscribe `ba.nodes.>`, then heartbeat, read heartbeats and
/// sweep until `stop` fires or its sender is dropped. Nothing else runs on
/// this runtime, so busy workers of the server's runtime and bulk traffic
/// on the main connection cannot delay a heartbeat in either direction.
async fn membership_thread(
    opts: ClusterOptions,
    split: creds::Split,
    beat_now: Arc<Notify>,
    client_tx: oneshot::Sender<Result<Client, ClusterError>>,
    inner_rx: oneshot::Receiver<Arc<Inner>>,
    ready_tx: oneshot::Sender<Result<(), ClusterError>>,
    stop: oneshot::Receiver<()>,
) {
    let client = match connect_client(&opts, &split, "-members", Some(beat_now)).await {
        Ok(c) => c,
        Err(e) => {
            let _ = client_tx.send(Err(e));
            return;
        }
    };
    if client_tx.send(Ok(client)).is_err() {
        return;
    }
    let Ok(inner) = inner_rx.await else { return };
    let sub = match inner.mclient.subscribe("ba.nodes.>").await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready_tx.send(Err(nats_err(e)));
            return;
        }
    };
    let _ = ready_tx.send(Ok(()));
    tokio::select! {
        _ = membership_task(inner.clone(), sub) => {}
        _ = heartbeat_task(inner.clone()) => {}
        _ = sweep_task(inner.clone()) => {}
        _ = stop => {}
    }
    log::debug!(
        "cluster {}: membership thread stopped",
        inner.opts.node_name
    );
}

impl Cluster {
    /// Connects to NATS twice (the main connection, and the membership
    /// connection of the membership thread), subscribes the cluster
    /// subjects, sends the first heartbeat and starts the background
    /// tasks. Must run inside a tokio runtime (with the `time` driver).
    pub async fn connect(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        opts.check()?;
        // Credentials in the URL go to authentication, never into an error.
        let split =
            creds::split(&opts.url).map_err(|e| ClusterError::InvalidOptions(e.to_string()))?;
        let client = connect_client(&opts, &split, "", None).await?;

        // The membership thread connects its own client and sends it back;
        // then it waits for the shared state to start its tasks.
        let (client_tx, client_rx) = oneshot::channel::<Result<Client, ClusterError>>();
        let (inner_tx, inner_rx) = oneshot::channel::<Arc<Inner>>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ClusterError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let beat_now = Arc::new(Notify::new());
        {
            let opts = opts.clone();
            let beat_now = beat_now.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClusterError::Nats(format!("membership runtime: {e}")))?;
            std::thread::Builder::new()
                .name(format!("ba-members-{}", opts.node_name))
                .spawn(move || {
                    rt.block_on(membership_thread(
                        opts, split, beat_now, client_tx, inner_rx, ready_tx, stop_rx,
                    ));
                })
                .map_err(|e| ClusterError::Nats(format!("membership thread: {e}")))?;
        }
        let mclient = client_rx
            .await
            .map_err(|_| ClusterError::Nats("membership thread ended".into()))??;

        let (events, _) = broadcast::channel(1024);
        let (members_tx, _) = watch::channel(Vec::new());
        // A random per-run id: the inbox prefix's NUID.
        let instance = client.new_inbox().trim_start_matches("_INBOX.").to_string();
        let inner = Arc::new(Inner {
            client,
            mclient,
            started_at: unix_ms(),
            instance,
            draining: AtomicBool::new(false),
            held: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            events,
            members_tx,
            beat_now,
            fanout_handler: RwLock::new(None),
            left: AtomicBool::new(false),
            fanouts_running: AtomicUsize::new(0),
            opts,
        });
        inner.publish_members();
        let tasks = Tasks {
            tasks: Mutex::new(Vec::new()),
            membership: Mutex::new(Some(stop_tx)),
        };
        if inner_tx.send(inner.clone()).is_err() {
            return Err(ClusterError::Nats("membership thread ended".into()));
        }
        ready_rx
            .await
            .map_err(|_| ClusterError::Nats("membership thread ended".into()))??;

        let fanout_sub = inner
            .client
            .subscribe(wire::FANOUT_SUBJECT)
            .await
            .map_err(nats_err)?;
        if let Ok(mut t) = tasks.tasks.lock() {
            t.push(tokio::spawn(fanout_responder(inner.clone(), fanout_sub)));
        }
        // No flush here: with `retry_initial_connect` it would wait for
        // the server. The heartbeat task sends the first beat.
        inner.beat_now.notify_one();
        Ok(Cluster {
            inner,
            tasks: Arc::new(tasks),
        })
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.opts.node_name
    }

    /// This node as its peers see it.
    pub fn me(&self) -> Node {
        self.inner.me()
    }

    /// The state of the NATS connection right now.
    pub fn connection_state(&self) -> ConnectionState {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            async_nats::connection::State::Disconnected => ConnectionState::Disconnected,
            async_nats::connection::State::Pending => ConnectionState::Pending,
        }
    }

    /// The live nodes, this one included, sorted by name.
    pub fn members(&self) -> Vec<Node> {
        self.inner.members()
    }

    /// A watch of [`Cluster::members`], updated on every heartbeat received
    /// (so it also follows session counts).
    pub fn watch_members(&self) -> watch::Receiver<Vec<Node>> {
        self.inner.members_tx.subscribe()
    }

    /// Membership changes from now on. A receiver that lags more than 1024
    /// events gets `RecvError::Lagged` and should re-read [`Cluster::members`].
    pub fn subscribe_members(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// The owner of `host_id`: rendezvous hashing (see [`placement`]) over
    /// the live, non-draining nodes (this one included unless draining).
    /// `None` only when every live node is draining.
    pub fn owner(&self, host_id: &str) -> Option<Node> {
        let mut nodes: Vec<Node> = self.members().into_iter().filter(|n| !n.draining).collect();
        let i = placement::owner_index(
            &nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            host_id,
        )?;
        Some(nodes.swap_remove(i))
    }

    /// Where to redirect an agent with `host_id` at `init`: the owner's
    /// `peer_addr`, or `None` when this node is the owner (or no node can
    /// take it, when all are draining: then keep it).
    pub fn redirect_for(&self, host_id: &str) -> Option<String> {
        let owner = self.owner(host_id)?;
        if owner.name == self.inner.opts.node_name {
            None
        } else {
            Some(owner.peer_addr)
        }
    }

    /// Marks this node draining (or not) in its heartbeats, sent at once:
    /// [`Cluster::owner`] on every node then skips it, and the server
    /// redirects its agents away.
    pub fn set_draining(&self, draining: bool) {
        let was = self.inner.draining.swap(draining, Ordering::SeqCst);
        if was != draining {
            self.inner.publish_members();
            self.inner.beat_now.notify_one();
        }
    }

    /// [`Cluster::set_draining`]`(true)`.
    pub fn drain(&self) {
        self.set_draining(true);
    }

    /// Whether this node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Starts holding `host_id`: subscribes `ba.host.<escaped id>` (queue
    /// group `holders`, so each request reaches one holder even while a
    /// re-homed agent briefly has two sessions). It returns once the NATS
    /// server has the subscription; while NATS is down it returns at once
    /// and the subscription takes effect on reconnect. The returned [`HostHold`]
    /// is a stream of [`HostRequest`]s; dropping it unsubscribes. Each live
    /// hold counts as one session in heartbeats.
    pub async fn hold(&self, host_id: &str) -> Result<HostHold, ClusterError> {
        let subject = host_subject(host_id)?;
        let sub = self
            .inner
            .client
            .queue_subscribe(subject, "holders".to_string())
            .await
            .map_err(nats_err)?;
        self.inner.held.fetch_add(1, Ordering::SeqCst);
        let hold = HostHold {
            sub,
            inner: self.inner.clone(),
            host_id: host_id.to_string(),
        };
        // Return only once the server has the subscription, so a request
        // sent from any node right after finds this holder. While NATS is
        // down the hold is kept: the client subscribes it on reconnect.
        match self.sync().await {
            Ok(()) | Err(ClusterError::Disconnected) => Ok(hold),
            Err(e) => Err(e),
        }
    }

    /// Returns once the NATS server has processed everything this node sent
    /// before (subscriptions included): a message to a fresh inbox of our
    /// own, published and received back on the same connection.
    /// [`ClusterError::Disconnected`] when that takes longer than
    /// `connect_timeout` or there is no connection.
    pub async fn sync(&self) -> Result<(), ClusterError> {
        self.inner.check_connected()?;
        let inbox = self.inner.client.new_inbox();
        let mut sub = self
            .inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(nats_err)?;
        self.inner
            .client
            .publish(inbox, Bytes::new())
            .await
            .map_err(nats_err)?;
        match tokio::time::timeout(self.inner.opts.connect_timeout, sub.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(ClusterError::Disconnected),
        }
    }

    /// Sends `payload` to the node holding `host_id` and waits up to
    /// `timeout` for its reply. [`ClusterError::NoHolder`] comes at once
    /// when nobody holds the host; [`ClusterError::Disconnected`] at once
    /// when this node has no NATS connection (and in place of a timeout
    /// if the connection was lost meanwhile).
    pub async fn request_host(
        &self,
        host_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClusterError> {
        let subject = host_subject(host_id)?;
        self.inner.check_connected()?;
        self.inner.check_size(payload.len())?;
        let req = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        let res = tokio::time::timeout(
            timeout.saturating_add(Duration::from_millis(100)),
            self.inner.client.send_request(subject, req),
        )
        .await;
        match res {
            Ok(Ok(msg)) => Ok(msg.payload),
            Ok(Err(e)) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => ClusterError::NoHolder,
                async_nats::RequestErrorKind::TimedOut => self.inner.timeout_or_disconnected(),
                async_nats::RequestErrorKind::MaxPayloadExceeded => ClusterError::PayloadTooLarge {
                    size: 0,
                    max: self.inner.client.server_info().max_payload,
                },
                _ => {
                    if self.inner.check_connected().is_err() {
                        ClusterError::Disconnected
                    } else {
                        nats_err(e)
                    }
                }
            }),
            Err(_) => Err(self.inner.timeout_or_disconnected()),
        }
    }

    /// Registers the handler that answers fan-outs for this node's hosts
    /// (replacing any earlier one). For each fan-out it is called with the
    /// request and a [`FanoutSink`]; it sends one `(host, reply)` per
    /// matching host it holds, and the node's end marker goes out when the
    /// sink and all its clones are dropped (normally: when the returned
    /// future, which owns the sink, finishes) or at the fan-out's deadline,
    /// when the handler's future is cancelled. A node with
    /// no handler answers every fan-out with an empty end marker.
    pub fn on_fanout<F, Fut>(&self, handler: F)
    where
        F: Fn(FanoutRequest, FanoutSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f: FanoutFn = Arc::new(move |req, sink| Box::pin(handler(req, sink)));
        if let Ok(mut h) = self.inner.fanout_handler.write() {
            *h = Some(f);
        }
    }

    /// Publishes one fan-out on `ba.fanout` and returns the stream of
    /// answers: every live node (this one included) answers with its
    /// hosts' replies in chunks, then an end marker. The stream yields
    /// [`FanoutEvent::NodeDone`] per node that finished,
    /// [`FanoutEvent::NodeLost`] for one that died (membership said dead or
    /// left) before its end marker, and ends when every node it waits for
    /// is done or lost, or with [`FanoutEvent::TimedOut`] after `timeout`.
    /// Nodes that answer without being in the membership view when the
    /// fan-out started are waited for too if they are live members by
    /// then; answers under names that are not members are passed on but
    /// not waited for.
    pub async fn fanout(
        &self,
        filter: Bytes,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<FanoutStream, ClusterError> {
        self.inner.check_connected()?;
        let body = wire::encode_fanout(&filter, &payload).ok_or(ClusterError::PayloadTooLarge {
            size: filter.len(),
            max: self.inner.client.server_info().max_payload,
        })?;
        self.inner.check_size(body.len())?;
        let inbox = self.inner.client.new_inbox();
        let sub = self
            .inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(nats_err)?;
        // Subscribe to membership before the snapshot, so no death between
        // the two is missed.
        let member_rx = self.inner.events.subscribe();
        let expected: HashSet<String> = self.members().into_iter().map(|n| n.name).collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::H_TIMEOUT_MS,
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .to_string(),
        );
        headers.insert(wire::H_FROM, self.inner.opts.node_name.as_str());
        self.inner
            .client
            .publish_with_reply_and_headers(wire::FANOUT_SUBJECT, inbox, headers, body)
            .await
            .map_err(nats_err)?;
        match tokio::time::timeout(self.inner.opts.connect_timeout, self.inner.client.flush()).await
        {
            Ok(Ok(())) => {}
            _ => return Err(ClusterError::Disconnected),
        }
        let (tx, rx) = mpsc::channel(4096);
        let deadline = deadline_after(timeout);
        let view = self.inner.members_tx.subscribe();
        let task = tokio::spawn(fanout_collector(
            sub, member_rx, view, expected, deadline, tx,
        ));
        Ok(FanoutStream { rx, task })
    }

    /// Leaves cleanly: publishes a leave message (peers drop this node at
    /// once instead of after `dead_after`), flushes, and stops the
    /// background tasks. Holds and other handles stay usable for NATS but
    /// this node no longer heartbeats.
    pub async fn leave(&self) {
        self.inner.left.store(true, Ordering::SeqCst);
        let hb = self.inner.heartbeat();
        if let Ok(body) = serde_json::to_vec(&hb) {
            let _ = self
                .inner
                .mclient
                .publish(wire::LEAVE_SUBJECT, body.into())
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.mclient.flush()).await;
        }
        self.tasks.stop();
    }

    /// The underlying NATS client, for anything this crate does not cover.
    pub fn nats(&self) -> &Client {
        &self.inner.client
    }
}

impl Inner {
    fn heartbeat(&self) -> wire::Heartbeat {
        wire::Heartbeat {
            node: self.opts.node_name.clone(),
            peer_addr: self.opts.peer_addr.clone(),
            sessions: self.held.load(Ordering::SeqCst),
            draining: self.draining.load(Ordering::SeqCst),
            started_at: self.started_at,
            instance: self.instance.clone(),
        }
    }

    fn me(&self) -> Node {
        Node::from_heartbeat(&self.heartbeat())
    }

    fn members(&self) -> Vec<Node> {
        let mut out = vec![self.me()];
        if let Ok(peers) = self.peers.lock() {
            out.extend(peers.values().map(|p| Node::from_heartbeat(&p.hb)));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn publish_members(&self) {
        self.members_tx.send_replace(self.members());
    }

    fn check_connected(&self) -> Result<(), ClusterError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(ClusterError::Disconnected),
        }
    }

    fn timeout_or_disconnected(&self) -> ClusterError {
        if self.check_connected().is_err() {
            ClusterError::Disconnected
        } else {
            ClusterError::Timeout
        }
    }

    fn check_size(&self, size: usize) -> Result<(), ClusterError> {
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(ClusterError::PayloadTooLarge { size, max });
        }
        Ok(())
    }

    fn on_heartbeat(&self, msg: &Message) {
        if msg.payload.len() > wire::MAX_HEARTBEAT {
            log::warn!("cluster: heartbeat of {} bytes ignored", msg.payload.len());
            return;
        }
        let hb: wire::Heartbeat = match serde_json::from_slice(&msg.payload) {
            Ok(hb) => hb,
            Err(e) => {
                log::warn!("cluster: bad heartbeat ignored: {e}");
                return;
            }
        };
        if let Err(e) = subject::check_node_name(&hb.node) {
            log::warn!("cluster: heartbeat ignored: {e}");
            return;
        }
        if hb.peer_addr.len() > 256 {
            log::warn!(
                "cluster: heartbeat from {} ignored: peer_addr too long",
                hb.node
            );
            return;
        }
        if hb.node == self.opts.node_name {
            if hb.instance != self.instance {
                log::error!(
                    "cluster: another node also calls itself {:?} (instance {}); node names must be unique",
                    hb.node,
                    hb.instance
                );
            }
            return;
        }
        let leaving = msg.subject.as_str() == wire::LEAVE_SUBJECT;
        let event = {
            let Ok(mut peers) = self.peers.lock() else {
                return;
            };
            if leaving {
                // Only the instance we know may leave: a late leave of a
                // restarted node's old run must not remove the new one.
                match peers.get(&hb.node) {
                    Some(p) if p.hb.instance == hb.instance => peers
                        .remove(&hb.node)
                        .map(|p| MemberEvent::Left(Node::from_heartbeat(&p.hb))),
                    _ => None,
                }
            } else if let Some(p) = peers.get_mut(&hb.node) {
                let changed = p.hb.instance != hb.instance
                    || p.hb.peer_addr != hb.peer_addr
                    || p.hb.draining != hb.draining;
                p.hb = hb.clone();
                p.last_seen = Instant::now();
                if std::mem::take(&mut p.rejoin) {
                    Some(MemberEvent::Joined(Node::from_heartbeat(&hb)))
                } else {
                    changed.then(|| MemberEvent::Changed(Node::from_heartbeat(&hb)))
                }
            } else {
                const MAX_PEERS: usize = 4096;
                if peers.len() >= MAX_PEERS {
                    log::warn!(
                        "cluster: over {MAX_PEERS} peers, heartbeat from {} ignored",
                        hb.node
                    );
                    return;
                }
                peers.insert(
                    hb.node.clone(),
                    Peer {
                        hb: hb.clone(),
                        last_seen: Instant::now(),
                        rejoin: false,
                    },
                );
                Some(MemberEvent::Joined(Node::from_heartbeat(&hb)))
            }
        };
        self.publish_members();
        if let Some(ev) = event {
            if matches!(ev, MemberEvent::Joined(_)) {
                // A newcomer learns about us in one round trip, not one interval.
                self.beat_now.notify_one();
            }
            log::info!("cluster {}: {ev:?}", self.opts.node_name);
            let _ = self.events.send(ev);
        }
    }
}

async fn membership_task(inner: Arc<Inner>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        inner.on_heartbeat(&msg);
    }
}

async fn heartbeat_task(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.opts.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut main_down_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.beat_now.notified() => {}
        }
        // After a leave: silent (the thread stops soon after).
        if inner.left.load(Ordering::SeqCst) {
            continue;
        }
        // Not while disconnected: the client would queue stale beats.
        if !matches!(
            inner.mclient.connection_state(),
            async_nats::connection::State::Connected
        ) {
            continue;
        }
        // A node whose main connection stays down cannot serve its hosts:
        // it stops heartbeating after `dead_after` of that, so its peers
        // declare it dead and place its agents elsewhere, as when both
        // connections were one. A short reconnect changes nothing.
        if inner.check_connected().is_err() {
            let since = *main_down_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= inner.opts.dead_after {
                continue;
            }
        } else {
            main_down_since = None;
        }
        inner.publish_members();
        match serde_json::to_vec(&inner.heartbeat()) {
            Ok(body) => {
                if let Err(e) = inner
                    .mclient
                    .publish(wire::HEARTBEAT_SUBJECT, body.into())
                    .await
                {
                    log::warn!("cluster: heartbeat not sent: {e}");
                }
            }
            Err(e) => log::error!("cluster: heartbeat not encoded: {e}"),
        }
    }
}

async fn sweep_task(inner: Arc<Inner>) {
    let period = (inner.opts.heartbeat_interval / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A sweep more than a second (at most one heartbeat interval) late
    // means this observer was stalled: see [`liveness::StallGuard`].
    let mut guard = liveness::StallGuard::new(
        period,
        inner.opts.heartbeat_interval.min(Duration::from_secs(1)),
        inner.opts.heartbeat_interval,
    );
    loop {
        tick.tick().await;
        let now = Instant::now();
        match guard.tick(now) {
            liveness::Tick::Judge => {}
            liveness::Tick::Hold => continue,
            liveness::Tick::Stalled(gap) => {
                log::warn!(
                    "cluster {}: membership stalled for {gap:?} (stall {}): no death verdicts until peers were heard for one more interval",
                    inner.opts.node_name,
                    guard.stalls()
                );
                if gap >= inner.opts.dead_after {
                    if let Ok(mut peers) = inner.peers.lock() {
                        for p in peers.values_mut() {
                            p.rejoin = true;
                        }
                    }
                }
                continue;
            }
        }
        let dead: Vec<Node> = {
            let Ok(mut peers) = inner.peers.lock() else {
                return;
            };
            let gone = liveness::expired_in(&peers, |p| p.last_seen, now, inner.opts.dead_after);
            gone.iter()
                .filter_map(|k| peers.remove(k))
                .map(|p| Node::from_heartbeat(&p.hb))
                .collect()
        };
        if !dead.is_empty() {
            inner.publish_members();
            for n in dead {
                log::warn!(
                    "cluster {}: node {} is dead (silent {:?})",
                    inner.opts.node_name,
                    n.name,
                    inner.opts.dead_after
                );
                let _ = inner.events.send(MemberEvent::Dead(n));
            }
        }
    }
}

/// A hold on one host's subject, from [`Cluster::hold`]: a stream of the
/// requests other nodes send to this host. Dropping it unsubscribes.
pub struct HostHold {
    sub: Subscriber,
    inner: Arc<Inner>,
    host_id: String,
}

impl HostHold {
    /// The held host id.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }
}

impl Stream for HostHold {
    type Item = HostRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<HostRequest>> {
        loop {
            match self.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    // A request without a reply subject cannot be answered:
                    // skip it rather than hand the server a dead end.
                    let Some(reply) = msg.reply else { continue };
                    return Poll::Ready(Some(HostRequest {
                        payload: msg.payload,
                        reply,
                        client: self.inner.client.clone(),
                    }));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for HostHold {
    fn drop(&mut self) {
        self.inner.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request for a held host; answer it with [`HostRequest::respond`].
pub struct HostRequest {
    payload: Bytes,
    reply: Subject,
    client: Client,
}

impl HostRequest {
    /// The request bytes, as given to [`Cluster::request_host`].
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Sends the reply to the requester.
    pub async fn respond(self, reply: Bytes) -> Result<(), ClusterError> {
        let max = self.client.server_info().max_payload;
        if max > 0 && reply.len() > max {
            return Err(ClusterError::PayloadTooLarge {
                size: reply.len(),
                max,
            });
        }
        self.client
            .publish(self.reply, reply)
            .await
            .map_err(nats_err)
    }
}

/// A fan-out as a node's handler sees it.
#[derive(Debug, Clone)]
pub struct FanoutRequest {
    /// The caller's filter, opaque to this crate (the server defines it).
    pub filter: Bytes,
    /// The caller's payload (e.g. the request to send each host).
    pub payload: Bytes,
    /// The calling node's name.
    pub from: String,
    /// When the caller stops waiting; answers after it are not sent.
    pub deadline: tokio::time::Instant,
}

/// Where a fan-out handler sends its hosts' replies.
#[derive(Clone)]
pub struct FanoutSink {
    tx: mpsc::Sender<(String, Bytes)>,
    max_entry: usize,
}

impl FanoutSink {
    /// Sends one host's reply. Fails with
    /// [`ClusterError::PayloadTooLarge`] for a reply that cannot fit in one
    /// NATS message (send a short error reply instead) and with
    /// [`ClusterError::FanoutClosed`] once the deadline has passed.
    pub async fn send(&self, host: impl Into<String>, reply: Bytes) -> Result<(), ClusterError> {
        let host = host.into();
        let size = host
            .len()
            .saturating_add(reply.len())
            .saturating_add(wire::ENTRY_OVERHEAD);
        if size > self.max_entry || host.len() > usize::from(u16::MAX) {
            return Err(ClusterError::PayloadTooLarge {
                size,
                max: self.max_entry,
            });
        }
        self.tx
            .send((host, reply))
            .await
            .map_err(|_| ClusterError::FanoutClosed)
    }
}

async fn fanout_responder(inner: Arc<Inner>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Some((filter, payload)) = wire::decode_fanout(&msg.payload) else {
            log::warn!("cluster: malformed fan-out request ignored");
            continue;
        };
        let header = |k: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(k))
                .map(|v| v.as_str().to_string())
        };
        let timeout_ms = header(wire::H_TIMEOUT_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5_000)
            .min(3_600_000);
        let deadline = deadline_after(Duration::from_millis(timeout_ms));
        let from = header(wire::H_FROM).unwrap_or_default();
        let req = FanoutRequest {
            filter,
            payload,
            from,
            deadline,
        };
        // A flood of fan-outs (a bug or a hostile publisher) must not pile
        // up handler tasks: past the limit a fan-out is answered at once
        // with an empty end marker marked cut, so its caller knows.
        if inner.fanouts_running.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_FANOUTS {
            inner.fanouts_running.fetch_sub(1, Ordering::SeqCst);
            log::warn!(
                "cluster: over {MAX_CONCURRENT_FANOUTS} fan-outs at once, one from {:?} refused",
                req.from
            );
            let h = end_marker(&inner.opts.node_name, 0, 0, true);
            let _ = inner
                .client
                .publish_with_headers(reply, h, Bytes::new())
                .await;
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            answer_fanout(inner.clone(), req, reply).await;
            inner.fanouts_running.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Fan-outs a node answers at once; more are refused with a cut end marker.
pub const MAX_CONCURRENT_FANOUTS: usize = 64;

fn end_marker(node: &str, count: u64, chunks: u64, cut: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(wire::H_NODE, node);
    h.insert(wire::H_KIND, "end");
    h.insert(wire::H_COUNT, count.to_string());
    h.insert(wire::H_CHUNKS, chunks.to_string());
    if cut {
        h.insert(wire::H_CUT, "1");
    }
    h
}

async fn answer_fanout(inner: Arc<Inner>, req: FanoutRequest, reply: Subject) {
    let server_max = inner.client.server_info().max_payload;
    let max = if server_max == 0 {
        1024 * 1024
    } else {
        server_max
    };
    // Room for headers on each message.
    let max_entry = max.saturating_sub(512);
    let chunk_bytes = inner.opts.fanout_chunk_bytes.min(max_entry);
    let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(1024);
    let handler = inner.fanout_handler.read().ok().and_then(|h| h.clone());
    let deadline = req.deadline;
    let work = handler.map(|h| tokio::spawn(h(req, FanoutSink { tx, max_entry })));
    let node = inner.opts.node_name.clone();
    let (mut count, mut chunks) = (0u64, 0u64);
    let mut buf = BytesMut::new();
    let mut cut = false;
    let publish = |buf: BytesMut, chunks: &mut u64| {
        let mut h = HeaderMap::new();
        h.insert(wire::H_NODE, node.as_str());
        h.insert(wire::H_KIND, "chunk");
        *chunks = chunks.saturating_add(1);
        inner
            .client
            .publish_with_headers(reply.clone(), h, buf.freeze())
    };
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let wake = linger.unwrap_or(deadline).min(deadline);
        tokio::select! {
            item = rx.recv() => match item {
                Some((host, r)) => {
                    let entry = host.len().saturating_add(r.len()).saturating_add(wire::ENTRY_OVERHEAD);
                    if buf.len().saturating_add(entry) > chunk_bytes && !buf.is_empty() {
                        let full = std::mem::take(&mut buf);
                        if publish(full, &mut chunks).await.is_err() { break; }
                        linger = None;
                    }
                    if wire::put_entry(&mut buf, &host, &r).is_some() {
                        count = count.saturating_add(1);
                    }
                    if linger.is_none() {
                        linger = Some(deadline_after(inner.opts.fanout_linger));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    cut = true;
                    break;
                }
                if !buf.is_empty() {
                    let full = std::mem::take(&mut buf);
                    if publish(full, &mut chunks).await.is_err() { break; }
                }
                linger = None;
            }
        }
    }
    if let Some(w) = work {
        w.abort();
    }
    if !buf.is_empty() {
        let _ = publish(buf, &mut chunks).await;
    }
    let h = end_marker(&node, count, chunks, cut);
    let _ = inner
        .client
        .publish_with_headers(reply, h, Bytes::new())
        .await;
}

/// One event of a fan-out's answer stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutEvent {
    /// One host's reply, from the node holding it.
    Reply {
        /// The answering node.
        node: String,
        /// The host.
        host: String,
        /// Its reply, as the node's handler sent it.
        reply: Bytes,
    },
    /// A node finished: `hosts` replies sent. `complete` is false when
    /// some of its chunks were lost on the way (core NATS drops messages
    /// to a slow consumer) or its deadline cut its answers short.
    NodeDone {
        /// The node.
        node: String,
        /// Replies it sent.
        hosts: u64,
        /// Whether every reply it sent arrived and it was not cut short.
        complete: bool,
    },
    /// A node died or left before its end marker; `hosts` replies of it
    /// arrived. Treat its other hosts as offline.
    NodeLost {
        /// The node.
        node: String,
        /// Replies received from it before it was lost.
        hosts: u64,
    },
    /// The timeout passed; these nodes had not finished. The last event.
    TimedOut {
        /// Nodes still pending, sorted.
        pending: Vec<String>,
    },
}

/// The answers of one fan-out, from [`Cluster::fanout`]. Dropping it stops
/// listening.
pub struct FanoutStream {
    rx: mpsc::Receiver<FanoutEvent>,
    task: JoinHandle<()>,
}

impl Stream for FanoutStream {
    type Item = FanoutEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FanoutEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for FanoutStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fanout_collector(
    mut sub: Subscriber,
    mut members: broadcast::Receiver<MemberEvent>,
    view: watch::Receiver<Vec<Node>>,
    mut pending: HashSet<String>,
    deadline: tokio::time::Instant,
    tx: mpsc::Sender<FanoutEvent>,
) {
    let mut done: HashSet<String> = HashSet::new();
    let mut got: HashMap<String, (u64, u64)> = HashMap::new(); // node -> (replies, chunks)
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    while !pending.is_empty() {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let header = |k: &str| msg.headers.as_ref().and_then(|h| h.get(k)).map(|v| v.as_str().to_string());
                let Some(node) = header(wire::H_NODE) else { continue };
                if done.contains(&node) || subject::check_node_name(&node).is_err() {
                    continue;
                }
                match header(wire::H_KIND).as_deref() {
                    Some("chunk") => {
                        let Some(entries) = wire::decode_chunk(&msg.payload) else {
                            log::warn!("cluster: malformed fan-out chunk from {node} dropped");
                            continue;
                        };
                        // A node that joined after the snapshot is waited
                        // for too, but only a live member: an answer under
                        // an unknown name is passed on, not waited for.
                        if !pending.contains(&node) && view.borrow().iter().any(|n| n.name == node) {
                            pending.insert(node.clone());
                        }
                        let g = got.entry(node.clone()).or_default();
                        g.0 = g.0.saturating_add(u64::try_from(entries.len()).unwrap_or(u64::MAX));
                        g.1 = g.1.saturating_add(1);
                        for (host, reply) in entries {
                            if tx.send(FanoutEvent::Reply { node: node.clone(), host, reply }).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some("end") => {
                        let count = header(wire::H_COUNT).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                        let chunks = header(wire::H_CHUNKS).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                        let cut = header(wire::H_CUT).is_some();
                        let (have, have_chunks) = got.get(&node).copied().unwrap_or((0, 0));
                        pending.remove(&node);
                        done.insert(node.clone());
                        let complete = !cut && have == count && have_chunks == chunks;
                        if tx.send(FanoutEvent::NodeDone { node, hosts: have, complete }).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
            ev = members.recv() => {
                let node = match ev {
                    Ok(MemberEvent::Dead(n)) | Ok(MemberEvent::Left(n)) => n.name,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The cluster was dropped: only the deadline is left.
                        sleep.as_mut().await;
                        break;
                    }
                };
                if pending.remove(&node) {
                    done.insert(node.clone());
                    let hosts = got.get(&node).map(|g| g.0).unwrap_or(0);
                    if tx.send(FanoutEvent::NodeLost { node, hosts }).await.is_err() {
                        return;
                    }
                }
            }
            _ = &mut sleep => break,
        }
    }
    if !pending.is_empty() {
        let mut p: Vec<String> = pending.into_iter().collect();
        p.sort();
        let _ = tx.send(FanoutEvent::TimedOut { pending: p }).await;
    }
}
