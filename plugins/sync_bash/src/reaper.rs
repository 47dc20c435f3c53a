//! Orphans: the agent makes itself a child subreaper (and may be PID 1 in
//! a container), so processes that commands leave behind are re-parented
//! to it and must be reaped here; and after a command is stopped, the
//! processes that escaped its process group are found and killed.
//!
//! Never steals an exit status: the executors reap their own commands by
//! pid (after the pidfd says bash exited), so this module reaps only
//! children that no executor tracks and that are outside the agent's own
//! session. Every command starts a new session, so every descendant of a
//! command is outside it, while a child another part of the agent starts
//! (`std::process::Command`, which waits for its own pid) stays inside it
//! unless it calls `setsid` (a documented limit). As PID 1 the session
//! rule is dropped (the agent's own parts never wait for a child; every
//! orphan of the container is reaped). A child is tracked from
//! the moment `clone` returns; a reaping round that overlaps a spawn in
//! progress is skipped, so a fresh child is never taken for an orphan.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

/// Pids the executors own (spawned, not yet reaped by them).
static TRACKED: Mutex<Option<HashSet<libc::pid_t>>> = Mutex::new(None);
/// Spawns between `clone` and [`track`]: each one's pid slot (0 until
/// the child has written its pid).
static SPAWNING: Mutex<Vec<Arc<AtomicI32>>> = Mutex::new(Vec::new());
/// Orphans reaped since the start (reported in logs, read by tests).
static REAPED: AtomicUsize = AtomicUsize::new(0);
/// Set while commands run or a round found work: rounds are frequent.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Most descendants one stopped command is searched for.
const MAX_DESCENDANTS: usize = 4096;

fn tracked() -> MutexGuard<'static, Option<HashSet<libc::pid_t>>> {
    // The set is updated in single inserts and removes: never half-changed.
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawning() -> MutexGuard<'static, Vec<Arc<AtomicI32>>> {
    // Single pushes and removes: never half-changed.
    SPAWNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a spawn in progress until dropped (see [`track`]); `slot` is
/// where its child writes its pid.
pub struct Spawning(Arc<AtomicI32>);

impl Spawning {
    pub fn enter(slot: &Arc<AtomicI32>) -> Spawning {
        spawning().push(Arc::clone(slot));
        Spawning(Arc::clone(slot))
    }
}

