//! Behaviour of the real server over HTTP: lifecycle, listing, idempotency,
//! cancel, delete, ranges, tenants, retention, events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
}

#[tokio::test]
async fn a_submitted_video_completes_as_a_fast_start_h264_mp4_with_images() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), FAST);
    let (status, v) = s.submit(ADMIN_KEY, body("a red fox running through snow", 7)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["object"], "video");
    assert_eq!(v["seconds"], "4");
    assert_eq!(v["size"], "720x1280");
    assert_eq!(v["seed"], 7);
    let id = v["id"].as_str().unwrap().to_owned();
    let done = s.wait_done(ADMIN_KEY, &id, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["completed_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());
    assert!(done["expires_at"].as_i64().unwrap() > done["completed_at"].as_i64().unwrap());

    let (st, mp4) = s.content(ADMIN_KEY, &id, "video").await;
    assert_eq!(st, 200);
    let info = videogen_media::inspect::inspect_mp4(&mp4).expect("valid mp4");
    assert_eq!(info.top_level_boxes.first().map(String::as_str), Some("ftyp"));
    assert!(info.moov_before_mdat, "moov must precede mdat for fast start");
    assert_eq!(info.codec, "avc1");
    assert_eq!((info.width, info.height), (720, 1280));
    assert_eq!(info.sample_count, 96);
    assert!(
        (info.duration_secs() - 4.0).abs() < 1.0 / 24.0,
        "{}",
        info.duration_secs()
    );
    ffprobe_check(&mp4, 96, 4.0);

    for variant in ["thumbnail", "spritesheet"] {
        let (st, img) = s.content(ADMIN_KEY, &id, variant).await;
        assert_eq!(st, 200);
        assert!(is_jpeg(&img), "{variant} is not a JPEG");
    }

    // Same prompt and seed: bit-identical video.
    let (_, v2) = s.submit(ADMIN_KEY, body("a red fox running through snow", 7)).await;
    let id2 = v2["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &id2, T).await;
    assert_eq!(s.content(ADMIN_KEY, &id2, "video").await.1, mp4);
    // Another prompt: different video.
    let (_, v3) = s.submit(ADMIN_KEY, body("a blue whale under the sea", 7)).await;
    let id3 = v3["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &id3, T).await;
    assert_ne!(s.content(ADMIN_KEY, &id3, "video").await.1, mp4);
}

/// Checks with ffprobe when it is installed (CI installs it).
fn ffprobe_check(mp4: &[u8], frames: u32, secs: f64) {
    let Ok(out) = std::process::Command::new("ffprobe").arg("-version").output() else {
        eprintln!("ffprobe not installed; skipping ffprobe check");
        return;
    };
    assert!(out.status.success());
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), mp4).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,pix_fmt,nb_read_frames,duration",
            "-of",
            "json",
        ])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &v["streams"][0];
    assert_eq!(st["codec_name"], "h264");
    assert_eq!(st["pix_fmt"], "yuv420p");
    assert_eq!(st["nb_read_frames"], frames.to_string());
    let d: f64 = st["duration"].as_str().unwrap().parse().unwrap();
    assert!((d - secs).abs() <= 1.0 / 24.0 + 1e-6, "duration {d}");
}

#[tokio::test]
async fn listing_paginates_with_cursors_in_both_orders() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--workers", "0"]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, v) = s.submit(ADMIN_KEY, body(&format!("clip {i}"), i)).await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for (order, expected) in [("asc", ids.clone()), ("desc", ids.iter().rev().cloned().collect())] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/v1/videos?limit=2&order={order}&after={a}"),
                None => format!("/v1/videos?limit=2&order={order}"),
            };
            let (st, page) = s.get_json(ADMIN_KEY, &q).await;
            assert_eq!(st, 200);
            assert_eq!(page["object"], "list");
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= 2);
            seen.extend(data.iter().map(|v| v["id"].as_str().unwrap().to_owned()));
            assert_eq!(
                page["first_id"],
                data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null)
            );
            assert_eq!(
                page["last_id"],
                data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null)
            );
            if !page["has_more"].as_bool().unwrap() {
                break;
            }
            after = page["last_id"].as_str().map(str::to_owned);
        }
        assert_eq!(seen, expected, "order {order}");
    }
    // Default order is newest first; queued videos report their queue position.
    let (_, page) = s.get_json(ADMIN_KEY, "/v1/videos").await;
    assert_eq!(page["data"][0]["id"].as_str().unwrap(), ids[4]);
    let (_, oldest) = s.get_json(ADMIN_KEY, &format!("/v1/videos/{}", ids[0])).await;
    assert_eq!(oldest["queue_position"], 0);
    let (_, newest) = s.get_json(ADMIN_KEY, &format!("/v1/videos/{}", ids[4])).await;
    assert_eq!(newest["queue_position"], 4);
}

