//! The thin glue: request → [`Selection`], read the files (paths
//! injectable), decide shadow access from the euid, run the core, and
//! complete. Only the NSS fallback leaves the caller's thread.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use basicagent_abi::Call;
use basicagent_collector_kit as kit;

use crate::args::{parse_words, Selection, SYNOPSIS};
use crate::report::{collect, ShadowSource, Sources};
use crate::{nss, CollectorError};

/// Where the account files are (the defaults are /etc's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub shadow: PathBuf,
    pub login_defs: PathBuf,
    pub shells: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            shadow: "/etc/shadow".into(),
            login_defs: "/etc/login.defs".into(),
            shells: "/etc/shells".into(),
        }
    }
}

/// The files' contents, owned (so the NSS thread can take them along).
#[derive(Debug, Clone)]
pub struct Files {
    pub passwd: Vec<u8>,
    pub group: Vec<u8>,
    pub login_defs: Option<Vec<u8>>,
    pub shells: Option<Vec<u8>>,
    /// `Err`: the `shadow_note`.
    pub shadow: Result<Vec<u8>, String>,
}

impl Files {
    /// Reads the files. /etc/passwd and /etc/group must be readable;
    /// login.defs and shells fall back to defaults; /etc/shadow is read
    /// only when `euid` is 0.
    pub fn read(paths: &Paths, euid: u32) -> Result<Files, CollectorError> {
        let must = |path: &PathBuf| {
            fs::read(path).map_err(|source| CollectorError::Read {
                path: path.clone(),
                source,
            })
        };
        let may = |path: &PathBuf| match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                log::debug!("{}: {e}; using defaults", path.display());
                None
            }
        };
        let shadow = if euid != 0 {
            Err(format!(
                "not running as root (euid {euid}): {} was not read, so no user has a \"shadow\" object",
                paths.shadow.display()
            ))
        } else {
            fs::read(&paths.shadow).map_err(|e| {
                format!(
                    "cannot read {}: {e}; no user has a \"shadow\" object",
                    paths.shadow.display()
                )
            })
        };
        Ok(Files {
            passwd: must(&paths.passwd)?,
            group: must(&paths.group)?,
            login_defs: may(&paths.login_defs),
            shells: may(&paths.shells),
            shadow,
        })
    }

    /// Borrowed view for the core.
    pub fn sources(&self) -> Sources<'_> {
        Sources {
            passwd: &self.passwd,
            group: &self.group,
            login_defs: self.login_defs.as_deref(),
            shells: self.shells.as_deref(),
            shadow: match &self.shadow {
                Ok(bytes) => ShadowSource::Readable(bytes),
                Err(note) => ShadowSource::Unavailable(note),
            },
        }
    }
}

/// The selection a request asks for: `args` absent, null or blank is -A.
pub fn parse_request(request: &[u8]) -> Result<Selection, CollectorError> {
    Ok(kit::parse_request(request, SYNOPSIS, parse_words)?)
}

/// What to do with a call once the files were consulted.
#[derive(Debug)]
pub enum Outcome {
    /// Complete with this `data` or error.
    Done(Result<String, CollectorError>),
    /// `-U NAME` is not in the passwd file: ask NSS (may block).
    AskNss(String),
}

/// The files path: request in, outcome out; no NSS.
pub fn answer(request: &[u8], paths: &Paths, euid: u32) -> (Outcome, Option<Files>) {
    let sel = match parse_request(request) {
        Ok(sel) => sel,
        Err(e) => return (Outcome::Done(Err(e)), None),
    };
    let files = match Files::read(paths, euid) {
        Ok(f) => f,
        Err(e) => return (Outcome::Done(Err(e)), None),
    };
    match collect(&files.sources(), &sel) {
        Err(CollectorError::UnknownUser(name)) => (Outcome::AskNss(name), Some(files)),
        other => (Outcome::Done(other), Some(files)),
    }
}

/// The NSS path for `-U NAME`: 3024 if NSS does not know the name either.
pub fn answer_nss(name: &str, files: &Files) -> Result<String, CollectorError> {
    match nss::lookup(name) {
        Some(user) => nss::render_user(&user, &files.sources()),
        None => Err(CollectorError::UnknownUser(name.to_owned())),
    }
}

