//! `getinfo.os`: the distribution (/etc/os-release, every key), hostname,
//! boot time, uptime, time zone, and cheap virtualization/container hints
//! that name their source.
//!
//! Key design decision: every file is read below an injectable root
//! ([`OsPaths`]), so the whole collector runs on fixture trees in tests;
//! the parsers ([`parse`]) are pure functions over file contents. Only
//! files are read (no `systemd-detect-virt`, no `hostnamectl`): each hint
//! is one small read or one `stat`, and the first cpu's block of
//! `/proc/cpuinfo` is all that is read of it.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{parse_os_release, OsInfo};
pub use plugin::{collect, OsPaths};

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "getinfo.os takes no arguments (\"args\" absent, null or blank).
Output data:
  id, name, pretty_name  strings from os-release (defaults \"linux\", \"Linux\", \"Linux\" per os-release(5))
  id_like           array of strings, ID_LIKE split on spaces ([] if unset)
  version, version_id, version_codename  strings, or null if unset
  os_release        object, every KEY=VALUE of the file, unquoted and unescaped as os-release(5) says
  os_release_source \"/etc/os-release\" | \"/usr/lib/os-release\" | null (neither readable)
  hostname          string, /proc/sys/kernel/hostname; null if unreadable
  boot_time         integer, unix seconds at boot (btime of /proc/stat); null if unreadable
  uptime_seconds    number, /proc/uptime; null if unreadable
  timezone          string, e.g. \"Europe/Paris\": /etc/timezone, else the /etc/localtime symlink target after zoneinfo/; null if neither
  timezone_source   \"/etc/timezone\" | \"/etc/localtime\" | null
  virtualization    {\"container\": name or null, \"hypervisor\": name, \"unknown\" (cpu flag only) or null,
                     \"evidence\": [{\"source\": file, \"value\": what it said}...]}
    container sources: /proc/1/environ container=, /run/systemd/container, /.dockerenv (docker), /run/.containerenv (podman)
    hypervisor sources: /sys/hypervisor/type, /sys/class/dmi/id/sys_vendor and product_name, the hypervisor flag of /proc/cpuinfo
    null means nothing was detected, not that there is none (e.g. /proc/1/environ needs root).";

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_os",
    version: env!("CARGO_PKG_VERSION"),
    description: "os-release, hostname, boot time, uptime, time zone, virtualization hints",
    methods: &["getinfo.os"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
