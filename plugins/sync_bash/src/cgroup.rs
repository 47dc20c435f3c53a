//! A cgroup per command: the layout of this host (cgroup v2, hybrid, v1
//! or none), detected once at `init`; per command a cgroup in every
//! hierarchy used, joined by the child before `execve`, its limits, its
//! usage, its kill and its removal.
//!
//! Layout. Each hierarchy gets an instance directory under the agent's
//! own cgroup: `<mount><own>/basicagent/agent-<pid>-<starttime>/`, and
//! each command `cmd-<n>` in it. The instance name lets several agents (or
//! test processes) share a host; at start, instance directories whose
//! process is gone are leftovers of an earlier run: their commands are
//! killed and the directories removed.
//!
//! Joining. The child writes `0` (itself) into every `cgroup.procs` it was
//! given, as its first act after `clone`: the files are opened by the
//! parent (close-on-exec), so the child only calls `write(2)`, which is
//! async-signal-safe, and nothing of the command runs outside the cgroup.
//! (`CLONE_INTO_CGROUP` would need `clone3` and works on v2 only; the
//! hybrid layout of the v1 limits needs the write anyway.)
//!
//! Kill. v2 (and the hybrid's unified hierarchy): `cgroup.kill`. v1: freeze
//! (`freezer.state`), SIGKILL every pid in `cgroup.procs`, thaw, repeat
//! until empty. The count of processes killed is the pids listed when the
//! kill was made.
//!
//! Every file here is opened by root: paths are built from the mount
//! table and names of our own, values read are parsed strictly and
//! bounded in size.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Name of the directory under the agent's own cgroup.
pub const BASE: &str = "basicagent";
/// Largest cgroup file read (cgroup.procs of a fork bomb stays far below).
const MAX_READ: u64 = 1 << 20;
/// The CFS period used for `cpu_max`.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// cgroup v2 only (`cgroup-v2`).
    V2,
    /// a v2 hierarchy for kill and v1 controllers for limits (`hybrid`).
    Hybrid,
    /// v1 only (`cgroup-v1`).
    V1,
    /// no usable cgroup: process group and subreaper (`none`).
    None,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::V2 => "cgroup-v2",
            Kind::Hybrid => "hybrid",
            Kind::V1 => "cgroup-v1",
            Kind::None => "none",
        }
    }
}

/// One hierarchy found in the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dir: PathBuf,
    /// `None`: the v2 (unified) hierarchy; else the v1 controllers.
    pub controllers: Option<Vec<String>>,
}

/// Decodes the octal escapes of a mountinfo path (`\040` = space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(oct) = b.get(i + 1..i + 4) {
                let digits = std::str::from_utf8(oct).ok();
                if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts of a `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(dir) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let _source = r.next();
        let opts = r.next().unwrap_or("");
        let dir = PathBuf::from(unescape(dir));
        match fstype {
            "cgroup2" => mounts.push(Mount {
                dir,
                controllers: None,
            }),
            "cgroup" => {
                let known = ["memory", "pids", "cpu", "cpuacct", "freezer"];
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| known.contains(o))
                    .map(str::to_owned)
                    .collect();
                if !controllers.is_empty() {
                    mounts.push(Mount {
                        dir,
                        controllers: Some(controllers),
                    });
                }
            }
            _ => {}
        }
    }
    mounts
}

/// The process's own cgroup in the v2 hierarchy (`0::/path`) and per v1
/// controller (`N:memory,...:/path`), from `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            continue;
        }
        if ctl.is_empty() {
            v2 = Some(path.to_owned());
        } else {
            for c in ctl.split(',') {
                v1.push((c.to_owned(), path.to_owned()));
            }
        }
    }
    (v2, v1)
}

/// What a per-command cgroup does in one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// v2: kill, cpu.stat, and (with its controllers) every limit.
    Unified {
        controllers: bool,
    },
    Memory,
    Pids,
    Cpu,
    Cpuacct,
    Freezer,
}

/// The host's layout with the instance directory of each hierarchy used.
#[derive(Debug, Clone)]
pub struct Layout {
    pub kind: Kind,
    dirs: Vec<(Role, PathBuf)>,
}

/// Limits of one command; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// Fraction of one CPU.
    pub cpu_max: Option<f64>,
}

/// What the cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_user_ms: Option<u64>,
    pub cpu_system_ms: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub oom_kills: u64,
}

