//! A blob store that refuses writes (a full disk) costs jobs nothing: real
//! worker slots on the reference model run accepted jobs against a
//! [`LocalControl`] whose bucket answers ENOSPC. The first refused write
//! pauses dispatch, every attempt in flight gives its job back uncharged,
//! nothing is dispatched while the store stays full, and once a probe goes
//! through every job completes; none is dead-lettered (before the fix, all
//! were, within seconds, attempts spent back to back).
//!
//! Synchronised on exposed state (the dispatcher's pause, queue depth and
//! waiting workers, job states); the only time bound is a hang guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_control::storage_health::{self, PAUSE_REASON};
use videogen_control::{Dispatcher, JobBus, LocalControl, Runtime, RuntimeConfig};
use videogen_core::blob::{BlobError, BlobMeta, BlobStore, ByteStream};
use videogen_core::store::{NewJob, Store, Submitted};
use videogen_core::{
    Clock, JobState, QueuedJob, Seconds, SystemClock, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId,
};
use videogen_model::{ReferenceConfig, ReferenceModel};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::{RetryBackoff, SchedulerConfig};
use videogen_worker::{Engine, Worker, WorkerConfig};

/// Far longer than any step here needs; reaching it is the failure.
const HANG: Duration = Duration::from_secs(120);
const JOBS: usize = 4;
const WORKERS: usize = 2;

/// A local bucket on a disk that can fill up: while `full`, every write
/// fails as a full disk fails it, and leaves nothing behind.
struct FillingDisk {
    inner: videogen_blob::LocalBlobStore,
    full: AtomicBool,
    refused: AtomicU64,
    /// Refuses only keys under this prefix (`None`: every key).
    only: Option<&'static str>,
}

impl FillingDisk {
    fn new(dir: &std::path::Path, only: Option<&'static str>) -> Self {
        Self {
            inner: videogen_blob::LocalBlobStore::new(dir).unwrap(),
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            only,
        }
    }

    fn refuse(&self, key: &str) -> Result<(), BlobError> {
        if self.full.load(Ordering::SeqCst) && self.only.is_none_or(|p| key.starts_with(p)) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let enospc = std::io::Error::from_raw_os_error(28);
            return Err(BlobError::unavailable(key, enospc));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FillingDisk {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.refuse(key)?;
        self.inner.put(key, bytes).await
    }
    async fn put_stream(&self, key: &str, body: ByteStream) -> Result<u64, BlobError> {
        self.refuse(key)?;
        self.inner.put_stream(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.inner.get_range(key, range).await
    }
    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        self.inner.size(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.inner.list_dirs(prefix).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        self.inner.list(prefix).await
    }
}

async fn submit(rt: &Runtime, n: usize) -> VideoId {
    let new = NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("acme").unwrap(),
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: format!("waves on a breakwater, take {n}"),
            seconds: Seconds::S4,
            size: VideoSize::LANDSCAPE_720,
            seed: n as u64,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        },
        now_ms: rt.clock.now_ms(),
    };
    let Submitted::Created(job) = rt.store.submit(new, None).await.unwrap() else {
        panic!("replayed without a key")
    };
    rt.dispatcher.enqueue(QueuedJob {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        tier: job.tier,
        model: job.spec.model.clone(),
        enqueued_at_ms: job.enqueued_at_ms,
        not_before_ms: None,
    });
    job.id
}

/// Polls `cond` (exposed state: queue depth and waiting workers, which no
/// event announces) until it holds.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "hung waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every job of `ids` has ended, woken by the bus that every
/// job change notifies (subscribed before the workers started).
async fn until_all_ended(rt: &Runtime, ids: &[VideoId], changes: &mut tokio::sync::broadcast::Receiver<VideoId>) {
    let ended = async || {
        states(rt.store.as_ref(), ids)
            .await
            .iter()
            .all(|s| *s == JobState::Completed || *s == JobState::Failed)
    };
    let wait = async {
        while !ended().await {
            match changes.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => panic!("the bus closed"),
            }
        }
    };
    tokio::time::timeout(HANG, wait)
        .await
        .expect("hung waiting for every job to end");
}

async fn states(store: &dyn Store, ids: &[VideoId]) -> Vec<JobState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(store.job(id).await.unwrap().unwrap().state);
    }
    out
}

async fn runtime(disk: Arc<FillingDisk>) -> Arc<Runtime> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Arc::new(Runtime {
        store: Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap()),
        blob: disk,
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock,
        config: RuntimeConfig {
            // Two attempts: the old behaviour spent them on the full disk at once.
            max_attempts: 2,
            retry_backoff: RetryBackoff::NONE,
            ..RuntimeConfig::default()
        },
        fleet: Arc::default(),
        storage: Default::default(),
    })
}

