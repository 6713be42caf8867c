//! Reconnect delays as a pure function: exponential growth, downward jitter, reset after a
//! stable period. The caller supplies the randomness so tests are deterministic.

use std::time::Duration;

/// How delays grow for one kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the first failure (before jitter).
    pub min: Duration,
    /// Ceiling: no delay is ever longer than this, jitter included.
    pub max: Duration,
    /// Fraction of the delay that jitter may take away, in percent (0..=100).
    pub jitter_pct: u8,
}

/// Counts consecutive failures and turns them into delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one more failure and returns how long to wait before the next attempt.
    /// `unit` is a random number in `[0, 1)`; jitter only shortens the delay, so the
    /// ceiling holds for every draw.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.base_delay();
        self.failures = self.failures.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        let cut = base.as_secs_f64() * f64::from(self.policy.jitter_pct.min(100)) / 100.0 * unit;
        let delay = Duration::from_secs_f64((base.as_secs_f64() - cut).max(0.0));
        delay.min(self.policy.max)
    }

    /// Forgets past failures: the next delay starts from `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn base_delay(&self) -> Duration {
        let shift = self.failures.min(20);
        let grown = self.policy.min.saturating_mul(1u32 << shift);
        grown
            .min(self.policy.max)
            .max(self.policy.min.min(self.policy.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(5),
            jitter_pct: 30,
        }
    }

    #[test]
    fn grows_doubling_up_to_the_ceiling() {
        let mut b = Backoff::new(policy());
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay(0.0).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5, 5]);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(policy());
        b.next_delay(0.0);
        b.next_delay(0.0);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
        assert_eq!(b.failures(), 1);
    }

    #[test]
    fn jitter_only_shortens() {
        let mut b = Backoff::new(policy());
        assert_eq!(b.next_delay(1.0), Duration::from_millis(700));
    }

    proptest! {
        #[test]
        fn never_above_ceiling_nor_below_floor(draws in proptest::collection::vec(0.0f64..1.0, 1..60)) {
            let mut b = Backoff::new(policy());
            for u in draws {
                let d = b.next_delay(u);
                prop_assert!(d <= Duration::from_secs(5));
                prop_assert!(d >= Duration::from_millis(700));
            }
        }
    }
}
