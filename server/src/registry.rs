//! Shared server state: live connections, accepted agents by host id, calls in flight, task results.
//!
//! One mutex around plain maps; it is held only for map updates and for
//! queueing frames in an [`Outbox`] (lock order: registry, then outbox),
//! never across I/O or waiting.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use basicagent_proto::{Request, Response, TaskDone};
use mio::Waker;
use serde_json::value::RawValue;

use crate::lock;

/// Frames waiting to be written to one connection by its own thread.
pub struct Outbox {
    state: Mutex<OutboxState>,
    waker: Waker,
}

#[derive(Default)]
struct OutboxState {
    frames: Vec<Vec<u8>>,
    close: Option<String>,
}

impl Outbox {
    pub fn new(waker: Waker) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            waker,
        }
    }

    /// Queues one frame (its `\n` included) and wakes the connection.
    pub fn send(&self, frame: Vec<u8>) {
        lock(&self.state).frames.push(frame);
        self.wake();
    }

    /// Asks the connection to close cleanly, for `reason`.
    pub fn close(&self, reason: &str) {
        lock(&self.state)
            .close
            .get_or_insert_with(|| reason.to_owned());
        self.wake();
    }

    /// Takes the queued frames and the close request, if any.
    pub fn take(&self) -> (Vec<Vec<u8>>, Option<String>) {
        let mut s = lock(&self.state);
        (std::mem::take(&mut s.frames), s.close.clone())
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::warn!("cannot wake connection: {e}");
        }
    }
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
}

/// A `task.done` result as `tasks` prints it (the latest per host and task).
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub host: String,
    pub done: TaskDone,
    pub received_at: f64,
}

/// What an admin call waiting on [`Registry`] receives; `tag` is the
/// caller's index of the target.
#[derive(Debug)]
pub enum CallEvent {
    Answered { tag: usize, response: Response },
    Gone { tag: usize },
}

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no agent with host id {0:?} is connected")]
    UnknownHost(String),
}

struct Waiter {
    tx: Sender<CallEvent>,
    tag: usize,
}

#[derive(Default)]
struct Inner {
    next_conn: u64,
    next_request: u64,
    conns: HashMap<u64, Arc<Outbox>>,
    /// host id → (connection, info)
    agents: BTreeMap<String, (u64, AgentInfo)>,
    /// (connection, request id assigned by us) → waiter
    pending: HashMap<(u64, u64), Waiter>,
    /// connection → waiters for `"id": null` answers (the `send` command)
    null_waiters: HashMap<u64, Vec<Waiter>>,
    tasks: BTreeMap<(String, String), TaskRecord>,
}

/// The shared state.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// A request sent by [`Registry::send_request`]: where it went and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub conn: u64,
    pub id: u64,
}

impl Registry {
    /// Adds a live connection; returns its id.
    pub fn add_conn(&self, outbox: Arc<Outbox>) -> u64 {
        let mut g = lock(&self.inner);
        g.next_conn += 1;
        let id = g.next_conn;
        g.conns.insert(id, outbox);
        id
    }

    /// Makes `conn` the connection of `info.host`; an older connection of
    /// the same host is asked to close. Returns the replaced connection.
    pub fn register_agent(&self, conn: u64, info: AgentInfo) -> Option<u64> {
        let mut g = lock(&self.inner);
        let old = g
            .agents
            .insert(info.host.clone(), (conn, info))
            .map(|(c, _)| c)
            .filter(|&c| c != conn);
        if let Some(old) = old {
            if let Some(outbox) = g.conns.get(&old) {
                outbox.close("replaced by a newer connection of the same host");
            }
        }
        old
    }

    /// Forgets a closed connection: its agent entry (if still current), its
    /// calls in flight (their callers get [`CallEvent::Gone`]) and waiters.
    pub fn remove_conn(&self, conn: u64) {
        let mut g = lock(&self.inner);
        g.conns.remove(&conn);
        g.agents.retain(|_, (c, _)| *c != conn);
        let gone: Vec<(u64, u64)> = g
            .pending
            .keys()
            .filter(|(c, _)| *c == conn)
            .copied()
            .collect();
        for key in gone {
            if let Some(w) = g.pending.remove(&key) {
                let _ = w.tx.send(CallEvent::Gone { tag: w.tag });
            }
        }
        g.null_waiters.remove(&conn);
    }

