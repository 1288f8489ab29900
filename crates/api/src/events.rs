//! `GET /v1/videos/{id}/events`: the job's event log as server-sent events.
//!
//! Each logged event is sent with `id: <seq>`, so a client that reconnects
//! with `Last-Event-ID` continues exactly where it stopped. Queue position is
//! computed live and sent (without an id) whenever it changes. The stream ends
//! after a terminal event, and at once when the job is finished and nothing
//! is left after `Last-Event-ID`.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use videogen_core::VideoId;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::layers::StreamSlots;
use crate::routes::{VideoPath, visible_job};
use crate::state::AppState;

/// Events read from the store per round trip.
const EVENTS_PAGE: u32 = 256;
/// Upper bound on how stale a stream may get if a wake-up is missed.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(id): VideoPath,
    headers: HeaderMap,
    Extension(slots): Extension<StreamSlots>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = visible_job(&state, &caller, &id).await?;
    // Held by the stream until the client goes or the job ends.
    let slot = slots.take(caller.tenant.as_str())?;
    let mut after: i64 = match headers.get("last-event-id").map(|v| v.to_str().map(str::trim)) {
        None => 0,
        Some(Ok(s)) => s.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                "Last-Event-ID",
                "invalid_value",
                "Last-Event-ID must be a non-negative integer.",
            )
        })?,
        Some(Err(_)) => {
            return Err(ApiError::invalid(
                "Last-Event-ID",
                "invalid_value",
                "Last-Event-ID must be ASCII.",
            ));
        }
    };
    let id = job.id;
    let mut wake = state.bus.subscribe();
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut last_position: Option<u64> = None;
        // Whether the newest event sent is terminal. Only the newest decides:
        // an operator's re-drive follows a `failed` with more events.
        let mut terminal = false;
        loop {
            // The job's state is read before its events: a terminal state's
            // event was committed with it, so it is in the read that follows.
            let finished = match state.store.job(&id).await {
                Ok(Some(job)) => job.state.is_terminal(),
                Ok(None) => break, // deleted while streaming
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "event stream read failed");
                    break;
                }
            };
            let events = match state.store.events(&id, after, EVENTS_PAGE).await {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "event stream read failed");
                    break;
                }
            };
            let (full_page, sent) = (events.len() == EVENTS_PAGE as usize, !events.is_empty());
            for ev in events {
                after = ev.seq;
                let kind = ev.kind();
                terminal = kind.is_terminal();
                let mut data = serde_json::json!({
                    "video_id": id.as_str(), "seq": ev.seq, "type": kind.as_str(), "at_ms": ev.at_ms,
                });
                if let (Some(obj), serde_json::Value::Object(fields)) = (data.as_object_mut(), ev.to_json()) {
                    for (k, v) in fields {
                        obj.entry(k).or_insert(v);
                    }
                }
                yield Ok(Event::default().id(ev.seq.to_string()).event(kind.as_str()).data(data.to_string()));
            }
            if full_page {
                continue;
            }
            // Done after a terminal event, or when the job is finished and
            // nothing is left past `Last-Event-ID` (a reconnecting EventSource).
            if terminal || (finished && !sent) {
                break;
            }
            let position = state.dispatcher.position(&id);
            if position.is_some() && position != last_position {
                let data = serde_json::json!({ "video_id": id.as_str(), "type": "queue_position", "queue_position": position });
                yield Ok(Event::default().event("queue_position").data(data.to_string()));
            }
            last_position = position;
            tokio::select! {
                _ = wait_for(&mut wake, &id) => {}
                _ = tokio::time::sleep(POLL_FALLBACK) => {}
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Returns when `id` changed (or we may have missed it).
async fn wait_for(rx: &mut broadcast::Receiver<VideoId>, id: &VideoId) {
    loop {
        match rx.recv().await {
            Ok(changed) if &changed == id => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
