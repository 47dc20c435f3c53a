//! One walk over a proc directory (`/proc`, or a fixture in tests): list
//! the pid directories, read `stat` and `status` of each, filter, sort,
//! cut to the limit, and only then read the `cmdline` of the survivors.
//!
//! A process can exit at any point of the walk: every per-process read
//! that fails, and every file that does not parse (cut short, empty), drops
//! that process silently. Only an unlistable proc directory is an error.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::args::{Selection, Sort};
use crate::cmdline::{CmdlineReader, Outcome, READ_BUDGET};
use crate::parse::{cmdline_text, parse_stat, parse_status_euid, Accounts, Stat};
use crate::CollectorError;

/// A cmdline longer than this is cut (kernel limit is far higher).
pub const CMDLINE_MAX: u64 = 32 * 1024;

/// What turns ticks and pages into seconds and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// sysconf(_SC_CLK_TCK), at least 1.
    pub ticks_per_second: u64,
    /// sysconf(_SC_PAGESIZE).
    pub page_size: u64,
    /// Unix seconds at boot; `None`: start_time is null.
    pub boot_time: Option<u64>,
}

/// One process as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Process<'a> {
    pub pid: u32,
    pub ppid: u32,
    pub user: Option<&'a str>,
    pub uid: u32,
    pub state: char,
    pub cmdline: String,
    pub comm: String,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time: Option<u64>,
    pub threads: u64,
}

/// The `data` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report<'a> {
    pub processes: Vec<Process<'a>>,
    /// Processes listed.
    pub count: usize,
    /// Processes that matched before `-n` cut the list.
    pub total: usize,
    /// Processes listed without their command line: its read did not
    /// answer within the budget (see [`crate::cmdline`]). Omitted when
    /// empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmdline_skipped: Vec<u32>,
}

/// Reads at most `max` bytes of `path` into `buf` (cleared first).
fn read_into(path: &Path, buf: &mut Vec<u8>, max: u64) -> io::Result<()> {
    buf.clear();
    File::open(path)?.take(max).read_to_end(buf)?;
    Ok(())
}

/// The pids under `root`, ascending.
fn pids(root: &Path) -> Result<Vec<u32>, CollectorError> {
    let list = std::fs::read_dir(root).map_err(|source| CollectorError::List {
        path: root.to_owned(),
        source,
    })?;
    let mut pids: Vec<u32> = list
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            name.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Walks `root` and builds the report for `sel`; `uid` is the resolved
/// `-U USER`. Each command line read has [`READ_BUDGET`].
pub fn collect<'a>(
    root: &Path,
    sel: &Selection,
    uid: Option<u32>,
    clock: &Clock,
    accounts: &'a Accounts,
) -> Result<Report<'a>, CollectorError> {
    collect_with(root, sel, uid, clock, accounts, READ_BUDGET)
}

/// [`collect`] with `budget` for each command line read.
pub fn collect_with<'a>(
    root: &Path,
    sel: &Selection,
    uid: Option<u32>,
    clock: &Clock,
    accounts: &'a Accounts,
    budget: std::time::Duration,
) -> Result<Report<'a>, CollectorError> {
    let candidates = match sel.pid {
        Some(pid) => vec![pid],
        None => pids(root)?,
    };
    let mut dir = PathBuf::from(root);
    let mut buf = Vec::with_capacity(2048);
    let mut found: Vec<(Stat, u32)> = Vec::with_capacity(candidates.len());
    for pid in candidates {
        dir.push(pid.to_string());
        let entry = read_entry(&mut dir, &mut buf);
        dir.pop();
        let Some((stat, euid)) = entry else {
            continue;
        };
        if uid.is_some_and(|u| u != euid) {
            continue;
        }
        found.push((stat, euid));
    }
    match sel.sort {
        Sort::Pid => {}
        Sort::Rss => found.sort_by(|a, b| {
            b.0.rss_pages
                .cmp(&a.0.rss_pages)
                .then(a.0.pid.cmp(&b.0.pid))
        }),
        Sort::Cpu => found.sort_by(|a, b| {
            b.0.cpu_ticks
                .cmp(&a.0.cpu_ticks)
                .then(a.0.pid.cmp(&b.0.pid))
        }),
    }
    let total = found.len();
    if let Some(limit) = sel.limit {
        found.truncate(limit);
    }
    let hz = clock.ticks_per_second.max(1);
    let mut processes = Vec::with_capacity(found.len());
    let mut reader = CmdlineReader::new(budget);
    let mut skipped = Vec::new();
    for (stat, euid) in found {
        let path = dir.join(stat.pid.to_string()).join("cmdline");
        buf = match reader.read(path, CMDLINE_MAX) {
            Outcome::Read(bytes) => bytes,
            // Exited since its stat was read.
            Outcome::Gone => continue,
            Outcome::Skipped => {
                skipped.push(stat.pid);
                Vec::new()
            }
        };
        processes.push(Process {
            pid: stat.pid,
            ppid: stat.ppid,
            user: accounts.name(euid),
            uid: euid,
            state: stat.state,
            cmdline: cmdline_text(&buf, &stat.comm),
            rss_bytes: stat.rss_pages.saturating_mul(clock.page_size),
            cpu_seconds: (stat.cpu_ticks as f64 / hz as f64 * 100.0).round() / 100.0,
            start_time: clock
                .boot_time
                .map(|b| b.saturating_add(stat.start_ticks / hz)),
            threads: stat.threads,
            comm: stat.comm,
        });
    }
    if !skipped.is_empty() {
        log::warn!(
            "getinfo.processes: the command line of {} processes did not answer within {budget:?} \
             (their memory is locked: a page fault on a hung file system?); listed without it: {skipped:?}",
            skipped.len()
        );
    }
    Ok(Report {
        count: processes.len(),
        total,
        processes,
        cmdline_skipped: skipped,
    })
}

