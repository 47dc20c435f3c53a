//! The thin glue: request → [`Selection`], read the two files (paths
//! injectable), run the core, complete at once.

use std::path::{Path, PathBuf};

use basicagent_abi::Call;
use basicagent_collector_kit as kit;

use crate::args::{parse_words, Selection};
use crate::{collect, CollectorError, USAGE};

/// Where the files are (the defaults are /etc's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub group: PathBuf,
    pub passwd: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            group: "/etc/group".into(),
            passwd: "/etc/passwd".into(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CollectorError> {
    std::fs::read(path).map_err(|source| CollectorError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The selection a request asks for.
pub fn parse_request(request: &[u8]) -> Result<Selection, CollectorError> {
    Ok(kit::parse_request(request, USAGE, parse_words)?)
}

/// Request in, `data` JSON out.
pub fn answer(request: &[u8], paths: &Paths) -> Result<String, CollectorError> {
    let sel = parse_request(request)?;
    let group = read(&paths.group)?;
    let passwd = read(&paths.passwd)?;
    collect(&group, &passwd, &sel)
}

/// The plugin's `call`: answers synchronously.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(call, answer(request, &Paths::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;

    fn fixture() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            group: dir.path().join("group"),
            passwd: dir.path().join("passwd"),
        };
        std::fs::write(&paths.group, "root:x:0:\nwheel:x:10:alice\n").unwrap();
        std::fs::write(
            &paths.passwd,
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:10::/h:/bin/sh\n",
        )
        .unwrap();
        (dir, paths)
    }

    #[test]
    fn answers() {
        let (_d, paths) = fixture();
        let v: serde_json::Value =
            serde_json::from_str(&answer(br#"{"args":"-G wheel"}"#, &paths).unwrap()).unwrap();
        assert_eq!(v["groups"][0]["members"], serde_json::json!(["alice"]));
        assert_eq!(
            v["groups"][0]["primary_users"],
            serde_json::json!(["alice"])
        );
        let v: serde_json::Value = serde_json::from_str(&answer(b"{}", &paths).unwrap()).unwrap();
        assert_eq!(v["count"], 2);
    }

    #[test]
    fn error_codes() {
        let (_d, paths) = fixture();
        let code = |req: &[u8]| answer(req, &paths).unwrap_err().retcode();
        assert_eq!(code(b"[]"), retcode::INVALID_REQUEST);
        assert_eq!(code(b"nope"), retcode::INVALID_REQUEST);
        assert_eq!(code(br#"{"args":"-x"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":7}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":"-G nosuch"}"#), retcode::UNKNOWN_USER);
        let e = answer(br#"{"args":"-x"}"#, &paths).unwrap_err().to_string();
        assert!(e.contains("-G NAME") && e.contains("primary_users"), "{e}");
        let missing = Paths {
            group: "/nonexistent/group".into(),
            passwd: paths.passwd.clone(),
        };
        let e = answer(b"{}", &missing).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
        assert!(e.to_string().contains("/nonexistent/group"));
    }
}
