//! One audit line as the agent writes it: the record, how it is built from
//! a request and its answer, and how big values are bounded.
//!
//! The line is the agent's own file format (not wire JSON). Its members are
//! written in alphabetical order (the order of the [`Record`] fields, and
//! the order the agent has always written them in), members that are not
//! set are left out, and `id` is always there (`null` without one).
//! `BasicAgentCtl audit verify` reads only the chain members ([`crate::verify`]),
//! so lines of older and newer agents verify alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sha256_hex;

/// Longest command text kept in a line; past it the text is cut
/// (`command_truncated`) and `command_sha256` still covers all of it. This
/// bounds a line, so the tail read at start finds the last one.
pub const COMMAND_MAX: usize = 64 * 1024;

/// Longest JSON text of any other recorded value (`id`, `args`, a limit,
/// a result field); past it the value is replaced by
/// `{"sha256": H, "bytes": N}` of its JSON. With [`COMMAND_MAX`] this keeps
/// every line well under 100 KiB, whatever a peer sends.
pub const VALUE_MAX: usize = 4096;

/// Request members recorded as the limits applied.
pub const LIMIT_KEYS: [&str; 8] = [
    "timeout",
    "memory_max",
    "pids_max",
    "cpu_max",
    "nice",
    "max_output",
    "user",
    "group",
];

/// A value as recorded: itself, or its digest if its JSON is too long.
fn bounded(v: Value) -> Value {
    let text = v.to_string();
    if text.len() <= VALUE_MAX {
        v
    } else {
        serde_json::json!({ "sha256": sha256_hex(text.as_bytes()), "bytes": text.len() })
    }
}

/// A wall-clock instant as a line records it: RFC 3339 with milliseconds
/// (`requested`, `time`) and Unix milliseconds (`requested_ms`, `unix_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub rfc3339: String,
    pub unix_ms: i64,
}

/// `rotated_from` of the first line after a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedFrom {
    /// The rotated file's name (`audit.log.1`); `null` if it had none.
    pub file: Option<String>,
    /// The hash of its last line (this line's `prev`).
    pub last: String,
}

/// `torn` of the first line after a start that cut a torn last line off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Torn {
    /// Bytes cut off.
    pub bytes: usize,
    /// Their SHA-256.
    pub sha256: String,
}

/// Whether a line keeps the command text (`audit.commands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandText {
    /// The text (cut at [`COMMAND_MAX`]) and its SHA-256.
    Full,
    /// Only its SHA-256.
    Hash,
}

/// Why a record could not be turned into a line.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit record as JSON: {0}")]
pub struct RecordError(#[from] serde_json::Error);

/// One line of the audit log. Fields are declared in the order they are
/// written (alphabetical); keep it so when adding one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containment: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Value>,
    /// The request's id; `null` without one (always written).
    pub id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Value>,
    /// The hash of the line before (set by the writer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes_killed: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retcode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<RotatedFrom>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_sha256: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_sha256: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn: Option<Torn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Value>,
}

/// Result members copied from a plugin's answer data (others are skipped
/// unread: the streams themselves never reach the log). `null` counts as
/// absent.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Outcome {
    exitcode: Option<Value>,
    signal: Option<Value>,
    killed_by: Option<Value>,
    processes_killed: Option<Value>,
    containment: Option<Value>,
    usage: Option<Value>,
    stdout_bytes: Option<Value>,
    stderr_bytes: Option<Value>,
    stdout_sha256: Option<Value>,
    stderr_sha256: Option<Value>,
    user: Option<Value>,
    group: Option<Value>,
    uid: Option<Value>,
    gid: Option<Value>,
}

impl Record {
    /// The line of a request, as far as it is known when the request
    /// arrives: who sent it (`server`, `fingerprint`), `id` (its JSON
    /// text, as the frame has it), `method`, the command's SHA-256 (and by
    /// `text` the command itself), `args` and the [`LIMIT_KEYS`] present.
    /// `frame` is the whole request; what does not parse is left out.
    pub fn request(
        server: &str,
        fingerprint: &str,
        id: Option<&str>,
        method: &str,
        frame: &[u8],
        text: CommandText,
        requested: Stamp,
    ) -> Record {
        let mut r = Record {
            requested: Some(requested.rfc3339),
            requested_ms: Some(requested.unix_ms),
            server: Some(server.to_owned()),
            fingerprint: Some(fingerprint.to_owned()),
            id: bounded(
                id.and_then(|t| serde_json::from_str::<Value>(t).ok())
                    .unwrap_or(Value::Null),
            ),
            method: Some(bounded(Value::String(method.to_owned()))),
            ..Record::default()
        };
        let request = serde_json::from_slice::<Value>(frame).unwrap_or(Value::Null);
        if let Some(cmd) = request.get("cmd").and_then(Value::as_str) {
            r.command_sha256 = Some(sha256_hex(cmd.as_bytes()));
            if text == CommandText::Full {
                let mut cut = cmd.len().min(COMMAND_MAX);
                while !cmd.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.command = Some(cmd[..cut].to_owned());
                if cut < cmd.len() {
                    r.command_truncated = Some(true);
                }
            }
        }
        if let Some(args) = request.get("args") {
            r.args = Some(bounded(args.clone()));
        }
        let limits: BTreeMap<String, Value> = LIMIT_KEYS
            .iter()
            .filter_map(|k| {
                request
                    .get(*k)
                    .map(|v| ((*k).to_owned(), bounded(v.clone())))
            })
            .collect();
        if !limits.is_empty() {
            r.limits = Some(limits);
        }
        r
    }

