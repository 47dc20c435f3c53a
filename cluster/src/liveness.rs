//! The death verdict of the membership view: who has been silent for `dead_after`, and whether this observer may judge at all right now (a stalled observer must not declare peers dead from its own late wake-up).
//!
//! Pure logic over caller-supplied instants, so the tests drive it with a
//! virtual clock. The membership thread calls [`StallGuard::tick`] on
//! every sweep and, only when it answers true, [`expired`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a sweep may do, from [`StallGuard::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// A healthy tick: declare the peers silent for `dead_after` dead.
    Judge,
    /// Just after a stall: declare nobody dead yet.
    Hold,
    /// This tick came this long after the previous one: the observer was
    /// stalled. Declare nobody dead. If it is `dead_after` or more, the
    /// peers have likely declared *this* node dead meanwhile.
    Stalled(Duration),
}

impl Tick {
    /// Whether death verdicts are allowed on this tick.
    pub fn may_judge(self) -> bool {
        self == Tick::Judge
    }
}

/// Decides whether a sweep may declare deaths.
///
/// A sweep is scheduled every `period`. When it runs more than `grace`
/// past its schedule, the observer itself was stalled (its thread not
/// scheduled, the process stopped, the machine swapping): every peer's
/// heartbeats of that time may still be queued, unread, in its socket. So
/// it declares nobody dead from that tick and for `hold` after it (one
/// heartbeat interval), long enough for the queued heartbeats to be read
/// and refresh `last_seen`. Peers that are really silent are declared
/// dead on the first healthy tick after the hold.
#[derive(Debug, Clone)]
pub struct StallGuard {
    period: Duration,
    grace: Duration,
    hold: Duration,
    last_tick: Option<Instant>,
    hold_until: Option<Instant>,
    stalls: u64,
}

impl StallGuard {
    /// A guard for sweeps every `period`; a tick later than `period +
    /// grace` after the previous one is a stall, and verdicts wait `hold`.
    pub fn new(period: Duration, grace: Duration, hold: Duration) -> Self {
        StallGuard {
            period,
            grace,
            hold,
            last_tick: None,
            hold_until: None,
            stalls: 0,
        }
    }

    /// Records a sweep at `now` and says what it may do.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let gap = self
            .last_tick
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or(Duration::ZERO);
        self.last_tick = Some(now);
        if gap > self.period.saturating_add(self.grace) {
            self.stalls = self.stalls.saturating_add(1);
            // A hold past the clock's range cannot be represented: then
            // no hold (this tick alone is skipped).
            self.hold_until = now.checked_add(self.hold);
            return Tick::Stalled(gap);
        }
        match self.hold_until {
            Some(h) if now < h => Tick::Hold,
            _ => {
                self.hold_until = None;
                Tick::Judge
            }
        }
    }

    /// How many stalls this guard has seen.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }
}

