//! Process plumbing for `BasicAgent -L LOGFILE -P PIDFILE [-f]`: detaching
//! from the terminal, the locked pid file, and a log file that can be
//! reopened after logrotate.
//!
//! Key design decisions:
//! * The pid file is *locked* (`flock`), not merely present: a stale file
//!   left by a crash never blocks a start, and a live daemon always does.
//! * [`daemonize`] keeps a pipe from the detached grandchild to the
//!   original process, which exits only once the grandchild reports that it
//!   started (e.g. took the pid-file lock) — so an init script sees a
//!   non-zero exit when another instance is running.
//! * The log target is a shared, reopenable file handle: `reopen()` on
//!   SIGHUP/SIGUSR1 opens the path again, which is all logrotate needs.
//! * Pid and log files are opened by the file-trust rule
//!   ([`basicagent_fstrust::create_file`]): `O_NOFOLLOW` (a symbolic link
//!   is refused and its target never truncated or appended to), and a
//!   directory writable by group or others (sticky `/tmp` included) is
//!   refused; the pid file is truncated only through its own descriptor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use basicagent_fstrust::{CreateHow, TrustError, Violation};

use log::LevelFilter;

/// Why the pid file could not be taken or written.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another process holds the lock.
    #[error("{}: BasicAgent is already running{}", .path.display(), match .pid {
        Some(p) => format!(" (pid {p})"),
        None => String::new(),
    })]
    AlreadyRunning {
        /// The pid file.
        path: PathBuf,
        /// The pid written in it, if it could be read.
        pid: Option<u32>,
    },
    /// Opening, locking or writing failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path breaks the file-trust rule (a symbolic link, a directory
    /// writable by others, another owner): nothing was written.
    #[error("refusing pid file {0}")]
    Untrusted(TrustError),
}

impl PidFileError {
    fn from_trust(e: TrustError) -> PidFileError {
        match e.violation {
            Violation::Io(source) => PidFileError::Io { path: e.at, source },
            _ => PidFileError::Untrusted(e),
        }
    }
}

/// An exclusively locked pid file; removed on drop by the process that
/// wrote its pid into it, if the path still names the locked file.
///
/// The lock belongs to the open file, so it survives `fork`: acquiring
/// before or after [`daemonize`] both work; call [`PidFile::write_pid`]
/// in the final (daemon) process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
    written_by: Option<u32>,
}

