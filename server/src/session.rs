//! One agent session as one tokio task: TLS handshake, init, then frames both ways, on one socket descriptor.
//!
//! The task owns the socket and its [`Link`] (TLS, framing and the send
//! queue, from `basicagent-link`: this file moves bytes between the
//! socket and the link with tokio's `readable`/`try_read` and
//! `writable`/`try_write`, and writes no TLS pump of its own); other
//! tasks reach it only through its bounded [`Outgoing`] queue (see
//! `registry`). Requests it sends are remembered here (request id → the
//! caller's reply channel), so answers are routed without a global lock.
//! Memory per idle session: the task's state, a ciphertext read buffer of
//! [`READ_MIN`] bytes (grown for bursts, given back when they end),
//! rustls' own state and the queue.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_link::{Link, LinkError};
use basicagent_proto::handshake::{RedirectCause, RejectCause};
use basicagent_proto::{
    answer_init, FrameError, Incoming, Init, InitContext, InitReply, Response, Retcode, TaskAck,
    Verdict,
};
use basicagent_store::{AgentRecord, TaskResult};
use rustls::ServerConnection;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout_at;

use crate::events::unix_now;
use crate::identity::{peer_identity, PeerIdentity};
use crate::registry::{AgentInfo, CallEvent, Outgoing, Registered, OUTBOX_FRAMES};
use crate::state::Shared;
use crate::storage::{now_millis, Op};

/// Ciphertext read buffer of an idle session.
const READ_MIN: usize = 1024;
/// Largest read buffer (a burst of frames); a longer line grows the frame decoder instead.
const READ_MAX: usize = 64 * 1024;
/// Seconds of silence before TCP keepalive probes start (then 6 probes 10 s apart).
const KEEPALIVE_IDLE_SECS: libc::c_int = 60;
/// Requests remembered before answered-or-abandoned ones are swept.
const PENDING_SWEEP: usize = 256;

/// How often a task result the store refused is offered to it again.
const TASK_RETRY: Duration = Duration::from_secs(2);

/// Stores `result` again every [`TASK_RETRY`] until it commits, then acks
/// it on session `conn`; gives up when that session is gone (the agent
/// sends the result again after its next init).
async fn retry_task(shared: Arc<Shared>, conn: u64, result: TaskResult) {
    loop {
        tokio::time::sleep(TASK_RETRY).await;
        if !shared.registry.has_conn(conn) {
            return;
        }
        let task = result.task.clone();
        if shared.storage.put_task(result.clone()).await.is_ok() {
            log::info!("{}: task {task} stored on retry", result.host);
            if shared.settings.auto_ack {
                let mut ack = TaskAck::new(task).to_json().into_bytes();
                ack.push(b'\n');
                shared.registry.send_conn(
                    conn,
                    Outgoing::Raw {
                        bytes: bytes::Bytes::from(ack),
                        reply: None,
                    },
                );
            }
            return;
        }
    }
}

/// Decrements the open-session count however the task ends.
struct Slot<'a>(&'a Shared, bool);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.refusing.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.0.active.fetch_sub(1, Ordering::Relaxed);
            self.0.metrics.sessions.dec();
        }
    }
}

/// Serves one accepted socket to the end. `over_limit`: the session limit
/// is reached; the agent gets a clean refusal (or a redirect) after init.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, over_limit: bool) {
    let _slot = Slot(&shared, over_limit);
    let local = tcp.local_addr().unwrap_or(shared.settings.listen);
    let _ = tcp.set_nodelay(true);
    if let Err(e) = keepalive(&tcp) {
        log::debug!("{peer}: TCP keepalive: {e}");
    }
    let deadline = tokio::time::Instant::now() + shared.settings.handshake_timeout;
    let conn = match ServerConnection::new(shared.tls.clone()) {
        Ok(conn) => conn,
        Err(e) => return handshake_failed(&shared, peer, local, &format!("TLS: {e}")),
    };
    let mut s = Session {
        shared: shared.clone(),
        id: 0,
        peer,
        local,
        tcp,
        link: Link::new(conn, shared.settings.max_frame),
        ready: VecDeque::new(),
        buf: vec![0; READ_MIN],
        out: Vec::new(),
        host: None,
        identity: None,
        pending: HashMap::new(),
        null_waiters: Vec::new(),
        closing: None,
        hold: None,
        since: 0,
    };
    match timeout_at(deadline, s.handshake()).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return handshake_failed(&shared, peer, local, &reason),
        Err(_) => return handshake_failed(&shared, peer, local, "TLS handshake timed out"),
    }
    log::debug!("{peer}: TLS handshake done");
    s.identity = s
        .link
        .conn()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(peer_identity);
    let (tx, rx) = mpsc::channel(OUTBOX_FRAMES);
    if !over_limit {
        s.id = shared.registry.add_conn(tx);
    }
    let reason = match s.await_init(deadline, over_limit).await {
        Ok(()) => s.serve(rx).await,
        Err(reason) => reason,
    };
    s.finish(&reason).await;
}

