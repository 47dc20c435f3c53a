//! A tiny control server for the daemon's tests: real TLS (rustls, the
//! harness's certificates) on loopback, one connection at a time, the
//! init reply given by the test (a `heartbeat` the real server would
//! refuse), and a connection the test reads and writes itself, or stops
//! reading, at will.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustls::{ServerConnection, StreamOwned};
use serde_json::Value;

use crate::pki::Pki;

pub struct MiniServer {
    pub addr: SocketAddr,
    conns: mpsc::Receiver<MiniConn>,
}

/// One accepted agent connection, after the init exchange.
pub struct MiniConn {
    tls: StreamOwned<ServerConnection, TcpStream>,
    /// The agent's init message.
    pub init: Value,
    buf: Vec<u8>,
    next_id: u64,
    /// Lines [`MiniConn::read_until`] passed over, for a later call.
    skipped: std::collections::VecDeque<Value>,
}

impl MiniServer {
    /// Listens on `listen` (`IP:PORT`); every connection gets `init_reply`
    /// (one JSON line, without `\n`) after the agent's init.
    pub fn start(pki: &Pki, listen: &str, init_reply: &str) -> MiniServer {
        let listener =
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("listen on {listen}: {e}"));
        let addr = listener.local_addr().expect("the listener's address");
        let config = pki.server_config("server");
        let reply = format!("{init_reply}\n");
        let (tx, conns) = mpsc::channel();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { continue };
                let Ok(tls) = ServerConnection::new(Arc::clone(&config)) else {
                    continue;
                };
                if sock
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .is_err()
                {
                    continue;
                }
                let mut conn = MiniConn {
                    tls: StreamOwned::new(tls, sock),
                    init: Value::Null,
                    buf: Vec::new(),
                    next_id: 0,
                    skipped: Default::default(),
                };
                let Some(init) = conn.read_line(Duration::from_secs(10)) else {
                    continue;
                };
                conn.init = serde_json::from_slice(&init).unwrap_or(Value::Null);
                if conn.tls.write_all(reply.as_bytes()).is_err() {
                    continue;
                }
                if tx.send(conn).is_err() {
                    return;
                }
            }
        });
        MiniServer { addr, conns }
    }

    /// The next agent connection (init done).
    pub fn accept(&self, limit: Duration) -> MiniConn {
        self.conns
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no agent connection within {limit:?}: {e}"))
    }
}

impl MiniConn {
    /// Sends one line (`\n` added).
    pub fn send(&mut self, line: &str) {
        let sent = self.tls.write_all(line.as_bytes());
        let sent = sent.and_then(|()| self.tls.write_all(b"\n"));
        sent.and_then(|()| self.tls.flush())
            .unwrap_or_else(|e| panic!("send to the agent: {e}"));
    }

    /// The next line (without `\n`), or `None` at EOF or after `limit`.
    pub fn read_line(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let start = Instant::now();
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Some(line);
            }
            if start.elapsed() > limit {
                return None;
            }
            match self.tls.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads lines until one satisfies `pred` (lines passed over by an
    /// earlier call first); the others are answered when they are
    /// heartbeat pings, else kept for a later call. Panics after `limit`.
    pub fn read_until(&mut self, limit: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        if let Some(i) = self.skipped.iter().position(&mut pred) {
            return self.skipped.remove(i).unwrap_or_default();
        }
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            let line = self
                .read_line(left)
                .unwrap_or_else(|| panic!("no matching line within {limit:?}"));
            let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
            if pred(&v) {
                return v;
            }
            if v["method"] == "ping" {
                let answer = format!("{{\"id\":{},\"resp\":\"success\",\"retcode\":2}}", v["id"]);
                self.send(&answer);
            } else if self.skipped.len() < 10_000 {
                self.skipped.push_back(v);
            }
        }
    }

    /// Sends `request` (a JSON object without `id`) with a fresh id and
    /// returns its answer.
    pub fn call(&mut self, request: &str, limit: Duration) -> Value {
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        let mut v: Value =
            serde_json::from_str(request).unwrap_or_else(|e| panic!("{e}: {request}"));
        v["id"] = Value::String(id.clone());
        self.send(&v.to_string());
        self.read_until(limit, |a| a["id"] == id.as_str())
    }

    /// Closes the connection (TLS close_notify, then the socket).
    pub fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
        let _ = self.tls.sock.shutdown(std::net::Shutdown::Both);
    }
}
