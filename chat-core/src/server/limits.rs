//! Flood control: a token bucket per session, refilled lazily from the time passed in.

use std::time::{Duration, Instant};

/// A token-bucket rate: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bucket size: how many may go at once.
    pub burst: u32,
    /// Sustained rate.
    pub per_second: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens, in millionths, so refills need no floating point.
    micros: u64,
    at: Instant,
}

const ONE: u64 = 1_000_000;

impl TokenBucket {
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            micros: u64::from(rate.burst) * ONE,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        let gained = elapsed
            .as_micros()
            .saturating_mul(u128::from(rate.per_second));
        let cap = u64::from(rate.burst) * ONE;
        self.micros = (u128::from(self.micros) + gained).min(u128::from(cap)) as u64;
        self.at = self.at.max(now);
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.micros >= ONE {
            self.micros -= ONE;
            Ok(())
        } else if rate.per_second == 0 {
            Err(Duration::MAX)
        } else {
            let missing = ONE - self.micros;
            Err(Duration::from_micros(
                missing.div_ceil(u64::from(rate.per_second)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let rate = Rate {
            burst: 3,
            per_second: 2,
        };
        #[allow(clippy::disallowed_methods)] // a base instant: only differences matter
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        for _ in 0..3 {
            assert!(b.take(rate, t0).is_ok());
        }
        assert_eq!(b.take(rate, t0), Err(Duration::from_millis(500)));
        assert!(b.take(rate, t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(rate, t0 + Duration::from_millis(1000)).is_ok());
        // Long idle refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(rate, later).is_ok());
        }
        assert!(b.take(rate, later).is_err());
    }
}
