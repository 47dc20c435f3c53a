//! Schedules through the API: `schedule.*` requests fanned out by the call engine, and task results filtered by schedule.
//!
//! Every endpoint builds one agent request (protocol §7a) and hands it to
//! the call engine exactly as `POST /v1/call` does (one
//! node's sessions, or the cluster's fan-out for `name`/`all` targets), so answers stream as
//! NDJSON (one line per host, then the summary), are recorded in the call
//! history, and hosts that do not answer get the server's 3100–3103 lines.
//! The agent checks the trigger and options itself: its `3021 Invalid
//! params: "FIELD": REASON` answers are passed through per host. The server
//! checks only the body's shape, with 400 errors naming the field.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    err, limit, query, run_call, store, Api, ApiError, ApiResult, Page, Peer, DEFAULT_CALL_TIMEOUT,
    MAX_CALL_TIMEOUT, MAX_LIMIT,
};
use crate::admin::task_json;

/// Longest schedule id accepted in a path (the agent's are UUIDs).
const MAX_SCHEDULE_ID: usize = 128;

/// The schedule routes, merged into the API router (inside its token layer).
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/schedules", post(add).get(list))
        .route("/v1/schedules/{id}", get(one).delete(remove))
        .route("/v1/schedules/{id}/pause", post(pause))
        .route("/v1/schedules/{id}/resume", post(resume))
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, code, message)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_body"
        };
        err(status, code, e.body_text())
    })
}

fn timeout_of(t: Option<f64>) -> Result<f64, ApiError> {
    let timeout = t.unwrap_or(DEFAULT_CALL_TIMEOUT);
    if timeout.is_finite() && timeout > 0.0 && timeout <= MAX_CALL_TIMEOUT {
        Ok(timeout)
    } else {
        Err(bad(
            "bad_timeout",
            format!("\"timeout\": must be a number of seconds in (0, {MAX_CALL_TIMEOUT}]"),
        ))
    }
}

/// A schedule id from the path: what the agent could have made (no control characters, not too long).
fn schedule_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty()
        || id.len() > MAX_SCHEDULE_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(
            "bad_params",
            format!(
                "schedule id {id:?}: 1..={MAX_SCHEDULE_ID} characters of [A-Za-z0-9._-] expected"
            ),
        ));
    }
    Ok(id)
}

/// Sends `request` to `target` like `POST /v1/call` (cluster fan-out included); streams the NDJSON answer.
async fn fan_out(
    api: &Api,
    peer: std::net::SocketAddr,
    target: &Value,
    request: &Value,
    timeout: f64,
) -> ApiResult {
    let request = request.to_string();
    if let Err((_, e)) = basicagent_proto::Request::parse(request.as_bytes()) {
        return Err(bad("bad_request", format!("request: {e}")));
    }
    run_call(api, peer, target, request, timeout).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    target: Value,
    schedule: Value,
    request: Value,
    #[serde(default)]
    timeout: Option<f64>,
}

/// Keys of `schedule` that the server sets itself.
const RESERVED: [&str; 3] = ["method", "id", "request"];

/// `POST /v1/schedules`: `schedule.add` with `request` and the trigger and options of `schedule`.
async fn add(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_bytes(body)?;
    let parsed: AddBody = serde_json::from_slice(&body)
        .map_err(|e| bad("bad_json", format!("schedule body: {e}")))?;
    let timeout = timeout_of(parsed.timeout)?;
    let Value::Object(schedule) = parsed.schedule else {
        return Err(bad(
            "bad_schedule",
            "\"schedule\": must be an object with one trigger (cron, every, at, on_boot) and options",
        ));
    };
    if schedule.is_empty() {
        return Err(bad(
            "bad_schedule",
            "\"schedule\": needs a trigger: one of cron, every, at, on_boot",
        ));
    }
    if let Some(k) = RESERVED.iter().find(|k| schedule.contains_key(**k)) {
        return Err(bad(
            "bad_schedule",
            format!("\"schedule\": {k:?} is not an option (the request goes in \"request\")"),
        ));
    }
    let scheduled = match &parsed.request {
        Value::Object(r) if r.get("method").is_some_and(Value::is_string) => r,
        _ => {
            return Err(bad(
                "bad_request",
                "\"request\": must be a request object with a \"method\" string",
            ))
        }
    };
    if let Err((_, e)) =
        basicagent_proto::Request::parse(Value::Object(scheduled.clone()).to_string().as_bytes())
    {
        return Err(bad("bad_request", format!("\"request\": {e}")));
    }
    let mut request = Map::new();
    request.insert("method".into(), Value::from("schedule.add"));
    request.insert("request".into(), Value::Object(scheduled.clone()));
    request.extend(schedule);
    fan_out(&api, peer, &parsed.target, &Value::Object(request), timeout).await
}

/// Where a GET, DELETE or pause/resume goes: `?host=ID`, `?name=GLOB`, `?all=true` (default for GET: all).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetQuery {
    host: Option<String>,
    name: Option<String>,
    all: Option<bool>,
    timeout: Option<f64>,
}

/// A JSON body for DELETE and pause/resume: `{"target": {...}, "timeout": N}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    target: Value,
    #[serde(default)]
    timeout: Option<f64>,
}

