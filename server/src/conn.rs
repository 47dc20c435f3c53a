//! One agent connection on its own thread: TLS handshake, init, then frames both ways.
//!
//! The thread runs a small mio loop over its socket and a `Waker`. Only
//! this thread touches the rustls connection; other threads (admin calls,
//! a newer connection of the same host, shutdown) queue frames or a close
//! request in the connection's [`Outbox`] and wake it. Each turn reads
//! until `WouldBlock`, handles every complete frame, writes the outbox,
//! flushes TLS until `WouldBlock`, and derives the interest from
//! `wants_write`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use basicagent_proto::{
    redirect_json, FrameDecoder, FrameError, Incoming, Init, InitReply, Response, Retcode, TaskAck,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConnection;
use serde_json::json;

use crate::events::unix_now;
use crate::policy::Decision;
use crate::registry::{AgentInfo, Outbox};
use crate::serve::Shared;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Handshake,
    AwaitInit,
    Ready { host: String },
}

/// Starts the thread serving one accepted socket.
pub fn spawn(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let local = sock.local_addr().unwrap_or(shared.settings.listen);
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    let mut tls = ServerConnection::new(shared.tls.clone()).map_err(io::Error::other)?;
    // The admin side may queue frames up to --max-frame (and tests send
    // oversized ones on purpose): let rustls buffer them whole.
    tls.set_buffer_limit(None);
    std::thread::Builder::new()
        .name(format!("agent {peer}"))
        .spawn(move || {
            let outbox = Arc::new(Outbox::new(waker));
            let id = shared.registry.add_conn(outbox.clone());
            let deadline = Instant::now() + shared.settings.handshake_timeout;
            let mut conn = Connection {
                id,
                sock,
                tls,
                poll,
                outbox,
                peer,
                local,
                decoder: FrameDecoder::new(shared.settings.max_frame),
                phase: Phase::Handshake,
                closing: None,
                deadline,
                shared,
            };
            let reason = conn.run();
            conn.finish(&reason);
        })?;
    Ok(())
}

struct Connection {
    id: u64,
    sock: TcpStream,
    tls: ServerConnection,
    poll: Poll,
    outbox: Arc<Outbox>,
    peer: SocketAddr,
    local: SocketAddr,
    decoder: FrameDecoder,
    phase: Phase,
    /// Set when we decided to close: flush, then stop.
    closing: Option<String>,
    /// Handshake and init must be done by then.
    deadline: Instant,
    shared: Arc<Shared>,
}