fn starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the ")" that ends the command name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn instance_name() -> String {
    let pid = std::process::id();
    format!("agent-{pid}-{}", starttime(pid).unwrap_or(0))
}

/// Is `agent-<pid>-<start>` a live process (then not ours to clean)?
fn instance_alive(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("agent-") else {
        return true; // not ours: leave it alone
    };
    let Some((pid, start)) = rest.split_once('-') else {
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    starttime(pid) == Some(start)
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn read_file(path: &Path) -> io::Result<String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let mut s = String::new();
    f.take(MAX_READ).read_to_string(&mut s)?;
    Ok(s)
}

/// The pids in a `cgroup.procs` text.
pub fn parse_pids(text: &str) -> Vec<libc::pid_t> {
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p > 0)
        .collect()
}

/// A `key value` line's value (`memory.events`, `cpu.stat`,
/// `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single number (`memory.peak`, `pids.peak`, `cpuacct.usage_user`).
pub fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `cpu.max` of a fraction of one CPU: `"QUOTA PERIOD"`.
pub fn cpu_max_line(fraction: f64) -> String {
    format!("{} {CPU_PERIOD_US}", cpu_quota_us(fraction))
}

/// The CFS quota of a fraction of one CPU (at least 1 ms, the kernel's
/// floor).
pub fn cpu_quota_us(fraction: f64) -> u64 {
    let q = (fraction * CPU_PERIOD_US as f64).round();
    if q.is_finite() && q >= 1000.0 {
        q as u64
    } else {
        1000
    }
}

