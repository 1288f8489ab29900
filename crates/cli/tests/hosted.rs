//! Real models through the whole platform: `videogen serve` with a model
//! registry, `videogen worker --models …` supervising `python/videogen_host`
//! processes that run a tiny randomly initialised Wan pipeline (saved and
//! loaded through diffusers' `from_pretrained`). A worker killed in the
//! middle of a generation, and a host process killed alone, both end in a
//! resumed job whose MP4 is byte-identical to an uninterrupted run's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use common::{Server, WORKER_TOKEN, WorkerProc, events, wait_for_event};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use videogen_testkit::host::{make_tiny, python};

const LONG: Duration = Duration::from_secs(240);

/// A registry with the tiny Wan pipeline (32x32, 1 s at 8 fps = 9 frames)
/// and a model whose weights are not there.
fn registry(dir: &Path) -> PathBuf {
    let wan = dir.join("models/wan-tiny");
    std::fs::create_dir_all(&wan).unwrap();
    make_tiny("wan", &wan, &[]);
    let cfg = dir.join("videogen.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[models]]
id = "wan-tiny"
aliases = ["sora-2"]
adapter = "wan"
path = "{}"
dtype = "float32"
sizes = ["32x32"]
seconds = [1]
fps = 8
steps = 12
steps_max = 50
guidance_scale = 4.0
negative_prompt = true
seconds_per_step = {{ "32x32" = 0.2 }}

[[models]]
id = "broken"
adapter = "wan"
path = "{}"
dtype = "float32"
sizes = ["32x32"]
seconds = [1]
fps = 8

[[models]]
id = "videogen-ref"
adapter = "reference"
"#,
            wan.display(),
            dir.join("models/not-there").display()
        ),
    )
    .unwrap();
    cfg
}

fn control_plane(dir: &Path, cfg: &Path) -> Server {
    let args = [
        "--workers",
        "0",
        "--housekeeping-secs",
        "0.2",
        "--lease-ttl-secs",
        "3",
        "--retry-backoff",
        "100ms",
        "--config",
        cfg.to_str().unwrap(),
    ];
    Server::start_with_env(&dir.join("server"), &args, &[("VIDEOGEN_WORKER_TOKEN", WORKER_TOKEN)])
}

fn worker(s: &Server, name: &str, cfg: &Path, models: &str) -> WorkerProc {
    let py = python();
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--models",
        models,
        "--host-python",
        py.to_str().unwrap(),
        "--host-threads",
        "1",
        "--checkpoint-every-steps",
        "2",
        "--step-ms",
        "5",
    ];
    // Paced steps, so "in the middle of a generation" is a wide window.
    WorkerProc::start_with_env(s, name, &args, &[("VIDEOGEN_HOST_MIN_STEP_MS", "150")])
}

