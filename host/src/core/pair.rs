//! In-memory pairs: the agent's whole [`Core`] against a server end made of
//! a `basicagent_link::Link<ServerConnection>` and the proto server
//! handshake (`proto::answer_init`), on a virtual clock, with no socket,
//! no thread and no wait. The task files are real (a temporary
//! directory), carried out by a test [`Sink`] at once or held back until
//! the test releases them.
#![cfg(test)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basicagent_abi::{HostSettings, PluginRegistry};
use basicagent_link::Link;
use basicagent_proto::{answer_init, Init, InitContext, InitPolicy, Verdict};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use super::dispatch::{AgentFacts, Dispatcher, Finished, Mail, Sink};
use super::session::{Session, SessionConfig};
use super::tasks::{TaskFileOp, TaskLimits};
use super::{Action, Core, Event};
use crate::io::taskfiles::{self, Answer};

pub const NAME: &str = "config.pair.test";

/// A CA, a server certificate for [`NAME`] signed by it, and the agent's
/// client configuration trusting that CA.
pub struct Pki {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

fn ca(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    (params.self_signed(&key).unwrap(), key)
}

fn server_config(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![NAME.to_owned()]).unwrap();
    let cert = params.signed_by(&key, ca, ca_key).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap(),
    )
}

impl Pki {
    pub fn new() -> Pki {
        let (ca_cert, ca_key) = ca("pair test CA");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .unwrap();
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki {
            client: Arc::new(client),
            server: server_config(&ca_cert, &ca_key),
        }
    }

    /// A server certificate from a CA the agent does not trust.
    pub fn foreign_server() -> Arc<ServerConfig> {
        let (c, k) = ca("another CA");
        server_config(&c, &k)
    }
}

/// The test's io side: completions queued at once; task files carried
/// out at once in the temporary directory; what reads read is delivered
/// at once or, with `hold_reads`, kept until [`Pair::release`].
pub struct TestSink {
    dir: PathBuf,
    max_frame: usize,
    mail: Mutex<VecDeque<Mail>>,
    pub ops: Mutex<Vec<TaskFileOp>>,
    pub held: Mutex<VecDeque<Mail>>,
    pub hold_reads: std::sync::atomic::AtomicBool,
}

impl TestSink {
    /// A sink whose task files live in `dir`.
    pub fn new(dir: PathBuf, max_frame: usize) -> Arc<TestSink> {
        Arc::new(TestSink {
            dir,
            max_frame,
            mail: Mutex::default(),
            ops: Mutex::default(),
            held: Mutex::default(),
            hold_reads: Default::default(),
        })
    }
}

impl Sink for TestSink {
    fn finished(&self, f: Finished) {
        self.mail.lock().unwrap().push_back(Mail::Finished(f));
    }

    fn task_finished(&self, f: Finished) {
        let f = taskfiles::store(&self.dir, f);
        self.finished(f);
    }

    fn persist(&self, op: TaskFileOp) {
        self.ops.lock().unwrap().push(op.clone());
        let mail = match taskfiles::apply(&self.dir, self.max_frame, op) {
            None => return,
            Some(Answer::Batch(b)) => Mail::Batch(b),
            Some(Answer::Read { ctx, frame }) => Mail::Read { ctx, frame },
        };
        if self.hold_reads.load(std::sync::atomic::Ordering::Relaxed) {
            self.held.lock().unwrap().push_back(mail);
        } else {
            self.mail.lock().unwrap().push_back(mail);
        }
    }

    fn try_next(&self) -> Option<Mail> {
        self.mail.lock().unwrap().pop_front()
    }

    fn unix_ms(&self) -> u128 {
        taskfiles::unix_ms()
    }
}

/// One server: its TLS configuration and init policy.
#[derive(Clone)]
pub struct ServerSpec {
    pub tls: Arc<ServerConfig>,
    pub policy: InitPolicy,
    pub heartbeat: Option<u64>,
}

/// The server end of the connection now open.
pub struct ServerEnd {
    pub addr: SocketAddr,
    pub link: Link<ServerConnection>,
    spec: ServerSpec,
    /// The init verdict, once the first frame came.
    pub verdict: Option<Verdict>,
    /// Frames after init, in order.
    pub received: Vec<Vec<u8>>,
    /// Why the link failed (a TLS alert from the agent, …).
    pub error: Option<String>,
}

