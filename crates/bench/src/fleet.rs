//! `videogen bench fleet`: the worker fleet's latency figures, with real
//! processes on loopback (`serve --workers 0` plus `videogen worker`s).
//!
//! - **pickup**: a worker long-polling `acquire` is idle; a job is submitted;
//!   time from the submit's response to the worker holding the lease. The
//!   probe speaks the internal API directly (it is a worker), then fails the
//!   job so the next round starts idle.
//! - **graceful preemption**: SIGTERM to a worker mid-generation; time from the
//!   signal to the job's `requeued` (reason `released`) event, with the
//!   checkpoint it committed.
//! - **ungraceful recovery**: SIGKILL to the worker holding a job while a
//!   second worker idles; time from the kill to the `requeued` event (lease
//!   expiry noticed) and to the `resumed` event on the other worker, per lease TTL.
//! - **checkpoint overhead**: jobs at the default model speed; the time the
//!   generation was held up by checkpoints over the time spent in steps, as
//!   the worker measures them (`videogen_checkpoint_stall_seconds_total` /
//!   `videogen_generating_seconds_total`), per checkpoint policy.
//!
//! Event times are the server's wall clock; the bench runs on the same host.

use anyhow::{Context, ensure};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::Child;

use crate::procs;
use crate::{Machine, Percentiles, print_json};

const ADMIN_KEY: &str = "vg_bench_fleet_admin_key_0123456789abcdef";
const WORKER_TOKEN: &str = "vgw_bench_fleet_worker_token_0123456789abcdef";

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Pickup rounds.
    #[arg(long, default_value_t = 100)]
    pickups: usize,
    /// Repetitions of each preemption measurement.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Lease TTLs (seconds) for the ungraceful-recovery runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5")]
    ttls: Vec<f64>,
    /// Jobs per checkpoint policy in the overhead runs.
    #[arg(long, default_value_t = 6)]
    overhead_jobs: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    pickup: Percentiles,
    graceful_notice_to_requeued: Percentiles,
    graceful_checkpoint_steps: Vec<i64>,
    ungraceful: Vec<Ungraceful>,
    overhead: Vec<Overhead>,
}

#[derive(Debug, Serialize)]
struct Ungraceful {
    ttl_s: f64,
    kill_to_requeued: Percentiles,
    kill_to_resumed: Percentiles,
}

#[derive(Debug, Serialize)]
struct Overhead {
    policy: String,
    jobs: usize,
    generating_s: f64,
    checkpoint_stall_s: f64,
    overhead_percent: f64,
    checkpoints: u64,
}

/// One control plane on loopback, and the worker processes started against it.
struct Cluster {
    server: Child,
    base: String,
    data: PathBuf,
    logs: PathBuf,
    exe: PathBuf,
    workers: Vec<Child>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(root: &Path, name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let data = root.join(name);
        let logs = root.join(format!("{name}-logs"));
        std::fs::create_dir_all(&logs)?;
        let exe = std::env::current_exe()?;
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (server, base) =
            procs::start_server(&exe, &data, &logs.join("server.log"), &extra, ADMIN_KEY, WORKER_TOKEN).await?;
        Ok(Self {
            server,
            base,
            data,
            logs,
            exe,
            workers: Vec::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        })
    }

    fn worker(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let log = self.logs.join(format!("{name}.log"));
        self.workers.push(procs::start_worker(
            &self.exe,
            &self.base,
            name,
            &log,
            &extra,
            WORKER_TOKEN,
        )?);
        Ok(self.workers.len() - 1)
    }

    fn signal(&self, i: usize, sig: Signal) -> anyhow::Result<()> {
        let pid = self.workers[i].id().context("worker exited")?;
        kill(Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    async fn submit(&self, seed: u64) -> anyhow::Result<String> {
        let body = json!({ "model": "videogen-ref", "prompt": "bench fleet", "seconds": "4",
                           "size": "1280x720", "seed": seed });
        let resp = self
            .http
            .post(format!("{}/v1/videos", self.base))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await?;
        let v: Value = resp.json().await?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("submit: {v}"))
    }

    async fn video(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/videos/{id}", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?
            .json()
            .await?)
    }

