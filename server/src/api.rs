//! The operator HTTP API (axum): agents, calls streamed as NDJSON, tasks, call history, Prometheus metrics.
//!
//! Every error is `{"error":{"code":"...","message":"..."}}` with a fitting
//! status (400 bad JSON or parameters, 401 token, 404 unknown host, task,
//! call or target, 405 method, 413 body too large, 504 store too slow).
//! With a token file, every request needs `Authorization: Bearer TOKEN`.
//! The endpoints and their shapes are in docs/api.md.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::task_json;
use crate::call::{self, CallItem, CallSpec};
use crate::registry::AgentInfo;
use crate::serve::Shared;

#[path = "api_schedules.rs"]
mod schedules;

/// Largest request body (a call's JSON).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest a call may wait for answers.
pub const MAX_CALL_TIMEOUT: f64 = 3600.0;
/// A call's timeout when the body gives none.
pub const DEFAULT_CALL_TIMEOUT: f64 = 30.0;
/// Longest a store read may take before the API answers 504.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and largest page for lists from the store.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// The API's listener: at most `permits` connections open at once (each
/// holds a descriptor from the reserve); more wait in the kernel's backlog
/// instead of taking descriptors the server needs.
pub struct LimitedListener {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: tokio::net::TcpListener, connections: usize) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(connections.max(1))),
        }
    }
}

/// One API connection with its permit (released when the connection is dropped).
pub struct LimitedIo {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for LimitedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, SocketAddr) {
        loop {
            // Closed never happens: the semaphore lives as long as the listener.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    return (
                        LimitedIo {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    )
                }
                Err(e) => {
                    log::warn!("API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The API client's address (`ConnectInfo` for [`LimitedListener`]).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

/// The router for `shared`; `token` from `--api-token-file`.
pub fn router(shared: Arc<Shared>, token: Option<String>) -> Router {
    let state = Api {
        shared,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/v1/agents", get(agents))
        .route("/v1/agents/count", get(agents_count))
        .route("/v1/agents/{host}", get(agent))
        .route("/v1/call", post(call_handler))
        .route("/v1/calls", get(calls))
        .route("/v1/calls/{id}", get(call_by_id))
        .route("/v1/tasks", get(schedules::tasks))
        .route("/v1/tasks/{task}", get(task))
        .route("/metrics", get(metrics))
        .merge(schedules::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn not_found() -> ApiError {
    err(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    err(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// Byte-wise comparison whose time does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(api): State<Api>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => {}
            Some(_) => {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "the bearer token is wrong",
                )
                .into_response()
            }
            None => {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "no_token",
                    "this API needs Authorization: Bearer TOKEN",
                )
                .into_response()
            }
        }
    }
    next.run(req).await
}

/// Matches `*` (any run) and `?` (one character); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentFilter {
    name: Option<String>,
    host: Option<String>,
    plugin: Option<String>,
}

impl AgentFilter {
    fn keeps(&self, a: &AgentInfo) -> bool {
        self.host.as_ref().is_none_or(|h| *h == a.host)
            && self.name.as_ref().is_none_or(|g| glob_match(g, &a.name))
            && self
                .plugin
                .as_ref()
                .is_none_or(|m| a.plugins.iter().any(|p| p == m))
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| err(StatusCode::BAD_REQUEST, "bad_params", e.body_text()))
}

fn agent_json(a: &AgentInfo) -> Value {
    json!({"host": a.host, "name": a.name, "addr": a.peer, "version": a.version,
           "plugins": a.plugins, "connected_at": a.connected_at})
}

async fn agents(
    State(api): State<Api>,
    q: Result<Query<AgentFilter>, QueryRejection>,
) -> ApiResult {
    let filter = query(q)?;
    let list: Vec<Value> = api
        .shared
        .registry
        .agents()
        .iter()
        .filter(|a| filter.keeps(a))
        .map(|a| agent_json(a))
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn agents_count(
    State(api): State<Api>,
    q: Result<Query<AgentFilter>, QueryRejection>,
) -> ApiResult {
    let filter = query(q)?;
    let agents = api.shared.registry.agents();
    let count = agents.iter().filter(|a| filter.keeps(a)).count();
    Ok(axum::Json(json!({"count": count})).into_response())
}

/// Runs a store read, mapping a slow store to 504 and a failing one to 500.
async fn store<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&dyn basicagent_store::Store) -> Result<T, basicagent_store::StoreError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, api.shared.storage.read(f)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, "store", e)),
        Err(_) => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            "store_timeout",
            format!(
                "the store did not answer within {} s",
                STORE_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))
}

