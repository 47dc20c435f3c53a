//! `sync.bash`: runs `/bin/bash -c CMD` as a chosen user and group, with a
//! timeout that stops the whole process group, and answers with separately
//! captured, bounded stdout and stderr, the exit code or signal, and the
//! identity applied.
//!
//! Key design decision: `call` only validates and never blocks; a few
//! executor threads (one per core, at most 4, started on first use) each
//! run one `mio::Poll` over their commands' pipes and a pidfd per command,
//! so a command is answered the moment bash exits (even when a daemon it
//! left in the background still holds stdout), and timeouts are deadlines
//! in that loop rather than a thread or a `sleep` per command. What can
//! block for ever (the NSS lookups of user and group, and the child's
//! `chdir` before `execve`) runs on starter threads ([`starter`]) with a
//! deadline the executor enforces. The child is started the way
//! posix_spawn does it (`clone(CLONE_VM|CLONE_VFORK)`) with everything
//! prepared in the parent, and makes only raw, async-signal-safe syscalls
//! before `execve`. At `init` the process becomes a child subreaper
//! ([`reaper`]): orphans are reaped, and escaped processes of a stopped
//! command killed. Every answer fits the host's frame bound ([`report`]).
#![deny(clippy::undocumented_unsafe_blocks)]

mod capture;
mod cgroup;
mod executor;
mod identity;
mod job;
mod params;
mod reaper;
mod report;
mod spawn;
mod starter;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use basicagent_abi::ffi::CallId;
use basicagent_abi::{retcode, Call, Host, InitError, PluginSpec};

use crate::executor::{Handle, Job, Msg, Peek, Permit};
use crate::params::{Command, Config};

/// Shown by `BasicAgentCtl -l`.
const USAGE: &str = r#"sync.bash: run /bin/bash -c CMD and answer when bash exits.

Request: {"cmd":STR, "timeout":INT, "user":STR, "group":STR, "cwd":STR,
          "env":{STR:STR}, "stdin":STR, "max_output":INT,
          "truncate":MODE|{"stdout":MODE,"stderr":MODE}, "transcript":BOOL,
          "memory_max":INT|"64M", "pids_max":INT, "cpu_max":NUM, "nice":INT}
  cmd         required, non-empty
  timeout     seconds, default 120, 1..=86400; at the timeout the whole
              process group gets SIGTERM, then SIGKILL after kill_grace_ms
  user        default root; group default the user's primary group
              (setgid, initgroups, setuid; 3024 if unknown, 3027 if the
              agent is not root and the identity differs)
  cwd         absolute; default the user's home, or / if it does not exist
  env         added to HOME, USER, LOGNAME, SHELL, PATH set as a login would
  stdin       bytes for stdin; default /dev/null
  max_output  bytes kept per stream (default max_output, at most
              max_output_limit from the host config)
  truncate    which bytes are kept: "head" (default), "tail", "head+tail"
              (first and last halves)
The command runs in a new session (its own process group) with umask 022,
default signal dispositions and no inherited descriptors. A daemon left in
the background does not delay the answer, and keeps running. When the agent
stops a command (timeout, cancel, shutdown), processes that left its group
(setsid, set -m, double fork) are killed too and counted in
survivors_killed; one that left both its session and its parent before the
stop is not found (cgroups will). The agent is a child subreaper: orphans
of commands come back to it and are reaped.
Containment: where the host has cgroups (v2, hybrid or v1; logged at
init) each command runs in a cgroup of its own, joined before execve;
stopping it kills the whole cgroup (processes_killed counts them) and
the limits apply there: memory_max bytes (>= 1M; K/M/G/T suffixes),
pids_max >= 1, cpu_max CPUs 0.01..=1024, nice -20..=19 (defaults and
*_limit ceilings in the host config; 3021 naming the key when bad).
The user lookup (NSS) and the start up to execve run off the executor and
must end within start_timeout_ms (at most timeout): else 3025 "looking up
user ... did not finish within N ms; nothing was run" (or "did not reach
execve", e.g. chdir into a hung mount; that child is killed).

Answer: success (2) whenever bash exited, whatever its exit code or the
signal that killed it; 3023 at the timeout and 3028 when cancelled, both
with the partial output; 3021 bad params, 3026 more than max_concurrent
commands. data:
  {"exitcode":INT|null, "signal":"SIGTERM"|null, "core_dumped":BOOL,
   "signal_sent_by_agent":BOOL, "stdout":STR, "stderr":STR,
   "stdout_bytes":INT, "stderr_bytes":INT (all bytes seen, kept or not),
   "stdout_truncated":BOOL, "stderr_truncated":BOOL,
   "stdout_lossy":BOOL, "stderr_lossy":BOOL, "elapsed_ms":INT, "pid":INT,
   "stdout_sha256":HEX, "stderr_sha256":HEX (of the full streams),
   "transcript":[{"stream":"stdout"|"stderr","text":STR}] and
   "transcript_truncated":BOOL (with "transcript":true),
   "user":STR, "group":STR, "uid":INT, "gid":INT, "groups":[INT],
   "survivors_killed":INT (stopped by the agent, no cgroup),
   "processes_killed":INT (stopped by the agent, cgroup),
   "containment":"cgroup-v2"|"hybrid"|"cgroup-v1"|"none",
   "killed_by":"timeout"|"cancel"|"shutdown"|"oom"|null,
   "usage":{"cpu_user_ms","cpu_system_ms","memory_peak_bytes","pids_peak",
            "elapsed_ms","source":"cgroup"|"rusage"}}
