//! The internal worker API: [`ControlPlane`] over HTTP for `videogen worker`
//! processes (the client is `videogen_worker::RemoteControl`; paths and
//! bodies are `videogen_protocol::wire`, shared by both).
//!
//! Every route needs a worker token ([`WorkerCaller`]); tenant keys get 401.
//! Calls about a running attempt name it in the path
//! (`/internal/v1/jobs/{id}/attempts/{attempt}/…`): the attempt is the fencing
//! token, and a stale one gets 409 without any change. Acquire is a long poll:
//! it answers as soon as a job is due, or 204 after the requested wait.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use std::time::Duration;
use videogen_core::{AttemptEvent, JobError, Lease, Progress, VideoId, WorkerId};
use videogen_protocol::wire::{
    AcquireRequest, CRC32_HEADER, CompleteRequest, EventRequest, MAX_ACQUIRE_WAIT, ReleaseRequest, RetryRequest,
    RetryResponse, paths,
};
use videogen_protocol::{AssetKind, ControlError, ControlPlane, Upload};

use crate::auth::WorkerCaller;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest JSON body of a worker call (progress, an event, an error).
const JSON_BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest text (a key, a reason) in an event a worker appends.
const EVENT_TEXT_CHARS_MAX: usize = 1024;

/// The routes, mounted at the root (paths are absolute).
pub fn routes() -> Router<AppState> {
    let attempt = |tail: &str| format!("{}/{tail}", paths::ATTEMPT);
    Router::new()
        .route(paths::ACQUIRE, post(acquire))
        .route(paths::FLEET, get(fleet))
        .route(&attempt("heartbeat"), post(heartbeat))
        .route(&attempt("blob"), get(read_blob))
        .route(&attempt("events"), post(event))
        .route(&attempt("complete"), post(complete))
        .route(&attempt("fail"), post(fail))
        .route(&attempt("release"), post(release))
        .route(&attempt("retry"), post(retry))
        .layer(DefaultBodyLimit::max(JSON_BODY_BYTES_MAX))
        // Uploads stream to the bucket: the control plane bounds their size
        // (`MAX_UPLOAD_BYTES`) and checks their CRC as the chunks pass, so
        // no body is ever held whole here.
        .route(&attempt("checkpoints/{step}"), put(write_checkpoint))
        .route(&attempt("assets/{kind}"), put(put_asset))
}

/// A request body as an [`Upload`] stream.
fn upload(body: Body) -> Upload {
    use futures::TryStreamExt;
    Upload::Stream(Box::pin(
        body.into_data_stream()
            .map_err(|e| Box::new(e) as videogen_core::store::BoxError),
    ))
}

fn control(state: &AppState) -> Result<&dyn ControlPlane, ApiError> {
    state
        .control
        .as_deref()
        .ok_or_else(|| ApiError::route_not_found().with_code("worker_api_disabled", "This node takes no workers."))
}

fn to_api(e: ControlError) -> ApiError {
    match e {
        ControlError::Stale { job, attempt } => {
            // A zombie (or a cancelled attempt) tried to write: counted, refused.
            metrics::counter!("videogen_fenced_writes_rejected_total").increment(1);
            ApiError::conflict(
                "stale_lease",
                format!("Attempt {attempt} no longer owns job {job}: abandon it."),
            )
        }
        ControlError::Rejected(msg) => ApiError::bad_request("rejected", msg),
        ControlError::Unavailable(msg) => ApiError::unavailable("worker API call failed", &msg),
    }
}

/// The attempt named by the path, as a lease (the worker id is not part of
/// the fence; the attempt is).
#[derive(Deserialize)]
struct AttemptPath {
    id: String,
    attempt: u32,
}

impl AttemptPath {
    fn lease(&self, caller: &WorkerCaller) -> Result<Lease, ApiError> {
        let job_id = VideoId::parse(&self.id).ok_or_else(|| ApiError::video_not_found(&self.id))?;
        Ok(Lease {
            job_id,
            attempt: self.attempt,
            worker: WorkerId::from_raw(caller.name.clone()),
            expires_at_ms: 0,
        })
    }
}

fn crc_header(headers: &HeaderMap) -> Result<u32, ApiError> {
    headers
        .get(CRC32_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::invalid(
                CRC32_HEADER,
                "missing_checksum",
                format!("Send the body's CRC-32 as a decimal {CRC32_HEADER} header."),
            )
        })
}