    async fn wait_video(&self, id: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let v = self.video(id).await?;
            if pred(&v) {
                return Ok(v);
            }
            ensure!(Instant::now() < end, "timed out waiting on {id}: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(at_ms, data)` of the job's first event of `kind` after `after_ms`, waiting for it.
    async fn wait_event(&self, id: &str, kind: &str, after_ms: i64) -> anyhow::Result<(i64, Value)> {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(e) = self.event(id, kind, after_ms)? {
                return Ok(e);
            }
            ensure!(Instant::now() < end, "no {kind} event for {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn event(&self, id: &str, kind: &str, after_ms: i64) -> anyhow::Result<Option<(i64, Value)>> {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("videogen.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let row = db.query_row(
            "SELECT at_ms, data_json FROM job_events WHERE job_id = ?1 AND kind = ?2 AND at_ms >= ?3 \
             ORDER BY seq LIMIT 1",
            rusqlite::params![id, kind, after_ms],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        );
        match row {
            Ok((at, data)) => Ok(Some((at, serde_json::from_str(&data)?))),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn lease_holder(&self, id: &str) -> anyhow::Result<Option<String>> {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("videogen.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(db.query_row("SELECT lease_worker FROM jobs WHERE id = ?1", [id], |r| r.get(0))?)
    }

    async fn stop(mut self) {
        for w in &mut self.workers {
            let _ = w.kill().await;
        }
        let _ = self.server.kill().await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn progress(msg: &str) {
    eprintln!("[bench fleet] {msg}");
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let root = tempfile::Builder::new().prefix("videogen-bench-fleet-").tempdir()?;

    progress(&format!("pickup latency, {} rounds", args.pickups));
    let pickup = pickup(root.path(), args.pickups).await?;
    progress(&format!("graceful preemption, {} reps", args.reps));
    let (graceful, graceful_steps) = graceful(root.path(), args.reps).await?;
    let mut ungraceful_runs = Vec::new();
    for &ttl in &args.ttls {
        progress(&format!("ungraceful recovery, TTL {ttl} s, {} reps", args.reps));
        ungraceful_runs.push(ungraceful(root.path(), ttl, args.reps).await?);
    }
    let mut overhead_runs = Vec::new();
    for (name, flags) in [
        ("fixed (default: every 5 steps or 10 s)", &[][..]),
        ("fixed, every 2 steps", &["--checkpoint-every-steps", "2"][..]),
        (
            "adaptive (Young-Daly, fleet MTBF)",
            &["--checkpoint-policy", "adaptive"][..],
        ),
    ] {
        progress(&format!("checkpoint overhead, {name}, {} jobs", args.overhead_jobs));
        overhead_runs.push(overhead(root.path(), name, flags, args.overhead_jobs).await?);
    }
    let report = Report {
        bench: "fleet",
        machine,
        pickup,
        graceful_notice_to_requeued: graceful,
        graceful_checkpoint_steps: graceful_steps,
        ungraceful: ungraceful_runs,
        overhead: overhead_runs,
    };
    if args.json {
        return print_json(&report);
    }
    let m = &report.machine;
    println!("videogen bench fleet: real processes on loopback");
    println!(
        "machine: {} CPU(s), {}, {} GiB RAM; {}; load average {:?} at start",
        m.nproc, m.cpu_model, m.mem_total_gib, m.date_utc, m.loadavg_1m
    );
    let p = |name: &str, x: &Percentiles| {
        println!(
            "{name:<44} n={:<4} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            x.count, x.p50_ms, x.p99_ms, x.max_ms
        );
    };
    p("pickup (submitted -> leased by idle worker)", &report.pickup);
    p("graceful: SIGTERM -> re-queued", &report.graceful_notice_to_requeued);
    println!(
        "  checkpoint steps committed on notice: {:?}",
        report.graceful_checkpoint_steps
    );
    for u in &report.ungraceful {
        p(
            &format!("ungraceful, TTL {} s: SIGKILL -> re-queued", u.ttl_s),
            &u.kill_to_requeued,
        );
        p(
            &format!("ungraceful, TTL {} s: SIGKILL -> resumed", u.ttl_s),
            &u.kill_to_resumed,
        );
    }
    for o in &report.overhead {
        println!(
            "checkpoint overhead, {:<40} {:>6.2} % ({} checkpoints, {:.3} s held / {:.2} s of steps, {} jobs)",
            o.policy, o.overhead_percent, o.checkpoints, o.checkpoint_stall_s, o.generating_s, o.jobs
        );
    }
    Ok(())
}

async fn pickup(root: &Path, rounds: usize) -> anyhow::Result<Percentiles> {
    let c = Cluster::start(root, "pickup", &["--steps", "10"]).await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let http = c.http.clone();
        let url = format!("{}/internal/v1/acquire", c.base);
        let poll = tokio::spawn(async move {
            let body = json!({ "worker": { "id": "bench/probe", "loaded_models": [] }, "wait_ms": 20_000 });
            let resp = http.post(url).bearer_auth(WORKER_TOKEN).json(&body).send().await?;
            let got = Instant::now();
            let v: Value = resp.json().await?;
            anyhow::Ok((got, v))
        });
        // Let the long poll park on the server first.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let id = c.submit(i as u64).await?;
        let submitted = Instant::now();
        let (got, a) = poll.await??;
        ensure!(a["lease"]["job_id"] == id.as_str(), "probe got {a}");
        samples.push(got.saturating_duration_since(submitted));
        let attempt = a["lease"]["attempt"].as_u64().unwrap_or(1);
        c.http
            .post(format!("{}/internal/v1/jobs/{id}/attempts/{attempt}/fail", c.base))
            .bearer_auth(WORKER_TOKEN)
            .json(&json!({ "code": "bench", "message": "pickup probe" }))
            .send()
            .await?;
    }
    c.stop().await;
    Ok(Percentiles::of(&mut samples))
}

async fn graceful(root: &Path, reps: usize) -> anyhow::Result<(Percentiles, Vec<i64>)> {
    // Checkpoints only on notice, so the one measured is the notice's.
    let mut c = Cluster::start(root, "graceful", &["--steps", "30", "--lease-ttl-secs", "30"]).await?;
    let flags = [
        "--step-ms",
        "100",
        "--checkpoint-every-steps",
        "0",
        "--checkpoint-every-secs",
        "1000",
    ];
    let mut samples = Vec::new();
    let mut steps = Vec::new();
    for i in 0..reps {
        let w = c.worker(&format!("g{i}"), &flags)?;
        let id = c.submit(i as u64).await?;
        c.wait_video(&id, |v| v["progress"].as_u64().unwrap_or(0) >= 30).await?;
        let t = now_ms();
        c.signal(w, Signal::SIGTERM)?;
        let (at, d) = c.wait_event(&id, "requeued", t).await?;
        samples.push(Duration::from_millis((at - t).max(0) as u64));
        steps.push(d["resume_step"].as_i64().unwrap_or(0));
        let _ = c.workers[w].wait().await;
        c.http
            .post(format!("{}/v1/videos/{id}/cancel", c.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?;
    }
    c.stop().await;
    Ok((Percentiles::of(&mut samples), steps))
}

async fn ungraceful(root: &Path, ttl: f64, reps: usize) -> anyhow::Result<Ungraceful> {
    let ttl_s = ttl.to_string();
    let mut c = Cluster::start(
        root,
        &format!("ungraceful-{ttl_s}"),
        &[
            "--steps",
            "30",
            "--lease-ttl-secs",
            &ttl_s,
            "--housekeeping-secs",
            "0.1",
        ],
    )
    .await?;
    let flags = ["--step-ms", "100", "--checkpoint-every-steps", "3"];
    let (mut requeued, mut resumed) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let a = c.worker(&format!("u{i}a"), &flags)?;
        let b = c.worker(&format!("u{i}b"), &flags)?;
        let id = c.submit(i as u64).await?;
        c.wait_event(&id, "checkpoint", 0).await?;
        let holder = c.lease_holder(&id)?.context("no lease holder")?;
        let victim = if holder.starts_with(&format!("u{i}a/")) { a } else { b };
        let t = now_ms();
        c.signal(victim, Signal::SIGKILL)?;
        let (rq, _) = c.wait_event(&id, "requeued", t).await?;
        let (rs, _) = c.wait_event(&id, "resumed", t).await?;
        requeued.push(Duration::from_millis((rq - t).max(0) as u64));
        resumed.push(Duration::from_millis((rs - t).max(0) as u64));
        c.wait_video(&id, |v| v["status"] == "completed").await?;
        for w in [a, b] {
            let _ = c.workers[w].kill().await;
        }
    }
    c.stop().await;
    Ok(Ungraceful {
        ttl_s: ttl,
        kill_to_requeued: Percentiles::of(&mut requeued),
        kill_to_resumed: Percentiles::of(&mut resumed),
    })
}

async fn overhead(root: &Path, policy: &str, flags: &[&str], jobs: usize) -> anyhow::Result<Overhead> {
    let name = format!("overhead-{}", policy.split_whitespace().next().unwrap_or("x"));
    let mut c = Cluster::start(root, &name, &[]).await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let notice = format!("127.0.0.1:{port}");
    let mut all = vec!["--notice-listen", notice.as_str()];
    all.extend_from_slice(flags);
    c.worker("o", &all)?;
    for i in 0..jobs {
        let id = c.submit(i as u64).await?;
        c.wait_video(&id, |v| v["status"] == "completed").await?;
    }
    let metrics = c
        .http
        .get(format!("http://{notice}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    c.stop().await;
    let value = |name: &str| procs::metric_sum(&metrics, name);
    let generating_s = value("videogen_generating_seconds_total");
    let checkpoint_stall_s = value("videogen_checkpoint_stall_seconds_total");
    Ok(Overhead {
        policy: policy.to_owned(),
        jobs,
        generating_s,
        checkpoint_stall_s,
        overhead_percent: if generating_s > 0.0 {
            100.0 * checkpoint_stall_s / generating_s
        } else {
            0.0
        },
        checkpoints: value("videogen_checkpoint_duration_seconds_count") as u64,
    })
}
