//! Reconnect delays.

use std::time::Duration;

/// Reconnect delays: exponential from `initial` up to `max`, with jitter supplied by the
/// caller (the core draws no random numbers), reset after a successful connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, doubling up to `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: the current step scaled into its upper half
    /// by `jitter` (any `u32`, e.g. random), so clients that lost the same server do not
    /// all come back at once.
    pub fn next_delay(&mut self, jitter: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let extra = half.mul_f64(f64::from(jitter) / f64::from(u32::MAX));
        half + extra
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let lows: Vec<Duration> = (0..6).map(|_| b.next_delay(0)).collect();
        assert_eq!(
            lows,
            [50, 100, 200, 400, 500, 500].map(Duration::from_millis)
        );
        assert_eq!(b.attempts(), 6);
        b.reset();
        let high = b.next_delay(u32::MAX);
        assert_eq!(high, Duration::from_millis(100));
        let mid = b.next_delay(u32::MAX / 2);
        assert!(mid > Duration::from_millis(100) && mid < Duration::from_millis(200));
    }
}
