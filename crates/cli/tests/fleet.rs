//! The worker fleet with real processes: `videogen serve --workers 0` and
//! `videogen worker` processes over the internal worker API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;
use videogen_testkit::pg;

use common::{ADMIN_KEY, BIN, Server, WORKER_TOKEN, WorkerProc, body, checkpoint_steps, events, wait_for_event};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A control plane without in-process workers, and a fast-ish model.
fn control_plane(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--workers", "0", "--steps", "20", "--housekeeping-secs", "0.2"];
    args.extend_from_slice(extra);
    Server::start_with_env(dir, &args, &[("VIDEOGEN_WORKER_TOKEN", WORKER_TOKEN)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_and_releases_at_once_and_another_worker_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path(), &["--lease-ttl-secs", "30"]);
    let slow = [
        "--step-ms",
        "150",
        "--checkpoint-every-steps",
        "100",
        "--checkpoint-every-secs",
        "1000",
    ];
    let mut w1 = WorkerProc::start(&s, "w1", &slow);
    let (status, v) = s.submit(ADMIN_KEY, body("a lighthouse in a storm", 11)).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_until(ADMIN_KEY, &id, LONG, |v| v["progress"].as_u64().unwrap_or(0) >= 20)
        .await;

    // The spot notice. With a 30 s TTL the reaper cannot take the job back
    // within the 10 s wait, and the event says who re-queued it: the
    // release ("released"), not the reaper ("lease_expired").
    w1.signal(Signal::SIGTERM);
    let evs = wait_for_event(&s, &id, Duration::from_secs(10), |k, d| {
        k == "requeued" && d["reason"] == "released"
    })
    .await;
    assert!(
        !evs.iter().any(|(k, d)| k == "requeued" && d["reason"] != "released"),
        "re-queued by anything but the release: {evs:?}"
    );
    let steps = checkpoint_steps(&evs);
    let saved = *steps.last().expect("a checkpoint was committed on notice");
    assert!(saved > 0, "{evs:?}");
    let requeued = evs
        .iter()
        .find(|(k, _)| k == "requeued")
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(requeued["resume_step"].as_i64(), Some(saved), "{requeued}");
    assert!(
        w1.wait_exit(Duration::from_secs(10)),
        "worker did not exit after SIGTERM"
    );

    // Any worker picks it up and resumes from that step.
    let _w2 = WorkerProc::start(&s, "w2", &["--step-ms", "5"]);
    let done = s.wait_done(ADMIN_KEY, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done}");
    let evs = events(&s, &id).await;
    let resumed: Vec<&Value> = evs.iter().filter(|(k, _)| k == "resumed").map(|(_, d)| d).collect();
    assert_eq!(resumed.len(), 1, "{evs:?}");
    assert_eq!(resumed[0]["from_step"].as_i64(), Some(saved));
    assert_eq!(resumed[0]["attempt"].as_i64(), Some(2));

    // Bit-identical to an uninterrupted run of the same seed.
    let (_, again) = s.submit(ADMIN_KEY, body("a lighthouse in a storm", 11)).await;
    let again = again["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &again, LONG).await;
    assert_eq!(
        s.content(ADMIN_KEY, &id, "video").await.1,
        s.content(ADMIN_KEY, &again, "video").await.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_preemption_deadline_the_job_is_released_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path(), &["--lease-ttl-secs", "30"]);
    // No periodic checkpoints, and a deadline no checkpoint upload can meet.
    let flags = [
        "--step-ms",
        "100",
        "--checkpoint-every-steps",
        "0",
        "--checkpoint-every-secs",
        "1000",
        "--preemption-deadline-secs",
        "0.001",
    ];
    let mut w = WorkerProc::start(&s, "w1", &flags);
    let (_, v) = s.submit(ADMIN_KEY, body("a clock tower", 3)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    s.wait_until(ADMIN_KEY, &id, LONG, |v| v["progress"].as_u64().unwrap_or(0) >= 20)
        .await;
    w.signal(Signal::SIGTERM);
    let evs = wait_for_event(&s, &id, Duration::from_secs(10), |k, d| {
        k == "requeued" && d["reason"] == "released"
    })
    .await;
    assert!(
        w.wait_exit(Duration::from_secs(10)),
        "worker did not exit after SIGTERM"
    );
    assert!(
        checkpoint_steps(&evs).is_empty(),
        "no checkpoint should fit the deadline: {evs:?}"
    );
    let requeued = evs
        .iter()
        .find(|(k, _)| k == "requeued")
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(requeued["resume_step"].as_i64(), Some(0), "{requeued}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_latest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path(), &["--lease-ttl-secs", "1"]);
    let w1 = WorkerProc::start(&s, "w1", &["--step-ms", "100", "--checkpoint-every-steps", "2"]);
    let (_, v) = s.submit(ADMIN_KEY, body("a fox in the snow", 5)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let evs = wait_for_event(&s, &id, LONG, |k, d| k == "checkpoint" && d["step"].as_i64() >= Some(6)).await;
    drop(w1); // SIGKILL
    let evs_after = events(&s, &id).await;
    let steps = checkpoint_steps(if evs_after.len() >= evs.len() { &evs_after } else { &evs });
    let (prev, latest) = (steps[steps.len() - 2], steps[steps.len() - 1]);

    // Flip bytes in the latest checkpoint on disk.
    let ck = common::blob_files(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&format!("/{latest:06}.ckpt")))
        .expect("latest checkpoint file");
    let mut bytes = std::fs::read(&ck).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&ck, bytes).unwrap();

    let _w2 = WorkerProc::start(&s, "w2", &["--step-ms", "5"]);
    let done = s.wait_done(ADMIN_KEY, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done}");
    let evs = events(&s, &id).await;
    let rejected = evs
        .iter()
        .find(|(k, _)| k == "checkpoint_rejected")
        .map(|(_, d)| d.clone());
    let rejected = rejected.unwrap_or_else(|| panic!("no checkpoint_rejected event: {evs:?}"));
    assert_eq!(rejected["step"].as_i64(), Some(latest));
    let resumed = evs
        .iter()
        .find(|(k, _)| k == "resumed")
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(resumed["from_step"].as_i64(), Some(prev), "{evs:?}");

    let (_, again) = s.submit(ADMIN_KEY, body("a fox in the snow", 5)).await;
    let again = again["id"].as_str().unwrap().to_owned();
    s.wait_done(ADMIN_KEY, &again, LONG).await;
    assert_eq!(
        s.content(ADMIN_KEY, &id, "video").await.1,
        s.content(ADMIN_KEY, &again, "video").await.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_api_takes_only_worker_tokens_and_fences_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = control_plane(dir.path(), &[]);
    let http = &s.http;
    let acquire = |token: &str| {
        http.post(s.url("/internal/v1/acquire"))
            .bearer_auth(token)
            .json(&json!({ "worker": { "id": "probe/s0", "loaded_models": [] }, "wait_ms": 5000 }))
            .send()
    };
    // A tenant key cannot take jobs.
    assert_eq!(acquire(ADMIN_KEY).await.unwrap().status(), 401);
    // Nothing queued: the long poll ends with 204. (That it waits exactly
    // its `wait_ms` is checked in process under a paused clock:
    // videogen-control's `an_acquire_with_nothing_queued_waits_out_its_wait`.)
    let none = http
        .post(s.url("/internal/v1/acquire"))
        .bearer_auth(WORKER_TOKEN)
        .json(&json!({ "worker": { "id": "probe/s0", "loaded_models": [] }, "wait_ms": 300 }))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 204);

    // A long poll already waiting gets the job as soon as it is submitted.
    let waiting = tokio::spawn(acquire(WORKER_TOKEN));
    s.wait_for_waiting_workers(1, Duration::from_secs(10)).await;
    let (_, v) = s.submit(ADMIN_KEY, body("a probe", 1)).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.status(), 200);
    let a: Value = got.json().await.unwrap();
    assert_eq!(a["lease"]["job_id"], id.as_str());
    let attempt = a["lease"]["attempt"].as_u64().unwrap();
    assert_eq!(attempt, 1);
    let at = |n: u64, tail: &str| s.url(&format!("/internal/v1/jobs/{id}/attempts/{n}/{tail}"));
    let progress = json!({ "phase": "generating", "step": 1, "total_steps": 20, "percent": 4 });

    // The owner may write; a stale attempt is refused with 409 and changes nothing.
    let ok = http
        .post(at(1, "heartbeat"))
        .bearer_auth(WORKER_TOKEN)
        .json(&progress)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["directive"], "continue");
    let stale = http
        .post(at(7, "heartbeat"))
        .bearer_auth(WORKER_TOKEN)
        .json(&progress)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let stale_ck = http
        .put(at(7, "checkpoints/3"))
        .bearer_auth(WORKER_TOKEN)
        .header("x-videogen-crc32", crc32fast::hash(b"state").to_string())
        .body("state")
        .send()
        .await
        .unwrap();
    assert_eq!(stale_ck.status(), 409);
    // A body that does not match its checksum is refused.
    let bad = http
        .put(at(1, "checkpoints/3"))
        .bearer_auth(WORKER_TOKEN)
        .header("x-videogen-crc32", "12345")
        .body("state")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Completing without the assets is refused; the job stays running.
    let early = http
        .post(at(1, "complete"))
        .bearer_auth(WORKER_TOKEN)
        .json(&json!({ "video_bytes": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 400);
    assert_eq!(s.video(ADMIN_KEY, &id).await["status"], "in_progress");
    // Blobs of other jobs are out of reach.
    let other = http
        .get(at(1, "blob?key=outputs%2F00%2Fvideo_x%2F1%2Fvideo.mp4"))
        .bearer_auth(WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400);

    // Cancel: the next heartbeat says so.
    let c = http
        .post(s.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    let after = http
        .post(at(1, "heartbeat"))
        .bearer_auth(WORKER_TOKEN)
        .json(&progress)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.json::<Value>().await.unwrap()["directive"], "cancel");
    let metrics = http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("videogen_fenced_writes_rejected_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// The chaos run, sized for CI: 200 jobs, 4 workers, faults for a
/// bounded time. `videogen chaos` exits non-zero if any check fails.
#[test]
fn chaos_200_jobs_4_workers_lose_and_double_nothing() {
    run_chaos(200, 40, &[]);
}

/// The same run on PostgreSQL (a fresh database), smaller to bound CI time.
#[test]
fn chaos_on_postgres_loses_and_doubles_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(pg::TestDb::create());
    run_chaos(100, 25, &["--database-url", &db.url()]);
    drop(db);
}

fn run_chaos(jobs: u64, chaos_secs: u64, extra: &[&str]) {
    let out = Command::new(BIN)
        .args(["chaos", "--jobs", &jobs.to_string(), "--workers", "4", "--seeds", "4"])
        .args(["--chaos-secs", &chaos_secs.to_string()])
        .args(["--steps", "8", "--step-ms", "40", "--json"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run videogen chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in {stdout}"));
    eprintln!("{report}");
    assert!(out.status.success(), "chaos failed: {report}");
    assert_eq!(report["completed"], jobs);
    assert_eq!(report["byte_identical"], jobs);
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(0));
    let faults: u64 = report["faults"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(faults > 0, "no faults were injected: {report}");
    assert!(
        report["recoveries"].as_u64() > Some(0),
        "no job was interrupted: {report}"
    );
}
