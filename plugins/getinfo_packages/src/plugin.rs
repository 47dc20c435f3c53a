//! The glue: request → [`Selection`], find the database (paths
//! injectable), stream the dpkg status file into the `data` JSON, complete
//! at once.

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use basicagent_abi::Call;
use basicagent_collector_kit as kit;

use crate::args::{parse_words, Selection};
use crate::dpkg::{for_each_installed, matches};
use crate::{CollectorError, USAGE};

/// Where the package databases are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The dpkg status file.
    pub dpkg_status: PathBuf,
    /// rpm database files, any of which means "rpm is used here".
    pub rpm: Vec<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            dpkg_status: "/var/lib/dpkg/status".into(),
            rpm: [
                "/var/lib/rpm/rpmdb.sqlite",
                "/var/lib/rpm/Packages",
                "/var/lib/rpm/Packages.db",
                "/usr/lib/sysimage/rpm/rpmdb.sqlite",
                "/usr/lib/sysimage/rpm/Packages.db",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

/// The selection a request asks for.
pub fn parse_request(request: &[u8]) -> Result<Selection, CollectorError> {
    Ok(kit::parse_request(request, USAGE, parse_words)?)
}

/// Streams the installed packages of `status` (a dpkg status file) that
/// `sel` asks for into the `data` object. `note` is added as is.
pub fn render(
    status: impl Read,
    sel: &Selection,
    note: Option<&str>,
) -> Result<String, RenderError> {
    let mut out: Vec<u8> = Vec::with_capacity(if sel.count_only { 64 } else { 128 * 1024 });
    out.extend_from_slice(br#"{"manager":"dpkg","#);
    if !sel.count_only {
        out.extend_from_slice(br#""packages":["#);
    }
    let mut count = 0usize;
    let mut failed = None;
    for_each_installed(BufReader::with_capacity(64 * 1024, status), |p| {
        if sel.name.as_deref().is_some_and(|n| !matches(p, n)) {
            return ControlFlow::Continue(());
        }
        if !sel.count_only {
            if count > 0 {
                out.push(b',');
            }
            if let Err(e) = serde_json::to_writer(&mut out, p) {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        count += 1;
        ControlFlow::Continue(())
    })
    .map_err(RenderError::Io)?;
    if let Some(e) = failed {
        return Err(RenderError::Json(e));
    }
    if !sel.count_only {
        out.extend_from_slice(b"],");
    }
    out.extend_from_slice(format!(r#""count":{count}"#).as_bytes());
    if let Some(note) = note {
        out.extend_from_slice(br#","note":"#);
        serde_json::to_writer(&mut out, note).map_err(RenderError::Json)?;
    }
    out.push(b'}');
    // serde_json writes UTF-8 and the rest is ASCII.
    String::from_utf8(out).map_err(|e| RenderError::Json(serde::ser::Error::custom(e)))
}

/// Why [`render`] failed.
#[derive(Debug)]
pub enum RenderError {
    Io(std::io::Error),
    Json(serde_json::Error),
}

/// The first rpm database file that exists.
fn rpm_present(paths: &Paths) -> Option<&Path> {
    paths.rpm.iter().map(PathBuf::as_path).find(|p| p.exists())
}

/// Request in, `data` JSON out.
pub fn answer(request: &[u8], paths: &Paths) -> Result<String, CollectorError> {
    let sel = parse_request(request)?;
    let rpm = rpm_present(paths);
    let file = match File::open(&paths.dpkg_status) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(match rpm {
                Some(rpm) => CollectorError::Unavailable(format!(
                    "rpm database present at {} but not supported (getinfo.packages reads the dpkg database only)",
                    rpm.display()
                )),
                None => CollectorError::Unavailable(format!(
                    "no package database found (no {}, no rpm database)",
                    paths.dpkg_status.display()
                )),
            })
        }
        Err(source) => {
            return Err(CollectorError::Read {
                path: paths.dpkg_status.clone(),
                source,
            })
        }
    };
    let note = rpm.map(|p| {
        format!(
            "rpm database present at {} but not supported: only dpkg packages are listed",
            p.display()
        )
    });
    render(file, &sel, note.as_deref()).map_err(|e| match e {
        RenderError::Io(source) => CollectorError::Read {
            path: paths.dpkg_status.clone(),
            source,
        },
        RenderError::Json(e) => CollectorError::Serialise(e),
    })
}

/// The plugin's `call`: answers synchronously.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(call, answer(request, &Paths::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use serde_json::{json, Value};

    const STATUS: &str = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\n\
Version: 5.2\nInstalled-Size: 7164\n\nPackage: gone\nStatus: deinstall ok config-files\n\
Version: 1\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
Source: glibc (2.36)\nVersion: 2.36\n\nPackage: libc6\nStatus: install ok installed\n\
Architecture: i386\nSource: glibc (2.36)\nVersion: 2.36\n";

    fn fixture(rpm: bool) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            dpkg_status: dir.path().join("status"),
            rpm: vec![dir.path().join("rpmdb.sqlite")],
        };
        std::fs::write(&paths.dpkg_status, STATUS).unwrap();
        if rpm {
            std::fs::write(&paths.rpm[0], "SQLite format 3\0").unwrap();
        }
        (dir, paths)
    }

    fn run(args: &str, paths: &Paths) -> Value {
        let req = json!({ "args": args }).to_string();
        serde_json::from_str(&answer(req.as_bytes(), paths).unwrap()).unwrap()
    }

    #[test]
    fn all_one_and_count() {
        let (_d, paths) = fixture(false);
        let v = run("", &paths);
        assert_eq!(v["manager"], "dpkg");
        assert_eq!(v["count"], 3);
        assert_eq!(
            v["packages"][0],
            json!({"name":"bash","version":"5.2","architecture":"amd64",
                   "status":"install ok installed","installed_size":7164,"source":"bash"})
        );
        assert!(v.get("note").is_none());
        let v = run("-n libc6", &paths);
        assert_eq!(v["count"], 2);
        assert_eq!(v["packages"][1]["source"], "glibc");
        let v = run("-n libc6:i386", &paths);
        assert_eq!(v["count"], 1);
        assert_eq!(v["packages"][0]["architecture"], "i386");
        assert_eq!(run("-c", &paths), json!({"manager":"dpkg","count":3}));
        assert_eq!(
            run("-c -n bash", &paths),
            json!({"manager":"dpkg","count":1})
        );
    }

    #[test]
    fn not_installed_is_empty_success() {
        let (_d, paths) = fixture(false);
        for name in ["gone", "nosuch", "bash:i386"] {
            let v = run(&format!("-n {name}"), &paths);
            assert_eq!(v, json!({"manager":"dpkg","packages":[],"count":0}));
        }
    }

    #[test]
    fn rpm_detection() {
        let (_d, paths) = fixture(true);
        let v = run("-c", &paths);
        assert_eq!(v["count"], 3);
        assert!(v["note"].as_str().unwrap().contains("not supported"));
        std::fs::remove_file(&paths.dpkg_status).unwrap();
        let e = answer(b"{}", &paths).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
        assert!(e.to_string().contains("rpm database present at"), "{e}");
        std::fs::remove_file(&paths.rpm[0]).unwrap();
        let e = answer(b"{}", &paths).unwrap_err();
        assert!(matches!(e, CollectorError::Unavailable(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "no package database found (no {}, no rpm database)",
                paths.dpkg_status.display()
            )
        );
    }

    #[test]
    fn error_codes() {
        let (_d, paths) = fixture(false);
        let code = |req: &[u8]| answer(req, &paths).unwrap_err().retcode();
        assert_eq!(code(b"[]"), retcode::INVALID_REQUEST);
        assert_eq!(code(br#"{"args":"-x"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":"bash"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":false}"#), retcode::INVALID_PARAMS);
        let e = answer(br#"{"args":"-q"}"#, &paths).unwrap_err().to_string();
        assert!(e.contains("-n NAME") && e.contains("installed_size"), "{e}");
        let dir = Paths {
            dpkg_status: _d.path().to_owned(),
            rpm: vec![],
        };
        let e = answer(b"{}", &dir).unwrap_err();
        assert!(matches!(e, CollectorError::Read { .. }), "a directory: {e}");
    }
}
