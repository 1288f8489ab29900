//! RedisFanout against a real, private redis-server.
//!
//! Tests order events by what the fanout reports (its [`FanoutStats`] and
//! the messages it delivers), never by sleeping: "the subscriber noticed the
//! outage" is a counted subscription failure, not "1.5 s have passed".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use videogen_redis::{FanoutConfig, FanoutMsg, FanoutStats, RedisError, RedisFanout};
use videogen_testkit::redis::{RedisServer, dead_url, unique_prefix};

/// Short backoffs and health checks so outage tests finish in seconds.
fn config(prefix: &str) -> FanoutConfig {
    FanoutConfig {
        prefix: prefix.to_owned(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        health_check_interval: Duration::from_millis(200),
        ..FanoutConfig::default()
    }
}

async fn next(rx: &mut broadcast::Receiver<FanoutMsg>, within: Duration) -> FanoutMsg {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("no fanout message in time")
        .expect("fanout channel closed or lagged")
}

fn changed(job: &str, kind: &str) -> FanoutMsg {
    FanoutMsg::Changed {
        job: job.to_owned(),
        kind: kind.to_owned(),
    }
}

/// Waits (bounded) until the fanout's counters satisfy `cond`.
async fn until(fanout: &RedisFanout, what: &str, cond: impl Fn(&FanoutStats) -> bool) -> FanoutStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = fanout.stats();
        if cond(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "never {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes every 50 ms until `rx` hears it: right after an outage the
/// publisher may still be backing off, and dropping those wake-ups is by design.
async fn publish_until_heard(from: &RedisFanout, rx: &mut broadcast::Receiver<FanoutMsg>, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        from.publish(job, "progress");
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(Ok(msg)) if msg == changed(job, "progress") => return,
            Ok(Ok(FanoutMsg::Resync)) | Err(_) => {}
            Ok(other) => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "{job} was never delivered");
    }
}

#[tokio::test]
async fn publish_on_one_instance_reaches_another() {
    let server = RedisServer::start();
    let prefix = unique_prefix("cross");
    let node_a = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let node_b = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let elsewhere = RedisFanout::connect_with(&server.url(), config(&unique_prefix("other"))).unwrap();
    // Subscribed before the first await, so the first Resync cannot be missed.
    let mut on_b = node_b.subscribe();
    let mut on_a = node_a.subscribe();
    let mut on_elsewhere = elsewhere.subscribe();
    assert_eq!(node_b.channel(), format!("{prefix}events"));

    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, FanoutMsg::Resync);
    assert_eq!(next(&mut on_a, Duration::from_secs(5)).await, FanoutMsg::Resync);
    assert_eq!(next(&mut on_elsewhere, Duration::from_secs(5)).await, FanoutMsg::Resync);

    node_a.publish("job-1", "progress");
    assert_eq!(
        next(&mut on_b, Duration::from_secs(5)).await,
        changed("job-1", "progress")
    );
    // Our own wake-ups echo back; documented and harmless.
    assert_eq!(
        next(&mut on_a, Duration::from_secs(5)).await,
        changed("job-1", "progress")
    );
    // Another prefix is another deployment: it hears nothing. Redis runs
    // commands one at a time and delivers to a subscriber in order, so had
    // job-1 gone to this channel it would arrive before a marker published
    // after job-1 was heard.
    elsewhere.publish("marker", "progress");
    assert_eq!(
        next(&mut on_elsewhere, Duration::from_secs(5)).await,
        changed("marker", "progress")
    );

    let stats = node_a.stats();
    assert_eq!((stats.published, stats.dropped), (1, 0));
    assert_eq!((stats.subscriptions, stats.subscription_failures), (1, 0));
}

