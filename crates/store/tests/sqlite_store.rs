//! Scenario tests of the `Store` implementations: `SqliteStore` against a
//! real database file in a temporary directory and in memory, and `PgStore`
//! against a fresh PostgreSQL database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::collections::HashMap;
use std::sync::Arc;
use videogen_core::store::prelude::*;
use videogen_core::store::{ApiKey, Idempotency, ListQuery, NewJob, Order, Reclaimed, Store, StoreError, Submitted};
use videogen_core::{
    CheckpointRef, EventPayload, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, RequeueReason,
    Seconds, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId,
};
use videogen_store::SqliteStore;

use videogen_testkit::on_every_backend;
use videogen_testkit::sqlite::file_store;

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 30_000;

// ---------------------------------------------------------------- helpers

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn spec(prompt: &str) -> VideoSpec {
    VideoSpec {
        model: "videogen-ref".into(),
        prompt: prompt.into(),
        seconds: Seconds::S4,
        size: VideoSize::PORTRAIT_720,
        seed: 7,
        style: None,
        steps: 30,
        input_reference: None,
        params: Default::default(),
    }
}

fn new_job(tenant_name: &str, now_ms: i64) -> NewJob {
    NewJob {
        id: VideoId::generate(),
        tenant: tenant(tenant_name),
        tier: Tier::Paid,
        spec: spec("a red fox in the snow"),
        now_ms,
    }
}

async fn submit(store: &dyn Store, tenant_name: &str, now_ms: i64) -> Job {
    match store.submit(new_job(tenant_name, now_ms), None).await.unwrap() {
        Submitted::Created(job) => job,
        Submitted::Replayed(_) => panic!("no idempotency key, yet replayed"),
    }
}

fn worker(node: &str, name: &str) -> WorkerId {
    WorkerId::new(node, name)
}

async fn lease(store: &dyn Store, id: &VideoId, w: &WorkerId, now_ms: i64) -> Lease {
    store
        .lease(id, w, now_ms, TTL)
        .await
        .unwrap()
        .expect("job should be leasable")
}

fn outputs(id: &VideoId, attempt: u32) -> Outputs {
    Outputs {
        video_key: videogen_core::blob::keys::video(id, attempt),
        thumbnail_key: videogen_core::blob::keys::thumbnail(id, attempt),
        spritesheet_key: videogen_core::blob::keys::spritesheet(id, attempt),
        video_bytes: 12_345,
    }
}

fn checkpoint(id: &VideoId, attempt: u32, step: u32) -> CheckpointRef {
    CheckpointRef {
        key: videogen_core::blob::keys::checkpoint(id, attempt, step),
        step,
        attempt,
        crc32: 0xdead_beef,
        size_bytes: 4096,
    }
}

fn progress(phase: Phase, step: u32, percent: u8) -> Progress {
    Progress {
        phase,
        step,
        total_steps: 30,
        percent,
    }
}

async fn job(store: &dyn Store, id: &VideoId) -> Job {
    store.job(id).await.unwrap().expect("job exists")
}

async fn events(store: &dyn Store, id: &VideoId) -> Vec<JobEvent> {
    store.events(id, 0, 1_000).await.unwrap()
}

fn kinds(events: &[JobEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind().as_str()).collect()
}

/// Fields every state-change event carries.
fn assert_common(e: &JobEvent, state: JobState, phase: Phase, progress: u8, attempt: u32) {
    let d = &e.to_json();
    assert_eq!(d["status"], state.api_status(), "{e:?}");
    assert_eq!(d["state"], state.as_str(), "{e:?}");
    assert_eq!(d["phase"], phase.as_str(), "{e:?}");
    assert_eq!(d["progress"], progress, "{e:?}");
    assert_eq!(d["attempt"], attempt, "{e:?}");
}

fn is_stale(r: Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::StaleLease { .. }))
}

// ---------------------------------------------------------------- scenarios

