//! The control plane as a worker sees it: the one seam between a worker and
//! everything it must not touch directly (database, bucket, scheduler).
//!
//! [`ControlPlane`] has two implementations with the same semantics:
//! `LocalControl` in `videogen-control` (in-process workers of `videogen
//! serve`, and the server's side of the internal worker API) and
//! `RemoteControl` in `videogen-worker` (the `videogen worker` process, which
//! calls that API over HTTP, see [`crate::wire`]). The runner is written once
//! against the trait, so a remote worker behaves exactly like a local one.
//!
//! Every call after `acquire` carries the [`Lease`]; its `attempt` is the
//! fencing token. A call whose attempt no longer owns the job fails with
//! [`ControlError::Stale`] and changes nothing: assets and checkpoints are
//! written under attempt-scoped keys and become visible only through a fenced
//! pointer commit in the store.

use crate::upload::Upload;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use videogen_core::blob::{BlobError, keys};
use videogen_core::store::StoreError;
use videogen_core::{AttemptEvent, CheckpointRef, Job, JobError, Lease, Progress, VideoId, WorkerId};

/// What a worker advertises when it asks for work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    /// Models loaded and ready (warm); the scheduler prefers jobs for these.
    pub loaded_models: Vec<String>,
    /// Runs on a preemptible (spot) machine.
    #[serde(default)]
    pub spot: bool,
    /// Accelerator memory class, e.g. `"80g"`; informational for now.
    #[serde(default)]
    pub memory_class: Option<String>,
    /// What loading a model it does not have costs this worker, in ms: a cold
    /// worker leaves a job to a busy warm one expected free sooner than that.
    #[serde(default)]
    pub model_load_ms: u64,
    /// The models it can run; `None` (older workers): any. A model that
    /// failed to load is left out, so nothing is leased for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<Vec<String>>,
    /// The state of each model it was configured with, for `/v1/models`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelReport>,
}

impl WorkerInfo {
    /// A worker that runs any model and reports nothing else.
    pub fn new(id: WorkerId) -> Self {
        Self {
            id,
            loaded_models: Vec::new(),
            spot: false,
            memory_class: None,
            model_load_ms: 0,
            serves: None,
            models: Vec::new(),
        }
    }
}

/// Where one of a worker's models stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Configured, not loaded: the first job pays the load.
    Cold,
    /// Loaded and ready.
    Warm,
    /// Failed to load (bad path, corrupt weights, host crashing): nothing is
    /// leased for it until it loads.
    Unavailable,
}

/// One model as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReport {
    pub id: String,
    pub state: ModelState,
    /// Content hash of the weights, once loaded (the model's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_hash: Option<String>,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A job handed to a worker: the lease (with its fencing token) and the job
/// record as of the lease (spec, checkpoint pointers, progress).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub lease: Lease,
    pub job: Job,
    /// Lease time-to-live; heartbeat every third of it.
    pub ttl_ms: i64,
}

/// What the control plane wants a running attempt to do, in reply to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    Continue,
    /// Stop at the next step boundary: cancelled, or the job is not ours any more.
    Cancel,
    /// Checkpoint at the next step boundary and give the job back.
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub directive: Directive,
    pub expires_at_ms: i64,
}

/// The three outputs of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Video,
    Thumbnail,
    Spritesheet,
}

impl AssetKind {
    pub const ALL: [AssetKind; 3] = [AssetKind::Video, AssetKind::Thumbnail, AssetKind::Spritesheet];

    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Video => "video",
            AssetKind::Thumbnail => "thumbnail",
            AssetKind::Spritesheet => "spritesheet",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The attempt-scoped key this asset is written under.
    pub fn key(self, lease: &Lease) -> String {
        match self {
            AssetKind::Video => keys::video(&lease.job_id, lease.attempt),
            AssetKind::Thumbnail => keys::thumbnail(&lease.job_id, lease.attempt),
            AssetKind::Spritesheet => keys::spritesheet(&lease.job_id, lease.attempt),
        }
    }
}

/// Why an attempt gives its job back without finishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseCause {
    /// The worker is shutting down or was told to (preemption notice, drain).
    Shutdown,
    /// The platform failed the attempt (its storage refused the outputs, the
    /// database was unavailable): not the job's fault, so its attempt is not
    /// charged.
    Infrastructure,
}

impl ReleaseCause {
    /// The re-queue reason the job's events show.
    pub fn requeue_reason(self) -> videogen_core::RequeueReason {
        match self {
            ReleaseCause::Shutdown => videogen_core::RequeueReason::Released,
            ReleaseCause::Infrastructure => videogen_core::RequeueReason::Infrastructure,
        }
    }
}

/// Where a job went after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    Requeued,
    DeadLettered,
}

