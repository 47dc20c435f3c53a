//! Cluster mode against a real nats-server and a real PostgreSQL (started by scripts/nats.sh and scripts/pg.sh on loopback): redirect to the owner, cross-node calls, the cluster-wide list, fan-out counts, node death, drain, NATS and PostgreSQL outages.
//!
//! Every test starts its own nats-server and PostgreSQL (so membership and
//! tables are its own); when they cannot be started the test fails, it
//! never passes silently. Agents are fake agents (a rustls client answering
//! every request) that re-home themselves like the real one: on a lost
//! session they try the live nodes, following redirects.

mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use basicagent_testsupport::script;
use basicagent_testsupport::wait::wait_until as eventually;
use rustls::ClientConfig;
use serde_json::{json, Value};
use util::{free_addr, wait_for, Agent, Pki, Server};

/// Longest anything here waits for the cluster to converge.
const CONVERGE: Duration = Duration::from_secs(30);

/// nats-server and PostgreSQL of one test, in a temp dir; stopped on drop.
struct Services {
    dir: tempfile::TempDir,
    nats: String,
    db: String,
}

impl Services {
    fn start() -> Services {
        let dir = tempfile::Builder::new()
            .prefix("cluster-test")
            .tempdir_in("/tmp")
            .unwrap();
        // pg.sh runs PostgreSQL as `postgres`, which must reach pg/ inside.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let nats = run_script(
            "nats.sh",
            &["start", &dir.path().join("nats").to_string_lossy()],
        );
        let pid = std::process::id().to_string();
        let db = run_script(
            "pg.sh",
            &[
                "start",
                &dir.path().join("pg").to_string_lossy(),
                "--watch",
                &pid,
            ],
        );
        assert!(nats.starts_with("nats://127."), "nats.sh gave {nats:?}");
        assert!(db.starts_with("postgres://"), "pg.sh gave a bad URL");
        Services { dir, nats, db }
    }

    fn nats_stop(&self) {
        run_script(
            "nats.sh",
            &["stop", &self.dir.path().join("nats").to_string_lossy()],
        );
    }

    fn nats_start(&self) {
        run_script(
            "nats.sh",
            &["start", &self.dir.path().join("nats").to_string_lossy()],
        );
    }

    fn pg(&self, what: &str) {
        run_script(
            "pg.sh",
            &[what, &self.dir.path().join("pg").to_string_lossy()],
        );
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = Command::new(script("nats.sh"))
            .args(["stop", &self.dir.path().join("nats").to_string_lossy()])
            .status();
        let _ = Command::new(script("pg.sh"))
            .args(["stop", &self.dir.path().join("pg").to_string_lossy()])
            .status();
    }
}

