//! The glue: request → [`Selection`], the clock facts (sysconf, btime),
//! one parse of /etc/passwd, one walk of /proc (paths injectable), and the
//! single serialisation. `call` completes from the worker thread.

use std::path::{Path, PathBuf};

use basicagent_abi::Call;
use basicagent_collector_kit as kit;

use crate::args::{parse_words, Selection};
use crate::parse::{parse_btime, Accounts};
use crate::scan::{collect, Clock};
use crate::{CollectorError, USAGE};

/// Where the sources are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The proc file system (its `stat` gives btime).
    pub proc_root: PathBuf,
    pub passwd: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            proc_root: "/proc".into(),
            passwd: "/etc/passwd".into(),
        }
    }
}

/// The selection a request asks for.
pub fn parse_request(request: &[u8]) -> Result<Selection, CollectorError> {
    Ok(kit::parse_request(request, USAGE, parse_words)?)
}

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value; any name is safe
    // to pass (an unknown one returns -1).
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(fallback)
}

/// Ticks per second, page size and boot time of this host.
pub fn host_clock(proc_root: &Path) -> Clock {
    let boot_time = std::fs::read(proc_root.join("stat"))
        .ok()
        .and_then(|s| parse_btime(&s));
    Clock {
        ticks_per_second: sysconf(libc::_SC_CLK_TCK, 100),
        page_size: sysconf(libc::_SC_PAGESIZE, 4096),
        boot_time,
    }
}

/// Request in, `data` JSON out.
pub fn answer(request: &[u8], paths: &Paths) -> Result<String, CollectorError> {
    let sel = parse_request(request)?;
    let accounts = match std::fs::read(&paths.passwd) {
        Ok(bytes) => Accounts::parse(&bytes),
        Err(e) => {
            log::warn!("cannot read {}: {e}; no user names", paths.passwd.display());
            Accounts::default()
        }
    };
    let uid = match &sel.user {
        None => None,
        Some(user) => Some(
            accounts
                .resolve(user)
                .ok_or_else(|| CollectorError::UnknownUser(user.clone()))?,
        ),
    };
    let clock = host_clock(&paths.proc_root);
    let report = collect(&paths.proc_root, &sel, uid, &clock, &accounts)?;
    kit::to_data(&report)
}

/// The plugin's `call`: refuses a bad request at once; otherwise hands
/// the walk to the worker thread, which completes the call.
pub fn call(call: Call, request: &[u8]) {
    if let Err(e) = parse_request(request) {
        return kit::complete(call, Err(e));
    }
    let request = request.to_vec();
    crate::worker::submit(call, move |call| {
        kit::complete(call, answer(&request, &Paths::default()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;

    #[test]
    fn error_codes() {
        let paths = Paths::default();
        let code = |req: &[u8]| answer(req, &paths).unwrap_err().retcode();
        assert_eq!(code(b"[]"), retcode::INVALID_REQUEST);
        assert_eq!(code(br#"{"args":"-s mem"}"#), retcode::INVALID_PARAMS);
        assert_eq!(code(br#"{"args":["-p","1"]}"#), retcode::INVALID_PARAMS);
        assert_eq!(
            code(br#"{"args":"-U no-such-user-xyz"}"#),
            retcode::UNKNOWN_USER
        );
        let e = answer(br#"{"args":"-q"}"#, &paths).unwrap_err().to_string();
        assert!(
            e.contains("-s rss|cpu|pid") && e.contains("rss_bytes"),
            "{e}"
        );
        let gone = Paths {
            proc_root: "/nonexistent/proc".into(),
            passwd: "/nonexistent/passwd".into(),
        };
        assert_eq!(
            answer(b"{}", &gone).unwrap_err().retcode(),
            retcode::PLUGIN_FAILURE
        );
        // Numeric uids work without a passwd file.
        assert!(answer(br#"{"args":"-U 0 -p 1"}"#, &gone).is_ok());
    }

    #[test]
    fn this_host_clock() {
        let c = host_clock(Path::new("/proc"));
        assert!(c.ticks_per_second >= 1 && c.page_size >= 4096);
        assert!(c.boot_time.is_some_and(|b| b > 1_000_000_000));
    }
}
