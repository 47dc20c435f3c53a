//! The `sync.bash` request and the host settings: parsing and validation
//! only, no I/O (every rule and message of protocol §6 lives here).

use std::time::Duration;

use basicagent_abi::ffi::CallId;
use basicagent_abi::retcode;
use serde_json::{Map, Value};

use crate::capture::Truncate;
use crate::cgroup::Limits;

/// Default and bounds of `timeout`, in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 120;
/// Smallest accepted `timeout`.
pub const MIN_TIMEOUT_S: u64 = 1;
/// Largest accepted `timeout` (one day).
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// Host settings for this plugin (`ba_host_api.config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Bytes kept per stream when the request names no `max_output`.
    pub max_output: usize,
    /// The largest `max_output` a request may ask for.
    pub max_output_limit: usize,
    /// Commands running at once; past it, `3026 Busy`.
    pub max_concurrent: usize,
    /// Time between SIGTERM and SIGKILL to the process group.
    pub kill_grace: Duration,
    /// The host's largest frame (`server.max_frame`, key `max_frame`):
    /// every answer, escaped and wrapped in its envelope, fits in it.
    pub max_frame: usize,
    /// How long resolving the user and group (NSS) and starting the
    /// child (up to `execve`) may take before the call is answered
    /// without running anything (key `start_timeout_ms`; also bounded by
    /// the request's `timeout`).
    pub start_timeout: Duration,
    /// Key `containment`: `"auto"` (a cgroup per command where the host
    /// allows, the default) or `"off"` (process group and subreaper).
    pub containment: bool,
    /// Limits a request gets when it names none (`None`: unlimited);
    /// keys `memory_max`, `pids_max`, `cpu_max`, `nice`.
    pub default_limits: Limits,
    pub default_nice: Option<i32>,
    /// The largest limits a request may ask for; keys `memory_max_limit`,
    /// `pids_max_limit`, `cpu_max_limit` (`None`: no ceiling).
    pub max_limits: Limits,
}

/// Default of `max_frame`: the host's default `server.max_frame`.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Smallest accepted `max_frame` (the host's own floor).
pub const MIN_MAX_FRAME: usize = 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_output: 1 << 20,
            max_output_limit: 16 << 20,
            max_concurrent: 64,
            kill_grace: Duration::from_millis(2000),
            max_frame: DEFAULT_MAX_FRAME,
            start_timeout: Duration::from_secs(30),
            containment: true,
            default_limits: Limits::default(),
            default_nice: None,
            max_limits: Limits::default(),
        }
    }
}

/// Why the host settings are refused (the plugin then declines to run).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("plugin config is not a JSON object")]
    NotObject,
    #[error("plugin config: {0} must be a non-negative integer")]
    NotInteger(&'static str),
    #[error("plugin config: {0} must be >= 1")]
    Zero(&'static str),
    #[error("plugin config: max_frame must be >= {MIN_MAX_FRAME}")]
    FrameTooSmall,
    #[error("plugin config: max_output ({max_output}) must be <= max_output_limit ({limit})")]
    OutputAboveLimit { max_output: usize, limit: usize },
    #[error("plugin config: containment must be \"auto\" or \"off\"")]
    Containment,
    #[error("plugin config: {0}")]
    Limit(ParamError),
}

impl Config {
    /// Parses the host's JSON settings; unknown keys are ignored.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_slice(json).map_err(|_| ConfigError::NotObject)?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotObject);
        };
        let mut config = Config::default();
        let get = |key: &'static str| -> Result<Option<u64>, ConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(ConfigError::NotInteger(key)),
            }
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = get("max_output")? {
            config.max_output = size(v);
        }
        if let Some(v) = get("max_output_limit")? {
            config.max_output_limit = size(v);
        }
        if let Some(v) = get("max_concurrent")? {
            if v == 0 {
                return Err(ConfigError::Zero("max_concurrent"));
            }
            config.max_concurrent = size(v);
        }
        if let Some(v) = get("kill_grace_ms")? {
            config.kill_grace = Duration::from_millis(v);
        }
        if let Some(v) = get("max_frame")? {
            if size(v) < MIN_MAX_FRAME {
                return Err(ConfigError::FrameTooSmall);
            }
            config.max_frame = size(v);
        }
        if let Some(v) = get("start_timeout_ms")? {
            if v == 0 {
                return Err(ConfigError::Zero("start_timeout_ms"));
            }
            config.start_timeout = Duration::from_millis(v);
        }
        match map.get("containment") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" => config.containment = true,
            Some(Value::String(s)) if s == "off" => config.containment = false,
            Some(_) => return Err(ConfigError::Containment),
        }
        let unbounded = Limits::default();
        let max = parse_limits(&map, "_limit", &unbounded).map_err(ConfigError::Limit)?;
        config.max_limits = max.0;
        let (defaults, nice) = parse_limits(&map, "", &max.0).map_err(ConfigError::Limit)?;
        config.default_limits = defaults;
        config.default_nice = nice;
        if config.max_output > config.max_output_limit {
            return Err(ConfigError::OutputAboveLimit {
                max_output: config.max_output,
                limit: config.max_output_limit,
            });
        }
        Ok(config)
    }
}

