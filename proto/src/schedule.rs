//! The `schedule.*` methods on the wire (docs/protocol.md §7a) and the
//! schedule file that keeps their parameters: [`ScheduleParams`] (a
//! request's top-level members, read by name), [`ScheduledRequest`] (the
//! request a schedule repeats), the answers ([`ScheduleAdded`],
//! [`ScheduleInfo`], [`ScheduleList`], [`ScheduleRemoved`], all as
//! [`ScheduleAnswer`]) and [`ScheduleFile`] (`state_dir/schedules/ID.json`).
//!
//! Key decision: the parameters are not a derived struct. The agent names
//! the bad field and the reason in a fixed order (`3021 Invalid params:
//! "FIELD": REASON`), so this module hands out each member as a
//! [`Member`] (absent, null, string, whole number, boolean, other) and the
//! agent's schedule table keeps the rules and the words. Answers are
//! structs whose fields are declared in the order they are written
//! (alphabetical: the order the agent has always written them in).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The members a `schedule.add` request may have (`id` and `method` are
/// the request's own).
pub const ADD_MEMBERS: [&str; 13] = [
    "id", "method", "request", "cron", "every", "at", "on_boot", "tz", "jitter", "overlap",
    "catch_up", "until", "count",
];

/// One top-level member of a request, as far as the schedule rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'a> {
    /// Not there.
    Absent,
    /// `null`.
    Null,
    Str(&'a str),
    /// A whole number in `0..=u64::MAX`.
    UInt(u64),
    Bool(bool),
    /// Anything else (a negative or fractional number, an array, an object).
    Other,
}

impl Member<'_> {
    /// Absent or `null`.
    pub fn is_unset(&self) -> bool {
        matches!(self, Member::Absent | Member::Null)
    }
}

fn member(v: Option<&Value>) -> Member<'_> {
    match v {
        None => Member::Absent,
        Some(Value::Null) => Member::Null,
        Some(Value::String(s)) => Member::Str(s),
        Some(Value::Bool(b)) => Member::Bool(*b),
        Some(Value::Number(n)) => n.as_u64().map_or(Member::Other, Member::UInt),
        Some(_) => Member::Other,
    }
}

/// The parameters of a `schedule.*` request: its top-level members, as
/// given (a schedule file keeps them so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScheduleParams(Map<String, Value>);

/// Why a `request` member is not a request to repeat (the agent words
/// these as `3021 Invalid params: "request": …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestShape {
    Missing,
    NotAnObject,
    NoMethod,
}

impl ScheduleParams {
    /// The request's members; `None` if the frame is not a JSON object.
    pub fn from_frame(frame: &[u8]) -> Option<ScheduleParams> {
        match serde_json::from_slice::<Value>(frame) {
            Ok(Value::Object(m)) => Some(ScheduleParams(m)),
            _ => None,
        }
    }

    /// The first member (in name order) not in `known`.
    pub fn unknown_member(&self, known: &[&str]) -> Option<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .find(|k| !known.contains(k))
    }

    /// Member `key`.
    pub fn member(&self, key: &str) -> Member<'_> {
        member(self.0.get(key))
    }

    /// Whether member `key` is there at all (`null` included).
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The `request` member: the request to repeat, with its `method`.
    pub fn request(&self) -> Result<ScheduledRequest, RequestShape> {
        let map = match self.0.get("request") {
            Some(Value::Object(r)) => r,
            Some(_) => return Err(RequestShape::NotAnObject),
            None => return Err(RequestShape::Missing),
        };
        match map.get("method") {
            Some(Value::String(m)) => Ok(ScheduledRequest {
                method: m.clone(),
                map: map.clone(),
            }),
            _ => Err(RequestShape::NoMethod),
        }
    }

    /// The same parameters without the request's own `id` and `method`
    /// (what a schedule file keeps).
    pub fn without_envelope(&self) -> ScheduleParams {
        let mut kept = self.0.clone();
        kept.remove("id");
        kept.remove("method");
        ScheduleParams(kept)
    }
}

