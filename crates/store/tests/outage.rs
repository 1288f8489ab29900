//! A PostgreSQL that stops answering makes store calls fail as
//! `Unavailable` (the API's 503) instead of hanging, and the same store
//! serves again once the database is back, without a restart. A TCP proxy
//! in front of a real server plays the outage: stopped (connections reset,
//! new ones refused) and partitioned (connections open, nothing arrives).
//!
//! Before the fix a call waited up to the pool's 30 s acquire timeout while
//! stopped, and for ever on a black-holed connection. The only time bound
//! here is a hang guard far above the store's own deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::Duration;
use videogen_core::store::{NewJob, Store, StoreError, Submitted};
use videogen_core::{Seconds, TenantId, Tier, VideoId, VideoSize, VideoSpec};
use videogen_store::PgStore;
use videogen_testkit::pg::TestDb;
use videogen_testkit::proxy::{FaultProxy, Mode};

/// Far above the store's deadlines (1 s to connect, 5 s per call).
const HANG: Duration = Duration::from_secs(60);
const T0: i64 = 1_700_000_000_000;

fn new_job() -> NewJob {
    NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Free,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "rain on a tin roof".into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 1,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        },
        now_ms: T0,
    }
}

async fn submit(store: &dyn Store) -> Result<VideoId, StoreError> {
    let guarded = tokio::time::timeout(HANG, store.submit(new_job(), None));
    match guarded.await.expect("a submit hung during the outage")? {
        Submitted::Created(j) => Ok(j.id),
        Submitted::Replayed(_) => panic!("replayed without a key"),
    }
}

async fn read(store: &dyn Store, id: &VideoId) -> Result<(), StoreError> {
    let guarded = tokio::time::timeout(HANG, store.job(id));
    guarded
        .await
        .expect("a read hung during the outage")
        .map(|j| assert!(j.is_some()))
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// Until the store answers again (each call bounded by its deadlines).
async fn until_back(store: &dyn Store, id: &VideoId) {
    let deadline = tokio::time::Instant::now() + HANG;
    while read(store, id).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the store never came back");
    }
    submit(store).await.expect("writes work again");
}

#[tokio::test]
async fn a_stopped_or_partitioned_database_fails_calls_fast_and_recovers_without_a_restart() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(db.addr()).await;
    let store = PgStore::connect(&db.url_via(proxy.addr()))
        .await
        .unwrap()
        .with_op_deadline(Duration::from_secs(2));
    let id = submit(&store).await.unwrap();
    read(&store, &id).await.unwrap();

    // Stopped: every call fails as unavailable, reads and writes alike.
    proxy.set(Mode::Refuse);
    for _ in 0..3 {
        unavailable(read(&store, &id).await, "read while stopped");
        unavailable(submit(&store).await, "submit while stopped");
    }
    proxy.set(Mode::Forward);
    until_back(&store, &id).await;

    // Partitioned: connections open and silent. Calls on pooled
    // connections hit the per-call deadline, new connections the
    // connect deadline; none hangs.
    proxy.set(Mode::BlackHole);
    for _ in 0..3 {
        unavailable(read(&store, &id).await, "read while partitioned");
        unavailable(submit(&store).await, "submit while partitioned");
    }
    proxy.set(Mode::Forward);
    until_back(&store, &id).await;
}
