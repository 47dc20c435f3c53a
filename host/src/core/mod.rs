//! Everything of the daemon that decides, and nothing that touches the OS:
//! the [`session`] (connection lifecycle), its [`link`] (TLS and framing,
//! no socket), the [`dispatch`]er (built-ins, plugin calls) and the
//! [`tasks`] table, put together as one [`Core`].
//!
//! The io side feeds it [`Event`]s with the time they happened
//! ([`Core::handle`]), then takes [`Action`]s ([`Core::poll_action`]) and
//! ciphertext ([`Core::poll_transmit`]) until there are none, and sleeps
//! until [`Core::poll_timeout`] or the next event, reading the socket only
//! while [`Core::wants_read`]. The core imports no mio, no socket, no
//! file and no clock; plugins complete on their own threads through the
//! io side's [`dispatch::Sink`], and their completions come back as
//! [`Event::Completed`] (or are taken from the sink right after a
//! dispatch, for plugins that complete inside `call`).
//!
//! Key design decisions:
//! * A request is dispatched inside [`Core::handle`] as soon as its frame
//!   is read, and its answer queued on the link in the same call: no round
//!   trip through the io side, no re-entrant action loop.
//! * At most [`answer_bound`] bytes of answers are queued. Past it new
//!   requests (except `ping`) get `3026 Busy` at once, an answer completing
//!   meanwhile is replaced by a small `3026` saying it was dropped (on the
//!   completing thread already, see `dispatch::Backlog`), and task results
//!   wait in the outbox. Reading goes on, so the server hears `3026` at
//!   once, and stops only [`READ_STOP_SLACK`] bytes past what admitted
//!   answers can take ([`Core::wants_read`]).
//! * Stored task results are pushed after each init from batches read off
//!   the loop (`tasks::OUTBOX_BATCH_BYTES` each), one batch at a time and
//!   only while the queue has room.
//! * One generation stays: answers carry the connection generation they
//!   were asked on, and an answer for a connection that is gone is
//!   dropped (a protocol rule, not a re-entrancy guard).

pub mod dispatch;
pub mod link;
pub mod session;
pub mod tasks;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::deadline::after;
use dispatch::{Dispatcher, Finished, Mail};
use link::Link;
use session::{Phase, Session, SessionConfig};

/// The smallest bound on queued answer bytes; the bound is this or
/// `max_frame`, whichever is larger (see [`answer_bound`]).
const ANSWER_BOUND_MIN: usize = 8 << 20;
/// Bytes past the answer bound plus one largest frame (what the queue
/// may hold of answers admitted under the bound) at which the loop stops
/// reading requests: what the `3026` answers to requests read meanwhile
/// may take.
pub const READ_STOP_SLACK: usize = 1 << 20;
/// How long shutdown waits for cancelled calls to answer.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// The generation bit of a control-socket connection's requests: their
/// answers go back as [`Action::CtlAnswer`], not upstream.
pub const CTL_GENERATION_BIT: u64 = 1 << 63;

fn read_stop(max_frame: usize) -> usize {
    answer_bound(max_frame)
        .saturating_add(max_frame)
        .saturating_add(READ_STOP_SLACK)
}

/// The bound on queued answer bytes for a frame limit: one largest frame
/// always fits, and never less than 8 MiB.
pub fn answer_bound(max_frame: usize) -> usize {
    max_frame.max(ANSWER_BOUND_MIN)
}

