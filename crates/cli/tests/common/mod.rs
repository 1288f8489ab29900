//! Test harness: starts the real `videogen` binary on an ephemeral port with
//! a temporary data dir and talks to it over HTTP.
#![allow(dead_code)]

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "vg_test_admin_key_0123456789";
pub const BIN: &str = env!("CARGO_BIN_EXE_videogen");

/// Fast model settings so a video completes in about a second.
pub const FAST: &[&str] = &[
    "--steps",
    "8",
    "--step-ms",
    "5",
    "--checkpoint-every-steps",
    "2",
    "--poll-after-ms",
    "100",
];

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(dir, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        cmd.env("VIDEOGEN_API_KEY", ADMIN_KEY)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn videogen serve");
        let stdout = child.stdout.take().expect("stdout");
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
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its address");
        Server {
            child: Some(child),
            base,
            data_dir: dir.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn submit(&self, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/v1/videos"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The data of every event in a finished job's log (the SSE stream ends
    /// at a terminal event).
    pub async fn event_data(&self, key: &str, id: &str) -> Vec<Value> {
        let text = self
            .http
            .get(self.url(&format!("/v1/videos/{id}/events")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_sse(&text).into_iter().map(|(_, _, data)| data).collect()
    }

    pub async fn get_json(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(key).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn video(&self, key: &str, id: &str) -> Value {
        let (s, v) = self.get_json(key, &format!("/v1/videos/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls until the video's status is terminal.
    pub async fn wait_done(&self, key: &str, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.video(key, id).await;
            if matches!(v["status"].as_str(), Some("completed" | "failed")) {
                return v;
            }
            assert!(start.elapsed() < timeout, "video {id} not done after {timeout:?}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/readyz` until at least `n` workers long-poll this node, so a
    /// test acts only once they wait.
    pub async fn wait_for_waiting_workers(&self, n: u64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let r = self.http.get(self.url("/readyz")).send().await.unwrap();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if v["workers_waiting"].as_u64().is_some_and(|w| w >= n) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{n} workers not waiting after {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until `pred` holds for the video.
    pub async fn wait_until(&self, key: &str, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.video(key, id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "condition not reached for {id} after {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn content(&self, key: &str, id: &str, variant: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(self.url(&format!("/v1/videos/{id}/content?variant={variant}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates a key with the CLI, as an operator would.
pub fn create_key(dir: &Path, tenant: &str, tier: &str) -> String {
    let out = Command::new(BIN)
        .args(["keys", "create", "--tenant", tenant, "--tier", tier, "--data-dir"])
        .arg(dir)
        .output()
        .expect("videogen keys create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn body(prompt: &str, seed: u64) -> Value {
    serde_json::json!({ "model": "videogen-ref", "prompt": prompt, "seconds": "4", "size": "720x1280", "seed": seed })
}

/// Files under the blob directory (to prove nothing was left behind).
#[allow(unused_imports)] // not every test crate that includes this module uses it
pub use videogen_testkit::files::blob_files;

/// Parses a server-sent-events body into `(id, event, data)` triples.
pub fn parse_sse(text: &str) -> Vec<(Option<i64>, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut kind = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            Some((id, kind?, data?))
        })
        .collect()
}

pub const WORKER_TOKEN: &str = "vgw_test_worker_token_0123456789abcdef";
/// A `videogen worker` process, killed when dropped.
pub struct WorkerProc(pub Child);

impl WorkerProc {
    pub fn start(s: &Server, name: &str, extra: &[&str]) -> WorkerProc {
        Self::start_with_env(s, name, extra, &[])
    }

    /// [`WorkerProc::start`] with extra environment variables.
    pub fn start_with_env(s: &Server, name: &str, extra: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        let child = Command::new(BIN)
            .args(["worker", "--server", &s.base, "--name", name])
            .args(extra)
            .envs(env.iter().copied())
            .env("VIDEOGEN_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn videogen worker");
        WorkerProc(child)
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), sig).expect("signal worker");
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.0.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The job's event log (kind, data), read from the database file (WAL lets
/// a reader in while the server writes; SSE would stream until the job ends).
/// The attempt, and a `requeued` event's `resume_step`, are the columns the
/// trigger recorded beside the payload, added as `JobEvent::to_json` shows
/// them to clients.
pub async fn events(s: &Server, id: &str) -> Vec<(String, Value)> {
    let db = rusqlite::Connection::open_with_flags(
        s.data_dir.join("videogen.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT kind, data_json, checkpoint_step, attempt FROM job_events WHERE job_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([id], |r| {
        let kind: String = r.get(0)?;
        let data: String = r.get(1)?;
        let mut data = serde_json::from_str(&data).unwrap_or(Value::Null);
        if kind == "requeued" {
            let step: Option<i64> = r.get(2)?;
            data["resume_step"] = step.unwrap_or(0).into();
        }
        data["attempt"] = r.get::<_, i64>(3)?.into();
        Ok((kind, data))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub async fn wait_for_event(
    s: &Server,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let end = Instant::now() + timeout;
    loop {
        let evs = events(s, id).await;
        if evs.iter().any(|(k, d)| pred(k, d)) {
            return evs;
        }
        assert!(Instant::now() < end, "event not seen in {timeout:?}: {evs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn checkpoint_steps(evs: &[(String, Value)]) -> Vec<i64> {
    evs.iter()
        .filter(|(k, _)| k == "checkpoint")
        .filter_map(|(_, d)| d["step"].as_i64())
        .collect()
}
