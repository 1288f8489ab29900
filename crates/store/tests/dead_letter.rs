//! Dead letters, re-drive and worker tokens on `SqliteStore` (a real
//! database file and the in-memory store) and on `PgStore` (a fresh
//! PostgreSQL database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::collections::HashSet;
use videogen_core::RequeueReason;
use videogen_core::store::prelude::*;
use videogen_core::store::{ApiKey, NewJob, Reclaimed, Store, StoreError, Submitted, WorkerToken};
use videogen_core::{
    CheckpointRef, IllegalTransition, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, Seconds,
    TenantId, Tier, Transition, VideoId, VideoSize, VideoSpec, WorkerId,
};
use videogen_store::SqliteStore;
use videogen_testkit::on_every_backend;

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 30_000;

// ---------------------------------------------------------------- helpers

async fn submit(store: &dyn Store, now_ms: i64) -> Job {
    let new = NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a lighthouse in a storm".into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 7,
            style: None,
            steps: 30,
            input_reference: None,
            params: Default::default(),
        },
        now_ms,
    };
    match store.submit(new, None).await.unwrap() {
        Submitted::Created(job) => job,
        Submitted::Replayed(_) => panic!("no idempotency key, yet replayed"),
    }
}

async fn lease(store: &dyn Store, id: &VideoId, now_ms: i64) -> Lease {
    store
        .lease(id, &WorkerId::new("n", "w0"), now_ms, TTL)
        .await
        .unwrap()
        .expect("job should be leasable")
}

async fn job(store: &dyn Store, id: &VideoId) -> Job {
    store.job(id).await.unwrap().expect("job exists")
}

async fn events(store: &dyn Store, id: &VideoId) -> Vec<JobEvent> {
    store.events(id, 0, 1_000).await.unwrap()
}

fn is_stale(r: Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::StaleLease { .. }))
}

fn illegal(r: Result<impl std::fmt::Debug, StoreError>) -> Option<JobState> {
    match r {
        Err(StoreError::IllegalTransition(IllegalTransition {
            from,
            transition: Transition::Redrive,
        })) => Some(from),
        other => panic!("expected an illegal re-drive, got {other:?}"),
    }
}

fn outputs(id: &VideoId, attempt: u32) -> Outputs {
    Outputs {
        video_key: videogen_core::blob::keys::video(id, attempt),
        thumbnail_key: videogen_core::blob::keys::thumbnail(id, attempt),
        spritesheet_key: videogen_core::blob::keys::spritesheet(id, attempt),
        video_bytes: 1,
    }
}

fn checkpoint(id: &VideoId, attempt: u32, step: u32) -> CheckpointRef {
    CheckpointRef {
        key: videogen_core::blob::keys::checkpoint(id, attempt, step),
        step,
        attempt,
        crc32: 1,
        size_bytes: 1,
    }
}

/// Leases and lets the lease expire until the reaper dead-letters the job;
/// returns the time after the last reclaim and the last lease.
async fn drive_to_dead_letter_by_expiry(store: &dyn Store, id: &VideoId, mut now: i64, max: u32) -> (i64, Lease) {
    loop {
        let l = lease(store, id, now).await;
        now += TTL + 1;
        match &store.reclaim_expired(now, max, 1000).await.unwrap()[..] {
            [Reclaimed::Requeued(q)] if q.id == *id => {}
            [Reclaimed::DeadLettered(d)] if d == id => return (now, l),
            other => panic!("unexpected reclaim {other:?}"),
        }
    }
}

