//! The thin mio shell around the [`Session`]: one thread, one `Poll`, the
//! upstream TLS socket, a `Waker` (plugin completions and resolver
//! results), a signalfd (SIGTERM, SIGINT, SIGHUP, SIGUSR1) and the
//! session's deadline as the poll timeout.
//!
//! It moves bytes between the socket, rustls and the session, executes the
//! session's actions, and hands request frames to the [`Dispatcher`]. It
//! follows mio's rules: drain to `WouldBlock`, retry `Interrupted`, treat
//! events as hints; interest is derived once per turn from state.
//!
//! Key design decisions (bounded memory, a loop that always turns):
//! * Answers wait in an [`OutQueue`] of whole frames sent from an offset
//!   (never `drain` of one big buffer: sending stays linear).
//! * At most [`answer_bound`] bytes of answers are queued. Past it new
//!   requests (except `ping`) get `3026 Busy` at once, an answer completing
//!   meanwhile is replaced by a small `3026` saying it was dropped (on the
//!   completing thread already, see `dispatch::Backlog`, so the large
//!   answer is never serialised), and task
//!   results wait in the outbox (pushed when there is room). Reading goes
//!   on, so the server hears `3026` at once, and stops only
//!   [`READ_STOP_SLACK`] bytes past the most admitted answers can take
//!   (the bound plus one `max_frame`), so even the `3026`s are bounded.
//! * Each turn moves at most [`WRITE_BUDGET`] bytes into TLS and reads at
//!   most [`READ_BUDGET`] bytes; with more to do, the next poll does not
//!   sleep. Timers, pings and signals are served between turns, however
//!   large the answer being sent.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::deadline::after;
use crate::dispatch::Dispatcher;
use crate::resolve::Resolver;
use crate::session::{Action, Session, SessionConfig};

const UPSTREAM: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);

/// The smallest bound on queued answer bytes; the bound is this or
/// `max_frame`, whichever is larger (see [`answer_bound`]).
const ANSWER_BOUND_MIN: usize = 8 << 20;
/// Bytes past the answer bound plus one largest frame (what the queue
/// may hold of answers admitted under the bound) at which the loop stops
/// reading requests: what the `3026` answers to requests read meanwhile
/// may take.
pub const READ_STOP_SLACK: usize = 1 << 20;
/// Plaintext handed to rustls per turn before the loop serves the rest.
pub const WRITE_BUDGET: usize = 1 << 20;
/// Bytes read from the socket per turn before the loop serves the rest.
pub const READ_BUDGET: usize = 4 << 20;
/// Frames handed to rustls in one vectored write.
const MAX_IOV: usize = 64;

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
/// rustls' own buffer of outgoing TLS records.
const TLS_BUFFER_LIMIT: usize = 256 << 10;
/// How long shutdown waits for cancelled calls to answer.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM / SIGINT.
    Stop,
    /// SIGHUP: reopen the log, reload configuration and changed plugins.
    Reload,
    /// SIGUSR1: reopen the log.
    ReopenLog,
}

/// Hooks the daemon's main gives the loop for SIGHUP.
pub trait Reloader {
    /// Reopens the log file (logrotate).
    fn reopen_log(&mut self);
    /// Re-reads the configuration; returns what the next connection uses,
    /// or `None` (logged) to keep the current one.
    fn reload_config(&mut self) -> Option<(SessionConfig, Arc<ClientConfig>)>;
}

/// The signals the daemon handles, blocked in every thread so that only
/// the signalfd receives them. Call before starting any thread.
pub fn block_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the
    // libc calls only change this thread's mask (inherited by threads
    // started later) and create a new descriptor we then own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn read_signals(fd: &OwnedFd) -> Vec<Control> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is a writable buffer of `size` bytes.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return out;
        }
        let sig = info.ssi_signo as libc::c_int;
        out.push(match sig {
            libc::SIGHUP => Control::Reload,
            libc::SIGUSR1 => Control::ReopenLog,
            _ => Control::Stop,
        });
        log::info!("signal {sig} received");
    }
}

/// Frames waiting for rustls, sent in order from an offset into the
/// first: taking `n` bytes never moves the rest.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the first frame already taken.
    offset: usize,
    /// Bytes not yet taken, in all frames.
    bytes: usize,
}

impl OutQueue {
    /// Appends one frame (an empty one is ignored).
    pub fn push(&mut self, frame: Vec<u8>) {
        if !frame.is_empty() {
            self.bytes += frame.len();
            self.frames.push_back(frame);
        }
    }

