//! Unit-test support: a real [`AppState`] (in-memory store, blobs in a
//! temporary directory, the built-in moderator), and helpers to call
//! extractors and read the error envelope.

use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;
use tempfile::TempDir;
use videogen_control::{Dispatcher, JobBus};
use videogen_core::store::WorkerToken;
use videogen_core::{SystemClock, TenantId, Tier};
use videogen_sched::SchedulerConfig;

use crate::state::{AppState, Limits};

pub(crate) struct TestApp {
    pub state: AppState,
    _blobs: TempDir,
}

pub(crate) async fn app() -> TestApp {
    let blobs = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    let state = AppState {
        store: Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap()),
        blob: Arc::new(videogen_blob::LocalBlobStore::new(blobs.path()).unwrap()),
        moderator: Arc::new(videogen_safety::DenylistModerator::new()),
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock,
        limits: Limits::default(),
        catalog: std::sync::Arc::new(videogen_core::catalog::Catalog::reference(8)),
        fleet: None,
        metrics: None,
        poll_after_ms: 100,
        control: None,
        downloads: crate::state::Downloads::default(),
        submit_limit: None,
        readiness: Default::default(),
    };
    TestApp { state, _blobs: blobs }
}

/// Installs a new API key; returns its secret.
pub(crate) async fn api_key(state: &AppState, tenant: &str, admin: bool) -> String {
    let secret = crate::auth::generate_secret();
    let rec = crate::auth::key_record(&secret, TenantId::parse(tenant).unwrap(), Tier::Paid, admin, 0);
    state.store.insert_api_key(&rec).await.unwrap();
    secret
}

/// Installs a new worker token; returns its secret and record.
pub(crate) async fn worker_token(state: &AppState, name: &str) -> (String, WorkerToken) {
    let secret = crate::auth::generate_worker_secret();
    let rec = crate::auth::worker_token_record(&secret, name, 0);
    state.store.insert_worker_token(&rec).await.unwrap();
    (secret, rec)
}

/// Request parts with `Authorization: <authorization>`, if any.
pub(crate) fn parts(authorization: Option<&str>) -> Parts {
    let mut req = Request::builder().uri("/");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.body(()).unwrap().into_parts().0
}

/// Status and JSON body of a response.
pub(crate) async fn json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Status and JSON body of an error, as it would leave the API.
pub(crate) async fn error_json(e: crate::ApiError) -> (StatusCode, Value) {
    json(e.into_response()).await
}
