//! The audit trail: one JSON line per executed command (and, when enabled,
//! per `getinfo.*` call) in `audit.log`, each carrying the SHA-256 of the
//! line before it, so an edited, removed or reordered line breaks the chain.
//!
//! The loop never touches the disk: a dispatcher hands each finished call
//! to [`Audit::submit`] with the closure that delivers its answer; the
//! writer thread appends the line, fsyncs by `audit.fsync`, and only then
//! runs that closure (which sends the answer to the loop and wakes it, like
//! an outbox write). A write that fails still delivers the answer (the
//! command already ran); the failure is logged and counted, and with
//! `on_failure = "refuse"` new commands are refused until a write succeeds.
//!
//! The line is the agent's own file format (not wire JSON); its record
//! type and how it is built from a request and its answer live in
//! `basicagent_auditchain::record`, beside the chain rule. `prev` is the lowercase hex SHA-256 of the
//! previous line's bytes without its `\n`; the first line of a log is
//! chained to 64 zeros; the first line after a rotation carries
//! `rotated_from: {file, last}` with the rotated file's last hash.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use basicagent_auditchain::record::{CommandText, Record, RotatedFrom, Stamp, Torn};
use basicagent_proto::audit::AuditHealth;

pub use basicagent_auditchain::record::{COMMAND_MAX, VALUE_MAX};
pub use basicagent_auditchain::{
    default_files, rotated_path, sha256_hex, verify, Verified, VerifyError, GENESIS,
};

use crate::config::{AuditCommands, AuditConfig, AuditFsync, AuditGetinfo, AuditOnFailure};

/// Bytes read back from the end of the log at start ([`COMMAND_MAX`] and
/// [`VALUE_MAX`] keep every line well under it, whatever a peer sends).
const TAIL_MAX: u64 = 256 * 1024;

/// Lines written per batch at most (`fsync = "batch"`).
const BATCH_MAX: usize = 256;

/// The server a request came from: its address and its certificate's
/// SHA-256, or `"local"` for scheduled runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub server: String,
    pub fingerprint: String,
}

impl Peer {
    /// Scheduled runs and local calls.
    pub fn local() -> Peer {
        Peer {
            server: "local".into(),
            fingerprint: "local".into(),
        }
    }

    /// From an established TLS session (`peer_certificates()`).
    pub fn of_tls(
        addr: &std::net::SocketAddr,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Peer {
        Peer {
            server: addr.to_string(),
            fingerprint: certs
                .and_then(|c| c.first())
                .map_or_else(|| "none".to_owned(), |c| sha256_hex(c.as_ref())),
        }
    }
}

/// Something the log is written to (a file; a recorder in tests).
pub trait Disk: Send {
    fn append(&mut self, line: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Bytes in the current file.
    fn size(&self) -> u64;
    /// Moves the current file aside and starts an empty one; returns the
    /// name the old file has now.
    fn rotate(&mut self) -> io::Result<String>;
}

/// One line to write and the delivery that waits for it.
pub struct Job {
    pub entry: Record,
    pub then: Box<dyn FnOnce() + Send>,
}

/// Failure counters shared with the dispatcher.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
    failures: AtomicU64,
    written: AtomicU64,
}

impl Health {
    fn note(&self, r: &io::Result<()>) {
        match r {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                self.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.failing.store(true, Ordering::Relaxed);
                log::error!("audit log: cannot write a line ({n} failure(s) so far): {e}");
            }
        }
    }
    /// The last write failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
    /// Lines that could not be written.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// For `agent.info`: `{"lines","failures","failing"}`.
    pub fn report(&self) -> AuditHealth {
        AuditHealth {
            lines: self.written(),
            failures: self.failures(),
            failing: self.failing(),
        }
    }
}

/// The chain state and the disk: run on the writer thread.
pub struct Writer<D: Disk> {
    disk: D,
    last: String,
    max_bytes: u64,
    fsync: AuditFsync,
    /// Set for the next line: what the previous file was.
    rotated_from: Option<RotatedFrom>,
    /// Set for the next line: a torn tail found (and cut) at start.
    torn: Option<Torn>,
    health: Arc<Health>,
}

impl<D: Disk> Writer<D> {
    pub fn new(
        disk: D,
        start: Start,
        max_bytes: u64,
        fsync: AuditFsync,
        health: Arc<Health>,
    ) -> Self {
        Writer {
            disk,
            last: start.last,
            max_bytes,
            fsync,
            rotated_from: start.rotated_from,
            torn: start.torn,
            health,
        }
    }

