//! Everything of the daemon that decides, and nothing that touches the OS:
//! the [`session`] (connection lifecycle), its link (TLS and framing, no
//! socket: `basicagent_link::Link<rustls::ClientConnection>`), the
//! [`dispatch`]er (built-ins, plugin calls) and the [`tasks`] table, put
//! together as one [`Core`].
//!
//! The io side feeds it [`Event`]s with the time they happened
//! ([`Core::handle`]), then takes [`Action`]s ([`Core::poll_action`]) and
//! lets it write ciphertext into the socket ([`Core::poll_transmit`], any
//! `std::io::Write`: the core never learns what it is), and sleeps
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
//!   dropped (a protocol rule, not a re-entrancy guard). The same number
//!   tells [`Core::handle`] that a redirect read in the middle of a chunk
//!   moved the session to its next connection, so the rest of the chunk
//!   (the old connection's close_notify) is dropped.
//! * No `Event::Persisted`: a stored task result comes back as the
//!   completion itself ([`Mail::Finished`] with `stored` set), reads as
//!   [`Mail::Batch`] / [`Mail::Read`]; ciphertext goes out through
//!   [`Core::poll_transmit`] into the socket rather than as an action
//!   holding a copy.
//!
//! Must not: import mio, open a socket or a file, start a thread, create a
//! channel, read a clock (`now` comes with each event, the wall clock from
//! [`dispatch::Sink::unix_ms`]), or block. What it still reaches through
//! the dispatcher, known and left for later: `PluginRegistry` (dlopen and
//! the plugin directory listing), the audit writer and the schedule
//! writer threads (`audit.rs`, `schedule.rs`: they wake the loop through
//! [`dispatch::Wake`]), the crash-marker page, and `getrandom` for task
//! ids. Isolated plugins are io's helper processes behind
//! [`dispatch::Isolated`].

pub mod dispatch;
#[cfg(test)]
mod pair;
pub mod session;
pub mod tasks;

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_link::Link;
pub use basicagent_link::{answer_bound, Transmit, READ_STOP_SLACK};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::deadline::after;
use dispatch::{Dispatcher, Finished, Mail};
use session::{Phase, Session, SessionConfig};

/// rustls' own buffer of outgoing TLS records.
const TLS_BUFFER_LIMIT: usize = 256 << 10;
/// How long shutdown waits for cancelled calls to answer.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// The generation bit of a control-socket connection's requests: their
/// answers go back as [`Action::CtlAnswer`], not upstream.
pub const CTL_GENERATION_BIT: u64 = 1 << 63;

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
    link: Link<ClientConnection>,
    addr: SocketAddr,
    /// The handshake finished (reported to the session once).
    up: bool,
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
    /// Ciphertext read but not yet taken by the link (it stopped reading
    /// while its queue was full); taken before the socket is read again.
    inbuf: Vec<u8>,
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

/// Why a core cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The configured server name is not one TLS can verify.
    #[error("invalid server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
}

