//! The task table: asynchronous tasks and their unacknowledged results
//! (the outbox), without touching a file. The files (`state_dir/tasks`,
//! see [`crate::io::taskfiles`]) follow the table through
//! [`TaskFileOp`]s the table queues and the dispatcher hands to the io side
//! in order ([`TaskStore::take_ops`]).
//!
//! A task's result is written to `ID.done` (temp file, fsync, rename, fsync
//! of the directory) off the loop, **before** the loop pushes it as
//! `task.done`; it stays until the server's `task.ack`, and is pushed again
//! after every init, whichever server that is, read back from disk in
//! bounded batches ([`OUTBOX_BATCH_BYTES`]). A running task leaves an
//! `ID.running` marker: one found without a result at start-up means the
//! agent died under it, and becomes a failed result.
//!
//! Key design decisions:
//! * Start-up is best effort: a result that cannot be written (a full
//!   disk) is kept in memory and delivered from there, its marker kept so
//!   that a later start tries again; only a directory that cannot be made
//!   or is unsafe stops the agent.
//! * Every frame kept fits `max_frame` by construction ([`done_frame`]); a
//!   result file from an older version that does not is replaced by a
//!   `3025` result saying so.
//! * A result pushed [`REJECTED_AFTER_PUSHES`] times without a `task.ack`
//!   counts as rejected by the server: when the outbox is full, rejected
//!   results are dropped (oldest first, with a logged count) before a new
//!   task is refused, so one poisonous result cannot block `async.bash`.
//! * The directory is forced to `0700` and must belong to the agent's
//!   uid; files are created `0600` whatever the umask, never through a
//!   symlink.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basicagent_proto::{FrameTooLong, Response, Retcode, TaskDone};
use basicagent_proto::{TaskInfo, TaskList, TaskMarker};

fn parse_frame(bytes: &[u8]) -> Option<TaskDone> {
    TaskDone::parse(bytes.trim_ascii_end()).ok()
}

/// Bounds of the outbox (config keys `max_tasks`, `max_outbox_bytes`,
/// `task_retention`).
#[derive(Debug, Clone, Copy)]
pub struct TaskLimits {
    pub max_tasks: usize,
    pub max_bytes: u64,
    pub retention: Duration,
    /// `server.max_frame`: every frame kept and pushed fits it.
    pub max_frame: usize,
}

/// Pushes (after an init, or live when the task ended) without an ack after
/// which a result counts as rejected by the server and may be dropped when
/// the outbox is full.
pub const REJECTED_AFTER_PUSHES: u32 = 3;

#[derive(Debug)]
enum TaskState {
    Running {
        call: u64,
        started: Instant,
        started_unix: u64,
        cmd: String,
        cancelling: bool,
    },
    Done {
        seq: u64,
        bytes: u64,
        finished_unix: u64,
        retcode: u32,
        /// Times pushed without an ack (this run only).
        pushes: u32,
        /// The frame, when it could not be stored on disk.
        memory: Option<Vec<u8>>,
    },
}

/// Why a new task cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("Busy: {0} tasks kept (max_tasks); acknowledge results or retry later")]
    TooMany(usize),
    #[error("Busy: {0} bytes of unacknowledged results (max_outbox_bytes)")]
    TooBig(u64),
}

/// Bytes of stored results asked for in one [`TaskFileOp::Load`] (at
/// least one result, whatever its size): the reconnect replay never reads
/// the whole outbox at once.
pub const OUTBOX_BATCH_BYTES: u64 = 1 << 20;

/// What the task files must do, in the order the table decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFileOp {
    /// Write the running marker `ID.running` (`0600`, no fsync: a lost
    /// marker only loses the "died while running" report).
    Marker { id: String, text: String },
    /// Delete `ID.done`, and `ID.running` too when `marker`.
    Remove { id: String, marker: bool },
    /// Read these results back for the connection `generation`; answered
    /// by an [`OutboxBatch`].
    Load { generation: u64, ids: Vec<String> },
    /// Read one result back for the `task.status` request `ctx`.
    Read { ctx: u64, id: String },
}

/// Stored results read back ([`TaskFileOp::Load`]); `None` for one that
/// could not be read (logged).
#[derive(Debug)]
pub struct OutboxBatch {
    pub generation: u64,
    pub frames: Vec<(String, Option<Vec<u8>>)>,
}

/// One result left by an earlier run, as the io side found it at start-up.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub id: String,
    pub finished_unix: u64,
    pub bytes: u64,
    pub retcode: u32,
    /// The frame, when it could not be (re)written on disk.
    pub memory: Option<Vec<u8>>,
    /// The schedule of a scheduled run's result.
    pub schedule: Option<String>,
}

