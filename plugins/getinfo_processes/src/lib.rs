//! `getinfo.processes`: the running processes of the host, from /proc, as
//! JSON (pid, ppid, user, state, command line, memory, CPU time, start).
//!
//! Key design decision: one walk of /proc per call that tolerates
//! processes vanishing at any moment ([`scan`]): each per-process read
//! that fails, or file that does not parse, drops that process silently.
//! Only `stat` and `status` are read for every process; the list is
//! filtered, sorted and cut to `-n` before the `cmdline` of the survivors
//! is read, each within a time budget on a reader thread ([`cmdline`]);
//! the whole walk runs on the plugin's own worker thread ([`worker`]),
//! never on the caller's (the daemon's loop), and completes the call
//! from there. /etc/passwd is parsed once per call, not per process. The
//! parsers ([`parse`]) are pure; `stat` is split at the LAST `)` because a
//! comm may hold spaces and parentheses.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod cmdline;
pub mod parse;
pub mod plugin;
pub mod scan;
pub mod worker;

pub use args::{parse_args, ArgsError, Selection, Sort};
pub use basicagent_collector_kit::CollectorError;

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = r#"args (getopt-style string; options combine):
  -p PID          only this process (not running: success with an empty list)
  -U USER         only processes whose effective user is USER (a name of /etc/passwd, or a uid);
                  unknown name: 3024
  -s rss|cpu|pid  order: pid ascending (the default), rss or cpu descending
  -n N            at most N processes, after sorting (N >= 1)
  Words split on whitespace; '...' and "..." quote. Bad args: 3021.
data: {"processes":[PROCESS...], "count":N listed, "total":N matching before -n}
PROCESS: {"pid","ppid",
          "user"         effective user's name from /etc/passwd, or null,
          "uid"          effective uid (as ps -o user),
          "state"        one letter of /proc/PID/stat: R running, S sleeping, D disk sleep,
                         Z zombie, T stopped, t traced, I idle, X dead,
          "cmdline"      /proc/PID/cmdline, NULs as spaces, cut at 32 KiB; "[comm]" when empty
                         (kernel threads, zombies),
          "comm"         the kernel's 15-byte command name,
          "rss_bytes"    resident set (rss pages of /proc/PID/stat x page size),
          "cpu_seconds"  utime + stime, seconds (2 decimals),
          "start_time"   unix seconds (btime + starttime / clock ticks), or null,
          "threads"      number of threads}
Sources: /proc/PID/{stat,status,cmdline}, /proc/stat, /etc/passwd. No process is spawned;
a process that exits during the walk is left out. A cmdline read that does not answer
within 250 ms (the process's memory is locked) is given up: that process is listed with
"[comm]" and its pid in "cmdline_skipped":[PID...] (the key is absent when none was)."#;

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_processes",
    version: env!("CARGO_PKG_VERSION"),
    description: "the running processes from /proc (pid, user, state, cmdline, rss, cpu, start)",
    methods: &["getinfo.processes"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
