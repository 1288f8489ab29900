//! The submission limit across two API nodes that share one Redis, in
//! process: each node is its own router and limiter, so only Redis links
//! them. Both limiters read one [`ManualClock`], so the window and the
//! `Retry-After` they report are exact, wherever the wall clock is.
//! (`videogen-cli`'s `tests/redis.rs` checks the same wiring between real
//! processes.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tempfile::TempDir;
use tower::ServiceExt;
use videogen_api::state::{AppState, Limits, SubmitLimit};
use videogen_core::store::Store;
use videogen_core::{ManualClock, TenantId, Tier};
use videogen_redis::{RedisRateLimiter, RedisRateLimiterConfig};
use videogen_testkit::redis::{RedisServer, unique_prefix};

/// 15 s into a minute.
const START_MS: i64 = 1_700_000_040_000 + 15_000;
const PER_MINUTE: u32 = 3;

struct Node {
    router: axum::Router,
}

async fn node(store: Arc<dyn Store>, blobs: &TempDir, clock: &ManualClock, redis: &str, prefix: &str) -> Node {
    let config = RedisRateLimiterConfig {
        prefix: prefix.to_owned(),
        ..RedisRateLimiterConfig::default()
    };
    let limiter = RedisRateLimiter::connect_with_clock(redis, config, Arc::new(clock.clone())).unwrap();
    let state = AppState {
        submit_limit: Some(SubmitLimit {
            limiter: Arc::new(limiter),
            per_minute: PER_MINUTE,
        }),
        readiness: Default::default(),
        ..common::app_state(store, blobs.path(), Arc::new(clock.clone()), Limits::default())
    };
    Node {
        router: videogen_api::router(state),
    }
}

async fn api_key(store: &dyn Store, tenant: &str) -> String {
    let secret = videogen_api::auth::generate_secret();
    let rec = videogen_api::auth::key_record(&secret, TenantId::parse(tenant).unwrap(), Tier::Paid, false, 0);
    store.insert_api_key(&rec).await.unwrap();
    secret
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

impl Node {
    async fn submit(&self, key: &str, seed: u64) -> Reply {
        let body =
            json!({ "model": "videogen-ref", "prompt": "limited", "seconds": "4", "size": "720x1280", "seed": seed });
        self.post(key, body).await
    }

    async fn post(&self, key: &str, body: Value) -> Reply {
        let req = Request::post("/v1/videos")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Reply {
            status,
            retry_after,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

#[tokio::test]
async fn a_rate_limit_holds_across_api_nodes_until_the_window_ends() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("api-submit");
    let clock = ManualClock::new(START_MS);
    let store: Arc<dyn Store> = Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap());
    let blobs = tempfile::tempdir().unwrap();
    let a = node(store.clone(), &blobs, &clock, &redis.url(), &prefix).await;
    let b = node(store.clone(), &blobs, &clock, &redis.url(), &prefix).await;
    let acme = api_key(store.as_ref(), "acme").await;
    let other = api_key(store.as_ref(), "other").await;

    for (node, n) in [(&a, 0), (&b, 1), (&a, 2)] {
        let r = node.submit(&acme, n).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.retry_after, None);
    }
    clock.advance_ms(1_000);
    for node in [&b, &a] {
        let r = node.submit(&acme, 9).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("44"), "the minute ends 44 s from now");
        assert_eq!(r.body["error"]["code"], "rate_limit_exceeded", "{}", r.body);
        assert_eq!(r.body["error"]["type"], "rate_limit_error", "{}", r.body);
    }
    // Another tenant has its own budget.
    assert_eq!(b.submit(&other, 1).await.status, StatusCode::OK);

    // Not before the minute is over...
    clock.advance_ms(43_999);
    let r = a.submit(&acme, 10).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    // ...and at once after.
    clock.advance_ms(1);
    let r = b.submit(&acme, 11).await;
    assert_eq!(r.status, StatusCode::OK, "a new window: {}", r.body);
}

#[tokio::test]
async fn invalid_submissions_are_answered_for_what_they_are_and_spend_no_budget() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("api-submit-invalid");
    let clock = ManualClock::new(START_MS);
    let store: Arc<dyn Store> = Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap());
    let blobs = tempfile::tempdir().unwrap();
    let a = node(store.clone(), &blobs, &clock, &redis.url(), &prefix).await;
    let acme = api_key(store.as_ref(), "acme").await;
    for _ in 0..PER_MINUTE + 2 {
        let r = a
            .post(&acme, json!({ "model": "videogen-ref", "prompt": "x", "seconds": "5" }))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        let r = a.post(&acme, json!({ "prompt": "x", "prompt_typo": 1 })).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    }
    for n in 0..u64::from(PER_MINUTE) {
        let r = a.submit(&acme, n).await;
        assert_eq!(r.status, StatusCode::OK, "the whole budget is left: {}", r.body);
    }
    assert_eq!(a.submit(&acme, 99).await.status, StatusCode::TOO_MANY_REQUESTS);
}
