//! Pure parsers for `/proc/stat`, `/proc/uptime` and `/proc/cmdline`, and
//! the output shape [`KernelInfo`]. No I/O here: tests feed fixture bytes.

use std::borrow::Cow;

use serde::Serialize;

/// The `data` object of a `getinfo.kernel` response. Borrows every string
/// from the buffers it was parsed from (owned only when bytes that are not
/// UTF-8 had to be replaced); serialised once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelInfo<'a> {
    pub sysname: Cow<'a, str>,
    pub nodename: Cow<'a, str>,
    pub release: Cow<'a, str>,
    pub version: Cow<'a, str>,
    pub machine: Cow<'a, str>,
    /// The NIS domain name (`(none)` when unset, as the kernel reports it).
    pub domainname: Cow<'a, str>,
    /// `/proc/cmdline` without surrounding whitespace; null if unreadable.
    pub cmdline: Option<Cow<'a, str>>,
    /// Unix seconds at boot (`btime` of `/proc/stat`); null if unreadable.
    pub boot_time: Option<u64>,
    /// Seconds since boot (first field of `/proc/uptime`); null if unreadable.
    pub uptime_seconds: Option<f64>,
}

/// The `btime` value of `/proc/stat`: unix seconds at boot.
///
/// Scans line by line without allocating; returns `None` when the line is
/// missing or not a number.
pub fn parse_btime(stat: &[u8]) -> Option<u64> {
    stat.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(b"btime")?;
        // "btime" must be the whole first word ("btimex 1" is not it).
        if !rest.first().is_some_and(u8::is_ascii_whitespace) {
            return None;
        }
        let digits = std::str::from_utf8(rest).ok()?.trim();
        digits.parse::<u64>().ok()
    })
}

/// The first field of `/proc/uptime` (seconds since boot, e.g. `"350735.47"`).
pub fn parse_uptime(uptime: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(uptime).ok()?;
    let first = text.split_ascii_whitespace().next()?;
    first
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// `/proc/cmdline` trimmed of surrounding whitespace (the kernel ends it
/// with a newline). Bytes that are not UTF-8 become U+FFFD.
pub fn parse_cmdline(cmdline: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(cmdline) {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"cpu  2255 34 2290 22625563 6290 127 456 0 0 0\n\
cpu0 1132 34 1441 11311718 3675 127 438 0 0 0\n\
intr 114930548 113199788 3 0 5 263 0 4 [... 1]\n\
ctxt 1990473\n\
btime 1062191376\n\
processes 2915\n\
procs_running 1\n";

    #[test]
    fn btime_found() {
        assert_eq!(parse_btime(STAT), Some(1_062_191_376));
    }

    #[test]
    fn btime_missing_or_bad() {
        assert_eq!(parse_btime(b""), None);
        assert_eq!(parse_btime(b"cpu 1 2 3\nctxt 5\n"), None);
        assert_eq!(parse_btime(b"btime abc\n"), None);
        assert_eq!(parse_btime(b"btimex 12\nbtime 7"), Some(7));
        assert_eq!(parse_btime(b"btime\n"), None);
        assert_eq!(parse_btime(b"\xff\xfe\nbtime 9\n"), Some(9));
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime(b"350735.47 234388.90\n"), Some(350_735.47));
        assert_eq!(parse_uptime(b"12\n"), Some(12.0));
        assert_eq!(parse_uptime(b""), None);
        assert_eq!(parse_uptime(b"nan 1"), None);
        assert_eq!(parse_uptime(b"-1 1"), None);
        assert_eq!(parse_uptime(b"\xff"), None);
    }

    #[test]
    fn cmdline() {
        assert_eq!(
            parse_cmdline(b"BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet\n"),
            "BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet"
        );
        assert_eq!(parse_cmdline(b"\n"), "");
        assert_eq!(parse_cmdline(b" a\xffb\n"), "a\u{fffd}b");
    }

    #[test]
    fn serialises_shape() -> Result<(), serde_json::Error> {
        let info = KernelInfo {
            sysname: "Linux".into(),
            nodename: "web-01".into(),
            release: "6.1.0".into(),
            version: "#1 SMP \"quoted\"".into(),
            machine: "x86_64".into(),
            domainname: "(none)".into(),
            cmdline: Some("ro quiet".into()),
            boot_time: Some(1),
            uptime_seconds: Some(2.5),
        };
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&info)?)?;
        assert_eq!(v["version"], "#1 SMP \"quoted\"");
        assert_eq!(v["uptime_seconds"], 2.5);
        assert_eq!(v["boot_time"], 1);
        assert_eq!(v.as_object().map(|o| o.len()), Some(9));
        Ok(())
    }
}