/// `WORKERS` worker slots on the reference model, until `shutdown`.
fn spawn_workers(rt: &Arc<Runtime>, shutdown: &CancellationToken) -> tokio::task::JoinSet<()> {
    let control: Arc<dyn ControlPlane> = Arc::new(LocalControl::new(rt.clone()));
    let engine = Arc::new(Engine::single(
        Arc::new(ReferenceModel::new(ReferenceConfig::instant())),
        Arc::new(videogen_safety::DenylistModerator::new()),
    ));
    let config = WorkerConfig {
        checkpoint: videogen_sched::checkpoint::CheckpointPolicy::Fixed {
            every_steps: 2,
            every: Duration::from_secs(3600),
        },
        acquire_wait: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let info = WorkerInfo {
            id: WorkerId::new("node-1", &format!("w{w}")),
            loaded_models: Vec::new(),
            spot: false,
            memory_class: None,
            model_load_ms: 0,
            serves: None,
            models: Vec::new(),
        };
        let worker = Worker::new(control.clone(), engine.clone(), info, config.clone());
        workers.spawn(worker.run(shutdown.clone()));
    }
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_blob_store_pauses_dispatch_and_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FillingDisk::new(dir.path(), None));
    let rt = runtime(disk.clone()).await;
    let ids: Vec<VideoId> = futures::future::join_all((0..JOBS).map(|n| submit(&rt, n))).await;

    // The disk is full before any output is written.
    disk.full.store(true, Ordering::SeqCst);
    let mut changes = rt.bus.subscribe();
    let shutdown = CancellationToken::new();
    let mut workers = spawn_workers(&rt, &shutdown);

    // The first refused write pauses dispatch, and says why.
    let mut paused = rt.dispatcher.watch_paused();
    let reason = tokio::time::timeout(HANG, paused.wait_for(Option::is_some))
        .await
        .expect("dispatch never paused")
        .unwrap()
        .clone()
        .unwrap();
    assert!(reason.starts_with(PAUSE_REASON), "{reason}");
    assert!(reason.contains("os error 28"), "{reason}");
    assert!(rt.storage.failing().is_some());

    // Every attempt that had started gives its job back; then the workers
    // wait, and nothing is dispatched while the disk stays full.
    until("every job back in the queue and both workers idle", async || {
        rt.dispatcher.queued() == JOBS && rt.dispatcher.waiting() == WORKERS
    })
    .await;
    assert_eq!(states(rt.store.as_ref(), &ids).await, vec![JobState::Queued; JOBS]);
    assert!(
        !storage_health::probe_once(&rt, "node-1").await,
        "the probe passed a full disk"
    );
    assert!(rt.dispatcher.paused().is_some());
    let refused = disk.refused.load(Ordering::SeqCst);
    assert_eq!(rt.dispatcher.queued(), JOBS, "a job was dispatched onto the full disk");
    assert!(rt.store.dead_letters(100, None).await.unwrap().is_empty());

    // Space comes back: the next probe passes and dispatch resumes.
    disk.full.store(false, Ordering::SeqCst);
    assert!(storage_health::probe_once(&rt, "node-1").await);
    assert_eq!(rt.dispatcher.paused(), None);
    assert!(rt.storage.failing().is_none());
    until_all_ended(&rt, &ids, &mut changes).await;
    assert_eq!(states(rt.store.as_ref(), &ids).await, vec![JobState::Completed; JOBS]);
    assert!(rt.store.dead_letters(100, None).await.unwrap().is_empty());
    // Attempts on the full disk were made (and given back), yet none was charged:
    // with two attempts each, a charged one would have left no room for the
    // refusals plus the success.
    assert!(refused >= 1, "no write was refused");
    let mut given_back = 0;
    for id in &ids {
        let events = rt.store.events(id, 0, 1_000).await.unwrap();
        assert!(
            events.iter().all(|e| e.kind().as_str() != "failed"),
            "{id}: {:?}",
            events.iter().map(|e| e.kind().as_str()).collect::<Vec<_>>()
        );
        given_back += events
            .iter()
            .filter(|e| e.kind().as_str() == "requeued" && e.to_json()["reason"] == "infrastructure")
            .count();
    }
    assert!(given_back >= 1, "no attempt gave its job back for the full disk");
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
}

/// A store that refuses only checkpoints costs the jobs their checkpoints,
/// nothing else: dispatch never pauses (the outputs still fit) and every
/// job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_checkpoints_alone_do_not_pause_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FillingDisk::new(dir.path(), Some("checkpoints/")));
    disk.full.store(true, Ordering::SeqCst);
    let rt = runtime(disk.clone()).await;
    let ids: Vec<VideoId> = futures::future::join_all((0..JOBS).map(|n| submit(&rt, n))).await;
    let mut changes = rt.bus.subscribe();
    let shutdown = CancellationToken::new();
    let mut workers = spawn_workers(&rt, &shutdown);
    until_all_ended(&rt, &ids, &mut changes).await;
    assert_eq!(states(rt.store.as_ref(), &ids).await, vec![JobState::Completed; JOBS]);
    assert!(disk.refused.load(Ordering::SeqCst) > 0, "no checkpoint was refused");
    assert_eq!(rt.dispatcher.paused(), None);
    assert!(rt.storage.failing().is_none());
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
}
