//! What the server answers to an init: accept, redirect, spread hosts over servers, or reject.
//!
//! Pure: `decide` takes the host id and the addresses the connection is on,
//! so the whole policy is unit-tested without sockets.

use std::net::SocketAddr;

use basicagent_proto::{parse_server_list, ServerAddr, ServerAddrError};

/// The server's init policy (one per process, from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitPolicy {
    /// Accept every agent.
    Accept,
    /// Answer every init with this list, sent verbatim.
    Redirect(String),
    /// Send each host id to one entry, chosen by a stable hash of the id; an
    /// entry equal to the address the agent reached means accept.
    Spread(Vec<ServerAddr>),
    /// Refuse every agent with this message.
    Reject(String),
}

/// The answer for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Redirect(String),
    Reject(String),
}

/// A list given on the command line is strict: every entry must be valid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    BadEntry(ServerAddrError),
    #[error("the server list is empty")]
    Empty,
}

/// Parses `list` strictly (any bad entry is an error), ports defaulting to `default_port`.
pub fn strict_list(list: &str, default_port: u16) -> Result<Vec<ServerAddr>, PolicyError> {
    let parsed = parse_server_list(list, default_port);
    if let Some(e) = parsed.errors.into_iter().next() {
        return Err(PolicyError::BadEntry(e));
    }
    if parsed.addrs.is_empty() {
        return Err(PolicyError::Empty);
    }
    Ok(parsed.addrs)
}

/// FNV-1a, 64 bit: stable across runs, builds and platforms (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl InitPolicy {
    /// The decision for `host_id`; `own` are this server's addresses (the
    /// `--listen` address and the connection's local address).
    pub fn decide(&self, host_id: &str, own: &[SocketAddr]) -> Decision {
        match self {
            InitPolicy::Accept => Decision::Accept,
            InitPolicy::Redirect(list) => Decision::Redirect(list.clone()),
            InitPolicy::Reject(message) => Decision::Reject(message.clone()),
            InitPolicy::Spread(entries) => {
                let n = entries.len() as u64;
                if n == 0 {
                    return Decision::Accept;
                }
                let chosen = &entries[(fnv1a(host_id.as_bytes()) % n) as usize];
                match chosen {
                    ServerAddr::Ip(sa) if own.contains(sa) => Decision::Accept,
                    other => Decision::Redirect(other.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_deterministic_and_accepts_its_own_share() {
        let own: SocketAddr = "127.0.0.2:8443".parse().unwrap();
        let policy =
            InitPolicy::Spread(strict_list("127.0.0.2,127.0.0.3,127.0.0.4:9000", 8443).unwrap());
        let mut seen = std::collections::HashMap::new();
        for i in 0..300 {
            let host = format!("host-{i}");
            let d = policy.decide(&host, &[own]);
            assert_eq!(d, policy.decide(&host, &[own]));
            *seen.entry(format!("{d:?}")).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.contains_key("Accept"));
        assert!(seen.contains_key("Redirect(\"127.0.0.3:8443\")"));
        assert!(seen.contains_key("Redirect(\"127.0.0.4:9000\")"));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn strict_lists() {
        assert!(matches!(
            strict_list("127.0.0.1,bad:0", 1),
            Err(PolicyError::BadEntry(_))
        ));
        assert!(matches!(strict_list(" , ", 1), Err(PolicyError::Empty)));
        let p = InitPolicy::Reject("no".into());
        assert_eq!(p.decide("h", &[]), Decision::Reject("no".into()));
    }
}
