//! State every part of the server shares: the [`Shared`] handle, the
//! sessions' [`Settings`] and [`lock`].
//!
//! Its own module so that admin, api, call, node, serve and session all
//! import it from here and none of them imports another for it (the
//! old admin ↔ serve ↔ session circle).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use basicagent_proto::InitPolicy;

use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::storage::Storage;

/// Locks a mutex, taking the data even if another thread panicked with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What sessions need to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub policy: InitPolicy,
    pub heartbeat: Option<u64>,
    pub auto_ack: bool,
    pub handshake_timeout: Duration,
    pub max_frame: usize,
}

/// State shared by all tasks.
pub struct Shared {
    pub registry: Registry,
    pub events: EventLog,
    pub settings: Settings,
    /// What each session's rustls connection is made from.
    pub tls: Arc<rustls::ServerConfig>,
    pub mtls: bool,
    pub metrics: Arc<Metrics>,
    pub storage: Storage,
    /// Most agent sessions at once.
    pub limit: usize,
    /// Sessions counted against the limit.
    pub active: AtomicUsize,
    /// Over-limit sessions being refused.
    pub refusing: AtomicUsize,
    /// Most over-limit refusals at once.
    pub refusing_max: usize,
    /// Cluster mode: the NATS handle and this node's name.
    pub cluster: Option<crate::node::ClusterMode>,
}
