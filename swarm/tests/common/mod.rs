//! Harness for the swarm's tests: rcgen certificates, the real `BasicAgentServer` (from target/debug) on a loopback address of its own, and the real `BasicAgentSwarm` with a status file.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::Value;

/// Generous bound for things that should happen in well under a second.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn swarm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_BasicAgentSwarm"))
}

pub fn server_bin() -> PathBuf {
    basicagent_testsupport::server_bin()
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

pub use basicagent_testsupport::Pki;

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

/// Polls `f` until it gives `Some`, or panics after [`WAIT`] with `what`.
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    basicagent_testsupport::wait_for(what, WAIT, f)
}

/// Reads a JSON-lines file (missing file: no lines).
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub use basicagent_testsupport::Server;

/// The real server on a loopback address of this binary's own
/// ([`server_ip`]), its API there too; returns once it listens.
pub fn start_server(pki: &Pki, extra: &[&str]) -> Server {
    let ip = server_ip();
    let api = format!("{ip}:0");
    // Never the default API address (127.0.0.1:8080, shared by everyone).
    let mut args = vec!["--api", api.as_str()];
    args.extend_from_slice(extra);
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    Server::start_at(
        basicagent_testsupport::free_addr_on(&ip),
        &cert,
        &key,
        &args,
    )
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
