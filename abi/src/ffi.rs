//! The `#[repr(C)]` mirror of `include/basicagent_plugin.h`, field for field.
//!
//! The header is the contract; this file follows it. `tests/loader.rs`
//! compiles C plugins against the header and loads them through these types,
//! and checks the sizes and offsets the C compiler computes against ours.

use std::ffi::{c_char, c_int};

/// The ABI major version (`BA_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// The entry symbol (`BA_ENTRY_SYMBOL_V1`), NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL_V1: &[u8] = b"basicagent_plugin_v1\0";

/// `ba_status`.
pub type Status = u32;
/// `BA_STATUS_OK`.
pub const STATUS_OK: Status = 0;
/// `BA_STATUS_UNKNOWN_CALL`.
pub const STATUS_UNKNOWN_CALL: Status = 1;
/// `BA_STATUS_INVALID_ARGUMENT`.
pub const STATUS_INVALID_ARGUMENT: Status = 2;
/// `BA_STATUS_FAILED`.
pub const STATUS_FAILED: Status = 3;
/// `BA_STATUS_NOT_FOUND`: no such top-level key, or its value is null.
pub const STATUS_NOT_FOUND: Status = 4;
/// `BA_STATUS_WRONG_TYPE`: the value has another type or does not fit.
pub const STATUS_WRONG_TYPE: Status = 5;
/// `BA_STATUS_BAD_REQUEST`: the request is not one JSON object.
pub const STATUS_BAD_REQUEST: Status = 6;
/// `BA_STATUS_BAD_ARGS`: `args` does not split, or a word holds a NUL.
pub const STATUS_BAD_ARGS: Status = 7;

/// `ba_call_id`: identifies one call, never 0.
pub type CallId = u64;

/// `ba_host_api`.
#[repr(C)]
pub struct HostApi {
    pub abi_version: u32,
    pub size: u32,
    pub log: Option<unsafe extern "C" fn(level: u32, msg: *const c_char, msg_len: usize)>,
    pub complete: Option<
        unsafe extern "C" fn(
            call: CallId,
            retcode: u32,
            message: *const c_char,
            message_len: usize,
            data: *const c_char,
            data_len: usize,
        ) -> Status,
    >,
    pub config: *const c_char,
    pub config_len: usize,
    pub max_log_level: u32,
    // ABI 1.1: present when `size` covers them (see `HostApi::has`).
    pub param_str: Option<ParamStrFn>,
    pub param_int64: Option<ParamInt64Fn>,
    pub param_double: Option<ParamDoubleFn>,
    pub param_bool: Option<ParamBoolFn>,
    pub args_argv: Option<ArgsArgvFn>,
}

/// `param_str`.
pub type ParamStrFn = unsafe extern "C" fn(
    call: CallId,
    key: *const c_char,
    val: *mut *const c_char,
    len: *mut usize,
) -> Status;
/// `param_int64`.
pub type ParamInt64Fn =
    unsafe extern "C" fn(call: CallId, key: *const c_char, val: *mut i64) -> Status;
/// `param_double`.
pub type ParamDoubleFn =
    unsafe extern "C" fn(call: CallId, key: *const c_char, val: *mut f64) -> Status;
/// `param_bool`.
pub type ParamBoolFn =
    unsafe extern "C" fn(call: CallId, key: *const c_char, val: *mut c_int) -> Status;
/// `args_argv`.
pub type ArgsArgvFn =
    unsafe extern "C" fn(call: CallId, argc: *mut c_int, argv: *mut *mut *mut c_char) -> Status;

/// The size of the ABI 1.0 host table (up to and including
/// `max_log_level`, padded): what an old host announces in `size`.
pub const HOST_API_V1_0_SIZE: u32 = std::mem::offset_of!(HostApi, param_str) as u32;

impl HostApi {
    /// Whether the table, as the host announced its `size`, covers the
    /// field that ends at byte `end` (`offset_of!` + its size): the Rust
    /// form of the header's `BA_HOST_HAS`.
    pub fn covers(&self, end: usize) -> bool {
        self.size as usize >= end
    }
}

// SAFETY: the host api table is immutable after construction and its
// `config` pointer refers to bytes that live as long as the table; the
// function pointers are thread-safe by contract (see the header).
unsafe impl Sync for HostApi {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for HostApi {}

/// A `const char *` that may sit in a `static` (a method name in the
/// descriptor's NULL-terminated list). Same layout as the pointer.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct StaticStr(pub *const c_char);

// SAFETY: a StaticStr only ever points to immutable `'static` data.
unsafe impl Sync for StaticStr {}

/// `ba_plugin_descriptor`.
#[repr(C)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    pub size: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub description: *const c_char,
    pub methods: *const StaticStr,
    pub usage: *const c_char,
    pub init: Option<unsafe extern "C" fn(host: *const HostApi) -> Status>,
    pub call:
        Option<unsafe extern "C" fn(call: CallId, request: *const c_char, request_len: usize)>,
    pub cancel: Option<unsafe extern "C" fn(call: CallId)>,
    pub fini: Option<unsafe extern "C" fn()>,
}

// SAFETY: a descriptor is static and immutable; its pointers refer to
// static strings and its functions are callable from any thread.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as above; nothing in a descriptor is tied to a thread.
unsafe impl Send for PluginDescriptor {}

/// `ba_plugin_entry_v1`.
pub type EntryV1 = unsafe extern "C" fn() -> *const PluginDescriptor;

/// The first two fields every versioned struct starts with; the loader
/// reads only these before it knows the struct is big enough.
#[repr(C)]
pub struct VersionHeader {
    pub abi_version: u32,
    pub size: u32,
}