/// One validated `sync.bash` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Run as `/bin/bash -c cmd`.
    pub cmd: String,
    /// When the process group is stopped.
    pub timeout: Duration,
    /// User name (default `root`).
    pub user: String,
    /// Group name; `None`: the user's primary group.
    pub group: Option<String>,
    /// Absolute working directory; `None`: the user's home, else `/`.
    pub cwd: Option<String>,
    /// Added to (and overriding) the login-like environment, in order.
    pub env: Vec<(String, String)>,
    /// Bytes for the command's stdin; empty: `/dev/null`.
    pub stdin: Vec<u8>,
    /// Bytes kept per stream.
    pub max_output: usize,
    /// Length of the request's raw `id` (echoed in the answer's frame).
    pub id_len: usize,
    /// The cgroup limits (request, else the config's defaults).
    pub limits: Limits,
    /// Scheduling priority of the command (`setpriority`), -20..=19.
    pub nice: Option<i32>,
    /// Which bytes of stdout and stderr are kept past `max_output`.
    pub truncate: (Truncate, Truncate),
    /// Also answer the interleaved `transcript`.
    pub transcript: bool,
}

/// A request refused before anything runs (`3020` / `3021`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("request is not a JSON object")]
    NotObject,
    #[error("cmd must be a non-empty string")]
    Cmd,
    #[error("{0} must not contain NUL bytes")]
    Nul(&'static str),
    #[error("timeout must be an integer (seconds)")]
    TimeoutType,
    #[error("timeout must be >= {MIN_TIMEOUT_S}")]
    TimeoutTooSmall,
    #[error("timeout must be <= {MAX_TIMEOUT_S}")]
    TimeoutTooLarge,
    #[error("{0} must be a non-empty string")]
    Name(&'static str),
    #[error("cwd must be an absolute path")]
    Cwd,
    #[error("env must be an object of strings")]
    EnvType,
    #[error("env value of {0:?} must be a string")]
    EnvValue(String),
    #[error("env name {0:?} is invalid (empty, or contains '=' or NUL)")]
    EnvName(String),
    #[error("stdin must be a string")]
    Stdin,
    #[error("max_output must be a non-negative integer")]
    MaxOutputType,
    #[error("max_output must be <= {0}")]
    MaxOutputTooLarge(usize),
    #[error("peek must be a call id (an unsigned integer)")]
    Peek,
    #[error("{key} {why}")]
    Limit { key: String, why: String },
    #[error("transcript must be a boolean")]
    Transcript,
    #[error("truncate must be \"head\", \"tail\", \"head+tail\" or an object of those for stdout and stderr")]
    Truncate,
}

impl ParamError {
    /// The protocol retcode of this refusal.
    pub fn retcode(&self) -> u32 {
        match self {
            ParamError::NotObject => retcode::INVALID_REQUEST,
            _ => retcode::INVALID_PARAMS,
        }
    }
}

/// A key's value, with JSON `null` read as absent.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn name(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ParamError> {
    match field(map, key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => {
            if s.contains('\0') {
                Err(ParamError::Nul(key))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(ParamError::Name(key)),
    }
}

/// Bytes a value takes when serialised (the `id` the host echoes; the
/// host keeps it raw, which is at most this plus its escapes, bounded by
/// the frame it came in: a generous reading of both is enough for the
/// answer bound).
fn raw_len(v: Option<&Value>) -> usize {
    v.map_or(0, |v| {
        let compact = serde_json::to_string(v).map_or(0, |s| s.len());
        // A raw id may carry escapes the compact form lost ("\u0041"
        // is 6 bytes for 1): count the worst case, 6 per byte, capped.
        compact.saturating_mul(6)
    })
}

/// The `id` length of a request frame (0 if none or not JSON): what the
/// host echoes around a peek's answer.
pub fn id_len(json: &[u8]) -> usize {
    object(json).map_or(0, |map| raw_len(map.get("id")))
}

/// What a `sync.bash` call asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run a command.
    Run(Box<Request>),
    /// Report the output so far of the running call with this id.
    Peek(CallId),
}

fn object(json: &[u8]) -> Result<Map<String, Value>, ParamError> {
    match serde_json::from_slice(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ParamError::NotObject),
    }
}