/// Fleet-wide figures the control plane publishes to workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FleetInfo {
    /// Smoothed mean time between preemptions of one busy worker, seconds.
    pub mtbf_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The lease's attempt no longer owns the job (cancelled, deleted, or
    /// reclaimed by a newer attempt): abandon the attempt.
    #[error("lease on {job} attempt {attempt} is no longer valid")]
    Stale { job: VideoId, attempt: u32 },
    /// The request cannot succeed as sent (bad key, bad checksum, unknown job).
    #[error("rejected by the control plane: {0}")]
    Rejected(String),
    /// Infrastructure trouble (network, store or bucket): retrying may help,
    /// and the attempt that met it is not to blame (it gives the job back
    /// with [`ReleaseCause::Infrastructure`]).
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
}

impl ControlError {
    pub fn stale(lease: &Lease) -> Self {
        ControlError::Stale {
            job: lease.job_id.clone(),
            attempt: lease.attempt,
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StaleLease { job, attempt } => ControlError::Stale { job, attempt },
            StoreError::IllegalTransition(t) => ControlError::Rejected(t.to_string()),
            // The store cannot answer now: not the attempt's fault; the
            // worker gives the job back uncharged and asks again.
            e if e.is_retryable() => ControlError::Unavailable(e.to_string()),
            // A fault no retry fixes (a corrupt row): charged like an
            // error of the attempt, so it cannot loop for ever.
            other => ControlError::Rejected(other.to_string()),
        }
    }
}

impl From<BlobError> for ControlError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(key) => ControlError::Rejected(format!("no blob at {key}")),
            e @ BlobError::InvalidKey { .. } => ControlError::Rejected(e.to_string()),
            // Full, throttled, unreachable: the platform's trouble, not the job's.
            e if e.is_retryable() => ControlError::Unavailable(e.to_string()),
            other => ControlError::Rejected(other.to_string()),
        }
    }
}

/// The worker's whole view of the platform. See the module docs.
#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// Waits up to `wait` for a job this worker should run and leases it.
    /// `Ok(None)`: nothing came (ask again).
    async fn acquire(&self, worker: &WorkerInfo, wait: Duration) -> Result<Option<Assignment>, ControlError>;
    /// Renews the lease and reports progress.
    async fn heartbeat(&self, lease: &Lease, progress: &Progress) -> Result<HeartbeatReply, ControlError>;
    /// Reads a blob of this job (its checkpoints or input reference).
    async fn read_blob(&self, lease: &Lease, key: &str) -> Result<Bytes, ControlError>;
    /// Stores a checkpoint under an attempt-scoped key, checks it against
    /// `crc32` and [`crate::MAX_UPLOAD_BYTES`] (a refused body stores nothing), then commits the pointer (fenced). The previous checkpoint
    /// stays referenced until this commit lands.
    async fn write_checkpoint(
        &self,
        lease: &Lease,
        step: u32,
        crc32: u32,
        body: Upload,
    ) -> Result<CheckpointRef, ControlError>;
    /// Appends one of the events a worker may write to the job's log.
    async fn event(&self, lease: &Lease, event: &AttemptEvent) -> Result<(), ControlError>;
    /// Stores one output under its attempt-scoped key; invisible until `complete`.
    async fn put_asset(&self, lease: &Lease, kind: AssetKind, crc32: u32, body: Upload) -> Result<(), ControlError>;
    /// Commits the uploaded assets and completes the job (fenced, exactly once).
    async fn complete(&self, lease: &Lease, video_bytes: u64) -> Result<(), ControlError>;
    /// Fails the job for good (a deterministic error: retrying would not help).
    async fn fail(&self, lease: &Lease, error: &JobError) -> Result<(), ControlError>;
    /// Gives the job back to the queue at once (it resumes from its last checkpoint).
    async fn release(&self, lease: &Lease, cause: ReleaseCause) -> Result<(), ControlError>;
    /// After a retryable failure: requeue, or dead-letter once attempts are used up.
    async fn retry(&self, lease: &Lease, message: &str) -> Result<RetryOutcome, ControlError>;
    /// Fleet figures for the adaptive checkpoint interval.
    async fn fleet(&self) -> Result<FleetInfo, ControlError>;
}

/// Lets a `ControlError` be told apart from "the lease is gone" cheaply.
pub fn is_stale(e: &ControlError) -> bool {
    matches!(e, ControlError::Stale { .. })
}

/// The HTTP status a [`ControlError`] maps to on the internal worker API (and back).
pub fn status_of(e: &ControlError) -> u16 {
    match e {
        ControlError::Stale { .. } => 409,
        ControlError::Rejected(_) => 400,
        ControlError::Unavailable(_) => 503,
    }
}
