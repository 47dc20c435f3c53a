//! The daemon's configuration file (`agent.toml`): parse it into typed
//! values with their defaults and validate it once, at start-up.
//!
//! Key design decision: every key is optional, but an unknown key is an
//! error naming it (`deny_unknown_fields`), so a typo never silently falls
//! back to a default. Validation errors name the file and the key.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::hostid;

/// Where the daemon looks when no `-c` is given.
pub const DEFAULT_PATH: &str = "/etc/basicagent/agent.toml";

/// Port used for a nameserver entry written without one.
pub const DNS_PORT: u16 = 53;

/// The heartbeat range, for `agent.heartbeat` (an error outside it) and
/// the server's `heartbeat` in the init reply (clamped into it, logged).
pub const HEARTBEAT_MIN: Duration = Duration::from_secs(1);
/// One day.
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest `server.connect_timeout` and `server.handshake_timeout`: one hour.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Longest `agent.task_retention`: ten years.
pub const RETENTION_MAX: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Largest `server.max_frame`: 256 MiB.
pub const MAX_FRAME_MAX: usize = 256 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where and how to connect.
    pub server: ServerConfig,
    /// `[agent]`: identity, plugins and limits of this host.
    pub agent: AgentConfig,
    /// `[plugins]`: per-call deadlines and quarantine.
    pub plugins: crate::quarantine::PluginsConfig,
    /// `[audit]`: the audit trail of executed commands.
    pub audit: AuditConfig,
}

/// `audit.commands`: the command text in the log, or only its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditCommands {
    #[default]
    Full,
    Hash,
}

/// `audit.getinfo`: whether `getinfo.*` calls are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditGetinfo {
    #[default]
    Off,
    On,
}

/// `audit.fsync`: when the log is flushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// After every line, before its answer goes out.
    Always,
    /// Once per batch of lines the writer found waiting, before their
    /// answers (the same guarantee per answer, one fsync for many).
    #[default]
    Batch,
    /// Never (the kernel writes back when it likes).
    Never,
}

/// `audit.on_failure`: what new commands get while the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOnFailure {
    /// Run them (the failure is logged and counted).
    #[default]
    Continue,
    /// Answer them `3026 Busy` until a line is written again.
    Refuse,
}

/// The `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Log off entirely (default on).
    pub enabled: bool,
    /// The log file; default `agent.state_dir/audit.log`.
    pub path: Option<PathBuf>,
    pub commands: AuditCommands,
    pub getinfo: AuditGetinfo,
    pub fsync: AuditFsync,
    /// Rotate before a line would take the file past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.KEEP`).
    pub keep: u32,
    pub on_failure: AuditOnFailure,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            path: None,
            commands: AuditCommands::Full,
            getinfo: AuditGetinfo::Off,
            fsync: AuditFsync::Batch,
            max_bytes: 64 * 1024 * 1024,
            keep: 10,
            on_failure: AuditOnFailure::Continue,
        }
    }
}