async fn full_lifecycle_records_every_event_with_its_data(store: &dyn Store) {
    let created = submit(store, "acme", T0).await;
    assert_eq!(created.state, JobState::Queued);
    assert_eq!(created.phase, Phase::Queued);
    assert_eq!((created.progress, created.attempt), (0, 0));
    assert_eq!(
        job(store, &created.id).await,
        created,
        "Created(job) is what was stored"
    );

    let w = worker("node-1", "w0");
    let l = lease(store, &created.id, &w, T0 + 10).await;
    assert_eq!(l.attempt, 1);
    assert_eq!(l.expires_at_ms, T0 + 10 + TTL);
    let running = job(store, &created.id).await;
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.phase, Phase::LoadingModel);
    assert_eq!(running.started_at_ms, Some(T0 + 10));
    assert_eq!(running.lease.as_ref(), Some(&l));
    assert!(
        store.lease(&created.id, &w, T0 + 11, TTL).await.unwrap().is_none(),
        "leased twice"
    );

    let exp = store
        .heartbeat(&l, &progress(Phase::Generating, 3, 10), T0 + 20, TTL)
        .await
        .unwrap();
    assert_eq!(exp, T0 + 20 + TTL);
    // Same phase and percent: lease extended, no new event.
    let exp = store
        .heartbeat(&l, &progress(Phase::Generating, 4, 10), T0 + 30, TTL)
        .await
        .unwrap();
    assert_eq!(exp, T0 + 30 + TTL);
    let ck = checkpoint(&created.id, 1, 4);
    store.commit_checkpoint(&l, &ck, T0 + 40).await.unwrap();
    store
        .heartbeat(&l, &progress(Phase::Encoding, 30, 95), T0 + 50, TTL)
        .await
        .unwrap();
    let out = outputs(&created.id, 1);
    let done = store.complete(&l, &out, T0 + 60, T0 + 60 + 86_400_000).await.unwrap();

    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.phase, Phase::Completed);
    assert_eq!(done.progress, 100);
    assert_eq!(done.step, 30);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.completed_at_ms, Some(T0 + 60));
    assert_eq!(done.expires_at_ms, Some(T0 + 60 + 86_400_000));
    assert_eq!(done.outputs.as_ref(), Some(&out));
    assert_eq!(done.checkpoint.as_ref(), Some(&ck));
    assert_eq!(done.lease, None);
    assert_eq!(done.error, None);
    assert_eq!(job(store, &created.id).await, done);

    let ev = events(store, &created.id).await;
    assert_eq!(
        kinds(&ev),
        ["created", "leased", "progress", "checkpoint", "progress", "completed"]
    );
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        ev.iter().map(|e| e.at_ms - T0).collect::<Vec<_>>(),
        [0, 10, 20, 40, 50, 60]
    );
    assert_common(&ev[0], JobState::Queued, Phase::Queued, 0, 0);
    assert_common(&ev[1], JobState::Running, Phase::LoadingModel, 0, 1);
    assert_eq!(ev[1].to_json()["worker"], "node-1/w0");
    assert_common(&ev[2], JobState::Running, Phase::Generating, 10, 1);
    assert_eq!(
        (
            ev[2].to_json()["step"].as_u64(),
            ev[2].to_json()["total_steps"].as_u64()
        ),
        (Some(3), Some(30))
    );
    assert_common(&ev[3], JobState::Running, Phase::Generating, 10, 1);
    assert_eq!(ev[3].to_json()["step"], 4);
    assert_eq!(ev[3].to_json()["key"], ck.key.as_str());
    assert_common(&ev[4], JobState::Running, Phase::Encoding, 95, 1);
    assert_common(&ev[5], JobState::Completed, Phase::Completed, 100, 1);
    assert_eq!(ev[5].to_json()["expires_at_ms"], T0 + 60 + 86_400_000);

    // Event paging and free-form events.
    assert_eq!(
        kinds(&store.events(&created.id, 2, 2).await.unwrap()),
        ["progress", "checkpoint"]
    );
    let resumed = EventPayload::Resumed {
        from_step: 4,
        checkpoint_attempt: 1,
        previous_step: 6,
    };
    let seq = store.append_event(&created.id, &resumed, T0 + 70).await.unwrap();
    assert_eq!(seq, 7);
    let last = store.events(&created.id, 6, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].seq, last[0].at_ms, &last[0].payload), (7, T0 + 70, &resumed));
    // The job's fields come from the row as it is (completed by now).
    assert_common(&last[0], JobState::Completed, Phase::Completed, 100, 1);
    assert_eq!(last[0].to_json()["from_step"], 4);
    let ghost = VideoId::generate();
    assert!(matches!(
        store.append_event(&ghost, &resumed, T0).await,
        Err(StoreError::NotFound(id)) if id == ghost
    ));
    assert!(store.events(&ghost, 0, 10).await.unwrap().is_empty());
}
on_every_backend!(full_lifecycle_records_every_event_with_its_data);

async fn idempotent_submit_replays_the_same_body_and_rejects_another(store: &dyn Store) {
    let idem = |hash: &str| {
        Some(Idempotency {
            key: "req-1".into(),
            body_hash: hash.into(),
        })
    };
    let first = match store.submit(new_job("acme", T0), idem("h1")).await.unwrap() {
        Submitted::Created(j) => j,
        other => panic!("{other:?}"),
    };
    match store.submit(new_job("acme", T0 + 1), idem("h1")).await.unwrap() {
        Submitted::Replayed(j) => assert_eq!(j, first),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.submit(new_job("acme", T0 + 2), idem("h2")).await,
        Err(StoreError::IdempotencyConflict)
    ));
    // Keys are per tenant.
    assert!(matches!(
        store.submit(new_job("other", T0), idem("h2")).await.unwrap(),
        Submitted::Created(_)
    ));

    // Still replayed once the job has completed: the caller gets its current state.
    let l = lease(store, &first.id, &worker("n", "w"), T0 + 5).await;
    store
        .complete(&l, &outputs(&first.id, 1), T0 + 6, T0 + 1_000)
        .await
        .unwrap();
    match store.submit(new_job("acme", T0 + 7), idem("h1")).await.unwrap() {
        Submitted::Replayed(j) => {
            assert_eq!(j.id, first.id);
            assert_eq!(j.state, JobState::Completed);
        }
        other => panic!("{other:?}"),
    }
    let all = store
        .list_jobs(
            &tenant("acme"),
            &ListQuery {
                after: None,
                limit: 10,
                order: Order::Asc,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "replays and conflicts created no jobs");
    assert_eq!(
        events(store, &first.id).await.len(),
        3,
        "created, leased, completed only"
    );
}
on_every_backend!(idempotent_submit_replays_the_same_body_and_rejects_another);

