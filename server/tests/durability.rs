//! The real BasicAgent daemon runs `async.bash` tasks while the server is killed with SIGKILL; nothing acked is lost, nothing is stored twice.

mod util;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use util::{free_addr, Pki, Server, BIN, WAIT};

/// The agent daemon built next to the server (`cargo build --workspace` / `cargo test --workspace`).
fn agent_bin() -> PathBuf {
    let p = PathBuf::from(BIN).with_file_name("BasicAgent");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(pki: &Pki, server: std::net::SocketAddr) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("hosts"),
            format!("{} {}\n", server.ip(), util::NAME),
        )
        .unwrap();
        let config = format!(
            "[server]\nport = {port}\nca = \"{ca}\"\nhosts_file = \"{hosts}\"\ndns = false\n\
             connect_timeout = 2\nhandshake_timeout = 3\n\
             [agent]\nstate_dir = \"{state}\"\nplugin_dir = \"{plugins}\"\n",
            port = server.port(),
            ca = pki.path("ca.pem").display(),
            hosts = dir.path().join("hosts").display(),
            state = dir.path().join("state").display(),
            plugins = PathBuf::from(BIN).parent().unwrap().display(),
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        let child = Command::new(agent_bin())
            .arg("-c")
            .arg(dir.path().join("agent.toml"))
            .arg("-L")
            .arg(dir.path().join("agent.log"))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon { child, dir }
    }

    /// Results the agent still holds (not acknowledged yet).
    fn unacked(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/tasks"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored(server: &Server, host: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for t in server
        .get(&format!("/v1/tasks?host={host}&limit=10000"))
        .as_array()
        .unwrap()
    {
        *seen
            .entry(t["task"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

#[test]
fn kill_9_of_the_server_loses_no_acked_task_result_of_a_real_agent() {
    const TASKS: usize = 60;
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let listen = free_addr();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut server = Server::start_at(listen, &cert, &key, &["--state-dir", &state_dir]);
    let daemon = Daemon::start(&pki, listen);
    let host = wait_for("the agent", WAIT, || {
        let agents = server.get("/v1/agents");
        agents[0]["host"].as_str().map(str::to_owned)
    });

    // Tasks that finish spread over about a second.
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let lines = server.call(
            &json!({"target": {"hosts": [host]},
                    "request": {"method": "async.bash",
                                "cmd": format!("sleep 0.{}; echo {i}", i % 10)},
                    "timeout": 20})
            .to_string(),
        );
        let task = lines[0]["data"]["task"]
            .as_str()
            .unwrap_or_else(|| panic!("no task id: {lines:?}\n{}", daemon.log()))
            .to_owned();
        tasks.push(task);
    }
    // Kill -9 while results are being delivered and acknowledged.
    wait_for("some results stored", WAIT, || {
        (stored(&server, &host).len() >= 5).then_some(())
    });
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let acked_before = TASKS - daemon.unacked();

    // Same address, same state: the agent comes back and sends what was not acknowledged.
    let server = Server::start_at(listen, &cert, &key, &["--state-dir", &state_dir]);
    let seen = wait_for("every result", Duration::from_secs(60), || {
        let seen = stored(&server, &host);
        (seen.len() == TASKS && daemon.unacked() == 0).then_some(seen)
    });
    for task in &tasks {
        assert_eq!(seen.get(task), Some(&1), "task {task} stored exactly once");
    }
    assert!(acked_before > 0, "some results were acked before the kill");
    let one = server.get(&format!("/v1/tasks/{}", tasks[0]));
    assert_eq!(one[0]["host"], host.as_str());
    assert_eq!(one[0]["data"]["stdout"], "0\n", "{one}");
}
