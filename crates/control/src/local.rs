//! [`LocalControl`]: the [`ControlPlane`] in the server's process, over the
//! store, the bucket and the scheduler. In-process workers call it directly;
//! the internal worker API (`videogen-api`) calls it on behalf of remote
//! workers, so a remote worker behaves exactly like a local one.
//!
//! Every call after `acquire` is checked against the lease's attempt (the
//! fencing token): assets and checkpoints are written under attempt-scoped
//! keys and become visible only through a fenced pointer commit in the store.

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use videogen_core::blob::{BlobStore, keys};
use videogen_core::store::{Reclaimed, Store, StoreError};
use videogen_core::{
    AttemptEvent, CheckpointRef, Clock, Job, JobError, JobState, Lease, Outputs, Progress, QueuedJob, RequeueReason,
    WorkerId,
};
use videogen_protocol::{
    AssetKind, Assignment, ControlError, ControlPlane, Directive, FleetInfo, HeartbeatReply, MAX_UPLOAD_BYTES,
    ReleaseCause, RetryOutcome, Upload, WorkerInfo, upload,
};

use crate::bus::JobBus;
use crate::config::RuntimeConfig;
use crate::dispatch::Dispatcher;
use crate::fleet::{FleetStats, Loss};
use crate::storage_health::StorageHealth;

/// Probe size for a failed streamed write, whose length is not known.
const STREAM_FAILURE_PROBE_BYTES: u64 = 4 * 1024 * 1024;

/// The server side: what a node has to run jobs with.
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub blob: Arc<dyn BlobStore>,
    pub dispatcher: Arc<Dispatcher>,
    pub bus: JobBus,
    pub clock: Arc<dyn Clock>,
    pub config: RuntimeConfig,
    pub fleet: Arc<FleetStats>,
    /// Whether blob writes go through; dispatch pauses while they do not.
    pub storage: StorageHealth,
}

/// The control plane in the server's process: store, bucket and scheduler.
/// In-process workers call it directly; the internal worker API calls it on
/// behalf of remote workers.
pub struct LocalControl {
    rt: Arc<Runtime>,
}

impl LocalControl {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }

    /// The job's record, if `lease` still owns it.
    async fn owned_job(&self, lease: &Lease) -> Result<Job, ControlError> {
        let job = self
            .rt
            .store
            .job(&lease.job_id)
            .await?
            .ok_or_else(|| ControlError::stale(lease))?;
        match &job.lease {
            Some(l) if l.attempt == lease.attempt => Ok(job),
            _ => Err(ControlError::stale(lease)),
        }
    }

    /// Deletes the checkpoint that `committed` pushed out of the job's two
    /// (its latest and the one before, read as `job` before the commit):
    /// nothing references it any more. Without this, a job checkpointing
    /// 11 MiB every 10 s left ~66 MiB per minute in the bucket until it
    /// ended. Only the lease holder commits checkpoints, so no later commit
    /// can have made it current again. A failed delete only leaves garbage,
    /// which the job's end removes with the rest of its checkpoints.
    async fn drop_superseded(&self, job: &Job, committed: &CheckpointRef) {
        let Some(old) = &job.prev_checkpoint else { return };
        let still_referenced = [Some(committed), job.checkpoint.as_ref()]
            .into_iter()
            .flatten()
            .any(|ck| ck.key == old.key);
        if still_referenced {
            return;
        }
        if let Err(e) = self.rt.blob.delete(&old.key).await {
            tracing::warn!(job = %job.id, key = %old.key, error = %e, "could not delete a superseded checkpoint");
        }
    }

    /// Writes an upload under `key` after (or, for a stream, while) checking
    /// its size and checksum; a refused body leaves nothing under `key`.
    /// A write an attempt cannot do without (`required`: its outputs) that
    /// the store refuses pauses dispatch; a checkpoint does not (the attempt
    /// goes on without it, and the outputs it will write decide).
    async fn store_upload(&self, key: &str, crc32: u32, body: Upload, required: bool) -> Result<u64, ControlError> {
        match body {
            Upload::Bytes(bytes) => {
                upload::check(&bytes, crc32, MAX_UPLOAD_BYTES)?;
                let size = bytes.len() as u64;
                if let Err(e) = self.rt.blob.put(key, bytes).await {
                    self.rt.storage.write_failed(&self.rt, size, &e, required);
                    return Err(e.into());
                }
                Ok(size)
            }
            Upload::Stream(stream) => {
                let put = self
                    .rt
                    .blob
                    .put_stream(key, upload::checked(stream, crc32, MAX_UPLOAD_BYTES))
                    .await;
                if let Err(e) = &put {
                    self.rt
                        .storage
                        .write_failed(&self.rt, STREAM_FAILURE_PROBE_BYTES, e, required);
                }
                put.map_err(upload::upload_error)
            }
        }
    }

    fn retention_ms(&self, job: &Job) -> i64 {
        i64::try_from(self.rt.config.retention(job.tier).as_millis()).unwrap_or(i64::MAX)
    }

    /// Leases a job the scheduler picked and reads its record. Runs as its
    /// own task so that a caller who stops waiting (a worker that hung up)
    /// cannot strand the job between the scheduler and the store.
    async fn lease_picked(
        rt: Arc<Runtime>,
        queued: QueuedJob,
        worker: WorkerId,
    ) -> Result<Option<Assignment>, ControlError> {
        let now = rt.clock.now_ms();
        let ttl_ms = rt.config.lease_ttl_ms();
        let lease = match rt.store.lease(&queued.id, &worker, now, ttl_ms).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(None), // cancelled or deleted while queued
            Err(e) => {
                // Not leased: put it back for the next worker.
                rt.dispatcher.enqueue(queued);
                return Err(e.into());
            }
        };
        let wait_s = (now - queued.enqueued_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("videogen_queue_wait_seconds", "tier" => queued.tier.as_str()).record(wait_s);
        rt.fleet.leased(&queued.id, &worker, now);
        rt.bus.notify(&lease.job_id);
        let job = rt
            .store
            .job(&lease.job_id)
            .await?
            .ok_or_else(|| ControlError::stale(&lease))?;
        Ok(Some(Assignment { lease, job, ttl_ms }))
    }
}

