//! The host side of the ABI: the API table handed to plugins, and the
//! registry that routes `complete(call, ...)` back to whoever made the call.
//!
//! A call id is a token, not a pointer: completing twice, or completing an
//! id that was never issued, finds nothing in the registry and returns
//! `BA_STATUS_UNKNOWN_CALL`. So a buggy plugin cannot make the host touch
//! freed memory.
//!
//! Each pending call also keeps a copy of its request and, once a plugin
//! asks (`param_*`, `args_argv`, ABI 1.1), the request's top-level members
//! and its argv ([`crate::params`]); they are dropped when the call is
//! completed, which is the lifetime the header promises.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::ffi::{self, CallId, HostApi, Status};
use crate::params::CallState;

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

struct Pending {
    completer: Completer,
    state: Arc<CallState>,
}

struct Registry {
    next: AtomicU64,
    pending: Mutex<HashMap<CallId, Pending>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        next: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
    })
}

/// Registers a completer for a call of `request` (copied: the readers
/// need it after `call` returns) and returns the id to pass to the plugin.
/// `name` is argv\[0\] when the request has no `"method"` string.
pub(crate) fn register(completer: Completer, request: &[u8], name: Arc<str>) -> CallId {
    let reg = registry();
    let id = reg.next.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(CallState::new(request, name));
    lock_pending(reg).insert(id, Pending { completer, state });
    id
}

/// The request state of a pending call (an `Arc`, so the registry lock is
/// not held while a plugin's request is parsed).
fn call_state(id: CallId) -> Option<Arc<CallState>> {
    lock_pending(registry())
        .get(&id)
        .map(|p| Arc::clone(&p.state))
}

/// Number of calls issued and not yet completed (for tests and limits).
pub fn pending_calls() -> usize {
    lock_pending(registry()).len()
}

fn lock_pending(reg: &Registry) -> std::sync::MutexGuard<'_, HashMap<CallId, Pending>> {
    // A completer never runs under the lock, so the map is never left
    // half-updated by a panic: a poisoned lock is still consistent.
    reg.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Completes `call` from the host side (e.g. when the plugin refused to
/// initialise). Returns false if the call was not pending.
pub(crate) fn finish(completion: Completion) -> bool {
    let pending = lock_pending(registry()).remove(&completion.call);
    match pending {
        Some(p) => {
            (p.completer)(completion);
            true
        }
        None => false,
    }
}

/// Answers a pending call from the host side and retires its id (a
/// deadline passed): the completer runs now with `completion`, and a later
/// `complete` of the same id by the plugin finds nothing and returns
/// `BA_STATUS_UNKNOWN_CALL` (its bytes stay the plugin's). Returns false if
/// the call was no longer pending (it completed meanwhile).
pub fn expire(completion: Completion) -> bool {
    finish(completion)
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
            param_str: Some(host_param_str),
            param_int64: Some(host_param_int64),
            param_double: Some(host_param_double),
            param_bool: Some(host_param_bool),
            args_argv: Some(host_args_argv),
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
        let bad = match (
            message.is_null() && message_len > 0,
            data.is_null() && data_len > 0,
        ) {
            (true, _) => Some("message"),
            (_, true) => Some("data"),
            _ => None,
        };
        if let Some(which) = bad {
            // A NULL pointer with a length: answered, so that a plugin
            // that ignores the status never leaves the call hanging.
            let found = finish(Completion {
                call,
                retcode: crate::retcode::PLUGIN_FAILURE,
                message: format!(
                    "Plugin failure: complete() got a NULL {which} with a length > 0 (retcode {retcode})"
                ),
                data: None,
            });
            return if found {
                ffi::STATUS_INVALID_ARGUMENT
            } else {
                ffi::STATUS_UNKNOWN_CALL
            };
        }
        // SAFETY: the plugin passes live (pointer, length) pairs (header).
        let (message, data) =
            unsafe { (copy_text(message, message_len), copy_text(data, data_len)) };
        let data = if data.is_empty() { None } else { Some(data) };
        if finish(Completion {
            call,
            retcode,
            message,
            data,
        }) {
            ffi::STATUS_OK
        } else {
            ffi::STATUS_UNKNOWN_CALL
        }
    });
    // A panic here is the host's own (a completer); the entry was removed.
    outcome.unwrap_or(ffi::STATUS_INVALID_ARGUMENT)
}

/// Reads the NUL-terminated key of a reader call.
///
/// # Safety
/// `key` must be null or a NUL-terminated string live until return.
unsafe fn key_of<'a>(key: *const c_char) -> Option<&'a [u8]> {
    if key.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller (header: keys are NUL-terminated).
    Some(unsafe { CStr::from_ptr(key) }.to_bytes())
}