impl Connection {
    /// The loop; returns why the connection ended.
    fn run(&mut self) -> String {
        let mut events = Events::with_capacity(8);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut self.sock, SOCKET, Interest::READABLE)
        {
            return format!("register: {e}");
        }
        loop {
            if let Err(reason) = self.turn() {
                return reason;
            }
            if let Some(reason) = &self.closing {
                if !self.tls.wants_write() {
                    return reason.clone();
                }
            }
            let interest = if self.tls.wants_write() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut self.sock, SOCKET, interest)
            {
                return format!("reregister: {e}");
            }
            let now = Instant::now();
            let timeout = match self.phase {
                Phase::Ready { .. } => None,
                Phase::Handshake if now >= self.deadline => {
                    return "TLS handshake timed out".into()
                }
                Phase::AwaitInit if now >= self.deadline => {
                    return format!(
                        "no init within {} s",
                        self.shared.settings.handshake_timeout.as_secs()
                    );
                }
                _ => Some(self.deadline - now),
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return format!("poll: {e}"),
            }
        }
    }

    /// One pass: read, handle frames, queue the outbox, write.
    fn turn(&mut self) -> Result<(), String> {
        self.read_socket()?;
        let (frames, close) = self.outbox.take();
        for frame in frames {
            self.send(&frame);
        }
        if let Some(reason) = close {
            self.close(&reason);
        }
        self.write_socket()
    }

    fn read_socket(&mut self) -> Result<(), String> {
        loop {
            let read = match self.tls.read_tls(&mut self.sock) {
                Ok(n) => Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Send our alert, if any, before closing.
                    let _ = self.write_socket();
                    return Err(format!("TLS: {e}"));
                }
            };
            let pending = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            if self.phase == Phase::Handshake && !self.tls.is_handshaking() {
                log::debug!("{}: TLS handshake done", self.peer);
                self.phase = Phase::AwaitInit;
            }
            if pending > 0 {
                let mut buf = vec![0u8; pending];
                if let Err(e) = self.tls.reader().read_exact(&mut buf) {
                    return Err(format!("read plaintext: {e}"));
                }
                self.decoder.push(&buf);
                self.handle_frames();
            }
            match read {
                None => return Ok(()),
                Some(0) => return Err("closed by peer".into()),
                Some(_) if peer_closed => return Err("closed by peer (close_notify)".into()),
                Some(_) => {}
            }
        }
    }

    fn write_socket(&mut self) -> Result<(), String> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Queues one frame (with its `\n`) for TLS.
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.tls.writer().write_all(frame) {
            log::warn!("{}: cannot queue frame: {e}", self.peer);
        }
    }

    fn send_line(&mut self, json: &str) {
        let mut frame = Vec::with_capacity(json.len() + 1);
        frame.extend_from_slice(json.as_bytes());
        frame.push(b'\n');
        self.send(&frame);
    }

    /// Closes cleanly once what is queued is written.
    fn close(&mut self, reason: &str) {
        if self.closing.is_none() {
            self.closing = Some(reason.to_owned());
            self.tls.send_close_notify();
        }
    }

    fn host(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready { host } => Some(host),
            _ => None,
        }
    }

    fn handle_frames(&mut self) {
        while let Some(item) = self.decoder.next_frame() {
            if self.closing.is_some() {
                continue;
            }
            match (&self.phase, item) {
                (Phase::Ready { .. }, Ok(frame)) => self.handle_ready(&frame),
                (Phase::Ready { .. }, Err(e)) => self.invalid_frame(None, &e.to_string()),
                (_, Ok(frame)) => self.handle_init(&frame),
                (_, Err(FrameError::TooLong { limit })) => {
                    self.refuse_init(&format!("init frame longer than {limit} bytes"));
                }
            }
        }
    }

    fn refuse_init(&mut self, error: &str) {
        log::warn!("{}: invalid init: {error}", self.peer);
        let s = &self.shared;
        s.events.emit(
            "init_invalid",
            json!({"peer": self.peer, "listen": self.local, "error": error}),
        );
        self.send_line(
            &InitReply::rejected(Retcode::INVALID_REQUEST, format!("expected init: {error}"))
                .to_json(),
        );
        self.close("invalid init");
    }

    fn handle_init(&mut self, frame: &[u8]) {
        let init = match Init::parse(frame) {
            Ok(init) => init,
            Err(e) => return self.refuse_init(&e.to_string()),
        };
        let host = init.hostname.clone();
        let own = [self.shared.settings.listen, self.local];
        let decision = self.shared.settings.policy.decide(&host, &own);
        let (peer, listen) = (self.peer, self.local);
        match decision {
            Decision::Redirect(list) => {
                log::info!("{peer}: host {host} redirected to {list}");
                self.shared.events.emit(
                    "redirect",
                    json!({"host": host, "peer": peer, "listen": listen, "server": list}),
                );
                self.send_line(&redirect_json(&list));
                self.close("redirected");
            }
            Decision::Reject(message) => {
                log::info!("{peer}: host {host} rejected: {message}");
                self.shared.events.emit(
                    "rejected",
                    json!({"host": host, "peer": peer, "listen": listen, "message": message}),
                );
                self.send_line(&InitReply::rejected(Retcode::PERMISSION_DENIED, message).to_json());
                self.close("rejected");
            }
            Decision::Accept => {
                let info = AgentInfo {
                    host: host.clone(),
                    name: init.name.clone(),
                    version: init.version.clone(),
                    plugins: init.plugins.clone(),
                    peer,
                    listen,
                    connected_at: unix_now(),
                };
                log::info!(
                    "{peer}: agent {host} ({}) up with {} plugins",
                    init.name,
                    init.plugins.len()
                );
                self.shared.events.emit(
                    "init",
                    json!({"host": host, "name": init.name, "version": init.version,
                           "plugins": init.plugins, "peer": peer, "listen": listen}),
                );
                self.send_line(
                    &InitReply::Accepted {
                        heartbeat: self.shared.settings.heartbeat,
                    }
                    .to_json(),
                );
                if let Some(old) = self.shared.registry.register_agent(self.id, info) {
                    self.shared.events.emit(
                        "replaced",
                        json!({"host": host, "peer": peer, "old_conn": old}),
                    );
                }
                self.phase = Phase::Ready { host };
            }
        }
    }

    fn handle_ready(&mut self, frame: &[u8]) {
        let host = self.host().unwrap_or_default().to_owned();
        match Incoming::classify(frame) {
            Ok(Incoming::Response(response)) => {
                let id = response.id.as_deref().map(|r| r.get().to_owned());
                let id_value: Option<serde_json::Value> =
                    id.as_deref().and_then(|t| serde_json::from_str(t).ok());
                self.shared.events.emit(
                    "response",
                    json!({"host": host, "id": id_value, "resp": response.retcode.resp(),
                           "retcode": response.retcode.0, "message": response.message}),
                );
                let null = id.is_none();
                if !self.shared.registry.deliver(self.id, response) && !null {
                    log::info!(
                        "{}: response to unknown or expired id {}",
                        host,
                        id.unwrap_or_default()
                    );
                }
            }
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
                let ack = TaskAck::new(done.task.clone());
                self.shared.registry.record_task(&host, done, unix_now());
                if self.shared.settings.auto_ack {
                    self.send_line(&ack.to_json());
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
                self.send_line(&answer.to_json());
            }
            Err(e) => {
                let id = e.id;
                self.invalid_frame(id, &e.error.to_string());
            }
        }
    }

    fn invalid_frame(&mut self, id: Option<Box<serde_json::value::RawValue>>, error: &str) {
        let host = self.host().unwrap_or_default().to_owned();
        log::warn!("{host} ({}): invalid frame: {error}", self.peer);
        self.shared.events.emit(
            "invalid_frame",
            json!({"host": host, "peer": self.peer, "error": error}),
        );
        self.send_line(&Response::failed(id, Retcode::INVALID_REQUEST, error).to_json());
    }

    /// After we closed on purpose (redirect, rejection, replacement,
    /// shutdown): half-close and discard what the peer still sends, for at
    /// most a second, so unread input does not make the kernel reset the
    /// connection and destroy our last frame before the peer read it.
    fn drain_until_peer_closes(&mut self) {
        if self.sock.shutdown(std::net::Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let mut events = Events::with_capacity(4);
        let mut scratch = [0u8; 4096];
        if self
            .poll
            .registry()
            .reregister(&mut self.sock, SOCKET, Interest::READABLE)
            .is_err()
        {
            return;
        }
        loop {
            match self.sock.read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(deadline - now)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return;
                }
            }
        }
    }

    /// After the loop: flush what can be, close the socket, forget the connection, record why.
    fn finish(&mut self, reason: &str) {
        let _ = self.write_socket();
        if self.closing.is_some() {
            self.drain_until_peer_closes();
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.shared.registry.remove_conn(self.id);
        let (peer, listen) = (self.peer, self.local);
        if self.phase == Phase::Handshake {
            log::warn!("{peer}: TLS handshake failed: {reason}");
            self.shared.events.emit(
                "tls_handshake_failed",
                json!({"peer": peer, "listen": listen, "reason": reason}),
            );
        } else {
            log::info!(
                "{peer}: {} disconnected: {reason}",
                self.host().unwrap_or("(no init)")
            );
            self.shared.events.emit(
                "disconnect",
                json!({"host": self.host(), "peer": peer, "listen": listen, "reason": reason}),
            );
        }
    }
}
