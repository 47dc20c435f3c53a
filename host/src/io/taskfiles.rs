//! The task files in `state_dir/tasks`: the start-up scan of what an
//! earlier run left ([`open`]), durable results ([`write_result`]: temp
//! file, fsync, rename, fsync of the directory), and a helper thread
//! ([`TaskFiles`]) that carries out the table's [`TaskFileOp`]s in order
//! and reads stored results back in bounded batches, so the loop never
//! waits for a disk.
//!
//! Files that do not parse are moved aside (`.corrupt`) with a log line,
//! never a crash. The directory is forced to `0700` and must belong to
//! the agent's uid; files are created `0600` whatever the umask, never
//! through a symlink.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use basicagent_proto::{MarkerInfo, Retcode, TaskDone};

use crate::core::tasks::{
    done_frame, too_long_frame, valid_task_id, OutboxBatch, Recovered, TaskFileOp, TaskLimits,
    TaskStore,
};

/// The wall clock in Unix seconds (0 before 1970).
pub fn unix_now() -> u64 {
    unix_ms()
        .checked_div(1000)
        .map_or(0, |s| u64::try_from(s).unwrap_or(u64::MAX))
}

/// The wall clock in Unix milliseconds (0 before 1970).
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn parse_frame(bytes: &[u8]) -> Option<TaskDone> {
    TaskDone::parse(bytes.trim_ascii_end()).ok()
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

/// Opens (creating, see [`prepare_dir`]) the outbox and recovers what a
/// previous run left: results are kept, torn or corrupt files set
/// aside, and tasks that were running when the agent died become failed
/// results — in memory if they cannot be written (logged, the marker
/// kept). Only an unusable directory is an error. Runs at start-up,
/// before the loop.
pub fn open(dir: &Path, limits: TaskLimits) -> Result<TaskStore, DirError> {
    let dir = dir.to_owned();
    {
        prepare_dir(&dir)?;
        let read_err = |source| DirError::Io {
            path: dir.clone(),
            source,
        };
        let entries = fs::read_dir(&dir).map_err(read_err)?;
        let mut schedules: HashMap<String, String> = HashMap::new();
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
                    .is_ok_and(|m| m.len() > limits.max_frame as u64 + 1);
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
                    schedules.insert(id.to_owned(), s);
                }
                if valid && too_long {
                    // From before frames were bounded: it would never be
                    // accepted. Replace it by a result that says so.
                    log::error!(
                        "outbox: the result of task {id} is larger than the frame limit; replaced by a 3025 failure"
                    );
                    let frame = too_long_frame(id, limits.max_frame);
                    let memory = match write_result(&dir, id, &frame) {
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
            let marker = dir.join(format!("{id}.running"));
            if !valid_task_id(&id) || done.iter().any(|(_, d, _, _)| *d == id) {
                let _ = fs::remove_file(&marker);
                continue;
            }
            let bytes = fs::read(&marker).unwrap_or_default();
            let data = MarkerInfo::read(&bytes, &id).to_json();
            let frame = done_frame(
                &id,
                Retcode::PLUGIN_FAILURE.0,
                "Plugin failure: the agent stopped while the task was running (killed or crashed); its outcome is unknown",
                Some(data),
                limits.max_frame,
            );
            log::warn!("task {id} was running when the agent stopped; reported as failed");
            // Best effort: a full disk must not keep the agent from
            // starting. The marker stays, so a later start writes it.
            let memory = match write_result(&dir, &id, &frame) {
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
        let recovered = done
            .into_iter()
            .map(|(mtime, id, bytes, memory)| {
                let finished_unix = mtime
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let retcode = match &memory {
                    Some(frame) => parse_frame(frame),
                    None => fs::read(dir.join(format!("{id}.done")))
                        .ok()
                        .and_then(|b| parse_frame(&b)),
                }
                .map_or(0, |d| d.retcode.0);
                Recovered {
                    schedule: schedules.remove(&id),
                    id,
                    finished_unix,
                    bytes,
                    retcode,
                    memory,
                }
            })
            .collect();
        Ok(TaskStore::restored(limits, recovered))
    }
}

/// The `ID.done` of a stored result, if it fits the frame bound (a file
/// larger than `max_frame` is never read whole).
pub fn read_result(dir: &Path, id: &str, max_frame: usize) -> Option<Vec<u8>> {
    let path = dir.join(format!("{id}.done"));
    let read = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|f| {
            let len = f.metadata()?.len();
            if len > max_frame as u64 + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{len} bytes, over the frame limit"),
                ));
            }
            let mut bytes = Vec::with_capacity(len as usize);
            io::Read::read_to_end(&mut io::Read::take(f, max_frame as u64 + 1), &mut bytes)?;
            Ok(bytes)
        });
    match read {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            log::error!("outbox: cannot read the result of task {id}: {e}");
            None
        }
    }
}

fn write_marker(dir: &Path, id: &str, text: &str) {
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(format!("{id}.running")))
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        log::warn!("outbox: cannot write the running marker of task {id}: {e}");
    }
}

/// What the task files answer to the loop.
#[derive(Debug)]
pub enum Answer {
    /// Results read back for a [`TaskFileOp::Load`].
    Batch(OutboxBatch),
    /// One result read back for a [`TaskFileOp::Read`].
    Read { ctx: u64, frame: Option<Vec<u8>> },
}