async fn concurrent_submits_with_the_same_key_resolve_to_one_job(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let idem = Idempotency {
                    key: "same-key".into(),
                    body_hash: "same-body".into(),
                };
                store.submit(new_job("acme", T0 + i), Some(idem)).await.unwrap()
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Submitted::Created(j) => {
                created += 1;
                ids.push(j.id);
            }
            Submitted::Replayed(j) => ids.push(j.id),
        }
    }
    assert_eq!(created, 1);
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "every submit got the same job");
    assert_eq!(store.queued_jobs(None, 1000).await.unwrap().len(), 1);
}

mod concurrent_submits_with_the_same_key_resolve_to_one_job {
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_file() {
        let (store, _dir) = super::file_store().await;
        super::concurrent_submits_with_the_same_key_resolve_to_one_job(Arc::new(store)).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = videogen_testkit::pg::TestDb::create().await;
        super::concurrent_submits_with_the_same_key_resolve_to_one_job(Arc::new(db.store().await)).await;
    }
}

async fn list_jobs_paginates_both_ways_with_cursors(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(submit(store, "acme", T0 + i).await.id);
        submit(store, "other", T0 + i).await;
    }
    ids.sort();
    let acme = tenant("acme");
    let page = |after: Option<VideoId>, limit, order| {
        let q = ListQuery { after, limit, order };
        let acme = acme.clone();
        async move {
            store
                .list_jobs(&acme, &q)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };

    // Ascending in pages of 3 (asking limit + 1 as the API does).
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut p = page(after.clone(), 4, Order::Asc).await;
        let has_more = p.len() > 3;
        p.truncate(3);
        after = p.last().cloned();
        seen.extend(p);
        if !has_more {
            break;
        }
    }
    assert_eq!(seen, ids);

    // Descending.
    let mut desc = ids.clone();
    desc.reverse();
    assert_eq!(page(None, 3, Order::Desc).await, desc[..3]);
    assert_eq!(page(Some(desc[2].clone()), 3, Order::Desc).await, desc[3..6]);
    assert_eq!(page(Some(desc[5].clone()), 3, Order::Desc).await, desc[6..]);
    assert_eq!(page(Some(ids[0].clone()), 3, Order::Desc).await, Vec::<VideoId>::new());
    assert_eq!(page(Some(ids[6].clone()), 3, Order::Asc).await, Vec::<VideoId>::new());
    assert_eq!(page(Some(ids[3].clone()), 10, Order::Asc).await, ids[4..]);
    assert_eq!(
        store
            .list_jobs(
                &tenant("nobody"),
                &ListQuery {
                    after: None,
                    limit: 5,
                    order: Order::Asc
                }
            )
            .await
            .unwrap()
            .len(),
        0
    );
}
on_every_backend!(list_jobs_paginates_both_ways_with_cursors);

async fn cancel_of_a_queued_job_fails_it_as_cancelled(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let c = store.cancel(&j.id, T0 + 5).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(c.phase, Phase::Cancelled);
    assert_eq!(c.error.as_ref().map(|e| e.code.as_str()), Some("cancelled"));
    assert_eq!(job(store, &j.id).await, c);
    assert!(
        store
            .lease(&j.id, &worker("n", "w"), T0 + 6, TTL)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.queued_jobs(None, 1000).await.unwrap().is_empty());
    let ev = events(store, &j.id).await;
    assert_eq!(kinds(&ev), ["created", "cancelled"]);
    assert_common(&ev[1], JobState::Cancelled, Phase::Cancelled, 0, 0);
    assert_eq!(ev[1].to_json()["status"], "failed");

    let ghost = VideoId::generate();
    assert!(matches!(store.cancel(&ghost, T0).await, Err(StoreError::NotFound(id)) if id == ghost));
}
on_every_backend!(cancel_of_a_queued_job_fails_it_as_cancelled);

