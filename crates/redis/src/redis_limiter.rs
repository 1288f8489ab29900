//! Rate limits shared by every API node through Redis counters.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use crate::backoff::Backoff;
use crate::error::RedisError;
use crate::link::Link;
use crate::telemetry;
use videogen_core::clock::{Clock, SystemClock};
use videogen_core::rate_limit::{Decision, LocalRateLimiter, RateLimiter, window_ms};

/// INCR and the first hit's PEXPIRE in one atomic step, so a crash between
/// the two can never leave a counter that never expires.
const COUNT_HIT: &str = r"
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return hits
";

/// Tuning for [`RedisRateLimiter`].
#[derive(Debug, Clone)]
pub struct RedisRateLimiterConfig {
    /// Key prefix; counters live at `{prefix}rl:{key}:{window_ms}:{window_start_ms}`.
    pub prefix: String,
    /// Longest a check waits for Redis before answering from the local
    /// fallback; it sits on the request path, so keep it short.
    pub op_timeout: Duration,
    /// After a failure, checks skip Redis for this long, doubling up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bound of the local fallback's key table.
    pub fallback_max_keys: usize,
}

impl Default for RedisRateLimiterConfig {
    fn default() -> Self {
        Self {
            prefix: "videogen:".to_owned(),
            op_timeout: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            fallback_max_keys: LocalRateLimiter::DEFAULT_MAX_KEYS,
        }
    }
}

/// Fixed-window counters in Redis, shared by all nodes that use the same
/// server and prefix.
///
/// Windows are aligned to the Unix epoch using each node's clock (an injected
/// [`Clock`], [`SystemClock`] unless built with
/// [`RedisRateLimiter::connect_with_clock`]), so nodes agree on the current
/// window as long as their clocks do (NTP skew only blurs the boundary by the
/// skew). On any Redis error or timeout the check is
/// answered by an embedded [`LocalRateLimiter`]: limits then hold per node
/// (so up to N × limit across N nodes) until Redis is back, and a request is
/// never failed or held up because of Redis.
pub struct RedisRateLimiter {
    link: Link,
    script: Script,
    prefix: String,
    op_timeout: Duration,
    clock: Arc<dyn Clock>,
    fallback: LocalRateLimiter,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("link", &self.link)
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Same as [`RedisRateLimiter::connect_with`] with the default config.
    pub fn connect(url: &str) -> Result<Self, RedisError> {
        Self::connect_with(url, RedisRateLimiterConfig::default())
    }

    /// Validates `url`; the connection is made on the first check (and remade
    /// after failures), so Redis may be down now.
    pub fn connect_with(url: &str, config: RedisRateLimiterConfig) -> Result<Self, RedisError> {
        Self::connect_with_clock(url, config, Arc::new(SystemClock))
    }

    /// Windows (and the fallback's) follow `clock`; tests pass a
    /// [`videogen_core::ManualClock`] so a window ends when they say.
    pub fn connect_with_clock(
        url: &str,
        config: RedisRateLimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::InvalidUrl)?;
        let backoff = Backoff::new(config.backoff_min, config.backoff_max);
        Ok(Self {
            link: Link::new(client, "ratelimit", config.op_timeout, backoff),
            script: Script::new(COUNT_HIT),
            prefix: config.prefix,
            op_timeout: config.op_timeout,
            fallback: LocalRateLimiter::with_clock(Arc::clone(&clock), config.fallback_max_keys),
            clock,
        })
    }

    /// `None` when the link is known down (already counted when it went down).
    async fn count_hit(&self, counter: &str, ttl_ms: u64) -> Option<Result<u64, redis::RedisError>> {
        let mut conn = self.link.connection().await?;
        Some(self.script.key(counter).arg(ttl_ms).invoke_async(&mut conn).await)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        let window_ms = window_ms(window);
        // Before the epoch reads as the epoch: a broken clock still counts.
        let now_ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let window_start = now_ms - now_ms % window_ms;
        let reset_after = Duration::from_millis(window_start + window_ms - now_ms);
        let counter = format!("{}rl:{key}:{window_ms}:{window_start}", self.prefix);

        match tokio::time::timeout(self.op_timeout, self.count_hit(&counter, window_ms)).await {
            Ok(Some(Ok(hits))) => return Decision::from_hits(hits, limit, reset_after),
            Ok(Some(Err(err))) => self.link.record_failure(&err),
            Ok(None) => {}
            Err(_elapsed) => self.link.record_failure(&"rate-limit check timed out"),
        }
        telemetry::count_ratelimit_fallback();
        self.fallback.check_now(key, limit, window)
    }
}
