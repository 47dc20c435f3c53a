//! `getinfo.network`: the network interfaces (/sys/class/net: MAC, MTU,
//! state, flags, type, counters) with their IPv4/IPv6 addresses.
//!
//! Key design decision: addresses come from getifaddrs(3) (netlink
//! underneath, no process spawned, no /proc/net parsing for IPv4); the
//! report is built by a core that takes the sysfs directory (injectable)
//! and the address list as inputs, so fixture trees with odd entries (an
//! interface without addresses, a missing statistics directory, garbage
//! in `mtu`, a stray file like `bonding_masters`) are tested without root.
//! Every unreadable value is `null`, never an error.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{flag_names, prefix_len, type_name, IfAddr};
pub use plugin::{collect, getifaddrs};

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "args (getopt-style string):
  (none)    every interface in /sys/class/net, sorted by ifindex
  -i IF     only interface IF (3021 if there is none)
  Words split on whitespace; '...' and \"...\" quote.
Output data: {\"interfaces\": [IF...], \"count\": N}
IF: {\"name\"        string
     \"index\"       integer, ifindex
     \"mac\"         string, address (\"00:00:00:00:00:00\" for loopback; null if none)
     \"mtu\"         integer
     \"operstate\"   string: up, down, unknown (e.g. loopback), dormant, lowerlayerdown, notpresent, testing
     \"carrier\"     bool, link detected (null when the interface is down: the kernel refuses to say)
     \"flags\"       array of IFF_ names from the flags file: up broadcast debug loopback pointopoint notrailers
                   running noarp promisc allmulti master slave multicast portsel automedia dynamic
     \"type\"        integer ARPHRD_* (1 ether, 772 loopback, ...)   \"type_name\"  string or null if not known
     \"speed_mbps\"  integer from speed (null if unknown, e.g. virtual or down)
     \"stats\"       {\"rx_bytes\",\"rx_packets\",\"rx_errors\",\"rx_dropped\",\"tx_bytes\",\"tx_packets\",\"tx_errors\",\"tx_dropped\"}
                   integers from /sys/class/net/IF/statistics (each null if unreadable)
     \"addresses\"   [{\"family\": \"inet\"|\"inet6\", \"address\": string, \"prefix_len\": integer,
                     \"scope\": \"host\"|\"link\"|\"global\" (from the address)}...]; [] for none}
Every field but name is null when its file is unreadable.";

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_network",
    version: env!("CARGO_PKG_VERSION"),
    description: "network interfaces, counters and addresses (/sys/class/net, getifaddrs)",
    methods: &["getinfo.network"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