async fn cancelled_running_job_rejects_every_worker_write_as_stale(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let l = lease(store, &j.id, &worker("n", "w"), T0 + 1).await;
    store
        .heartbeat(&l, &progress(Phase::Generating, 5, 20), T0 + 2, TTL)
        .await
        .unwrap();
    let c = store.cancel(&j.id, T0 + 3).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(c.lease, None, "the lease is cleared");
    assert_eq!(c.progress, 20);
    let before = job(store, &j.id).await;
    let before_events = events(store, &j.id).await;
    assert_common(
        before_events.last().unwrap(),
        JobState::Cancelled,
        Phase::Cancelled,
        20,
        1,
    );

    assert!(is_stale(
        store
            .heartbeat(&l, &progress(Phase::Decoding, 9, 50), T0 + 4, TTL)
            .await
    ));
    assert!(is_stale(store.complete(&l, &outputs(&j.id, 1), T0 + 5, T0 + 9).await));
    assert!(is_stale(
        store.commit_checkpoint(&l, &checkpoint(&j.id, 1, 9), T0 + 6).await
    ));
    assert!(is_stale(
        store.fail(&l, &JobError::new("model_error", "boom"), T0 + 7).await
    ));
    assert!(is_stale(store.release(&l, RequeueReason::Released, T0 + 8, None).await));
    assert_eq!(job(store, &j.id).await, before, "stale writes changed the job");
    assert_eq!(events(store, &j.id).await, before_events, "stale writes logged events");

    assert!(matches!(
        store.cancel(&j.id, T0 + 9).await,
        Err(StoreError::IllegalTransition(e)) if e.from == JobState::Cancelled
    ));
}
on_every_backend!(cancelled_running_job_rejects_every_worker_write_as_stale);

async fn zombie_attempt_is_fenced_off_after_its_lease_is_reclaimed(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let zombie = lease(store, &j.id, &worker("n1", "w0"), T0).await;
    assert_eq!(zombie.attempt, 1);
    // Not yet expired: nothing reclaimed.
    assert!(store.reclaim_expired(T0 + TTL, 3, 1000).await.unwrap().is_empty());
    let reclaimed = store.reclaim_expired(T0 + TTL + 1, 3, 1000).await.unwrap();
    assert!(matches!(&reclaimed[..], [Reclaimed::Requeued(q)] if q.id == j.id && q.enqueued_at_ms == T0));
    let requeued = job(store, &j.id).await;
    assert_eq!(
        (requeued.state, requeued.phase, requeued.lease.as_ref()),
        (JobState::Queued, Phase::Queued, None)
    );

    let owner = lease(store, &j.id, &worker("n2", "w0"), T0 + TTL + 2).await;
    assert_eq!(owner.attempt, 2);
    assert_eq!(job(store, &j.id).await.started_at_ms, Some(T0), "first start is kept");

    let before = job(store, &j.id).await;
    assert!(is_stale(
        store
            .heartbeat(&zombie, &progress(Phase::Generating, 9, 30), T0 + TTL + 3, TTL)
            .await
    ));
    assert!(is_stale(
        store
            .commit_checkpoint(&zombie, &checkpoint(&j.id, 1, 9), T0 + TTL + 4)
            .await
    ));
    assert!(is_stale(
        store
            .complete(&zombie, &outputs(&j.id, 1), T0 + TTL + 5, T0 + 10 * TTL)
            .await
    ));
    assert!(is_stale(
        store
            .fail(&zombie, &JobError::new("model_error", "x"), T0 + TTL + 5)
            .await
    ));
    assert!(is_stale(
        store
            .release(&zombie, RequeueReason::Released, T0 + TTL + 5, None)
            .await
    ));
    assert_eq!(job(store, &j.id).await, before);

    store
        .heartbeat(&owner, &progress(Phase::Generating, 2, 5), T0 + TTL + 6, TTL)
        .await
        .unwrap();
    store
        .commit_checkpoint(&owner, &checkpoint(&j.id, 2, 2), T0 + TTL + 7)
        .await
        .unwrap();
    let done = store
        .complete(&owner, &outputs(&j.id, 2), T0 + TTL + 8, T0 + 10 * TTL)
        .await
        .unwrap();
    assert_eq!(
        done.outputs,
        Some(outputs(&j.id, 2)),
        "only the owner's outputs are visible"
    );
    assert_eq!(done.checkpoint, Some(checkpoint(&j.id, 2, 2)));

    let ev = events(store, &j.id).await;
    assert_eq!(
        kinds(&ev),
        [
            "created",
            "leased",
            "requeued",
            "leased",
            "progress",
            "checkpoint",
            "completed"
        ]
    );
    assert_common(&ev[2], JobState::Queued, Phase::Queued, 0, 1);
    assert_eq!(ev[2].to_json()["reason"], "lease_expired");
    assert_eq!(ev[2].to_json()["resume_step"], 0);
    assert_eq!(ev[3].to_json()["attempt"], 2);
}
on_every_backend!(zombie_attempt_is_fenced_off_after_its_lease_is_reclaimed);