    /// The hash the next line will carry as `prev`.
    pub fn last(&self) -> &str {
        &self.last
    }

    fn write_line(&mut self, mut entry: Record) -> io::Result<()> {
        let estimate = entry.to_line().map_or(0, |v| v.len()) as u64 + 256;
        if self.disk.size() > 0 && self.disk.size().saturating_add(estimate) > self.max_bytes {
            let name = self.disk.rotate()?;
            log::info!("audit log rotated: the old file is now {name}");
            self.rotated_from = Some(RotatedFrom {
                file: Some(name),
                last: self.last.clone(),
            });
        }
        entry.prev = Some(self.last.clone());
        if let Some(r) = &self.rotated_from {
            entry.rotated_from = Some(r.clone());
        }
        if let Some(t) = &self.torn {
            entry.torn = Some(t.clone());
        }
        let mut bytes = entry.to_line().map_err(io::Error::other)?;
        let hash = sha256_hex(&bytes);
        bytes.push(b'\n');
        self.disk.append(&bytes)?;
        self.last = hash;
        self.rotated_from = None;
        self.torn = None;
        Ok(())
    }

    /// Writes the jobs in order, fsyncs by the policy, and runs each job's
    /// delivery only after its line is written (and synced, unless
    /// `never`). Failures deliver too.
    pub fn write_batch(&mut self, jobs: Vec<Job>) {
        let mut waiting = Vec::new();
        let mut results = Vec::new();
        for job in jobs {
            let mut r = self.write_line(job.entry);
            match self.fsync {
                AuditFsync::Always => {
                    if r.is_ok() {
                        r = self.disk.sync();
                    }
                    self.health.note(&r);
                    (job.then)();
                }
                AuditFsync::Never => {
                    self.health.note(&r);
                    (job.then)();
                }
                AuditFsync::Batch => {
                    results.push(r);
                    waiting.push(job.then);
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        let synced = if results.iter().any(Result::is_ok) {
            self.disk.sync()
        } else {
            Ok(())
        };
        for r in results {
            let r = match (&r, &synced) {
                (Ok(()), Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                _ => r,
            };
            self.health.note(&r);
        }
        for then in waiting {
            then();
        }
    }
}

/// Where the chain continues, read back from the log at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub last: String,
    pub rotated_from: Option<RotatedFrom>,
    pub torn: Option<Torn>,
}

/// The log file with its rotated predecessors `PATH.1` … `PATH.KEEP`.
pub struct FileDisk {
    path: PathBuf,
    file: File,
    len: u64,
    keep: u32,
}

fn open_log(path: &Path) -> io::Result<File> {
    let (file, _) =
        basicagent_fstrust::create_file(path, 0o600, basicagent_fstrust::CreateHow::ReadWrite)
            .map_err(|e| io::Error::other(e.to_string()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// What the end of a log holds.
struct Tail {
    /// The last complete line, without its `\n`.
    last: Option<Vec<u8>>,
    /// Where the complete lines end.
    end: u64,
    /// Bytes after them (a torn line).
    torn: Option<Vec<u8>>,
}

/// The last complete line of `file` (bounded tail read) and the torn bytes
/// after it, if the file does not end with `\n`.
fn read_tail(file: &mut File) -> io::Result<Tail> {
    let len = file.metadata()?.len();
    let from = len.saturating_sub(TAIL_MAX);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    Read::by_ref(file).take(TAIL_MAX).read_to_end(&mut tail)?;
    let (complete_end, torn) = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) if i + 1 == tail.len() => (tail.len(), None),
        Some(i) => (i + 1, Some(tail[i + 1..].to_vec())),
        None if from == 0 => (0, (!tail.is_empty()).then(|| tail.clone())),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no line end in the last {TAIL_MAX} bytes: not an audit log"),
            ))
        }
    };
    let lines = &tail[..complete_end];
    let last = if lines.is_empty() {
        None
    } else {
        let body = &lines[..lines.len() - 1];
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if start == 0 && from > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the last line is longer than {TAIL_MAX} bytes: not an audit log"),
            ));
        }
        Some(body[start..].to_vec())
    };
    Ok(Tail {
        last,
        end: from + complete_end as u64,
        torn,
    })
}