Text rule: the first max_output bytes of each stream are decoded as UTF-8;
invalid bytes become U+FFFD and set *_lossy; a multi-byte character cut by
the cap is dropped, not replaced. Frame rule: the texts are then cut
further (at a character, *_truncated set) so that the whole answer, JSON-
escaped (a control byte takes 6) and in its envelope, fits max_frame; the
two streams share the room equally, one that needs less gives the rest.

Peek: {"peek":CALL_ID} (the host's call id of a sync.bash call still
running; every other key is ignored) answers at once with the output so
far, without changing it; takes no max_concurrent slot, starts nothing.
  {"running":true, "pid":INT, "elapsed_ms":INT, "stdout":STR, "stderr":STR,
   "stdout_bytes":INT, "stderr_bytes":INT, "stdout_truncated":BOOL,
   "stderr_truncated":BOOL, "stdout_lossy":BOOL, "stderr_lossy":BOOL}
Same cap and text rule; a character whose bytes have not all arrived yet
is left out (it shows later). 3021 if peek is not an unsigned integer, or
"no running command with call id N" (unknown, or already answered).

Host config: max_output (1048576), max_output_limit (16777216),
max_concurrent (64), kill_grace_ms (2000), max_frame (16777216, >= 1024:
the host's server.max_frame), start_timeout_ms (30000), containment
("auto" | "off"), memory_max, pids_max, cpu_max, nice (defaults, none),
memory_max_limit, pids_max_limit, cpu_max_limit (ceilings, none)."#;

basicagent_abi::export_plugin!(PluginSpec {
    name: "sync_bash",
    version: env!("CARGO_PKG_VERSION"),
    description: "run a shell command as a user, with timeout and bounded output",
    methods: &["sync.bash"],
    usage: USAGE,
    init: Some(init),
    call,
    cancel: Some(cancel),
    fini: Some(fini),
});

/// The host's settings; the first `init` wins (the host's API table, and
/// so its config, is process-wide too).
static CONFIG: OnceLock<Config> = OnceLock::new();
/// The executors, started on first use, taken by `fini`. Several, so
/// that starting commands (NSS lookups, clone until exec) runs on more
/// than one core; each polls the commands it started.
static EXECUTORS: Mutex<Vec<Option<Handle>>> = Mutex::new(Vec::new());
/// Round-robin choice of executor.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Commands admitted and not yet answered.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

fn executors() -> MutexGuard<'static, Vec<Option<Handle>>> {
    // The guarded value is replaced whole, never left half-updated.
    EXECUTORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many executor threads: one per core, 1 to 4.
fn executor_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

fn init(host: &Host) -> Result<(), InitError> {
    let parsed = Config::parse(host.config()).map_err(|e| InitError(e.to_string()))?;
    let _ = CONFIG.set(parsed);
    // The cgroup layout, detected once and logged (the first init wins).
    cgroup::init(config().containment);
    // The process (daemon or ctl) becomes a child subreaper: processes a
    // command leaves behind come back to it, to be killed after a
    // timeout and reaped (see reaper.rs).
    reaper::start();
    Ok(())
}

fn call(call: Call, request: &[u8]) {
    let config = config();
    let request = match Command::parse(request, config) {
        Ok(Command::Run(r)) => *r,
        Ok(Command::Peek(target)) => return peek(call, target, params::id_len(request)),
        Err(e) => {
            let code = e.retcode();
            return call.fail(code, &format!("{}: {e}", retcode::message(code)));
        }
    };
    let Some(permit) = Permit::acquire(&RUNNING, config.max_concurrent) else {
        let message = format!(
            "Busy: {} commands already running (max_concurrent)",
            config.max_concurrent
        );
        return call.fail(retcode::BUSY, &message);
    };
    submit(Msg::Start(Box::new(Job {
        call,
        request,
        permit,
    })));
}

/// Sends a new command to the next executor, starting it (again, if it
/// died) when needed.
fn submit(msg: Msg) {
    let mut guard = executors();
    if guard.is_empty() {
        guard.resize_with(executor_count(), || None);
    }
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % guard.len();
    let mut msg = msg;
    for _ in 0..2 {
        if guard[slot].is_none() {
            match Handle::start(config().clone()) {
                Ok(h) => guard[slot] = Some(h),
                Err(e) => {
                    log::error!("sync.bash: cannot start an executor: {e}");
                    break;
                }
            }
        }
        let Some(handle) = guard[slot].as_ref() else {
            break;
        };
        match handle.send(msg) {
            Ok(()) => return,
            Err(back) => {
                msg = back;
                guard[slot] = None;
            }
        }
    }
    drop(guard); // the host's completer may call us again
    if let Msg::Start(job) = msg {
        let Job { call, permit, .. } = *job;
        drop(permit);
        call.fail(
            retcode::PLUGIN_FAILURE,
            "Plugin failure: the command executor is not running",
        );
    }
}

/// Every executor hears the peek; the one running the target answers it,
/// and if none does, the last one to let go answers `3021`. Takes no
/// slot of `max_concurrent`, never waits for an executor.
fn peek(call: Call, target: CallId, id_len: usize) {
    let peek = Arc::new(Peek::new(call, target, id_len));
    let guard = executors();
    for handle in guard.iter().flatten() {
        // A message given back (executor gone) is dropped at once; ours
        // is still held, so no answer is sent under the lock.
        let _ = handle.send(Msg::Peek(Arc::clone(&peek)));
    }
    drop(guard); // the host's completer may call us again
    drop(peek);
}

/// Every executor hears the cancel; the one running the call acts on it,
/// the others ignore an id they do not know.
fn cancel(id: CallId) {
    for handle in executors().iter().flatten() {
        let _ = handle.send(Msg::Cancel(id));
    }
}

fn fini() {
    let handles: Vec<Handle> = executors().drain(..).flatten().collect();
    executor::shutdown_all(handles, Duration::from_secs(5));
    cgroup::fini();
}