async fn agent(State(api): State<Api>, Path(host): Path<String>) -> ApiResult {
    let online = api.shared.registry.agent(&host);
    let key = host.clone();
    let row = store(&api, move |s| s.agent(&key)).await?;
    if online.is_none() && row.is_none() {
        return Err(err(
            StatusCode::NOT_FOUND,
            "unknown_host",
            format!("no agent with host id {host:?} was ever seen"),
        ));
    }
    let mut out = match &online {
        Some(a) => agent_json(a),
        None => json!({"host": host, "connected_at": null}),
    };
    out["online"] = Value::Bool(online.is_some());
    if let Some(row) = row {
        out["first_seen"] = json!(row.first_seen);
        out["last_seen"] = json!(row.last_seen);
        if online.is_none() {
            out["name"] = json!(row.name);
            out["addr"] = json!(row.addr);
            out["version"] = json!(row.version);
            out["plugins"] = json!(row.plugins);
        }
        let facts: serde_json::Map<String, Value> = row
            .facts
            .iter()
            .map(|f| {
                (
                    f.method.clone(),
                    json!({"data": json_text(&f.data), "at": f.at}),
                )
            })
            .collect();
        out["facts"] = Value::Object(facts);
    }
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    target: Value,
    request: Box<serde_json::value::RawValue>,
    #[serde(default)]
    timeout: Option<f64>,
}

/// The hosts a target names (connected ones for `name` and `all`; listed ones as given).
fn resolve(shared: &Shared, target: &Value) -> Result<Vec<String>, ApiError> {
    let bad = |m: &str| err(StatusCode::BAD_REQUEST, "bad_target", m.to_owned());
    let obj = target.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        bad("target must be one of {\"hosts\":[ID,...]}, {\"name\":GLOB}, {\"all\":true}")
    })?;
    if let Some(hosts) = obj.get("hosts") {
        let list = hosts
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("target.hosts must be a non-empty array of host ids"))?;
        let mut out = Vec::with_capacity(list.len());
        for h in list {
            let h = h
                .as_str()
                .ok_or_else(|| bad("target.hosts must hold strings"))?;
            if !out.iter().any(|o| o == h) {
                out.push(h.to_owned());
            }
        }
        return Ok(out);
    }
    let agents = shared.registry.agents();
    if let Some(glob) = obj.get("name") {
        let glob = glob
            .as_str()
            .ok_or_else(|| bad("target.name must be a string (a glob)"))?;
        return Ok(agents
            .iter()
            .filter(|a| glob_match(glob, &a.name))
            .map(|a| a.host.clone())
            .collect());
    }
    if obj.get("all") == Some(&Value::Bool(true)) {
        return Ok(agents.iter().map(|a| a.host.clone()).collect());
    }
    Err(bad(
        "target must be one of {\"hosts\":[ID,...]}, {\"name\":GLOB}, {\"all\":true}",
    ))
}

