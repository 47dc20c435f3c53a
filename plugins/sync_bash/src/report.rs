//! The answer to one finished command: retcode, message and the `data`
//! JSON object (the only place that shapes the output).

use basicagent_abi::retcode;
use serde::Serialize;

use std::borrow::Cow;

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
    /// Processes outside the command's process group killed after it was
    /// stopped (`None`: not stopped by the agent, no search made).
    pub survivors_killed: Option<u32>,
    /// `cgroup-v2`, `hybrid`, `cgroup-v1` or `none` (this command's).
    pub containment: &'static str,
    /// Processes in the command's cgroup when the agent stopped it
    /// (`None`: not stopped, or no cgroup).
    pub processes_killed: Option<u32>,
    /// Kills by the memory limit in the command's cgroup.
    pub oom_kills: u64,
    pub usage: Usage,
    /// The interleaved chunks (is stderr, text) and whether bytes were
    /// left out; `None`: not asked for.
    pub transcript: Option<(Vec<(bool, String)>, bool)>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    stream: &'static str,
    text: &'a str,
}

/// What the command consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub cpu_user_ms: Option<u64>,
    pub cpu_system_ms: Option<u64>,
    /// Peak memory of the cgroup (`memory.peak`, v1
    /// `memory.max_usage_in_bytes`), else `ru_maxrss` of bash and the
    /// children it waited for.
    pub memory_peak_bytes: Option<u64>,
    /// Most processes at once (`pids.peak`, where the kernel has it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_peak: Option<u64>,
    pub elapsed_ms: u64,
    /// `cgroup` or `rusage` (bash and the children it waited for).
    pub source: &'static str,
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
    stdout_sha256: &'a str,
    stderr_sha256: &'a str,
    elapsed_ms: u64,
    pid: i32,
    user: &'a str,
    group: &'a str,
    uid: u32,
    gid: u32,
    groups: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    survivors_killed: Option<u32>,
    containment: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    processes_killed: Option<u32>,
    killed_by: Option<&'static str>,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<Vec<Chunk<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript_truncated: Option<bool>,
}

/// Bytes of a frame that are not `data` nor the echoed `id`: the
/// envelope (`{"id":,"resp":"success","retcode":N,"message":"…","data":}`
/// or `task.done`'s `{"method":"task.done","task":"…",…}`), the retcode's
/// standard message the host may fill in, and the `\n`. Generous.
pub const ENVELOPE_RESERVE: usize = 256;

/// Where the answer must fit: the host's frame bound, less what the
/// request's `id` takes in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameBound {
    pub max_frame: usize,
    pub id_len: usize,
}

impl FrameBound {
    /// Bytes left for `data` and `message` together.
    fn room(self) -> usize {
        self.max_frame
            .saturating_sub(ENVELOPE_RESERVE)
            .saturating_sub(self.id_len)
    }
}

/// Bytes one byte of a string takes inside a JSON string (serde_json's
/// escaping: `"` `\\` and control characters; the short forms for
/// `\b \t \n \f \r`, `\u00XX` for the others; all else verbatim).
fn escaped_byte(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0x00..=0x1f => 6,
        _ => 1,
    }
}

/// Bytes `s` takes as a JSON string body (quotes not counted).
pub fn escaped_len(s: &str) -> usize {
    s.bytes()
        .map(escaped_byte)
        .fold(0usize, usize::saturating_add)
}

/// The longest prefix of `s` (cut at a character boundary) whose escaped
/// form takes at most `room` bytes.
fn prefix_within(s: &str, room: usize) -> usize {
    let mut used = 0usize;
    for (i, c) in s.char_indices() {
        let cost = if c.is_ascii() {
            escaped_byte(c as u8)
        } else {
            c.len_utf8()
        };
        if used.saturating_add(cost) > room {
            return i;
        }
        used += cost;
    }
    s.len()
}

/// How many escaped bytes each of two texts may keep so that together
/// they take at most `room`: each gets half, and what one does not use
/// goes to the other. `None` for a text that fits whole.
fn shares(out: usize, err: usize, room: usize) -> (Option<usize>, Option<usize>) {
    if out.saturating_add(err) <= room {
        return (None, None);
    }
    let half = room / 2;
    if out <= half {
        (None, Some(room - out))
    } else if err <= half {
        (Some(room - err), None)
    } else {
        (Some(half), Some(room - half))
    }
}