/// The tasks this agent knows: running ones and unacknowledged results.
pub struct TaskStore {
    limits: TaskLimits,
    /// The wall clock (Unix seconds) as the io side last read it
    /// ([`TaskStore::set_clock`]): task timestamps.
    clock: u64,
    /// File work decided and not yet handed to the io side.
    ops: Vec<TaskFileOp>,
    /// Markers queued for tasks not yet started (id → started, Unix s).
    marked: HashMap<String, u64>,
    tasks: HashMap<String, TaskState>,
    seq: u64,
    /// Results of scheduled runs (task id → schedule id): bounded per
    /// schedule by [`crate::schedule`], not counted against `max_tasks`
    /// and `max_outbox_bytes`, so they never block `async.bash`.
    scheduled: HashMap<String, String>,
}

/// A task id: a random version-4 UUID (unique across restarts and hosts).
pub fn new_task_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Practically unreachable; fall back to time and pid, still unique
        // enough for one host's task ids.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 96)).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A task id as the server may send it: only what [`new_task_id`] makes
/// (hex and dashes), so that it can never name another file.
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

/// The `task.done` frame for a completion (`data` invalid JSON becomes a
/// `3025` result, like any plugin answer), at most `max_frame` bytes
/// before its `\n`: a result that does not fit becomes a `3025` result
/// saying so.
pub fn done_frame(
    id: &str,
    retcode: u32,
    message: &str,
    data: Option<String>,
    max_frame: usize,
) -> Vec<u8> {
    done_frame_run(id, retcode, message, data, max_frame, None)
}

/// [`done_frame`] for a run of a schedule (`schedule`, `scheduled_at` and
/// `run` fields when `run` is set).
pub fn done_frame_run(
    id: &str,
    retcode: u32,
    message: &str,
    data: Option<String>,
    max_frame: usize,
    run: Option<basicagent_proto::ScheduleRun>,
) -> Vec<u8> {
    let response = Response::from_plugin_owned(None, retcode, message.to_owned(), data);
    // Moved, not cloned: `data` may be a command's whole output.
    let done = TaskDone {
        task: id.to_owned(),
        retcode: response.retcode,
        message: response.message,
        data: response.data,
        run: run.clone(),
    };
    let mut frame = Vec::new();
    match done.write_frame_limited(&mut frame, max_frame) {
        Ok(()) => frame,
        Err(FrameTooLong { limit }) => {
            log::warn!("task {id}: result larger than the frame limit ({limit} bytes); stored as a 3025 failure");
            let mut frame = too_long_frame(id, limit);
            if run.is_some() {
                if let Some(d) = parse_frame(&frame) {
                    frame.clear();
                    d.with_run(run).write_frame(&mut frame);
                }
            }
            frame
        }
    }
}

/// The `3025` result that replaces one larger than the frame limit.
pub fn too_long_frame(id: &str, limit: usize) -> Vec<u8> {
    let response = Response::failed(
        None,
        Retcode::PLUGIN_FAILURE,
        format!("Plugin failure: the result is larger than the frame limit of {limit} bytes (server.max_frame); it was not kept"),
    );
    let mut frame = Vec::new();
    TaskDone::new(id, &response).write_frame(&mut frame);
    frame
}

impl TaskStore {
    /// A table holding what an earlier run left (oldest first).
    pub fn restored(limits: TaskLimits, recovered: Vec<Recovered>) -> TaskStore {
        let mut store = TaskStore {
            limits,
            clock: 0,
            ops: Vec::new(),
            marked: HashMap::new(),
            tasks: HashMap::new(),
            seq: 0,
            scheduled: HashMap::new(),
        };
        for r in recovered {
            store.seq += 1;
            if let Some(s) = r.schedule {
                store.scheduled.insert(r.id.clone(), s);
            }
            store.tasks.insert(
                r.id,
                TaskState::Done {
                    seq: store.seq,
                    bytes: r.bytes,
                    finished_unix: r.finished_unix,
                    retcode: r.retcode,
                    pushes: 0,
                    memory: r.memory,
                },
            );
        }
        if !store.tasks.is_empty() {
            log::info!(
                "outbox: {} unacknowledged result(s) to deliver",
                store.tasks.len()
            );
        }
        store
    }

    /// The wall clock (Unix seconds) for the timestamps of what follows.
    pub fn set_clock(&mut self, unix: u64) {
        self.clock = unix;
    }

