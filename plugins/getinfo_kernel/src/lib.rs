//! `getinfo.kernel`: the running kernel's identity (uname(2)), its command
//! line, boot time and uptime, as one small JSON object.
//!
//! Key design decision: it is called whole-process by the ctl tool, so it
//! must cost about as much as `uname -a`: one `uname(2)` syscall through
//! libc, three small `/proc` reads into one reused buffer, no process
//! spawned, and fields borrowed until the single serialisation. The
//! parsers ([`parse`]) are pure functions over file contents; the plugin
//! glue ([`plugin`]) only reads, calls them and completes.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{parse_btime, parse_cmdline, parse_uptime, KernelInfo};
pub use plugin::{collect, USAGE};

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_kernel",
    version: env!("CARGO_PKG_VERSION"),
    description: "the running kernel: uname(2), /proc/cmdline, boot time and uptime",
    methods: &["getinfo.kernel"],
    usage: plugin::USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
