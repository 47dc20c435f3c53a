//! The thin mio shell around the [`Session`]: one thread, one `Poll`, the
//! upstream TLS socket, a `Waker` (plugin completions and resolver
//! results), a signalfd (SIGTERM, SIGINT, SIGHUP, SIGUSR1) and the
//! session's deadline as the poll timeout.
//!
//! It moves bytes between the socket, rustls and the session, executes the
//! session's actions, and hands request frames to the [`Dispatcher`]. It
//! follows mio's rules: drain to `WouldBlock`, retry `Interrupted`, treat
//! events as hints; interest is derived once per turn from state.

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

use crate::dispatch::Dispatcher;
use crate::resolve::Resolver;
use crate::session::{Action, Session, SessionConfig};

const UPSTREAM: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);

/// Plaintext queued for rustls beyond which the loop stops reading new
/// requests until the server has taken the answers (back-pressure).
const OUT_HIGH_WATER: usize = 8 << 20;
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

/// The upstream connection: a TCP socket and its TLS state.
struct Transport {
    stream: TcpStream,
    tls: ClientConnection,
    addr: SocketAddr,
    tcp_up: bool,
    tls_up: bool,
    /// Plaintext not yet accepted by rustls.
    out: Vec<u8>,
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
        })
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
            self.deliver_finished(now);
            self.run_actions(now);
            self.flush();
            if let Some(deadline) = stopping {
                if self.dispatcher.in_flight() == 0 || now >= deadline {
                    break;
                }
            }
            self.update_interest()?;
            let mut timeout = self
                .session
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now));
            if let Some(deadline) = stopping {
                let left = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    UPSTREAM => self.on_upstream(now),
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
                                    stopping = Some(now + SHUTDOWN_GRACE);
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
            match f.generation {
                // A task result: to whichever server is connected; if none,
                // it waits in the outbox for the next init.
                None => {
                    if !self.session.send(now, f.frame) {
                        log::info!("task result kept in the outbox until the next connection");
                    }
                }
                Some(g) => {
                    if g != self.session.generation() || !self.session.send(now, f.frame) {
                        log::info!(
                            "answer to call {} dropped: the connection that asked is gone",
                            f.call
                        );
                    }
                }
            }
        }
    }

    fn run_actions(&mut self, now: Instant) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Resolve { token, name, port } => self.resolver.request(token, name, port),
                Action::Connect(addr) => self.connect(now, addr),
                Action::Send(bytes) => match &mut self.transport {
                    // Take the buffer over when nothing is queued (no copy
                    // of a large answer).
                    Some(t) if t.out.is_empty() => t.out = bytes,
                    Some(t) => t.out.extend_from_slice(&bytes),
                    None => log::debug!("send without a transport dropped"),
                },
                Action::Close => self.close(),
                Action::Dispatch(frame) => {
                    let generation = self.session.generation();
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
                    let frames = self.dispatcher.outbox_frames();
                    if !frames.is_empty() {
                        log::info!("pushing {} unacknowledged task result(s)", frames.len());
                    }
                    for frame in frames {
                        self.session.send(now, frame);
                    }
                }
                Action::Down => log::info!("disconnected"),
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
            out: Vec::new(),
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
        loop {
            if self.session.generation() != generation {
                // A redirect replaced the transport: its events come later.
                return IoOutcome::Ok;
            }
            let Some(t) = self.transport.as_mut() else {
                return IoOutcome::Ok;
            };
            if t.out.len() > OUT_HIGH_WATER {
                return IoOutcome::Ok;
            }
            let eof = match t.tls.read_tls(&mut t.stream) {
                Ok(0) => true,
                Ok(_) => false,
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

    /// Moves queued plaintext into rustls and TLS records to the socket.
    fn flush(&mut self) {
        let now = Instant::now();
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if !t.tcp_up {
            return;
        }
        let mut failed = None;
        loop {
            let mut progressed = false;
            if t.tls_up && !t.out.is_empty() {
                match t.tls.writer().write(&t.out) {
                    Ok(n) if n > 0 => {
                        t.out.drain(..n);
                        progressed = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed = Some(format!("TLS write: {e}"));
                        break;
                    }
                }
            }
            while t.tls.wants_write() {
                match t.tls.write_tls(&mut t.stream) {
                    Ok(0) => break,
                    Ok(_) => progressed = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failed = Some(format!("write: {e}"));
                        break;
                    }
                }
            }
            if failed.is_some() || !progressed || t.out.is_empty() {
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
        let read = t.out.len() <= OUT_HIGH_WATER;
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
