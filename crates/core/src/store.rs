//! The store seam: the durable source of truth for jobs, their event logs,
//! API keys, worker tokens and idempotency records.
//!
//! Every method is one transaction. Worker writes take the [`Lease`] and are
//! fenced on `(job id, attempt, state = running)`: if another attempt owns the
//! job now, or it was cancelled, they fail with [`StoreError::StaleLease`] and
//! change nothing.

use crate::ids::{TenantId, VideoId, WorkerId};
use crate::job::{CheckpointRef, Job, JobError, JobEvent, Lease, Outputs, Progress, QueuedJob};
use crate::lifecycle::{IllegalTransition, RequeueReason};
use crate::spec::VideoSpec;
use crate::tier::Tier;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(VideoId),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The lease's attempt no longer owns the job: the caller must abandon it.
    #[error("lease on {job} attempt {attempt} is no longer valid")]
    StaleLease { job: VideoId, attempt: u32 },
    /// The idempotency key was used before with a different request body.
    #[error("idempotency key was already used with a different request")]
    IdempotencyConflict,
    #[error("store backend: {0}")]
    Backend(String),
}

/// An API key as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public identifier, e.g. `key_…`; shown in listings and used to revoke.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    /// First characters of the secret, to recognise it in listings.
    pub prefix: String,
    pub tenant: TenantId,
    pub tier: Tier,
    pub admin: bool,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A worker token as stored: credentials of a worker process, separate from
/// tenant API keys so a worker can never act as a tenant (and the reverse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerToken {
    /// Public identifier, e.g. `wtok_…`; shown in listings and used to revoke.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: String,
    /// First characters of the secret (`vgw_…`), to recognise it in listings.
    pub prefix: String,
    /// Operator's label, e.g. the host the worker runs on.
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: VideoId,
    pub tenant: TenantId,
    pub tier: Tier,
    pub spec: VideoSpec,
    pub now_ms: i64,
}

/// Idempotency record for a submission: `(tenant, key)` is unique; `body_hash`
/// identifies the request so a different body under the same key is a conflict.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub body_hash: String,
}

#[derive(Debug, Clone)]
pub enum Submitted {
    Created(Job),
    /// Same key and body as an earlier request: that request's job.
    Replayed(Job),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub after: Option<VideoId>,
    pub limit: u32,
    pub order: Order,
}

/// What the reaper or a restart did to one job.
#[derive(Debug, Clone)]
pub enum Reclaimed {
    Requeued(QueuedJob),
    /// Attempts exhausted: moved to `failed` (dead letter).
    DeadLettered(VideoId),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- API keys
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// `false` if no such key or already revoked.
    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    // ---- submission and reads
    /// Inserts a queued job and its `created` event, or replays the job of an
    /// earlier request with the same idempotency key and body.
    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError>;
    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError>;
    /// A tenant's jobs in id order (ids are time-ordered), starting after `after`.
    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError>;
    /// Events with `seq > after_seq`, oldest first, at most `limit`.
    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;
    /// Every queued job, oldest first: seeds the scheduler on start-up.
    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError>;
    /// The job if it is queued: how the scheduler leader picks up a job
    /// another node made runnable.
    async fn queued_job(&self, id: &VideoId) -> Result<Option<QueuedJob>, StoreError>;

    // ---- user actions
    /// Cancels a queued or running job (a running job's worker finds its lease stale).
    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError>;
    /// Removes the job and its events; returns it so the caller can delete its blobs.
    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError>;

