//! Starting `/bin/bash -c CMD` in a new session as another identity, and
//! the few process syscalls around it (signal the group, reap).
//!
//! Everything the child needs (argv, envp, paths, group list) is built in
//! the parent; the child is started the way posix_spawn does it
//! (`clone(CLONE_VM | CLONE_VFORK)` on a stack of our own, measured ~24 %
//! less CPU per command than `fork`), with `fork` as the fallback, and
//! until `execve` it makes only raw, async-signal-safe system calls and
//! never allocates. Every descriptor
//! the parent creates is `O_CLOEXEC` and numbered >= 3, so concurrent
//! spawns never leak pipe ends into each other's commands, and the child
//! marks every other inherited descriptor close-on-exec too.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The system calls that set the supplementary groups, the real/effective/
/// saved gid and uid, taking 32-bit ids. On 32-bit x86 and 32-bit ARM the
/// plain `SYS_setgroups`/`SYS_setresgid`/`SYS_setresuid` are the legacy
/// 16-bit calls (uid 65536 would become 0): there the `*32` calls are the
/// right ones. Every other Linux target listed has only 32-bit calls; an
/// unlisted one refuses to build rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSyscalls {
    pub setgroups: libc::c_long,
    pub setresgid: libc::c_long,
    pub setresuid: libc::c_long,
}

#[cfg(any(target_arch = "x86", target_arch = "arm"))]
pub const ID_SYSCALLS: IdSyscalls = IdSyscalls {
    setgroups: libc::SYS_setgroups32,
    setresgid: libc::SYS_setresgid32,
    setresuid: libc::SYS_setresuid32,
};

#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64",
    target_arch = "mips64"
))]
pub const ID_SYSCALLS: IdSyscalls = IdSyscalls {
    setgroups: libc::SYS_setgroups,
    setresgid: libc::SYS_setresgid,
    setresuid: libc::SYS_setresuid,
};

#[cfg(not(any(
    target_arch = "x86",
    target_arch = "arm",
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64",
    target_arch = "mips64"
)))]
compile_error!(
    "sync.bash: unknown target architecture: check whether SYS_setgroups/SYS_setresgid/\
     SYS_setresuid take 16-bit ids here (then use the *32 calls) and list it in spawn.rs"
);

/// Where a failed child stopped before `execve` succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Setsid,
    Dup2,
    Setgroups,
    Setgid,
    Setuid,
    Chdir,
    Exec,
    Cgroup,
    Nice,
}

impl Stage {
    fn code(self) -> u32 {
        self as u32 + 1
    }

    fn from_code(code: u32) -> Option<Stage> {
        use Stage::*;
        [
            Setsid, Dup2, Setgroups, Setgid, Setuid, Chdir, Exec, Cgroup, Nice,
        ]
        .get(code.checked_sub(1)? as usize)
        .copied()
    }

    /// What the stage is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Setsid => "setsid",
            Stage::Dup2 => "dup2",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Chdir => "chdir",
            Stage::Exec => "execve /bin/bash",
            Stage::Cgroup => "joining the command's cgroup",
            Stage::Nice => "setpriority (nice)",
        }
    }
}

/// The child reported that it could not get to `execve`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} failed: {}", .stage.name(), io::Error::from_raw_os_error(*.errno))]
pub struct ChildFailure {
    pub stage: Stage,
    pub errno: i32,
}

/// The parent could not start the child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("invalid argument for the command: interior NUL")]
    Nul,
    #[error("cannot start the command: {what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },
}

/// The user and groups the child switches to.
#[derive(Debug, Clone)]
pub struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Everything the child needs, prepared in the parent.
pub struct Plan {
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Explicit working directory (failure is an error), or the home to
    /// try before falling back to `/`.
    cwd: CString,
    cwd_required: bool,
    ids: Option<Ids>,
    with_stdin: bool,
    /// `cgroup.procs` files (open, close-on-exec) the child writes `0`
    /// into before anything else: the command starts in its cgroup.
    pub cgroup_procs: Vec<RawFd>,
    /// `setpriority(PRIO_PROCESS, 0, nice)` before the identity switch.
    pub nice: Option<i32>,
}

