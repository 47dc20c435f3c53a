//! The admin socket: a Unix socket where `list`, `tasks`, `call` and `send` are served, one command per connection.
//!
//! Wire (private to this binary; both ends are here and in
//! `admin_client`): the client writes one JSON [`AdminRequest`] line (for
//! `send`, followed by exactly `len` raw bytes); the server answers with
//! result lines (JSON objects), `{"admin_error":"..."}` lines for what went
//! wrong, and a last `{"admin_done":true|false}` line, then closes. Each
//! client gets its own tokio task; `call` runs on the same engine as
//! `POST /v1/call` (see `call`).

use std::sync::Arc;
use std::time::Duration;

use basicagent_proto::{Request, Response, TaskDone};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::call::{self, CallItem, CallSpec, Outcome};
use crate::registry::CallEvent;
use crate::state::Shared;

/// Longest request header line accepted on the admin socket.
const MAX_HEADER: u64 = 1024 * 1024;
/// Most task results `tasks` prints.
pub const TASKS_LIMIT: usize = 10_000;

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
pub async fn serve_client(shared: Arc<Shared>, stream: UnixStream) {
    if let Err(e) = serve(&shared, stream).await {
        log::warn!("admin client: {e}");
    }
}

struct Output {
    stream: tokio::net::unix::OwnedWriteHalf,
    ok: bool,
}

impl Output {
    async fn line(&mut self, json: &str) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(json.len() + 1);
        buf.extend_from_slice(json.as_bytes());
        buf.push(b'\n');
        self.stream.write_all(&buf).await
    }

    async fn problem(&mut self, message: String) -> std::io::Result<()> {
        self.ok = false;
        let line = serde_json::to_string(&AdminProblem {
            admin_error: message,
        })
        .map_err(std::io::Error::other)?;
        self.line(&line).await
    }

    async fn done(mut self) -> std::io::Result<()> {
        let line = serde_json::to_string(&AdminDone {
            admin_done: self.ok,
        })
        .map_err(std::io::Error::other)?;
        self.line(&line).await?;
        self.stream.flush().await
    }
}

/// The `tasks` lines (also the API's task objects): one per host and task.
pub fn task_json(t: &basicagent_store::TaskResult) -> serde_json::Value {
    let done = TaskDone::parse(t.frame.as_bytes()).ok();
    let data: Option<serde_json::Value> = done
        .as_ref()
        .and_then(|d| d.data.as_ref())
        .and_then(|d| serde_json::from_str(d.get()).ok());
    let retcode = basicagent_proto::Retcode(u32::try_from(t.retcode).unwrap_or(u32::MAX));
    json!({
        "host": t.host, "task": t.task, "resp": retcode.resp(),
        "retcode": t.retcode, "message": t.message, "data": data,
        "received_at": (t.received_at as f64) / 1000.0,
        "schedule": t.schedule,
        "scheduled_at": done.as_ref().and_then(|d| d.run.as_ref()).map(|r| r.scheduled_at),
        "run": done.as_ref().and_then(|d| d.run.as_ref()).map(|r| r.run),
    })
}

async fn serve(shared: &Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut header = Vec::new();
    (&mut reader)
        .take(MAX_HEADER)
        .read_until(b'\n', &mut header)
        .await?;
    let mut out = Output {
        stream: write,
        ok: true,
    };
    log::debug!("admin request {:?}", String::from_utf8_lossy(&header));
    let request: AdminRequest = match serde_json::from_slice(&header) {
        Ok(r) => r,
        Err(e) => {
            out.problem(format!("bad admin request: {e}")).await?;
            return out.done().await;
        }
    };
    match request {
        AdminRequest::List => {
            for agent in shared.registry.agents() {
                let line = serde_json::to_string(&*agent).map_err(std::io::Error::other)?;
                out.line(&line).await?;
            }
        }
        AdminRequest::Tasks => match shared.storage.read(|s| s.tasks(None, TASKS_LIMIT)).await {
            Ok(mut tasks) => {
                tasks.sort_by(|a, b| (&a.host, &a.task).cmp(&(&b.host, &b.task)));
                for t in &tasks {
                    out.line(&task_json(t).to_string()).await?;
                }
            }
            Err(e) => out.problem(format!("store: {e}")).await?,
        },
        AdminRequest::Call {
            host,
            all,
            timeout,
            request,
        } => admin_call(shared, &mut out, host, all, timeout, request).await?,
        AdminRequest::Send { host, len, timeout } => {
            let mut bytes = Vec::new();
            reader.take(len).read_to_end(&mut bytes).await?;
            if bytes.len() as u64 != len {
                out.problem(format!(
                    "expected {len} bytes after the header, got {}",
                    bytes.len()
                ))
                .await?;
            } else {
                send(shared, &mut out, &host, bytes, timeout).await?;
            }
        }
    }
    out.done().await
}

/// Seconds as a duration, clamped to what a `Duration` holds.
pub fn seconds(timeout: f64) -> Duration {
    Duration::try_from_secs_f64(timeout.max(0.0))
        .unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
}

async fn admin_call(
    shared: &Arc<Shared>,
    out: &mut Output,
    host: Option<String>,
    all: bool,
    timeout: f64,
    text: String,
) -> std::io::Result<()> {
    if let Err((_, e)) = Request::parse(text.as_bytes()) {
        return out.problem(format!("invalid request: {e}")).await;
    }
    let (hosts, target) = match (all, host) {
        (true, _) => (
            shared
                .registry
                .agents()
                .iter()
                .map(|a| a.host.clone())
                .collect(),
            json!({"all": true}),
        ),
        (false, Some(h)) => (vec![h.clone()], json!({"hosts": [h]})),
        (false, None) => return out.problem("give --host ID or --all".into()).await,
    };
    if hosts.is_empty() {
        return out.problem("no agent is connected".into()).await;
    }
    let spec = CallSpec {
        hosts,
        request: text,
        timeout: seconds(timeout),
        who: "admin".into(),
        target: target.to_string(),
        fanout: None,
    };
    let mut items = call::start(shared.clone(), spec);
    while let Some(item) = items.recv().await {
        match item {
            CallItem::Host {
                outcome: Outcome::Answered,
                response,
                line,
                ..
            } => {
                let line = if all { line } else { response.to_json() };
                out.line(&line).await?;
            }
            CallItem::Host { response, .. } => out.problem(response.message).await?,
            CallItem::Summary(_) => break,
        }
    }
    Ok(())
}

async fn send(
    shared: &Shared,
    out: &mut Output,
    host: &str,
    mut bytes: Vec<u8>,
    timeout: f64,
) -> std::io::Result<()> {
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Err(e) = shared.registry.send_raw(host, Bytes::from(bytes), tx) {
        return out.problem(e.to_string()).await;
    }
    if let Ok(Some(CallEvent::Answered { response, .. })) =
        tokio::time::timeout(seconds(timeout), rx.recv()).await
    {
        let response: Response = response;
        out.line(&response.to_json()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
