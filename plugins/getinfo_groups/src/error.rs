//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;
use basicagent_plugin_kit::Refusal;

/// Why a `getinfo.groups` call fails.
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `-G NAME` names no group (3024).
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// /etc/group or /etc/passwd cannot be read (3025).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl GroupsError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            GroupsError::Refused(r) => r.retcode(),
            GroupsError::UnknownGroup(_) => retcode::UNKNOWN_USER,
            GroupsError::Read { .. } | GroupsError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
