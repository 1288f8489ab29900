//! RedisFanout against a real, private redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use videogen_redis::{FanoutConfig, FanoutMsg, RedisError, RedisFanout};
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
    // Another prefix is another deployment: it hears nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_elsewhere.recv())
            .await
            .is_err()
    );

    let stats = node_a.stats();
    assert_eq!((stats.published, stats.dropped), (1, 0));
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
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.command("FLUSHALL"), "+OK\r\n");

    node_a.publish("job-2", "done");
    // Pub/sub does not live in the keyspace: same subscription, no resync needed.
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, changed("job-2", "done"));
}

#[tokio::test]
async fn subscriber_notices_a_frozen_server() {
    let server = RedisServer::start();
    let prefix = unique_prefix("frozen");
    let node_a = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let node_b = RedisFanout::connect_with(&server.url(), config(&prefix)).unwrap();
    let mut on_b = node_b.subscribe();
    assert_eq!(next(&mut on_b, Duration::from_secs(5)).await, FanoutMsg::Resync);

    server.pause();
    let started = Instant::now();
    node_a.publish("job-1", "progress");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "publish waited on a frozen server"
    );
    // Longer than one health-check interval plus the PING timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.resume();

    // Only a subscriber that noticed the loss and resubscribed says Resync.
    loop {
        match next(&mut on_b, Duration::from_secs(10)).await {
            FanoutMsg::Resync => break,
            // Delivered late from the frozen server's buffers: harmless.
            FanoutMsg::Changed { job, .. } => assert_eq!(job, "job-1"),
        }
    }
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while node_a.stats().dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "publish during the outage was not counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a few failed reconnects

    let restarted = Instant::now();
    server.restart();
    // The first thing listeners hear after the outage is "re-read everything".
    assert_eq!(next(&mut on_b, Duration::from_secs(10)).await, FanoutMsg::Resync);
    eprintln!("resubscribed {:?} after the restart", restarted.elapsed());
    publish_until_heard(&node_a, &mut on_b, "job-2").await;
}

#[tokio::test]
async fn publish_while_redis_is_down_returns_at_once() {
    let fanout = RedisFanout::connect_with(&dead_url(), config(&unique_prefix("down"))).unwrap();
    let started = Instant::now();
    for i in 0..10_000 {
        fanout.publish(&format!("job-{i}"), "progress");
    }
    let took = started.elapsed();
    eprintln!("10000 publishes with Redis down took {took:?}");
    assert!(took < Duration::from_secs(1), "publish blocked: {took:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while fanout.stats().dropped < 10_000 {
        assert!(Instant::now() < deadline, "not all dropped: {:?}", fanout.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fanout.stats().published, 0);
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
