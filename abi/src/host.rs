//! The host side of the ABI: the API table handed to plugins, and the
//! registry that routes `complete(call, ...)` back to whoever made the call.
//!
//! A call id is a token, not a pointer: completing twice, or completing an
//! id that was never issued, finds nothing in the registry and returns
//! `BA_STATUS_UNKNOWN_CALL`. So a buggy plugin cannot make the host touch
//! freed memory.

use std::collections::HashMap;
use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::ffi::{self, CallId, HostApi, Status};

/// What a plugin sent back for one call. `data` is the plugin's JSON text,
/// unchecked here: the host validates it where it knows JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub call: CallId,
    pub retcode: u32,
    /// Empty: the retcode's standard message.
    pub message: String,
    pub data: Option<String>,
}

/// Receives one completion, on whichever thread the plugin completes from.
pub type Completer = Box<dyn FnOnce(Completion) + Send>;

struct Registry {
    next: AtomicU64,
    pending: Mutex<HashMap<CallId, Completer>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        next: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
    })
}

/// Registers a completer and returns the id to pass to the plugin.
pub(crate) fn register(completer: Completer) -> CallId {
    let reg = registry();
    let id = reg.next.fetch_add(1, Ordering::Relaxed);
    lock_pending(reg).insert(id, completer);
    id
}

/// Number of calls issued and not yet completed (for tests and limits).
pub fn pending_calls() -> usize {
    lock_pending(registry()).len()
}

fn lock_pending(reg: &Registry) -> std::sync::MutexGuard<'_, HashMap<CallId, Completer>> {
    // A completer never runs under the lock, so the map is never left
    // half-updated by a panic: a poisoned lock is still consistent.
    reg.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Completes `call` from the host side (e.g. when the plugin refused to
/// initialise). Returns false if the call was not pending.
pub(crate) fn finish(completion: Completion) -> bool {
    let completer = lock_pending(registry()).remove(&completion.call);
    match completer {
        Some(f) => {
            f(completion);
            true
        }
        None => false,
    }
}

/// Settings the host shares with every plugin it loads in this process.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// A JSON object, passed verbatim as `ba_host_api.config`.
    pub config_json: String,
    /// The most verbose level the host writes (1 = error ... 5 = trace).
    pub max_log_level: u32,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            config_json: "{}".to_owned(),
            max_log_level: log::max_level() as u32,
        }
    }
}

/// The process-wide API table. The first caller's settings win: plugins
/// keep the pointer for the life of the process.
pub fn host_api(settings: &HostSettings) -> &'static HostApi {
    static API: OnceLock<HostApi> = OnceLock::new();
    API.get_or_init(|| {
        let config: &'static str = Box::leak(settings.config_json.clone().into_boxed_str());
        HostApi {
            abi_version: ffi::ABI_VERSION,
            size: std::mem::size_of::<HostApi>() as u32,
            log: Some(host_log),
            complete: Some(host_complete),
            config: config.as_ptr().cast::<c_char>(),
            config_len: config.len(),
            max_log_level: settings.max_log_level,
        }
    })
}

/// Copies `len` bytes at `ptr` into a String (lossy for invalid UTF-8).
///
/// # Safety
/// `ptr` must be null or valid for reads of `len` bytes.
unsafe fn copy_text(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// # Safety
/// `msg` must be null or valid for `msg_len` bytes until return.
unsafe extern "C" fn host_log(level: u32, msg: *const c_char, msg_len: usize) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the plugin passes a live (pointer, length) pair (header).
        let text = unsafe { copy_text(msg, msg_len) };
        let level = match level {
            0 | 1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        };
        log::log!(target: "plugin", level, "{text}");
    });
}

/// # Safety
/// `message` and `data` must each be null or valid for their length until
/// return (header contract: the host copies before returning).
unsafe extern "C" fn host_complete(
    call: CallId,
    retcode: u32,
    message: *const c_char,
    message_len: usize,
    data: *const c_char,
    data_len: usize,
) -> Status {
    let outcome = std::panic::catch_unwind(|| {
        // SAFETY: the plugin passes live (pointer, length) pairs (header).
        let (message, data) =
            unsafe { (copy_text(message, message_len), copy_text(data, data_len)) };
        let data = if data.is_empty() { None } else { Some(data) };
        finish(Completion {
            call,
            retcode,
            message,
            data,
        })
    });
    match outcome {
        Ok(true) => ffi::STATUS_OK,
        Ok(false) => ffi::STATUS_UNKNOWN_CALL,
        Err(_) => ffi::STATUS_INVALID_ARGUMENT,
    }
}