/// The request a schedule repeats: a JSON object with a string `method`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRequest {
    method: String,
    map: Map<String, Value>,
}

impl Serialize for ScheduledRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl ScheduledRequest {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Its `cmd`, when that is a string (`async.bash`).
    pub fn cmd(&self) -> Option<&str> {
        self.map.get("cmd").and_then(Value::as_str)
    }

    /// The request as a frame (without `\n`), as each run hands it to the
    /// plugin.
    pub fn to_frame(&self) -> String {
        Value::Object(self.map.clone()).to_string()
    }

    /// Bytes of [`Self::to_frame`].
    pub fn json_len(&self) -> usize {
        serde_json::to_string(&self.map).map_or(0, |s| s.len())
    }
}

/// A schedule's trigger as `schedule.get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TriggerInfo {
    /// `{"cron": EXPR, "tz": ZONE}`.
    Cron { cron: String, tz: String },
    /// `{"every": SECONDS}`.
    Every { every: u64 },
    /// `{"at": RFC 3339}` (`null` if out of range).
    At { at: Option<String> },
    /// `{"on_boot": true}`.
    OnBoot { on_boot: bool },
}

impl std::fmt::Display for TriggerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

/// `schedule.add`'s answer: `{"next": [RFC 3339 …], "schedule": ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleAdded {
    /// The next fire times, jitter included (`null` if out of range).
    pub next: Vec<Option<String>>,
    pub schedule: String,
}

/// One schedule as `schedule.get`, `schedule.pause`, `schedule.resume`
/// and `schedule.list` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleInfo {
    /// `"none"` | `"one"`.
    pub catch_up: &'static str,
    pub count: Option<u64>,
    /// RFC 3339.
    pub created: Option<String>,
    pub jitter: u64,
    /// The last slot fired or skipped, RFC 3339.
    pub last_slot: Option<String>,
    /// The next fire times; left out while paused or finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Vec<Option<String>>>,
    /// `"skip"` | `"queue"` | `"replace"`.
    pub overlap: &'static str,
    pub request: ScheduledRequest,
    pub results_dropped: u64,
    pub results_kept: usize,
    /// Tasks of this schedule running now.
    pub running: Vec<String>,
    pub runs: u64,
    pub schedule: String,
    /// `"waiting"` | `"running"` | `"paused"` | `"finished"`.
    pub state: &'static str,
    pub trigger: TriggerInfo,
    pub until: Option<String>,
}

/// `schedule.list`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleList {
    pub count: usize,
    pub max_schedules: usize,
    pub schedules: Vec<ScheduleInfo>,
}

/// `schedule.remove`'s answer: `{"schedule": ID, "state": "removed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleRemoved {
    pub schedule: String,
    pub state: &'static str,
}

impl ScheduleRemoved {
    pub fn new(schedule: &str) -> ScheduleRemoved {
        ScheduleRemoved {
            schedule: schedule.to_owned(),
            state: "removed",
        }
    }
}

/// The data of any `schedule.*` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ScheduleAnswer {
    Added(ScheduleAdded),
    List(ScheduleList),
    /// `null` only if the schedule went away meanwhile.
    Schedule(Option<Box<ScheduleInfo>>),
    Removed(ScheduleRemoved),
}

/// What a schedule file remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleState {
    pub anchor: i64,
    pub boot: Option<String>,
    pub created: i64,
    pub last: Option<i64>,
    pub paused: bool,
    pub runs: u64,
}

/// `state_dir/schedules/ID.json`: `{"id", "params", "state"}`, the
/// parameters as given (without `id` and `method`) and the state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleFile {
    pub id: String,
    pub params: ScheduleParams,
    pub state: ScheduleState,
}

/// The state as read: `created`, `anchor`, `runs` and `paused` must be
/// there; `last` and `boot` count only with their types.
#[derive(Deserialize)]
struct StateRead {
    created: i64,
    anchor: i64,
    #[serde(default)]
    last: Value,
    runs: u64,
    paused: bool,
    #[serde(default)]
    boot: Value,
}