impl Command {
    /// Parses the request object: with a `peek` key (not `null`) it is a
    /// peek and every other key is ignored; otherwise a command to run.
    pub fn parse(json: &[u8], config: &Config) -> Result<Command, ParamError> {
        let map = object(json)?;
        match field(&map, "peek") {
            Some(v) => v.as_u64().map(Command::Peek).ok_or(ParamError::Peek),
            None => Request::from_map(&map, config).map(|r| Command::Run(Box::new(r))),
        }
    }
}

impl Request {
    /// Validates the request object of a command to run (`id`, `method`
    /// and unknown keys are ignored).
    fn from_map(map: &Map<String, Value>, config: &Config) -> Result<Request, ParamError> {
        let cmd = match field(map, "cmd") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(ParamError::Cmd),
        };
        if cmd.contains('\0') {
            return Err(ParamError::Nul("cmd"));
        }
        let timeout = match field(map, "timeout") {
            None => DEFAULT_TIMEOUT_S,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(t), _) if t < MIN_TIMEOUT_S => return Err(ParamError::TimeoutTooSmall),
                (Some(t), _) if t > MAX_TIMEOUT_S => return Err(ParamError::TimeoutTooLarge),
                (Some(t), _) => t,
                (None, Some(_)) => return Err(ParamError::TimeoutTooSmall),
                (None, None) => return Err(ParamError::TimeoutType),
            },
            Some(_) => return Err(ParamError::TimeoutType),
        };
        let user = name(map, "user")?.unwrap_or_else(|| "root".to_owned());
        let group = name(map, "group")?;
        let cwd = match field(map, "cwd") {
            None => None,
            Some(Value::String(s)) if s.starts_with('/') => {
                if s.contains('\0') {
                    return Err(ParamError::Nul("cwd"));
                }
                Some(s.clone())
            }
            Some(_) => return Err(ParamError::Cwd),
        };
        let mut env = Vec::new();
        match field(map, "env") {
            None => {}
            Some(Value::Object(vars)) => {
                for (k, v) in vars {
                    if k.is_empty() || k.contains('=') || k.contains('\0') {
                        return Err(ParamError::EnvName(k.clone()));
                    }
                    let Value::String(v) = v else {
                        return Err(ParamError::EnvValue(k.clone()));
                    };
                    if v.contains('\0') {
                        return Err(ParamError::Nul("env"));
                    }
                    env.push((k.clone(), v.clone()));
                }
            }
            Some(_) => return Err(ParamError::EnvType),
        }
        let stdin = match field(map, "stdin") {
            None => Vec::new(),
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(_) => return Err(ParamError::Stdin),
        };
        let max_output = match field(map, "max_output") {
            None => config.max_output,
            Some(v) => {
                let n = v.as_u64().ok_or(ParamError::MaxOutputType)?;
                match usize::try_from(n) {
                    Ok(n) if n <= config.max_output_limit => n,
                    _ => return Err(ParamError::MaxOutputTooLarge(config.max_output_limit)),
                }
            }
        };
        let (mut limits, nice) = parse_limits(map, "", &config.max_limits)?;
        let d = config.default_limits;
        limits.memory_max = limits.memory_max.or(d.memory_max);
        limits.pids_max = limits.pids_max.or(d.pids_max);
        limits.cpu_max = limits.cpu_max.or(d.cpu_max);
        let mode = |v: &Value| match v.as_str() {
            Some("head") => Ok(Truncate::Head),
            Some("tail") => Ok(Truncate::Tail),
            Some("head+tail") => Ok(Truncate::HeadTail),
            _ => Err(ParamError::Truncate),
        };
        let truncate = match field(map, "truncate") {
            None => (Truncate::Head, Truncate::Head),
            Some(Value::Object(o)) => {
                if o.keys().any(|k| k != "stdout" && k != "stderr") {
                    return Err(ParamError::Truncate);
                }
                let get = |k: &str| o.get(k).map_or(Ok(Truncate::Head), mode);
                (get("stdout")?, get("stderr")?)
            }
            Some(v) => {
                let m = mode(v)?;
                (m, m)
            }
        };
        let transcript = match field(map, "transcript") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ParamError::Transcript),
        };
        Ok(Request {
            transcript,
            truncate,
            limits,
            nice: nice.or(config.default_nice),
            id_len: raw_len(map.get("id")),
            cmd,
            timeout: Duration::from_secs(timeout),
            user,
            group,
            cwd,
            env,
            stdin,
            max_output,
        })
    }
}

