//! Crash safety: `kill -9` of the server loses nothing acknowledged, and a
//! job that was generating resumes from its last checkpoint (not step 0) and
//! produces the byte-identical MP4 of an uninterrupted run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
const SLOW: &[&str] = &[
    "--steps",
    "40",
    "--step-ms",
    "60",
    "--checkpoint-every-steps",
    "4",
    "--poll-after-ms",
    "100",
];

#[tokio::test]
async fn kill_9_mid_generation_resumes_from_a_checkpoint_with_identical_output() {
    let crashed_dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(crashed_dir.path(), SLOW);
    let (_, v) = s.submit(ADMIN_KEY, body("a red fox running through snow", 11)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_until(ADMIN_KEY, &id, T, |v| v["step"].as_u64().unwrap_or(0) >= 14)
        .await;
    s.kill9();

    let s = Server::start(crashed_dir.path(), SLOW);
    let done = s.wait_done(ADMIN_KEY, &id, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2);
    let log = s.event_data(ADMIN_KEY, &id).await;
    let requeued = log.iter().find(|e| e["type"] == "requeued").expect("a requeued event");
    assert_eq!(requeued["reason"], "node_restarted");
    let resumed = log.iter().find(|e| e["type"] == "resumed").expect("a resumed event");
    let from_step = resumed["from_step"].as_u64().unwrap();
    assert!(
        from_step >= 12,
        "resumed from step {from_step}, expected a checkpoint >= 12"
    );
    assert_eq!(resumed["phase"], "resuming_from_checkpoint");
    let (_, crashed_mp4) = s.content(ADMIN_KEY, &id, "video").await;

    // The same request on a fresh server, never interrupted.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = Server::start(clean_dir.path(), SLOW);
    let (_, v) = clean
        .submit(ADMIN_KEY, body("a red fox running through snow", 11))
        .await;
    let clean_id = v["id"].as_str().unwrap().to_owned();
    let clean_done = clean.wait_done(ADMIN_KEY, &clean_id, T).await;
    assert_eq!(clean_done["attempt"], 1);
    let (_, clean_mp4) = clean.content(ADMIN_KEY, &clean_id, "video").await;
    assert!(!crashed_mp4.is_empty());
    assert!(
        crashed_mp4 == clean_mp4,
        "resumed output differs from an uninterrupted run"
    );
}

#[tokio::test]
async fn kill_9_right_after_submit_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &["--workers", "0"]);
    let mut ids = Vec::new();
    for i in 0..8 {
        let (st, v) = s.submit(ADMIN_KEY, body(&format!("clip {i}"), i)).await;
        assert_eq!(st, 200);
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    s.kill9();
    let s = Server::start(dir.path(), FAST);
    for id in &ids {
        let v = s.wait_done(ADMIN_KEY, id, T).await;
        assert_eq!(v["status"], "completed", "{v}");
    }
}