/// Kills and removes the commands of a dead instance.
fn clean_instance(dir: &Path, role: Role) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let cmd = Cgroup {
                    dirs: vec![(role, e.path())],
                    procs_fds: Vec::new(),
                    freezer: (role == Role::Freezer).then(|| e.path()),
                };
                let n = cmd.kill();
                if n > 0 {
                    log::warn!(
                        "sync.bash: killed {n} processes left in {} by an earlier run",
                        e.path().display()
                    );
                }
                cmd.remove(Duration::from_millis(500));
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Layout {
    /// No containment.
    pub fn none() -> Layout {
        Layout {
            kind: Kind::None,
            dirs: Vec::new(),
        }
    }

    /// Detects the layout from the mount table and the agent's own
    /// cgroup, creates the instance directories, cleans leftovers.
    pub fn detect() -> Layout {
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        let (own_v2, own_v1) = fs::read_to_string("/proc/self/cgroup")
            .map(|t| parse_proc_cgroup(&t))
            .unwrap_or_default();
        let instance = instance_name();
        let mut dirs = Vec::new();
        let join = |mount: &Path, own: &str| -> PathBuf {
            mount.join(own.trim_start_matches('/')).join(BASE)
        };
        for m in &mounts {
            let (role, base) = match (&m.controllers, &own_v2) {
                (None, Some(own)) => {
                    let base = join(&m.dir, own);
                    let controllers = v2_controllers(&m.dir, own, &base);
                    (Role::Unified { controllers }, base)
                }
                (None, None) => continue,
                (Some(cs), _) => {
                    let Some(c) = cs.first() else { continue };
                    let role = if cs.iter().any(|c| c == "memory") {
                        Role::Memory
                    } else if cs.iter().any(|c| c == "pids") {
                        Role::Pids
                    } else if cs.iter().any(|c| c == "cpu") {
                        Role::Cpu
                    } else if cs.iter().any(|c| c == "cpuacct") {
                        Role::Cpuacct
                    } else {
                        Role::Freezer
                    };
                    let Some((_, own)) = own_v1.iter().find(|(ctl, _)| ctl == c) else {
                        continue;
                    };
                    (role, join(&m.dir, own))
                }
            };
            if dirs.iter().any(|(r, _)| *r == role) {
                continue;
            }
            if let Err(e) = fs::create_dir_all(&base) {
                log::debug!("sync.bash: cgroup {}: {e}", base.display());
                continue;
            }
            if let Ok(entries) = fs::read_dir(&base) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !instance_alive(&name) {
                        clean_instance(&e.path(), role);
                    }
                }
            }
            let dir = base.join(&instance);
            if let Role::Unified { controllers: true } = role {
                let _ = fs::create_dir(&dir);
                enable_controllers(&dir);
            }
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    log::debug!("sync.bash: cgroup {}: {e}", dir.display());
                    continue;
                }
            }
            dirs.push((role, dir));
        }
        let unified = dirs.iter().find_map(|(r, _)| match r {
            Role::Unified { controllers } => Some(*controllers),
            _ => None,
        });
        let v1 = dirs.iter().any(|(r, _)| !matches!(r, Role::Unified { .. }));
        let kind = match (unified, v1) {
            (Some(true), _) => Kind::V2,
            (Some(false), true) => Kind::Hybrid,
            (Some(false), false) => Kind::V2,
            (None, true) if dirs.iter().any(|(r, _)| *r == Role::Freezer) => Kind::V1,
            _ => Kind::None,
        };
        if kind == Kind::None {
            for (_, d) in &dirs {
                let _ = fs::remove_dir(d);
            }
            dirs.clear();
        }
        // Pure v2 with controllers: the v1 dirs are not used.
        if kind == Kind::V2 && unified == Some(true) {
            dirs.retain(|(r, _)| matches!(r, Role::Unified { .. }));
        }
        Layout { kind, dirs }
    }

    /// The instance directories in use (for the log line).
    pub fn describe(&self) -> String {
        self.dirs
            .iter()
            .map(|(_, d)| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Creates the cgroup of command `n` with these limits and opens its
    /// `cgroup.procs` files for the child. A limit this layout cannot
    /// apply is an error (the command does not run unlimited by surprise).
    pub fn create(&self, limits: &Limits) -> Result<Cgroup, CgroupError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!("cmd-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let v2_full = self
            .dirs
            .iter()
            .any(|(r, _)| *r == Role::Unified { controllers: true });
        let mut cg = Cgroup {
            dirs: Vec::new(),
            procs_fds: Vec::new(),
            freezer: None,
        };
        for (role, inst) in &self.dirs {
            let needed = match role {
                Role::Unified { .. } => true,
                // v1 hierarchies only for a limit (each costs a mkdir, a
                // migration and an rmdir: ~25 % of a `true` command's
                // rate with all three); without, the memory peak comes
                // from wait4.
                Role::Memory => limits.memory_max.is_some() && !v2_full,
                Role::Pids => limits.pids_max.is_some() && !v2_full,
                Role::Cpu => limits.cpu_max.is_some() && !v2_full,
                Role::Cpuacct => false,
                // v1-only: the kill needs the freezer.
                Role::Freezer => self.kind == Kind::V1,
            };
            if !needed {
                continue;
            }
            let dir = inst.join(&name);
            fs::create_dir(&dir).map_err(|e| CgroupError::io("mkdir", &dir, e))?;
            if *role == Role::Freezer {
                cg.freezer = Some(dir.clone());
            }
            cg.dirs.push((*role, dir));
        }
        cg.apply(limits)?;
        for (_, dir) in &cg.dirs {
            let p = dir.join("cgroup.procs");
            let f = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&p)
                .map_err(|e| CgroupError::io("open", &p, e))?;
            cg.procs_fds.push(OwnedFd::from(f));
        }
        Ok(cg)
    }
}