async fn submit(s: &Server, key: &str, body: Value) -> String {
    let (status, v) = s.submit(key, body).await;
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn wan_body() -> Value {
    json!({"prompt": "a red fox in the snow", "model": "sora-2", "size": "32x32", "seconds": "1", "seed": 11,
           "negative_prompt": "blurry", "num_inference_steps": 12})
}

/// Waits until the job has a checkpoint at step 2 or later.
async fn checkpointed(s: &Server, id: &str) {
    wait_for_event(s, id, LONG, |k, d| k == "checkpoint" && d["step"].as_i64() >= Some(2)).await;
}

/// The model-host processes of a worker (its child processes).
fn host_pids(w: &WorkerProc) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &w.0.id().to_string()])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_wan_job_survives_worker_and_host_kills_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = registry(dir.path());
    let s = control_plane(dir.path(), &cfg);
    let key = common::create_key(&s.data_dir, "acme", "paid");

    // Bad input is refused at submit, naming the parameter.
    for (patch, param) in [
        (json!({"model": "no-such-model"}), "model"),
        (json!({"size": "1280x720"}), "size"),
        (json!({"seconds": "8"}), "seconds"),
        (json!({"num_inference_steps": 0}), "num_inference_steps"),
        (json!({"num_inference_steps": 51}), "num_inference_steps"),
        (json!({"guidance_scale": 500}), "guidance_scale"),
    ] {
        let mut b = wan_body();
        b.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        let (status, v) = s.submit(&key, b.clone()).await;
        assert_eq!(status, 400, "{b}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }

    let mut a = worker(&s, "a", &cfg, "wan-tiny");
    // Uninterrupted: the reference bytes. Queued, its estimate is the
    // registry's 0.2 s per step times its 12 steps.
    let (status, created) = s.submit(&key, wan_body()).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["estimated_seconds"], 2.4, "{created}");
    let first = created["id"].as_str().unwrap().to_owned();
    let v = s.wait_done(&key, &first, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["model"], "wan-tiny");
    let (code, want) = s.content(&key, &first, "video").await;
    assert_eq!(code, 200);
    let info = videogen_media::inspect::inspect_mp4(&want).unwrap();
    assert_eq!((info.width, info.height, info.sample_count), (32, 32, 9));

    // The fleet reports the model warm on worker a, and its weights hash.
    let (_, models) = s.get_json(&key, "/v1/models/wan-tiny").await;
    assert_eq!(models["videogen"]["workers"]["warm"][0], "a/s0", "{models}");
    assert!(
        models["videogen"]["weights_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // SIGKILL the worker in the middle; another worker resumes.
    let second = submit(&s, &key, wan_body()).await;
    checkpointed(&s, &second).await;
    a.0.kill().unwrap();
    let _ = a.0.wait();
    let mut b = worker(&s, "b", &cfg, "wan-tiny");
    let v = s.wait_done(&key, &second, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        s.content(&key, &second, "video").await.1,
        want,
        "resumed on another worker"
    );
    let evs = events(&s, &second).await;
    assert!(evs.iter().any(|(k, _)| k == "resumed"), "{evs:?}");

    // SIGKILL the host process alone: the worker replaces it and resumes.
    let third = submit(&s, &key, wan_body()).await;
    checkpointed(&s, &third).await;
    let hosts = host_pids(&b);
    assert_eq!(hosts.len(), 1, "one host per slot: {hosts:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hosts[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let v = s.wait_done(&key, &third, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        s.content(&key, &third, "video").await.1,
        want,
        "resumed after a host restart"
    );
    let evs = events(&s, &third).await;
    assert!(evs.iter().any(|(k, _)| k == "resumed"), "{evs:?}");
    assert_ne!(host_pids(&b), hosts, "a new host process");
    let _ = b.0.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_is_reported_and_gets_no_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = registry(dir.path());
    let s = control_plane(dir.path(), &cfg);
    let key = common::create_key(&s.data_dir, "acme", "paid");
    let _w = worker(&s, "w", &cfg, "broken,videogen-ref");

    let stuck = submit(
        &s,
        &key,
        json!({"prompt": "x", "model": "broken", "size": "32x32", "seconds": "1"}),
    )
    .await;
    // The worker keeps working for the model it can run...
    let ok = submit(&s, &key, common::body("a lighthouse", 3)).await;
    let v = s.wait_done(&key, &ok, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    // ...and was never handed the broken model's job.
    let v = s.video(&key, &stuck).await;
    assert_eq!(
        (v["status"].as_str(), v["attempt"].as_u64()),
        (Some("queued"), Some(0)),
        "{v}"
    );
    let (_, m) = s.get_json(&key, "/v1/models/broken").await;
    assert_eq!(m["videogen"]["available"], false, "{m}");
    assert_eq!(m["videogen"]["workers"]["unavailable"][0]["worker"], "w/s0", "{m}");
    assert!(
        !m["videogen"]["workers"]["unavailable"][0]["error"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let (_, list) = s.get_json(&key, "/v1/models").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["wan-tiny", "sora-2", "broken", "videogen-ref"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_soundtrack_is_an_aac_track_as_long_as_the_clip() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::FAST.to_vec();
    args.push("--reference-audio");
    let s = Server::start(dir.path(), &args);
    let key = common::create_key(&s.data_dir, "acme", "paid");
    let id = submit(&s, &key, common::body("a lighthouse at dusk", 5)).await;
    let v = s.wait_done(&key, &id, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    let (code, mp4) = s.content(&key, &id, "video").await;
    assert_eq!(code, 200);
    let info = videogen_media::inspect::inspect_mp4(&mp4).unwrap();
    let audio = info.audio.expect("an audio track");
    assert_eq!((audio.codec.as_str(), audio.audio_object_type), ("mp4a", Some(2)));
    assert_eq!((audio.sample_rate, audio.channels), (48_000, 2));
    // 4 s at 24 fps: the audio is presented for exactly the video's 4 s.
    assert_eq!(info.sample_count, 96);
    let presented = audio.duration_secs();
    assert!((presented - 4.0).abs() < 1e-6, "audio lasts {presented} s");
}

/// An upstream engine as a backend: server A's registry points model `up` at
/// server B's `/v1/videos` (B is another videogen, speaking the same API as
/// SGLang Diffusion and vLLM-Omni's subset). A's worker mirrors B's progress,
/// downloads B's MP4, decodes it and runs A's own moderation, encoding and
/// storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_videogen_serves_as_a_remote_openai_backend() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Server::start(&dir.path().join("b"), common::FAST);
    let upstream_key = common::create_key(&upstream.data_dir, "platform-a", "paid");
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[models]]
id = "up"
adapter = "remote-openai"
base_url = "{}"
upstream_model = "videogen-ref"
api_key_env = "UPSTREAM_KEY"
poll_interval_ms = 50
sizes = ["720x1280"]
seconds = [4]
fps = 24
frame_offset = 0
"#,
            upstream.base
        ),
    )
    .unwrap();
    let a = control_plane(&dir.path().join("a"), &cfg);
    let key = common::create_key(&a.data_dir, "acme", "paid");
    let _w = WorkerProc::start_with_env(
        &a,
        "remote",
        &["--config", cfg.to_str().unwrap(), "--models", "up"],
        &[("UPSTREAM_KEY", upstream_key.as_str())],
    );
    let id = submit(
        &a,
        &key,
        json!({"prompt": "a lighthouse", "model": "up", "size": "720x1280", "seconds": "4", "seed": 3}),
    )
    .await;
    let v = a.wait_done(&key, &id, LONG).await;
    assert_eq!(v["status"], "completed", "{v}");
    let (code, mp4) = a.content(&key, &id, "video").await;
    assert_eq!(code, 200);
    let info = videogen_media::inspect::inspect_mp4(&mp4).unwrap();
    assert_eq!((info.width, info.height, info.sample_count), (720, 1280, 96));
    // A's log mirrored B's progress.
    let evs = events(&a, &id).await;
    let progress = evs.iter().filter(|(k, _)| k == "progress").count();
    assert!(progress >= 2, "{evs:?}");
    // The upstream job was deleted once its video was downloaded.
    let (_, list) = upstream.get_json(&upstream_key, "/v1/videos").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
}
