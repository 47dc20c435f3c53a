//! The real `BasicAgentServer` as a child process on a loopback address:
//! its events file, admin socket, HTTP API, and log kept for failure
//! messages. Killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::bin;
use crate::net::{alive, free_addr};
use crate::pki::Pki;
use crate::wait::{wait_for, WAIT};

/// The server binary of the workspace build.
pub fn server_bin() -> PathBuf {
    bin("BasicAgentServer")
}

/// A running BasicAgentServer; killed on drop.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    /// The API's bound address (from the `listening` event), if it has one.
    pub api: Option<SocketAddr>,
    pub admin: PathBuf,
    pub events: PathBuf,
    /// Its folder: admin socket, events, `server.log` (its stderr).
    pub dir: tempfile::TempDir,
}

impl Server {
    /// `serve` on a fresh 127.0.0.N with the Pki's server certificate and
    /// `extra` flags; returns once the server logged `listening`.
    pub fn start(pki: &Pki, extra: &[&str]) -> Server {
        Server::start_with(pki, &pki.path("server.pem"), &pki.path("server.key"), extra)
    }

    /// Starts with another certificate and key.
    pub fn start_with(_pki: &Pki, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        Server::start_at(free_addr(), cert, key, extra)
    }

    /// Starts on `listen` (`IP:PORT`) with the Pki's `CERT.pem` and
    /// `CERT.key` (`server`, `wrongname`, `otherca`).
    pub fn serve(pki: &Pki, listen: &str, cert: &str, extra: &[&str]) -> Server {
        let listen: SocketAddr = listen
            .parse()
            .unwrap_or_else(|e| panic!("listen address {listen:?}: {e}"));
        let cert_pem = pki.path(&format!("{cert}.pem"));
        let cert_key = pki.path(&format!("{cert}.key"));
        Server::start_at(listen, &cert_pem, &cert_key, extra)
    }

    /// Starts on `listen`.
    pub fn start_at(listen: SocketAddr, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        Server::start_wrapped(&[], listen, cert, key, extra)
    }

    /// Starts on `listen` under `wrapper` (e.g. `["prlimit", "--nofile=64:64"]`; empty: none).
    /// The API listens on 127.0.0.1:0 unless `extra` names `--api`.
    pub fn start_wrapped(
        wrapper: &[&str],
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Server {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let admin = dir.path().join("admin.sock");
        let events = dir.path().join("events.jsonl");
        let log = dir.path().join("server.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(server_bin());
                c
            }
            None => Command::new(server_bin()),
        };
        let stderr =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
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
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", server_bin().display()));
        let mut server = Server {
            child,
            listen,
            api: None,
            admin,
            events,
            dir,
        };
        let listening = server.wait_event("listening", |_| true);
        server.api = listening["api"].as_str().and_then(|a| a.parse().ok());
        server
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Every event so far (lines that are not JSON are passed over).
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.events().iter().any(|e| e["event"] == name)
    }

    /// The `init` events so far.
    pub fn inits(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "init")
            .collect()
    }

    /// Waits (polling the file) for an event named `name` matching `pred`;
    /// panics with the events and the server's log after [`WAIT`] or when
    /// the server exited.
    pub fn wait_event(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pid = self.child.id() as i32;
        let found = wait_for(&format!("a {name} event"), WAIT, || {
            let hit = self
                .events()
                .into_iter()
                .find(|e| e["event"] == name && pred(e));
            match hit {
                Some(e) => Some(Some(e)),
                None if !alive(pid) => Some(None),
                None => None,
            }
        });
        found.unwrap_or_else(|| {
            panic!(
                "the server exited before a {name} event; events: {:#?}\nlog:\n{}",
                self.events(),
                self.log()
            )
        })
    }

    /// Runs an admin subcommand (`list`, `call`, ...) against this server.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", server_bin().display()))
    }

    fn admin_command(&self, args: &[&str]) -> Command {
        let (cmd, rest) = args.split_first().expect("an admin subcommand");
        let mut c = Command::new(server_bin());
        c.arg(cmd).arg("--admin").arg(&self.admin).args(rest);
        c
    }

    /// [`Server::admin`], its stdout as JSON lines.
    pub fn admin_lines(&self, args: &[&str]) -> Vec<Value> {
        stdout_lines(&self.admin(args))
    }

    /// Same, with `stdin` fed to the process.
    pub fn admin_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .admin_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", server_bin().display()));
        if let Some(mut input) = child.stdin.take() {
            // The command may exit before reading it all: not an error here.
            let _ = input.write_all(stdin);
        }
        child
            .wait_with_output()
            .expect("the admin command's output")
    }

    /// Starts an admin subcommand without waiting for it.
    pub fn admin_spawn(&self, args: &[&str]) -> Child {
        self.admin_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", server_bin().display()))
    }

    /// The connected agents (`list`), one JSON object each.
    pub fn list(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.admin(&["list"]).stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The connected agents' host ids.
    pub fn hosts(&self) -> Vec<String> {
        self.list()
            .iter()
            .filter_map(|a| a["host"].as_str().map(str::to_owned))
            .collect()
    }

    /// The first connected agent's host id, waiting for one to connect.
    pub fn wait_agent(&self, limit: Duration) -> String {
        wait_for("an agent to connect", limit, || {
            self.hosts().into_iter().next()
        })
    }

    /// `call --host HOST REQUEST` through the admin socket.
    pub fn call_raw(&self, host: &str, request: &str) -> Output {
        self.admin(&["call", "--host", host, "--timeout", "30", request])
    }

    /// [`Server::call_raw`], its answer parsed (panics with both streams
    /// and the server's log on anything else).
    pub fn call(&self, host: &str, request: &str) -> Value {
        let out = self.call_raw(host, request);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "call {request}: {e}: {text:?} {}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            )
        })
    }

    /// Sends a raw line to `host` and returns what came back (the null-id answer).
    pub fn send(&self, host: &str, raw: &[u8]) -> String {
        let out = self.admin_stdin(&["send", "--host", host, "-"], raw);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One HTTP request to the API: (status, body). `token`: the bearer token.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.api.expect("the server has no API"));
        let mut r = ureq::request(method, &url);
        if let Some(t) = token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        let answer = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        match answer {
            Ok(r) => (r.status(), r.into_string().expect("a text body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().expect("a text body")),
            Err(e) => panic!("{method} {url}: {e}\nserver log:\n{}", self.log()),
        }
    }

    /// Sends raw bytes to the API (a writer thread, errors ignored: the
    /// server may answer and close early) and returns the whole answer.
    pub fn raw_http(&self, bytes: Vec<u8>) -> String {
        let mut sock = TcpStream::connect(self.api.expect("the server has no API"))
            .expect("a connection to the API");
        sock.set_read_timeout(Some(WAIT)).expect("a read timeout");
        let mut writer = sock.try_clone().expect("a second handle");
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
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// POST /v1/call; returns the NDJSON lines.
    pub fn api_call(&self, body: &str) -> Vec<Value> {
        let (status, text) = self.http("POST", "/v1/call", Some(body), None);
        assert_eq!(status, 200, "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Kills the server and waits for it.
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

/// A command's stdout as JSON lines (panics on a line that is not JSON).
pub fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