/// The plugin's `call`: files are read and answered at once; an unknown
/// `-U NAME` goes to a short-lived thread for the NSS lookup, which
/// completes the call from there.
pub fn call(call: Call, request: &[u8]) {
    let (outcome, files) = answer(request, &Paths::default(), uzers::get_effective_uid());
    let (name, files) = match (outcome, files) {
        (Outcome::Done(result), _) => return kit::complete(call, result),
        (Outcome::AskNss(name), Some(files)) => (name, files),
        (Outcome::AskNss(name), None) => {
            return kit::complete(call, Err(CollectorError::UnknownUser(name)))
        }
    };
    // The call goes to the thread through a slot, so that it can be
    // failed here with a clear message if the thread cannot start.
    let slot = Arc::new(Mutex::new(Some(call)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("getinfo-users-nss".into())
        .spawn(move || {
            let call = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(call) = call {
                kit::complete(call, answer_nss(&name, &files));
            }
        });
    if let Err(e) = spawned {
        let call = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(call) = call {
            kit::complete(
                call,
                Err(CollectorError::Spawn {
                    what: "NSS lookup thread",
                    source: e,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;

    fn fixture() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(
            p("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        )
        .unwrap();
        fs::write(p("group"), "root:x:0:\nalice:x:1000:\nsudo:x:27:alice\n").unwrap();
        fs::write(
            p("shadow"),
            "root:$6$SALT$HASH:19000:0:99999:7:::\nalice:!:19001:0:99999:7:::\n",
        )
        .unwrap();
        fs::write(p("shells"), "/bin/bash\n").unwrap();
        let paths = Paths {
            passwd: p("passwd"),
            group: p("group"),
            shadow: p("shadow"),
            login_defs: p("no-login.defs"),
            shells: p("shells"),
        };
        (dir, paths)
    }

    fn done(request: &str, paths: &Paths, euid: u32) -> Result<serde_json::Value, CollectorError> {
        match answer(request.as_bytes(), paths, euid).0 {
            Outcome::Done(r) => r.map(|s| serde_json::from_str(&s).unwrap()),
            Outcome::AskNss(n) => panic!("unexpected NSS lookup for {n}"),
        }
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request(b"").unwrap(), Selection::All);
        assert_eq!(
            parse_request(br#"{"method":"getinfo.users"}"#).unwrap(),
            Selection::All
        );
        assert_eq!(parse_request(br#"{"args":null}"#).unwrap(), Selection::All);
        assert_eq!(parse_request(br#"{"args":""}"#).unwrap(), Selection::All);
        assert_eq!(
            parse_request(br#"{"args":"-u"}"#).unwrap(),
            Selection::Normal
        );
        assert_eq!(
            parse_request(br#"{"args":"-U \"a b\""}"#).unwrap(),
            Selection::One("a b".into())
        );
        assert_eq!(
            parse_request(b"[]").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
        assert_eq!(
            parse_request(b"{").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    #[test]
    fn bad_args_are_3021_with_usage() {
        for args in [
            r#""-x""#,
            r#""-A -S""#,
            r#""root""#,
            r#""-U 'x""#,
            "1",
            r#"["-A"]"#,
            r#""-U""#,
        ] {
            let req = format!(r#"{{"method":"getinfo.users","args":{args}}}"#);
            let e = parse_request(req.as_bytes()).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS, "{args}");
            let msg = e.to_string();
            assert!(
                msg.contains("usage: getinfo.users [-A | -u | -S | -U NAME]"),
                "{msg}"
            );
        }
    }

    #[test]
    fn root_gets_shadow_without_hash() {
        let (_dir, paths) = fixture();
        let v = done(r#"{"args":"-A"}"#, &paths, 0).unwrap();
        assert_eq!(v["users"][0]["shadow"]["password"], "set");
        assert_eq!(v["users"][1]["shadow"]["password"], "locked");
        assert!(v.get("shadow_note").is_none());
        assert!(!v.to_string().contains('$'));
        assert!(!v.to_string().contains("SALT"));
    }

    #[test]
    fn non_root_gets_a_note() {
        let (_dir, paths) = fixture();
        let v = done(r#"{"args":"-A"}"#, &paths, 1000).unwrap();
        assert!(v["shadow_note"]
            .as_str()
            .unwrap()
            .contains("not running as root"));
        assert!(v["users"][0].get("shadow").is_none());
    }

    #[test]
    fn unreadable_shadow_as_root_gets_a_note() {
        let (_dir, mut paths) = fixture();
        paths.shadow = paths.shadow.with_file_name("missing");
        let v = done("", &paths, 0).unwrap();
        assert!(v["shadow_note"].as_str().unwrap().contains("cannot read"));
        assert_eq!(v["count"], 2);
    }

    #[test]
    fn missing_passwd_is_3025() {
        let (_dir, mut paths) = fixture();
        paths.passwd = paths.passwd.with_file_name("missing");
        let e = done("", &paths, 0).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
    }

    #[test]
    fn unknown_user_goes_to_nss_then_3024() {
        let (_dir, paths) = fixture();
        let (outcome, files) = answer(br#"{"args":"-U nosuchuser-x"}"#, &paths, 0);
        assert!(matches!(&outcome, Outcome::AskNss(n) if n == "nosuchuser-x"));
        let e = answer_nss("nosuchuser-x", &files.unwrap()).unwrap_err();
        assert_eq!(e.retcode(), retcode::UNKNOWN_USER);
    }
}
