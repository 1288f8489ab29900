//! RedisRateLimiter against a real, private redis-server: two limiters stand
//! for two API nodes.
//!
//! Windows follow a [`ManualClock`], so no test depends on where the wall
//! clock sits in a window. Where a test bounds how long a check may wait
//! (Redis down or frozen), it pauses Tokio's clock: the only way such a check
//! can return is through the limiter's own timers, so virtual time measures
//! exactly what the limiter waited, whatever the machine's load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use videogen_core::ManualClock;
use videogen_core::rate_limit::{Decision, RateLimiter};
use videogen_redis::{RedisError, RedisRateLimiter, RedisRateLimiterConfig};
use videogen_testkit::redis::{RedisServer, dead_url, unique_prefix};

const HOUR: Duration = Duration::from_secs(3600);
/// An hour boundary: windows of an hour or less start here.
const T0_MS: i64 = 1_700_002_800_000;

fn config(prefix: &str) -> RedisRateLimiterConfig {
    RedisRateLimiterConfig {
        prefix: prefix.to_owned(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RedisRateLimiterConfig::default()
    }
}

fn node(url: &str, prefix: &str, clock: &ManualClock) -> RedisRateLimiter {
    node_with(url, config(prefix), clock)
}

fn node_with(url: &str, config: RedisRateLimiterConfig, clock: &ManualClock) -> RedisRateLimiter {
    RedisRateLimiter::connect_with_clock(url, config, Arc::new(clock.clone())).unwrap()
}

/// Tokio's timers fire on whole milliseconds, rounded up: a paused clock
/// shows a timeout of `t` as up to `t` + 1 ms.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// One check, and the (virtual, under a paused clock) time it waited.
async fn timed_check(limiter: &RedisRateLimiter, key: &str, limit: u32) -> (Decision, Duration) {
    let t = Instant::now();
    let d = limiter.check(key, limit, HOUR).await;
    (d, t.elapsed())
}

#[tokio::test]
async fn two_nodes_share_one_limit() {
    let server = RedisServer::start();
    let prefix = unique_prefix("share");
    let clock = ManualClock::new(T0_MS + 1_000);
    let nodes = [
        node(&server.url(), &prefix, &clock),
        node(&server.url(), &prefix, &clock),
    ];
    let mut allowed = 0;
    for i in 0..12 {
        let d = nodes[i % 2].check("tenant-a", 5, HOUR).await;
        assert_eq!(d.reset_after, HOUR - Duration::from_secs(1));
        if d.allowed {
            allowed += 1;
            assert_eq!(d.remaining, 5 - allowed);
        } else {
            assert_eq!(d.remaining, 0);
        }
    }
    assert_eq!(allowed, 5, "limit 5 across both nodes");
    // Other keys have their own budget.
    assert!(nodes[0].check("tenant-b", 5, HOUR).await.allowed);
}

#[tokio::test]
async fn the_window_resets() {
    let server = RedisServer::start();
    let clock = ManualClock::new(T0_MS + 600_000);
    let limiter = node(&server.url(), &unique_prefix("reset"), &clock);
    let first = limiter.check("k", 2, HOUR).await;
    assert!(first.allowed);
    assert_eq!(first.reset_after, Duration::from_secs(3000));
    clock.advance_ms(2_999_999);
    assert!(limiter.check("k", 2, HOUR).await.allowed);
    let denied = limiter.check("k", 2, HOUR).await;
    assert!(!denied.allowed);
    assert_eq!(denied.reset_after, Duration::from_millis(1));

    clock.advance_ms(1);
    let d = limiter.check("k", 2, HOUR).await;
    assert!(d.allowed, "a new window starts over");
    assert_eq!(d.remaining, 1);
    assert_eq!(d.reset_after, HOUR);
}

#[tokio::test(start_paused = true)]
async fn falls_back_to_local_counting_when_redis_is_down() {
    let clock = ManualClock::new(T0_MS);
    let limiter = node(&dead_url(), &unique_prefix("down"), &clock);
    let op_timeout = RedisRateLimiterConfig::default().op_timeout;
    for i in 0..50 {
        let (d, waited) = timed_check(&limiter, "tenant-a", 100).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 99 - i, "counted by the local fallback");
        assert!(waited <= op_timeout + TIMER_TICK, "check {i} waited {waited:?}");
    }
    // The fallback still limits, per node.
    let verdicts: Vec<bool> = verdicts_of(&limiter, "tenant-b", 3, 5).await;
    assert_eq!(verdicts, [true, true, true, false, false]);
}