/// What happened, as the io side saw it.
#[derive(Debug)]
pub enum Event<'a> {
    /// Time passed (each loop turn): deadlines, heartbeat, schedules.
    Tick,
    /// The TCP connection asked for by [`Action::Connect`] is up.
    Connected,
    /// Bytes read from the socket.
    Ciphertext(&'a [u8]),
    /// The server closed the socket (end of file).
    Closed,
    /// The socket failed (connect, read or write); why, for the log.
    TransportFailed(String),
    /// A name asked for by [`Action::Resolve`] resolved (in parts: `last`
    /// ends them).
    Resolved {
        token: u64,
        result: Result<Vec<SocketAddr>, String>,
        last: bool,
    },
    /// A plugin completion, a stored result read back, … (see [`Mail`]).
    Completed(Mail),
    /// SIGTERM / SIGINT: cancel the calls in flight, answer what answers
    /// within [`SHUTDOWN_GRACE`], close, then [`Action::Exit`].
    Stop,
    /// SIGHUP: the configuration re-read (`None`: unreadable, keep the
    /// running one); plugins changed on disk are reloaded either way.
    Reload(Option<Box<Reconfig>>),
    /// A request line from a control-socket connection.
    CtlRequest { conn: u64, frame: Vec<u8> },
}

/// A configuration re-read on SIGHUP, used from the next connection on.
#[derive(Debug)]
pub struct Reconfig {
    pub session: SessionConfig,
    pub tls: Arc<ClientConfig>,
}

/// What the io side must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Resolve `name` (hosts file, then DNS); answer [`Event::Resolved`].
    Resolve { token: u64, name: String, port: u16 },
    /// Drop any current socket and open TCP to `addr`; answer
    /// [`Event::Connected`] or [`Event::TransportFailed`]. Ciphertext is
    /// asked for ([`Core::poll_transmit`]) only once connected.
    Connect(SocketAddr),
    /// Write `last` (close_notify, once, best effort), then close the
    /// socket.
    Close { last: Vec<u8> },
    /// The answer to a control-socket request.
    CtlAnswer { conn: u64, frame: Vec<u8> },
    /// The session is up with this server (init accepted).
    Up(SocketAddr),
    /// Shutdown is complete: leave the loop.
    Exit,
}

struct Upstream {
    link: Link,
    addr: SocketAddr,
}

/// The agent's whole decision state: session, link, dispatcher, tasks.
pub struct Core {
    session: Session,
    upstream: Option<Upstream>,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    max_frame: usize,
    dispatcher: Dispatcher,
    actions: VecDeque<Action>,
    /// Queued answer bytes past which requests are refused.
    bound: usize,
    /// Queued bytes past which the socket is not read.
    read_stop: usize,
    /// Task results to push when the queue has room, oldest first.
    replay: VecDeque<String>,
    /// A batch of stored results is being read back.
    loading: bool,
    /// Results read back, waiting for room in the queue.
    loaded: VecDeque<(String, Vec<u8>)>,
    /// When the schedules want to be looked at again.
    schedule_at: Option<Instant>,
    /// Shutting down: the latest moment to exit.
    stopping: Option<Instant>,
    exited: bool,
}

/// A server name TLS can verify.
pub fn parse_server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("invalid server name {name:?}: {e}"))
}

impl Core {
    /// A core whose session starts by resolving the configured name.
    pub fn new(
        session: Session,
        dispatcher: Dispatcher,
        tls: Arc<ClientConfig>,
        server_name: &str,
        max_frame: usize,
    ) -> Result<Core, String> {
        let mut core = Core {
            session,
            upstream: None,
            tls,
            server_name: parse_server_name(server_name)?,
            max_frame,
            dispatcher,
            actions: VecDeque::new(),
            bound: answer_bound(max_frame),
            read_stop: read_stop(max_frame),
            replay: VecDeque::new(),
            loading: false,
            loaded: VecDeque::new(),
            schedule_at: None,
            stopping: None,
            exited: false,
        };
        core.set_max_frame(max_frame);
        Ok(core)
    }