/// Runs a script; panics loudly (with its stderr) when it fails.
fn run_script(name: &str, args: &[&str]) -> String {
    let out = Command::new(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed (the cluster tests need nats-server and PostgreSQL 15; \
         CI installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The nodes of one test.
struct Nodes {
    svc: Services,
    pki: Pki,
    nodes: Vec<Option<Server>>,
    listens: Vec<SocketAddr>,
}

impl Nodes {
    fn start(n: usize) -> Nodes {
        let svc = Services::start();
        let pki = Pki::new();
        let mut nodes = Nodes {
            svc,
            pki,
            nodes: Vec::new(),
            listens: Vec::new(),
        };
        for i in 0..n {
            let listen = free_addr();
            nodes.listens.push(listen);
            nodes.nodes.push(None);
            nodes.start_node(i);
        }
        // Everyone sees everyone.
        eventually("membership", || {
            (0..n).all(|i| nodes.get(i, "/v1/nodes").as_array().unwrap().len() == n)
        });
        nodes
    }

    fn start_node(&mut self, i: usize) {
        let listen = self.listens[i];
        let name = format!("node{i}");
        let peer = listen.to_string();
        let server = Server::start_at(
            listen,
            &self.pki.path("server.pem"),
            &self.pki.path("server.key"),
            &[
                "--nats",
                &self.svc.nats,
                "--db",
                &self.svc.db,
                "--node-name",
                &name,
                "--peer-addr",
                &peer,
            ],
        );
        self.nodes[i] = Some(server);
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is down")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            let _ = s.child.kill(); // SIGKILL
            let _ = s.child.wait();
        }
    }

    fn live(&self) -> Vec<SocketAddr> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| self.listens[i])
            .collect()
    }

    fn index_of(&self, listen: SocketAddr) -> usize {
        self.listens.iter().position(|l| *l == listen).unwrap()
    }

    fn get(&self, i: usize, path: &str) -> Value {
        let (status, body) = http(self.node(i), "GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn call(&self, i: usize, body: Value) -> (u16, Vec<Value>) {
        let (status, text) = http(self.node(i), "POST", "/v1/call", Some(&body.to_string()));
        let lines = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (status, lines)
    }
}

/// One API request with a timeout (a cluster outage must never hang it).
fn http(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", server.api.expect("no API"));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let r = agent.request(method, &url);
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

/// Connects `host` to the first of `addrs` that takes it, following
/// redirects (at most 3 in a row, as the agent). Returns the agent and
/// the node that holds it, and whether the first node redirected.
fn home(
    cfg: &Arc<ClientConfig>,
    addrs: &[SocketAddr],
    host: &str,
) -> Option<(Agent, SocketAddr, bool)> {
    for &first in addrs {
        let mut addr = first;
        let mut redirected = false;
        for _ in 0..4 {
            let Ok(mut a) = Agent::connect(addr, cfg.clone()) else {
                break;
            };
            // The fake agent writes a line and its newline separately: no
            // Nagle delay between them (the real agent writes once).
            let _ = a.stream.get_ref().sock.set_nodelay(true);
            a.send(
                &basicagent_proto::Init {
                    hostname: host.to_owned(),
                    version: "0.1.0".into(),
                    name: format!("node-{host}"),
                    plugins: vec!["getinfo.kernel".into()],
                    extra: Default::default(),
                }
                .to_json(),
            )
            .ok()?;
            let Ok(Some(reply)) = a.recv() else { break };
            let v: Value = serde_json::from_str(&reply).unwrap();
            if v["method"] == "redirect" {
                addr = v["server"].as_str().unwrap().parse().unwrap();
                redirected = true;
                continue;
            }
            if v["resp"] == "success" {
                return Some((a, addr, redirected));
            }
            break;
        }
    }
    None
}

/// A fake agent: answers every request with `{"host": HOST}`; when its
/// session ends (the node died or drained it) and `rehome` is set, it
/// finds a new node through `addrs()` the way the agent does.
struct FakeAgent {
    host: String,
    at: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// The methods of every request received, in order.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(
        pki: Arc<ClientConfig>,
        addrs: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
        host: &str,
    ) -> FakeAgent {
        let at = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, at2, stop2, seen2) = (host.to_owned(), at.clone(), stop.clone(), seen.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            while !stop2.load(Ordering::Relaxed) {
                let list = addrs.lock().unwrap().clone();
                let Some((mut a, addr, _)) = home(&pki, &list, &h) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                *at2.lock().unwrap() = Some(addr);
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                let _ = a
                    .stream
                    .get_ref()
                    .sock
                    .set_read_timeout(Some(Duration::from_millis(200)));
                loop {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    match a.recv() {
                        Ok(Some(line)) => {
                            let r: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                            if let Some(m) = r.get("method") {
                                seen2
                                    .lock()
                                    .unwrap()
                                    .push(m.as_str().unwrap_or("").to_owned());
                                let answer = json!({"id": r["id"], "resp": "success",
                                    "retcode": 2, "message": "Normal termination",
                                    "data": {"host": h}});
                                if a.send(&answer.to_string()).is_err() {
                                    break;
                                }
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue
                        }
                        _ => break,
                    }
                }
                *at2.lock().unwrap() = None;
            }
        });
        ready_rx
            .recv_timeout(CONVERGE)
            .expect("the fake agent found no node");
        FakeAgent {
            host: host.to_owned(),
            at,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn at(&self) -> Option<SocketAddr> {
        *self.at.lock().unwrap()
    }

    fn seen(&self, method: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn summary(lines: &[Value]) -> &Value {
    &lines.last().expect("no lines")["summary"]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn redirect_cross_node_call_list_and_fanout() {
    let nodes = Nodes::start(3);
    let pki = &nodes.pki;
    let cfg = pki.client_config(true);
    // Redirect to the owner: every host lands on one node whichever it
    // tries first, and the first node redirects when it is not the owner.
    let hosts: Vec<String> = (0..9).map(|i| format!("cl-host-{i}")).collect();
    let mut agents = Vec::new();
    let mut redirects = 0;
    for h in &hosts {
        let (a, at, redirected) = home(&cfg, &nodes.listens[..1], h).expect("homed");
        redirects += usize::from(redirected);
        assert_eq!(redirected, at != nodes.listens[0]);
        // The same host tried on another node first goes to the same owner.
        let other = nodes.listens[(nodes.index_of(at) + 1) % 3];
        let mut probe = Agent::connect(other, pki.client_config(true)).unwrap();
        let reply: Value = serde_json::from_str(&probe.init(h)).unwrap();
        assert_eq!(reply["method"], "redirect", "{reply}");
        assert_eq!(reply["server"], at.to_string());
        agents.push((h.clone(), a, at));
    }
    assert!(redirects > 0, "placement sent nothing away from node0");
    let agents: Vec<(String, SocketAddr, FakeResponder)> = agents
        .into_iter()
        .map(|(h, a, at)| (h.clone(), at, FakeResponder::start(a, &h)))
        .collect();

    // The cluster-wide list, from every node, with the node each agent is on.
    for i in 0..3 {
        eventually("cluster-wide list", || {
            let list = nodes.get(i, "/v1/agents");
            let list = list.as_array().unwrap();
            list.len() == hosts.len()
                && agents.iter().all(|(h, at, _)| {
                    let node = format!("node{}", nodes.index_of(*at));
                    list.iter().any(|a| a["host"] == *h && a["node"] == node)
                })
        });
    }
    assert_eq!(nodes.get(1, "/v1/agents/count")["count"], hosts.len());
    let one = nodes.get(2, &format!("/v1/agents/{}", hosts[0]));
    assert_eq!(one["online"], true, "{one}");

    // /v1/nodes: three live nodes whose sessions add up.
    eventually("session counts", || {
        let list = nodes.get(0, "/v1/nodes");
        let total: u64 = list
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["sessions"].as_u64().unwrap())
            .sum();
        total == hosts.len() as u64
            && list
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["state"] == "live")
    });

    // Cross-node call: through a node that does not hold the host.
    let (h, at, _) = &agents[0];
    let via = (nodes.index_of(*at) + 1) % 3;
    let mut lat = Vec::new();
    for n in 0..200 {
        let started = Instant::now();
        let (status, lines) = nodes.call(
            via,
            json!({"target": {"hosts": [h]}, "request": {"method": "getinfo.kernel", "id": n}}),
        );
        lat.push(started.elapsed());
        assert_eq!(status, 200);
        assert_eq!(lines[0]["host"], *h, "{lines:?}");
        assert_eq!(lines[0]["resp"], "success", "{lines:?}");
        assert_eq!(lines[0]["id"], n, "the caller's id comes back");
        assert_eq!(lines[0]["data"]["host"], *h);
        assert_eq!(summary(&lines)["answered"], 1);
    }
    lat.sort();
    eprintln!(
        "MEASURE cross-node call through a non-holder (HTTP API round trip, debug build): \
         p50 {:?} p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // Listed hosts across nodes and one nobody holds: offline at once.
    let (status, lines) = nodes.call(
        0,
        json!({"target": {"hosts": [&hosts[0], &hosts[1], &hosts[2], "nobody-holds-me"]},
               "request": {"method": "ping"}, "timeout": 20}),
    );
    assert_eq!(status, 200);
    let s = summary(&lines);
    assert_eq!(s["targeted"], 4, "{lines:?}");
    assert_eq!(s["answered"], 3, "{lines:?}");
    assert_eq!(s["offline"], 1, "{lines:?}");
    assert!(s["seconds"].as_f64().unwrap() < 20.0);
    let off = lines
        .iter()
        .find(|l| l["host"] == "nobody-holds-me")
        .unwrap();
    assert_eq!(off["retcode"], 3100);

    // Fan-out to all through each node: one stream, one summary, every host once.
    for i in 0..3 {
        let (status, lines) = nodes.call(
            i,
            json!({"target": {"all": true}, "request": {"method": "getinfo.kernel"}, "timeout": 10}),
        );
        assert_eq!(status, 200);
        let s = summary(&lines);
        assert_eq!(s["targeted"], hosts.len(), "{lines:?}");
        assert_eq!(s["answered"], hosts.len(), "{lines:?}");
        let mut seen: Vec<&str> = lines[..lines.len() - 1]
            .iter()
            .map(|l| l["host"].as_str().unwrap())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), hosts.len());
        // Recorded in PostgreSQL, readable from another node.
        let id = s["call"].as_i64().expect("call recorded");
        let other = (i + 1) % 3;
        eventually("call history from another node", || {
            let c = nodes.get(other, &format!("/v1/calls/{id}"));
            c["results"].as_array().map(Vec::len) == Some(hosts.len())
        });
    }
    // A glob.
    let (status, lines) = nodes.call(
        1,
        json!({"target": {"name": "node-cl-host-1*"}, "request": {"method": "ping"}}),
    );
    assert_eq!(status, 200);
    assert_eq!(summary(&lines)["answered"], 1, "{lines:?}");
    // A glob that matches nothing on any node: 404, as on one node.
    let (status, body) = http(
        nodes.node(2),
        "POST",
        "/v1/call",
        Some(r#"{"target":{"name":"nothing-*"},"request":{"method":"ping"}}"#),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_target"), "{body}");
    drop(agents);
}

/// Answers requests on an already homed agent until the session ends.
struct FakeResponder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeResponder {
    fn start(mut a: Agent, host: &str) -> FakeResponder {
        let stop = Arc::new(AtomicBool::new(false));
        let (h, stop2) = (host.to_owned(), stop.clone());
        let _ = a
            .stream
            .get_ref()
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)));
        let thread = std::thread::spawn(move || loop {
            if stop2.load(Ordering::Relaxed) {
                return;
            }
            match a.recv() {
                Ok(Some(line)) => {
                    let r: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if r.get("method").is_some() {
                        let answer = json!({"id": r["id"], "resp": "success", "retcode": 2,
                            "message": "Normal termination", "data": {"host": h}});
                        if a.send(&answer.to_string()).is_err() {
                            return;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                _ => return,
            }
        });
        FakeResponder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A read-only call is sent while its record commits (the commit is most
/// of a cross-node call's time), a command only after: with PostgreSQL
/// down a `sync.bash` never reaches the agent, a `ping` may, and both get
/// 503 `store_unavailable` and no answer line. Once PostgreSQL is back a
/// read-only call's results are stored under its call id.
#[test]
fn calls_are_recorded_before_any_answer_and_commands_before_they_are_sent() {
    let nodes = Nodes::start(2);
    let pki = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..6)
        .map(|i| FakeAgent::start(pki.clone(), addrs.clone(), &format!("record-host-{i}")))
        .collect();
    let remote = agents
        .iter()
        .find(|a| a.at() == Some(nodes.listens[1]))
        .expect("an agent on node1");
    let ping =
        json!({"target": {"hosts": [&remote.host]}, "request": {"method": "ping"}, "timeout": 5});
    let bash = json!({"target": {"hosts": [&remote.host]},
        "request": {"method": "sync.bash", "cmd": "true"}, "timeout": 5});
    // Recorded, with its result, under the id the summary gives.
    let (status, lines) = nodes.call(0, ping.clone());
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(lines[0]["resp"], "success", "{lines:?}");
    let call = summary(&lines)["call"].as_i64().expect("a call id");
    eventually("the ping's result stored under its call", || {
        let c = nodes.get(1, &format!("/v1/calls/{call}"));
        c["results"].as_array().is_some_and(|r| r.len() == 1)
            && c["results"][0]["host"] == remote.host.as_str()
    });
    nodes.svc.pg("pause");
    eventually("503 store_unavailable for a command", || {
        let (s, t) = http(nodes.node(0), "POST", "/v1/call", Some(&bash.to_string()));
        assert!(
            !t.contains("\"resp\""),
            "an answer line for an unrecorded call: {t}"
        );
        s == 503 && t.contains("store_unavailable")
    });
    for _ in 0..5 {
        let (s, t) = http(nodes.node(0), "POST", "/v1/call", Some(&bash.to_string()));
        assert_eq!(s, 503, "{t}");
        let (s, t) = http(nodes.node(0), "POST", "/v1/call", Some(&ping.to_string()));
        assert_eq!(s, 503, "{t}");
        assert!(t.contains("store_unavailable"), "{t}");
    }
    // A command that could not be recorded was never sent.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        remote.seen("sync.bash"),
        0,
        "an unrecorded command reached the agent"
    );
    nodes.svc.pg("resume");
    eventually("commands recorded and sent again", || {
        let (s, l) = nodes.call(0, bash.clone());
        s == 200 && l.first().is_some_and(|l| l["resp"] == "success")
    });
    assert_eq!(remote.seen("sync.bash"), 1);
}

/// Regression (found by the 76 000-agent bench): a node stalled for more
/// than the death timeout (here SIGSTOP, there a CPU starved during a
/// fan-out) is declared dead by its peers, which mark its agents offline
/// (`node_gone`); on waking it sees its own stall and declares nobody
/// dead from it (issue #14). Its sessions were alive all along; once it
/// hears its peers again and they hear it, each writes its own sessions
/// again, so the cluster-wide list
/// shows every agent again (it stayed short for ever before).
#[test]
fn a_stalled_node_and_its_peers_list_their_agents_again_after_it_wakes() {
    let nodes = Nodes::start(2);
    let pki = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..8)
        .map(|i| FakeAgent::start(pki.clone(), addrs.clone(), &format!("stall-host-{i}")))
        .collect();
    assert!(agents.iter().any(|a| a.at() == Some(nodes.listens[1])));
    assert!(agents.iter().any(|a| a.at() == Some(nodes.listens[0])));
    eventually("all agents listed", || {
        nodes.get(0, "/v1/agents").as_array().unwrap().len() == agents.len()
    });
    let all = json!({"target": {"all": true}, "request": {"method": "ping"}, "timeout": 20});
    let (status, lines) = nodes.call(0, all.clone());
    assert_eq!(status, 200);
    assert_eq!(summary(&lines)["targeted"], agents.len(), "{lines:?}");
    assert!(summary(&lines).get("incomplete").is_none(), "{lines:?}");
    let pid = nodes.node(1).child.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    // A fan-out meanwhile: node1 never answers, and the summary says its
    // hosts are missing (it used to look complete, only shorter).
    let on0 = agents
        .iter()
        .filter(|a| a.at() == Some(nodes.listens[0]))
        .count();
    let (status, lines) = nodes.call(0, all.clone());
    assert_eq!(status, 200);
    let s = summary(&lines);
    assert_eq!(s["incomplete"], json!(["node1"]), "{lines:?}");
    assert_eq!(s["answered"], on0, "{lines:?}");
    eventually("node1 seen dead by node0", || {
        nodes.get(0, "/v1/nodes").as_array().unwrap().len() == 1
    });
    // node0's node_gone(node1) has run (or runs now); wake node1 past its
    // own death timeout for node0.
    std::thread::sleep(Duration::from_millis(500));
    signal("-CONT");
    eventually("both nodes live and every agent listed on both", || {
        (0..2).all(|i| {
            nodes.get(i, "/v1/nodes").as_array().unwrap().len() == 2
                && nodes.get(i, "/v1/agents").as_array().unwrap().len() == agents.len()
        })
    });
    // And it stays so once the late node_gone calls have landed.
    std::thread::sleep(Duration::from_secs(7));
    for i in 0..2 {
        let list = nodes.get(i, "/v1/agents");
        assert_eq!(list.as_array().unwrap().len(), agents.len(), "{list}");
    }
}

#[test]
fn a_killed_node_is_noticed_and_its_agents_are_rehomed() {
    let mut nodes = Nodes::start(3);
    let pki = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..12)
        .map(|i| FakeAgent::start(pki.clone(), addrs.clone(), &format!("kill-host-{i}")))
        .collect();
    // The node with the most agents dies.
    let victim = (0..3)
        .max_by_key(|&i| {
            agents
                .iter()
                .filter(|a| a.at() == Some(nodes.listens[i]))
                .count()
        })
        .unwrap();
    let moved: Vec<&FakeAgent> = agents
        .iter()
        .filter(|a| a.at() == Some(nodes.listens[victim]))
        .collect();
    assert!(!moved.is_empty());
    let survivor = (victim + 1) % 3;
    eventually("list before", || {
        nodes.get(survivor, "/v1/agents").as_array().unwrap().len() == agents.len()
    });
    let victim_name = format!("node{victim}");
    nodes.kill(victim);
    let killed = Instant::now();
    *addrs.lock().unwrap() = nodes.live();

    // Noticed by its peers.
    eventually("the dead node noticed", || {
        let list = nodes.get(survivor, "/v1/nodes");
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == victim_name)
    });
    let noticed = killed.elapsed();
    // Its agents serve again elsewhere: each answers a call through the survivor.
    let mut serving = Vec::new();
    for a in &moved {
        eventually("re-homed agent answers", || {
            let (status, lines) = nodes.call(
                survivor,
                json!({"target": {"hosts": [&a.host]}, "request": {"method": "ping"}, "timeout": 2}),
            );
            status == 200 && lines.first().is_some_and(|l| l["resp"] == "success")
        });
        serving.push(killed.elapsed());
    }
    serving.sort();
    eprintln!(
        "MEASURE killed node noticed after {noticed:?}; its {} agents serving again: \
         p50 {:?} p99 {:?} (fake agents retrying every 100 ms)",
        moved.len(),
        percentile(&serving, 0.5),
        percentile(&serving, 0.99)
    );
    // The list: every agent once, none on the dead node.
    eventually("list after", || {
        let list = nodes.get(survivor, "/v1/agents");
        let list = list.as_array().unwrap();
        list.len() == agents.len() && list.iter().all(|a| a["node"] != victim_name)
    });
    // A fan-out through the survivor reaches everyone.
    let (_, lines) = nodes.call(
        survivor,
        json!({"target": {"all": true}, "request": {"method": "ping"}, "timeout": 10}),
    );
    assert_eq!(summary(&lines)["answered"], agents.len(), "{lines:?}");
}

#[test]
fn drain_sends_a_nodes_agents_to_the_others() {
    let nodes = Nodes::start(2);
    let pki = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..10)
        .map(|i| FakeAgent::start(pki.clone(), addrs.clone(), &format!("drain-host-{i}")))
        .collect();
    let on0 = agents
        .iter()
        .filter(|a| a.at() == Some(nodes.listens[0]))
        .count();
    assert!(on0 > 0, "placement put nothing on node0");
    // Drain node0 through node1's API (the request travels over NATS).
    let (status, body) = http(nodes.node(1), "POST", "/v1/nodes/node0/drain", None);
    assert_eq!(status, 200, "{body}");
    eventually("node0 draining and empty", || {
        let list = nodes.get(1, "/v1/nodes");
        let n0 = list
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "node0")
            .cloned()
            .unwrap_or(Value::Null);
        n0["state"] == "draining"
            && nodes
                .get(0, "/v1/nodes")
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "node0" && n["sessions"] == 0)
    });
    eventually("all agents on node1", || {
        agents.iter().all(|a| a.at() == Some(nodes.listens[1]))
    });
    // A new agent trying node0 is redirected to node1.
    let (newcomer, at, redirected) = home(
        &nodes.pki.client_config(true),
        &nodes.listens[..1],
        "drain-newcomer",
    )
    .unwrap();
    assert!(redirected);
    assert_eq!(at, nodes.listens[1]);
    let _newcomer = FakeResponder::start(newcomer, "drain-newcomer");
    // Everything still answers through the drained node's API.
    let (_, lines) = nodes.call(
        0,
        json!({"target": {"all": true}, "request": {"method": "ping"}, "timeout": 10}),
    );
    assert_eq!(summary(&lines)["answered"], agents.len() + 1, "{lines:?}");
    // Bad input: an unknown node is a clear 404, and the node keeps serving.
    let (status, body) = http(nodes.node(1), "POST", "/v1/nodes/no-such-node/drain", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_node"), "{body}");
    assert_eq!(nodes.get(1, "/v1/nodes").as_array().unwrap().len(), 2);
}