/// TCP keepalive: a peer that vanished without a FIN (power loss, a
/// partition) is found within about two minutes, so its session does not
/// hold a slot of the session limit for ever.
fn keepalive(tcp: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6),
    ] {
        let value: libc::c_int = value;
        // SAFETY: setsockopt(2) on a socket this task owns, with a pointer to
        // a live c_int and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn handshake_failed(shared: &Shared, peer: SocketAddr, local: SocketAddr, reason: &str) {
    log::warn!("{peer}: TLS handshake failed: {reason}");
    shared.metrics.refuse("tls");
    shared.events.emit(
        "tls_handshake_failed",
        json!({"peer": peer, "listen": local, "reason": reason}),
    );
}

struct Session {
    shared: Arc<Shared>,
    /// Registry id (0 for an over-limit session, which is never registered).
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    tcp: TcpStream,
    /// TLS, the frame decoder and the send queue.
    link: Link<ServerConnection>,
    /// Frames the link decoded, not yet handled (at most one read's worth).
    ready: VecDeque<Result<Vec<u8>, FrameError>>,
    /// Ciphertext read from the socket.
    buf: Vec<u8>,
    /// Frames being gathered for one write, queued on the link as one.
    out: Vec<u8>,
    host: Option<String>,
    identity: Option<PeerIdentity>,
    /// Our request id → (caller, caller's tag).
    pending: HashMap<u64, (mpsc::UnboundedSender<CallEvent>, usize)>,
    /// Callers of raw sends, waiting for `"id": null` answers.
    null_waiters: Vec<mpsc::UnboundedSender<CallEvent>>,
    closing: Option<String>,
    /// Cluster mode: the task answering requests routed to this host.
    hold: Option<tokio::task::JoinHandle<()>>,
    /// When init was accepted (Unix ms): the session's `connected_at`.
    since: i64,
}

impl Session {
    /// Drives the TLS handshake to its end (the reason as
    /// `handshake_failed` records it on failure). Frames that came with
    /// the client's last flight wait in `ready`.
    async fn handshake(&mut self) -> Result<(), String> {
        while self.link.is_handshaking() {
            self.flush().await.map_err(|e| format!("TLS: {e}"))?;
            if !self.link.is_handshaking() {
                break;
            }
            match self.read_some().await {
                Ok(Got::Data) => {}
                Ok(Got::Eof | Got::Closed) => return Err("TLS: tls handshake eof".into()),
                Ok(Got::Nothing) => {}
                Err(e) => return Err(e.reason("TLS")),
            }
        }
        // TLS 1.3 session tickets follow the handshake.
        self.flush().await.map_err(|e| format!("TLS: {e}"))
    }

    /// Waits until the socket has something and reads it (see
    /// [`Session::read_ready`]).
    async fn read_some(&mut self) -> Result<Got, ReadError> {
        loop {
            std::future::poll_fn(|cx| self.tcp.poll_read_ready(cx))
                .await
                .map_err(ReadError::Io)?;
            match self.read_ready()? {
                Got::Nothing => continue,
                got => return Ok(got),
            }
        }
    }

