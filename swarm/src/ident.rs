//! Who each simulated agent is: a host id (a version-4 UUID) and a name, both deterministic from a seed and the agent's index.
//!
//! The same seed and index give the same identity in every run, so a
//! restarted swarm comes back as the same fleet (the server sees known
//! hosts reconnecting, not new ones), and two swarm processes with the same
//! seed but different `--first` never collide.

/// FNV-1a, 64 bit, over `bytes` starting from `h`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64: spreads consecutive inputs over all 64 bits.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The host id of agent `index` under `seed`: 128 bits from the seed's hash
/// and the index, with the UUID version (4) and variant (RFC 4122) bits set.
pub fn host_id(seed: &str, index: u64) -> String {
    let base = fnv1a(0xcbf2_9ce4_8422_2325, seed.as_bytes());
    let hi = splitmix(base ^ splitmix(index));
    let lo = splitmix(hi ^ index.rotate_left(17) ^ 0x5a5a_5a5a_5a5a_5a5a);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The node name of agent `index`: `PREFIX-00001` (at least five digits).
pub fn name(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_uuid_v4(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
            && parts[2].starts_with('4')
            && matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn ids_are_uuids_distinct_and_stable() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let id = host_id("swarm", i);
            assert!(is_uuid_v4(&id), "{id}");
            assert!(seen.insert(id), "duplicate at {i}");
        }
        assert_eq!(host_id("swarm", 7), host_id("swarm", 7));
        assert_ne!(host_id("swarm", 7), host_id("other", 7));
    }

    #[test]
    fn names() {
        assert_eq!(name("swarm", 1), "swarm-00001");
        assert_eq!(name("web", 123_456), "web-123456");
    }
}