#[tokio::test]
async fn survives_a_restart_and_goes_back_to_shared_counting() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("restart");
    let clock = ManualClock::new(T0_MS);
    // Generous, so the reconnect below never races the timeout on a busy
    // machine; the paused clock still checks that it bounds each check.
    let op_timeout = Duration::from_secs(5);
    let config = RedisRateLimiterConfig {
        op_timeout,
        ..config(&prefix)
    };
    let a = node_with(&server.url(), config.clone(), &clock);
    let b = node_with(&server.url(), config.clone(), &clock);
    assert_eq!(a.check("k1", 10, HOUR).await.remaining, 9);
    assert_eq!(b.check("k1", 10, HOUR).await.remaining, 8, "shared through Redis");

    server.kill();
    tokio::time::pause();
    for (name, limiter) in [("a", &a), ("b", &b)] {
        let (d, waited) = timed_check(limiter, "k1", 10).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 9, "{name}: counted by its own fallback");
        assert!(waited <= op_timeout + TIMER_TICK, "{name}: fallback waited {waited:?}");
    }

    server.restart();
    // Both nodes' backoff ends; the next check of each counts in Redis again.
    tokio::time::advance(config.backoff_max + Duration::from_millis(1)).await;
    tokio::time::resume();
    let first = a.check("after", 10, HOUR).await;
    let second = b.check("after", 10, HOUR).await;
    assert_eq!((first.remaining, second.remaining), (9, 8), "back to shared counting");
}

#[tokio::test]
async fn a_frozen_server_costs_one_timeout_then_nothing() {
    let server = RedisServer::start();
    let clock = ManualClock::new(T0_MS);
    let limiter = node(&server.url(), &unique_prefix("frozen"), &clock);
    assert_eq!(limiter.check("k", 10, HOUR).await.remaining, 9);
    assert_eq!(limiter.check("k", 10, HOUR).await.remaining, 8);

    server.pause();
    tokio::time::pause();
    let op_timeout = RedisRateLimiterConfig::default().op_timeout;
    // Nothing answers now: only the limiter's timeout can end this check.
    let (d, first) = timed_check(&limiter, "k", 10).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 9, "answered by the local fallback");
    assert!(first <= op_timeout + TIMER_TICK, "first check waited {first:?}");
    // Backing off now: no more waiting on the frozen server.
    let (d, second) = timed_check(&limiter, "k", 10).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 8, "the fallback counts on");
    assert_eq!(second, Duration::ZERO, "the second check waited on the frozen server");
    tokio::time::resume();
    server.resume();
}

#[tokio::test]
async fn flushall_only_resets_the_counts() {
    let server = RedisServer::start();
    let clock = ManualClock::new(T0_MS);
    let limiter = node(&server.url(), &unique_prefix("flush"), &clock);
    assert_eq!(verdicts_of(&limiter, "k", 2, 3).await, [true, true, false]);
    assert_eq!(server.command("FLUSHALL"), "+OK\r\n");
    // Fail-open: the count starts over, and nothing errors.
    assert_eq!(verdicts_of(&limiter, "k", 2, 3).await, [true, true, false]);
}

#[tokio::test]
async fn is_usable_as_a_trait_object() {
    let server = RedisServer::start();
    let clock = ManualClock::new(T0_MS);
    let limiter: Box<dyn RateLimiter> = Box::new(node(&server.url(), &unique_prefix("dyn"), &clock));
    let d: Decision = limiter.check("k", 1, HOUR).await;
    assert!(d.allowed);
}

#[test]
fn rejects_a_bad_url_at_once() {
    assert!(matches!(
        RedisRateLimiter::connect("not a url"),
        Err(RedisError::InvalidUrl(_))
    ));
}

async fn verdicts_of(limiter: &RedisRateLimiter, key: &str, limit: u32, n: usize) -> Vec<bool> {
    let mut verdicts = Vec::with_capacity(n);
    for _ in 0..n {
        verdicts.push(limiter.check(key, limit, HOUR).await.allowed);
    }
    verdicts
}