/// `stat` and `status` of the process directory `dir`; `None` if either
/// is gone or does not parse.
fn read_entry(dir: &mut PathBuf, buf: &mut Vec<u8>) -> Option<(Stat, u32)> {
    dir.push("stat");
    let stat = read_into(dir, buf, 4096)
        .ok()
        .and_then(|()| parse_stat(buf));
    dir.pop();
    let stat = stat?;
    dir.push("status");
    let euid = read_into(dir, buf, 16 * 1024)
        .ok()
        .and_then(|()| parse_status_euid(buf));
    dir.pop();
    Some((stat, euid?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn stat_line(pid: u32, comm: &str, ppid: u32, utime: u64, rss: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 {utime} 0 0 0 20 0 1 0 \
             500 1000 {rss} 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
        )
    }

    fn status(uid: u32) -> String {
        format!("Name:\tx\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    }

    /// A proc tree with good processes and every way a process can vanish.
    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let proc = |pid: &str, files: &[(&str, &[u8])]| {
            let dir = d.path().join(pid);
            fs::create_dir(&dir).unwrap();
            for (name, bytes) in files {
                fs::write(dir.join(name), bytes).unwrap();
            }
        };
        proc(
            "1",
            &[
                ("stat", stat_line(1, "init", 0, 300, 10).as_bytes()),
                ("status", status(0).as_bytes()),
                ("cmdline", b"/sbin/init\0splash\0"),
            ],
        );
        proc(
            "2",
            &[
                ("stat", stat_line(2, "kthreadd", 0, 0, 0).as_bytes()),
                ("status", status(0).as_bytes()),
                ("cmdline", b""),
            ],
        );
        proc(
            "10",
            &[
                ("stat", stat_line(10, "a) b (c", 1, 100, 500).as_bytes()),
                ("status", status(1000).as_bytes()),
                ("cmdline", b"weird\0name\0"),
            ],
        );
        proc(
            "11",
            &[
                ("stat", stat_line(11, "big", 1, 50, 9000).as_bytes()),
                ("status", status(1000).as_bytes()),
                ("cmdline", b"big"),
            ],
        );
        // Exited between the listing and the reads, in every order:
        proc(
            "20",
            &[("stat", b"20 (trunc"), ("status", status(0).as_bytes())],
        );
        proc("21", &[("status", status(0).as_bytes())]);
        proc(
            "22",
            &[("stat", stat_line(22, "nostatus", 1, 0, 0).as_bytes())],
        );
        proc(
            "23",
            &[
                ("stat", stat_line(23, "nocmdline", 1, 0, 0).as_bytes()),
                ("status", status(0).as_bytes()),
            ],
        );
        proc("24", &[("stat", b""), ("status", b""), ("cmdline", b"")]);
        proc(
            "25",
            &[
                ("stat", stat_line(25, "nouid", 1, 0, 0).as_bytes()),
                ("status", b"Name:\tx\n"),
                ("cmdline", b"x"),
            ],
        );
        fs::create_dir(d.path().join("26")).unwrap();
        // Not processes:
        fs::create_dir(d.path().join("sys")).unwrap();
        fs::write(d.path().join("uptime"), "1 1").unwrap();
        fs::create_dir(d.path().join("3x")).unwrap();
        d
    }

    const CLOCK: Clock = Clock {
        ticks_per_second: 100,
        page_size: 4096,
        boot_time: Some(1_700_000_000),
    };

    fn accounts() -> Accounts {
        Accounts::parse(b"root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/h:/bin/sh\n")
    }

    fn pids(r: &Report<'_>) -> Vec<u32> {
        r.processes.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn vanished_and_malformed_are_skipped() {
        let d = fixture();
        let acc = accounts();
        let r = collect(d.path(), &Selection::default(), None, &CLOCK, &acc).unwrap();
        assert_eq!(pids(&r), [1, 2, 10, 11]);
        assert_eq!((r.count, r.total), (4, 5), "23 vanished before its cmdline");
    }

    #[test]
    fn fields() {
        let d = fixture();
        let acc = accounts();
        let r = collect(d.path(), &Selection::default(), None, &CLOCK, &acc).unwrap();
        let init = &r.processes[0];
        assert_eq!(
            *init,
            Process {
                pid: 1,
                ppid: 0,
                user: Some("root"),
                uid: 0,
                state: 'S',
                cmdline: "/sbin/init splash".into(),
                comm: "init".into(),
                rss_bytes: 40960,
                cpu_seconds: 3.0,
                start_time: Some(1_700_000_005),
                threads: 1,
            }
        );
        assert_eq!(r.processes[1].cmdline, "[kthreadd]");
        assert_eq!(r.processes[2].comm, "a) b (c");
        assert_eq!(r.processes[2].user, Some("alice"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["processes"][0]["state"], "S");
        assert_eq!(v["processes"][0].as_object().unwrap().len(), 11);
    }

    #[test]
    fn filters_sorts_and_limits() {
        let d = fixture();
        let acc = accounts();
        let run = |sel: Selection, uid| collect(d.path(), &sel, uid, &CLOCK, &acc).unwrap();
        let r = run(Selection::default(), Some(1000));
        assert_eq!(pids(&r), [10, 11]);
        let r = run(
            Selection {
                sort: Sort::Rss,
                ..Default::default()
            },
            None,
        );
        assert_eq!(pids(&r), [11, 10, 1, 2]);
        let r = run(
            Selection {
                sort: Sort::Cpu,
                limit: Some(2),
                ..Default::default()
            },
            None,
        );
        assert_eq!(pids(&r), [1, 10]);
        assert_eq!((r.count, r.total), (2, 5));
        let r = run(
            Selection {
                pid: Some(10),
                ..Default::default()
            },
            None,
        );
        assert_eq!(pids(&r), [10]);
        for gone in [20, 21, 22, 23, 26, 999] {
            let r = run(
                Selection {
                    pid: Some(gone),
                    ..Default::default()
                },
                None,
            );
            assert_eq!(r.count, 0, "pid {gone}");
        }
        let r = run(
            Selection {
                pid: Some(10),
                ..Default::default()
            },
            Some(0),
        );
        assert_eq!(r.count, 0);
    }

    /// Issue 12 item 14: a cmdline read that blocks (here a FIFO nobody
    /// writes, a stand-in for a process whose mmap lock is held) costs
    /// one budget: that process is listed without its command line and
    /// flagged, the others are read by a fresh reader.
    #[test]
    fn blocking_cmdline_is_skipped_and_flagged() {
        use std::os::unix::fs::OpenOptionsExt;
        let d = fixture();
        let fifo = d.path().join("11").join("cmdline");
        fs::remove_file(&fifo).unwrap();
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let acc = accounts();
        let budget = std::time::Duration::from_millis(100);
        let r = collect_with(d.path(), &Selection::default(), None, &CLOCK, &acc, budget).unwrap();
        assert_eq!(r.cmdline_skipped, vec![11]);
        let big = r.processes.iter().find(|p| p.pid == 11).unwrap();
        assert_eq!(big.cmdline, "[big]");
        let weird = r.processes.iter().find(|p| p.pid == 10).unwrap();
        assert_eq!(weird.cmdline, "weird name");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["cmdline_skipped"], serde_json::json!([11]));
        assert!(crate::cmdline::stuck_readers() >= 1);
        // Let the stuck reader go: it comes back and is counted out.
        let w = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        drop(w);
        let t0 = std::time::Instant::now();
        while crate::cmdline::stuck_readers() > 0 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(30));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Without a blocked read the key is absent.
        fs::remove_file(&fifo).unwrap();
        fs::write(&fifo, b"big").unwrap();
        let r = collect(d.path(), &Selection::default(), None, &CLOCK, &acc).unwrap();
        assert!(serde_json::to_value(&r)
            .unwrap()
            .get("cmdline_skipped")
            .is_none());
    }

    #[test]
    fn unlistable_root_is_an_error() {
        let acc = accounts();
        let e = collect(
            Path::new("/nonexistent/proc"),
            &Selection::default(),
            None,
            &CLOCK,
            &acc,
        )
        .unwrap_err();
        assert!(matches!(e, CollectorError::List { .. }));
        // -p does not list the directory: simply not found.
        let sel = Selection {
            pid: Some(1),
            ..Default::default()
        };
        let r = collect(Path::new("/nonexistent/proc"), &sel, None, &CLOCK, &acc).unwrap();
        assert_eq!(r.count, 0);
    }

    #[test]
    fn no_boot_time() {
        let d = fixture();
        let acc = accounts();
        let clock = Clock {
            boot_time: None,
            ticks_per_second: 0,
            ..CLOCK
        };
        let r = collect(d.path(), &Selection::default(), None, &clock, &acc).unwrap();
        assert_eq!(r.processes[0].start_time, None);
        assert_eq!(
            r.processes[0].cpu_seconds, 300.0,
            "ticks_per_second 0 taken as 1"
        );
    }
}
