//! The upstream TCP socket of the reactor: opened non-blocking, watched
//! until the connect finishes, its interest kept in step with the core,
//! and closed after one best-effort write of the core's last bytes.

use std::io::{self, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// One connection attempt or connection.
pub struct Socket {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// The TCP connect has not finished yet.
    pub connecting: bool,
    interest: Interest,
}

impl Socket {
    /// Starts connecting to `addr`, registered under `token`.
    pub fn open(registry: &Registry, token: Token, addr: SocketAddr) -> Result<Socket, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("TCP_NODELAY: {e}");
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        registry
            .register(&mut stream, token, interest)
            .map_err(|e| format!("register: {e}"))?;
        Ok(Socket {
            stream,
            addr,
            connecting: true,
            interest,
        })
    }

    /// After an event while connecting: `Ok(true)` once connected,
    /// `Ok(false)` while still connecting, or why the connect failed.
    pub fn connected(&mut self) -> Result<bool, String> {
        if !self.connecting {
            return Ok(true);
        }
        let up = match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => self.stream.peer_addr().map(|_| ()),
        };
        match up {
            Ok(()) => {
                self.connecting = false;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(format!("connect: {e}")),
        }
    }

    /// Registers for what the core wants (always writable while
    /// connecting: that is how the connect reports).
    pub fn want(
        &mut self,
        registry: &Registry,
        token: Token,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        let interest = match (read, write || self.connecting) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        if interest != self.interest {
            registry.reregister(&mut self.stream, token, interest)?;
            self.interest = interest;
        }
        Ok(())
    }

    /// Writes what `last` the socket takes now (never waits), then shuts
    /// the socket down.
    pub fn close(mut self, registry: &Registry, last: &[u8]) {
        if !self.connecting {
            let mut rest = last;
            while !rest.is_empty() {
                match self.stream.write(rest) {
                    Ok(0) => break,
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = registry.deregister(&mut self.stream);
        log::debug!("closed the connection to {}", self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn wait_writable(poll: &mut mio::Poll) {
        let mut events = mio::Events::with_capacity(4);
        while events.is_empty() {
            poll.poll(&mut events, None).unwrap();
        }
    }

    #[test]
    fn a_socket_connects_writes_its_last_bytes_and_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let token = Token(0);
        let mut s = Socket::open(poll.registry(), token, listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        while !s.connected().unwrap() {
            wait_writable(&mut poll);
        }
        s.want(poll.registry(), token, true, false).unwrap();
        s.close(poll.registry(), b"bye");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye", "the last bytes, then the end");
    }

    #[test]
    fn a_refused_connect_is_an_error_naming_it() {
        // A port nobody listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut s = match Socket::open(poll.registry(), Token(0), addr) {
            Ok(s) => s,
            Err(e) => return assert!(e.starts_with("connect:"), "{e}"),
        };
        loop {
            match s.connected() {
                Ok(true) => panic!("connected to a closed port"),
                Ok(false) => wait_writable(&mut poll),
                Err(e) => return assert!(e.starts_with("connect: "), "{e}"),
            }
        }
    }
}
