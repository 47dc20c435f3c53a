//! `loadtest`: accept one agent, answer its init, send N requests over the one TLS connection with at most D in flight, report rate and latency as one JSON line.
//!
//! Key decision: the load tester must never be the bottleneck, so the
//! steady state does almost nothing per request. A request is a template
//! (the `--json` object without its `{`) behind a numeric id; a batch of
//! requests is built into one buffer and queued on the link as one; the
//! link's frame decoder hands each reply line over (its one allocation
//! per reply); a reply is decoded into borrowed fields only (`id`,
//! `retcode`, `method`); the clock is read once per batch sent and once
//! per batch received. One
//! thread, one `mio::Poll`, the socket registered once (edge-triggered,
//! readable and writable), reads drained to `WouldBlock`.
//!
//! The init reply and the answer to an agent's `ping` come from
//! `basicagent-proto`; TLS and framing are `basicagent-link`'s (one
//! [`Link`] over the socket: ciphertext read here goes in, whole lines
//! come out, batches go in and ciphertext comes out); TLS setup is the
//! server's own ([`crate::tls`]).

use std::borrow::Cow;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use basicagent_link::{Link, LinkError};
use basicagent_proto::handshake::RejectCause;
use basicagent_proto::{answer_init, InitContext, InitPolicy, Response, Retcode, Verdict};
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
    #[error("{0}")]
    Link(#[from] LinkError),
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
    let mut link = Conn::accept(opts.listen, tls, deadline)?;
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

/// The one agent connection: the socket and its [`Link`].
struct Conn {
    sock: TcpStream,
    link: Link<ServerConnection>,
    poll: Poll,
    events: Events,
    /// Ciphertext read from the socket, handed to the link.
    rbuf: Vec<u8>,
    /// Plaintext frames built for one batch, queued as one.
    out: Vec<u8>,
    deadline: Instant,
    /// Measured requests sent and answered so far (for the timeout message).
    progress: (u64, u64),
}

impl Conn {
    /// Listens on `addr`, waits for one connection, stops listening.
    fn accept(
        addr: SocketAddr,
        tls: std::sync::Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<Conn, LoadError> {
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
        Ok(Conn {
            sock,
            link: Link::new(tls, MAX_LINE),
            poll,
            events,
            rbuf: vec![0; 256 * 1024],
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

    /// Queues the batch built in `out` and writes until done or
    /// `WouldBlock` (the rest goes after the next wait).
    fn flush(&mut self) -> Result<(), LoadError> {
        if !self.out.is_empty() {
            // The batch goes to the link (freed once sent); the next one
            // starts empty and grows to its size.
            let batch = std::mem::take(&mut self.out);
            self.link.queue_frame(batch).map_err(|e| LoadError::Io {
                what: "queue for TLS",
                source: io::Error::other(e.to_string()),
            })?;
        }
        while self.link.poll_transmit(&mut self.sock)?.more {}
        Ok(())
    }

    /// Reads the socket to `WouldBlock` through the link, calling
    /// `on_line` on each complete line. Returns how many lines came.
    fn drain(&mut self, mut on_line: impl FnMut(&[u8])) -> Result<usize, LoadError> {
        let mut lines = 0;
        loop {
            let n = match self.sock.read(&mut self.rbuf) {
                Ok(0) => return Err(LoadError::Closed("(end of stream)")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(lines),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "read",
                        source,
                    })
                }
            };
            let mut off = 0;
            while off < n {
                let taken = match self.link.handle_ciphertext(&self.rbuf[off..n]) {
                    Ok(taken) => taken,
                    Err(e) => {
                        // Send our alert, if any.
                        let _ = self.flush();
                        return Err(e.into());
                    }
                };
                off += taken;
                while let Some(frame) = self.link.next_frame() {
                    let line = frame.map_err(|_| LoadError::LineTooLong)?;
                    lines += 1;
                    on_line(&line);
                }
                if self.link.peer_closed() {
                    return Err(LoadError::Closed("(close_notify)"));
                }
                if taken == 0 {
                    // The link takes nothing more (cannot happen once
                    // its frames are pulled); what is left is dropped.
                    break;
                }
            }
        }
    }

    /// Completes the TLS handshake, waits for the agent's init and
    /// accepts it ([`answer_init`] with the accept-all policy).
    fn init(&mut self) -> Result<(), LoadError> {
        let mut first: Option<Vec<u8>> = None;
        loop {
            self.flush()?;
            if let Some(frame) = first.take() {
                let ctx = InitContext {
                    policy: &InitPolicy::Accept,
                    own: &[],
                    client_host: None,
                    full: None,
                    heartbeat: None,
                };
                let verdict = answer_init(Ok(&frame), &ctx);
                self.out.extend_from_slice(&verdict.reply());
                return match verdict {
                    Verdict::Accept { init, .. } => {
                        log::info!(
                            "loadtest: agent {} ({}) up with {} plugins",
                            init.hostname,
                            init.name,
                            init.plugins.len()
                        );
                        self.flush()
                    }
                    Verdict::Reject {
                        cause: RejectCause::InvalidInit(e),
                        ..
                    } => {
                        let _ = self.flush();
                        Err(LoadError::Init(e))
                    }
                    other => Err(LoadError::Init(format!("unexpected answer {other:?}"))),
                };
            }
            let what = if self.link.is_handshaking() {
                "in the TLS handshake"
            } else {
                "waiting for init"
            };
            self.wait(what)?;
            self.drain(|line| {
                if first.is_none() {
                    first = Some(line.to_vec());
                }
            })?;
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
            // The clock is read once per batch received, at its first line.
            let mut now = None;
            self.drain(|line| {
                let now = *now.get_or_insert_with(|| nanos_since(epoch));
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
            })?;
        }
        Ok(PhaseStats {
            elapsed: epoch.elapsed(),
            errors,
        })
    }

    /// Says goodbye with close_notify and closes the socket.
    fn close(&mut self) {
        self.link.send_close_notify();
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