impl Config {
    /// The audit log's path (`audit.path`, else `state_dir/audit.log`).
    pub fn audit_path(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.agent.state_dir.join("audit.log"))
    }
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Server name: resolved via the hosts file then DNS; also the TLS name.
    pub name: String,
    /// TCP port of the server.
    pub port: u16,
    /// Trust anchors (PEM) for the server certificate.
    pub ca: PathBuf,
    /// Client certificate (PEM) for mutual TLS; set together with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM); set together with `cert`.
    pub key: Option<PathBuf>,
    /// Time allowed for one TCP connect, per address.
    #[serde(deserialize_with = "de_seconds")]
    pub connect_timeout: Duration,
    /// Time allowed for the TLS handshake plus the init exchange.
    #[serde(deserialize_with = "de_seconds")]
    pub handshake_timeout: Duration,
    /// Redirects followed in a row before the attempt counts as failed.
    pub max_redirects: u32,
    /// File whose lines for `name` are used before DNS.
    pub hosts_file: PathBuf,
    /// DNS servers; empty means the system's (`/etc/resolv.conf`).
    #[serde(deserialize_with = "de_nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// Ask DNS after the hosts file (default true); false: the hosts file
    /// only, no query ever leaves the machine.
    pub dns: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "config.cargo.com".to_owned(),
            port: 8443,
            ca: PathBuf::from("/etc/basicagent/ca.pem"),
            cert: None,
            key: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_redirects: 3,
            hosts_file: PathBuf::from("/etc/hosts"),
            nameservers: Vec::new(),
            max_frame: 16 * 1024 * 1024,
            dns: true,
        }
    }
}

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Fixed host id (a UUID, stored lowercased); default: derived, see `hostid`.
    pub host_id: Option<String>,
    /// Plugin directory; default: the search order of the architecture page.
    pub plugin_dir: Option<PathBuf>,
    /// Directory for state kept across restarts (the generated host id).
    pub state_dir: PathBuf,
    /// Heartbeat interval (at least one second).
    #[serde(deserialize_with = "de_seconds")]
    pub heartbeat: Duration,
    /// Requests executing at once (at least 1).
    pub max_concurrent: usize,
    /// Default bytes kept per stream per command.
    pub max_output: u64,
    /// Largest per-request `max_output` a request may ask for.
    pub max_output_limit: u64,
    /// Asynchronous tasks kept at once (running, and results not yet
    /// acknowledged); past it `async.bash` answers `3026 Busy`.
    pub max_tasks: usize,
    /// Bytes of unacknowledged task results kept in the outbox.
    pub max_outbox_bytes: u64,
    /// Unacknowledged results older than this are dropped (logged) when
    /// room is needed.
    #[serde(deserialize_with = "de_seconds")]
    pub task_retention: Duration,
    /// Public keys whose plugin signatures are trusted: absolute paths of
    /// `.pub` files (opened by the file-trust rule) or inline keys
    /// (`"ed25519 BASE64"`). Read at start; a SIGHUP does not change them.
    pub trusted_keys: Vec<String>,
    /// Refuse plugins without a `.sig` by a trusted key (a `.sig` that
    /// exists must verify either way).
    pub require_signature: bool,
    /// Schedules kept at once (`schedule.add` past it answers 3021).
    pub max_schedules: usize,
    /// Shortest interval a schedule may fire at, seconds (at least 1).
    pub schedule_min_interval: u64,
    /// Unacknowledged results kept per schedule (oldest dropped past it).
    pub schedule_keep_results: usize,
    /// The root-only control socket `BasicAgentCtl` talks to (its
    /// directory is made 0700); empty: none.
    pub ctl_socket: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            host_id: None,
            plugin_dir: None,
            state_dir: PathBuf::from("/var/lib/basicagent"),
            heartbeat: Duration::from_secs(30),
            max_concurrent: 64,
            max_output: 1024 * 1024,
            max_output_limit: 16 * 1024 * 1024,
            max_tasks: 1000,
            max_outbox_bytes: 64 * 1024 * 1024,
            task_retention: Duration::from_secs(7 * 24 * 3600),
            trusted_keys: Vec::new(),
            require_signature: false,
            max_schedules: 64,
            schedule_min_interval: 1,
            schedule_keep_results: 100,
            ctl_socket: PathBuf::from("/run/basicagent/ctl.sock"),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (including: an explicitly named file is missing).
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Not TOML, a value of the wrong type, or an unknown key (named in the message).
    #[error("{}: {source}", origin(.path))]
    Parse {
        /// The file, `None` for [`Config::from_toml_str`].
        path: Option<PathBuf>,
        /// The parser's error; its message names the key and the line.
        #[source]
        source: toml::de::Error,
    },
    /// A well-typed value that is out of range or inconsistent.
    #[error("{}: `{key}`: {reason}", origin(.path))]
    Invalid {
        /// The file, `None` for [`Config::from_toml_str`].
        path: Option<PathBuf>,
        /// The key, as `table.key`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "configuration".to_owned(),
    }
}

