//! Concurrent hot-path writes: what `PgStore`'s group commit must keep
//! exactly as a write per transaction would answer it. Every scenario also
//! runs on `SqliteStore` (whose writer thread group-commits too).
//!
//! On PostgreSQL, a scenario can make its writes share one statement for
//! sure: a side transaction locks the `jobs` table, the first writes block
//! on it inside their batches (the store runs two batches at a time), and
//! the writes sent meanwhile queue up; once the lock goes, they run together. The group
//! commit counters then show that they did.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;
use videogen_core::store::{NewJob, Store, StoreError, Submitted};
use videogen_core::{
    CheckpointRef, Job, JobState, Lease, Outputs, Phase, Progress, Seconds, TenantId, Tier, VideoId, VideoSize,
    VideoSpec, WorkerId,
};
use videogen_store::{GroupCommitStats, PgStore};

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 30_000;

// ---------------------------------------------------------------- helpers

fn new_job(now_ms: i64) -> NewJob {
    NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a heron fishing at dusk".into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 7,
            style: None,
            steps: 30,
            input_reference: None,
            params: Default::default(),
        },
        now_ms,
    }
}

async fn submit(store: &dyn Store) -> Job {
    match store.submit(new_job(T0), None).await.unwrap() {
        Submitted::Created(job) => job,
        Submitted::Replayed(_) => panic!("no idempotency key, yet replayed"),
    }
}

async fn lease(store: &dyn Store, id: &VideoId) -> Lease {
    store
        .lease(id, &WorkerId::new("n", "w0"), T0, TTL)
        .await
        .unwrap()
        .expect("job should be leasable")
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
        size_bytes: 2,
    }
}

fn progress(percent: u8) -> Progress {
    Progress {
        phase: Phase::Generating,
        step: 3,
        total_steps: 30,
        percent,
    }
}

/// The same lease with another attempt: a zombie's.
fn zombie(l: &Lease) -> Lease {
    Lease {
        attempt: l.attempt + 1,
        ..l.clone()
    }
}

async fn job(store: &dyn Store, id: &VideoId) -> Job {
    store.job(id).await.unwrap().expect("job exists")
}

async fn kinds(store: &dyn Store, id: &VideoId) -> Vec<String> {
    store
        .events(id, 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind().as_str().to_owned())
        .collect()
}

fn is_stale(r: &Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::StaleLease { .. }))
}

/// Makes the writes sent while it is held share a batch (PostgreSQL), or
/// does nothing (SQLite).
#[async_trait::async_trait]
trait Gate: Send + Sync {
    /// Blocks the store's writes; `store` is used to send the blocked one.
    async fn close(&mut self, store: &Arc<dyn Store>);
    /// Lets them go once the scenario's `sent` writes have all reached the
    /// store's queue.
    async fn open(&mut self, sent: u64);
}

struct NoGate;

#[async_trait::async_trait]
impl Gate for NoGate {
    async fn close(&mut self, _: &Arc<dyn Store>) {}
    async fn open(&mut self, _: u64) {}
}

/// `LOCK TABLE jobs` in a transaction of a connection of its own.
struct TableLock {
    url: String,
    /// The store under test, for its group commit's counters.
    store: PgStore,
    conn: Option<sqlx::PgConnection>,
    /// Writes sent to block the store, to check once the lock is gone.
    fillers: Vec<tokio::task::JoinHandle<Option<Lease>>>,
    /// Writes the collector had been handed once the fillers were in.
    enqueued: u64,
}

/// The first two block the two batches in flight; the third queues with
/// the scenario's writes.
const FILLERS: usize = 3;