#[tokio::test]
async fn subscriber_survives_flushall() {
    let server = RedisServer::start();
    let prefix = unique_prefix("flush");
    let node_a = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let node_b = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let mut on_b = node_b.subscribe();
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, FanoutMsg::Resync);
    node_a.publish("job-1", "queued");
    assert_eq!(
        next(&mut on_b, Duration::from_secs(5)).await,
        changed("job-1", "queued")
    );

    // Outlive a few health-check PINGs: they must not disturb a healthy subscription.
    let stats = until(&node_b, "answered three PINGs", |s| s.health_checks >= 3).await;
    assert_eq!((stats.subscriptions, stats.subscription_failures), (1, 0), "{stats:?}");
    assert_eq!(server.command("FLUSHALL"), "+OK\r\n");

    node_a.publish("job-2", "done");
    // Pub/sub does not live in the keyspace: same subscription, no resync needed.
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, changed("job-2", "done"));
    let stats = node_b.stats();
    assert_eq!((stats.subscriptions, stats.subscription_failures), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn subscriber_notices_a_frozen_server() {
    let server = RedisServer::start();
    let prefix = unique_prefix("frozen");
    let node_a = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let node_b = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let mut on_b = node_b.subscribe();
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, FanoutMsg::Resync);

    // Connected first, so the publish below reaches the frozen server.
    publish_until_heard(&node_a, &mut on_b, "job-0").await;
    let before = node_a.stats();

    server.pause();
    // `publish` is not async: it cannot wait on the server. The PUBLISH goes
    // unanswered, so it is dropped (and counted) rather than retried.
    node_a.publish("job-1", "progress");
    until(&node_a, "dropped the unanswered publish", |s| {
        s.dropped == before.dropped + 1
    })
    .await;
    assert_eq!(node_a.stats().published, before.published);
    // The subscriber's PING went unanswered: it gave the subscription up.
    until(&node_b, "noticed the frozen server", |s| s.subscription_failures >= 1).await;
    server.resume();

    // Only a subscriber that noticed the loss and resubscribed says Resync.
    loop {
        match next(&mut on_b, Duration::from_secs(10)).await {
            FanoutMsg::Resync => break,
            // Delivered late from the frozen server's buffers: harmless.
            FanoutMsg::Changed { job, .. } => assert!(job == "job-1" || job == "job-0", "{job}"),
        }
    }
    assert!(node_b.stats().subscriptions >= 2, "{:?}", node_b.stats());
    publish_until_heard(&node_a, &mut on_b, "job-2").await;
}

#[tokio::test]
async fn subscriber_resyncs_after_server_restart() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("restart");
    let node_a = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let node_b = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let mut on_b = node_b.subscribe();
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, FanoutMsg::Resync);
    node_a.publish("job-1", "queued");
    assert_eq!(
        next(&mut on_b, Duration::from_secs(5)).await,
        changed("job-1", "queued")
    );

    server.kill();
    // Published into the void: dropped and counted, not queued for later.
    node_a.publish("job-lost", "progress");
    until(&node_a, "counted the publish during the outage as dropped", |s| {
        s.dropped == 1
    })
    .await;
    assert_eq!(node_a.stats().published, 1);
    // The loss, then a few failed reconnects.
    until(&node_b, "failed to resubscribe", |s| s.subscription_failures >= 3).await;
    assert_eq!(node_b.stats().subscriptions, 1);

    server.restart();
    // The first thing listeners hear after the outage is "re-read everything".
    assert_eq!(next(&mut on_b, Duration::from_secs(10)).await, FanoutMsg::Resync);
    assert_eq!(node_b.stats().subscriptions, 2);
    publish_until_heard(&node_a, &mut on_b, "job-2").await;
}

#[tokio::test]
async fn publish_while_redis_is_down_returns_at_once() {
    let config = config(&unique_prefix("down"));
    let capacity = config.queue_capacity as u64;
    let fanout = RedisFanout::connect_with(&dead_url(), config).unwrap();
    // One thread and no await in the loop: the publisher task cannot run, so
    // each publish either queued or dropped on the spot, without waiting.
    for i in 0..10_000 {
        fanout.publish(&format!("job-{i}"), "progress");
    }
    assert_eq!(
        fanout.stats().dropped,
        10_000 - capacity,
        "beyond the queue's capacity, publishes are dropped at once"
    );

    // The queued ones cannot reach Redis either.
    let stats = until(&fanout, "dropped all", |s| s.dropped == 10_000).await;
    assert_eq!(stats.published, 0);
}

#[tokio::test]
async fn rejects_a_bad_url_at_once() {
    assert!(matches!(
        RedisFanout::connect("not a url"),
        Err(RedisError::InvalidUrl(_))
    ));
    assert!(matches!(
        RedisFanout::connect("http://127.0.0.1/"),
        Err(RedisError::InvalidUrl(_))
    ));
}

#[test]
fn needs_a_tokio_runtime() {
    assert!(matches!(
        RedisFanout::connect("redis://127.0.0.1:1/"),
        Err(RedisError::NoRuntime)
    ));
}
