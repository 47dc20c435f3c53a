//! The agent's built-in methods as types (docs/protocol.md, "Built-in
//! methods"): `agent.info`, `agent.release`, `async.bash` and its task
//! (`task.list`, `task.status`, `task.cancel`), the running-task marker the
//! agent keeps on disk, the `sync.bash` output peek it asks its plugin for,
//! and the heartbeat ping.
//!
//! Key decisions:
//! * The bytes are those the agent wrote before these types existed:
//!   fields are declared in the order serde_json's default map wrote them
//!   (sorted by name), and members that came from JSON of unknown shape
//!   (a plugin's data, a stored result, a corrupt marker's fields, the
//!   quarantine and audit reports) stay [`Value`]s, re-exported here as
//!   part of the types that hand them over.
//! * Parameters are read leniently, as before: a frame that is not a JSON
//!   object, or a member of the wrong type, reads as the member missing;
//!   the caller answers `3021` naming it.

use serde::{Deserialize, Serialize};

pub use serde_json::value::RawValue;
pub use serde_json::{Map, Value};

/// A string member of a request's top level, if the frame is a JSON
/// object and the member a string.
pub fn str_param(frame: &[u8], name: &str) -> Option<String> {
    serde_json::from_slice::<Value>(frame)
        .ok()?
        .get(name)?
        .as_str()
        .map(str::to_owned)
}

/// A request's top-level members, if the frame is a JSON object (the
/// `schedule.*` parameters).
pub fn object_params(frame: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(frame).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A request frame (without `\n`) from its members (a schedule's stored
/// request).
pub fn request_text(members: &Map<String, Value>) -> String {
    Value::Object(members.clone()).to_string()
}

/// JSON text read as a value; `None` if it does not parse (a plugin's
/// `data`, checked elsewhere, or a stored result).
pub fn parse_value(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

/// A value as JSON of unknown shape (`null` if it cannot be written).
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `async.bash`: the command, if the request has a string `cmd`.
pub fn async_bash_cmd(frame: &[u8]) -> Option<String> {
    str_param(frame, "cmd")
}

/// `task.status`, `task.cancel`: the `task` member, if a string.
pub fn task_param(frame: &[u8]) -> Option<String> {
    str_param(frame, "task")
}

/// `agent.release`: the `plugin` member, if a string.
pub fn release_param(frame: &[u8]) -> Option<String> {
    str_param(frame, "plugin")
}

/// The answer's data of `async.bash`: `{"task": ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub task: String,
}

/// The answer's data of `task.cancel`: `{"state":"cancelling","task":ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelling {
    pub state: String,
    pub task: String,
}

impl TaskCancelling {
    pub fn new(task: impl Into<String>) -> Self {
        TaskCancelling {
            state: "cancelling".into(),
            task: task.into(),
        }
    }
}

/// The answer's data of `agent.release`: `{"plugin":NAME,"released":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub plugin: String,
    pub released: bool,
}

/// The running marker `ID.running` the agent writes for a task:
/// `{"cmd":CMD,"started":UNIX,"task":ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskMarker<'a> {
    pub cmd: &'a str,
    pub started: u64,
    pub task: &'a str,
}

impl TaskMarker<'_> {
    pub fn to_json(&self) -> String {
        // Two strings and a number: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A marker read back (a file of the agent's, maybe torn): what it says,
/// each member `null` when missing. Its JSON is the data of the failed
/// result of a task the agent died under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkerInfo {
    #[serde(default)]
    pub cmd: Value,
    #[serde(default)]
    pub started: Value,
    #[serde(default)]
    pub task: Value,
}

