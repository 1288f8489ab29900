//! Runs leased jobs: one [`Worker`] loop per slot, one attempt at a time.
//!
//! An attempt: acquire (lease) → (resume from the newest good checkpoint |
//! start) → steps, checkpointing on the [`CheckpointPolicy`] with each upload
//! overlapping the next steps → moderation of sampled frames → H.264 encode,
//! thumbnail, spritesheet → assets under attempt-scoped keys → fenced
//! completion. The worker reaches the platform only through a
//! [`ControlPlane`], the same code in-process and in `videogen worker`.
//! Losing the lease (cancel, or the reaper gave the job to another attempt)
//! stops the attempt at the next step boundary and leaves the job to its new
//! owner. A stop request (SIGTERM, spot notice, or the control plane asking)
//! finishes the current step, checkpoints within the preemption deadline and
//! releases the job so it is re-queued at once.

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use videogen_core::moderation::{FrameSample, Moderator, Verdict};
use videogen_core::{AttemptEvent, CheckpointRef, Job, JobError, Lease, Phase, Progress};
use videogen_model::{Availability, Frames, Generation, GenerationRequest, Model, ModelError, RgbImage};

use crate::lease_keeper::{LeaseKeeper, Signals};
use videogen_protocol::{
    AssetKind, Assignment, ControlError, ControlPlane, Directive, HeartbeatReply, ModelReport, ModelState,
    ReleaseCause, RetryOutcome, WorkerInfo,
};
use videogen_sched::checkpoint::{CheckpointClock, CheckpointCostEstimator, CheckpointPolicy};

/// Share of the progress bar given to denoising; decode/encode/upload take the rest.
const GENERATE_PERCENT_MAX: u32 = 90;
const SPRITESHEET_FRAMES: u32 = 10;
const SPRITESHEET_COLS: u32 = 5;
const SPRITESHEET_TILE_WIDTH: u32 = 192;
const THUMBNAIL_MAX_WIDTH: u32 = 640;
/// Pause after a failed acquire, so an unreachable control plane is not hammered.
const ACQUIRE_RETRY: Duration = Duration::from_millis(500);

/// The model side of a worker slot: what runs the generation and checks its output.
pub struct Engine {
    pub models: ModelSet,
    pub moderator: Arc<dyn Moderator>,
}

impl Engine {
    /// A slot with one model.
    pub fn single(model: Arc<dyn Model>, moderator: Arc<dyn Moderator>) -> Self {
        Self {
            models: ModelSet::new(vec![model]),
            moderator,
        }
    }
}

/// The models a worker slot runs, by id.
#[derive(Clone)]
pub struct ModelSet {
    models: Vec<Arc<dyn Model>>,
}

impl ModelSet {
    pub fn new(models: Vec<Arc<dyn Model>>) -> Self {
        Self { models }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn Model>> {
        self.models.iter().find(|m| m.id() == id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.models.iter().map(|m| m.id().to_owned()).collect()
    }

    /// What the scheduler should know: the models this slot can run now,
    /// those it has warm, and a report per model for `/v1/models`.
    pub fn view(&self) -> (Vec<String>, Vec<String>, Vec<ModelReport>) {
        let (mut serves, mut warm, mut reports) = (Vec::new(), Vec::new(), Vec::new());
        for m in &self.models {
            let id = m.id().to_owned();
            let (state, error) = match m.availability() {
                Availability::Warm => (ModelState::Warm, None),
                Availability::Cold => (ModelState::Cold, None),
                Availability::Unavailable(why) => (ModelState::Unavailable, Some(why)),
            };
            if state != ModelState::Unavailable {
                serves.push(id.clone());
            }
            if state == ModelState::Warm {
                warm.push(id.clone());
            }
            reports.push(ModelReport {
                id,
                state,
                weights_hash: m.weights_hash(),
                error,
            });
        }
        (serves, warm, reports)
    }
}

/// Worker knobs. Names carry their unit last.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub checkpoint: CheckpointPolicy,
    /// Frames sampled from an output for moderation.
    pub moderation_samples: u32,
    /// Longest a graceful stop may take, from the notice to the job being
    /// released (GCE gives 30 s, AWS 120 s). Past it the job is released
    /// without a final checkpoint rather than overrunning the notice.
    pub preemption_deadline: Duration,
    /// How long one acquire long-poll waits for work.
    pub acquire_wait: Duration,
    /// The device this slot runs on, as `gpu_id` of `videogen_gpu_utilization`
    /// (e.g. `0`, `0+1`, `cpu`).
    pub gpu_id: String,
    /// Publish `videogen_gpu_utilization` from the stepping fraction (off
    /// where NVML reports the real figure).
    pub utilization_from_steps: bool,
    /// Finished generations a slot moderates, encodes and uploads at once
    /// while its device runs the next job; when all are busy, the slot
    /// waits for one before taking another job. 0: no overlap (each job is
    /// encoded and uploaded before the device takes the next).
    pub finishing_max: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            checkpoint: CheckpointPolicy::Fixed {
                every_steps: 5,
                every: Duration::from_secs(10),
            },
            moderation_samples: 4,
            preemption_deadline: Duration::from_secs(25),
            acquire_wait: Duration::from_secs(20),
            finishing_max: 2,
            gpu_id: "cpu".into(),
            utilization_from_steps: true,
        }
    }
}