/// Cuts the two texts so that their escaped forms take at most `room`
/// bytes in all; returns which were cut.
/// `keep_end` per text: cut its start instead (`truncate: "tail"`).
fn fit_pair(
    out: &mut String,
    err: &mut String,
    room: usize,
    keep_end: (bool, bool),
) -> (bool, bool) {
    let (a, b) = shares(escaped_len(out), escaped_len(err), room);
    let cut = |text: &mut String, share: Option<usize>, end: bool| match share {
        Some(share) if end => {
            let start = suffix_within(text, share);
            text.drain(..start);
            text.shrink_to_fit();
            true
        }
        Some(share) => {
            let keep = prefix_within(text, share);
            text.truncate(keep);
            text.shrink_to_fit();
            true
        }
        None => false,
    };
    (cut(out, a, keep_end.0), cut(err, b, keep_end.1))
}

/// Where the longest suffix of `s` (starting at a character boundary)
/// whose escaped form takes at most `room` bytes starts.
fn suffix_within(s: &str, room: usize) -> usize {
    let mut used = 0usize;
    for (i, c) in s.char_indices().rev() {
        let cost = if c.is_ascii() {
            escaped_byte(c as u8)
        } else {
            c.len_utf8()
        };
        if used.saturating_add(cost) > room {
            return i + c.len_utf8();
        }
        used += cost;
    }
    0
}