    /// The session (phase, heartbeat), for logs and tests.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The dispatcher, for tests and `agent.info`.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
        self.bound = answer_bound(max_frame);
        self.read_stop = read_stop(max_frame);
        self.dispatcher.set_max_frame(max_frame);
    }

    /// Answer bytes queued and not yet taken by TLS.
    pub fn queued(&self) -> usize {
        self.upstream.as_ref().map_or(0, |u| u.link.queued())
    }

    fn congested(&self) -> bool {
        self.queued() >= self.bound
    }

    /// Whether the socket should be read (bounded queues).
    pub fn wants_read(&self) -> bool {
        self.upstream.is_some() && self.queued() <= self.read_stop
    }

    /// Whether [`Core::poll_transmit`] has ciphertext to give.
    pub fn wants_write(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.link.wants_write())
    }

    /// The next thing the io side must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Event::Tick`] is due next (the loop's poll timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.session.poll_timeout(),
            self.schedule_at,
            self.stopping,
            self.dispatcher.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Appends ciphertext to send to `out` (at most one write budget of
    /// plaintext per call); returns the bytes appended.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let Some(u) = self.upstream.as_mut() else {
            return 0;
        };
        match u.link.poll_transmit(out) {
            Ok(n) => n,
            Err(e) => {
                self.session.handle_transport_failed(now, &e.to_string());
                self.run(now);
                0
            }
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) {
        if self.exited {
            return;
        }
        match event {
            Event::Tick => self.on_tick(now),
            Event::Connected => self.session.handle_tcp_connected(now),
            Event::Ciphertext(bytes) => self.on_ciphertext(now, bytes),
            Event::Closed => self
                .session
                .handle_transport_failed(now, "closed by the server"),
            Event::TransportFailed(reason) => self.session.handle_transport_failed(now, &reason),
            Event::Resolved {
                token,
                result,
                last,
            } => self.session.handle_resolved(now, token, result, last),
            Event::Completed(mail) => self.on_mail(now, mail),
            Event::Stop => {
                if self.stopping.is_none() {
                    log::info!(
                        "shutting down: cancelling {} call(s) in flight",
                        self.dispatcher.in_flight()
                    );
                    self.dispatcher.cancel_all();
                    self.stopping = Some(after(now, SHUTDOWN_GRACE));
                    self.schedule_at = None;
                }
            }
            Event::Reload(config) => {
                if let Some(c) = config {
                    match parse_server_name(&c.session.name) {
                        Ok(name) => {
                            self.server_name = name;
                            self.tls = c.tls;
                            self.set_max_frame(c.session.max_frame);
                            self.session.set_config(c.session);
                            log::info!("configuration reloaded; used from the next connection");
                        }
                        Err(e) => log::error!("reload refused: {e}"),
                    }
                }
                self.dispatcher.reload_plugins();
            }
            Event::CtlRequest { conn, frame } => {
                self.dispatcher.set_congested(None);
                let generation = conn | CTL_GENERATION_BIT;
                if let Some(answer) = self.dispatcher.dispatch(generation, &frame, now) {
                    self.actions.push_back(Action::CtlAnswer {
                        conn,
                        frame: answer,
                    });
                }
                self.take_mail(now);
            }
        }
        self.run(now);
    }

    fn on_tick(&mut self, now: Instant) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        // Due schedules start here, whether or not a server is connected;
        // no new run once shutting down.
        if self.stopping.is_none() {
            self.schedule_at = self
                .dispatcher
                .run_schedules(now)
                .map(|wait| after(now, wait));
        }
        self.dispatcher.expire_due(now);
    }

    fn on_ciphertext(&mut self, now: Instant, bytes: &[u8]) {
        let Some(u) = self.upstream.as_mut() else {
            return;
        };
        self.session.handle_received(now);
        let progress = match u.link.handle_ciphertext(bytes) {
            Ok(p) => p,
            Err(e) => {
                // The alert telling the peer why goes out with the Close.
                self.session.handle_transport_failed(now, &e.to_string());
                return;
            }
        };
        if progress.handshaken {
            self.dispatcher.set_peer(crate::audit::Peer::of_tls(
                &u.addr,
                u.link.peer_certificates(),
            ));
            self.session.handle_tls_established(now);
        }
        let generation = self.session.generation();
        while let Some(frame) = u.link.next_frame() {
            self.session.handle_frame(now, frame);
        }
        // A redirect read with the close_notify that followed it: the
        // session is on its next connection, the old one's end is no news.
        if progress.peer_closed && self.session.generation() == generation {
            self.session
                .handle_transport_failed(now, "closed by the server");
        }
    }

    /// Carries out what the session decided, dispatches the requests it
    /// read, pushes task results while there is room, and ends a shutdown.
    fn run(&mut self, now: Instant) {
        while let Some(action) = self.session.poll_action() {
            self.on_session(now, action);
        }
        self.take_mail(now);
        self.pump_replay(now);
        while let Some(action) = self.session.poll_action() {
            self.on_session(now, action);
        }
        if let Some(deadline) = self.stopping {
            if !self.exited && (self.dispatcher.in_flight() == 0 || now >= deadline) {
                self.exit(now);
            }
        }
        self.dispatcher.publish_queue(self.queued(), self.bound);
    }

    fn exit(&mut self, now: Instant) {
        if self.dispatcher.in_flight() > 0 {
            log::warn!(
                "{} call(s) did not answer the cancel in time",
                self.dispatcher.in_flight()
            );
        }
        self.session.shutdown();
        while let Some(action) = self.session.poll_action() {
            self.on_session(now, action);
        }
        self.dispatcher.fini();
        log::info!("stopped");
        self.exited = true;
        self.actions.push_back(Action::Exit);
    }

    /// Mail plugins left on the loop thread (completions inside `call`).
    fn take_mail(&mut self, now: Instant) {
        while let Some(mail) = self.dispatcher.try_next() {
            self.on_mail(now, mail);
        }
    }

    fn on_session(&mut self, now: Instant, action: session::Action) {
        match action {
            session::Action::Resolve { token, name, port } => self
                .actions
                .push_back(Action::Resolve { token, name, port }),
            session::Action::Connect(addr) => {
                self.close_upstream();
                log::debug!("connecting to {addr}");
                match Link::client(
                    Arc::clone(&self.tls),
                    self.server_name.clone(),
                    self.max_frame,
                ) {
                    Ok(link) => {
                        self.upstream = Some(Upstream { link, addr });
                        self.actions.push_back(Action::Connect(addr));
                    }
                    Err(e) => self.session.handle_transport_failed(now, &e.to_string()),
                }
            }
            session::Action::Send(frame) => match self.upstream.as_mut() {
                Some(u) => u.link.queue_frame(frame),
                None => log::debug!("send without a connection dropped"),
            },
            session::Action::Close => self.close_upstream(),
            session::Action::Dispatch(frame) => {
                let generation = self.session.generation();
                let congestion = self.congested().then(|| {
                    format!(
                        "{} bytes of answers wait for the server to read them",
                        self.queued()
                    )
                });
                self.dispatcher.set_congested(congestion);
                self.dispatcher.publish_queue(self.queued(), self.bound);
                if let Some(answer) = self.dispatcher.dispatch(generation, &frame, now) {
                    self.session.send(now, answer);
                }
                // Plugins that completed inside `call`.
                self.take_mail(now);
            }
            session::Action::Up(addr) => {
                log::info!("connected to {addr}");
                self.actions.push_back(Action::Up(addr));
                // Pushed as the queue has room (pump_replay).
                self.replay = self.dispatcher.outbox_ids().into();
                self.loaded.clear();
                self.loading = false;
                if !self.replay.is_empty() {
                    log::info!(
                        "pushing {} unacknowledged task result(s)",
                        self.replay.len()
                    );
                }
            }
            session::Action::Down => {
                self.replay.clear();
                self.loaded.clear();
                self.loading = false;
                log::info!("disconnected");
            }
        }
    }

    fn close_upstream(&mut self) {
        if let Some(u) = self.upstream.take() {
            log::debug!("closing the connection to {}", u.addr);
            self.actions.push_back(Action::Close {
                last: u.link.close(),
            });
        }
    }

    fn on_mail(&mut self, now: Instant, mail: Mail) {
        match mail {
            Mail::Finished(f) => {
                let f = self.dispatcher.complete(f, now);
                self.deliver(now, f);
            }
            Mail::Batch(batch) => {
                if batch.generation != self.session.generation()
                    || self.session.phase() != Phase::Ready
                {
                    log::debug!("stored results read for a connection that is gone: dropped");
                    return;
                }
                self.loading = false;
                self.loaded.extend(
                    batch
                        .frames
                        .into_iter()
                        .filter_map(|(id, frame)| Some((id, frame?))),
                );
            }
            Mail::Read { ctx, frame } => {
                if let Some(f) = self.dispatcher.status_read(ctx, frame, now) {
                    self.deliver(now, f);
                }
            }
        }
    }

    fn deliver(&mut self, now: Instant, f: Finished) {
        match (f.generation, f.task) {
            // A task result: to whichever server is connected, when the
            // queue has room; else it waits in the outbox.
            (None, Some(task)) => {
                if self.session.phase() != Phase::Ready {
                    log::info!("task result kept in the outbox until the next connection");
                } else if self.congested()
                    || !self.replay.is_empty()
                    || !self.loaded.is_empty()
                    || self.loading
                {
                    self.replay.push_back(task.id);
                } else if self.session.send(now, f.frame) {
                    self.dispatcher.task_pushed(&task.id);
                }
            }
            (None, None) => {}
            (Some(g), _) if g & CTL_GENERATION_BIT != 0 => {
                self.actions.push_back(Action::CtlAnswer {
                    conn: g & !CTL_GENERATION_BIT,
                    frame: f.frame,
                });
            }
            (Some(g), _) => {
                if g != self.session.generation() {
                    log::info!(
                        "answer to call {} dropped: the connection that asked is gone",
                        f.call
                    );
                    return;
                }
                let frame = if self.congested() {
                    self.dispatcher.note_dropped(self.queued());
                    let r = basicagent_proto::Response::failed(
                        f.id,
                        basicagent_proto::Retcode::BUSY,
                        format!(
                            "Busy: the answer ({} bytes) was dropped: {} bytes of answers wait for the server to read them",
                            f.frame.len(),
                            self.queued()
                        ),
                    );
                    drop(f.frame);
                    let mut out = Vec::new();
                    r.write_frame(&mut out);
                    out
                } else {
                    f.frame
                };
                if !self.session.send(now, frame) {
                    log::info!(
                        "answer to call {} dropped: the connection that asked is gone",
                        f.call
                    );
                }
            }
        }
        while let Some(action) = self.session.poll_action() {
            self.on_session(now, action);
        }
    }

    /// Pushes waiting task results while the queue has room: those read
    /// back first, then those kept in memory, then asks for the next
    /// batch to be read (one at a time).
    fn pump_replay(&mut self, now: Instant) {
        if self.session.phase() != Phase::Ready {
            self.replay.clear();
            self.loaded.clear();
            return;
        }
        while !self.congested() {
            if let Some((id, frame)) = self.loaded.pop_front() {
                if self.dispatcher.push_task(&id) {
                    self.session.send(now, frame);
                }
                continue;
            }
            if self.loading {
                return;
            }
            let Some(id) = self.replay.front() else {
                return;
            };
            let tasks = self.dispatcher.tasks();
            if !tasks.is_done(id) {
                self.replay.pop_front();
                continue;
            }
            if let Some(frame) = tasks.memory_frame(id) {
                if let Some(id) = self.replay.pop_front() {
                    if self.dispatcher.push_task(&id) {
                        self.session.send(now, frame);
                    }
                }
                continue;
            }
            let batch = tasks.next_batch(&mut self.replay);
            if batch.is_empty() {
                return;
            }
            self.loading = true;
            self.dispatcher
                .load_outbox(self.session.generation(), batch);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_follow_the_frame_limit() {
        assert_eq!(answer_bound(1024), 8 << 20);
        assert_eq!(answer_bound(64 << 20), 64 << 20);
        assert_eq!(read_stop(16 << 20), (32 << 20) + READ_STOP_SLACK);
        assert_eq!(read_stop(usize::MAX), usize::MAX);
    }
}
