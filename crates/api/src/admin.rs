//! Operator endpoints under `/v1/admin`, for admin API keys only (anyone
//! else: 403 `forbidden`). They see every tenant's jobs, so their Video
//! objects also carry `tenant`.
//!
//! - `GET /v1/admin/dead_letters?limit=&after=`: jobs that failed with
//!   `max_attempts_exceeded`, oldest first, in OpenAI's list envelope.
//! - `POST /v1/admin/videos/{id}/retry`: re-drives a dead letter (fresh
//!   attempt budget, same fencing counter) and schedules it; 409
//!   `not_dead_lettered` for any other job.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use videogen_core::store::StoreError;
use videogen_core::{Job, VideoId};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{VideoPath, list_after, list_limit, list_page, query_pairs};
use crate::state::AppState;
use crate::video::render;

/// The Video object plus the tenant it belongs to.
fn render_admin(job: &Job, queue_position: Option<u64>) -> Value {
    let mut v = render(job, queue_position);
    v["tenant"] = json!(job.tenant.as_str());
    v
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("This endpoint needs an admin API key."))
    }
}

pub async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let pairs = query_pairs(q.as_deref(), &["after", "limit"])?;
    let limit = list_limit(&pairs, &state.limits)?;
    let after = list_after(&pairs)?;
    let jobs = state.store.dead_letters(limit + 1, after).await?;
    Ok(list_page(jobs, limit, |j| render_admin(j, None)))
}