async fn dead_letter_ids(store: &dyn Store) -> Vec<VideoId> {
    store
        .dead_letters(100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect()
}

// ---------------------------------------------------------------- scenarios

async fn dead_letters_lists_only_exhausted_jobs_oldest_first_with_a_cursor(store: &dyn Store) {
    assert!(store.dead_letters(10, None).await.unwrap().is_empty());
    // Three dead letters, by the reaper and by the worker path.
    let mut dead = Vec::new();
    for i in 0..2 {
        let j = submit(store, T0 + i).await;
        drive_to_dead_letter_by_expiry(store, &j.id, T0 + 10, 2).await;
        dead.push(j.id);
    }
    let j = submit(store, T0 + 3).await;
    let l = lease(store, &j.id, T0 + 4).await;
    let r = store
        .requeue_or_dead_letter(&l, "disk full", T0 + 5, 1, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::DeadLettered(ref id) if *id == j.id), "{r:?}");
    dead.push(j.id);
    // Not dead letters: a fatal failure, a cancelled, a queued, a running and a completed job.
    let fatal = submit(store, T0).await;
    let l = lease(store, &fatal.id, T0).await;
    store
        .fail(&l, &JobError::new("output_moderation_blocked", "no"), T0 + 1)
        .await
        .unwrap();
    let cancelled = submit(store, T0).await;
    store.cancel(&cancelled.id, T0 + 1).await.unwrap();
    submit(store, T0).await;
    let running = submit(store, T0).await;
    lease(store, &running.id, T0).await;
    let done = submit(store, T0).await;
    let l = lease(store, &done.id, T0).await;
    store
        .complete(&l, &outputs(&done.id, 1), T0 + 1, T0 + TTL)
        .await
        .unwrap();

    dead.sort();
    let all = store.dead_letters(10, None).await.unwrap();
    assert_eq!(all.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), dead);
    for j in &all {
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.error.as_ref().unwrap().code, "max_attempts_exceeded");
    }
    // Cursor pagination: pages of 2, then 1, then none.
    let p1 = store.dead_letters(2, None).await.unwrap();
    assert_eq!(p1.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), dead[..2]);
    let p2 = store.dead_letters(2, Some(p1[1].id.clone())).await.unwrap();
    assert_eq!(p2.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), dead[2..]);
    assert!(store.dead_letters(2, Some(dead[2].clone())).await.unwrap().is_empty());
}
on_every_backend!(dead_letters_lists_only_exhausted_jobs_oldest_first_with_a_cursor);

async fn redrive_gives_a_fresh_budget_and_the_attempt_keeps_growing(store: &dyn Store) {
    const MAX: u32 = 2;
    let j = submit(store, T0).await;
    let (now, last) = drive_to_dead_letter_by_expiry(store, &j.id, T0, MAX).await;
    assert_eq!(last.attempt, 2);
    let dead = job(store, &j.id).await;
    let error = dead.error.clone().unwrap();
    assert_eq!(error.code, "max_attempts_exceeded");
    let seq_before = events(store, &j.id).await.len();

    let q = store.redrive(&j.id, now + 1).await.unwrap();
    assert_eq!(
        (q.id.clone(), q.tenant.clone(), q.tier),
        (j.id.clone(), j.tenant.clone(), j.tier)
    );
    assert_eq!((q.model.as_str(), q.enqueued_at_ms), ("videogen-ref", now + 1));
    let redriven = job(store, &j.id).await;
    assert_eq!(
        (
            redriven.state,
            redriven.phase,
            redriven.attempt,
            redriven.error.as_ref()
        ),
        (JobState::Queued, Phase::Queued, 2, None),
        "queued, error cleared, attempt kept"
    );
    assert_eq!(redriven.enqueued_at_ms, now + 1);
    assert_eq!(store.queued_jobs(None, 1000).await.unwrap(), vec![q]);
    assert!(dead_letter_ids(store).await.is_empty());
    let ev = events(store, &j.id).await;
    assert_eq!(ev.len(), seq_before + 1);
    let e = ev.last().unwrap();
    assert_eq!((e.kind().as_str(), e.at_ms), ("redriven", now + 1));
    assert_eq!(e.to_json()["status"], "queued");
    assert_eq!(e.to_json()["state"], "queued");
    assert_eq!(e.to_json()["phase"], "queued");
    assert_eq!(e.to_json()["attempt"], 2);
    assert_eq!(e.to_json()["previous_error"]["code"], "max_attempts_exceeded");
    assert_eq!(e.to_json()["previous_error"]["message"], error.message.as_str());

    // A fresh budget of MAX attempts (3 and 4), numbered on from 2.
    let l3 = lease(store, &j.id, now + 2).await;
    assert_eq!(l3.attempt, 3);
    let r = store.reclaim_expired(now + 2 + TTL + 1, MAX, 1000).await.unwrap();
    assert!(matches!(&r[..], [Reclaimed::Requeued(q)] if q.id == j.id), "{r:?}");
    let l4 = lease(store, &j.id, now + 3 * TTL).await;
    assert_eq!(l4.attempt, 4);
    let r = store.reclaim_expired(now + 4 * TTL + 1, MAX, 1000).await.unwrap();
    assert!(matches!(&r[..], [Reclaimed::DeadLettered(id)] if *id == j.id), "{r:?}");
    let dead = job(store, &j.id).await;
    assert_eq!((dead.state, dead.attempt), (JobState::Failed, 4));
    let message = &dead.error.as_ref().unwrap().message;
    assert!(message.contains("after 4 attempts"), "{message}");

    // And again: every re-drive restarts the budget at the current attempt.
    store.redrive(&j.id, now + 5 * TTL).await.unwrap();
    let l5 = lease(store, &j.id, now + 5 * TTL).await;
    assert_eq!(l5.attempt, 5);
    let r = store
        .requeue_or_dead_letter(&l5, "flaky", now + 5 * TTL + 1, MAX, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::Requeued(_)), "{r:?}");
}
on_every_backend!(redrive_gives_a_fresh_budget_and_the_attempt_keeps_growing);

