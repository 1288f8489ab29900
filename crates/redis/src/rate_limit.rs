//! The rate-limiting contract shared by the in-memory and Redis limiters, so
//! the API can start with one node and move to Redis without touching routes.

use std::time::Duration;

use async_trait::async_trait;

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed in the current window (0 once denied).
    pub remaining: u32,
    /// Until the current window ends and the count starts over; fit for a
    /// `Retry-After` header.
    pub reset_after: Duration,
}

impl Decision {
    /// `hits` counts this request too, denied requests included: a client
    /// hammering a closed window does not earn itself an earlier slot.
    pub(crate) fn from_hits(hits: u64, limit: u32, reset_after: Duration) -> Self {
        Self {
            allowed: hits <= u64::from(limit),
            remaining: u32::try_from(u64::from(limit).saturating_sub(hits)).unwrap_or(0),
            reset_after,
        }
    }
}

/// Counts one hit on `key` and says whether it fits `limit` per `window`.
///
/// Both implementations use fixed windows: a client may get up to twice
/// `limit` through in a burst straddling a window boundary. That is good enough
/// for protecting expensive endpoints (video submissions at a few per minute),
/// and it keeps the Redis side to one counter key and one round trip per
/// check, where a sliding log would need a sorted set growing with `limit`.
///
/// Never fails: a limiter that cannot decide must allow (fail open), because
/// a broken accelerator must not take the API down.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision;
}

/// A zero window would divide by zero; one millisecond is the finest we count.
pub(crate) fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_counts_this_request() {
        let d = Decision::from_hits(5, 5, Duration::ZERO);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = Decision::from_hits(6, 5, Duration::ZERO);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!Decision::from_hits(1, 0, Duration::ZERO).allowed);
    }
}
