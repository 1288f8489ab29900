//! The job record and what workers and the API exchange about it.

use crate::ids::{TenantId, VideoId, WorkerId};
use crate::lifecycle::JobState;
use crate::spec::VideoSpec;
use crate::tier::Tier;
use serde::{Deserialize, Serialize};

/// Fine-grained progress description, shown to users as the `phase` field.
/// Unlike `status` it may gain values; clients must tolerate unknown ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    LoadingModel,
    ResumingFromCheckpoint,
    Generating,
    Checkpointing,
    Decoding,
    Moderating,
    Encoding,
    Finalizing,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl Phase {
    pub const ALL: [Phase; 13] = [
        Phase::Queued,
        Phase::LoadingModel,
        Phase::ResumingFromCheckpoint,
        Phase::Generating,
        Phase::Checkpointing,
        Phase::Decoding,
        Phase::Moderating,
        Phase::Encoding,
        Phase::Finalizing,
        Phase::Completed,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::LoadingModel => "loading_model",
            Phase::ResumingFromCheckpoint => "resuming_from_checkpoint",
            Phase::Generating => "generating",
            Phase::Checkpointing => "checkpointing",
            Phase::Decoding => "decoding",
            Phase::Moderating => "moderating",
            Phase::Encoding => "encoding",
            Phase::Finalizing => "finalizing",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Why a job failed, as shown in the Video object's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable machine-readable code, e.g. `cancelled`, `output_moderation_blocked`,
    /// `max_attempts_exceeded`, `model_error`.
    pub code: String,
    pub message: String,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A committed checkpoint: where its bytes are and which step they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub key: String,
    pub step: u32,
    pub attempt: u32,
    /// CRC32 of the blob, checked before a resume trusts it.
    pub crc32: u32,
    pub size_bytes: u64,
}

/// Blob keys of a completed job's assets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub video_key: String,
    pub thumbnail_key: String,
    pub spritesheet_key: String,
    pub video_bytes: u64,
}

/// Progress reported by the worker holding the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub step: u32,
    pub total_steps: u32,
    /// 0..=100, as shown in the Video object. May go down after a resume.
    pub percent: u8,
}

/// The right to work on one attempt of one job. Every worker write carries it;
/// the store rejects writes whose attempt is no longer the job's current one
/// (fencing), so a zombie worker can never overwrite a newer attempt's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: VideoId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub expires_at_ms: i64,
}

/// A runnable job as the scheduler sees it: just what a decision needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedJob {
    pub id: VideoId,
    pub tenant: TenantId,
    pub tier: Tier,
    pub model: String,
    /// When the job (re-)entered the queue.
    pub enqueued_at_ms: i64,
    /// Not runnable before this instant (a retry's backoff); `None`: now.
    /// The dispatcher holds such a job aside until it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
}

/// The whole job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: VideoId,
    pub tenant: TenantId,
    pub tier: Tier,
    pub spec: VideoSpec,
    pub state: JobState,
    pub phase: Phase,
    pub progress: u8,
    pub step: u32,
    /// Attempts started so far (0 while never leased).
    pub attempt: u32,
    pub created_at_ms: i64,
    pub enqueued_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub error: Option<JobError>,
    pub checkpoint: Option<CheckpointRef>,
    /// The checkpoint before `checkpoint`, kept until a newer one is committed.
    pub prev_checkpoint: Option<CheckpointRef>,
    pub outputs: Option<Outputs>,
    pub lease: Option<Lease>,
}

/// Error code of a job dead-lettered after spending its attempts.
pub const MAX_ATTEMPTS_EXCEEDED: &str = "max_attempts_exceeded";

impl Job {
    /// Failed with its attempts spent: an operator may re-drive it, so its
    /// checkpoints and input are kept (for a while).
    pub fn is_dead_letter(&self) -> bool {
        self.state == crate::JobState::Failed && self.error.as_ref().is_some_and(|e| e.code == MAX_ATTEMPTS_EXCEEDED)
    }
}