impl ServerEnd {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            match self.link.handle_ciphertext(bytes) {
                Ok(0) => break,
                Ok(n) => bytes = &bytes[n..],
                Err(e) => self.error = Some(e.to_string()),
            }
            while let Some(frame) = self.link.next_frame() {
                if self.verdict.is_none() {
                    let own = [self.addr];
                    let ctx = InitContext {
                        policy: &self.spec.policy,
                        own: &own,
                        client_host: None,
                        full: None,
                        heartbeat: self.spec.heartbeat,
                    };
                    let v = answer_init(frame.as_deref(), &ctx);
                    let _ = self.link.queue_frame(v.reply());
                    self.verdict = Some(v);
                } else if let Ok(f) = frame {
                    self.received.push(f);
                }
            }
        }
    }
}

/// The agent's core and the servers it may reach, on a virtual clock.
pub struct Pair {
    pub core: Core,
    pub now: Instant,
    pub sink: Arc<TestSink>,
    /// What the configured name resolves to.
    pub resolves_to: Vec<SocketAddr>,
    /// Servers by address; an address without one refuses connections.
    pub servers: HashMap<SocketAddr, ServerSpec>,
    pub conn: Option<ServerEnd>,
    /// Servers the agent left, newest last (what they saw stays readable).
    pub closed: Vec<ServerEnd>,
    /// What the core asked for, in words ("connect 127.0.0.1:1", …).
    pub log: Vec<String>,
    pub exited: bool,
    /// The server reads what the agent sends (false: it stopped reading).
    pub server_reads: bool,
    _state: tempfile::TempDir,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn session_config() -> SessionConfig {
    SessionConfig {
        name: NAME.into(),
        port: 8443,
        connect_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        max_redirects: 3,
        heartbeat: Duration::from_secs(30),
        max_frame: 1 << 20,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        seed: 7,
    }
}

pub fn limits() -> TaskLimits {
    TaskLimits {
        max_tasks: 100,
        max_bytes: 64 << 20,
        retention: Duration::from_secs(3600),
        max_frame: 1 << 20,
    }
}

impl Pair {
    /// A pair whose agent trusts `pki` and whose name resolves to
    /// `resolves_to`; `prepare` may leave results in the outbox first.
    pub fn with(pki: &Pki, resolves_to: &[&str], prepare: impl FnOnce(&std::path::Path)) -> Pair {
        Pair::build(pki, resolves_to, prepare, None)
    }

    /// A pair whose agent loads its plugins from `plugins`.
    pub fn with_plugins(pki: &Pki, resolves_to: &[&str], plugins: PathBuf) -> Pair {
        Pair::build(pki, resolves_to, |_| {}, Some(plugins))
    }

    fn build(
        pki: &Pki,
        resolves_to: &[&str],
        prepare: impl FnOnce(&std::path::Path),
        plugins: Option<PathBuf>,
    ) -> Pair {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("tasks");
        taskfiles::prepare_dir(&dir).unwrap();
        prepare(&dir);
        let tasks = taskfiles::open(&dir, limits()).unwrap();
        let sink = TestSink::new(dir.clone(), 1 << 20);
        let now = Instant::now();
        let plugins = plugins.unwrap_or_else(|| {
            let empty = state.path().join("plugins");
            std::fs::create_dir(&empty).unwrap();
            empty
        });
        let registry = PluginRegistry::new(plugins, HostSettings::default());
        let facts = AgentFacts {
            host_id: "5d0f7c1e-8a41-4b8e-9f8a-2c7b3e6d1a90".into(),
            name: "pair".into(),
            version: "0.1.0".into(),
            started: now,
        };
        let dispatcher = Dispatcher::new(
            registry,
            16,
            Arc::clone(&sink) as Arc<dyn Sink>,
            facts,
            tasks,
        );
        let init = Init {
            hostname: "5d0f7c1e-8a41-4b8e-9f8a-2c7b3e6d1a90".into(),
            version: "0.1.0".into(),
            ..Init::default()
        };
        let session = Session::new(session_config(), init, now);
        let core = Core::new(session, dispatcher, Arc::clone(&pki.client), NAME, 1 << 20).unwrap();
        let mut pair = Pair {
            core,
            now,
            sink,
            resolves_to: resolves_to.iter().map(|a| addr(a)).collect(),
            servers: HashMap::new(),
            conn: None,
            closed: Vec::new(),
            log: Vec::new(),
            exited: false,
            server_reads: true,
            _state: state,
        };
        pair.core.handle(now, Event::Tick);
        pair
    }