impl Drop for Spawning {
    fn drop(&mut self) {
        spawning().retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

/// An executor owns `pid` now (call while the [`Spawning`] guard lives).
pub fn track(pid: libc::pid_t) {
    tracked().get_or_insert_with(HashSet::new).insert(pid);
    ACTIVE.store(true, Ordering::Relaxed);
}

/// The executor reaped `pid` (or gave it up to the reaper).
pub fn untrack(pid: libc::pid_t) {
    if let Some(set) = tracked().as_mut() {
        set.remove(&pid);
    }
}

/// Makes this process a child subreaper (once) and starts the reaper
/// thread. Returns whether the process is a subreaper or PID 1.
pub fn start() -> bool {
    static ONCE: Once = Once::new();
    static OK: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        // SAFETY: getpid takes no arguments and cannot fail.
        let pid1 = unsafe { libc::getpid() } == 1;
        if rc != 0 {
            log::warn!(
                "sync.bash: cannot become a child subreaper ({}): processes that commands \
                 leave behind are not reaped or killed by the agent",
                std::io::Error::last_os_error()
            );
        }
        let ok = rc == 0 || pid1;
        OK.store(ok, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("sync-bash-reap".to_owned())
            .spawn(run);
        if let Err(e) = spawned {
            log::error!("sync.bash: cannot start the orphan reaper: {e}");
        }
    });
    OK.load(Ordering::Relaxed)
}

/// Quiet rounds (nothing reaped, no command started or killed) after
/// which the reaper looks only every [`SLOW`].
const QUIET_ROUNDS: u32 = 30;
const SLOW: Duration = Duration::from_secs(5);

fn run() {
    let mut busy = false;
    let mut quiet = 0u32;
    loop {
        // Sleep first: a round at once, while the host is still starting,
        // measured ~3x the whole run time of a one-shot ctl call (the
        // /proc reads race the start-up's own system calls), and at start
        // there is nothing to reap yet. Commands started or killed since
        // the last round: look again soon; otherwise once a second.
        // After half a minute of quiet, every 5 s (an idle agent wakes
        // rarely; a daemon a command left behind is reaped within 5 s).
        std::thread::sleep(if busy {
            Duration::from_millis(100)
        } else if quiet >= QUIET_ROUNDS {
            SLOW
        } else {
            Duration::from_secs(1)
        });
        let found = std::panic::catch_unwind(reap_round).unwrap_or(0);
        // Cgroups of answered commands that were still in use (a daemon
        // left behind, or killed processes not gone yet) go once empty.
        let _ = std::panic::catch_unwind(crate::cgroup::sweep);
        busy = found > 0 || ACTIVE.swap(false, Ordering::Relaxed);
        quiet = if busy { 0 } else { quiet.saturating_add(1) };
    }
}

/// This process's children: `/proc/self/task/*/children` (every thread's
/// list), or a scan of `/proc/*/stat` where that file does not exist.
fn own_children() -> Vec<libc::pid_t> {
    // SAFETY: getpid takes no arguments and cannot fail.
    let me = unsafe { libc::getpid() };
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<libc::pid_t>().ok()),
                );
            }
        }
    }
    if !listed {
        out = children_by_scan(me);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Children of `parent` from `/proc/*/stat` (ppid is field 4).
fn children_by_scan(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let ppid = std::str::from_utf8(&stat[close + 1..])
            .ok()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` (a child of ours) has exited, without reaping it.
fn is_zombie(pid: libc::pid_t) -> bool {
    // SAFETY: all-zero is a valid siginfo_t for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only reports, and `info` is valid.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (si_pid 0: nothing has exited).
    rc == 0 && unsafe { info.si_pid() } == pid
}

/// Reaps the exited orphans; returns how many.
fn reap_round() -> usize {
    // SAFETY: getsid(0) is our own session; getpid cannot fail.
    let (own_session, pid1) = unsafe { (libc::getsid(0), libc::getpid() == 1) };
    let children = own_children();
    let untracked: Vec<libc::pid_t> = {
        let guard = tracked();
        // Children being spawned are not tracked yet: skip them. One
        // whose pid is not known yet could be any child: next round. (A
        // child stuck before execve has written its pid, so it never
        // stops the reaper.)
        let in_spawn: Vec<libc::pid_t> = {
            let slots = spawning();
            let pids: Vec<libc::pid_t> = slots.iter().map(|s| s.load(Ordering::SeqCst)).collect();
            if pids.contains(&0) {
                ACTIVE.store(true, Ordering::Relaxed);
                return 0;
            }
            pids
        };
        children
            .into_iter()
            .filter(|pid| !guard.as_ref().is_some_and(|s| s.contains(pid)))
            .filter(|pid| !in_spawn.contains(pid))
            .collect()
    };
    let mut reaped = 0;
    for pid in untracked {
        // SAFETY: getsid on a pid that is our unreaped child (stable).
        let sid = unsafe { libc::getsid(pid) };
        // As PID 1 nothing else in the agent waits for a child, and the
        // orphans of the whole container come here, whatever their
        // session: every untracked zombie is reaped.
        if sid < 0 || (sid == own_session && !pid1) || !is_zombie(pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on our own exited, untracked child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            reaped += 1;
        }
    }
    if reaped > 0 {
        let total = REAPED.fetch_add(reaped, Ordering::Relaxed) + reaped;
        log::debug!("sync.bash: reaped {reaped} orphaned processes ({total} in all)");
    }
    reaped
}

/// Children of `pid` (every thread's list).
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<libc::pid_t>().ok()),
            );
        }
    }
    out
}

fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    // SAFETY: a fresh descriptor that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A process found while the command was stopped: its pid and start
/// time, so that a recycled pid is never signalled (no descriptor is held
/// during the grace: a stopped command may have thousands of processes).
pub struct Watched {
    pid: libc::pid_t,
    start: u64,
}

/// What `/proc/PID/stat` says of a process (it never reads the process's
/// memory): state, process group, session, start time in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: u8,
    pgrp: libc::pid_t,
    session: libc::pid_t,
    start: u64,
}

fn parse_stat(stat: &[u8]) -> Option<ProcStat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: *f.first()?.as_bytes().first()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn proc_stat(pid: libc::pid_t) -> Option<ProcStat> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// Every descendant of `root` (bash, not reaped) right now: the tree is
/// walked through the `children` files, which never wait on a process's
/// memory, and bounded.
pub fn descendants(root: libc::pid_t) -> Vec<Watched> {
    let mut out: Vec<Watched> = Vec::new();
    let mut queue = vec![root];
    let mut seen = HashSet::new();
    while let Some(pid) = queue.pop() {
        for child in children_of(pid) {
            if out.len() >= MAX_DESCENDANTS || !seen.insert(child) {
                continue;
            }
            if let Some(st) = proc_stat(child) {
                out.push(Watched {
                    pid: child,
                    start: st.start,
                });
                queue.push(child);
            }
        }
    }
    out
}

/// Pins `pid` with a pidfd if it is still the process that started at
/// `start` (checked after the pidfd is open, so the pidfd cannot refer
/// to a newer process), alive and outside the process group `pgid`.
fn pin_escaped(
    pid: libc::pid_t,
    start: Option<u64>,
    pgid: libc::pid_t,
) -> Option<(OwnedFd, ProcStat)> {
    let fd = pidfd_open(pid)?;
    let st = proc_stat(pid)?;
    let same = start.is_none_or(|s| s == st.start);
    // A zombie has no threads left to signal: not a survivor.
    let alive = st.state != b'Z' && st.state != b'X';
    (same && alive && st.pgrp != pgid).then_some((fd, st))
}

fn kill_pidfd(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// After a stopped command's group was killed (bash not reaped yet, so
/// its pid is still its group and session id): SIGKILL every process
/// that escaped the group, i.e. the descendants found when it was
/// stopped, and the untracked children of ours (re-parented orphans)
/// still in its session. Returns how many were killed.
pub fn kill_survivors(bash: libc::pid_t, watched: &[Watched]) -> u32 {
    let mut killed = 0u32;
    let mut done = HashSet::new();
    for w in watched {
        if let Some((fd, _)) = pin_escaped(w.pid, Some(w.start), bash) {
            if kill_pidfd(&fd) {
                killed = killed.saturating_add(1);
                done.insert(w.pid);
            }
        }
    }
    let untracked: Vec<libc::pid_t> = {
        let guard = tracked();
        own_children()
            .into_iter()
            .filter(|pid| !guard.as_ref().is_some_and(|s| s.contains(pid)))
            .collect()
    };
    for pid in untracked {
        if done.contains(&pid) {
            continue;
        }
        // No process can join bash's session while bash is unreaped.
        if let Some((fd, st)) = pin_escaped(pid, None, bash) {
            if st.session == bash && kill_pidfd(&fd) {
                killed = killed.saturating_add(1);
            }
        }
    }
    if killed > 0 {
        ACTIVE.store(true, Ordering::Relaxed);
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let line = b"4242 (a) b (c) S 1 4240 4200 0 -1 4194560 0 0 0 0 7 8 0 0 20 0 1 0 987654 1000 50 18446744073709551615\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: b'S',
                pgrp: 4240,
                session: 4200,
                start: 987654
            })
        );
        assert_eq!(parse_stat(b"4242 (cut"), None);
        assert_eq!(parse_stat(b"4242 (x) Z 1 2"), None);
        // Our own process, from the real file.
        // SAFETY: getpid/getsid cannot fail for ourselves.
        let (me, sid) = unsafe { (libc::getpid(), libc::getsid(0)) };
        let st = proc_stat(me).unwrap();
        // (The state is the main thread's, which waits for this test.)
        assert_eq!(st.session, sid);
    }

    #[test]
    fn a_process_that_left_the_group_is_pinned_and_a_recycled_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let start = proc_stat(pid).unwrap().start;
        // SAFETY: getpgrp cannot fail.
        let own_group = unsafe { libc::getpgrp() };
        assert!(
            pin_escaped(pid, Some(start), own_group).is_none(),
            "same group"
        );
        assert!(pin_escaped(pid, Some(start), 1).is_some());
        assert!(
            pin_escaped(pid, Some(start + 1), 1).is_none(),
            "another process"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(pin_escaped(pid, Some(start), 1).is_none(), "gone");
    }
}
