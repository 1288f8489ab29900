//! Jobs as tenants see them: submission, reads, cancel, delete, and events
//! without a state change.

use super::{CANCELLED, next, outbox};
use crate::exec::{Columns, Tx, params};
use crate::{rows, sql};
use videogen_core::store::{Idempotency, ListQuery, NewJob, Order, StoreError, Submitted};
use videogen_core::{
    EventPayload, IllegalTransition, Job, JobError, JobEvent, JobState, Phase, QueuedJob, TenantId, Transition, VideoId,
};

/// The states a job can be cancelled from, in the order `sql::CANCEL`
/// binds them; a test checks this is exactly what the state machine allows.
pub(crate) const CANCELLABLE: [JobState; 2] = [JobState::Queued, JobState::Running];

/// The outbox of a new job's `created` event.
pub(crate) fn created_event() -> (&'static str, String) {
    outbox(&EventPayload::Created {})
}

pub(crate) async fn submit(tx: &mut impl Tx, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
    let (kind, data) = created_event();
    let inserted = tx
        .exec(
            sql::SUBMIT,
            params![
                job.id.as_str(),
                job.tenant.as_str(),
                job.tier.as_str(),
                job.spec.model.as_str(),
                rows::to_json(&job.spec)?,
                JobState::Queued.as_str(),
                Phase::Queued.as_str(),
                job.spec.steps,
                job.now_ms,
                idem.as_ref().map(|i| i.key.as_str()),
                idem.as_ref().map(|i| i.body_hash.as_str()),
                kind,
                data
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Submitted::Created(rows::created_job(job)));
    }
    let Some(idem) = idem else {
        return Err(StoreError::fault(format!("job {} was not inserted", job.id)));
    };
    // The conflicting row is visible: SQLite runs this under the write lock;
    // on PostgreSQL the insert waited for the conflicting transaction, and
    // this statement's snapshot (READ COMMITTED) sees its commit.
    let found = tx
        .row(
            sql::BY_IDEMPOTENCY_KEY,
            params![job.tenant.as_str(), idem.key.as_str()],
            with_body_hash,
        )
        .await?;
    match found {
        Some((job, Some(hash))) if hash == idem.body_hash => Ok(Submitted::Replayed(job)),
        Some(_) => Err(StoreError::IdempotencyConflict),
        None => Err(StoreError::fault("idempotency conflict without a conflicting job")),
    }
}

fn with_body_hash(row: &dyn Columns) -> Result<(Job, Option<String>), StoreError> {
    Ok((rows::job(row)?, row.text("idempotency_body_hash")?))
}

pub(crate) async fn job(tx: &mut impl Tx, id: &VideoId) -> Result<Option<Job>, StoreError> {
    tx.row(sql::JOB, params![id.as_str()], rows::job).await
}

pub(crate) async fn list(tx: &mut impl Tx, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
    let t = tenant.as_str();
    match (q.order, &q.after) {
        // '' sorts before every id.
        (Order::Asc, after) => {
            let after = after.as_ref().map_or("", |a| a.as_str());
            tx.rows(sql::LIST_JOBS_ASC, params![t, after, q.limit], rows::job).await
        }
        (Order::Desc, Some(before)) => {
            tx.rows(sql::LIST_JOBS_DESC, params![t, before.as_str(), q.limit], rows::job)
                .await
        }
        (Order::Desc, None) => tx.rows(sql::LIST_JOBS_NEWEST, params![t, q.limit], rows::job).await,
    }
}

pub(crate) async fn events(
    tx: &mut impl Tx,
    id: &VideoId,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<JobEvent>, StoreError> {
    tx.rows(sql::EVENTS, params![id.as_str(), after_seq, limit], rows::event)
        .await
}

pub(crate) async fn queued_jobs(
    tx: &mut impl Tx,
    after: Option<(i64, String)>,
    limit: u32,
) -> Result<Vec<QueuedJob>, StoreError> {
    let (at, id) = after.unwrap_or((i64::MIN, String::new()));
    tx.rows(sql::QUEUED_JOBS, params![at, id, limit], rows::queued_job)
        .await
}

pub(crate) async fn queued_job(tx: &mut impl Tx, id: &VideoId) -> Result<Option<QueuedJob>, StoreError> {
    tx.row(sql::QUEUED_JOB, params![id.as_str()], rows::queued_job).await
}

fn state(row: &dyn Columns) -> Result<JobState, StoreError> {
    rows::get_state(row, "state")
}

/// One compare-and-set from every cancellable state. When it matches
/// nothing, the state read after it says why: unknown job, or a state the
/// transition is illegal from. A job that became cancellable in between
/// (a re-drive) is tried again.
pub(crate) async fn cancel(tx: &mut impl Tx, id: &VideoId, now_ms: i64) -> Result<Job, StoreError> {
    let to = next(JobState::Queued, Transition::Cancel)?;
    let (kind, data) = outbox(&EventPayload::Cancelled {});
    let error = cancelled_error();
    for _ in 0..3 {
        let cancelled = tx
            .row(
                sql::CANCEL,
                params![
                    to.as_str(),
                    Phase::Cancelled.as_str(),
                    error.code.as_str(),
                    error.message.as_str(),
                    kind,
                    now_ms,
                    data.as_str(),
                    id.as_str(),
                    CANCELLABLE[0].as_str(),
                    CANCELLABLE[1].as_str()
                ],
                rows::job,
            )
            .await?;
        if let Some(job) = cancelled {
            return Ok(job);
        }
        let Some(from) = tx.row(sql::JOB_STATE, params![id.as_str()], state).await? else {
            return Err(StoreError::NotFound(id.clone()));
        };
        if !CANCELLABLE.contains(&from) {
            return Err(IllegalTransition {
                from,
                transition: Transition::Cancel,
            }
            .into());
        }
    }
    Err(StoreError::unavailable(format!(
        "job {id} kept changing while being cancelled"
    )))
}

pub(crate) async fn delete(tx: &mut impl Tx, id: &VideoId) -> Result<Option<Job>, StoreError> {
    let job = tx.row(sql::DELETE_JOB, params![id.as_str()], rows::job).await?;
    tx.exec(sql::DELETE_EVENTS, params![id.as_str()]).await?;
    Ok(job)
}

fn seq(row: &dyn Columns) -> Result<i64, StoreError> {
    row.int("last_event_seq")?
        .ok_or_else(|| StoreError::corrupt("last_event_seq", "NULL"))
}

pub(crate) async fn append_event(
    tx: &mut impl Tx,
    id: &VideoId,
    event: &EventPayload,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let (kind, data) = outbox(event);
    tx.row(sql::APPEND_EVENT, params![kind, now_ms, data, id.as_str()], seq)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.clone()))
}

/// The error a cancelled job carries.
pub(crate) fn cancelled_error() -> JobError {
    JobError::new(CANCELLED, "the video generation was cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellable_states_are_the_state_machines() {
        let legal: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| s.apply(Transition::Cancel).is_ok())
            .collect();
        assert_eq!(legal, CANCELLABLE);
        for s in CANCELLABLE {
            assert_eq!(s.apply(Transition::Cancel), Ok(JobState::Cancelled));
        }
    }
}