#[tokio::test]
async fn idempotency_key_replays_the_same_video_and_rejects_a_different_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--workers", "0"]);
    let send = |b: Value| {
        s.http
            .post(s.url("/v1/videos"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", "order-42")
            .json(&b)
            .send()
    };
    let a: Value = send(body("a lighthouse", 1)).await.unwrap().json().await.unwrap();
    let b: Value = send(body("a lighthouse", 1)).await.unwrap().json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    let r = send(body("a different lighthouse", 1)).await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "idempotency_key_reused");
    let (_, page) = s.get_json(ADMIN_KEY, "/v1/videos").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    // Without a seed the server picks one, and a replay still matches.
    let no_seed = json!({"prompt": "no seed given", "model": "videogen-ref"});
    let c = s
        .http
        .post(s.url("/v1/videos"))
        .bearer_auth(ADMIN_KEY)
        .header("Idempotency-Key", "k2")
        .json(&no_seed)
        .send();
    let c: Value = c.await.unwrap().json().await.unwrap();
    let d = s
        .http
        .post(s.url("/v1/videos"))
        .bearer_auth(ADMIN_KEY)
        .header("Idempotency-Key", "k2")
        .json(&no_seed)
        .send();
    let d: Value = d.await.unwrap().json().await.unwrap();
    assert_eq!(c["id"], d["id"]);
    assert_eq!(c["seed"], d["seed"]);
}

async fn cancel(s: &Server, id: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn cancel_works_while_queued_and_while_running_and_is_refused_when_done() {
    let dir = tempfile::tempdir().unwrap();
    // Slow steps so the job is observably running.
    let s = Server::start(
        dir.path(),
        &["--steps", "200", "--step-ms", "50", "--checkpoint-every-steps", "5"],
    );
    let (_, running) = s.submit(ADMIN_KEY, body("slow clip", 1)).await;
    let (_, queued) = s.submit(ADMIN_KEY, body("waiting clip", 2)).await;
    let running = running["id"].as_str().unwrap().to_owned();
    let queued = queued["id"].as_str().unwrap().to_owned();

    let (st, v) = cancel(&s, &queued).await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["phase"], "cancelled");
    assert_eq!(v["error"]["code"], "cancelled");

    s.wait_until(ADMIN_KEY, &running, T, |v| {
        v["phase"] == "generating" && v["step"].as_u64().unwrap() >= 6
    })
    .await;
    // It has a checkpoint (every 5 steps) ...
    let owns = |id: &str| blob_files(dir.path()).iter().any(|p| p.to_string_lossy().contains(id));
    assert!(owns(&running), "no checkpoint of the running job");
    let (st, v) = cancel(&s, &running).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["phase"], "cancelled");
    // The worker notices at the next step and frees its slot: a new job runs.
    let (_, next) = s.submit(ADMIN_KEY, body("next clip", 3)).await;
    let next = next["id"].as_str().unwrap().to_owned();
    s.wait_until(ADMIN_KEY, &next, Duration::from_secs(30), |v| {
        v["status"] == "in_progress"
    })
    .await;
    let after = s.video(ADMIN_KEY, &running).await;
    assert_eq!(
        after["phase"], "cancelled",
        "a cancelled job must stay cancelled: {after}"
    );
    let (st, _) = s.content(ADMIN_KEY, &running, "video").await;
    assert_eq!(st, 409);
    // ... which the cancel deleted (an upload the attempt had in flight is
    // fenced out and deleted by the control plane as it lands).
    let deadline = std::time::Instant::now() + T;
    while owns(&running) {
        assert!(std::time::Instant::now() < deadline, "a cancelled job kept its bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (st, e) = cancel(&s, &queued).await;
    assert_eq!(st, 409);
    assert_eq!(e["error"]["code"], "invalid_state");
}

#[tokio::test]
async fn delete_removes_the_video_and_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), FAST);
    let (_, v) = s.submit(ADMIN_KEY, body("to be deleted", 1)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &id, T).await;
    assert!(blob_files(dir.path()).iter().any(|p| p.to_string_lossy().contains(&id)));
    let r = s
        .http
        .delete(s.url(&format!("/v1/videos/{id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d, json!({"id": id, "object": "video.deleted", "deleted": true}));
    let (st, e) = s.get_json(ADMIN_KEY, &format!("/v1/videos/{id}")).await;
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "video_not_found");
    assert!(
        !blob_files(dir.path()).iter().any(|p| p.to_string_lossy().contains(&id)),
        "bytes left behind"
    );
    let r = s
        .http
        .delete(s.url(&format!("/v1/videos/{id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn content_supports_byte_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), FAST);
    let (_, v) = s.submit(ADMIN_KEY, body("ranges", 1)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &id, T).await;
    let (_, full) = s.content(ADMIN_KEY, &id, "video").await;
    let url = s.url(&format!("/v1/videos/{id}/content"));
    let get = |range: &'static str| s.http.get(&url).bearer_auth(ADMIN_KEY).header("Range", range).send();
    let r = get("bytes=0-99").await.unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-99/{}", full.len())
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &full[..100]);
    let r = get("bytes=-10").await.unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &full[full.len() - 10..]);
    let r = get("bytes=100-").await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &full[100..]);
    let r = get("bytes=99999999-").await.unwrap();
    assert_eq!(r.status().as_u16(), 416);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "range_not_satisfiable");
}