/// The keys of `last_seen` silent for at least `dead_after` at `now`,
/// sorted.
pub fn expired<'a, I>(last_seen: I, now: Instant, dead_after: Duration) -> Vec<String>
where
    I: IntoIterator<Item = (&'a String, Instant)>,
{
    let mut out: Vec<String> = last_seen
        .into_iter()
        .filter(|(_, seen)| now.saturating_duration_since(*seen) >= dead_after)
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out
}

/// [`expired`] over a map of anything with a last-seen instant.
pub fn expired_in<V>(
    peers: &HashMap<String, V>,
    seen: impl Fn(&V) -> Instant,
    now: Instant,
    dead_after: Duration,
) -> Vec<String> {
    expired(peers.iter().map(|(k, v)| (k, seen(v))), now, dead_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);
    const DEAD_AFTER: Duration = Duration::from_secs(3);
    const PERIOD: Duration = Duration::from_millis(250);

    fn guard() -> StallGuard {
        StallGuard::new(PERIOD, Duration::from_secs(1), INTERVAL)
    }

    /// A virtual observer: sweeps at the given instants, peers heard at
    /// theirs; returns when (if ever) `peer` was declared dead.
    fn run(
        sweeps: &[Instant],
        heard: &[(Instant, &str)],
        peer: &str,
        g: &mut StallGuard,
    ) -> Option<Instant> {
        let mut last: HashMap<String, Instant> = HashMap::new();
        let mut events: Vec<(Instant, Option<&str>)> = sweeps.iter().map(|t| (*t, None)).collect();
        events.extend(heard.iter().map(|(t, p)| (*t, Some(*p))));
        // Heartbeats read before a sweep at the same instant.
        events.sort_by_key(|(t, p)| (*t, p.is_none()));
        for (t, p) in events {
            match p {
                Some(p) => {
                    last.insert(p.to_string(), t);
                }
                None => {
                    if g.tick(t).may_judge()
                        && expired_in(&last, |s| *s, t, DEAD_AFTER).contains(&peer.into())
                    {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    fn every(start: Instant, step: Duration, until: Duration) -> Vec<Instant> {
        let mut out = Vec::new();
        let mut d = Duration::ZERO;
        while d <= until {
            out.push(start + d);
            d += step;
        }
        out
    }

    #[test]
    fn healthy_observer_declares_a_silent_peer_dead_within_dead_after_plus_one_interval() {
        let t0 = Instant::now();
        // The peer beats each second until 10 s, then falls silent.
        let beats: Vec<(Instant, &str)> = every(t0, INTERVAL, Duration::from_secs(10))
            .into_iter()
            .map(|t| (t, "p"))
            .collect();
        let sweeps = every(t0, PERIOD, Duration::from_secs(30));
        let mut g = guard();
        let dead = run(&sweeps, &beats, "p", &mut g).expect("declared dead");
        let last_beat = t0 + Duration::from_secs(10);
        let silent = dead - last_beat;
        assert!(silent >= DEAD_AFTER, "declared after only {silent:?}");
        assert!(silent <= DEAD_AFTER + INTERVAL, "declared after {silent:?}");
        assert_eq!(g.stalls(), 0);
    }

    #[test]
    fn stalled_observer_declares_nobody_dead_whose_beats_were_queued() {
        let t0 = Instant::now();
        // The peer beats every second for 30 s, but the observer is stalled
        // from 5 s to 12 s: it reads the queued beats only after it wakes,
        // a moment after its late sweep.
        let wake = t0 + Duration::from_secs(12);
        let mut beats: Vec<(Instant, &str)> = Vec::new();
        for t in every(t0, INTERVAL, Duration::from_secs(30)) {
            let seen = if t > t0 + Duration::from_secs(5) && t < wake {
                wake + Duration::from_millis(50)
            } else {
                t
            };
            beats.push((seen, "p"));
        }
        let mut sweeps = every(t0, PERIOD, Duration::from_secs(5));
        sweeps.extend(every(wake, PERIOD, Duration::from_secs(18)));
        let mut g = guard();
        assert_eq!(run(&sweeps, &beats, "p", &mut g), None);
        assert_eq!(g.stalls(), 1);
    }

    #[test]
    fn stalled_observer_still_declares_a_peer_that_stays_silent() {
        let t0 = Instant::now();
        let beats: Vec<(Instant, &str)> = every(t0, INTERVAL, Duration::from_secs(4))
            .into_iter()
            .map(|t| (t, "p"))
            .collect();
        // Stalled from 5 s to 12 s; the peer is gone since 4 s.
        let wake = t0 + Duration::from_secs(12);
        let mut sweeps = every(t0, PERIOD, Duration::from_secs(5));
        sweeps.extend(every(wake, PERIOD, Duration::from_secs(10)));
        let mut g = guard();
        let dead = run(&sweeps, &beats, "p", &mut g).expect("declared dead");
        // Not on the late tick itself, but one interval later.
        assert!(dead >= wake + INTERVAL, "declared at the late tick");
        assert!(dead <= wake + INTERVAL + PERIOD);
    }

    #[test]
    fn a_late_tick_within_the_grace_is_not_a_stall() {
        let t0 = Instant::now();
        let mut g = guard();
        assert_eq!(g.tick(t0), Tick::Judge);
        assert_eq!(
            g.tick(t0 + PERIOD + Duration::from_millis(900)),
            Tick::Judge
        );
        let late = t0 + PERIOD * 3 + Duration::from_millis(2200);
        assert_eq!(
            g.tick(late),
            Tick::Stalled(PERIOD * 2 + Duration::from_millis(1300))
        );
        assert_eq!(g.tick(late + PERIOD), Tick::Hold);
        assert_eq!(g.tick(late + PERIOD * 3), Tick::Hold);
        // One interval (4 periods) after the late tick.
        assert_eq!(g.tick(late + PERIOD * 4), Tick::Judge);
    }

    #[test]
    fn expired_is_exact_at_the_boundary() {
        let t0 = Instant::now();
        let mut m = HashMap::new();
        m.insert("a".to_string(), t0);
        m.insert("b".to_string(), t0 + Duration::from_millis(1));
        let now = t0 + DEAD_AFTER;
        assert_eq!(expired_in(&m, |s| *s, now, DEAD_AFTER), vec!["a"]);
    }
}
