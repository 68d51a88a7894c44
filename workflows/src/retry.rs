//! Retry timing: exponential backoff with full jitter, never sooner than `Retry-After`.

use std::time::Duration;

/// How a step's retries are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.
    /// `unit` in [0, 1) picks the jitter (the caller passes a random number, so this stays
    /// pure). A server's `Retry-After` is a floor: we never come back sooner.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => jittered.max(after),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_per_attempt_up_to_the_maximum() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, None, 0.999_999).as_secs(), 1);
        assert_eq!(b.delay(3, None, 1.0), Duration::from_secs(8));
        assert_eq!(b.delay(30, None, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn jitter_spreads_retries_below_the_ceiling() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, None, 0.5), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff::default();
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.delay(9, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(300)
        );
    }
}