#[test]
fn nats_down_and_postgres_down_fail_clearly_and_recover() {
    let nodes = Nodes::start(2);
    let pki = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..6)
        .map(|i| FakeAgent::start(pki.clone(), addrs.clone(), &format!("outage-host-{i}")))
        .collect();
    let remote = agents
        .iter()
        .find(|a| a.at() == Some(nodes.listens[1]))
        .expect("an agent on node1");
    let body =
        json!({"target": {"hosts": [&remote.host]}, "request": {"method": "ping"}, "timeout": 5});
    eventually("remote call works", || {
        let (s, l) = nodes.call(0, body.clone());
        s == 200 && l.first().is_some_and(|l| l["resp"] == "success")
    });

    // NATS down: a call through node0 to a host on node1 fails clearly and
    // soon (503 once node0 knows, or a 3104 line), never hangs.
    nodes.svc.nats_stop();
    eventually("503 cluster_unavailable", || {
        let started = Instant::now();
        let (status, text) = http(nodes.node(0), "POST", "/v1/call", Some(&body.to_string()));
        assert!(started.elapsed() < Duration::from_secs(20), "call hung");
        if status == 200 {
            let l: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert!(
                l["resp"] == "success" || l["retcode"] == 3104 || l["retcode"] == 3101,
                "{text}"
            );
            return false;
        }
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("cluster_unavailable"), "{text}");
        true
    });
    nodes.svc.nats_start();
    let reconnect = eventually("remote call works again after NATS came back", || {
        let (s, l) = nodes.call(0, body.clone());
        s == 200 && l.first().is_some_and(|l| l["resp"] == "success")
    });
    eprintln!("MEASURE NATS restarted: calls work again after {reconnect:?}");

    // PostgreSQL down: reads and calls are 503 store_unavailable, not hangs.
    nodes.svc.pg("pause");
    eventually("503 store_unavailable", || {
        let (s1, t1) = http(nodes.node(0), "GET", "/v1/tasks", None);
        let (s2, t2) = http(nodes.node(1), "POST", "/v1/call", Some(&body.to_string()));
        s1 == 503
            && t1.contains("store_unavailable")
            && s2 == 503
            && t2.contains("store_unavailable")
    });
    let (status, _) = http(nodes.node(0), "GET", "/v1/nodes", None);
    assert_eq!(status, 200, "the node keeps serving what needs no store");
    // A task result that meets the outage is acknowledged, on the same
    // session, once PostgreSQL has it (the agent only re-pushes after init).
    let mut pusher = Agent::connect(nodes.listens[0], pki.clone()).unwrap();
    let reply = pusher.init("outage-pusher");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    let pusher_host = if reply["method"] == "redirect" {
        // Not ours: push to the owner instead.
        let owner: SocketAddr = reply["server"].as_str().unwrap().parse().unwrap();
        pusher = Agent::connect(owner, pki.clone()).unwrap();
        let r: Value = serde_json::from_str(&pusher.init("outage-pusher")).unwrap();
        assert_eq!(r["resp"], "success", "{r}");
        owner
    } else {
        nodes.listens[0]
    };
    pusher
        .send(r#"{"method":"task.done","task":"outage-task-1","resp":"success","retcode":2,"message":"Normal termination","data":{"exitcode":0}}"#)
        .unwrap();
    // An agent that connects while PostgreSQL is down is listed once it is back.
    let late = FakeAgent::start(pki.clone(), addrs.clone(), "outage-late-host");
    nodes.svc.pg("resume");
    let back = eventually("calls recorded again", || {
        let (s, l) = nodes.call(1, body.clone());
        s == 200 && l.first().is_some_and(|l| l["resp"] == "success")
    });
    eprintln!("MEASURE PostgreSQL restarted: calls work again after {back:?}");
    let ack = pusher.recv_json();
    assert_eq!(ack["method"], "task.ack", "{ack}");
    assert_eq!(ack["task"], "outage-task-1");
    let via = (nodes.index_of(pusher_host) + 1) % 2;
    let stored = nodes.get(via, "/v1/tasks/outage-task-1");
    assert_eq!(stored.as_array().unwrap().len(), 1, "{stored}");
    eventually("the agent that came during the outage is listed", || {
        let list = nodes.get(0, "/v1/agents");
        let list = list.as_array().unwrap();
        list.len() == agents.len() + 2 && list.iter().any(|a| a["host"] == late.host.as_str())
    });
}

