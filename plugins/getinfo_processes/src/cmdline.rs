//! Reading `/proc/PID/cmdline` with a time budget. The kernel reads a
//! command line from the process's memory under its mmap lock, so the
//! read blocks while another task holds that lock for writing or waits
//! for it (the classic `ps` hang: a process stuck in a page fault on a
//! dead NFS or FUSE mapping). The reads run on a reader thread; one that
//! does not answer within the budget is left behind (the thread stays
//! blocked until the kernel lets it go, then exits), the process is
//! reported without its command line, and a fresh reader takes the rest.
//! At most [`MAX_STUCK`] readers may be left blocked in the whole
//! process; past that no command line is read until one comes back.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// The default budget of one read.
pub const READ_BUDGET: Duration = Duration::from_millis(250);
/// Reader threads that may be left blocked at once.
pub const MAX_STUCK: usize = 4;

/// Readers left blocked and not back yet.
static STUCK: AtomicUsize = AtomicUsize::new(0);

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bytes (at most the limit).
    Read(Vec<u8>),
    /// The file is gone (the process exited) or unreadable.
    Gone,
    /// No answer within the budget, or no reader may be started: the
    /// command line is left out.
    Skipped,
}

struct Reader {
    tx: Sender<(PathBuf, u64)>,
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Set (before the channels close) when the scan gave up on it.
    abandoned: Arc<AtomicBool>,
}

impl Reader {
    fn start() -> Option<Reader> {
        let (tx, jobs) = mpsc::channel::<(PathBuf, u64)>();
        let (done, rx) = mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&abandoned);
        let spawned = std::thread::Builder::new()
            .name("getinfo-cmdline".to_owned())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (path, max) in jobs {
                    let mut buf = Vec::new();
                    let r = File::open(&path)
                        .and_then(|f| f.take(max).read_to_end(&mut buf))
                        .map(|_| buf);
                    if done.send(r).is_err() {
                        break;
                    }
                }
                // The channels close only after the flag is set: a
                // reader given up on is counted back here.
                if flag.load(Ordering::SeqCst) {
                    STUCK.fetch_sub(1, Ordering::SeqCst);
                }
            });
        match spawned {
            Ok(_) => Some(Reader { tx, rx, abandoned }),
            Err(e) => {
                log::error!("getinfo.processes: cannot start a cmdline reader: {e}");
                None
            }
        }
    }
}

/// One scan's reads of command lines, each within `budget`.
pub struct CmdlineReader {
    reader: Option<Reader>,
    budget: Duration,
}

impl CmdlineReader {
    pub fn new(budget: Duration) -> Self {
        CmdlineReader {
            reader: None,
            budget,
        }
    }

    /// Reads at most `max` bytes of `path`.
    pub fn read(&mut self, path: PathBuf, max: u64) -> Outcome {
        if self.reader.is_none() {
            if STUCK.load(Ordering::SeqCst) >= MAX_STUCK {
                return Outcome::Skipped;
            }
            self.reader = Reader::start();
        }
        let Some(reader) = &self.reader else {
            return Outcome::Skipped;
        };
        if reader.tx.send((path, max)).is_err() {
            self.reader = None;
            return Outcome::Skipped;
        }
        match reader.rx.recv_timeout(self.budget) {
            Ok(Ok(bytes)) => Outcome::Read(bytes),
            Ok(Err(_)) => Outcome::Gone,
            Err(RecvTimeoutError::Timeout) => {
                // Leave it behind; it exits when its read returns.
                if let Some(stuck) = self.reader.take() {
                    STUCK.fetch_add(1, Ordering::SeqCst);
                    stuck.abandoned.store(true, Ordering::SeqCst);
                    drop(stuck);
                }
                Outcome::Skipped
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.reader = None;
                Outcome::Skipped
            }
        }
    }
}

/// Readers currently left blocked (for tests and logs).
pub fn stuck_readers() -> usize {
    STUCK.load(Ordering::SeqCst)
}
