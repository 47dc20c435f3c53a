//! Requests in, responses out: validates the method, answers built-ins,
//! starts plugin calls, and collects their completions from any thread.
//!
//! Every request gets exactly one answer: an immediate one (built-ins,
//! errors, plugins that complete inside `call`) returned by
//! [`Dispatcher::dispatch`], or a later one from
//! [`Dispatcher::poll_finished`] after the plugin completes on its own
//! thread and wakes the loop through the `mio::Waker`. No lock is held
//! on the loop's side; completions cross in an mpsc channel.
//!
//! `async.bash` runs through the same `sync.bash` plugin; its result is
//! written to the durable outbox ([`crate::tasks`]) by the completing
//! thread before the loop pushes it as `task.done`.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Instant;

use basicagent_abi::{Completion, Plugin, PluginRegistry};
use basicagent_proto::{Incoming, Response, Retcode};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::tasks::{self, TaskStore};

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
    /// For a task: its id and retcode (the result is already on disk).
    pub task: Option<(String, u32)>,
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

/// The request router of the daemon.
pub struct Dispatcher {
    registry: PluginRegistry,
    /// Method → plugin, so the hot path skips the registry's lock and
    /// file-name formatting. Cleared on reload.
    cache: HashMap<String, Arc<Plugin>>,
    in_flight: HashMap<u64, InFlight>,
    max_concurrent: usize,
    tx: mpsc::Sender<Finished>,
    rx: mpsc::Receiver<Finished>,
    waker: Arc<mio::Waker>,
    loop_thread: ThreadId,
    facts: AgentFacts,
    served: u64,
    tasks: TaskStore,
}