impl Plan {
    /// `/bin/bash -c cmd` with this environment, directory and identity.
    pub fn new(
        cmd: &str,
        env: &[(String, String)],
        cwd: Option<&str>,
        home: &str,
        ids: Option<Ids>,
        with_stdin: bool,
    ) -> Result<Plan, SpawnError> {
        let c = |s: &str| CString::new(s).map_err(|_| SpawnError::Nul);
        let argv = vec![c("bash")?, c("-c")?, c(cmd)?];
        let envp = env
            .iter()
            .map(|(k, v)| c(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let (cwd, cwd_required) = match cwd {
            Some(dir) => (c(dir)?, true),
            None => (c(if home.is_empty() { "/" } else { home })?, false),
        };
        Ok(Plan {
            argv,
            envp,
            cwd,
            cwd_required,
            ids,
            with_stdin,
            cgroup_procs: Vec::new(),
            nice: None,
        })
    }
}

/// A started command: its pid (= its process group and session id), a
/// pidfd readable once it exits, and the parent's pipe ends.
#[derive(Debug)]
pub struct Child {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Write end of stdin (non-blocking), when the request gave stdin.
    pub stdin: Option<OwnedFd>,
    /// The stdin read end, kept open by the parent so that writing never
    /// raises SIGPIPE in the host, even if the command never reads.
    pub stdin_keepalive: Option<OwnedFd>,
    /// Read end of the error channel: empty at EOF means `execve` worked.
    pub failure: OwnedFd,
    /// The command's cgroup (set by the starter), `None`: uncontained.
    pub cgroup: Option<crate::cgroup::Cgroup>,
}

fn os(what: &'static str) -> SpawnError {
    SpawnError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Moves `fd` to a number >= 3 (close-on-exec), so that `dup2` onto 0..2
/// in the child always clears close-on-exec.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, SpawnError> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(os("fcntl(F_DUPFD_CLOEXEC)"));
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe (read end, write end), both numbered >= 3.
fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os("pipe2"));
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Makes the parent's end of a pipe non-blocking.
pub fn set_nonblocking(fd: &OwnedFd) -> Result<(), SpawnError> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: fcntl(F_SETFL) on the same descriptor we own; it only
        // adds O_NONBLOCK to the flags just read.
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(os("fcntl(O_NONBLOCK)"));
    }
    Ok(())
}

fn dev_null() -> Result<OwnedFd, SpawnError> {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os("open /dev/null"));
    }
    // SAFETY: a fresh descriptor we own.
    above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts the command. Returns once the child has called `execve` (the
/// vfork-style parent waits for it) or failed before it (the failure
/// arrives on `Child::failure`). The child stores its pid in `published`
/// first thing, so that another thread can kill it while this one waits
/// (a `chdir` into a hung mount); until this returns and the pid is
/// reaped, that pid cannot be reused.
pub fn spawn(plan: &Plan, published: &AtomicI32) -> Result<Child, SpawnError> {
    spawn_with(plan, true, published)
}

/// [`spawn`], with `vfork_style` false forcing the `fork` path.
fn spawn_with(plan: &Plan, vfork_style: bool, published: &AtomicI32) -> Result<Child, SpawnError> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (fail_r, fail_w) = pipe()?;
    let (in_r, in_w) = if plan.with_stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    for fd in [&out_r, &err_r, &fail_r].into_iter().chain(in_w.as_ref()) {
        set_nonblocking(fd)?;
    }
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let child_fds = ChildFds {
        stdin: in_r.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        failure: fail_w.as_raw_fd(),
    };
    let args = ChildArgs {
        plan,
        argv: &argv,
        envp: &envp,
        fds: child_fds,
        published,
    };
    let started = if vfork_style {
        clone_child(&args)
    } else {
        fork_child(&args)
    };
    let (pid, pidfd) = match started {
        Ok(started) => started,
        // A kernel or seccomp policy without CLONE_PIDFD: plain fork.
        Err(SpawnError::Os { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)
            ) =>
        {
            log::debug!(
                "sync.bash: clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) refused ({source}); forking"
            );
            fork_child(&args)?
        }
        Err(e) => return Err(e),
    };
    drop((out_w, err_w, fail_w));
    let (stdin, stdin_keepalive) = match in_w {
        Some(w) => (Some(w), Some(in_r)),
        None => (None, None),
    };
    Ok(Child {
        pid,
        pidfd,
        stdout: out_r,
        stderr: err_r,
        stdin,
        stdin_keepalive,
        failure: fail_r,
        cgroup: None,
    })
}

