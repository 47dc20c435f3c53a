//! The signals the daemon handles (SIGTERM, SIGINT, SIGHUP, SIGUSR1),
//! blocked in every thread and read from a signalfd the reactor polls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM / SIGINT.
    Stop,
    /// SIGHUP: reopen the log, reload configuration and changed plugins.
    Reload,
    /// SIGUSR1: reopen the log.
    ReopenLog,
}

/// Hooks the daemon's main gives the loop for SIGHUP and SIGUSR1.
pub trait Reloader {
    /// Reopens the log file (logrotate).
    fn reopen_log(&mut self);
    /// Re-reads the configuration; `None` (logged) keeps the current one.
    fn reload_config(&mut self) -> Option<crate::core::Reconfig>;
}

/// Blocks the daemon's signals in this thread (inherited by threads
/// started later) so that only the returned signalfd receives them. Call
/// before starting any thread.
pub fn block_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the
    // libc calls only change this thread's mask (inherited by threads
    // started later) and create a new descriptor we then own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The signals waiting on the signalfd, in order.
pub fn read_signals(fd: &OwnedFd) -> Vec<Control> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is a writable buffer of `size` bytes.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return out;
        }
        let sig = info.ssi_signo as libc::c_int;
        out.push(match sig {
            libc::SIGHUP => Control::Reload,
            libc::SIGUSR1 => Control::ReopenLog,
            _ => Control::Stop,
        });
        log::info!("signal {sig} received");
    }
}