async fn a_lease_from_before_the_redrive_stays_stale(store: &dyn Store) {
    let j = submit(store, T0).await;
    let old = lease(store, &j.id, T0).await;
    let r = store
        .requeue_or_dead_letter(&old, "boom", T0 + 1, 1, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::DeadLettered(_)), "{r:?}");
    store.redrive(&j.id, T0 + 2).await.unwrap();

    // Queued again, and then owned by a newer attempt: the old lease fences out both times.
    for leased in [false, true] {
        let owner = if leased {
            Some(lease(store, &j.id, T0 + 3).await)
        } else {
            None
        };
        let before = job(store, &j.id).await;
        let p = Progress {
            phase: Phase::Generating,
            step: 3,
            total_steps: 30,
            percent: 10,
        };
        assert!(is_stale(store.heartbeat(&old, &p, T0 + 4, TTL).await));
        assert!(is_stale(
            store.commit_checkpoint(&old, &checkpoint(&j.id, 1, 3), T0 + 4).await
        ));
        assert!(is_stale(
            store.complete(&old, &outputs(&j.id, 1), T0 + 4, T0 + TTL).await
        ));
        assert!(is_stale(
            store.fail(&old, &JobError::new("model_error", "x"), T0 + 4).await
        ));
        assert!(is_stale(
            store.release(&old, RequeueReason::Released, T0 + 4, None).await
        ));
        assert!(is_stale(
            store.requeue_or_dead_letter(&old, "late", T0 + 4, 1, None).await
        ));
        assert_eq!(job(store, &j.id).await, before, "a stale write changed the job");
        if let Some(owner) = owner {
            assert_eq!(owner.attempt, 2);
            let done = store
                .complete(&owner, &outputs(&j.id, 2), T0 + 5, T0 + TTL)
                .await
                .unwrap();
            assert_eq!(
                (done.state, done.outputs),
                (JobState::Completed, Some(outputs(&j.id, 2)))
            );
        }
    }
}
on_every_backend!(a_lease_from_before_the_redrive_stays_stale);

async fn redrive_refuses_what_is_not_a_dead_letter(store: &dyn Store) {
    assert!(matches!(
        store.redrive(&VideoId::generate(), T0).await,
        Err(StoreError::NotFound(_))
    ));
    let queued = submit(store, T0).await;
    let running = submit(store, T0).await;
    lease(store, &running.id, T0).await;
    let done = submit(store, T0).await;
    let l = lease(store, &done.id, T0).await;
    store
        .complete(&l, &outputs(&done.id, 1), T0 + 1, T0 + TTL)
        .await
        .unwrap();
    let cancelled = submit(store, T0).await;
    store.cancel(&cancelled.id, T0 + 1).await.unwrap();
    let fatal = submit(store, T0).await;
    let l = lease(store, &fatal.id, T0).await;
    store
        .fail(&l, &JobError::new("invalid_input_reference", "not an image"), T0 + 1)
        .await
        .unwrap();
    let cases = [
        (&queued.id, JobState::Queued),
        (&running.id, JobState::Running),
        (&done.id, JobState::Completed),
        (&cancelled.id, JobState::Cancelled),
        (&fatal.id, JobState::Failed),
    ];
    for (id, state) in cases {
        let (before, ev) = (job(store, id).await, events(store, id).await);
        assert_eq!(illegal(store.redrive(id, T0 + 9).await), Some(state), "{state}");
        assert_eq!(job(store, id).await, before, "{state}: changed");
        assert_eq!(events(store, id).await, ev, "{state}: event written");
    }
    // Re-driving twice: the second finds a queued job.
    let dead = submit(store, T0).await;
    let l = lease(store, &dead.id, T0).await;
    store.requeue_or_dead_letter(&l, "x", T0 + 1, 1, None).await.unwrap();
    store.redrive(&dead.id, T0 + 2).await.unwrap();
    assert_eq!(illegal(store.redrive(&dead.id, T0 + 3).await), Some(JobState::Queued));
}
on_every_backend!(redrive_refuses_what_is_not_a_dead_letter);

