//! Test harness: rcgen certificates, the real BasicAgentServer binary on 127.0.0.x, and a fake agent (rustls client).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

pub const NAME: &str = "config.cargo.com";
pub const BIN: &str = env!("CARGO_BIN_EXE_BasicAgentServer");
pub const WAIT: Duration = Duration::from_secs(15);

/// A CA with a server certificate for [`NAME`] and a client certificate, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    pub ca_der: CertificateDer<'static>,
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "BasicAgent test CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = p.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![NAME.to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = p.signed_by(&server_key, &ca, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "agent");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = p.signed_by(&client_key, &ca, &ca_key).unwrap();

        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        Pki {
            ca_der: ca.der().clone(),
            ca,
            ca_key,
            client_chain: vec![client.der().clone()],
            client_key_der: client_key.serialize_der(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client configuration with a fresh certificate for `host` (SAN URI `urn:uuid:HOST`, CN "someone").
    pub fn client_config_for(&self, host: &str) -> Arc<ClientConfig> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "someone");
        p.subject_alt_names.push(rcgen::SanType::URI(
            format!("urn:uuid:{host}").try_into().unwrap(),
        ));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// A client configuration trusting this CA, with or without the client certificate.
    pub fn client_config(&self, with_cert: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_cert {
            let key = PrivateKeyDer::try_from(self.client_key_der.clone()).unwrap();
            builder
                .with_client_auth_cert(self.client_chain.clone(), key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

/// A free address on a loopback address of its own (127.0.0.20 and up).
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(20);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = format!("127.0.0.{n}");
    let l = TcpListener::bind((ip.as_str(), 0)).unwrap();
    l.local_addr().unwrap()
}

/// A running BasicAgentServer; killed on drop.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    /// The API's bound address (from the `listening` event), if it has one.
    pub api: Option<SocketAddr>,
    pub admin: PathBuf,
    pub events: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `serve` with the Pki's server certificate and `extra` flags;
    /// returns once the server logged `listening`.
    pub fn start(pki: &Pki, extra: &[&str]) -> Server {
        Server::start_with(pki, &pki.path("server.pem"), &pki.path("server.key"), extra)
    }

    /// Starts with another certificate and key.
    pub fn start_with(_pki: &Pki, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        Server::start_at(free_addr(), cert, key, extra)
    }

    /// Starts on `listen`.
    pub fn start_at(listen: SocketAddr, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        Server::start_wrapped(&[], listen, cert, key, extra)
    }

    /// Starts on `listen` under `wrapper` (e.g. `["prlimit", "--nofile=64:64"]`; empty: none).
    pub fn start_wrapped(
        wrapper: &[&str],
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.sock");
        let events = dir.path().join("events.jsonl");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--admin")
            .arg(&admin)
            .arg("--events")
            .arg(&events)
            .args(if extra.contains(&"--api") {
                &[][..]
            } else {
                &["--api", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            listen,
            api: None,
            admin,
            events,
            _dir: dir,
        };
        let listening = server.wait_event("listening", |_| true);
        server.api = listening["api"].as_str().map(|a| a.parse().unwrap());
        server
    }

    /// One HTTP request to the API: (status, body). `token`: the bearer token.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.api.expect("no API"));
        let mut r = ureq::request(method, &url);
        if let Some(t) = token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        let answer = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        match answer {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{method} {url}: {e}"),
        }
    }

    /// Sends raw bytes to the API (a writer thread, errors ignored: the
    /// server may answer and close early) and returns the whole answer.
    pub fn raw_http(&self, bytes: Vec<u8>) -> String {
        use std::io::Read;
        let mut sock = TcpStream::connect(self.api.unwrap()).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut writer = sock.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        });
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer);
        let _ = t.join();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// GET returning JSON (status must be 200).
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.http("GET", path, None, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST /v1/call; returns the NDJSON lines.
    pub fn call(&self, body: &str) -> Vec<Value> {
        let (status, text) = self.http("POST", "/v1/call", Some(body), None);
        assert_eq!(status, 200, "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.events().iter().any(|e| e["event"] == name)
    }

    /// Waits (polling the file) for an event named `name` matching `pred`.
    pub fn wait_event(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["event"] == name && pred(e))
            {
                return e;
            }
            assert!(
                start.elapsed() < WAIT,
                "no {name} event; events: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs an admin subcommand (`list`, `call`, ...) against this server.
    pub fn admin(&self, args: &[&str]) -> Output {
        let (cmd, rest) = args.split_first().unwrap();
        Command::new(BIN)
            .arg(cmd)
            .arg("--admin")
            .arg(&self.admin)
            .args(rest)
            .output()
            .unwrap()
    }

    /// Same, with `stdin` fed to the process.
    pub fn admin_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let (cmd, rest) = args.split_first().unwrap();
        let mut child = Command::new(BIN)
            .arg(cmd)
            .arg("--admin")
            .arg(&self.admin)
            .args(rest)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Starts an admin subcommand without waiting for it.
    pub fn admin_spawn(&self, args: &[&str]) -> Child {
        let (cmd, rest) = args.split_first().unwrap();
        Command::new(BIN)
            .arg(cmd)
            .arg("--admin")
            .arg(&self.admin)
            .args(rest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake agent: a rustls client speaking lines.
pub struct Agent {
    pub stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl Agent {
    /// Connects and completes the TLS handshake (an error is returned, not panicked).
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Agent> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(WAIT))?;
        let conn = ClientConnection::new(config, ServerName::try_from(NAME).unwrap()).unwrap();
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Agent {
            stream: BufReader::new(stream),
        })
    }

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

    pub fn recv_json(&mut self) -> Value {
        let line = self.recv().unwrap().expect("connection closed");
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
        self.send(&init.to_json()).unwrap();
        self.recv().unwrap().expect("no init reply")
    }

    /// Connects with the client certificate and registers as `host`.
    pub fn ready(server: &Server, pki: &Pki, host: &str) -> Agent {
        let mut a = Agent::connect(server.listen, pki.client_config(true)).unwrap();
        let reply = a.init(host);
        assert!(reply.contains("\"resp\":\"success\""), "{reply}");
        a
    }
}

pub fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
