//! The store seam: the durable source of truth for jobs, their event logs,
//! API keys, worker tokens and idempotency records.
//!
//! The seam is split by concern ([`CredentialStore`], [`JobStore`],
//! [`AttemptStore`], [`MaintenanceStore`], [`LeadershipStore`]); [`Store`] is
//! all of them. Every method is one transaction and answers once durable.
//! Worker writes take the [`Lease`] and are fenced on `(job id, attempt,
//! state = running)`: if another attempt owns the job now, or it was
//! cancelled, they fail with [`StoreError::StaleLease`] and change nothing.
//! Every read is bounded by a limit; listings page with a cursor.

use crate::event::{EventPayload, JobEvent};
use crate::ids::{TenantId, VideoId, WorkerId};
use crate::job::{CheckpointRef, Job, JobError, Lease, Outputs, Progress, QueuedJob};
use crate::lifecycle::{IllegalTransition, RequeueReason};
use crate::spec::VideoSpec;
use crate::tier::Tier;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A backend error with its cause kept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// The backend cannot do it now (connection lost, pool exhausted, database
    /// locked or shutting down, disk full, a deadlock it rolled back): the
    /// same call may succeed later. Nothing of the call was applied.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The backend failed in a way retrying will not fix (a corrupt row, a
    /// violated constraint, a statement the schema does not take).
    #[error("store fault: {0}")]
    Fault(#[source] BoxError),
}

impl StoreError {
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        StoreError::Unavailable(e.into())
    }

    pub fn fault(e: impl Into<BoxError>) -> Self {
        StoreError::Fault(e.into())
    }

    /// A value in the store that does not decode: a fault.
    pub fn corrupt(what: &str, detail: impl std::fmt::Display) -> Self {
        StoreError::Fault(format!("corrupt {what} in the job store: {detail}").into())
    }

    /// Whether the same call may succeed later (the API answers 503 then,
    /// 500 for a fault).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
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

/// Credentials: tenant API keys and worker tokens. Both kinds are stored
/// the same way (only a hash of the secret) in tables of their own, so a
/// worker token can never pass as a tenant key, nor the reverse.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Keys in creation order, after `after` (the last page's last key).
    async fn list_api_keys(&self, after: Option<&ApiKey>, limit: u32) -> Result<Vec<ApiKey>, StoreError>;
    /// `false` if no such key or already revoked.
    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    async fn insert_worker_token(&self, token: &WorkerToken) -> Result<(), StoreError>;
    async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<WorkerToken>, StoreError>;
    /// Tokens in creation order, after `after` (the last page's last token).
    async fn list_worker_tokens(&self, after: Option<&WorkerToken>, limit: u32)
    -> Result<Vec<WorkerToken>, StoreError>;
    /// `false` if no such token or already revoked.
    async fn revoke_worker_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
}

/// Jobs as tenants and the API see them: submission, reads, cancel, delete.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Inserts a queued job and its `created` event, or replays the job of an
    /// earlier request with the same idempotency key and body.
    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError>;
    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError>;
    /// A tenant's jobs in id order (ids are time-ordered), starting after `after`.
    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError>;
    /// Events with `seq > after_seq`, oldest first, at most `limit`.
    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;
    /// Queued jobs oldest first (by `enqueued_at_ms`, then id), after
    /// `after` (the last page's last job), at most `limit`: how the
    /// scheduler is seeded on start-up, page by page.
    async fn queued_jobs(&self, after: Option<&QueuedJob>, limit: u32) -> Result<Vec<QueuedJob>, StoreError>;
    /// The job if it is queued: how the scheduler leader picks up a job
    /// another node made runnable.
    async fn queued_job(&self, id: &VideoId) -> Result<Option<QueuedJob>, StoreError>;
    /// Cancels a queued or running job (a running job's worker finds its lease stale).
    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError>;
    /// Removes the job and its events; returns it so the caller can delete its blobs.
    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError>;
    /// Records an event without a state change (e.g. `resumed`); its seq.
    async fn append_event(&self, id: &VideoId, event: &EventPayload, now_ms: i64) -> Result<i64, StoreError>;
}

