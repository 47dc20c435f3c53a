//! The answer to one finished command: retcode, message and the `data`
//! JSON object (the only place that shapes the output).

use basicagent_abi::retcode;
use serde::Serialize;

use crate::capture::{Captured, Peeked};
use crate::identity::Identity;
use crate::job::StopReason;
use crate::spawn::{signal_name, Exit};

/// What the executor knows when bash has been reaped.
pub struct Finished<'a> {
    pub exit: Exit,
    pub stopped: Option<StopReason>,
    pub timeout_s: u64,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed_ms: u64,
    pub pid: i32,
    pub identity: &'a Identity,
}

#[derive(Serialize)]
struct Data<'a> {
    exitcode: Option<i32>,
    signal: Option<String>,
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
    pid: i32,
    user: &'a str,
    group: &'a str,
    uid: u32,
    gid: u32,
    groups: &'a [u32],
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub retcode: u32,
    /// Empty: the retcode's standard message.
    pub message: String,
    pub data: String,
}

impl Finished<'_> {
    /// Builds the answer; consumes the captures so that their buffers are
    /// freed before the host copies the JSON.
    pub fn answer(self) -> Answer {
        let (exitcode, signal, core_dumped) = match self.exit {
            Exit::Code(c) => (Some(c), None, false),
            Exit::Signal {
                signal,
                core_dumped,
            } => (None, Some(signal), core_dumped),
            Exit::Unknown => (None, None, false),
        };
        let signal_name = signal.map(signal_name);
        let (retcode, message) = match self.stopped {
            Some(StopReason::Timeout) => (
                retcode::TIMEOUT,
                format!(
                    "Timeout: stopped after {} s (process group signalled)",
                    self.timeout_s
                ),
            ),
            Some(StopReason::Cancelled) => (
                retcode::CANCELLED,
                "Cancelled: process group signalled".to_owned(),
            ),
            Some(StopReason::Shutdown) => (
                retcode::CANCELLED,
                "Cancelled: the agent is shutting down".to_owned(),
            ),
            None => match (&signal_name, self.exit) {
                (Some(name), _) => (
                    retcode::SUCCESS,
                    format!(
                        "Normal termination: killed by {name}{}, not sent by the agent",
                        if core_dumped { " (core dumped)" } else { "" }
                    ),
                ),
                (None, Exit::Unknown) => (
                    retcode::SUCCESS,
                    "Normal termination: exit status unknown (reaped elsewhere)".to_owned(),
                ),
                _ => (retcode::SUCCESS, String::new()),
            },
        };
        let id = self.identity;
        let data = Data {
            exitcode,
            signal: signal_name,
            core_dumped,
            signal_sent_by_agent: self.stopped.is_some(),
            stdout: &self.stdout.text,
            stderr: &self.stderr.text,
            stdout_bytes: self.stdout.total,
            stderr_bytes: self.stderr.total,
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            stdout_lossy: self.stdout.lossy,
            stderr_lossy: self.stderr.lossy,
            elapsed_ms: self.elapsed_ms,
            pid: self.pid,
            user: &id.user,
            group: &id.group,
            uid: id.uid,
            gid: id.gid,
            groups: &id.groups,
        };
        // Serialising plain strings, numbers and bools cannot fail.
        let data = serde_json::to_string(&data).unwrap_or_else(|_| "null".to_owned());
        Answer {
            retcode,
            message,
            data,
        }
    }
}

#[derive(Serialize)]
struct PeekData<'a> {
    running: bool,
    pid: i32,
    elapsed_ms: u64,
    stdout: &'a str,
    stderr: &'a str,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    stdout_lossy: bool,
    stderr_lossy: bool,
}

/// The `data` of a peek: a running command's output so far.
pub fn peek_data(pid: i32, elapsed_ms: u64, stdout: &Peeked<'_>, stderr: &Peeked<'_>) -> String {
    let data = PeekData {
        running: true,
        pid,
        elapsed_ms,
        stdout: &stdout.text,
        stderr: &stderr.text,
        stdout_bytes: stdout.total,
        stderr_bytes: stderr.total,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        stdout_lossy: stdout.lossy,
        stderr_lossy: stderr.lossy,
    };
    // Serialising plain strings, numbers and bools cannot fail.
    serde_json::to_string(&data).unwrap_or_else(|_| "null".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Capture;

    fn identity() -> Identity {
        Identity {
            user: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: "/root".into(),
            shell: "/bin/bash".into(),
        }
    }

    fn finished(exit: Exit, stopped: Option<StopReason>, out: &[u8]) -> serde_json::Value {
        let id = identity();
        let mut c = Capture::new(4);
        c.push(out);
        let a = Finished {
            exit,
            stopped,
            timeout_s: 3,
            stdout: c.finish(),
            stderr: Capture::new(4).finish(),
            elapsed_ms: 7,
            pid: 42,
            identity: &id,
        }
        .answer();
        let mut v: serde_json::Value = serde_json::from_str(&a.data).unwrap();
        v["_retcode"] = a.retcode.into();
        v["_message"] = a.message.into();
        v
    }

    #[test]
    fn exit_code_is_success() {
        let v = finished(Exit::Code(3), None, b"hi\xff");
        assert_eq!(v["_retcode"], 2);
        assert_eq!(v["_message"], "");
        assert_eq!(v["exitcode"], 3);
        assert_eq!(v["signal"], serde_json::Value::Null);
        assert_eq!(v["stdout"], "hi\u{FFFD}");
        assert_eq!(v["stdout_lossy"], true);
        assert_eq!(v["stdout_bytes"], 3);
        assert_eq!(
            (
                v["pid"].as_i64(),
                v["uid"].as_i64(),
                v["elapsed_ms"].as_i64()
            ),
            (Some(42), Some(0), Some(7))
        );
        assert_eq!(v["groups"], serde_json::json!([0]));
    }

    #[test]
    fn foreign_signal_says_so() {
        let v = finished(
            Exit::Signal {
                signal: 11,
                core_dumped: true,
            },
            None,
            b"",
        );
        assert_eq!(v["_retcode"], 2);
        assert_eq!(v["signal"], "SIGSEGV");
        assert_eq!(v["core_dumped"], true);
        assert_eq!(v["signal_sent_by_agent"], false);
        assert_eq!(
            v["_message"],
            "Normal termination: killed by SIGSEGV (core dumped), not sent by the agent"
        );
    }

    #[test]
    fn timeout_and_cancel() {
        let v = finished(
            Exit::Signal {
                signal: 15,
                core_dumped: false,
            },
            Some(StopReason::Timeout),
            b"partial",
        );
        assert_eq!(
            (v["_retcode"].as_u64(), v["signal_sent_by_agent"].as_bool()),
            (Some(3023), Some(true))
        );
        assert_eq!(
            (v["stdout"].as_str(), v["stdout_truncated"].as_bool()),
            (Some("part"), Some(true))
        );
        let v = finished(Exit::Code(0), Some(StopReason::Cancelled), b"");
        assert_eq!(v["_retcode"], 3028);
    }

    #[test]
    fn peek_shape() {
        let mut out = Capture::new(4);
        out.push(b"ab\xffcd");
        let mut err = Capture::new(4);
        err.push(b"e");
        let v: serde_json::Value =
            serde_json::from_str(&peek_data(9, 5, &out.peek(), &err.peek())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"running":true,"pid":9,"elapsed_ms":5,
                "stdout":"ab\u{FFFD}c","stderr":"e","stdout_bytes":5,"stderr_bytes":1,
                "stdout_truncated":true,"stderr_truncated":false,
                "stdout_lossy":true,"stderr_lossy":false})
        );
    }
}
