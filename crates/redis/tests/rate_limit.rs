//! RedisRateLimiter against a real, private redis-server: two limiters stand
//! for two API nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use videogen_core::rate_limit::{Decision, RateLimiter};
use videogen_redis::{RedisError, RedisRateLimiter, RedisRateLimiterConfig};
use videogen_testkit::redis::{RedisServer, dead_url, unique_prefix};

const HOUR: Duration = Duration::from_secs(3600);

fn node(url: &str, prefix: &str) -> RedisRateLimiter {
    let config = RedisRateLimiterConfig {
        prefix: prefix.to_owned(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RedisRateLimiterConfig::default()
    };
    RedisRateLimiter::connect_with(url, config).unwrap()
}

#[tokio::test]
async fn two_nodes_share_one_limit() {
    let server = RedisServer::start();
    let prefix = unique_prefix("share");
    let nodes = [node(&server.url(), &prefix), node(&server.url(), &prefix)];
    let mut allowed = 0;
    for i in 0..12 {
        let d = nodes[i % 2].check("tenant-a", 5, HOUR).await;
        assert!(d.reset_after <= HOUR);
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
    let limiter = node(&server.url(), &unique_prefix("reset"));
    let window = Duration::from_millis(400);
    // Start early in a window, so the first three checks share it.
    let mut attempt = 0;
    let first = loop {
        attempt += 1;
        let d = limiter.check(&format!("k{attempt}"), 2, window).await;
        if d.reset_after >= Duration::from_millis(250) {
            break d;
        }
        tokio::time::sleep(d.reset_after + Duration::from_millis(5)).await;
    };
    let key = format!("k{attempt}");
    assert!(first.allowed);
    assert!(limiter.check(&key, 2, window).await.allowed);
    let denied = limiter.check(&key, 2, window).await;
    assert!(!denied.allowed);

    tokio::time::sleep(denied.reset_after + Duration::from_millis(20)).await;
    let d = limiter.check(&key, 2, window).await;
    assert!(d.allowed, "a new window starts over");
    assert_eq!(d.remaining, 1);
}

#[tokio::test]
async fn falls_back_to_local_counting_when_redis_is_down() {
    let limiter = node(&dead_url(), &unique_prefix("down"));
    let started = Instant::now();
    for _ in 0..50 {
        let t = Instant::now();
        let d = limiter.check("tenant-a", 100, HOUR).await;
        assert!(d.allowed);
        assert!(t.elapsed() < Duration::from_millis(250), "check took {:?}", t.elapsed());
    }
    eprintln!("50 checks with Redis down took {:?}", started.elapsed());
    // The fallback still limits, per node.
    let verdicts: Vec<bool> = verdicts_of(&limiter, "tenant-b", 3, 5).await;
    assert_eq!(verdicts, [true, true, true, false, false]);
}

#[tokio::test]
async fn survives_a_restart_and_goes_back_to_shared_counting() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("restart");
    let a = node(&server.url(), &prefix);
    let b = node(&server.url(), &prefix);
    assert_eq!(a.check("k1", 10, HOUR).await.remaining, 9);
    assert_eq!(b.check("k1", 10, HOUR).await.remaining, 8, "shared through Redis");

    server.kill();
    let t = Instant::now();
    let d = a.check("k1", 10, HOUR).await;
    assert!(d.allowed);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "fallback took {:?}",
        t.elapsed()
    );

    server.restart();
    // Once the backoff ends, both nodes count in Redis again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut round = 0;
    loop {
        round += 1;
        let key = format!("after-{round}");
        let first = a.check(&key, 10, HOUR).await;
        let second = b.check(&key, 10, HOUR).await;
        if (first.remaining, second.remaining) == (9, 8) {
            break;
        }
        assert!(Instant::now() < deadline, "never went back to shared counting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_frozen_server_costs_one_timeout_then_nothing() {
    let server = RedisServer::start();
    let limiter = node(&server.url(), &unique_prefix("frozen"));
    assert!(limiter.check("k", 10, HOUR).await.allowed);

    server.pause();
    let op_timeout = RedisRateLimiterConfig::default().op_timeout;
    let t = Instant::now();
    assert!(limiter.check("k", 10, HOUR).await.allowed);
    let first = t.elapsed();
    assert!(
        first < op_timeout + Duration::from_millis(150),
        "first check took {first:?}"
    );
    // Backing off now: no more waiting on the frozen server.
    let t = Instant::now();
    assert!(limiter.check("k", 10, HOUR).await.allowed);
    assert!(
        t.elapsed() < Duration::from_millis(20),
        "second check took {:?}",
        t.elapsed()
    );
    eprintln!("frozen server: first check {first:?}, then {:?}", t.elapsed());
    server.resume();
}

#[tokio::test]
async fn flushall_only_resets_the_counts() {
    let server = RedisServer::start();
    let limiter = node(&server.url(), &unique_prefix("flush"));
    assert_eq!(verdicts_of(&limiter, "k", 2, 3).await, [true, true, false]);
    assert_eq!(server.command("FLUSHALL"), "+OK\r\n");
    // Fail-open: the count starts over, and nothing errors.
    assert_eq!(verdicts_of(&limiter, "k", 2, 3).await, [true, true, false]);
}

#[tokio::test]
async fn is_usable_as_a_trait_object() {
    let server = RedisServer::start();
    let limiter: Box<dyn RateLimiter> = Box::new(node(&server.url(), &unique_prefix("dyn")));
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
