//! [`SqlStore`]: the store traits of `videogen_core::store`, implemented once
//! over a [`Backend`] (SQLite or PostgreSQL), with the store's logging and
//! metrics in this one place instead of in each backend.
//!
//! A backend only says *how* an operation of [`crate::ops`] runs: reads on
//! a snapshot, writes in one transaction ([`Backend::read`],
//! [`Backend::write`]), and, if it has a faster way, the hot-path writes
//! (PostgreSQL group-commits them). Everything else (which statements, in
//! which order, deciding with the state machine) is in `ops`.
//!
//! # What it records
//! - `videogen_store_op_seconds{op}`: latency of every call;
//! - `videogen_store_errors_total{op, kind}`: calls that failed in the
//!   backend, `kind` = `unavailable` (retrying may help) or `fault`;
//! - one log line per job lifecycle change (submitted, leased, completed,
//!   failed, released, requeued, dead-lettered, cancelled, re-driven,
//!   expired, deleted; checkpoints at debug level).

use crate::exec::{Op, Tx};
use crate::ops;
use crate::ops::maintenance::Reclaim;
use async_trait::async_trait;
use std::future::Future;
use std::time::{Duration, Instant};
use videogen_core::store::{
    ApiKey, AttemptStore, CredentialStore, Idempotency, JobStore, LeadershipStore, ListQuery, MaintenanceStore, NewJob,
    Reclaimed, StoreError, Submitted, WorkerToken,
};
use videogen_core::{
    CheckpointRef, EventPayload, Job, JobError, JobEvent, Lease, Outputs, Progress, QueuedJob, RequeueReason, TenantId,
    VideoId, WorkerId,
};