#[async_trait::async_trait]
impl Gate for TableLock {
    async fn close(&mut self, store: &Arc<dyn Store>) {
        use sqlx::{Connection, Executor};
        let mut ids = Vec::new();
        for _ in 0..FILLERS {
            ids.push(submit(&**store).await.id);
        }
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        conn.execute("BEGIN").await.unwrap();
        conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE").await.unwrap();
        self.conn = Some(conn);
        let before = self.store.group_commit_stats();
        for (i, id) in ids.into_iter().enumerate() {
            let store = Arc::clone(store);
            self.fillers.push(tokio::spawn(async move {
                store.lease(&id, &WorkerId::new("n", "filler"), T0, TTL).await.unwrap()
            }));
            // One at a time: each of the first two starts a batch of its
            // own (two run at once), which then blocks on the lock.
            if i < 2 {
                let started = before.batches + i as u64 + 1;
                self.store.group_commit_reached(|s| s.batches >= started).await;
            }
        }
        self.enqueued = before.enqueued + FILLERS as u64;
        let enqueued = self.enqueued;
        self.store.group_commit_reached(|s| s.enqueued >= enqueued).await;
    }

    async fn open(&mut self, sent: u64) {
        use sqlx::Executor;
        // Every write of the scenario is queued behind the blocked batches.
        let queued = self.enqueued + sent;
        self.store.group_commit_reached(|s| s.enqueued >= queued).await;
        let mut conn = self.conn.take().expect("gate closed");
        conn.execute("COMMIT").await.unwrap();
        for f in self.fillers.drain(..) {
            assert!(f.await.unwrap().is_some(), "a filler's lease missed");
        }
    }
}

/// Runs `scenario` on a file-backed and an in-memory SQLite store, and on
/// PostgreSQL with the table lock; there it also checks the counters.
macro_rules! on_every_backend_gated {
    ($name:ident, $check:expr) => {
        mod $name {
            use std::sync::Arc;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_file() {
                let (store, _dir) = videogen_testkit::sqlite::file_store().await;
                super::$name(Arc::new(store), &mut super::NoGate).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                let store = videogen_store::SqliteStore::open_in_memory().await.unwrap();
                super::$name(Arc::new(store), &mut super::NoGate).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = videogen_testkit::pg::TestDb::create().await;
                let store: super::PgStore = db.store().await;
                let mut gate = super::TableLock {
                    url: db.url(),
                    store: store.clone(),
                    conn: None,
                    fillers: Vec::new(),
                    enqueued: 0,
                };
                let before = store.group_commit_stats();
                super::$name(Arc::new(store.clone()), &mut gate).await;
                let check: fn(super::GroupCommitStats, super::GroupCommitStats) = $check;
                check(before, store.group_commit_stats());
                store.close().await.unwrap();
            }
        }
    };
}

/// Some statement answered several writes.
fn shared_a_batch(before: GroupCommitStats, after: GroupCommitStats) {
    let (batches, writes) = (after.batches - before.batches, after.writes - before.writes);
    assert!(writes > batches, "no batch held two writes: {before:?} → {after:?}");
}

// ---------------------------------------------------------------- scenarios

/// Many concurrent leases of each job: exactly one wins, with attempt 1, and
/// the job has one `leased` event.
async fn concurrent_leases_of_a_job_elect_exactly_one(store: Arc<dyn Store>, gate: &mut dyn Gate) {
    const JOBS: usize = 8;
    const RIVALS: usize = 12;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(submit(&*store).await.id);
    }
    gate.close(&store).await;
    let mut tasks = Vec::new();
    for r in 0..RIVALS {
        for id in &ids {
            let (store, id) = (Arc::clone(&store), id.clone());
            tasks.push(tokio::spawn(async move {
                let w = WorkerId::new("n", &format!("w{r}"));
                (id.clone(), store.lease(&id, &w, T0, TTL).await.unwrap())
            }));
        }
    }
    gate.open((JOBS * RIVALS) as u64).await;
    let mut winners: std::collections::HashMap<VideoId, Vec<Lease>> = Default::default();
    for t in tasks {
        let (id, lease) = t.await.unwrap();
        winners.entry(id).or_default().extend(lease);
    }
    for id in &ids {
        let won = &winners[id];
        assert_eq!(won.len(), 1, "job {id}: {won:?}");
        assert_eq!(won[0].attempt, 1);
        let j = job(&*store, id).await;
        assert_eq!((j.state, j.attempt), (JobState::Running, 1));
        assert_eq!(j.lease.as_ref(), Some(&won[0]));
        assert_eq!(kinds(&*store, id).await, ["created", "leased"]);
    }
}
on_every_backend_gated!(concurrent_leases_of_a_job_elect_exactly_one, |_, _| ());