fn limit_error(key: &str, suffix: &str, why: impl Into<String>) -> ParamError {
    ParamError::Limit {
        key: format!("{key}{suffix}"),
        why: why.into(),
    }
}

/// A byte count: an integer, or a string of digits with an optional
/// K/M/G/T suffix (powers of 1024).
fn bytes(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        (i, 'T' | 't') => (&s[..i], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The smallest `memory_max` accepted (below it bash itself cannot start).
pub const MIN_MEMORY_MAX: u64 = 1 << 20;

/// `memory_max`, `pids_max`, `cpu_max`, `nice` (keys with `suffix`:
/// `_limit` in the config), each checked against `max`.
fn parse_limits(
    map: &Map<String, Value>,
    suffix: &str,
    max: &Limits,
) -> Result<(Limits, Option<i32>), ParamError> {
    let key = |k: &str| format!("{k}{suffix}");
    let mut limits = Limits::default();
    if let Some(v) = field(map, &key("memory_max")) {
        let n = bytes(v).ok_or_else(|| {
            limit_error(
                "memory_max",
                suffix,
                "must be a byte count (integer, or \"64M\")",
            )
        })?;
        if n < MIN_MEMORY_MAX {
            return Err(limit_error(
                "memory_max",
                suffix,
                format!("must be >= {MIN_MEMORY_MAX}"),
            ));
        }
        if let Some(m) = max.memory_max.filter(|&m| n > m) {
            return Err(limit_error(
                "memory_max",
                suffix,
                format!("must be <= {m} (memory_max_limit)"),
            ));
        }
        limits.memory_max = Some(n);
    }
    if let Some(v) = field(map, &key("pids_max")) {
        let n = v
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| limit_error("pids_max", suffix, "must be an integer >= 1"))?;
        if let Some(m) = max.pids_max.filter(|&m| n > m) {
            return Err(limit_error(
                "pids_max",
                suffix,
                format!("must be <= {m} (pids_max_limit)"),
            ));
        }
        limits.pids_max = Some(n);
    }
    if let Some(v) = field(map, &key("cpu_max")) {
        let f = v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.01 && *f <= 1024.0)
            .ok_or_else(|| {
                limit_error("cpu_max", suffix, "must be a number of CPUs, 0.01..=1024")
            })?;
        if let Some(m) = max.cpu_max.filter(|&m| f > m) {
            return Err(limit_error(
                "cpu_max",
                suffix,
                format!("must be <= {m} (cpu_max_limit)"),
            ));
        }
        limits.cpu_max = Some(f);
    }
    let mut nice = None;
    if suffix.is_empty() {
        if let Some(v) = field(map, "nice") {
            let n = v
                .as_i64()
                .filter(|n| (-20..=19).contains(n))
                .ok_or_else(|| limit_error("nice", "", "must be an integer -20..=19"))?;
            nice = i32::try_from(n).ok();
        }
    }
    Ok((limits, nice))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Request, ParamError> {
        Request::from_map(&object(json.as_bytes())?, &Config::default())
    }

    fn message(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let r = parse(r#"{"id":"1","method":"sync.bash","cmd":"ls","extra":[1]}"#).unwrap();
        assert_eq!(r.cmd, "ls");
        assert_eq!(r.timeout, Duration::from_secs(120));
        assert_eq!(r.user, "root");
        assert_eq!(r.group, None);
        assert_eq!(r.cwd, None);
        assert!(r.env.is_empty() && r.stdin.is_empty());
        assert_eq!(r.max_output, 1 << 20);
    }

    #[test]
    fn all_fields() {
        let r = parse(
            r#"{"cmd":"x","timeout":5,"user":"nobody","group":"daemon","cwd":"/tmp",
                "env":{"A":"1","B":""},"stdin":"in","max_output":10}"#,
        )
        .unwrap();
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert_eq!(
            (r.user.as_str(), r.group.as_deref()),
            ("nobody", Some("daemon"))
        );
        assert_eq!(r.cwd.as_deref(), Some("/tmp"));
        assert_eq!(
            r.env,
            vec![("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert_eq!((r.stdin.as_slice(), r.max_output), (&b"in"[..], 10));
    }

    #[test]
    fn cmd_rules() {
        assert_eq!(message(r#"{}"#), "cmd must be a non-empty string");
        assert_eq!(message(r#"{"cmd":""}"#), "cmd must be a non-empty string");
        assert_eq!(message(r#"{"cmd":5}"#), "cmd must be a non-empty string");
        assert_eq!(message(r#"{"cmd":null}"#), "cmd must be a non-empty string");
        assert_eq!(
            message(r#"{"cmd":"a\u0000b"}"#),
            "cmd must not contain NUL bytes"
        );
    }

    #[test]
    fn timeout_rules() {
        assert_eq!(
            message(r#"{"cmd":"x","timeout":0}"#),
            "timeout must be >= 1"
        );
        assert_eq!(
            message(r#"{"cmd":"x","timeout":-5}"#),
            "timeout must be >= 1"
        );
        assert_eq!(
            message(r#"{"cmd":"x","timeout":86401}"#),
            "timeout must be <= 86400"
        );
        assert_eq!(
            message(r#"{"cmd":"x","timeout":1.5}"#),
            "timeout must be an integer (seconds)"
        );
        assert_eq!(
            message(r#"{"cmd":"x","timeout":"10"}"#),
            "timeout must be an integer (seconds)"
        );
        assert_eq!(
            parse(r#"{"cmd":"x","timeout":86400}"#)
                .unwrap()
                .timeout
                .as_secs(),
            86400
        );
        assert_eq!(
            parse(r#"{"cmd":"x","timeout":null}"#)
                .unwrap()
                .timeout
                .as_secs(),
            120
        );
    }

    #[test]
    fn other_rules() {
        assert_eq!(
            message(r#"{"cmd":"x","user":""}"#),
            "user must be a non-empty string"
        );
        assert_eq!(
            message(r#"{"cmd":"x","group":7}"#),
            "group must be a non-empty string"
        );
        assert_eq!(
            message(r#"{"cmd":"x","cwd":"tmp"}"#),
            "cwd must be an absolute path"
        );
        assert_eq!(
            message(r#"{"cmd":"x","env":["A"]}"#),
            "env must be an object of strings"
        );
        assert_eq!(
            message(r#"{"cmd":"x","env":{"A":1}}"#),
            "env value of \"A\" must be a string"
        );
        assert_eq!(
            message(r#"{"cmd":"x","env":{"A=B":"1"}}"#),
            "env name \"A=B\" is invalid (empty, or contains '=' or NUL)"
        );
        assert_eq!(
            message(r#"{"cmd":"x","stdin":1}"#),
            "stdin must be a string"
        );
        assert_eq!(
            message(r#"{"cmd":"x","max_output":-1}"#),
            "max_output must be a non-negative integer"
        );
        assert_eq!(
            message(r#"{"cmd":"x","max_output":16777217}"#),
            "max_output must be <= 16777216"
        );
        assert_eq!(
            parse(r#"{"cmd":"x","max_output":0}"#).unwrap().max_output,
            0
        );
    }

    #[test]
    fn not_an_object() {
        for bad in ["", "[]", "\"cmd\"", "{"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                (e.clone(), e.retcode()),
                (ParamError::NotObject, retcode::INVALID_REQUEST)
            );
        }
        assert_eq!(ParamError::Cmd.retcode(), retcode::INVALID_PARAMS);
    }

    #[test]
    fn limits() {
        let c = Config::parse(
            br#"{"memory_max":"512M","pids_max":100,"nice":5,"memory_max_limit":"1G","pids_max_limit":1000,"cpu_max_limit":2}"#,
        )
        .unwrap();
        assert_eq!(c.default_limits.memory_max, Some(512 << 20));
        assert_eq!(c.max_limits.cpu_max, Some(2.0));
        let r = Request::from_map(&object(br#"{"cmd":"x"}"#).unwrap(), &c).unwrap();
        assert_eq!(r.limits.memory_max, Some(512 << 20), "config default");
        assert_eq!(r.limits.pids_max, Some(100));
        assert_eq!(r.nice, Some(5));
        let r = Request::from_map(
            &object(br#"{"cmd":"x","memory_max":1048576,"cpu_max":0.25,"nice":-3}"#).unwrap(),
            &c,
        )
        .unwrap();
        assert_eq!(r.limits.memory_max, Some(1 << 20));
        assert_eq!(r.limits.cpu_max, Some(0.25));
        assert_eq!(r.nice, Some(-3));
        let err = |j: &str| {
            Request::from_map(&object(j.as_bytes()).unwrap(), &c)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(r#"{"cmd":"x","memory_max":"2G"}"#),
            "memory_max must be <= 1073741824 (memory_max_limit)"
        );
        assert!(err(r#"{"cmd":"x","cpu_max":3}"#).starts_with("cpu_max must be <= 2"));
        assert!(err(r#"{"cmd":"x","pids_max":1.5}"#).starts_with("pids_max "));
        assert!(err(r#"{"cmd":"x","memory_max":"64MB"}"#).starts_with("memory_max "));
        assert!(err(r#"{"cmd":"x","memory_max":"99999999999T"}"#).starts_with("memory_max "));
        assert!(err(r#"{"cmd":"x","nice":-21}"#).starts_with("nice "));
        // The config's own values: a default above its ceiling, a bad key.
        let e = Config::parse(br#"{"pids_max":10,"pids_max_limit":5}"#).unwrap_err();
        assert!(e.to_string().contains("pids_max must be <= 5"), "{e}");
        let e = Config::parse(br#"{"cpu_max_limit":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("cpu_max_limit"), "{e}");
        assert_eq!(
            Config::parse(br#"{"containment":"maybe"}"#),
            Err(ConfigError::Containment)
        );
        assert!(
            !Config::parse(br#"{"containment":"off"}"#)
                .unwrap()
                .containment
        );
    }

    #[test]
    fn peek() {
        let c = Config::default();
        let cmd = |json: &str| Command::parse(json.as_bytes(), &c);
        assert_eq!(
            cmd(r#"{"method":"sync.bash","peek":42}"#),
            Ok(Command::Peek(42))
        );
        // Every other key is ignored, even an invalid one.
        assert_eq!(
            cmd(r#"{"peek":18446744073709551615,"cmd":"","timeout":-1}"#),
            Ok(Command::Peek(u64::MAX))
        );
        for bad in [r#""x""#, "-1", "1.5", "true", "[1]", "{}", r#""7""#] {
            let e = cmd(&format!(r#"{{"peek":{bad}}}"#)).unwrap_err();
            assert_eq!(
                (e.clone(), e.retcode()),
                (ParamError::Peek, retcode::INVALID_PARAMS)
            );
        }
        assert_eq!(
            ParamError::Peek.to_string(),
            "peek must be a call id (an unsigned integer)"
        );
        // null reads as absent, like every other key.
        assert!(matches!(
            cmd(r#"{"peek":null,"cmd":"ls"}"#),
            Ok(Command::Run(r)) if r.cmd == "ls"
        ));
        assert_eq!(cmd(r#"{"peek":null}"#), Err(ParamError::Cmd));
        assert_eq!(cmd("[]"), Err(ParamError::NotObject));
    }

    #[test]
    fn config() {
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
        let c = Config::parse(br#"{"max_output":10,"max_output_limit":20,"max_concurrent":3,"kill_grace_ms":50,"x":"y"}"#)
            .unwrap();
        assert_eq!(
            (c.max_output, c.max_output_limit, c.max_concurrent),
            (10, 20, 3)
        );
        assert_eq!(c.kill_grace, Duration::from_millis(50));
        assert_eq!(Config::parse(b"[]"), Err(ConfigError::NotObject));
        assert_eq!(
            Config::parse(br#"{"max_output":"1"}"#),
            Err(ConfigError::NotInteger("max_output"))
        );
        assert_eq!(
            Config::parse(br#"{"max_concurrent":0}"#),
            Err(ConfigError::Zero("max_concurrent"))
        );
        assert!(matches!(
            Config::parse(br#"{"max_output":30,"max_output_limit":20}"#),
            Err(ConfigError::OutputAboveLimit { .. })
        ));
    }

    #[test]
    fn frame_and_start_settings() {
        let d = Config::default();
        assert_eq!(
            (d.max_frame, d.start_timeout),
            (16 << 20, Duration::from_secs(30))
        );
        let c = Config::parse(br#"{"max_frame":65536,"start_timeout_ms":1500}"#).unwrap();
        assert_eq!(
            (c.max_frame, c.start_timeout),
            (65536, Duration::from_millis(1500))
        );
        assert_eq!(
            Config::parse(br#"{"max_frame":1023}"#),
            Err(ConfigError::FrameTooSmall)
        );
        assert_eq!(
            Config::parse(br#"{"start_timeout_ms":0}"#),
            Err(ConfigError::Zero("start_timeout_ms"))
        );
        assert_eq!(
            Config::parse(br#"{"max_frame":-1}"#),
            Err(ConfigError::NotInteger("max_frame"))
        );
    }

    #[test]
    fn id_length_is_counted_generously() {
        assert_eq!(id_len(br#"{"cmd":"x"}"#), 0);
        assert_eq!(id_len(br#"{"id":"ab"}"#), 4 * 6);
        assert_eq!(id_len(b"not json"), 0);
        let r = parse(r#"{"id":12345,"cmd":"x"}"#).unwrap();
        assert_eq!(r.id_len, 5 * 6);
    }
}