    /// Completes the line at answer time: `time`, `unix_ms`, `retcode`, and
    /// the outcome members found in the answer's `data` (each bounded).
    pub fn finish(&mut self, retcode: u32, data: Option<&str>, time: Stamp) {
        self.time = Some(time.rfc3339);
        self.unix_ms = Some(time.unix_ms);
        self.retcode = Some(retcode);
        let o = data
            .and_then(|d| serde_json::from_str::<Outcome>(d).ok())
            .unwrap_or_default();
        let b = |v: Option<Value>, to: &mut Option<Value>| {
            if let Some(v) = v {
                *to = Some(bounded(v));
            }
        };
        b(o.exitcode, &mut self.exitcode);
        b(o.signal, &mut self.signal);
        b(o.killed_by, &mut self.killed_by);
        b(o.processes_killed, &mut self.processes_killed);
        b(o.containment, &mut self.containment);
        b(o.usage, &mut self.usage);
        b(o.stdout_bytes, &mut self.stdout_bytes);
        b(o.stderr_bytes, &mut self.stderr_bytes);
        b(o.stdout_sha256, &mut self.stdout_sha256);
        b(o.stderr_sha256, &mut self.stderr_sha256);
        b(o.user, &mut self.user);
        b(o.group, &mut self.group);
        b(o.uid, &mut self.uid);
        b(o.gid, &mut self.gid);
    }

    /// The line's bytes, without the `\n`.
    pub fn to_line(&self) -> Result<Vec<u8>, RecordError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Reads a line back (tests, tools). Unknown members are ignored.
    pub fn from_line(line: &[u8]) -> Result<Record, RecordError> {
        Ok(serde_json::from_slice(line)?)
    }
}

