//! The admin socket: a Unix socket where `list`, `tasks`, `call` and `send` are served, one command per connection.
//!
//! Wire (private to this binary; both ends are here and in
//! `admin_client`): the client writes one JSON [`AdminRequest`] line (for
//! `send`, followed by exactly `len` raw bytes); the server answers with
//! result lines (JSON objects), `{"admin_error":"..."}` lines for what went
//! wrong, and a last `{"admin_done":true|false}` line, then closes. Each
//! client gets its own thread, which may block waiting for agents.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_proto::{Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::registry::{CallEvent, Sent};
use crate::serve::Shared;

/// Longest request header line accepted on the admin socket.
const MAX_HEADER: u64 = 1024 * 1024;

/// One admin command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    List,
    Tasks,
    /// Send `request` (a JSON object) to `host`, or to every agent with
    /// `all`, and wait up to `timeout` seconds for each answer.
    Call {
        host: Option<String>,
        all: bool,
        timeout: f64,
        request: String,
    },
    /// Send `len` raw bytes (following the header) to `host` verbatim and
    /// wait up to `timeout` seconds for an `"id": null` answer.
    Send {
        host: String,
        len: u64,
        timeout: f64,
    },
}

/// The last line of every answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminDone {
    pub admin_done: bool,
}

/// A problem line (printed on stderr by the client).
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminProblem {
    pub admin_error: String,
}

/// Serves one admin client to the end; errors are only logged.
pub fn serve_client(shared: Arc<Shared>, stream: UnixStream) {
    if let Err(e) = serve(&shared, stream) {
        log::warn!("admin client: {e}");
    }
}

struct Output {
    stream: UnixStream,
    ok: bool,
}

impl Output {
    fn line(&mut self, json: &str) -> io::Result<()> {
        self.stream.write_all(json.as_bytes())?;
        self.stream.write_all(b"\n")
    }

    fn problem(&mut self, message: String) -> io::Result<()> {
        self.ok = false;
        let line = serde_json::to_string(&AdminProblem {
            admin_error: message,
        })
        .map_err(io::Error::other)?;
        self.line(&line)
    }

    fn done(mut self) -> io::Result<()> {
        let line = serde_json::to_string(&AdminDone {
            admin_done: self.ok,
        })
        .map_err(io::Error::other)?;
        self.line(&line)?;
        self.stream.flush()
    }
}

fn serve(shared: &Shared, stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut header = Vec::new();
    (&mut reader)
        .take(MAX_HEADER)
        .read_until(b'\n', &mut header)?;
    let mut out = Output { stream, ok: true };
    let request: AdminRequest = match serde_json::from_slice(&header) {
        Ok(r) => r,
        Err(e) => {
            out.problem(format!("bad admin request: {e}"))?;
            return out.done();
        }
    };
    match request {
        AdminRequest::List => {
            for agent in shared.registry.agents() {
                out.line(&serde_json::to_string(&agent).map_err(io::Error::other)?)?;
            }
        }
        AdminRequest::Tasks => {
            for t in shared.registry.tasks() {
                let line = json!({
                    "host": t.host, "task": t.done.task, "resp": t.done.retcode.resp(),
                    "retcode": t.done.retcode.0, "message": t.done.message, "data": t.done.data,
                    "schedule": t.done.run.as_ref().map(|r| &r.schedule),
                    "scheduled_at": t.done.run.as_ref().map(|r| r.scheduled_at),
                    "run": t.done.run.as_ref().map(|r| r.run),
                    "received_at": t.received_at,
                });
                out.line(&line.to_string())?;
            }
        }
        AdminRequest::Call {
            host,
            all,
            timeout,
            request,
        } => call(shared, &mut out, host, all, timeout, &request)?,
        AdminRequest::Send { host, len, timeout } => {
            let mut bytes = Vec::new();
            reader.take(len).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != len {
                out.problem(format!(
                    "expected {len} bytes after the header, got {}",
                    bytes.len()
                ))?;
            } else {
                send(shared, &mut out, &host, bytes, timeout)?;
            }
        }
    }
    out.done()
}

