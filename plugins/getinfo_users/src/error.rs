//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;
use basicagent_plugin_kit::Refusal;

/// Why a `getinfo.users` call fails.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `-U NAME` names no account (3024).
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// /etc/passwd (or /etc/group) cannot be read (3025).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The NSS lookup thread could not be started (3025).
    #[error("cannot start the NSS lookup thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl UsersError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            UsersError::Refused(r) => r.retcode(),
            UsersError::UnknownUser(_) => retcode::UNKNOWN_USER,
            UsersError::Read { .. } | UsersError::Spawn(_) | UsersError::Serialise(_) => {
                retcode::PLUGIN_FAILURE
            }
        }
    }
}
