//! The connection lifecycle as a sans-IO state machine: resolve → connect
//! address i → TLS → init → (redirect → connect …) → ready → backoff.
//!
//! It owns no socket and no clock. The core ([`crate::core::Core`]) feeds
//! it events (`handle_*`, each taking `now`), then drains
//! [`Session::poll_action`] until it returns `None`; its
//! [`Session::poll_timeout`] is part of the core's.
//! Call order per turn: any number of `handle_*` → `poll_action` until
//! `None` → `poll_timeout`. Tests drive whole reconnect stories this way
//! in virtual time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use basicagent_proto::{
    parse_server_addr, FrameDecoder, FrameError, Init, InitReply, Response, Retcode, ServerAddr,
};

use crate::config::{HEARTBEAT_MAX, HEARTBEAT_MIN};
use crate::deadline::{after, times};

/// What the session needs to know; fixed for its life.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The server name: resolved, and the name TLS verifies.
    pub name: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// TLS handshake plus the init exchange.
    pub handshake_timeout: Duration,
    pub max_redirects: u32,
    pub heartbeat: Duration,
    pub max_frame: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Seeds the backoff jitter (tests pass a constant).
    pub seed: u64,
}

/// What the core must do (carried out at once: TLS and frames on its
/// link, requests to the dispatcher, the rest as `core::Action`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve `name` (hosts file, then DNS); answer with
    /// [`Session::handle_resolved`] and the same token.
    Resolve { token: u64, name: String, port: u16 },
    /// Drop any current transport and open TCP, then TLS, to `addr`;
    /// report [`Session::handle_tcp_connected`], then
    /// [`Session::handle_tls_established`], or
    /// [`Session::handle_transport_failed`].
    Connect(SocketAddr),
    /// Write these bytes (whole frames) over TLS.
    Send(Vec<u8>),
    /// Close the transport cleanly (TLS close_notify) and drop it.
    Close,
    /// A frame from the server for the dispatcher (a request, a task ack,
    /// or a response to our ping).
    Dispatch(Vec<u8>),
    /// The session is up with this server (init accepted).
    Up(SocketAddr),
    /// The session that was up is gone.
    Down,
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Resolving,
    Connecting,
    Handshaking,
    AwaitingInit,
    Ready,
    Backoff,
    Closed,
}

#[derive(Debug)]
enum State {
    Resolving {
        token: u64,
    },
    Connecting {
        addr: SocketAddr,
        deadline: Instant,
    },
    Handshaking {
        addr: SocketAddr,
        deadline: Instant,
    },
    AwaitingInit {
        addr: SocketAddr,
        deadline: Instant,
    },
    Ready {
        addr: SocketAddr,
        last_rx: Instant,
        last_tx: Instant,
    },
    Backoff {
        until: Instant,
    },
    Closed,
}

/// The agent's side of one control connection, across reconnects.
pub struct Session {
    cfg: SessionConfig,
    init: Init,
    state: State,
    /// Addresses (or names still to resolve) left to try in this round.
    targets: VecDeque<ServerAddr>,
    redirects: u32,
    /// Rounds failed in a row: the backoff exponent.
    failures: u32,
    heartbeat: Duration,
    decoder: FrameDecoder,
    actions: VecDeque<Action>,
    next_token: u64,
    /// A resolution whose later parts (DNS) may still add targets.
    more: Option<u64>,
    ping_seq: u64,
    generation: u64,
    rng: u64,
    /// Bytes of the `Send` actions in `actions`.
    unsent: usize,
}

impl Session {
    /// A session that starts by resolving the configured name.
    pub fn new(cfg: SessionConfig, init: Init, now: Instant) -> Self {
        let mut s = Session {
            decoder: FrameDecoder::new(cfg.max_frame),
            heartbeat: cfg.heartbeat,
            rng: cfg.seed | 1,
            cfg,
            init,
            state: State::Closed,
            targets: VecDeque::new(),
            redirects: 0,
            failures: 0,
            actions: VecDeque::new(),
            next_token: 0,
            more: None,
            ping_seq: 0,
            generation: 0,
            unsent: 0,
        };
        s.start_round(now);
        s
    }

