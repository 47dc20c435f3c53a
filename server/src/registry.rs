//! The router: live sessions, accepted agents by host id, and the queues that carry frames to them.
//!
//! One `std::sync::Mutex` around plain maps, held only for map updates and
//! for `try_send` into a session's bounded queue (never across I/O or an
//! `.await`). Requests carry their own reply channel: the session that
//! sends a request keeps the waiter in its own task (see `session`), so a
//! fan-out to N hosts touches this lock once, clones one shared frame N
//! times (a reference count, not a copy) and allocates nothing per host
//! in the router.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use basicagent_proto::Response;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::state::lock;

/// How many frames may wait for one session before a sender is told it is busy.
pub const OUTBOX_FRAMES: usize = 64;

/// What other tasks ask a session to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Send `frame` (`\n` included) as request `id`; answers go to `reply`, tagged `tag`.
    Request {
        id: u64,
        frame: Bytes,
        reply: mpsc::UnboundedSender<CallEvent>,
        tag: usize,
    },
    /// Send bytes verbatim; `"id": null` answers go to `reply` until it is dropped.
    Raw {
        bytes: Bytes,
        reply: Option<mpsc::UnboundedSender<CallEvent>>,
    },
    /// Close cleanly for this reason.
    Close(String),
}

/// What a caller waiting on a request receives.
#[derive(Debug)]
pub enum CallEvent {
    Answered { tag: usize, response: Response },
    Gone { tag: usize },
}

/// An accepted agent, as `list` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    pub host: String,
    pub name: String,
    pub version: String,
    pub plugins: Vec<String>,
    pub peer: SocketAddr,
    pub listen: SocketAddr,
    pub connected_at: f64,
    /// Cluster mode, in lists from PostgreSQL: the node holding the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a request could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no agent with host id {0:?} is connected")]
    Offline(String),
    #[error("host {0}: its outgoing queue is full")]
    Busy(String),
}

struct Agent {
    conn: u64,
    tx: mpsc::Sender<Outgoing>,
    info: Arc<AgentInfo>,
    /// Fingerprint of the client certificate the session presented (mTLS).
    cert: Option<[u8; 32]>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, mpsc::Sender<Outgoing>>,
    agents: BTreeMap<String, Agent>,
}

/// What [`Registry::register_agent`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// The host is new here.
    New,
    /// An older session of the same host (same certificate, or no mTLS) was asked to close.
    Replaced(u64),
    /// A session of this host id with another certificate holds it: refused.
    HeldByOtherCert,
}

/// The shared router.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
    next_request: AtomicU64,
}

