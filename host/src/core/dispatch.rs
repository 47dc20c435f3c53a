//! Requests in, responses out: validates the method, answers built-ins,
//! starts plugin calls, and collects their completions from any thread.
//!
//! Every request gets exactly one answer: an immediate one (built-ins,
//! errors) returned by [`Dispatcher::dispatch`], or a later one that the
//! plugin's completion hands to the [`Sink`] (the io side: a channel and
//! the loop's waker) and the core gets back as a [`Mail`]; the core then
//! calls [`Dispatcher::complete`]. The dispatcher holds no waker, no
//! channel and touches no file: the task files follow the task table
//! through the sink ([`Sink::persist`]).
//!
//! `async.bash` runs through the same `sync.bash` plugin; its result is
//! written to the durable outbox off the loop ([`Sink::task_finished`])
//! before the loop pushes it as `task.done`.
//!
//! Every frame this module builds fits `server.max_frame` by construction:
//! an answer that would not is replaced by a `3025` failure saying so
//! (serialisation stops at the limit, so the oversized text is never held
//! whole). While the core reports its send queue congested, new
//! requests (except `ping`) are answered `3026 Busy` without running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use basicagent_abi::{Completion, Plugin, PluginRegistry};
use basicagent_proto::builtins::{self, RawValue};
use basicagent_proto::{AgentInfo, Released, SyncBashPeek, TaskCancelling, TaskStarted};
use basicagent_proto::{Incoming, Response, Retcode, DEFAULT_MAX_FRAME};

use crate::core::tasks::{self, OutboxBatch, TaskFileOp, TaskStore};
use crate::schedule::{Fire, ScheduleTable};

/// Where the plugins' completions go and what the task files must do:
/// implemented by the io side (a channel plus the loop's waker, the
/// task-file thread), and by tests.
pub trait Sink: Send + Sync {
    /// Hands a finished call to the loop; any thread.
    fn finished(&self, f: Finished);
    /// Stores a finished task's result (`f.frame`) durably, off the loop
    /// thread, then hands it to the loop with `stored` set.
    fn task_finished(&self, f: Finished);
    /// Task file work, carried out in the order given (off the loop).
    fn persist(&self, op: TaskFileOp);
    /// The next thing handed to the loop, if any (loop thread only).
    fn try_next(&self) -> Option<Mail>;
    /// The wall clock in Unix milliseconds (task timestamps, schedule
    /// slots): the core reads no clock itself.
    fn unix_ms(&self) -> u128;
}

/// How another thread wakes the loop (the io side's `mio::Waker`), for
/// the parts of the core that keep a thread of their own (the schedule
/// writer).
pub trait Wake: Send + Sync {
    fn wake(&self) -> std::io::Result<()>;
}

/// What reaches the loop from other threads.
#[derive(Debug)]
pub enum Mail {
    /// A plugin call (or a task) finished.
    Finished(Finished),
    /// Stored results read back ([`TaskFileOp::Load`]).
    Batch(OutboxBatch),
    /// A stored result read back for `task.status` ([`TaskFileOp::Read`]).
    Read { ctx: u64, frame: Option<Vec<u8>> },
}

/// A completed plugin call, ready to send.
#[derive(Debug)]
pub struct Finished {
    /// The connection generation the request came in on: a response is
    /// only sent on the connection that asked. `None` for a task result,
    /// which goes to whichever server the agent is connected to.
    pub generation: Option<u64>,
    pub call: u64,
    /// The response (or `task.done`) frame, `\n` included.
    pub frame: Vec<u8>,
    /// The request's id (for a `3026` that replaces an answer the loop
    /// cannot queue); `None` for a task result.
    pub id: Option<Box<RawValue>>,
    /// For a task: how it ended.
    pub task: Option<TaskEnd>,
    /// The plugin panicked in this call (a quarantine strike).
    pub panicked: bool,
}

impl Finished {
    /// A task's result: no connection generation (it goes to whichever
    /// server is connected) and no request id.
    pub fn of_task(call: u64, frame: Vec<u8>, task: TaskEnd) -> Finished {
        Finished {
            generation: None,
            call,
            frame,
            id: None,
            task: Some(task),
            panicked: false,
        }
    }
}

/// Answer bytes between the plugins' threads and the socket, shared with
/// the completers: a completion that finds the backlog at its bound is
/// answered with a small `3026` on its own thread instead of serialising a
/// large answer that the loop would only drop.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Bytes queued by the loop (published each turn).
    queued: AtomicUsize,
    /// Bytes of frames in the completion channel.
    channel: AtomicUsize,
    /// The bound (the core's answer bound); 0: none yet.
    bound: AtomicUsize,
    /// Answers replaced by a `3026` so far (logged at 1, 2, 4, 8 …).
    dropped: AtomicU64,
}

impl Backlog {
    pub(crate) fn full(&self) -> Option<usize> {
        let bound = self.bound.load(Ordering::Relaxed);
        let held = self
            .queued
            .load(Ordering::Relaxed)
            .saturating_add(self.channel.load(Ordering::Relaxed));
        (bound > 0 && held >= bound).then_some(held)
    }

    /// Counts one answer replaced by a `3026`; logs in batches.
    pub fn note_dropped(&self, held: usize) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::warn!(
                "{n} answer(s) replaced by 3026 so far: {held} bytes wait for the server to read them"
            );
        }
    }
}

/// How an `async.bash` task ended (its result frame is [`Finished::frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    pub id: String,
    pub retcode: u32,
    /// The result was written to the outbox (else it is kept in memory).
    pub stored: bool,
    /// The schedule this run belongs to.
    pub schedule: Option<String>,
}

/// Facts `agent.info` reports.
#[derive(Debug, Clone)]
pub struct AgentFacts {
    pub host_id: String,
    pub name: String,
    pub version: String,
    pub started: Instant,
}

struct InFlight {
    plugin: Arc<Plugin>,
    method: String,
}

/// A `task.status` of a done task, waiting for its stored result.
struct StatusWait {
    generation: u64,
    id: Option<Box<RawValue>>,
    task: String,
}

/// The request router of the daemon.
pub struct Dispatcher {
    registry: PluginRegistry,
    /// Method → plugin, so the hot path skips the registry's lock and
    /// file-name formatting. Cleared on reload.
    cache: HashMap<String, Arc<Plugin>>,
    in_flight: HashMap<u64, InFlight>,
    max_concurrent: usize,
    sink: Arc<dyn Sink>,
    /// The loop's thread: a completion on it came inside `call`.
    loop_thread: ThreadId,
    /// `task.status` requests waiting for their stored result.
    reading: HashMap<u64, StatusWait>,
    next_read: u64,
    facts: AgentFacts,
    served: u64,
    tasks: TaskStore,
    max_frame: usize,
    /// Why new requests are refused for now (the send queue is full).
    congested: Option<String>,
    backlog: Arc<Backlog>,
    schedules: Option<ScheduleTable>,
    /// The audit trail (see [`crate::audit`]) and the server it records.
    audit: Option<crate::audit::Audit>,
    peer: crate::audit::Peer,
    /// Per-call deadlines and quarantine (`crate::quarantine`).
    guard: Guard,
}

