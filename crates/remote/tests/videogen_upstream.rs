//! End to end: a real `videogen serve` (the workspace's binary, built once by
//! this test with `cargo build -p videogen`, or `$VIDEOGEN_BIN`) is the
//! upstream; the adapter generates through its `/v1/videos` with an API key
//! made by `videogen keys create`, as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use videogen_model::{Availability, Generation, GenerationRequest, Model, RgbImage};
use videogen_remote::{RemoteOpenAiConfig, RemoteOpenAiModel, TOTAL_STEPS};

const ADMIN_KEY: &str = "vg_test_admin_key_0123456789";

/// The `videogen` binary: `$VIDEOGEN_BIN`, else built (once per test
/// process) from this workspace. If the build fails (someone's half-made
/// change elsewhere) an existing `target/debug/videogen` is used instead.
fn videogen_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("VIDEOGEN_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "-p",
                "videogen",
                "--bin",
                "videogen",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build -p videogen");
        let built = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "videogen")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from));
        match built {
            Some(p) if out.status.success() => p,
            _ => {
                let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
                let fallback = target.join("debug/videogen");
                assert!(
                    fallback.exists(),
                    "cargo build -p videogen failed and there is no {}",
                    fallback.display()
                );
                eprintln!("note: cargo build -p videogen failed; using {}", fallback.display());
                fallback
            }
        }
    })
}

/// A `videogen serve` on an ephemeral port with a temporary data dir.
struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(videogen_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("VIDEOGEN_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn videogen serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("videogen listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("videogen serve did not report its address");
        Server {
            child,
            base: if addr.starts_with("http") {
                addr
            } else {
                format!("http://{addr}")
            },
            dir,
        }
    }

    /// `videogen keys create`, as an operator makes a key.
    fn create_key(&self) -> String {
        let out = Command::new(videogen_bin())
            .args(["keys", "create", "--tenant", "acme", "--tier", "paid", "--data-dir"])
            .arg(self.dir.path())
            .output()
            .expect("videogen keys create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `GET /v1/videos/{id}` as the tenant: status code and body.
    fn video(&self, key: &str, id: &str) -> (u16, Value) {
        let url = format!("{}/v1/videos/{id}", self.base);
        let key = key.to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let r = reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fast_server() -> Server {
    Server::start(&[
        "--steps",
        "8",
        "--step-ms",
        "60",
        "--checkpoint-every-steps",
        "2",
        "--poll-after-ms",
        "50",
    ])
}

fn model_for(server: &Server, key: String) -> RemoteOpenAiModel {
    let cfg = RemoteOpenAiConfig {
        api_key: Some(key),
        poll_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(20),
        overall_timeout: Duration::from_secs(300),
        ..RemoteOpenAiConfig::new(server.base.clone(), "videogen-ref")
    };
    RemoteOpenAiModel::new("remote-ref", cfg).unwrap()
}

#[test]
fn generates_through_a_real_videogen_upstream() {
    let server = fast_server();
    let key = server.create_key();
    let model = model_for(&server, key.clone());
    model.load().unwrap();
    assert_eq!(model.availability(), Availability::Warm);

    // The reference model's shape: 720x1280, 4 s at 24 fps.
    let mut req = GenerationRequest::new("a lighthouse at dusk, waves", 7, 720, 1280, 96);
    req.steps = 8;
    req.fps = 24;
    let mut g = model.start_remote(&req).unwrap();
    let id = g.upstream_id().to_owned();
    assert!(!g.checkpointable());
    assert!(g.checkpoint().is_err());
    let started = Instant::now();
    let mut steps = vec![g.steps_done()];
    while !g.is_done() {
        g.step().unwrap();
        steps.push(g.steps_done());
        assert!(started.elapsed() < Duration::from_secs(240), "not done: {steps:?}");
    }
    eprintln!("steps mirrored from the upstream's progress: {steps:?}");
    // Progress mirrors the upstream's: rising, through intermediate values, to 100.
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&TOTAL_STEPS));
    assert!(
        steps.iter().any(|&s| s > 0 && s < TOTAL_STEPS),
        "no intermediate progress: {steps:?}"
    );
    let (status, job) = server.video(&key, &id);
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        (job["status"].as_str(), job["progress"].as_u64()),
        (Some("completed"), Some(100))
    );
    assert_eq!(job["seed"].as_u64(), Some(7), "{job}");
    assert_eq!(job["total_steps"].as_u64(), Some(8), "{job}");

    let frames = Box::new(g).into_frames().unwrap();
    assert_eq!((frames.count(), frames.fps()), (96, 24));
    for i in [0, 47, 95] {
        let f = frames.frame(i);
        assert_eq!((f.width, f.height, f.data.len()), (720, 1280, 720 * 1280 * 3));
        let mean = f.data.iter().map(|&b| f64::from(b)).sum::<f64>() / f.data.len() as f64;
        let var = f.data.iter().map(|&b| (f64::from(b) - mean).powi(2)).sum::<f64>() / f.data.len() as f64;
        // The reference model draws prompt-seeded shapes: a picture, not a flat field.
        assert!(var.sqrt() > 5.0, "frame {i} is flat: mean {mean}, sd {}", var.sqrt());
    }
    // Downloaded: the adapter deleted the upstream job.
    wait_gone(&server, &key, &id);
}

#[test]
fn an_image_job_goes_multipart_and_dropping_it_cancels_upstream() {
    let server = fast_server();
    let key = server.create_key();
    let model = model_for(&server, key.clone());
    let mut req = GenerationRequest::new("a red kite over hills", 11, 1280, 720, 96);
    req.steps = 8;
    req.first_frame = Some(RgbImage {
        width: 64,
        height: 36,
        data: (0..64 * 36 * 3).map(|i| (i % 251) as u8).collect(),
    });
    let g = model.start_remote(&req).unwrap();
    let id = g.upstream_id().to_owned();
    // videogen took the multipart body with its input_reference.
    let (status, job) = server.video(&key, &id);
    assert_eq!(status, 200, "{job}");
    assert!(
        matches!(job["status"].as_str(), Some("queued" | "in_progress")),
        "{job}"
    );
    assert_eq!(job["size"].as_str(), Some("1280x720"));
    drop(g);
    // DELETE cancels the running job and removes it.
    wait_gone(&server, &key, &id);
}

fn wait_gone(server: &Server, key: &str, id: &str) {
    let start = Instant::now();
    loop {
        let (status, job) = server.video(key, id);
        if status == 404 {
            return;
        }
        // A guard against a hang; the DELETE is sent at once.
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "upstream job {id} still there: {status} {job}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