    /// Non-blocking reads into the buffer, handed to the link; the frames
    /// it decodes go to `ready`. A read that fills the buffer is followed
    /// at once by another into a buffer twice the size (up to
    /// [`READ_MAX`] bytes per call), as tokio-rustls read a whole record.
    fn read_ready(&mut self) -> Result<Got, ReadError> {
        let mut got = Got::Nothing;
        let mut total = 0usize;
        loop {
            let n = match self.tcp.try_read(&mut self.buf) {
                // The end after data: reported by the next call.
                Ok(0) if matches!(got, Got::Nothing) => return Ok(Got::Eof),
                Ok(0) => return Ok(got),
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    return Ok(got)
                }
                Err(e) => return Err(ReadError::Io(e)),
            };
            let mut off = 0;
            while off < n {
                let taken = match self.link.handle_ciphertext(&self.buf[off..n]) {
                    Ok(taken) => taken,
                    Err(e) => {
                        // Tell the peer why (an alert), without waiting.
                        let _ = self.link.poll_transmit(&mut TryWrite(&self.tcp));
                        return Err(ReadError::Link(e));
                    }
                };
                off += taken;
                while let Some(frame) = self.link.next_frame() {
                    self.ready.push_back(frame);
                }
                if taken == 0 {
                    // close_notify: what follows it is not read.
                    break;
                }
            }
            // A full read: more is waiting, read bigger (now). A read that
            // did not fill the buffer drained the socket: back to idle size.
            let len = self.buf.len();
            let full = n == len;
            if full && len < READ_MAX {
                self.buf = vec![0; len.saturating_mul(2).min(READ_MAX)];
            } else if !full && len > READ_MIN {
                self.buf = vec![0; READ_MIN];
            }
            if self.link.peer_closed() {
                return Ok(Got::Closed);
            }
            got = Got::Data;
            total = total.saturating_add(n);
            // At most READ_MAX bytes per call: the frames read are served
            // before more is read.
            if !full || total >= READ_MAX {
                return Ok(got);
            }
        }
    }

    /// Why the session ends at the end of the agent's byte stream.
    fn eof_reason(&mut self) -> String {
        match self.link.handle_eof() {
            Ok(()) => "closed by peer".into(),
            Err(e) => ReadError::Link(e).reason("read"),
        }
    }

    /// Until init is handled (accepted: `Ok`), or the session must end.
    async fn await_init(
        &mut self,
        deadline: tokio::time::Instant,
        over_limit: bool,
    ) -> Result<(), String> {
        loop {
            while let Some(item) = self.ready.pop_front() {
                self.handle_init(item.as_deref(), over_limit);
                self.flush().await?;
                if let Some(reason) = &self.closing {
                    return Err(reason.clone());
                }
                if self.host.is_some() {
                    return Ok(());
                }
            }
            match timeout_at(deadline, self.read_some()).await {
                Ok(Ok(Got::Eof)) => return Err(self.eof_reason()),
                Ok(Ok(Got::Closed)) if self.ready.is_empty() => return Err("closed by peer".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.reason("read")),
                Err(_) => {
                    return Err(format!(
                        "no init within {} s",
                        self.shared.settings.handshake_timeout.as_secs()
                    ))
                }
            }
        }
    }

    /// The ready loop: frames from the agent, frames for the agent.
    async fn serve(&mut self, mut rx: mpsc::Receiver<Outgoing>) -> String {
        if let (Some(cm), Some(host)) = (&self.shared.cluster, &self.host) {
            match cm.cluster.hold(host).await {
                Ok(hold) => {
                    self.hold = Some(tokio::spawn(crate::node::serve_hold(
                        self.shared.clone(),
                        hold,
                    )));
                }
                // Local calls still reach it; other nodes see it offline
                // until it reconnects.
                Err(e) => log::error!("{host}: cannot hold its cluster subject: {e}"),
            }
        }
        // Frames that came with init.
        if let Err(e) = self.handle_frames().await {
            return e;
        }
        loop {
            if let Some(reason) = &self.closing {
                return reason.clone();
            }
            // Unbiased: neither a stream of requests nor a chatty agent starves the other side.
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return "server shutdown".into() };
                    self.outgoing(msg);
                    // Take what else is queued, then write it all at once.
                    while self.out.len() < READ_MAX {
                        match rx.try_recv() {
                            Ok(msg) => self.outgoing(msg),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                }
                // poll_read_ready: the socket's one reader slot, no
                // waiter list entry made and dropped per turn.
                readable = std::future::poll_fn(|cx| self.tcp.poll_read_ready(cx)) => {
                    if let Err(e) = readable {
                        return format!("read: {e}");
                    }
                    let closed = match self.read_ready() {
                        Ok(Got::Nothing) => continue,
                        Ok(Got::Data) => false,
                        Ok(Got::Closed) => true,
                        Ok(Got::Eof) => return self.eof_reason(),
                        Err(e) => return e.reason("read"),
                    };
                    if let Err(e) = self.handle_frames().await {
                        return e;
                    }
                    if closed {
                        return "closed by peer".into();
                    }
                }
            }
        }
    }

    fn outgoing(&mut self, msg: Outgoing) {
        match msg {
            Outgoing::Request {
                id,
                frame,
                reply,
                tag,
            } => {
                if self.pending.len() >= PENDING_SWEEP && self.pending.len().is_power_of_two() {
                    self.pending.retain(|_, (tx, _)| !tx.is_closed());
                }
                self.pending.insert(id, (reply, tag));
                self.out.extend_from_slice(&frame);
            }
            Outgoing::Raw { bytes, reply } => {
                if let Some(reply) = reply {
                    self.null_waiters.retain(|w| !w.is_closed());
                    self.null_waiters.push(reply);
                }
                self.out.extend_from_slice(&bytes);
            }
            Outgoing::Close(reason) => self.close(&reason),
        }
    }

    /// Queues what was gathered on the link and writes until the link
    /// has nothing left to send (waiting for the socket as needed).
    async fn flush(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            // The buffer goes to the link and is freed once sent.
            let out = std::mem::take(&mut self.out);
            self.link
                .queue_frame(out)
                .map_err(|e| format!("write: {e}"))?;
        }
        loop {
            let t = match self.link.poll_transmit(&mut TryWrite(&self.tcp)) {
                Ok(t) => t,
                Err(LinkError::Write(e)) => return Err(format!("write: {e}")),
                Err(e) => return Err(format!("write: {e}")),
            };
            if t.blocked {
                std::future::poll_fn(|cx| self.tcp.poll_write_ready(cx))
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                continue;
            }
            let moved = t.plaintext > 0 || t.ciphertext > 0;
            if !self.link.wants_write() || (!t.more && !moved) {
                return Ok(());
            }
        }
    }

    async fn handle_frames(&mut self) -> Result<(), String> {
        while let Some(item) = self.ready.pop_front() {
            if self.closing.is_some() {
                continue;
            }
            match item {
                Ok(frame) => self.handle_ready(&frame).await,
                Err(e) => self.invalid_frame(None, &e.to_string()),
            }
        }
        self.flush().await
    }

    fn line(&mut self, json: &str) {
        self.out.extend_from_slice(json.as_bytes());
        self.out.push(b'\n');
    }

    fn close(&mut self, reason: &str) {
        if self.closing.is_none() {
            self.closing = Some(reason.to_owned());
        }
    }

    /// Answers the first frame ([`answer_init`] decides) and does what
    /// the answer means here: log, metrics, events, and the reply.
    fn handle_init(&mut self, frame: Result<&[u8], &FrameError>, over_limit: bool) {
        let shared = self.shared.clone();
        let own = [shared.settings.listen, self.local];
        let verdict = {
            let bound = self.identity.as_ref().and_then(|i| i.host.as_deref());
            let ctx = InitContext {
                policy: &shared.settings.policy,
                own: &own,
                client_host: shared.mtls.then_some(bound),
                full: over_limit.then_some(shared.limit),
                heartbeat: shared.settings.heartbeat,
            };
            answer_init(frame, &ctx)
        };
        let (peer, listen) = (self.peer, self.local);
        match verdict {
            Verdict::Reject {
                cause: RejectCause::InvalidInit(ref error),
                ..
            } => {
                log::warn!("{peer}: invalid init: {error}");
                shared.metrics.refuse("invalid_init");
                shared.events.emit(
                    "init_invalid",
                    json!({"peer": peer, "listen": listen, "error": error}),
                );
                self.reply(&verdict);
                self.close("invalid init");
            }
            Verdict::Reject {
                ref host,
                ref message,
                cause: RejectCause::Identity,
                ..
            } => self.reject(
                &verdict,
                host.as_deref().unwrap_or_default(),
                message,
                "identity",
                "identity_mismatch",
            ),
            Verdict::Reject {
                ref host,
                ref message,
                cause: RejectCause::Policy,
                ..
            } => self.reject(
                &verdict,
                host.as_deref().unwrap_or_default(),
                message,
                "policy",
                "rejected",
            ),
            Verdict::Reject {
                ref host,
                cause: RejectCause::Full,
                ..
            } => self.refuse_full(&verdict, host.as_deref().unwrap_or_default(), None),
            Verdict::Redirect {
                ref host,
                ref list,
                cause: RedirectCause::Full,
            } => self.refuse_full(&verdict, host, Some(list)),
            Verdict::Redirect {
                ref host,
                ref list,
                cause: RedirectCause::Policy,
            } => {
                log::info!("{peer}: host {host} redirected to {list}");
                shared.metrics.refuse("policy");
                shared.events.emit(
                    "redirect",
                    json!({"host": host, "peer": peer, "listen": listen, "server": list}),
                );
                self.reply(&verdict);
                self.close("redirected");
            }
            Verdict::Accept { init, .. } => {
                let host = init.hostname.clone();
                // Cluster mode: the host's owner over the live, non-draining
                // nodes holds it; one hop, the agent's redirect limit is the
                // loop guard.
                let owner = shared
                    .cluster
                    .as_ref()
                    .and_then(|c| c.cluster.redirect_for(&host));
                match owner {
                    Some(peer_addr) => {
                        log::info!("{peer}: host {host} redirected to its owner {peer_addr}");
                        shared.metrics.refuse("owner");
                        shared.events.emit(
                            "redirect",
                            json!({"host": host, "peer": peer, "listen": listen,
                                   "server": peer_addr, "owner": true}),
                        );
                        self.reply(&Verdict::redirect(host, peer_addr));
                        self.close("redirected to owner");
                    }
                    None => self.accept(*init),
                }
            }
        }
    }

    /// Queues the reply frame of `verdict`.
    fn reply(&mut self, verdict: &Verdict) {
        self.out.extend_from_slice(&verdict.reply());
    }

    fn reject(&mut self, verdict: &Verdict, host: &str, message: &str, reason: &str, event: &str) {
        log::warn!("{}: host {host} refused ({reason}): {message}", self.peer);
        self.shared.metrics.refuse(reason);
        self.shared.events.emit(
            event,
            json!({"host": host, "peer": self.peer, "listen": self.local, "message": message}),
        );
        self.reply(verdict);
        self.close(reason);
    }

    /// At the session limit: a redirect to the configured peers, else 3026 Busy.
    fn refuse_full(&mut self, verdict: &Verdict, host: &str, peers: Option<&str>) {
        let limit = self.shared.limit;
        self.shared.metrics.refuse("limit");
        log::warn!(
            "{}: host {host} refused: session limit {limit} reached",
            self.peer
        );
        self.shared.events.emit(
            "refused",
            json!({"host": host, "peer": self.peer, "listen": self.local,
                   "limit": limit, "redirect": peers}),
        );
        self.reply(verdict);
        self.close("session limit");
    }

    fn accept(&mut self, init: Init) {
        self.since = now_millis();
        let shared = self.shared.clone();
        let (peer, listen) = (self.peer, self.local);
        let host = init.hostname.clone();
        let info = AgentInfo {
            host: host.clone(),
            name: init.name.clone(),
            version: init.version.clone(),
            plugins: init.plugins.clone(),
            peer,
            listen,
            connected_at: unix_now(),
            node: shared.cluster.as_ref().map(|c| c.name.clone()),
        };
        let cert = if shared.mtls {
            self.identity.as_ref().map(|i| i.fingerprint)
        } else {
            None
        };
        match shared.registry.register_agent(self.id, info, cert) {
            Registered::HeldByOtherCert => {
                let message =
                    format!("host id {host:?} is held by a session with another certificate");
                let verdict = Verdict::reject(
                    host.clone(),
                    Retcode::PERMISSION_DENIED,
                    message.clone(),
                    RejectCause::Identity,
                );
                return self.reject(&verdict, &host, &message, "held", "identity_mismatch");
            }
            Registered::Replaced(old) => {
                shared.events.emit(
                    "replaced",
                    json!({"host": host, "peer": peer, "old_conn": old}),
                );
            }
            Registered::New => {
                shared.metrics.agents.inc();
            }
        }
        log::info!(
            "{peer}: agent {host} ({}) up with {} plugins",
            init.name,
            init.plugins.len()
        );
        shared.events.emit(
            "init",
            json!({"host": host, "name": init.name, "version": init.version,
                   "plugins": init.plugins, "peer": peer, "listen": listen}),
        );
        shared.storage.queue(Op::Seen(AgentRecord {
            host: host.clone(),
            name: init.name,
            addr: peer.to_string(),
            version: init.version,
            plugins: init.plugins,
            node: shared.cluster.as_ref().map(|c| c.name.clone()),
            connected_at: self.since,
        }));
        self.line(
            &InitReply::Accepted {
                heartbeat: shared.settings.heartbeat,
            }
            .to_json(),
        );
        self.host = Some(host);
    }

    async fn handle_ready(&mut self, frame: &[u8]) {
        let host = self.host.clone().unwrap_or_default();
        match Incoming::classify(frame) {
            Ok(Incoming::Response(response)) => self.deliver(&host, response),
            Ok(Incoming::TaskDone(done)) => {
                log::info!(
                    "{host}: task {} done: {} {}",
                    done.task,
                    done.retcode.0,
                    done.message
                );
                self.shared.events.emit(
                    "task_done",
                    json!({"host": host, "task": done.task, "resp": done.retcode.resp(),
                           "retcode": done.retcode.0, "message": done.message,
                           "schedule": done.run.as_ref().map(|r| &r.schedule),
                           "scheduled_at": done.run.as_ref().map(|r| r.scheduled_at),
                           "run": done.run.as_ref().map(|r| r.run)}),
                );
                let result = TaskResult {
                    host: host.clone(),
                    task: done.task.clone(),
                    received_at: now_millis(),
                    retcode: i64::from(done.retcode.0),
                    message: done.message.clone(),
                    frame: String::from_utf8_lossy(frame).into_owned(),
                    schedule: done.run.as_ref().map(|r| r.schedule.clone()),
                };
                // The ack promises the result is kept: only after the commit.
                match self.shared.storage.put_task(result.clone()).await {
                    Ok(()) => {
                        if self.shared.settings.auto_ack {
                            self.line(&TaskAck::new(done.task).to_json());
                        }
                    }
                    Err(e) => {
                        log::error!(
                            "{host}: task {} not stored, not acknowledged yet (retried every {} s \
                             while the session lasts; the agent sends it again after a reconnect): {e}",
                            done.task,
                            TASK_RETRY.as_secs()
                        );
                        // The agent pushes un-acked results only after an
                        // init: without a retry here a result that met a
                        // store outage would wait for the next reconnect.
                        tokio::spawn(retry_task(self.shared.clone(), self.id, result));
                    }
                }
            }
            Ok(Incoming::TaskAck(ack)) => {
                log::warn!("{host}: unexpected task.ack for {} from an agent", ack.task)
            }
            Ok(Incoming::Request(request)) => {
                let answer = if request.method == "ping" {
                    Response::new(request.id, Retcode::SUCCESS)
                } else {
                    let msg = format!("the server serves only ping, not {:?}", request.method);
                    Response::failed(request.id, Retcode::UNKNOWN_METHOD, msg)
                };
                self.line(&answer.to_json());
            }
            Err(e) => {
                let id = e.id;
                self.invalid_frame(id, &e.error.to_string());
            }
        }
    }

    fn deliver(&mut self, host: &str, response: Response) {
        let raw_id = response.id.as_deref().map(|r| r.get().to_owned());
        if self.shared.events.enabled() {
            let id_value: Option<serde_json::Value> =
                raw_id.as_deref().and_then(|t| serde_json::from_str(t).ok());
            self.shared.events.emit(
                "response",
                json!({"host": host, "id": id_value, "resp": response.retcode.resp(),
                       "retcode": response.retcode.0, "message": response.message}),
            );
        }
        let Some(raw) = raw_id else {
            self.null_waiters.retain(|w| {
                w.send(CallEvent::Answered {
                    tag: 0,
                    response: response.clone(),
                })
                .is_ok()
            });
            return;
        };
        let waiter = raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|id| self.pending.remove(&id));
        if self.pending.is_empty() && self.pending.capacity() > 16 {
            // Give back what a burst of requests grew.
            self.pending = HashMap::new();
        }
        match waiter {
            Some((tx, tag)) => {
                let _ = tx.send(CallEvent::Answered { tag, response });
            }
            None => log::info!("{host}: response to unknown or expired id {raw}"),
        }
    }

    fn invalid_frame(&mut self, id: Option<Box<serde_json::value::RawValue>>, error: &str) {
        let host = self.host.clone().unwrap_or_default();
        log::warn!("{host} ({}): invalid frame: {error}", self.peer);
        self.shared.events.emit(
            "invalid_frame",
            json!({"host": host, "peer": self.peer, "error": error}),
        );
        self.line(&Response::failed(id, Retcode::INVALID_REQUEST, error).to_json());
    }

    /// After the loop: flush, close (close_notify, then read what the peer
    /// still sends for at most a second so our last frame is not destroyed
    /// by a reset), forget the session, tell its callers, record why.
    async fn finish(&mut self, reason: &str) {
        let _ = self.flush().await;
        if self.closing.is_some() {
            self.link.send_close_notify();
            let _ = self.flush().await;
            let _ = self.tcp.shutdown().await;
            let until = tokio::time::Instant::from_std(Instant::now() + Duration::from_secs(1));
            let mut scratch = [0u8; 512];
            // What the peer still sends is read and dropped until its end.
            while let Ok(Ok(())) = tokio::time::timeout_at(until, self.tcp.readable()).await {
                match self.tcp.try_read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
        if let Some(hold) = self.hold.take() {
            hold.abort();
        }
        for (_, (tx, tag)) in self.pending.drain() {
            let _ = tx.send(CallEvent::Gone { tag });
        }
        let shared = &self.shared;
        if self.id != 0 {
            if let Some(host) = shared.registry.remove_conn(self.id, self.host.as_deref()) {
                shared.metrics.agents.dec();
                // Cluster mode: the host may have a newer session on another
                // node already (this one had not noticed the loss); "gone as
                // of this session's start" never clears that newer one. The
                // price: last_seen stays at the connect time.
                let at = if shared.cluster.is_some() {
                    self.since
                } else {
                    now_millis()
                };
                shared.storage.queue(Op::Gone { host, at });
            }
        }
        log::info!(
            "{}: {} disconnected: {reason}",
            self.peer,
            self.host.as_deref().unwrap_or("(no init)")
        );
        shared.events.emit(
            "disconnect",
            json!({"host": self.host, "peer": self.peer, "listen": self.local, "reason": reason}),
        );
    }
}

/// What one read from the socket gave.
enum Got {
    /// Nothing yet (`WouldBlock`).
    Nothing,
    /// Ciphertext, handed to the link.
    Data,
    /// The agent's `close_notify` (after any frames before it).
    Closed,
    /// The end of the byte stream.
    Eof,
}

/// A read that failed: the socket's error or the link's.
enum ReadError {
    Io(io::Error),
    Link(LinkError),
}

impl ReadError {
    /// `"{prefix}: {what}"`, in the words the session used before the
    /// link (rustls' message for a TLS error).
    fn reason(&self, prefix: &str) -> String {
        match self {
            ReadError::Io(e) => format!("{prefix}: {e}"),
            ReadError::Link(LinkError::Tls(e)) => format!("{prefix}: {e}"),
            ReadError::Link(LinkError::Ciphertext(e) | LinkError::Plaintext(e)) => {
                format!("{prefix}: {e}")
            }
            ReadError::Link(e) => format!("{prefix}: {e}"),
        }
    }
}

/// The socket as an [`io::Write`] that never waits: `try_write`, so a
/// full socket is `WouldBlock` (the link reports it as blocked).
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
