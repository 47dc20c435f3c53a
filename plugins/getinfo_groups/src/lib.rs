//! `getinfo.groups`: the host's groups from /etc/group (name, gid,
//! members) and, for each, the accounts of /etc/passwd whose PRIMARY group
//! it is.
//!
//! Key design decision: the core ([`report::collect`]) is a pure function
//! over the two files' bytes: one pass over /etc/passwd builds a
//! gid → primary users index, one pass over /etc/group renders the answer,
//! every string borrowed from the file contents until the single
//! serialisation. The glue ([`plugin`]) only reads the files (paths
//! injectable) and completes.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod plugin;
pub mod report;

pub use args::{parse_args, ArgsError, Selection};
pub use basicagent_collector_kit::CollectorError;
pub use report::collect;

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = r#"args (getopt-style string):
  (none)    every group of /etc/group, in file order
  -G NAME   one group, by name (or by gid when NAME is all digits and no group has that name);
            unknown: 3024
  Words split on whitespace; '...' and "..." quote. Bad args: 3021.
data: {"groups":[GROUP...], "count":N}
GROUP: {"name"           group name,
        "gid"            integer,
        "members"        user names listed in the group's line of /etc/group, in file order,
        "primary_users"  names of the /etc/passwd accounts whose gid is this group's, in file order}
Sources: /etc/group, /etc/passwd (not NSS: LDAP/sssd groups are not listed)."#;

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_groups",
    version: env!("CARGO_PKG_VERSION"),
    description: "the host's groups from /etc/group, with members and primary users",
    methods: &["getinfo.groups"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