#[async_trait]
impl ControlPlane for LocalControl {
    async fn acquire(&self, worker: &WorkerInfo, wait: Duration) -> Result<Option<Assignment>, ControlError> {
        let deadline = tokio::time::Instant::now() + wait;
        let never = CancellationToken::new();
        self.rt.fleet.polling(worker, self.rt.clock.now_ms());
        // A cold worker steps aside for a busy warm one that will be free
        // sooner than this worker would take to load the model.
        let (fleet, clock) = (self.rt.fleet.clone(), self.rt.clock.clone());
        let load_ms = i64::try_from(worker.model_load_ms).unwrap_or(i64::MAX);
        let defer = move |job: &QueuedJob| {
            let soon = fleet.warm_free_within(&job.model, load_ms, clock.now_ms())?;
            Some(Duration::from_millis(u64::try_from(soon).unwrap_or(0).max(50)))
        };
        loop {
            // Cancel-safe: the scheduler hands a job out only when this returns.
            let next = self
                .rt
                .dispatcher
                .next_with(&worker.loaded_models, worker.serves.as_deref(), &never, &defer);
            let next = tokio::time::timeout_at(deadline, next);
            let Ok(Some(queued)) = next.await else { return Ok(None) };
            let (tx, rx) = oneshot::channel();
            let (rt, id) = (self.rt.clone(), worker.id.clone());
            tokio::spawn(async move {
                let leased = Self::lease_picked(rt.clone(), queued, id).await;
                if let Err(Ok(Some(a))) = tx.send(leased) {
                    // Nobody is waiting any more: give the job straight back.
                    let now = rt.clock.now_ms();
                    if let Ok(q) = rt.store.release(&a.lease, RequeueReason::Released, now, None).await {
                        rt.dispatcher.enqueue(q);
                    }
                }
            });
            match rx.await {
                Ok(Ok(Some(a))) => return Ok(Some(a)),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ControlError::Unavailable("lease task failed".into())),
            }
        }
    }

    async fn heartbeat(&self, lease: &Lease, progress: &Progress) -> Result<HeartbeatReply, ControlError> {
        let now = self.rt.clock.now_ms();
        match self
            .rt
            .store
            .heartbeat(lease, progress, now, self.rt.config.lease_ttl_ms())
            .await
        {
            Ok(expires_at_ms) => {
                self.rt.bus.notify(&lease.job_id);
                self.rt.fleet.heartbeat(&lease.job_id, progress.percent, now);
                Ok(HeartbeatReply {
                    directive: Directive::Continue,
                    expires_at_ms,
                })
            }
            // Tell a cancelled attempt to stop; one that lost the job to a
            // newer attempt gets the fencing error.
            Err(StoreError::StaleLease { .. }) => match self.rt.store.job(&lease.job_id).await? {
                Some(job) if job.state == JobState::Cancelled => Ok(HeartbeatReply {
                    directive: Directive::Cancel,
                    expires_at_ms: now,
                }),
                _ => Err(ControlError::stale(lease)),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn read_blob(&self, lease: &Lease, key: &str) -> Result<Bytes, ControlError> {
        let job = self.owned_job(lease).await?;
        // Only this job's own bytes: its checkpoints and its input reference.
        let [_, checkpoints, _] = keys::job_prefixes(&job.id);
        let allowed = key.starts_with(&checkpoints) || job.spec.input_reference.as_deref() == Some(key);
        if !allowed {
            return Err(ControlError::Rejected(format!("{key} is not a blob of job {}", job.id)));
        }
        Ok(self.rt.blob.get(key).await?)
    }

    async fn write_checkpoint(
        &self,
        lease: &Lease,
        step: u32,
        crc32: u32,
        body: Upload,
    ) -> Result<CheckpointRef, ControlError> {
        // A zombie's bytes would land under its own attempt's key and never be
        // referenced; checking first just spares the bucket the write.
        let job = self.owned_job(lease).await?;
        let key = keys::checkpoint(&lease.job_id, lease.attempt, step);
        let size_bytes = self.store_upload(&key, crc32, body, false).await?;
        let ck = CheckpointRef {
            key: key.clone(),
            step,
            attempt: lease.attempt,
            crc32,
            size_bytes,
        };
        if let Err(e) = self
            .rt
            .store
            .commit_checkpoint(lease, &ck, self.rt.clock.now_ms())
            .await
        {
            let _ = self.rt.blob.delete(&key).await;
            return Err(e.into());
        }
        self.rt.bus.notify(&lease.job_id);
        self.drop_superseded(&job, &ck).await;
        Ok(ck)
    }

    async fn event(&self, lease: &Lease, event: &AttemptEvent) -> Result<(), ControlError> {
        self.owned_job(lease).await?;
        self.rt
            .store
            .append_event(&lease.job_id, &event.clone().into(), self.rt.clock.now_ms())
            .await?;
        self.rt.bus.notify(&lease.job_id);
        Ok(())
    }

    async fn put_asset(&self, lease: &Lease, kind: AssetKind, crc32: u32, body: Upload) -> Result<(), ControlError> {
        self.owned_job(lease).await?;
        self.store_upload(&kind.key(lease), crc32, body, true).await?;
        Ok(())
    }

    async fn complete(&self, lease: &Lease, video_bytes: u64) -> Result<(), ControlError> {
        let job = self.owned_job(lease).await?;
        let outputs = Outputs {
            video_key: AssetKind::Video.key(lease),
            thumbnail_key: AssetKind::Thumbnail.key(lease),
            spritesheet_key: AssetKind::Spritesheet.key(lease),
            video_bytes,
        };
        // Every asset must be there before the pointer makes them visible.
        for key in [&outputs.video_key, &outputs.thumbnail_key, &outputs.spritesheet_key] {
            // NotFound → Rejected: the worker skipped an upload.
            self.rt.blob.size(key).await?;
        }
        let now = self.rt.clock.now_ms();
        match self
            .rt
            .store
            .complete(lease, &outputs, now, now.saturating_add(self.retention_ms(&job)))
            .await
        {
            Ok(_) => {
                self.rt.fleet.ended(&lease.job_id, now);
                self.rt.bus.notify(&lease.job_id);
                // Checkpoints are only for resuming; a completed job needs none.
                let [_, checkpoints, _] = keys::job_prefixes(&lease.job_id);
                if let Err(e) = self.rt.blob.delete_prefix(&checkpoints).await {
                    tracing::warn!(job = %lease.job_id, error = %e, "could not delete checkpoints");
                }
                Ok(())
            }
            Err(e) => {
                // Not ours any more: leave no orphaned bytes behind.
                for key in [&outputs.video_key, &outputs.thumbnail_key, &outputs.spritesheet_key] {
                    let _ = self.rt.blob.delete(key).await;
                }
                Err(e.into())
            }
        }
    }

    async fn fail(&self, lease: &Lease, error: &JobError) -> Result<(), ControlError> {
        let now = self.rt.clock.now_ms();
        self.rt.store.fail(lease, error, now).await?;
        self.rt.fleet.ended(&lease.job_id, now);
        self.rt.bus.notify(&lease.job_id);
        // Failed for good (not a dead letter, which a re-drive may resume):
        // nothing of it will be read again.
        crate::housekeeping::delete_bytes(self.rt.blob.as_ref(), &lease.job_id, "failed").await;
        Ok(())
    }

    async fn release(&self, lease: &Lease, cause: ReleaseCause) -> Result<(), ControlError> {
        let now = self.rt.clock.now_ms();
        let queued = self.rt.store.release(lease, cause.requeue_reason(), now, None).await?;
        match cause {
            ReleaseCause::Shutdown => self.rt.fleet.lost(&lease.job_id, Loss::Graceful, now),
            ReleaseCause::Infrastructure => self.rt.fleet.ended(&lease.job_id, now),
        }
        metrics::counter!("videogen_requeued_total", "reason" => cause.requeue_reason().as_str()).increment(1);
        self.rt.dispatcher.enqueue(queued);
        self.rt.bus.notify(&lease.job_id);
        Ok(())
    }

    async fn retry(&self, lease: &Lease, message: &str) -> Result<RetryOutcome, ControlError> {
        let now = self.rt.clock.now_ms();
        // The retry's wait grows with the attempts (jittered per attempt).
        let wait = self
            .rt
            .config
            .retry_backoff
            .delay_for(lease.attempt, &format!("{}/{}", lease.job_id, lease.attempt));
        let not_before = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        let outcome = self
            .rt
            .store
            .requeue_or_dead_letter(lease, message, now, self.rt.config.max_attempts, Some(not_before))
            .await?;
        self.rt.fleet.ended(&lease.job_id, now);
        self.rt.bus.notify(&lease.job_id);
        Ok(match outcome {
            Reclaimed::Requeued(q) => {
                self.rt.dispatcher.enqueue(q);
                RetryOutcome::Requeued
            }
            Reclaimed::DeadLettered(_) => RetryOutcome::DeadLettered,
        })
    }

    async fn fleet(&self) -> Result<FleetInfo, ControlError> {
        Ok(FleetInfo {
            mtbf_secs: self.rt.fleet.mtbf_secs(self.rt.clock.now_ms()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_core::VideoId;
    use videogen_core::blob::BlobError;
    use videogen_core::store::{NewJob, Submitted};
    use videogen_core::{ManualClock, Seconds, TenantId, Tier, VideoSize, VideoSpec};

    const T0: i64 = 1_700_000_000_000;

    async fn runtime(dir: &std::path::Path) -> Arc<Runtime> {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
        Arc::new(Runtime {
            store: Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap()),
            blob: Arc::new(videogen_blob::LocalBlobStore::new(dir).unwrap()),
            dispatcher: Arc::new(Dispatcher::new(Default::default(), clock.clone())),
            bus: JobBus::default(),
            clock,
            config: RuntimeConfig::default(),
            fleet: Arc::new(FleetStats::default()),
            storage: StorageHealth::default(),
        })
    }

    async fn leased_job(rt: &Runtime) -> Lease {
        let new = NewJob {
            id: VideoId::generate(),
            tenant: TenantId::parse("acme").unwrap(),
            tier: Tier::Paid,
            spec: VideoSpec {
                model: "videogen-ref".into(),
                prompt: "waves on a breakwater".into(),
                seconds: Seconds::S4,
                size: VideoSize::PORTRAIT_720,
                seed: 1,
                style: None,
                steps: 30,
                input_reference: None,
                params: Default::default(),
            },
            now_ms: T0,
        };
        let Submitted::Created(job) = rt.store.submit(new, None).await.unwrap() else {
            panic!("replayed without a key")
        };
        rt.store
            .lease(&job.id, &WorkerId::new("n", "w0"), T0, 30_000)
            .await
            .unwrap()
            .expect("queued job leases")
    }

    async fn checkpoint(control: &LocalControl, lease: &Lease, step: u32) -> CheckpointRef {
        let bytes = Bytes::from(vec![step as u8; 1024]);
        let crc = crc32fast::hash(&bytes);
        control.write_checkpoint(lease, step, crc, bytes.into()).await.unwrap()
    }

    #[tokio::test]
    async fn a_checkpoint_pushed_out_of_the_latest_two_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        let first = checkpoint(&control, &lease, 2).await;
        let second = checkpoint(&control, &lease, 4).await;
        // Two so far: both kept.
        rt.blob.get(&first.key).await.expect("the previous checkpoint stays");
        let third = checkpoint(&control, &lease, 6).await;
        assert!(
            matches!(rt.blob.get(&first.key).await, Err(BlobError::NotFound(_))),
            "the checkpoint before the previous one is gone"
        );
        for kept in [&second, &third] {
            rt.blob.get(&kept.key).await.expect("latest and previous stay");
        }
        let job = rt.store.job(&lease.job_id).await.unwrap().unwrap();
        assert_eq!(job.checkpoint.as_ref(), Some(&third));
        assert_eq!(job.prev_checkpoint.as_ref(), Some(&second));
    }

    /// A worker asking for a malformed key of its own job's tree (`..`, a
    /// trailing `/`) made a mistake: rejected (the worker API's 400), not
    /// "unavailable" (a 503 with an ERROR log, as it was).
    #[tokio::test]
    async fn a_malformed_blob_key_is_rejected_not_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        let [_, checkpoints, _] = keys::job_prefixes(&lease.job_id);
        for key in [
            format!("{checkpoints}1/../../x"),
            checkpoints.clone(),
            format!("{checkpoints}1//a"),
        ] {
            match control.read_blob(&lease, &key).await {
                Err(ControlError::Rejected(_)) => {}
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_rewritten_checkpoint_key_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        checkpoint(&control, &lease, 2).await;
        let again = checkpoint(&control, &lease, 2).await;
        let last = checkpoint(&control, &lease, 2).await;
        assert_eq!(again.key, last.key);
        rt.blob
            .get(&last.key)
            .await
            .expect("the current checkpoint's bytes stay");
    }

    fn chunked(body: &[u8]) -> Upload {
        let chunks: Vec<Result<Bytes, videogen_core::store::BoxError>> =
            body.chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Upload::Stream(Box::pin(futures::stream::iter(chunks)))
    }

    #[tokio::test]
    async fn a_streamed_checkpoint_is_checked_and_committed_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        let body = vec![7u8; 1000];
        let ck = control
            .write_checkpoint(&lease, 3, crc32fast::hash(&body), chunked(&body))
            .await
            .unwrap();
        assert_eq!(ck.size_bytes, 1000);
        assert_eq!(rt.blob.get(&ck.key).await.unwrap(), body);
        let job = rt.store.job(&lease.job_id).await.unwrap().unwrap();
        assert_eq!(job.checkpoint.as_ref(), Some(&ck));
    }

    #[tokio::test]
    async fn a_corrupt_stream_stores_and_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        let body = vec![7u8; 1000];
        let wrong = crc32fast::hash(b"something else");
        let err = control
            .write_checkpoint(&lease, 3, wrong, chunked(&body))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ControlError::Rejected(m) if m.contains("checksum")),
            "{err}"
        );
        let key = keys::checkpoint(&lease.job_id, lease.attempt, 3);
        assert!(matches!(rt.blob.get(&key).await, Err(BlobError::NotFound(_))));
        let job = rt.store.job(&lease.job_id).await.unwrap().unwrap();
        assert_eq!(job.checkpoint, None);

        let err = control
            .put_asset(&lease, AssetKind::Video, wrong, chunked(&body))
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Rejected(_)));
        assert!(matches!(
            rt.blob.get(&AssetKind::Video.key(&lease)).await,
            Err(BlobError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_broken_stream_is_unavailable_not_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = LocalControl::new(rt.clone());
        let lease = leased_job(&rt).await;
        let items: Vec<Result<Bytes, videogen_core::store::BoxError>> =
            vec![Ok(Bytes::from_static(b"partial")), Err("connection reset".into())];
        let body = Upload::Stream(Box::pin(futures::stream::iter(items)));
        let err = control
            .put_asset(&lease, AssetKind::Thumbnail, 0, body)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Unavailable(_)), "{err}");
        assert!(matches!(
            rt.blob.get(&AssetKind::Thumbnail.key(&lease)).await,
            Err(BlobError::NotFound(_))
        ));
    }

    fn probe_worker() -> WorkerInfo {
        WorkerInfo {
            id: WorkerId::new("n", "probe"),
            loaded_models: Vec::new(),
            spot: false,
            memory_class: None,
            model_load_ms: 0,
            serves: None,
            models: Vec::new(),
        }
    }

    /// The long poll's length is the worker's `wait`, on Tokio's clock: it
    /// answers "nothing" exactly when the wait is over, not before.
    #[tokio::test(start_paused = true)]
    async fn an_acquire_with_nothing_queued_waits_out_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let control = Arc::new(LocalControl::new(rt.clone()));
        let wait = Duration::from_millis(300);
        let poll = {
            let control = control.clone();
            tokio::spawn(async move { control.acquire(&probe_worker(), wait).await })
        };
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(!poll.is_finished(), "answered before its wait was over");
        assert_eq!(rt.dispatcher.waiting(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        let got = poll.await.unwrap().unwrap();
        assert!(got.is_none(), "nothing was queued");
        assert_eq!(rt.dispatcher.waiting(), 0);
    }
}
