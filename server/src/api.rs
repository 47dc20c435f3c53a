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
use crate::state::Shared;

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
                    // No Nagle: a streamed answer goes out in several writes
                    // (headers, lines, summary); with Nagle each write after
                    // the first waits for the client's delayed ACK (40 ms on
                    // Linux) on a kept-alive connection.
                    if let Err(e) = stream.set_nodelay(true) {
                        log::debug!("API TCP_NODELAY: {e}");
                    }
                    return (
                        LimitedIo {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
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
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}/drain", post(drain))
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
    let mut v = json!({"host": a.host, "name": a.name, "addr": a.peer, "version": a.version,
           "plugins": a.plugins, "connected_at": a.connected_at});
    if let Some(node) = &a.node {
        v["node"] = json!(node);
    }
    v
}

/// Cluster mode: the agents PostgreSQL says are connected, on a node that
/// is alive now (a dead node's agents are not shown even before its
/// `node_gone` is written), with the node each is on.
async fn cluster_agents(api: &Api) -> Result<Option<Vec<AgentInfo>>, ApiError> {
    let Some(cm) = &api.shared.cluster else {
        return Ok(None);
    };
    let live: std::collections::HashSet<String> =
        cm.cluster.members().into_iter().map(|n| n.name).collect();
    let rows = store(api, |s| s.agents()).await?;
    Ok(Some(
        rows.into_iter()
            .filter(|r| {
                r.connected_at.is_some() && r.node.as_ref().is_some_and(|n| live.contains(n))
            })
            .map(|r| row_info(&r))
            .collect(),
    ))
}

fn row_info(r: &basicagent_store::AgentRow) -> AgentInfo {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    AgentInfo {
        host: r.host.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        plugins: r.plugins.clone(),
        peer: r.addr.parse().unwrap_or(unspecified),
        listen: unspecified,
        connected_at: r.connected_at.unwrap_or(0) as f64 / 1000.0,
        node: r.node.clone(),
    }
}

async fn agents(
    State(api): State<Api>,
    q: Result<Query<AgentFilter>, QueryRejection>,
) -> ApiResult {
    let filter = query(q)?;
    if let Some(list) = cluster_agents(&api).await? {
        let list: Vec<Value> = list
            .iter()
            .filter(|a| filter.keeps(a))
            .map(agent_json)
            .collect();
        return Ok(axum::Json(list).into_response());
    }
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
    let count = match cluster_agents(&api).await? {
        Some(list) => list.iter().filter(|a| filter.keeps(a)).count(),
        None => {
            let agents = api.shared.registry.agents();
            agents.iter().filter(|a| filter.keeps(a)).count()
        }
    };
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
        Ok(Err(crate::storage::ReadError::Unavailable(e))) => {
            Err(err(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e))
        }
        Ok(Err(e)) => Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store",
            e.to_string(),
        )),
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
    let mut online = api.shared.registry.agent(&host);
    let key = host.clone();
    let row = store(&api, move |s| s.agent(&key)).await?;
    if let (None, Some(cm), Some(r)) = (&online, &api.shared.cluster, &row) {
        // Connected on another node that is alive.
        let live = r
            .node
            .as_ref()
            .is_some_and(|n| cm.cluster.members().iter().any(|m| &m.name == n));
        if r.connected_at.is_some() && live {
            online = Some(Arc::new(row_info(r)));
        }
    }
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

/// What a target names: listed hosts, or (cluster mode, `name`/`all`) a
/// filter every node applies to its own sessions.
enum Resolved {
    Hosts(Vec<String>),
    Fanout(Value),
}

fn resolve_target(shared: &Shared, target: &Value) -> Result<Resolved, ApiError> {
    if shared.cluster.is_some() {
        if let Some(obj) = target.as_object().filter(|o| o.len() == 1) {
            if let Some(glob) = obj.get("name") {
                if !glob.is_string() {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "bad_target",
                        "target.name must be a string (a glob)",
                    ));
                }
                return Ok(Resolved::Fanout(target.clone()));
            }
            if obj.get("all") == Some(&Value::Bool(true)) {
                return Ok(Resolved::Fanout(target.clone()));
            }
        }
    }
    resolve(shared, target).map(Resolved::Hosts)
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
    run_call(&api, peer, &parsed.target, request, timeout).await
}