impl FileDisk {
    /// Opens (creates) the log by the file-trust rule, 0600, and reads the
    /// chain's last hash back; a torn last line is cut off and recorded in
    /// the next line (`torn: {bytes, sha256}`).
    pub fn open(path: &Path, keep: u32) -> io::Result<(FileDisk, Start)> {
        let mut file = open_log(path)?;
        let Tail { last, end, torn } = read_tail(&mut file)?;
        let torn = match torn {
            Some(t) => {
                log::warn!(
                    "audit log {}: a torn last line ({} bytes, a crash mid-write) was cut off; the next line records it",
                    path.display(),
                    t.len()
                );
                file.set_len(end)?;
                file.sync_data()?;
                Some(Torn::of(&t))
            }
            None => None,
        };
        let mut start = Start {
            last: GENESIS.to_owned(),
            rotated_from: None,
            torn,
        };
        match last {
            Some(line) => start.last = sha256_hex(&line),
            None => {
                // Empty: a crash right after a rotation continues from the
                // rotated file.
                let old = rotated_path(path, 1);
                if let Ok(mut f) = File::open(&old) {
                    if let Ok(Tail {
                        last: Some(line), ..
                    }) = read_tail(&mut f)
                    {
                        start.last = sha256_hex(&line);
                        let name = old.file_name().map(|n| n.to_string_lossy().into_owned());
                        start.rotated_from = Some(RotatedFrom {
                            file: name,
                            last: start.last.clone(),
                        });
                    }
                }
            }
        }
        let len = file.seek(SeekFrom::End(0))?;
        Ok((
            FileDisk {
                path: path.to_owned(),
                file,
                len,
                keep,
            },
            start,
        ))
    }
}

impl Disk for FileDisk {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let r = self.file.write_all(line);
        if r.is_err() {
            // Leave no torn line behind if we can.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
        } else {
            self.len = self.len.saturating_add(line.len() as u64);
        }
        r
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> u64 {
        self.len
    }
    fn rotate(&mut self) -> io::Result<String> {
        self.file.sync_data()?;
        for n in (1..self.keep).rev() {
            match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let first = rotated_path(&self.path, 1);
        std::fs::rename(&self.path, &first)?;
        self.file = open_log(&self.path)?;
        self.len = 0;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(first
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
    }
}

/// The dispatcher's handle: settings, the writer thread's queue, health.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
    commands: AuditCommands,
    getinfo: AuditGetinfo,
    on_failure: AuditOnFailure,
    health: Arc<Health>,
}

/// A request being audited: its line so far, finished at answer time.
pub struct Note {
    audit: Audit,
    entry: Record,
}

/// The wall clock now, as a line records it.
fn stamp() -> Stamp {
    let now = chrono::Utc::now();
    Stamp {
        rfc3339: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        unix_ms: now.timestamp_millis(),
    }
}

impl Audit {
    /// Opens the log and starts the writer thread.
    pub fn start(path: &Path, cfg: &AuditConfig) -> io::Result<Audit> {
        let (disk, start) = FileDisk::open(path, cfg.keep)?;
        log::info!(
            "audit log {} (commands {:?}, fsync {:?}), chain continues from {}",
            path.display(),
            cfg.commands,
            cfg.fsync,
            &start.last[..12]
        );
        Self::with_disk(disk, start, cfg)
    }

