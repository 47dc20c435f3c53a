//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;
use basicagent_plugin_kit::Refusal;

/// Why a `getinfo.sockets` call fails.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
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
            SocketsError::Refused(r) => r.retcode(),
            SocketsError::Read { .. } | SocketsError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
