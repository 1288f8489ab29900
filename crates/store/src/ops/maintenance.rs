//! Housekeeping and operators: reclaiming dead leases, retention, dead
//! letters and their re-drive.

use super::attempts::dead_letter_error;
use super::{MAX_ATTEMPTS_EXCEEDED, next, outbox};
use crate::exec::{Columns, Param, Tx, params};
use crate::{rows, sql};
use videogen_core::store::{Reclaimed, StoreError};
use videogen_core::{
    EventPayload, IllegalTransition, Job, JobError, JobState, Phase, QueuedJob, RequeueReason, Transition, VideoId,
};

/// Which running jobs a reclaim takes.
pub(crate) enum Reclaim<'a> {
    /// Those whose lease expired before this time.
    ExpiredBefore(i64),
    /// Those leased by a worker of this node (its workers are `{node}/…`).
    OfNode(&'a str),
}

/// A running job a reclaim selected, as it was then.
struct Candidate {
    id: VideoId,
    attempt: u32,
    attempt_floor: u32,
}

fn candidate(row: &dyn Columns) -> Result<Candidate, StoreError> {
    Ok(Candidate {
        id: rows::get_video_id(row, "id")?,
        attempt: rows::get_u32(row, "attempt")?,
        attempt_floor: rows::get_u32(row, "attempt_floor")?,
    })
}

/// Re-queues (or dead-letters, with its budget spent) up to `limit` of the
/// running jobs `which` selects. Each job changes with its own
/// compare-and-set on the attempt read and on the selection still holding
/// (the lease still expired, still the node's), so a heartbeat or a newer
/// attempt that came in between wins, and the job is left alone.
pub(crate) async fn reclaim(
    tx: &mut impl Tx,
    which: Reclaim<'_>,
    now_ms: i64,
    max_attempts: u32,
    limit: u32,
) -> Result<Vec<Reclaimed>, StoreError> {
    let (reason, select, filter, requeue_sql, dead_sql): (_, _, Param, _, _) = match which {
        Reclaim::ExpiredBefore(t) => (
            RequeueReason::LeaseExpired,
            sql::EXPIRED_LEASES,
            t.into(),
            sql::REQUEUE_EXPIRED,
            sql::DEAD_LETTER_EXPIRED,
        ),
        // Match the prefix including the slash, so node `a` does not
        // reclaim the workers of node `ab`.
        Reclaim::OfNode(node) => (
            RequeueReason::NodeRestarted,
            sql::LEASES_OF_NODE,
            format!("{node}/").into(),
            sql::REQUEUE_OF_NODE,
            sql::DEAD_LETTER_OF_NODE,
        ),
    };
    let from = JobState::Running;
    let queued = next(from, Transition::Requeue(reason))?;
    let failed = next(from, Transition::Fail)?;
    let (requeued_kind, requeued_data) = outbox(&EventPayload::Requeued { reason, error: None });
    let candidates = tx.rows(select, vec![filter.clone(), limit.into()], candidate).await?;
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        let spent = c.attempt.saturating_sub(c.attempt_floor) >= max_attempts;
        if spent {
            let error = dead_letter_error(c.attempt, reason.as_str());
            let (kind, data) = outbox(&EventPayload::Failed { error: error.clone() });
            let mut p = params![
                failed.as_str(),
                Phase::Failed.as_str(),
                error.code.as_str(),
                error.message.as_str(),
                kind,
                now_ms,
                data,
                c.id.as_str(),
                from.as_str(),
                c.attempt
            ];
            p.push(filter.clone());
            if let Some(id) = tx.row(dead_sql, p, rows::id).await? {
                out.push(Reclaimed::DeadLettered(id));
            }
        } else {
            let mut p = params![
                queued.as_str(),
                Phase::Queued.as_str(),
                requeued_kind,
                now_ms,
                requeued_data.as_str(),
                c.id.as_str(),
                from.as_str(),
                c.attempt
            ];
            p.push(filter.clone());
            if let Some(q) = tx.row(requeue_sql, p, rows::queued_job).await? {
                out.push(Reclaimed::Requeued(q));
            }
        }
    }
    Ok(out)
}

