//! Harness for the swarm's tests: rcgen certificates, the real `BasicAgentServer` (from target/debug) on a loopback address of its own, and the real `BasicAgentSwarm` with a status file.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

pub const NAME: &str = "config.cargo.com";
/// Generous bound for things that should happen in well under a second.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn swarm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_BasicAgentSwarm"))
}

pub fn server_bin() -> PathBuf {
    let p = swarm_bin().parent().unwrap().join("BasicAgentServer");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The host ids `BasicAgentSwarm --print-ids` gives for these flags.
pub fn host_ids(args: &[&str]) -> Vec<String> {
    let out = Command::new(swarm_bin())
        .arg("--print-ids")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether this server has the operator HTTP API (`serve --api ADDR`); the
/// server from before it (thread per session) only has the admin socket.
pub fn server_has_api() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let out = Command::new(server_bin()).arg("--help").output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("--api ADDR")
    })
}

/// A CA, a server certificate for [`NAME`], a client certificate, and a second unrelated CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("swarm test CA");
        let (other_cert, _) = ca("some other CA");

        let server_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![NAME.to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = p.signed_by(&server_key, &ca_cert, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "swarm agent");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = p.signed_by(&client_key, &ca_cert, &ca_key).unwrap();

        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", other_cert.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    /// Writes `dir/agent-ID.pem` and `.key` for each id: a client
    /// certificate with SAN URI `urn:uuid:ID` (as make-certs.sh --agent).
    pub fn agent_certs(&self, dir: &Path, ids: &[String]) {
        for id in ids {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, id.as_str());
            p.subject_alt_names = vec![rcgen::SanType::URI(
                format!("urn:uuid:{id}").try_into().unwrap(),
            )];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
            std::fs::write(dir.join(format!("agent-{id}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("agent-{id}.key")), key.serialize_pem()).unwrap();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A loopback address of this test binary's own: 127.0.61.N (servers).
pub fn server_ip() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    format!("127.0.61.{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A source range of its own for one swarm: 127.0.62+K.1-127.0.62+K.4.
pub fn source_range() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let k = 62 + NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.0.{k}.1-127.0.{k}.4")
}

/// Polls `f` every 50 ms until it gives `Some`, or panics after [`WAIT`] with `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a JSON-lines file (missing file: no lines).
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A running BasicAgentServer; killed on drop.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    /// The HTTP API's address, when the server has one (bound to port 0 here).
    pub api: Option<SocketAddr>,
    pub admin: PathBuf,
    pub events: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `serve` on a fresh loopback address, port chosen by the kernel;
    /// returns once the events file says `listening`.
    pub fn start(pki: &Pki, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.sock");
        let events = dir.path().join("events.jsonl");
        let ip = server_ip();
        // Never the default API address (127.0.0.1:8080, shared by everyone).
        let api_flags: Vec<String> = if server_has_api() {
            vec!["--api".into(), format!("{ip}:0")]
        } else {
            Vec::new()
        };
        let child = Command::new(server_bin())
            .arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:0"))
            .args(&api_flags)
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .arg("--admin")
            .arg(&admin)
            .arg("--events")
            .arg(&events)
            .args(extra)
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let listening = wait_for("the server's listening event", || {
            json_lines(&events)
                .into_iter()
                .find(|e| e["event"] == "listening")
        });
        let listen = listening["listen"].as_str().unwrap().parse().unwrap();
        let api = listening["api"].as_str().and_then(|a| a.parse().ok());
        Server {
            child,
            listen,
            api,
            admin,
            events,
            _dir: dir,
        }
    }

    /// Runs an admin subcommand (`list`, `call ...`) and returns its output.
    pub fn admin(&self, args: &[&str]) -> Output {
        let (cmd, rest) = args.split_first().unwrap();
        Command::new(server_bin())
            .arg(cmd)
            .arg("--admin")
            .arg(&self.admin)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The JSON lines a subcommand printed on stdout.
    pub fn admin_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.admin(args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        json_lines(&self.events)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running BasicAgentSwarm with its status file.
pub struct Swarm {
    pub child: Option<Child>,
    pub status: PathBuf,
    _dir: tempfile::TempDir,
}

impl Swarm {
    /// Starts `agents` agents against `server` trusting `ca`, with `extra` flags.
    pub fn start(pki: &Pki, server: SocketAddr, ca: &str, agents: u64, extra: &[&str]) -> Swarm {
        Swarm::start_list(pki, &server.to_string(), ca, agents, extra)
    }

    /// The same with a server list (`IP:PORT,IP:PORT...`).
    pub fn start_list(pki: &Pki, servers: &str, ca: &str, agents: u64, extra: &[&str]) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.json");
        let child = Command::new(swarm_bin())
            .arg("--server")
            .arg(servers)
            .arg("--ca")
            .arg(pki.path(ca))
            .arg("--agents")
            .arg(agents.to_string())
            .arg("--source")
            .arg(source_range())
            .arg("--status-file")
            .arg(&status)
            .arg("--progress")
            .arg("0")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Swarm {
            child: Some(child),
            status,
            _dir: dir,
        }
    }

    /// The last status written (`Value::Null` before the first).
    pub fn status(&self) -> Value {
        std::fs::read_to_string(&self.status)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the status satisfies `f`.
    pub fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, || {
            let s = self.status();
            f(&s).then_some(s)
        })
    }

    /// SIGTERM, then the final report (stdout's last line); asserts exit 0.
    pub fn stop(&mut self) -> Value {
        let child = self.child.as_ref().unwrap();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        self.finish()
    }

    /// Waits for the process to exit by itself; its final report.
    pub fn finish(&mut self) -> Value {
        let child = self.child.take().unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "swarm failed: {:?}\n{stderr}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no report\n{stderr}"));
        let v: Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["final"], true);
        v
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