    // ---- worker protocol (fenced)
    /// Queued → running with attempt + 1. `None` if the job is no longer queued.
    async fn lease(
        &self,
        id: &VideoId,
        worker: &WorkerId,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError>;
    /// Records progress and extends the lease; returns the new expiry.
    async fn heartbeat(&self, lease: &Lease, progress: &Progress, now_ms: i64, ttl_ms: i64) -> Result<i64, StoreError>;
    /// Points the job at a new checkpoint, keeping the previous one.
    async fn commit_checkpoint(&self, lease: &Lease, ck: &CheckpointRef, now_ms: i64) -> Result<(), StoreError>;
    /// Running → completed; the outputs become visible in the same transaction.
    async fn complete(
        &self,
        lease: &Lease,
        outputs: &Outputs,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Job, StoreError>;
    /// Running → failed for good.
    async fn fail(&self, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError>;
    /// Running → queued on purpose; the next attempt resumes from the last checkpoint.
    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<QueuedJob, StoreError>;

    // ---- housekeeping
    /// Re-queues running jobs whose lease expired (or dead-letters them after
    /// `max_attempts`).
    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError>;
    /// Re-queues every running job leased by a worker of `node`, whatever its
    /// expiry: that node restarted, so its in-process workers are gone.
    async fn reclaim_node(&self, node: &str, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError>;
    /// Completed jobs whose `expires_at` passed → expired; returned so their blobs can go.
    async fn expire_due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError>;
    /// Records an event without a state change (e.g. `resumed` with the step).
    async fn append_event(
        &self,
        id: &VideoId,
        kind: &str,
        data: serde_json::Value,
        now_ms: i64,
    ) -> Result<i64, StoreError>;

    // ---- worker tokens
    async fn insert_worker_token(&self, token: &WorkerToken) -> Result<(), StoreError>;
    async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<WorkerToken>, StoreError>;
    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>, StoreError>;
    /// `false` if no such token or already revoked.
    async fn revoke_worker_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    // ---- dead letters
    /// Dead-lettered jobs (`failed` with `max_attempts_exceeded`), oldest
    /// first by id, starting after `after`.
    async fn dead_letters(&self, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError>;
    /// Dead letter → queued with a fresh budget of attempts, its error cleared
    /// and a `redriven` event. `attempt` keeps growing (it is the fencing
    /// token), so a lease from before the re-drive stays stale. `NotFound` for
    /// an unknown id; `IllegalTransition` for a job that is not a dead letter.
    async fn redrive(&self, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError>;
    /// After an attempt's retryable error: running → queued (reason `error`)
    /// while the job's budget of `max_attempts` since its last re-drive
    /// lasts, else dead-lettered with `max_attempts_exceeded` and the error in
    /// the message. Fenced like [`Store::release`]; atomic.
    async fn requeue_or_dead_letter(
        &self,
        lease: &Lease,
        reason_message: &str,
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<Reclaimed, StoreError>;

    // ---- coordination between nodes
    /// Takes the leader lease `name` for `holder` until `now_ms + ttl_ms` if
    /// it is free, expired or already `holder`'s (a renewal). Returns the
    /// lease's term while `holder` holds it (it grows with every change of
    /// holder), `None` while another node does.
    async fn try_lead(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<i64>, StoreError>;
    /// Gives the lease up if `holder` holds it, so a clean shutdown hands
    /// over at once instead of after the lease runs out.
    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// The upsert behind [`Store::try_lead`], in the SQL both backends accept
/// (`$n` placeholders; SQLite reads them as numbered parameters): $1 name,
/// $2 holder, $3 new expiry, $4 now.
pub const TRY_LEAD_SQL: &str = "INSERT INTO leader_leases (name, holder, expires_at_ms, term) VALUES ($1, $2, $3, 1) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms, \
     term = leader_leases.term + CASE WHEN leader_leases.holder = excluded.holder THEN 0 ELSE 1 END \
     WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at_ms <= $4 \
     RETURNING term";

/// The statement behind [`Store::resign`]: $1 name, $2 holder.
pub const RESIGN_SQL: &str = "DELETE FROM leader_leases WHERE name = $1 AND holder = $2";

/// A wake-up from another node: something changed in the store. It carries
/// no data; the receiver re-reads the store, which stays the source of truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// The job became runnable (submitted, re-queued, re-driven).
    Runnable(VideoId),
    /// The job has a new event.
    Changed(VideoId),
    /// Wake-ups may have been missed (a reconnect): re-read everything watched.
    Resync,
}

/// Why [`Reclaimed::Requeued`] happened, for the event log.
pub fn reclaim_reason(node_restart: bool) -> RequeueReason {
    if node_restart {
        RequeueReason::NodeRestarted
    } else {
        RequeueReason::LeaseExpired
    }
}