/// One batch of hits and compare-and-set misses of every batched kind: each
/// write gets the answer it would get alone, and only the hits leave events.
async fn a_batch_of_hits_and_misses_answers_each_write(store: Arc<dyn Store>, gate: &mut dyn Gate) {
    let s = &*store;
    let queued = submit(s).await;
    let (running_a, running_b, running_c, running_d) =
        (submit(s).await, submit(s).await, submit(s).await, submit(s).await);
    let (la, lb, lc, ld) = (
        lease(s, &running_a.id).await,
        lease(s, &running_b.id).await,
        lease(s, &running_c.id).await,
        lease(s, &running_d.id).await,
    );
    let taken = submit(s).await;
    lease(s, &taken.id).await;
    let done = submit(s).await;
    let ldone = lease(s, &done.id).await;
    s.complete(&ldone, &outputs(&done.id, 1), T0, T0 + 1).await.unwrap();
    let missing = VideoId::generate();
    let fresh = new_job(T0);
    let fresh_id = fresh.id.clone();

    gate.close(&store).await;
    let st = |s: &Arc<dyn Store>| Arc::clone(s);
    let w = WorkerId::new("n", "w1");
    let lease_hit = tokio::spawn({
        let (s, id, w) = (st(&store), queued.id.clone(), w.clone());
        async move { s.lease(&id, &w, T0, TTL).await }
    });
    let lease_running = tokio::spawn({
        let (s, id, w) = (st(&store), taken.id.clone(), w.clone());
        async move { s.lease(&id, &w, T0, TTL).await }
    });
    let lease_missing = tokio::spawn({
        let (s, id, w) = (st(&store), missing.clone(), w.clone());
        async move { s.lease(&id, &w, T0, TTL).await }
    });
    let beat_hit = tokio::spawn({
        let (s, l) = (st(&store), la.clone());
        async move { s.heartbeat(&l, &progress(40), T0 + 5, TTL).await }
    });
    let beat_zombie = tokio::spawn({
        let (s, l) = (st(&store), zombie(&lb));
        async move { s.heartbeat(&l, &progress(40), T0 + 5, TTL).await }
    });
    let ck_hit = tokio::spawn({
        let (s, l) = (st(&store), lc.clone());
        async move { s.commit_checkpoint(&l, &checkpoint(&l.job_id, 1, 10), T0 + 6).await }
    });
    let ck_zombie = tokio::spawn({
        let (s, l) = (st(&store), zombie(&ld));
        async move { s.commit_checkpoint(&l, &checkpoint(&l.job_id, 2, 10), T0 + 6).await }
    });
    let complete_hit = tokio::spawn({
        let (s, l) = (st(&store), ld.clone());
        async move { s.complete(&l, &outputs(&l.job_id, 1), T0 + 7, T0 + 99).await }
    });
    let complete_done = tokio::spawn({
        let (s, l) = (st(&store), ldone.clone());
        async move { s.complete(&l, &outputs(&l.job_id, 1), T0 + 7, T0 + 99).await }
    });
    let submit_fresh = tokio::spawn({
        let s = st(&store);
        async move { s.submit(fresh, None).await }
    });
    gate.open(10).await;

    let leased = lease_hit.await.unwrap().unwrap().expect("queued job leased");
    assert_eq!((leased.attempt, leased.worker.as_str()), (1, "n/w1"));
    assert_eq!(lease_running.await.unwrap().unwrap(), None);
    assert_eq!(lease_missing.await.unwrap().unwrap(), None);
    beat_hit.await.unwrap().unwrap();
    let r = beat_zombie.await.unwrap();
    assert!(is_stale(&r), "{r:?}");
    ck_hit.await.unwrap().unwrap();
    let r = ck_zombie.await.unwrap();
    assert!(is_stale(&r), "{r:?}");
    let completed = complete_hit.await.unwrap().unwrap();
    assert_eq!((completed.state, completed.progress), (JobState::Completed, 100));
    assert_eq!(completed.outputs, Some(outputs(&running_d.id, 1)));
    assert_eq!(completed.expires_at_ms, Some(T0 + 99));
    assert_eq!(completed, job(s, &running_d.id).await);
    let r = complete_done.await.unwrap();
    assert!(is_stale(&r), "{r:?}");
    match submit_fresh.await.unwrap().unwrap() {
        Submitted::Created(j) => {
            assert_eq!(j, job(s, &fresh_id).await);
            assert_eq!(j.state, JobState::Queued);
        }
        Submitted::Replayed(j) => panic!("replayed {j:?}"),
    }

    // The misses changed nothing; the hits left exactly their events.
    assert_eq!(kinds(s, &queued.id).await, ["created", "leased"]);
    assert_eq!(kinds(s, &taken.id).await, ["created", "leased"]);
    assert_eq!(job(s, &taken.id).await.attempt, 1);
    assert_eq!(kinds(s, &running_a.id).await, ["created", "leased", "progress"]);
    let a = job(s, &running_a.id).await;
    assert_eq!((a.progress, a.lease.map(|l| l.expires_at_ms)), (40, Some(T0 + 5 + TTL)));
    assert_eq!(kinds(s, &running_b.id).await, ["created", "leased"]);
    assert_eq!(job(s, &running_b.id).await.progress, 0);
    assert_eq!(kinds(s, &running_c.id).await, ["created", "leased", "checkpoint"]);
    assert_eq!(
        job(s, &running_c.id).await.checkpoint,
        Some(checkpoint(&running_c.id, 1, 10))
    );
    assert_eq!(kinds(s, &running_d.id).await, ["created", "leased", "completed"]);
    assert_eq!(kinds(s, &done.id).await, ["created", "leased", "completed"]);
    assert_eq!(job(s, &done.id).await.expires_at_ms, Some(T0 + 1));
    assert_eq!(kinds(s, &fresh_id).await, ["created"]);
    assert!(s.job(&missing).await.unwrap().is_none());
}
on_every_backend_gated!(a_batch_of_hits_and_misses_answers_each_write, super::shared_a_batch);