/// How an attempt ended, when it did not complete.
#[derive(Debug)]
enum Stop {
    /// The lease is gone (cancelled, deleted, or owned by a newer attempt).
    LeaseLost,
    /// Stopping: the attempt (checkpointed if it could and) gave the job back.
    Released,
    /// Will fail the same way again: fail the job now.
    Fatal(JobError),
    /// Might work next time (the model crashed, a worker task panicked):
    /// charged to the job, retried after a backoff.
    Retryable(String),
    /// The platform failed the attempt (storage full or unreachable, the
    /// database unavailable): not the job's fault, so the job goes back
    /// uncharged and dispatch waits for the infrastructure.
    Infrastructure(String),
}

impl From<ControlError> for Stop {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Stale { .. } => Stop::LeaseLost,
            ControlError::Unavailable(msg) => Stop::Infrastructure(msg),
            other @ ControlError::Rejected(_) => Stop::Retryable(other.to_string()),
        }
    }
}

impl From<ModelError> for Stop {
    fn from(e: ModelError) -> Self {
        if let ModelError::Unavailable(why) = &e {
            // The model cannot run here now: not the job's fault.
            return Stop::Infrastructure(format!("model unavailable: {why}"));
        }
        if e.is_retryable() {
            Stop::Retryable(e.to_string())
        } else {
            Stop::Fatal(JobError::new(e.code(), e.to_string()))
        }
    }
}

/// How an attempt ended, as counted in `videogen_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    /// The job was cancelled while the attempt ran.
    Cancelled,
    /// Another attempt owns the job now (the lease expired and was reclaimed).
    LeaseLost,
    Released,
    Failed,
    Retry,
    DeadLettered,
    /// Given back uncharged after an infrastructure fault.
    Infrastructure,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Released => "released",
            Outcome::Failed => "failed",
            Outcome::Retry => "retry",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Infrastructure => "infrastructure",
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> Stop {
    Stop::Retryable(format!("worker task failed: {e}"))
}

/// One execution slot: one generation at a time on its device, with up to
/// [`WorkerConfig::finishing_max`] finished generations being moderated,
/// encoded and uploaded on the CPU beside it.
pub struct Worker {
    control: Arc<dyn ControlPlane>,
    engine: Arc<Engine>,
    info: WorkerInfo,
    config: WorkerConfig,
    /// Measured cost of a checkpoint (how long it holds up the generation).
    checkpoint_cost: CheckpointCostEstimator,
    /// When a stop was requested, once it was.
    noticed: Arc<std::sync::OnceLock<Instant>>,
    /// Permits for attempts past the device (moderate, encode, upload).
    finishing: Arc<tokio::sync::Semaphore>,
    /// The device's stepping fraction.
    meter: crate::utilization::StepMeter,
    tasks: tokio::task::JoinSet<Outcome>,
}

/// Where an attempt stands once the device is done with it.
enum Generated {
    /// It ended (completed, failed, released...).
    Ended(Outcome),
    /// Frames are decoded; moderation, encoding and the commit remain.
    Decoded(Box<Decoded>),
}

