//! Pure helpers: IFF_* flag names, ARPHRD_* type names, netmask → prefix
//! length, IPv6 scope, and the address shape [`IfAddr`].

use std::net::IpAddr;

use serde::Serialize;

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfAddr {
    #[serde(skip)]
    pub interface: String,
    pub family: &'static str,
    pub address: String,
    pub prefix_len: u32,
    pub scope: &'static str,
}

impl IfAddr {
    /// Builds the entry for `addr` with `netmask` (same family, or none).
    pub fn new(interface: &str, addr: IpAddr, netmask: Option<IpAddr>) -> IfAddr {
        let (family, full) = match addr {
            IpAddr::V4(_) => ("inet", 32),
            IpAddr::V6(_) => ("inet6", 128),
        };
        IfAddr {
            interface: interface.to_owned(),
            family,
            address: addr.to_string(),
            prefix_len: netmask.map_or(full, prefix_len),
            scope: scope(addr),
        }
    }
}

/// The prefix length of a netmask: its leading one bits.
pub fn prefix_len(mask: IpAddr) -> u32 {
    match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    }
}

/// `host` for loopback, `link` for link-local, `global` otherwise.
pub fn scope(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => "host",
        IpAddr::V4(a) if a.is_link_local() => "link",
        IpAddr::V6(a) if a.is_loopback() => "host",
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => "link",
        _ => "global",
    }
}

const FLAGS: &[(u32, &str)] = &[
    (0x1, "up"),
    (0x2, "broadcast"),
    (0x4, "debug"),
    (0x8, "loopback"),
    (0x10, "pointopoint"),
    (0x20, "notrailers"),
    (0x40, "running"),
    (0x80, "noarp"),
    (0x100, "promisc"),
    (0x200, "allmulti"),
    (0x400, "master"),
    (0x800, "slave"),
    (0x1000, "multicast"),
    (0x2000, "portsel"),
    (0x4000, "automedia"),
    (0x8000, "dynamic"),
];

/// The names of the IFF_* bits set in `flags` (unknown bits are left out).
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Parses the sysfs `flags` file (`0x1003`).
pub fn parse_hex(text: &str) -> Option<u32> {
    let t = text.trim();
    u32::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

/// The name of an ARPHRD_* type (include/uapi/linux/if_arp.h), if common.
pub fn type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        1 => "ether",
        24 => "ieee1394",
        32 => "infiniband",
        256 => "slip",
        512 => "ppp",
        768 => "tunnel",
        769 => "tunnel6",
        772 => "loopback",
        776 => "sit",
        778 => "gre",
        801 => "ieee80211",
        803 => "ieee80211_radiotap",
        823 => "ip6gre",
        65534 => "none",
        65535 => "void",
        280 => "can",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_scopes() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(prefix_len(a("255.0.0.0")), 8);
        assert_eq!(prefix_len(a("255.255.255.0")), 24);
        assert_eq!(prefix_len(a("0.0.0.0")), 0);
        assert_eq!(prefix_len(a("ffff:ffff:ffff:ffff::")), 64);
        assert_eq!(
            prefix_len(a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            128
        );
        let lo = IfAddr::new("lo", a("127.0.0.1"), Some(a("255.0.0.0")));
        assert_eq!((lo.family, lo.prefix_len, lo.scope), ("inet", 8, "host"));
        let v6 = IfAddr::new("lo", a("::1"), None);
        assert_eq!((v6.family, v6.prefix_len, v6.scope), ("inet6", 128, "host"));
        assert_eq!(scope(a("fe80::1")), "link");
        assert_eq!(scope(a("169.254.1.1")), "link");
        assert_eq!(scope(a("fd00::2")), "global");
    }

    #[test]
    fn flags_and_types() {
        assert_eq!(flag_names(0x1003), ["up", "broadcast", "multicast"]);
        assert_eq!(flag_names(0x9), ["up", "loopback"]);
        assert_eq!(flag_names(0x10000), Vec::<&str>::new());
        assert_eq!(parse_hex("0x1003\n"), Some(0x1003));
        assert_eq!(parse_hex("1003"), Some(0x1003));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(""), None);
        assert_eq!(type_name(772), Some("loopback"));
        assert_eq!(type_name(9999), None);
    }
}
