//! Pure, never-panicking parsers for the per-process files of /proc
//! (`stat`, `status`, `cmdline`), `/proc/stat`'s btime and /etc/passwd.
//! No I/O: tests feed fixture bytes.

use std::collections::HashMap;

/// The fields of `/proc/PID/stat` that are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// Between the first `(` and the LAST `)`: a comm may hold both.
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. `None` for anything short or malformed (a
/// file cut short by an exiting process, say).
pub fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let open = bytes.iter().position(|&b| b == b'(')?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(bytes.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(bytes.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // Fields after the comm, 0-based: 0 state, 1 ppid, ... 11 utime,
    // 12 stime, 17 num_threads, 19 starttime, 21 rss (proc(5) numbers + 3).
    let mut f: [&str; 22] = [""; 22];
    let mut words = rest.split_ascii_whitespace();
    for slot in &mut f {
        *slot = words.next()?;
    }
    let mut state = f[0].chars();
    let (Some(state), None) = (state.next(), state.next()) else {
        return None;
    };
    let num = |s: &str| s.parse::<u64>().ok();
    Some(Stat {
        pid,
        comm,
        state,
        ppid: f[1].parse().ok()?,
        cpu_ticks: num(f[11])?.saturating_add(num(f[12])?),
        threads: num(f[17])?,
        start_ticks: num(f[19])?,
        // rss is signed in the kernel's format; a negative value is 0.
        rss_pages: f[21].parse::<i64>().ok()?.max(0).unsigned_abs(),
    })
}

/// The effective uid of `/proc/PID/status` (`Uid:` real effective saved fs),
/// the one `ps -o user` shows.
pub fn parse_status_euid(bytes: &[u8]) -> Option<u32> {
    bytes.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(b"Uid:")?;
        let text = std::str::from_utf8(rest).ok()?;
        text.split_ascii_whitespace().nth(1)?.parse().ok()
    })
}

/// `/proc/PID/cmdline` as one line: NULs become spaces, trailing ones go;
/// empty (kernel threads, zombies): the comm in brackets.
pub fn cmdline_text(bytes: &[u8], comm: &str) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end == 0 {
        return format!("[{comm}]");
    }
    let joined: Vec<u8> = bytes[..end]
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    match String::from_utf8(joined) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The `btime` line of `/proc/stat`: unix seconds at boot.
pub fn parse_btime(stat: &[u8]) -> Option<u64> {
    stat.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(b"btime ")?;
        std::str::from_utf8(rest).ok()?.trim().parse().ok()
    })
}

/// uid → name and name → uid of /etc/passwd, from one pass (first line
/// wins for a repeated uid or name).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accounts {
    names: HashMap<u32, String>,
    uids: HashMap<String, u32>,
}

impl Accounts {
    /// Parses /etc/passwd; odd lines are skipped.
    pub fn parse(passwd: &[u8]) -> Accounts {
        let mut acc = Accounts::default();
        for line in passwd.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let mut f = line.split(':');
            let (Some(name), Some(_pw), Some(uid)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            if name.is_empty() || name.starts_with(['#', '+', '-']) {
                continue;
            }
            acc.names.entry(uid).or_insert_with(|| name.to_owned());
            acc.uids.entry(name.to_owned()).or_insert(uid);
        }
        acc
    }

    /// The account name of `uid`.
    pub fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }

    /// `-U USER`: a name of /etc/passwd, else an all-digit uid.
    pub fn resolve(&self, user: &str) -> Option<u32> {
        self.uids.get(user).copied().or_else(|| {
            user.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| user.parse().ok())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"1234 (my (odd) proc) name)) S 1 1234 1234 0 -1 4194560 \
1000 0 0 0 250 50 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 \
4096 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_with_parens_and_spaces_in_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "my (odd) proc) name)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 300);
        assert_eq!(s.threads, 3);
        assert_eq!(s.start_ticks, 98765);
        assert_eq!(s.rss_pages, 2048);
    }

    #[test]
    fn stat_odd_inputs() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 (trunc"), None);
        assert_eq!(parse_stat(b"12 (x) S 1 2 3"), None, "cut short");
        assert_eq!(parse_stat(b") 12 ( S"), None);
        assert_eq!(
            parse_stat(b"x (a) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 1 7"),
            None
        );
        let mut bad = STAT.to_vec();
        bad[8] = 0xff; // inside the comm: lossy, still parsed
        assert!(parse_stat(&bad).is_some());
        let neg = b"7 (k) R 2 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 -1";
        assert_eq!(parse_stat(neg).map(|s| s.rss_pages), Some(0));
        assert_eq!(
            parse_stat(b"7 (k) RR 2 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 1"),
            None
        );
    }

    #[test]
    fn status_euid() {
        let st = b"Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_status_euid(st), Some(0));
        assert_eq!(parse_status_euid(b"Name: x\n"), None);
        assert_eq!(parse_status_euid(b"Uid:\t1000"), None);
        assert_eq!(parse_status_euid(b"Uid:"), None);
    }

    #[test]
    fn cmdline() {
        assert_eq!(cmdline_text(b"sleep\x0030\x00", "sleep"), "sleep 30");
        assert_eq!(cmdline_text(b"", "kthreadd"), "[kthreadd]");
        assert_eq!(cmdline_text(b"\x00\x00", "z"), "[z]");
        assert_eq!(
            cmdline_text(b"nginx: worker process", "nginx"),
            "nginx: worker process"
        );
        assert_eq!(cmdline_text(b"a\xff\x00b", "a"), "a\u{fffd} b");
    }

    #[test]
    fn btime() {
        assert_eq!(
            parse_btime(b"cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime(b"cpu 1 2\n"), None);
    }

    #[test]
    fn accounts() {
        let a = Accounts::parse(
            b"root:x:0:0::/root:/bin/sh\n+nis\n#c:x:5:5\nalice:x:1000:1000::/h:/bin/sh\n\
              dup:x:1000:1::/:/bin/sh\n123:x:4:4::/:/\n\xff:x:9:9\nshort:x\n",
        );
        assert_eq!(a.name(0), Some("root"));
        assert_eq!(a.name(1000), Some("alice"));
        assert_eq!(a.name(7), None);
        assert_eq!(a.resolve("alice"), Some(1000));
        assert_eq!(a.resolve("dup"), Some(1000));
        assert_eq!(a.resolve("123"), Some(4), "a name before a uid");
        assert_eq!(a.resolve("4242"), Some(4242));
        assert_eq!(a.resolve("nosuch"), None);
        assert_eq!(a.resolve("99999999999"), None);
    }
}