impl Dispatcher {
    /// A dispatcher owned by the loop running on the current thread.
    pub fn new(
        registry: PluginRegistry,
        max_concurrent: usize,
        waker: Arc<mio::Waker>,
        facts: AgentFacts,
        tasks: TaskStore,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        Dispatcher {
            registry,
            cache: HashMap::new(),
            in_flight: HashMap::new(),
            max_concurrent: max_concurrent.max(1),
            tx,
            rx,
            waker,
            loop_thread: std::thread::current().id(),
            facts,
            served: 0,
            tasks,
        }
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
    /// known at once; otherwise it arrives through [`Self::poll_finished`].
    pub fn dispatch(&mut self, generation: u64, frame: &[u8], now: Instant) -> Option<Vec<u8>> {
        let request = match Incoming::classify(frame) {
            Ok(Incoming::Request(r)) => r,
            Ok(Incoming::Response(r)) => {
                log::trace!("response from the server: {}", r.retcode.0);
                return None;
            }
            Ok(Incoming::TaskAck(ack)) => {
                if self.tasks.ack(&ack.task) {
                    log::debug!("task {} acknowledged; result deleted", ack.task);
                } else {
                    log::warn!("task.ack for unknown or unfinished task {:?}", ack.task);
                }
                return None;
            }
            Ok(Incoming::TaskDone(done)) => {
                log::warn!("the server sent task.done ({}); ignored", done.task);
                return None;
            }
            Err(e) => {
                log::warn!("invalid request: {e}");
                let message = format!("Invalid request: {e}");
                return Some(frame_of(&Response::failed(
                    e.id,
                    Retcode::INVALID_REQUEST,
                    message,
                )));
            }
        };
        let id = request.id;
        let method = request.method;
        self.served += 1;
        match method.as_str() {
            "ping" => return Some(frame_of(&Response::new(id, Retcode::SUCCESS))),
            "agent.info" => return Some(frame_of(&self.agent_info(id, now))),
            "async.bash" => return Some(frame_of(&self.start_task(id, frame, now))),
            "task.list" => {
                return Some(frame_of(
                    &Response::new(id, Retcode::SUCCESS).with_data(&self.tasks.list(now)),
                ))
            }
            "task.status" | "task.cancel" => {
                return self
                    .task_request(id, generation, &method, frame, now)
                    .map(|r| frame_of(&r))
            }
            _ => {}
        }
        if method.starts_with("agent.")
            || method.starts_with("task.")
            || method.starts_with("async.")
        {
            return Some(frame_of(&Response::failed(
                id,
                Retcode::UNKNOWN_METHOD,
                format!("Unknown method: {method}"),
            )));
        }
        let plugin = match self.plugin(&method) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("{method}: {e}");
                return Some(frame_of(&Response::failed(
                    id,
                    Retcode(e.retcode()),
                    e.message(),
                )));
            }
        };
        if self.in_flight.len() >= self.max_concurrent {
            return Some(frame_of(&Response::failed(
                id,
                Retcode::BUSY,
                format!(
                    "Busy: {} requests in flight (max_concurrent)",
                    self.in_flight.len()
                ),
            )));
        }
        let call = plugin.call(
            frame,
            self.answer_with(generation, move |c| {
                Response::from_plugin_owned(id, c.retcode, c.message, c.data)
            }),
        );
        self.in_flight.insert(call, InFlight { plugin, method });
        None
    }

    /// A completer that turns the plugin's completion into a response
    /// (`respond`, run on the completing thread) and hands it to the loop.
    fn answer_with(
        &self,
        generation: u64,
        respond: impl FnOnce(Completion) -> Response + Send + 'static,
    ) -> basicagent_abi::host::Completer {
        let (tx, waker, loop_thread) = (self.tx.clone(), Arc::clone(&self.waker), self.loop_thread);
        Box::new(move |c: Completion| {
            let call = c.call;
            let response = respond(c);
            let capacity = response.data.as_ref().map_or(0, |d| d.get().len());
            let mut out = Vec::with_capacity(capacity + response.message.len() + 128);
            response.write_frame(&mut out);
            let _ = tx.send(Finished {
                generation: Some(generation),
                call,
                frame: out,
                task: None,
            });
            // The loop drains completions right after each dispatch: only a
            // completion from another thread needs a wake-up.
            if std::thread::current().id() != loop_thread {
                if let Err(e) = waker.wake() {
                    log::error!("cannot wake the loop: {e}");
                }
            }
        })
    }

    /// The next completed call, if any.
    pub fn poll_finished(&mut self) -> Option<Finished> {
        let done = self.rx.try_recv().ok()?;
        if let Some(f) = self.in_flight.remove(&done.call) {
            log::trace!("{} finished", f.method);
        }
        if let Some((task, retcode)) = &done.task {
            log::info!("task {task} finished with {retcode}");
            self.tasks.finished(task, &done.frame, *retcode);
        }
        Some(done)
    }

    /// Unacknowledged task results to push after an init.
    pub fn outbox_frames(&self) -> Vec<Vec<u8>> {
        self.tasks.outbox_frames()
    }

    /// `async.bash`: starts the command through the `sync.bash` plugin and
    /// answers at once with the task id. A request the plugin refuses at
    /// once (bad params, unknown user, busy) is answered with that refusal
    /// and creates no task.
    fn start_task(&mut self, id: Option<Box<RawValue>>, frame: &[u8], now: Instant) -> Response {
        if let Err(e) = self.tasks.admit(tasks::unix_now()) {
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
            Ok(p) => p,
            Err(e) => return Response::failed(id, Retcode(e.retcode()), e.message()),
        };
        let task = tasks::new_task_id();
        let cmd = serde_json::from_slice::<Value>(frame)
            .ok()
            .and_then(|v| v.get("cmd").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        // A completion inside `call` (on this thread) is an immediate
        // refusal: it answers the request itself.
        let immediate: Arc<Mutex<Option<Completion>>> = Arc::default();
        let (tx, waker, loop_thread) = (self.tx.clone(), Arc::clone(&self.waker), self.loop_thread);
        let (slot, dir, task_id) = (
            Arc::clone(&immediate),
            self.tasks.dir().to_owned(),
            task.clone(),
        );
        let call = plugin.call(
            frame,
            Box::new(move |c: Completion| {
                if std::thread::current().id() == loop_thread {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    return;
                }
                let frame = tasks::done_frame(&task_id, c.retcode, &c.message, c.data);
                if let Err(e) = tasks::write_result(&dir, &task_id, &frame) {
                    log::error!("task {task_id}: cannot write the result durably: {e}; delivering it anyway");
                }
                let _ = tx.send(Finished { generation: None, call: c.call, frame, task: Some((task_id, c.retcode)) });
                if let Err(e) = waker.wake() {
                    log::error!("cannot wake the loop: {e}");
                }
            }),
        );
        let refused = immediate.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = refused {
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
        log::info!("task {task} started: {cmd}");
        Response::new(id, Retcode::SUCCESS).with_data(&serde_json::json!({ "task": task }))
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
        let task = serde_json::from_slice::<Value>(frame)
            .ok()
            .and_then(|v| v.get("task").and_then(Value::as_str).map(str::to_owned));
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
            let mut data = self.tasks.status(&task, now).unwrap_or(Value::Null);
            let running = self.tasks.running_call(&task).and_then(|call| {
                self.in_flight
                    .get(&call)
                    .map(|f| (call, Arc::clone(&f.plugin)))
            });
            let Some((call, plugin)) = running else {
                return Some(Response::new(id, Retcode::SUCCESS).with_data(&data));
            };
            // Output so far: ask the plugin (answered from its own thread).
            let peek = format!("{{\"method\":\"sync.bash\",\"peek\":{call}}}");
            plugin.call(
                peek.as_bytes(),
                self.answer_with(generation, move |c| {
                    data["output"] = if c.retcode == Retcode::SUCCESS.0 {
                        c.data
                            .and_then(|d| serde_json::from_str(&d).ok())
                            .unwrap_or(Value::Null)
                    } else {
                        Value::Null
                    };
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
        Some(
            Response::new(id, Retcode::SUCCESS)
                .with_data(&serde_json::json!({"task": task, "state": "cancelling"})),
        )
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
        let loaded: Vec<&str> = self.cache.keys().map(String::as_str).collect();
        let data = serde_json::json!({
            "version": self.facts.version,
            "host_id": self.facts.host_id,
            "name": self.facts.name,
            "pid": std::process::id(),
            "uptime_seconds": now.saturating_duration_since(self.facts.started).as_secs(),
            "plugin_dir": self.registry.dir(),
            "plugins_loaded": loaded,
            "plugins_available": self.plugin_methods(),
            "in_flight": self.in_flight.len(),
            "max_concurrent": self.max_concurrent,
            "requests_served": self.served,
        });
        Response::new(id, Retcode::SUCCESS).with_data(&data)
    }
}

fn frame_of(r: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.message.len() + 96);
    r.write_frame(&mut out);
    out
}
