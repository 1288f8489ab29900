//! Several nodes on one PostgreSQL: two API nodes, two scheduler nodes (one
//! leads at a time) and three `videogen worker` processes, all real
//! processes on loopback. One API node and then the scheduler leader are
//! killed with SIGKILL mid-load.
//!
//! Checks: every job that got a success response completes exactly once
//! (one `completed` event, one job row per idempotency key); a submission
//! whose answer died with its node is retried on the other node with the
//! same idempotency key and never doubles; SSE streams on the node that did
//! not accept a job see it through; the standby scheduler takes over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;
use videogen_testkit::pg;

use common::{ADMIN_KEY, BIN, Server, parse_sse};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER_TOKEN: &str = "vgw_multinode_test_token_0123456789";
const JOBS: usize = 48;
/// Submissions before the first API node is killed.
const KILL_API_AFTER: usize = 16;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_args<'a>(db_url: &'a str, blob_url: &'a str, role: &'a str) -> Vec<&'a str> {
    vec![
        "--role",
        role,
        "--database-url",
        db_url,
        "--blob-url",
        blob_url,
        "--workers",
        "0",
        "--steps",
        "8",
        "--poll-after-ms",
        "100",
        "--lease-ttl-secs",
        "3",
        "--housekeeping-secs",
        "0.2",
        "--leader-lease-secs",
        "2",
        "--max-attempts",
        "10",
    ]
}

fn start_node(dir: &Path, args: &[&str]) -> Server {
    Server::start_with_env(dir, args, &[("VIDEOGEN_WORKER_TOKEN", WORKER_TOKEN)])
}

fn start_worker(servers: &str, name: &str) -> Worker {
    let child = Command::new(BIN)
        .args(["worker", "--server", servers, "--name", name])
        .args(["--step-ms", "30", "--checkpoint-every-steps", "2"])
        .env("VIDEOGEN_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn videogen worker");
    Worker(child)
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Submits with an idempotency key; `None` when the node's answer never came.
async fn submit(http: &reqwest::Client, base: &str, key: &str, n: usize) -> Option<Value> {
    let body = serde_json::json!({
        "model": "videogen-ref", "prompt": format!("multinode {n}"), "seconds": "4",
        "size": "720x1280", "seed": n as u64 % 3,
    });
    let resp = http
        .post(format!("{base}/v1/videos"))
        .bearer_auth(ADMIN_KEY)
        .header("Idempotency-Key", key)
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .ok()?;
    assert!(
        resp.status().is_success(),
        "submit on a live node failed: {}",
        resp.status()
    );
    resp.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_nodes_and_the_scheduler_leader_die_and_nothing_is_lost_or_doubled() {
    let db = pg::TestDb::create().await;
    let db_url = db.url();
    let root = tempfile::tempdir().unwrap();
    let blob_url = format!("file://{}", root.path().join("blobs").display());

    // Scheduler A starts first, so it leads; B stands by.
    let mut sched_a = start_node(
        &root.path().join("sched-a"),
        &node_args(&db_url, &blob_url, "scheduler"),
    );
    let sched_b = start_node(
        &root.path().join("sched-b"),
        &node_args(&db_url, &blob_url, "scheduler"),
    );
    let mut api1 = start_node(&root.path().join("api-1"), &node_args(&db_url, &blob_url, "api"));
    let api2 = start_node(&root.path().join("api-2"), &node_args(&db_url, &blob_url, "api"));
    let http = reqwest::Client::new();
    assert_eq!(
        metric(&http, &sched_a.base, "videogen_scheduler_leader").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&http, &sched_b.base, "videogen_scheduler_leader").await,
        Some(0.0)
    );

    let servers = format!("{},{}", sched_a.base, sched_b.base);
    let _workers: Vec<Worker> = (0..3).map(|i| start_worker(&servers, &format!("w{i}"))).collect();

    // Submit through both API nodes alternately; stream each job from the
    // node that did not accept it (api2 for api1's jobs: api2 survives).
    let mut accepted: HashMap<String, String> = HashMap::new(); // idempotency key → job id
    let mut streams = Vec::new();
    let mut api1_alive = true;
    for n in 0..JOBS {
        if n == KILL_API_AFTER {
            api1.kill9();
            api1_alive = false;
        }
        let key = format!("job-{n}");
        let on_api1 = n % 2 == 0;
        let first = if on_api1 { &api1.base } else { &api2.base };
        let mut video = submit(&http, first, &key, n).await;
        if video.is_none() {
            assert!(on_api1 && !api1_alive, "job {n}: api2 did not answer");
            // The client's retry on the surviving node, with the same key.
            video = submit(&http, &api2.base, &key, n).await;
        }
        let video = video.unwrap_or_else(|| panic!("job {n}: no node accepted it"));
        let id = video["id"].as_str().unwrap().to_owned();
        if on_api1 && api1_alive {
            let (http, base, id) = (http.clone(), api2.base.clone(), id.clone());
            streams.push(tokio::spawn(async move { sse_until_terminal(&http, &base, &id).await }));
        }
        assert!(accepted.insert(key, id).is_none());
    }

    // Kill the scheduler leader while jobs are running; B must take over.
    let first = accepted.get("job-0").expect("job-0 accepted").clone();
    api2.wait_until(ADMIN_KEY, &first, Duration::from_secs(60), |v| v["status"] != "queued")
        .await;
    sched_a.kill9();
    let took_over = Instant::now();
    loop {
        if metric(&http, &sched_b.base, "videogen_scheduler_leader").await == Some(1.0) {
            break;
        }
        assert!(
            took_over.elapsed() < Duration::from_secs(15),
            "scheduler B never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every accepted job completes exactly once.
    for id in accepted.values() {
        let v = api2.wait_done(ADMIN_KEY, id, Duration::from_secs(180)).await;
        assert_eq!(v["status"], "completed", "{v}");
        let events = api2.event_data(ADMIN_KEY, id).await;
        let completed = events.iter().filter(|e| e["type"] == "completed").count();
        assert_eq!(completed, 1, "job {id} events: {events:?}");
        let (status, bytes) = api2.content(ADMIN_KEY, id, "video").await;
        assert_eq!(status, 200);
        assert!(bytes.len() > 1000);
    }
    // Nothing else was created: one job per idempotency key.
    let (status, list) = api2.get_json(ADMIN_KEY, "/v1/videos?limit=100").await;
    assert_eq!(status, 200);
    let listed: HashSet<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    let ids: HashSet<&str> = accepted.values().map(String::as_str).collect();
    assert_eq!(listed, ids);

    // Streams on the other node saw their jobs through, without errors.
    assert!(!streams.is_empty());
    for s in streams {
        let kinds = s.await.unwrap();
        assert_eq!(kinds.first().map(String::as_str), Some("created"), "{kinds:?}");
        assert_eq!(kinds.last().map(String::as_str), Some("completed"), "{kinds:?}");
    }
    drop(api2);
    drop(sched_b);
}

/// Streams a job's events until a terminal one; returns the event kinds.
async fn sse_until_terminal(http: &reqwest::Client, base: &str, id: &str) -> Vec<String> {
    let text = http
        .get(format!("{base}/v1/videos/{id}/events"))
        .bearer_auth(ADMIN_KEY)
        .timeout(Duration::from_secs(180))
        .send()
        .await
        .expect("SSE request")
        .text()
        .await
        .expect("SSE stream ended without an error");
    parse_sse(&text)
        .into_iter()
        .filter(|(id, _, _)| id.is_some())
        .map(|(_, kind, _)| kind)
        .collect()
}
