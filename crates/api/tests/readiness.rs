//! `/readyz` says whether this node can take work: not ready while the
//! database refuses writes (a read alone passed on a full disk), while
//! dispatch is paused because the blob store refuses writes, or while the
//! database does not answer; ready again once each clears, with no
//! restart. Driven through the router in process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use videogen_api::ready::Readiness;
use videogen_api::state::{AppState, Limits};
use videogen_core::SystemClock;
use videogen_testkit::pg::TestDb;
use videogen_testkit::proxy::{FaultProxy, Mode};

/// Far above the probe's own deadline; reaching it is the failure.
const HANG: Duration = Duration::from_secs(30);

async fn readyz(state: &AppState) -> (StatusCode, serde_json::Value, Option<String>) {
    let req = Request::get("/readyz").body(Body::empty()).unwrap();
    let resp = tokio::time::timeout(HANG, videogen_api::router(state.clone()).oneshot(req))
        .await
        .expect("/readyz hung")
        .unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap(), retry_after)
}

fn reasons(body: &serde_json::Value) -> String {
    body["reasons"].to_string()
}

#[tokio::test]
async fn not_ready_while_the_database_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = common::state(dir.path(), Limits::default()).await;
    // Probe on every call, so the test sees each change at once.
    state.readiness = Arc::new(Readiness::new("node-1").with_probe_every(Duration::ZERO));
    let (status, body, _) = readyz(&state).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    // The database file now refuses the probe's write, as a full disk
    // refuses every write; reads still work, which is what /readyz checked.
    let side = rusqlite::Connection::open(dir.path().join("videogen.db")).unwrap();
    side.execute_batch(
        "CREATE TRIGGER disk_full_insert BEFORE INSERT ON write_probes \
           BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END; \
         CREATE TRIGGER disk_full_update BEFORE UPDATE ON write_probes \
           BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    let (status, body, retry_after) = readyz(&state).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(reasons(&body).contains("database refuses writes"), "{body}");
    assert!(reasons(&body).contains("disk is full"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    side.execute_batch("DROP TRIGGER disk_full_insert; DROP TRIGGER disk_full_update;")
        .unwrap();
    let (status, body, _) = readyz(&state).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn not_ready_while_dispatch_is_paused_for_the_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(dir.path(), Limits::default()).await;
    state.dispatcher.pause(
        "blob_store_unwritable",
        "blob store unavailable (x): No space left on device (os error 28)",
    );
    let (status, body, _) = readyz(&state).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        reasons(&body).contains("dispatch paused: blob_store_unwritable"),
        "{body}"
    );
    state.dispatcher.resume("blob_store_unwritable");
    let (status, body, _) = readyz(&state).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A database that stops answering (a partition) makes `/readyz` answer
/// 503 at its own deadline instead of hanging with it.
#[tokio::test]
async fn not_ready_while_the_database_does_not_answer() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(db.addr()).await;
    let store = videogen_store::PgStore::connect(&db.url_via(proxy.addr()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut state = common::app_state(Arc::new(store), dir.path(), Arc::new(SystemClock), Limits::default());
    state.readiness = Arc::new(Readiness::new("node-1").with_probe_every(Duration::ZERO));
    assert_eq!(readyz(&state).await.0, StatusCode::OK);
    proxy.set(Mode::BlackHole);
    let (status, body, _) = readyz(&state).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(reasons(&body).contains("database"), "{body}");
    proxy.set(Mode::Forward);
    let deadline = tokio::time::Instant::now() + HANG;
    while readyz(&state).await.0 != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
    }
}
