//! Asynchronous tasks and their durable outbox in `state_dir/tasks`.
//!
//! A task's result is written to `ID.done` (temp file, fsync, rename, fsync
//! of the directory) by the thread that completes it, **before** the loop
//! pushes it as `task.done`; it stays until the server's `task.ack`, and is
//! pushed again after every init, whichever server that is. A running task
//! leaves an `ID.running` marker: one found without a result at start-up
//! means the agent died under it, and becomes a failed result. Files that
//! do not parse are moved aside (`.corrupt`) with a log line, never a crash.
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
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basicagent_proto::{FrameTooLong, Response, Retcode, TaskDone};
use serde_json::{json, Value};

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

/// The tasks this agent knows: running ones and unacknowledged results.
pub struct TaskStore {
    dir: PathBuf,
    limits: TaskLimits,
    tasks: HashMap<String, TaskState>,
    seq: u64,
    /// Results of scheduled runs (task id → schedule id): bounded per
    /// schedule by [`crate::schedule`], not counted against `max_tasks`
    /// and `max_outbox_bytes`, so they never block `async.bash`.
    scheduled: HashMap<String, String>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes a finished task's `task.done` frame durably, then removes its
/// running marker. Called on the completing (plugin) thread, never on the
/// loop.
pub fn write_result(dir: &Path, id: &str, frame: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{id}.done.tmp"));
    let dst = dir.join(format!("{id}.done"));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(frame)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &dst)?;
    sync_dir(dir);
    let _ = fs::remove_file(dir.join(format!("{id}.running")));
    Ok(())
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
fn too_long_frame(id: &str, limit: usize) -> Vec<u8> {
    let response = Response::failed(
        None,
        Retcode::PLUGIN_FAILURE,
        format!("Plugin failure: the result is larger than the frame limit of {limit} bytes (server.max_frame); it was not kept"),
    );
    let mut frame = Vec::new();
    TaskDone::new(id, &response).write_frame(&mut frame);
    frame
}

/// The effective uid (file ownership checks).
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: owned by uid {owner}, not by the agent's uid {euid}; refusing to keep state there", .path.display())]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{}: a shared directory (sticky bit set); state_dir must be private to the agent", .path.display())]
    Shared { path: PathBuf },
}