/// The agent daemon built next to the server (`cargo build --workspace`).
/// A real BasicAgent daemon with its own host id, whose server name
/// resolves (hosts file) to every node.
struct Daemon {
    agent: basicagent_testsupport::Agent,
    host: String,
}

impl Daemon {
    fn start(pki: &Pki, nodes: &[SocketAddr], host: &str) -> Daemon {
        Daemon {
            agent: util::real_agent(pki, nodes, Some(host.to_owned())),
            host: host.to_owned(),
        }
    }

    /// Results the agent still holds (not acknowledged yet).
    fn unacked(&self) -> usize {
        self.agent.unacked()
    }

    fn log(&self) -> String {
        self.agent.log()
    }
}

/// Loopback addresses of our own (127.0.91.1..=n) sharing one free port,
/// so one server name in the agents' hosts file reaches every node.
fn shared_port_addrs(n: u8) -> Vec<SocketAddr> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.91.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|i| format!("127.0.91.{i}:{port}").parse().unwrap())
            .collect();
        if addrs.iter().all(|a| std::net::TcpListener::bind(a).is_ok()) {
            return addrs;
        }
    }
    panic!("no port free on 127.0.91.1..={n}");
}

#[test]
fn kill_9_of_a_node_during_async_tasks_loses_and_duplicates_no_result() {
    const AGENTS: usize = 4;
    const TASKS: usize = 50;
    let svc = Services::start();
    let pki = Pki::new();
    let listens = shared_port_addrs(3);
    let mut nodes = Nodes {
        svc,
        pki,
        nodes: vec![None, None, None],
        listens: listens.clone(),
    };
    for i in 0..3 {
        nodes.start_node(i);
    }
    eventually("membership", || {
        (0..3).all(|i| nodes.get(i, "/v1/nodes").as_array().unwrap().len() == 3)
    });
    let tag = std::process::id() % 0xffff;
    let daemons: Vec<Daemon> = (0..AGENTS)
        .map(|i| {
            Daemon::start(
                &nodes.pki,
                &listens,
                &format!("0b7f5d1c-445e-49c0-8612-{tag:04x}0000000{i}"),
            )
        })
        .collect();
    eventually("every daemon connected", || {
        nodes.get(0, "/v1/agents").as_array().unwrap().len() == AGENTS
    });
    // Tasks finishing over about a second, launched through node0's API
    // (it routes each to the node holding the host).
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        for d in &daemons {
            let (status, lines) = nodes.call(
                0,
                json!({"target": {"hosts": [&d.host]},
                       "request": {"method": "async.bash",
                                   "cmd": format!("sleep 0.{}; echo {i}", i % 10)},
                       "timeout": 20}),
            );
            assert_eq!(status, 200);
            let task = lines[0]["data"]["task"]
                .as_str()
                .unwrap_or_else(|| panic!("no task id: {lines:?}\n{}", d.log()))
                .to_owned();
            tasks.push((d.host.clone(), task));
        }
    }
    let stored =
        |nodes: &Nodes, via: usize| -> std::collections::HashMap<(String, String), usize> {
            let mut seen = std::collections::HashMap::new();
            for t in nodes.get(via, "/v1/tasks?limit=10000").as_array().unwrap() {
                let key = (
                    t["host"].as_str().unwrap().to_owned(),
                    t["task"].as_str().unwrap().to_owned(),
                );
                *seen.entry(key).or_default() += 1;
            }
            seen
        };
    // kill -9 the busiest node while results are being delivered and acked.
    eventually("some results stored", || stored(&nodes, 0).len() >= 10);
    let agents = nodes.get(0, "/v1/agents");
    let victim = (0..3)
        .max_by_key(|&i| {
            let name = format!("node{i}");
            agents
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["node"] == name)
                .count()
        })
        .unwrap();
    nodes.kill(victim);
    let survivor = (victim + 1) % 3;
    let start = Instant::now();
    let seen = loop {
        let seen = stored(&nodes, survivor);
        if seen.len() == tasks.len() && daemons.iter().all(|d| d.unacked() == 0) {
            break seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "after the kill: {} of {} results stored, {} unacked",
            seen.len(),
            tasks.len(),
            daemons.iter().map(Daemon::unacked).sum::<usize>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for key in &tasks {
        assert_eq!(seen.get(key), Some(&1), "task {key:?} stored exactly once");
    }
    assert_eq!(seen.len(), AGENTS * TASKS);
    eprintln!(
        "MEASURE kill -9 of node{victim} during {} async.bash tasks: all stored exactly once \
         {:?} after the kill",
        tasks.len(),
        start.elapsed()
    );
}

#[test]
fn a_late_disconnect_on_the_old_node_does_not_hide_the_newer_session() {
    // node0 alone takes host H; node1 joins and owns H; H's new session on
    // node1 comes before node0 notices the old one is gone.
    let mut nodes = Nodes::start(1);
    let host = (0..1000)
        .map(|i| format!("late-gone-{i}"))
        .find(|h| basicagent_cluster::placement::owner_index(&["node0", "node1"], h) == Some(1))
        .unwrap();
    let cfg = nodes.pki.client_config(true);
    let (old, at, _) = home(&cfg, &nodes.listens[..1], &host).unwrap();
    assert_eq!(at, nodes.listens[0]);
    nodes.listens.push(free_addr());
    nodes.nodes.push(None);
    nodes.start_node(1);
    eventually("membership", || {
        nodes.get(0, "/v1/nodes").as_array().unwrap().len() == 2
    });
    // A join moves no existing session: node0 still holds H.
    let me = nodes.get(0, "/v1/nodes");
    let me = me
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["self"] == true)
        .unwrap()
        .clone();
    assert_eq!(me["sessions"], 1, "{me}");
    let (new, at, _) = home(&cfg, &nodes.listens[1..], &host).unwrap();
    assert_eq!(at, nodes.listens[1]);
    let _new = FakeResponder::start(new, &host);
    eventually("listed on node1", || {
        let list = nodes.get(0, "/v1/agents");
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["host"] == host.as_str() && a["node"] == "node1")
    });
    // Now node0 sees its old session end.
    drop(old);
    nodes
        .node(0)
        .wait_event("disconnect", |e| e["host"] == host.as_str());
    // A later write on node0: a call's result (an agent it owns). Once it
    // is in PostgreSQL the disconnect queued before it is too (one writer;
    // within a round, results are written after disconnects).
    let marker = (0..1000)
        .map(|i| format!("late-marker-{i}"))
        .find(|h| basicagent_cluster::placement::owner_index(&["node0", "node1"], h) == Some(0))
        .unwrap();
    let (m, at, _) = home(&cfg, &nodes.listens[..1], &marker).unwrap();
    assert_eq!(at, nodes.listens[0]);
    let _m = FakeResponder::start(m, &marker);
    eventually("marker listed", || {
        let list = nodes.get(1, "/v1/agents");
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["host"] == marker.as_str())
    });
    let list = nodes.get(1, "/v1/agents");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["host"] == host.as_str() && a["node"] == "node1"),
        "the newer session vanished from the list: {list}"
    );
    let one = nodes.get(1, &format!("/v1/agents/{host}"));
    assert_eq!(one["online"], true, "{one}");
}