/// A plugin that runs elsewhere: the io side's helper process
/// (`io::isolate::Helper`, `[plugins] isolate`).
pub trait Isolated: Send {
    /// Sends a request; `done` runs once, on any thread. Returns the id
    /// of the call.
    fn call(&mut self, request: &[u8], done: basicagent_abi::host::Completer, now: Instant) -> u64;
}

/// Deadlines of the plugin calls in flight, the plugins quarantined, and
/// the isolated ones.
pub struct Guard {
    /// Method → where its plugin runs (`[plugins] isolate`).
    pub isolated: HashMap<String, Box<dyn Isolated>>,
    /// The loop's latest `now` (for strikes counted outside a dispatch).
    pub clock: Instant,
    pub limits: crate::quarantine::Limits,
    pub watchdog: crate::quarantine::Watchdog,
    pub quarantine: crate::quarantine::Quarantine,
}

impl Dispatcher {
    /// A dispatcher owned by the loop running on the current thread.
    pub fn new(
        registry: PluginRegistry,
        max_concurrent: usize,
        sink: Arc<dyn Sink>,
        facts: AgentFacts,
        tasks: TaskStore,
    ) -> Self {
        let started = facts.started;
        Dispatcher {
            registry,
            cache: HashMap::new(),
            in_flight: HashMap::new(),
            max_concurrent: max_concurrent.max(1),
            sink,
            loop_thread: std::thread::current().id(),
            reading: HashMap::new(),
            next_read: 0,
            facts,
            served: 0,
            tasks,
            max_frame: DEFAULT_MAX_FRAME,
            congested: None,
            backlog: Arc::default(),
            schedules: None,
            guard: Guard {
                clock: started,
                isolated: HashMap::new(),
                limits: Default::default(),
                watchdog: Default::default(),
                quarantine: Default::default(),
            },
            audit: None,
            peer: crate::audit::Peer::local(),
        }
    }

    /// Audits executed calls into this log from now on.
    pub fn set_audit(&mut self, audit: crate::audit::Audit) {
        self.audit = Some(audit);
    }

    /// The server of the connection now up (address, certificate hash).
    pub fn set_peer(&mut self, peer: crate::audit::Peer) {
        self.peer = peer;
    }

    /// The audit line of a request (see [`crate::audit::Audit::begin`]).
    fn audit_begin(
        &self,
        method: &str,
        id: Option<&RawValue>,
        frame: &[u8],
    ) -> Result<Option<crate::audit::Note>, String> {
        match &self.audit {
            Some(a) => a.begin(&self.peer, method, id.map(RawValue::get), frame),
            None => Ok(None),
        }
    }

    /// Serves `schedule.*` and runs due schedules from this table.
    pub fn set_schedules(&mut self, mut table: ScheduleTable) {
        table.restore_results(self.tasks.scheduled_results());
        self.schedules = Some(table);
    }

    /// Counts an answer the loop replaced by a `3026` (logged in batches).
    pub fn note_dropped(&self, held: usize) {
        self.backlog.note_dropped(held);
    }

    /// The core's answer bound and its queued bytes, for the completers
    /// (see [`Backlog`]).
    pub fn publish_queue(&self, queued: usize, bound: usize) {
        self.backlog.queued.store(queued, Ordering::Relaxed);
        self.backlog.bound.store(bound, Ordering::Relaxed);
    }