pub async fn retry_video(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(raw_id): VideoPath,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let shown: String = raw_id.chars().take(80).collect();
    let id = VideoId::parse(&raw_id).ok_or_else(|| ApiError::video_not_found(&shown))?;
    let queued = match state.store.redrive(&id, state.clock.now_ms()).await {
        Ok(q) => q,
        Err(StoreError::IllegalTransition(t)) => {
            return Err(ApiError::conflict(
                "not_dead_lettered",
                format!(
                    "Video '{id}' is {} and not a dead letter; only videos that failed with \
                     max_attempts_exceeded can be retried.",
                    t.from
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // Committed: from here on the job must reach the scheduler, or it would
    // sit queued until the next restart.
    state.dispatcher.enqueue(queued);
    state.bus.notify(&id);
    metrics::counter!("videogen_dead_letter_redriven_total").increment(1);
    tracing::info!(job = %id, by = %caller.key_id, "dead letter re-driven");
    let job = state
        .store
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::video_not_found(&shown))?;
    let body = render_admin(&job, state.dispatcher.position(&id));
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{app, error_json, json};
    use videogen_core::store::{NewJob, Reclaimed, Store, Submitted};
    use videogen_core::{Seconds, TenantId, Tier, VideoSize, VideoSpec, WorkerId};

    fn caller(admin: bool) -> Caller {
        Caller {
            tenant: TenantId::parse("ops").unwrap(),
            tier: Tier::Internal,
            admin,
            key_id: "key_test".into(),
        }
    }

    async fn submit(store: &dyn Store, tenant: &str) -> Job {
        let new = NewJob {
            id: VideoId::generate(),
            tenant: TenantId::parse(tenant).unwrap(),
            tier: Tier::Free,
            spec: VideoSpec {
                model: "videogen-ref".into(),
                prompt: "waves".into(),
                seconds: Seconds::S4,
                size: VideoSize::PORTRAIT_720,
                seed: 1,
                style: None,
                steps: 8,
                input_reference: None,
                params: Default::default(),
            },
            now_ms: 1,
        };
        match store.submit(new, None).await.unwrap() {
            Submitted::Created(j) => j,
            Submitted::Replayed(_) => unreachable!(),
        }
    }

    /// A job whose only attempt failed: a dead letter.
    async fn dead_letter(store: &dyn Store, tenant: &str) -> VideoId {
        let j = submit(store, tenant).await;
        let lease = store
            .lease(&j.id, &WorkerId::new("n", "w"), 2, 1_000)
            .await
            .unwrap()
            .unwrap();
        let r = store
            .requeue_or_dead_letter(&lease, "disk full", 3, 1, None)
            .await
            .unwrap();
        assert!(matches!(r, Reclaimed::DeadLettered(_)));
        j.id
    }

    async fn list(state: &AppState, admin: bool, q: Option<&str>) -> (StatusCode, serde_json::Value) {
        match list_dead_letters(State(state.clone()), caller(admin), RawQuery(q.map(Into::into))).await {
            Ok(r) => json(r).await,
            Err(e) => error_json(e).await,
        }
    }

    async fn retry(state: &AppState, admin: bool, id: &str) -> (StatusCode, serde_json::Value) {
        match retry_video(State(state.clone()), caller(admin), VideoPath(id.into())).await {
            Ok(r) => json(r).await,
            Err(e) => error_json(e).await,
        }
    }

    #[tokio::test]
    async fn non_admins_are_forbidden() {
        let app = app().await;
        let id = dead_letter(app.state.store.as_ref(), "acme").await;
        for (status, body) in [
            list(&app.state, false, None).await,
            retry(&app.state, false, id.as_str()).await,
        ] {
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["error"]["code"], "forbidden");
            assert_eq!(body["error"]["type"], "permission_error");
        }
        assert_eq!(
            app.state.store.dead_letters(10, None).await.unwrap().len(),
            1,
            "unchanged"
        );
        assert_eq!(app.state.dispatcher.queued(), 0);
    }

    #[tokio::test]
    async fn lists_every_tenants_dead_letters_in_pages() {
        let app = app().await;
        let store = app.state.store.as_ref();
        let mut dead = Vec::new();
        for tenant in ["acme", "globex", "acme"] {
            dead.push((dead_letter(store, tenant).await, tenant));
        }
        dead.sort();
        let ids: Vec<VideoId> = dead.iter().map(|(id, _)| id.clone()).collect();
        submit(store, "acme").await; // queued: not listed
        let (status, page) = list(&app.state, true, Some("limit=2")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["object"], "list");
        assert_eq!(page["has_more"], true);
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(
            (data[0]["id"].as_str(), data[1]["id"].as_str()),
            (Some(ids[0].as_str()), Some(ids[1].as_str()))
        );
        assert_eq!(
            (page["first_id"].as_str(), page["last_id"].as_str()),
            (Some(ids[0].as_str()), Some(ids[1].as_str()))
        );
        assert_eq!(data[0]["object"], "video");
        assert_eq!(
            (data[0]["tenant"].as_str(), data[1]["tenant"].as_str()),
            (Some(dead[0].1), Some(dead[1].1))
        );
        assert_eq!(data[0]["status"], "failed");
        assert_eq!(data[0]["error"]["code"], "max_attempts_exceeded");

        let (_, rest) = list(&app.state, true, Some(&format!("limit=2&after={}", ids[1]))).await;
        assert_eq!(rest["has_more"], false);
        let data = rest["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], ids[2].as_str());

        for bad in ["limit=0", "limit=101", "after=nope", "order=asc"] {
            let (status, body) = list(&app.state, true, Some(bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
    }

    #[tokio::test]
    async fn retry_redrives_and_schedules_a_dead_letter() {
        let app = app().await;
        let st = &app.state;
        let id = dead_letter(st.store.as_ref(), "acme").await;
        let (status, v) = retry(st, true, id.as_str()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            (v["id"].as_str(), v["status"].as_str()),
            (Some(id.as_str()), Some("queued"))
        );
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["attempt"], 1);
        assert_eq!(v["queue_position"], 0, "enqueued in the dispatcher, nothing ahead");
        assert_eq!(st.dispatcher.queued(), 1);
        assert!(st.store.dead_letters(10, None).await.unwrap().is_empty());

        // Again: now it is queued, not dead.
        let (status, body) = retry(st, true, id.as_str()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "not_dead_lettered");
        assert_eq!(st.dispatcher.queued(), 1);
    }

    #[tokio::test]
    async fn retry_of_unknown_or_live_jobs_changes_nothing() {
        let app = app().await;
        let st = &app.state;
        for unknown in ["video_0123456789abcdef0123456789abcdef", "nope"] {
            let (status, body) = retry(st, true, unknown).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
            assert_eq!(body["error"]["code"], "video_not_found");
        }
        let queued = submit(st.store.as_ref(), "acme").await;
        let cancelled = submit(st.store.as_ref(), "acme").await;
        st.store.cancel(&cancelled.id, 2).await.unwrap();
        for id in [&queued.id, &cancelled.id] {
            let before = st.store.job(id).await.unwrap();
            let (status, body) = retry(st, true, id.as_str()).await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"]["code"], "not_dead_lettered");
            assert_eq!(st.store.job(id).await.unwrap(), before);
        }
        assert_eq!(st.dispatcher.queued(), 0);
    }
}
