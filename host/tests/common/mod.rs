//! Shared harness for the daemon's integration tests: certificates made by
//! rcgen, the real `BasicAgentServer` with its events file and admin
//! socket, and the real `BasicAgent` with a private config and hosts file.
#![allow(dead_code)]

pub mod mini;

use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_BasicAgent"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn server_bin() -> PathBuf {
    let p = bin_dir().join("BasicAgentServer");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The host id the client certificate is issued for (SAN `urn:uuid:...`).
pub const CLIENT_HOST_ID: &str = "5e1f0c6a-9d2b-4c3e-8f10-0123456789ab";

/// Certificates for one test: a CA, a server certificate for
/// config.cargo.com, one for another name, one from another CA, and a
/// client certificate.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = make_ca("BasicAgent test CA");
        let (other_ca, other_key) = make_ca("Some other CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let leaf =
            |name: &str, issuer: &rcgen::Certificate, issuer_key: &rcgen::KeyPair, stem: &str| {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                if stem == "client" {
                    // Bound to a host id (the server checks it under mTLS).
                    let uri = format!("urn:uuid:{CLIENT_HOST_ID}");
                    params
                        .subject_alt_names
                        .push(rcgen::SanType::URI(uri.try_into().unwrap()));
                }
                let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
                std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
                std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem())
                    .unwrap();
            };
        leaf("config.cargo.com", &ca, &ca_key, "server");
        leaf("other.example.com", &ca, &ca_key, "wrongname");
        leaf("config.cargo.com", &other_ca, &other_key, "otherca");
        leaf("agent-client", &ca, &ca_key, "client");
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

pub fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// A DNS server on loopback that answers NXDOMAIN to everything, so that
/// the agent's DNS step is quick and nothing leaves the machine.
pub fn nxdomain_server() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = (reply[3] & 0xf0) | 0x80 | 3; // RA, RCODE NXDOMAIN
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

/// A port free on 127.0.0.1 (and, in practice, on the other 127.0.0.x).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
}

impl Server {
    pub fn start(pki: &Pki, listen: &str, cert: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = listen.parse().unwrap();
        let child = Command::new(server_bin())
            .arg("serve")
            .args(["--listen", &listen.to_string()])
            .arg("--cert")
            .arg(pki.path(&format!("{cert}.pem")))
            .arg("--key")
            .arg(pki.path(&format!("{cert}.key")))
            .arg("--admin")
            .arg(dir.path().join("admin.sock"))
            .arg("--events")
            .arg(dir.path().join("events.jsonl"))
            .args(["--api", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server { child, dir, listen };
        wait_for("the server to listen", Duration::from_secs(10), || {
            s.events()
                .iter()
                .any(|e| e["event"] == "listening")
                .then_some(())
        });
        s
    }

    pub fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn inits(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "init")
            .collect()
    }

    pub fn list(&self) -> Vec<Value> {
        let out = Command::new(server_bin())
            .arg("list")
            .arg("--admin")
            .arg(self.admin())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The one connected agent's host id, waiting for it to connect.
    pub fn wait_agent(&self, limit: Duration) -> String {
        wait_for("the agent to connect", limit, || {
            self.list()
                .first()
                .and_then(|a| a["host"].as_str().map(str::to_owned))
        })
    }

    pub fn call_raw(&self, host: &str, request: &str) -> Output {
        Command::new(server_bin())
            .arg("call")
            .arg("--admin")
            .arg(self.admin())
            .args(["--host", host, "--timeout", "30", request])
            .output()
            .unwrap()
    }

    pub fn call(&self, host: &str, request: &str) -> Value {
        let out = self.call_raw(host, request);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "call {request}: {e}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Sends a raw line and returns what came back (the null-id answer).
    pub fn send(&self, host: &str, raw: &[u8]) -> String {
        let mut child = Command::new(server_bin())
            .arg("send")
            .arg("--admin")
            .arg(self.admin())
            .args(["--host", host, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(raw).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Writes the config (`server` and `agent` sections get the test's
    /// paths) and the hosts file, then starts the daemon in the foreground.
    pub fn start(
        pki: &Pki,
        port: u16,
        hosts: &[&str],
        server_extra: &str,
        agent_extra: &str,
        args: &[&str],
    ) -> Agent {
        let mut agent = Agent::configure(pki, port, hosts, server_extra, agent_extra);
        agent.spawn(args);
        agent
    }

    /// [`Agent::start`] without starting: the files only.
    pub fn configure(
        pki: &Pki,
        port: u16,
        hosts: &[&str],
        server_extra: &str,
        agent_extra: &str,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let hosts_text: String = hosts
            .iter()
            .map(|ip| format!("{ip} config.cargo.com\n"))
            .collect();
        std::fs::write(
            dir.path().join("hosts"),
            format!("# test hosts\n{hosts_text}"),
        )
        .unwrap();
        let config = format!(
            "[server]\nport = {port}\nca = \"{ca}\"\nhosts_file = \"{hosts}\"\nnameservers = [\"{dns}\"]\nconnect_timeout = 2\nhandshake_timeout = 3\n{server_extra}\n\
             [agent]\nstate_dir = \"{state}\"\nplugin_dir = \"{plugins}\"\nctl_socket = \"{ctl}\"\n{agent_extra}\n",
            ca = pki.path("ca.pem").display(),
            hosts = dir.path().join("hosts").display(),
            state = dir.path().join("state").display(),
            plugins = bin_dir().display(),
            // Each daemon its own control socket (never /run/basicagent).
            ctl = dir.path().join("run/ctl.sock").display(),
            dns = nxdomain_server(),
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        Agent { child: None, dir }
    }

    pub fn spawn(&mut self, args: &[&str]) {
        self.spawn_at("debug", args);
    }

    /// The daemon's arguments: config, log file, `-l LEVEL`, then `args`.
    pub fn args(&self, level: &str, args: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "-c".into(),
            self.path("agent.toml").into(),
            "-L".into(),
            self.path("agent.log").into(),
            "-l".into(),
            level.into(),
        ];
        v.extend(args.iter().map(OsString::from));
        v
    }

    /// Starts the daemon with the log level `level`.
    pub fn spawn_at(&mut self, level: &str, args: &[&str]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_BasicAgent"));
        cmd.args(self.args(level, args));
        self.spawn_command(cmd);
    }

    /// Starts `cmd` as the daemon (a wrapper that ends by exec'ing it).
    pub fn spawn_command(&mut self, mut cmd: Command) {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the daemon to exit; returns its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let status = wait_for("the agent to exit", limit, || child.try_wait().unwrap());
        status.code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