    /// The writer thread over any [`Disk`].
    pub fn with_disk<D: Disk + 'static>(
        disk: D,
        start: Start,
        cfg: &AuditConfig,
    ) -> io::Result<Audit> {
        let health = Arc::new(Health::default());
        let mut writer = Writer::new(disk, start, cfg.max_bytes, cfg.fsync, Arc::clone(&health));
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    writer.write_batch(batch);
                }
            })?;
        Ok(Audit {
            tx,
            commands: cfg.commands,
            getinfo: cfg.getinfo,
            on_failure: cfg.on_failure,
            health,
        })
    }

    /// Failure counters.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Hands a line to the writer; `then` runs once it is written (or
    /// failed). If the writer is gone, `then` runs at once.
    pub fn submit(&self, entry: Record, then: Box<dyn FnOnce() + Send>) {
        if let Err(mpsc::SendError(job)) = self.tx.send(Job { entry, then }) {
            log::error!("audit log: the writer thread is gone; answer sent unaudited");
            self.health
                .note(&Err(io::Error::other("writer thread gone")));
            (job.then)();
        }
    }

    /// Starts the line of a request to `method` (`id`: the JSON text of its
    /// id; `Ok(None)`: not audited;
    /// `Err`: refused while the log fails, with `on_failure = "refuse"`).
    pub fn begin(
        &self,
        peer: &Peer,
        method: &str,
        id: Option<&str>,
        frame: &[u8],
    ) -> Result<Option<Note>, String> {
        if method.starts_with("getinfo.") && self.getinfo == AuditGetinfo::Off {
            return Ok(None);
        }
        if self.on_failure == AuditOnFailure::Refuse && self.health.failing() {
            // The refusal is a line too: it records what was refused and,
            // once the disk has room again, its write clears the failure.
            if let Some(mut note) = self.begin_unchecked(peer, method, id, frame) {
                note.entry.refused = Some("audit log failing".into());
                let line = note.finish(3026, None);
                self.submit(line.entry, Box::new(|| {}));
            }
            return Err(format!(
                "Busy: the audit log cannot be written ({} failure(s)); commands are refused (audit.on_failure = \"refuse\")",
                self.health.failures()
            ));
        }
        Ok(self.begin_unchecked(peer, method, id, frame))
    }

    /// The line of a scheduled run (`server: "local"`, with its schedule,
    /// run and task). Never refused: the run was decided (and made
    /// durable) already; with `on_failure = "refuse"` while failing it is
    /// run and audited anyway, with a warning. `getinfo.*` follows
    /// `audit.getinfo` as for a server's request.
    pub fn scheduled(
        &self,
        method: &str,
        frame: &[u8],
        schedule: &str,
        run: u64,
        task: &str,
    ) -> Option<Note> {
        if method.starts_with("getinfo.") && self.getinfo == AuditGetinfo::Off {
            return None;
        }
        if self.on_failure == AuditOnFailure::Refuse && self.health.failing() {
            log::warn!("schedule {schedule}: run {run} starts although the audit log is failing (decided already)");
        }
        let mut note = self.line(&Peer::local(), method, None, frame);
        note.entry.schedule = Some(schedule.to_owned());
        note.entry.run = Some(run);
        note.entry.task = Some(task.to_owned());
        Some(note)
    }

    /// [`Self::begin`] without the `on_failure` check (a scheduled run,
    /// decided already, is run and audited).
    pub fn begin_unchecked(
        &self,
        peer: &Peer,
        method: &str,
        id: Option<&str>,
        frame: &[u8],
    ) -> Option<Note> {
        if method.starts_with("getinfo.") && self.getinfo == AuditGetinfo::Off {
            return None;
        }
        Some(self.line(peer, method, id, frame))
    }

    fn line(&self, peer: &Peer, method: &str, id: Option<&str>, frame: &[u8]) -> Note {
        let text = match self.commands {
            AuditCommands::Full => CommandText::Full,
            AuditCommands::Hash => CommandText::Hash,
        };
        let entry = Record::request(
            &peer.server,
            &peer.fingerprint,
            id,
            method,
            frame,
            text,
            stamp(),
        );
        Note {
            audit: self.clone(),
            entry,
        }
    }
}

impl Note {
    /// Records the task the request became (`async.bash`).
    pub fn set_task(&mut self, task: &str) {
        self.entry.task = Some(task.to_owned());
    }

    /// The line at answer time: retcode and the outcome from the data.
    pub fn finish(mut self, retcode: u32, data: Option<&str>) -> Finished {
        self.entry.finish(retcode, data, stamp());
        Finished {
            audit: self.audit,
            entry: self.entry,
        }
    }
}

/// A finished line waiting to be submitted with its delivery.
pub struct Finished {
    audit: Audit,
    entry: Record,
}

impl Finished {
    /// Writes the line, then runs `deliver`.
    pub fn submit(self, deliver: impl FnOnce() + Send + 'static) {
        self.audit.submit(self.entry, Box::new(deliver));
    }
}