/// The target and timeout from the query or the body; `default_all` for a bare GET.
fn target_of(
    q: TargetQuery,
    body: Option<Bytes>,
    default_all: bool,
) -> Result<(Value, f64), ApiError> {
    let given = [q.host.is_some(), q.name.is_some(), q.all.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    let body = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace));
    if let Some(body) = body {
        if given > 0 || q.timeout.is_some() {
            return Err(bad(
                "bad_target",
                "give the target either in the query (host, name, all) or in the body, not both",
            ));
        }
        let parsed: TargetBody = serde_json::from_slice(&body)
            .map_err(|e| bad("bad_json", format!("target body: {e}")))?;
        return Ok((parsed.target, timeout_of(parsed.timeout)?));
    }
    let timeout = timeout_of(q.timeout)?;
    if given > 1 {
        return Err(bad(
            "bad_target",
            "give one of ?host=ID, ?name=GLOB, ?all=true",
        ));
    }
    let target = if let Some(h) = q.host {
        serde_json::json!({"hosts": [h]})
    } else if let Some(n) = q.name {
        serde_json::json!({"name": n})
    } else if q.all == Some(true) || (q.all.is_none() && default_all) {
        serde_json::json!({"all": true})
    } else {
        return Err(bad(
            "bad_target",
            "a target is needed: ?host=ID, ?name=GLOB, ?all=true or a body {\"target\": {...}}",
        ));
    };
    Ok((target, timeout))
}

/// `GET /v1/schedules`: `schedule.list` on the target (default every connected agent).
async fn list(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    q: Result<Query<TargetQuery>, QueryRejection>,
) -> ApiResult {
    let (target, timeout) = target_of(query(q)?, None, true)?;
    let request = serde_json::json!({"method": "schedule.list"});
    fan_out(&api, peer, &target, &request, timeout).await
}

/// One `schedule.*` request naming the schedule `id`.
async fn by_id(
    api: Api,
    peer: std::net::SocketAddr,
    method: &str,
    id: &str,
    q: Result<Query<TargetQuery>, QueryRejection>,
    body: Option<Result<Bytes, BytesRejection>>,
) -> ApiResult {
    let id = schedule_id(id)?;
    let body = body.map(body_bytes).transpose()?;
    let (target, timeout) = target_of(query(q)?, body, false)?;
    let request = serde_json::json!({"method": method, "schedule": id});
    fan_out(&api, peer, &target, &request, timeout).await
}

/// `GET /v1/schedules/ID?host=…`: `schedule.get`.
async fn one(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(id): Path<String>,
    q: Result<Query<TargetQuery>, QueryRejection>,
) -> ApiResult {
    by_id(api, peer, "schedule.get", &id, q, None).await
}

/// `DELETE /v1/schedules/ID?host=…` (or a target body): `schedule.remove`.
async fn remove(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(id): Path<String>,
    q: Result<Query<TargetQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    by_id(api, peer, "schedule.remove", &id, q, Some(body)).await
}

/// `POST /v1/schedules/ID/pause`: `schedule.pause`.
async fn pause(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(id): Path<String>,
    q: Result<Query<TargetQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    by_id(api, peer, "schedule.pause", &id, q, Some(body)).await
}

/// `POST /v1/schedules/ID/resume`: `schedule.resume`.
async fn resume(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(id): Path<String>,
    q: Result<Query<TargetQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    by_id(api, peer, "schedule.resume", &id, q, Some(body)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskQuery {
    limit: Option<usize>,
    host: Option<String>,
    schedule: Option<String>,
}

/// `GET /v1/tasks?host=ID&schedule=SID&limit=N`: task results, newest first,
/// optionally only those of one schedule. The schedule filter looks at the
/// newest [`MAX_LIMIT`] results (of the host, if given) in the store.
pub(super) async fn tasks(
    State(api): State<Api>,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let n = limit(&Page {
        limit: q.limit,
        before: None,
        host: None,
    })?;
    let host = q.host.clone();
    let rows = match q.schedule {
        None => store(&api, move |s| s.tasks(host.as_deref(), n)).await?,
        Some(sid) => {
            let sid = schedule_id(&sid)?.to_owned();
            let rows = store(&api, move |s| s.tasks(host.as_deref(), MAX_LIMIT)).await?;
            rows.into_iter()
                .filter(|t| t.schedule.as_deref() == Some(sid.as_str()))
                .take(n)
                .collect()
        }
    };
    Ok(axum::Json(rows.iter().map(task_json).collect::<Vec<_>>()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ids() {
        assert!(schedule_id("0d6f2c1e-aaaa-4bbb-8ccc-0123456789ab").is_ok());
        assert!(schedule_id("").is_err());
        assert!(schedule_id("a/b").is_err());
        assert!(schedule_id("a\nb").is_err());
        assert!(schedule_id(&"x".repeat(MAX_SCHEDULE_ID + 1)).is_err());
    }

    #[test]
    fn targets_from_the_query() {
        let q = TargetQuery {
            host: Some("h1".into()),
            ..TargetQuery::default()
        };
        let (t, secs) = target_of(q, None, false).unwrap();
        assert_eq!(t, serde_json::json!({"hosts": ["h1"]}));
        assert_eq!(secs, DEFAULT_CALL_TIMEOUT);
        let (t, _) = target_of(TargetQuery::default(), None, true).unwrap();
        assert_eq!(t, serde_json::json!({"all": true}));
        assert!(target_of(TargetQuery::default(), None, false).is_err());
        let both = TargetQuery {
            host: Some("h1".into()),
            name: Some("*".into()),
            ..TargetQuery::default()
        };
        assert!(target_of(both, None, true).is_err());
        let body = Bytes::from_static(br#"{"target":{"name":"web-*"},"timeout":5}"#);
        let (t, secs) = target_of(TargetQuery::default(), Some(body), false).unwrap();
        assert_eq!(t, serde_json::json!({"name": "web-*"}));
        assert_eq!(secs, 5.0);
        let empty = Bytes::from_static(b" \n");
        assert!(target_of(TargetQuery::default(), Some(empty), false).is_err());
    }
}