/// v2: can the controllers be used below `own`? Enables them in the
/// subtree of `own` and of `base` (the agent moves itself into a leaf
/// `own/agent` first when its cgroup has processes, as delegation asks).
fn v2_controllers(mount: &Path, own: &str, base: &Path) -> bool {
    let own_dir = mount.join(own.trim_start_matches('/'));
    let available = read_file(&own_dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted = ["memory", "pids", "cpu"];
    if !wanted
        .iter()
        .all(|c| available.split_whitespace().any(|a| a == *c))
    {
        return false;
    }
    if own != "/" {
        // Only the agent itself moves, and only when it is alone in its
        // cgroup (a delegated service's): never other processes (a ctl
        // run from a login session must not move the session's shell).
        let procs = read_file(&own_dir.join("cgroup.procs")).unwrap_or_default();
        let me = libc::pid_t::try_from(std::process::id()).unwrap_or(-1);
        match parse_pids(&procs).as_slice() {
            [] => {}
            [only] if *only == me => {
                let leaf = own_dir.join("agent");
                let _ = fs::create_dir(&leaf);
                if write_file(&leaf.join("cgroup.procs"), "0").is_err() {
                    return false;
                }
            }
            _ => {
                log::info!(
                    "sync.bash: cgroup {} holds other processes: no v2 controllers for commands (kill only)",
                    own_dir.display()
                );
                return false;
            }
        }
    }
    if !enable_controllers(&own_dir) {
        return false;
    }
    let _ = fs::create_dir_all(base);
    enable_controllers(base)
}

fn enable_controllers(dir: &Path) -> bool {
    write_file(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu").is_ok()
}

/// Why a command's cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{0} cannot be applied: this host has no cgroup controller for it")]
    Unsupported(&'static str),
}

impl CgroupError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// One command's cgroup (in every hierarchy used).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(Role, PathBuf)>,
    /// `cgroup.procs` of each, open for the child; closed after spawn.
    procs_fds: Vec<OwnedFd>,
    freezer: Option<PathBuf>,
}

impl Cgroup {
    fn dir(&self, want: impl Fn(Role) -> bool) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(r, _)| want(*r))
            .map(|(_, d)| d.as_path())
    }

    fn unified(&self) -> Option<(&Path, bool)> {
        self.dirs.iter().find_map(|(r, d)| match r {
            Role::Unified { controllers } => Some((d.as_path(), *controllers)),
            _ => None,
        })
    }

    /// The raw descriptors the child writes `0` into.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs_fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Closes the descriptors (after the child exec'd).
    pub fn close_fds(&mut self) {
        self.procs_fds.clear();
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let set = |dir: &Path, file: &str, value: &str| {
            let p = dir.join(file);
            write_file(&p, value).map_err(|e| CgroupError::io("write", &p, e))
        };
        let v2 = self.unified().filter(|(_, c)| *c).map(|(d, _)| d);
        if let Some(m) = limits.memory_max {
            if let Some(d) = v2 {
                set(d, "memory.max", &m.to_string())?;
                let _ = set(d, "memory.swap.max", "0");
            } else if let Some(d) = self.dir(|r| r == Role::Memory) {
                set(d, "memory.limit_in_bytes", &m.to_string())?;
                // Absent without swap accounting: best effort.
                let _ = set(d, "memory.memsw.limit_in_bytes", &m.to_string());
            } else {
                return Err(CgroupError::Unsupported("memory_max"));
            }
        }
        if let Some(n) = limits.pids_max {
            let d = v2
                .or_else(|| self.dir(|r| r == Role::Pids))
                .ok_or(CgroupError::Unsupported("pids_max"))?;
            set(d, "pids.max", &n.to_string())?;
        }
        if let Some(f) = limits.cpu_max {
            if let Some(d) = v2 {
                set(d, "cpu.max", &cpu_max_line(f))?;
            } else if let Some(d) = self.dir(|r| r == Role::Cpu) {
                set(d, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                set(d, "cpu.cfs_quota_us", &cpu_quota_us(f).to_string())?;
            } else {
                return Err(CgroupError::Unsupported("cpu_max"));
            }
        }
        Ok(())
    }

    /// The pids in the cgroup (the unified one, else the first).
    pub fn pids(&self) -> Vec<libc::pid_t> {
        let dir = self
            .unified()
            .map(|(d, _)| d)
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()));
        dir.and_then(|d| read_file(&d.join("cgroup.procs")).ok())
            .map(|t| parse_pids(&t))
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup; returns how many were listed.
    pub fn kill(&self) -> u32 {
        let listed = self.pids();
        let count = u32::try_from(listed.len()).unwrap_or(u32::MAX);
        if let Some((d, _)) = self.unified() {
            if write_file(&d.join("cgroup.kill"), "1").is_ok() {
                return count;
            }
        }
        // v1: freeze, kill every pid, thaw; again while pids remain (a
        // fork between listing and freezing).
        let freezer = self.freezer.as_deref();
        for _ in 0..10 {
            if let Some(f) = freezer {
                let _ = write_file(&f.join("freezer.state"), "FROZEN");
            }
            let pids = match freezer {
                Some(f) => read_file(&f.join("cgroup.procs"))
                    .map(|t| parse_pids(&t))
                    .unwrap_or_default(),
                None => self.pids(),
            };
            for &pid in &pids {
                // SAFETY: kill(2) with a pid read from the cgroup; a pid
                // reused meanwhile is in this cgroup only if it is ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(f) = freezer {
                let _ = write_file(&f.join("freezer.state"), "THAWED");
            }
            if pids.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        count
    }

    /// What the cgroup measured (before removal).
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        let read = |d: &Path, f: &str| read_file(&d.join(f)).ok();
        if let Some((d, controllers)) = self.unified() {
            // cpu.stat exists in every v2 cgroup, controllers or not.
            if let Some(t) = read(d, "cpu.stat") {
                u.cpu_user_ms = keyed(&t, "user_usec").map(|v| v / 1000);
                u.cpu_system_ms = keyed(&t, "system_usec").map(|v| v / 1000);
            }
            if controllers {
                u.memory_peak_bytes = read(d, "memory.peak").and_then(|t| number(&t));
                u.pids_peak = read(d, "pids.peak").and_then(|t| number(&t));
                u.oom_kills = read(d, "memory.events")
                    .and_then(|t| keyed(&t, "oom_kill"))
                    .unwrap_or(0);
            }
        }
        if let Some(d) = self.dir(|r| r == Role::Memory) {
            u.memory_peak_bytes = u
                .memory_peak_bytes
                .or_else(|| read(d, "memory.max_usage_in_bytes").and_then(|t| number(&t)));
            let v1_ooms = read(d, "memory.oom_control")
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0);
            u.oom_kills = u.oom_kills.max(v1_ooms);
        }
        if let Some(d) = self.dir(|r| r == Role::Pids) {
            u.pids_peak = u
                .pids_peak
                .or_else(|| read(d, "pids.peak").and_then(|t| number(&t)));
        }
        u
    }

    /// Removes the directories; empty ones go at once, others are
    /// retried until `within` has passed. Returns whether all went.
    pub fn remove(&self, within: Duration) -> bool {
        let deadline = Instant::now().checked_add(within);
        let mut all = true;
        for (_, d) in &self.dirs {
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if deadline.is_some_and(|t| Instant::now() < t) => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => {
                        all = false;
                        break;
                    }
                }
            }
        }
        all
    }
}

