//! `getinfo.memory`: the host's memory and swap totals from `/proc/meminfo`,
//! converted to bytes.
//!
//! Key design decision: one read of `/proc/meminfo` into a stack-sized
//! buffer and a single pass over its lines that keeps only the dozen keys
//! we report ([`parse::parse_meminfo`], a pure function over the file's
//! bytes); a key the kernel does not have (old kernels lack
//! `MemAvailable`) is `null`, never a guess. No arguments.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{parse_meminfo, MemInfo};
pub use plugin::collect;

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "getinfo.memory takes no arguments (\"args\" absent, null or blank).
Output data (every value in BYTES, from /proc/meminfo's kB figures x 1024; null when the kernel lacks the line):
  total       MemTotal: usable RAM
  available   MemAvailable: estimate of memory available for new work without swapping
  free        MemFree: unused RAM
  used        total - available (as free(1) computes \"used\"; null without MemAvailable)
  buffers     Buffers
  cached      Cached (page cache, without swap cache)
  shared      Shmem (tmpfs, shared memory)
  dirty       Dirty: waiting to be written back
  slab        Slab: kernel data structures
  slab_reclaimable  SReclaimable
  swap_total  SwapTotal
  swap_free   SwapFree
  swap_used   swap_total - swap_free";

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_memory",
    version: env!("CARGO_PKG_VERSION"),
    description: "memory and swap totals from /proc/meminfo, in bytes",
    methods: &["getinfo.memory"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
