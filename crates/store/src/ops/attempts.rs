//! The worker protocol: lease, then writes fenced on `(id, state = running,
//! attempt)`. A write whose compare-and-set matches no row lost the job (to
//! a cancel, or a newer attempt) and answers [`StoreError::StaleLease`]
//! having changed nothing.

use super::{ERROR_MESSAGE_CHARS_MAX, MAX_ATTEMPTS_EXCEEDED, next, outbox, stale, truncate};
use crate::exec::{Columns, Tx, params};
use crate::{rows, sql};
use videogen_core::store::{Reclaimed, StoreError};
use videogen_core::{
    CheckpointRef, EventPayload, Job, JobError, JobState, Lease, Outputs, Phase, Progress, QueuedJob, RequeueReason,
    Transition, VideoId, WorkerId,
};

fn attempt(row: &dyn Columns) -> Result<u32, StoreError> {
    rows::get_u32(row, "attempt")
}

pub(crate) async fn lease(
    tx: &mut impl Tx,
    id: &VideoId,
    worker: &WorkerId,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Option<Lease>, StoreError> {
    let from = JobState::Queued;
    let to = next(from, Transition::Lease)?;
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    let (kind, data) = outbox(&EventPayload::Leased { worker: worker.clone() });
    let leased = tx
        .row(
            sql::LEASE,
            params![
                to.as_str(),
                Phase::LoadingModel.as_str(),
                Phase::ResumingFromCheckpoint.as_str(),
                worker.as_str(),
                expires_at_ms,
                now_ms,
                kind,
                data,
                id.as_str(),
                from.as_str()
            ],
            attempt,
        )
        .await?;
    Ok(leased.map(|attempt| Lease {
        job_id: id.clone(),
        attempt,
        worker: worker.clone(),
        expires_at_ms,
    }))
}

/// The new lease expiry.
pub(crate) async fn heartbeat(
    tx: &mut impl Tx,
    lease: &Lease,
    progress: &Progress,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<i64, StoreError> {
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    let (kind, data) = outbox(&EventPayload::Progress {
        step: progress.step,
        total_steps: progress.total_steps,
    });
    let changed = tx
        .exec(
            sql::HEARTBEAT,
            params![
                progress.phase.as_str(),
                progress.percent.min(100),
                kind,
                now_ms,
                data,
                progress.step,
                progress.total_steps,
                expires_at_ms,
                lease.job_id.as_str(),
                JobState::Running.as_str(),
                lease.attempt
            ],
        )
        .await?;
    if changed == 0 {
        return Err(stale(lease));
    }
    Ok(expires_at_ms)
}

pub(crate) async fn commit_checkpoint(
    tx: &mut impl Tx,
    lease: &Lease,
    ck: &CheckpointRef,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (kind, data) = outbox(&EventPayload::Checkpoint {
        step: ck.step,
        key: ck.key.clone(),
    });
    let changed = tx
        .exec(
            sql::COMMIT_CHECKPOINT,
            params![
                rows::to_json(ck)?,
                ck.step,
                kind,
                now_ms,
                data,
                lease.job_id.as_str(),
                JobState::Running.as_str(),
                lease.attempt
            ],
        )
        .await?;
    if changed == 0 {
        return Err(stale(lease));
    }
    Ok(())
}

pub(crate) async fn complete(
    tx: &mut impl Tx,
    lease: &Lease,
    outputs: &Outputs,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<Job, StoreError> {
    let from = JobState::Running;
    let to = next(from, Transition::Complete)?;
    let (kind, data) = outbox(&EventPayload::Completed { expires_at_ms });
    tx.row(
        sql::COMPLETE,
        params![
            to.as_str(),
            Phase::Completed.as_str(),
            rows::to_json(outputs)?,
            now_ms,
            expires_at_ms,
            kind,
            data,
            lease.job_id.as_str(),
            from.as_str(),
            lease.attempt
        ],
        rows::job,
    )
    .await?
    .ok_or_else(|| stale(lease))
}

pub(crate) async fn fail(tx: &mut impl Tx, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError> {
    let from = JobState::Running;
    let to = next(from, Transition::Fail)?;
    let (kind, data) = outbox(&EventPayload::Failed { error: error.clone() });
    let changed = tx
        .exec(
            sql::FAIL,
            params![
                to.as_str(),
                Phase::Failed.as_str(),
                error.code.as_str(),
                error.message.as_str(),
                kind,
                now_ms,
                data,
                lease.job_id.as_str(),
                from.as_str(),
                lease.attempt
            ],
        )
        .await?;
    if changed == 0 {
        return Err(stale(lease));
    }
    Ok(())
}

pub(crate) async fn release(
    tx: &mut impl Tx,
    lease: &Lease,
    reason: RequeueReason,
    now_ms: i64,
    not_before_ms: Option<i64>,
) -> Result<QueuedJob, StoreError> {
    let from = JobState::Running;
    let to = next(from, Transition::Requeue(reason))?;
    let (kind, data) = outbox(&EventPayload::Requeued { reason, error: None });
    tx.row(
        sql::RELEASE,
        params![
            to.as_str(),
            Phase::Queued.as_str(),
            kind,
            now_ms,
            data,
            not_before_ms,
            lease.job_id.as_str(),
            from.as_str(),
            lease.attempt
        ],
        rows::queued_job,
    )
    .await?
    .ok_or_else(|| stale(lease))
}

/// The error of a job dead-lettered after `attempts` attempts.
pub(crate) fn dead_letter_error(attempts: u32, ended: &str) -> JobError {
    JobError::new(
        MAX_ATTEMPTS_EXCEEDED,
        format!("gave up after {attempts} attempts; the last one ended: {ended}"),
    )
}

/// Both statements are fenced on (id, state, attempt) and split on the
/// budget, so at most one matches; one transaction, so the decision is
/// atomic.
pub(crate) async fn requeue_or_dead_letter(
    tx: &mut impl Tx,
    lease: &Lease,
    reason_message: &str,
    now_ms: i64,
    max_attempts: u32,
    not_before_ms: Option<i64>,
) -> Result<Reclaimed, StoreError> {
    let from = JobState::Running;
    let reason = RequeueReason::Error;
    let queued = next(from, Transition::Requeue(reason))?;
    let failed = next(from, Transition::Fail)?;
    let message = truncate(reason_message, ERROR_MESSAGE_CHARS_MAX);
    let (kind, data) = outbox(&EventPayload::Requeued {
        reason,
        error: Some(message.clone()),
    });
    let id = lease.job_id.as_str();
    let requeued = tx
        .row(
            sql::REQUEUE_WITHIN_BUDGET,
            params![
                queued.as_str(),
                Phase::Queued.as_str(),
                kind,
                now_ms,
                data,
                not_before_ms,
                id,
                from.as_str(),
                lease.attempt,
                max_attempts
            ],
            rows::queued_job,
        )
        .await?;
    if let Some(q) = requeued {
        return Ok(Reclaimed::Requeued(q));
    }
    let error = dead_letter_error(lease.attempt, &format!("{}: {message}", reason.as_str()));
    let (kind, data) = outbox(&EventPayload::Failed { error: error.clone() });
    let dead = tx
        .row(
            sql::DEAD_LETTER_OVER_BUDGET,
            params![
                failed.as_str(),
                Phase::Failed.as_str(),
                error.code.as_str(),
                error.message.as_str(),
                kind,
                now_ms,
                data,
                id,
                from.as_str(),
                lease.attempt,
                max_attempts
            ],
            rows::id,
        )
        .await?;
    dead.map(Reclaimed::DeadLettered).ok_or_else(|| stale(lease))
}