/// What `child_main` needs, behind one pointer for `clone`.
struct ChildArgs<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    fds: ChildFds,
    /// Where the vfork-style child writes its pid (shared memory).
    published: &'a AtomicI32,
}

fn fork_child(args: &ChildArgs<'_>) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    // SAFETY: fork in a multi-threaded process is sound as long as the
    // child only makes async-signal-safe calls until execve: `child_main`
    // uses raw syscalls on data prepared by the parent and never allocates.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os("fork"));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see child_main.
        unsafe { child_main(args.plan, args.argv, args.envp, args.fds) }
    }
    // fork does not wait for the child: published for uniformity.
    args.published.store(pid, Ordering::SeqCst);
    // SAFETY: pidfd_open on our own, unreaped child: the pid cannot be
    // reused before we reap it.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if pidfd < 0 {
        let e = os("pidfd_open");
        // SAFETY: our own child; kill and reap it so it leaves no zombie.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    // SAFETY: pidfd_open returned a fresh (close-on-exec) descriptor.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Size of the stack the vfork-style child runs on (plus a guard page).
const CHILD_STACK: usize = 64 * 1024;
const GUARD: usize = 4096;

/// One child stack per spawning thread: `CLONE_VFORK` suspends that
/// thread until the child has exec'd or exited, so it is never shared.
struct ChildStack(*mut libc::c_void);

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `child_stack_top`, no longer in use.
        unsafe { libc::munmap(self.0, CHILD_STACK + GUARD) };
    }
}

thread_local! {
    static STACK: std::cell::Cell<Option<*mut libc::c_void>> = const { std::cell::Cell::new(None) };
    static STACK_OWNER: std::cell::RefCell<Option<ChildStack>> = const { std::cell::RefCell::new(None) };
}

fn child_stack_top() -> Result<*mut libc::c_void, SpawnError> {
    if let Some(top) = STACK.with(|s| s.get()) {
        return Ok(top);
    }
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHILD_STACK + GUARD,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(os("mmap child stack"));
    }
    // SAFETY: the lowest page of our own mapping becomes the guard.
    if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
        let e = os("mprotect child stack");
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(base, CHILD_STACK + GUARD) };
        return Err(e);
    }
    // SAFETY: one past the end of the mapping (the stack grows down).
    let top = unsafe { base.cast::<u8>().add(CHILD_STACK + GUARD) }.cast::<libc::c_void>();
    STACK_OWNER.with(|o| *o.borrow_mut() = Some(ChildStack(base)));
    STACK.with(|s| s.set(Some(top)));
    Ok(top)
}

extern "C" fn clone_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `clone_child` passed; the
    // parent is suspended (CLONE_VFORK) so it stays alive and unchanged.
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    // Raw getpid (no libc cache) and an atomic store: async-signal-safe.
    // SAFETY: getpid takes no arguments.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
    args.published.store(pid, Ordering::SeqCst);
    // SAFETY: the fresh child; see child_main.
    unsafe { child_main(args.plan, args.argv, args.envp, args.fds) }
}