    pub fn new(pki: &Pki, resolves_to: &[&str]) -> Pair {
        Pair::with(pki, resolves_to, |_| {})
    }

    /// A server at `at` with this policy.
    pub fn serve(&mut self, at: &str, tls: &Arc<ServerConfig>, policy: InitPolicy) {
        self.servers.insert(
            addr(at),
            ServerSpec {
                tls: Arc::clone(tls),
                policy,
                heartbeat: None,
            },
        );
    }

    /// Moves everything that can move until nothing does.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair does not settle: {:?}", self.log);
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        while let Some(action) = self.core.poll_action() {
            moved = true;
            match action {
                Action::Resolve { token, name, port } => {
                    self.log.push(format!("resolve {name}:{port}"));
                    let result = Ok(self.resolves_to.clone());
                    self.core.handle(
                        now,
                        Event::Resolved {
                            token,
                            result,
                            last: true,
                        },
                    );
                }
                Action::Connect(a) => {
                    self.log.push(format!("connect {a}"));
                    self.drop_conn();
                    match self.servers.get(&a).cloned() {
                        Some(spec) => {
                            let conn = ServerConnection::new(Arc::clone(&spec.tls)).unwrap();
                            self.conn = Some(ServerEnd {
                                addr: a,
                                link: Link::new(conn, 1 << 20),
                                spec,
                                verdict: None,
                                received: Vec::new(),
                                error: None,
                            });
                            self.core.handle(now, Event::Connected);
                        }
                        None => self
                            .core
                            .handle(now, Event::TransportFailed("connect: refused".into())),
                    }
                }
                Action::Close { last } => {
                    self.log.push("close".into());
                    if let Some(c) = self.conn.as_mut() {
                        c.feed(&last);
                    }
                    self.drop_conn();
                }
                Action::CtlAnswer { .. } => {}
                Action::Up(a) => self.log.push(format!("up {a}")),
                Action::Exit => {
                    self.log.push("exit".into());
                    self.exited = true;
                }
            }
        }
        if let Some(c) = self.conn.as_mut().filter(|_| self.server_reads) {
            let mut bytes = Vec::new();
            self.core.poll_transmit(now, &mut bytes);
            if !bytes.is_empty() {
                moved = true;
                c.feed(&bytes);
            }
        }
        if let Some(c) = self.conn.as_mut() {
            let mut bytes = Vec::new();
            let _ = c.link.poll_transmit(&mut bytes);
            if !bytes.is_empty() {
                moved = true;
                self.core.handle(now, Event::Ciphertext(&bytes));
            }
        }
        while let Some(mail) = self.sink.try_next() {
            moved = true;
            self.core.handle(now, Event::Completed(mail));
        }
        moved
    }

    fn drop_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            self.closed.push(c);
        }
    }

    /// Time passes (one loop turn at the end of it).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle(self.now, Event::Tick);
        self.settle();
    }

    /// Waits in virtual time for the core's next deadline.
    pub fn until_next_timeout(&mut self) {
        let at = self.core.poll_timeout().expect("a deadline");
        self.advance(at.saturating_duration_since(self.now));
    }

    /// The server sends `frame` (no `\n`); returns what it received since.
    pub fn request(&mut self, frame: &str) -> Vec<Vec<u8>> {
        let before = self.conn.as_ref().map_or(0, |c| c.received.len());
        let c = self.conn.as_mut().expect("connected");
        c.link
            .queue_frame(format!("{frame}\n").into_bytes())
            .unwrap();
        self.settle();
        self.conn
            .as_ref()
            .map_or_else(Vec::new, |c| c.received[before..].to_vec())
    }

    /// Delivers one held read answer.
    pub fn release(&mut self) -> bool {
        let mail = self.sink.held.lock().unwrap().pop_front();
        match mail {
            Some(m) => {
                self.core.handle(self.now, Event::Completed(m));
                self.settle();
                true
            }
            None => false,
        }
    }
}