#[test]
fn cluster_flags_are_checked_with_clear_errors() {
    let pki = Pki::new();
    let run = |extra: &[&str]| -> String {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(util::BIN)
            .arg("serve")
            .arg("--listen")
            .arg(free_addr().to_string())
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .arg("--admin")
            .arg(dir.path().join("admin.sock"))
            .arg("--api")
            .arg("none")
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--nats", "nats://127.0.0.1:1"]);
    assert!(e.contains("--nats URL and --db URL go together"), "{e}");
    let e = run(&["--node-name", "n1"]);
    assert!(e.contains("--node-name needs --nats"), "{e}");
    let e = run(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--db",
        "postgres://u:p@127.0.0.1:1/x",
    ]);
    assert!(e.contains("needs --node-name"), "{e}");
    let e = run(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--db",
        "postgres://u:p@127.0.0.1:1/x",
        "--node-name",
        "n1",
        "--state-dir",
        "/tmp/x",
    ]);
    assert!(e.contains("--state-dir and --db cannot be combined"), "{e}");
    // PostgreSQL unreachable: a clear error, no password in it.
    let e = run(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--db",
        "postgres://u:secretpw@127.0.0.1:1/x",
        "--node-name",
        "n1",
    ]);
    assert!(e.contains("store"), "{e}");
    assert!(!e.contains("secretpw"), "the password leaked: {e}");
}

