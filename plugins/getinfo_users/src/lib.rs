//! `getinfo.users`: the host's accounts (/etc/passwd, /etc/group,
//! /etc/login.defs, /etc/shells and, as root, /etc/shadow) as JSON.
//!
//! Key design decisions: the core ([`report::collect`]) is a pure function
//! over file contents, linear in their size (one pass over each file, the
//! group file indexed once into gid → name and user → groups maps); the
//! plugin glue ([`plugin`]) only reads files and completes. The shadow
//! parser reduces the password field to a state (`set`, `empty`,
//! `locked`, `none`) as it reads it, so no hash is ever held in a value
//! that could be serialised. `-U NAME` not in /etc/passwd falls back to
//! NSS (LDAP, sssd) on a thread of its own, because that may block.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod hash;
pub mod nss;
pub mod parse;
pub mod plugin;
pub mod report;

pub use args::{parse_args, ArgsError, Selection};
pub use basicagent_collector_kit::CollectorError;
pub use report::{collect, ShadowSource, Sources};

/// Shown by `BasicAgentCtl -l`.
pub const USAGE: &str = r#"args (getopt-style string; at most one option):
  -A        all accounts (the default when args is absent or blank)
  -u        normal users: UID_MIN <= uid <= UID_MAX (/etc/login.defs; default 1000..60000)
  -S        system accounts: every other uid (root, nobody 65534, daemons); -u and -S partition -A
  -U NAME   one account; not in /etc/passwd: looked up through NSS (LDAP, sssd)
  Words split on whitespace; '...' and "..." quote. Bad args: 3021. Unknown -U NAME: 3024.
data: {"users":[USER...], "count":N, "uid_min":N, "uid_max":N, "shadow_note":STR (only without shadow access)}
USER: {"name","uid","gid",
       "group"       primary group name or null,
       "groups"      names of the groups in /etc/group whose member list names the user, in file order,
       "gecos","home","shell",
       "login_shell" true iff shell is non-empty, not */nologin or */false, and listed in /etc/shells,
       "kind"        "normal" | "system",
       "shadow"      only as root with /etc/shadow readable (null if the user has no line):
                     {"password": "set"|"empty"|"locked"|"none", "last_change","min","max","warn",
                      "inactive","expire": days or null}}
       password: "empty" = empty field, "locked" = starts with '!', "none" = starts with '*',
       "set" = anything else. The hash itself never leaves the host."#;

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_users",
    version: env!("CARGO_PKG_VERSION"),
    description:
        "the host's user accounts from /etc/passwd, /etc/group and /etc/shadow (never the hash)",
    methods: &["getinfo.users"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