async fn job_is_dead_lettered_once_attempts_are_exhausted(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let mut now = T0;
    for attempt in 1..=2 {
        let l = lease(store, &j.id, &worker("n", "w"), now).await;
        assert_eq!(l.attempt, attempt);
        now += TTL + 1;
        let r = store.reclaim_expired(now, 3, 1000).await.unwrap();
        assert!(matches!(&r[..], [Reclaimed::Requeued(_)]), "{r:?}");
    }
    let l = lease(store, &j.id, &worker("n", "w"), now).await;
    assert_eq!(l.attempt, 3);
    now += TTL + 1;
    let r = store.reclaim_expired(now, 3, 1000).await.unwrap();
    assert!(matches!(&r[..], [Reclaimed::DeadLettered(id)] if *id == j.id), "{r:?}");
    let dead = job(store, &j.id).await;
    assert_eq!((dead.state, dead.phase), (JobState::Failed, Phase::Failed));
    assert_eq!(
        dead.error.as_ref().map(|e| e.code.as_str()),
        Some("max_attempts_exceeded")
    );
    assert_eq!(dead.lease, None);
    assert!(store.queued_jobs(None, 1000).await.unwrap().is_empty());
    assert!(store.reclaim_expired(now + 10 * TTL, 3, 1000).await.unwrap().is_empty());
    let ev = events(store, &j.id).await;
    let last = ev.last().unwrap();
    assert_eq!(last.kind().as_str(), "failed");
    assert_common(last, JobState::Failed, Phase::Failed, 0, 3);
    assert_eq!(last.to_json()["error"]["code"], "max_attempts_exceeded");
    assert!(last.to_json()["error"]["message"].is_string());
}
on_every_backend!(job_is_dead_lettered_once_attempts_are_exhausted);