impl Worker {
    pub fn new(control: Arc<dyn ControlPlane>, engine: Arc<Engine>, info: WorkerInfo, config: WorkerConfig) -> Self {
        let finishing = Arc::new(tokio::sync::Semaphore::new(config.finishing_max.max(1)));
        let meter = crate::utilization::StepMeter::new(
            info.id.to_string(),
            config.gpu_id.clone(),
            config.utilization_from_steps,
        );
        Self {
            meter,
            control,
            engine,
            info,
            config,
            checkpoint_cost: CheckpointCostEstimator::default(),
            noticed: Arc::default(),
            finishing,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Runs jobs until `shutdown`; a job in flight then is checkpointed and
    /// released; finished generations still encoding are completed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // When the stop was requested: the preemption deadline counts from
        // there, not from the step boundary where the attempt notices it.
        let noticed = Arc::new(std::sync::OnceLock::new());
        {
            let (shutdown, noticed) = (shutdown.clone(), noticed.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                let _ = noticed.set(Instant::now());
            });
        }
        self.noticed = noticed;
        while !shutdown.is_cancelled() {
            while self.tasks.try_join_next().is_some() {}
            self.meter.maybe_publish(Instant::now());
            self.refresh_info();
            let acquired = tokio::select! {
                r = self.control.acquire(&self.info, self.config.acquire_wait) => r,
                _ = shutdown.cancelled() => break,
            };
            match acquired {
                Ok(Some(a)) if self.config.finishing_max == 0 => {
                    // No overlap: the slot finishes each job before the next.
                    self.run_attempt_inline(a, &shutdown).await;
                }
                Ok(Some(a)) => {
                    if let Generated::Decoded(finisher) = self.generate(a, &shutdown).await {
                        // The device is free: the next job starts while this
                        // one encodes (at most `finishing_max` at a time).
                        let Ok(permit) = self.finishing.clone().acquire_owned().await else {
                            break;
                        };
                        self.tasks.spawn(async move {
                            let outcome = finisher.run().await;
                            drop(permit);
                            outcome
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(worker = %self.info.id, error = %e, "acquire failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(ACQUIRE_RETRY) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// What the scheduler is told on the next acquire: which models this
    /// slot can run now (an unavailable one is left out, so nothing is
    /// leased for it), which are warm, and each one's state.
    fn refresh_info(&mut self) {
        let (serves, warm, reports) = self.engine.models.view();
        self.info.serves = Some(serves);
        self.info.models = reports;
        for m in warm {
            if !self.info.loaded_models.contains(&m) {
                self.info.loaded_models.push(m);
            }
        }
        self.info.loaded_models.retain(|m| {
            self.info
                .models
                .iter()
                .any(|r| &r.id == m && r.state == ModelState::Warm)
        });
    }

    /// One attempt to its end, finishing inline.
    async fn run_attempt_inline(&mut self, a: Assignment, shutdown: &CancellationToken) -> Outcome {
        match self.generate(a, shutdown).await {
            Generated::Ended(outcome) => outcome,
            Generated::Decoded(finisher) => finisher.run().await,
        }
    }

    #[cfg(test)]
    async fn run_attempt(&mut self, a: Assignment, shutdown: &CancellationToken) -> Outcome {
        self.run_attempt_inline(a, shutdown).await
    }

    /// The device part of an attempt: lease kept, resume or start, steps,
    /// checkpoints, decode.
    async fn generate(&mut self, a: Assignment, shutdown: &CancellationToken) -> Generated {
        let Assignment { lease, job, ttl_ms } = a;
        let started = Instant::now();
        let signals = Signals::default();
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(30_000));
        let keeper = LeaseKeeper::spawn(
            self.control.clone(),
            lease.clone(),
            ttl,
            Progress {
                phase: Phase::LoadingModel,
                step: job.step,
                total_steps: job.spec.steps,
                percent: job.progress,
            },
            signals.clone(),
        );
        let mtbf = match &self.config.checkpoint {
            CheckpointPolicy::Adaptive { .. } => self
                .control
                .fleet()
                .await
                .ok()
                .and_then(|f| Duration::try_from_secs_f64(f.mtbf_secs).ok()),
            CheckpointPolicy::Fixed { .. } => None,
        };
        let result = match self.engine.models.get(&job.spec.model).cloned() {
            None => Err(Stop::Infrastructure(format!(
                "this worker does not serve model {}",
                job.spec.model
            ))),
            Some(model) => {
                let mut attempt = Attempt {
                    control: self.control.clone(),
                    model,
                    config: &self.config,
                    lease: &lease,
                    signals: &signals,
                    shutdown,
                    noticed: &self.noticed,
                    keeper: &keeper,
                    clock: CheckpointClock::new(self.config.checkpoint, self.checkpoint_cost.estimate(), mtbf),
                    cost: &mut self.checkpoint_cost,
                    meter: &mut self.meter,
                };
                attempt.run(&job).await
            }
        };
        if result.is_ok() && !self.info.loaded_models.contains(&job.spec.model) {
            // Warm now: the scheduler may prefer this worker for the model.
            self.info.loaded_models.push(job.spec.model.clone());
        }
        let finisher = Finisher {
            control: self.control.clone(),
            moderator: self.engine.moderator.clone(),
            moderation_samples: self.config.moderation_samples,
            lease,
            job,
            signals,
            keeper,
            started,
        };
        match result {
            Ok(frames) => Generated::Decoded(Box::new(finisher.with_frames(frames))),
            Err(stop) => Generated::Ended(finisher.settle(Err(stop)).await),
        }
    }
}

/// The CPU part of an attempt, after the device: moderate sampled frames,
/// encode the video and its images, upload, commit; then report how the
/// attempt ended. Owns everything it needs, so it runs as its own task.
struct Finisher {
    control: Arc<dyn ControlPlane>,
    moderator: Arc<dyn Moderator>,
    moderation_samples: u32,
    lease: Lease,
    job: Job,
    signals: Signals,
    keeper: LeaseKeeper,
    started: Instant,
}

/// A [`Finisher`] with its decoded frames.
struct Decoded {
    inner: Finisher,
    frames: Box<dyn Frames>,
}

impl Finisher {
    fn with_frames(self, frames: Box<dyn Frames>) -> Decoded {
        Decoded { inner: self, frames }
    }

    /// Records how the attempt ended (fail, retry, release) and counts it.
    async fn settle(self, result: Result<(), Stop>) -> Outcome {
        let id = self.lease.job_id.clone();
        let keeper_progress = self.keeper.current();
        self.keeper.stop().await;
        let control = self.control.as_ref();
        let lease = &self.lease;
        let label = match result {
            Ok(()) => {
                metrics::histogram!("videogen_generation_seconds").record(self.started.elapsed().as_secs_f64());
                Outcome::Completed
            }
            Err(Stop::LeaseLost) => {
                if was_cancelled(control, lease, &self.signals, keeper_progress).await {
                    tracing::info!(job = %id, attempt = lease.attempt, "job cancelled; abandoning attempt");
                    Outcome::Cancelled
                } else {
                    tracing::info!(job = %id, attempt = lease.attempt, "lease lost; abandoning attempt");
                    Outcome::LeaseLost
                }
            }
            Err(Stop::Released) => Outcome::Released,
            Err(Stop::Fatal(err)) => {
                tracing::warn!(job = %id, code = %err.code, "attempt failed: {}", err.message);
                if let Err(e) = control.fail(lease, &err).await {
                    tracing::warn!(job = %id, error = %e, "could not record the failure; the lease will expire");
                }
                Outcome::Failed
            }
            Err(Stop::Infrastructure(msg)) => {
                tracing::warn!(job = %id, attempt = lease.attempt, "infrastructure fault, job given back uncharged: {msg}");
                if let Err(e) = control.release(lease, ReleaseCause::Infrastructure).await {
                    tracing::warn!(job = %id, error = %e, "could not give the job back; the lease will expire");
                }
                Outcome::Infrastructure
            }
            Err(Stop::Retryable(msg)) => {
                tracing::warn!(job = %id, attempt = lease.attempt, "attempt error: {msg}");
                match control.retry(lease, &msg).await {
                    Ok(RetryOutcome::Requeued) => Outcome::Retry,
                    Ok(RetryOutcome::DeadLettered) => Outcome::DeadLettered,
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "could not re-queue; the lease will expire");
                        Outcome::Retry
                    }
                }
            }
        };
        metrics::counter!("videogen_attempts_total", "outcome" => label.as_str()).increment(1);
        label
    }
}

impl Decoded {
    async fn run(self) -> Outcome {
        let Decoded { inner, frames } = self;
        let result = inner.finish(frames).await;
        inner.settle(result).await
    }
}

impl Finisher {
    /// Moderates sampled frames, encodes, uploads and commits.
    async fn finish(&self, frames: Box<dyn Frames>) -> Result<(), Stop> {
        let finished = self.moderate_and_encode(frames).await?;
        self.commit(finished).await
    }

    async fn moderate_and_encode(&self, frames: Box<dyn Frames>) -> Result<Finished, Stop> {
        let job = &self.job;
        let total = job.spec.steps;
        self.keeper.report(Progress {
            phase: Phase::Moderating,
            step: total,
            total_steps: total,
            percent: 91,
        });
        let samples_n = self.moderation_samples.max(1);
        let (frames, samples) = tokio::task::spawn_blocking(move || {
            let n = frames.count();
            let samples: Vec<FrameSample> = evenly_spaced(n, samples_n)
                .map(|i| {
                    let f = frames.frame(i);
                    FrameSample {
                        index: i,
                        width: f.width,
                        height: f.height,
                        rgb: f.data,
                    }
                })
                .collect();
            (frames, samples)
        })
        .await
        .map_err(join_error)?;
        if let Verdict::Block { category, reason } = self.moderator.check_frames(&job.spec.prompt, &samples).await {
            tracing::warn!(job = %job.id, %category, "output blocked by moderation");
            return Err(Stop::Fatal(JobError::new(
                "output_moderation_blocked",
                format!("the generated video was blocked by output moderation ({category}): {reason}"),
            )));
        }
        drop(samples);
        if self.signals.lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        let reporter = self.keeper.reporter();
        let (width, height) = job.spec.size.dims();
        let lost = self.signals.lost.clone();
        tokio::task::spawn_blocking(move || encode_all(frames, total, width, height, &reporter, &lost))
            .await
            .map_err(join_error)?
    }

    /// Uploads the assets under attempt-scoped keys and commits them (fenced).
    async fn commit(&self, finished: Finished) -> Result<(), Stop> {
        let video_bytes = finished.video.len() as u64;
        for (kind, bytes) in [
            (AssetKind::Video, finished.video),
            (AssetKind::Thumbnail, finished.thumbnail),
            (AssetKind::Spritesheet, finished.spritesheet),
        ] {
            let crc = crc32fast::hash(&bytes);
            self.control.put_asset(&self.lease, kind, crc, bytes.into()).await?;
        }
        self.control.complete(&self.lease, video_bytes).await?;
        Ok(())
    }
}

/// Whether a lost lease was lost to a cancel. The keeper knows when a
/// heartbeat said so; a fenced write that found the lease stale first
/// (say, the checkpoint upload racing the cancel) does not say why, so
/// one heartbeat asks: a cancelled job answers `cancel`, a job owned by
/// another attempt answers 409. The lease is stale either way, so the
/// heartbeat cannot renew anything.
async fn was_cancelled(control: &dyn ControlPlane, lease: &Lease, signals: &Signals, last: Progress) -> bool {
    if signals.cancelled.is_cancelled() {
        return true;
    }
    if signals.lost.is_cancelled() {
        // The keeper got a 409: another attempt owns the job.
        return false;
    }
    matches!(
        control.heartbeat(lease, &last).await,
        Ok(HeartbeatReply {
            directive: Directive::Cancel,
            ..
        })
    )
}

/// A checkpoint upload running beside the next steps.
struct Upload {
    step: u32,
    task: JoinHandle<Result<CheckpointRef, ControlError>>,
}

/// One attempt's state.
struct Attempt<'a> {
    control: Arc<dyn ControlPlane>,
    model: Arc<dyn Model>,
    config: &'a WorkerConfig,
    lease: &'a Lease,
    signals: &'a Signals,
    shutdown: &'a CancellationToken,
    noticed: &'a std::sync::OnceLock<Instant>,
    keeper: &'a LeaseKeeper,
    clock: CheckpointClock,
    cost: &'a mut CheckpointCostEstimator,
    meter: &'a mut crate::utilization::StepMeter,
}

impl Attempt<'_> {
    async fn run(&mut self, job: &Job) -> Result<Box<dyn Frames>, Stop> {
        let req = self.request(job).await?;
        self.generate(job, req).await
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled() || self.signals.release.is_cancelled()
    }

    async fn request(&self, job: &Job) -> Result<GenerationRequest, Stop> {
        let (width, height) = job.spec.size.dims();
        let first_frame = match &job.spec.input_reference {
            None => None,
            Some(key) => {
                let bytes = self.control.read_blob(self.lease, key).await?;
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
            frames: job.spec.frames(),
            steps: job.spec.steps,
            first_frame,
            negative_prompt: job.spec.params.negative_prompt.clone(),
            guidance_scale: job.spec.params.guidance_scale(),
            fps: job.spec.fps(),
        })
    }

    /// Resumes from the newest checkpoint that verifies, else starts at step 0.
    async fn start_or_resume(&self, job: &Job, req: &GenerationRequest) -> Result<Box<dyn Generation>, Stop> {
        let candidates = [job.checkpoint.as_ref(), job.prev_checkpoint.as_ref()];
        for ck in candidates.into_iter().flatten() {
            match self.load_checkpoint(ck, req).await? {
                Ok(generation) => {
                    let resumed = AttemptEvent::Resumed {
                        from_step: ck.step,
                        checkpoint_attempt: ck.attempt,
                        previous_step: job.step,
                    };
                    self.control.event(self.lease, &resumed).await?;
                    tracing::info!(job = %job.id, step = ck.step, "resumed from checkpoint");
                    return Ok(generation);
                }
                Err(reason) => {
                    tracing::warn!(job = %job.id, key = %ck.key, "checkpoint unusable: {reason}");
                    let rejected = AttemptEvent::CheckpointRejected {
                        key: ck.key.clone(),
                        step: ck.step,
                        reason: reason.to_string(),
                    };
                    self.control.event(self.lease, &rejected).await?;
                }
            }
        }
        let model = self.model.clone();
        let req = req.clone();
        let generation = tokio::task::spawn_blocking(move || model.start(&req))
            .await
            .map_err(join_error)??;
        if job.step > 0 {
            // Progress is lost: say so in the job's log.
            let reason = if !generation.checkpointable() {
                format!("model {} cannot checkpoint; the generation starts over", job.spec.model)
            } else if candidates.iter().any(Option::is_some) {
                "no usable checkpoint; the generation starts over".to_owned()
            } else {
                "no checkpoint was taken; the generation starts over".to_owned()
            };
            let restarted = AttemptEvent::Restarted {
                previous_step: job.step,
                reason,
            };
            self.control.event(self.lease, &restarted).await?;
        }
        Ok(generation)
    }

    async fn load_checkpoint(
        &self,
        ck: &CheckpointRef,
        req: &GenerationRequest,
    ) -> Result<Result<Box<dyn Generation>, String>, Stop> {
        // A store that cannot answer now says nothing about the checkpoint:
        // give the job back rather than throw its progress away.
        let bytes = match self.control.read_blob(self.lease, &ck.key).await {
            Ok(bytes) => bytes,
            Err(e @ (ControlError::Unavailable(_) | ControlError::Stale { .. })) => return Err(e.into()),
            Err(e @ ControlError::Rejected(_)) => return Ok(Err(e.to_string())),
        };
        if crc32fast::hash(&bytes) != ck.crc32 || bytes.len() as u64 != ck.size_bytes {
            return Ok(Err("checksum or size mismatch".into()));
        }
        let model = self.model.clone();
        let req = req.clone();
        Ok(
            match tokio::task::spawn_blocking(move || model.resume(&req, &bytes)).await {
                Ok(resumed) => resumed.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// Steps to the end (checkpointing on the policy), then decodes: the
    /// device is free once this returns.
    async fn generate(&mut self, job: &Job, req: GenerationRequest) -> Result<Box<dyn Frames>, Stop> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || model.load())
            .await
            .map_err(join_error)??;
        let mut generation = self.start_or_resume(job, &req).await?;
        let total = generation.total_steps();
        let resumed_from = generation.steps_done();
        let mut last_ck_step = resumed_from;
        let mut last_ck_at = Instant::now();
        let mut step_secs: Option<f64> = None;
        let mut upload: Option<Upload> = None;
        self.keeper.report(progress(Phase::Generating, resumed_from, total));

        while !generation.is_done() {
            if self.signals.lost.is_cancelled() {
                return Err(Stop::LeaseLost);
            }
            if self.stopping() {
                return self.stop_gracefully(generation, upload, last_ck_step).await;
            }
            let t0 = Instant::now();
            generation = tokio::task::spawn_blocking(move || generation.step().map(|()| generation))
                .await
                .map_err(join_error)??;
            let took = t0.elapsed();
            self.meter.stepped(took);
            let secs = took.as_secs_f64();
            // Float totals (gauges): `metrics` counters are integers.
            metrics::gauge!("videogen_generating_seconds_total").increment(secs);
            if step_secs.is_none() && job.step > resumed_from {
                // Work the previous attempt did past its last checkpoint, redone here.
                // (A float total: `metrics` counters are integers.)
                let wasted = f64::from(job.step - resumed_from) * secs;
                metrics::gauge!("videogen_wasted_gpu_seconds_total").increment(wasted);
            }
            step_secs = Some(step_secs.map_or(secs, |s| 0.8 * s + 0.2 * secs));
            let done = generation.steps_done();
            self.keeper.report(progress(Phase::Generating, done, total));
            let step_estimate = Duration::from_secs_f64(step_secs.unwrap_or(secs));
            if !generation.is_done()
                && generation.checkpointable()
                && self
                    .clock
                    .should_checkpoint(done - last_ck_step, last_ck_at.elapsed(), step_estimate)
            {
                let held = Instant::now();
                let (g, taken) = tokio::task::spawn_blocking(move || {
                    let taken = generation.checkpoint();
                    (generation, taken)
                })
                .await
                .map_err(join_error)?;
                generation = g;
                match taken {
                    Ok(bytes) => {
                        upload = Some(self.start_checkpoint(done, Bytes::from(bytes), upload, held).await?);
                    }
                    // The generation goes on; if its model's process is
                    // gone, the next step says so.
                    Err(e) => {
                        metrics::counter!("videogen_checkpoint_failures_total").increment(1);
                        tracing::warn!(job = %job.id, error = %e, "checkpoint could not be taken; going on without it");
                    }
                }
                last_ck_step = done;
                last_ck_at = Instant::now();
            }
        }
        // The final checkpoint upload must not outlive the attempt.
        if let Some(u) = upload {
            let _ = u.task.await;
        }
        if self.signals.lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        let total = generation.total_steps();
        self.keeper.report(Progress {
            phase: Phase::Decoding,
            step: total,
            total_steps: total,
            percent: 90,
        });
        Ok(tokio::task::spawn_blocking(move || generation.into_frames())
            .await
            .map_err(join_error)??)
    }

    /// Starts uploading a checkpoint (already serialised since `held`) while
    /// the generation goes on; waits for the previous upload first (one in
    /// flight at most). The time the generation is held up is this
    /// checkpoint's cost.
    async fn start_checkpoint(
        &mut self,
        step: u32,
        bytes: Bytes,
        previous: Option<Upload>,
        held: Instant,
    ) -> Result<Upload, Stop> {
        if let Some(prev) = previous {
            match finish_upload(prev).await {
                Ok(()) => {}
                Err(ControlError::Stale { .. }) => return Err(Stop::LeaseLost),
                // The attempt goes on without it; it resumes from an older one
                // if it is interrupted (the next checkpoint may well succeed).
                Err(e) => {
                    metrics::counter!("videogen_checkpoint_failures_total").increment(1);
                    tracing::warn!(job = %self.lease.job_id, error = %e, "checkpoint not saved; going on without it");
                }
            }
        }
        let crc = crc32fast::hash(&bytes);
        let stall = held.elapsed().as_secs_f64();
        self.cost.observe(stall);
        metrics::gauge!("videogen_checkpoint_stall_seconds_total").increment(stall);
        let control = self.control.clone();
        let lease = self.lease.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let r = write_checkpoint_retrying(control.as_ref(), &lease, step, crc, bytes).await;
            metrics::histogram!("videogen_checkpoint_duration_seconds").record(started.elapsed().as_secs_f64());
            r
        });
        Ok(Upload { step, task })
    }

    /// Stop requested: finish the upload in flight, checkpoint what is newer
    /// (if the deadline allows), release the job.
    async fn stop_gracefully(
        &mut self,
        generation: Box<dyn Generation>,
        upload: Option<Upload>,
        last_ck_step: u32,
    ) -> Result<Box<dyn Frames>, Stop> {
        // From the notice (a `release` directive has none: from now).
        let deadline = self.noticed.get().copied().unwrap_or_else(Instant::now) + self.config.preemption_deadline;
        let within = |d: Instant| d.saturating_duration_since(Instant::now());
        let total = generation.total_steps();
        let done = generation.steps_done();
        let newer = if done > last_ck_step && generation.checkpointable() {
            tokio::task::spawn_blocking(move || generation.checkpoint())
                .await
                .ok()
                .and_then(|r| {
                    r.map_err(
                        |e| tracing::warn!(job = %self.lease.job_id, error = %e, "final checkpoint could not be taken"),
                    )
                    .ok()
                })
                .map(Bytes::from)
        } else {
            drop(generation);
            None
        };
        let mut saved = false;
        let work = async {
            if let Some(u) = upload {
                finish_upload(u).await?;
            }
            if let Some(bytes) = newer {
                self.keeper.report(progress(Phase::Checkpointing, done, total));
                let crc = crc32fast::hash(&bytes);
                self.control
                    .write_checkpoint(self.lease, done, crc, bytes.into())
                    .await?;
            }
            Ok::<(), ControlError>(())
        };
        match tokio::time::timeout(within(deadline), work).await {
            Ok(Ok(())) => saved = true,
            Ok(Err(ControlError::Stale { .. })) => return Err(Stop::LeaseLost),
            Ok(Err(e)) => tracing::warn!(job = %self.lease.job_id, error = %e, "final checkpoint failed"),
            Err(_) => tracing::warn!(job = %self.lease.job_id, "preemption deadline reached before the checkpoint"),
        }
        match self.control.release(self.lease, ReleaseCause::Shutdown).await {
            Ok(()) => {
                tracing::info!(job = %self.lease.job_id, step = done, checkpointed = saved, "released on stop");
                Err(Stop::Released)
            }
            Err(ControlError::Stale { .. }) => Err(Stop::LeaseLost),
            Err(e) => {
                tracing::warn!(job = %self.lease.job_id, error = %e, "release failed; the lease will expire");
                Err(Stop::Released)
            }
        }
    }
}

/// Tries of one checkpoint upload, and the wait before the second; each
/// further wait doubles. A checkpoint that still fails is skipped: the
/// generation is worth more than the checkpoint.
const CHECKPOINT_TRIES: u32 = 3;
const CHECKPOINT_RETRY: Duration = Duration::from_millis(250);

/// Uploads a checkpoint, retrying what the infrastructure refused
/// (`Unavailable`) a few times; a rejection or a lost lease is final.
async fn write_checkpoint_retrying(
    control: &dyn ControlPlane,
    lease: &Lease,
    step: u32,
    crc: u32,
    bytes: Bytes,
) -> Result<CheckpointRef, ControlError> {
    let mut wait = CHECKPOINT_RETRY;
    let mut tries = 1;
    loop {
        match control.write_checkpoint(lease, step, crc, bytes.clone().into()).await {
            Err(ControlError::Unavailable(msg)) if tries < CHECKPOINT_TRIES => {
                tracing::debug!(job = %lease.job_id, step, tries, "checkpoint upload failed, retrying: {msg}");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

async fn finish_upload(u: Upload) -> Result<(), ControlError> {
    match u.task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ControlError::Unavailable(format!(
            "checkpoint upload of step {} failed: {e}",
            u.step
        ))),
    }
}

/// Encoded assets of one attempt.
struct Finished {
    video: Bytes,
    thumbnail: Bytes,
    spritesheet: Bytes,
}

fn encode_all(
    frames: Box<dyn Frames>,
    total_steps: u32,
    width: u32,
    height: u32,
    reporter: &tokio::sync::watch::Sender<Progress>,
    lost: &CancellationToken,
) -> Result<Finished, Stop> {
    let media_err = |e: videogen_media::MediaError| Stop::Fatal(JobError::new("encode_error", e.to_string()));
    let n = frames.count();
    let thumb_index = n / 2;
    let sprite_indices: Vec<u32> = evenly_spaced(n, SPRITESHEET_FRAMES).collect();
    let mut sprite_frames: Vec<(u32, u32, Vec<u8>)> = Vec::with_capacity(sprite_indices.len());
    let mut thumbnail = None;
    let mut enc = match frames.audio() {
        None => videogen_media::Mp4Encoder::new(width, height, frames.fps()).map_err(media_err)?,
        Some(a) => {
            let format = videogen_media::AudioFormat {
                sample_rate: a.sample_rate,
                channels: a.channels,
            };
            let mut enc =
                videogen_media::Mp4Encoder::with_audio(width, height, frames.fps(), format).map_err(media_err)?;
            enc.push_audio(&a.samples).map_err(media_err)?;
            enc
        }
    };
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
        let frame = frames.frame(i);
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

#[cfg(test)]
mod fault_tests;
