//! Result codes shared by plugins and hosts (`BA_RETCODE_*` in the header).
//!
//! The wire protocol's codes; values never change meaning.

/// `2 Normal termination`.
pub const SUCCESS: u32 = 2;
/// `3020 Invalid request`.
pub const INVALID_REQUEST: u32 = 3020;
/// `3021 Invalid params`.
pub const INVALID_PARAMS: u32 = 3021;
/// `3022 Unknown method`.
pub const UNKNOWN_METHOD: u32 = 3022;
/// `3023 Timeout`.
pub const TIMEOUT: u32 = 3023;
/// `3024 Unknown user or group`.
pub const UNKNOWN_USER: u32 = 3024;
/// `3025 Plugin failure`.
pub const PLUGIN_FAILURE: u32 = 3025;
/// `3026 Busy`.
pub const BUSY: u32 = 3026;
/// `3027 Permission denied`.
pub const PERMISSION_DENIED: u32 = 3027;
/// `3028 Cancelled`.
pub const CANCELLED: u32 = 3028;

/// The standard message of a retcode, as the protocol's table names it.
pub fn message(retcode: u32) -> &'static str {
    match retcode {
        SUCCESS => "Normal termination",
        INVALID_REQUEST => "Invalid request",
        INVALID_PARAMS => "Invalid params",
        UNKNOWN_METHOD => "Unknown method",
        TIMEOUT => "Timeout",
        UNKNOWN_USER => "Unknown user or group",
        PLUGIN_FAILURE => "Plugin failure",
        BUSY => "Busy",
        PERMISSION_DENIED => "Permission denied",
        CANCELLED => "Cancelled",
        _ => "Failure",
    }
}
