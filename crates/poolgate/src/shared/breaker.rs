//! The circuit breaker in front of shared state: closed (calls go out), open after `threshold`
//! consecutive failures (calls are skipped for `open_for`), then half-open (one trial call; its
//! success closes, its failure opens again). Time comes from the caller (tokio `Instant`), so
//! tests drive it with paused time.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A change of state worth one log line (and a mode change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerChange {
    /// Closed -> open: shared state is unreachable.
    Opened,
    /// Open/half-open -> closed: shared state answers again.
    Closed,
    /// Closed after fewer failures than open it: a success ends the run of failures (no mode
    /// change, but whatever was done locally for the failed calls is stale now).
    Forgiven,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out since `since` (another is allowed if it never reports back within
    /// `open_for`, e.g. its future was dropped).
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (at least 1), half-opens every `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// May a call go out now? Turns an expired open state into half-open and lets exactly one
    /// trial through.
    pub fn permit(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::HalfOpen { since } if now < since + self.open_for => false,
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                true
            }
        }
    }

    /// Whether calls go out (closed).
    pub fn is_closed(&self) -> bool {
        matches!(*self.state.lock(), State::Closed { .. })
    }

    pub fn on_success(&self) -> Option<BreakerChange> {
        let mut state = self.state.lock();
        let change = match *state {
            State::Closed { failures: 0 } => None,
            State::Closed { .. } => Some(BreakerChange::Forgiven),
            State::Open { .. } | State::HalfOpen { .. } => Some(BreakerChange::Closed),
        };
        *state = State::Closed { failures: 0 };
        change
    }

    pub fn on_failure(&self, now: Instant) -> Option<BreakerChange> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            State::Closed { .. } => {
                *state = State::Open {
                    until: now + self.open_for,
                };
                Some(BreakerChange::Opened)
            }
            // A failed trial, or a late failure of a call sent before it opened.
            State::HalfOpen { .. } | State::Open { .. } => {
                *state = State::Open {
                    until: now + self.open_for,
                };
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let breaker = Breaker::new(3, Duration::from_secs(1));
        assert!(breaker.permit(Instant::now()));
        assert_eq!(breaker.on_failure(Instant::now()), None);
        assert_eq!(breaker.on_failure(Instant::now()), None);
        // A success in between starts the count again (and says it ended a run of failures).
        assert_eq!(breaker.on_success(), Some(BreakerChange::Forgiven));
        assert_eq!(breaker.on_success(), None);
        assert_eq!(breaker.on_failure(Instant::now()), None);
        assert_eq!(breaker.on_failure(Instant::now()), None);
        assert!(breaker.is_closed());
        assert_eq!(
            breaker.on_failure(Instant::now()),
            Some(BreakerChange::Opened)
        );
        assert!(!breaker.is_closed());
        assert!(!breaker.permit(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_once_per_period_and_closes_on_success() {
        let breaker = Breaker::new(1, Duration::from_secs(1));
        assert_eq!(
            breaker.on_failure(Instant::now()),
            Some(BreakerChange::Opened)
        );
        advance(Duration::from_millis(999)).await;
        assert!(!breaker.permit(Instant::now()));
        advance(Duration::from_millis(1)).await;
        assert!(breaker.permit(Instant::now()), "one trial");
        assert!(!breaker.permit(Instant::now()), "only one");
        // The trial fails: open for another period, no new change to log.
        assert_eq!(breaker.on_failure(Instant::now()), None);
        assert!(!breaker.permit(Instant::now()));
        advance(Duration::from_secs(1)).await;
        assert!(breaker.permit(Instant::now()));
        assert_eq!(breaker.on_success(), Some(BreakerChange::Closed));
        assert!(breaker.is_closed());
        assert!(breaker.permit(Instant::now()));
        assert_eq!(breaker.on_success(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_trial_does_not_block_forever() {
        let breaker = Breaker::new(1, Duration::from_secs(1));
        breaker.on_failure(Instant::now());
        advance(Duration::from_secs(1)).await;
        assert!(breaker.permit(Instant::now()));
        // The trial never reports back.
        advance(Duration::from_millis(500)).await;
        assert!(!breaker.permit(Instant::now()));
        advance(Duration::from_millis(500)).await;
        assert!(
            breaker.permit(Instant::now()),
            "another trial after a period"
        );
    }
}
