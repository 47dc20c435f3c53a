//! The call engine behind `POST /v1/call` and the admin `call`: fan one request out, stream answers, summarize, record.
//!
//! One request id per call, so every host gets the same frame (shared
//! bytes). Answers arrive on one channel, tagged with the host's index,
//! and are passed on at once as [`CallItem::Host`]; hosts that are not
//! connected, whose queue is full, that disconnect, or that do not answer
//! in time get a line made by the server (codes in [`ServerCode`]). Per
//! host results go to the store in batches through the writer thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basicagent_proto::{Request, Response, Retcode};
use basicagent_store::{CallId, CallRecord, HostResult};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::metrics::{method_label, Method, MethodRetcode};
use crate::registry::{CallEvent, SendError};
use crate::state::Shared;
use crate::storage::{now_millis, Op};

/// Retcodes of lines the server writes for a host that did not answer.
pub struct ServerCode;

impl ServerCode {
    /// The host is not connected.
    pub const OFFLINE: Retcode = Retcode(3100);
    /// No answer within the call's timeout.
    pub const TIMED_OUT: Retcode = Retcode(3101);
    /// The host disconnected before answering.
    pub const DISCONNECTED: Retcode = Retcode(3102);
    /// The host's outgoing queue was full; the request was not sent.
    pub const QUEUE_FULL: Retcode = Retcode(3103);
    /// Cluster mode: the request could not be routed to the node holding
    /// the host (this node has no NATS connection now, or NATS failed).
    pub const CLUSTER: Retcode = Retcode(3104);
}

/// Results batched per store write.
const RESULT_BATCH: usize = 2048;

/// How a host's line came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Offline,
    TimedOut,
    Disconnected,
    Busy,
}

/// The last line of a call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub targeted: usize,
    pub answered: usize,
    pub failed: usize,
    pub offline: usize,
    pub timed_out: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallId>,
    /// Cluster fan-out: nodes whose answers are missing or partial (died,
    /// lost answers, cut by their deadline, or did not finish in time);
    /// their hosts are not all counted in `targeted`. Absent when complete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
    /// Cluster mode: why the fan-out could not start (the API answers 503).
    #[serde(skip)]
    pub error: Option<String>,
}

/// What a call yields, in order: host lines as they come, then the summary.
#[derive(Debug)]
pub enum CallItem {
    Host {
        outcome: Outcome,
        response: Response,
        /// `{"host": ID, ...response...}`, as stored and streamed.
        line: String,
    },
    Summary(Summary),
}

/// A validated call.
pub struct CallSpec {
    pub hosts: Vec<String>,
    /// The request object as given (checked by [`Request::parse`]).
    pub request: String,
    pub timeout: Duration,
    pub who: String,
    /// The target as the caller gave it (JSON, for the history).
    pub target: String,
    /// Cluster mode, `name`/`all` targets: the filter every node applies
    /// to its own sessions (`hosts` is then empty).
    pub fanout: Option<serde_json::Value>,
}

/// `{"host": ID, ...response...}`: the agent's object with `"host"` first.
pub fn host_line(host: &str, response: &Response) -> String {
    let json = response.to_json();
    let host = serde_json::to_string(host).unwrap_or_else(|_| String::from("null"));
    match json.strip_prefix('{') {
        Some(rest) if rest.starts_with('}') => format!("{{\"host\":{host}{rest}"),
        Some(rest) => format!("{{\"host\":{host},{rest}"),
        None => json,
    }
}

/// Starts the call; items arrive on the returned channel. A call the
/// store could not record goes on unrecorded.
pub fn start(shared: Arc<Shared>, spec: CallSpec) -> mpsc::UnboundedReceiver<CallItem> {
    let (out, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(shared, spec, out, Begun::No));
    rx
}

/// Methods that change nothing on the host: a call of one of these may be
/// sent while its record commits (see [`start_recorded`]).
pub fn read_only(method: &str) -> bool {
    matches!(method, "ping" | "agent.info" | "task.status" | "task.list")
        || method.starts_with("getinfo.")
}