impl PidFile {
    /// Opens or creates `path` (made absolute, so a later `chdir("/")` does
    /// not matter) and takes an exclusive, non-blocking `flock` on it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_owned(),
            source,
        };
        let path = std::path::absolute(path).map_err(io_err)?;
        // A file unlinked by an exiting holder between our open and our lock
        // would be locked in vain: retry until the path names the locked file.
        for _ in 0..8 {
            // Never truncated here, never through a symbolic link.
            let (file, _) = basicagent_fstrust::create_file(&path, 0o644, CreateHow::ReadWrite)
                .map_err(PidFileError::from_trust)?;
            // SAFETY: `file` owns a valid open descriptor for this call's duration.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    let mut text = String::new();
                    let pid = (&file)
                        .take(64)
                        .read_to_string(&mut text)
                        .ok()
                        .and_then(|_| text.trim().parse::<u32>().ok());
                    return Err(PidFileError::AlreadyRunning { path, pid });
                }
                return Err(io_err(e));
            }
            if same_file(&file, &path) {
                return Ok(PidFile {
                    path,
                    file,
                    written_by: None,
                });
            }
        }
        Err(io_err(io::Error::other(
            "the pid file keeps being replaced while locking it",
        )))
    }

    /// Writes this process's pid (replacing the content) and syncs it.
    pub fn write_pid(&mut self) -> Result<(), PidFileError> {
        let pid = std::process::id();
        let io_err = |source| PidFileError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(io_err)?;
        std::os::unix::fs::FileExt::write_all_at(&self.file, format!("{pid}\n").as_bytes(), 0)
            .map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.written_by = Some(pid);
        Ok(())
    }

    /// The (absolute) path of the pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Unlink while still holding the lock; the lock goes with the file.
        if self.written_by == Some(std::process::id()) && same_file(&self.file, &self.path) {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    // lstat: a symbolic link put at the path is not our file.
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The detached daemon's line back to the process that started it.
/// [`Detached::ready`] lets that process exit 0; [`Detached::fail`] or
/// dropping this handle makes it exit 1.
#[derive(Debug)]
pub struct Detached {
    pipe: File,
}

const READY: u8 = b'0';
const FAILED: u8 = b'1';

impl Detached {
    /// Start-up succeeded: the starting process exits 0.
    pub fn ready(mut self) -> io::Result<()> {
        self.pipe.write_all(&[READY])
    }

    /// Start-up failed: the starting process prints `message` on its
    /// stderr (still the terminal) and exits 1.
    pub fn fail(mut self, message: &str) {
        let mut buf = vec![FAILED];
        buf.extend_from_slice(message.as_bytes());
        // Nothing more to do if the starter is gone.
        let _ = self.pipe.write_all(&buf);
    }
}

/// Detaches from the terminal: fork, `setsid`, fork again, `chdir("/")`,
/// `umask(022)`, stdin/stdout/stderr to `/dev/null`. Returns in the
/// grandchild (the daemon) only; the original process waits until the
/// daemon calls [`Detached::ready`] (exit 0) or fails (exit 1, with the
/// daemon's message on stderr), and never returns.
///
/// Must be called **before any thread is started** (resolver, plugins,
/// logger threads): `fork` copies only the calling thread, and locks held
/// by others would stay locked forever in the child. Make paths absolute
/// before calling it (it changes directory).
pub fn daemonize() -> io::Result<Detached> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: the caller guarantees no other thread runs (documented above),
    // so the child is a consistent copy of this single-threaded process.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        child => {
            drop(write_end);
            wait_for_daemon(child, File::from(read_end));
        }
    }
    drop(read_end);
    let mut pipe = File::from(write_end);

    // First child: new session, then fork again so the daemon is not a
    // session leader and can never reacquire a controlling terminal.
    // SAFETY: plain system calls in the (single-threaded) child.
    if unsafe { libc::setsid() } == -1 {
        report_and_exit(&mut pipe, "setsid", io::Error::last_os_error());
    }
    // SAFETY: as above; still single-threaded.
    match unsafe { libc::fork() } {
        -1 => report_and_exit(&mut pipe, "fork", io::Error::last_os_error()),
        0 => {}
        // SAFETY: _exit ends the first child at once, without running
        // atexit handlers or flushing buffers that belong to the parent.
        _ => unsafe { libc::_exit(0) },
    }

    // Grandchild: the daemon.
    if let Err(e) = detach_stdio() {
        let mut msg = vec![FAILED];
        msg.extend_from_slice(format!("detaching: {e}").as_bytes());
        let _ = pipe.write_all(&msg);
        return Err(e);
    }
    Ok(Detached { pipe })
}

