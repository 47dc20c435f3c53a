//! The Rust plugin SDK: write a [`PluginSpec`], export it with
//! [`export_plugin!`](crate::export_plugin), complete each [`Call`] once.
//!
//! Every function the host calls runs inside a panic boundary: a panic in
//! the plugin completes the call with `3025 Plugin failure` and never
//! unwinds into the host. The SDK also routes the `log` crate and panic
//! messages to the host's log through the host API table, because a
//! plugin carries its own copy of std and of `log`.
//!
//! Each plugin is its own shared object, so the statics below exist once
//! per plugin, not once per process.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::ffi::{self, CallId, HostApi, PluginDescriptor, StaticStr, Status};
use crate::retcode;

/// What a Rust plugin declares; [`export_plugin!`](crate::export_plugin)
/// turns it into the C descriptor.
pub struct PluginSpec {
    /// File stem without `lib`, e.g. `getinfo_users`.
    pub name: &'static str,
    /// The plugin's own version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// One line.
    pub description: &'static str,
    /// The methods served, e.g. `&["getinfo.users"]`.
    pub methods: &'static [&'static str],
    /// Arguments and output, shown by `BasicAgentCtl -l`.
    pub usage: &'static str,
    /// Called once before any call.
    pub init: Option<InitFn>,
    /// Starts one call: must not block; complete `call` now or later.
    pub call: fn(Call, &[u8]),
    /// Asks a call in flight to stop.
    pub cancel: Option<fn(CallId)>,
    /// Orderly shutdown.
    pub fini: Option<fn()>,
}

/// A plugin's `init`: may refuse to run.
pub type InitFn = fn(&Host) -> Result<(), InitError>;

/// A plugin's refusal to run, with the reason for the host's log.
#[derive(Debug)]
pub struct InitError(pub String);

/// The host as a plugin sees it.
pub struct Host {
    api: &'static HostApi,
}

impl Host {
    /// The host's settings for plugins: a JSON object as bytes.
    pub fn config(&self) -> &'static [u8] {
        if self.api.config.is_null() || self.api.config_len == 0 {
            return b"{}";
        }
        // SAFETY: the header guarantees `config` points to `config_len`
        // bytes that live, unchanged, as long as the process.
        unsafe { std::slice::from_raw_parts(self.api.config.cast::<u8>(), self.api.config_len) }
    }
}

static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());
static SPEC: OnceLock<Exported> = OnceLock::new();

struct Exported {
    spec: PluginSpec,
    descriptor: PluginDescriptor,
}

fn host_api() -> Option<&'static HostApi> {
    let p = HOST.load(Ordering::Acquire);
    // SAFETY: HOST is either null or the pointer the host passed to init,
    // which stays valid for the life of the process (header contract).
    unsafe { p.as_ref() }
}

/// A call in flight. Complete it exactly once; dropping it uncompleted
/// completes it with `3025 Plugin failure` (so a forgotten or panicking
/// path never leaves the host waiting).
#[must_use = "a call must be completed"]
pub struct Call {
    id: CallId,
    done: bool,
}

impl Call {
    /// The host's id of this call (what `cancel` receives).
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Completes with `2 Normal termination` and `data` (a JSON value).
    pub fn success(self, data_json: &str) {
        self.complete(retcode::SUCCESS, "", Some(data_json));
    }

    /// Completes with a failure code and message, without data.
    pub fn fail(self, retcode: u32, message: &str) {
        self.complete(retcode, message, None);
    }

    /// Completes with any code, message (empty: the code's standard
    /// message) and optional data (a JSON value).
    pub fn complete(mut self, retcode: u32, message: &str, data_json: Option<&str>) {
        self.done = true;
        complete_raw(self.id, retcode, message, data_json);
    }
}

/// Why a request reader of ABI 1.1 gave no value (`BA_STATUS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// No such top-level key, or its value is null.
    #[error("not found")]
    NotFound,
    /// Another JSON type, or a number that does not fit.
    #[error("of the wrong type")]
    WrongType,
    /// The request is not one JSON object with distinct keys (3020).
    #[error("the request is not a JSON object")]
    BadRequest,
    /// `args` does not split, or a word holds a NUL (3021).
    #[error("args do not split")]
    BadArgs,
    /// The call is not pending (completed already).
    #[error("the call is not pending")]
    UnknownCall,
    /// The host is older than ABI 1.1 (no readers in its table).
    #[error("the host has no request readers (ABI 1.0)")]
    Unsupported,
    /// Any other status.
    #[error("status {0}")]
    Other(Status),
}