#[test]
fn cluster_sh_brings_up_a_cluster_reports_it_and_takes_it_down() {
    let parent = tempfile::Builder::new()
        .prefix("cluster-sh")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        parent.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let dir = parent.path().join("c");
    let dir_s = dir.to_string_lossy().into_owned();
    let sh = |args: &[&str]| {
        Command::new(script("cluster.sh"))
            .args(args)
            .env("BIN", util::BIN)
            .env("BASE", "127.0.94")
            .output()
            .unwrap()
    };
    // Whatever happens, the cluster goes down with the test.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            if Path::new(&self.0).exists() {
                let _ = Command::new(script("cluster.sh"))
                    .args(["down", "--dir", &self.0])
                    .status();
            }
        }
    }
    let _down = Down(dir_s.clone());
    let up = sh(&["up", "--nodes", "2", "--dir", &dir_s]);
    assert!(
        up.status.success(),
        "cluster.sh up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let status = wait_for(
        "cluster.sh status to show both nodes live",
        CONVERGE,
        || {
            let out = sh(&["status", "--dir", &dir_s]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("node1 listen 127.0.94.101:8443")
                && text.matches("\"state\":\"live\"").count() == 2)
                .then_some(text)
        },
    );
    assert!(status.contains(&format!("dir {dir_s}")), "{status}");
    assert!(status.contains("postgres up"), "{status}");
    let down = sh(&["down", "--dir", &dir_s]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.exists(), "down removes the state dir");
}