/// [`fit_pair`] for a peek's borrowed texts.
fn fit_peek(out: &mut Cow<'_, str>, err: &mut Cow<'_, str>, room: usize) -> (bool, bool) {
    let (a, b) = shares(escaped_len(out), escaped_len(err), room);
    let cut = |text: &mut Cow<'_, str>, share: Option<usize>| match share {
        Some(share) => {
            let keep = prefix_within(text, share);
            match text {
                Cow::Borrowed(s) => *s = &s[..keep],
                Cow::Owned(s) => s.truncate(keep),
            }
            true
        }
        None => false,
    };
    (cut(out, a), cut(err, b))
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
    /// freed before the host copies the JSON. The texts are cut (their
    /// `*_truncated` set) so that the escaped answer fits `bound`.
    pub fn answer(mut self, bound: FrameBound) -> Answer {
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
                (Some(name), _) if self.oom_kills > 0 => (
                    retcode::SUCCESS,
                    format!("Normal termination: killed by {name}: out of memory (memory_max)"),
                ),
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
        let mut transcript = self.transcript.take();
        let mut data = Data {
            exitcode,
            signal: signal_name,
            core_dumped,
            signal_sent_by_agent: self.stopped.is_some(),
            stdout: "",
            stderr: "",
            stdout_bytes: self.stdout.total,
            stderr_bytes: self.stderr.total,
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
            stdout_lossy: self.stdout.lossy,
            stderr_lossy: self.stderr.lossy,
            stdout_sha256: &self.stdout.sha256,
            stderr_sha256: &self.stderr.sha256,
            elapsed_ms: self.elapsed_ms,
            pid: self.pid,
            user: &id.user,
            group: &id.group,
            uid: id.uid,
            gid: id.gid,
            groups: &id.groups,
            survivors_killed: self.survivors_killed,
            containment: self.containment,
            processes_killed: self.processes_killed,
            killed_by: match self.stopped {
                Some(StopReason::Timeout) => Some("timeout"),
                Some(StopReason::Cancelled) => Some("cancel"),
                Some(StopReason::Shutdown) => Some("shutdown"),
                None if self.oom_kills > 0 => Some("oom"),
                None => None,
            },
            usage: self.usage,
            transcript_truncated: None,
            transcript: None,
        };
        // The transcript takes at most half of what the frame leaves;
        // the two texts share the rest.
        if let Some((chunks, truncated)) = transcript.as_mut() {
            /// `{"stream":"stderr","text":""},`
            const CHUNK_OVERHEAD: usize = 32;
            let fixed = serde_json::to_string(&data).map_or(0, |s| s.len());
            let budget = bound
                .room()
                .saturating_sub(fixed)
                .saturating_sub(escaped_len(&message).saturating_add(2))
                / 2;
            let mut used = 0usize;
            let mut keep = chunks.len();
            for (i, (_, text)) in chunks.iter_mut().enumerate() {
                let cost = escaped_len(text).saturating_add(CHUNK_OVERHEAD);
                if used.saturating_add(cost) > budget {
                    let k = prefix_within(
                        text,
                        budget.saturating_sub(used.saturating_add(CHUNK_OVERHEAD)),
                    );
                    text.truncate(k);
                    keep = i + usize::from(k > 0);
                    *truncated = true;
                    break;
                }
                used += cost;
            }
            chunks.truncate(keep);
        }
        data.transcript_truncated = transcript.as_ref().map(|(_, t)| *t);
        data.transcript = transcript.as_ref().map(|(chunks, _)| {
            chunks
                .iter()
                .map(|(stderr, text)| Chunk {
                    stream: if *stderr { "stderr" } else { "stdout" },
                    text,
                })
                .collect()
        });
        // Everything but the two texts, measured once with them empty.
        let fixed = serde_json::to_string(&data).map_or(0, |s| s.len());
        let room = bound
            .room()
            .saturating_sub(fixed)
            .saturating_sub(escaped_len(&message).saturating_add(2));
        let keep_end = (self.stdout.keep_end, self.stderr.keep_end);
        let (cut_out, cut_err) =
            fit_pair(&mut self.stdout.text, &mut self.stderr.text, room, keep_end);
        data.stdout = &self.stdout.text;
        data.stderr = &self.stderr.text;
        data.stdout_truncated |= cut_out;
        data.stderr_truncated |= cut_err;
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

/// The `data` of a peek: a running command's output so far, cut (with
/// `*_truncated` set) so that the escaped answer fits `bound`.
pub fn peek_data(
    pid: i32,
    elapsed_ms: u64,
    stdout: &Peeked<'_>,
    stderr: &Peeked<'_>,
    bound: FrameBound,
) -> String {
    let mut data = PeekData {
        running: true,
        pid,
        elapsed_ms,
        stdout: "",
        stderr: "",
        stdout_bytes: stdout.total,
        stderr_bytes: stderr.total,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        stdout_lossy: stdout.lossy,
        stderr_lossy: stderr.lossy,
    };
    let fixed = serde_json::to_string(&data).map_or(0, |s| s.len());
    let room = bound.room().saturating_sub(fixed);
    let (mut out, mut err) = (Cow::Borrowed(&*stdout.text), Cow::Borrowed(&*stderr.text));
    let (cut_out, cut_err) = fit_peek(&mut out, &mut err, room);
    data.stdout = &out;
    data.stderr = &err;
    data.stdout_truncated |= cut_out;
    data.stderr_truncated |= cut_err;
    // Serialising plain strings, numbers and bools cannot fail.
    serde_json::to_string(&data).unwrap_or_else(|_| "null".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Capture;

    const BIG: FrameBound = FrameBound {
        max_frame: 16 << 20,
        id_len: 0,
    };

    #[test]
    fn escaping_is_measured_as_serde_json_does() {
        let all: String = (0u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(escaped_len(&all), json.len() - 2);
        assert_eq!(escaped_len("\u{1}"), 6);
        assert_eq!(prefix_within("a\u{1}b", 6), 1);
        assert_eq!(prefix_within("a\u{1}b", 7), 2);
        assert_eq!(prefix_within("é€", 4), 2);
        assert_eq!(prefix_within("é€", 5), 5);
    }

    /// The transcript takes at most half of what the frame leaves; the whole answer
    /// still fits, flags set.
    #[test]
    fn transcript_fits_the_frame() {
        let id = identity();
        for max_frame in [1024usize, 4096, 100_000] {
            let big = "\u{1}".repeat(50_000);
            let a = Finished {
                exit: Exit::Code(0),
                stopped: None,
                timeout_s: 3,
                stdout: Capture::new(0).finish(),
                stderr: Capture::new(0).finish(),
                elapsed_ms: 7,
                pid: 42,
                identity: &id,
                survivors_killed: None,
                containment: "none",
                processes_killed: None,
                oom_kills: 0,
                usage: Usage::default(),
                transcript: Some((
                    vec![(false, "ok\n".into()), (true, big.clone()), (false, big)],
                    false,
                )),
            }
            .answer(FrameBound {
                max_frame,
                id_len: 30,
            });
            let frame = a.data.len() + escaped_len(&a.message) + ENVELOPE_RESERVE + 30;
            assert!(frame <= max_frame, "{frame} > {max_frame}");
            let v: serde_json::Value = serde_json::from_str(&a.data).unwrap();
            assert_eq!(v["transcript_truncated"], true);
            assert_eq!(v["transcript"][0]["text"], "ok\n");
        }
    }

    #[test]
    fn suffix_cut_keeps_the_end() {
        assert_eq!(suffix_within("a\u{1}b", 1), 2);
        assert_eq!(suffix_within("a\u{1}b", 7), 1);
        assert_eq!(suffix_within("é€", 3), 2);
        assert_eq!(suffix_within("é€", 5), 0);
        let (mut o, mut e) = ("0123456789".to_owned(), "abcdefghij".to_owned());
        assert_eq!(fit_pair(&mut o, &mut e, 8, (true, false)), (true, true));
        assert_eq!((o.as_str(), e.as_str()), ("6789", "abcd"));
    }

    #[test]
    fn shares_give_unused_room_to_the_other() {
        assert_eq!(shares(10, 10, 20), (None, None));
        assert_eq!(shares(4, 100, 20), (None, Some(16)));
        assert_eq!(shares(100, 4, 20), (Some(16), None));
        assert_eq!(shares(100, 100, 21), (Some(10), Some(11)));
    }

    /// Item 5 of issue 12: control bytes escape to six times their size;
    /// the answer still fits the frame, flags set.
    #[test]
    fn control_bytes_fit_the_frame() {
        let id = identity();
        for max_frame in [1024usize, 4096, 100_000] {
            let bound = FrameBound {
                max_frame,
                id_len: 30,
            };
            let mut out = Capture::new(1 << 20);
            out.push(&vec![1u8; 200_000]);
            let mut err = Capture::new(1 << 20);
            err.push(&[1u8; 10]);
            let a = Finished {
                exit: Exit::Code(0),
                stopped: Some(StopReason::Timeout),
                timeout_s: 3,
                stdout: out.finish(),
                stderr: err.finish(),
                elapsed_ms: 7,
                pid: 42,
                identity: &id,
                survivors_killed: Some(2),
                containment: "none",
                processes_killed: None,
                oom_kills: 0,
                usage: Usage::default(),
                transcript: None,
            }
            .answer(bound);
            let frame = a.data.len() + escaped_len(&a.message) + ENVELOPE_RESERVE + 30;
            assert!(frame <= max_frame, "{frame} > {max_frame}");
            let v: serde_json::Value = serde_json::from_str(&a.data).unwrap();
            assert_eq!(v["stdout_truncated"], true);
            // The small stream fits whole and keeps its flag clear (at
            // 1024 the fixed fields, usage and digests, leave too little).
            if max_frame >= 4096 {
                assert_eq!(
                    (
                        v["stderr_truncated"].as_bool(),
                        v["stderr"].as_str().map(str::len)
                    ),
                    (Some(false), Some(10))
                );
            }
            assert_eq!(v["stdout_bytes"], 200_000);
            assert_eq!(v["survivors_killed"], 2);
            let mut o = Capture::new(1 << 20);
            o.push(&vec![1u8; 200_000]);
            let p: serde_json::Value =
                serde_json::from_str(&peek_data(1, 1, &o.peek(), &o.peek(), bound)).unwrap();
            assert_eq!(
                (
                    p["stdout_truncated"].as_bool(),
                    p["stderr_truncated"].as_bool()
                ),
                (Some(true), Some(true))
            );
            assert!(serde_json::to_string(&p).unwrap().len() + ENVELOPE_RESERVE + 30 <= max_frame);
        }
    }

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
            survivors_killed: None,
            containment: "none",
            processes_killed: None,
            oom_kills: 0,
            usage: Usage::default(),
            transcript: None,
        }
        .answer(BIG);
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
            serde_json::from_str(&peek_data(9, 5, &out.peek(), &err.peek(), BIG)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"running":true,"pid":9,"elapsed_ms":5,
                "stdout":"ab\u{FFFD}c","stderr":"e","stdout_bytes":5,"stderr_bytes":1,
                "stdout_truncated":true,"stderr_truncated":false,
                "stdout_lossy":true,"stderr_lossy":false})
        );
    }
}