impl Registry {
    /// Adds a live session; returns its id.
    pub fn add_conn(&self, tx: mpsc::Sender<Outgoing>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.inner).conns.insert(id, tx);
        id
    }

    /// A fresh request id (one per call: every host of a fan-out gets the same frame).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `conn` the session of `info.host`. With mTLS (`cert` set), a
    /// live session of the same host id from a different certificate is
    /// never replaced; otherwise the older session is asked to close.
    pub fn register_agent(&self, conn: u64, info: AgentInfo, cert: Option<[u8; 32]>) -> Registered {
        let mut g = lock(&self.inner);
        let Some(tx) = g.conns.get(&conn).cloned() else {
            return Registered::New;
        };
        if let Some(old) = g.agents.get(&info.host) {
            if old.conn != conn && cert.is_some() && old.cert != cert {
                return Registered::HeldByOtherCert;
            }
        }
        let host = info.host.clone();
        let agent = Agent {
            conn,
            tx,
            info: Arc::new(info),
            cert,
        };
        match g.agents.insert(host, agent) {
            Some(old) if old.conn != conn => {
                let _ = old.tx.try_send(Outgoing::Close(
                    "replaced by a newer connection of the same host".into(),
                ));
                Registered::Replaced(old.conn)
            }
            _ => Registered::New,
        }
    }

    /// Forgets a closed session; returns the host id it held, if it was still current.
    pub fn remove_conn(&self, conn: u64, host: Option<&str>) -> Option<String> {
        let mut g = lock(&self.inner);
        g.conns.remove(&conn);
        let host = host?;
        if g.agents.get(host).is_some_and(|a| a.conn == conn) {
            g.agents.remove(host);
            return Some(host.to_owned());
        }
        None
    }

    /// Queues one request frame to each of `hosts` (tag = index); returns
    /// per host whether it was queued. One lock for the whole fan-out.
    pub fn fan_out(
        &self,
        hosts: &[String],
        id: u64,
        frame: &Bytes,
        reply: &mpsc::UnboundedSender<CallEvent>,
    ) -> Vec<Result<(), SendError>> {
        let g = lock(&self.inner);
        hosts
            .iter()
            .enumerate()
            .map(|(tag, host)| {
                let agent = g
                    .agents
                    .get(host)
                    .ok_or_else(|| SendError::Offline(host.clone()))?;
                agent
                    .tx
                    .try_send(Outgoing::Request {
                        id,
                        frame: frame.clone(),
                        reply: reply.clone(),
                        tag,
                    })
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => SendError::Busy(host.clone()),
                        mpsc::error::TrySendError::Closed(_) => SendError::Offline(host.clone()),
                    })
            })
            .collect()
    }

    /// Queues raw bytes to `host`; its `"id": null` answers go to `reply`.
    pub fn send_raw(
        &self,
        host: &str,
        bytes: Bytes,
        reply: mpsc::UnboundedSender<CallEvent>,
    ) -> Result<(), SendError> {
        let g = lock(&self.inner);
        let agent = g
            .agents
            .get(host)
            .ok_or_else(|| SendError::Offline(host.to_owned()))?;
        agent
            .tx
            .try_send(Outgoing::Raw {
                bytes,
                reply: Some(reply),
            })
            .map_err(|_| SendError::Busy(host.to_owned()))
    }

    /// Accepted agents, by host id (shared records: no deep copies under the lock).
    pub fn agents(&self) -> Vec<Arc<AgentInfo>> {
        lock(&self.inner)
            .agents
            .values()
            .map(|a| a.info.clone())
            .collect()
    }

    /// One accepted agent.
    pub fn agent(&self, host: &str) -> Option<Arc<AgentInfo>> {
        lock(&self.inner).agents.get(host).map(|a| a.info.clone())
    }

    /// How many agents are accepted.
    #[cfg(test)]
    pub fn agent_count(&self) -> usize {
        lock(&self.inner).agents.len()
    }

    /// Asks the session of `host` to close (drain); false if none is here.
    pub fn close_host(&self, host: &str, reason: &str) -> bool {
        let g = lock(&self.inner);
        match g.agents.get(host) {
            Some(a) => a.tx.try_send(Outgoing::Close(reason.to_owned())).is_ok(),
            None => false,
        }
    }

    /// How many agents are accepted.
    pub fn agents_len(&self) -> usize {
        lock(&self.inner).agents.len()
    }

    /// Whether session `conn` is still open.
    pub fn has_conn(&self, conn: u64) -> bool {
        lock(&self.inner).conns.contains_key(&conn)
    }

    /// Queues `msg` to session `conn` (no waiting); false if it is gone or full.
    pub fn send_conn(&self, conn: u64, msg: Outgoing) -> bool {
        lock(&self.inner)
            .conns
            .get(&conn)
            .is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// Asks every session to close (shutdown).
    pub fn close_all(&self, reason: &str) {
        for tx in lock(&self.inner).conns.values() {
            let _ = tx.try_send(Outgoing::Close(reason.to_owned()));
        }
    }

    /// How many sessions are open (TLS or later).
    pub fn conn_count(&self) -> usize {
        lock(&self.inner).conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str) -> AgentInfo {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        AgentInfo {
            host: host.into(),
            name: "n".into(),
            version: "v".into(),
            plugins: vec![],
            peer: a,
            listen: a,
            connected_at: 0.0,
            node: None,
        }
    }

    #[test]
    fn another_certificate_never_replaces_the_holder() {
        let r = Registry::default();
        let (t1, _r1) = mpsc::channel(4);
        let (t2, _r2) = mpsc::channel(4);
        let (t3, mut r3) = mpsc::channel(4);
        let (c1, c2, c3) = (r.add_conn(t1), r.add_conn(t2), r.add_conn(t3));
        assert_eq!(
            r.register_agent(c1, info("h"), Some([1; 32])),
            Registered::New
        );
        assert_eq!(
            r.register_agent(c2, info("h"), Some([2; 32])),
            Registered::HeldByOtherCert
        );
        assert_eq!(
            r.register_agent(c3, info("h"), Some([1; 32])),
            Registered::Replaced(c1)
        );
        assert!(r3.try_recv().is_err(), "the newer session is not closed");
        assert_eq!(r.remove_conn(c1, Some("h")), None, "c1 no longer current");
        assert_eq!(r.remove_conn(c3, Some("h")), Some("h".into()));
        assert_eq!(r.agent_count(), 0);
    }
}