    /// Bytes not yet taken.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Up to `max` slices of what is left, in order.
    pub fn slices(&self, max: usize) -> Vec<io::IoSlice<'_>> {
        self.frames
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, f)| io::IoSlice::new(if i == 0 { &f[self.offset..] } else { f }))
            .collect()
    }

    /// Marks `n` bytes (at most [`OutQueue::len`]) as taken; finished
    /// frames are freed.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.bytes);
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.frames.pop_front();
        }
        if self.frames.front().is_some_and(|f| f.len() == self.offset) {
            self.frames.pop_front();
            self.offset = 0;
        }
    }
}

/// The upstream connection: a TCP socket and its TLS state.
struct Transport {
    stream: TcpStream,
    tls: ClientConnection,
    addr: SocketAddr,
    tcp_up: bool,
    tls_up: bool,
    /// Plaintext not yet accepted by rustls.
    out: OutQueue,
    interest: Interest,
}

/// What happened to the transport during one I/O pass.
enum IoOutcome {
    Ok,
    Failed(String),
}

/// The event loop. Construct with [`Reactor::new`], then [`Reactor::run`].
pub struct Reactor {
    poll: Poll,
    session: Session,
    dispatcher: Dispatcher,
    resolver: Resolver,
    tls_config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    transport: Option<Transport>,
    signals: OwnedFd,
    read_buf: Vec<u8>,
    /// Start-up code pages were given back (after the first session).
    startup_released: bool,
    /// Queued answer bytes past which requests are refused (see
    /// [`answer_bound`]).
    bound: usize,
    /// Queued bytes past which the socket is not read (see
    /// [`READ_STOP_SLACK`]).
    read_stop: usize,
    /// Task results to push when the queue has room, oldest first.
    deferred: VecDeque<String>,
    /// A budget ran out with work left: the next poll must not sleep.
    more_io: bool,
    /// The local control socket (`crate::ctlsock`), if configured.
    ctl: Option<crate::ctlsock::CtlServer>,
}

impl Reactor {
    /// Creates the poll, registers the waker and the signalfd. The
    /// dispatcher and resolver must share `waker` (see [`Reactor::waker`]).
    pub fn new(
        poll: Poll,
        session: Session,
        dispatcher: Dispatcher,
        resolver: Resolver,
        tls_config: Arc<ClientConfig>,
        server_name: &str,
        signals: OwnedFd,
    ) -> io::Result<Reactor> {
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        Ok(Reactor {
            poll,
            session,
            dispatcher,
            resolver,
            tls_config,
            server_name: parse_server_name(server_name)?,
            transport: None,
            signals,
            read_buf: vec![0; 64 << 10],
            startup_released: false,
            bound: answer_bound(basicagent_proto::DEFAULT_MAX_FRAME),
            read_stop: read_stop(basicagent_proto::DEFAULT_MAX_FRAME),
            deferred: VecDeque::new(),
            more_io: false,
            ctl: None,
        })
    }

    /// Serves the control socket at `path` (see [`crate::ctlsock`]); a
    /// failure is logged and the daemon runs on without it.
    pub fn serve_ctl(&mut self, path: &std::path::Path, max_line: usize) {
        match crate::ctlsock::CtlServer::bind(path, max_line, self.poll.registry()) {
            Ok(ctl) => self.ctl = Some(ctl),
            Err(e) => log::error!("control socket not served: {e}"),
        }
    }

    /// A control-socket event: requests read are dispatched like the
    /// server's, their answers go back on the same connection.
    fn on_ctl(&mut self, token: Token, now: Instant) {
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        for (generation, frame) in ctl.on_event(token, self.poll.registry()) {
            self.dispatcher.set_congested(None);
            if let Some(answer) = self.dispatcher.dispatch(generation, &frame, now) {
                if let Some(ctl) = self.ctl.as_mut() {
                    ctl.answer(generation, answer, self.poll.registry());
                }
            }
            self.deliver_finished(now);
        }
    }