/// Cluster mode: records the call and fails (the API answers 503) when
/// PostgreSQL cannot, instead of running an unrecorded call.
///
/// A command (anything not [`read_only`]) is sent only after its record
/// committed: nothing runs on a host that the history does not show. A
/// read-only call to a list of hosts is sent while the record commits
/// (the commit, an fsync in PostgreSQL, is most of a cross-node call's
/// time); its answers are still held back until the record is durable,
/// so no answer is returned for a call that is not recorded, and when the
/// record fails the answers are dropped and the API answers 503 as before.
pub async fn start_recorded(
    shared: Arc<Shared>,
    spec: CallSpec,
) -> Result<mpsc::UnboundedReceiver<CallItem>, crate::storage::ReadError> {
    let record = CallRecord {
        who: spec.who.clone(),
        at: now_millis(),
        target: spec.target.clone(),
        request: spec.request.clone(),
    };
    let overlap = spec.fanout.is_none()
        && Request::parse(spec.request.as_bytes()).is_ok_and(|r| read_only(&r.method));
    if !overlap {
        let call = shared.storage.read(move |s| s.call_begin(&record)).await?;
        let (out, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(shared, spec, out, Begun::Done(call)));
        return Ok(rx);
    }
    let storage = shared.storage.clone();
    let recording = tokio::spawn(async move { storage.read(move |s| s.call_begin(&record)).await });
    let (id_tx, id_rx) = tokio::sync::oneshot::channel();
    let (out, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(shared, spec, out, Begun::Pending(id_rx)));
    match recording.await {
        Ok(Ok(call)) => {
            let _ = id_tx.send(call);
            Ok(rx)
        }
        // Dropping `id_tx` tells the run to drop its answers.
        Ok(Err(e)) => Err(e),
        Err(e) => Err(crate::storage::ReadError::Failed(format!(
            "call record task: {e}"
        ))),
    }
}

/// Where a run's call id comes from.
enum Begun {
    /// Not recorded yet: the run records it itself (one-node mode; a call
    /// the store cannot record goes on unrecorded).
    No,
    /// Recorded before the run started.
    Done(CallId),
    /// Being recorded: the id arrives once committed; a dropped sender
    /// means the record failed and the run ends without a line.
    Pending(tokio::sync::oneshot::Receiver<CallId>),
}

struct Run {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<CallItem>,
    method: String,
    label: String,
    caller_id: Option<Box<RawValue>>,
    call: Option<CallId>,
    /// Results are kept for the store (the call is or will be recorded).
    recording: bool,
    batch: Vec<HostResult>,
    summary: Summary,
    fact: bool,
    /// Answer counters by retcode, looked up once per call and retcode.
    counters: Vec<(u32, prometheus_client::metrics::counter::Counter)>,
}

impl Run {
    fn emit(&mut self, host: &str, outcome: Outcome, mut response: Response, sent: Instant) {
        match outcome {
            Outcome::Answered if response.retcode.is_success() => self.summary.answered += 1,
            Outcome::Offline => self.summary.offline += 1,
            Outcome::TimedOut => self.summary.timed_out += 1,
            _ => self.summary.failed += 1,
        }
        if outcome == Outcome::Answered {
            let m = &self.shared.metrics;
            let code = response.retcode.0;
            match self.counters.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => {
                    counter.inc();
                }
                None => {
                    let counter = m
                        .answered
                        .get_or_create(&MethodRetcode {
                            method: self.label.clone(),
                            retcode: code.to_string(),
                        })
                        .clone();
                    counter.inc();
                    self.counters.push((code, counter));
                }
            }
            m.answer_seconds.observe(sent.elapsed().as_secs_f64());
            if self.fact && response.retcode.is_success() {
                if let Some(data) = &response.data {
                    self.shared.storage.queue(Op::Fact {
                        host: host.to_owned(),
                        method: self.method.clone(),
                        data: data.get().to_owned(),
                        at: now_millis(),
                    });
                }
            }
            // The caller's id goes back; without one, ours stays (numeric).
            if let Some(id) = &self.caller_id {
                response.id = Some(id.clone());
            }
        }
        let line = host_line(host, &response);
        if self.recording {
            self.batch.push(HostResult {
                host: host.to_owned(),
                at: now_millis(),
                retcode: i64::from(response.retcode.0),
                response: line.clone(),
            });
            if let Some(call) = self.call.filter(|_| self.batch.len() >= RESULT_BATCH) {
                self.flush(call);
            }
        }
        let _ = self.out.send(CallItem::Host {
            outcome,
            response,
            line,
        });
    }

    fn flush(&mut self, call: CallId) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.shared.storage.queue(Op::Results(call, batch));
        }
    }

    fn server_line(&mut self, host: &str, outcome: Outcome, code: Retcode, message: String) {
        let response = Response::failed(self.caller_id.clone(), code, message);
        self.emit(host, outcome, response, Instant::now());
    }
}