    /// The limits in force.
    pub fn limits(&self) -> TaskLimits {
        self.limits
    }

    /// File work decided since the last call, in order.
    pub fn take_ops(&mut self) -> Vec<TaskFileOp> {
        std::mem::take(&mut self.ops)
    }

    /// Bytes of unacknowledged results, scheduled runs' excluded.
    fn outbox_bytes(&self) -> u64 {
        self.tasks
            .iter()
            .filter(|(id, _)| !self.scheduled.contains_key(*id))
            .map(|(_, t)| {
                if let TaskState::Done { bytes, .. } = t {
                    *bytes
                } else {
                    0
                }
            })
            .sum()
    }

    /// Makes room for one more task: drops results older than the
    /// retention, then results the server rejected (pushed
    /// [`REJECTED_AFTER_PUSHES`] times without an ack), oldest first, both
    /// logged; refuses when still full (never drops a result the server
    /// may not have seen).
    pub fn admit(&mut self, now_unix: u64) -> Result<(), AdmitError> {
        let full = |s: &TaskStore| {
            s.tasks.len().saturating_sub(s.scheduled.len()) >= s.limits.max_tasks
                || s.outbox_bytes() >= s.limits.max_bytes
        };
        if full(self) {
            let cutoff = now_unix.saturating_sub(self.limits.retention.as_secs());
            let mut expired: Vec<(u64, String)> = self
                .tasks
                .iter()
                .filter_map(|(id, t)| match t {
                    TaskState::Done {
                        seq, finished_unix, ..
                    } if *finished_unix < cutoff => Some((*seq, id.clone())),
                    _ => None,
                })
                .collect();
            expired.sort();
            for (_, id) in expired {
                if !full(self) {
                    break;
                }
                log::warn!(
                    "outbox full: dropping result of task {id}, unacknowledged past the retention"
                );
                self.remove(&id);
            }
        }
        if full(self) {
            let mut rejected: Vec<(u64, String)> = self
                .tasks
                .iter()
                .filter_map(|(id, t)| match t {
                    TaskState::Done { seq, pushes, .. } if *pushes >= REJECTED_AFTER_PUSHES => {
                        Some((*seq, id.clone()))
                    }
                    _ => None,
                })
                .collect();
            rejected.sort();
            let mut dropped = 0usize;
            for (_, id) in rejected {
                if !full(self) {
                    break;
                }
                log::warn!("outbox full: dropping result of task {id}, pushed {REJECTED_AFTER_PUSHES} times without an ack (rejected by the server?)");
                self.remove(&id);
                dropped += 1;
            }
            if dropped > 0 {
                log::warn!("outbox full: dropped {dropped} rejected result(s) to make room");
            }
        }
        let counted = self.tasks.len().saturating_sub(self.scheduled.len());
        if counted >= self.limits.max_tasks {
            return Err(AdmitError::TooMany(counted));
        }
        let bytes = self.outbox_bytes();
        if bytes >= self.limits.max_bytes {
            return Err(AdmitError::TooBig(bytes));
        }
        Ok(())
    }

    /// Queues the running marker of a task about to start (before the
    /// call, so that the result, written after it, finds it);
    /// [`Self::start`] then registers the task without a second one.
    pub fn marker(&mut self, id: &str, cmd: &str) -> u64 {
        let started_unix = self.clock;
        self.marked.insert(id.to_owned(), started_unix);
        let text = TaskMarker {
            cmd,
            started: started_unix,
            task: id,
        }
        .to_json();
        self.ops.push(TaskFileOp::Marker {
            id: id.to_owned(),
            text,
        });
        started_unix
    }

    /// A task whose marker was queued did not start after all: the marker
    /// goes.
    pub fn cancel_marker(&mut self, id: &str) {
        self.marked.remove(id);
        self.ops.push(TaskFileOp::Remove {
            id: id.to_owned(),
            marker: true,
        });
    }

    /// Registers a started task, and queues its running marker unless
    /// [`Self::marker`] did.
    pub fn start(&mut self, id: &str, call: u64, cmd: &str, now: Instant) {
        let started_unix = match self.marked.remove(id) {
            Some(t) => t,
            None => {
                let t = self.marker(id, cmd);
                self.marked.remove(id);
                t
            }
        };
        self.tasks.insert(
            id.to_owned(),
            TaskState::Running {
                call,
                started: now,
                started_unix,
                cmd: cmd.to_owned(),
                cancelling: false,
            },
        );
    }

