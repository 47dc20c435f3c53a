//! The crash marker: which plugin was running when a fatal signal killed
//! the daemon, so that the restarted daemon quarantines it until its file
//! changes.
//!
//! At start the daemon opens `STATE_DIR/crash.marker` (0600, by the
//! file-trust rule of the private state directory), reads what a previous
//! run left there, and maps one page of it `MAP_SHARED`. Before each call
//! into a plugin from the loop thread ([`Guard::enter`]) it copies the
//! plugin's file, version and name into the page (length last); after the
//! call it clears the length. A handler for SIGSEGV, SIGBUS, SIGABRT,
//! SIGILL and SIGFPE only stores the signal number and a flag into the
//! page (plain stores into mapped memory: async-signal-safe; the kernel
//! keeps the dirty page when the process dies), restores the default
//! action and re-raises, so the daemon still dies as it would have (core
//! dump, the supervisor's restart).
//!
//! Limit (documented): only a fault on the loop thread during a call is
//! blamed on the plugin noted; a crash on a plugin's own thread is not
//! attributed (the next start quarantines nothing).

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use basicagent_abi::Plugin;

/// Bytes of the marker file (one page).
pub const SIZE: usize = 4096;
const FLAG: usize = 0; // b'C' once a fatal signal was caught in a call
const SIGNAL: usize = 4; // u32, the signal number
const LEN: usize = 8; // u32, bytes of the note (0: not in a call)
const NOTE: usize = 16;
const NOTE_MAX: usize = SIZE - NOTE;

static PAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// The loop thread's kernel tid: only its faults are blamed on the note.
static LOOP_TID: AtomicI64 = AtomicI64::new(-1);
/// The plugin whose note the page holds, and the note's length: a call
/// into the same plugin as the last one only stores the length again
/// (formatting the path for every call cost about 2 000 instructions, a
/// twentieth of a pipelined `getinfo.kernel`). The `Arc` keeps that
/// plugin alive, so its address cannot come to name another.
static NOTED: Mutex<Option<(Arc<Plugin>, u32)>> = Mutex::new(None);

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions and is async-signal-safe.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// What a previous run left: the plugin in a call when it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub path: PathBuf,
    pub version: String,
    pub name: String,
    pub signal: u32,
}

/// What the marker file said at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// A clean file (or none).
    Clean,
    /// A fatal signal while a plugin was in a call.
    Crash(Crash),
}

/// Reads the marker a previous run left in `dir`, then clears it, maps it
/// and installs the fatal-signal handlers. Call once, on the thread that
/// will run the loop, before any other thread.
pub fn arm(dir: &Path) -> io::Result<Previous> {
    let path = dir.join("crash.marker");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || std::os::unix::fs::MetadataExt::uid(&meta) != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not a regular file of ours", path.display()),
        ));
    }
    let mut old = Vec::with_capacity(SIZE);
    (&mut file).take(SIZE as u64).read_to_end(&mut old)?;
    let previous = parse(&old);
    file.set_len(0)?;
    file.set_len(SIZE as u64)?;
    // SAFETY: maps SIZE bytes of a file of exactly that size, shared, for
    // the life of the process (never unmapped); the descriptor may close.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    LOOP_TID.store(gettid(), Ordering::Release);
    // A new page holds no note yet.
    let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    *noted = None;
    PAGE.store(page.cast(), Ordering::Release);
    drop(noted);
    install_handlers()?;
    Ok(previous)
}

