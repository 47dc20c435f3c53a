//! The thin glue: checks the request, makes the one `uname(2)` call, reads
//! the boot-time facts once per process (`/proc/cmdline`, `btime`), the
//! uptime from `CLOCK_BOOTTIME`, and completes the call synchronously.

use std::borrow::Cow;
use std::ffi::c_char;
use std::fs::File;
use std::io::Read;

use basicagent_abi::Call;
use basicagent_collector_kit::{self as kit, CollectorError};

use crate::parse::{parse_btime, parse_cmdline, parse_uptime, KernelInfo};

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "getinfo.kernel takes no arguments (\"args\" absent, null or blank).
Output data:
  sysname, nodename, release, version, machine, domainname  strings from uname(2)
  cmdline         string, /proc/cmdline trimmed (null if unreadable)
  boot_time       integer, unix seconds at boot (btime of /proc/stat; null if unreadable)
  uptime_seconds  number, seconds since boot (CLOCK_BOOTTIME, the clock of /proc/uptime)";

/// Accepts a request whose `args` is absent, `null` or a blank string.
pub fn check_request(request: &[u8]) -> Result<(), CollectorError> {
    Ok(kit::no_args(request, USAGE)?)
}

/// The fields of `uname(2)`, as the kernel filled them.
struct Uname(libc::utsname);

impl Uname {
    fn get() -> Result<Uname, CollectorError> {
        // SAFETY: utsname is plain old data (arrays of c_char); all-zero
        // bytes are a valid value.
        let mut buf: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `buf` is a valid, writable utsname for the whole call.
        let rc = unsafe { libc::uname(&mut buf) };
        if rc != 0 {
            return Err(CollectorError::Sys {
                call: "uname(2)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Uname(buf))
    }
}

/// One NUL-terminated `utsname` field as text (lossy for non-UTF-8).
fn field(f: &[c_char]) -> Cow<'_, str> {
    // SAFETY: c_char and u8 have the same size and alignment; the slice
    // covers exactly the field's bytes, which live as long as `f`.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(f.as_ptr().cast::<u8>(), f.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// Reads a whole (small, procfs) file into `buf`, replacing its contents.
fn read_into(path: &str, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    match File::open(path).and_then(|mut f| f.read_to_end(buf)) {
        Ok(_) => true,
        Err(e) => {
            log::warn!("cannot read {path}: {e}");
            false
        }
    }
}

/// Facts fixed at boot, read once per process: the kernel command line
/// and the boot time cannot change while the system runs, so the hot path
/// makes no file read at all.
struct BootFacts {
    cmdline: Option<String>,
    boot_time: Option<u64>,
}

fn boot_facts() -> &'static BootFacts {
    static FACTS: std::sync::OnceLock<BootFacts> = std::sync::OnceLock::new();
    FACTS.get_or_init(|| {
        let mut buf = Vec::with_capacity(8192);
        let cmdline =
            read_into("/proc/cmdline", &mut buf).then(|| parse_cmdline(&buf).into_owned());
        let boot_time = if read_into("/proc/stat", &mut buf) {
            parse_btime(&buf)
        } else {
            None
        };
        BootFacts { cmdline, boot_time }
    })
}

/// Seconds since boot, suspend included: `CLOCK_BOOTTIME`, the clock
/// `/proc/uptime` reports, read without opening the file. Falls back to the
/// file if the clock is unavailable.
fn uptime_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
        // Two decimals, like /proc/uptime.
        let centis = ts.tv_sec as f64 * 100.0 + (ts.tv_nsec / 10_000_000) as f64;
        return Some(centis / 100.0);
    }
    let mut buf = Vec::with_capacity(64);
    if read_into("/proc/uptime", &mut buf) {
        parse_uptime(&buf)
    } else {
        None
    }
}

/// Collects everything and returns the `data` JSON text.
pub fn collect() -> Result<String, CollectorError> {
    let uts = Uname::get()?;
    let boot = boot_facts();
    let info = KernelInfo {
        sysname: field(&uts.0.sysname),
        nodename: field(&uts.0.nodename),
        release: field(&uts.0.release),
        version: field(&uts.0.version),
        machine: field(&uts.0.machine),
        domainname: field(&uts.0.domainname),
        cmdline: boot.cmdline.as_deref().map(Cow::Borrowed),
        boot_time: boot.boot_time,
        uptime_seconds: uptime_seconds(),
    };
    kit::to_data(&info)
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(call, check_request(request).and_then(|()| collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use basicagent_collector_kit::Refusal;

    #[test]
    fn args_accepted() {
        for req in [
            &b""[..],
            b"  ",
            br#"{"method":"getinfo.kernel"}"#,
            br#"{"method":"getinfo.kernel","args":null}"#,
            br#"{"method":"getinfo.kernel","args":""}"#,
            br#"{"method":"getinfo.kernel","args":"  \t"}"#,
            br#"{"id":7,"method":"getinfo.kernel","other":{"x":[1]}}"#,
        ] {
            assert!(
                check_request(req).is_ok(),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn args_refused_with_usage() {
        for req in [
            &br#"{"args":"-A"}"#[..],
            br#"{"args":["x"]}"#,
            br#"{"args":1}"#,
            br#"{"args":{}}"#,
        ] {
            let e = check_request(req).err();
            assert!(
                matches!(
                    e,
                    Some(CollectorError::Refused(Refusal::InvalidParams { .. }))
                ),
                "{}",
                String::from_utf8_lossy(req)
            );
            let e = e.map(|e| (e.retcode(), e.to_string()));
            assert_eq!(e.as_ref().map(|e| e.0), Some(retcode::INVALID_PARAMS));
            assert!(e.is_some_and(
                |e| e.1.contains("takes no arguments") && e.1.contains("uptime_seconds")
            ));
        }
    }

    #[test]
    fn bad_request_is_3020() {
        let e = check_request(b"not json").err().map(|e| e.retcode());
        assert_eq!(e, Some(retcode::INVALID_REQUEST));
        let e = check_request(b"[1]").err().map(|e| e.retcode());
        assert_eq!(e, Some(retcode::INVALID_REQUEST));
    }

    #[test]
    fn collect_matches_libc() -> Result<(), Box<dyn std::error::Error>> {
        let v: serde_json::Value = serde_json::from_str(&collect()?)?;
        let uts = Uname::get()?;
        assert_eq!(v["sysname"], field(&uts.0.sysname).as_ref());
        assert_eq!(v["release"], field(&uts.0.release).as_ref());
        assert!(v["boot_time"].as_u64().is_some_and(|b| b > 0));
        assert!(v["uptime_seconds"].as_f64().is_some_and(|u| u > 0.0));
        assert!(v["cmdline"].is_string());
        Ok(())
    }
}