    /// The frame bound (`server.max_frame`) every answer must fit.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.max(1024);
    }

    /// While `Some(reason)`, new requests other than `ping` are answered
    /// `3026 Busy: REASON` at once (the core's send queue is full).
    pub fn set_congested(&mut self, reason: Option<String>) {
        self.congested = reason;
    }

    /// Plugin calls started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The methods the plugin directory offers (for `init`).
    pub fn plugin_methods(&self) -> Vec<String> {
        self.registry.available_methods().unwrap_or_else(|e| {
            log::warn!("plugin directory: {e}");
            Vec::new()
        })
    }

    /// Handles one frame from the server. Returns the answer if it is
    /// known at once; otherwise it comes back as a [`Mail::Finished`].
    pub fn dispatch(&mut self, generation: u64, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        let request = match Incoming::classify(frame) {
            Ok(Incoming::Request(r)) => r,
            Ok(Incoming::Response(r)) => {
                log::trace!("response from the server: {}", r.retcode.0);
                return None;
            }
            Ok(Incoming::TaskAck(ack)) => {
                self.unix_now();
                if let Some(s) = &mut self.schedules {
                    s.acked(&ack.task);
                }
                if self.tasks.ack(&ack.task) {
                    log::debug!("task {} acknowledged; result deleted", ack.task);
                } else {
                    log::warn!("task.ack for unknown or unfinished task {:?}", ack.task);
                }
                self.flush_task_ops();
                return None;
            }
            Ok(Incoming::TaskDone(done)) => {
                log::warn!("the server sent task.done ({}); ignored", done.task);
                return None;
            }
            Err(e) => {
                log::warn!("invalid request: {e}");
                let message = format!("Invalid request: {e}");
                return Some(self.frame_of(&Response::failed(
                    e.id,
                    Retcode::INVALID_REQUEST,
                    message,
                )));
            }
        };
        let id = request.id;
        let method = request.method;
        self.served += 1;
        // The task table's wall clock, for the built-ins that read it; a
        // plugin call (the hot path) does not.
        let builtin = is_builtin_namespace(&method);
        if builtin {
            self.unix_now();
        }
        if let Some(reason) = &self.congested {
            if method != "ping" {
                let r = Response::failed(id, Retcode::BUSY, format!("Busy: {reason}"));
                return Some(self.frame_of(&r));
            }
        }
        match method.as_str() {
            "ping" => return Some(self.frame_of(&Response::new(id, Retcode::SUCCESS))),
            "agent.info" => return Some(self.frame_of(&self.agent_info(id, now))),
            "agent.release" => {
                let r = self.release(id, frame);
                return Some(self.frame_of(&r));
            }
            "async.bash" => {
                let r = self.start_task(id, frame, now);
                self.flush_task_ops();
                return Some(self.frame_of(&r));
            }
            "task.list" => {
                return Some(self.frame_of(
                    &Response::new(id, Retcode::SUCCESS).with_data(&self.tasks.list(now)),
                ))
            }
            "schedule.add" | "schedule.list" | "schedule.get" | "schedule.remove"
            | "schedule.pause" | "schedule.resume" => {
                let r = self.schedule_request(id, &method, frame, now);
                return Some(self.frame_of(&r));
            }
            "task.status" | "task.cancel" => {
                return self
                    .task_request(id, generation, &method, frame, now)
                    .map(|r| self.frame_of(&r))
            }
            _ => {}
        }
        if builtin {
            return Some(self.frame_of(&Response::failed(
                id,
                Retcode::UNKNOWN_METHOD,
                format!("Unknown method: {method}"),
            )));
        }
        if self.guard.isolated.contains_key(method.as_str()) {
            // Audited like a call in process: the plugin runs elsewhere,
            // the command is the same.
            let note = match self.audit_begin(&method, id.as_deref(), frame) {
                Ok(n) => n,
                Err(busy) => {
                    return Some(self.frame_of(&Response::failed(id, Retcode::BUSY, busy)))
                }
            };
            let done = self.plugin_answer(generation, id, note);
            if let Some(helper) = self.guard.isolated.get_mut(method.as_str()) {
                helper.call(frame, done, now);
            }
            return None;
        }
        let plugin = match self.plugin(&method).map_err(|e| {
            log::debug!("{method}: {e}");
            (e.retcode(), e.message())
        }) {
            Ok(p) => self.admit(&method, p, now),
            Err(e) => Err(e),
        };
        let plugin = match plugin {
            Ok(p) => p,
            Err((retcode, message)) => {
                return Some(self.frame_of(&Response::failed(id, Retcode(retcode), message)))
            }
        };
        if self.in_flight.len() >= self.max_concurrent {
            return Some(self.frame_of(&Response::failed(
                id,
                Retcode::BUSY,
                format!(
                    "Busy: {} requests in flight (max_concurrent)",
                    self.in_flight.len()
                ),
            )));
        }
        let note = match self.audit_begin(&method, id.as_deref(), frame) {
            Ok(n) => n,
            Err(busy) => return Some(self.frame_of(&Response::failed(id, Retcode::BUSY, busy))),
        };
        let completer = self.plugin_answer(generation, id, note);
        let noted = crate::crashmark::Guard::enter(&plugin);
        let call = plugin.call(frame, completer);
        drop(noted);
        let limit = self.guard.limits.deadline_for(&method, frame);
        self.guard.watchdog.watch(call, now, limit);
        self.in_flight.insert(call, InFlight { plugin, method });
        None
    }

    /// The completer of a plugin call: its answer as the plugin made it.
    /// The audit line (if any) is finished and queued by the completer
    /// itself, after the answer bound is applied (see [`Self::answer_with`]).
    fn plugin_answer(
        &self,
        generation: u64,
        id: Option<Box<RawValue>>,
        note: Option<crate::audit::Note>,
    ) -> basicagent_abi::host::Completer {
        self.answer_with(generation, id, note, move |id, c| {
            Response::from_plugin_owned(id, c.retcode, c.message, c.data)
        })
    }

    /// A completer that turns the plugin's completion into a response
    /// (`respond`, run on the completing thread) and hands it to the loop.
    ///
    /// With a `note` (an audited call) the answer reaches the loop only
    /// once its audit line is written (and synced, per `audit.fsync`), on
    /// the audit writer's thread; its line records the plugin's own result
    /// (retcode, digests and sizes: [`crate::audit::Note::finish`]). The
    /// answer bound is applied here, on the completing thread, before the
    /// answer waits behind its line, and the frame waiting there counts in
    /// the backlog's channel bytes from then on: answers held by the audit
    /// path count against the bound like those in the channel and the
    /// send queue, and one completing while the backlog is full waits as
    /// a small `3026`, its data dropped at once.
    fn answer_with(
        &self,
        generation: u64,
        id: Option<Box<RawValue>>,
        note: Option<crate::audit::Note>,
        respond: impl FnOnce(Option<Box<RawValue>>, Completion) -> Response + Send + 'static,
    ) -> basicagent_abi::host::Completer {
        let sink = Arc::clone(&self.sink);
        let max_frame = self.max_frame;
        let backlog = Arc::clone(&self.backlog);
        // Boxed: a `Note` is about 1 KB, and held inline it made every
        // completer a large allocation (glibc consolidates its fast bins
        // for each one) and a 1 KB copy, audited or not.
        let note = note.map(Box::new);
        Box::new(move |c: Completion| {
            let call = c.call;
            let panicked = c.retcode == Retcode::PLUGIN_FAILURE.0
                && c.message.starts_with("Plugin failure: plugin panicked");
            // The line records what ran, whatever the server is sent.
            let line = note.map(|n| n.finish(c.retcode, c.data.as_deref()));
            let response = match backlog.full() {
                Some(held) => {
                    let size = c.data.as_ref().map_or(0, String::len);
                    drop(c);
                    backlog.note_dropped(held);
                    Response::failed(
                        id,
                        Retcode::BUSY,
                        format!("Busy: the answer ({size} bytes of data) was dropped: {held} bytes of answers wait for the server to read them"),
                    )
                }
                None => respond(id, c),
            };
            let out = bounded_frame(&response, max_frame);
            // Counted until the loop takes it (`complete`), including
            // while it waits behind its audit line.
            backlog.channel.fetch_add(out.len(), Ordering::Relaxed);
            let done = Finished {
                generation: Some(generation),
                call,
                frame: out,
                id: response.id,
                task: None,
                panicked,
            };
            match line {
                Some(line) => line.submit(move || sink.finished(done)),
                None => sink.finished(done),
            }
        })
    }

    /// The next thing handed to the loop, if any (see [`Sink::try_next`]).
    pub fn try_next(&self) -> Option<Mail> {
        self.sink.try_next()
    }

    /// The wall clock in Unix seconds (from the sink); the task table's
    /// timestamps follow it.
    fn unix_now(&mut self) -> u64 {
        let unix = u64::try_from(self.sink.unix_ms() / 1000).unwrap_or(u64::MAX);
        self.tasks.set_clock(unix);
        unix
    }

    /// Queues a task's running marker to the task files now, before the
    /// call that may complete it ([`TaskStore::marker`]).
    fn queue_marker(&mut self, task: &str, cmd: &str) {
        self.tasks.marker(task, cmd);
        self.flush_task_ops();
    }

    /// Hands the table's file work to the io side, in order.
    fn flush_task_ops(&mut self) {
        for op in self.tasks.take_ops() {
            self.sink.persist(op);
        }
    }

    /// The task table (the outbox replay reads it).
    pub fn tasks(&self) -> &TaskStore {
        &self.tasks
    }

    /// Books a completed call (in flight, watchdog, strikes, the task
    /// table, queued schedule runs) and returns it for delivery.
    pub fn complete(&mut self, done: Finished, now: Instant) -> Finished {
        if done.task.is_some() {
            self.unix_now();
        }
        if done.generation.is_some() {
            let _ = self
                .backlog
                .channel
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(done.frame.len()))
                });
        }
        self.guard.watchdog.forget(done.call);
        if let Some(f) = self.in_flight.remove(&done.call) {
            log::trace!("{} finished", f.method);
            if done.panicked {
                let now = self.guard.clock;
                self.strike(&f.plugin, "panicked", now);
            }
        }
        if let Some(t) = &done.task {
            log::info!("task {} finished with {}", t.id, t.retcode);
            self.tasks.finished(&t.id, &done.frame, t.retcode, t.stored);
            if let (Some(sid), Some(table)) = (&t.schedule, &mut self.schedules) {
                let (dropped, queued) = table.finished(sid, &t.id);
                for old in dropped {
                    self.tasks.ack(&old);
                }
                if let Some(fire) = queued {
                    self.launch(fire, now);
                }
            }
        }
        self.flush_task_ops();
        done
    }

    /// Unacknowledged task results to push after an init, oldest first.
    pub fn outbox_ids(&self) -> Vec<String> {
        self.tasks.outbox_ids()
    }

    /// A result read back (or kept in memory) is pushed: whether the task
    /// is still unacknowledged (counted as a push), else it is not sent.
    pub fn push_task(&mut self, id: &str) -> bool {
        if !self.tasks.is_done(id) {
            return false;
        }
        self.tasks.pushed(id);
        true
    }

    /// Asks the io side to read stored results back for the connection
    /// `generation` (answered by a [`Mail::Batch`]).
    pub fn load_outbox(&self, generation: u64, ids: Vec<String>) {
        self.sink.persist(TaskFileOp::Load { generation, ids });
    }

    /// A result sent live, as its task ended (counted as a push).
    pub fn task_pushed(&mut self, id: &str) {
        self.tasks.pushed(id);
    }

    /// `async.bash`: starts the command through the `sync.bash` plugin and
    /// answers at once with the task id. A request the plugin refuses at
    /// once (bad params, unknown user, busy) is answered with that refusal
    /// and creates no task.
    fn start_task(&mut self, id: Option<Box<RawValue>>, frame: &[u8], now: Instant) -> Response {
        let unix = self.unix_now();
        if let Err(e) = self.tasks.admit(unix) {
            log::warn!("async.bash refused: {e}");
            return Response::failed(id, Retcode::BUSY, e.to_string());
        }
        if self.in_flight.len() >= self.max_concurrent {
            let message = format!(
                "Busy: {} requests in flight (max_concurrent)",
                self.in_flight.len()
            );
            return Response::failed(id, Retcode::BUSY, message);
        }
        let plugin = match self.plugin("sync.bash") {
            Ok(p) => match self.admit("sync.bash", p, now) {
                Ok(p) => p,
                Err((retcode, message)) => return Response::failed(id, Retcode(retcode), message),
            },
            Err(e) => return Response::failed(id, Retcode(e.retcode()), e.message()),
        };
        let note = match self.audit_begin("async.bash", id.as_deref(), frame) {
            Ok(n) => n,
            Err(busy) => return Response::failed(id, Retcode::BUSY, busy),
        };
        let task = tasks::new_task_id();
        let cmd = builtins::async_bash_cmd(frame).unwrap_or_default();
        // A completion inside `call` (on this thread) is an immediate
        // refusal: it answers the request itself.
        let immediate: Arc<Mutex<Option<Completion>>> = Arc::default();
        let (sink, loop_thread) = (Arc::clone(&self.sink), self.loop_thread);
        let (slot, task_id, max_frame) = (Arc::clone(&immediate), task.clone(), self.max_frame);
        // The marker goes to the task files before the call, so that the
        // result (written after it, in order) always finds it.
        self.queue_marker(&task, &cmd);
        let _noted = crate::crashmark::Guard::enter(&plugin);
        // The line is written when the task ends (a completion on the loop
        // thread is a refusal inside `call`: nothing ran, no line).
        let audited = |inner: basicagent_abi::host::Completer| match note {
            Some(mut note) => {
                note.set_task(&task);
                crate::audit::after_line(note, Some(self.loop_thread), inner)
            }
            None => inner,
        };
        let call = plugin.call(
            frame,
            audited(Box::new(move |c: Completion| {
                if std::thread::current().id() == loop_thread {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    return;
                }
                let frame = tasks::done_frame(&task_id, c.retcode, &c.message, c.data, max_frame);
                let task = TaskEnd {
                    id: task_id,
                    retcode: c.retcode,
                    stored: false,
                    schedule: None,
                };
                sink.task_finished(Finished::of_task(c.call, frame, task));
            })),
        );
        let refused = immediate.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = refused {
            // Nothing ran: no task, no marker.
            self.tasks.cancel_marker(&task);
            self.flush_task_ops();
            return Response::from_plugin(id, c.retcode, &c.message, c.data.as_deref());
        }
        self.tasks.start(&task, call, &cmd, now);
        self.in_flight.insert(
            call,
            InFlight {
                plugin,
                method: format!("async.bash {task}"),
            },
        );
        // Command lines carry secrets (`mysql -pS3cret`): the full text at
        // debug only; info shows a digest to match against the server's.
        log::info!("task {task} started (command sha256 {})", digest12(&cmd));
        log::debug!("task {task} command: {cmd}");
        Response::new(id, Retcode::SUCCESS).with_data(&TaskStarted { task })
    }

    /// `schedule.*` requests (parameters at the top level of the request).
    fn schedule_request(
        &mut self,
        id: Option<Box<RawValue>>,
        method: &str,
        frame: &[u8],
        now: Instant,
    ) -> Response {
        let wall = i64::try_from(self.unix_now()).unwrap_or(i64::MAX);
        let methods = if method == "schedule.add" {
            self.plugin_methods()
        } else {
            Vec::new()
        };
        let Some(table) = &mut self.schedules else {
            return Response::failed(
                id,
                Retcode::UNKNOWN_METHOD,
                format!("Unknown method: {method} (no schedule table)"),
            );
        };
        let result = table.request(method, frame, &methods, wall);
        match result {
            Ok(data) => {
                if method == "schedule.add" {
                    // A slot due at once (`at` now) starts without waiting.
                    let _ = self.run_schedules(now);
                }
                Response::new(id, Retcode::SUCCESS).with_data(&data)
            }
            Err(e) => {
                log::warn!("{method} refused: {e}");
                Response::failed(id, Retcode::INVALID_PARAMS, e.to_string())
            }
        }
    }

    /// Decides the schedules and starts the runs whose state is durable.
    /// Returns how long the loop may sleep before the next decision.
    pub fn run_schedules(&mut self, now: Instant) -> Option<Duration> {
        let table = self.schedules.as_mut()?;
        if table.is_empty() {
            let _ = table.take_ready();
            return None;
        }
        let wall_ms = self.sink.unix_ms();
        self.tasks
            .set_clock(u64::try_from(wall_ms / 1000).unwrap_or(u64::MAX));
        let wall = i64::try_from(wall_ms / 1000).unwrap_or(i64::MAX);
        let wake = table.tick(wall);
        for fire in table.take_ready() {
            self.launch(fire, now);
        }
        self.flush_task_ops();
        let max = crate::schedule::MAX_WAIT;
        Some(match wake {
            Some(at) => {
                let at_ms = u128::try_from(at.max(0)).unwrap_or(0).saturating_mul(1000);
                let wait = u64::try_from(at_ms.saturating_sub(wall_ms)).unwrap_or(u64::MAX);
                Duration::from_millis(wait).min(max)
            }
            None => max,
        })
    }

    /// Starts one scheduled run (its state already durable) through the
    /// same plugins as a server request; its result becomes a `task.done`
    /// with `schedule`, `scheduled_at` and `run` in the outbox. A run that
    /// cannot start (no plugin, `max_concurrent`) is a failed result.
    fn launch(&mut self, fire: Fire, now: Instant) {
        if let Some(old) = &fire.replace {
            if let Some(call) = self.tasks.running_call(old) {
                if let Some(f) = self.in_flight.get(&call) {
                    log::info!(
                        "schedule {}: cancelling run task {old} (overlap: replace)",
                        fire.schedule
                    );
                    self.tasks.mark_cancelling(old);
                    f.plugin.cancel(call);
                }
            }
        }
        let task = tasks::new_task_id();
        let run = basicagent_proto::ScheduleRun {
            schedule: fire.schedule.clone(),
            scheduled_at: u64::try_from(fire.slot).unwrap_or(0),
            run: fire.run,
        };
        let sink = RunSink {
            sink: Arc::clone(&self.sink),
            task: task.clone(),
            max_frame: self.max_frame,
            run,
        };
        let plugin_name = if fire.method == "async.bash" {
            "sync.bash"
        } else {
            fire.method.as_str()
        };
        let refused = |retcode: u32, message: String| Completion {
            call: 0,
            retcode,
            message,
            data: None,
        };
        let plugin = match self.plugin(plugin_name) {
            Ok(p) => p,
            Err(e) => {
                log::warn!(
                    "schedule {}: run {} cannot start: {e}",
                    fire.schedule,
                    fire.run
                );
                // The marker first: the result, written after it, removes it.
                self.queue_marker(&task, &fire.method);
                sink.complete(refused(e.retcode(), e.to_string()));
                self.note_scheduled_start(&fire, &task, None, now);
                return;
            }
        };
        if self.in_flight.len() >= self.max_concurrent {
            let message = format!(
                "Busy: {} requests in flight (max_concurrent)",
                self.in_flight.len()
            );
            log::warn!(
                "schedule {}: run {} not started: {message}",
                fire.schedule,
                fire.run
            );
            self.queue_marker(&task, &fire.method);
            sink.complete(refused(Retcode::BUSY.0, message));
            self.note_scheduled_start(&fire, &task, None, now);
            return;
        }
        let frame = fire.request.to_frame();
        // The marker goes to the task files before the call (the result,
        // written after it in order, removes it).
        let what = builtins::async_bash_cmd(frame.as_bytes());
        self.queue_marker(&task, what.as_deref().unwrap_or(&fire.method));
        let mut completer: basicagent_abi::host::Completer =
            Box::new(move |c: Completion| sink.complete(c));
        let note = self.audit.as_ref().and_then(|a| {
            a.scheduled(
                &fire.method,
                frame.as_bytes(),
                &fire.schedule,
                fire.run,
                &task,
            )
        });
        if let Some(note) = note {
            completer = crate::audit::after_line(note, None, completer);
        }
        let call = plugin.call(frame.as_bytes(), completer);
        self.note_scheduled_start(&fire, &task, Some(call), now);
        self.in_flight.insert(
            call,
            InFlight {
                plugin,
                method: format!("schedule {} run {} ({task})", fire.schedule, fire.run),
            },
        );
    }

    fn note_scheduled_start(&mut self, fire: &Fire, task: &str, call: Option<u64>, now: Instant) {
        let what = match fire.request.cmd() {
            Some(cmd) => cmd.to_owned(),
            None => fire.method.clone(),
        };
        // A call of 0 is no plugin call: its failed result is on its way.
        self.tasks.start(task, call.unwrap_or(0), &what, now);
        self.tasks.mark_scheduled(task, &fire.schedule);
        if let Some(table) = &mut self.schedules {
            table.started(&fire.schedule, task);
        }
        log::info!(
            "schedule {}: run {} (slot {}) started as task {task}",
            fire.schedule,
            fire.run,
            fire.slot
        );
    }

    /// `task.status` and `task.cancel`, both `{"task": ID}`.
    fn task_request(
        &mut self,
        id: Option<Box<RawValue>>,
        generation: u64,
        method: &str,
        frame: &[u8],
        now: Instant,
    ) -> Option<Response> {
        let task = builtins::task_param(frame);
        let Some(task) = task.filter(|t| tasks::valid_task_id(t)) else {
            return Some(Response::failed(
                id,
                Retcode::INVALID_PARAMS,
                "Invalid params: \"task\" must be a task id string",
            ));
        };
        if !self.tasks.contains(&task) {
            return Some(Response::failed(
                id,
                Retcode::INVALID_PARAMS,
                format!("Invalid params: unknown task {task}"),
            ));
        }
        if method == "task.status" {
            if self.tasks.is_done(&task) && self.tasks.memory_frame(&task).is_none() {
                // The stored result is read off the loop; answered then.
                self.next_read += 1;
                let ctx = self.next_read;
                self.reading.insert(
                    ctx,
                    StatusWait {
                        generation,
                        id,
                        task: task.clone(),
                    },
                );
                self.sink.persist(TaskFileOp::Read { ctx, id: task });
                return None;
            }
            let memory = self.tasks.memory_frame(&task);
            let data = self.tasks.status(&task, now, memory.as_deref());
            let running = self.tasks.running_call(&task).and_then(|call| {
                self.in_flight
                    .get(&call)
                    .map(|f| (call, Arc::clone(&f.plugin)))
            });
            let Some((call, plugin)) = running else {
                return Some(Response::new(id, Retcode::SUCCESS).with_data(&data));
            };
            // Output so far: ask the plugin (answered from its own thread).
            let peek = SyncBashPeek::new(call).to_json();
            let _noted = crate::crashmark::Guard::enter(&plugin);
            plugin.call(
                peek.as_bytes(),
                self.answer_with(generation, id, None, move |id, c| {
                    let ok = c.retcode == Retcode::SUCCESS.0;
                    let data = data.map(|d| d.with_output(c.data.as_deref().filter(|_| ok)));
                    Response::new(id, Retcode::SUCCESS).with_data(&data)
                }),
            );
            return None;
        }
        let Some(call) = self.tasks.running_call(&task) else {
            return Some(Response::failed(
                id,
                Retcode::INVALID_PARAMS,
                format!("Invalid params: task {task} has finished"),
            ));
        };
        self.tasks.mark_cancelling(&task);
        if let Some(f) = self.in_flight.get(&call) {
            log::info!("cancelling task {task}");
            f.plugin.cancel(call);
        }
        Some(Response::new(id, Retcode::SUCCESS).with_data(&TaskCancelling::new(task)))
    }

    /// The stored result of a `task.status` was read back: its answer.
    pub fn status_read(
        &mut self,
        ctx: u64,
        stored: Option<Vec<u8>>,
        now: Instant,
    ) -> Option<Finished> {
        let wait = self.reading.remove(&ctx)?;
        let data = self.tasks.status(&wait.task, now, stored.as_deref());
        let r = Response::new(wait.id, Retcode::SUCCESS).with_data(&data);
        Some(Finished {
            generation: Some(wait.generation),
            call: 0,
            frame: self.frame_of(&r),
            id: r.id,
            task: None,
            panicked: false,
        })
    }

    /// Asks every plugin call in flight to stop (shutdown).
    pub fn cancel_all(&self) {
        for (call, f) in &self.in_flight {
            log::info!("cancelling {} (call {call})", f.method);
            f.plugin.cancel(*call);
        }
    }

    /// Loads anew plugins changed on disk (SIGHUP).
    pub fn reload_plugins(&mut self) {
        self.cache.clear();
        for r in self.registry.reload_changed() {
            match r {
                Ok(info) => log::info!(
                    "reloaded plugin {} {} from {}",
                    info.name,
                    info.version,
                    info.path.display()
                ),
                Err(e) => log::error!("plugin reload refused, the old one stays: {e}"),
            }
        }
    }

    /// Orderly shutdown of the plugins.
    pub fn fini(&self) {
        self.registry.fini_all();
    }

    fn plugin(&mut self, method: &str) -> Result<Arc<Plugin>, basicagent_abi::LoadError> {
        if let Some(p) = self.cache.get(method) {
            return Ok(Arc::clone(p));
        }
        let p = self.registry.get(method)?;
        self.cache.insert(method.to_owned(), Arc::clone(&p));
        Ok(p)
    }

    fn agent_info(&self, id: Option<Box<RawValue>>, now: Instant) -> Response {
        let mut loaded: Vec<String> = self.cache.keys().cloned().collect();
        // The order of before: a JSON array of the cache's keys, sorted
        // by nothing; sorted now, which is at least stable.
        loaded.sort();
        let data = AgentInfo {
            version: self.facts.version.clone(),
            host_id: self.facts.host_id.clone(),
            name: self.facts.name.clone(),
            pid: std::process::id(),
            uptime_seconds: now.saturating_duration_since(self.facts.started).as_secs(),
            plugin_dir: self.registry.dir().to_string_lossy().into_owned(),
            plugins_loaded: loaded,
            plugins_available: self.plugin_methods(),
            in_flight: self.in_flight.len(),
            max_concurrent: self.max_concurrent,
            requests_served: self.served,
            schedules: self.schedules.as_ref().map_or(0, ScheduleTable::len),
            quarantined: self
                .guard
                .quarantine
                .list(now)
                .iter()
                .map(builtins::to_value)
                .collect(),
            calls_pending: basicagent_abi::pending_calls(),
            audit: self
                .audit
                .as_ref()
                .map(|a| builtins::to_value(&a.health().report())),
        };
        Response::new(id, Retcode::SUCCESS).with_data(&data)
    }
}