/// A server name TLS can verify.
pub fn parse_server_name(name: &str) -> Result<ServerName<'static>, CoreError> {
    ServerName::try_from(name.to_owned()).map_err(|e| CoreError::ServerName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

impl Core {
    /// A core whose session starts by resolving the configured name.
    pub fn new(
        session: Session,
        dispatcher: Dispatcher,
        tls: Arc<ClientConfig>,
        server_name: &str,
        max_frame: usize,
    ) -> Result<Core, CoreError> {
        let mut core = Core {
            session,
            upstream: None,
            tls,
            server_name: parse_server_name(server_name)?,
            max_frame,
            dispatcher,
            actions: VecDeque::new(),
            bound: answer_bound(max_frame),
            inbuf: Vec::new(),
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
        self.dispatcher.set_max_frame(max_frame);
    }

    /// Answer bytes queued and not yet taken by TLS.
    pub fn queued(&self) -> usize {
        self.upstream.as_ref().map_or(0, |u| u.link.queued_bytes())
    }

    fn congested(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.link.congested())
    }

    /// Whether the socket should be read (bounded queues; bytes read
    /// earlier are taken first).
    pub fn wants_read(&self) -> bool {
        self.inbuf.is_empty() && self.upstream.as_ref().is_some_and(|u| u.link.wants_read())
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

    /// Writes ciphertext into `sink` (the socket) until it would block or
    /// one write budget of plaintext went ([`Transmit::more`]: call again
    /// without sleeping). A failing sink fails the connection.
    pub fn poll_transmit(&mut self, now: Instant, sink: &mut dyn Write) -> Transmit {
        let Some(u) = self.upstream.as_mut() else {
            return Transmit::default();
        };
        let t = match u.link.poll_transmit(sink) {
            Ok(t) => t,
            Err(e) => {
                self.session.handle_transport_failed(now, &e.to_string());
                Transmit::default()
            }
        };
        // Room in the queue: bytes kept back and task results may go on.
        self.run(now);
        t
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
            Event::Closed => {
                if let Some(u) = self.upstream.as_mut() {
                    // Clean or not, nothing more is read; the log says the same.
                    let _ = u.link.handle_eof();
                }
                self.session
                    .handle_transport_failed(now, "closed by the server")
            }
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
        if self.upstream.is_none() {
            return;
        }
        self.session.handle_received(now);
        if self.inbuf.is_empty() {
            let used = self.feed(now, bytes);
            if used < bytes.len() {
                self.inbuf = bytes[used..].to_vec();
            }
        } else {
            self.inbuf.extend_from_slice(bytes);
            self.feed_kept(now);
        }
    }

    /// Bytes kept back, once the link reads again.
    fn feed_kept(&mut self, now: Instant) {
        if self.inbuf.is_empty() || !self.upstream.as_ref().is_some_and(|u| u.link.wants_read()) {
            return;
        }
        let kept = std::mem::take(&mut self.inbuf);
        let used = self.feed(now, &kept);
        if used < kept.len() {
            self.inbuf = kept[used..].to_vec();
        }
    }

    /// Hands ciphertext to the link and serves the frames it completes
    /// (their answers queued) before handing it more. Returns the bytes
    /// taken: fewer than given when the link stopped reading (its queue is
    /// full); all when the connection ended or was replaced meanwhile (the
    /// rest belonged to it).
    fn feed(&mut self, now: Instant, bytes: &[u8]) -> usize {
        let generation = self.session.generation();
        let mut used = 0;
        while used < bytes.len() {
            // A redirect read here moves the session to its next
            // connection: what the old one still holds is no news.
            if self.session.generation() != generation {
                return bytes.len();
            }
            let Some(u) = self.upstream.as_mut() else {
                return bytes.len();
            };
            let n = match u.link.handle_ciphertext(&bytes[used..]) {
                Ok(n) => n,
                Err(e) => {
                    // The alert telling the peer why goes out with the Close.
                    self.session.handle_transport_failed(now, &e.to_string());
                    self.run(now);
                    return bytes.len();
                }
            };
            used += n;
            if !u.up && !u.link.is_handshaking() {
                u.up = true;
                self.dispatcher.set_peer(crate::audit::Peer::of_tls(
                    &u.addr,
                    u.link.conn().peer_certificates(),
                ));
                self.session.handle_tls_established(now);
            }
            while let Some(frame) = u.link.next_frame() {
                self.session.handle_frame(now, frame);
            }
            let closed = u.link.peer_closed();
            if closed && self.session.generation() == generation {
                self.session
                    .handle_transport_failed(now, "closed by the server");
            }
            // Serve what was read before reading more.
            self.run(now);
            if closed {
                return bytes.len();
            }
            if n == 0 {
                break;
            }
        }
        used
    }

    /// Carries out what the session decided, dispatches the requests it
    /// read, pushes task results while there is room, and ends a shutdown.
    fn run(&mut self, now: Instant) {
        while let Some(action) = self.session.poll_action() {
            self.on_session(now, action);
        }
        self.take_mail(now);
        self.feed_kept(now);
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
                match ClientConnection::new(Arc::clone(&self.tls), self.server_name.clone()) {
                    Ok(mut conn) => {
                        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                        let link = Link::new(conn, self.max_frame);
                        self.upstream = Some(Upstream {
                            link,
                            addr,
                            up: false,
                        });
                        self.actions.push_back(Action::Connect(addr));
                    }
                    Err(e) => self
                        .session
                        .handle_transport_failed(now, &format!("TLS: {e}")),
                }
            }
            session::Action::Send(frame) => match self.upstream.as_mut() {
                Some(u) => {
                    if let Err(e) = u.link.queue_frame(frame) {
                        log::warn!("frame dropped: {e}");
                    }
                }
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
                    self.send(now, answer);
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

    /// Ends the connection: the frames still queued (at most one write
    /// budget: answers to cancelled calls at shutdown), close_notify once
    /// the handshake was done, and whatever TLS records are due (an alert)
    /// go out with the [`Action::Close`].
    fn close_upstream(&mut self) {
        self.inbuf.clear();
        if let Some(mut u) = self.upstream.take() {
            log::debug!("closing the connection to {}", u.addr);
            let mut last = Vec::new();
            if u.up {
                let _ = u.link.poll_transmit(&mut last);
                u.link.send_close_notify();
            }
            let _ = u.link.poll_transmit(&mut last);
            self.actions.push_back(Action::Close { last });
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
                } else if self.send(now, f.frame) {
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
                if !self.send(now, frame) {
                    log::info!(
                        "answer to call {} dropped: the connection that asked is gone",
                        f.call
                    );
                }
            }
        }
    }

    /// Queues an answer or a task result on the link at once (not through
    /// the session's actions: a completion delivered while the requests
    /// of a chunk are being dispatched must not dispatch the rest from
    /// inside itself). False, and the frame dropped, unless the session
    /// is ready.
    fn send(&mut self, now: Instant, frame: Vec<u8>) -> bool {
        if !self.session.note_sent(now) {
            return false;
        }
        match self.upstream.as_mut() {
            Some(u) => {
                if let Err(e) = u.link.queue_frame(frame) {
                    log::warn!("frame dropped: {e}");
                }
                true
            }
            None => {
                log::debug!("send without a connection dropped");
                false
            }
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
                    self.send(now, frame);
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
                        self.send(now, frame);
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
