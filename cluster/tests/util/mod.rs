//! Test harness: a real nats-server from scripts/nats.sh in a temp dir on a
//! loopback port, and helpers to wait for cluster conditions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use basicagent_cluster::{Cluster, ClusterOptions};

/// A nats-server owned by one test; stopped on drop.
pub struct Nats {
    pub dir: tempfile::TempDir,
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats.sh")
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("cp-nats-")
            .tempdir()
            .expect("temp dir");
        let url = run(&["start"], &dir);
        Nats { dir, url }
    }

    /// With NATS_AUTH=1: only the user in `url_auth` may connect; returns
    /// the server and the URL with credentials.
    pub fn start_with_auth() -> (Nats, String) {
        let dir = tempfile::Builder::new()
            .prefix("cp-nats-auth-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .env("NATS_AUTH", "1")
            .output()
            .expect("run scripts/nats.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string();
        let auth = std::fs::read_to_string(dir.path().join("url_auth"))
            .expect("url_auth")
            .trim()
            .to_string();
        (Nats { dir, url }, auth)
    }

    /// SIGKILL the server (no goodbye to the clients).
    pub fn kill9(&self) {
        let pid: i32 = std::fs::read_to_string(self.dir.path().join("pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // SAFETY: plain kill(2) on the pid of the nats-server this test started.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0);
        // Wait for it to be gone so the restart can bind the port.
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks the pid exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let url = run(&["start"], &self.dir);
        assert_eq!(url, self.url);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn run(args: &[&str], dir: &tempfile::TempDir) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .arg(dir.path())
        .output()
        .expect("run scripts/nats.sh");
    assert!(
        out.status.success(),
        "nats.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

pub fn opts(url: &str, name: &str) -> ClusterOptions {
    ClusterOptions::new(url, name, format!("127.0.0.1:{}", 9000 + name.len()))
}

pub async fn node(url: &str, name: &str) -> Cluster {
    Cluster::connect(opts(url, name)).await.expect("connect")
}

/// Waits (generously: this guards a hang, it is not a timing assertion)
/// until `cond` holds.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn names(c: &Cluster) -> Vec<String> {
    c.members().into_iter().map(|n| n.name).collect()
}

pub async fn converge(nodes: &[&Cluster]) {
    let mut want: Vec<String> = nodes.iter().map(|c| c.node_name().to_string()).collect();
    want.sort();
    for c in nodes {
        wait_for("membership to converge", || names(c) == want).await;
    }
}

/// Percentile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