/// Where a scheduled run's completion goes: its `task.done` is stored in
/// the outbox off the loop ([`Sink::task_finished`]), then handed to the
/// loop like an `async.bash` result.
struct RunSink {
    sink: Arc<dyn Sink>,
    task: String,
    max_frame: usize,
    run: basicagent_proto::ScheduleRun,
}

impl RunSink {
    fn complete(self, c: Completion) {
        let frame = tasks::done_frame_run(
            &self.task,
            c.retcode,
            &c.message,
            c.data,
            self.max_frame,
            Some(self.run.clone()),
        );
        let task = TaskEnd {
            id: self.task,
            retcode: c.retcode,
            stored: false,
            schedule: Some(self.run.schedule),
        };
        self.sink
            .task_finished(Finished::of_task(c.call, frame, task));
    }
}

/// Deadlines and quarantine (see [`crate::quarantine`]).
impl Dispatcher {
    /// Runs the plugins of these methods elsewhere (helper processes the
    /// io side made, `io::isolate`).
    pub fn set_isolated(&mut self, helpers: Vec<(String, Box<dyn Isolated>)>) {
        for (m, h) in helpers {
            log::info!("plugin of {m} isolated in a helper process");
            self.guard.isolated.insert(m, h);
        }
    }

    /// The frame bound in force (what helpers must respect).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The deadlines and quarantine thresholds (`[plugins]`).
    pub fn set_limits(&mut self, limits: crate::quarantine::Limits) {
        self.guard.limits = limits;
    }