async fn requeue_or_dead_letter_requeues_while_the_budget_lasts(store: &dyn Store) {
    const MAX: u32 = 3;
    let j = submit(store, T0).await;
    let mut now = T0;
    for attempt in 1..MAX {
        now += 10;
        let l = lease(store, &j.id, now).await;
        assert_eq!(l.attempt, attempt);
        store
            .commit_checkpoint(&l, &checkpoint(&j.id, attempt, 4 * attempt), now + 1)
            .await
            .unwrap();
        let r = store
            .requeue_or_dead_letter(&l, &format!("blob store timeout {attempt}"), now + 2, MAX, None)
            .await
            .unwrap();
        let Reclaimed::Requeued(q) = r else {
            panic!("attempt {attempt} should requeue: {r:?}")
        };
        // It keeps its place in line.
        assert_eq!((q.id.clone(), q.enqueued_at_ms), (j.id.clone(), j.enqueued_at_ms));
        let requeued = job(store, &j.id).await;
        assert_eq!((requeued.state, requeued.lease.as_ref()), (JobState::Queued, None));
        let e = events(store, &j.id).await.pop().unwrap();
        assert_eq!(e.kind().as_str(), "requeued");
        assert_eq!(e.to_json()["reason"], "error");
        assert_eq!(e.to_json()["error"], format!("blob store timeout {attempt}"));
        assert_eq!(e.to_json()["attempt"], attempt);
        assert_eq!(e.to_json()["resume_step"], 4 * attempt);
    }
    let l = lease(store, &j.id, now + 10).await;
    assert_eq!(l.attempt, MAX);
    let r = store
        .requeue_or_dead_letter(&l, "blob store timeout 3", now + 11, MAX, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::DeadLettered(ref id) if *id == j.id), "{r:?}");
    let dead = job(store, &j.id).await;
    assert_eq!(
        (dead.state, dead.phase, dead.lease.as_ref()),
        (JobState::Failed, Phase::Failed, None)
    );
    let error = dead.error.unwrap();
    assert_eq!(error.code, "max_attempts_exceeded");
    assert!(error.message.contains("after 3 attempts"), "{}", error.message);
    assert!(error.message.contains("blob store timeout 3"), "{}", error.message);
    let e = events(store, &j.id).await.pop().unwrap();
    assert_eq!(e.kind().as_str(), "failed");
    assert_eq!(
        (e.to_json()["state"].as_str(), e.to_json()["attempt"].as_u64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(e.to_json()["error"]["code"], "max_attempts_exceeded");
    assert_eq!(e.to_json()["error"]["message"], error.message.as_str());
    assert_eq!(dead_letter_ids(store).await, vec![j.id.clone()]);
    // Once dead, the lease is stale.
    assert!(is_stale(
        store.requeue_or_dead_letter(&l, "again", now + 12, MAX, None).await
    ));
    // A huge message is cut, not stored whole in the job and its event.
    let k = submit(store, T0).await;
    let l = lease(store, &k.id, T0).await;
    store
        .requeue_or_dead_letter(&l, &"x".repeat(100_000), T0 + 1, 1, None)
        .await
        .unwrap();
    let message = job(store, &k.id).await.error.unwrap().message;
    assert!(message.len() < 2_000, "{} bytes", message.len());
}
on_every_backend!(requeue_or_dead_letter_requeues_while_the_budget_lasts);

async fn requeue_or_dead_letter_is_fenced(store: &dyn Store) {
    let j = submit(store, T0).await;
    let zombie = lease(store, &j.id, T0).await;
    store.reclaim_expired(T0 + TTL + 1, 3, 1000).await.unwrap();
    let owner = lease(store, &j.id, T0 + TTL + 2).await;
    let before = (job(store, &j.id).await, events(store, &j.id).await);
    // Neither branch lands for an old attempt, whatever the budget says.
    for max in [1, 3] {
        assert!(is_stale(
            store
                .requeue_or_dead_letter(&zombie, "late", T0 + TTL + 3, max, None)
                .await
        ));
    }
    assert_eq!((job(store, &j.id).await, events(store, &j.id).await), before);
    // The owner's error lands.
    let r = store
        .requeue_or_dead_letter(&owner, "now", T0 + TTL + 4, 3, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::Requeued(_)), "{r:?}");
    // A cancelled job's worker finds its lease stale too.
    let c = submit(store, T0).await;
    let l = lease(store, &c.id, T0).await;
    store.cancel(&c.id, T0 + 1).await.unwrap();
    assert!(is_stale(store.requeue_or_dead_letter(&l, "x", T0 + 2, 3, None).await));
    assert_eq!(job(store, &c.id).await.state, JobState::Cancelled);
}
on_every_backend!(requeue_or_dead_letter_is_fenced);

