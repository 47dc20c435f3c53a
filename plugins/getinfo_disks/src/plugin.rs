//! The thin glue: request → [`Options`], read mountinfo (path injectable),
//! select, statvfs each (network ones only with `-n`, bounded), complete.

use std::error::Error;
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use basicagent_abi::Call;
use basicagent_collector_kit::{self as kit, CollectorError};
use serde::Serialize;

use crate::parse::{is_network, is_pseudo, parse_mountinfo, Mount, RawStat, Space};
use crate::USAGE;

/// How long `-n` waits for all network statvfs calls of one request.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many abandoned (hung) statvfs threads at once; past it a
/// network filesystem is reported `"error: ..."` without trying.
pub const MAX_STUCK: usize = 16;

/// statvfs helper threads that have not returned yet.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What a request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `-a`: pseudo filesystems too.
    pub all: bool,
    /// `-n`: statvfs network and FUSE filesystems too (bounded).
    pub network: bool,
    /// `-m MOUNTPOINT`: only that one.
    pub mount_point: Option<String>,
}

/// Parses the request into [`Options`].
pub fn parse_request(request: &[u8]) -> Result<Options, CollectorError> {
    let mut opts = getopts::Options::new();
    opts.optflagmulti("a", "", "all mounts");
    opts.optflagmulti("n", "", "statvfs network filesystems");
    opts.optopt("m", "", "one mount point", "MOUNTPOINT");
    Ok(kit::parse_request(request, USAGE, |words| {
        options(&opts, words)
    })?)
}

fn options(
    opts: &getopts::Options,
    words: &[String],
) -> Result<Options, Box<dyn Error + Send + Sync>> {
    let m = kit::parse_opts(opts, words)?;
    let mount_point = match m.opt_str("m") {
        None => None,
        Some(p) if !p.starts_with('/') || p.contains('\0') => {
            return Err(format!("-m wants an absolute mount point, got {p:?}").into())
        }
        Some(p) => {
            let trimmed = p.trim_end_matches('/');
            Some(if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            })
        }
    };
    Ok(Options {
        all: m.opt_present("a"),
        network: m.opt_present("n"),
        mount_point,
    })
}

/// One filesystem in the response.
#[derive(Debug, Serialize)]
struct FsReport<'a> {
    mount_point: &'a str,
    device: &'a str,
    fstype: &'a str,
    options: &'a str,
    super_options: &'a str,
    root: &'a str,
    major: u64,
    minor: u64,
    mount_id: u64,
    read_only: bool,
    network: bool,
    pseudo: bool,
    stat: String,
    total_bytes: Option<u64>,
    used_bytes: Option<u64>,
    free_bytes: Option<u64>,
    available_bytes: Option<u64>,
    used_percent: Option<f64>,
    inodes_total: Option<u64>,
    inodes_used: Option<u64>,
    inodes_free: Option<u64>,
}

#[derive(Serialize)]
struct Report<'a> {
    filesystems: Vec<FsReport<'a>>,
    count: usize,
}

/// The outcome of asking statvfs about one mount.
#[derive(Debug, Clone, PartialEq)]
pub enum StatOutcome {
    Ok(Space),
    Skipped,
    Timeout,
    Error(String),
}

/// statvfs(3) on `path`.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
pub fn statvfs(path: &str) -> Result<RawStat, std::io::Error> {
    let c = CString::new(path)?;
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string and `s` a writable statvfs,
    // both live for the whole call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(RawStat {
        frsize: if s.f_frsize > 0 {
            s.f_frsize as u64
        } else {
            s.f_bsize as u64
        },
        blocks: s.f_blocks as u64,
        bfree: s.f_bfree as u64,
        bavail: s.f_bavail as u64,
        files: s.f_files as u64,
        ffree: s.f_ffree as u64,
    })
}

fn outcome_of(r: Result<RawStat, std::io::Error>) -> StatOutcome {
    match r {
        Ok(raw) => StatOutcome::Ok(Space::from_raw(raw)),
        Err(e) => StatOutcome::Error(e.to_string()),
    }
}

/// Starts statvfs on a helper thread; `Err` if too many are hung already
/// or the thread cannot start.
fn spawn_statvfs(path: &str) -> Result<mpsc::Receiver<StatOutcome>, String> {
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_STUCK {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(format!(
            "{MAX_STUCK} earlier statvfs calls are still hung; not trying"
        ));
    }
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("getinfo-disks-statvfs".into())
        .spawn(move || {
            let outcome = outcome_of(statvfs(&path));
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(outcome);
        });
    match spawned {
        Ok(_) => Ok(rx),
        Err(e) => {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            Err(format!("cannot start a statvfs thread: {e}"))
        }
    }
}

