//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;

use crate::args::{ArgsError, RequestError};
use crate::USAGE;

/// Why a `getinfo.packages` call fails.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    /// The request is not a JSON object (3020).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The `args` are refused (3021); the message carries the usage.
    #[error("{0}\n{USAGE}")]
    Args(#[from] ArgsError),
    /// The dpkg status file cannot be opened or read (3025).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only an rpm database is present (3025).
    #[error("rpm database present at {} but not supported (getinfo.packages reads the dpkg database only)", .0.display())]
    RpmUnsupported(PathBuf),
    /// No package database at all (3025).
    #[error("no package database found (no {}, no rpm database)", .0.display())]
    NoDatabase(PathBuf),
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl PackagesError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            PackagesError::Request(_) => retcode::INVALID_REQUEST,
            PackagesError::Args(_) => retcode::INVALID_PARAMS,
            PackagesError::Read { .. }
            | PackagesError::RpmUnsupported(_)
            | PackagesError::NoDatabase(_)
            | PackagesError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
