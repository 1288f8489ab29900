//! The HTTP API: OpenAI Videos-compatible endpoints and videogen's extensions.
//!
//! # Layout
//! - [`routes`]: create, retrieve, list, delete, cancel.
//! - [`create`]: parsing and validating a create request (JSON or multipart).
//! - [`content`]: downloads with `Range` support.
//! - [`events`]: server-sent events from the job's event log.
//! - [`video`]: the Video object as the SDKs parse it.
//! - [`admin`]: operator endpoints (dead letters and their re-drive).
//! - [`auth`]: bearer API keys (hashed) → tenant and tier; worker tokens.
//! - [`error`]: OpenAI's error envelope; every error leaves through it.
//! - [`state`]: shared handles and input limits.
//! - [`layers`]: concurrency and time bounds, the event-stream cap, the access log.
//! - [`worker_api`]: the internal API remote workers run jobs through.
//!
//! [`serve`] takes a bound listener and a shutdown future, so the binary and
//! the tests run exactly the same server.

pub mod admin;
pub mod auth;
pub mod content;
pub mod create;
pub mod decode;
pub mod error;
pub mod events;
pub mod layers;
pub mod listener;
pub mod models;
pub mod ready;
pub mod routes;
pub mod state;
#[cfg(test)]
mod testing;
pub mod video;
pub mod worker_api;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::future::Future;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::ApiError;
pub use state::{AppState, Limits};

/// The full router.
pub fn router(state: AppState) -> Router {
    let limits = state.limits.clone();
    let bounds = &limits.server;
    let v1 = Router::new()
        .route("/videos", post(routes::create_video).get(routes::list_videos))
        .route("/videos/{id}", get(routes::retrieve_video).delete(routes::delete_video))
        .route("/videos/{id}/content", get(content::download))
        .route("/videos/{id}/cancel", post(routes::cancel_video))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::retrieve))
        .route(
            "/videos/{id}/events",
            get(events::stream).layer(Extension(layers::StreamSlots::new(
                bounds.sse_streams_max,
                bounds.sse_streams_per_tenant_max,
            ))),
        )
        .route("/admin/dead_letters", get(admin::list_dead_letters))
        .route("/admin/videos/{id}/retry", post(admin::retry_video))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    let tenant = Router::new()
        .nest("/v1", v1)
        .route("/files/{*key}", get(content::signed_file))
        .layer(layers::bounded(bounds.concurrent_requests_max, bounds.request_timeout));
    let workers = worker_api::routes().layer(layers::bounded(
        bounds.concurrent_requests_max,
        bounds.worker_request_timeout,
    ));
    // Probes and metrics stay outside the bounds: an overloaded node must
    // still say so.
    Router::new()
        .merge(tenant)
        .merge(workers)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes_max))
        .layer(axum::middleware::from_fn(layers::access_log))
        .layer(CatchPanicLayer::custom(|_| {
            metrics::counter!("videogen_http_panics_total").increment(1);
            ApiError::internal().into_response()
        }))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_counted(listener, state, Arc::default(), shutdown).await
}

/// [`serve`], counting connections in `stats`.
pub async fn serve_counted(
    listener: tokio::net::TcpListener,
    state: AppState,
    stats: Arc<listener::ConnStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bounds = &state.limits.server;
    let limits = listener::ConnLimits {
        connections_max: bounds.connections_max,
        header_read_timeout: bounds.header_read_timeout,
        http2_streams_max: bounds.http2_streams_max,
    };
    listener::serve(listener, router(state), limits, stats, shutdown).await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when this node can take work (see [`ready`]); the body says why not.
async fn readyz(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if let Err(why) = state.readiness.database(&state.store, &state.clock).await {
        reasons.push(why);
    }
    if let Some(paused) = state.dispatcher.paused() {
        reasons.push(format!("dispatch paused: {paused}"));
    }
    let ok = reasons.is_empty();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "unavailable" },
        "reasons": reasons,
        "queued": state.dispatcher.queued(),
        // Re-queued after a failure, waiting out their backoff.
        "backing_off": state.dispatcher.backing_off(),
        // Workers long-polling this node right now (`/internal/v1/acquire`
        // and in-process slots).
        "workers_waiting": state.dispatcher.waiting(),
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if !ok {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => ApiError::route_not_found().into_response(),
    }
}