async fn worker_tokens_are_stored_found_by_hash_listed_and_revoked(store: &dyn Store) {
    let token = |id: &str, hash: &str, name: &str, at: i64| WorkerToken {
        id: id.into(),
        hash: hash.into(),
        prefix: "vgw_abcd".into(),
        name: name.into(),
        created_at_ms: at,
        revoked_at_ms: None,
    };
    assert!(store.list_worker_tokens(None, 1000).await.unwrap().is_empty());
    let t1 = token("wtok_1", &"a".repeat(64), "gpu-host-1", T0);
    let t2 = token("wtok_2", &"b".repeat(64), "gpu-host-2", T0 + 1);
    store.insert_worker_token(&t2).await.unwrap();
    store.insert_worker_token(&t1).await.unwrap();
    assert!(
        store
            .insert_worker_token(&token("wtok_3", &t1.hash, "dup", T0))
            .await
            .is_err(),
        "hash is unique"
    );
    assert!(
        store
            .insert_worker_token(&token("wtok_1", &"c".repeat(64), "dup", T0))
            .await
            .is_err(),
        "id is unique"
    );
    assert_eq!(store.worker_token_by_hash(&t1.hash).await.unwrap(), Some(t1.clone()));
    assert_eq!(store.worker_token_by_hash("nope").await.unwrap(), None);
    assert_eq!(
        store.list_worker_tokens(None, 1000).await.unwrap(),
        vec![t1.clone(), t2.clone()]
    );

    // Separate from API keys, both ways, even for the same hash.
    let key = ApiKey {
        id: "key_1".into(),
        hash: "d".repeat(64),
        prefix: "vg_abcd".into(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Free,
        admin: true,
        created_at_ms: T0,
        revoked_at_ms: None,
    };
    store.insert_api_key(&key).await.unwrap();
    assert_eq!(store.api_key_by_hash(&t1.hash).await.unwrap(), None);
    assert_eq!(store.worker_token_by_hash(&key.hash).await.unwrap(), None);
    assert_eq!(store.list_api_keys(None, 1000).await.unwrap(), vec![key.clone()]);
    assert!(!store.revoke_worker_token("key_1", T0).await.unwrap());
    assert!(!store.revoke_api_key("wtok_1", T0).await.unwrap());

    assert!(store.revoke_worker_token("wtok_1", T0 + 9).await.unwrap());
    assert!(
        !store.revoke_worker_token("wtok_1", T0 + 10).await.unwrap(),
        "already revoked"
    );
    assert!(
        !store.revoke_worker_token("wtok_9", T0 + 10).await.unwrap(),
        "no such token"
    );
    let revoked = store.worker_token_by_hash(&t1.hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(T0 + 9));
    assert_eq!(
        store
            .worker_token_by_hash(&t2.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        None
    );
    assert_eq!(
        store.api_key_by_hash(&key.hash).await.unwrap().unwrap().revoked_at_ms,
        None
    );
}
on_every_backend!(worker_tokens_are_stored_found_by_hash_listed_and_revoked);

/// The budget a re-drive starts is durable: after a reopen, the reaper still
/// counts from the re-drive, and worker tokens are still there.
#[tokio::test]
async fn redrive_and_worker_tokens_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("videogen.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let j = submit(&store, T0).await;
    let (now, _) = drive_to_dead_letter_by_expiry(&store, &j.id, T0, 1).await;
    store.redrive(&j.id, now).await.unwrap();
    let token = WorkerToken {
        id: "wtok_1".into(),
        hash: "e".repeat(64),
        prefix: "vgw_abcd".into(),
        name: "n".into(),
        created_at_ms: T0,
        revoked_at_ms: None,
    };
    store.insert_worker_token(&token).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_worker_tokens(None, 1000).await.unwrap(), vec![token]);
    let l = lease(&store, &j.id, now + 1).await;
    assert_eq!(l.attempt, 2);
    // Budget 2 from the re-drive: attempt 2 is its first, so it requeues.
    let r = store.reclaim_expired(now + TTL + 2, 2, 1000).await.unwrap();
    assert!(matches!(&r[..], [Reclaimed::Requeued(_)]), "{r:?}");
    let ids: HashSet<_> = store
        .queued_jobs(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.id)
        .collect();
    assert!(ids.contains(&j.id));
    store.close().await.unwrap();
}

/// A job given back through no fault of its own (shutdown, preemption,
/// storage or database trouble) keeps its whole budget: releases any
/// number of times, it is still dead-lettered only after `MAX` errors.
async fn releases_do_not_spend_the_attempt_budget(store: &dyn Store) {
    const MAX: u32 = 2;
    let j = submit(store, T0).await;
    let mut now = T0;
    for (i, reason) in [RequeueReason::Released, RequeueReason::Infrastructure]
        .into_iter()
        .cycle()
        .take(5)
        .enumerate()
    {
        now += 10;
        let l = lease(store, &j.id, now).await;
        let q = store.release(&l, reason, now + 1, None).await.unwrap();
        assert_eq!(q.not_before_ms, None, "release {i}");
        let e = events(store, &j.id).await.pop().unwrap();
        assert_eq!(e.to_json()["reason"], reason.as_str());
    }
    now += 10;
    let first = lease(store, &j.id, now).await;
    assert_eq!(first.attempt, 6, "every lease is a new fencing token");
    let r = store
        .requeue_or_dead_letter(&first, "oom", now + 1, MAX, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::Requeued(_)), "one error of {MAX}: {r:?}");
    let second = lease(store, &j.id, now + 2).await;
    let r = store
        .requeue_or_dead_letter(&second, "oom", now + 3, MAX, None)
        .await
        .unwrap();
    assert!(matches!(r, Reclaimed::DeadLettered(_)), "two errors of {MAX}: {r:?}");
}
on_every_backend!(releases_do_not_spend_the_attempt_budget);