/// A completer that writes the call's audit line first and runs `inner`
/// (which builds and delivers the answer) on the writer thread once the
/// line is written. A completion on `skip_on` (the loop thread: a refusal
/// inside `call`, nothing ran) goes to `inner` at once, without a line.
pub fn after_line(
    note: Note,
    skip_on: Option<std::thread::ThreadId>,
    inner: basicagent_abi::host::Completer,
) -> basicagent_abi::host::Completer {
    Box::new(move |c: basicagent_abi::Completion| {
        if skip_on == Some(std::thread::current().id()) {
            return inner(c);
        }
        let line = note.finish(c.retcode, c.data.as_deref());
        line.submit(move || inner(c));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::Mutex;

    /// A disk that records the calls made on it, in order.
    struct Recorder {
        ops: Arc<Mutex<Vec<String>>>,
        len: u64,
        fail: bool,
    }

    impl Disk for Recorder {
        fn append(&mut self, line: &[u8]) -> io::Result<()> {
            self.ops.lock().unwrap().push("append".into());
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.len += line.len() as u64;
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            self.ops.lock().unwrap().push("sync".into());
            Ok(())
        }
        fn size(&self) -> u64 {
            self.len
        }
        fn rotate(&mut self) -> io::Result<String> {
            self.ops.lock().unwrap().push("rotate".into());
            self.len = 0;
            Ok("audit.log.1".into())
        }
    }

    fn start() -> Start {
        Start {
            last: GENESIS.into(),
            rotated_from: None,
            torn: None,
        }
    }

    fn order(fsync: AuditFsync, fail: bool) -> (Vec<String>, Arc<Health>) {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let disk = Recorder {
            ops: Arc::clone(&ops),
            len: 0,
            fail,
        };
        let health = Arc::new(Health::default());
        let mut w = Writer::new(disk, start(), 1 << 20, fsync, Arc::clone(&health));
        let jobs = (0..2)
            .map(|i| {
                let ops = Arc::clone(&ops);
                Job {
                    entry: Record {
                        run: Some(i),
                        ..Record::default()
                    },
                    then: Box::new(move || ops.lock().unwrap().push(format!("answer {i}"))),
                }
            })
            .collect();
        w.write_batch(jobs);
        let v = ops.lock().unwrap().clone();
        (v, health)
    }

    #[test]
    fn fsync_always_syncs_each_line_before_its_answer() {
        let (ops, h) = order(AuditFsync::Always, false);
        assert_eq!(
            ops,
            ["append", "sync", "answer 0", "append", "sync", "answer 1"]
        );
        assert_eq!(h.written(), 2);
    }

    #[test]
    fn fsync_batch_syncs_once_before_all_answers() {
        let (ops, _) = order(AuditFsync::Batch, false);
        assert_eq!(ops, ["append", "append", "sync", "answer 0", "answer 1"]);
    }

    #[test]
    fn fsync_never_answers_after_the_write_only() {
        let (ops, _) = order(AuditFsync::Never, false);
        assert_eq!(ops, ["append", "answer 0", "append", "answer 1"]);
    }

    #[test]
    fn a_failing_disk_still_answers_and_counts() {
        let (ops, h) = order(AuditFsync::Always, true);
        assert_eq!(ops, ["append", "answer 0", "append", "answer 1"]);
        assert_eq!(h.failures(), 2);
        assert!(h.failing());
    }

    fn cfg(max_bytes: u64) -> AuditConfig {
        AuditConfig {
            max_bytes,
            keep: 3,
            ..AuditConfig::default()
        }
    }

    /// Writes `n` lines through a real file, like the writer thread does.
    fn write_lines(path: &Path, n: usize, max_bytes: u64) -> String {
        let (disk, start) = FileDisk::open(path, 3).unwrap();
        let mut w = Writer::new(disk, start, max_bytes, AuditFsync::Always, Arc::default());
        for i in 0..n {
            let entry = Record {
                run: Some(i as u64),
                command: Some("x".repeat(100)),
                ..Record::default()
            };
            w.write_batch(vec![Job {
                entry,
                then: Box::new(|| {}),
            }]);
        }
        w.last().to_owned()
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn put(path: &Path, lines: &[String]) {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn a_written_log_verifies_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let last = write_lines(&path, 5, 1 << 20);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ok = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!((ok.lines, ok.last.as_str()), (5, last.as_str()));
        let first: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(first["prev"], GENESIS);
    }

    #[test]
    fn the_chain_continues_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 3, 1 << 20);
        write_lines(&path, 2, 1 << 20);
        assert_eq!(verify(&[path]).unwrap().lines, 5);
    }

    #[test]
    fn an_edited_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 5, 1 << 20);
        let mut l = lines(&path);
        assert!(l[1].contains("\"run\":1"), "{}", l[1]);
        l[1] = l[1].replace("\"run\":1", "\"run\":7");
        put(&path, &l);
        let e = verify(&[path]).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.what.contains("hash mismatch of prev"), "{e}");
    }

    #[test]
    fn a_deleted_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 5, 1 << 20);
        let mut l = lines(&path);
        l.remove(2);
        put(&path, &l);
        let e = verify(&[path]).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        // The first line removed: the chain does not start at GENESIS.
        let path2 = dir.path().join("b.log");
        write_lines(&path2, 3, 1 << 20);
        let mut l = lines(&path2);
        l.remove(0);
        put(&path2, &l);
        let e = verify(&[path2]).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn swapped_lines_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 5, 1 << 20);
        let mut l = lines(&path);
        l.swap(1, 2);
        put(&path, &l);
        let e = verify(&[path]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn bad_json_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 3, 1 << 20);
        let mut l = lines(&path);
        l[1].truncate(10);
        put(&path, &l);
        let e = verify(&[path]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("bad JSON"), "{e}");
    }

    #[test]
    fn a_rotated_log_verifies_across_files_and_a_missing_file_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // ~150 bytes a line, 4096 per file: rotations, keep 3.
        write_lines(&path, 150, 4096);
        let files = default_files(&path, 3);
        assert_eq!(files.len(), 4, "the log and 3 rotated: {files:?}");
        let ok = verify(&files).unwrap();
        assert!(
            ok.notes.iter().any(|n| n.contains("not given")),
            "{:?}",
            ok.notes
        );
        let first: Value = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!(first["rotated_from"]["file"], "audit.log.1");
        // Without a middle file the chain breaks where it is missing.
        let e = verify(&[files[0].clone(), files[2].clone()]).unwrap_err();
        assert_eq!((e.file.clone(), e.line), (files[2].clone(), 1));
        assert!(e.what.contains("chain break across files"), "{e}");
        // Out of order: a break too.
        assert!(verify(&[files[1].clone(), files[0].clone()]).is_err());
        // Within the keep: fewer lines than written, but a full chain.
        let total: usize = files.iter().map(|f| lines(f).len()).sum();
        assert_eq!(ok.lines, total);
    }

    #[test]
    fn a_torn_last_line_is_reported_then_cut_and_recorded_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_lines(&path, 3, 1 << 20);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"n\":3,\"comm").unwrap();
        drop(f);
        let e = verify(std::slice::from_ref(&path)).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.what.contains("torn"), "{e}");
        write_lines(&path, 1, 1 << 20);
        let ok = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(ok.lines, 4);
        let l: Value = serde_json::from_str(&lines(&path)[3]).unwrap();
        assert_eq!(l["torn"]["bytes"], 12);
        assert_eq!(l["torn"]["sha256"], sha256_hex(b"{\"n\":3,\"comm"));
    }

    /// A line byte for byte as the agent wrote it before the line was a
    /// [`Record`] (a sorted `serde_json::Map`): the chain continues from
    /// it, and old and new lines verify together.
    #[test]
    fn a_log_of_the_previous_agent_continues_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let old = format!(
            r#"{{"command":"echo hi","command_sha256":"{}","fingerprint":"local","id":null,"limits":{{"timeout":5}},"method":"sync.bash","prev":"{GENESIS}","requested":"2026-12-01T20:00:00.000Z","requested_ms":1796155200000,"retcode":0,"run":1,"schedule":"0abc","server":"local","task":"0def","time":"2026-12-01T20:00:00.010Z","unix_ms":1796155200010}}"#,
            sha256_hex(b"echo hi")
        );
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let last = write_lines(&path, 2, 1 << 20);
        let ok = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!((ok.lines, ok.last.as_str()), (3, last.as_str()));
        let second: Value = serde_json::from_str(&lines(&path)[1]).unwrap();
        assert_eq!(second["prev"], sha256_hex(old.as_bytes()));
        // Read as a record and written again, the old line is the same bytes.
        let r = Record::from_line(old.as_bytes()).unwrap();
        assert_eq!(r.to_line().unwrap(), old.as_bytes());
    }

    #[test]
    fn a_symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let path = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(Audit::start(&path, &cfg(1 << 20)).is_err());
    }

    #[test]
    fn a_huge_request_makes_a_bounded_line_and_the_log_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::start(&path, &cfg(1 << 30)).unwrap();
        let big = "x".repeat(1 << 20);
        let frame = serde_json::json!({
            "method": "sync.bash", "cmd": big, "args": big, "user": big, "timeout": [big],
        })
        .to_string();
        let id = format!("\"{big}\"");
        let note = a
            .begin(&Peer::local(), "sync.bash", Some(&id), frame.as_bytes())
            .unwrap()
            .unwrap();
        let data = serde_json::json!({ "user": big, "signal": big }).to_string();
        let (tx, rx) = mpsc::channel();
        note.finish(0, Some(&data))
            .submit(move || tx.send(()).unwrap());
        rx.recv().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 100 * 1024, "line of {} bytes", text.len());
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["command_truncated"], true);
        assert_eq!(line["command_sha256"], sha256_hex(big.as_bytes()));
        assert!(line["args"]["sha256"].is_string(), "{}", line["args"]);
        assert!(line["user"]["bytes"].as_u64().unwrap() > 1 << 20);
        // The next start reads the tail back and continues the chain.
        drop(a);
        write_lines(&path, 1, 1 << 30);
        assert_eq!(verify(&[path]).unwrap().lines, 2);
    }

    #[test]
    fn begin_records_the_request_and_hash_mode_drops_the_text() {
        let (tx, _rx) = mpsc::channel();
        let mut a = Audit {
            tx,
            commands: AuditCommands::Hash,
            getinfo: AuditGetinfo::Off,
            on_failure: AuditOnFailure::Refuse,
            health: Arc::default(),
        };
        let peer = Peer {
            server: "127.0.0.1:1".into(),
            fingerprint: "ab".into(),
        };
        let frame =
            br#"{"id":7,"method":"sync.bash","cmd":"echo secret","timeout":5,"user":"nobody"}"#;
        let note = a
            .begin(&peer, "sync.bash", Some("7"), frame)
            .unwrap()
            .unwrap();
        let data = r#"{"exitcode":0,"signal":null,"killed_by":null,"stdout":"secret\n","stdout_bytes":7,"stderr_bytes":0,"uid":65534,"user":"nobody","usage":{"cpu_user_ms":1}}"#;
        let line = serde_json::to_value(note.finish(0, Some(data)).entry).unwrap();
        assert!(line.get("command").is_none());
        assert_eq!(line["command_sha256"], sha256_hex(b"echo secret"));
        assert_eq!(line["id"], 7);
        assert_eq!(line["limits"]["timeout"], 5);
        assert_eq!(line["uid"], 65534);
        assert_eq!(line["stdout_bytes"], 7);
        assert_eq!(line["usage"]["cpu_user_ms"], 1);
        assert!(line.get("stdout").is_none(), "streams never reach the log");
        assert!(a
            .begin(&peer, "getinfo.kernel", None, b"{}")
            .unwrap()
            .is_none());
        a.getinfo = AuditGetinfo::On;
        assert!(a
            .begin(&peer, "getinfo.kernel", None, b"{}")
            .unwrap()
            .is_some());
        a.health.note(&Err(io::Error::other("disk full")));
        assert!(
            a.begin(&peer, "sync.bash", None, frame).is_err(),
            "refuse while failing"
        );
        a.on_failure = AuditOnFailure::Continue;
        assert!(a.begin(&peer, "sync.bash", None, frame).is_ok());
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    /// Lines per second through a real file for each fsync policy (run
    /// by hand: `cargo test -p basicagent-host --lib audit::measure -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn lines_per_second_by_fsync_policy() {
        for fsync in [AuditFsync::Always, AuditFsync::Batch, AuditFsync::Never] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.log");
            let (disk, start) = FileDisk::open(&path, 3).unwrap();
            let mut w = Writer::new(disk, start, 1 << 30, fsync, Arc::default());
            let n = 500;
            let t = std::time::Instant::now();
            // Batches of 8, as concurrent completions arrive.
            for _ in 0..n / 8 {
                let jobs = (0..8)
                    .map(|i| Job {
                        entry: Record {
                            run: Some(i),
                            command: Some("true".into()),
                            ..Record::default()
                        },
                        then: Box::new(|| {}),
                    })
                    .collect();
                w.write_batch(jobs);
            }
            let rate = f64::from(n / 8 * 8) / t.elapsed().as_secs_f64();
            println!("fsync {fsync:?}: {rate:.0} lines/s");
        }
    }
}
