//! Server lists (protocol §4 redirect): `IP`, `IP:PORT`, `[IPv6]:PORT`, `[IPv6]`, bare IPv6, `NAME`, `NAME:PORT`.
//!
//! Policy: **a bad entry is skipped, not fatal.** [`parse_server_list`]
//! returns the valid entries in order together with a typed error for each
//! invalid one, so the agent can follow the good addresses and log the bad
//! ones (one typo in a redirect must not strand a fleet). A receiver that
//! wants to be strict (the server checking its own `--redirect` flag)
//! refuses the list when [`ServerList::errors`] is not empty. Empty entries
//! (`"a,,b"`, a trailing comma) are not errors.
//!
//! A bare IPv6 address takes the default port; to give a port, use brackets:
//! `2001:db8::1:8443` is the address `2001:db8::1:8443`, not a port.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// One server to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// A literal address; nothing to resolve.
    Ip(SocketAddr),
    /// A host name, resolved as in protocol §1 (hosts file, then DNS).
    Name { host: String, port: u16 },
}

impl ServerAddr {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Ip(sa) => sa.port(),
            ServerAddr::Name { port, .. } => *port,
        }
    }
}

/// Written back in the list syntax: `1.2.3.4:8443`, `[::1]:8443`, `name:8443`.
impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(sa) => write!(f, "{sa}"),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why one entry of a server list is not usable. `entry` is the trimmed text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerAddrError {
    #[error("server entry {entry:?}: port must be a number from 1 to 65535")]
    BadPort { entry: String },
    #[error("server entry {entry:?}: invalid IPv6 address in brackets")]
    BadIpv6 { entry: String },
    #[error("server entry {entry:?}: not an IP address or a host name")]
    BadHost { entry: String },
}

/// The result of parsing a list: valid entries in order, and the rejects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerList {
    pub addrs: Vec<ServerAddr>,
    pub errors: Vec<ServerAddrError>,
}

/// Parses a comma-separated server list; entries without a port get
/// `default_port`. Never fails as a whole: see the module doc for the policy.
pub fn parse_server_list(list: &str, default_port: u16) -> ServerList {
    let mut out = ServerList::default();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_server_addr(entry, default_port) {
            Ok(addr) => out.addrs.push(addr),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// Parses one entry (surrounding whitespace ignored).
pub fn parse_server_addr(entry: &str, default_port: u16) -> Result<ServerAddr, ServerAddrError> {
    let entry = entry.trim();
    let owned = || entry.to_owned();
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| ServerAddrError::BadIpv6 { entry: owned() })?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| ServerAddrError::BadIpv6 { entry: owned() })?;
        let port = match after {
            "" => default_port,
            _ => match after.strip_prefix(':') {
                Some(p) => {
                    parse_port(p).ok_or_else(|| ServerAddrError::BadPort { entry: owned() })?
                }
                None => return Err(ServerAddrError::BadIpv6 { entry: owned() }),
            },
        };
        return Ok(ServerAddr::Ip(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(ServerAddr::Ip(SocketAddr::new(ip, default_port)));
    }
    let (host, port) = match entry.split_once(':') {
        None => (entry, default_port),
        Some((host, p)) => {
            if p.contains(':') {
                // Several colons and not an IPv6 address.
                return Err(ServerAddrError::BadHost { entry: owned() });
            }
            (
                host,
                parse_port(p).ok_or_else(|| ServerAddrError::BadPort { entry: owned() })?,
            )
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_ipv6() {
            // "::1:80" style without brackets never reaches here, but keep it strict.
            return Err(ServerAddrError::BadHost { entry: owned() });
        }
        return Ok(ServerAddr::Ip(SocketAddr::new(ip, port)));
    }
    if !is_host_name(host) {
        return Err(ServerAddrError::BadHost { entry: owned() });
    }
    Ok(ServerAddr::Name {
        host: host.to_owned(),
        port,
    })
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&port| port != 0)
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`
/// (not at a label's ends), 1..=63 bytes each, 253 in all, one trailing dot
/// allowed; not all digits and dots (that is a broken IPv4 address).
fn is_host_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() || h.len() > 253 || h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    h.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ServerAddr {
        ServerAddr::Ip(s.parse().unwrap())
    }

    #[test]
    fn every_form() {
        let l = parse_server_list(
            " 127.0.10.1, 10.92.1.130:9000,[::1]:8444 ,[2001:db8::2], 2001:db8::3 ,config.cargo.com,srv-2.example:7000,,",
            8443,
        );
        assert_eq!(l.errors, vec![]);
        assert_eq!(
            l.addrs,
            vec![
                ip("127.0.10.1:8443"),
                ip("10.92.1.130:9000"),
                ip("[::1]:8444"),
                ip("[2001:db8::2]:8443"),
                ip("[2001:db8::3]:8443"),
                ServerAddr::Name {
                    host: "config.cargo.com".into(),
                    port: 8443
                },
                ServerAddr::Name {
                    host: "srv-2.example".into(),
                    port: 7000
                },
            ]
        );
        assert_eq!(l.addrs[2].to_string(), "[::1]:8444");
        assert_eq!(l.addrs[6].to_string(), "srv-2.example:7000");
    }

    #[test]
    fn bad_entries_are_reported_and_skipped() {
        let l = parse_server_list(
            "a:0,b:70000,c:x,[::1,[zz]:1,[::1]x,-bad,1.2.3.999,a b,host:1:2,ok",
            1,
        );
        assert_eq!(
            l.addrs,
            vec![ServerAddr::Name {
                host: "ok".into(),
                port: 1
            }]
        );
        let kinds: Vec<&str> = l
            .errors
            .iter()
            .map(|e| match e {
                ServerAddrError::BadPort { .. } => "port",
                ServerAddrError::BadIpv6 { .. } => "v6",
                ServerAddrError::BadHost { .. } => "host",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["port", "port", "port", "v6", "v6", "v6", "host", "host", "host", "host"]
        );
        assert!(l.errors[0].to_string().contains("\"a:0\""));
    }

    #[test]
    fn empty_list() {
        assert_eq!(parse_server_list(" , ,", 1), ServerList::default());
        assert_eq!(parse_server_list("", 1), ServerList::default());
    }
}
