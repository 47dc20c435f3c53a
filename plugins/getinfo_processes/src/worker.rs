//! The plugin's own worker thread: `call` only queues the request, the
//! walk of /proc (whose reads can block, see [`crate::cmdline`]) runs
//! here and completes the call from here. One thread, started on first
//! use; calls are served in order.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard};

use basicagent_abi::{retcode, Call};

/// Calls waiting for the worker at most; past it, `3026 Busy`.
pub const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

static WORKER: Mutex<Option<SyncSender<Job>>> = Mutex::new(None);

fn worker() -> MutexGuard<'static, Option<SyncSender<Job>>> {
    // The sender is replaced whole, never left half-updated.
    WORKER.lock().unwrap_or_else(|e| e.into_inner())
}

fn start() -> std::io::Result<SyncSender<Job>> {
    let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
    std::thread::Builder::new()
        .name("getinfo-processes".to_owned())
        .spawn(move || {
            for job in rx {
                // A panic in one walk answers nothing (the host's drop of
                // the call answers it) and the worker keeps serving.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
    Ok(tx)
}

/// Runs `work(call)` on the worker; answers `call` at once if the queue
/// is full (`3026`) or no worker can be started (`3025`).
pub fn submit(call: Call, work: impl FnOnce(Call) + Send + 'static) {
    let mut guard = worker();
    if guard.is_none() {
        match start() {
            Ok(tx) => *guard = Some(tx),
            Err(e) => {
                drop(guard);
                let message = format!("Plugin failure: cannot start the worker thread: {e}");
                return call.fail(retcode::PLUGIN_FAILURE, &message);
            }
        }
    }
    let Some(tx) = guard.as_ref() else { return };
    // The call travels inside the job; a job given back is answered here.
    let slot = std::sync::Arc::new(Mutex::new(Some(call)));
    let inner = std::sync::Arc::clone(&slot);
    let job: Job = Box::new(move || {
        let call = inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(call) = call {
            work(call);
        }
    });
    let refused = match tx.try_send(job) {
        Ok(()) => None,
        Err(TrySendError::Full(_)) => Some((
            retcode::BUSY,
            format!("Busy: {QUEUE} getinfo.processes calls already waiting"),
        )),
        Err(TrySendError::Disconnected(_)) => {
            *guard = None;
            Some((
                retcode::PLUGIN_FAILURE,
                "Plugin failure: the worker thread is gone".to_owned(),
            ))
        }
    };
    drop(guard); // the host's completer may call us again
    if let Some((code, message)) = refused {
        let call = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(call) = call {
            call.fail(code, &message);
        }
    }
}
