//! Saturating deadline arithmetic: `Instant + Duration` never panics here.
//!
//! `Instant + Duration` panics on overflow, and a duration can come from a
//! peer (the init reply's `heartbeat`) or a configuration file. Every
//! deadline in the daemon is computed with [`after`]; durations are also
//! clamped where they enter (see `config` and `session`), so these
//! fallbacks are a second line of defence, not the rule.

use std::time::{Duration, Instant};

/// The farthest deadline the daemon ever sets: about 30 years. Far enough
/// to mean "never", near enough for any platform's `Instant` to hold.
pub const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + d`, saturating: a sum that does not fit becomes `now + FAR`
/// (or, failing that, the latest instant that fits, found by halving).
pub fn after(now: Instant, d: Duration) -> Instant {
    if let Some(t) = now.checked_add(d.min(FAR)) {
        return t;
    }
    let mut step = d.min(FAR);
    while !step.is_zero() {
        step /= 2;
        if let Some(t) = now.checked_add(step) {
            return t;
        }
    }
    now
}

/// `d * n`, saturating at [`Duration::MAX`].
pub fn times(d: Duration, n: u32) -> Duration {
    d.saturating_mul(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        for d in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(6_148_914_691_236_517_206),
            Duration::from_secs_f64(1e19),
        ] {
            let t = after(now, d);
            assert!(t > now, "{d:?}");
            assert!(t <= now + FAR);
        }
        assert_eq!(times(Duration::from_secs(u64::MAX), 3), Duration::MAX);
        assert_eq!(times(Duration::from_secs(2), 3), Duration::from_secs(6));
    }
}
