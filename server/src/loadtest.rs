//! `loadtest`: accept one agent, answer its init, send N requests over the one TLS connection with at most D in flight, report rate and latency as one JSON line.
//!
//! Key decision: the load tester must never be the bottleneck, so the
//! steady state allocates nothing per request. A request is a template
//! (the `--json` object without its `{`) behind a numeric id; a batch of
//! requests is built into one buffer and handed to rustls in one write;
//! replies are read into one buffer and split into lines in place; a reply
//! is decoded into borrowed fields only (`id`, `retcode`, `method`); the
//! clock is read once per batch sent and once per batch received. One
//! thread, one `mio::Poll`, the socket registered once (edge-triggered,
//! readable and writable), reads drained to `WouldBlock`.
//!
//! The init reply and the answer to an agent's `ping` come from
//! `basicagent-proto`; TLS setup is the server's own ([`crate::tls`]).

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use basicagent_proto::{Init, InitReply, Response, Retcode};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConnection;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::tls::{server_config, TlsSetupError};

const LISTENER: Token = Token(0);
const SOCKET: Token = Token(1);
/// Largest reply line accepted (the protocol's default frame limit).
const MAX_LINE: usize = basicagent_proto::DEFAULT_MAX_FRAME;
/// Marks a slot whose request is not in flight.
const IDLE: u64 = u64::MAX;

/// What `loadtest` was told on the command line.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Measured requests.
    pub requests: u64,
    /// Most requests in flight at once (1: one at a time).
    pub depth: u64,
    /// The request object, without `id` (one is added per request).
    pub request: String,
    /// Requests sent and answered before the measured ones (not counted).
    pub warmup: u64,
    /// Bound on the whole run: waiting for the agent, handshake, init, requests.
    pub timeout: Duration,
}

/// Why the load test could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--json: {0}")]
    BadRequest(String),
    #[error("--requests and --depth must be at least 1")]
    BadCount,
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("the agent's init was refused: {0}")]
    Init(String),
    #[error("a reply line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the agent closed the connection {0}")]
    Closed(&'static str),
    #[error("timed out {what} ({answered} of {sent} measured requests answered)")]
    Timeout {
        what: &'static str,
        sent: u64,
        answered: u64,
    },
}

/// The result of a completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub requests: u64,
    pub depth: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Failed responses, plus replies whose id was not in flight.
    pub errors: u64,
}

impl Report {
    /// The report as one JSON object (no newline), keys in the documented order.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wire {
            requests: u64,
            depth: u64,
            seconds: f64,
            rate_per_s: f64,
            p50_us: f64,
            p99_us: f64,
            max_us: f64,
            errors: u64,
        }
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let wire = Wire {
            requests: self.requests,
            depth: self.depth,
            seconds: (self.seconds * 1e6).round() / 1e6,
            rate_per_s: round(self.rate_per_s),
            p50_us: round(self.p50_us),
            p99_us: round(self.p99_us),
            max_us: round(self.max_us),
            errors: self.errors,
        };
        // Plain numbers only: serialising cannot fail.
        serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Runs the whole test: listen, accept one agent, handshake, init, warm-up, measured requests, close.