fn text(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

#[test]
fn init_is_accepted_and_requests_are_answered_on_the_link() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    assert_eq!(
        p.log,
        [
            "resolve config.pair.test:8443",
            "connect 127.0.0.1:8443",
            "up 127.0.0.1:8443"
        ]
    );
    let c = p.conn.as_ref().unwrap();
    assert!(
        matches!(c.verdict, Some(Verdict::Accept { .. })),
        "{:?}",
        c.verdict
    );
    let answers = text(&p.request(r#"{"id":1,"method":"ping"}"#));
    assert_eq!(
        answers,
        [r#"{"id":1,"resp":"success","retcode":2,"message":"Normal termination"}"#]
    );
    // Bad input: a clear error, and the next request is served.
    let answers = text(&p.request("not json"));
    assert!(answers[0].contains("\"retcode\":3020"), "{answers:?}");
    let answers = text(&p.request(r#"{"id":"x","method":"nosuch.thing"}"#));
    assert!(answers[0].contains("\"retcode\":3022"), "{answers:?}");
    let answers = text(&p.request(r#"{"id":2,"method":"agent.info"}"#));
    assert!(answers[0].contains("\"host_id\":\"5d0f7c1e-8a41-4b8e-9f8a-2c7b3e6d1a90\""));
}

#[test]
fn a_server_with_a_certificate_from_another_ca_is_refused_and_told_why() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443", "127.0.0.2:8443"]);
    p.serve("127.0.0.1:8443", &Pki::foreign_server(), InitPolicy::Accept);
    p.serve("127.0.0.2:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    assert_eq!(
        p.log,
        [
            "resolve config.pair.test:8443",
            "connect 127.0.0.1:8443",
            "close",
            "connect 127.0.0.2:8443",
            "up 127.0.0.2:8443"
        ]
    );
    let refused = &p.closed[0];
    assert!(refused.verdict.is_none(), "no init sent to it");
    let why = refused.error.as_deref().unwrap_or_default();
    assert!(why.contains("UnknownCA") || why.contains("alert"), "{why}");
}

#[test]
fn redirects_are_followed_and_a_loop_backs_off_after_max_redirects() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve(
        "127.0.0.1:8443",
        &pki.server,
        InitPolicy::Redirect("127.0.0.3:9000".into()),
    );
    p.serve("127.0.0.3:9000", &pki.server, InitPolicy::Accept);
    p.settle();
    assert_eq!(
        &p.log[1..],
        [
            "connect 127.0.0.1:8443",
            "close",
            "connect 127.0.0.3:9000",
            "up 127.0.0.3:9000"
        ]
    );
    // A server that redirects to itself: 1 init + 3 redirects followed,
    // then a backoff (max_redirects = 3), then a new round.
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve(
        "127.0.0.1:8443",
        &pki.server,
        InitPolicy::Redirect("127.0.0.1:8443".into()),
    );
    p.settle();
    let connects = p.log.iter().filter(|l| l.starts_with("connect")).count();
    assert_eq!(connects, 4, "{:?}", p.log);
    assert_eq!(p.core.session().phase(), super::session::Phase::Backoff);
    p.until_next_timeout();
    assert!(
        p.log.iter().filter(|l| l.starts_with("resolve")).count() == 2,
        "resolves again after the backoff: {:?}",
        p.log
    );
}

#[test]
fn a_silent_server_is_pinged_then_left_after_three_heartbeats() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    p.advance(Duration::from_secs(30));
    let pings = text(&p.conn.as_ref().unwrap().received);
    assert_eq!(pings, [r#"{"id":"hb-1","method":"ping"}"#]);
    // The server never answers: 90 s of silence end the session.
    let connects = |p: &Pair| p.log.iter().filter(|l| l.starts_with("connect")).count();
    p.advance(Duration::from_secs(30));
    p.advance(Duration::from_secs(29));
    assert_eq!(connects(&p), 1, "still up after 89 s: {:?}", p.log);
    let pings = text(&p.conn.as_ref().unwrap().received);
    assert_eq!(pings.len(), 2, "pinged each heartbeat: {pings:?}");
    p.advance(Duration::from_secs(1));
    assert_eq!(connects(&p), 2, "{:?}", p.log);
    let tail: Vec<&str> = p.log.iter().rev().take(4).map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "up 127.0.0.1:8443",
            "connect 127.0.0.1:8443",
            "resolve config.pair.test:8443",
            "close"
        ],
        "{:?}",
        p.log
    );
    assert!(
        p.conn.as_ref().unwrap().received.is_empty(),
        "a new connection"
    );
}

#[test]
fn an_answer_for_a_connection_that_is_gone_is_not_sent_on_the_next() {
    let pki = Pki::new();
    let id = crate::core::tasks::new_task_id();
    let mut p = Pair::with(&pki, &["127.0.0.1:8443"], |dir| {
        let frame =
            crate::core::tasks::done_frame(&id, 2, "", Some("{\"stdout\":\"x\"}".into()), 1 << 20);
        taskfiles::write_result(dir, &id, &frame).unwrap();
    });
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    // The result is pushed after init; acknowledge it later.
    let pushed = text(&p.conn.as_ref().unwrap().received);
    assert!(
        pushed[0].contains("task.done") && pushed[0].contains(&id),
        "{pushed:?}"
    );
    // task.status of a stored result is answered once it is read back,
    // off the loop; hold that read and drop the connection meanwhile.
    p.sink
        .hold_reads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let now = p.request(&format!(
        r#"{{"id":9,"method":"task.status","task":"{id}"}}"#
    ));
    assert!(now.is_empty(), "answered later: {:?}", text(&now));
    p.core.handle(p.now, Event::TransportFailed("reset".into()));
    p.settle();
    assert!(p.release(), "the read was held");
    let c = p.conn.as_ref().unwrap();
    assert!(matches!(c.verdict, Some(Verdict::Accept { .. })));
    assert!(
        !text(&c.received).iter().any(|f| f.contains("\"id\":9")),
        "not on the new connection: {:?}",
        text(&c.received)
    );
    // On a connection that stays, the same request is answered.
    p.sink
        .hold_reads
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let answers = text(&p.request(&format!(
        r#"{{"id":10,"method":"task.status","task":"{id}"}}"#
    )));
    assert!(
        answers
            .iter()
            .any(|f| f.contains("\"id\":10") && f.contains("\"stdout\":\"x\"")),
        "{answers:?}"
    );
}

#[test]
fn stored_results_are_replayed_in_bounded_batches_one_at_a_time() {
    let pki = Pki::new();
    let mut ids = Vec::new();
    let mut p = Pair::with(&pki, &["127.0.0.1:8443"], |dir| {
        for i in 0..5 {
            let id = crate::core::tasks::new_task_id();
            let data = format!("{{\"stdout\":\"{}\"}}", "x".repeat(400_000));
            let frame = crate::core::tasks::done_frame(&id, 2, "", Some(data), 1 << 20);
            taskfiles::write_result(dir, &id, &frame).unwrap();
            // Distinct modification times: the replay goes oldest first.
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i);
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(format!("{id}.done")))
                .unwrap();
            f.set_modified(t).unwrap();
            ids.push(id);
        }
    });
    p.sink
        .hold_reads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    let loads = |p: &Pair| -> Vec<Vec<String>> {
        p.sink
            .ops
            .lock()
            .unwrap()
            .iter()
            .filter_map(|op| match op {
                TaskFileOp::Load { ids, .. } => Some(ids.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        loads(&p),
        [ids[0..2].to_vec()],
        "one batch of at most 1 MiB asked for"
    );
    assert!(p.conn.as_ref().unwrap().received.is_empty());
    let mut batches = 0;
    while p.release() {
        batches += 1;
    }
    assert_eq!(batches, 3);
    assert_eq!(
        loads(&p),
        [ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..5].to_vec()],
        "each batch asked for once the previous one was pushed"
    );
    let pushed: Vec<String> = text(&p.conn.as_ref().unwrap().received)
        .into_iter()
        .map(|f| {
            basicagent_proto::TaskDone::parse(f.as_bytes())
                .unwrap()
                .task
        })
        .collect();
    assert_eq!(pushed, ids, "every result, oldest first");
}

#[test]
fn stop_closes_with_close_notify_and_exits() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    p.core.handle(p.now, Event::Stop);
    p.settle();
    assert_eq!(&p.log[p.log.len() - 2..], ["close", "exit"], "{:?}", p.log);
    let server = p.closed.last().unwrap();
    assert!(server.link.peer_closed(), "the server read close_notify");
    assert!(p.core.poll_action().is_none());
    // An exited core takes no more events.
    p.core.handle(p.now, Event::Tick);
    assert!(p.core.poll_action().is_none());
}

#[test]
fn a_line_over_the_frame_limit_is_answered_3020_and_the_next_is_served() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    let long = format!(
        r#"{{"id":1,"method":"ping","pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let c = p.conn.as_mut().unwrap();
    c.link
        .queue_frame(format!("{long}\n").into_bytes())
        .unwrap();
    let answers = text(&p.request(r#"{"id":2,"method":"ping"}"#));
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers[0].starts_with(r#"{"id":null,"resp":"failed","retcode":3020"#),
        "{}",
        answers[0]
    );
    assert!(
        answers[1].starts_with(r#"{"id":2,"resp":"success""#),
        "{}",
        answers[1]
    );
}

#[test]
fn a_server_that_stops_reading_gets_3026_for_new_work_and_ping_still_answers() {
    let pki = Pki::new();
    let id = crate::core::tasks::new_task_id();
    let mut p = Pair::with(&pki, &["127.0.0.1:8443"], |dir| {
        let data = format!("{{\"stdout\":\"{}\"}}", "y".repeat(900_000));
        let frame = crate::core::tasks::done_frame(&id, 2, "", Some(data), 1 << 20);
        taskfiles::write_result(dir, &id, &frame).unwrap();
    });
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    p.server_reads = false;
    // Asked while the queue is empty; answered (read back) only later.
    p.sink
        .hold_reads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for n in 0..11 {
        p.request(&format!(
            r#"{{"id":{n},"method":"task.status","task":"{id}"}}"#
        ));
    }
    p.sink
        .hold_reads
        .store(false, std::sync::atomic::Ordering::Relaxed);
    while p.release() {}
    assert!(
        p.core.queued() >= super::answer_bound(1 << 20),
        "{}",
        p.core.queued()
    );
    p.request(r#"{"id":"busy","method":"agent.info"}"#);
    p.request(r#"{"id":"alive","method":"ping"}"#);
    p.server_reads = true;
    p.settle();
    let got = text(&p.conn.as_ref().unwrap().received);
    let find = |id: &str| {
        got.iter()
            .find(|f| f.starts_with(&format!("{{\"id\":{id},")))
            .cloned()
            .unwrap_or_default()
    };
    let busy = find("\"busy\"");
    assert!(
        busy.contains("\"retcode\":3026") && busy.contains("wait for the server to read them"),
        "{busy}"
    );
    assert!(
        find("\"alive\"").contains("\"retcode\":2"),
        "ping is served"
    );
    assert!(
        find("0").contains("\"retcode\":2"),
        "the first answers went out whole"
    );
    let dropped = find("10");
    assert!(
        dropped.contains("\"retcode\":3026") && dropped.contains("was dropped"),
        "an answer completing past the bound is replaced: {}",
        &dropped[..dropped.len().min(200)]
    );
    // Reading again: new work is served.
    let answers = text(&p.request(r#"{"id":"after","method":"agent.info"}"#));
    assert!(answers[0].contains("\"retcode\":2"), "{answers:?}");
}

/// The workspace's debug build, where the collectors' `.so` files are.
fn built_plugins() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    dir.join("libgetinfo_kernel.so").exists().then_some(dir)
}

#[test]
fn a_real_plugin_answers_through_the_whole_core() {
    let Some(dir) = built_plugins() else {
        eprintln!("no target/debug/libgetinfo_kernel.so: run cargo build --workspace first");
        return;
    };
    let pki = Pki::new();
    let mut p = Pair::with_plugins(&pki, &["127.0.0.1:8443"], dir);
    p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
    p.settle();
    let answers = text(&p.request(r#"{"id":"k","method":"getinfo.kernel"}"#));
    assert_eq!(answers.len(), 1, "{answers:?}");
    let r = basicagent_proto::Response::parse(answers[0].as_bytes()).unwrap();
    assert!(r.retcode.is_success(), "{}", answers[0]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        r.data.unwrap().get().contains(release.trim()),
        "the kernel's release in {}",
        answers[0]
    );
    assert_eq!(
        p.core.dispatcher().in_flight(),
        0,
        "completed inside call, booked at once"
    );
    // Pipelined: every request answered, one answer each.
    let frames: String = (0..50)
        .map(|i| format!("{{\"id\":{i},\"method\":\"getinfo.kernel\"}}\n"))
        .collect();
    let c = p.conn.as_mut().unwrap();
    c.link.queue_frame(frames.into_bytes()).unwrap();
    let before = c.received.len();
    p.settle();
    let got = &p.conn.as_ref().unwrap().received[before..];
    assert_eq!(got.len(), 50);
    assert!(text(got).iter().all(|f| f.contains("\"retcode\":2")));
}

/// A TLS record full of pipelined requests to a plugin that completes
/// inside `call` is served one request after the other: the completion
/// of one does not dispatch the next from inside itself. Before, each
/// request went one level deeper (deliver, the session's actions,
/// dispatch, the mail, deliver, ...), about 400 levels for this record;
/// in a debug build that overflows the small stack this runs on.
#[test]
fn a_record_of_pipelined_plugin_calls_is_served_without_recursion() {
    let Some(dir) = built_plugins() else {
        eprintln!("no target/debug/libgetinfo_kernel.so: run cargo build --workspace first");
        return;
    };
    let served = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            let pki = Pki::new();
            let mut p = Pair::with_plugins(&pki, &["127.0.0.1:8443"], dir);
            p.serve("127.0.0.1:8443", &pki.server, InitPolicy::Accept);
            p.settle();
            let frames: String = (0..400)
                .map(|i| format!("{{\"id\":{i},\"method\":\"getinfo.kernel\"}}\n"))
                .collect();
            assert!(frames.len() < 16 << 10, "one TLS record");
            let c = p.conn.as_mut().unwrap();
            c.link.queue_frame(frames.into_bytes()).unwrap();
            let before = c.received.len();
            p.settle();
            let got = text(&p.conn.as_ref().unwrap().received[before..]);
            let ids: Vec<String> = got
                .iter()
                .map(|f| {
                    let r = basicagent_proto::Response::parse(f.as_bytes()).unwrap();
                    assert!(r.retcode.is_success(), "{f}");
                    r.id.unwrap().get().to_owned()
                })
                .collect();
            ids
        })
        .unwrap()
        .join()
        .expect("served on a 512 KiB stack");
    let want: Vec<String> = (0..400).map(|i| i.to_string()).collect();
    assert_eq!(served, want, "every request answered once, in order");
}

#[test]
fn a_rejected_init_backs_off_and_a_control_request_is_answered_meanwhile() {
    let pki = Pki::new();
    let mut p = Pair::new(&pki, &["127.0.0.1:8443"]);
    p.serve(
        "127.0.0.1:8443",
        &pki.server,
        InitPolicy::Reject("not welcome".into()),
    );
    p.settle();
    assert_eq!(p.core.session().phase(), super::session::Phase::Backoff);
    assert!(matches!(
        p.closed.last().and_then(|c| c.verdict.as_ref()),
        Some(Verdict::Reject { .. })
    ));
    // The local control socket is served whatever the upstream does.
    p.core.handle(
        p.now,
        Event::CtlRequest {
            conn: 3,
            frame: br#"{"id":1,"method":"ping"}"#.to_vec(),
        },
    );
    match p.core.poll_action() {
        Some(Action::CtlAnswer { conn: 3, frame }) => {
            assert!(frame.starts_with(br#"{"id":1,"resp":"success""#))
        }
        other => panic!("{other:?}"),
    }
}
