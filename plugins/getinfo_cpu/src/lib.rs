//! `getinfo.cpu`: the processors (model, vendor, logical/core/socket
//! counts, MHz, optional flags), the online set and the load averages.
//!
//! Key design decision: the core ([`parse`]) is pure functions over the
//! bytes of `/proc/cpuinfo`, `/proc/loadavg` and
//! `/sys/devices/system/cpu/online`; the glue ([`plugin`]) reads them
//! through injectable paths. Topology comes from `/proc/cpuinfo`'s
//! `physical id` / `core id` (one read for everything); only when the
//! kernel does not print them (arm64, s390) does it fall back to one
//! small read per cpu in `/sys/devices/system/cpu/cpu*/topology`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{parse_cpu_list, parse_cpuinfo, parse_loadavg, CpuInfo, LoadAvg};
pub use plugin::{collect, CpuPaths};

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "args (getopt-style string):
  -f        also report the feature flags (flags / Features of /proc/cpuinfo)
  (none)    everything else
Output data:
  model            string, \"model name\" (x86) or \"cpu model\"/\"cpu\"/\"Processor\" of /proc/cpuinfo's first cpu; null if none
  vendor           string, vendor_id (x86), or the name of arm64's \"CPU implementer\" (hex if unknown); null if none
  logical          integer, logical cpus listed in /proc/cpuinfo (the online ones)
  cores            integer, distinct (physical id, core id) pairs; null if unknown
  sockets          integer, distinct physical ids; null if unknown
  topology_source  \"/proc/cpuinfo\" | \"/sys/devices/system/cpu\" | null: where cores and sockets came from
  online           string, /sys/devices/system/cpu/online as the kernel writes it (\"0-3,6\"); null if unreadable
  online_count     integer, cpus in that list; null if unreadable
  mhz              array, current \"cpu MHz\" per logical cpu in /proc/cpuinfo order (null entries where absent)
  mhz_average      number, mean of the known mhz values; null if none
  load             {\"avg1\",\"avg5\",\"avg15\": numbers, \"running\",\"total\": tasks, \"last_pid\"} from /proc/loadavg; null if unreadable
  flags            array of strings (only with -f), the first cpu's flags
Bad args: 3021 with this text.";

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_cpu",
    version: env!("CARGO_PKG_VERSION"),
    description: "processors, topology, MHz, online cpus and load averages",
    methods: &["getinfo.cpu"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
