//! One simulated agent as a tokio task: connect from its source address, TLS, init (following redirects), then answer requests and keep the heartbeat until shutdown.
//!
//! Key decision: an idle session costs one socket, one rustls connection,
//! a frame decoder with an empty buffer and one small task; the read buffer
//! is per thread, not per session (a session reads into it inside its
//! `poll` and copies only the bytes of an incomplete line), so 19 000 idle
//! sessions do not hold 19 000 read buffers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use basicagent_proto::{FrameDecoder, InitReply, ServerAddr};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::canned::{Answer, Persona};
use crate::options::Options;
use crate::stats::{Refusal, Stats};
use crate::sys;

/// Bytes read from the socket in one go (per thread, see the module doc).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What every session shares.
pub struct Ctx {
    pub opts: Options,
    pub tls: TlsConnector,
    /// The configuration behind `tls`, the base of per-agent ones (`--cert-dir`).
    pub base_config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    pub stats: Stats,
    /// Bounds connects + handshakes + inits in flight.
    pub ramp: Semaphore,
    pub started: Instant,
    pub started_unix: u64,
    /// The next connection attempt may start at this instant (`--rate`).
    pub pace: Mutex<Instant>,
    /// The first message seen for each refusal reason (for the report).
    pub first_refusal: Mutex<Vec<(Refusal, String)>>,
    /// Microseconds since `started` of the last session that came up.
    pub last_up_us: std::sync::atomic::AtomicU64,
}

impl Ctx {
    fn refuse(&self, why: Refusal, detail: String) {
        self.stats.refused(why);
        log::info!("refused ({}): {detail}", why.label());
        let mut first = self.first_refusal.lock().unwrap_or_else(|e| e.into_inner());
        if !first.iter().any(|(r, _)| *r == why) {
            log::warn!("first refusal of kind {}: {detail}", why.label());
            first.push((why, detail));
        }
    }

    async fn pace(&self) {
        if self.opts.rate <= 0.0 {
            return;
        }
        let step = Duration::from_secs_f64(1.0 / self.opts.rate);
        let slot = {
            let mut next = self.pace.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot.checked_add(step).unwrap_or(slot);
            slot
        };
        sleep_until(slot.into()).await;
    }
}

/// One `async.bash` task of a simulated agent: its `task.done` frame,
/// pushed once the task has "run" (`ready`) and after every init, until a
/// server acknowledges it. In memory: the swarm process outlives the server
/// nodes it measures, which is what the agent's durable outbox gives.
struct Task {
    id: String,
    ready: Instant,
    /// Pushed on the current session.
    pushed: bool,
    frame: Vec<u8>,
}

/// The tasks of one agent not yet acknowledged, oldest first.
#[derive(Default)]
struct Outbox {
    tasks: Vec<Task>,
    made: u64,
}

impl Outbox {
    /// The next instant a task becomes ready to push on this session.
    fn next_ready(&self) -> Option<Instant> {
        self.tasks
            .iter()
            .filter(|t| !t.pushed)
            .map(|t| t.ready)
            .min()
    }

    /// Removes an acknowledged task; false for an unknown id.
    fn ack(&mut self, id: &str) -> bool {
        let before = self.tasks.len();
        self.tasks.retain(|t| t.id != id);
        self.tasks.len() != before
    }
}

/// A new session: every task is pushed again (oldest first) once ready.
fn outbox_new_session(outbox: &mut Outbox) {
    for t in &mut outbox.tasks {
        t.pushed = false;
    }
}

/// True when `line` may be a frame the outbox handles (cheap test first).
fn task_frame(line: &[u8]) -> bool {
    let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    has(b"async.bash") || has(b"task.ack")
}