/// A retry's backoff is stored with the job: the queued view (what the
/// dispatcher seeds from after a restart) says when it is due, and the
/// next re-queue replaces it.
async fn a_retry_backoff_is_kept_until_the_next_requeue(store: &dyn Store) {
    let j = submit(store, T0).await;
    let l = lease(store, &j.id, T0 + 1).await;
    let due = T0 + 60_000;
    let Reclaimed::Requeued(q) = store
        .requeue_or_dead_letter(&l, "oom", T0 + 2, 3, Some(due))
        .await
        .unwrap()
    else {
        panic!("within budget")
    };
    assert_eq!(q.not_before_ms, Some(due));
    assert_eq!(store.queued_job(&j.id).await.unwrap().unwrap().not_before_ms, Some(due));
    let listed = store.queued_jobs(None, 10).await.unwrap();
    assert_eq!(listed.iter().find(|q| q.id == j.id).unwrap().not_before_ms, Some(due));
    let l = lease(store, &j.id, due).await;
    let q = store.release(&l, RequeueReason::Released, due + 1, None).await.unwrap();
    assert_eq!(q.not_before_ms, None, "a release is runnable at once");
}
on_every_backend!(a_retry_backoff_is_kept_until_the_next_requeue);

async fn the_write_probe_writes(store: &dyn Store) {
    store.probe_write("node-a", T0).await.unwrap();
    store.probe_write("node-a", T0 + 1).await.unwrap();
    store.probe_write("node-b", T0 + 1).await.unwrap();
}
on_every_backend!(the_write_probe_writes);