/// posix_spawn's technique: `clone(CLONE_VM | CLONE_VFORK)` on a stack of
/// our own, so no page tables are copied and the parent takes no
/// copy-on-write faults; `CLONE_PIDFD` hands back the pidfd atomically.
fn clone_child(args: &ChildArgs<'_>) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    let top = child_stack_top()?;
    // Block every signal around clone: no handler of the host may run in
    // the child while it shares our memory. The child resets dispositions
    // and then its mask before execve.
    // SAFETY: sigset_t is plain data; all zeros is a valid (empty) set.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as for `all`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child runs `clone_entry` on its own stack, touches only
    // `args` (read-only) and its stack, and makes raw syscalls until
    // execve or _exit; CLONE_VFORK keeps this thread (and so `args` and
    // the stack) suspended until then.
    let pid = unsafe {
        libc::clone(
            clone_entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (args as *const ChildArgs<'_>)
                .cast_mut()
                .cast::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let error = (pid < 0).then(|| os("clone"));
    // SAFETY: restores this thread's own mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if let Some(e) = error {
        return Err(e);
    }
    // SAFETY: CLONE_PIDFD stored a fresh close-on-exec pidfd for the child.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    failure: RawFd,
}

/// The child between fork and exec: raw syscalls only.
///
/// # Safety
/// Must run only in the child right after `fork`; `argv` and `envp` are
/// NULL-terminated arrays of pointers into `plan`.
unsafe fn child_main(
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: ChildFds,
) -> ! {
    // SAFETY: (the whole body) the child is single-threaded after fork and
    // touches only memory prepared by the parent; every call below is a
    // system call or an async-signal-safe libc wrapper.
    unsafe {
        let fail = |stage: Stage| report_and_exit(fds.failure, stage);
        // First: join the cgroup (write "0" = this process), so that
        // everything the command does is inside it.
        for &fd in &plan.cgroup_procs {
            if libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                fail(Stage::Cgroup);
            }
        }
        // Default dispositions and an empty mask: the host may block or
        // ignore signals (SIGPIPE, SIGTERM for a signalfd) and both would
        // otherwise survive execve.
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::setsid() < 0 {
            fail(Stage::Setsid);
        }
        for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                fail(Stage::Dup2);
            }
        }
        // Descriptors the host opened without O_CLOEXEC stay out of the
        // command (Linux >= 5.11; ignored where unsupported).
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if let Some(nice) = plan.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                fail(Stage::Nice);
            }
        }
        if let Some(ids) = &plan.ids {
            // Raw syscalls: they change only this (single) thread's
            // credentials, without glibc's all-threads broadcast.
            // The 32-bit-id calls on every target (see ID_SYSCALLS).
            let calls = ID_SYSCALLS;
            if libc::syscall(calls.setgroups, ids.groups.len(), ids.groups.as_ptr()) != 0 {
                fail(Stage::Setgroups);
            }
            if libc::syscall(calls.setresgid, ids.gid, ids.gid, ids.gid) != 0 {
                fail(Stage::Setgid);
            }
            if libc::syscall(calls.setresuid, ids.uid, ids.uid, ids.uid) != 0 {
                fail(Stage::Setuid);
            }
        }
        libc::umask(0o022);
        // After setuid, so the directory is entered with the user's rights.
        if libc::chdir(plan.cwd.as_ptr()) != 0
            && (plan.cwd_required || libc::chdir(c"/".as_ptr()) != 0)
        {
            fail(Stage::Chdir);
        }
        libc::execve(c"/bin/bash".as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Stage::Exec)
    }
}

/// In the child: sends (stage, errno) to the parent and exits 127.
fn report_and_exit(fd: RawFd, stage: Stage) -> ! {
    // SAFETY: errno, write and _exit are async-signal-safe; `msg` is on
    // this stack.
    unsafe {
        let errno = *libc::__errno_location();
        let msg = [stage.code(), errno as u32];
        libc::write(fd, msg.as_ptr().cast(), std::mem::size_of_val(&msg));
        libc::_exit(127)
    }
}

/// Reads the child's failure report, if it sent one (call after it exited).
pub fn read_failure(fd: &OwnedFd) -> Option<ChildFailure> {
    let mut msg = [0u32; 2];
    // SAFETY: reading at most size_of(msg) bytes into `msg`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            msg.as_mut_ptr().cast(),
            std::mem::size_of_val(&msg),
        )
    };
    if n as usize != std::mem::size_of_val(&msg) {
        return None;
    }
    Some(ChildFailure {
        stage: Stage::from_code(msg[0])?,
        errno: msg[1] as i32,
    })
}

