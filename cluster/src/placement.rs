//! Placement: which node owns a host, by rendezvous (highest-random-weight)
//! hashing.
//!
//! The weight of node `n` for host `h` is
//! `xxh3_64_with_seed(h, xxh3_64(n))`: XXH3 (64-bit) of the host id's UTF-8
//! bytes, seeded with XXH3 of the node name's bytes. XXH3 is a published,
//! platform-independent hash, so every node (and every build) computes the
//! same owner. The owner is the candidate with the highest weight; equal
//! weights (practically never) go to the greater node name, so the choice is
//! total. When a node joins, only the hosts it now wins move (about 1/N of
//! them); when one leaves, only its own hosts move.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The rendezvous weight of `node` for `host_id` (see the module docs).
pub fn weight(node: &str, host_id: &str) -> u64 {
    xxh3_64_with_seed(host_id.as_bytes(), xxh3_64(node.as_bytes()))
}

/// The index in `nodes` of the owner of `host_id`, or `None` when `nodes`
/// is empty. `nodes` are node names; their order does not matter.
pub fn owner_index<S: AsRef<str>>(nodes: &[S], host_id: &str) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            weight(a, host_id)
                .cmp(&weight(b, host_id))
                .then_with(|| a.cmp(b))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        // UUID-shaped ids, as agents send them.
        (0..n)
            .map(|i| {
                format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    i.wrapping_mul(2654435761),
                    i
                )
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    fn owner<'a>(nodes: &'a [String], host: &str) -> &'a str {
        &nodes[owner_index(nodes, host).unwrap()]
    }

    #[test]
    fn weight_is_a_fixed_function() {
        // Pinned so a change of hash (or of its definition) is noticed: nodes
        // of two builds must agree on owners.
        assert_eq!(weight("node-1", "host-a"), weight("node-1", "host-a"));
        assert_ne!(weight("node-1", "host-a"), weight("node-2", "host-a"));
        assert_eq!(
            weight("node-1", "host-a"),
            xxh3_64_with_seed(b"host-a", xxh3_64(b"node-1"))
        );
        assert_eq!(xxh3_64(b""), 0x2D06800538D394C2);
    }

    #[test]
    fn owner_does_not_depend_on_order() {
        let mut nodes = names(5);
        let hosts = ids(2000);
        let before: Vec<String> = hosts.iter().map(|h| owner(&nodes, h).to_string()).collect();
        nodes.reverse();
        nodes.swap(1, 3);
        for (h, b) in hosts.iter().zip(&before) {
            assert_eq!(owner(&nodes, h), b);
        }
    }

    #[test]
    fn empty_has_no_owner() {
        assert_eq!(owner_index::<String>(&[], "h"), None);
    }

    #[test]
    fn join_moves_about_one_in_n_and_only_to_the_new_node() {
        let hosts = ids(76_000);
        for n in [2usize, 3, 4, 8] {
            let old = names(n);
            let new = names(n + 1);
            let mut moved = 0usize;
            for h in &hosts {
                let (a, b) = (owner(&old, h), owner(&new, h));
                if a != b {
                    assert_eq!(b, new[n], "a host moved between two old nodes");
                    moved += 1;
                }
            }
            let expected = hosts.len() / (n + 1);
            let dev = moved.abs_diff(expected) as f64 / expected as f64;
            assert!(
                dev < 0.05,
                "n={n}: moved {moved}, expected about {expected}"
            );
        }
    }

    #[test]
    fn leave_moves_only_the_leavers_hosts() {
        let hosts = ids(20_000);
        let all = names(4);
        let without: Vec<String> = all.iter().filter(|n| *n != "node-2").cloned().collect();
        for h in &hosts {
            let (a, b) = (owner(&all, h), owner(&without, h));
            if a != "node-2" {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn spread_is_even_over_76000_ids() {
        let hosts = ids(76_000);
        for n in [2usize, 4, 7] {
            let nodes = names(n);
            let mut count = vec![0usize; n];
            for h in &hosts {
                count[owner_index(&nodes, h).unwrap()] += 1;
            }
            let e = hosts.len() as f64 / n as f64;
            let chi2: f64 = count.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
            // The 99.9% point of chi-square with up to 6 degrees of freedom
            // is 22.5; a fair spread stays below it.
            assert!(chi2 < 22.5, "n={n}: counts {count:?}, chi2 {chi2}");
        }
    }
}