impl ParamError {
    fn of(status: Status) -> ParamError {
        match status {
            ffi::STATUS_NOT_FOUND => ParamError::NotFound,
            ffi::STATUS_WRONG_TYPE => ParamError::WrongType,
            ffi::STATUS_BAD_REQUEST => ParamError::BadRequest,
            ffi::STATUS_BAD_ARGS => ParamError::BadArgs,
            ffi::STATUS_UNKNOWN_CALL => ParamError::UnknownCall,
            s => ParamError::Other(s),
        }
    }
}

/// The host's reader `$field` if its table is big enough and has it.
macro_rules! reader {
    ($field:ident) => {{
        let api = host_api().ok_or(ParamError::Unsupported)?;
        let end = std::mem::offset_of!(HostApi, $field) + std::mem::size_of::<usize>();
        if !api.covers(end) {
            return Err(ParamError::Unsupported);
        }
        api.$field.ok_or(ParamError::Unsupported)?
    }};
}

fn key_cstr(key: &str) -> Result<CString, ParamError> {
    CString::new(key).map_err(|_| ParamError::NotFound)
}

fn status_to(status: Status) -> Result<(), ParamError> {
    if status == ffi::STATUS_OK {
        Ok(())
    } else {
        Err(ParamError::of(status))
    }
}