/// Answers `async.bash` (a task id at once; `task.done` later) and takes
/// `task.ack`; `None` when the frame is something else.
fn task_answer(
    ctx: &Ctx,
    persona: &Persona,
    index: u64,
    outbox: &mut Outbox,
    line: &[u8],
) -> Option<Option<Vec<u8>>> {
    use basicagent_proto::{Incoming, Response, Retcode, TaskDone};
    match Incoming::classify(line) {
        Ok(Incoming::TaskAck(a)) => {
            if outbox.ack(&a.task) {
                ctx.stats.tasks_acked.fetch_add(1, Relaxed);
            }
            ctx.stats.ignored.fetch_add(1, Relaxed);
            Some(None)
        }
        Ok(Incoming::Request(r)) if r.method == "async.bash" => {
            if !persona.plugins.iter().any(|p| p == "async.bash") {
                return None;
            }
            outbox.made = outbox.made.wrapping_add(1);
            // A UUID-shaped id, unique per (agent, task) and per swarm seed.
            let seed = crate::ident::host_id(&ctx.opts.seed, index);
            let id = format!(
                "{}-{:012x}",
                seed.get(..23).unwrap_or(&seed),
                outbox.made & 0xffff_ffff_ffff
            );
            let result = Response::new(None, Retcode::SUCCESS).with_data(&serde_json::json!({
                "exitcode": 0, "stdout": "swarm\n", "stderr": "", "elapsed_ms": ctx.opts.task_time.as_millis() as u64,
            }));
            let mut frame = Vec::new();
            TaskDone::new(id.clone(), &result).write_frame(&mut frame);
            let now = Instant::now();
            outbox.tasks.push(Task {
                id: id.clone(),
                ready: now.checked_add(ctx.opts.task_time).unwrap_or(now),
                pushed: false,
                frame,
            });
            ctx.stats.tasks.fetch_add(1, Relaxed);
            let mut out = Vec::new();
            Response::new(r.id, Retcode::SUCCESS)
                .with_data(&serde_json::json!({ "task": id }))
                .write_frame(&mut out);
            Some(Some(out))
        }
        _ => None,
    }
}

/// How an established session ended.
enum End {
    /// Our shutdown.
    Stopped,
    /// The server closed, an I/O error, or the heartbeat was lost.
    Lost(String),
}

/// Why an attempt did not give a session.
struct Failed(Refusal, String);

/// The agent's backoff (protocol §1): doubles from 1 s to 60 s, "equal
/// jitter" (uniform in [step/2, step]).
struct Backoff {
    step: Duration,
    rng: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            step: Duration::from_secs(1),
            rng: seed | 1,
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.step;
        self.step = (self.step * 2).min(Duration::from_secs(60));
        let half = step / 2;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(frac)
    }
}

