//! SIGTERM and SIGINT as a readable pipe, so the accept loop can poll for them.
//!
//! The handler only writes one byte to a non-blocking pipe (async-signal-safe).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use mio::unix::pipe;

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signal: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the call and
        // the length is 1. The fd is the pipe's non-blocking write end, kept
        // open by `SignalPipe` for the life of the process (a full pipe just
        // makes this write fail with EAGAIN, which is fine: one byte is enough).
        unsafe {
            libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
        }
    }
}

/// The read end becomes readable when SIGTERM or SIGINT arrived.
pub struct SignalPipe {
    pub receiver: pipe::Receiver,
    _sender: pipe::Sender,
}

/// Installs the handlers for SIGTERM and SIGINT.
pub fn install() -> io::Result<SignalPipe> {
    let (sender, receiver) = pipe::new()?;
    SIGNAL_FD.store(sender.as_raw_fd(), Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
        // we set a handler that only does async-signal-safe work, and
        // sigemptyset/sigaction get valid pointers to live locals.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(SignalPipe {
        receiver,
        _sender: sender,
    })
}
