//! The thin glue: checks the request, reads `/proc/meminfo` (path
//! injectable), parses and completes synchronously.

use std::io::Read;
use std::path::Path;

use basicagent_abi::{retcode, Call};
use basicagent_plugin_kit::{self as kit, Refusal};

use crate::parse::parse_meminfo;
use crate::USAGE;

/// Why a `getinfo.memory` call fails.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The request is not a JSON object (3020), or its args are refused
    /// (3021, with the usage).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `/proc/meminfo` cannot be read (3025).
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The data could not be serialised (3025).
    #[error("cannot serialise the data: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl MemoryError {
    /// The protocol retcode for this failure.
    pub fn retcode(&self) -> u32 {
        match self {
            MemoryError::Refused(r) => r.retcode(),
            MemoryError::Read { .. } | MemoryError::Serialise(_) => retcode::PLUGIN_FAILURE,
        }
    }
}

/// Checks that the request carries no arguments.
pub fn check_request(request: &[u8]) -> Result<(), MemoryError> {
    Ok(kit::no_args(request, USAGE)?)
}

/// Reads and parses `meminfo` (normally `/proc/meminfo`); the `data` JSON.
pub fn collect(meminfo: &Path) -> Result<String, MemoryError> {
    // /proc/meminfo is about 1.5 kB; one read call fills it.
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(meminfo)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| MemoryError::Read {
            path: meminfo.display().to_string(),
            source,
        })?;
    serde_json::to_string(&parse_meminfo(&buf)).map_err(MemoryError::Serialise)
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    match check_request(request).and_then(|()| collect(Path::new("/proc/meminfo"))) {
        Ok(data) => call.success(&data),
        Err(e) => call.fail(e.retcode(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_refused_3021_with_usage() {
        for req in [
            &br#"{"args":"-a"}"#[..],
            br#"{"args":1}"#,
            br#"{"args":"'x"}"#,
        ] {
            let e = check_request(req).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
            assert!(e.to_string().contains("swap_total"), "{e}");
        }
        assert!(check_request(br#"{"args":" "}"#).is_ok());
        assert_eq!(
            check_request(b"[]").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    #[test]
    fn fixture_file_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meminfo");
        std::fs::write(&p, "MemTotal: 2 kB\nMemAvailable: 1 kB\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(&collect(&p).unwrap()).unwrap();
        assert_eq!(v["total"], 2048);
        assert_eq!(v["used"], 1024);
        assert!(v["swap_total"].is_null());
        let e = collect(&dir.path().join("none")).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
    }
}
