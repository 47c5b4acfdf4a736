//! Capped exponential backoff: how long to wait before trying again. One
//! implementation for the node's dialers, the client's reconnects, a
//! session's connect retries and the outbox's retries of refused content.

use std::time::Duration;

/// Waits of `min`, `2 min`, `4 min`, ... never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// The wait before try number `attempt`, counted from 1 (0 counts as 1):
    /// `min` doubled `attempt - 1` times, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        1u32.checked_shl(doublings)
            .and_then(|factor| self.min.checked_mul(factor))
            .map_or(self.max, |wait| wait.min(self.max))
    }
}

/// A [`Backoff`] with its count of tries: each failure asks for the next
/// wait, a success (or a link that stayed up) resets it.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    attempt: u32,
}

impl Retries {
    pub fn new(policy: Backoff) -> Retries {
        Retries { policy, attempt: 0 }
    }

    /// The wait before the next try; each call counts one more try.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.delay(self.attempt)
    }

    /// Starts again from the shortest wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_min_up_to_max() {
        let b = Backoff::new(250 * MS, 10_000 * MS);
        let waits: Vec<u128> = (1..=8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.delay(0), b.delay(1));
    }

    #[test]
    fn never_overflows() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        for n in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(b.delay(n), b.max, "attempt {n}");
        }
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.delay(3), Duration::MAX);
    }

    #[test]
    fn retries_count_and_reset() {
        let mut r = Retries::new(Backoff::new(200 * MS, 5_000 * MS));
        let waits: Vec<u128> = (0..7).map(|_| r.next_delay().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        r.reset();
        assert_eq!(r.next_delay(), 200 * MS);
    }
}
