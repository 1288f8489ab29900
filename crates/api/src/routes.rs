//! Handlers of `/v1/videos` and its sub-resources.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use videogen_core::blob::keys;
use videogen_core::moderation::Verdict;
use videogen_core::store::{Idempotency, ListQuery, NewJob, Order, Submitted};
use videogen_core::{Job, JobState, QueuedJob, VideoId, VideoSpec};

use crate::auth::Caller;
use crate::create;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, Limits};
use crate::video::render;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const POLL_AFTER_HEADER: &str = "openai-poll-after-ms";

/// Parses a query string into pairs; duplicates are an error.
pub fn query_pairs(raw: Option<&str>, allowed: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            let shown: String = k.chars().take(64).collect();
            return Err(ApiError::invalid(
                shown.clone(),
                "unknown_parameter",
                format!("Unknown query parameter '{shown}'."),
            ));
        }
        if out.iter().any(|(ok, _)| ok == k.as_ref()) {
            return Err(ApiError::invalid(
                k.to_string(),
                "duplicate_parameter",
                format!("'{k}' was sent twice."),
            ));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn get<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str())
}

/// The `limit` of a list request: the default, or 1 to the maximum.
pub fn list_limit(pairs: &[(String, String)], limits: &Limits) -> ApiResult<u32> {
    match get(pairs, "limit") {
        None => Ok(limits.list_limit_default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=limits.list_limit_max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    "invalid_value",
                    format!("'limit' must be an integer from 1 to {}.", limits.list_limit_max),
                )
            }),
    }
}

/// The `after` cursor of a list request.
pub fn list_after(pairs: &[(String, String)]) -> ApiResult<Option<VideoId>> {
    match get(pairs, "after") {
        None | Some("") => Ok(None),
        Some(s) => VideoId::parse(s).map(Some).ok_or_else(|| {
            ApiError::invalid(
                "after",
                "invalid_value",
                "'after' must be a video id from a previous page.",
            )
        }),
    }
}

/// OpenAI's list envelope over `jobs`, fetched with `limit + 1` so that
/// `has_more` needs no second query.
pub fn list_page(mut jobs: Vec<Job>, limit: u32, item: impl Fn(&Job) -> serde_json::Value) -> Response {
    let has_more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let data: Vec<_> = jobs.iter().map(item).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "first_id": jobs.first().map(|j| j.id.as_str()),
        "last_id": jobs.last().map(|j| j.id.as_str()),
        "has_more": has_more,
    }))
    .into_response()
}

/// A `{id}` path segment. Its rejection (e.g. invalid UTF-8) is the same 404
/// as an unknown id, in the error envelope.
pub struct VideoPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for VideoPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| VideoPath(id))
            .map_err(|_| ApiError::video_not_found("(invalid id)"))
    }
}

/// Loads a job the caller may see; anything else is the same 404.
pub async fn visible_job(state: &AppState, caller: &Caller, raw_id: &str) -> ApiResult<Job> {
    let shown: String = raw_id.chars().take(80).collect();
    let id = VideoId::parse(raw_id).ok_or_else(|| ApiError::video_not_found(&shown))?;
    match state.store.job(&id).await? {
        Some(job) if job.tenant == caller.tenant => Ok(job),
        _ => Err(ApiError::video_not_found(&shown)),
    }
}

fn with_poll_hint(state: &AppState, job: &Job, body: serde_json::Value, status: StatusCode) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if !job.state.is_terminal()
        && let Ok(v) = HeaderValue::from_str(&state.poll_after_ms.to_string())
    {
        resp.headers_mut().insert(POLL_AFTER_HEADER, v);
    }
    resp
}

/// A job as clients see it, with `estimated_seconds` (the generation time
/// still to come, from its model's `seconds_per_step` at its size) where
/// the registry knows that figure.
fn view(state: &AppState, job: &Job) -> serde_json::Value {
    let mut body = render(job, position(state, job));
    let sps = state
        .catalog
        .get(&job.spec.model)
        .and_then(|c| c.seconds_per_step.get(&job.spec.size.to_string()).copied());
    let left = match job.state {
        JobState::Queued => Some(job.spec.steps),
        JobState::Running => Some(job.spec.steps.saturating_sub(job.step)),
        _ => None,
    };
    if let (Some(sps), Some(left)) = (sps, left) {
        body["estimated_seconds"] = serde_json::json!((f64::from(left) * sps * 10.0).round() / 10.0);
    }
    body
}

fn position(state: &AppState, job: &Job) -> Option<u64> {
    (job.state == JobState::Queued)
        .then(|| state.dispatcher.position(&job.id))
        .flatten()
}

