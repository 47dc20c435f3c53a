//! `getinfo.sockets`: the host's TCP and UDP sockets, IPv4 and IPv6, with
//! the process that owns each, as JSON.
//!
//! Key design decision: the kernel's own tables (`/proc/net/tcp`, `tcp6`,
//! `udp`, `udp6`) are parsed by pure functions ([`parse`]); owners come
//! from one walk over `/proc/*/fd` per call ([`owners`]) that looks only
//! for the inodes of the sockets kept and stops once all are found. No
//! netlink (sock_diag would give the same facts without owners), no `ss`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod owners;
pub mod parse;
pub mod plugin;

pub use args::{parse_args, ArgsError, Selection};
pub use basicagent_collector_kit::CollectorError;

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = r#"args (getopt-style string; flags combine):
  (none)  TCP sockets in LISTEN or ESTABLISHED state, and every UDP socket
  -l      listening only: TCP LISTEN and UDP unconnected (UNCONN, as ss -l shows them)
  -t      TCP only        -u  UDP only        (-t -u: both, the default)
  -a      TCP sockets in every state (SYN_SENT, TIME_WAIT, CLOSE_WAIT, ...); not with -l
  Words split on whitespace; '...' and "..." quote. Bad args: 3021.
data: {"sockets":[SOCKET...], "count":N}
SOCKET: {"proto"           "tcp" | "tcp6" | "udp" | "udp6" (the /proc/net table; tcp6 also holds
                           IPv4-mapped addresses such as ::ffff:127.0.0.1),
         "local_address","remote_address"  text (0.0.0.0 / :: when unbound or unconnected),
         "local_port","remote_port"        integers,
         "state"           ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE,
                           CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV; UDP: UNCONN or ESTABLISHED,
         "uid"             the socket's owner uid,
         "inode"           socket inode (0 when no file holds it, e.g. TIME_WAIT),
         "pid"             lowest pid with an fd on the socket, or null (none, or not visible
                           without root),
         "process"         that process's comm, or null}
Sources: /proc/net/{tcp,tcp6,udp,udp6} of the agent's network namespace, /proc/PID/fd, /proc/PID/comm."#;

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_sockets",
    version: env!("CARGO_PKG_VERSION"),
    description: "TCP and UDP sockets (IPv4, IPv6) from /proc/net with their owning processes",
    methods: &["getinfo.sockets"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