    /// The plugins quarantined (for tests and the crash marker).
    pub fn quarantine_mut(&mut self) -> &mut crate::quarantine::Quarantine {
        &mut self.guard.quarantine
    }

    /// The earliest deadline of a call in flight (the loop's poll timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.guard.watchdog.next()
    }

    /// Calls in flight with a deadline (tests: empty when all answered).
    pub fn watched(&self) -> usize {
        self.guard.watchdog.len()
    }

    /// Answers `3023` for every call whose deadline passed, retires its id
    /// (a late `complete` gets `BA_STATUS_UNKNOWN_CALL`), asks the plugin
    /// to cancel it and counts a strike. The answers go out through
    /// the sink like any completion.
    pub fn expire_due(&mut self, now: Instant) {
        self.guard.clock = now;
        for (call, limit) in self.guard.watchdog.expired(now) {
            let Some(f) = self.in_flight.get(&call) else {
                continue;
            };
            let (plugin, method) = (Arc::clone(&f.plugin), f.method.clone());
            let message = format!(
                "Timeout: {method} did not answer within {} s; the call was cancelled",
                limit.as_secs_f64()
            );
            let expired = basicagent_abi::host::expire(Completion {
                call,
                retcode: Retcode::TIMEOUT.0,
                message,
                data: None,
            });
            if expired {
                log::warn!("{method} (call {call}) passed its deadline of {limit:?}: answered 3023, cancelled");
                let noted = crate::crashmark::Guard::enter(&plugin);
                plugin.cancel(call);
                drop(noted);
                self.strike(&plugin, "timed out", now);
            }
        }
    }

    /// The plugin for a request if it is not quarantined: a quarantine
    /// whose file changed loads the new file first.
    fn admit(
        &mut self,
        method: &str,
        plugin: Arc<Plugin>,
        now: Instant,
    ) -> Result<Arc<Plugin>, (u32, String)> {
        self.guard.clock = now;
        match self.guard.quarantine.check(&plugin.info().path, now) {
            crate::quarantine::Check::Clear => Ok(plugin),
            crate::quarantine::Check::Changed(old) => {
                self.reload_plugins();
                let new = self
                    .plugin(method)
                    .map_err(|e| (e.retcode(), e.message()))?;
                match old {
                    // The new file did not load: the old code stays out.
                    Some(entry) if Arc::ptr_eq(&new, &plugin) => {
                        self.guard.quarantine.restore(*entry);
                        match self.guard.quarantine.check(&plugin.info().path, now) {
                            crate::quarantine::Check::Refused(r) => {
                                Err((Retcode::PLUGIN_FAILURE.0, r.message))
                            }
                            _ => Ok(new),
                        }
                    }
                    _ => Ok(new),
                }
            }
            crate::quarantine::Check::Refused(r) => Err((Retcode::PLUGIN_FAILURE.0, r.message)),
        }
    }

    fn strike(&mut self, plugin: &Plugin, what: &str, now: Instant) {
        let info = plugin.info();
        let limits = &self.guard.limits;
        if let Some(e) =
            self.guard
                .quarantine
                .strike(limits, &info.path, &info.name, &info.version, what, now)
        {
            log::error!(
                "plugin {} {} ({}) quarantined: {}",
                e.name,
                e.version,
                e.path.display(),
                e.reason
            );
        }
    }

    /// `agent.release {"plugin": NAME}`: lifts a quarantine (NAME is the
    /// plugin's name, `getinfo_testkit`, or a method, `getinfo.testkit`).
    fn release(&mut self, id: Option<Box<RawValue>>, frame: &[u8]) -> Response {
        let name = builtins::release_param(frame);
        let Some(name) = name.filter(|n| !n.is_empty() && n.len() <= 256) else {
            return Response::failed(
                id,
                Retcode::INVALID_PARAMS,
                "Invalid params: \"plugin\" must be a plugin name such as getinfo_testkit",
            );
        };
        if self.guard.quarantine.release(&name.replace('.', "_")) {
            return Response::new(id, Retcode::SUCCESS).with_data(&Released {
                plugin: name,
                released: true,
            });
        }
        Response::failed(
            id,
            Retcode::INVALID_PARAMS,
            format!("Invalid params: plugin {name} is not quarantined"),
        )
    }
}

