//! The real `BasicAgent` daemon as a child process: its config and hosts
//! file written into a folder of its own, its log file kept for failure
//! messages. Killed on drop.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::{bin, bin_dir};
use crate::net::nxdomain_server;
use crate::pki::{Pki, NAME};
use crate::wait::wait_for;

/// The daemon binary of the workspace build.
pub fn agent_bin() -> PathBuf {
    bin("BasicAgent")
}

/// How the agent resolves the server name beyond its hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dns {
    /// `server.dns = false`: the hosts file only.
    Off,
    /// `nameservers = [a local server answering NXDOMAIN]`: the DNS step
    /// runs and fails quickly, nothing leaves the machine. The caller may
    /// still add `dns = false` in `server_extra`.
    Nxdomain,
}

/// An agent configuration for one test; [`AgentConfig::write`] makes the
/// files.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub port: u16,
    pub ca: PathBuf,
    /// The addresses [`NAME`] resolves to in the private hosts file.
    pub server_ips: Vec<String>,
    /// `server.name` (absent: the daemon's default, [`NAME`]).
    pub name: Option<String>,
    pub dns: Dns,
    /// `agent.plugin_dir` (absent: the daemon's default).
    pub plugin_dir: Option<PathBuf>,
    /// A control socket in the agent's own folder (never /run/basicagent).
    pub private_ctl: bool,
    pub host_id: Option<String>,
    /// Lines appended to `[server]` and `[agent]`.
    pub server_extra: String,
    pub agent_extra: String,
}

impl AgentConfig {
    /// Port, the Pki's CA, [`NAME`] → `server_ips`, DNS off, the built
    /// plugins, a private control socket.
    pub fn new(pki: &Pki, port: u16, server_ips: &[&str]) -> AgentConfig {
        AgentConfig {
            port,
            ca: pki.path("ca.pem"),
            server_ips: server_ips.iter().map(|s| (*s).to_owned()).collect(),
            name: None,
            dns: Dns::Off,
            plugin_dir: Some(bin_dir()),
            private_ctl: true,
            host_id: None,
            server_extra: String::new(),
            agent_extra: String::new(),
        }
    }

    /// Writes `dir/hosts` and `dir/agent.toml` (state in `dir/state`);
    /// returns the config's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let hosts = dir.join("hosts");
        let hosts_text: String = self
            .server_ips
            .iter()
            .map(|ip| format!("{ip} {NAME}\n"))
            .collect();
        write(&hosts, &format!("# test hosts\n{hosts_text}"));
        let mut c = String::from("[server]\n");
        if let Some(name) = &self.name {
            let _ = writeln!(c, "name = \"{name}\"");
        }
        let _ = writeln!(c, "port = {}", self.port);
        let _ = writeln!(c, "ca = \"{}\"", self.ca.display());
        let _ = writeln!(c, "hosts_file = \"{}\"", hosts.display());
        match self.dns {
            Dns::Off => c.push_str("dns = false\n"),
            Dns::Nxdomain => {
                let _ = writeln!(c, "nameservers = [\"{}\"]", nxdomain_server());
            }
        }
        c.push_str("connect_timeout = 2\nhandshake_timeout = 3\n");
        let _ = writeln!(c, "{}", self.server_extra);
        c.push_str("[agent]\n");
        if let Some(id) = &self.host_id {
            let _ = writeln!(c, "host_id = \"{id}\"");
        }
        let _ = writeln!(c, "state_dir = \"{}\"", dir.join("state").display());
        if let Some(p) = &self.plugin_dir {
            let _ = writeln!(c, "plugin_dir = \"{}\"", p.display());
        }
        if self.private_ctl {
            let _ = writeln!(c, "ctl_socket = \"{}\"", dir.join("run/ctl.sock").display());
        }
        let _ = writeln!(c, "{}", self.agent_extra);
        let path = dir.join("agent.toml");
        write(&path, &c);
        path
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A daemon the test started in the foreground (its child), in a folder
/// of its own: `agent.toml`, `hosts`, `agent.log`, `state/`, `run/`.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Writes the config (DNS through a local NXDOMAIN server, the built
    /// plugins, a private control socket; `server_extra` and
    /// `agent_extra` appended to their sections) and the hosts file
    /// ([`NAME`] → each of `hosts`), then starts the daemon at log level
    /// `debug` with `args`.
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
        let mut config = AgentConfig::new(pki, port, hosts);
        config.dns = Dns::Nxdomain;
        config.server_extra = server_extra.to_owned();
        config.agent_extra = agent_extra.to_owned();
        Agent::from_config(&config)
    }

    /// Writes `config` into a fresh folder; starts nothing.
    pub fn from_config(config: &AgentConfig) -> Agent {
        let dir = tempfile::tempdir().expect("a temporary folder");
        config.write(dir.path());
        Agent { child: None, dir }
    }

    /// [`Agent::configure`], then the daemon in the foreground (`-f`) at
    /// its default log level with stdout and stderr discarded (its log
    /// file stays).
    pub fn start_quiet(config: &AgentConfig) -> Agent {
        let mut agent = Agent::from_config(config);
        let mut cmd = Command::new(agent_bin());
        cmd.arg("-c")
            .arg(agent.path("agent.toml"))
            .arg("-L")
            .arg(agent.path("agent.log"))
            .arg("-f");
        agent.spawn_with_stderr(cmd, Stdio::null());
        agent
    }

    /// Starts the daemon at log level `debug` with `args`.
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
        let mut cmd = Command::new(agent_bin());
        cmd.args(self.args(level, args));
        self.spawn_command(cmd);
    }

    /// Starts `cmd` as the daemon (a wrapper that ends by exec'ing it);
    /// stdout is discarded, stderr piped (a test may read it).
    pub fn spawn_command(&mut self, cmd: Command) {
        self.spawn_with_stderr(cmd, Stdio::piped());
    }

    /// [`Agent::spawn_command`] with stderr going to `stderr`.
    pub fn spawn_with_stderr(&mut self, mut cmd: Command, stderr: Stdio) {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        self.child = Some(child);
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `FILE` in the agent's folder.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The daemon's log file so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Waits up to `limit` for `needle` in the log.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        wait_for(&format!("{needle:?} in the agent's log"), limit, || {
            self.log().contains(needle).then_some(())
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("the agent was started").id() as i32
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        assert!(crate::net::kill(self.pid(), sig), "kill {}", self.pid());
    }

    /// Waits for the daemon to exit; returns its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("the agent was started");
        let status = wait_for("the agent to exit", limit, || {
            child.try_wait().ok().flatten()
        });
        status.code()
    }

    /// Task results the agent still holds (not acknowledged yet).
    pub fn unacked(&self) -> usize {
        std::fs::read_dir(self.path("state/tasks"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".done"))
                    .count()
            })
            .unwrap_or(0)
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

/// Whether a process whose command line matches `pattern` runs (`pgrep -f`).
pub fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