/// Creates `dir` (and its parents) `0700` if missing, then checks the
/// opened directory (no symlink followed at its last component): it must
/// belong to the agent's uid and not be sticky (a shared directory such
/// as `/tmp`); group and other bits are removed (logged) so that an
/// existing directory is `0700` too.
pub fn prepare_dir(dir: &Path) -> Result<(), DirError> {
    let io_err = |source| DirError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(io_err)?;
    let meta = f.metadata().map_err(io_err)?;
    if meta.uid() != euid() {
        return Err(DirError::Owner {
            path: dir.to_owned(),
            owner: meta.uid(),
            euid: euid(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & libc::S_ISVTX != 0 {
        return Err(DirError::Shared {
            path: dir.to_owned(),
        });
    }
    if mode != 0o700 {
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(f.as_raw_fd(), 0o700) } != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        log::warn!(
            "{}: mode was {mode:04o}; set to 0700 (it holds commands and their output)",
            dir.display()
        );
    }
    Ok(())
}

impl TaskStore {
    /// Opens (creating, see [`prepare_dir`]) the outbox and recovers what a
    /// previous run left: results are kept, torn or corrupt files set
    /// aside, and tasks that were running when the agent died become failed
    /// results — in memory if they cannot be written (logged, the marker
    /// kept). Only an unusable directory is an error.
    pub fn open(dir: PathBuf, limits: TaskLimits) -> Result<TaskStore, DirError> {
        prepare_dir(&dir)?;
        let read_err = |source| DirError::Io {
            path: dir.clone(),
            source,
        };
        let entries = fs::read_dir(&dir).map_err(read_err)?;
        let mut store = TaskStore {
            dir,
            limits,
            tasks: HashMap::new(),
            seq: 0,
            scheduled: HashMap::new(),
        };
        let mut done: Vec<(SystemTime, String, u64, Option<Vec<u8>>)> = Vec::new();
        let mut running: Vec<String> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".tmp") {
                log::warn!("outbox: removing torn file {}", path.display());
                let _ = fs::remove_file(&path);
            } else if let Some(id) = name.strip_suffix(".done") {
                // The size first: an oversized file is never read whole.
                let meta = entry.metadata();
                let too_long = meta
                    .as_ref()
                    .is_ok_and(|m| m.len() > store.limits.max_frame as u64 + 1);
                let mut schedule = None;
                let valid = valid_task_id(id)
                    && (too_long
                        || fs::read(&path).ok().is_some_and(|b| {
                            b.ends_with(b"\n")
                                && TaskDone::parse(b.trim_ascii_end()).is_ok_and(|d| {
                                    schedule = d.run.map(|r| r.schedule);
                                    d.task == id
                                })
                        }));
                if let (true, Some(s)) = (valid, schedule) {
                    store.scheduled.insert(id.to_owned(), s);
                }
                if valid && too_long {
                    // From before frames were bounded: it would never be
                    // accepted. Replace it by a result that says so.
                    log::error!(
                        "outbox: the result of task {id} is larger than the frame limit; replaced by a 3025 failure"
                    );
                    let frame = too_long_frame(id, store.limits.max_frame);
                    let memory = match write_result(&store.dir, id, &frame) {
                        Ok(()) => None,
                        Err(e) => {
                            log::error!("outbox: cannot rewrite the result of task {id}: {e}; delivering the failure from memory");
                            Some(frame.clone())
                        }
                    };
                    done.push((SystemTime::now(), id.to_owned(), frame.len() as u64, memory));
                } else if valid {
                    let (mtime, len) = match &meta {
                        Ok(m) => (m.modified().unwrap_or(UNIX_EPOCH), m.len()),
                        Err(_) => (UNIX_EPOCH, 0),
                    };
                    done.push((mtime, id.to_owned(), len, None));
                } else {
                    log::error!(
                        "outbox: {} is torn or corrupt; set aside as .corrupt",
                        path.display()
                    );
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            } else if let Some(id) = name.strip_suffix(".running") {
                running.push(id.to_owned());
            }
        }
        for id in running {
            let marker = store.dir.join(format!("{id}.running"));
            if !valid_task_id(&id) || done.iter().any(|(_, d, _, _)| *d == id) {
                let _ = fs::remove_file(&marker);
                continue;
            }
            let info: Value = fs::read(&marker)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let data =
                json!({"task": id, "cmd": info["cmd"], "started": info["started"]}).to_string();
            let frame = done_frame(
                &id,
                Retcode::PLUGIN_FAILURE.0,
                "Plugin failure: the agent stopped while the task was running (killed or crashed); its outcome is unknown",
                Some(data),
                store.limits.max_frame,
            );
            log::warn!("task {id} was running when the agent stopped; reported as failed");
            // Best effort: a full disk must not keep the agent from
            // starting. The marker stays, so a later start writes it.
            let memory = match write_result(&store.dir, &id, &frame) {
                Ok(()) => None,
                Err(e) => {
                    log::error!(
                        "outbox: cannot store the failed result of task {id}: {e}; marker kept, the result is delivered from memory"
                    );
                    Some(frame.clone())
                }
            };
            done.push((SystemTime::now(), id, frame.len() as u64, memory));
        }
        done.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (mtime, id, bytes, memory) in done {
            store.seq += 1;
            let finished_unix = mtime
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let retcode = match &memory {
                Some(frame) => parse_frame(frame).map(|d| d.retcode.0),
                None => store.read_result(&id).map(|d| d.retcode.0),
            }
            .unwrap_or(0);
            store.tasks.insert(
                id,
                TaskState::Done {
                    seq: store.seq,
                    bytes,
                    finished_unix,
                    retcode,
                    pushes: 0,
                    memory,
                },
            );
        }
        if !store.tasks.is_empty() {
            log::info!(
                "outbox: {} unacknowledged result(s) to deliver",
                store.tasks.len()
            );
        }
        Ok(store)
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Registers a started task and leaves its running marker (`0600`
    /// whatever the umask: it holds the command line).
    pub fn start(&mut self, id: &str, call: u64, cmd: &str, now: Instant) {
        let started_unix = unix_now();
        let marker = json!({"task": id, "cmd": cmd, "started": started_unix}).to_string();
        // No fsync: a lost marker only loses the "died while running"
        // report, never a result.
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(format!("{id}.running")))
            .and_then(|mut f| f.write_all(marker.as_bytes()));
        if let Err(e) = written {
            log::warn!("outbox: cannot write the running marker of task {id}: {e}");
        }
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
        self.seq += 1;
        if stored {
            let _ = fs::remove_file(self.dir.join(format!("{id}.running")));
        }
        self.tasks.insert(
            id.to_owned(),
            TaskState::Done {
                seq: self.seq,
                bytes: frame.len() as u64,
                finished_unix: unix_now(),
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

    /// One unacknowledged result's frame, if the task is done.
    pub fn frame(&self, id: &str) -> Option<Vec<u8>> {
        match self.tasks.get(id)? {
            TaskState::Done {
                memory: Some(frame),
                ..
            } => Some(frame.clone()),
            TaskState::Done { .. } => match fs::read(self.dir.join(format!("{id}.done"))) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    log::error!("outbox: cannot read the result of task {id}: {e}");
                    None
                }
            },
            TaskState::Running { .. } => None,
        }
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
            let _ = fs::remove_file(self.dir.join(format!("{id}.done")));
            if memory.is_some() {
                // Never stored: the marker was kept for the next start.
                let _ = fs::remove_file(self.dir.join(format!("{id}.running")));
            }
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

    fn read_result(&self, id: &str) -> Option<TaskDone> {
        if let Some(TaskState::Done {
            memory: Some(frame),
            ..
        }) = self.tasks.get(id)
        {
            return parse_frame(frame);
        }
        let bytes = fs::read(self.dir.join(format!("{id}.done"))).ok()?;
        parse_frame(&bytes)
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

    /// Every unacknowledged result, oldest first, as frames to push; each
    /// counts as one push.
    pub fn outbox_frames(&mut self) -> Vec<Vec<u8>> {
        let ids = self.outbox_ids();
        ids.into_iter()
            .filter_map(|id| {
                let frame = self.frame(&id)?;
                self.pushed(&id);
                Some(frame)
            })
            .collect()
    }

    fn describe(&self, id: &str, now: Instant, with_result: bool) -> Option<Value> {
        Some(match self.tasks.get(id)? {
            TaskState::Running {
                started,
                started_unix,
                cmd,
                cancelling,
                ..
            } => json!({
                "task": id,
                "state": if *cancelling { "cancelling" } else { "running" },
                "cmd": cmd,
                "started": started_unix,
                "elapsed_ms": now.saturating_duration_since(*started).as_millis() as u64,
            }),
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
                let mut v = json!({"task": id, "state": state, "retcode": retcode, "finished": finished_unix});
                if with_result {
                    if let Some(d) = self.read_result(id) {
                        v["result"] =
                            serde_json::from_str(&d.to_response().to_json()).unwrap_or(Value::Null);
                    }
                }
                v
            }
        })
    }

    /// `task.status` data, or `None` for an unknown task.
    pub fn status(&self, id: &str, now: Instant) -> Option<Value> {
        self.describe(id, now, true)
    }

    /// `task.list` data.
    pub fn list(&self, now: Instant) -> Value {
        let mut ids: Vec<&String> = self.tasks.keys().collect();
        ids.sort();
        let tasks: Vec<Value> = ids
            .into_iter()
            .filter_map(|id| self.describe(id, now, false))
            .collect();
        json!({"count": tasks.len(), "tasks": tasks, "outbox_bytes": self.outbox_bytes()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TaskLimits {
        TaskLimits {
            max_tasks: 3,
            max_bytes: 1 << 20,
            retention: Duration::from_secs(3600),
            max_frame: 1 << 20,
        }
    }

    #[test]
    fn scheduled_results_never_block_async_tasks_and_are_known_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().join("tasks"), limits()).unwrap();
        let mut ids = Vec::new();
        for run in 1..=4 {
            let id = new_task_id();
            s.start(&id, run, "getinfo.kernel", Instant::now());
            s.mark_scheduled(&id, "sched-a");
            let r = basicagent_proto::ScheduleRun {
                schedule: "sched-a".into(),
                scheduled_at: 100 + run,
                run,
            };
            let frame = done_frame_run(&id, 2, "", Some("{}".into()), 1 << 20, Some(r));
            write_result(s.dir(), &id, &frame).unwrap();
            s.finished(&id, &frame, 2, true);
            ids.push(id);
        }
        // Four results kept, max_tasks is 3: async.bash is still admitted.
        assert!(s.admit(unix_now()).is_ok());
        drop(s);
        let mut s = TaskStore::open(dir.path().join("tasks"), limits()).unwrap();
        assert!(s.admit(unix_now()).is_ok());
        let kept: Vec<String> = s
            .scheduled_results()
            .into_iter()
            .map(|(sid, id)| {
                assert_eq!(sid, "sched-a");
                id
            })
            .collect();
        let mut want = ids.clone();
        want.sort();
        let mut got = kept.clone();
        got.sort();
        assert_eq!(got, want);
        assert!(s.ack(&ids[0]));
        assert_eq!(s.scheduled_results().len(), 3);
        // Plain tasks still count.
        for call in 0..3 {
            s.start(&new_task_id(), 10 + call, "sleep 1", Instant::now());
        }
        assert!(matches!(s.admit(unix_now()), Err(AdmitError::TooMany(3))));
    }

    #[test]
    fn ids_are_uuids_and_safe_as_file_names() {
        let a = new_task_id();
        assert_ne!(a, new_task_id());
        assert_eq!(a.len(), 36);
        assert!(valid_task_id(&a));
        for bad in ["", "../x", "a/b", "x.done", &"a".repeat(65)] {
            assert!(!valid_task_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_result_survives_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().join("tasks"), limits()).unwrap();
        let id = new_task_id();
        s.start(&id, 7, "echo one", Instant::now());
        assert!(dir.path().join(format!("tasks/{id}.running")).exists());
        let frame = done_frame(
            &id,
            2,
            "",
            Some(r#"{"stdout":"one\n"}"#.to_owned()),
            1 << 20,
        );
        write_result(s.dir(), &id, &frame).unwrap();
        s.finished(&id, &frame, 2, true);
        drop(s);
        let mut s = TaskStore::open(dir.path().join("tasks"), limits()).unwrap();
        let frames = s.outbox_frames();
        assert_eq!(frames, vec![frame]);
        assert_eq!(s.status(&id, Instant::now()).unwrap()["state"], "done");
        assert!(s.ack(&id));
        assert!(!s.ack(&id));
        assert!(s.outbox_frames().is_empty());
        let mut s = TaskStore::open(dir.path().join("tasks"), limits()).unwrap();
        assert!(
            s.outbox_frames().is_empty(),
            "never pushed again after the ack"
        );
    }

    #[test]
    fn a_task_running_when_the_agent_died_becomes_a_failed_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        let id = new_task_id();
        s.start(&id, 1, "sleep 100", Instant::now());
        drop(s); // as after kill -9: the marker stays
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        let frames = s.outbox_frames();
        assert_eq!(frames.len(), 1);
        let done = TaskDone::parse(frames[0].trim_ascii_end()).unwrap();
        assert_eq!(done.task, id);
        assert_eq!(done.retcode, Retcode::PLUGIN_FAILURE);
        assert!(
            done.message
                .contains("agent stopped while the task was running"),
            "{}",
            done.message
        );
        assert!(!dir.path().join(format!("{id}.running")).exists());
    }

    #[test]
    fn torn_and_corrupt_files_are_set_aside_never_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_task_id();
        std::fs::write(
            dir.path().join(format!("{id}.done")),
            b"{\"method\":\"task.done\",\"task\":\"",
        )
        .unwrap();
        std::fs::write(dir.path().join("x.done.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("../../evil.done"), b"x").ok();
        let other = new_task_id();
        std::fs::write(
            dir.path().join(format!("{other}.done")),
            done_frame(&id, 2, "", None, 1 << 20),
        )
        .unwrap();
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        assert!(s.outbox_frames().is_empty());
        assert!(dir.path().join(format!("{id}.corrupt")).exists());
        assert!(
            dir.path().join(format!("{other}.corrupt")).exists(),
            "a file naming another task is corrupt"
        );
        assert!(!dir.path().join("x.done.tmp").exists());
    }

    #[test]
    fn bounds_refuse_new_tasks_rather_than_lose_results_and_expired_results_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            s.admit(unix_now()).unwrap();
            let id = new_task_id();
            let frame = done_frame(&id, 2, "", None, 1 << 20);
            write_result(s.dir(), &id, &frame).unwrap();
            s.finished(&id, &frame, 2, true);
            ids.push(id);
        }
        assert!(matches!(s.admit(unix_now()), Err(AdmitError::TooMany(3))));
        assert_eq!(s.outbox_frames().len(), 3, "nothing lost");
        // Two hours later the results are past the retention: the oldest goes.
        s.admit(unix_now() + 7200).unwrap();
        assert_eq!(s.outbox_frames().len(), 2);
        assert!(!s.contains(&ids[0]));
        // Bytes bound.
        let mut small = TaskStore::open(
            dir.path().join("small"),
            TaskLimits {
                max_tasks: 100,
                max_bytes: 10,
                retention: Duration::from_secs(3600),
                max_frame: 1 << 20,
            },
        )
        .unwrap();
        let id = new_task_id();
        let frame = done_frame(&id, 2, "", None, 1 << 20);
        write_result(small.dir(), &id, &frame).unwrap();
        small.finished(&id, &frame, 2, true);
        assert!(matches!(
            small.admit(unix_now()),
            Err(AdmitError::TooBig(_))
        ));
    }

    fn finish(s: &mut TaskStore) -> String {
        let id = new_task_id();
        let frame = done_frame(&id, 2, "", None, 1 << 20);
        write_result(s.dir(), &id, &frame).unwrap();
        s.finished(&id, &frame, 2, true);
        id
    }

    #[test]
    fn results_pushed_three_times_without_an_ack_make_room_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(
            dir.path().to_owned(),
            TaskLimits {
                max_tasks: 2,
                ..limits()
            },
        )
        .unwrap();
        let a = finish(&mut s);
        let b = finish(&mut s);
        assert!(matches!(s.admit(unix_now()), Err(AdmitError::TooMany(2))));
        s.outbox_frames();
        s.outbox_frames();
        assert!(
            s.admit(unix_now()).is_err(),
            "two pushes: maybe not seen yet"
        );
        // A third push of `a` only (the live push counts too).
        s.pushed(&a);
        s.admit(unix_now()).unwrap();
        assert!(!s.contains(&a), "the rejected one went");
        assert!(s.contains(&b), "the other was kept");
        assert!(!dir.path().join(format!("{a}.done")).exists());
    }

    #[test]
    fn a_result_too_large_for_the_frame_limit_is_stored_as_a_3025_that_fits() {
        let id = new_task_id();
        let data = format!("{{\"stdout\":\"{}\"}}", "\\u0001".repeat(5000));
        let frame = done_frame(&id, 2, "", Some(data), 4096);
        assert!(frame.len() <= 4097, "{}", frame.len());
        let d = TaskDone::parse(frame.trim_ascii_end()).unwrap();
        assert_eq!(d.task, id);
        assert_eq!(d.retcode, Retcode::PLUGIN_FAILURE);
        assert!(
            d.message.contains("frame limit of 4096 bytes"),
            "{}",
            d.message
        );
        // A file left by an older version that does not fit is replaced.
        let dir = tempfile::tempdir().unwrap();
        let big = done_frame(
            &id,
            2,
            "",
            Some(format!("\"{}\"", "x".repeat(9000))),
            1 << 20,
        );
        std::fs::write(dir.path().join(format!("{id}.done")), &big).unwrap();
        let mut s = TaskStore::open(
            dir.path().to_owned(),
            TaskLimits {
                max_frame: 4096,
                ..limits()
            },
        )
        .unwrap();
        let frames = s.outbox_frames();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].len() <= 4097);
        let d = TaskDone::parse(frames[0].trim_ascii_end()).unwrap();
        assert_eq!(d.retcode, Retcode::PLUGIN_FAILURE);
    }

    #[test]
    fn a_result_that_could_not_be_stored_is_served_from_memory_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        let id = new_task_id();
        s.start(&id, 3, "echo x", Instant::now());
        let frame = done_frame(&id, 2, "", Some("{\"stdout\":\"x\\n\"}".into()), 1 << 20);
        s.finished(&id, &frame, 2, false);
        let marker = dir.path().join(format!("{id}.running"));
        assert!(marker.exists(), "kept for the next start");
        assert_eq!(s.outbox_frames(), vec![frame]);
        assert_eq!(
            s.status(&id, Instant::now()).unwrap()["result"]["data"]["stdout"],
            "x\n"
        );
        assert!(s.ack(&id));
        assert!(!marker.exists(), "the ack ends the marker too");
    }

    #[test]
    fn prepare_dir_fixes_modes_and_refuses_foreign_or_shared_directories() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("state");
        prepare_dir(&d).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700, "an existing directory is forced to 0700");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(prepare_dir(&d), Err(DirError::Shared { .. })));
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        if euid() == 0 {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let e = prepare_dir(&d).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
        // A symlink is not followed.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(matches!(prepare_dir(&link), Err(DirError::Io { .. })));
    }

    #[test]
    fn running_markers_are_0600_even_under_umask_000() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskStore::open(dir.path().to_owned(), limits()).unwrap();
        let id = new_task_id();
        // The umask is process-wide: this only makes the marker looser
        // on the old code (fs::write, 0666 & !umask).
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o022) };
        s.start(&id, 1, "echo secret", Instant::now());
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let m = fs::metadata(dir.path().join(format!("{id}.running"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