/// Decodes a marker's bytes.
pub fn parse(bytes: &[u8]) -> Previous {
    if bytes.len() < NOTE || bytes[FLAG] != b'C' {
        return Previous::Clean;
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let len = (u32_at(LEN) as usize).min(NOTE_MAX);
    let note = bytes.get(NOTE..NOTE + len).unwrap_or_default();
    let text = String::from_utf8_lossy(note);
    let mut parts = text.splitn(3, '\n');
    let (Some(path), Some(version), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Previous::Clean;
    };
    if !path.starts_with('/') {
        return Previous::Clean;
    }
    Previous::Crash(Crash {
        path: PathBuf::from(path),
        version: version.to_owned(),
        name: name.to_owned(),
        signal: u32_at(SIGNAL),
    })
}

/// Notes the plugin in a call on the loop thread until dropped.
pub struct Guard {
    armed: bool,
}

impl Guard {
    /// Notes `plugin` as the one in a call (no-op before [`arm`]).
    pub fn enter(plugin: &Arc<Plugin>) -> Guard {
        let page = PAGE.load(Ordering::Acquire);
        if page.is_null() {
            return Guard { armed: false };
        }
        let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
        let len = match noted.as_ref() {
            Some((p, len)) if Arc::ptr_eq(p, plugin) => *len,
            _ => {
                *noted = None;
                let info = plugin.info();
                let note = format!("{}\n{}\n{}", info.path.display(), info.version, info.name);
                let bytes = note.as_bytes();
                if bytes.len() > NOTE_MAX {
                    return Guard { armed: false };
                }
                // SAFETY: `page` maps SIZE bytes for the life of the
                // process; NOTE + len <= SIZE. The handler only reads the
                // page's flag words, and a later start reads the note up
                // to the length stored last (written below, after the
                // bytes). One thread at a time writes it (under NOTED).
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.add(NOTE), bytes.len());
                }
                let len = bytes.len() as u32;
                *noted = Some((Arc::clone(plugin), len));
                len
            }
        };
        // SAFETY: as above; the note of `len` bytes is in the page.
        unsafe { len_slot(page).store(len, Ordering::Release) };
        Guard { armed: true }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let page = PAGE.load(Ordering::Acquire);
        if self.armed && !page.is_null() {
            // SAFETY: as in `enter`.
            unsafe { len_slot(page).store(0, Ordering::Release) };
        }
    }
}

/// The length word of the mapped page.
///
/// # Safety
/// `page` must be the mapped page (aligned, SIZE bytes, never unmapped).
unsafe fn len_slot<'a>(page: *mut u8) -> &'a AtomicU32 {
    // SAFETY: LEN is 4-aligned within a page-aligned mapping.
    unsafe { &*page.add(LEN).cast::<AtomicU32>() }
}

const FATAL: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGILL,
    libc::SIGFPE,
];

extern "C" fn on_fatal(sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let page = PAGE.load(Ordering::Acquire);
    if !page.is_null() {
        // SAFETY: plain stores into the mapped page (async-signal-safe).
        unsafe {
            if len_slot(page).load(Ordering::Acquire) > 0
                && gettid() == LOOP_TID.load(Ordering::Acquire)
            {
                page.add(SIGNAL).cast::<u32>().write_volatile(sig as u32);
                page.add(FLAG).write_volatile(b'C');
            }
        }
    }
    // SAFETY: sigaction/raise are async-signal-safe; the default action
    // then ends the process as the signal would have.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        libc::raise(sig);
    }
}

fn install_handlers() -> io::Result<()> {
    for sig in FATAL {
        // SAFETY: a zeroed sigaction with our handler and an empty mask;
        // the handler only does async-signal-safe work.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_fatal as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(flag: u8, sig: u32, note: &str) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[FLAG] = flag;
        b[SIGNAL..SIGNAL + 4].copy_from_slice(&sig.to_ne_bytes());
        b[LEN..LEN + 4].copy_from_slice(&(note.len() as u32).to_ne_bytes());
        b[NOTE..NOTE + note.len()].copy_from_slice(note.as_bytes());
        b
    }

    #[test]
    fn a_marker_names_the_plugin_and_the_signal() {
        let b = marker(b'C', 11, "/usr/lib/x/libgetinfo_t.so\n0.1.0\ngetinfo_t");
        assert_eq!(
            parse(&b),
            Previous::Crash(Crash {
                path: "/usr/lib/x/libgetinfo_t.so".into(),
                version: "0.1.0".into(),
                name: "getinfo_t".into(),
                signal: 11
            })
        );
    }

    #[test]
    fn clean_short_or_hostile_markers_are_clean() {
        assert_eq!(parse(&[]), Previous::Clean);
        assert_eq!(parse(&vec![0u8; SIZE]), Previous::Clean);
        assert_eq!(parse(&marker(0, 11, "/a\n1\nx")), Previous::Clean);
        assert_eq!(parse(&marker(b'C', 11, "relative\n1\nx")), Previous::Clean);
        assert_eq!(parse(&marker(b'C', 11, "/only-a-path")), Previous::Clean);
        let mut b = marker(b'C', 11, "/a\n1\nx");
        b[LEN..LEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(
            matches!(parse(&b), Previous::Crash(_)),
            "a huge length is clamped"
        );
        assert_eq!(parse(&b[..10]), Previous::Clean);
    }
}