async fn reclaim_node_only_touches_that_nodes_jobs(store: &dyn Store) {
    let a1 = submit(store, "acme", T0).await.id;
    let a2 = submit(store, "acme", T0).await.id;
    let ab = submit(store, "acme", T0).await.id;
    let b = submit(store, "acme", T0).await.id;
    let queued = submit(store, "acme", T0).await.id;
    lease(store, &a1, &worker("a", "w0"), T0).await;
    let l2 = lease(store, &a2, &worker("a", "w1"), T0).await;
    lease(store, &ab, &worker("ab", "w0"), T0).await;
    lease(store, &b, &worker("b", "w0"), T0).await;
    store
        .commit_checkpoint(&l2, &checkpoint(&a2, 1, 12), T0 + 1)
        .await
        .unwrap();

    // Lease not expired: reclaimed anyway, the node restarted.
    let r = store.reclaim_node("a", T0 + 2, 5, 1000).await.unwrap();
    let mut requeued: Vec<VideoId> = r
        .iter()
        .map(|x| match x {
            Reclaimed::Requeued(q) => q.id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    requeued.sort();
    let mut expected = vec![a1.clone(), a2.clone()];
    expected.sort();
    assert_eq!(requeued, expected);
    for id in [&ab, &b] {
        assert_eq!(job(store, id).await.state, JobState::Running);
    }
    assert_eq!(job(store, &queued).await.state, JobState::Queued);
    let ev = events(store, &a2).await;
    let last = ev.last().unwrap();
    assert_eq!(last.kind().as_str(), "requeued");
    assert_eq!(last.to_json()["reason"], RequeueReason::NodeRestarted.as_str());
    assert_eq!(last.to_json()["resume_step"], 12);
    // The next attempt resumes from the checkpoint.
    let l = lease(store, &a2, &worker("b", "w1"), T0 + 3).await;
    assert_eq!(l.attempt, 2);
    assert_eq!(job(store, &a2).await.phase, Phase::ResumingFromCheckpoint);
    // Dead-letters too when attempts are exhausted.
    let r = store.reclaim_node("ab", T0 + 4, 1, 1000).await.unwrap();
    assert!(matches!(&r[..], [Reclaimed::DeadLettered(id)] if *id == ab));
}
on_every_backend!(reclaim_node_only_touches_that_nodes_jobs);

async fn checkpoint_commit_keeps_the_previous_pointer(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let l = lease(store, &j.id, &worker("n", "w"), T0).await;
    let c1 = checkpoint(&j.id, 1, 5);
    let c2 = checkpoint(&j.id, 1, 10);
    let c3 = checkpoint(&j.id, 1, 15);
    store.commit_checkpoint(&l, &c1, T0 + 1).await.unwrap();
    let s = job(store, &j.id).await;
    assert_eq!((s.checkpoint.as_ref(), s.prev_checkpoint.as_ref()), (Some(&c1), None));
    store.commit_checkpoint(&l, &c2, T0 + 2).await.unwrap();
    store.commit_checkpoint(&l, &c3, T0 + 3).await.unwrap();
    let s = job(store, &j.id).await;
    assert_eq!(
        (s.checkpoint.as_ref(), s.prev_checkpoint.as_ref()),
        (Some(&c3), Some(&c2))
    );

    // Released on purpose: back in the queue, progress kept, resumes from c3.
    store
        .heartbeat(&l, &progress(Phase::Generating, 15, 50), T0 + 4, TTL)
        .await
        .unwrap();
    let q = store.release(&l, RequeueReason::Released, T0 + 5, None).await.unwrap();
    assert_eq!(
        (q.id.clone(), q.tenant.clone(), q.tier, q.model.as_str()),
        (j.id.clone(), tenant("acme"), Tier::Paid, "videogen-ref")
    );
    // It keeps its place in line.
    assert_eq!(q.enqueued_at_ms, j.enqueued_at_ms);
    let s = job(store, &j.id).await;
    assert_eq!(
        (s.state, s.phase, s.progress, s.lease.as_ref()),
        (JobState::Queued, Phase::Queued, 50, None)
    );
    assert_eq!(store.queued_jobs(None, 1000).await.unwrap(), vec![q]);
    let ev = events(store, &j.id).await;
    let last = ev.last().unwrap();
    assert_eq!(last.kind().as_str(), "requeued");
    assert_common(last, JobState::Queued, Phase::Queued, 50, 1);
    assert_eq!(
        (
            last.to_json()["reason"].as_str(),
            last.to_json()["resume_step"].as_u64()
        ),
        (Some("released"), Some(15))
    );
    let l2 = lease(store, &j.id, &worker("n", "w"), T0 + 6).await;
    assert_eq!(job(store, &j.id).await.phase, Phase::ResumingFromCheckpoint);
    assert_eq!(
        events(store, &j.id).await.last().unwrap().to_json()["phase"],
        "resuming_from_checkpoint"
    );
    let c4 = checkpoint(&j.id, 2, 20);
    store.commit_checkpoint(&l2, &c4, T0 + 7).await.unwrap();
    let s = job(store, &j.id).await;
    assert_eq!((s.checkpoint, s.prev_checkpoint), (Some(c4), Some(c3)));
}
on_every_backend!(checkpoint_commit_keeps_the_previous_pointer);

async fn expire_due_expires_completed_jobs_whose_retention_passed(store: &dyn Store) {
    let mut done = Vec::new();
    for i in 0..4 {
        let j = submit(store, "acme", T0).await;
        let l = lease(store, &j.id, &worker("n", "w"), T0).await;
        done.push(
            store
                .complete(&l, &outputs(&j.id, 1), T0 + 1, T0 + 100 * (i + 1))
                .await
                .unwrap(),
        );
    }
    let running = submit(store, "acme", T0).await;
    lease(store, &running.id, &worker("n", "w"), T0).await;

    assert!(store.expire_due(T0 + 99, 10).await.unwrap().is_empty());
    // Due: the first three (expires_at <= now); limit 2 takes the oldest two.
    let first = store.expire_due(T0 + 300, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [done[0].id.clone(), done[1].id.clone()]
    );
    for j in &first {
        assert_eq!((j.state, j.phase), (JobState::Expired, Phase::Expired));
        assert_eq!(
            j.outputs,
            Some(outputs(&j.id, 1)),
            "outputs kept so blobs can be deleted"
        );
        let ev = events(store, &j.id).await;
        assert_eq!(ev.last().unwrap().kind().as_str(), "expired");
        assert_common(ev.last().unwrap(), JobState::Expired, Phase::Expired, 100, 1);
        assert_eq!(ev.last().unwrap().to_json()["status"], "completed");
    }
    let second = store.expire_due(T0 + 300, 10).await.unwrap();
    assert_eq!(
        second.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [done[2].id.clone()]
    );
    assert!(store.expire_due(T0 + 300, 10).await.unwrap().is_empty());
    assert_eq!(job(store, &done[3].id).await.state, JobState::Completed);
    assert_eq!(job(store, &running.id).await.state, JobState::Running);
    assert!(matches!(
        store.cancel(&done[0].id, T0 + 400).await,
        Err(StoreError::IllegalTransition(e)) if e.from == JobState::Expired
    ));
}
on_every_backend!(expire_due_expires_completed_jobs_whose_retention_passed);

async fn illegal_transitions_error_and_change_nothing(store: &dyn Store) {
    // Completing a queued job (a lease that never was): the fenced write is refused.
    let q = submit(store, "acme", T0).await;
    let fake = Lease {
        job_id: q.id.clone(),
        attempt: 0,
        worker: worker("n", "w"),
        expires_at_ms: T0 + TTL,
    };
    assert!(is_stale(
        store.complete(&fake, &outputs(&q.id, 0), T0 + 1, T0 + 2).await
    ));
    let fake1 = Lease { attempt: 1, ..fake };
    assert!(is_stale(
        store.complete(&fake1, &outputs(&q.id, 1), T0 + 1, T0 + 2).await
    ));
    assert!(is_stale(
        store
            .heartbeat(&fake1, &progress(Phase::Generating, 1, 1), T0 + 1, TTL)
            .await
    ));
    assert_eq!(job(store, &q.id).await, q);
    assert_eq!(events(store, &q.id).await.len(), 1);

    // Cancelling a completed job.
    let j = submit(store, "acme", T0).await;
    let l = lease(store, &j.id, &worker("n", "w"), T0).await;
    let done = store
        .complete(&l, &outputs(&j.id, 1), T0 + 1, T0 + 1_000)
        .await
        .unwrap();
    let n_events = events(store, &j.id).await.len();
    match store.cancel(&j.id, T0 + 2).await {
        Err(StoreError::IllegalTransition(e)) => {
            assert_eq!(e.from, JobState::Completed);
            assert_eq!(e.to_string(), "cannot cancel a job that is completed");
        }
        other => panic!("{other:?}"),
    }
    // Completing it twice.
    assert!(is_stale(
        store.complete(&l, &outputs(&j.id, 1), T0 + 3, T0 + 2_000).await
    ));
    assert!(
        store
            .lease(&j.id, &worker("n", "w"), T0 + 4, TTL)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(job(store, &j.id).await, done);
    assert_eq!(events(store, &j.id).await.len(), n_events);

    // Unknown jobs.
    let ghost = VideoId::generate();
    assert!(store.lease(&ghost, &worker("n", "w"), T0, TTL).await.unwrap().is_none());
    assert!(store.job(&ghost).await.unwrap().is_none());
    assert!(store.delete(&ghost).await.unwrap().is_none());
}
on_every_backend!(illegal_transitions_error_and_change_nothing);

async fn delete_removes_the_job_and_its_events(store: &dyn Store) {
    let j = submit(store, "acme", T0).await;
    let keep = submit(store, "acme", T0).await;
    let l = lease(store, &j.id, &worker("n", "w"), T0).await;
    let done = store.complete(&l, &outputs(&j.id, 1), T0 + 1, T0 + 2).await.unwrap();
    assert_eq!(store.delete(&j.id).await.unwrap(), Some(done));
    assert!(store.job(&j.id).await.unwrap().is_none());
    assert!(events(store, &j.id).await.is_empty());
    assert!(store.delete(&j.id).await.unwrap().is_none());
    assert_eq!(events(store, &keep.id).await.len(), 1);
    // A queued job can be deleted too (the API decides what is allowed).
    assert_eq!(
        store.delete(&keep.id).await.unwrap().map(|j| j.state),
        Some(JobState::Queued)
    );
    assert!(store.queued_jobs(None, 1000).await.unwrap().is_empty());
}
on_every_backend!(delete_removes_the_job_and_its_events);

async fn queued_jobs_lists_runnable_jobs_oldest_first(store: &dyn Store) {
    let a = submit(store, "acme", T0 + 30).await;
    let b = submit(store, "acme", T0 + 10).await;
    let c = submit(store, "other", T0 + 20).await;
    let d = submit(store, "acme", T0 + 5).await;
    lease(store, &d.id, &worker("n", "w"), T0 + 40).await;
    let q = store.queued_jobs(None, 1000).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id.clone()).collect::<Vec<_>>(), [b.id, c.id, a.id]);
    assert_eq!(q[1].tenant, tenant("other"));
    assert_eq!(q[1].enqueued_at_ms, T0 + 20);
}
on_every_backend!(queued_jobs_lists_runnable_jobs_oldest_first);

async fn api_keys_are_stored_found_by_hash_listed_and_revoked(store: &dyn Store) {
    let key = |id: &str, hash: &str, admin: bool, at: i64| ApiKey {
        id: id.into(),
        hash: hash.into(),
        prefix: "vg_abcd".into(),
        tenant: tenant("acme"),
        tier: Tier::Internal,
        admin,
        created_at_ms: at,
        revoked_at_ms: None,
    };
    let k1 = key("key_1", &"a".repeat(64), true, T0);
    let k2 = key("key_2", &"b".repeat(64), false, T0 + 1);
    store.insert_api_key(&k2).await.unwrap();
    store.insert_api_key(&k1).await.unwrap();
    assert!(
        store.insert_api_key(&key("key_3", &k1.hash, false, T0)).await.is_err(),
        "hash is unique"
    );
    assert_eq!(store.api_key_by_hash(&k1.hash).await.unwrap(), Some(k1.clone()));
    assert_eq!(store.api_key_by_hash("nope").await.unwrap(), None);
    assert_eq!(
        store.list_api_keys(None, 1000).await.unwrap(),
        vec![k1.clone(), k2.clone()]
    );
    assert!(store.revoke_api_key("key_1", T0 + 9).await.unwrap());
    assert!(
        !store.revoke_api_key("key_1", T0 + 10).await.unwrap(),
        "already revoked"
    );
    assert!(!store.revoke_api_key("key_9", T0 + 10).await.unwrap(), "no such key");
    let revoked = store.api_key_by_hash(&k1.hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(T0 + 9));
}
on_every_backend!(api_keys_are_stored_found_by_hash_listed_and_revoked);

#[tokio::test]
async fn data_survives_reopening_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("videogen.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let queued = submit(&store, "acme", T0).await;
    let j = submit(&store, "acme", T0).await;
    let l = lease(&store, &j.id, &worker("n", "w"), T0).await;
    store
        .commit_checkpoint(&l, &checkpoint(&j.id, 1, 3), T0 + 1)
        .await
        .unwrap();
    let running = job(&store, &j.id).await;
    let ev = events(&store, &j.id).await;
    // Dropped without close(): like a process that just goes away.
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(job(&store, &queued.id).await, queued);
    assert_eq!(job(&store, &j.id).await, running);
    assert_eq!(events(&store, &j.id).await, ev);
    // The old lease still fences: the job carries on where it was.
    store.complete(&l, &outputs(&j.id, 1), T0 + 2, T0 + 3).await.unwrap();
    store.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(job(&store, &j.id).await.state, JobState::Completed);
    assert_eq!(store.queued_jobs(None, 1000).await.unwrap().len(), 1);
}

/// 8 tasks submit, lease and complete 2,000 jobs, racing to lease each
/// other's jobs: no `SQLITE_BUSY` (nor lost compare-and-sets on PostgreSQL),
/// and every job completes exactly once.
async fn eight_tasks_complete_two_thousand_jobs_exactly_once(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 250;
    let ids = Arc::new(std::sync::Mutex::new(Vec::<VideoId>::new()));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            let ids = Arc::clone(&ids);
            tokio::spawn(async move {
                let w = worker("node", &format!("w{t}"));
                let mut completed = Vec::new();
                for i in 0..PER_TASK {
                    let now = T0 + i as i64;
                    let j = submit(&*store, &format!("tenant-{}", t % 3), now).await;
                    // Race for someone's job: the newest one, or our own.
                    let target = {
                        let mut ids = ids.lock().unwrap();
                        ids.push(j.id.clone());
                        ids[(ids.len() * 7 + t) % ids.len()].clone()
                    };
                    for id in [target, j.id] {
                        if let Some(l) = store.lease(&id, &w, now, TTL).await.unwrap() {
                            store
                                .heartbeat(&l, &progress(Phase::Generating, 1, 50), now, TTL)
                                .await
                                .unwrap();
                            store
                                .complete(&l, &outputs(&id, l.attempt), now, now + 1_000)
                                .await
                                .unwrap();
                            completed.push(id);
                        }
                    }
                }
                completed
            })
        })
        .collect();
    let mut times_completed: HashMap<VideoId, usize> = HashMap::new();
    for h in handles {
        for id in h.await.unwrap() {
            *times_completed.entry(id).or_default() += 1;
        }
    }
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), TASKS * PER_TASK);
    assert_eq!(times_completed.len(), ids.len(), "some job was never completed");
    assert!(times_completed.values().all(|&n| n == 1), "a job completed twice");
    assert!(store.queued_jobs(None, 1000).await.unwrap().is_empty());
    for id in ids.iter().step_by(97) {
        let j = job(&*store, id).await;
        assert_eq!((j.state, j.attempt), (JobState::Completed, 1));
        assert_eq!(
            kinds(&events(&*store, id).await),
            ["created", "leased", "progress", "completed"]
        );
    }
}

