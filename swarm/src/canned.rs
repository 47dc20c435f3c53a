//! The answers a simulated agent gives: one frame in, at most one frame out, with canned data shaped like the real plugins'.
//!
//! Pure (no I/O, no clock): [`Persona::answer`] is unit-tested on every
//! kind of frame, including hostile ones, the way the agent treats them
//! (protocol §3, §5, §6).

use basicagent_proto::{FrameError, Incoming, Response, Retcode};
use serde::Serialize;

use crate::stats::Method;

/// One simulated agent's identity and the facts its canned answers carry.
#[derive(Debug, Clone)]
pub struct Persona {
    pub host_id: String,
    pub name: String,
    pub plugins: Vec<String>,
    /// Unix time the swarm started (the canned boot time is one day before).
    pub started_unix: u64,
}

/// What to do with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this frame (with its `\n`); the request was of this kind.
    Reply(Vec<u8>, Method),
    /// Nothing to send (a reply to our heartbeat, a `task.ack`).
    Nothing,
}

#[derive(Serialize)]
struct Kernel<'a> {
    sysname: &'a str,
    nodename: &'a str,
    release: &'a str,
    version: &'a str,
    machine: &'a str,
    domainname: &'a str,
    cmdline: &'a str,
    boot_time: u64,
    uptime_seconds: f64,
}

#[derive(Serialize)]
struct SyncBash<'a> {
    exitcode: i32,
    signal: Option<i32>,
    core_dumped: bool,
    signal_sent_by_agent: bool,
    stdout: &'a str,
    stderr: &'a str,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    stdout_lossy: bool,
    stderr_lossy: bool,
    elapsed_ms: u64,
    pid: u32,
    user: &'a str,
    group: &'a str,
    uid: u32,
    gid: u32,
    groups: [u32; 1],
}

#[derive(Serialize)]
struct AgentInfo<'a> {
    version: &'a str,
    host_id: &'a str,
    name: &'a str,
    pid: u32,
    uptime_seconds: u64,
    plugin_dir: &'a str,
    plugins_loaded: &'a [String],
    plugins_available: &'a [String],
    in_flight: u32,
    max_concurrent: u32,
    requests_served: u64,
}

/// The version the simulated agents announce.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-swarm");

const BOOT_AGO: u64 = 86_400;

impl Persona {
    /// The init frame (with its `\n`).
    pub fn init_frame(&self) -> Vec<u8> {
        let init = basicagent_proto::Init {
            hostname: self.host_id.clone(),
            version: VERSION.to_owned(),
            name: self.name.clone(),
            plugins: self.plugins.clone(),
            extra: serde_json::Map::new(),
        };
        let mut out = Vec::new();
        init.write_frame(&mut out);
        out
    }

    fn serves(&self, method: &str) -> bool {
        self.plugins.iter().any(|p| p == method)
    }

    /// The answer to a frame too long to read (protocol §3).
    pub fn too_long(&self, e: &FrameError) -> Answer {
        let FrameError::TooLong { limit } = e;
        let r = Response::failed(
            None,
            Retcode::INVALID_REQUEST,
            format!("Invalid request: frame longer than {limit} bytes"),
        );
        Answer::Reply(frame(&r), Method::Invalid)
    }

    /// The answer to one complete frame; `uptime` is seconds since the swarm
    /// started, `served` the requests this agent answered so far.
    pub fn answer(&self, line: &[u8], uptime: u64, served: u64) -> Answer {
        let request = match Incoming::classify(line) {
            Ok(Incoming::Request(r)) => r,
            Ok(Incoming::Response(_) | Incoming::TaskAck(_)) => return Answer::Nothing,
            // A task.done from the server is a request for a method the
            // agent does not serve; it carries no id to answer.
            Ok(Incoming::TaskDone(_)) => {
                let r =
                    Response::failed(None, Retcode::UNKNOWN_METHOD, "Unknown method: task.done");
                return Answer::Reply(frame(&r), Method::Unknown);
            }
            Err(e) => {
                let r = Response::failed(
                    e.id,
                    Retcode::INVALID_REQUEST,
                    format!("Invalid request: {}", e.error),
                );
                return Answer::Reply(frame(&r), Method::Invalid);
            }
        };
        let id = request.id;
        let ok = |id| Response::new(id, Retcode::SUCCESS);
        let (response, kind) = match request.method.as_str() {
            "ping" => (ok(id), Method::Ping),
            "agent.info" => (
                ok(id).with_data(&AgentInfo {
                    version: VERSION,
                    host_id: &self.host_id,
                    name: &self.name,
                    pid: std::process::id(),
                    uptime_seconds: uptime,
                    plugin_dir: "/usr/lib/basicagent/plugins",
                    plugins_loaded: &[],
                    plugins_available: &self.plugins,
                    in_flight: 0,
                    max_concurrent: 64,
                    requests_served: served,
                }),
                Method::AgentInfo,
            ),
            "getinfo.kernel" if self.serves("getinfo.kernel") => (
                ok(id).with_data(&Kernel {
                    sysname: "Linux",
                    nodename: &self.name,
                    release: "6.1.0-swarm-amd64",
                    version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.0 (swarm)",
                    machine: "x86_64",
                    domainname: "(none)",
                    cmdline: "BOOT_IMAGE=/boot/vmlinuz-6.1.0-swarm-amd64 root=/dev/vda1 ro quiet",
                    boot_time: self.started_unix.saturating_sub(BOOT_AGO),
                    uptime_seconds: BOOT_AGO.saturating_add(uptime) as f64,
                }),
                Method::Kernel,
            ),
            "sync.bash" if self.serves("sync.bash") => (
                ok(id).with_data(&SyncBash {
                    exitcode: 0,
                    signal: None,
                    core_dumped: false,
                    signal_sent_by_agent: false,
                    stdout: "swarm\n",
                    stderr: "",
                    stdout_bytes: 6,
                    stderr_bytes: 0,
                    stdout_truncated: false,
                    stderr_truncated: false,
                    stdout_lossy: false,
                    stderr_lossy: false,
                    elapsed_ms: 1,
                    pid: std::process::id(),
                    user: "root",
                    group: "root",
                    uid: 0,
                    gid: 0,
                    groups: [0],
                }),
                Method::SyncBash,
            ),
            other => (
                Response::failed(
                    id,
                    Retcode::UNKNOWN_METHOD,
                    format!("Unknown method: {other}"),
                ),
                Method::Unknown,
            ),
        };
        Answer::Reply(frame(&response), kind)
    }
}

