//! Row decoding, JSON columns and event payloads.

use rusqlite::Row;
use rusqlite::types::FromSql;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use videogen_core::store::{ApiKey, NewJob, StoreError, WorkerToken};
use videogen_core::{Job, JobError, JobState, Lease, Phase, QueuedJob, TenantId, Tier, VideoId, WorkerId};

/// The columns [`job`] decodes, in `SELECT` / `RETURNING` lists.
macro_rules! job_columns {
    () => {
        "id, tenant, tier, spec_json, state, phase, progress, step, attempt, created_at_ms, \
         enqueued_at_ms, started_at_ms, completed_at_ms, expires_at_ms, error_json, \
         checkpoint_json, prev_checkpoint_json, outputs_json, lease_worker, lease_expires_at_ms"
    };
}
pub(crate) use job_columns;

/// The columns [`queued_job`] decodes.
macro_rules! queued_columns {
    () => {
        "id, tenant, tier, model, enqueued_at_ms"
    };
}
pub(crate) use queued_columns;

/// The columns [`api_key`] decodes.
macro_rules! api_key_columns {
    () => {
        "id, hash, prefix, tenant, tier, admin, created_at_ms, revoked_at_ms"
    };
}
pub(crate) use api_key_columns;

/// The columns [`worker_token`] decodes.
macro_rules! worker_token_columns {
    () => {
        "id, hash, prefix, name, created_at_ms, revoked_at_ms"
    };
}
pub(crate) use worker_token_columns;

pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in the job store: {detail}"))
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(col: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(col, e))
}

/// A result row of either backend, as the decoders below read it: SQLite
/// and PostgreSQL rows share one decoder per record type.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

impl Columns for Row<'_> {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        get(self, col)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        get(self, col)
    }
    /// SQLite has no booleans: 0 / 1.
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(get::<i64>(self, col)? != 0)
    }
}

fn text<R: Columns + ?Sized>(row: &R, col: &str) -> Result<String, StoreError> {
    row.text(col)?.ok_or_else(|| corrupt(col, "NULL"))
}

fn int<R: Columns + ?Sized>(row: &R, col: &str) -> Result<i64, StoreError> {
    row.int(col)?.ok_or_else(|| corrupt(col, "NULL"))
}

fn opt_json<T: DeserializeOwned, R: Columns + ?Sized>(row: &R, col: &str) -> Result<Option<T>, StoreError> {
    row.text(col)?.map(|s| from_json(col, &s)).transpose()
}

pub(crate) fn get<T: FromSql>(row: &Row<'_>, col: &str) -> Result<T, StoreError> {
    row.get(col).map_err(db)
}

fn get_u32<R: Columns + ?Sized>(row: &R, col: &str) -> Result<u32, StoreError> {
    let v = int(row, col)?;
    u32::try_from(v).map_err(|_| corrupt(col, v))
}

fn get_u8<R: Columns + ?Sized>(row: &R, col: &str) -> Result<u8, StoreError> {
    let v = int(row, col)?;
    u8::try_from(v).map_err(|_| corrupt(col, v))
}

fn get_state<R: Columns + ?Sized>(row: &R, col: &str) -> Result<JobState, StoreError> {
    let s = text(row, col)?;
    JobState::parse(&s).ok_or_else(|| corrupt(col, s))
}

fn get_phase<R: Columns + ?Sized>(row: &R, col: &str) -> Result<Phase, StoreError> {
    let s = text(row, col)?;
    Phase::parse(&s).ok_or_else(|| corrupt(col, s))
}

fn get_tier<R: Columns + ?Sized>(row: &R, col: &str) -> Result<Tier, StoreError> {
    let s = text(row, col)?;
    s.parse().map_err(|e: String| corrupt(col, e))
}

fn get_tenant<R: Columns + ?Sized>(row: &R, col: &str) -> Result<TenantId, StoreError> {
    let s = text(row, col)?;
    TenantId::parse(&s).ok_or_else(|| corrupt(col, s))
}

fn get_video_id<R: Columns + ?Sized>(row: &R, col: &str) -> Result<VideoId, StoreError> {
    let s = text(row, col)?;
    VideoId::parse(&s).ok_or_else(|| corrupt(col, s))
}

/// Decodes a row selected with [`job_columns!`].
pub(crate) fn job(row: &Row<'_>) -> Result<Job, StoreError> {
    decode_job(row)
}

/// [`job`], for either backend.
pub(crate) fn decode_job<R: Columns + ?Sized>(row: &R) -> Result<Job, StoreError> {
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
        error: opt_json(row, "error_json")?,
        checkpoint: opt_json(row, "checkpoint_json")?,
        prev_checkpoint: opt_json(row, "prev_checkpoint_json")?,
        outputs: opt_json(row, "outputs_json")?,
        lease,
        id,
    })
}

/// Decodes a row selected with [`queued_columns!`].
pub(crate) fn queued_job(row: &Row<'_>) -> Result<QueuedJob, StoreError> {
    decode_queued_job(row)
}

/// [`queued_job`], for either backend.
pub(crate) fn decode_queued_job<R: Columns + ?Sized>(row: &R) -> Result<QueuedJob, StoreError> {
    Ok(QueuedJob {
        id: get_video_id(row, "id")?,
        tenant: get_tenant(row, "tenant")?,
        tier: get_tier(row, "tier")?,
        model: text(row, "model")?,
        enqueued_at_ms: int(row, "enqueued_at_ms")?,
    })
}

/// Decodes a row selected with [`api_key_columns!`].
pub(crate) fn api_key(row: &Row<'_>) -> Result<ApiKey, StoreError> {
    decode_api_key(row)
}

/// [`api_key`], for either backend.
pub(crate) fn decode_api_key<R: Columns + ?Sized>(row: &R) -> Result<ApiKey, StoreError> {
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

/// Decodes a row selected with [`worker_token_columns!`].
pub(crate) fn worker_token(row: &Row<'_>) -> Result<WorkerToken, StoreError> {
    decode_worker_token(row)
}

/// [`worker_token`], for either backend.
pub(crate) fn decode_worker_token<R: Columns + ?Sized>(row: &R) -> Result<WorkerToken, StoreError> {
    Ok(WorkerToken {
        id: text(row, "id")?,
        hash: text(row, "hash")?,
        prefix: text(row, "prefix")?,
        name: text(row, "name")?,
        created_at_ms: int(row, "created_at_ms")?,
        revoked_at_ms: row.int("revoked_at_ms")?,
    })
}

pub(crate) fn event_data_from_str(s: &str) -> Result<Value, StoreError> {
    from_json("data_json", s)
}

/// JSON payload of a state-change event: the fields every such event carries,
/// then `extra`. A field passed as `None` is one only the database knows (e.g.
/// the job's current progress): the statement splices it in with `json_set`.
pub(crate) fn event_data(
    state: JobState,
    phase: Option<Phase>,
    progress: Option<u8>,
    attempt: Option<u32>,
    extra: Value,
) -> Result<String, StoreError> {
    let mut m = Map::with_capacity(8);
    m.insert("status".into(), json!(state.api_status()));
    m.insert("state".into(), json!(state.as_str()));
    if let Some(phase) = phase {
        m.insert("phase".into(), json!(phase.as_str()));
    }
    if let Some(progress) = progress {
        m.insert("progress".into(), json!(progress));
    }
    if let Some(attempt) = attempt {
        m.insert("attempt".into(), json!(attempt));
    }
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    to_json(&Value::Object(m))
}

pub(crate) fn error_value(e: &JobError) -> Value {
    json!({ "code": e.code, "message": e.message })
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