impl Call {
    /// The request's top-level string `key` (ABI 1.1 host), copied.
    pub fn param_str(&self, key: &str) -> Result<String, ParamError> {
        let f = reader!(param_str);
        let key = key_cstr(key)?;
        let (mut ptr, mut len): (*const c_char, usize) = (std::ptr::null(), 0);
        // SAFETY: a NUL-terminated key and two writable outputs; the host
        // keeps the text alive while the call is pending (it is: we hold
        // the uncompleted Call), and we copy it before returning.
        status_to(unsafe { f(self.id, key.as_ptr(), &mut ptr, &mut len) })?;
        if ptr.is_null() {
            return Err(ParamError::Other(ffi::STATUS_INVALID_ARGUMENT));
        }
        // SAFETY: the host wrote a pointer to `len` live bytes.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The request's top-level integer `key` (fits i64, no fraction).
    pub fn param_i64(&self, key: &str) -> Result<i64, ParamError> {
        let f = reader!(param_int64);
        let key = key_cstr(key)?;
        let mut v = 0i64;
        // SAFETY: a NUL-terminated key and a writable output.
        status_to(unsafe { f(self.id, key.as_ptr(), &mut v) })?;
        Ok(v)
    }

    /// The request's top-level number `key`.
    pub fn param_f64(&self, key: &str) -> Result<f64, ParamError> {
        let f = reader!(param_double);
        let key = key_cstr(key)?;
        let mut v = 0f64;
        // SAFETY: a NUL-terminated key and a writable output.
        status_to(unsafe { f(self.id, key.as_ptr(), &mut v) })?;
        Ok(v)
    }

    /// The request's top-level boolean `key`.
    pub fn param_bool(&self, key: &str) -> Result<bool, ParamError> {
        let f = reader!(param_bool);
        let key = key_cstr(key)?;
        let mut v: std::ffi::c_int = 0;
        // SAFETY: a NUL-terminated key and a writable output.
        status_to(unsafe { f(self.id, key.as_ptr(), &mut v) })?;
        Ok(v != 0)
    }

    /// The request's `args` as the host splits them for C plugins, with
    /// argv\[0\] (the method) first, copied.
    pub fn args_argv(&self) -> Result<Vec<String>, ParamError> {
        let f = reader!(args_argv);
        let mut argc: std::ffi::c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: two writable outputs; the host keeps the array alive
        // while the call is pending, and we copy before returning.
        status_to(unsafe { f(self.id, &mut argc, &mut argv) })?;
        if argv.is_null() {
            return Err(ParamError::Other(ffi::STATUS_INVALID_ARGUMENT));
        }
        let n = usize::try_from(argc).unwrap_or(0);
        Ok((0..n)
            .map(|i| {
                // SAFETY: argc NUL-terminated words precede the NULL.
                let p = unsafe { *argv.add(i) };
                // SAFETY: each entry is a NUL-terminated host string.
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let message = if std::thread::panicking() {
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .map(|m| format!("Plugin failure: plugin panicked: {m}"))
                .unwrap_or_else(|| "Plugin failure: plugin panicked".to_owned())
        } else {
            "Plugin failure: plugin dropped the call without completing it".to_owned()
        };
        complete_raw(self.id, retcode::PLUGIN_FAILURE, &message, None);
    }
}

fn complete_raw(id: CallId, retcode: u32, message: &str, data_json: Option<&str>) -> Status {
    let Some(api) = host_api() else {
        return ffi::STATUS_INVALID_ARGUMENT;
    };
    let Some(complete) = api.complete else {
        return ffi::STATUS_INVALID_ARGUMENT;
    };
    let data = data_json.unwrap_or("");
    // SAFETY: pointers and lengths describe live slices; the host copies
    // them before it returns (header contract).
    unsafe {
        complete(
            id,
            retcode,
            message.as_ptr().cast::<c_char>(),
            message.len(),
            if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr().cast::<c_char>()
            },
            data.len(),
        )
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Routes the plugin's `log` records to the host's log callback.
struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        host_api().is_some_and(|api| metadata.level() as u32 <= api.max_log_level)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let text = format!("{}: {}", record.target(), record.args());
            host_log(record.level() as u32, &text);
        }
    }

    fn flush(&self) {}
}

fn host_log(level: u32, text: &str) {
    if let Some(log) = host_api().and_then(|api| api.log) {
        // SAFETY: a live slice; the host copies it before returning.
        unsafe { log(level, text.as_ptr().cast::<c_char>(), text.len()) };
    }
}

fn leak_cstr(s: &str) -> *const c_char {
    // Interior NULs cannot be represented; cut there (a spec is static
    // text written by the plugin author, so this is only a safety net).
    let bytes = s.split('\0').next().unwrap_or("");
    let c = CString::new(bytes).unwrap_or_default();
    Box::leak(c.into_boxed_c_str()).as_ptr()
}

/// Builds the descriptor once; called by the entry symbol that
/// [`export_plugin!`](crate::export_plugin) generates. Returns null if the
/// spec cannot be built (the host then refuses the file).
pub fn entry(make: fn() -> PluginSpec) -> *const PluginDescriptor {
    let built = panic::catch_unwind(|| {
        SPEC.get_or_init(|| {
            let spec = make();
            let mut methods: Vec<StaticStr> = spec
                .methods
                .iter()
                .map(|m| StaticStr(leak_cstr(m)))
                .collect();
            methods.push(StaticStr(std::ptr::null()));
            let descriptor = PluginDescriptor {
                abi_version: ffi::ABI_VERSION,
                size: std::mem::size_of::<PluginDescriptor>() as u32,
                name: leak_cstr(spec.name),
                version: leak_cstr(spec.version),
                description: leak_cstr(spec.description),
                methods: Box::leak(methods.into_boxed_slice()).as_ptr(),
                usage: leak_cstr(spec.usage),
                init: Some(init_trampoline),
                call: Some(call_trampoline),
                cancel: Some(cancel_trampoline),
                fini: Some(fini_trampoline),
            };
            Exported { spec, descriptor }
        }) as *const Exported
    });
    match built {
        // SAFETY: the pointer comes from a reference into the OnceLock
        // static, which lives as long as the library is mapped (forever).
        Ok(p) => unsafe { &(*p).descriptor },
        Err(_) => std::ptr::null(),
    }
}

fn spec() -> Option<&'static PluginSpec> {
    SPEC.get().map(|e| &e.spec)
}

/// # Safety
/// Called by the host with a pointer to its API table (or null, refused),
/// which stays valid for the life of the process (header contract).
unsafe extern "C" fn init_trampoline(host: *const HostApi) -> Status {
    if host.is_null() {
        return ffi::STATUS_INVALID_ARGUMENT;
    }
    HOST.store(host.cast_mut(), Ordering::Release);
    let result = panic::catch_unwind(|| {
        let _ = log::set_logger(&HostLogger);
        log::set_max_level(log::LevelFilter::Trace);
        panic::set_hook(Box::new(|info| {
            let text = match info.location() {
                Some(loc) => format!(
                    "{} at {}:{}",
                    panic_text(info.payload()),
                    loc.file(),
                    loc.line()
                ),
                None => panic_text(info.payload()),
            };
            host_log(1, &format!("plugin panicked: {text}"));
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
        let (Some(spec), Some(api)) = (spec(), host_api()) else {
            return ffi::STATUS_FAILED;
        };
        match spec.init {
            None => ffi::STATUS_OK,
            Some(init) => match init(&Host { api }) {
                Ok(()) => ffi::STATUS_OK,
                Err(InitError(reason)) => {
                    host_log(1, &format!("{}: init failed: {reason}", spec.name));
                    ffi::STATUS_FAILED
                }
            },
        }
    });
    result.unwrap_or(ffi::STATUS_FAILED)
}

/// # Safety
/// `request` must be null or valid for `request_len` bytes until return.
unsafe extern "C" fn call_trampoline(id: CallId, request: *const c_char, request_len: usize) {
    let bytes: &[u8] = if request.is_null() || request_len == 0 {
        &[]
    } else {
        // SAFETY: the host passes a live buffer of `request_len` bytes that
        // stays valid until this function returns (header contract).
        unsafe { std::slice::from_raw_parts(request.cast::<u8>(), request_len) }
    };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| match spec() {
        Some(spec) => (spec.call)(Call { id, done: false }, bytes),
        None => Call { id, done: false }.fail(
            retcode::PLUGIN_FAILURE,
            "Plugin failure: plugin not initialised",
        ),
    }));
    if let Err(payload) = outcome {
        // The Call was dropped while unwinding and has completed the call
        // already; this is only a fallback (complete is idempotent).
        let text = LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| panic_text(&*payload));
        complete_raw(
            id,
            retcode::PLUGIN_FAILURE,
            &format!("Plugin failure: plugin panicked: {text}"),
            None,
        );
    }
}

/// # Safety
/// No pointer crosses; `unsafe` only because the ABI type says so.
unsafe extern "C" fn cancel_trampoline(id: CallId) {
    let _ = panic::catch_unwind(|| {
        if let Some(cancel) = spec().and_then(|s| s.cancel) {
            cancel(id);
        }
    });
}

/// # Safety
/// No pointer crosses; `unsafe` only because the ABI type says so.
unsafe extern "C" fn fini_trampoline() {
    let _ = panic::catch_unwind(|| {
        if let Some(fini) = spec().and_then(|s| s.fini) {
            fini();
        }
    });
}

/// Exports a [`PluginSpec`] as the plugin's entry symbol
/// `basicagent_plugin_v1`. Use once per plugin crate (a `cdylib`):
///
/// ```
/// use basicagent_abi::sdk::{Call, PluginSpec};
///
/// fn hello(call: Call, _request: &[u8]) {
///     call.success(r#"{"greeting":"hello"}"#);
/// }
///
/// basicagent_abi::export_plugin!(PluginSpec {
///     name: "getinfo_hello",
///     version: env!("CARGO_PKG_VERSION"),
///     description: "says hello",
///     methods: &["getinfo.hello"],
///     usage: "no arguments",
///     init: None,
///     call: hello,
///     cancel: None,
///     fini: None,
/// });
/// # fn main() { assert!(!basicagent_plugin_v1().is_null()); }
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($spec:expr) => {
        /// The plugin's entry point (ABI v1).
        #[no_mangle]
        pub extern "C" fn basicagent_plugin_v1() -> *const $crate::ffi::PluginDescriptor {
            fn make() -> $crate::sdk::PluginSpec {
                $spec
            }
            $crate::sdk::entry(make)
        }
    };
}

/// Completes `id` again, bypassing [`Call`]'s once-only guard: only for the
/// test fixture that proves a second completion is ignored by the host.
#[doc(hidden)]
pub fn complete_again_for_tests(id: CallId) -> bool {
    complete_raw(id, retcode::SUCCESS, "", Some("{\"second\":true}")) == ffi::STATUS_UNKNOWN_CALL
}