/// How a database runs the operations of [`crate::ops`].
pub trait Backend: Send + Sync + 'static {
    /// The statement runner an operation gets.
    type Tx<'t>: Tx;

    /// Runs a read-only operation on a consistent snapshot.
    fn read<R, F>(&self, op: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static;

    /// Runs an operation in one transaction: all of it commits, or none.
    /// Answers only once committed.
    fn write<R, F>(&self, op: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static;

    // ---- the hot path, which a backend may run its own way

    /// A submit without an idempotency key (nothing to read first).
    fn submit_unkeyed(&self, job: NewJob) -> impl Future<Output = Result<Submitted, StoreError>> + Send {
        self.write(move |tx| Box::pin(ops::jobs::submit(tx, job, None)))
    }

    fn lease(
        &self,
        id: VideoId,
        worker: WorkerId,
        now_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        self.write(move |tx| Box::pin(async move { ops::attempts::lease(tx, &id, &worker, now_ms, ttl_ms).await }))
    }

    fn heartbeat(
        &self,
        lease: Lease,
        progress: Progress,
        now_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send {
        self.write(move |tx| {
            Box::pin(async move { ops::attempts::heartbeat(tx, &lease, &progress, now_ms, ttl_ms).await })
        })
    }

    fn commit_checkpoint(
        &self,
        lease: Lease,
        ck: CheckpointRef,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.write(move |tx| Box::pin(async move { ops::attempts::commit_checkpoint(tx, &lease, &ck, now_ms).await }))
    }

    fn complete(
        &self,
        lease: Lease,
        outputs: Outputs,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send {
        self.write(move |tx| {
            Box::pin(async move { ops::attempts::complete(tx, &lease, &outputs, now_ms, expires_at_ms).await })
        })
    }
}

/// The job store over a [`Backend`]: [`crate::SqliteStore`] and
/// [`crate::PgStore`] are this with their backend.
pub struct SqlStore<B> {
    pub(crate) backend: B,
    /// Longest any one call may take; past it the call answers
    /// [`StoreError::Unavailable`].
    op_deadline: Duration,
}

/// The default of [`SqlStore::with_op_deadline`]: far above any healthy
/// call (milliseconds), short enough that a database that stopped
/// answering (a black-holed network, a hung disk) fails requests with a
/// 503 instead of piling them up.
pub const OP_DEADLINE: Duration = Duration::from_secs(5);

impl<B> SqlStore<B> {
    pub(crate) fn new(backend: B) -> Self {
        Self {
            backend,
            op_deadline: OP_DEADLINE,
        }
    }

    /// Bounds every call by `deadline` instead of [`OP_DEADLINE`]. A write
    /// cut off by it may still commit: callers retry idempotently (submits
    /// by idempotency key, worker writes fenced by attempt).
    pub fn with_op_deadline(mut self, deadline: Duration) -> Self {
        self.op_deadline = deadline;
        self
    }

    /// Times `call` (bounded by the deadline), counts its backend failures,
    /// and logs those.
    async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_deadline, observe(op, call)).await {
            Ok(out) => out,
            Err(_) => {
                metrics::counter!("videogen_store_errors_total", "op" => op, "kind" => "timeout").increment(1);
                tracing::warn!(op, deadline = ?self.op_deadline, "store call timed out");
                Err(StoreError::unavailable(format!(
                    "{op} did not answer within {:?}",
                    self.op_deadline
                )))
            }
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

impl<B: Clone> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            op_deadline: self.op_deadline,
        }
    }
}

/// Times `call`, counts its backend failures, and logs those.
async fn observe<T>(op: &'static str, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let started = Instant::now();
    let out = call.await;
    metrics::histogram!("videogen_store_op_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    match &out {
        Err(e @ StoreError::Unavailable(_)) => {
            metrics::counter!("videogen_store_errors_total", "op" => op, "kind" => "unavailable").increment(1);
            tracing::warn!(op, error = %e, "store unavailable");
        }
        Err(e @ StoreError::Fault(_)) => {
            metrics::counter!("videogen_store_errors_total", "op" => op, "kind" => "fault").increment(1);
            tracing::error!(op, error = %e, "store fault");
        }
        _ => {}
    }
    out
}

/// Logs what a reclaim did, one line per job.
fn log_reclaimed(done: &[Reclaimed], reason: &'static str) {
    for r in done {
        match r {
            Reclaimed::Requeued(q) => tracing::info!(job = %q.id, reason, "job requeued"),
            Reclaimed::DeadLettered(id) => {
                tracing::warn!(job = %id, reason, "job dead-lettered: attempts exhausted");
            }
        }
    }
}

/// The cursor of a credential listing.
fn credential_cursor<C: ops::credentials::Credential>(after: Option<&C>) -> Option<(i64, String)> {
    after.map(|c| {
        let (at, id) = c.cursor();
        (at, id.to_owned())
    })
}

#[async_trait]
impl<B: Backend> CredentialStore for SqlStore<B> {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let key = key.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::credentials::insert(tx, &key).await }));
        self.observe("insert_api_key", call).await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_owned();
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::credentials::by_hash(tx, &hash).await }));
        self.observe("api_key_by_hash", call).await
    }

    async fn list_api_keys(&self, after: Option<&ApiKey>, limit: u32) -> Result<Vec<ApiKey>, StoreError> {
        let after = credential_cursor(after);
        let call = self
            .backend
            .read(move |tx| Box::pin(ops::credentials::list(tx, after, limit)));
        self.observe("list_api_keys", call).await
    }

    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::credentials::revoke::<ApiKey>(tx, &id, now_ms).await }));
        self.observe("revoke_api_key", call).await
    }

    async fn insert_worker_token(&self, token: &WorkerToken) -> Result<(), StoreError> {
        let token = token.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::credentials::insert(tx, &token).await }));
        self.observe("insert_worker_token", call).await
    }

    async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<WorkerToken>, StoreError> {
        let hash = hash.to_owned();
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::credentials::by_hash(tx, &hash).await }));
        self.observe("worker_token_by_hash", call).await
    }

    async fn list_worker_tokens(
        &self,
        after: Option<&WorkerToken>,
        limit: u32,
    ) -> Result<Vec<WorkerToken>, StoreError> {
        let after = credential_cursor(after);
        let call = self
            .backend
            .read(move |tx| Box::pin(ops::credentials::list(tx, after, limit)));
        self.observe("list_worker_tokens", call).await
    }

    async fn revoke_worker_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::credentials::revoke::<WorkerToken>(tx, &id, now_ms).await }));
        self.observe("revoke_worker_token", call).await
    }
}