/// `read(2)` on a descriptor of ours.
pub fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a live buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` on a descriptor of ours.
pub fn write_fd(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a live buffer of buf.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The agent's effective uid and gid.
pub fn effective_ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Sends `sig` to the whole process group `pgid` (errors ignored: the
/// group may be gone already).
pub fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: a negative pid addresses the group our child leads; the
        // child is not reaped yet, so the pgid cannot have been reused.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal {
        signal: i32,
        core_dumped: bool,
    },
    /// Someone else reaped it (another `waitpid(-1)` in the host).
    Unknown,
}

/// Reaps `pid`: `None` if it is still running and `block` is false.
#[cfg(test)]
pub fn reap(pid: libc::pid_t, block: bool) -> Option<Exit> {
    reap_usage(pid, block).0
}

/// [`reap`], with the child's resource usage (its own and that of the
/// children it waited for) when it was reaped here.
pub fn reap_usage(pid: libc::pid_t, block: bool) -> (Option<Exit>, Option<libc::rusage>) {
    let mut usage: libc::rusage = unsafe_zeroed_rusage();
    let exit = reap_into(pid, block, &mut usage);
    let got = matches!(exit, Some(Exit::Code(_) | Exit::Signal { .. }));
    (exit, got.then_some(usage))
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn reap_into(pid: libc::pid_t, block: bool, usage: &mut libc::rusage) -> Option<Exit> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: wait4 on our own child with valid status and rusage
        // pointers.
        let r = unsafe { libc::wait4(pid, &mut status, flags, usage) };
        if r == 0 {
            return None;
        }
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Some(Exit::Unknown);
        }
        return Some(if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            Exit::Unknown
        });
    }
}

/// The conventional name of a signal number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => {
            let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
            return if (min..=max).contains(&sig) {
                format!("SIGRTMIN+{}", sig - min)
            } else {
                format!("SIG{sig}")
            };
        }
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    #[test]
    fn both_spawn_paths_run_bash() {
        for vfork_style in [true, false] {
            let env = [("A".to_owned(), "1".to_owned())];
            let plan = Plan::new(
                "echo $A $$; pwd; echo e >&2; exit 7",
                &env,
                Some("/tmp"),
                "/",
                None,
                false,
            )
            .unwrap();
            let published = AtomicI32::new(0);
            let child = spawn_with(&plan, vfork_style, &published).unwrap();
            assert_eq!(published.load(Ordering::SeqCst), child.pid);
            assert_eq!(reap(child.pid, true), Some(Exit::Code(7)));
            assert_eq!(read_failure(&child.failure), None);
            let out = String::from_utf8(read_all(&child.stdout)).unwrap();
            assert_eq!(out, format!("1 {}\n/tmp\n", child.pid));
            assert_eq!(read_all(&child.stderr), b"e\n");
        }
    }

    #[test]
    fn failure_before_exec_is_reported() {
        for vfork_style in [true, false] {
            let plan = Plan::new("true", &[], Some("/no/such/dir"), "/", None, false).unwrap();
            let published = AtomicI32::new(0);
            let child = spawn_with(&plan, vfork_style, &published).unwrap();
            assert_eq!(published.load(Ordering::SeqCst), child.pid);
            assert_eq!(reap(child.pid, true), Some(Exit::Code(127)));
            let failure = read_failure(&child.failure).unwrap();
            assert_eq!((failure.stage, failure.errno), (Stage::Chdir, libc::ENOENT));
        }
    }

    /// The id-switching calls take 32-bit ids on every target: the
    /// numbers are the kernel's (arch/x86/entry/syscalls, arm's
    /// calls.S), written out so that a change of `ID_SYSCALLS` shows.
    #[test]
    fn id_syscall_numbers_per_target() {
        let c = ID_SYSCALLS;
        let got = (c.setgroups, c.setresgid, c.setresuid);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(got, (116, 119, 117));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(got, (159, 149, 147));
        // i386 and ARM EABI: setgroups32 206, setresgid32 210,
        // setresuid32 208 (the 16-bit ones are 81, 170, 164 on i386).
        #[cfg(any(target_arch = "x86", target_arch = "arm"))]
        assert_eq!(got, (206, 210, 208));
        #[cfg(any(target_arch = "x86", target_arch = "arm"))]
        assert_ne!(c.setgroups, libc::SYS_setgroups);
        let _ = got;
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
    }

    #[test]
    fn stage_codes_round_trip() {
        for s in [
            Stage::Setsid,
            Stage::Dup2,
            Stage::Setgroups,
            Stage::Setgid,
            Stage::Setuid,
            Stage::Chdir,
            Stage::Exec,
            Stage::Cgroup,
            Stage::Nice,
        ] {
            assert_eq!(Stage::from_code(s.code()), Some(s));
        }
        assert_eq!(Stage::from_code(0), None);
        assert_eq!(Stage::from_code(99), None);
    }
}
