//! Process plumbing for `BasicAgent -P PIDFILE [-f]`: detaching from the
//! terminal and the locked pid file.
//!
//! Key design decisions:
//! * The pid file is *locked* (`flock`), not merely present: a stale file
//!   left by a crash never blocks a start, and a live daemon always does.
//! * [`daemonize`] keeps a pipe from the detached grandchild to the
//!   original process, which exits only once the grandchild reports that it
//!   started (e.g. took the pid-file lock) — so an init script sees a
//!   non-zero exit when another instance is running.
//! * The pid file is opened by the file-trust rule
//!   ([`basicagent_fstrust::create_file`]): `O_NOFOLLOW`, and a directory
//!   writable by group or others (sticky `/tmp` included) is refused; it is
//!   truncated only through its own descriptor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use basicagent_fstrust::{CreateHow, TrustError, Violation};

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
#[cfg(test)]
mod tests {
    use super::*;

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
