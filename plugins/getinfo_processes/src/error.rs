//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;

use crate::args::{ArgsError, RequestError};
use crate::USAGE;

/// Why a `getinfo.processes` call fails.
#[derive(Debug, thiserror::Error)]
pub enum ProcessesError {
    /// The request is not a JSON object (3020).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The `args` are refused (3021); the message carries the usage.
    #[error("{0}\n{USAGE}")]
    Args(#[from] ArgsError),
    /// `-U NAME` names no account of /etc/passwd (3024).
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The /proc directory cannot be listed (3025).
    #[error("cannot list {}: {source}", path.display())]
    ListProc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl ProcessesError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            ProcessesError::Request(_) => retcode::INVALID_REQUEST,
            ProcessesError::Args(_) => retcode::INVALID_PARAMS,
            ProcessesError::UnknownUser(_) => retcode::UNKNOWN_USER,
            ProcessesError::ListProc { .. } | ProcessesError::Serialise(_) => {
                retcode::PLUGIN_FAILURE
            }
        }
    }
}
