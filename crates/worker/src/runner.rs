//! Runs leased jobs: one [`Worker`] loop per slot, one attempt at a time.
//!
//! An attempt: lease → (resume from the newest good checkpoint | start) →
//! steps with periodic checkpoints → moderation of sampled frames → H.264
//! encode, thumbnail, spritesheet → blobs under attempt-scoped keys → fenced
//! completion. Every store write carries the lease; losing it (cancel, or the
//! reaper gave the job to another attempt) stops the attempt at the next step
//! boundary and leaves the job to its new owner.

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use videogen_core::blob::{BlobError, BlobStore, keys};
use videogen_core::moderation::{FrameSample, Moderator, Verdict};
use videogen_core::store::{Store, StoreError};
use videogen_core::{CheckpointRef, Clock, Job, JobError, Lease, Outputs, Phase, Progress, WorkerId};
use videogen_model::{Generation, GenerationRequest, Model, ModelError, RgbImage};

use crate::bus::JobBus;
use crate::config::RuntimeConfig;
use crate::dispatch::Dispatcher;
use crate::lease_keeper::LeaseKeeper;

/// Share of the progress bar given to denoising; decode/encode/upload take the rest.
const GENERATE_PERCENT_MAX: u32 = 90;
const SPRITESHEET_FRAMES: u32 = 10;
const SPRITESHEET_COLS: u32 = 5;
const SPRITESHEET_TILE_WIDTH: u32 = 192;
const THUMBNAIL_MAX_WIDTH: u32 = 640;

/// Everything a worker needs, shared by all workers of a process.
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub blob: Arc<dyn BlobStore>,
    pub model: Arc<dyn Model>,
    pub moderator: Arc<dyn Moderator>,
    pub dispatcher: Arc<Dispatcher>,
    pub bus: JobBus,
    pub clock: Arc<dyn Clock>,
    pub config: RuntimeConfig,
}

/// How an attempt ended, when it did not complete.
#[derive(Debug)]
enum Stop {
    /// The lease is gone (cancelled, deleted, or owned by a newer attempt).
    LeaseLost,
    /// Shutting down: the attempt checkpointed and gave the job back.
    Released,
    /// Will fail the same way again: fail the job now.
    Fatal(JobError),
    /// Might work next time (I/O, infrastructure).
    Retryable(String),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StaleLease { .. } | StoreError::NotFound(_) => Stop::LeaseLost,
            other => Stop::Retryable(other.to_string()),
        }
    }
}

impl From<BlobError> for Stop {
    fn from(e: BlobError) -> Self {
        Stop::Retryable(e.to_string())
    }
}

