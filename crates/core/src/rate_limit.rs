//! The rate-limiting seam: [`RateLimiter`], shared by the in-memory
//! [`LocalRateLimiter`] (one node, and the fallback of the Redis limiter in
//! `videogen-redis`) and the Redis one, so the API can start with one node and
//! move to Redis without touching routes.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

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
    pub fn from_hits(hits: u64, limit: u32, reset_after: Duration) -> Self {
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
pub fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---- the in-memory limiter

/// Fewest tracked keys before a sweep of expired windows; below it sweeping
/// costs more than the memory it frees.
const MIN_SWEEP_AT: usize = 1024;

/// Per-key fixed windows that start at the key's first hit.
///
/// Time comes from an injected [`Clock`] ([`SystemClock`] unless built with
/// [`LocalRateLimiter::with_clock`]), so tests move it by hand. A clock that
/// steps back by more than a window starts the window over rather than
/// holding a key closed for as long as the step.
///
/// Memory is bounded: expired windows are swept whenever the map doubles
/// (amortised O(1) per check), and at `max_keys` live windows the one closest
/// to expiry is evicted, which lets that key start over early rather than
/// letting a flood of distinct keys grow memory without bound.
pub struct LocalRateLimiter {
    max_keys: usize,
    clock: Arc<dyn Clock>,
    state: Mutex<Windows>,
}

impl std::fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimiter")
            .field("max_keys", &self.max_keys)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Windows {
    /// Keyed by key and window length, so two limits on one key do not share a count.
    map: HashMap<(String, u64), Window>,
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Unix milliseconds.
    ends_ms: i64,
    hits: u64,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalRateLimiter {
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    pub fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    pub fn with_max_keys(max_keys: usize) -> Self {
        Self::with_clock(Arc::new(SystemClock), max_keys)
    }

    /// Reads time from `clock`; tests pass a [`crate::clock::ManualClock`].
    pub fn with_clock(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        Self {
            max_keys,
            clock,
            state: Mutex::new(Windows {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP_AT.min(max_keys),
            }),
        }
    }

    /// The synchronous core of [`RateLimiter::check`]; it never waits.
    pub fn check_now(&self, key: &str, limit: u32, window: Duration) -> Decision {
        self.check_at(key, limit, window, self.clock.now_ms())
    }

    /// Windows currently tracked, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`LocalRateLimiter::check_now`] at `now_ms` (Unix milliseconds)
    /// instead of the clock's reading.
    pub fn check_at(&self, key: &str, limit: u32, window: Duration, now_ms: i64) -> Decision {
        let window_ms = window_ms(window);
        let span_ms = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let id = (key.to_owned(), window_ms);
        let mut state = self.lock();
        if !state.map.contains_key(&id) {
            state.make_room(now_ms, self.max_keys);
        }
        let entry = state.map.entry(id).or_insert(Window {
            ends_ms: now_ms,
            hits: 0,
        });
        // Earlier than a window before this window started.
        let stepped_back = now_ms < entry.ends_ms.saturating_sub(span_ms.saturating_mul(2));
        if now_ms >= entry.ends_ms || stepped_back {
            *entry = Window {
                ends_ms: now_ms.saturating_add(span_ms),
                hits: 0,
            };
        }
        entry.hits = entry.hits.saturating_add(1);
        let reset_after_ms = u64::try_from(entry.ends_ms.saturating_sub(now_ms)).unwrap_or(0);
        Decision::from_hits(entry.hits, limit, Duration::from_millis(reset_after_ms))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Windows {
    /// Called before inserting a new key.
    fn make_room(&mut self, now_ms: i64, max_keys: usize) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| now_ms < w.ends_ms);
            self.sweep_at = (self.map.len() * 2).clamp(MIN_SWEEP_AT.min(max_keys), max_keys);
        }
        if self.map.len() >= max_keys {
            let soonest = self.map.iter().min_by_key(|(_, w)| w.ends_ms).map(|(id, _)| id.clone());
            if let Some(id) = soonest {
                self.map.remove(&id);
            }
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        self.check_now(key, limit, window)
    }
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

    const MIN: Duration = Duration::from_secs(60);
    const MIN_MS: i64 = 60_000;

    #[test]
    fn allows_up_to_the_limit_then_denies_until_the_window_ends() {
        let limiter = LocalRateLimiter::new();
        let t0: i64 = 1_700_000_000_000;
        for i in 0..3 {
            let d = limiter.check_at("k", 3, MIN, t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
            assert_eq!(d.reset_after, MIN);
        }
        let later = t0 + 59_000;
        let d = limiter.check_at("k", 3, MIN, later);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_after, Duration::from_secs(1));

        let d = limiter.check_at("k", 3, MIN, t0 + MIN_MS);
        assert!(d.allowed, "a new window starts over");
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn keys_and_window_lengths_count_separately() {
        let limiter = LocalRateLimiter::new();
        let t0: i64 = 1_700_000_000_000;
        assert!(limiter.check_at("a", 1, MIN, t0).allowed);
        assert!(!limiter.check_at("a", 1, MIN, t0).allowed);
        assert!(limiter.check_at("b", 1, MIN, t0).allowed);
        assert!(limiter.check_at("a", 1, Duration::from_secs(3600), t0).allowed);
    }

    #[test]
    fn zero_limit_and_zero_window_do_not_panic() {
        let limiter = LocalRateLimiter::new();
        let d = limiter.check_now("k", 0, Duration::ZERO);
        assert!(!d.allowed);
        assert!(d.reset_after <= Duration::from_millis(1));
    }

    #[test]
    fn expired_windows_are_evicted() {
        let limiter = LocalRateLimiter::with_max_keys(10);
        let t0: i64 = 1_700_000_000_000;
        for i in 0..10 {
            limiter.check_at(&format!("k{i}"), 1, MIN, t0);
        }
        assert_eq!(limiter.len(), 10);
        // All ten windows have ended; the next new key sweeps them away.
        limiter.check_at("fresh", 1, MIN, t0 + MIN_MS);
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn memory_stays_bounded_when_every_window_is_live() {
        let limiter = LocalRateLimiter::with_max_keys(10);
        let t0: i64 = 1_700_000_000_000;
        for i in 0..10u64 {
            // k0 ends soonest.
            limiter.check_at(&format!("k{i}"), 1, MIN, t0 + i64::try_from(i).unwrap());
        }
        let now = t0 + 20;
        for i in 10..1000 {
            limiter.check_at(&format!("k{i}"), 1, MIN, now);
            assert!(limiter.len() <= 10);
        }
        // A key inserted last is still counted; the evicted k0 starts over.
        assert!(!limiter.check_at("k999", 1, MIN, now).allowed);
        assert!(limiter.check_at("k0", 1, MIN, now).allowed);
    }

    #[test]
    fn sweeps_only_when_the_map_has_grown() {
        let limiter = LocalRateLimiter::with_max_keys(100_000);
        let t0: i64 = 1_700_000_000_000;
        for i in 0..2000 {
            limiter.check_at(&format!("k{i}"), 1, Duration::from_millis(10), t0);
        }
        // The sweep at 1024 keys found nothing expired; the next sweep comes at 2048.
        assert_eq!(limiter.len(), 2000);
        for i in 2000..2049 {
            limiter.check_at(&format!("k{i}"), 1, MIN, t0 + 1_000);
        }
        assert_eq!(
            limiter.len(),
            49,
            "the sweep at 2048 dropped every expired 10 ms window"
        );
    }

    #[test]
    fn reads_time_from_the_injected_clock() {
        futures::executor::block_on(reads_time_from_the_injected_clock_async());
    }

    async fn reads_time_from_the_injected_clock_async() {
        let clock = crate::clock::ManualClock::new(1_700_000_000_000);
        let limiter = LocalRateLimiter::with_clock(Arc::new(clock.clone()), 10);
        assert!(limiter.check("k", 1, MIN).await.allowed);
        clock.advance_ms(MIN_MS - 1);
        let d = limiter.check("k", 1, MIN).await;
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_millis(1));
        clock.advance_ms(1);
        assert!(limiter.check("k", 1, MIN).await.allowed, "the window ended");
    }

    #[test]
    fn a_clock_stepping_back_past_a_window_starts_it_over() {
        let limiter = LocalRateLimiter::new();
        let t0: i64 = 1_700_000_000_000;
        assert!(limiter.check_at("k", 1, MIN, t0).allowed);
        // Back by less than a window: still the same window, still closed.
        let d = limiter.check_at("k", 1, MIN, t0 - 1_000);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_secs(61));
        // Back by more: a fresh window of one minute, not one of hours.
        let d = limiter.check_at("k", 1, MIN, t0 - 3_600_000);
        assert!(d.allowed);
        assert_eq!(d.reset_after, MIN);
    }
}