/// The window of [`crate::state::SubmitLimit`].
const SUBMIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn create_video(State(state): State<AppState>, caller: Caller, req: Request<Body>) -> ApiResult<Response> {
    let idem_key = idempotency_key(req.headers(), state.limits.idempotency_key_chars_max)?;
    let parsed = create::read(req, &state.limits).await?;
    let valid = create::validate(parsed, &state.catalog, &state.limits).await?;
    // Counted once a submission is well-formed, so a malformed or invalid
    // request is answered for what it is (400) and spends nothing.
    if let Some(limit) = &state.submit_limit {
        let d = limit
            .limiter
            .check(&format!("submit:{}", caller.tenant), limit.per_minute, SUBMIT_WINDOW)
            .await;
        if !d.allowed {
            metrics::counter!("videogen_rate_limited_total", "route" => "create").increment(1);
            return Err(ApiError::rate_limited(d.reset_after, limit.per_minute));
        }
    }
    if let Verdict::Block { category, reason } = state
        .moderator
        .check_prompt(&valid.prompt, valid.style.as_deref())
        .await
    {
        tracing::info!(tenant = %caller.tenant, %category, "prompt blocked by moderation");
        metrics::counter!("videogen_moderation_blocks_total", "side" => "prompt", "category" => category.clone())
            .increment(1);
        return Err(ApiError::invalid("prompt", "content_policy_violation", reason));
    }
    let id = VideoId::generate();
    let now = state.clock.now_ms();
    let input_key = match &valid.input_png {
        Some(png) => {
            let key = keys::input_reference(&id);
            state
                .blob
                .put(&key, png.clone().into())
                .await
                .map_err(|e| ApiError::blob("input reference upload", e))?;
            Some(key)
        }
        None => None,
    };
    let spec = VideoSpec {
        model: valid.model,
        prompt: valid.prompt,
        seconds: valid.seconds,
        size: valid.size,
        seed: valid.seed.unwrap_or_else(|| rand::random::<u64>() & create::SEED_MAX),
        style: valid.style,
        steps: valid.steps,
        input_reference: input_key.clone(),
        params: valid.params,
    };
    let new = NewJob {
        id: id.clone(),
        tenant: caller.tenant.clone(),
        tier: caller.tier,
        spec,
        now_ms: now,
    };
    let idem = idem_key.map(|key| Idempotency {
        key,
        body_hash: valid.body_hash,
    });
    let outcome = state.store.submit(new, idem).await;
    // The job row did not take this request's upload: do not leave it behind.
    let orphaned = !matches!(outcome, Ok(Submitted::Created(_)));
    if let (true, Some(key)) = (orphaned, &input_key) {
        let _ = state.blob.delete(key).await;
    }
    let job = match outcome? {
        Submitted::Created(job) => {
            metrics::counter!("videogen_jobs_submitted_total", "tier" => job.tier.as_str()).increment(1);
            state.dispatcher.enqueue(QueuedJob {
                id: job.id.clone(),
                tenant: job.tenant.clone(),
                tier: job.tier,
                model: job.spec.model.clone(),
                enqueued_at_ms: job.enqueued_at_ms,
                not_before_ms: None,
            });
            state.bus.notify(&job.id);
            job
        }
        Submitted::Replayed(job) => job,
    };
    let body = view(&state, &job);
    Ok(with_poll_hint(&state, &job, body, StatusCode::OK))
}

fn idempotency_key(headers: &HeaderMap, max_chars: usize) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= max_chars);
    s.map(|s| Some(s.to_owned())).ok_or_else(|| {
        ApiError::invalid(
            "Idempotency-Key",
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {max_chars} visible ASCII characters."),
        )
    })
}

pub async fn retrieve_video(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(id): VideoPath,
) -> ApiResult<Response> {
    let job = visible_job(&state, &caller, &id).await?;
    let body = view(&state, &job);
    Ok(with_poll_hint(&state, &job, body, StatusCode::OK))
}

pub async fn list_videos(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref(), &["after", "limit", "order"])?;
    let limit = list_limit(&pairs, &state.limits)?;
    let order = match get(&pairs, "order") {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => {
            return Err(ApiError::invalid(
                "order",
                "invalid_value",
                "'order' must be 'asc' or 'desc'.",
            ));
        }
    };
    let after = list_after(&pairs)?;
    let jobs = state
        .store
        .list_jobs(
            &caller.tenant,
            &ListQuery {
                after,
                limit: limit + 1,
                order,
            },
        )
        .await?;
    Ok(list_page(jobs, limit, |j| view(&state, j)))
}

pub async fn delete_video(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(id): VideoPath,
) -> ApiResult<Response> {
    let job = visible_job(&state, &caller, &id).await?;
    if matches!(job.state, JobState::Queued | JobState::Running) {
        // Stop it first so no worker commits output for a deleted video.
        match state.store.cancel(&job.id, state.clock.now_ms()).await {
            Ok(_) | Err(videogen_core::store::StoreError::IllegalTransition(_)) => {}
            Err(e) => return Err(e.into()),
        }
        state.dispatcher.cancel(&job.id);
    }
    state.store.delete(&job.id).await?;
    videogen_control::housekeeping::delete_bytes(state.blob.as_ref(), &job.id, "deleted").await;
    state.bus.notify(&job.id);
    Ok(Json(json!({ "id": job.id.as_str(), "object": "video.deleted", "deleted": true })).into_response())
}

pub async fn cancel_video(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(id): VideoPath,
) -> ApiResult<Response> {
    let job = visible_job(&state, &caller, &id).await?;
    let job = state.store.cancel(&job.id, state.clock.now_ms()).await?;
    state.dispatcher.cancel(&job.id);
    // A cancelled video has nothing to show or resume: its checkpoints and
    // input go now (bytes an attempt still uploads meanwhile are fenced
    // out, or left to the orphan sweep).
    videogen_control::housekeeping::delete_bytes(state.blob.as_ref(), &job.id, "cancelled").await;
    state.bus.notify(&job.id);
    metrics::counter!("videogen_jobs_cancelled_total").increment(1);
    Ok(with_poll_hint(&state, &job, render(&job, None), StatusCode::OK))
}
