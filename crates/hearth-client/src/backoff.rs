//! Reconnect delays: exponential backoff with full jitter.
//!
//! After the `attempt`-th consecutive failure the client waits a uniformly
//! random time in `[0, min(max, initial * multiplier^attempt)]` ("full
//! jitter", as in the AWS architecture blog's analysis): it spreads a herd of
//! clients that lost the same server over the whole window instead of
//! synchronising their retries, and still bounds every wait by `max`.

use std::time::Duration;

use rand::Rng;

/// Reconnect backoff settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The largest ceiling any wait can have.
    pub max: Duration,
    /// Growth of the ceiling per consecutive failure (≥ 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The ceiling of the wait after `attempt` consecutive failures (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let nanos = (self.initial.as_nanos() as f64 * factor).min(self.max.as_nanos() as f64);
        Duration::from_nanos(nanos.max(0.0) as u64).min(self.max)
    }

    /// A random wait in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_nanos(rng.gen_range(0..=ceiling.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }

    #[test]
    fn ceiling_doubles_per_attempt_until_the_maximum() {
        let b = backoff();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5));
    }

    #[test]
    fn delays_are_jittered_within_zero_and_the_ceiling() {
        let b = backoff();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<Duration> = (0..200).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Full jitter spreads over the whole window, not just its top.
            let below_half = delays.iter().filter(|d| **d < ceiling / 2).count();
            assert!(below_half > 40 && below_half < 160, "{below_half} of 200");
        }
    }

    #[test]
    fn a_multiplier_below_one_never_shrinks_the_delay() {
        let b = Backoff {
            multiplier: 0.1,
            ..backoff()
        };
        assert_eq!(b.ceiling(5), Duration::from_millis(100));
    }
}