    /// Hands a response from `conn` to the call waiting for its id (or to
    /// the null-id waiters). Returns whether anybody was waiting.
    pub fn deliver(&self, conn: u64, response: Response) -> bool {
        let mut g = lock(&self.inner);
        let Some(raw) = response.id.as_deref() else {
            let Some(waiters) = g.null_waiters.get_mut(&conn) else {
                return false;
            };
            waiters.retain(|w| {
                w.tx.send(CallEvent::Answered {
                    tag: w.tag,
                    response: response.clone(),
                })
                .is_ok()
            });
            return true;
        };
        let Ok(id) = raw.get().trim().parse::<u64>() else {
            return false;
        };
        match g.pending.remove(&(conn, id)) {
            Some(w) => {
                w.tx.send(CallEvent::Answered {
                    tag: w.tag,
                    response,
                })
                .is_ok()
            }
            None => false,
        }
    }

    /// Sends `request` to `host` under a fresh numeric id; the answer goes
    /// to `tx` tagged `tag`. The caller must [`Registry::forget`] it if it
    /// stops waiting.
    pub fn send_request(
        &self,
        host: &str,
        request: &Request<'_>,
        tx: Sender<CallEvent>,
        tag: usize,
    ) -> Result<Sent, CallError> {
        let mut g = lock(&self.inner);
        let conn = g
            .agents
            .get(host)
            .map(|(c, _)| *c)
            .ok_or_else(|| CallError::UnknownHost(host.to_owned()))?;
        let outbox = g
            .conns
            .get(&conn)
            .cloned()
            .ok_or_else(|| CallError::UnknownHost(host.to_owned()))?;
        g.next_request += 1;
        let id = g.next_request;
        let raw = RawValue::from_string(id.to_string())
            .map_err(|_| CallError::UnknownHost(host.to_owned()))?;
        let mut frame = request.with_id(&raw).into_bytes();
        frame.push(b'\n');
        g.pending.insert((conn, id), Waiter { tx, tag });
        outbox.send(frame);
        Ok(Sent { conn, id })
    }

    /// Stops waiting for a request's answer.
    pub fn forget(&self, sent: Sent) {
        lock(&self.inner).pending.remove(&(sent.conn, sent.id));
    }

    /// Sends raw bytes to `host` and routes its `"id": null` answers to
    /// `tx` until [`Registry::unwatch_null`] with the returned handle.
    pub fn send_raw(
        &self,
        host: &str,
        bytes: Vec<u8>,
        tx: Sender<CallEvent>,
    ) -> Result<Sent, CallError> {
        let mut g = lock(&self.inner);
        let conn = g
            .agents
            .get(host)
            .map(|(c, _)| *c)
            .ok_or_else(|| CallError::UnknownHost(host.to_owned()))?;
        let outbox = g
            .conns
            .get(&conn)
            .cloned()
            .ok_or_else(|| CallError::UnknownHost(host.to_owned()))?;
        g.next_request += 1;
        let token = g.next_request;
        g.null_waiters.entry(conn).or_default().push(Waiter {
            tx,
            tag: token as usize,
        });
        outbox.send(bytes);
        Ok(Sent { conn, id: token })
    }

    /// Stops routing null-id answers to the waiter made by [`Registry::send_raw`].
    pub fn unwatch_null(&self, sent: Sent) {
        let mut g = lock(&self.inner);
        if let Some(w) = g.null_waiters.get_mut(&sent.conn) {
            w.retain(|w| w.tag as u64 != sent.id);
        }
    }

    /// Keeps the latest `task.done` per host and task.
    pub fn record_task(&self, host: &str, done: TaskDone, received_at: f64) {
        let key = (host.to_owned(), done.task.clone());
        lock(&self.inner).tasks.insert(
            key,
            TaskRecord {
                host: host.to_owned(),
                done,
                received_at,
            },
        );
    }

    /// Accepted agents, by host id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        lock(&self.inner)
            .agents
            .values()
            .map(|(_, info)| info.clone())
            .collect()
    }

    /// Host ids of accepted agents, sorted.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.inner).agents.keys().cloned().collect()
    }

    /// Task results received, by host and task id.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        lock(&self.inner).tasks.values().cloned().collect()
    }

    /// Asks every connection to close (shutdown).
    pub fn close_all(&self, reason: &str) {
        for outbox in lock(&self.inner).conns.values() {
            outbox.close(reason);
        }
    }

    /// How many connections are still open.
    pub fn conn_count(&self) -> usize {
        lock(&self.inner).conns.len()
    }
}