impl From<ModelError> for Stop {
    fn from(e: ModelError) -> Self {
        if e.is_retryable() {
            Stop::Retryable(e.to_string())
        } else {
            Stop::Fatal(JobError::new(e.code(), e.to_string()))
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> Stop {
    Stop::Retryable(format!("worker task failed: {e}"))
}

/// One execution slot.
pub struct Worker {
    rt: Arc<Runtime>,
    id: WorkerId,
}

impl Worker {
    pub fn new(rt: Arc<Runtime>, id: WorkerId) -> Self {
        Self { rt, id }
    }

    /// Runs jobs until `shutdown`; a job in flight at shutdown is checkpointed and released.
    pub async fn run(self, shutdown: CancellationToken) {
        let loaded = vec![self.rt.model.id().to_owned()];
        while let Some(job) = self.rt.dispatcher.next(&loaded, &shutdown).await {
            let now = self.rt.clock.now_ms();
            let ttl_ms = self.rt.config.lease_ttl_ms();
            let lease = match self.rt.store.lease(&job.id, &self.id, now, ttl_ms).await {
                Ok(Some(lease)) => lease,
                Ok(None) => continue, // cancelled or deleted while queued
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "lease failed; re-queueing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.rt.dispatcher.enqueue(job);
                    continue;
                }
            };
            let wait_s = (now - job.enqueued_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("videogen_queue_wait_seconds", "tier" => job.tier.as_str()).record(wait_s);
            self.rt.bus.notify(&lease.job_id);
            self.run_attempt(lease, &shutdown).await;
        }
    }

    async fn run_attempt(&self, lease: Lease, shutdown: &CancellationToken) {
        let id = lease.job_id.clone();
        let span = tracing::info_span!("attempt", job = %id, attempt = lease.attempt, worker = %self.id);
        let _enter = span.enter();
        drop(_enter);
        let cancelled = self.rt.dispatcher.track_running(&id);
        let started = Instant::now();
        let outcome = Attempt {
            rt: &self.rt,
            lease: &lease,
            lost: cancelled.clone(),
            shutdown,
        }
        .run()
        .await;
        self.rt.dispatcher.untrack_running(&id);
        let now = self.rt.clock.now_ms();
        let outcome_label = match outcome {
            Ok(()) => {
                metrics::histogram!("videogen_generation_seconds").record(started.elapsed().as_secs_f64());
                "completed"
            }
            Err(Stop::LeaseLost) => {
                tracing::info!(job = %id, attempt = lease.attempt, "lease lost; abandoning attempt");
                "lease_lost"
            }
            Err(Stop::Released) => "released",
            Err(Stop::Fatal(err)) => {
                tracing::warn!(job = %id, code = %err.code, "attempt failed: {}", err.message);
                let _ = self.rt.store.fail(&lease, &err, now).await;
                "failed"
            }
            Err(Stop::Retryable(msg)) => {
                tracing::warn!(job = %id, attempt = lease.attempt, "attempt error: {msg}");
                if lease.attempt >= self.rt.config.max_attempts {
                    let err = JobError::new(
                        "max_attempts_exceeded",
                        format!("gave up after {} attempts; last error: {msg}", lease.attempt),
                    );
                    let _ = self.rt.store.fail(&lease, &err, now).await;
                    "dead_lettered"
                } else {
                    if let Ok(q) = self.rt.store.release(&lease, now).await {
                        self.rt.dispatcher.enqueue(q);
                    }
                    "retry"
                }
            }
        };
        metrics::counter!("videogen_attempts_total", "outcome" => outcome_label).increment(1);
        self.rt.bus.notify(&id);
    }
}

/// One attempt's state.
struct Attempt<'a> {
    rt: &'a Runtime,
    lease: &'a Lease,
    /// Fires when the job is cancelled here or the keeper finds the lease stale.
    lost: CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Attempt<'_> {
    async fn run(self) -> Result<(), Stop> {
        let job = self.rt.store.job(&self.lease.job_id).await?.ok_or(Stop::LeaseLost)?;
        let req = self.request(&job).await?;
        let total = job.spec.steps;
        let keeper = LeaseKeeper::spawn(
            self.rt.store.clone(),
            self.rt.clock.clone(),
            self.rt.bus.clone(),
            self.lease.clone(),
            self.rt.config.lease_ttl,
            Progress {
                phase: Phase::LoadingModel,
                step: 0,
                total_steps: total,
                percent: job.progress,
            },
            self.lost.clone(),
        );
        let result = self.generate_and_finish(&job, req, &keeper).await;
        keeper.stop().await;
        match result {
            Ok(finished) => self.commit(&job, finished).await,
            Err(stop) => Err(stop),
        }
    }

    async fn request(&self, job: &Job) -> Result<GenerationRequest, Stop> {
        let (width, height) = job.spec.size.dims();
        let first_frame = match &job.spec.input_reference {
            None => None,
            Some(key) => {
                let bytes = self.rt.blob.get(key).await?;
                let img = tokio::task::spawn_blocking(move || image::load_from_memory(&bytes))
                    .await
                    .map_err(join_error)?
                    .map_err(|e| Stop::Fatal(JobError::new("invalid_input_reference", e.to_string())))?
                    .to_rgb8();
                Some(RgbImage {
                    width: img.width(),
                    height: img.height(),
                    data: img.into_raw(),
                })
            }
        };
        Ok(GenerationRequest {
            prompt: job.spec.prompt.clone(),
            style: job.spec.style.clone(),
            seed: job.spec.seed,
            width,
            height,
            frames: job.spec.seconds.frames(),
            steps: job.spec.steps,
            first_frame,
        })
    }

    /// Resumes from the newest checkpoint that verifies, else starts at step 0.
    async fn start_or_resume(&self, job: &Job, req: &GenerationRequest) -> Result<Box<dyn Generation>, Stop> {
        let candidates = [job.checkpoint.as_ref(), job.prev_checkpoint.as_ref()];
        for ck in candidates.into_iter().flatten() {
            match self.load_checkpoint(ck, req).await {
                Ok(generation) => {
                    let now = self.rt.clock.now_ms();
                    let data = serde_json::json!({
                        "status": "in_progress", "state": "running",
                        "phase": Phase::ResumingFromCheckpoint.as_str(),
                        "progress": percent_for_step(ck.step, req.steps),
                        "attempt": self.lease.attempt, "from_step": ck.step,
                        "checkpoint_attempt": ck.attempt,
                    });
                    self.rt.store.append_event(&job.id, "resumed", data, now).await?;
                    tracing::info!(job = %job.id, step = ck.step, "resumed from checkpoint");
                    return Ok(generation);
                }
                Err(reason) => {
                    tracing::warn!(job = %job.id, key = %ck.key, "checkpoint unusable: {reason}");
                    let data = serde_json::json!({
                        "status": "in_progress", "state": "running", "phase": Phase::LoadingModel.as_str(),
                        "progress": job.progress, "attempt": self.lease.attempt,
                        "key": ck.key, "step": ck.step, "reason": reason,
                    });
                    let now = self.rt.clock.now_ms();
                    self.rt
                        .store
                        .append_event(&job.id, "checkpoint_rejected", data, now)
                        .await?;
                }
            }
        }
        let model = self.rt.model.clone();
        let req = req.clone();
        Ok(tokio::task::spawn_blocking(move || model.start(&req))
            .await
            .map_err(join_error)??)
    }

    async fn load_checkpoint(
        &self,
        ck: &CheckpointRef,
        req: &GenerationRequest,
    ) -> Result<Box<dyn Generation>, String> {
        let bytes = self.rt.blob.get(&ck.key).await.map_err(|e| e.to_string())?;
        if crc32fast::hash(&bytes) != ck.crc32 || bytes.len() as u64 != ck.size_bytes {
            return Err("checksum or size mismatch".into());
        }
        let model = self.rt.model.clone();
        let req = req.clone();
        tokio::task::spawn_blocking(move || model.resume(&req, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn generate_and_finish(
        &self,
        job: &Job,
        req: GenerationRequest,
        keeper: &LeaseKeeper,
    ) -> Result<Finished, Stop> {
        let model = self.rt.model.clone();
        tokio::task::spawn_blocking(move || model.load())
            .await
            .map_err(join_error)??;
        let mut generation = self.start_or_resume(job, &req).await?;
        let total = generation.total_steps();
        let mut last_ck_step = generation.steps_done();
        let mut last_ck_at = Instant::now();
        keeper.report(progress(Phase::Generating, generation.steps_done(), total));

        while !generation.is_done() {
            if self.lost.is_cancelled() {
                return Err(Stop::LeaseLost);
            }
            if self.shutdown.is_cancelled() {
                if generation.steps_done() > last_ck_step {
                    self.checkpoint(
                        generation.checkpoint(),
                        generation.steps_done(),
                        generation.total_steps(),
                        keeper,
                    )
                    .await?;
                }
                self.rt.store.release(self.lease, self.rt.clock.now_ms()).await?;
                return Err(Stop::Released);
            }
            generation = tokio::task::spawn_blocking(move || generation.step().map(|()| generation))
                .await
                .map_err(join_error)??;
            let done = generation.steps_done();
            keeper.report(progress(Phase::Generating, done, total));
            let cfg = &self.rt.config;
            let by_steps = cfg.checkpoint_every_steps > 0 && done - last_ck_step >= cfg.checkpoint_every_steps;
            let by_time = last_ck_at.elapsed() >= cfg.checkpoint_every;
            if !generation.is_done() && (by_steps || by_time) {
                self.checkpoint(
                    generation.checkpoint(),
                    generation.steps_done(),
                    generation.total_steps(),
                    keeper,
                )
                .await?;
                last_ck_step = done;
                last_ck_at = Instant::now();
            }
        }
        if self.lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        self.finish(job, generation, keeper).await
    }

    /// Writes a checkpoint blob under an attempt-scoped key, then commits the
    /// pointer (fenced). The previous checkpoint stays until this commit lands.
    async fn checkpoint(&self, state: Vec<u8>, step: u32, total: u32, keeper: &LeaseKeeper) -> Result<(), Stop> {
        let started = Instant::now();
        keeper.report(progress(Phase::Checkpointing, step, total));
        let bytes = Bytes::from(state);
        let key = keys::checkpoint(&self.lease.job_id, self.lease.attempt, step);
        let ck = CheckpointRef {
            key: key.clone(),
            step,
            attempt: self.lease.attempt,
            crc32: crc32fast::hash(&bytes),
            size_bytes: bytes.len() as u64,
        };
        self.rt.blob.put(&key, bytes).await?;
        self.rt
            .store
            .commit_checkpoint(self.lease, &ck, self.rt.clock.now_ms())
            .await?;
        metrics::histogram!("videogen_checkpoint_duration_seconds").record(started.elapsed().as_secs_f64());
        keeper.report(progress(Phase::Generating, step, total));
        self.rt.bus.notify(&self.lease.job_id);
        Ok(())
    }

    /// Moderates sampled frames, then encodes the video and its images.
    async fn finish(&self, job: &Job, generation: Box<dyn Generation>, keeper: &LeaseKeeper) -> Result<Finished, Stop> {
        let total = generation.total_steps();
        keeper.report(Progress {
            phase: Phase::Moderating,
            step: total,
            total_steps: total,
            percent: 91,
        });
        let samples_n = self.rt.config.moderation_samples.max(1);
        let (generation, samples) = tokio::task::spawn_blocking(move || {
            let n = generation.frame_count();
            let samples: Vec<FrameSample> = evenly_spaced(n, samples_n)
                .map(|i| {
                    let f = generation.decode_frame(i);
                    FrameSample {
                        index: i,
                        width: f.width,
                        height: f.height,
                        rgb: f.data,
                    }
                })
                .collect();
            (generation, samples)
        })
        .await
        .map_err(join_error)?;
        if let Verdict::Block { category, reason } = self.rt.moderator.check_frames(&job.spec.prompt, &samples).await {
            tracing::warn!(job = %job.id, %category, "output blocked by moderation");
            return Err(Stop::Fatal(JobError::new(
                "output_moderation_blocked",
                format!("the generated video was blocked by output moderation ({category}): {reason}"),
            )));
        }
        drop(samples);
        if self.lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        let reporter = keeper.reporter();
        let (width, height) = job.spec.size.dims();
        let lost = self.lost.clone();
        tokio::task::spawn_blocking(move || encode_all(generation, width, height, &reporter, &lost))
            .await
            .map_err(join_error)?
    }

    /// Uploads the assets under attempt-scoped keys and commits them (fenced).
    async fn commit(&self, job: &Job, finished: Finished) -> Result<(), Stop> {
        let id = &job.id;
        let attempt = self.lease.attempt;
        let outputs = Outputs {
            video_key: keys::video(id, attempt),
            thumbnail_key: keys::thumbnail(id, attempt),
            spritesheet_key: keys::spritesheet(id, attempt),
            video_bytes: finished.video.len() as u64,
        };
        let put = async {
            self.rt.blob.put(&outputs.video_key, finished.video).await?;
            self.rt.blob.put(&outputs.thumbnail_key, finished.thumbnail).await?;
            self.rt.blob.put(&outputs.spritesheet_key, finished.spritesheet).await?;
            Ok::<(), BlobError>(())
        };
        if let Err(e) = put.await {
            self.delete_outputs(&outputs).await;
            return Err(e.into());
        }
        let now = self.rt.clock.now_ms();
        let retention_ms = i64::try_from(self.rt.config.retention(job.tier).as_millis()).unwrap_or(i64::MAX);
        match self
            .rt
            .store
            .complete(self.lease, &outputs, now, now.saturating_add(retention_ms))
            .await
        {
            Ok(_) => {
                // Checkpoints are only for resuming; a completed job needs none.
                let [_, checkpoints, _] = keys::job_prefixes(id);
                if let Err(e) = self.rt.blob.delete_prefix(&checkpoints).await {
                    tracing::warn!(job = %id, error = %e, "could not delete checkpoints");
                }
                Ok(())
            }
            Err(e) => {
                // Not ours any more: leave no orphaned bytes behind.
                self.delete_outputs(&outputs).await;
                Err(e.into())
            }
        }
    }

    async fn delete_outputs(&self, o: &Outputs) {
        for key in [&o.video_key, &o.thumbnail_key, &o.spritesheet_key] {
            let _ = self.rt.blob.delete(key).await;
        }
    }
}

/// Encoded assets of one attempt.
struct Finished {
    video: Bytes,
    thumbnail: Bytes,
    spritesheet: Bytes,
}

fn encode_all(
    generation: Box<dyn Generation>,
    width: u32,
    height: u32,
    reporter: &tokio::sync::watch::Sender<Progress>,
    lost: &CancellationToken,
) -> Result<Finished, Stop> {
    let media_err = |e: videogen_media::MediaError| Stop::Fatal(JobError::new("encode_error", e.to_string()));
    let total_steps = generation.total_steps();
    let n = generation.frame_count();
    let thumb_index = n / 2;
    let sprite_indices: Vec<u32> = evenly_spaced(n, SPRITESHEET_FRAMES).collect();
    let mut sprite_frames: Vec<(u32, u32, Vec<u8>)> = Vec::with_capacity(sprite_indices.len());
    let mut thumbnail = None;
    let mut enc = videogen_media::Mp4Encoder::new(width, height, videogen_core::spec::FPS).map_err(media_err)?;
    for i in 0..n {
        if i % 8 == 0 {
            if lost.is_cancelled() {
                return Err(Stop::LeaseLost);
            }
            let percent = 92 + (u64::from(i) * 7 / u64::from(n.max(1))) as u8;
            reporter.send_replace(Progress {
                phase: Phase::Encoding,
                step: total_steps,
                total_steps,
                percent,
            });
        }
        let frame = generation.decode_frame(i);
        enc.push_rgb(&frame.data).map_err(media_err)?;
        if i == thumb_index {
            thumbnail = Some(
                videogen_media::thumbnail_jpeg(frame.width, frame.height, &frame.data, THUMBNAIL_MAX_WIDTH)
                    .map_err(media_err)?,
            );
        }
        if sprite_indices.contains(&i) {
            sprite_frames.push((frame.width, frame.height, frame.data));
        }
    }
    reporter.send_replace(Progress {
        phase: Phase::Finalizing,
        step: total_steps,
        total_steps,
        percent: 99,
    });
    let video = enc.finish().map_err(media_err)?;
    let refs: Vec<(u32, u32, &[u8])> = sprite_frames.iter().map(|(w, h, d)| (*w, *h, d.as_slice())).collect();
    let spritesheet =
        videogen_media::spritesheet_jpeg(&refs, SPRITESHEET_COLS, SPRITESHEET_TILE_WIDTH).map_err(media_err)?;
    let thumbnail = thumbnail.ok_or_else(|| Stop::Fatal(JobError::new("encode_error", "clip has no frames")))?;
    Ok(Finished {
        video: video.into(),
        thumbnail: thumbnail.into(),
        spritesheet: spritesheet.into(),
    })
}

/// `count` frame indices spread evenly over `0..n` (fewer if `n` is small).
fn evenly_spaced(n: u32, count: u32) -> impl Iterator<Item = u32> {
    let count = count.min(n).max(1);
    (0..count)
        .map(move |k| if count == 1 { n / 2 } else { k * (n - 1) / (count - 1) })
        .filter(move |_| n > 0)
}

fn percent_for_step(step: u32, total: u32) -> u8 {
    (u64::from(step) * u64::from(GENERATE_PERCENT_MAX) / u64::from(total.max(1))) as u8
}

fn progress(phase: Phase, step: u32, total: u32) -> Progress {
    Progress {
        phase,
        step,
        total_steps: total,
        percent: percent_for_step(step, total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_covers_first_and_last() {
        assert_eq!(evenly_spaced(96, 4).collect::<Vec<_>>(), vec![0, 31, 63, 95]);
        assert_eq!(evenly_spaced(3, 10).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(0, 4).count(), 0);
    }

    #[test]
    fn generation_percent_stays_below_the_encoding_share() {
        assert_eq!(percent_for_step(0, 30), 0);
        assert_eq!(percent_for_step(30, 30), 90);
        assert_eq!(percent_for_step(15, 30), 45);
    }
}