/// The worker protocol: every write after `lease` is fenced on
/// `(job id, attempt, state = running)`.
#[async_trait]
pub trait AttemptStore: Send + Sync {
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
    /// Running → queued through no fault of the job (`reason` is
    /// [`RequeueReason::Released`] or [`RequeueReason::Infrastructure`]):
    /// the attempt is not charged to the job's budget, and the job is
    /// runnable again from `not_before_ms` (`None`: at once). The next
    /// attempt resumes from the last checkpoint.
    async fn release(
        &self,
        lease: &Lease,
        reason: RequeueReason,
        now_ms: i64,
        not_before_ms: Option<i64>,
    ) -> Result<QueuedJob, StoreError>;
    /// After an attempt's retryable error: running → queued (reason `error`,
    /// runnable from `not_before_ms`, the retry's backoff) while the job's
    /// budget of `max_attempts` since its last re-drive lasts, else
    /// dead-lettered with `max_attempts_exceeded` and the error in the
    /// message. Fenced like [`AttemptStore::release`]; atomic.
    async fn requeue_or_dead_letter(
        &self,
        lease: &Lease,
        reason_message: &str,
        now_ms: i64,
        max_attempts: u32,
        not_before_ms: Option<i64>,
    ) -> Result<Reclaimed, StoreError>;
}

/// What the scheduler leader's housekeeping and operators do to jobs.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Re-queues up to `limit` running jobs whose lease expired (or
    /// dead-letters them after `max_attempts`); call again while it returns
    /// `limit` of them.
    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32, limit: u32) -> Result<Vec<Reclaimed>, StoreError>;
    /// Re-queues up to `limit` running jobs leased by a worker of `node`,
    /// whatever their expiry: that node restarted, so its in-process workers
    /// are gone.
    async fn reclaim_node(
        &self,
        node: &str,
        now_ms: i64,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<Reclaimed>, StoreError>;
    /// Up to `limit` completed jobs whose `expires_at` passed → expired;
    /// returned so their blobs can go.
    async fn expire_due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError>;
    /// Dead-lettered jobs (`failed` with `max_attempts_exceeded`), oldest
    /// first by id, starting after `after`.
    async fn dead_letters(&self, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError>;
    /// Dead letter → queued with a fresh budget of attempts, its error cleared
    /// and a `redriven` event. `attempt` keeps growing (it is the fencing
    /// token), so a lease from before the re-drive stays stale. `NotFound` for
    /// an unknown id; `IllegalTransition` for a job that is not a dead letter.
    async fn redrive(&self, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError>;
    /// Up to `limit` dead letters whose last event is older than
    /// `before_ms` and that still point at checkpoints.
    async fn stale_dead_letter_checkpoints(&self, before_ms: i64, limit: u32) -> Result<Vec<VideoId>, StoreError>;
    /// Drops a dead letter's checkpoint pointers (after their bytes were
    /// deleted); false if it is no longer a dead letter.
    async fn forget_dead_letter_checkpoints(&self, id: &VideoId) -> Result<bool, StoreError>;
    /// Writes `node`'s row of the write probe: proves the database accepts
    /// writes from this node now (readiness), which a read cannot.
    async fn probe_write(&self, node: &str, now_ms: i64) -> Result<(), StoreError>;
}

/// Coordination between nodes: which one is the scheduler leader.
#[async_trait]
pub trait LeadershipStore: Send + Sync {
    /// Takes the leader lease `name` for `holder` until `now_ms + ttl_ms` if
    /// it is free, expired or already `holder`'s (a renewal). Returns the
    /// lease's term while `holder` holds it (it grows with every change of
    /// holder), `None` while another node does.
    async fn try_lead(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<i64>, StoreError>;
    /// Gives the lease up if `holder` holds it, so a clean shutdown hands
    /// over at once instead of after the lease runs out.
    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// The whole store: every concern. Components that need one concern take
/// that trait (`Arc<dyn Store>` upcasts to it).
pub trait Store: CredentialStore + JobStore + AttemptStore + MaintenanceStore + LeadershipStore + 'static {}

impl<T> Store for T where T: CredentialStore + JobStore + AttemptStore + MaintenanceStore + LeadershipStore + 'static {}

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

/// The store traits, for `use videogen_core::store::prelude::*` where a
/// caller uses several concerns.
pub mod prelude {
    pub use super::{AttemptStore, CredentialStore, JobStore, LeadershipStore, MaintenanceStore, Store};
}
