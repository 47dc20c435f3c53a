//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;
use basicagent_plugin_kit::Refusal;

/// Why a `getinfo.processes` call fails.
#[derive(Debug, thiserror::Error)]
pub enum ProcessesError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
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
            ProcessesError::Refused(r) => r.retcode(),
            ProcessesError::UnknownUser(_) => retcode::UNKNOWN_USER,
            ProcessesError::ListProc { .. } | ProcessesError::Serialise(_) => {
                retcode::PLUGIN_FAILURE
            }
        }
    }
}
