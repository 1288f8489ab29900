//! How long a job waits before its next attempt after a real failure: a
//! pure decision (no clock, no randomness of its own), so the server, the
//! tests and the simulator compute the same delays.
//!
//! Exponential backoff with "equal jitter": retry `n` waits between half
//! and all of `min(max, base · 2^(n-1))`. The exponential part keeps a
//! failing dependency from being hammered; the jitter spreads jobs that
//! failed together (one bad node, one outage) so they do not come back in
//! lockstep. Half the bound is always kept, so a retry never comes back at
//! once. Infrastructure faults are not retried this way: they release the
//! job without charging it, and dispatch waits for the infrastructure.

use std::time::Duration;

/// The backoff between attempts of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The first retry's bound.
    pub base: Duration,
    /// No retry waits longer than this.
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryBackoff {
    /// No waiting at all (tests that are about something else).
    pub const NONE: RetryBackoff = RetryBackoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The wait before retry number `retry` (1 after the first failed
    /// attempt), for a `jitter` in `[0, 1)`.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let bound = self.base.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        bound.mul_f64(0.5 + 0.5 * jitter)
    }

    /// [`RetryBackoff::delay`] with the jitter drawn from `key` (say, the
    /// job id and attempt): every node computes the same delay for the same
    /// attempt, and different jobs spread.
    pub fn delay_for(&self, retry: u32, key: &str) -> Duration {
        self.delay(retry, unit_hash(key))
    }
}

/// A value in `[0, 1)` from the bytes of `key` (FNV-1a, then a splitmix
/// finaliser so similar keys land far apart).
fn unit_hash(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: RetryBackoff = RetryBackoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };

    #[test]
    fn the_bound_doubles_per_retry_up_to_the_cap() {
        let top: Vec<u64> = (1..=8).map(|n| B.delay(n, 1.0).as_secs()).collect();
        assert_eq!(top, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(B.delay(u32::MAX, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn jitter_keeps_between_half_and_all_of_the_bound() {
        assert_eq!(B.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(B.delay(3, 0.5), Duration::from_secs(6));
        assert_eq!(B.delay(3, f64::NAN), Duration::from_secs(4));
        assert_eq!(B.delay(3, 7.0), Duration::from_secs(8));
    }

    #[test]
    fn jobs_that_failed_together_come_back_spread_out() {
        let delays: Vec<Duration> = (0..200).map(|i| B.delay_for(4, &format!("video_{i:032}/4"))).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(16))
        );
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 190, "only {} distinct delays of 200", distinct.len());
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / 200.0;
        assert!((11.0..13.0).contains(&mean), "mean {mean} s, expected about 12 s");
        // The same attempt gets the same delay wherever it is computed.
        assert_eq!(B.delay_for(4, "video_7/4"), B.delay_for(4, "video_7/4"));
    }

    #[test]
    fn none_never_waits() {
        assert_eq!(RetryBackoff::NONE.delay(9, 0.9), Duration::ZERO);
    }
}