    /// The phase, for logs, tests and `agent.info`.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Resolving { .. } => Phase::Resolving,
            State::Connecting { .. } => Phase::Connecting,
            State::Handshaking { .. } => Phase::Handshaking,
            State::AwaitingInit { .. } => Phase::AwaitingInit,
            State::Ready { .. } => Phase::Ready,
            State::Backoff { .. } => Phase::Backoff,
            State::Closed => Phase::Closed,
        }
    }

    /// Counts connections: responses dispatched under one generation are
    /// dropped if they complete after the connection changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The heartbeat in force (the server may set it in its init reply).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Replaces the configuration (SIGHUP); used from the next connection
    /// attempt on.
    pub fn set_config(&mut self, cfg: SessionConfig) {
        self.cfg = cfg;
    }

    /// Replaces the init message sent on the next connection.
    pub fn set_init(&mut self, init: Init) {
        self.init = init;
    }

    /// The next thing the core must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if let Some(Action::Send(frame)) = &action {
            self.unsent = self.unsent.saturating_sub(frame.len());
        }
        action
    }

    /// Bytes in `Send` actions not yet taken by [`Session::poll_action`]
    /// (counted as queued).
    pub fn unsent_bytes(&self) -> usize {
        self.unsent
    }

    fn push_send(&mut self, frame: Vec<u8>) {
        self.unsent = self.unsent.saturating_add(frame.len());
        self.actions.push_back(Action::Send(frame));
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Resolving { .. } | State::Closed => None,
            State::Connecting { deadline, .. }
            | State::Handshaking { deadline, .. }
            | State::AwaitingInit { deadline, .. } => Some(*deadline),
            State::Backoff { until } => Some(*until),
            State::Ready {
                last_rx, last_tx, ..
            } => {
                let ping_at = after((*last_rx).max(*last_tx), self.heartbeat);
                let dead_at = after(*last_rx, times(self.heartbeat, 3));
                Some(ping_at.min(dead_at))
            }
        }
    }

    /// Addresses for a name. A resolution may answer in parts (the
    /// hosts-file lines at once, DNS later): the first part is tried at
    /// once, before the rest of the round's targets; later parts (`last`
    /// ends them) are appended, and an exhausted round waits for them
    /// before it gives up.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        token: u64,
        result: Result<Vec<SocketAddr>, String>,
        last: bool,
    ) {
        let waiting = matches!(self.state, State::Resolving { token: t } if t == token);
        let streaming = self.more == Some(token);
        if !waiting && !streaming {
            return;
        }
        self.more = if last { None } else { Some(token) };
        match result {
            Ok(addrs) if waiting => {
                log::debug!("resolved to {} address(es): {addrs:?}", addrs.len());
                for addr in addrs.into_iter().rev() {
                    self.targets.push_front(ServerAddr::Ip(addr));
                }
            }
            Ok(addrs) => {
                log::debug!("{} more address(es) from DNS: {addrs:?}", addrs.len());
                self.targets.extend(addrs.into_iter().map(ServerAddr::Ip));
            }
            Err(e) => log::warn!("cannot resolve: {e}"),
        }
        if waiting && (last || !self.targets.is_empty()) {
            self.next_target(now);
        }
    }

    /// The TCP connection is up; the TLS handshake starts.
    pub fn handle_tcp_connected(&mut self, now: Instant) {
        if let State::Connecting { addr, .. } = self.state {
            self.state = State::Handshaking {
                addr,
                deadline: after(now, self.cfg.handshake_timeout),
            };
        }
    }

    /// The TLS handshake finished (the certificate was verified against
    /// the configured name): send init.
    pub fn handle_tls_established(&mut self, now: Instant) {
        let _ = now;
        if let State::Handshaking { addr, deadline } = self.state {
            let mut frame = Vec::with_capacity(256);
            self.init.write_frame(&mut frame);
            log::debug!("TLS up with {addr}; sending init");
            self.push_send(frame);
            self.state = State::AwaitingInit { addr, deadline };
        }
    }

    /// The transport failed or was closed by the peer.
    pub fn handle_transport_failed(&mut self, now: Instant, reason: &str) {
        match self.state {
            State::Connecting { addr, .. }
            | State::Handshaking { addr, .. }
            | State::AwaitingInit { addr, .. } => {
                log::warn!("{addr}: {reason}; trying the next address");
                self.actions.push_back(Action::Close);
                self.next_target(now);
            }
            State::Ready { addr, .. } => {
                log::warn!("connection to {addr} lost: {reason}; reconnecting");
                self.actions.push_back(Action::Close);
                self.actions.push_back(Action::Down);
                self.start_round(now);
            }
            _ => {}
        }
    }

    /// Plaintext bytes from the server (tests; the core hands whole
    /// frames from its link to [`Session::handle_frame`]).
    pub fn handle_data(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_received(now);
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame() {
            self.handle_frame(now, frame);
        }
    }

    /// Bytes came from the server (a frame or a part of one): the silence
    /// clock restarts.
    pub fn handle_received(&mut self, now: Instant) {
        if let State::Ready { last_rx, .. } = &mut self.state {
            *last_rx = now;
        }
    }

    /// One frame from the server, or the error of one that was too long.
    pub fn handle_frame(&mut self, now: Instant, frame: Result<Vec<u8>, FrameError>) {
        {
            match self.state {
                State::AwaitingInit { addr, .. } => self.handle_init_reply(now, addr, frame),
                State::Ready { .. } => match frame {
                    Ok(frame) => self.actions.push_back(Action::Dispatch(frame)),
                    Err(FrameError::TooLong { limit }) => {
                        let r = Response::failed(
                            None,
                            Retcode::INVALID_REQUEST,
                            format!("Invalid request: frame longer than {limit} bytes"),
                        );
                        self.send_response(now, &r);
                    }
                },
                // Bytes after a redirect or in any other phase: dropped.
                _ => {}
            }
        }
    }

    fn handle_init_reply(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        frame: Result<Vec<u8>, FrameError>,
    ) {
        let reply = match frame {
            Ok(f) => InitReply::parse_with_warnings(&f, self.cfg.port).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match reply {
            Ok((InitReply::Accepted { heartbeat }, _)) => {
                self.heartbeat = match heartbeat {
                    None => self.cfg.heartbeat,
                    Some(secs) => clamp_heartbeat(addr, secs),
                };
                log::info!(
                    "session up with {addr} (heartbeat {} s)",
                    self.heartbeat.as_secs()
                );
                self.redirects = 0;
                self.failures = 0;
                self.targets.clear();
                self.state = State::Ready {
                    addr,
                    last_rx: now,
                    last_tx: now,
                };
                self.actions.push_back(Action::Up(addr));
            }
            Ok((InitReply::Redirect(list), skipped)) => {
                for bad in skipped {
                    log::warn!("{addr}: redirect entry skipped: {bad}");
                }
                self.actions.push_back(Action::Close);
                self.redirects += 1;
                if self.redirects > self.cfg.max_redirects {
                    log::warn!(
                        "{addr}: redirect #{} exceeds max_redirects ({}); backing off",
                        self.redirects,
                        self.cfg.max_redirects
                    );
                    self.backoff(now);
                    return;
                }
                let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
                log::info!("{addr}: redirected to {}", shown.join(","));
                self.targets = list.into();
                self.more = None;
                self.next_target(now);
            }
            Ok((InitReply::Rejected { retcode, message }, _)) => {
                log::error!(
                    "{addr}: init rejected: {} {message}; backing off",
                    retcode.0
                );
                self.actions.push_back(Action::Close);
                self.backoff(now);
            }
            Err(e) => {
                log::warn!("{addr}: invalid init reply: {e}; trying the next address");
                self.actions.push_back(Action::Close);
                self.next_target(now);
            }
        }
    }

    /// Time passed: connect/handshake deadlines, backoff, heartbeat.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Connecting { addr, deadline } if now >= deadline => {
                self.handle_transport_failed(
                    now,
                    &format!("no connection within {:?}", self.cfg.connect_timeout),
                );
                let _ = addr;
            }
            State::Handshaking { deadline, .. } | State::AwaitingInit { deadline, .. }
                if now >= deadline =>
            {
                self.handle_transport_failed(
                    now,
                    &format!(
                        "TLS handshake and init not done within {:?}",
                        self.cfg.handshake_timeout
                    ),
                );
            }
            State::Backoff { until } if now >= until => self.start_round(now),
            State::Ready {
                addr,
                last_rx,
                last_tx,
            } => {
                let silence = times(self.heartbeat, 3);
                if now >= after(last_rx, silence) {
                    log::warn!("{addr}: nothing received for {silence:?}; reconnecting");
                    self.handle_transport_failed(now, "heartbeat lost");
                } else if now >= after(last_rx.max(last_tx), self.heartbeat) {
                    self.ping_seq += 1;
                    self.push_send(basicagent_proto::builtins::heartbeat_ping(self.ping_seq));
                    self.state = State::Ready {
                        addr,
                        last_rx,
                        last_tx: now,
                    };
                }
            }
            _ => {}
        }
    }

    /// Sends a frame if the session is up; returns false (and drops it)
    /// otherwise.
    pub fn send(&mut self, now: Instant, frame: Vec<u8>) -> bool {
        let ready = self.note_sent(now);
        if ready {
            self.push_send(frame);
        }
        ready
    }

    /// The core queues a frame on the link itself (an answer, a task
    /// result): whether the session is ready to send it, and if so the
    /// heartbeat counts it as traffic sent now. No [`Action::Send`].
    pub fn note_sent(&mut self, now: Instant) -> bool {
        if let State::Ready { last_tx, .. } = &mut self.state {
            *last_tx = now;
            true
        } else {
            false
        }
    }

    fn send_response(&mut self, now: Instant, r: &Response) {
        let mut frame = Vec::new();
        r.write_frame(&mut frame);
        self.send(now, frame);
    }

    /// Orderly shutdown: close the transport and stop.
    pub fn shutdown(&mut self) {
        if self.state_has_transport() {
            self.actions.push_back(Action::Close);
        }
        if matches!(self.state, State::Ready { .. }) {
            self.actions.push_back(Action::Down);
        }
        self.state = State::Closed;
    }

    fn state_has_transport(&self) -> bool {
        matches!(
            self.state,
            State::Connecting { .. }
                | State::Handshaking { .. }
                | State::AwaitingInit { .. }
                | State::Ready { .. }
        )
    }

    fn start_round(&mut self, now: Instant) {
        self.targets.clear();
        self.more = None;
        match parse_server_addr(&self.cfg.name, self.cfg.port) {
            Ok(addr) => self.targets.push_back(addr),
            Err(e) => log::error!("invalid server name {:?}: {e}", self.cfg.name),
        }
        self.next_target(now);
    }

    fn next_target(&mut self, now: Instant) {
        self.decoder = FrameDecoder::new(self.cfg.max_frame);
        match self.targets.pop_front() {
            None if self.more.is_some() => {
                let token = self.more.unwrap_or_default();
                log::debug!("waiting for DNS before giving up");
                self.state = State::Resolving { token };
            }
            None => {
                log::warn!("every address failed");
                self.backoff(now);
            }
            Some(ServerAddr::Ip(addr)) => {
                self.generation += 1;
                self.state = State::Connecting {
                    addr,
                    deadline: after(now, self.cfg.connect_timeout),
                };
                self.actions.push_back(Action::Connect(addr));
            }
            Some(ServerAddr::Name { host, port }) => {
                self.next_token += 1;
                self.state = State::Resolving {
                    token: self.next_token,
                };
                self.actions.push_back(Action::Resolve {
                    token: self.next_token,
                    name: host,
                    port,
                });
            }
        }
    }

    fn backoff(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.redirects = 0;
        self.targets.clear();
        self.more = None;
        let delay = self.backoff_delay();
        log::info!("retrying in {:.1} s", delay.as_secs_f64());
        self.state = State::Backoff {
            until: after(now, delay),
        };
    }

    /// Exponential from `backoff_min` to `backoff_max`, with "equal
    /// jitter": half the step is fixed, half is random.
    fn backoff_delay(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let step = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max);
        // xorshift64: good enough to spread a fleet's reconnects.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let frac = (self.rng % 1_000_001) as f64 / 1_000_000.0;
        half.saturating_add(half.mul_f64(frac))
    }
}

