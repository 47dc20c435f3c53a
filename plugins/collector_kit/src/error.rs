//! The collectors' one error type, its protocol retcodes, and the call
//! glue every `getinfo.*` plugin ran by hand: serialise the data once,
//! complete with it, or fail with the error's retcode and text.
//!
//! Each variant's text is the one the collectors always answered (their
//! tests compare it byte for byte); a collector fills in its own names
//! (`call`, `what`) and, for refused values, its own message.

use std::path::PathBuf;

use basicagent_abi::{retcode, Call};
use serde::Serialize;

use crate::request::Refusal;

/// Why a `getinfo.*` call fails.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A value the args named does not exist (3021); the message is the
    /// collector's, usage included (`no interface "x"; usage: ...`).
    #[error("{0}")]
    InvalidValue(String),
    /// `-U NAME` names no user (3024).
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// `-G NAME` names no group (3024).
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// A file could not be read (3025).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A directory could not be listed (3025).
    #[error("cannot list {}: {source}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed (3025): `uname(2)`, `getifaddrs`.
    #[error("{call} failed: {source}")]
    Sys {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A helper thread could not be started (3025): `worker thread`.
    #[error("cannot start the {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The host offers nothing to collect from (3025); the message is the
    /// collector's (`no package database found ...`).
    #[error("{0}")]
    Unavailable(String),
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl CollectorError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            CollectorError::Refused(r) => r.retcode(),
            CollectorError::InvalidValue(_) => retcode::INVALID_PARAMS,
            CollectorError::UnknownUser(_) | CollectorError::UnknownGroup(_) => {
                retcode::UNKNOWN_USER
            }
            CollectorError::Read { .. }
            | CollectorError::List { .. }
            | CollectorError::Sys { .. }
            | CollectorError::Spawn { .. }
            | CollectorError::Unavailable(_)
            | CollectorError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }

    /// [`CollectorError::Read`] of `path`.
    pub fn read(path: impl Into<PathBuf>, source: std::io::Error) -> CollectorError {
        CollectorError::Read {
            path: path.into(),
            source,
        }
    }

    /// [`CollectorError::List`] of `path`.
    pub fn list(path: impl Into<PathBuf>, source: std::io::Error) -> CollectorError {
        CollectorError::List {
            path: path.into(),
            source,
        }
    }
}

/// The `data` JSON text of `value`, serialised once.
pub fn to_data<T: Serialize + ?Sized>(value: &T) -> Result<String, CollectorError> {
    serde_json::to_string(value).map_err(CollectorError::Serialise)
}

/// Completes `call` with `answer`: success with the data, or the error's
/// retcode and text.
pub fn complete(call: Call, answer: Result<String, CollectorError>) {
    match answer {
        Ok(data) => call.success(&data),
        Err(e) => call.fail(e.retcode(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[test]
    fn texts_and_retcodes_are_the_collectors() {
        let cases: Vec<(CollectorError, u32, &str)> = vec![
            (
                CollectorError::InvalidValue("no interface \"x\"; usage: U".into()),
                retcode::INVALID_PARAMS,
                "no interface \"x\"; usage: U",
            ),
            (
                CollectorError::UnknownUser("nobody2".into()),
                retcode::UNKNOWN_USER,
                "unknown user \"nobody2\"",
            ),
            (
                CollectorError::UnknownGroup("g".into()),
                retcode::UNKNOWN_USER,
                "unknown group \"g\"",
            ),
            (
                CollectorError::read("/proc/x", io(std::io::ErrorKind::NotFound)),
                retcode::PLUGIN_FAILURE,
                "cannot read /proc/x: entity not found",
            ),
            (
                CollectorError::list("/sys/class/net", io(std::io::ErrorKind::NotFound)),
                retcode::PLUGIN_FAILURE,
                "cannot list /sys/class/net: entity not found",
            ),
            (
                CollectorError::Sys {
                    call: "uname(2)",
                    source: io(std::io::ErrorKind::Other),
                },
                retcode::PLUGIN_FAILURE,
                "uname(2) failed: other error",
            ),
            (
                CollectorError::Spawn {
                    what: "worker thread",
                    source: io(std::io::ErrorKind::OutOfMemory),
                },
                retcode::PLUGIN_FAILURE,
                "cannot start the worker thread: out of memory",
            ),
            (
                CollectorError::Unavailable("no package database found".into()),
                retcode::PLUGIN_FAILURE,
                "no package database found",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!((e.retcode(), e.to_string()), (code, text.to_owned()));
        }
        let refused = crate::no_args(br#"{"args":"-x"}"#, "U").unwrap_err();
        let e = CollectorError::from(refused);
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
        assert!(e.to_string().ends_with("; usage: U"), "{e}");
        assert_eq!(to_data(&[1, 2]).unwrap(), "[1,2]");
    }
}