impl Dispatcher {
    fn frame_of(&self, r: &Response) -> Vec<u8> {
        bounded_frame(r, self.max_frame)
    }
}

/// Whether `method` is in a namespace the agent serves itself (`agent.`,
/// `async.`, `task.`, `schedule.`): never a plugin's.
fn is_builtin_namespace(method: &str) -> bool {
    ["agent.", "async.", "task.", "schedule."]
        .iter()
        .any(|ns| method.starts_with(ns))
}

/// The first 12 hex digits of the SHA-256 of `text`: enough to tell
/// commands apart in a log without showing them.
pub fn digest12(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The response as one frame of at most `max_frame` bytes (before its
/// `\n`). One that does not fit becomes a `3025` failure with the same id
/// saying so; if even that does not fit (an id near the limit), the
/// failure goes out with `"id": null`.
pub fn bounded_frame(r: &Response, max_frame: usize) -> Vec<u8> {
    let capacity = r.data.as_ref().map_or(0, |d| d.get().len()) + r.message.len() + 128;
    let mut out = Vec::with_capacity(capacity.min(max_frame.saturating_add(1)));
    if r.write_frame_limited(&mut out, max_frame).is_ok() {
        return out;
    }
    log::warn!(
        "an answer with retcode {} is larger than the frame limit ({max_frame} bytes); sent as 3025 instead",
        r.retcode.0
    );
    let message = format!(
        "Plugin failure: the answer is larger than the frame limit of {max_frame} bytes (server.max_frame); it was not sent"
    );
    let failed = Response::failed(r.id.clone(), Retcode::PLUGIN_FAILURE, message.clone());
    out.clear();
    out.shrink_to(4096);
    if failed.write_frame_limited(&mut out, max_frame).is_ok() {
        return out;
    }
    out.clear();
    Response::failed(None, Retcode::PLUGIN_FAILURE, message).write_frame(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_proto::builtins::Value;

    fn raw(s: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(s.to_owned()).unwrap())
    }

    #[test]
    fn an_answer_over_the_frame_limit_becomes_a_3025_that_fits() {
        let data = format!("{{\"s\":\"{}\"}}", "\\u0001".repeat(2000));
        let r = Response::from_plugin(raw("\"q-1\""), 2, "", Some(&data));
        let small = bounded_frame(&r, 1 << 20);
        assert_eq!(small.last(), Some(&b'\n'));
        assert!(Response::parse(small.trim_ascii_end()).unwrap().retcode == Retcode::SUCCESS);
        let f = bounded_frame(&r, 4096);
        assert!(f.len() <= 4097);
        let v = builtins::parse_value(std::str::from_utf8(&f).unwrap()).unwrap();
        assert_eq!(v["id"], "q-1");
        assert_eq!(v["retcode"], 3025);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("frame limit of 4096 bytes"));
        // An id that alone nearly fills the frame: the failure goes with null.
        let id = format!("\"{}\"", "i".repeat(4000));
        let r = Response::from_plugin(raw(&id), 2, "", Some(&data));
        let f = bounded_frame(&r, 4096);
        assert!(f.len() <= 4097);
        let v = builtins::parse_value(std::str::from_utf8(&f).unwrap()).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["retcode"], 3025);
    }

    /// A dispatcher with an empty plugin directory and a test sink.
    fn dispatcher() -> (
        Dispatcher,
        Arc<crate::core::pair::TestSink>,
        tempfile::TempDir,
    ) {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("tasks");
        let plugins = state.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        let tasks = crate::io::taskfiles::open(&dir, crate::core::pair::limits()).unwrap();
        let sink = crate::core::pair::TestSink::new(dir, 1 << 20);
        let d = Dispatcher::new(
            PluginRegistry::new(plugins, basicagent_abi::HostSettings::default()),
            2,
            Arc::clone(&sink) as Arc<dyn Sink>,
            AgentFacts {
                host_id: "h-1".into(),
                name: "n".into(),
                version: "0.1.0".into(),
                started: Instant::now(),
            },
            tasks,
        );
        (d, sink, state)
    }

    fn answer(d: &mut Dispatcher, frame: &str) -> Response {
        let out = d
            .dispatch(1, frame.as_bytes(), Instant::now())
            .expect("answered at once");
        assert_eq!(out.last(), Some(&b'\n'));
        Response::parse(out.trim_ascii_end()).unwrap()
    }

    #[test]
    fn built_ins_are_answered_at_once_and_bad_requests_get_clear_errors() {
        let (mut d, sink, _state) = dispatcher();
        let r = answer(&mut d, r#"{"id":1,"method":"ping"}"#);
        assert_eq!((r.retcode, r.id.unwrap().get()), (Retcode::SUCCESS, "1"));
        let r = answer(&mut d, "{\"id\":\"q\",\"method\":");
        assert_eq!(r.retcode, Retcode::INVALID_REQUEST);
        for m in [
            "agent.nosuch",
            "task.nosuch",
            "schedule.nosuch",
            "async.nosuch",
        ] {
            let r = answer(&mut d, &format!(r#"{{"id":2,"method":"{m}"}}"#));
            assert_eq!(r.retcode, Retcode::UNKNOWN_METHOD, "{m}");
            assert!(r.message.contains(m), "{}", r.message);
        }
        // No plugin for it: refused at once, never in flight.
        let r = answer(&mut d, r#"{"id":3,"method":"getinfo.nosuch"}"#);
        assert!(!r.retcode.is_success(), "{r:?}");
        assert_eq!(d.in_flight(), 0);
        // A response from the server and an unknown task's ack: no answer.
        assert!(d
            .dispatch(
                1,
                br#"{"id":"hb-1","resp":"success","retcode":2}"#,
                Instant::now()
            )
            .is_none());
        assert!(d
            .dispatch(1, br#"{"method":"task.ack","task":"0a-1"}"#, Instant::now())
            .is_none());
        assert!(sink.ops.lock().unwrap().is_empty(), "no file touched");
        let info = answer(&mut d, r#"{"id":4,"method":"agent.info"}"#);
        let data = info.data.unwrap();
        assert!(
            data.get().contains("\"requests_served\":"),
            "{}",
            data.get()
        );
    }

    #[test]
    fn while_congested_only_ping_is_served() {
        let (mut d, _sink, _state) = dispatcher();
        d.set_congested(Some("9 bytes of answers wait".into()));
        let r = answer(&mut d, r#"{"id":1,"method":"agent.info"}"#);
        assert_eq!(r.retcode, Retcode::BUSY);
        assert_eq!(r.message, "Busy: 9 bytes of answers wait");
        assert_eq!(
            answer(&mut d, r#"{"id":2,"method":"ping"}"#).retcode,
            Retcode::SUCCESS
        );
        d.set_congested(None);
        assert_eq!(
            answer(&mut d, r#"{"id":3,"method":"agent.info"}"#).retcode,
            Retcode::SUCCESS
        );
    }

    #[test]
    fn task_requests_check_their_parameters_and_async_bash_needs_its_plugin() {
        let (mut d, sink, _state) = dispatcher();
        for frame in [
            r#"{"id":1,"method":"task.status"}"#,
            r#"{"id":1,"method":"task.cancel","task":5}"#,
            r#"{"id":1,"method":"task.status","task":"../etc/passwd"}"#,
        ] {
            let r = answer(&mut d, frame);
            assert_eq!(r.retcode, Retcode::INVALID_PARAMS, "{frame}");
        }
        let r = answer(&mut d, r#"{"id":1,"method":"task.status","task":"0a-1"}"#);
        assert_eq!(r.retcode, Retcode::INVALID_PARAMS);
        assert!(r.message.contains("unknown task 0a-1"), "{}", r.message);
        // No sync.bash plugin: refused, no task, no marker written.
        let r = answer(&mut d, r#"{"id":2,"method":"async.bash","cmd":"true"}"#);
        assert!(!r.retcode.is_success());
        assert!(sink.ops.lock().unwrap().is_empty());
        let list = answer(&mut d, r#"{"id":3,"method":"task.list"}"#);
        assert_eq!(
            list.data.unwrap().get(),
            r#"{"count":0,"outbox_bytes":0,"tasks":[]}"#
        );
        let r = answer(
            &mut d,
            r#"{"id":4,"method":"agent.release","plugin":"getinfo_x"}"#,
        );
        assert_eq!(r.retcode, Retcode::INVALID_PARAMS);
        assert!(r.message.contains("not quarantined"), "{}", r.message);
        let r = answer(&mut d, r#"{"id":4,"method":"agent.release"}"#);
        assert_eq!(r.retcode, Retcode::INVALID_PARAMS);
    }

    #[test]
    fn a_stored_result_is_read_off_the_loop_for_task_status() {
        let (mut d, sink, state) = dispatcher();
        let id = tasks::new_task_id();
        let frame = tasks::done_frame(&id, 2, "", Some("{\"stdout\":\"hi\"}".into()), 1 << 20);
        crate::io::taskfiles::write_result(&state.path().join("tasks"), &id, &frame).unwrap();
        // Reopened with the result on disk.
        let tasks =
            crate::io::taskfiles::open(&state.path().join("tasks"), crate::core::pair::limits())
                .unwrap();
        d.tasks = tasks;
        let request = format!(r#"{{"id":7,"method":"task.status","task":"{id}"}}"#);
        assert!(
            d.dispatch(3, request.as_bytes(), Instant::now()).is_none(),
            "answered later"
        );
        let ops = sink.ops.lock().unwrap().clone();
        assert!(
            matches!(ops.as_slice(), [TaskFileOp::Read { id: i, .. }] if *i == id),
            "{ops:?}"
        );
        let Some(Mail::Read { ctx, frame }) = sink.try_next() else {
            panic!("the read's answer")
        };
        let f = d.status_read(ctx, frame, Instant::now()).unwrap();
        assert_eq!(f.generation, Some(3), "on the connection that asked");
        let r = Response::parse(f.frame.trim_ascii_end()).unwrap();
        assert!(r.data.unwrap().get().contains("\"stdout\":\"hi\""));
        assert!(
            d.status_read(ctx, None, Instant::now()).is_none(),
            "answered once"
        );
    }

    /// An audit disk whose writes wait until the test opens the gate, and
    /// that keeps the lines it was given.
    struct GatedDisk {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        lines: Arc<Mutex<Vec<String>>>,
        len: u64,
    }

    impl crate::audit::Disk for GatedDisk {
        fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
            let (open, cv) = &*self.gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.len += line.len() as u64;
            let text = String::from_utf8_lossy(line).into_owned();
            self.lines.lock().unwrap().push(text);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> u64 {
            self.len
        }
        fn rotate(&mut self) -> std::io::Result<String> {
            Ok("audit.log.1".into())
        }
    }

    #[test]
    fn answers_waiting_for_their_audit_line_count_against_the_answer_bound() {
        let (mut d, sink, _state) = dispatcher();
        d.set_max_frame(16 << 20);
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let disk = GatedDisk {
            gate: Arc::clone(&gate),
            lines: Arc::clone(&lines),
            len: 0,
        };
        let start = crate::audit::Start {
            last: crate::audit::GENESIS.into(),
            rotated_from: None,
            torn: None,
        };
        let cfg = crate::config::AuditConfig::default();
        d.set_audit(crate::audit::Audit::with_disk(disk, start, &cfg).unwrap());
        // The loop's send queue is empty; the bound is 8 MiB.
        let bound = 8 << 20;
        d.publish_queue(0, bound);
        // Four 6 MB answers complete (on a plugin's thread) while the
        // audit writer cannot write their lines.
        let big = format!(
            r#"{{"exitcode":0,"stdout_bytes":6000000,"stdout":"{}"}}"#,
            "x".repeat(6_000_000)
        );
        for i in 0..4u64 {
            let id = format!("\"big-{i}\"");
            let frame = format!(r#"{{"id":{id},"method":"fixture.misbehave"}}"#);
            let note = d.audit_begin("fixture.misbehave", raw(&id).as_deref(), frame.as_bytes());
            let done = d.plugin_answer(1, raw(&id), note.unwrap());
            let data = big.clone();
            std::thread::spawn(move || {
                done(Completion {
                    call: i,
                    retcode: 2,
                    message: String::new(),
                    data: Some(data),
                })
            })
            .join()
            .unwrap();
        }
        // Nothing reached the loop (each answer waits for its line), and
        // the bytes waiting count: the backlog is at its bound.
        assert!(d.try_next().is_none());
        let held = d.backlog.full().expect("audit-held answers count");
        assert!(held >= bound, "{held}");
        assert!(
            held < 3 * 6_000_000,
            "two whole answers and two small 3026: {held}"
        );
        // The lines are written: the answers follow, in order; those that
        // found the backlog full are small 3026 answers.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let mut got = Vec::new();
        while got.len() < 4 {
            match d.try_next() {
                Some(Mail::Finished(f)) => {
                    let f = d.complete(f, Instant::now());
                    got.push(Response::parse(f.frame.trim_ascii_end()).unwrap());
                }
                Some(_) => panic!("only answers"),
                None => std::thread::yield_now(),
            }
        }
        let ids: Vec<_> = got.iter().map(|r| r.id.as_ref().unwrap().get()).collect();
        assert_eq!(
            ids,
            [r#""big-0""#, r#""big-1""#, r#""big-2""#, r#""big-3""#]
        );
        let codes: Vec<_> = got.iter().map(|r| r.retcode.0).collect();
        assert_eq!(codes, [2, 2, 3026, 3026]);
        for r in &got[2..] {
            assert!(r.message.starts_with("Busy: the answer"), "{}", r.message);
            assert!(r.message.contains("was dropped"), "{}", r.message);
        }
        // Taken by the loop: no longer counted.
        assert!(d.backlog.full().is_none());
        // Every line records what ran: retcode 2 and the output's size.
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 4);
        for l in lines.iter() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["retcode"], 2, "{l}");
            assert_eq!(v["stdout_bytes"], 6_000_000, "{l}");
        }
        drop(sink);
    }

    #[test]
    fn the_digest_is_the_sha256_prefix() {
        assert_eq!(digest12("abc"), "ba7816bf8f01");
    }
}