#[async_trait]
impl<B: Backend> JobStore for SqlStore<B> {
    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
        let submitted = match idem {
            None => self.observe("submit", self.backend.submit_unkeyed(job)).await?,
            Some(idem) => {
                let call = self
                    .backend
                    .write(move |tx| Box::pin(ops::jobs::submit(tx, job, Some(idem))));
                self.observe("submit", call).await?
            }
        };
        match &submitted {
            Submitted::Created(j) => {
                tracing::info!(job = %j.id, tenant = %j.tenant, tier = j.tier.as_str(), model = %j.spec.model, "job submitted");
            }
            Submitted::Replayed(j) => tracing::debug!(job = %j.id, "idempotent submit replayed"),
        }
        Ok(submitted)
    }

    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::jobs::job(tx, &id).await }));
        self.observe("job", call).await
    }

    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let (tenant, q) = (tenant.clone(), q.clone());
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::jobs::list(tx, &tenant, &q).await }));
        self.observe("list_jobs", call).await
    }

    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::jobs::events(tx, &id, after_seq, limit).await }));
        self.observe("events", call).await
    }

    async fn queued_jobs(&self, after: Option<&QueuedJob>, limit: u32) -> Result<Vec<QueuedJob>, StoreError> {
        let after = after.map(|q| (q.enqueued_at_ms, q.id.as_str().to_owned()));
        let call = self
            .backend
            .read(move |tx| Box::pin(ops::jobs::queued_jobs(tx, after, limit)));
        self.observe("queued_jobs", call).await
    }

    async fn queued_job(&self, id: &VideoId) -> Result<Option<QueuedJob>, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .read(move |tx| Box::pin(async move { ops::jobs::queued_job(tx, &id).await }));
        self.observe("queued_job", call).await
    }

    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::jobs::cancel(tx, &id, now_ms).await }));
        let job = self.observe("cancel", call).await?;
        tracing::info!(job = %job.id, attempt = job.attempt, "job cancelled");
        Ok(job)
    }

    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::jobs::delete(tx, &id).await }));
        let deleted = self.observe("delete", call).await?;
        if let Some(job) = &deleted {
            tracing::info!(job = %job.id, "job deleted");
        }
        Ok(deleted)
    }

    async fn append_event(&self, id: &VideoId, event: &EventPayload, now_ms: i64) -> Result<i64, StoreError> {
        let (id, event) = (id.clone(), event.clone());
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::jobs::append_event(tx, &id, &event, now_ms).await }));
        self.observe("append_event", call).await
    }
}

#[async_trait]
impl<B: Backend> AttemptStore for SqlStore<B> {
    async fn lease(
        &self,
        id: &VideoId,
        worker: &WorkerId,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let call = self.backend.lease(id.clone(), worker.clone(), now_ms, ttl_ms);
        let lease = self.observe("lease", call).await?;
        if let Some(l) = &lease {
            tracing::info!(job = %l.job_id, worker = %l.worker, attempt = l.attempt, "job leased");
        }
        Ok(lease)
    }

    async fn heartbeat(&self, lease: &Lease, progress: &Progress, now_ms: i64, ttl_ms: i64) -> Result<i64, StoreError> {
        let call = self.backend.heartbeat(lease.clone(), *progress, now_ms, ttl_ms);
        self.observe("heartbeat", call).await
    }

    async fn commit_checkpoint(&self, lease: &Lease, ck: &CheckpointRef, now_ms: i64) -> Result<(), StoreError> {
        let call = self.backend.commit_checkpoint(lease.clone(), ck.clone(), now_ms);
        self.observe("commit_checkpoint", call).await?;
        tracing::debug!(job = %lease.job_id, attempt = lease.attempt, step = ck.step, "checkpoint committed");
        Ok(())
    }

    async fn complete(
        &self,
        lease: &Lease,
        outputs: &Outputs,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Job, StoreError> {
        let call = self
            .backend
            .complete(lease.clone(), outputs.clone(), now_ms, expires_at_ms);
        let job = self.observe("complete", call).await?;
        tracing::info!(job = %job.id, attempt = lease.attempt, "job completed");
        Ok(job)
    }

    async fn fail(&self, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError> {
        let (l, e) = (lease.clone(), error.clone());
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::attempts::fail(tx, &l, &e, now_ms).await }));
        self.observe("fail", call).await?;
        tracing::info!(job = %lease.job_id, attempt = lease.attempt, code = %error.code, reason = %error.message, "job failed");
        Ok(())
    }

    async fn release(
        &self,
        lease: &Lease,
        reason: RequeueReason,
        now_ms: i64,
        not_before_ms: Option<i64>,
    ) -> Result<QueuedJob, StoreError> {
        let l = lease.clone();
        let call = self.backend.write(move |tx| {
            Box::pin(async move { ops::attempts::release(tx, &l, reason, now_ms, not_before_ms).await })
        });
        let queued = self.observe("release", call).await?;
        tracing::info!(job = %lease.job_id, attempt = lease.attempt, reason = reason.as_str(), "job released back to the queue");
        Ok(queued)
    }

    async fn requeue_or_dead_letter(
        &self,
        lease: &Lease,
        reason_message: &str,
        now_ms: i64,
        max_attempts: u32,
        not_before_ms: Option<i64>,
    ) -> Result<Reclaimed, StoreError> {
        let (l, msg) = (lease.clone(), reason_message.to_owned());
        let call = self.backend.write(move |tx| {
            Box::pin(async move {
                ops::attempts::requeue_or_dead_letter(tx, &l, &msg, now_ms, max_attempts, not_before_ms).await
            })
        });
        let done = self.observe("requeue_or_dead_letter", call).await?;
        log_reclaimed(std::slice::from_ref(&done), "error");
        Ok(done)
    }
}