impl MarkerInfo {
    /// The marker's members (all `null` if it does not parse), for `task`.
    pub fn read(bytes: &[u8], task: &str) -> MarkerInfo {
        let v = serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
        MarkerInfo {
            cmd: v["cmd"].clone(),
            started: v["started"].clone(),
            task: Value::String(task.to_owned()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One task as `task.list` and `task.status` describe it. Running:
/// `cmd`, `elapsed_ms`, `started`, `state` (`running`/`cancelling`),
/// `task`, and for `task.status` the `output` so far; done: `finished`,
/// `retcode`, `state` (`done`/`cancelled`), `task`, and for `task.status`
/// its `result` (the response).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// The plugin's peek data (`null` when it could not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retcode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    pub state: String,
    pub task: String,
}

impl TaskInfo {
    /// Sets `result` from a stored result's response JSON.
    pub fn with_result(mut self, response_json: &str) -> Self {
        self.result = Some(parse_value(response_json).unwrap_or(Value::Null));
        self
    }

    /// Sets `output` from a peek's data (`null` if none or not JSON).
    pub fn with_output(mut self, data: Option<&str>) -> Self {
        self.output = Some(data.and_then(parse_value).unwrap_or(Value::Null));
        self
    }
}

/// The answer's data of `task.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub count: usize,
    pub outbox_bytes: u64,
    pub tasks: Vec<TaskInfo>,
}

/// The request the agent sends its `sync.bash` plugin for a running
/// command's output so far: `{"method":"sync.bash","peek":CALL}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBashPeek {
    pub method: &'static str,
    pub peek: u64,
}

impl SyncBashPeek {
    pub fn new(call: u64) -> Self {
        SyncBashPeek {
            method: "sync.bash",
            peek: call,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The call a peek request asks about, if `frame` is one.
    pub fn parse(frame: &[u8]) -> Option<u64> {
        let v = serde_json::from_slice::<Value>(frame).ok()?;
        (v.get("method")?.as_str()? == "sync.bash")
            .then(|| v.get("peek")?.as_u64())
            .flatten()
    }
}

/// The heartbeat ping frame `{"id":"hb-SEQ","method":"ping"}\n`.
pub fn heartbeat_ping(seq: u64) -> Vec<u8> {
    let id = format!("\"hb-{seq}\"");
    match RawValue::from_string(id) {
        Ok(raw) => {
            let mut frame = crate::request::ping_json(&raw).into_bytes();
            frame.push(b'\n');
            frame
        }
        // A quoted decimal number is always valid JSON.
        Err(_) => Vec::new(),
    }
}

/// The host settings the agent hands its plugins (`config_json` of the
/// host API, docs/plugins.md), fields in this order:
/// `{"max_output":N,"max_output_limit":N,"max_concurrent":N,"max_frame":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSettings {
    pub max_output: u64,
    pub max_output_limit: u64,
    pub max_concurrent: u64,
    pub max_frame: u64,
}

impl PluginSettings {
    pub fn to_json(&self) -> String {
        // Four numbers: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The answer's data of `agent.info` (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The audit log's health, `null` without an audit log.
    pub audit: Option<Value>,
    pub calls_pending: usize,
    pub host_id: String,
    pub in_flight: usize,
    pub max_concurrent: usize,
    pub name: String,
    pub pid: u32,
    pub plugin_dir: String,
    pub plugins_available: Vec<String>,
    pub plugins_loaded: Vec<String>,
    pub quarantined: Vec<Value>,
    pub requests_served: u64,
    pub schedules: usize,
    pub uptime_seconds: u64,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn the_answers_are_the_bytes_of_before() {
        let id = "4f0c7a52-2d2b-4a4e-9a43-6a1d4c2b7e10";
        assert_eq!(
            text(&TaskStarted { task: id.into() }),
            json!({ "task": id }).to_string()
        );
        assert_eq!(
            text(&TaskCancelling::new(id)),
            json!({"task": id, "state": "cancelling"}).to_string()
        );
        assert_eq!(
            text(&Released {
                plugin: "getinfo_testkit".into(),
                released: true
            }),
            json!({"plugin": "getinfo_testkit", "released": true}).to_string()
        );
        assert_eq!(
            TaskMarker {
                cmd: "echo \"x\"",
                started: 1700000000,
                task: id
            }
            .to_json(),
            json!({"task": id, "cmd": "echo \"x\"", "started": 1700000000u64}).to_string()
        );
        assert_eq!(
            SyncBashPeek::new(42).to_json(),
            format!("{{\"method\":\"sync.bash\",\"peek\":{}}}", 42)
        );
        assert_eq!(
            SyncBashPeek::parse(b"{\"method\":\"sync.bash\",\"peek\":42}"),
            Some(42)
        );
        assert_eq!(
            SyncBashPeek::parse(b"{\"method\":\"sync.bash\",\"cmd\":\"x\"}"),
            None
        );
        assert_eq!(
            heartbeat_ping(7),
            b"{\"id\":\"hb-7\",\"method\":\"ping\"}\n"
        );
    }

    #[test]
    fn task_infos_are_the_bytes_of_before() {
        let running = TaskInfo {
            cmd: Some("sleep 5".into()),
            elapsed_ms: Some(12),
            started: Some(1700000000),
            state: "running".into(),
            task: "t1".into(),
            ..TaskInfo::default()
        };
        let mut old = json!({"task": "t1", "state": "running", "cmd": "sleep 5", "started": 1700000000u64, "elapsed_ms": 12u64});
        assert_eq!(text(&running), old.to_string());
        old["output"] = json!({"stdout": "a", "exit": null});
        assert_eq!(
            text(
                &running
                    .clone()
                    .with_output(Some("{\"stdout\":\"a\",\"exit\":null}"))
            ),
            old.to_string()
        );
        old["output"] = Value::Null;
        assert_eq!(
            text(&running.with_output(Some("not json"))),
            old.to_string()
        );
        let done = TaskInfo {
            finished: Some(1700000100),
            retcode: Some(2),
            state: "done".into(),
            task: "t2".into(),
            ..TaskInfo::default()
        };
        let mut old =
            json!({"task": "t2", "state": "done", "retcode": 2u32, "finished": 1700000100u64});
        assert_eq!(text(&done), old.to_string());
        let response =
            "{\"id\":null,\"resp\":\"success\",\"retcode\":2,\"data\":{\"z\":1,\"a\":2}}";
        old["result"] = serde_json::from_str(response).unwrap();
        assert_eq!(text(&done.with_result(response)), old.to_string());
        let list = TaskList {
            count: 0,
            outbox_bytes: 9,
            tasks: Vec::new(),
        };
        assert_eq!(
            text(&list),
            json!({"count": 0, "tasks": Vec::<Value>::new(), "outbox_bytes": 9u64}).to_string()
        );
    }

    #[test]
    fn a_marker_read_back_keeps_what_it_says_and_nulls_the_rest() {
        let m = MarkerInfo::read(b"{\"task\":\"x\",\"cmd\":\"ls\",\"started\":5}", "t3");
        assert_eq!(
            m.to_json(),
            json!({"task": "t3", "cmd": "ls", "started": 5}).to_string()
        );
        let torn = MarkerInfo::read(b"{\"task\":\"x\",\"cm", "t3");
        assert_eq!(
            torn.to_json(),
            json!({"task": "t3", "cmd": Value::Null, "started": Value::Null}).to_string()
        );
    }

    #[test]
    fn agent_info_is_the_bytes_of_before() {
        let info = AgentInfo {
            audit: None,
            calls_pending: 1,
            host_id: "h".into(),
            in_flight: 2,
            max_concurrent: 64,
            name: "n".into(),
            pid: 77,
            plugin_dir: "/usr/lib/basicagent/plugins".into(),
            plugins_available: vec!["getinfo.kernel".into()],
            plugins_loaded: vec![],
            quarantined: vec![json!({"plugin": "x"})],
            requests_served: 3,
            schedules: 0,
            uptime_seconds: 9,
            version: "0.1.0".into(),
        };
        let old = json!({
            "version": "0.1.0",
            "host_id": "h",
            "name": "n",
            "pid": 77u32,
            "uptime_seconds": 9u64,
            "plugin_dir": "/usr/lib/basicagent/plugins",
            "plugins_loaded": Vec::<String>::new(),
            "plugins_available": ["getinfo.kernel"],
            "in_flight": 2,
            "max_concurrent": 64,
            "requests_served": 3u64,
            "schedules": 0,
            "quarantined": [{"plugin": "x"}],
            "calls_pending": 1,
            "audit": Value::Null,
        });
        assert_eq!(text(&info), old.to_string());
    }

    #[test]
    fn plugin_settings_are_the_bytes_of_before() {
        let s = PluginSettings {
            max_output: 1,
            max_output_limit: 2,
            max_concurrent: 3,
            max_frame: 4,
        };
        assert_eq!(
            s.to_json(),
            format!(
                "{{\"max_output\":{},\"max_output_limit\":{},\"max_concurrent\":{},\"max_frame\":{}}}",
                1, 2, 3, 4
            )
        );
    }

    #[test]
    fn parameters_are_read_leniently() {
        assert_eq!(async_bash_cmd(b"{\"cmd\":\"ls\"}").as_deref(), Some("ls"));
        assert_eq!(async_bash_cmd(b"{\"cmd\":5}"), None);
        assert_eq!(async_bash_cmd(b"[1]"), None);
        assert_eq!(task_param(b"not json"), None);
        assert_eq!(
            release_param(b"{\"plugin\":\"a.b\"}").as_deref(),
            Some("a.b")
        );
        assert!(object_params(b"{\"a\":1}").is_some());
        assert!(object_params(b"[]").is_none());
        let m = object_params(b"{\"method\":\"getinfo.kernel\",\"b\":[1]}").unwrap();
        assert_eq!(
            request_text(&m),
            "{\"b\":[1],\"method\":\"getinfo.kernel\"}"
        );
    }
}