/// A write that fails (a submit whose id exists: a primary-key violation)
/// fails alone: the writes batched with it commit and answer as usual.
async fn a_failing_write_fails_alone(store: Arc<dyn Store>, gate: &mut dyn Gate) {
    let s = &*store;
    let existing = submit(s).await;
    let queued = submit(s).await;
    let running = submit(s).await;
    let l = lease(s, &running.id).await;

    gate.close(&store).await;
    let mut duplicate = new_job(T0 + 1);
    duplicate.id = existing.id.clone();
    let dup = tokio::spawn({
        let s = Arc::clone(&store);
        async move { s.submit(duplicate, None).await }
    });
    let others: Vec<_> = (0..5)
        .map(|_| {
            let s = Arc::clone(&store);
            tokio::spawn(async move { s.submit(new_job(T0 + 2), None).await })
        })
        .collect();
    let leased = tokio::spawn({
        let (s, id) = (Arc::clone(&store), queued.id.clone());
        async move { s.lease(&id, &WorkerId::new("n", "w1"), T0, TTL).await }
    });
    let completed = tokio::spawn({
        let (s, l) = (Arc::clone(&store), l.clone());
        async move { s.complete(&l, &outputs(&l.job_id, 1), T0 + 3, T0 + 9).await }
    });
    gate.open(8).await;

    let r = dup.await.unwrap();
    assert!(
        matches!(r, Err(StoreError::Fault(_))),
        "a duplicate id is a fault, not retryable: {r:?}"
    );
    for o in others {
        let Submitted::Created(j) = o.await.unwrap().unwrap() else {
            panic!("replayed")
        };
        assert_eq!(job(s, &j.id).await, j);
        assert_eq!(kinds(s, &j.id).await, ["created"]);
    }
    assert_eq!(leased.await.unwrap().unwrap().map(|l| l.attempt), Some(1));
    assert_eq!(completed.await.unwrap().unwrap().state, JobState::Completed);
    // The existing job is untouched by the failed insert.
    assert_eq!(job(s, &existing.id).await, existing);
    assert_eq!(kinds(s, &existing.id).await, ["created"]);
}
// Only a batch of several writes is retried write by write.
on_every_backend_gated!(a_failing_write_fails_alone, |before, after| {
    assert!(
        after.retried_batches > before.retried_batches,
        "the failing batch was not retried write by write: {after:?}"
    );
});