#[tokio::test]
async fn tenants_see_only_their_own_videos() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--workers", "0"]);
    let alice = create_key(dir.path(), "alice", "paid");
    let bob = create_key(dir.path(), "bob", "free");
    let (st, v) = s.submit(&alice, body("alice's clip", 1)).await;
    assert_eq!(st, 200);
    assert_eq!(v["tier"], "paid");
    let id = v["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/videos/{id}"),
        format!("/v1/videos/{id}/content"),
        format!("/v1/videos/{id}/events"),
    ] {
        let (st, e) = s.get_json(&bob, &path).await;
        assert_eq!(st, 404, "{path}");
        assert_eq!(e["error"]["code"], "video_not_found");
    }
    let r = s
        .http
        .delete(s.url(&format!("/v1/videos/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = s
        .http
        .post(s.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (_, page) = s.get_json(&bob, "/v1/videos").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    let (_, page) = s.get_json(&alice, "/v1/videos").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    // Still there for its owner.
    assert_eq!(s.video(&alice, &id).await["status"], "queued");
    // Revoked keys stop working at once.
    let out = std::process::Command::new(BIN)
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(!listing.contains(&bob), "secrets must never be listed");
    let bob_id = listing
        .lines()
        .find(|l| l.contains(" bob "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new(BIN)
        .args(["keys", "revoke", &bob_id, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let (st, e) = s.get_json(&bob, "/v1/videos").await;
    assert_eq!(st, 401);
    assert_eq!(e["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn retention_expires_bytes_and_content_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--retention-secs", "1", "--housekeeping-secs", "0.2"]);
    let s = Server::start(dir.path(), &args);
    let (_, v) = s.submit(ADMIN_KEY, body("short-lived", 1)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &id, T).await;
    let v = s
        .wait_until(ADMIN_KEY, &id, Duration::from_secs(30), |v| v["phase"] == "expired")
        .await;
    assert_eq!(v["status"], "completed");
    let (st, e) = s.get_json(ADMIN_KEY, &format!("/v1/videos/{id}/content")).await;
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "video_expired");
    assert!(
        !blob_files(dir.path()).iter().any(|p| p.to_string_lossy().contains(&id)),
        "expired bytes left behind"
    );
}

#[tokio::test]
async fn events_stream_replays_the_log_and_resumes_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), FAST);
    let (_, v) = s.submit(ADMIN_KEY, body("events", 1)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Streams until the terminal event, then the server closes it.
    let text = s
        .http
        .get(s.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(text.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(T, text.text()).await.unwrap().unwrap();
    let events = parse_sse(&text);
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert!(kinds.contains(&"leased"));
    assert!(kinds.contains(&"checkpoint"));
    assert_eq!(kinds.last(), Some(&"completed"));
    let ids: Vec<i64> = events.iter().filter_map(|(id, _, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids must be consecutive: {ids:?}"
    );
    for (_, _, data) in &events {
        assert!(
            ["queued", "in_progress", "completed", "failed"].contains(&data["status"].as_str().unwrap_or("queued"))
        );
    }
    // Resume from the middle.
    let mid = ids[ids.len() / 2];
    let text = s
        .http
        .get(s.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(ADMIN_KEY)
        .header("Last-Event-ID", mid.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed: Vec<i64> = parse_sse(&text).iter().filter_map(|(id, _, _)| *id).collect();
    assert_eq!(resumed, ids.iter().copied().filter(|i| *i > mid).collect::<Vec<_>>());
}
