//! The life of one command as a state machine without I/O or clock:
//! running → stopping (SIGTERM sent) → killed (SIGKILL sent). The executor
//! feeds it `now` and carries out the signals it returns.

use std::time::{Duration, Instant};

/// Why the agent stopped a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The request's timeout passed (`3023`).
    Timeout,
    /// `cancel` was called (`3028`).
    Cancelled,
    /// The plugin is shutting down (`3028`).
    Shutdown,
}

/// A signal for the whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSignal {
    Term,
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running {
        deadline: Instant,
    },
    Stopping {
        reason: StopReason,
        kill_at: Instant,
    },
    Killed {
        reason: StopReason,
    },
}

/// Timeout and stop handling of one command.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
    grace: Duration,
}

impl Lifecycle {
    /// A command started at `now` with its timeout and kill grace.
    pub fn new(now: Instant, timeout: Duration, grace: Duration) -> Self {
        Lifecycle {
            phase: Phase::Running {
                deadline: now + timeout,
            },
            grace,
        }
    }

    /// When [`Lifecycle::handle_timer`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running { deadline } => Some(deadline),
            Phase::Stopping { kill_at, .. } => Some(kill_at),
            Phase::Killed { .. } => None,
        }
    }

    /// Time passed: the timeout sends SIGTERM, the end of the grace SIGKILL.
    pub fn handle_timer(&mut self, now: Instant) -> Option<GroupSignal> {
        match self.phase {
            Phase::Running { deadline } if now >= deadline => {
                self.handle_stop(StopReason::Timeout, now)
            }
            Phase::Stopping { reason, kill_at } if now >= kill_at => {
                self.phase = Phase::Killed { reason };
                Some(GroupSignal::Kill)
            }
            _ => None,
        }
    }

    /// A stop was asked for. Shutdown kills at once; the others start
    /// the grace. A command already stopping keeps its first reason.
    pub fn handle_stop(&mut self, reason: StopReason, now: Instant) -> Option<GroupSignal> {
        match (self.phase, reason) {
            (Phase::Running { .. }, StopReason::Shutdown)
            | (Phase::Stopping { .. }, StopReason::Shutdown) => {
                let reason = self.stop_reason().unwrap_or(reason);
                self.phase = Phase::Killed { reason };
                Some(GroupSignal::Kill)
            }
            (Phase::Running { .. }, _) => {
                self.phase = Phase::Stopping {
                    reason,
                    kill_at: now + self.grace,
                };
                Some(GroupSignal::Term)
            }
            _ => None,
        }
    }

    /// Why the agent stopped the command, if it did.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.phase {
            Phase::Running { .. } => None,
            Phase::Stopping { reason, .. } | Phase::Killed { reason } => Some(reason),
        }
    }

    /// Whether the group must get SIGKILL before bash is reaped: once the
    /// agent signalled it, nothing of the group may survive, and the
    /// unreaped bash keeps the pgid from being reused until then.
    pub fn kill_group_before_reap(&self) -> bool {
        self.stop_reason().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn timeout_then_grace_then_kill() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, 10 * S, 2 * S);
        assert_eq!(l.next_deadline(), Some(t0 + 10 * S));
        assert_eq!(l.handle_timer(t0 + 9 * S), None);
        assert!(!l.kill_group_before_reap());
        assert_eq!(l.handle_timer(t0 + 10 * S), Some(GroupSignal::Term));
        assert_eq!(l.stop_reason(), Some(StopReason::Timeout));
        assert_eq!(l.next_deadline(), Some(t0 + 12 * S));
        assert_eq!(l.handle_timer(t0 + 11 * S), None);
        assert_eq!(l.handle_timer(t0 + 12 * S), Some(GroupSignal::Kill));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.handle_timer(t0 + 100 * S), None);
        assert!(l.kill_group_before_reap());
    }

    #[test]
    fn cancel_keeps_reason_and_ignores_repeats() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, 10 * S, 2 * S);
        assert_eq!(
            l.handle_stop(StopReason::Cancelled, t0 + S),
            Some(GroupSignal::Term)
        );
        assert_eq!(l.handle_stop(StopReason::Cancelled, t0 + S), None);
        assert_eq!(l.handle_timer(t0 + 10 * S), Some(GroupSignal::Kill));
        assert_eq!(l.stop_reason(), Some(StopReason::Cancelled));
    }

    #[test]
    fn shutdown_kills_at_once() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, 10 * S, 2 * S);
        assert_eq!(
            l.handle_stop(StopReason::Shutdown, t0),
            Some(GroupSignal::Kill)
        );
        assert_eq!(l.stop_reason(), Some(StopReason::Shutdown));
        let mut l = Lifecycle::new(t0, S, 2 * S);
        assert_eq!(l.handle_timer(t0 + S), Some(GroupSignal::Term));
        assert_eq!(
            l.handle_stop(StopReason::Shutdown, t0 + S),
            Some(GroupSignal::Kill)
        );
        assert_eq!(l.stop_reason(), Some(StopReason::Timeout));
        assert_eq!(l.handle_stop(StopReason::Shutdown, t0 + S), None);
    }
}