/// Figures for docs/cluster.md (not run by default):
/// `cargo test --release -p basicagent-server --test cluster bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_cross_node_call_and_fanout() {
    let nodes = Nodes::start(3);
    let cfg = nodes.pki.client_config(true);
    let addrs = Arc::new(std::sync::Mutex::new(nodes.listens.clone()));
    let agents: Vec<FakeAgent> = (0..150)
        .map(|i| FakeAgent::start(cfg.clone(), addrs.clone(), &format!("bench-host-{i}")))
        .collect();
    let target = &agents[0];
    let holder = nodes.index_of(target.at().unwrap());
    let via = (holder + 1) % 3;
    let url = format!("http://{}/v1/call", nodes.node(via).api.unwrap());
    let body =
        json!({"target": {"hosts": [&target.host]}, "request": {"method": "ping"}, "timeout": 5})
            .to_string();
    let mut lat = Vec::new();
    for i in 0..1100 {
        let started = Instant::now();
        // A fresh connection per call: ureq writes headers and body
        // separately, and on a kept-alive connection Nagle + delayed ACK
        // add 40 ms that are the client's, not the cluster's.
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let text = match http
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(r) => r.into_string().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                panic!("call {i}: {code} {}", r.into_string().unwrap())
            }
            Err(e) => panic!("call {i}: {e}"),
        };
        if i >= 100 {
            lat.push(started.elapsed());
        }
        assert!(text.contains("\"answered\":1"), "{text}");
    }
    lat.sort();
    eprintln!(
        "MEASURE cross-node call via the API of a non-holder (a new HTTP connection each, call \
         recorded in PostgreSQL), 1000 sequential: p50 {:?} p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let mut fan = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let (_, lines) = nodes.call(
            via,
            json!({"target": {"all": true}, "request": {"method": "getinfo.kernel"}, "timeout": 10}),
        );
        fan.push(started.elapsed());
        assert_eq!(summary(&lines)["answered"], agents.len());
    }
    fan.sort();
    eprintln!(
        "MEASURE fan-out to {} fake agents over 3 nodes through one API: p50 {:?} max {:?}",
        agents.len(),
        percentile(&fan, 0.5),
        fan[fan.len() - 1]
    );
}