pub fn run(opts: &LoadOptions) -> Result<Report, LoadError> {
    if opts.requests == 0 || opts.depth == 0 {
        return Err(LoadError::BadCount);
    }
    let template = Template::new(&opts.request)?;
    let tls = server_config(&opts.cert, &opts.key, None)?;
    let deadline = Instant::now() + opts.timeout;
    let mut link = Link::accept(opts.listen, tls, deadline)?;
    link.handshake()?;
    link.init()?;
    let depth = opts.depth;
    if opts.warmup > 0 {
        link.phase(&template, opts.warmup, depth, 0, None)?;
    }
    let mut latencies = Vec::with_capacity(usize::try_from(opts.requests).unwrap_or(0));
    let stats = link.phase(
        &template,
        opts.requests,
        depth,
        opts.warmup,
        Some(&mut latencies),
    )?;
    link.close();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        // Nearest rank.
        let rank = (p * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    let seconds = stats.elapsed.as_secs_f64();
    Ok(Report {
        requests: opts.requests,
        depth,
        seconds,
        rate_per_s: if seconds > 0.0 {
            opts.requests as f64 / seconds
        } else {
            0.0
        },
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: latencies.last().map_or(0.0, |&l| l as f64 / 1000.0),
        errors: stats.errors,
    })
}

/// A request frame without its id: `{"id":` + id + `,` + `body` + `\n`.
struct Template {
    /// The object after its opening `{`, e.g. `"method":"getinfo.kernel"}`.
    body: Vec<u8>,
}

impl Template {
    fn new(text: &str) -> Result<Template, LoadError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| LoadError::BadRequest(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(LoadError::BadRequest("not a JSON object".into()));
        };
        if !map.get("method").is_some_and(Value::is_string) {
            return Err(LoadError::BadRequest("needs a \"method\" string".into()));
        }
        map.remove("id");
        let object = Value::Object(map).to_string();
        let body = object
            .strip_prefix('{')
            .ok_or_else(|| LoadError::BadRequest("not a JSON object".into()))?;
        Ok(Template {
            body: body.as_bytes().to_vec(),
        })
    }

    /// Appends the frame for `id` to `out`.
    fn write(&self, id: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        push_decimal(id, out);
        out.push(b',');
        out.extend_from_slice(&self.body);
        out.push(b'\n');
    }
}

/// Appends `n` in decimal without allocating.
fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The fields of an agent line the load tester looks at, borrowed.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resp: Option<Cow<'a, str>>,
    #[serde(default)]
    retcode: Option<u64>,
}

/// What one phase (warm-up or measured) saw.
struct PhaseStats {
    elapsed: Duration,
    errors: u64,
}

/// The one agent connection.
struct Link {
    sock: TcpStream,
    tls: ServerConnection,
    poll: Poll,
    events: Events,
    /// Plaintext read from the agent; `rbuf[..rlen]` holds unprocessed bytes.
    rbuf: Vec<u8>,
    rlen: usize,
    /// Plaintext frames to hand to rustls in one write.
    out: Vec<u8>,
    deadline: Instant,
    /// Measured requests sent and answered so far (for the timeout message).
    progress: (u64, u64),
}