/// Runs agent `index` until `stop` (or, without `--retry`, until its one
/// attempt is refused or its session is lost).
pub async fn run(ctx: Arc<Ctx>, index: u64, mut stop: watch::Receiver<bool>) {
    let opts = &ctx.opts;
    let persona = Persona {
        host_id: crate::ident::host_id(&opts.seed, index),
        name: crate::ident::name(&opts.prefix, index),
        plugins: opts.plugins.clone(),
        started_unix: ctx.started_unix,
    };
    let slot = index.wrapping_sub(opts.first) as usize % opts.sources.len().max(1);
    let source = opts
        .sources
        .get(slot)
        .copied()
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let mut backoff = Backoff::new(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef);
    let mut outbox = Outbox::default();
    // When the last session was lost (for the re-home histogram).
    let mut lost_at: Option<Instant> = None;
    ctx.stats.started.fetch_add(1, Relaxed);
    // With --cert-dir, this agent's own certificate (the server binds host
    // ids to certificates); else the shared configuration.
    let own;
    let tls = match &opts.cert_dir {
        None => &ctx.tls,
        Some(dir) => match crate::certs::agent_config(&ctx.base_config, dir, &persona.host_id) {
            Ok(config) => {
                own = TlsConnector::from(config);
                &own
            }
            Err(e) => {
                ctx.refuse(Refusal::Tls, format!("{}: {e}", persona.name));
                return;
            }
        },
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => return,
            p = ctx.ramp.acquire() => p,
        };
        // A closed ramp (SIGUSR1): this agent gives up without trying.
        let Ok(permit) = permit else {
            ctx.stats.abandoned.fetch_add(1, Relaxed);
            return;
        };
        // Boxed, like `serve` below: the task itself stays small, and the
        // handshake's state (over a kilobyte) is freed once the session is up.
        let attempt = Box::pin(async {
            let _permit = permit;
            ctx.pace().await;
            establish(&ctx, tls, &persona, source).await
        });
        let outcome = tokio::select! {
            biased;
            _ = stop.changed() => return,
            o = attempt => o,
        };
        match outcome {
            Ok((stream, heartbeat)) => {
                ctx.stats.session_up();
                if let Some(lost) = lost_at.take() {
                    let us = u64::try_from(lost.elapsed().as_micros()).unwrap_or(u64::MAX);
                    ctx.stats.rehome.record(us);
                }
                outbox_new_session(&mut outbox);
                let at = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                ctx.last_up_us.fetch_max(at, Relaxed);
                if ctx.stats.up.load(Relaxed) >= opts.agents {
                    let _ = ctx
                        .stats
                        .ramp_us
                        .compare_exchange(0, at.max(1), Relaxed, Relaxed);
                }
                let end = Box::pin(serve(
                    &ctx,
                    &persona,
                    index,
                    &mut outbox,
                    stream,
                    heartbeat,
                    &mut stop,
                ))
                .await;
                ctx.stats.session_down();
                match end {
                    End::Stopped => return,
                    End::Lost(why) => {
                        ctx.stats.lost.fetch_add(1, Relaxed);
                        lost_at = Some(Instant::now());
                        log::info!("{}: session lost: {why}", persona.name);
                        if !opts.retry {
                            return;
                        }
                        // Like the agent: a lost session starts a new round at once.
                        backoff = Backoff::new(backoff.rng);
                    }
                }
            }
            Err(Failed(why, detail)) => {
                ctx.refuse(why, format!("{}: {detail}", persona.name));
                if !opts.retry {
                    return;
                }
                let wait = backoff.next();
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = sleep(wait) => {}
                }
            }
        }
    }
}

/// Connects from `source` to `to`, the port picked at connect time.
async fn connect(source: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => {
            let s = TcpSocket::new_v4()?;
            sys::bind_address_no_port(&s)?;
            s.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
            s
        }
        // An IPv6 server: no IPv4 source to bind; the kernel picks.
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What a rustls or socket error during the handshake or init means.
fn classify(e: &io::Error) -> Refusal {
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        Refusal::Tls
    } else {
        Refusal::Closed
    }
}

