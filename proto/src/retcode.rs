//! Result codes (protocol §5): the one table. Values never change meaning.
//!
//! `abi/src/retcode.rs` (the plugin ABI's Rust mirror) and the
//! `BA_RETCODE_*` lines of `abi/include/basicagent_plugin.h` repeat it for
//! plugins, which do not depend on this crate; `tests/retcode_table.rs`
//! checks that the three agree (names, values, messages).

/// A protocol result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Retcode(pub u32);

impl Retcode {
    pub const SUCCESS: Retcode = Retcode(2);
    pub const INVALID_REQUEST: Retcode = Retcode(3020);
    pub const INVALID_PARAMS: Retcode = Retcode(3021);
    pub const UNKNOWN_METHOD: Retcode = Retcode(3022);
    pub const TIMEOUT: Retcode = Retcode(3023);
    pub const UNKNOWN_USER: Retcode = Retcode(3024);
    pub const PLUGIN_FAILURE: Retcode = Retcode(3025);
    pub const BUSY: Retcode = Retcode(3026);
    pub const PERMISSION_DENIED: Retcode = Retcode(3027);
    pub const CANCELLED: Retcode = Retcode(3028);

    /// Every code this version knows, in table order.
    pub const ALL: [Retcode; 10] = [
        Retcode::SUCCESS,
        Retcode::INVALID_REQUEST,
        Retcode::INVALID_PARAMS,
        Retcode::UNKNOWN_METHOD,
        Retcode::TIMEOUT,
        Retcode::UNKNOWN_USER,
        Retcode::PLUGIN_FAILURE,
        Retcode::BUSY,
        Retcode::PERMISSION_DENIED,
        Retcode::CANCELLED,
    ];

    /// The code's name in the table (`"BUSY"` for 3026): the suffix of
    /// its `BA_RETCODE_*` name in the C header and its constant's name in
    /// the abi. `None` for a code this version does not know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            2 => "SUCCESS",
            3020 => "INVALID_REQUEST",
            3021 => "INVALID_PARAMS",
            3022 => "UNKNOWN_METHOD",
            3023 => "TIMEOUT",
            3024 => "UNKNOWN_USER",
            3025 => "PLUGIN_FAILURE",
            3026 => "BUSY",
            3027 => "PERMISSION_DENIED",
            3028 => "CANCELLED",
            _ => return None,
        })
    }

    /// The standard message of the protocol's table.
    pub fn message(self) -> &'static str {
        match self.0 {
            2 => "Normal termination",
            3020 => "Invalid request",
            3021 => "Invalid params",
            3022 => "Unknown method",
            3023 => "Timeout",
            3024 => "Unknown user or group",
            3025 => "Plugin failure",
            3026 => "Busy",
            3027 => "Permission denied",
            3028 => "Cancelled",
            _ => "Failure",
        }
    }

    /// `"success"` for 2, `"failed"` for everything else.
    pub fn resp(self) -> &'static str {
        if self == Retcode::SUCCESS {
            "success"
        } else {
            "failed"
        }
    }

    pub fn is_success(self) -> bool {
        self == Retcode::SUCCESS
    }
}
