//! The pure parser of `/proc/meminfo` and the output shape [`MemInfo`].

use serde::Serialize;

/// The `data` object of a `getinfo.memory` response; every value in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    pub total: Option<u64>,
    pub available: Option<u64>,
    pub free: Option<u64>,
    pub used: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub shared: Option<u64>,
    pub dirty: Option<u64>,
    pub slab: Option<u64>,
    pub slab_reclaimable: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
    pub swap_used: Option<u64>,
}

/// One line's value in bytes: `"  24684092 kB"` → 24684092 * 1024. A value
/// without unit is taken as is (the kernel prints `HugePages_*` so).
fn value_bytes(rest: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some(n),
        Some(u) if u.eq_ignore_ascii_case("kB") => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// Parses `/proc/meminfo`. Unknown, malformed or overflowing lines are
/// skipped; derived values (`used`, `swap_used`) need both inputs.
pub fn parse_meminfo(meminfo: &[u8]) -> MemInfo {
    let mut m = MemInfo::default();
    for line in meminfo.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, rest) = (&line[..colon], &line[colon + 1..]);
        let slot = match key {
            b"MemTotal" => &mut m.total,
            b"MemAvailable" => &mut m.available,
            b"MemFree" => &mut m.free,
            b"Buffers" => &mut m.buffers,
            b"Cached" => &mut m.cached,
            b"Shmem" => &mut m.shared,
            b"Dirty" => &mut m.dirty,
            b"Slab" => &mut m.slab,
            b"SReclaimable" => &mut m.slab_reclaimable,
            b"SwapTotal" => &mut m.swap_total,
            b"SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        if slot.is_none() {
            *slot = value_bytes(rest);
        }
    }
    m.used = m.total.zip(m.available).map(|(t, a)| t.saturating_sub(a));
    m.swap_used = m
        .swap_total
        .zip(m.swap_free)
        .map(|(t, f)| t.saturating_sub(f));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &[u8] = b"MemTotal:       24684092 kB
MemFree:        22189736 kB
MemAvailable:   24201384 kB
Buffers:            9008 kB
Cached:          2114288 kB
SwapCached:            0 kB
SwapTotal:       1048572 kB
SwapFree:         524288 kB
Dirty:               132 kB
Shmem:              1024 kB
Slab:             100000 kB
SReclaimable:      60000 kB
HugePages_Total:       0
";

    #[test]
    fn fixture_in_bytes() {
        let m = parse_meminfo(MEMINFO);
        assert_eq!(m.total, Some(24_684_092 * 1024));
        assert_eq!(m.available, Some(24_201_384 * 1024));
        assert_eq!(m.used, Some((24_684_092 - 24_201_384) * 1024));
        assert_eq!(m.cached, Some(2_114_288 * 1024));
        assert_eq!(m.shared, Some(1024 * 1024));
        assert_eq!(m.swap_used, Some(524_284 * 1024));
        assert_eq!(m.slab_reclaimable, Some(60_000 * 1024));
    }

    #[test]
    fn odd_input_never_panics() {
        assert_eq!(parse_meminfo(b""), MemInfo::default());
        let m = parse_meminfo(
            b"MemTotal: x kB\nMemFree:\n:\nCached: 18446744073709551615 kB\nBuffers: 5 MB\n\xff\xfe: 1\nMemTotal 5 kB\nSwapTotal: 7\n",
        );
        assert_eq!(m.total, None);
        assert_eq!(m.free, None);
        assert_eq!(m.cached, None, "overflow is no value");
        assert_eq!(m.buffers, None, "unknown unit");
        assert_eq!(m.swap_total, Some(7));
        assert_eq!(m.swap_used, None);
        // Old kernels: no MemAvailable, so no `used`.
        let m = parse_meminfo(b"MemTotal: 10 kB\nMemFree: 4 kB\n");
        assert_eq!((m.total, m.available, m.used), (Some(10240), None, None));
    }

    #[test]
    fn first_line_wins() {
        assert_eq!(
            parse_meminfo(b"MemTotal: 1 kB\nMemTotal: 2 kB\n").total,
            Some(1024)
        );
    }
}