/// Cgroups of commands answered while something still ran in them (a
/// daemon left in the background): removed once empty.
static LINGERING: Mutex<Vec<Cgroup>> = Mutex::new(Vec::new());

/// Keeps `cg` for a later [`sweep`].
pub fn linger(cg: Cgroup) {
    LINGERING.lock().unwrap_or_else(|e| e.into_inner()).push(cg);
}

/// Removes the lingering cgroups that have emptied.
pub fn sweep() {
    let mut list = LINGERING.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|cg| !cg.remove(Duration::ZERO));
}

/// At `fini`: removes the lingering cgroups that emptied and the
/// instance directories (those still in use stay, for the next start).
pub fn fini() {
    sweep();
    for (_, d) in &layout().dirs {
        let _ = fs::remove_dir(d);
    }
}

/// The layout, detected at `init` (or `none` when turned off).
static LAYOUT: OnceLock<Layout> = OnceLock::new();

/// Sets the layout once (first `init` wins).
pub fn init(enabled: bool) -> &'static Layout {
    LAYOUT.get_or_init(|| {
        let layout = if enabled {
            Layout::detect()
        } else {
            Layout::none()
        };
        match layout.kind {
            Kind::None => log::warn!(
                "sync.bash: containment none: commands are stopped by process group and subreaper only{}",
                if enabled { "" } else { " (containment = \"off\")" }
            ),
            k => log::info!("sync.bash: containment {}: {}", k.name(), layout.describe()),
        }
        layout
    })
}

/// The layout in use (`none` before `init`).
pub fn layout() -> &'static Layout {
    static NONE: OnceLock<Layout> = OnceLock::new();
    LAYOUT
        .get()
        .unwrap_or_else(|| NONE.get_or_init(Layout::none))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,freezer
