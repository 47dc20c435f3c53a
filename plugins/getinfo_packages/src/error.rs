//! The one error type of the plugin, and its protocol retcodes.

use std::path::PathBuf;

use basicagent_abi::retcode;
use basicagent_plugin_kit::Refusal;

/// Why a `getinfo.packages` call fails.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
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
            PackagesError::Refused(r) => r.retcode(),
            PackagesError::Read { .. }
            | PackagesError::RpmUnsupported(_)
            | PackagesError::NoDatabase(_)
            | PackagesError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}