#[derive(Deserialize)]
struct FileRead {
    params: ScheduleParams,
    state: StateRead,
}

impl ScheduleFile {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a file written by any version of the agent: `params` (an
    /// object) and `state`; `id` is the file's name and is not read from
    /// it. `None`: not a schedule file.
    pub fn parse(bytes: &[u8], id: &str) -> Option<ScheduleFile> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        // Objects only: serde would read a struct from an array too.
        if !v.is_object() || !v.get("state").is_some_and(Value::is_object) {
            return None;
        }
        let f: FileRead = serde_json::from_value(v).ok()?;
        Some(ScheduleFile {
            id: id.to_owned(),
            params: f.params,
            state: ScheduleState {
                anchor: f.state.anchor,
                boot: f.state.boot.as_str().map(str::to_owned),
                created: f.state.created,
                last: f.state.last.as_i64(),
                paused: f.state.paused,
                runs: f.state.runs,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> ScheduleParams {
        ScheduleParams::from_frame(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn members_are_read_by_name_and_kind() {
        let p = params(json!({
            "s": "x", "n": 5, "neg": -1, "f": 1.5, "b": true, "z": null, "a": [1], "o": {}
        }));
        assert_eq!(p.member("s"), Member::Str("x"));
        assert_eq!(p.member("n"), Member::UInt(5));
        assert_eq!(p.member("neg"), Member::Other);
        assert_eq!(p.member("f"), Member::Other);
        assert_eq!(p.member("b"), Member::Bool(true));
        assert_eq!(p.member("z"), Member::Null);
        assert_eq!(p.member("a"), Member::Other);
        assert_eq!(p.member("o"), Member::Other);
        assert_eq!(p.member("gone"), Member::Absent);
        assert!(p.member("z").is_unset() && p.member("gone").is_unset());
        assert!(p.has("z") && !p.has("gone"));
        assert_eq!(
            p.unknown_member(&["s", "n", "neg", "f", "b", "z", "o"]),
            Some("a")
        );
        assert_eq!(ScheduleParams::from_frame(b"[1]"), None);
        assert_eq!(ScheduleParams::from_frame(b"{bad"), None);
    }

    #[test]
    fn the_request_needs_an_object_with_a_string_method() {
        assert_eq!(params(json!({})).request(), Err(RequestShape::Missing));
        assert_eq!(
            params(json!({"request": "getinfo.kernel"})).request(),
            Err(RequestShape::NotAnObject)
        );
        assert_eq!(
            params(json!({"request": {"method": 1}})).request(),
            Err(RequestShape::NoMethod)
        );
        let r = params(json!({"request": {"method": "async.bash", "cmd": "echo", "user": "x"}}))
            .request()
            .unwrap();
        assert_eq!((r.method(), r.cmd()), ("async.bash", Some("echo")));
        assert_eq!(
            r.to_frame(),
            r#"{"cmd":"echo","method":"async.bash","user":"x"}"#
        );
        assert_eq!(r.json_len(), r.to_frame().len());
    }

    #[test]
    fn answers_are_written_as_the_agent_always_wrote_them() {
        let request = params(json!({"request": {"method": "getinfo.kernel"}}))
            .request()
            .unwrap();
        let mut info = ScheduleInfo {
            catch_up: "none",
            count: None,
            created: Some("2026-01-01T00:00:00Z".into()),
            jitter: 0,
            last_slot: None,
            next: Some(vec![Some("2026-01-01T00:00:10Z".into())]),
            overlap: "skip",
            request,
            results_dropped: 0,
            results_kept: 1,
            running: vec!["t1".into()],
            runs: 3,
            schedule: "s1".into(),
            state: "running",
            trigger: TriggerInfo::Every { every: 10 },
            until: None,
        };
        // What `json!` with a sorted map made of the same members.
        let old = json!({
            "schedule": "s1", "state": "running", "request": {"method": "getinfo.kernel"},
            "trigger": {"every": 10}, "jitter": 0, "overlap": "skip", "catch_up": "none",
            "until": null, "count": null, "runs": 3, "last_slot": null,
            "created": "2026-01-01T00:00:00Z", "running": ["t1"], "results_kept": 1,
            "results_dropped": 0, "next": ["2026-01-01T00:00:10Z"],
        });
        assert_eq!(serde_json::to_string(&info).unwrap(), old.to_string());
        info.next = None;
        let mut old = old;
        old.as_object_mut().unwrap().remove("next");
        let list = ScheduleAnswer::List(ScheduleList {
            count: 1,
            max_schedules: 64,
            schedules: vec![info.clone()],
        });
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            json!({"count": 1, "max_schedules": 64, "schedules": [old]}).to_string()
        );
        for (t, text) in [
            (
                TriggerInfo::Cron {
                    cron: "0 * * * * *".into(),
                    tz: "UTC".into(),
                },
                r#"{"cron":"0 * * * * *","tz":"UTC"}"#,
            ),
            (TriggerInfo::Every { every: 5 }, r#"{"every":5}"#),
            (TriggerInfo::At { at: None }, r#"{"at":null}"#),
            (TriggerInfo::OnBoot { on_boot: true }, r#"{"on_boot":true}"#),
        ] {
            assert_eq!(t.to_string(), text);
        }
        let added = ScheduleAnswer::Added(ScheduleAdded {
            next: vec![Some("2026-01-01T00:00:10Z".into()), None],
            schedule: "s1".into(),
        });
        assert_eq!(
            serde_json::to_string(&added).unwrap(),
            r#"{"next":["2026-01-01T00:00:10Z",null],"schedule":"s1"}"#
        );
        assert_eq!(
            serde_json::to_string(&ScheduleAnswer::Removed(ScheduleRemoved::new("s1"))).unwrap(),
            r#"{"schedule":"s1","state":"removed"}"#
        );
        assert_eq!(
            serde_json::to_string(&ScheduleAnswer::Schedule(None)).unwrap(),
            "null"
        );
    }

    /// A file exactly as the agent wrote it before these types existed.
    const OLD_FILE: &str = r#"{"id":"0190-abc","params":{"every":10,"jitter":0,"request":{"method":"getinfo.kernel"}},"state":{"anchor":1000000,"boot":null,"created":1000000,"last":1000010,"paused":false,"runs":1}}"#;

    #[test]
    fn a_file_of_the_old_agent_loads_and_is_written_back_the_same() {
        let f = ScheduleFile::parse(OLD_FILE.as_bytes(), "0190-abc").unwrap();
        assert_eq!(
            f.state,
            ScheduleState {
                anchor: 1_000_000,
                boot: None,
                created: 1_000_000,
                last: Some(1_000_010),
                paused: false,
                runs: 1,
            }
        );
        assert_eq!(f.params.request().unwrap().method(), "getinfo.kernel");
        assert_eq!(String::from_utf8(f.to_bytes()).unwrap(), OLD_FILE);
    }

    #[test]
    fn a_damaged_file_is_not_a_schedule_file() {
        for bad in [
            "",
            "{nope",
            "[1,2]",
            r#"{"params":[],"state":{"anchor":0,"created":0,"runs":0,"paused":false}}"#,
            r#"{"params":{},"state":{"anchor":0,"created":0,"runs":-1,"paused":false}}"#,
            r#"{"params":{},"state":{"anchor":0,"created":0,"runs":0}}"#,
            r#"{"params":{}}"#,
            r#"{"params":{},"state":[0,0,null,0,false,null]}"#,
        ] {
            assert!(ScheduleFile::parse(bad.as_bytes(), "x").is_none(), "{bad}");
        }
        // `last` and `boot` of another type count as absent, as before.
        let f = ScheduleFile::parse(
            br#"{"params":{},"state":{"anchor":0,"created":0,"runs":0,"paused":true,"last":"x","boot":7}}"#,
            "x",
        )
        .unwrap();
        assert_eq!((f.state.last, f.state.boot), (None, None));
    }
}
