//! The API's state as `videogen serve --workers 0` builds it (SQLite store,
//! blobs in a directory, the built-in moderator), for the in-process tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // each test file uses part of it

use std::path::Path;
use std::sync::Arc;
use videogen_api::state::{AppState, Downloads, Limits};
use videogen_control::{Dispatcher, JobBus};
use videogen_core::blob::keys;
use videogen_core::store::{NewJob, Store, Submitted};
use videogen_core::{Clock, Outputs, Seconds, SystemClock, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId};
use videogen_sched::SchedulerConfig;

/// The binary's bootstrap admin key (`VIDEOGEN_API_KEY`), inserted by [`state`].
pub const ADMIN_KEY: &str = "vg_test_admin_key_0123456789";

/// The state over `store`, blobs in `blob_dir`, `clock` and `limits`.
pub fn app_state(store: Arc<dyn Store>, blob_dir: &Path, clock: Arc<dyn Clock>, limits: Limits) -> AppState {
    AppState {
        store,
        blob: Arc::new(videogen_blob::LocalBlobStore::new(blob_dir).unwrap()),
        moderator: Arc::new(videogen_safety::DenylistModerator::new()),
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock,
        limits,
        catalog: std::sync::Arc::new(videogen_core::catalog::Catalog::reference(8)),
        fleet: None,
        metrics: None,
        poll_after_ms: 100,
        control: None,
        downloads: Downloads::default(),
        submit_limit: None,
        readiness: Default::default(),
    }
}

/// The state over a SQLite store and blobs under `data_dir`, with `limits`
/// and the admin key [`ADMIN_KEY`].
pub async fn state(data_dir: &Path, limits: Limits) -> AppState {
    let store = videogen_store::SqliteStore::open(&data_dir.join("videogen.db"))
        .await
        .unwrap();
    let state = app_state(Arc::new(store), &data_dir.join("blobs"), Arc::new(SystemClock), limits);
    let rec = videogen_api::auth::key_record(ADMIN_KEY, TenantId::parse("admin").unwrap(), Tier::Internal, true, 0);
    state.store.insert_api_key(&rec).await.unwrap();
    state
}

/// A queued video of the admin tenant, submitted as a create submits it.
pub async fn queued_video(state: &AppState, prompt: &str) -> VideoId {
    let id = VideoId::generate();
    let new = NewJob {
        id: id.clone(),
        tenant: TenantId::parse("admin").unwrap(),
        tier: Tier::Internal,
        spec: VideoSpec {
            model: "videogen-ref".into(),
            prompt: prompt.into(),
            seconds: Seconds::S4,
            size: VideoSize::PORTRAIT_720,
            seed: 3,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        },
        now_ms: state.clock.now_ms(),
    };
    assert!(matches!(
        state.store.submit(new, None).await.unwrap(),
        Submitted::Created(_)
    ));
    id
}

/// A completed video of the admin tenant whose three assets are stored,
/// written the way a worker's attempt leaves it (lease, assets, fenced
/// completion).
pub async fn completed_video(state: &AppState) -> String {
    let id = queued_video(state, "a lighthouse in a storm").await;
    let now = state.clock.now_ms();
    let store = &state.store;
    let lease = store
        .lease(&id, &WorkerId::new("test", "w0"), now, 60_000)
        .await
        .unwrap()
        .expect("a queued job leases");
    let outputs = Outputs {
        video_key: keys::video(&id, lease.attempt),
        thumbnail_key: keys::thumbnail(&id, lease.attempt),
        spritesheet_key: keys::spritesheet(&id, lease.attempt),
        video_bytes: 50_000,
    };
    for (key, len) in [
        (&outputs.video_key, 50_000),
        (&outputs.thumbnail_key, 3_000),
        (&outputs.spritesheet_key, 7_000),
    ] {
        state.blob.put(key, vec![7u8; len].into()).await.unwrap();
    }
    store.complete(&lease, &outputs, now, now + 86_400_000).await.unwrap();
    id.to_string()
}