fn detach_stdio() -> io::Result<()> {
    std::env::set_current_dir("/")?;
    // SAFETY: umask only sets the process's file mode mask.
    unsafe { libc::umask(0o022) };
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: `null` is open; dup2 atomically replaces the standard descriptor.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn report_and_exit(pipe: &mut File, what: &str, e: io::Error) -> ! {
    let mut msg = vec![FAILED];
    msg.extend_from_slice(format!("{what}: {e}").as_bytes());
    let _ = pipe.write_all(&msg);
    // SAFETY: ends this intermediate child without unwinding or atexit handlers.
    unsafe { libc::_exit(1) }
}

/// The original process: reap the first child, then wait for the daemon's word.
fn wait_for_daemon(child: libc::pid_t, mut pipe: File) -> ! {
    let mut status = 0;
    loop {
        // SAFETY: `child` is our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc != -1 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let mut word = Vec::new();
    let code = match pipe.read_to_end(&mut word) {
        Ok(_) if word.first() == Some(&READY) => 0,
        Ok(_) if word.first() == Some(&FAILED) => {
            eprintln!("BasicAgent: {}", String::from_utf8_lossy(&word[1..]));
            1
        }
        Ok(_) => {
            eprintln!("BasicAgent: the daemon exited during start-up (see its log)");
            1
        }
        Err(e) => {
            eprintln!("BasicAgent: waiting for the daemon: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened.
    #[error("{}: {source}", .path.display())]
    Open {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path breaks the file-trust rule (a symbolic link, a directory
    /// writable by others, another owner): nothing was written.
    #[error("refusing log file {0}")]
    Untrusted(TrustError),
    /// A logger was already installed in this process.
    #[error("a logger is already installed: {0}")]
    AlreadyInstalled(#[from] log::SetLoggerError),
}

/// A log file opened by path in append mode that can be reopened
/// (logrotate's default `create` mode renames it, then signals us).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Opens `path` (made absolute) for appending, creating it 0640.
    pub fn open(path: &Path) -> Result<LogFile, LogError> {
        let path = std::path::absolute(path).map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })?;
        let file = open_append(&path)?;
        Ok(LogFile {
            path,
            file: Mutex::new(file),
        })
    }

    /// Opens the path again; later lines go to the new file. On failure
    /// the old file stays in use.
    pub fn reopen(&self) -> Result<(), LogError> {
        let new = open_append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        *file = new;
        Ok(())
    }

    /// The file's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    basicagent_fstrust::create_file(path, 0o640, CreateHow::Append)
        .map(|(file, _)| file)
        .map_err(|e| match e.violation {
            Violation::Io(source) => LogError::Open { path: e.at, source },
            _ => LogError::Untrusted(e),
        })
}

/// What env_logger writes to: one `write_all` per record, in append mode.
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Handle on the installed log target; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogHandle {
    file: Option<Arc<LogFile>>,
}

impl LogHandle {
    /// Reopens the log file by path (SIGHUP / SIGUSR1); a no-op on stderr.
    pub fn reopen(&self) -> Result<(), LogError> {
        match &self.file {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }

    /// The log file, `None` when logging to stderr.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref().map(LogFile::path)
    }
}

/// Builds the logger without installing it: lines with a UTC millisecond
/// timestamp, level and target, to `path` (append, created 0640) or to
/// stderr. `level` is the default; `BASICAGENT_LOG` (env_logger syntax,
/// e.g. `debug` or `basicagent_host::resolve=trace`) overrides it.
pub fn build_logger(
    path: Option<&Path>,
    level: LevelFilter,
) -> Result<(env_logger::Logger, LogHandle), LogError> {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("BASICAGENT_LOG"))
        .format_timestamp_millis()
        .write_style(env_logger::WriteStyle::Never);
    let handle = match path {
        Some(p) => {
            let file = Arc::new(LogFile::open(p)?);
            builder.target(env_logger::Target::Pipe(Box::new(LogWriter(Arc::clone(
                &file,
            )))));
            LogHandle { file: Some(file) }
        }
        None => {
            builder.target(env_logger::Target::Stderr);
            LogHandle { file: None }
        }
    };
    Ok((builder.build(), handle))
}

/// Installs the process-wide logger (see [`build_logger`]). Call after
/// [`daemonize`], which closes stderr.
pub fn init_logging(path: Option<&Path>, level: LevelFilter) -> Result<LogHandle, LogError> {
    let (logger, handle) = build_logger(path, level)?;
    let max = logger.filter();
    log::set_boxed_logger(Box::new(logger))?;
    log::set_max_level(max);
    Ok(handle)
}

/// Gives back the pages of the daemon's own executable that start-up used
/// (configuration, certificates, DNS set-up) once the first session is up:
/// `MADV_PAGEOUT` on its file-backed mappings. The kernel reclaims the
/// pages no one else maps; code the request path needs faults back in from
/// the page cache on first use. Best effort: errors are only logged.
pub fn release_startup_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy().into_owned();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !line.ends_with(exe.as_str()) || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole read-only, file-backed mapping of
        // our own executable as the kernel lists it; MADV_PAGEOUT only drops
        // resident pages (they fault back in unchanged), never the mapping.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc != 0 {
            log::debug!(
                "madvise(MADV_PAGEOUT) {range}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::os::unix::fs::PermissionsExt;

    fn emit(logger: &env_logger::Logger, msg: &str) {
        logger.log(
            &log::Record::builder()
                .args(format_args!("{msg}"))
                .level(log::Level::Info)
                .target("basicagent_host::test")
                .build(),
        );
    }

    #[test]
    fn reopen_after_rename_writes_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let (logger, handle) = build_logger(Some(&path), LevelFilter::Info).unwrap();
        assert_eq!(handle.path(), Some(path.as_path()));
        emit(&logger, "first line");
        let rotated = dir.path().join("agent.log.1");
        fs::rename(&path, &rotated).unwrap();
        emit(&logger, "second line");
        handle.reopen().unwrap();
        emit(&logger, "third line");

        let old = fs::read_to_string(&rotated).unwrap();
        let new = fs::read_to_string(&path).unwrap();
        assert!(
            old.contains("first line") && old.contains("second line"),
            "{old}"
        );
        assert!(!old.contains("third line"));
        assert!(
            new.contains("third line") && !new.contains("first"),
            "{new}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // "[2024-05-01T12:00:00.123Z INFO  basicagent_host::test] third line"
        let line = new.lines().next().unwrap();
        assert!(
            line.starts_with('[') && line.contains("T") && line.contains("Z INFO"),
            "{line}"
        );
    }

    #[test]
    fn reopen_appends_to_an_existing_file_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, "kept\n").unwrap();
        let (logger, handle) = build_logger(Some(&path), LevelFilter::Warn).unwrap();
        emit(&logger, "below the level");
        logger.log(
            &log::Record::builder()
                .args(format_args!("warned"))
                .level(log::Level::Warn)
                .build(),
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("kept\n") && text.contains("warned") && !text.contains("below"));
        // The directory disappears: reopen fails, logging goes on to the old file.
        let moved = tempfile::tempdir().unwrap();
        let newdir = moved.path().join("d");
        fs::rename(dir.path(), &newdir).unwrap();
        assert!(matches!(handle.reopen(), Err(LogError::Open { .. })));
        logger.log(
            &log::Record::builder()
                .args(format_args!("still here"))
                .level(log::Level::Error)
                .build(),
        );
        assert!(fs::read_to_string(newdir.join("a.log"))
            .unwrap()
            .contains("still here"));
    }

    #[test]
    fn stderr_handle_reopen_is_a_no_op() {
        let (_logger, handle) = build_logger(None, LevelFilter::Info).unwrap();
        assert!(handle.path().is_none());
        handle.reopen().unwrap();
    }

    #[test]
    fn pid_file_lock_write_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.pid");
        let mut first = PidFile::acquire(&path).unwrap();
        // flock locks belong to the open file description, so a second
        // open in the same process conflicts just like another process.
        match PidFile::acquire(&path) {
            Err(PidFileError::AlreadyRunning { pid: None, .. }) => {}
            other => panic!("{other:?}"),
        }
        first.write_pid().unwrap();
        let me = std::process::id();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        let e = PidFile::acquire(&path).unwrap_err();
        assert!(matches!(e, PidFileError::AlreadyRunning { pid: Some(p), .. } if p == me));
        assert!(e.to_string().contains(&format!("pid {me}")), "{e}");
        drop(first);
        assert!(!path.exists());
        // A stale file (no lock holder) is taken over and truncated on write.
        fs::write(&path, "999999999\nstale\n").unwrap();
        let mut again = PidFile::acquire(&path).unwrap();
        again.write_pid().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        drop(again);
        assert!(!path.exists());
    }

    #[test]
    fn pid_file_not_removed_unless_written_or_if_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.pid");
        drop(PidFile::acquire(&path).unwrap());
        assert!(path.exists(), "never written: not ours to remove");

        let mut p = PidFile::acquire(&path).unwrap();
        p.write_pid().unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else\n").unwrap();
        drop(p);
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else\n");
    }

    #[test]
    fn pid_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/agent.pid");
        let e = PidFile::acquire(&path).unwrap_err();
        assert!(matches!(e, PidFileError::Io { .. }));
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }
}