#[async_trait]
impl<B: Backend> MaintenanceStore for SqlStore<B> {
    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32, limit: u32) -> Result<Vec<Reclaimed>, StoreError> {
        let call = self.backend.write(move |tx| {
            Box::pin(ops::maintenance::reclaim(
                tx,
                Reclaim::ExpiredBefore(now_ms),
                now_ms,
                max_attempts,
                limit,
            ))
        });
        let done = self.observe("reclaim_expired", call).await?;
        log_reclaimed(&done, "lease_expired");
        Ok(done)
    }

    async fn reclaim_node(
        &self,
        node: &str,
        now_ms: i64,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<Reclaimed>, StoreError> {
        let node = node.to_owned();
        let call = self.backend.write(move |tx| {
            Box::pin(
                async move { ops::maintenance::reclaim(tx, Reclaim::OfNode(&node), now_ms, max_attempts, limit).await },
            )
        });
        let done = self.observe("reclaim_node", call).await?;
        log_reclaimed(&done, "node_restarted");
        Ok(done)
    }

    async fn expire_due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        let call = self
            .backend
            .write(move |tx| Box::pin(ops::maintenance::expire_due(tx, now_ms, limit)));
        let expired = self.observe("expire_due", call).await?;
        for job in &expired {
            tracing::info!(job = %job.id, "job expired");
        }
        Ok(expired)
    }

    async fn dead_letters(&self, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError> {
        let call = self
            .backend
            .read(move |tx| Box::pin(ops::maintenance::dead_letters(tx, limit, after)));
        self.observe("dead_letters", call).await
    }

    async fn redrive(&self, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::maintenance::redrive(tx, &id, now_ms).await }));
        let queued = self.observe("redrive", call).await?;
        tracing::info!(job = %queued.id, "dead letter re-driven");
        Ok(queued)
    }

    async fn stale_dead_letter_checkpoints(&self, before_ms: i64, limit: u32) -> Result<Vec<VideoId>, StoreError> {
        let call = self
            .backend
            .read(move |tx| Box::pin(ops::maintenance::stale_dead_letter_checkpoints(tx, before_ms, limit)));
        self.observe("stale_dead_letter_checkpoints", call).await
    }

    async fn forget_dead_letter_checkpoints(&self, id: &VideoId) -> Result<bool, StoreError> {
        let id = id.clone();
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::maintenance::forget_dead_letter_checkpoints(tx, &id).await }));
        self.observe("forget_dead_letter_checkpoints", call).await
    }

    async fn probe_write(&self, node: &str, now_ms: i64) -> Result<(), StoreError> {
        let node = node.to_owned();
        let call = self.backend.write(move |tx| {
            Box::pin(async move {
                tx.exec(crate::sql::WRITE_PROBE, crate::exec::params![node.as_str(), now_ms])
                    .await
                    .map(drop)
            })
        });
        self.observe("probe_write", call).await
    }
}

#[async_trait]
impl<B: Backend> LeadershipStore for SqlStore<B> {
    async fn try_lead(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let call = self.backend.write(move |tx| {
            Box::pin(async move { ops::leadership::try_lead(tx, &name, &holder, now_ms, ttl_ms).await })
        });
        self.observe("try_lead", call).await
    }

    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let call = self
            .backend
            .write(move |tx| Box::pin(async move { ops::leadership::resign(tx, &name, &holder).await }));
        self.observe("resign", call).await
    }
}
