//! `getinfo.packages`: the installed packages of the host, from the dpkg
//! database (`/var/lib/dpkg/status`), as JSON.
//!
//! Key design decision: the status file (hundreds of KiB, thousands of
//! stanzas) is parsed as a stream ([`dpkg::for_each_installed`]): one line
//! buffer and one reused set of field buffers; each installed package is
//! serialised into the output as soon as its stanza ends, so no list of
//! packages is ever built. rpm databases are detected but not read (their
//! sqlite/BDB/ndb formats would need a database reader in the agent);
//! a host with rpm only is answered `3025` with a message saying so.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod dpkg;
pub mod plugin;

pub use args::{parse_args, ArgsError, Selection};
pub use basicagent_collector_kit::CollectorError;

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = r#"args (getopt-style string):
  (none)    every installed package, in the order of /var/lib/dpkg/status
  -n NAME   only the package NAME (every architecture), or NAME:ARCH for one architecture;
            not installed: success with "packages":[] and "count":0 (never an error)
  -c        the count only: no "packages" key
  Words split on whitespace; '...' and "..." quote. Bad args: 3021.
data: {"manager":"dpkg", "packages":[PACKAGE...], "count":N, "note":STR (only when an rpm database is present too)}
PACKAGE: {"name"            Package,
          "version"         Version (epoch:upstream-revision, as dpkg writes it),
          "architecture"    Architecture (amd64, all, ...),
          "status"          Status, e.g. "install ok installed" or "hold ok installed",
          "installed_size"  Installed-Size in KiB, or null,
          "source"          source package name (Source without its "(version)"; the package's own name if absent)}
Installed = the third word of Status is "installed" (so held packages count; removed ones
left with config-files, half-installed or unpacked ones do not).
Source: /var/lib/dpkg/status, read directly; dpkg-query is not run.
rpm (/var/lib/rpm, /usr/lib/sysimage/rpm) is detected but not supported: 3025 on an rpm-only host."#;

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_packages",
    version: env!("CARGO_PKG_VERSION"),
    description: "installed packages from the dpkg database (/var/lib/dpkg/status)",
    methods: &["getinfo.packages"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
