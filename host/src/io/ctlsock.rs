//! The root-only local control socket `BasicAgentCtl` talks to: one JSON
//! request line in, its answer line out, served by the daemon's own
//! dispatcher (so the ctl sees the daemon's plugins, quarantine, limits
//! and signature policy).
//!
//! Access: the socket's directory is 0700 and the socket 0600 (both ours),
//! and each accepted peer's `SO_PEERCRED` uid must be 0 or the daemon's
//! euid; anyone else gets one refusal line and the connection is closed.
//! Every connection is nonblocking and served by the reactor's `Poll`; a
//! request line is bounded by `server.max_frame`, a peer that sends more
//! gets a `3020` line and is closed. The daemon keeps serving whatever a
//! peer does. At most [`MAX_CONNS`] connections are open at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

/// The listener's token in the reactor's `Poll`.
pub const LISTENER: Token = Token(3);
/// Connection tokens are `CONN_BASE + n`.
pub const CONN_BASE: usize = 1 << 20;
/// The generation bit of a ctl connection's requests: answers carrying it
/// go to [`CtlServer::answer`], not upstream.
pub const GENERATION_BIT: u64 = 1 << 63;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNS: usize = 64;

/// Why the control socket could not be set up (logged; the daemon runs on
/// without it).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Unsafe { path: PathBuf, reason: String },
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// The request was handed to the dispatcher.
    asked: bool,
}

/// The listening socket and its connections.
pub struct CtlServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<usize, Conn>,
    next: usize,
    max_line: usize,
    euid: u32,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CtlError + '_ {
    move |source| CtlError::Io {
        path: path.to_owned(),
        source,
    }
}