    /// A task ended; its result was written by the completing thread
    /// (`stored`), or could not be and is kept in memory (its marker then
    /// stays, so a restart still reports the task).
    pub fn finished(&mut self, id: &str, frame: &[u8], retcode: u32, stored: bool) {
        // A stored result removed the marker when it was written.
        self.seq += 1;
        self.tasks.insert(
            id.to_owned(),
            TaskState::Done {
                seq: self.seq,
                bytes: frame.len() as u64,
                finished_unix: self.clock,
                retcode,
                pushes: 0,
                memory: (!stored).then(|| frame.to_vec()),
            },
        );
    }

    /// A result was pushed to the server (live, as the task ended).
    pub fn pushed(&mut self, id: &str) {
        if let Some(TaskState::Done { pushes, .. }) = self.tasks.get_mut(id) {
            *pushes = pushes.saturating_add(1);
        }
    }

    /// Whether the task is done and its result not yet acknowledged.
    pub fn is_done(&self, id: &str) -> bool {
        matches!(self.tasks.get(id), Some(TaskState::Done { .. }))
    }

    /// A result kept in memory (it could not be stored), if any.
    pub fn memory_frame(&self, id: &str) -> Option<Vec<u8>> {
        match self.tasks.get(id)? {
            TaskState::Done {
                memory: Some(frame),
                ..
            } => Some(frame.clone()),
            _ => None,
        }
    }

    /// The size of a done task's result.
    pub fn result_bytes(&self, id: &str) -> Option<u64> {
        match self.tasks.get(id)? {
            TaskState::Done { bytes, .. } => Some(*bytes),
            TaskState::Running { .. } => None,
        }
    }