/// The server's heartbeat wish, clamped to
/// [`HEARTBEAT_MIN`]..=[`HEARTBEAT_MAX`] (logged when clamped): a peer's
/// number never reaches deadline arithmetic unchecked.
fn clamp_heartbeat(addr: SocketAddr, secs: u64) -> Duration {
    let wished = Duration::from_secs(secs);
    let used = wished.clamp(HEARTBEAT_MIN, HEARTBEAT_MAX);
    if used != wished {
        log::warn!(
            "{addr}: init reply heartbeat {secs} s is outside {}..={} s; using {} s",
            HEARTBEAT_MIN.as_secs(),
            HEARTBEAT_MAX.as_secs(),
            used.as_secs()
        );
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig {
            name: "config.cargo.com".into(),
            port: 8443,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_redirects: 3,
            heartbeat: Duration::from_secs(30),
            max_frame: 1024,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            seed: 42,
        }
    }

    fn init() -> Init {
        Init {
            hostname: "edd6c192-52cb-4133-a17a-e7d8aec03de7".into(),
            version: "0.1.0".into(),
            ..Init::default()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn drain(s: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    /// The one action must be a resolution; its token.
    fn expect_resolve(s: &mut Session) -> u64 {
        match drain(s).as_slice() {
            [Action::Resolve { token, .. }] => *token,
            other => panic!("{other:?}"),
        }
    }

    /// Drives the session from its start to Ready on `a`.
    fn to_ready(s: &mut Session, t: Instant, a: SocketAddr) {
        let token = match drain(s).as_slice() {
            [Action::Resolve {
                token,
                name,
                port: 8443,
            }] if name == "config.cargo.com" => *token,
            other => panic!("{other:?}"),
        };
        s.handle_resolved(t, token, Ok(vec![a]), true);
        assert_eq!(drain(s), vec![Action::Connect(a)]);
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        match drain(s).as_slice() {
            [Action::Send(init)] => {
                let text = String::from_utf8(init.clone()).unwrap();
                assert!(text.starts_with("{\"method\":\"init\""), "{text}");
                assert!(text.ends_with('\n'));
            }
            other => panic!("{other:?}"),
        }
        s.handle_data(t, b"{\"method\":\"init\",\"resp\":\"success\",\"retcode\":2,\"message\":\"Normal termination\"}\n");
        assert_eq!(drain(s), vec![Action::Up(a)]);
        assert_eq!(s.phase(), Phase::Ready);
    }

    #[test]
    fn addresses_are_tried_in_turn_then_ready() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(
            t,
            token,
            Ok(vec![addr("127.0.0.1:8443"), addr("127.0.0.2:8443")]),
            true,
        );
        assert_eq!(drain(&mut s), vec![Action::Connect(addr("127.0.0.1:8443"))]);
        s.handle_transport_failed(t, "connection refused");
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("127.0.0.2:8443"))]
        );
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        assert!(matches!(drain(&mut s).as_slice(), [Action::Send(_)]));
        s.handle_data(
            t,
            b"{\"method\":\"init\",\"resp\":\"success\",\"retcode\":2,\"heartbeat\":5}\n",
        );
        assert_eq!(drain(&mut s), vec![Action::Up(addr("127.0.0.2:8443"))]);
        assert_eq!(s.heartbeat(), Duration::from_secs(5));
    }

    #[test]
    fn a_silent_address_times_out_and_the_next_is_tried() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(
            t,
            token,
            Ok(vec![addr("127.0.0.1:8443"), addr("127.0.0.2:8443")]),
            true,
        );
        drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(10)));
        s.handle_timeout(t + Duration::from_secs(9));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(t + Duration::from_secs(10));
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("127.0.0.2:8443"))]
        );
        // The handshake (TLS + init) has its own deadline.
        let t2 = t + Duration::from_secs(10);
        s.handle_tcp_connected(t2);
        s.handle_tls_established(t2);
        drain(&mut s);
        s.handle_timeout(t2 + Duration::from_secs(10));
        assert_eq!(s.phase(), Phase::Backoff);
    }

    #[test]
    fn all_failed_backs_off_exponentially_with_jitter_and_resolves_again() {
        let mut t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let mut delays = Vec::new();
        for _ in 0..9 {
            let token = expect_resolve(&mut s);
            s.handle_resolved(t, token, Ok(vec![addr("127.0.0.1:8443")]), true);
            drain(&mut s);
            s.handle_transport_failed(t, "refused");
            assert_eq!(drain(&mut s), vec![Action::Close]);
            assert_eq!(s.phase(), Phase::Backoff);
            let until = s.poll_timeout().unwrap();
            delays.push(until - t);
            s.handle_timeout(until - Duration::from_millis(1));
            assert_eq!(s.phase(), Phase::Backoff, "not before the deadline");
            t = until;
            s.handle_timeout(t);
            assert_eq!(s.phase(), Phase::Resolving, "resolves again each round");
        }
        let step = |i: u32| Duration::from_secs(1u64 << i).min(Duration::from_secs(60));
        for (i, d) in delays.iter().enumerate() {
            let full = step(i as u32);
            assert!(
                *d >= full / 2 && *d <= full,
                "round {i}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(
            delays[8] >= Duration::from_secs(30),
            "capped at 60 s with jitter: {:?}",
            delays[8]
        );
    }

    #[test]
    fn a_resolution_failure_backs_off() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(t, token + 99, Ok(vec![addr("127.0.0.1:1")]), true);
        assert!(drain(&mut s).is_empty(), "a stale token is ignored");
        s.handle_resolved(t, token, Err("NXDOMAIN".into()), true);
        assert_eq!(s.phase(), Phase::Backoff);
    }

    #[test]
    fn a_redirect_is_followed_with_the_same_init_and_loops_are_bounded() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.1:8443")]), true);
        drain(&mut s);
        let mut inits = Vec::new();
        for round in 0..4 {
            s.handle_tcp_connected(t);
            s.handle_tls_established(t);
            match drain(&mut s).as_slice() {
                [Action::Send(f)] => inits.push(f.clone()),
                other => panic!("{other:?}"),
            }
            s.handle_data(
                t,
                b"{\"method\":\"redirect\",\"server\":\"127.0.0.9:9,bad:port:x,127.0.0.3\"}\n",
            );
            let actions = drain(&mut s);
            if round < 3 {
                assert_eq!(
                    actions,
                    vec![Action::Close, Action::Connect(addr("127.0.0.9:9"))],
                    "round {round}"
                );
            } else {
                assert_eq!(
                    actions,
                    vec![Action::Close],
                    "the 4th redirect in a row backs off"
                );
                assert_eq!(s.phase(), Phase::Backoff);
            }
        }
        assert!(
            inits.windows(2).all(|w| w[0] == w[1]),
            "same init, same host id"
        );
    }

    #[test]
    fn a_redirect_to_a_name_resolves_it_and_the_list_is_tried_in_turn() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.1:8443")]), true);
        drain(&mut s);
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        drain(&mut s);
        s.handle_data(
            t,
            b"{\"method\":\"redirect\",\"server\":\"127.0.0.9:7,node2.example:9000,[::1]:7\"}\n",
        );
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("127.0.0.9:7"))]
        );
        s.handle_transport_failed(t, "refused");
        let token = match drain(&mut s).as_slice() {
            [Action::Close, Action::Resolve {
                token,
                name,
                port: 9000,
            }] if name == "node2.example" => *token,
            other => panic!("{other:?}"),
        };
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.4:9000")]), true);
        assert_eq!(drain(&mut s), vec![Action::Connect(addr("127.0.0.4:9000"))]);
        s.handle_transport_failed(t, "refused");
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("[::1]:7"))]
        );
    }

    #[test]
    fn a_rejected_init_backs_off_and_garbage_init_tries_the_next() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(
            t,
            token,
            Ok(vec![
                addr("127.0.0.1:1"),
                addr("127.0.0.2:1"),
                addr("127.0.0.3:1"),
            ]),
            true,
        );
        drain(&mut s);
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        drain(&mut s);
        s.handle_data(t, b"this is not json\n");
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("127.0.0.2:1"))]
        );
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        drain(&mut s);
        s.handle_data(t, b"{\"method\":\"init\",\"resp\":\"failed\",\"retcode\":3027,\"message\":\"not welcome\"}\n");
        assert_eq!(drain(&mut s), vec![Action::Close]);
        assert_eq!(s.phase(), Phase::Backoff);
    }

    #[test]
    fn frames_split_anywhere_are_dispatched_whole_and_garbage_too() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let a = addr("127.0.0.2:8443");
        to_ready(&mut s, t, a);
        let input =
            b"{\"id\":1,\"method\":\"ping\"}\nnot json\n{\"id\":2,\"method\":\"getinfo.kernel\"}\n";
        for chunk in input.chunks(3) {
            s.handle_data(t, chunk);
        }
        assert_eq!(
            drain(&mut s),
            vec![
                Action::Dispatch(b"{\"id\":1,\"method\":\"ping\"}".to_vec()),
                Action::Dispatch(b"not json".to_vec()),
                Action::Dispatch(b"{\"id\":2,\"method\":\"getinfo.kernel\"}".to_vec()),
            ]
        );
    }

    #[test]
    fn a_too_long_frame_is_answered_3020_and_the_next_one_served() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        to_ready(&mut s, t, addr("127.0.0.2:8443"));
        let mut big = vec![b'x'; 5000];
        big.push(b'\n');
        s.handle_data(t, &big);
        s.handle_data(t, b"{\"id\":3,\"method\":\"ping\"}\n");
        let actions = drain(&mut s);
        match &actions[0] {
            Action::Send(f) => {
                let text = String::from_utf8(f.clone()).unwrap();
                assert!(
                    text.starts_with("{\"id\":null,\"resp\":\"failed\",\"retcode\":3020"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            actions[1],
            Action::Dispatch(b"{\"id\":3,\"method\":\"ping\"}".to_vec())
        );
    }

    #[test]
    fn heartbeat_pings_when_idle_and_reconnects_when_the_server_is_silent() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let a = addr("127.0.0.2:8443");
        to_ready(&mut s, t, a);
        let hb = Duration::from_secs(30);
        assert_eq!(s.poll_timeout(), Some(t + hb));
        s.handle_timeout(t + hb);
        match drain(&mut s).as_slice() {
            [Action::Send(f)] => assert_eq!(f, b"{\"id\":\"hb-1\",\"method\":\"ping\"}\n"),
            other => panic!("{other:?}"),
        }
        // Traffic in resets the silence clock.
        s.handle_data(
            t + hb * 2,
            b"{\"id\":\"hb-1\",\"resp\":\"success\",\"retcode\":2}\n",
        );
        drain(&mut s);
        s.handle_timeout(t + hb * 4);
        assert_eq!(s.phase(), Phase::Ready);
        drain(&mut s);
        s.handle_timeout(t + hb * 5);
        assert_eq!(
            s.phase(),
            Phase::Resolving,
            "silent for 3 heartbeats: reconnect"
        );
        let actions = drain(&mut s);
        assert_eq!(&actions[..2], &[Action::Close, Action::Down]);
        assert!(matches!(actions[2], Action::Resolve { .. }));
    }

    /// Up with the server's init reply `reply` (one line, `\n` included).
    fn ready_with_reply(s: &mut Session, t: Instant, a: SocketAddr, reply: &[u8]) {
        let token = expect_resolve(s);
        s.handle_resolved(t, token, Ok(vec![a]), true);
        drain(s);
        s.handle_tcp_connected(t);
        s.handle_tls_established(t);
        drain(s);
        s.handle_data(t, reply);
        assert_eq!(drain(s), vec![Action::Up(a)]);
    }

    #[test]
    fn a_huge_heartbeat_from_the_server_is_clamped_and_the_session_keeps_serving() {
        for secs in [u64::MAX, 6_148_914_691_236_517_206, 86_401] {
            let t = Instant::now();
            let mut s = Session::new(cfg(), init(), t);
            let a = addr("127.0.0.2:8443");
            let reply = format!(
                "{{\"method\":\"init\",\"resp\":\"success\",\"retcode\":2,\"heartbeat\":{secs}}}\n"
            );
            ready_with_reply(&mut s, t, a, reply.as_bytes());
            assert_eq!(s.heartbeat(), HEARTBEAT_MAX, "{secs}");
            // Deadlines are computable and sane.
            assert_eq!(s.poll_timeout(), Some(t + HEARTBEAT_MAX));
            s.handle_timeout(t + Duration::from_secs(5));
            assert_eq!(s.phase(), Phase::Ready);
            // Requests are still dispatched, answers still sent.
            s.handle_data(t, b"{\"id\":1,\"method\":\"ping\"}\n");
            assert_eq!(
                drain(&mut s),
                vec![Action::Dispatch(b"{\"id\":1,\"method\":\"ping\"}".to_vec())]
            );
            assert!(s.send(t, b"{}\n".to_vec()));
            // The heartbeat ping comes at the clamped period.
            s.handle_timeout(t + HEARTBEAT_MAX);
            assert!(
                matches!(drain(&mut s).as_slice(), [Action::Send(_), Action::Send(f)] if f.starts_with(b"{\"id\":\"hb-1\""))
            );
        }
    }

    #[test]
    fn a_heartbeat_below_one_second_cannot_come_from_the_wire_and_huge_config_values_saturate() {
        // Integers only on the wire; 0 means "the agent's own".
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        ready_with_reply(
            &mut s,
            t,
            addr("127.0.0.2:8443"),
            b"{\"method\":\"init\",\"resp\":\"success\",\"retcode\":2,\"heartbeat\":0}\n",
        );
        assert_eq!(s.heartbeat(), Duration::from_secs(30));
        // A session built with absurd durations (config validation is the
        // first defence) still never panics on its deadlines.
        let mut c = cfg();
        c.connect_timeout = Duration::MAX;
        c.handshake_timeout = Duration::from_secs(u64::MAX);
        c.heartbeat = Duration::MAX;
        c.backoff_min = Duration::MAX;
        c.backoff_max = Duration::MAX;
        let mut s = Session::new(c, init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.1:1")]), true);
        drain(&mut s);
        assert!(s.poll_timeout().unwrap() > t);
        s.handle_tcp_connected(t);
        assert!(s.poll_timeout().unwrap() > t);
        s.handle_transport_failed(t, "refused");
        assert_eq!(s.phase(), Phase::Backoff);
        assert!(s.poll_timeout().unwrap() > t);
        s.handle_timeout(t + Duration::from_secs(1));
    }

    #[test]
    fn a_lost_session_reconnects_at_once_and_responses_only_go_out_when_ready() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let a = addr("127.0.0.2:8443");
        assert!(!s.send(t, b"early\n".to_vec()));
        to_ready(&mut s, t, a);
        let g = s.generation();
        assert!(s.send(t, b"{}\n".to_vec()));
        assert_eq!(drain(&mut s), vec![Action::Send(b"{}\n".to_vec())]);
        s.handle_transport_failed(t, "reset by peer");
        let actions = drain(&mut s);
        assert_eq!(&actions[..2], &[Action::Close, Action::Down]);
        let token = match &actions[2] {
            Action::Resolve { token, .. } => *token,
            other => panic!("reconnects at once through resolution: {other:?}"),
        };
        s.handle_resolved(t, token, Ok(vec![a]), true);
        assert_eq!(drain(&mut s), vec![Action::Connect(a)]);
        assert!(s.generation() > g, "a new connection is a new generation");
    }

    #[test]
    fn shutdown_closes_and_stops() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        to_ready(&mut s, t, addr("127.0.0.2:8443"));
        s.shutdown();
        assert_eq!(drain(&mut s), vec![Action::Close, Action::Down]);
        assert_eq!(s.phase(), Phase::Closed);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn hosts_lines_are_tried_before_dns_answers_and_a_round_waits_for_dns() {
        let t = Instant::now();
        let mut s = Session::new(cfg(), init(), t);
        let token = expect_resolve(&mut s);
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.1:8443")]), false);
        assert_eq!(drain(&mut s), vec![Action::Connect(addr("127.0.0.1:8443"))]);
        s.handle_transport_failed(t, "refused");
        assert_eq!(drain(&mut s), vec![Action::Close]);
        assert_eq!(
            s.phase(),
            Phase::Resolving,
            "waits for DNS instead of backing off"
        );
        s.handle_resolved(t, token, Ok(vec![addr("127.0.0.5:8443")]), true);
        assert_eq!(drain(&mut s), vec![Action::Connect(addr("127.0.0.5:8443"))]);
        s.handle_transport_failed(t, "refused");
        drain(&mut s);
        assert_eq!(s.phase(), Phase::Backoff);
        // DNS answering while a hosts line is being tried: appended.
        let until = s.poll_timeout().unwrap();
        s.handle_timeout(until);
        let token = expect_resolve(&mut s);
        s.handle_resolved(until, token, Ok(vec![addr("127.0.0.1:8443")]), false);
        drain(&mut s);
        s.handle_resolved(until, token, Ok(vec![addr("127.0.0.6:8443")]), true);
        assert!(drain(&mut s).is_empty());
        s.handle_transport_failed(until, "refused");
        assert_eq!(
            drain(&mut s),
            vec![Action::Close, Action::Connect(addr("127.0.0.6:8443"))]
        );
    }

    #[test]
    fn an_ip_literal_server_name_skips_resolution() {
        let t = Instant::now();
        let mut c = cfg();
        c.name = "127.0.0.7".into();
        let mut s = Session::new(c, init(), t);
        assert_eq!(drain(&mut s), vec![Action::Connect(addr("127.0.0.7:8443"))]);
    }
}