async fn acquire(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Json(req): Json<AcquireRequest>,
) -> Result<Response, ApiError> {
    let control = control(&state)?;
    if !state.dispatcher.is_active() {
        // Workers move on to the next server they know.
        return Err(ApiError::not_leader());
    }
    if req.worker.loaded_models.len() > 64 {
        return Err(ApiError::invalid(
            "worker.loaded_models",
            "too_many",
            "At most 64 models.",
        ));
    }
    let wait = Duration::from_millis(req.wait_ms).min(MAX_ACQUIRE_WAIT);
    tracing::debug!(worker = %req.worker.id, token = %caller.token_id, "acquire");
    match control.acquire(&req.worker, wait).await.map_err(to_api)? {
        Some(a) => Ok(Json(a).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn fleet(State(state): State<AppState>, _caller: WorkerCaller) -> Result<Response, ApiError> {
    let info = control(&state)?.fleet().await.map_err(to_api)?;
    Ok(Json(info).into_response())
}

async fn heartbeat(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(progress): Json<Progress>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    let reply = control(&state)?.heartbeat(&lease, &progress).await.map_err(to_api)?;
    Ok(Json(reply).into_response())
}

#[derive(Deserialize)]
struct BlobQuery {
    key: String,
}

async fn read_blob(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Query(q): Query<BlobQuery>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    let bytes = control(&state)?.read_blob(&lease, &q.key).await.map_err(to_api)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct CheckpointPath {
    id: String,
    attempt: u32,
    step: u32,
}

async fn write_checkpoint(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<CheckpointPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let lease = AttemptPath {
        id: p.id,
        attempt: p.attempt,
    }
    .lease(&caller)?;
    let crc = crc_header(&headers)?;
    let ck = control(&state)?
        .write_checkpoint(&lease, p.step, crc, upload(body))
        .await
        .map_err(to_api)?;
    Ok(Json(ck).into_response())
}

async fn event(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(req): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    // Workers may only add their own kinds of events, never state changes:
    // anything else does not parse as one.
    let event: EventRequest = serde_json::from_value(req).map_err(|e| {
        ApiError::invalid(
            "kind",
            "invalid_event_kind",
            format!("Not an event a worker may append: {e}"),
        )
    })?;
    let too_long = |t: &str| t.chars().count() > EVENT_TEXT_CHARS_MAX;
    let oversized = match &event {
        AttemptEvent::CheckpointRejected { key, reason, .. } => too_long(key) || too_long(reason),
        AttemptEvent::Restarted { reason, .. } => too_long(reason),
        AttemptEvent::Resumed { .. } => false,
    };
    if oversized {
        return Err(ApiError::invalid(
            "data",
            "event_too_large",
            format!("Event texts are limited to {EVENT_TEXT_CHARS_MAX} characters."),
        ));
    }
    control(&state)?.event(&lease, &event).await.map_err(to_api)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct AssetPath {
    id: String,
    attempt: u32,
    kind: String,
}

async fn put_asset(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AssetPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = AssetKind::parse(&p.kind).ok_or_else(ApiError::route_not_found)?;
    let lease = AttemptPath {
        id: p.id,
        attempt: p.attempt,
    }
    .lease(&caller)?;
    let crc = crc_header(&headers)?;
    control(&state)?
        .put_asset(&lease, kind, crc, upload(body))
        .await
        .map_err(to_api)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn complete(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(req): Json<CompleteRequest>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    control(&state)?
        .complete(&lease, req.video_bytes)
        .await
        .map_err(to_api)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fail(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(err): Json<JobError>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    if err.code.len() > 64 || err.message.len() > 4096 {
        return Err(ApiError::invalid(
            "error",
            "too_long",
            "Error code or message too long.",
        ));
    }
    control(&state)?.fail(&lease, &err).await.map_err(to_api)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn release(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    control(&state)?.release(&lease, req.cause).await.map_err(to_api)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn retry(
    State(state): State<AppState>,
    caller: WorkerCaller,
    Path(p): Path<AttemptPath>,
    Json(req): Json<RetryRequest>,
) -> Result<Response, ApiError> {
    let lease = p.lease(&caller)?;
    let message: String = req.message.chars().take(4096).collect();
    let outcome = control(&state)?.retry(&lease, &message).await.map_err(to_api)?;
    Ok(Json(RetryResponse { outcome }).into_response())
}