/// Sends a checked `request` to `target` through the call engine (one
/// node's sessions, or the cluster's fan-out) and streams the NDJSON answer.
/// Shared by `POST /v1/call` and the schedule endpoints.
async fn run_call(
    api: &Api,
    peer: SocketAddr,
    target: &Value,
    request: String,
    timeout: f64,
) -> ApiResult {
    let (hosts, fanout) = match resolve_target(&api.shared, target)? {
        Resolved::Hosts(h) => (h, None),
        Resolved::Fanout(f) => (Vec::new(), Some(f)),
    };
    if hosts.is_empty() && fanout.is_none() {
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
        target: target.to_string(),
        fanout,
    };
    let mut first = None;
    let items = match &api.shared.cluster {
        None => call::start(api.shared.clone(), spec),
        Some(cm) => {
            if cm.cluster.connection_state() != basicagent_cluster::ConnectionState::Connected {
                return Err(err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    "this node is not connected to NATS now (it reconnects by itself); retry",
                ));
            }
            let fanout = spec.fanout.is_some();
            let mut items = call::start_recorded(api.shared.clone(), spec)
                .await
                .map_err(|e| match e {
                    crate::storage::ReadError::Unavailable(e) => err(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        format!("the call cannot be recorded: {e}"),
                    ),
                    crate::storage::ReadError::Failed(e) => err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "store",
                        format!("the call cannot be recorded: {e}"),
                    ),
                })?;
            if fanout {
                // The first line decides the status: a fan-out that met no
                // agent on any node is 404, one that could not start 503.
                match items.recv().await {
                    Some(CallItem::Summary(s)) if s.error.is_some() => {
                        return Err(err(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "cluster_unavailable",
                            format!("fan-out: {}", s.error.unwrap_or_default()),
                        ))
                    }
                    Some(CallItem::Summary(s)) if s.targeted == 0 => {
                        return Err(err(
                            StatusCode::NOT_FOUND,
                            "no_target",
                            "the target matches no connected agent on any node",
                        ))
                    }
                    other => first = other,
                }
            }
            items
        }
    };
    let stream = futures_util::stream::unfold(Some((first, items)), |state| async move {
        let (early, mut items) = state?;
        let first = match early {
            Some(item) => item,
            None => items.recv().await?,
        };
        let mut buf = Vec::new();
        let mut done = push_item(&mut buf, first);
        // Coalesce what is already there into one chunk.
        while !done && buf.len() < 256 * 1024 {
            match items.try_recv() {
                Ok(item) => done = push_item(&mut buf, item),
                Err(_) => break,
            }
        }
        let next = if done { None } else { Some((None, items)) };
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

/// `GET /v1/nodes`: live nodes with their session counts and state (one
/// node, this one, without a cluster).
async fn nodes(State(api): State<Api>) -> ApiResult {
    let list: Vec<Value> = match &api.shared.cluster {
        Some(cm) => {
            let me = cm.cluster.me();
            cm.cluster
                .members()
                .iter()
                .map(|n| {
                    // Our own count is exact now; the others' as of their last heartbeat.
                    let sessions = if n.name == me.name {
                        api.shared.registry.agents_len() as u64
                    } else {
                        n.sessions
                    };
                    json!({"name": n.name, "peer_addr": n.peer_addr, "sessions": sessions,
                           "state": if n.draining { "draining" } else { "live" },
                           "started_at": n.started_at, "self": n.name == me.name})
                })
                .collect()
        }
        None => vec![
            json!({"name": null, "peer_addr": api.shared.settings.listen.to_string(),
                            "sessions": api.shared.registry.agents_len(), "state": "live",
                            "self": true}),
        ],
    };
    Ok(axum::Json(list).into_response())
}

/// `POST /v1/nodes/NAME/drain`: marks the node draining (through NATS if
/// it is another one); it closes its sessions, paced, and its agents are
/// redirected to their owners when they come back.
async fn drain(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let Some(cm) = &api.shared.cluster else {
        return Err(err(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this server is not in a cluster (no --nats)",
        ));
    };
    if name == cm.name {
        crate::node::start_drain(&api.shared);
        return Ok(axum::Json(json!({"node": name, "state": "draining"})).into_response());
    }
    if !cm.cluster.members().iter().any(|n| n.name == name) {
        return Err(err(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("no live node named {name:?}"),
        ));
    }
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        cm.cluster.nats().request(
            crate::node::drain_subject(&name),
            bytes::Bytes::from_static(b"drain"),
        ),
    )
    .await;
    match asked {
        Ok(Ok(_)) => Ok(axum::Json(json!({"node": name, "state": "draining"})).into_response()),
        Ok(Err(e)) => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("drain request to {name}: {e}"),
        )),
        Err(_) => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("node {name} did not answer the drain request within 5 s"),
        )),
    }
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

    /// Regression: kept-alive API connections paid Nagle + delayed ACK
    /// (40 ms) per streamed call because TCP_NODELAY was never set.
    #[tokio::test]
    async fn api_connections_have_no_nagle() {
        use axum::serve::Listener as _;
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = LimitedListener::new(inner, 4);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, _) = listener.accept().await;
        assert!(io.stream.nodelay().unwrap());
        drop(client);
    }

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