    /// The next batch of stored results to read back, taken from the
    /// front of `ids`: at most [`OUTBOX_BATCH_BYTES`] (at least one
    /// result); it ends before a result kept in memory or no longer
    /// waiting (those are not read).
    pub fn next_batch(&self, ids: &mut std::collections::VecDeque<String>) -> Vec<String> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(id) = ids.front() {
            if !self.is_done(id) || self.memory_frame(id).is_some() {
                break;
            }
            let size = self.result_bytes(id).unwrap_or(0);
            if !batch.is_empty() && bytes.saturating_add(size) > OUTBOX_BATCH_BYTES {
                break;
            }
            bytes = bytes.saturating_add(size);
            if let Some(id) = ids.pop_front() {
                batch.push(id);
            }
        }
        batch
    }

    /// The server acknowledged a result: delete it. False if unknown.
    pub fn ack(&mut self, id: &str) -> bool {
        match self.tasks.get(id) {
            Some(TaskState::Done { .. }) => {
                self.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Marks task `id` as a run of `schedule` (see [`TaskStore::scheduled`]).
    pub fn mark_scheduled(&mut self, id: &str, schedule: &str) {
        self.scheduled.insert(id.to_owned(), schedule.to_owned());
    }

    /// Unacknowledged results of scheduled runs, oldest first, as
    /// `(schedule, task)`.
    pub fn scheduled_results(&self) -> Vec<(String, String)> {
        self.outbox_ids()
            .into_iter()
            .filter_map(|id| Some((self.scheduled.get(&id)?.clone(), id)))
            .collect()
    }

    fn remove(&mut self, id: &str) {
        self.scheduled.remove(id);
        if let Some(TaskState::Done { memory, .. }) = self.tasks.remove(id) {
            // Never stored: the marker was kept for the next start.
            self.ops.push(TaskFileOp::Remove {
                id: id.to_owned(),
                marker: memory.is_some(),
            });
        }
    }

    /// The plugin call of a running task.
    pub fn running_call(&self, id: &str) -> Option<u64> {
        match self.tasks.get(id) {
            Some(TaskState::Running { call, .. }) => Some(*call),
            _ => None,
        }
    }

    /// Marks a running task as being cancelled. False if not running.
    pub fn mark_cancelling(&mut self, id: &str) -> bool {
        match self.tasks.get_mut(id) {
            Some(TaskState::Running { cancelling, .. }) => {
                *cancelling = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the id is known at all.
    pub fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// The ids of every unacknowledged result, oldest first.
    pub fn outbox_ids(&self) -> Vec<String> {
        let mut done: Vec<(u64, &String)> = self
            .tasks
            .iter()
            .filter_map(|(id, t)| match t {
                TaskState::Done { seq, .. } => Some((*seq, id)),
                _ => None,
            })
            .collect();
        done.sort();
        done.into_iter().map(|(_, id)| id.clone()).collect()
    }

    fn describe(&self, id: &str, now: Instant, with_result: Option<&[u8]>) -> Option<TaskInfo> {
        Some(match self.tasks.get(id)? {
            TaskState::Running {
                started,
                started_unix,
                cmd,
                cancelling,
                ..
            } => TaskInfo {
                task: id.to_owned(),
                state: if *cancelling { "cancelling" } else { "running" }.to_owned(),
                cmd: Some(cmd.clone()),
                started: Some(*started_unix),
                elapsed_ms: Some(
                    u64::try_from(now.saturating_duration_since(*started).as_millis())
                        .unwrap_or(u64::MAX),
                ),
                ..TaskInfo::default()
            },
            TaskState::Done {
                finished_unix,
                retcode,
                ..
            } => {
                let state = if *retcode == Retcode::CANCELLED.0 {
                    "cancelled"
                } else {
                    "done"
                };
                let info = TaskInfo {
                    task: id.to_owned(),
                    state: state.to_owned(),
                    retcode: Some(*retcode),
                    finished: Some(*finished_unix),
                    ..TaskInfo::default()
                };
                match with_result.and_then(parse_frame) {
                    Some(d) => info.with_result(&d.to_response().to_json()),
                    None => info,
                }
            }
        })
    }

    /// `task.status` data, or `None` for an unknown task; `result` is the
    /// stored result of a done task (read back, or [`Self::memory_frame`]).
    pub fn status(&self, id: &str, now: Instant, result: Option<&[u8]>) -> Option<TaskInfo> {
        self.describe(id, now, result)
    }

    /// `task.list` data.
    pub fn list(&self, now: Instant) -> TaskList {
        let mut ids: Vec<&String> = self.tasks.keys().collect();
        ids.sort();
        let tasks: Vec<TaskInfo> = ids
            .into_iter()
            .filter_map(|id| self.describe(id, now, None))
            .collect();
        TaskList {
            count: tasks.len(),
            tasks,
            outbox_bytes: self.outbox_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn table() -> TaskStore {
        TaskStore::restored(
            TaskLimits {
                max_tasks: 10,
                max_bytes: 1 << 30,
                retention: Duration::from_secs(3600),
                max_frame: 1 << 20,
            },
            Vec::new(),
        )
    }

    #[test]
    fn the_marker_is_queued_before_the_task_starts_and_acks_remove_the_right_files() {
        let mut t = table();
        t.marker("a-1", "sleep 1");
        assert!(
            matches!(t.take_ops().as_slice(), [TaskFileOp::Marker { id, text }]
            if id == "a-1" && text.contains("\"cmd\":\"sleep 1\""))
        );
        t.start("a-1", 5, "sleep 1", Instant::now());
        assert!(t.take_ops().is_empty(), "no second marker");
        assert_eq!(t.running_call("a-1"), Some(5));
        t.finished("a-1", b"{}\n", 2, true);
        t.finished("b-2", b"{}\n", 2, false);
        assert!(t.ack("a-1") && t.ack("b-2"));
        assert_eq!(
            t.take_ops(),
            [
                TaskFileOp::Remove {
                    id: "a-1".into(),
                    marker: false
                },
                TaskFileOp::Remove {
                    id: "b-2".into(),
                    marker: true
                },
            ],
            "a result never stored kept its marker for the next start"
        );
        assert!(!t.ack("a-1"));
        assert!(t.take_ops().is_empty());
    }

    #[test]
    fn batches_are_bounded_and_end_before_results_in_memory() {
        let mut t = table();
        let big = vec![b'x'; 600 << 10];
        for id in ["a", "b", "c"] {
            t.finished(id, &big, 2, true);
        }
        t.finished("m", b"{}\n", 2, false);
        t.finished("d", b"{}\n", 2, true);
        let mut ids: VecDeque<String> = t.outbox_ids().into();
        assert_eq!(ids, ["a", "b", "c", "m", "d"]);
        assert_eq!(t.next_batch(&mut ids), ["a"], "600 KiB + 600 KiB > 1 MiB");
        assert_eq!(t.next_batch(&mut ids), ["b"]);
        assert_eq!(t.next_batch(&mut ids), ["c"]);
        assert!(t.next_batch(&mut ids).is_empty(), "m is served from memory");
        assert_eq!(t.memory_frame("m").as_deref(), Some(&b"{}\n"[..]));
        ids.pop_front();
        assert_eq!(t.next_batch(&mut ids), ["d"]);
        // A result acknowledged meanwhile is not read.
        let mut ids: VecDeque<String> = VecDeque::from(["a".to_owned()]);
        t.ack("a");
        assert!(t.next_batch(&mut ids).is_empty());
    }
}