fn seconds(timeout: f64) -> Duration {
    Duration::try_from_secs_f64(timeout.max(0.0))
        .unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
}

fn call(
    shared: &Shared,
    out: &mut Output,
    host: Option<String>,
    all: bool,
    timeout: f64,
    text: &str,
) -> io::Result<()> {
    let request = match Request::parse(text.as_bytes()) {
        Ok(r) => r,
        Err((_, e)) => return out.problem(format!("invalid request: {e}")),
    };
    let targets: Vec<String> = match (all, host) {
        (true, _) => shared.registry.hosts(),
        (false, Some(h)) => vec![h],
        (false, None) => return out.problem("give --host ID or --all".into()),
    };
    if targets.is_empty() {
        return out.problem("no agent is connected".into());
    }
    let (tx, rx) = channel();
    let mut waiting: Vec<Option<Sent>> = Vec::with_capacity(targets.len());
    for (tag, host) in targets.iter().enumerate() {
        match shared
            .registry
            .send_request(host, &request, tx.clone(), tag)
        {
            Ok(sent) => {
                shared.events.emit(
                    "request",
                    json!({"host": host, "id": sent.id, "method": request.method}),
                );
                waiting.push(Some(sent));
            }
            Err(e) => {
                waiting.push(None);
                out.problem(e.to_string())?;
            }
        }
    }
    drop(tx);
    let deadline = Instant::now() + seconds(timeout);
    while waiting.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(CallEvent::Answered { tag, mut response }) => {
                let Some(slot) = waiting.get_mut(tag) else {
                    continue;
                };
                if slot.take().is_none() {
                    continue;
                }
                if let Some(id) = &request.id {
                    response.id = Some(id.clone());
                }
                out.line(&response_line(
                    all.then_some(targets[tag].as_str()),
                    &response,
                ))?;
            }
            Ok(CallEvent::Gone { tag }) => {
                if let Some(Some(_)) = waiting.get_mut(tag).map(Option::take) {
                    out.problem(format!(
                        "host {}: disconnected before answering",
                        targets[tag]
                    ))?;
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for (tag, slot) in waiting.iter_mut().enumerate() {
        if let Some(sent) = slot.take() {
            shared.registry.forget(sent);
            out.problem(format!(
                "host {}: no response within {timeout} s",
                targets[tag]
            ))?;
        }
    }
    Ok(())
}

/// The response as printed: the agent's object, with `"host"` first when
/// several agents were called.
fn response_line(host: Option<&str>, response: &Response) -> String {
    let json = response.to_json();
    match (host, json.strip_prefix('{')) {
        (Some(host), Some(rest)) => {
            let host = serde_json::to_string(host).unwrap_or_else(|_| String::from("null"));
            if rest.starts_with('}') {
                format!("{{\"host\":{host}{rest}")
            } else {
                format!("{{\"host\":{host},{rest}")
            }
        }
        _ => json,
    }
}

fn send(
    shared: &Shared,
    out: &mut Output,
    host: &str,
    mut bytes: Vec<u8>,
    timeout: f64,
) -> io::Result<()> {
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    let (tx, rx) = channel();
    let sent = match shared.registry.send_raw(host, bytes, tx) {
        Ok(sent) => sent,
        Err(e) => return out.problem(e.to_string()),
    };
    if let Ok(CallEvent::Answered { response, .. }) = rx.recv_timeout(seconds(timeout)) {
        out.line(&response.to_json())?;
    }
    shared.registry.unwatch_null(sent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_goes_first() {
        let r = Response::new(None, basicagent_proto::Retcode::SUCCESS);
        assert_eq!(
            response_line(Some("h\"1"), &r),
            r#"{"host":"h\"1","id":null,"resp":"success","retcode":2,"message":"Normal termination"}"#
        );
        assert_eq!(response_line(None, &r), r.to_json());
    }

    #[test]
    fn requests_round_trip() {
        let r = AdminRequest::Send {
            host: "h".into(),
            len: 3,
            timeout: 1.5,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"send","host":"h","len":3,"timeout":1.5}"#);
        assert!(matches!(
            serde_json::from_str(&text).unwrap(),
            AdminRequest::Send { len: 3, .. }
        ));
    }
}
