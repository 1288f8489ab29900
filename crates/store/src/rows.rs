//! Row decoding, for rows of either engine ([`Columns`]), and JSON columns.

use crate::exec::Columns;
use serde::Serialize;
use serde::de::DeserializeOwned;
use videogen_core::store::{ApiKey, NewJob, StoreError, WorkerToken};
use videogen_core::{
    EventPayload, Job, JobError, JobEvent, JobState, Lease, Phase, QueuedJob, TenantId, Tier, VideoId, WorkerId,
};

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::fault(format!("encoding JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(col: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(col, e))
}

fn text(row: &dyn Columns, col: &str) -> Result<String, StoreError> {
    row.text(col)?.ok_or_else(|| StoreError::corrupt(col, "NULL"))
}

fn int(row: &dyn Columns, col: &str) -> Result<i64, StoreError> {
    row.int(col)?.ok_or_else(|| StoreError::corrupt(col, "NULL"))
}

fn opt_json<T: DeserializeOwned>(row: &dyn Columns, col: &str) -> Result<Option<T>, StoreError> {
    row.text(col)?.map(|s| from_json(col, &s)).transpose()
}

fn narrow<T: TryFrom<i64>>(col: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::corrupt(col, v))
}

pub(crate) fn get_u32(row: &dyn Columns, col: &str) -> Result<u32, StoreError> {
    narrow(col, int(row, col)?)
}

fn get_u8(row: &dyn Columns, col: &str) -> Result<u8, StoreError> {
    narrow(col, int(row, col)?)
}

pub(crate) fn get_state(row: &dyn Columns, col: &str) -> Result<JobState, StoreError> {
    let s = text(row, col)?;
    JobState::parse(&s).ok_or_else(|| StoreError::corrupt(col, s))
}

fn get_phase(row: &dyn Columns, col: &str) -> Result<Phase, StoreError> {
    let s = text(row, col)?;
    Phase::parse(&s).ok_or_else(|| StoreError::corrupt(col, s))
}

fn get_tier(row: &dyn Columns, col: &str) -> Result<Tier, StoreError> {
    let s = text(row, col)?;
    s.parse().map_err(|e: String| StoreError::corrupt(col, e))
}

fn get_tenant(row: &dyn Columns, col: &str) -> Result<TenantId, StoreError> {
    let s = text(row, col)?;
    TenantId::parse(&s).ok_or_else(|| StoreError::corrupt(col, s))
}

pub(crate) fn get_video_id(row: &dyn Columns, col: &str) -> Result<VideoId, StoreError> {
    let s = text(row, col)?;
    VideoId::parse(&s).ok_or_else(|| StoreError::corrupt(col, s))
}

/// The error of the `error_code`/`error_message` columns (none without a code).
fn get_error(row: &dyn Columns) -> Result<Option<JobError>, StoreError> {
    Ok(match row.text("error_code")? {
        Some(code) => Some(JobError::new(code, row.text("error_message")?.unwrap_or_default())),
        None => None,
    })
}

/// A row selected with `job_columns!`.
pub(crate) fn job(row: &dyn Columns) -> Result<Job, StoreError> {
    let id = get_video_id(row, "id")?;
    let attempt = get_u32(row, "attempt")?;
    let lease = match (row.text("lease_worker")?, row.int("lease_expires_at_ms")?) {
        (Some(worker), Some(expires_at_ms)) => Some(Lease {
            job_id: id.clone(),
            attempt,
            worker: WorkerId::from_raw(worker),
            expires_at_ms,
        }),
        _ => None,
    };
    let spec_json = text(row, "spec_json")?;
    Ok(Job {
        tenant: get_tenant(row, "tenant")?,
        tier: get_tier(row, "tier")?,
        spec: from_json("spec_json", &spec_json)?,
        state: get_state(row, "state")?,
        phase: get_phase(row, "phase")?,
        progress: get_u8(row, "progress")?,
        step: get_u32(row, "step")?,
        attempt,
        created_at_ms: int(row, "created_at_ms")?,
        enqueued_at_ms: int(row, "enqueued_at_ms")?,
        started_at_ms: row.int("started_at_ms")?,
        completed_at_ms: row.int("completed_at_ms")?,
        expires_at_ms: row.int("expires_at_ms")?,
        error: get_error(row)?,
        checkpoint: opt_json(row, "checkpoint_json")?,
        prev_checkpoint: opt_json(row, "prev_checkpoint_json")?,
        outputs: opt_json(row, "outputs_json")?,
        lease,
        id,
    })
}

/// A row selected with `queued_columns!`.
pub(crate) fn queued_job(row: &dyn Columns) -> Result<QueuedJob, StoreError> {
    Ok(QueuedJob {
        id: get_video_id(row, "id")?,
        tenant: get_tenant(row, "tenant")?,
        tier: get_tier(row, "tier")?,
        model: text(row, "model")?,
        enqueued_at_ms: int(row, "enqueued_at_ms")?,
        not_before_ms: row.int("not_before_ms")?,
    })
}

pub(crate) fn api_key(row: &dyn Columns) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: text(row, "id")?,
        hash: text(row, "hash")?,
        prefix: text(row, "prefix")?,
        tenant: get_tenant(row, "tenant")?,
        tier: get_tier(row, "tier")?,
        admin: row.flag("admin")?,
        created_at_ms: int(row, "created_at_ms")?,
        revoked_at_ms: row.int("revoked_at_ms")?,
    })
}

pub(crate) fn worker_token(row: &dyn Columns) -> Result<WorkerToken, StoreError> {
    Ok(WorkerToken {
        id: text(row, "id")?,
        hash: text(row, "hash")?,
        prefix: text(row, "prefix")?,
        name: text(row, "name")?,
        created_at_ms: int(row, "created_at_ms")?,
        revoked_at_ms: row.int("revoked_at_ms")?,
    })
}

/// A row of `job_events`.
pub(crate) fn event(row: &dyn Columns) -> Result<JobEvent, StoreError> {
    let kind = text(row, "kind")?;
    let data = text(row, "data_json")?;
    Ok(JobEvent {
        seq: int(row, "seq")?,
        at_ms: int(row, "at_ms")?,
        state: get_state(row, "state")?,
        phase: get_phase(row, "phase")?,
        progress: get_u8(row, "progress")?,
        attempt: get_u32(row, "attempt")?,
        checkpoint_step: row
            .int("checkpoint_step")?
            .map(|s| narrow("checkpoint_step", s))
            .transpose()?,
        payload: EventPayload::decode(&kind, &data).map_err(|e| StoreError::corrupt("job event", e))?,
    })
}

/// The first column, an id.
pub(crate) fn id(row: &dyn Columns) -> Result<VideoId, StoreError> {
    get_video_id(row, "id")
}

/// The job a submit created, as the caller gets it back.
pub(crate) fn created_job(job: NewJob) -> Job {
    Job {
        state: JobState::Queued,
        phase: Phase::Queued,
        progress: 0,
        step: 0,
        attempt: 0,
        created_at_ms: job.now_ms,
        enqueued_at_ms: job.now_ms,
        started_at_ms: None,
        completed_at_ms: None,
        expires_at_ms: None,
        error: None,
        checkpoint: None,
        prev_checkpoint: None,
        outputs: None,
        lease: None,
        id: job.id,
        tenant: job.tenant,
        tier: job.tier,
        spec: job.spec,
    }
}