impl Link {
    /// Listens on `addr`, waits for one connection, stops listening.
    fn accept(
        addr: SocketAddr,
        tls: std::sync::Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<Link, LoadError> {
        let io = |what| move |source| LoadError::Io { what, source };
        let mut listener =
            TcpListener::bind(addr).map_err(|source| LoadError::Listen { addr, source })?;
        let mut poll = Poll::new().map_err(io("poll"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io("register listener"))?;
        let mut events = Events::with_capacity(16);
        let (mut sock, peer) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("accept")(e)),
            }
            wait(
                &mut poll,
                &mut events,
                deadline,
                "waiting for the agent",
                (0, 0),
            )?;
        };
        drop(listener);
        log::info!("loadtest: agent connected from {peer}");
        sock.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        poll.registry()
            .register(&mut sock, SOCKET, Interest::READABLE | Interest::WRITABLE)
            .map_err(io("register socket"))?;
        let mut tls = ServerConnection::new(tls)?;
        // In-flight requests are bounded by --depth; let rustls take a whole batch.
        tls.set_buffer_limit(None);
        Ok(Link {
            sock,
            tls,
            poll,
            events,
            rbuf: vec![0; 256 * 1024],
            rlen: 0,
            out: Vec::with_capacity(64 * 1024),
            deadline,
            progress: (0, 0),
        })
    }

    fn wait(&mut self, what: &'static str) -> Result<(), LoadError> {
        wait(
            &mut self.poll,
            &mut self.events,
            self.deadline,
            what,
            self.progress,
        )
    }

    /// Writes what rustls holds until done or `WouldBlock`.
    fn flush(&mut self) -> Result<(), LoadError> {
        if !self.out.is_empty() {
            self.tls
                .writer()
                .write_all(&self.out)
                .map_err(|source| LoadError::Io {
                    what: "queue for TLS",
                    source,
                })?;
            self.out.clear();
        }
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "write",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads the socket to `WouldBlock`, moving plaintext into `rbuf`.
    /// Returns how many plaintext bytes arrived.
    fn drain(&mut self) -> Result<usize, LoadError> {
        let mut got = 0;
        loop {
            let read = match self.tls.read_tls(&mut self.sock) {
                Ok(n) => Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "read",
                        source,
                    })
                }
            };
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Send our alert, if any.
                    let _ = self.flush();
                    return Err(e.into());
                }
            };
            let mut pending = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            while pending > 0 {
                if self.rlen == self.rbuf.len() {
                    if self.rbuf.len() > MAX_LINE {
                        return Err(LoadError::LineTooLong);
                    }
                    self.rbuf.resize(self.rbuf.len() * 2, 0);
                }
                match self.tls.reader().read(&mut self.rbuf[self.rlen..]) {
                    Ok(n) => {
                        self.rlen += n;
                        got += n;
                        pending = pending.saturating_sub(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(source) => {
                        return Err(LoadError::Io {
                            what: "read plaintext",
                            source,
                        })
                    }
                }
            }
            match read {
                None => return Ok(got),
                Some(0) => return Err(LoadError::Closed("(end of stream)")),
                Some(_) if peer_closed => return Err(LoadError::Closed("(close_notify)")),
                Some(_) => {}
            }
        }
    }

    /// Calls `f` on each complete line in `rbuf`, then keeps the incomplete rest.
    fn lines(&mut self, mut f: impl FnMut(&[u8])) {
        let mut start = 0;
        while let Some(n) = self.rbuf[start..self.rlen].iter().position(|&b| b == b'\n') {
            let line = &self.rbuf[start..start + n];
            if !line.iter().all(u8::is_ascii_whitespace) {
                f(line);
            }
            start += n + 1;
        }
        if start > 0 {
            self.rbuf.copy_within(start..self.rlen, 0);
            self.rlen -= start;
        }
    }

    fn handshake(&mut self) -> Result<(), LoadError> {
        while self.tls.is_handshaking() {
            self.flush()?;
            self.wait("in the TLS handshake")?;
            self.drain()?;
        }
        self.flush()
    }

    /// Waits for the agent's init and accepts it.
    fn init(&mut self) -> Result<(), LoadError> {
        let mut init: Option<Result<Init, String>> = None;
        loop {
            self.lines(|line| {
                if init.is_none() {
                    init = Some(Init::parse(line).map_err(|e| e.to_string()));
                }
            });
            match init.take() {
                Some(Ok(init)) => {
                    log::info!(
                        "loadtest: agent {} ({}) up with {} plugins",
                        init.hostname,
                        init.name,
                        init.plugins.len()
                    );
                    InitReply::Accepted { heartbeat: None }.write_frame(&mut self.out);
                    return self.flush();
                }
                Some(Err(e)) => {
                    InitReply::rejected(Retcode::INVALID_REQUEST, format!("expected init: {e}"))
                        .write_frame(&mut self.out);
                    let _ = self.flush();
                    return Err(LoadError::Init(e));
                }
                None => {}
            }
            self.wait("waiting for init")?;
            self.drain()?;
        }
    }

    /// Sends `count` requests with ids `base..base + count`, at most
    /// `depth` in flight; records each latency in nanoseconds when asked.
    fn phase(
        &mut self,
        template: &Template,
        count: u64,
        depth: u64,
        base: u64,
        mut latencies: Option<&mut Vec<u64>>,
    ) -> Result<PhaseStats, LoadError> {
        let measured = latencies.is_some();
        // Send time (ns since `epoch`) per request; IDLE when not in flight.
        let mut sent_at = vec![IDLE; usize::try_from(count).unwrap_or(usize::MAX)];
        let epoch = Instant::now();
        let (mut next, mut answered, mut in_flight, mut errors) = (0u64, 0u64, 0u64, 0u64);
        let mut pings: Vec<u8> = Vec::new();
        loop {
            if in_flight < depth && next < count {
                let now = nanos_since(epoch);
                while in_flight < depth && next < count {
                    template.write(base + next, &mut self.out);
                    sent_at[next as usize] = now;
                    next += 1;
                    in_flight += 1;
                }
            }
            self.out.append(&mut pings);
            self.flush()?;
            if measured {
                self.progress = (next, answered);
            }
            if answered == count {
                break;
            }
            self.wait("waiting for replies")?;
            if self.drain()? == 0 {
                continue;
            }
            let now = nanos_since(epoch);
            self.lines(|line| {
                let Ok(reply) = serde_json::from_slice::<Reply>(line) else {
                    log::warn!("loadtest: unreadable line from the agent");
                    errors += 1;
                    return;
                };
                if reply.resp.is_none() {
                    if reply.method.as_deref() == Some("ping") {
                        let id = reply.id.map(ToOwned::to_owned);
                        Response::new(id, Retcode::SUCCESS).write_frame(&mut pings);
                    } else {
                        log::info!("loadtest: ignoring {:?} from the agent", reply.method);
                    }
                    return;
                }
                let slot = reply
                    .id
                    .and_then(|id| id.get().parse::<u64>().ok())
                    .and_then(|id| id.checked_sub(base))
                    .filter(|&i| i < count)
                    .map(|i| i as usize)
                    .filter(|&i| sent_at[i] != IDLE);
                let Some(i) = slot else {
                    log::warn!("loadtest: reply to an id not in flight: {:?}", reply.id);
                    errors += 1;
                    return;
                };
                if let Some(l) = latencies.as_deref_mut() {
                    l.push(now.saturating_sub(sent_at[i]));
                }
                sent_at[i] = IDLE;
                answered += 1;
                in_flight -= 1;
                if reply.retcode != Some(u64::from(Retcode::SUCCESS.0)) {
                    errors += 1;
                }
            });
        }
        Ok(PhaseStats {
            elapsed: epoch.elapsed(),
            errors,
        })
    }

    /// Says goodbye with close_notify and closes the socket.
    fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One poll, bounded by the run's deadline.