/// Whether a mount is statvfs'ed on the caller's thread, on a bounded
/// helper, or not at all.
fn plan(m: &Mount<'_>, opts: &Options) -> Plan {
    if m.fstype == "autofs" {
        Plan::Skip
    } else if is_network(m.fstype) {
        if opts.network {
            Plan::Bounded
        } else {
            Plan::Skip
        }
    } else {
        Plan::Direct
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Direct,
    Bounded,
    Skip,
}

/// Selects the mounts a request wants, in mountinfo order.
pub fn select<'m, 'a>(
    mounts: &'m [Mount<'a>],
    opts: &Options,
) -> Result<Vec<&'m Mount<'a>>, CollectorError> {
    if let Some(want) = &opts.mount_point {
        // The last line for a mount point is the one on top.
        return mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == want.as_str())
            .map(|m| vec![m])
            .ok_or_else(|| {
                CollectorError::InvalidValue(format!(
                    "no filesystem is mounted at {want:?}; usage: {USAGE}"
                ))
            });
    }
    Ok(mounts
        .iter()
        .filter(|m| opts.all || !is_pseudo(m.fstype))
        .collect())
}

/// Reads `mountinfo` (normally `/proc/self/mountinfo`), selects, stats;
/// the `data` JSON. With `opts.network` it may wait up to
/// [`REMOTE_TIMEOUT`]: call it off the host's thread then.
pub fn collect(mountinfo: &Path, opts: &Options) -> Result<String, CollectorError> {
    let text = std::fs::read(mountinfo).map_err(|source| CollectorError::Read {
        path: mountinfo.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    let (mounts, skipped) = parse_mountinfo(&text);
    if skipped > 0 {
        log::warn!("{}: {skipped} malformed lines skipped", mountinfo.display());
    }
    let chosen = select(&mounts, opts)?;
    // Start every bounded statvfs first, so that they share one deadline.
    let pending: Vec<Option<Result<mpsc::Receiver<StatOutcome>, String>>> = chosen
        .iter()
        .map(|m| (plan(m, opts) == Plan::Bounded).then(|| spawn_statvfs(&m.mount_point)))
        .collect();
    let deadline = Instant::now() + REMOTE_TIMEOUT;
    let mut filesystems = Vec::with_capacity(chosen.len());
    for (m, pending) in chosen.iter().zip(pending) {
        let outcome = match (plan(m, opts), pending) {
            (Plan::Skip, _) => StatOutcome::Skipped,
            (Plan::Direct, _) => outcome_of(statvfs(&m.mount_point)),
            (Plan::Bounded, Some(Ok(rx))) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(o) => o,
                    Err(_) => StatOutcome::Timeout,
                }
            }
            (Plan::Bounded, Some(Err(reason))) => StatOutcome::Error(reason),
            (Plan::Bounded, None) => StatOutcome::Skipped,
        };
        filesystems.push(report(m, outcome));
    }
    let report = Report {
        count: filesystems.len(),
        filesystems,
    };
    kit::to_data(&report)
}

fn report<'a>(m: &'a Mount<'_>, outcome: StatOutcome) -> FsReport<'a> {
    let (stat, space) = match outcome {
        StatOutcome::Ok(s) => ("ok".to_owned(), Some(s)),
        StatOutcome::Skipped => ("skipped".to_owned(), None),
        StatOutcome::Timeout => ("timeout".to_owned(), None),
        StatOutcome::Error(e) => (format!("error: {e}"), None),
    };
    FsReport {
        mount_point: &m.mount_point,
        device: &m.source,
        fstype: m.fstype,
        options: m.options,
        super_options: m.super_options,
        root: &m.root,
        major: m.major,
        minor: m.minor,
        mount_id: m.mount_id,
        read_only: m.options.split(',').any(|o| o == "ro"),
        network: is_network(m.fstype),
        pseudo: is_pseudo(m.fstype),
        stat,
        total_bytes: space.map(|s| s.total_bytes),
        used_bytes: space.map(|s| s.used_bytes),
        free_bytes: space.map(|s| s.free_bytes),
        available_bytes: space.map(|s| s.available_bytes),
        used_percent: space.and_then(|s| s.used_percent),
        inodes_total: space.and_then(|s| s.inodes_total),
        inodes_used: space.and_then(|s| s.inodes_used),
        inodes_free: space.and_then(|s| s.inodes_free),
    }
}