impl Torn {
    /// The record of `bytes` cut off.
    pub fn of(bytes: &[u8]) -> Torn {
        Torn {
            bytes: bytes.len(),
            sha256: sha256_hex(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn stamp(ms: i64) -> Stamp {
        Stamp {
            rfc3339: format!("2026-12-01T00:00:00.{:03}Z", ms % 1000),
            unix_ms: ms,
        }
    }

    /// The line the agent wrote before the record was a type: a
    /// `serde_json::Map` (sorted keys) filled member by member.
    fn old_line(map: &Map<String, Value>) -> String {
        Value::Object(map.clone()).to_string()
    }

    #[test]
    fn every_member_is_written_where_the_map_wrote_it() {
        let v = |s: &str| Value::String(s.to_owned());
        let r = Record {
            args: Some(json!(["-a", {"z": 1, "a": 2}])),
            command: Some("echo hi".into()),
            command_sha256: Some("c".into()),
            command_truncated: Some(true),
            containment: Some(json!("cgroup")),
            exitcode: Some(json!(0)),
            fingerprint: Some("fp".into()),
            gid: Some(json!(0)),
            group: Some(v("root")),
            id: json!(7),
            killed_by: Some(v("timeout")),
            limits: Some(BTreeMap::from([
                ("user".to_owned(), v("nobody")),
                ("timeout".to_owned(), json!(5)),
            ])),
            method: Some(v("sync.bash")),
            prev: Some("p".into()),
            processes_killed: Some(json!(2)),
            refused: Some("audit log failing".into()),
            requested: Some("t0".into()),
            requested_ms: Some(1),
            retcode: Some(3026),
            rotated_from: Some(RotatedFrom {
                file: Some("audit.log.1".into()),
                last: "l".into(),
            }),
            run: Some(3),
            schedule: Some("s".into()),
            server: Some("127.0.0.1:1".into()),
            signal: Some(json!(9)),
            stderr_bytes: Some(json!(0)),
            stderr_sha256: Some(v("e")),
            stdout_bytes: Some(json!(3)),
            stdout_sha256: Some(v("o")),
            task: Some("t".into()),
            time: Some("t1".into()),
            torn: Some(Torn {
                bytes: 12,
                sha256: "h".into(),
            }),
            uid: Some(json!(0)),
            unix_ms: Some(2),
            usage: Some(json!({"cpu_user_ms": 1, "cpu_system_ms": 2})),
            user: Some(v("root")),
        };
        let as_map = match serde_json::to_value(&r).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        };
        assert_eq!(as_map.len(), 35, "every member set");
        let line = String::from_utf8(r.to_line().unwrap()).unwrap();
        assert_eq!(line, old_line(&as_map));
        assert_eq!(Record::from_line(line.as_bytes()).unwrap(), r);
    }

    #[test]
    fn a_request_and_its_answer_make_the_line_the_map_made() {
        let frame = br#"{"id":"a","method":"sync.bash","cmd":"echo secret","timeout":5,"user":"nobody","args":"x"}"#;
        let mut r = Record::request(
            "127.0.0.1:1",
            "ab",
            Some("\"a\""),
            "sync.bash",
            frame,
            CommandText::Full,
            stamp(1_000),
        );
        let data = r#"{"exitcode":0,"signal":null,"stdout":"secret\n","stdout_bytes":7,"uid":65534,"usage":{"cpu_user_ms":1}}"#;
        r.finish(0, Some(data), stamp(2_005));
        r.prev = Some("0".repeat(64));
        // The members, as the map-building code inserted them.
        let mut m = Map::new();
        m.insert("requested".into(), json!("2026-12-01T00:00:00.000Z"));
        m.insert("requested_ms".into(), json!(1000));
        m.insert("server".into(), json!("127.0.0.1:1"));
        m.insert("fingerprint".into(), json!("ab"));
        m.insert("id".into(), json!("a"));
        m.insert("method".into(), json!("sync.bash"));
        m.insert("command_sha256".into(), json!(sha256_hex(b"echo secret")));
        m.insert("command".into(), json!("echo secret"));
        m.insert("args".into(), json!("x"));
        m.insert("limits".into(), json!({"timeout": 5, "user": "nobody"}));
        m.insert("time".into(), json!("2026-12-01T00:00:00.005Z"));
        m.insert("unix_ms".into(), json!(2005));
        m.insert("retcode".into(), json!(0));
        m.insert("exitcode".into(), json!(0));
        m.insert("usage".into(), json!({"cpu_user_ms": 1}));
        m.insert("stdout_bytes".into(), json!(7));
        m.insert("uid".into(), json!(65534));
        m.insert("prev".into(), json!("0".repeat(64)));
        assert_eq!(
            String::from_utf8(r.to_line().unwrap()).unwrap(),
            old_line(&m)
        );
    }

    #[test]
    fn no_id_is_null_and_big_values_become_digests() {
        let big = "y".repeat(VALUE_MAX + 1);
        let frame = json!({"cmd": "c".repeat(COMMAND_MAX + 10), "args": big}).to_string();
        let r = Record::request(
            "local",
            "local",
            None,
            "sync.bash",
            frame.as_bytes(),
            CommandText::Hash,
            stamp(0),
        );
        let v: Value = serde_json::from_slice(&r.to_line().unwrap()).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert!(v.get("command").is_none(), "hash mode keeps no text");
        assert!(v.get("command_truncated").is_none());
        let text = Value::String(big).to_string();
        assert_eq!(
            v["args"],
            json!({"bytes": text.len(), "sha256": sha256_hex(text.as_bytes())})
        );
        // Bad JSON in a frame or an answer leaves those members out.
        let mut r = Record::request(
            "local",
            "local",
            Some("{"),
            "m",
            b"{",
            CommandText::Full,
            stamp(0),
        );
        r.finish(1, Some("not json"), stamp(1));
        assert_eq!(r.id, Value::Null);
        assert_eq!((r.command_sha256, r.exitcode), (None, None));
    }

    #[test]
    fn verify_accepts_a_line_of_the_map_era_followed_by_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        // As the agent wrote it before Record (a sorted Map), with a member
        // no Record has (`n`): verify reads only the chain members.
        let old = format!(
            r#"{{"fingerprint":"local","id":null,"method":"getinfo.kernel","n":1,"prev":"{}","requested":"2026-12-01T20:00:00.000Z","requested_ms":1796155200000,"retcode":0,"server":"local","time":"2026-12-01T20:00:00.001Z","unix_ms":1796155200001}}"#,
            crate::GENESIS
        );
        let mut text = format!("{old}\n");
        let mut prev = sha256_hex(old.as_bytes());
        for i in 0..2 {
            let mut r = Record::request(
                "127.0.0.1:1",
                "ab",
                Some(&i.to_string()),
                "sync.bash",
                br#"{"cmd":"true"}"#,
                CommandText::Full,
                stamp(i),
            );
            r.finish(0, Some(r#"{"exitcode":0}"#), stamp(i + 1));
            r.prev = Some(prev.clone());
            let line = r.to_line().expect("line");
            prev = sha256_hex(&line);
            text.push_str(std::str::from_utf8(&line).expect("utf-8"));
            text.push('\n');
        }
        std::fs::write(&path, text).expect("write");
        let ok = crate::verify(&[path]).expect("verifies");
        assert_eq!((ok.lines, ok.last), (3, prev));
    }

    #[test]
    fn a_multibyte_command_is_cut_on_a_character_boundary() {
        let cmd = "é".repeat(COMMAND_MAX);
        let frame = json!({ "cmd": cmd }).to_string();
        let r = Record::request(
            "l",
            "l",
            None,
            "sync.bash",
            frame.as_bytes(),
            CommandText::Full,
            stamp(0),
        );
        let kept = r.command.unwrap();
        assert!(kept.len() <= COMMAND_MAX && kept.len() >= COMMAND_MAX - 1);
        assert_eq!(r.command_truncated, Some(true));
        assert_eq!(r.command_sha256, Some(sha256_hex(cmd.as_bytes())));
    }
}