mod eight_tasks_complete_two_thousand_jobs_exactly_once {
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_file() {
        let (store, _dir) = super::file_store().await;
        super::eight_tasks_complete_two_thousand_jobs_exactly_once(Arc::new(store)).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = videogen_testkit::pg::TestDb::create().await;
        super::eight_tasks_complete_two_thousand_jobs_exactly_once(Arc::new(db.store().await)).await;
    }
}

// ---------------------------------------------------------------- throughput

async fn run_jobs(store: Arc<SqliteStore>, tasks: usize, per_task: usize) -> f64 {
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let w = worker("bench", &format!("w{t}"));
                for _ in 0..per_task {
                    let j = submit(&*store, "bench", T0).await;
                    let l = store.lease(&j.id, &w, T0, TTL).await.unwrap().unwrap();
                    store.complete(&l, &outputs(&j.id, 1), T0, T0 + 1_000).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

/// `cargo test -p videogen-store --release -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run on demand"]
async fn throughput_of_submit_lease_complete() {
    let n = 20_000;
    let (store, _dir) = file_store().await;
    let store = Arc::new(store);
    let seq = run_jobs(Arc::clone(&store), 1, n).await;
    let par = run_jobs(Arc::clone(&store), 8, n / 8).await;
    let mem = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let mem_seq = run_jobs(Arc::clone(&mem), 1, n).await;
    let mem_par = run_jobs(mem, 8, n / 8).await;
    println!(
        "submit+lease+complete jobs/s — file: sequential {seq:.0}, 8 tasks {par:.0}; \
         in-memory: sequential {mem_seq:.0}, 8 tasks {mem_par:.0}"
    );
}
