//! The thin mio driver of the [`Core`]: one thread, one `Poll`, the
//! upstream TCP socket, a `Waker` (plugin completions, task files,
//! resolver results), the signalfd and the control socket, with the
//! core's deadline as the poll timeout. It holds no protocol decision.
//!
//! Each turn: tell the core the time ([`Event::Tick`]), carry out its
//! actions, write the ciphertext it gives, derive the interest from its
//! state, poll, and feed it what the events brought. It follows mio's
//! rules: drain to `WouldBlock`, retry `Interrupted`, treat events as
//! hints. Each turn reads at most [`READ_BUDGET`] and writes at most
//! [`WRITE_BUDGET`] bytes; with more to do, the next poll does not sleep,
//! so timers, pings and signals are served between turns however large
//! the answer being sent.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::core::dispatch::Sink;
use crate::core::{Action, Core, Event};
use crate::io::mailbox::Mailbox;
use crate::io::resolve::Resolver;
use crate::io::signals::{read_signals, Control};
use crate::io::upstream::Socket;

pub use crate::io::signals::{block_signals, Reloader};
pub use basicagent_link::{answer_bound, READ_BUDGET, READ_STOP_SLACK, WRITE_BUDGET};

const UPSTREAM: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);

/// The event loop. Construct with [`Reactor::new`], then [`Reactor::run`].
pub struct Reactor {
    poll: Poll,
    core: Core,
    mailbox: Arc<Mailbox>,
    resolver: Resolver,
    signals: OwnedFd,
    socket: Option<Socket>,
    /// Sockets opened and closed: a read stops on a socket replaced.
    sockets: u64,
    ctl: Option<crate::io::ctlsock::CtlServer>,
    read_buf: Vec<u8>,
    startup_released: bool,
    /// A budget ran out with work left: the next poll must not sleep.
    more_io: bool,
    /// The core asked to exit.
    exiting: bool,
}

impl Reactor {
    /// Registers the signalfd; `mailbox` and `resolver` must wake the
    /// loop through [`Reactor::waker`] of the same `poll`.
    pub fn new(
        poll: Poll,
        core: Core,
        mailbox: Arc<Mailbox>,
        resolver: Resolver,
        signals: OwnedFd,
    ) -> io::Result<Reactor> {
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        Ok(Reactor {
            poll,
            core,
            mailbox,
            resolver,
            signals,
            socket: None,
            sockets: 0,
            ctl: None,
            read_buf: vec![0; 64 << 10],
            startup_released: false,
            more_io: false,
            exiting: false,
        })
    }

    /// The waker every helper thread uses to reach the loop.
    pub fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    /// Serves the control socket at `path` (see [`crate::io::ctlsock`]); a
    /// failure is logged and the daemon runs on without it.
    pub fn serve_ctl(&mut self, path: &std::path::Path, max_line: usize) {
        match crate::io::ctlsock::CtlServer::bind(path, max_line, self.poll.registry()) {
            Ok(ctl) => self.ctl = Some(ctl),
            Err(e) => log::error!("control socket not served: {e}"),
        }
    }