/// The common frame of the readers: panic boundary, call lookup, key and
/// output null checks. `read` runs with the call's state and the key.
fn reader(
    call: CallId,
    key: *const c_char,
    out_ok: bool,
    read: impl FnOnce(&CallState, &[u8]) -> Status,
) -> Status {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if !out_ok {
            return ffi::STATUS_INVALID_ARGUMENT;
        }
        // SAFETY: the plugin passes a NUL-terminated key (header).
        let Some(key) = (unsafe { key_of(key) }) else {
            return ffi::STATUS_INVALID_ARGUMENT;
        };
        match call_state(call) {
            Some(state) => read(&state, key),
            None => ffi::STATUS_UNKNOWN_CALL,
        }
    }));
    outcome.unwrap_or(ffi::STATUS_INVALID_ARGUMENT)
}

/// # Safety
/// `key` NUL-terminated or null; `val` and `len` null or writable.
unsafe extern "C" fn host_param_str(
    call: CallId,
    key: *const c_char,
    val: *mut *const c_char,
    len: *mut usize,
) -> Status {
    reader(call, key, !val.is_null(), |state, key| {
        match state.string(key) {
            Ok((ptr, n)) => {
                // SAFETY: `val` is non-null and writable (checked, header);
                // `len` is optional.
                unsafe {
                    *val = ptr;
                    if !len.is_null() {
                        *len = n;
                    }
                }
                ffi::STATUS_OK
            }
            Err(status) => status,
        }
    })
}

/// # Safety
/// `key` NUL-terminated or null; `val` null or writable.
unsafe extern "C" fn host_param_int64(call: CallId, key: *const c_char, val: *mut i64) -> Status {
    reader(call, key, !val.is_null(), |state, key| {
        match state.int64(key) {
            Ok(v) => {
                // SAFETY: non-null and writable (checked, header).
                unsafe { *val = v };
                ffi::STATUS_OK
            }
            Err(status) => status,
        }
    })
}

/// # Safety
/// `key` NUL-terminated or null; `val` null or writable.
unsafe extern "C" fn host_param_double(call: CallId, key: *const c_char, val: *mut f64) -> Status {
    reader(call, key, !val.is_null(), |state, key| {
        match state.double(key) {
            Ok(v) => {
                // SAFETY: non-null and writable (checked, header).
                unsafe { *val = v };
                ffi::STATUS_OK
            }
            Err(status) => status,
        }
    })
}

/// # Safety
/// `key` NUL-terminated or null; `val` null or writable.
unsafe extern "C" fn host_param_bool(call: CallId, key: *const c_char, val: *mut c_int) -> Status {
    reader(call, key, !val.is_null(), |state, key| {
        match state.boolean(key) {
            Ok(v) => {
                // SAFETY: non-null and writable (checked, header).
                unsafe { *val = c_int::from(v) };
                ffi::STATUS_OK
            }
            Err(status) => status,
        }
    })
}

/// # Safety
/// `argc` and `argv` null or writable.
unsafe extern "C" fn host_args_argv(
    call: CallId,
    argc: *mut c_int,
    argv: *mut *mut *mut c_char,
) -> Status {
    let outcome = std::panic::catch_unwind(|| {
        if argc.is_null() || argv.is_null() {
            return ffi::STATUS_INVALID_ARGUMENT;
        }
        let Some(state) = call_state(call) else {
            return ffi::STATUS_UNKNOWN_CALL;
        };
        match state.argv() {
            Ok((n, array)) => {
                // SAFETY: both non-null and writable (checked, header).
                unsafe {
                    *argc = n;
                    *argv = array;
                }
                ffi::STATUS_OK
            }
            Err(status) => status,
        }
    });
    outcome.unwrap_or(ffi::STATUS_INVALID_ARGUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn an_expired_call_is_answered_once_and_its_late_complete_is_unknown() {
        static ANSWERS: AtomicU32 = AtomicU32::new(0);
        let id = register(
            Box::new(|c: Completion| {
                assert_eq!(c.retcode, crate::retcode::TIMEOUT);
                ANSWERS.fetch_add(1, Ordering::Relaxed);
            }),
            b"{}",
            Arc::from("t"),
        );
        assert!(call_state(id).is_some());
        assert!(expire(Completion {
            call: id,
            retcode: crate::retcode::TIMEOUT,
            message: "Timeout: test".to_owned(),
            data: None,
        }));
        assert!(
            call_state(id).is_none(),
            "the entry and its request copy are gone"
        );
        let data = b"{\"late\":true}";
        // SAFETY: live (pointer, length) pairs for the duration of the call.
        let status = unsafe {
            host_complete(
                id,
                crate::retcode::SUCCESS,
                std::ptr::null(),
                0,
                data.as_ptr().cast(),
                data.len(),
            )
        };
        assert_eq!(status, ffi::STATUS_UNKNOWN_CALL);
        assert!(!expire(Completion {
            call: id,
            retcode: crate::retcode::TIMEOUT,
            message: String::new(),
            data: None,
        }));
        assert_eq!(ANSWERS.load(Ordering::Relaxed), 1);
    }
}