/// Completed jobs past their expiry → expired, the first due first.
pub(crate) async fn expire_due(tx: &mut impl Tx, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
    let from = JobState::Completed;
    let to = next(from, Transition::Expire)?;
    let (kind, data) = outbox(&EventPayload::Expired {});
    let mut jobs = tx
        .rows(
            sql::EXPIRE_DUE,
            params![
                to.as_str(),
                Phase::Expired.as_str(),
                kind,
                now_ms,
                data,
                limit,
                from.as_str()
            ],
            rows::job,
        )
        .await?;
    jobs.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
    Ok(jobs)
}

pub(crate) async fn dead_letters(tx: &mut impl Tx, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError> {
    // Every id sorts after ''.
    let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
    tx.rows(sql::DEAD_LETTERS, params![after, limit], rows::job).await
}

/// Dead letters past their checkpoint retention that still hold some.
pub(crate) async fn stale_dead_letter_checkpoints(
    tx: &mut impl Tx,
    before_ms: i64,
    limit: u32,
) -> Result<Vec<VideoId>, StoreError> {
    tx.rows(sql::STALE_DEAD_LETTER_CHECKPOINTS, params![before_ms, limit], rows::id)
        .await
}

/// Whether the job was (still) a dead letter holding checkpoints.
pub(crate) async fn forget_dead_letter_checkpoints(tx: &mut impl Tx, id: &VideoId) -> Result<bool, StoreError> {
    Ok(tx
        .exec(sql::FORGET_DEAD_LETTER_CHECKPOINTS, params![id.as_str()])
        .await?
        > 0)
}

struct RedriveCandidate {
    state: JobState,
    error: Option<JobError>,
    attempt: u32,
}

fn redrive_candidate(row: &dyn Columns) -> Result<RedriveCandidate, StoreError> {
    Ok(RedriveCandidate {
        state: rows::get_state(row, "state")?,
        error: row
            .text("error_code")?
            .map(|code| Ok::<_, StoreError>(JobError::new(code, row.text("error_message")?.unwrap_or_default())))
            .transpose()?,
        attempt: rows::get_u32(row, "attempt")?,
    })
}

/// Reads the dead letter, then re-drives it fenced on the attempt read, so
/// the `redriven` event carries the error it clears.
pub(crate) async fn redrive(tx: &mut impl Tx, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError> {
    let to = next(JobState::Failed, Transition::Redrive)?;
    let not_a_dead_letter = |from| {
        StoreError::from(IllegalTransition {
            from,
            transition: Transition::Redrive,
        })
    };
    let Some(c) = tx
        .row(sql::REDRIVE_CANDIDATE, params![id.as_str()], redrive_candidate)
        .await?
    else {
        return Err(StoreError::NotFound(id.clone()));
    };
    // A failed job that is not a dead letter (a fatal error, e.g.
    // moderation) would fail the same way again.
    let is_dead_letter =
        c.state == JobState::Failed && c.error.as_ref().is_some_and(|e| e.code == MAX_ATTEMPTS_EXCEEDED);
    if !is_dead_letter {
        return Err(not_a_dead_letter(c.state));
    }
    let (kind, data) = outbox(&EventPayload::Redriven {
        previous_error: c.error,
    });
    tx.row(
        sql::REDRIVE,
        params![
            to.as_str(),
            Phase::Queued.as_str(),
            now_ms,
            kind,
            data,
            id.as_str(),
            c.attempt
        ],
        rows::queued_job,
    )
    .await?
    // Changed since the read (within a transaction only another node's
    // re-drive can do that): it is no longer this dead letter.
    .ok_or_else(|| not_a_dead_letter(JobState::Queued))
}
