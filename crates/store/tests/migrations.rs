//! Upgrading a PostgreSQL database written before typed events (schema
//! version 4) keeps what it held: jobs' errors and checkpoints, dead
//! letters, and events with the job fields clients see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use sqlx::postgres::PgPoolOptions;
use videogen_core::store::prelude::*;
use videogen_core::{EventPayload, JobState, Phase, RequeueReason, VideoId};
use videogen_store::PgStore;
use videogen_testkit::pg::TestDb;

const OLD_JOB: &str = r#"INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, attempt,
    created_at_ms, enqueued_at_ms, error_json, checkpoint_json, last_event_seq, event_kind, event_at_ms,
    event_data_json)
    VALUES ($1, 'acme', 'free', 'videogen-ref',
    '{"model":"videogen-ref","prompt":"p","seconds":"4","size":"720x1280","seed":1,"style":null,"steps":30,"input_reference":null}',
    'failed', 'failed', 40, 3, 0, 0,
    '{"code":"max_attempts_exceeded","message":"gave up after 3 attempts"}',
    '{"key":"k","step":12,"attempt":2,"crc32":1,"size_bytes":3}', 1, 'requeued', 5,
    '{"status":"queued","state":"queued","phase":"queued","progress":40,"attempt":2,"reason":"released","resume_step":12}')"#;

#[tokio::test]
async fn a_version_4_database_upgrades_to_typed_events_keeping_its_data() {
    let db = TestDb::empty().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url())
        .await
        .unwrap();
    videogen_store::postgres_until(4).run(&pool).await.unwrap();
    let id = VideoId::generate();
    sqlx::query(OLD_JOB).bind(id.as_str()).execute(&pool).await.unwrap();
    pool.close().await;

    let store = PgStore::connect(&db.url()).await.unwrap();
    let job = store.job(&id).await.unwrap().expect("the job survives");
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.expect("its error survives");
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("max_attempts_exceeded", "gave up after 3 attempts")
    );
    assert_eq!(job.checkpoint.map(|c| c.step), Some(12));
    let dead: Vec<VideoId> = store
        .dead_letters(10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(dead, vec![id.clone()], "still a dead letter, through the new index");

    let events = store.events(&id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.state, e.phase, e.progress, e.attempt, e.checkpoint_step),
        (JobState::Queued, Phase::Queued, 40, 2, Some(12))
    );
    assert_eq!(
        e.payload,
        EventPayload::Requeued {
            reason: RequeueReason::Released,
            error: None
        }
    );
    let v = e.to_json();
    assert_eq!(
        (v["status"].as_str(), v["resume_step"].as_u64()),
        (Some("queued"), Some(12))
    );

    // And the upgraded job takes new writes: a re-drive clears the error.
    store.redrive(&id, 10).await.unwrap();
    let redriven = store.events(&id, 1, 10).await.unwrap();
    assert_eq!(redriven[0].to_json()["previous_error"]["code"], "max_attempts_exceeded");
    assert_eq!(store.job(&id).await.unwrap().unwrap().error, None);
    store.close().await.unwrap();
}
