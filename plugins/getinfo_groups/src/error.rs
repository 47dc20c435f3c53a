//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;

use crate::args::{ArgsError, RequestError};
use crate::USAGE;

/// Why a `getinfo.groups` call fails.
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// The request is not a JSON object (3020).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The `args` are refused (3021); the message carries the usage.
    #[error("{0}\n{USAGE}")]
    Args(#[from] ArgsError),
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
            GroupsError::Request(_) => retcode::INVALID_REQUEST,
            GroupsError::Args(_) => retcode::INVALID_PARAMS,
            GroupsError::UnknownGroup(_) => retcode::UNKNOWN_USER,
            GroupsError::Read { .. } | GroupsError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