/// Carries out one operation; reads answer with what they read.
pub fn apply(dir: &Path, max_frame: usize, op: TaskFileOp) -> Option<Answer> {
    match op {
        TaskFileOp::Marker { id, text } => {
            write_marker(dir, &id, &text);
            None
        }
        TaskFileOp::Remove { id, marker } => {
            let _ = fs::remove_file(dir.join(format!("{id}.done")));
            if marker {
                let _ = fs::remove_file(dir.join(format!("{id}.running")));
            }
            None
        }
        TaskFileOp::Load { generation, ids } => {
            let frames = ids
                .into_iter()
                .map(|id| {
                    let frame = read_result(dir, &id, max_frame);
                    (id, frame)
                })
                .collect();
            Some(Answer::Batch(OutboxBatch { generation, frames }))
        }
        TaskFileOp::Read { ctx, id } => Some(Answer::Read {
            ctx,
            frame: read_result(dir, &id, max_frame),
        }),
    }
}

/// A job for the task-file thread.
pub enum Job {
    Op(TaskFileOp),
    /// Store a finished task's result durably, then hand it to `then`
    /// (with `stored` set to whether the write succeeded).
    Store(
        crate::core::dispatch::Finished,
        Box<dyn FnOnce(crate::core::dispatch::Finished) + Send>,
    ),
}

/// The task-file helper thread: jobs run in the order they were sent.
pub struct TaskFiles {
    jobs: mpsc::Sender<Job>,
    dir: PathBuf,
}

impl TaskFiles {
    /// Starts the thread; `answer` gets what reads read (on that thread).
    pub fn spawn(
        dir: PathBuf,
        max_frame: usize,
        answer: impl Fn(Answer) + Send + 'static,
    ) -> io::Result<TaskFiles> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let theirs = dir.clone();
        std::thread::Builder::new()
            .name("task-files".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Op(op) => {
                            if let Some(a) = apply(&theirs, max_frame, op) {
                                answer(a);
                            }
                        }
                        Job::Store(f, then) => then(store(&theirs, f)),
                    }
                }
            })?;
        Ok(TaskFiles { jobs, dir })
    }

    /// Queues a job (dropped with a log line if the thread is gone).
    pub fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            log::error!("the task-file thread is gone; task file work dropped");
        }
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes a finished task's result (`f.frame`) durably and records whether
/// that worked in `f.task.stored`.
pub fn store(
    dir: &Path,
    mut f: crate::core::dispatch::Finished,
) -> crate::core::dispatch::Finished {
    if let Some(t) = f.task.as_mut() {
        t.stored = match write_result(dir, &t.id, &f.frame) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "task {}: cannot write the result durably: {e}; kept in memory and delivered",
                    t.id
                );
                false
            }
        };
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tasks::{done_frame_run, new_task_id, AdmitError};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    /// The table with its files, the ops applied at once (as the
    /// task-file thread would, in order).
    struct TaskStore {
        table: crate::core::tasks::TaskStore,
        dir: PathBuf,
    }

    impl TaskStore {
        fn open(dir: PathBuf, limits: TaskLimits) -> Result<TaskStore, DirError> {
            Ok(TaskStore {
                table: super::open(&dir, limits)?,
                dir,
            })
        }
        fn dir(&self) -> &Path {
            &self.dir
        }
        fn sync(&mut self) {
            for op in self.table.take_ops() {
                apply(&self.dir, self.table.limits().max_frame, op);
            }
        }
        fn start(&mut self, id: &str, call: u64, cmd: &str, now: Instant) {
            self.table.set_clock(unix_now());
            self.table.start(id, call, cmd, now);
            self.sync();
        }
        fn finished(&mut self, id: &str, frame: &[u8], retcode: u32, stored: bool) {
            self.table.set_clock(unix_now());
            self.table.finished(id, frame, retcode, stored);
            self.sync();
        }
        fn admit(&mut self, now_unix: u64) -> Result<(), AdmitError> {
            let r = self.table.admit(now_unix);
            self.sync();
            r
        }
        fn ack(&mut self, id: &str) -> bool {
            let r = self.table.ack(id);
            self.sync();
            r
        }
        fn pushed(&mut self, id: &str) {
            self.table.pushed(id);
        }
        fn contains(&self, id: &str) -> bool {
            self.table.contains(id)
        }
        fn mark_scheduled(&mut self, id: &str, schedule: &str) {
            self.table.mark_scheduled(id, schedule);
        }
        fn scheduled_results(&self) -> Vec<(String, String)> {
            self.table.scheduled_results()
        }
        /// Every unacknowledged result, oldest first, read back in batches
        /// as after an init; each counts as one push.
        fn outbox_frames(&mut self) -> Vec<Vec<u8>> {
            self.sync();
            let mut ids: VecDeque<String> = self.table.outbox_ids().into();
            let mut frames = Vec::new();
            while let Some(id) = ids.front().cloned() {
                if let Some(f) = self.table.memory_frame(&id) {
                    ids.pop_front();
                    self.table.pushed(&id);
                    frames.push(f);
                    continue;
                }
                if !self.table.is_done(&id) {
                    ids.pop_front();
                    continue;
                }
                for id in self.table.next_batch(&mut ids) {
                    let max = self.table.limits().max_frame;
                    if let Some(f) = read_result(&self.dir, &id, max) {
                        self.table.pushed(&id);
                        frames.push(f);
                    }
                }
            }
            frames
        }
        fn status(&self, id: &str, now: Instant) -> Option<basicagent_proto::builtins::Value> {
            let stored = self
                .table
                .memory_frame(id)
                .or_else(|| read_result(&self.dir, id, self.table.limits().max_frame));
            let info = self.table.status(id, now, stored.as_deref())?;
            Some(basicagent_proto::builtins::to_value(&info))
        }
    }

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