impl Config {
    /// Loads the configuration.
    ///
    /// `None`: [`DEFAULT_PATH`] if it exists, else all defaults.
    /// `Some(path)`: that file, which must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, must_exist) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !must_exist && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::parse(&text, Some(path))
    }

    /// Parses and validates configuration text (errors carry no path).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.map(Path::to_owned),
            source,
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.map(Path::to_owned),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// Checks ranges and consistency; normalizes `agent.host_id` to lowercase.
    fn validate(&mut self) -> Result<(), (&'static str, String)> {
        let s = &self.server;
        if s.name.trim().is_empty() {
            return Err(("server.name", "must not be empty".into()));
        }
        if s.port == 0 {
            return Err(("server.port", "must be between 1 and 65535".into()));
        }
        match (&s.cert, &s.key) {
            (Some(_), None) => {
                return Err((
                    "server.key",
                    "`server.cert` is set but `server.key` is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "server.cert",
                    "`server.key` is set but `server.cert` is not".into(),
                ))
            }
            _ => {}
        }
        for (key, value) in [
            ("server.connect_timeout", s.connect_timeout),
            ("server.handshake_timeout", s.handshake_timeout),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than 0".into()));
            }
            if value > TIMEOUT_MAX {
                return Err((key, too_long(value, TIMEOUT_MAX)));
            }
        }
        if !(1024..=MAX_FRAME_MAX).contains(&s.max_frame) {
            return Err((
                "server.max_frame",
                format!("{} is outside 1024..={MAX_FRAME_MAX} bytes", s.max_frame),
            ));
        }
        self.plugins.validate()?;
        let a = &mut self.agent;
        if !a.ctl_socket.as_os_str().is_empty() && !a.ctl_socket.is_absolute() {
            return Err((
                "agent.ctl_socket",
                "must be an absolute path (or empty: none)".into(),
            ));
        }
        if let Some(id) = &a.host_id {
            match hostid::parse_uuid(id) {
                Some(norm) => a.host_id = Some(norm),
                None => {
                    return Err((
                        "agent.host_id",
                        format!("{id:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
                    ))
                }
            }
        }
        if a.heartbeat < HEARTBEAT_MIN {
            return Err(("agent.heartbeat", "must be at least 1 second".into()));
        }
        if a.heartbeat > HEARTBEAT_MAX {
            return Err(("agent.heartbeat", too_long(a.heartbeat, HEARTBEAT_MAX)));
        }
        if a.task_retention > RETENTION_MAX {
            return Err((
                "agent.task_retention",
                too_long(a.task_retention, RETENTION_MAX),
            ));
        }
        if a.schedule_min_interval == 0 {
            return Err((
                "agent.schedule_min_interval",
                "must be at least 1 second".into(),
            ));
        }
        if a.schedule_keep_results == 0 {
            return Err(("agent.schedule_keep_results", "must be at least 1".into()));
        }
        if a.max_concurrent == 0 {
            return Err(("agent.max_concurrent", "must be at least 1".into()));
        }
        if a.require_signature && a.trusted_keys.is_empty() {
            return Err((
                "agent.require_signature",
                "is true but agent.trusted_keys is empty: no plugin could load".into(),
            ));
        }
        for entry in &a.trusted_keys {
            if !entry.starts_with('/') {
                if let Err(reason) = basicagent_abi::signature::PublicKey::parse(entry) {
                    return Err((
                        "agent.trusted_keys",
                        format!("{entry:?}: {reason} (an absolute path to a .pub file, or \"ed25519 BASE64\")"),
                    ));
                }
            }
        }
        let au = &self.audit;
        if au.path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(("audit.path", "must be an absolute path".into()));
        }
        if au.max_bytes < 4096 {
            return Err(("audit.max_bytes", "must be at least 4096".into()));
        }
        if au.keep == 0 || au.keep > 1000 {
            return Err(("audit.keep", "must be between 1 and 1000".into()));
        }
        if a.max_output_limit < a.max_output {
            return Err((
                "agent.max_output_limit",
                format!(
                    "{} is less than agent.max_output ({})",
                    a.max_output_limit, a.max_output
                ),
            ));
        }
        Ok(())
    }

    /// The plugin signature policy: `trusted_keys` read (key files by the
    /// file-trust rule) and `require_signature`.
    pub fn signature_policy(
        &self,
    ) -> Result<basicagent_abi::signature::SignaturePolicy, ConfigError> {
        basicagent_abi::signature::SignaturePolicy::from_entries(
            &self.agent.trusted_keys,
            self.agent.require_signature,
        )
        .map_err(|e| ConfigError::Invalid {
            path: None,
            key: "agent.trusted_keys",
            reason: e.to_string(),
        })
    }

    /// The host settings handed to plugins, as a JSON object:
    /// `{"max_output":N,"max_output_limit":N,"max_concurrent":N,"max_frame":N}`
    /// (`max_frame` is `server.max_frame`, so `sync.bash` cuts its captures to fit).
    pub fn plugin_settings_json(&self) -> String {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        basicagent_proto::builtins::PluginSettings {
            max_output: self.agent.max_output,
            max_output_limit: self.agent.max_output_limit,
            max_concurrent: n(self.agent.max_concurrent),
            max_frame: n(self.server.max_frame),
        }
        .to_json()
    }
}

fn too_long(value: Duration, max: Duration) -> String {
    format!(
        "{} seconds is more than the maximum of {} seconds",
        value.as_secs_f64(),
        max.as_secs()
    )
}

/// Seconds as a TOML integer or float, into a `Duration`.
fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Seconds;
    impl Visitor<'_> for Seconds {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative number of seconds")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
    d.deserialize_any(Seconds)
}