async fn call_handler(
    State(api): State<Api>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_body"
        };
        err(status, code, e.body_text())
    })?;
    let parsed: CallBody = serde_json::from_slice(&body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("call body: {e}"),
        )
    })?;
    let request = parsed.request.get().to_owned();
    if let Err((_, e)) = basicagent_proto::Request::parse(request.as_bytes()) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request: {e}"),
        ));
    }
    let timeout = parsed.timeout.unwrap_or(DEFAULT_CALL_TIMEOUT);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= MAX_CALL_TIMEOUT) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "bad_timeout",
            format!("timeout must be a number of seconds in (0, {MAX_CALL_TIMEOUT}]"),
        ));
    }
    let hosts = resolve(&api.shared, &parsed.target)?;
    if hosts.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            "no_target",
            "the target matches no connected agent",
        ));
    }
    let spec = CallSpec {
        hosts,
        request,
        timeout: crate::admin::seconds(timeout),
        who: format!("api {peer}"),
        target: parsed.target.to_string(),
    };
    let items = call::start(api.shared.clone(), spec);
    let stream = futures_util::stream::unfold(Some(items), |state| async move {
        let mut items = state?;
        let first = items.recv().await?;
        let mut buf = Vec::new();
        let mut done = push_item(&mut buf, first);
        // Coalesce what is already there into one chunk.
        while !done && buf.len() < 256 * 1024 {
            match items.try_recv() {
                Ok(item) => done = push_item(&mut buf, item),
                Err(_) => break,
            }
        }
        let next = if done { None } else { Some(items) };
        Some((Ok::<_, Infallible>(Bytes::from(buf)), next))
    });
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

/// Appends one NDJSON line; true for the summary (the last one).
fn push_item(buf: &mut Vec<u8>, item: CallItem) -> bool {
    let (line, last) = match item {
        CallItem::Host { line, .. } => (line, false),
        CallItem::Summary(s) => (json!({ "summary": s }).to_string(), true),
    };
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    last
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    before: Option<i64>,
    host: Option<String>,
}

fn limit(page: &Page) -> Result<usize, ApiError> {
    match page.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(err(
            StatusCode::BAD_REQUEST,
            "bad_params",
            format!("limit must be 1..={MAX_LIMIT}"),
        )),
    }
}

fn call_row_json(c: &basicagent_store::CallRow) -> Value {
    json!({"id": c.id, "who": c.who, "at": c.at, "target": json_text(&c.target),
           "request": json_text(&c.request), "finished_at": c.finished_at,
           "summary": c.summary.as_deref().map(json_text)})
}

async fn calls(State(api): State<Api>, q: Result<Query<Page>, QueryRejection>) -> ApiResult {
    let page = query(q)?;
    let n = limit(&page)?;
    let rows = match page.host.clone() {
        Some(host) => {
            let rows = store(&api, move |s| s.host_calls(&host, n)).await?;
            rows.iter()
                .map(|(c, r)| {
                    let mut v = call_row_json(c);
                    v["result"] = json_text(&r.response);
                    v
                })
                .collect::<Vec<_>>()
        }
        None => {
            let before = page.before;
            let rows = store(&api, move |s| s.calls(n, before)).await?;
            rows.iter().map(call_row_json).collect()
        }
    };
    Ok(axum::Json(rows).into_response())
}

async fn call_by_id(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let id: i64 = id.parse().map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "bad_params",
            format!("call id {id:?} is not a number"),
        )
    })?;
    match store(&api, move |s| s.call(id)).await? {
        None => Err(err(
            StatusCode::NOT_FOUND,
            "unknown_call",
            format!("no call {id}"),
        )),
        Some((row, results)) => {
            let mut v = call_row_json(&row);
            v["results"] = Value::Array(results.iter().map(|r| json_text(&r.response)).collect());
            Ok(axum::Json(v).into_response())
        }
    }
}

async fn task(State(api): State<Api>, Path(task): Path<String>) -> ApiResult {
    let key = task.clone();
    let rows = store(&api, move |s| s.task(&key)).await?;
    if rows.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            "unknown_task",
            format!("no result for task {task:?}"),
        ));
    }
    Ok(axum::Json(rows.iter().map(task_json).collect::<Vec<_>>()).into_response())
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.shared.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w?b-*1", "web-0001"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(!glob_match("web", "web-01"));
        assert!(glob_match("*-0*", "db-01"));
    }

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
