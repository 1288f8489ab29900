//! Coordination between nodes: the scheduler's leader lease on every backend,
//! and PostgreSQL's LISTEN/NOTIFY wake-ups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::Duration;
use videogen_core::store::prelude::*;
use videogen_core::store::{NewJob, Store, Submitted};
use videogen_core::{Seconds, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId};
use videogen_store::{PgOptions, PgStore, Wakeup};
use videogen_testkit::on_every_backend;

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 5_000;

async fn submit(store: &dyn Store) -> VideoId {
    let new = NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Free,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a kite over dunes".into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 3,
            style: None,
            steps: 10,
            input_reference: None,
            params: Default::default(),
        },
        now_ms: T0,
    };
    match store.submit(new, None).await.unwrap() {
        Submitted::Created(job) => job.id,
        Submitted::Replayed(_) => panic!("replayed without a key"),
    }
}

async fn one_leader_at_a_time_until_the_lease_runs_out(store: &dyn Store) {
    let term = store.try_lead("scheduler", "node-a", T0, TTL).await.unwrap();
    assert_eq!(term, Some(1), "a free lease is taken");
    assert_eq!(store.try_lead("scheduler", "node-b", T0 + 1, TTL).await.unwrap(), None);
    // Renewal keeps the term and moves the expiry.
    assert_eq!(
        store.try_lead("scheduler", "node-a", T0 + 4_000, TTL).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.try_lead("scheduler", "node-b", T0 + 8_999, TTL).await.unwrap(),
        None,
        "renewed at +4 s, so held until +9 s"
    );
    // Expired: the other node takes over, with a new term; the old holder
    // can no longer renew.
    assert_eq!(
        store.try_lead("scheduler", "node-b", T0 + 9_000, TTL).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.try_lead("scheduler", "node-a", T0 + 9_001, TTL).await.unwrap(),
        None
    );
    // Leases are per name.
    assert_eq!(
        store.try_lead("other", "node-a", T0 + 9_001, TTL).await.unwrap(),
        Some(1)
    );
}
on_every_backend!(one_leader_at_a_time_until_the_lease_runs_out);

async fn resigning_hands_over_at_once(store: &dyn Store) {
    assert!(store.try_lead("scheduler", "node-a", T0, TTL).await.unwrap().is_some());
    store.resign("scheduler", "node-b").await.unwrap(); // not the holder: no effect
    assert_eq!(store.try_lead("scheduler", "node-b", T0 + 1, TTL).await.unwrap(), None);
    store.resign("scheduler", "node-a").await.unwrap();
    assert!(
        store
            .try_lead("scheduler", "node-b", T0 + 2, TTL)
            .await
            .unwrap()
            .is_some()
    );
}
on_every_backend!(resigning_hands_over_at_once);

async fn queued_job_answers_only_while_queued(store: &dyn Store) {
    let id = submit(store).await;
    let queued = store.queued_job(&id).await.unwrap().expect("queued");
    assert_eq!(queued.id, id);
    assert_eq!(queued.tier, Tier::Free);
    let worker = WorkerId::new("node", "w0");
    store.lease(&id, &worker, T0 + 1, TTL).await.unwrap().expect("leased");
    assert!(store.queued_job(&id).await.unwrap().is_none());
    assert!(store.queued_job(&VideoId::generate()).await.unwrap().is_none());
}
on_every_backend!(queued_job_answers_only_while_queued);

async fn next_wakeup(rx: &mut tokio::sync::mpsc::Receiver<Wakeup>) -> Wakeup {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a wake-up within 10 s")
        .expect("listener alive")
}

#[tokio::test]
async fn postgres_notifies_other_connections_after_commit() {
    let db = videogen_testkit::pg::TestDb::create().await;
    let listening = db.store().await;
    let writer = db.store().await;
    let mut rx = listening.listen().await.unwrap();
    let id = submit(&writer).await;
    // `created` is both runnable and a change.
    let mut got = vec![next_wakeup(&mut rx).await, next_wakeup(&mut rx).await];
    got.sort_by_key(|w| format!("{w:?}"));
    assert_eq!(got, vec![Wakeup::Changed(id.clone()), Wakeup::Runnable(id.clone())]);
    // A lease is a change, not a runnable job.
    writer
        .lease(&id, &WorkerId::new("node", "w0"), T0 + 1, TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_wakeup(&mut rx).await, Wakeup::Changed(id));
    drop(rx);
    writer.close().await.unwrap();
    listening.close().await.unwrap();
}

#[tokio::test]
async fn postgres_without_change_notifications_still_announces_runnable_jobs() {
    let db = videogen_testkit::pg::TestDb::create().await;
    let listening = db.store().await;
    let writer = PgStore::connect_with(&db.url(), PgOptions { notify_changes: false })
        .await
        .unwrap();
    let mut rx = listening.listen().await.unwrap();
    let first = submit(&writer).await;
    assert_eq!(next_wakeup(&mut rx).await, Wakeup::Runnable(first.clone()));
    writer
        .lease(&first, &WorkerId::new("node", "w0"), T0 + 1, TTL)
        .await
        .unwrap()
        .unwrap();
    // The lease sent nothing: the next wake-up is the second job's.
    let second = submit(&writer).await;
    assert_eq!(next_wakeup(&mut rx).await, Wakeup::Runnable(second));
    drop(rx);
    writer.close().await.unwrap();
    listening.close().await.unwrap();
}

/// A statement that makes many jobs runnable announces them in a few
/// notifications of comma-separated ids (migration 0004): the listener
/// still wakes for every job, on both channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_every_job_of_a_batch() {
    const JOBS: usize = 250;
    let db = videogen_testkit::pg::TestDb::create().await;
    let listening = db.store().await;
    let writer = std::sync::Arc::new(db.store().await);
    let mut rx = listening.listen().await.unwrap();
    // Concurrent submits share group-committed statements (up to 128 jobs).
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..JOBS {
        let writer = writer.clone();
        tasks.spawn(async move { submit(&*writer).await });
    }
    let mut submitted = std::collections::BTreeSet::new();
    while let Some(id) = tasks.join_next().await {
        submitted.insert(id.unwrap());
    }
    let stats = writer.group_commit_stats();
    assert!(
        stats.writes > stats.batches,
        "no statement held several submits: {stats:?}"
    );
    let (mut runnable, mut changed) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    while runnable.len() < JOBS || changed.len() < JOBS {
        match next_wakeup(&mut rx).await {
            Wakeup::Runnable(id) => assert!(runnable.insert(id), "a job announced twice"),
            Wakeup::Changed(id) => assert!(changed.insert(id), "a change announced twice"),
            Wakeup::Resync => panic!("the listener reconnected"),
        }
    }
    assert_eq!(runnable, submitted);
    assert_eq!(changed, submitted);
    drop(rx);
    std::sync::Arc::into_inner(writer).unwrap().close().await.unwrap();
    listening.close().await.unwrap();
}