fn frame(r: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    r.write_frame(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn persona() -> Persona {
        Persona {
            host_id: "0b7f5d1c-445e-49c0-8612-111b741b920f".into(),
            name: "swarm-00001".into(),
            plugins: vec!["getinfo.kernel".into(), "sync.bash".into()],
            started_unix: 1_700_000_000,
        }
    }

    fn reply(line: &str) -> (Value, Method) {
        match persona().answer(line.as_bytes(), 5, 1) {
            Answer::Reply(bytes, m) => {
                assert_eq!(bytes.last(), Some(&b'\n'));
                (serde_json::from_slice(&bytes).unwrap(), m)
            }
            Answer::Nothing => panic!("no reply to {line}"),
        }
    }

    #[test]
    fn init_frame() {
        let f = persona().init_frame();
        let v: Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["method"], "init");
        assert_eq!(v["hostname"], "0b7f5d1c-445e-49c0-8612-111b741b920f");
        assert_eq!(v["name"], "swarm-00001");
        assert_eq!(v["plugins"][0], "getinfo.kernel");
    }

    #[test]
    fn methods() {
        let (v, m) = reply(r#"{"id":7,"method":"ping"}"#);
        assert_eq!(
            (v["id"].clone(), v["retcode"].clone(), m),
            (7.into(), 2.into(), Method::Ping)
        );
        let (v, m) = reply(r#"{"id":"k","method":"getinfo.kernel"}"#);
        assert_eq!(m, Method::Kernel);
        assert_eq!(v["id"], "k");
        assert_eq!(v["data"]["nodename"], "swarm-00001");
        assert_eq!(v["data"]["sysname"], "Linux");
        assert_eq!(v["data"]["boot_time"], 1_700_000_000u64 - 86_400);
        let (v, m) = reply(r#"{"id":1,"method":"sync.bash","cmd":"id"}"#);
        assert_eq!(m, Method::SyncBash);
        assert_eq!(v["data"]["exitcode"], 0);
        assert_eq!(v["data"]["stdout"], "swarm\n");
        let (v, m) = reply(r#"{"id":1,"method":"agent.info"}"#);
        assert_eq!(m, Method::AgentInfo);
        assert_eq!(v["data"]["host_id"], "0b7f5d1c-445e-49c0-8612-111b741b920f");
        assert_eq!(v["data"]["requests_served"], 1);
        let (v, m) = reply(r#"{"id":1,"method":"getinfo.users"}"#);
        assert_eq!((v["retcode"].clone(), m), (3022.into(), Method::Unknown));
        assert_eq!(v["message"], "Unknown method: getinfo.users");
    }

    #[test]
    fn a_plugin_not_announced_is_unknown() {
        let mut p = persona();
        p.plugins.clear();
        let Answer::Reply(b, m) = p.answer(br#"{"id":1,"method":"getinfo.kernel"}"#, 0, 0) else {
            panic!()
        };
        assert_eq!(m, Method::Unknown);
        assert!(String::from_utf8(b).unwrap().contains("3022"));
    }

    #[test]
    fn hostile_frames_get_3020_and_replies_are_ignored() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"id":{"x":1},"method":"ping"}"#,
            "\u{0}\u{1}",
        ] {
            let (v, m) = reply(bad);
            assert_eq!(m, Method::Invalid, "{bad}");
            assert_eq!(v["retcode"], 3020, "{bad}");
            assert!(v["id"].is_null(), "{bad}");
        }
        let (v, _) = reply(r#"{"id":5}"#);
        assert_eq!(
            (v["id"].clone(), v["retcode"].clone()),
            (5.into(), 3020.into())
        );
        assert_eq!(
            persona().answer(br#"{"id":"hb-1","resp":"success","retcode":2}"#, 0, 0),
            Answer::Nothing
        );
        assert_eq!(
            persona().answer(br#"{"method":"task.ack","task":"ab-12"}"#, 0, 0),
            Answer::Nothing
        );
        let Answer::Reply(b, Method::Invalid) =
            persona().too_long(&FrameError::TooLong { limit: 1024 })
        else {
            panic!()
        };
        assert!(String::from_utf8(b)
            .unwrap()
            .contains("frame longer than 1024 bytes"));
    }
}