    /// Runs until SIGTERM/SIGINT and the core's orderly shutdown.
    pub fn run(mut self, reloader: &mut dyn Reloader) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            self.core.handle(now, Event::Tick);
            if self.execute(now) {
                return Ok(());
            }
            self.flush(now);
            if self.execute(now) {
                return Ok(());
            }
            self.update_interest()?;
            let more_io = std::mem::take(&mut self.more_io);
            let timeout = match self.core.poll_timeout() {
                _ if more_io => Some(Duration::ZERO),
                t => t.map(|t| t.saturating_duration_since(now)),
            };
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
                    t if crate::io::ctlsock::CtlServer::owns(t) => self.on_ctl(t, now),
                    WAKER => {
                        while let Some(r) = self.resolver.try_result() {
                            let result = r.result.map_err(|e| e.to_string());
                            let (token, last) = (r.token, r.last);
                            let resolved = Event::Resolved {
                                token,
                                result,
                                last,
                            };
                            self.core.handle(now, resolved);
                        }
                        while let Some(mail) = self.mailbox.try_next() {
                            self.core.handle(now, Event::Completed(mail));
                        }
                    }
                    SIGNALS => {
                        for control in read_signals(&self.signals) {
                            match control {
                                Control::Stop => self.core.handle(now, Event::Stop),
                                Control::ReopenLog => reloader.reopen_log(),
                                Control::Reload => {
                                    reloader.reopen_log();
                                    let config = reloader.reload_config().map(Box::new);
                                    self.core.handle(now, Event::Reload(config));
                                }
                            }
                        }
                    }
                    _ => {}
                }
                if self.execute(now) {
                    return Ok(());
                }
            }
            if more_io && !upstream_done {
                // A budget ran out last turn: go on without a new edge.
                self.on_upstream(now);
            }
            if self.exiting {
                return Ok(());
            }
        }
    }

    /// Carries out the core's actions; true once it asks to exit.
    fn execute(&mut self, now: Instant) -> bool {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Resolve { token, name, port } => self.resolver.request(token, name, port),
                Action::Connect(addr) => self.connect(now, addr),
                Action::Close { last } => self.close(&last),
                Action::CtlAnswer { conn, frame } => {
                    if let Some(ctl) = self.ctl.as_mut() {
                        ctl.answer(conn, frame, self.poll.registry());
                    }
                }
                Action::Up(_) => {
                    if !self.startup_released {
                        self.startup_released = true;
                        crate::io::memory::release_startup_pages();
                    }
                }
                Action::Exit => self.exiting = true,
            }
        }
        self.exiting
    }

    fn connect(&mut self, now: Instant, addr: SocketAddr) {
        self.close(&[]);
        match Socket::open(self.poll.registry(), UPSTREAM, addr) {
            Ok(s) => {
                self.sockets += 1;
                self.socket = Some(s);
            }
            Err(reason) => self.core.handle(now, Event::TransportFailed(reason)),
        }
    }

    fn close(&mut self, last: &[u8]) {
        if let Some(s) = self.socket.take() {
            self.sockets += 1;
            s.close(self.poll.registry(), last);
        }
    }

    fn on_ctl(&mut self, token: Token, now: Instant) {
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        let requests = ctl.on_event(token, self.poll.registry());
        for (conn, frame) in requests {
            self.core.handle(now, Event::CtlRequest { conn, frame });
        }
    }

    fn on_upstream(&mut self, now: Instant) {
        let Some(s) = self.socket.as_mut() else {
            return;
        };
        if s.connecting {
            match s.connected() {
                Ok(true) => self.core.handle(now, Event::Connected),
                Ok(false) => return,
                Err(reason) => return self.core.handle(now, Event::TransportFailed(reason)),
            }
        }
        let socket = self.sockets;
        let mut budget = READ_BUDGET;
        while self.core.wants_read() && self.sockets == socket {
            if budget == 0 {
                self.more_io = true;
                break;
            }
            let Some(s) = self.socket.as_mut() else {
                break;
            };
            let event = match s.stream.read(&mut self.read_buf) {
                Ok(0) => Event::Closed,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    Event::Ciphertext(&self.read_buf[..n])
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Event::TransportFailed(format!("read: {e}")),
            };
            let end = !matches!(event, Event::Ciphertext(_));
            self.core.handle(now, event);
            if self.execute(now) || end {
                break;
            }
            // Answers to what was just read go out before reading more.
            self.flush(now);
        }
        self.flush(now);
    }

    /// Lets the core write its ciphertext into the socket, at most one
    /// write budget per call (then the next poll does not sleep).
    fn flush(&mut self, now: Instant) {
        let Some(s) = self.socket.as_mut() else {
            return;
        };
        if s.connecting || !self.core.wants_write() {
            return;
        }
        let t = self.core.poll_transmit(now, &mut s.stream);
        if t.more {
            self.more_io = true;
        }
        // A failed write is the core's to decide (a Close follows).
        self.execute(now);
    }

    fn update_interest(&mut self) -> io::Result<()> {
        let (read, write) = (self.core.wants_read(), self.core.wants_write());
        match self.socket.as_mut() {
            Some(s) => s.want(self.poll.registry(), UPSTREAM, read, write),
            None => Ok(()),
        }
    }
}
