//! A fake agent: a rustls client speaking JSON lines to a real server,
//! so a test decides every byte the server receives.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;

use crate::pki::{Pki, NAME};
use crate::server::Server;
use crate::wait::WAIT;

/// One TLS connection to a server, line by line.
pub struct Agent {
    pub stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl Agent {
    /// Connects and completes the TLS handshake (an error is returned, not panicked).
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Agent> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(WAIT))?;
        let name = ServerName::try_from(NAME).expect("a valid server name");
        let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Agent {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one line (`\n` added).
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        let s = self.stream.get_mut();
        s.write_all(line.as_bytes())?;
        s.write_all(b"\n")?;
        s.flush()
    }

    /// The next line (without `\n`); `Ok(None)` at a clean end.
    pub fn recv(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        match self.stream.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line.trim_end_matches('\n').to_owned())),
        }
    }

    /// The next line as JSON (panics at the end or on anything else).
    pub fn recv_json(&mut self) -> Value {
        let line = self
            .recv()
            .unwrap_or_else(|e| panic!("recv: {e}"))
            .expect("connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends init for `host` and returns the server's answer line.
    pub fn init(&mut self, host: &str) -> String {
        let init = basicagent_proto::Init {
            hostname: host.to_owned(),
            version: "0.1.0".into(),
            name: format!("node-{host}"),
            plugins: vec!["getinfo.kernel".into(), "sync.bash".into()],
            extra: Default::default(),
        };
        self.send(&init.to_json())
            .unwrap_or_else(|e| panic!("send init: {e}"));
        self.recv()
            .unwrap_or_else(|e| panic!("recv the init reply: {e}"))
            .expect("no init reply")
    }

    /// Connects with the client certificate and registers as `host`.
    pub fn ready(server: &Server, pki: &Pki, host: &str) -> Agent {
        let mut a = Agent::connect(server.listen, pki.client_config(true))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", server.listen));
        let reply = a.init(host);
        assert!(reply.contains("\"resp\":\"success\""), "{reply}");
        a
    }
}