async fn run(
    shared: Arc<Shared>,
    spec: CallSpec,
    out: mpsc::UnboundedSender<CallItem>,
    begun: Begun,
) {
    let started = Instant::now();
    let Ok(request) = Request::parse(spec.request.as_bytes()) else {
        return;
    };
    let method = request.method.clone();
    let caller_id = request.id.clone();
    let mut pending = None;
    let call = match begun {
        Begun::Done(id) => Some(id),
        Begun::Pending(rx) => {
            pending = Some(rx);
            None
        }
        Begun::No => {
            let record = CallRecord {
                who: spec.who.clone(),
                at: now_millis(),
                target: spec.target.clone(),
                request: spec.request.clone(),
            };
            match shared.storage.read(move |s| s.call_begin(&record)).await {
                Ok(id) => Some(id),
                Err(e) => {
                    log::error!("store call_begin: {e} (the call goes on unrecorded)");
                    None
                }
            }
        }
    };
    let id = shared.registry.next_request_id();
    let Ok(raw) = RawValue::from_string(id.to_string()) else {
        return;
    };
    let mut frame = request.with_id(&raw).into_bytes();
    frame.push(b'\n');
    let frame = Bytes::from(frame);
    let label = method_label(&method);
    let mut run = Run {
        fact: method.starts_with("getinfo."),
        shared: shared.clone(),
        out,
        method,
        label,
        caller_id,
        call,
        recording: call.is_some() || pending.is_some(),
        batch: Vec::new(),
        counters: Vec::new(),
        summary: Summary {
            targeted: spec.hosts.len(),
            call,
            ..Summary::default()
        },
    };
    if let (Some(filter), Some(cm)) = (&spec.fanout, &shared.cluster) {
        let cluster = cm.cluster.clone();
        return run_fanout(run, cluster, filter, &spec, started).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (remote_tx, mut remote_rx) = mpsc::unbounded_channel::<(usize, Response)>();
    let sent_at = Instant::now();
    let queued = shared.registry.fan_out(&spec.hosts, id, &frame, &tx);
    drop(tx);
    let mut waiting = vec![false; spec.hosts.len()];
    let mut left = 0usize;
    for (tag, result) in queued.into_iter().enumerate() {
        let host = &spec.hosts[tag];
        match result {
            // Cluster mode: a host not held here may be held by another node.
            Err(SendError::Offline(_)) if shared.cluster.is_some() => {
                waiting[tag] = true;
                left += 1;
                let Some(cm) = &shared.cluster else { continue };
                let cluster = cm.cluster.clone();
                let payload = crate::node::encode_request(&spec.request, spec.timeout);
                let wait = spec.timeout.saturating_add(crate::node::ROUTE_MARGIN);
                let host = host.clone();
                let remote_tx = remote_tx.clone();
                let secs = spec.timeout.as_secs_f64();
                tokio::spawn(async move {
                    use basicagent_cluster::ClusterError as E;
                    let failed = |code, m: String| Response::failed(None, code, m);
                    let response = match cluster.request_host(&host, payload, wait).await {
                        Ok(reply) => Response::parse(&reply).unwrap_or_else(|e| {
                            failed(
                                ServerCode::CLUSTER,
                                format!("host {host}: bad answer from its node: {e}"),
                            )
                        }),
                        Err(E::NoHolder | E::InvalidHostId(_)) => failed(
                            ServerCode::OFFLINE,
                            format!("no agent with host id {host:?} is connected"),
                        ),
                        Err(E::Timeout) => failed(
                            ServerCode::TIMED_OUT,
                            format!("host {host}: no response within {secs} s"),
                        ),
                        Err(E::Disconnected) => failed(
                            ServerCode::CLUSTER,
                            format!("host {host}: this node is not connected to NATS now (it reconnects by itself); retry"),
                        ),
                        Err(e) => failed(ServerCode::CLUSTER, format!("host {host}: cluster: {e}")),
                    };
                    let _ = remote_tx.send((tag, response));
                });
            }
            Ok(()) => {
                waiting[tag] = true;
                left += 1;
                if shared.events.enabled() {
                    shared.events.emit(
                        "request",
                        json!({"host": host, "id": id, "method": run.method}),
                    );
                }
            }
            Err(SendError::Offline(_)) => run.server_line(
                host,
                Outcome::Offline,
                ServerCode::OFFLINE,
                format!("no agent with host id {host:?} is connected"),
            ),
            Err(SendError::Busy(_)) => run.server_line(
                host,
                Outcome::Busy,
                ServerCode::QUEUE_FULL,
                format!("host {host}: its outgoing queue is full; not sent"),
            ),
        }
    }
    shared
        .metrics
        .sent
        .get_or_create(&Method {
            method: run.label.clone(),
        })
        .inc_by(left as u64);
    // Sent; now the record must be durable before any line goes out.
    if let Some(rx) = pending {
        match rx.await {
            Ok(call) => {
                run.call = Some(call);
                run.summary.call = Some(call);
            }
            // The record failed: the API answered 503; nothing to return.
            Err(_) => return,
        }
    }
    let deadline = tokio::time::Instant::from_std(
        sent_at
            .checked_add(spec.timeout)
            .unwrap_or_else(|| sent_at + Duration::from_secs(u64::from(u32::MAX))),
    );
    let mut last_flush = Instant::now();
    drop(remote_tx);
    // Remote answers may come a little after the deadline (the holder
    // times out first and says so).
    let remote_deadline = deadline + crate::node::ROUTE_MARGIN;
    let mut local_open = true;
    let mut remote_open = true;
    while left > 0 && (local_open || remote_open) {
        let (tag, outcome, response) = tokio::select! {
            event = rx.recv(), if local_open && tokio::time::Instant::now() < deadline => match event {
                Some(CallEvent::Answered { tag, response }) => (tag, Outcome::Answered, Some(response)),
                Some(CallEvent::Gone { tag }) => (tag, Outcome::Disconnected, None),
                None => { local_open = false; continue; }
            },
            remote = remote_rx.recv(), if remote_open => match remote {
                Some((tag, mut response)) => {
                    let outcome = crate::node::outcome_of(&response);
                    if outcome != Outcome::Answered {
                        response.id = run.caller_id.clone();
                    }
                    (tag, outcome, Some(response))
                }
                None => { remote_open = false; continue; }
            },
            _ = tokio::time::sleep_until(deadline), if local_open => { local_open = false; continue; }
            _ = tokio::time::sleep_until(remote_deadline) => break,
        };
        let Some(slot) = waiting.get_mut(tag) else {
            continue;
        };
        if !std::mem::replace(slot, false) {
            continue;
        }
        left -= 1;
        let host = spec.hosts[tag].clone();
        match response {
            Some(response) => run.emit(&host, outcome, response, sent_at),
            None => run.server_line(
                &host,
                outcome,
                ServerCode::DISCONNECTED,
                format!("host {host}: disconnected before answering"),
            ),
        }
        if let Some(call) = run.call {
            if last_flush.elapsed() >= Duration::from_millis(100) {
                run.flush(call);
                last_flush = Instant::now();
            }
        }
    }
    let secs = spec.timeout.as_secs_f64();
    for (tag, still) in waiting.iter().enumerate() {
        if *still {
            let host = &spec.hosts[tag];
            run.server_line(
                host,
                Outcome::TimedOut,
                ServerCode::TIMED_OUT,
                format!("host {host}: no response within {secs} s"),
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    shared.metrics.fanout_seconds.observe(seconds);
    run.summary.seconds = (seconds * 1000.0).round() / 1000.0;
    if let Some(call) = run.call {
        run.flush(call);
        let summary = serde_json::to_string(&run.summary).unwrap_or_default();
        shared.storage.queue(Op::CallEnd {
            call,
            summary,
            at: now_millis(),
        });
    }
    let _ = run.out.send(CallItem::Summary(run.summary.clone()));
}

/// Cluster mode, `name`/`all` targets: one fan-out on NATS; every node
/// answers for its own sessions. `targeted` counts the hosts that answered
/// or got a server line from their node.
async fn run_fanout(
    mut run: Run,
    cluster: basicagent_cluster::Cluster,
    filter: &serde_json::Value,
    spec: &CallSpec,
    started: Instant,
) {
    use basicagent_cluster::FanoutEvent;
    use futures_util::StreamExt;
    let payload = crate::node::encode_request(&spec.request, spec.timeout);
    let wait = spec.timeout.saturating_add(crate::node::ROUTE_MARGIN);
    let sent_at = Instant::now();
    let mut seen = std::collections::HashSet::new();
    match cluster
        .fanout(Bytes::from(filter.to_string()), payload, wait)
        .await
    {
        Ok(mut events) => {
            while let Some(ev) = events.next().await {
                match ev {
                    FanoutEvent::Reply { host, reply, node } => {
                        // A host re-homed a moment ago may answer from two nodes.
                        if !seen.insert(host.clone()) {
                            continue;
                        }
                        run.summary.targeted += 1;
                        let mut response = Response::parse(&reply).unwrap_or_else(|e| {
                            Response::failed(
                                None,
                                ServerCode::CLUSTER,
                                format!("host {host}: bad answer from node {node}: {e}"),
                            )
                        });
                        let outcome = crate::node::outcome_of(&response);
                        if outcome != Outcome::Answered {
                            response.id = run.caller_id.clone();
                        }
                        run.emit(&host, outcome, response, sent_at);
                    }
                    FanoutEvent::NodeDone { node, complete, .. } if !complete => {
                        log::warn!("fan-out: node {node} lost or cut answers");
                        run.summary.incomplete.push(node);
                    }
                    FanoutEvent::NodeLost { node, hosts } => {
                        log::warn!("fan-out: node {node} died after {hosts} answers");
                        run.summary.incomplete.push(node);
                    }
                    FanoutEvent::TimedOut { pending } => {
                        log::warn!("fan-out: nodes {pending:?} did not finish in time");
                        run.summary.incomplete.extend(pending);
                        break;
                    }
                    FanoutEvent::NodeDone { .. } => {}
                }
            }
        }
        Err(e) => {
            log::error!("fan-out: {e}");
            run.summary.error = Some(e.to_string());
        }
    }
    let shared = run.shared.clone();
    let seconds = started.elapsed().as_secs_f64();
    shared.metrics.fanout_seconds.observe(seconds);
    shared
        .metrics
        .sent
        .get_or_create(&Method {
            method: run.label.clone(),
        })
        .inc_by(run.summary.targeted as u64);
    run.summary.seconds = (seconds * 1000.0).round() / 1000.0;
    if let Some(call) = run.call {
        run.flush(call);
        let summary = serde_json::to_string(&run.summary).unwrap_or_default();
        shared.storage.queue(Op::CallEnd {
            call,
            summary,
            at: now_millis(),
        });
    }
    let _ = run.out.send(CallItem::Summary(run.summary.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_goes_first() {
        let r = Response::new(None, Retcode::SUCCESS);
        assert_eq!(
            host_line("h\"1", &r),
            r#"{"host":"h\"1","id":null,"resp":"success","retcode":2,"message":"Normal termination"}"#
        );
    }
}
