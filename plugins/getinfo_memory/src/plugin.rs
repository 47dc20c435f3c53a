//! The thin glue: checks the request, reads `/proc/meminfo` (path
//! injectable), parses and completes synchronously.

use std::io::Read;
use std::path::Path;

use basicagent_abi::Call;
use basicagent_collector_kit::{self as kit, CollectorError};

use crate::parse::parse_meminfo;
use crate::USAGE;

/// Checks that the request carries no arguments.
pub fn check_request(request: &[u8]) -> Result<(), CollectorError> {
    Ok(kit::no_args(request, USAGE)?)
}

/// Reads and parses `meminfo` (normally `/proc/meminfo`); the `data` JSON.
pub fn collect(meminfo: &Path) -> Result<String, CollectorError> {
    // /proc/meminfo is about 1.5 kB; one read call fills it.
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(meminfo)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| CollectorError::Read {
            path: meminfo.to_path_buf(),
            source,
        })?;
    serde_json::to_string(&parse_meminfo(&buf)).map_err(CollectorError::Serialise)
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(
        call,
        check_request(request).and_then(|()| collect(Path::new("/proc/meminfo"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;

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