/// Writes of one job sent together run one after the other, in order of
/// arrival, never in one statement: a heartbeat and the completion of the
/// same lease both succeed when the heartbeat was sent first.
async fn writes_of_one_job_keep_their_order(store: Arc<dyn Store>, gate: &mut dyn Gate) {
    let s = &*store;
    let j = submit(s).await;
    let l = lease(s, &j.id).await;
    gate.close(&store).await;
    // `join!` polls in order, and a write reaches the store's queue on its
    // first poll: the heartbeat is queued before the completion.
    let (p, o) = (progress(60), outputs(&l.job_id, 1));
    let (beat, done, ()) = tokio::join!(
        s.heartbeat(&l, &p, T0 + 1, TTL),
        s.complete(&l, &o, T0 + 2, T0 + 9),
        gate.open(2),
    );
    beat.unwrap();
    assert_eq!(done.unwrap().state, JobState::Completed);
    assert_eq!(kinds(s, &j.id).await, ["created", "leased", "progress", "completed"]);
}
on_every_backend_gated!(writes_of_one_job_keep_their_order, |_, _| ());

/// Two batches run at once: while a batch waits on one job's row, a write of
/// another job runs beside it, and the blocked job's next write waits for the
/// first to commit, then runs in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_blocked_job_holds_back_only_its_own_writes() {
    use sqlx::{Connection, Executor};
    let db = videogen_testkit::pg::TestDb::create().await;
    let pg = db.store().await;
    let store: Arc<dyn Store> = Arc::new(pg.clone());
    let s = &*store;
    let blocked = submit(s).await;
    let l = lease(s, &blocked.id).await;
    let other = submit(s).await;

    // A side transaction holds the blocked job's row.
    let mut side = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    side.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(blocked.id.as_str())
        .execute(&mut side)
        .await
        .unwrap();
    let before = pg.group_commit_stats();
    let beat = tokio::spawn({
        let (s, l) = (Arc::clone(&store), l.clone());
        async move { s.heartbeat(&l, &progress(60), T0 + 1, TTL).await }
    });
    // The heartbeat's batch started, and waits on the row.
    pg.group_commit_reached(|st| st.batches > before.batches).await;
    let done = tokio::spawn({
        let (s, l) = (Arc::clone(&store), l.clone());
        async move { s.complete(&l, &outputs(&l.job_id, 1), T0 + 2, T0 + 9).await }
    });
    // The completion reached the collector, which holds it for the blocked
    // batch; it must still take and run other jobs' writes meanwhile.
    pg.group_commit_reached(|st| st.enqueued >= before.enqueued + 2).await;
    // The other job's lease does not wait for the blocked batch (the
    // timeout only bounds a failing run).
    let leased = tokio::time::timeout(Duration::from_secs(30), lease(s, &other.id))
        .await
        .expect("a write of another job runs while a batch is blocked");
    assert_eq!(leased.attempt, 1);
    assert!(!beat.is_finished() && !done.is_finished(), "the row is still locked");

    side.execute("COMMIT").await.unwrap();
    beat.await.unwrap().unwrap();
    assert_eq!(done.await.unwrap().unwrap().state, JobState::Completed);
    assert_eq!(
        kinds(s, &blocked.id).await,
        ["created", "leased", "progress", "completed"]
    );
}