/// Connects (following redirects) until a session is up or refused.
async fn establish(
    ctx: &Ctx,
    tls: &TlsConnector,
    persona: &Persona,
    source: Ipv4Addr,
) -> Result<(Box<TlsStream<TcpStream>>, Duration), Failed> {
    let opts = &ctx.opts;
    let mut targets = opts.servers.clone();
    let mut redirects = 0u32;
    loop {
        let mut last = Failed(Refusal::Connect, "no address to try".into());
        let mut redirect = None;
        for &addr in &targets {
            let tcp = match timeout(opts.connect_timeout, connect(source, addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = Failed(Refusal::Connect, format!("connect {source} -> {addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = Failed(
                        Refusal::Connect,
                        format!("connect {source} -> {addr}: timed out"),
                    );
                    continue;
                }
            };
            match timeout(
                opts.handshake_timeout,
                handshake(ctx, tls, persona, tcp, addr),
            )
            .await
            {
                Err(_) => {
                    last = Failed(
                        Refusal::Timeout,
                        format!(
                            "{addr}: no TLS handshake and init reply within the handshake timeout"
                        ),
                    );
                }
                Ok(Err(f @ Failed(Refusal::InitRejected, _))) => return Err(f),
                Ok(Err(f)) => last = f,
                Ok(Ok(Step::Up(stream, hb))) => return Ok((stream, hb)),
                Ok(Ok(Step::Redirect(list))) => {
                    redirect = Some(list);
                    break;
                }
            }
        }
        let Some(list) = redirect else {
            return Err(last);
        };
        redirects += 1;
        if redirects > opts.max_redirects {
            return Err(Failed(
                Refusal::Redirect,
                format!("more than {} redirects in a row", opts.max_redirects),
            ));
        }
        ctx.stats.redirects.fetch_add(1, Relaxed);
        let named: Vec<String> = list
            .iter()
            .filter(|a| matches!(a, ServerAddr::Name { .. }))
            .map(ToString::to_string)
            .collect();
        if !named.is_empty() {
            log::info!("redirect entries by name are not resolved by the swarm: {named:?}");
        }
        targets = list
            .into_iter()
            .filter_map(|a| match a {
                ServerAddr::Ip(sa) => Some(sa),
                ServerAddr::Name { .. } => None,
            })
            .collect();
        if targets.is_empty() {
            return Err(Failed(
                Refusal::Redirect,
                format!("redirect to host names only: {named:?}"),
            ));
        }
    }
}

enum Step {
    /// Boxed: the stream is over a kilobyte, the other variant a list.
    Up(Box<TlsStream<TcpStream>>, Duration),
    Redirect(Vec<ServerAddr>),
}

/// TLS, init, and the init reply on one connection.
async fn handshake(
    ctx: &Ctx,
    tls: &TlsConnector,
    persona: &Persona,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<Step, Failed> {
    let mut stream = tls
        .connect(ctx.server_name.clone(), tcp)
        .await
        .map_err(|e| Failed(classify(&e), format!("{addr}: TLS: {e}")))?;
    let io_fail = |e: io::Error| Failed(classify(&e), format!("{addr}: during init: {e}"));
    stream
        .write_all(&persona.init_frame())
        .await
        .map_err(io_fail)?;
    stream.flush().await.map_err(io_fail)?;
    let mut decoder = FrameDecoder::new(ctx.opts.max_frame);
    let frame = loop {
        if let Some(f) = decoder.next_frame() {
            match f {
                Ok(f) => break f,
                Err(e) => return Err(Failed(Refusal::InitInvalid, format!("{addr}: {e}"))),
            }
        }
        let n = read_some(&mut stream, &mut decoder)
            .await
            .map_err(io_fail)?;
        if n == 0 {
            return Err(Failed(
                Refusal::Closed,
                format!("{addr}: the server closed the connection before replying to init"),
            ));
        }
    };
    match InitReply::parse(&frame, addr.port()) {
        Ok(InitReply::Accepted { heartbeat }) => {
            let hb = heartbeat
                .filter(|&h| h > 0)
                .map_or(ctx.opts.heartbeat, Duration::from_secs);
            Ok(Step::Up(Box::new(stream), hb))
        }
        Ok(InitReply::Redirect(list)) => {
            // Close cleanly before following, as the agent does.
            let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
            Ok(Step::Redirect(list))
        }
        Ok(InitReply::Rejected { retcode, message }) => Err(Failed(
            Refusal::InitRejected,
            format!("{addr}: init rejected ({}): {message}", retcode.0),
        )),
        Err(e) => Err(Failed(
            Refusal::InitInvalid,
            format!("{addr}: invalid init reply: {e}"),
        )),
    }
}

/// Reads what is there (at least one byte, or 0 at end of stream) into the
/// decoder, through the thread's scratch buffer.
async fn read_some(
    stream: &mut TlsStream<TcpStream>,
    decoder: &mut FrameDecoder,
) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let filled = buf.filled();
                    decoder.push(filled);
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// The session: answer requests, heartbeat, until shutdown or loss.
async fn serve(
    ctx: &Ctx,
    persona: &Persona,
    index: u64,
    outbox: &mut Outbox,
    mut stream: Box<TlsStream<TcpStream>>,
    heartbeat: Duration,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let mut decoder = FrameDecoder::new(ctx.opts.max_frame);
    let mut last_rx = Instant::now();
    let mut last_tx = last_rx;
    let mut pings = 0u64;
    let mut served = 0u64;
    let dead_after = heartbeat.saturating_mul(3);
    loop {
        let ping_at = last_rx.max(last_tx).checked_add(heartbeat);
        let dead_at = last_rx.checked_add(dead_after);
        let wake = match (ping_at, dead_at) {
            (Some(p), Some(d)) => p.min(d),
            (Some(t), None) | (None, Some(t)) => t,
            // Beyond the clock's range: never.
            (None, None) => last_rx
                .checked_add(Duration::from_secs(86_400 * 365))
                .unwrap_or(last_rx),
        };
        let task_at = outbox.next_ready();
        let wake = task_at.map_or(wake, |t| t.min(wake));
        tokio::select! {
            biased;
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
                return End::Stopped;
            }
            r = read_some(&mut stream, &mut decoder) => {
                match r {
                    Ok(0) => return End::Lost("the server closed the connection".into()),
                    Err(e) => return End::Lost(format!("read: {e}")),
                    Ok(_) => last_rx = Instant::now(),
                }
                while let Some(frame) = decoder.next_frame() {
                    let t0 = Instant::now();
                    let uptime = ctx.started.elapsed().as_secs();
                    let answer = match frame {
                        Ok(line) if task_frame(&line) => {
                            match task_answer(ctx, persona, index, outbox, &line) {
                                Some(Some(bytes)) => Answer::Reply(bytes, crate::stats::Method::SyncBash),
                                Some(None) => continue,
                                None => persona.answer(&line, uptime, served),
                            }
                        }
                        Ok(line) => persona.answer(&line, uptime, served),
                        Err(e) => persona.too_long(&e),
                    };
                    let Answer::Reply(bytes, method) = answer else {
                        ctx.stats.ignored.fetch_add(1, Relaxed);
                        continue;
                    };
                    if !ctx.opts.think.is_zero() {
                        sleep(ctx.opts.think).await;
                    }
                    if let Err(e) = write(&mut stream, &bytes).await {
                        return End::Lost(format!("write: {e}"));
                    }
                    served += 1;
                    last_tx = Instant::now();
                    let us = u64::try_from(last_tx.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
                    ctx.stats.answered(method, us);
                }
            }
            _ = sleep_until(wake.into()) => {
                let now = Instant::now();
                if task_at.is_some_and(|t| now >= t) {
                    for t in outbox.tasks.iter_mut().filter(|t| !t.pushed && t.ready <= now) {
                        if let Err(e) = write(&mut stream, &t.frame).await {
                            return End::Lost(format!("write: {e}"));
                        }
                        t.pushed = true;
                        ctx.stats.tasks_pushed.fetch_add(1, Relaxed);
                        last_tx = Instant::now();
                    }
                    continue;
                }
                if dead_at.is_some_and(|d| now >= d) {
                    return End::Lost(format!("nothing received for {} s (3 heartbeats)", dead_after.as_secs()));
                }
                pings += 1;
                let ping = format!("{{\"id\":\"hb-{pings}\",\"method\":\"ping\"}}\n");
                if let Err(e) = write(&mut stream, ping.as_bytes()).await {
                    return End::Lost(format!("write: {e}"));
                }
                ctx.stats.heartbeats.fetch_add(1, Relaxed);
                last_tx = Instant::now();
            }
        }
    }
}

async fn write(stream: &mut TlsStream<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_equal_jitter_up_to_a_minute() {
        let mut b = Backoff::new(42);
        let mut step = Duration::from_secs(1);
        for _ in 0..10 {
            let w = b.next();
            assert!(w >= step / 2 && w <= step, "{w:?} for step {step:?}");
            step = (step * 2).min(Duration::from_secs(60));
        }
    }
}