/// The plugin's `call`: without `-n` everything is local and answered at
/// once; with `-n` the work moves to a thread, which completes the call.
pub fn call(call: Call, request: &[u8]) {
    let opts = match parse_request(request) {
        Ok(o) => o,
        Err(e) => return kit::complete(call, Err(e)),
    };
    let mountinfo = Path::new("/proc/self/mountinfo");
    if !opts.network {
        return kit::complete(call, collect(mountinfo, &opts));
    }
    // The call goes to the thread through a slot, so that it can be
    // failed here with a clear message if the thread cannot start.
    let slot = Arc::new(Mutex::new(Some(call)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("getinfo-disks".into())
        .spawn(move || {
            let call = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(call) = call {
                kit::complete(call, collect(mountinfo, &opts));
            }
        });
    if let Err(e) = spawned {
        let call = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(call) = call {
            kit::complete(
                call,
                Err(CollectorError::Spawn {
                    what: "worker thread",
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
    use serde_json::Value;

    #[test]
    fn requests() {
        assert_eq!(parse_request(b"").unwrap(), Options::default());
        let o = parse_request(br#"{"args":"-a -n -m '/media/my disk/'"}"#).unwrap();
        assert!(o.all && o.network);
        assert_eq!(o.mount_point.as_deref(), Some("/media/my disk"));
        let o = parse_request(br#"{"args":"-m //"}"#).unwrap();
        assert_eq!(o.mount_point.as_deref(), Some("/"));
        for bad in [
            &br#"{"args":"-x"}"#[..],
            br#"{"args":"-m"}"#,
            br#"{"args":"-m relative"}"#,
            br#"{"args":"-m ''"}"#,
            br#"{"args":"-m / -m /x"}"#,
            br#"{"args":"/"}"#,
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS, "{e}");
            assert!(e.to_string().contains("-m MOUNTPOINT"), "{e}");
        }
        assert_eq!(
            parse_request(b"[]").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    fn run(text: &str, opts: &Options) -> Result<Value, CollectorError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mountinfo");
        std::fs::write(&p, text).unwrap();
        collect(&p, opts).map(|s| serde_json::from_str(&s).unwrap())
    }

    const FIXTURE: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
        27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
        28 27 0:25 / /no/such\\040dir ro,nosuid - tmpfs my\\040tmp ro,size=4k\n\
        29 27 0:26 / /net rw - nfs4 server:/export rw,vers=4.2\n\
        30 27 0:27 / /auto rw - autofs systemd-1 rw\n\
        this line is broken\n\
        31 27 0:28 / / rw - overlay overlay rw\n";

    #[test]
    fn fixture_default_all_and_one() {
        let v = run(FIXTURE, &Options::default()).unwrap();
        let fs = v["filesystems"].as_array().unwrap();
        let points: Vec<&str> = fs
            .iter()
            .map(|f| f["mount_point"].as_str().unwrap())
            .collect();
        assert_eq!(points, ["/", "/no/such dir", "/net", "/"]);
        assert_eq!(v["count"], 4);
        assert_eq!(fs[0]["stat"], "ok");
        assert!(fs[0]["total_bytes"].as_u64().unwrap() > 0);
        assert_eq!(fs[1]["device"], "my tmp");
        assert_eq!(fs[1]["read_only"], true);
        assert!(
            fs[1]["stat"].as_str().unwrap().starts_with("error: "),
            "{}",
            fs[1]
        );
        assert!(fs[1]["total_bytes"].is_null());
        assert_eq!(fs[2]["network"], true);
        assert_eq!(fs[2]["stat"], "skipped");
        let v = run(
            FIXTURE,
            &Options {
                all: true,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(v["count"], 6);
        assert_eq!(v["filesystems"][0]["pseudo"], true);
        assert_eq!(
            v["filesystems"][4]["stat"], "skipped",
            "autofs is never asked"
        );
        // -m: the top of a stack, pseudo or not; unknown is 3021.
        let one = |p: &str| Options {
            mount_point: Some(p.into()),
            ..Options::default()
        };
        let v = run(FIXTURE, &one("/")).unwrap();
        assert_eq!(v["count"], 1);
        assert_eq!(v["filesystems"][0]["fstype"], "overlay");
        let v = run(FIXTURE, &one("/proc")).unwrap();
        assert_eq!(v["filesystems"][0]["fstype"], "proc");
        let e = run(FIXTURE, &one("/nothing")).unwrap_err();
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
    }

    #[test]
    fn network_with_dash_n_is_bounded() {
        let opts = Options {
            network: true,
            ..Options::default()
        };
        let start = Instant::now();
        let v = run(FIXTURE, &opts).unwrap();
        assert!(start.elapsed() < REMOTE_TIMEOUT + Duration::from_secs(1));
        // /net does not exist here: statvfs fails at once.
        let net = &v["filesystems"][2];
        assert!(
            net["stat"].as_str().unwrap().starts_with("error: "),
            "{net}"
        );
    }

    #[test]
    fn empty_and_missing_mountinfo() {
        let v = run("", &Options::default()).unwrap();
        assert_eq!(v["count"], 0);
        let e = collect(Path::new("/nonexistent/mountinfo"), &Options::default()).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
    }
}