impl CtlServer {
    /// Creates the directory (0700) if needed, refuses one that others
    /// may write or that is not ours, replaces a stale socket (one nobody
    /// answers on), binds, makes the socket 0600 and registers it.
    pub fn bind(path: &Path, max_line: usize, registry: &Registry) -> Result<CtlServer, CtlError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let dir = path.parent().unwrap_or(Path::new("/"));
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
        if !meta.is_dir() {
            return Err(CtlError::Unsafe {
                path: dir.to_owned(),
                reason: "is not a directory".into(),
            });
        }
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(CtlError::Unsafe {
                path: dir.to_owned(),
                reason: format!(
                    "owned by uid {} with mode {:o}: must be ours and not group/other-writable",
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(CtlError::Unsafe {
                        path: path.to_owned(),
                        reason: "another process serves this socket".into(),
                    });
                }
                std::fs::remove_file(path).map_err(io_err(path))?;
            }
            Ok(_) => {
                return Err(CtlError::Unsafe {
                    path: path.to_owned(),
                    reason: "exists and is not a socket".into(),
                })
            }
            Err(_) => {}
        }
        let mut listener = UnixListener::bind(path).map_err(io_err(path))?;
        // The directory is 0700 and ours: nobody else can reach the
        // socket in the moment before its own mode is set.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err(path))?;
        log::info!("control socket {}", path.display());
        Ok(CtlServer {
            listener,
            path: path.to_owned(),
            conns: HashMap::new(),
            next: 0,
            max_line: max_line.max(1024),
            euid,
        })
    }

    /// Whether `token` is one of ours.
    pub fn owns(token: Token) -> bool {
        token == LISTENER || token.0 >= CONN_BASE
    }

    /// Serves an event of `token`; returns the request lines read, each
    /// with the generation to dispatch it under.
    pub fn on_event(&mut self, token: Token, registry: &Registry) -> Vec<(u64, Vec<u8>)> {
        if token == LISTENER {
            self.accept(registry);
            return Vec::new();
        }
        let n = token.0 - CONN_BASE;
        let mut out = Vec::new();
        let close = match self.conns.get_mut(&n) {
            None => false,
            Some(c) if c.asked => flush(c),
            Some(c) => match read_line(c, self.max_line) {
                ReadOutcome::More => false,
                ReadOutcome::Closed => true,
                ReadOutcome::Line(line) => {
                    c.asked = true;
                    out.push((GENERATION_BIT | n as u64, line));
                    false
                }
                ReadOutcome::TooLong => {
                    c.asked = true;
                    let r = basicagent_proto::Response::failed(
                        None,
                        basicagent_proto::Retcode::INVALID_REQUEST,
                        format!(
                            "Invalid request: the request line is longer than {} bytes (server.max_frame)",
                            self.max_line
                        ),
                    );
                    r.write_frame(&mut c.out);
                    flush(c)
                }
            },
        };
        if close {
            self.close(n, registry);
        }
        out
    }

    /// Sends the answer to the request of `generation`, then closes.
    pub fn answer(&mut self, generation: u64, frame: Vec<u8>, registry: &Registry) {
        let n = (generation & !GENERATION_BIT) as usize;
        let Some(c) = self.conns.get_mut(&n) else {
            log::debug!("ctl answer dropped: the client left");
            return;
        };
        c.out = frame;
        c.sent = 0;
        if flush(c) {
            self.close(n, registry);
        } else if let Err(e) = registry.reregister(
            &mut c.stream,
            Token(CONN_BASE + n),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("ctl connection: {e}");
            self.close(n, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    return;
                }
            };
            match peer_uid(&stream) {
                Ok(uid) if uid == 0 || uid == self.euid => {}
                Ok(uid) => {
                    log::warn!("control socket: refused a client with uid {uid}");
                    let line = format!(
                        "BasicAgent: refused: the control socket serves uid 0 only (the client is uid {uid})\n"
                    );
                    let _ = stream.write(line.as_bytes());
                    continue;
                }
                Err(e) => {
                    log::warn!("control socket: SO_PEERCRED: {e}");
                    continue;
                }
            }
            if self.conns.len() >= MAX_CONNS {
                let _ = stream.write(b"BasicAgent: busy: too many control connections\n");
                continue;
            }
            let n = self.next;
            self.next = (self.next + 1) % (usize::MAX - CONN_BASE);
            if let Err(e) = registry.register(&mut stream, Token(CONN_BASE + n), Interest::READABLE)
            {
                log::warn!("control socket: register: {e}");
                continue;
            }
            self.conns.insert(
                n,
                Conn {
                    stream,
                    input: Vec::new(),
                    out: Vec::new(),
                    sent: 0,
                    asked: false,
                },
            );
            // Data may already be waiting (edge-triggered): read it now.
            // The caller's next event for the token picks it up otherwise;
            // mio reports readiness present at registration.
        }
    }

    fn close(&mut self, n: usize, registry: &Registry) {
        if let Some(mut c) = self.conns.remove(&n) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Connections open (tests).
    pub fn open(&self) -> usize {
        self.conns.len()
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum ReadOutcome {
    More,
    Line(Vec<u8>),
    TooLong,
    Closed,
}

fn read_line(c: &mut Conn, max: usize) -> ReadOutcome {
    let mut buf = [0u8; 16 << 10];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => {
                let chunk = &buf[..n];
                if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                    c.input.extend_from_slice(&chunk[..i]);
                    if c.input.len() > max {
                        return ReadOutcome::TooLong;
                    }
                    return ReadOutcome::Line(std::mem::take(&mut c.input));
                }
                c.input.extend_from_slice(chunk);
                if c.input.len() > max {
                    return ReadOutcome::TooLong;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

/// Writes what is left of the answer; true when done (or the peer is gone).
fn flush(c: &mut Conn) -> bool {
    if c.out.is_empty() {
        // Still waiting for the answer: a readable event is EOF or noise.
        let mut probe = [0u8; 256];
        return matches!(c.stream.read(&mut probe), Ok(0));
    }
    while c.sent < c.out.len() {
        match c.stream.write(&c.out[c.sent..]) {
            Ok(0) => return true,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    true
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes
    // into it for a descriptor we own.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let r = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cred.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_socket_is_0600_in_a_0700_directory_and_removed_when_dropped() {
        let poll = mio::Poll::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/ctl.sock");
        let ctl = CtlServer::bind(&path, 4096, poll.registry()).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A live socket is never taken over.
        let e = CtlServer::bind(&path, 4096, poll.registry()).err().unwrap();
        assert!(e.to_string().contains("another process serves"), "{e}");
        drop(ctl);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_unsafe_places_are_refused() {
        let poll = mio::Poll::new().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket file");
        let ctl = CtlServer::bind(&path, 4096, poll.registry()).unwrap();
        assert_eq!(ctl.open(), 0);
        drop(ctl);
        // Not a socket: left alone.
        std::fs::write(&path, b"x").unwrap();
        let e = CtlServer::bind(&path, 4096, poll.registry()).err().unwrap();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        std::fs::remove_file(&path).unwrap();
        // A directory others may write: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CtlServer::bind(&path, 4096, poll.registry()).err().unwrap();
        assert!(e.to_string().contains("not group/other-writable"), "{e}");
        assert!(!path.exists());
    }
}