/// Nameserver entries `"IP"`, `"IP:PORT"` or `"[IPv6]:PORT"`.
fn de_nameservers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let entries = Vec::<String>::deserialize(d)?;
    entries
        .iter()
        .map(|e| {
            parse_nameserver(e).ok_or_else(|| {
                de::Error::invalid_value(
                    de::Unexpected::Str(e),
                    &"\"IP\", \"IP:PORT\" or \"[IPv6]:PORT\"",
                )
            })
        })
        .collect()
}

/// Parses one nameserver entry; the port defaults to [`DNS_PORT`].
pub fn parse_nameserver(entry: &str) -> Option<SocketAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    if let Some(inner) = entry.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DNS_PORT));
    }
    entry.parse::<SocketAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_audit_table_parses_and_bad_values_name_the_key() {
        let c = Config::from_toml_str(
            "[agent]\nstate_dir = \"/s\"\n[audit]\ncommands = \"hash\"\ngetinfo = \"on\"\nfsync = \"always\"\nmax_bytes = 8192\nkeep = 2\non_failure = \"refuse\"\n",
        )
        .unwrap();
        assert_eq!(c.audit.commands, AuditCommands::Hash);
        assert_eq!(c.audit.getinfo, AuditGetinfo::On);
        assert_eq!(c.audit.fsync, AuditFsync::Always);
        assert_eq!(c.audit.on_failure, AuditOnFailure::Refuse);
        assert_eq!(c.audit_path(), PathBuf::from("/s/audit.log"));
        assert_eq!(Config::default().audit.fsync, AuditFsync::Batch);
        assert!(err("[audit]\nkeep = 0").contains("audit.keep"));
        assert!(err("[audit]\nmax_bytes = 10").contains("audit.max_bytes"));
        assert!(err("[audit]\npath = \"rel/audit.log\"").contains("audit.path"));
        assert!(err("[audit]\nfsync = \"sometimes\"").contains("fsync"));
        assert!(err("[audit]\ncommand = \"hash\"").contains("command"));
    }

    #[test]
    fn empty_is_all_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        let c = Config::default();
        assert_eq!(c.server.name, "config.cargo.com");
        assert_eq!(c.server.port, 8443);
        assert_eq!(c.server.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_frame, 16 << 20);
        assert_eq!(c.agent.heartbeat, Duration::from_secs(30));
        assert_eq!(c.agent.max_output, 1048576);
    }

    #[test]
    fn the_shipped_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), Config::default());
        // Uncommenting every `key = value` line gives the defaults too
        // (except the example-only cert/key/host_id/plugin_dir lines).
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .filter(|l| {
                !["cert", "key", "host_id", "plugin_dir"]
                    .iter()
                    .any(|k| l.starts_with(&format!("{k} =")))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Config::from_toml_str(&uncommented).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn signature_keys() {
        assert!(err("[agent]\nrequire_signature = true\n").contains("agent.require_signature"));
        let e = err("[agent]\ntrusted_keys = [\"not a key\"]\n");
        assert!(
            e.contains("agent.trusted_keys") && e.contains("not a key"),
            "{e}"
        );
        let key = "ed25519 aXlNdjLhGNXb3SahU1eWhUZMGpVraAV2QcJaHLQU3iM=";
        let c = Config::from_toml_str(&format!(
            "[agent]\nrequire_signature = true\ntrusted_keys = [\"{key}\"]\n"
        ))
        .unwrap();
        let policy = c.signature_policy().unwrap();
        assert!(policy.require);
        assert_eq!(policy.trusted.len(), 1);
        assert_eq!(policy.trusted[0].to_line(), format!("{key}\n"));
        // A key file that does not exist stops the start, naming it.
        let c =
            Config::from_toml_str("[agent]\ntrusted_keys = [\"/nonexistent/k.pub\"]\n").unwrap();
        let e = c.signature_policy().unwrap_err().to_string();
        assert!(e.contains("/nonexistent"), "{e}");
    }

    #[test]
    fn full_file() {
        let c = Config::from_toml_str(
            r#"
            [server]
            name = "agents.example.net"
            port = 9443
            ca = "/tmp/ca.pem"
            cert = "/tmp/a.pem"
            key = "/tmp/a.key"
            connect_timeout = 2
            handshake_timeout = 1.5
            max_redirects = 0
            hosts_file = "/tmp/hosts"
            nameservers = ["10.0.0.2", "10.0.0.3:5353", "::1", "[fe80::2]:54"]
            max_frame = 65536

            [agent]
            host_id = "EDD6C192-52CB-4133-A17A-E7D8AEC03DE7"
            plugin_dir = "/opt/p"
            state_dir = "/tmp/state"
            heartbeat = 5
            max_concurrent = 2
            max_output = 10
            max_output_limit = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.server.name, "agents.example.net");
        assert_eq!(c.server.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(c.server.cert.as_deref(), Some(Path::new("/tmp/a.pem")));
        assert_eq!(
            c.server.nameservers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "10.0.0.3:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "[fe80::2]:54".parse().unwrap(),
            ]
        );
        assert_eq!(
            c.agent.host_id.as_deref(),
            Some("edd6c192-52cb-4133-a17a-e7d8aec03de7")
        );
        assert_eq!(c.agent.max_concurrent, 2);
        assert_eq!(
            c.plugin_settings_json(),
            r#"{"max_output":10,"max_output_limit":10,"max_concurrent":2,"max_frame":65536}"#
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[server]\nnmae = \"x\"\n").contains("nmae"));
        assert!(err("[agent]\nheartbaet = 3\n").contains("heartbaet"));
        assert!(err("[srever]\n").contains("srever"));
        assert!(err("top = 1\n").contains("top"));
    }

    #[test]
    fn invalid_values_name_the_key() {
        assert!(err("[server]\ncert = \"/a\"\n").contains("server.key"));
        assert!(err("[server]\nkey = \"/a\"\n").contains("server.cert"));
        assert!(err("[server]\nport = 0\n").contains("server.port"));
        assert!(err("[server]\nport = 70000\n").contains("port"));
        assert!(err("[server]\nconnect_timeout = 0\n").contains("server.connect_timeout"));
        assert!(err("[server]\nconnect_timeout = -1\n").contains("connect_timeout"));
        assert!(err("[server]\nconnect_timeout = \"10s\"\n").contains("connect_timeout"));
        assert!(err("[server]\nnameservers = [\"dns.example\"]\n").contains("dns.example"));
        assert!(err("[agent]\nhost_id = \"web-01\"\n").contains("agent.host_id"));
        assert!(err("[agent]\nheartbeat = 0\n").contains("agent.heartbeat"));
        assert!(err("[agent]\nheartbeat = 0.5\n").contains("agent.heartbeat"));
        assert!(err("[agent]\nmax_concurrent = 0\n").contains("agent.max_concurrent"));
        assert!(err("[server]\nmax_frame = 1000\n").contains("server.max_frame"));
        assert!(err("[server]\nmax_frame = 1000000000000\n").contains("server.max_frame"));
        assert!(err("[agent]\nmax_output = 100\nmax_output_limit = 99\n")
            .contains("agent.max_output_limit"));
    }

    #[test]
    fn durations_past_their_range_are_refused_naming_the_key_and_the_maximum() {
        for (table, key, max) in [
            ("server", "connect_timeout", 3600u64),
            ("server", "handshake_timeout", 3600),
            ("agent", "heartbeat", 86400),
            ("agent", "task_retention", 3650 * 86400),
        ] {
            for value in ["1e19", "6148914691236517206", "4e9"] {
                let e = err(&format!("[{table}]\n{key} = {value}\n"));
                assert!(
                    e.contains(&format!("{table}.{key}")) && e.contains(&max.to_string()),
                    "{table}.{key} = {value}: {e}"
                );
            }
            // The maximum itself is accepted.
            Config::from_toml_str(&format!("[{table}]\n{key} = {max}\n")).unwrap();
        }
        // Beyond what a Duration holds, or not a number at all.
        for value in ["1e300", "inf", "nan", "-1e19", "18446744073709551615"] {
            let e = err(&format!("[server]\nconnect_timeout = {value}\n"));
            assert!(e.contains("connect_timeout"), "{value}: {e}");
        }
    }

    #[test]
    fn load_paths() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing)).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("nope.toml"));

        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[agent]\nheartbeat = 0\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml") && e.contains("agent.heartbeat"),
            "{e}"
        );

        std::fs::write(&file, "[server]\nport = 1\n").unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap().server.port, 1);
    }

    #[test]
    fn nameserver_forms() {
        assert_eq!(
            parse_nameserver("1.2.3.4"),
            Some("1.2.3.4:53".parse().unwrap())
        );
        assert_eq!(parse_nameserver("[::1]"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_nameserver("1.2.3.4:x"), None);
        assert_eq!(parse_nameserver(""), None);
    }
}