fn wait(
    poll: &mut Poll,
    events: &mut Events,
    deadline: Instant,
    what: &'static str,
    (sent, answered): (u64, u64),
) -> Result<(), LoadError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(LoadError::Timeout {
            what,
            sent,
            answered,
        });
    }
    match poll.poll(events, Some(deadline - now)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(source) => Err(LoadError::Io {
            what: "poll",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_splices_the_id_in_front() {
        let t = Template::new(r#"{"method":"sync.bash","cmd":"true","id":"x"}"#).unwrap();
        let mut out = Vec::new();
        t.write(0, &mut out);
        t.write(1234567890123, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, id) in lines.iter().zip([0u64, 1234567890123]) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["id"], id);
            assert_eq!(v["method"], "sync.bash");
            assert_eq!(v["cmd"], "true");
        }
    }

    #[test]
    fn template_refuses_what_is_not_a_request() {
        for bad in ["[]", "{}", r#"{"method":1}"#, "nope"] {
            assert!(Template::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimal_digits() {
        for n in [0u64, 7, 10, 99, 100, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(n, &mut out);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn reply_fields_are_borrowed_and_others_skipped() {
        let line = br#"{"id":42,"resp":"failed","retcode":3022,"message":"Unknown method","data":{"a":[1,"\u00e9"]}}"#;
        let r: Reply = serde_json::from_slice(line).unwrap();
        assert_eq!(r.id.map(RawValue::get), Some("42"));
        assert_eq!(r.retcode, Some(3022));
        assert_eq!(r.resp.as_deref(), Some("failed"));
        assert!(r.method.is_none());
    }

    #[test]
    fn report_has_the_documented_keys() {
        let r = Report {
            requests: 10,
            depth: 2,
            seconds: 0.5,
            rate_per_s: 20.0,
            p50_us: 1.04,
            p99_us: 2.0,
            max_us: 3.0,
            errors: 0,
        };
        assert_eq!(
            r.to_json(),
            r#"{"requests":10,"depth":2,"seconds":0.5,"rate_per_s":20.0,"p50_us":1.0,"p99_us":2.0,"max_us":3.0,"errors":0}"#
        );
    }
}
