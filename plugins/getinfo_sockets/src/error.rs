//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;

use crate::args::{ArgsError, RequestError};
use crate::USAGE;

/// Why a `getinfo.sockets` call fails.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// The request is not a JSON object (3020).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The `args` are refused (3021); the message carries the usage.
    #[error("{0}\n{USAGE}")]
    Args(#[from] ArgsError),
    /// None of the /proc/net tables asked for could be read (3025).
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

impl SocketsError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            SocketsError::Request(_) => retcode::INVALID_REQUEST,
            SocketsError::Args(_) => retcode::INVALID_PARAMS,
            SocketsError::Read { .. } | SocketsError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