    /// Sets the frame limit the answer bound derives from.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.bound = answer_bound(max_frame);
        self.read_stop = read_stop(max_frame);
        self.dispatcher.set_max_frame(max_frame);
    }

    /// Answer bytes queued and not yet accepted by rustls.
    fn queued(&self) -> usize {
        self.transport.as_ref().map_or(0, |t| t.out.len()) + self.session.unsent_bytes()
    }

    fn congested(&self) -> bool {
        self.queued() >= self.bound
    }

    /// The waker every helper thread uses to reach the loop.
    pub fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    /// Runs until SIGTERM/SIGINT, then shuts down in order: cancel calls in
    /// flight, wait briefly for their answers to go out, close TLS.
    pub fn run(mut self, reloader: &mut dyn Reloader) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut stopping: Option<Instant> = None;
        loop {
            let now = Instant::now();
            self.run_actions(now);
            // Due schedules start here, whether or not a server is connected.
            // No new run once shutting down.
            let schedule_wait = match stopping {
                None => self.dispatcher.run_schedules(now),
                Some(_) => None,
            };
            self.dispatcher.expire_due(now);
            self.deliver_finished(now);
            self.run_actions(now);
            self.pump_deferred(now);
            self.run_actions(now);
            self.flush();
            if let Some(deadline) = stopping {
                if self.dispatcher.in_flight() == 0 || now >= deadline {
                    break;
                }
            }
            self.update_interest()?;
            self.dispatcher.publish_queue(self.queued(), self.bound);
            let mut timeout = self
                .session
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now));
            if let Some(wait) = schedule_wait {
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if let Some(deadline) = stopping {
                let left = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Some(call_deadline) = self.dispatcher.next_deadline() {
                let left = call_deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            let more_io = std::mem::take(&mut self.more_io);
            if more_io {
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let mut upstream_done = false;
            for event in events.iter() {
                match event.token() {
                    UPSTREAM if !upstream_done => {
                        upstream_done = true;
                        self.on_upstream(now);
                    }
                    UPSTREAM => {}
                    t if crate::ctlsock::CtlServer::owns(t) => self.on_ctl(t, now),
                    WAKER => {
                        while let Some(r) = self.resolver.try_result() {
                            self.session.handle_resolved(
                                now,
                                r.token,
                                r.result.map_err(|e| e.to_string()),
                                r.last,
                            );
                        }
                    }
                    SIGNALS => {
                        for control in read_signals(&self.signals) {
                            match control {
                                Control::Stop if stopping.is_none() => {
                                    log::info!(
                                        "shutting down: cancelling {} call(s) in flight",
                                        self.dispatcher.in_flight()
                                    );
                                    self.dispatcher.cancel_all();
                                    stopping = Some(after(now, SHUTDOWN_GRACE));
                                }
                                Control::Stop => {}
                                Control::ReopenLog => reloader.reopen_log(),
                                Control::Reload => {
                                    reloader.reopen_log();
                                    if let Some((cfg, tls)) = reloader.reload_config() {
                                        match parse_server_name(&cfg.name) {
                                            Ok(name) => {
                                                self.server_name = name;
                                                self.tls_config = tls;
                                                self.set_max_frame(cfg.max_frame);
                                                self.session.set_config(cfg);
                                                log::info!("configuration reloaded; used from the next connection");
                                            }
                                            Err(e) => log::error!("reload refused: {e}"),
                                        }
                                    }
                                    self.dispatcher.reload_plugins();
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if more_io && !upstream_done {
                // A budget ran out last turn: go on without a new edge.
                self.on_upstream(now);
            }
            let now = Instant::now();
            if self.session.poll_timeout().is_some_and(|t| t <= now) {
                self.session.handle_timeout(now);
            }
        }
        if self.dispatcher.in_flight() > 0 {
            log::warn!(
                "{} call(s) did not answer the cancel in time",
                self.dispatcher.in_flight()
            );
        }
        self.session.shutdown();
        self.run_actions(Instant::now());
        self.dispatcher.fini();
        log::info!("stopped");
        Ok(())
    }

    fn deliver_finished(&mut self, now: Instant) {
        while let Some(f) = self.dispatcher.poll_finished() {
            match (f.generation, f.task) {
                // A task result: to whichever server is connected, when the
                // queue has room; else it waits in the outbox.
                (None, Some(task)) => {
                    if self.session.phase() != crate::session::Phase::Ready {
                        log::info!("task result kept in the outbox until the next connection");
                    } else if self.congested() || !self.deferred.is_empty() {
                        self.deferred.push_back(task.id);
                    } else if self.session.send(now, f.frame) {
                        self.dispatcher.task_pushed(&task.id);
                    }
                }
                (None, None) => {}
                (Some(g), _) if g & crate::ctlsock::GENERATION_BIT != 0 => {
                    if let Some(ctl) = self.ctl.as_mut() {
                        ctl.answer(g, f.frame, self.poll.registry());
                    }
                }
                (Some(g), _) => {
                    if g != self.session.generation() {
                        log::info!(
                            "answer to call {} dropped: the connection that asked is gone",
                            f.call
                        );
                        continue;
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
        }
    }

    /// Pushes waiting task results while the queue has room.
    fn pump_deferred(&mut self, now: Instant) {
        while !self.deferred.is_empty() && !self.congested() {
            if self.session.phase() != crate::session::Phase::Ready {
                self.deferred.clear();
                return;
            }
            let Some(id) = self.deferred.pop_front() else {
                return;
            };
            if let Some(frame) = self.dispatcher.push_task(&id) {
                self.session.send(now, frame);
            }
        }
    }

    fn run_actions(&mut self, now: Instant) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Resolve { token, name, port } => self.resolver.request(token, name, port),
                Action::Connect(addr) => self.connect(now, addr),
                Action::Send(bytes) => match &mut self.transport {
                    Some(t) => t.out.push(bytes),
                    None => log::debug!("send without a transport dropped"),
                },
                Action::Close => self.close(),
                Action::Dispatch(frame) => {
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
                    // Plugins that completed inside `call` did not wake us.
                    self.deliver_finished(now);
                }
                Action::Up(addr) => {
                    log::info!("connected to {addr}");
                    if !self.startup_released {
                        self.startup_released = true;
                        crate::daemon::release_startup_pages();
                    }
                    // Pushed as the queue has room (pump_deferred).
                    self.deferred = self.dispatcher.outbox_ids().into();
                    if !self.deferred.is_empty() {
                        log::info!(
                            "pushing {} unacknowledged task result(s)",
                            self.deferred.len()
                        );
                    }
                }
                Action::Down => {
                    self.deferred.clear();
                    log::info!("disconnected");
                }
            }
        }
    }

    fn connect(&mut self, now: Instant, addr: SocketAddr) {
        self.close();
        log::debug!("connecting to {addr}");
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .session
                    .handle_transport_failed(now, &format!("connect: {e}"))
            }
        };
        let mut tls =
            match ClientConnection::new(Arc::clone(&self.tls_config), self.server_name.clone()) {
                Ok(c) => c,
                Err(e) => {
                    return self
                        .session
                        .handle_transport_failed(now, &format!("TLS: {e}"))
                }
            };
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("TCP_NODELAY: {e}");
        }
        let mut t = Transport {
            stream,
            tls,
            addr,
            tcp_up: false,
            tls_up: false,
            out: OutQueue::default(),
            interest: Interest::WRITABLE,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut t.stream, UPSTREAM, interest)
        {
            return self
                .session
                .handle_transport_failed(now, &format!("register: {e}"));
        }
        t.interest = interest;
        self.transport = Some(t);
    }

    fn close(&mut self) {
        if let Some(mut t) = self.transport.take() {
            if t.tls_up {
                t.tls.send_close_notify();
                let _ = t.tls.write_tls(&mut t.stream);
            }
            let _ = t.stream.shutdown(std::net::Shutdown::Both);
            let _ = self.poll.registry().deregister(&mut t.stream);
            log::debug!("closed the connection to {}", t.addr);
        }
    }

    fn on_upstream(&mut self, now: Instant) {
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if !t.tcp_up {
            match t.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return self
                        .session
                        .handle_transport_failed(now, &format!("connect: {e}"))
                }
                Ok(None) => {}
            }
            match t.stream.peer_addr() {
                Ok(_) => {
                    t.tcp_up = true;
                    self.session.handle_tcp_connected(now);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    return self
                        .session
                        .handle_transport_failed(now, &format!("connect: {e}"))
                }
            }
        }
        let outcome = self.read_upstream(now);
        if let IoOutcome::Failed(reason) = outcome {
            self.session.handle_transport_failed(now, &reason);
            return;
        }
        self.flush();
    }

    /// Reads what the socket has, through rustls, into the session.
    fn read_upstream(&mut self, now: Instant) -> IoOutcome {
        let generation = self.session.generation();
        let mut budget = READ_BUDGET;
        loop {
            if self.session.generation() != generation {
                // A redirect replaced the transport: its events come later.
                return IoOutcome::Ok;
            }
            let Some(t) = self.transport.as_mut() else {
                return IoOutcome::Ok;
            };
            if t.out.len() > self.read_stop {
                // Resumed by update_interest once the server has read.
                return IoOutcome::Ok;
            }
            if budget == 0 {
                self.more_io = true;
                return IoOutcome::Ok;
            }
            let eof = match t.tls.read_tls(&mut t.stream) {
                Ok(0) => true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return IoOutcome::Ok,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return IoOutcome::Failed(format!("read: {e}")),
            };
            let state = match t.tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Tell the peer why (an alert), then give up on it.
                    let _ = t.tls.write_tls(&mut t.stream);
                    return IoOutcome::Failed(format!("TLS: {e}"));
                }
            };
            if !t.tls_up && !t.tls.is_handshaking() {
                t.tls_up = true;
                self.dispatcher.set_peer(crate::audit::Peer::of_tls(
                    &t.addr,
                    t.tls.peer_certificates(),
                ));
                self.session.handle_tls_established(now);
            }
            let mut pending = state.plaintext_bytes_to_read();
            while pending > 0 {
                let Some(t) = self.transport.as_mut() else {
                    return IoOutcome::Ok;
                };
                let n = match t.tls.reader().read(&mut self.read_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return IoOutcome::Failed(format!("TLS read: {e}")),
                };
                if n == 0 {
                    break;
                }
                pending = pending.saturating_sub(n);
                self.session.handle_data(now, &self.read_buf[..n]);
            }
            if self.session.generation() != generation {
                // The data moved the session elsewhere (a redirect): what
                // happens to the old socket no longer matters.
                return IoOutcome::Ok;
            }
            if eof || state.peer_has_closed() {
                return IoOutcome::Failed("closed by the server".to_owned());
            }
            // Requests just read may have produced answers; send them
            // before reading more (fairness, bounded buffers).
            self.run_actions(now);
        }
    }

    /// Moves queued plaintext into rustls and TLS records to the socket,
    /// at most [`WRITE_BUDGET`] bytes of plaintext per call (then the next
    /// poll does not sleep).
    fn flush(&mut self) {
        let now = Instant::now();
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if !t.tcp_up {
            return;
        }
        let mut failed = None;
        let mut budget = WRITE_BUDGET;
        loop {
            let mut progressed = false;
            if t.tls_up && !t.out.is_empty() && budget > 0 {
                let slices = t.out.slices(MAX_IOV);
                match t.tls.writer().write_vectored(&slices) {
                    Ok(n) if n > 0 => {
                        drop(slices);
                        t.out.consume(n);
                        budget = budget.saturating_sub(n);
                        progressed = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed = Some(format!("TLS write: {e}"));
                        break;
                    }
                }
            }
            let mut blocked = false;
            while t.tls.wants_write() {
                match t.tls.write_tls(&mut t.stream) {
                    Ok(0) => break,
                    Ok(_) => progressed = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(format!("write: {e}"));
                        break;
                    }
                }
            }
            if failed.is_some() || blocked || !progressed || t.out.is_empty() {
                break;
            }
            if budget == 0 {
                // More to send and the socket takes it: later this turn.
                self.more_io = true;
                break;
            }
        }
        if let Some(reason) = failed {
            self.session.handle_transport_failed(now, &reason);
        }
    }

    fn update_interest(&mut self) -> io::Result<()> {
        let Some(t) = self.transport.as_mut() else {
            return Ok(());
        };
        let write = !t.tcp_up || t.tls.wants_write() || (t.tls_up && !t.out.is_empty());
        let read = t.out.len() <= self.read_stop;
        let interest = match (read, write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        if interest != t.interest {
            self.poll
                .registry()
                .reregister(&mut t.stream, UPSTREAM, interest)?;
            t.interest = interest;
        }
        Ok(())
    }
}

fn parse_server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid server name {name:?}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_out_queue_sends_frames_in_order_from_an_offset() {
        let mut q = OutQueue::default();
        q.push(b"abc".to_vec());
        q.push(Vec::new());
        q.push(b"defg".to_vec());
        assert_eq!(q.len(), 7);
        let joined = |q: &OutQueue| -> Vec<u8> {
            q.slices(MAX_IOV)
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect()
        };
        assert_eq!(joined(&q), b"abcdefg");
        q.consume(2);
        assert_eq!(joined(&q), b"cdefg");
        q.consume(1);
        assert_eq!(q.frames.len(), 1, "a finished frame is freed");
        q.consume(3);
        assert_eq!(joined(&q), b"g");
        q.consume(10);
        assert!(q.is_empty());
        assert!(q.frames.is_empty());
        assert_eq!(q.slices(4).len(), 0);
    }

    #[test]
    fn the_bounds_follow_the_frame_limit() {
        assert_eq!(answer_bound(1024), 8 << 20);
        assert_eq!(answer_bound(64 << 20), 64 << 20);
        assert_eq!(read_stop(16 << 20), (32 << 20) + READ_STOP_SLACK);
        assert_eq!(read_stop(usize::MAX), usize::MAX);
    }
}