31 25 0:29 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
";

    #[test]
    fn mountinfo_hybrid() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].dir, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].controllers, None);
        assert_eq!(
            m[1].controllers.as_deref(),
            Some(&["memory".to_owned()][..])
        );
        assert_eq!(
            m[2].controllers.as_deref(),
            Some(&["cpu".to_owned(), "cpuacct".to_owned()][..])
        );
        assert_eq!(m[4].dir, PathBuf::from("/sys/fs/cgroup/with space"));
    }

    #[test]
    fn mountinfo_v2_only() {
        let m = parse_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(
            m,
            vec![Mount {
                dir: PathBuf::from("/sys/fs/cgroup"),
                controllers: None
            }]
        );
    }

    #[test]
    fn proc_cgroup() {
        let (v2, v1) = parse_proc_cgroup(
            "12:pids:/system.slice/ba.service\n4:cpu,cpuacct:/x\n0::/system.slice/ba.service\n1:name=systemd:/y\n9:memory:/../evil\n",
        );
        assert_eq!(v2.as_deref(), Some("/system.slice/ba.service"));
        assert!(v1.contains(&("pids".into(), "/system.slice/ba.service".into())));
        assert!(v1.contains(&("cpu".into(), "/x".into())));
        assert!(v1.contains(&("cpuacct".into(), "/x".into())));
        assert!(
            !v1.iter().any(|(c, _)| c == "memory"),
            "a path with .. is refused"
        );
    }

    #[test]
    fn file_formats() {
        assert_eq!(parse_pids("12\n345\n\ngarbage\n-1\n0\n"), vec![12, 345]);
        let events = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(2));
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n";
        assert_eq!(keyed(stat, "user_usec"), Some(100_000));
        assert_eq!(keyed(stat, "system_usec"), Some(23_456));
        assert_eq!(keyed(stat, "nope"), None);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(number("67108864\n"), Some(64 << 20));
        assert_eq!(number("max\n"), None);
        assert_eq!(cpu_max_line(0.5), "50000 100000");
        assert_eq!(cpu_max_line(2.0), "200000 100000");
        assert_eq!(cpu_quota_us(0.000_001), 1000, "kernel floor");
        assert_eq!(cpu_quota_us(f64::NAN), 1000);
    }

    #[test]
    fn instance_names() {
        let me = instance_name();
        assert!(instance_alive(&me));
        assert!(!instance_alive("agent-999999999-1"));
        assert!(instance_alive("something-else"), "not ours: left alone");
        assert!(instance_alive("agent-x-y"));
    }

    /// Leftovers of a dead agent (an instance whose process is gone) are
    /// killed and removed at detection, and a live one's are not.
    #[test]
    fn leftovers_of_an_earlier_run_are_cleaned() {
        let (Some(own), _) = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap())
        else {
            return;
        };
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let Some(v2) = mounts.iter().find(|m| m.controllers.is_none()) else {
            eprintln!("no cgroup v2 hierarchy: skipped");
            return;
        };
        let base = v2.dir.join(own.trim_start_matches('/')).join(BASE);
        let dead = base.join("agent-999999999-1").join("cmd-0");
        fs::create_dir_all(&dead).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("1048")
            .spawn()
            .unwrap();
        write_file(&dead.join("cgroup.procs"), &child.id().to_string()).unwrap();
        let layout = Layout::detect();
        assert_ne!(layout.kind, Kind::None);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(!base.join("agent-999999999-1").exists());
        let me = base.join(instance_name());
        assert!(me.exists());
        let _ = fs::remove_dir(me);
    }

    /// The v1 kill (freeze, SIGKILL each pid, thaw) on this host's v1
    /// freezer hierarchy, where there is one; then the rmdir.
    #[test]
    fn v1_freeze_kill_thaw_and_remove() {
        let (_, own_v1) = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap());
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let Some(m) = mounts.iter().find(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == "freezer"))
        }) else {
            eprintln!("no v1 freezer: skipped");
            return;
        };
        let Some((_, own)) = own_v1.iter().find(|(c, _)| c == "freezer") else {
            return;
        };
        let dir = m
            .dir
            .join(own.trim_start_matches('/'))
            .join(format!("contain-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut children: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("1049")
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &children {
            write_file(&dir.join("cgroup.procs"), &c.id().to_string()).unwrap();
        }
        let cg = Cgroup {
            dirs: vec![(Role::Freezer, dir.clone())],
            procs_fds: Vec::new(),
            freezer: Some(dir.clone()),
        };
        assert_eq!(cg.pids().len(), 3);
        assert_eq!(cg.kill(), 3);
        for c in &mut children {
            let status = c.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
        assert_eq!(
            read_file(&dir.join("freezer.state")).unwrap().trim(),
            "THAWED"
        );
        assert!(cg.remove(Duration::from_secs(5)));
        assert!(!dir.exists());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("plain"), "plain");
    }
}
