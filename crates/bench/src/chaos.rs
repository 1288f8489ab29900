//! `videogen chaos`: the worker fleet under fire, end to end, with real
//! processes.
//!
//! Starts `videogen serve --workers 0` and N `videogen worker` processes on
//! loopback, renders one uninterrupted reference clip per seed, then submits
//! the jobs and, for a bounded time, randomly sends workers SIGKILL (crash),
//! SIGTERM (spot notice: graceful checkpoint and release) and SIGSTOP followed
//! later by SIGCONT (a zombie that wakes after its lease was given away),
//! restarting workers that exit. Then it checks, from the API and the event
//! log:
//!
//! - every job completed, with exactly one `completed` event, by the attempt
//!   that held the lease, and its committed outputs are that attempt's;
//! - every video is byte-identical to the uninterrupted reference of its seed;
//! - every attempt that followed a committed checkpoint resumed from a step > 0
//!   (or recorded why the checkpoint was unusable);
//!
//! and prints the figures: preemptions by kind, recoveries, recovery time
//! percentiles, wasted compute, fenced writes the server rejected (zombies).
//! Exits non-zero when a check fails.

use anyhow::{Context, bail, ensure};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Child;

use crate::procs;
use videogen_core::VideoId;
use videogen_core::blob::keys;
use videogen_core::store::prelude::*;

const ADMIN_KEY: &str = "vg_chaos_admin_key_0123456789abcdefghij";
const WORKER_TOKEN: &str = "vgw_chaos_worker_token_0123456789abcdefghij";
/// Events read per job by the audit (a chaos job has a few dozen).
const EVENTS_MAX: u32 = 100_000;

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Jobs submitted under chaos.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Distinct seeds (each gets one uninterrupted reference render).
    #[arg(long, default_value_t = 8)]
    seeds: u64,
    /// How long faults are injected, in seconds (jobs then finish in peace).
    #[arg(long, default_value_t = 45.0)]
    chaos_secs: f64,
    /// Mean pause between faults, in seconds.
    #[arg(long, default_value_t = 1.0)]
    fault_every_secs: f64,
    /// Denoising steps per job.
    #[arg(long, default_value_t = 12)]
    steps: u32,
    /// Minimum wall time of a reference-model step, in ms.
    #[arg(long, default_value_t = 40)]
    step_ms: u64,
    /// Lease time-to-live, in seconds.
    #[arg(long, default_value_t = 2.0)]
    lease_ttl_secs: f64,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 2)]
    checkpoint_every_steps: u32,
    /// Seed of the fault schedule (default: random, printed).
    #[arg(long)]
    rng_seed: Option<u64>,
    /// Give up waiting for the jobs after this many seconds.
    #[arg(long, default_value_t = 900.0)]
    timeout_secs: f64,
    /// A long soak: 30 minutes of faults (overrides --chaos-secs).
    #[arg(long)]
    soak: bool,
    /// Keep the data dir and logs (printed) even when every check passes
    /// (a failed run always keeps them).
    #[arg(long)]
    keep: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// The server's database (default: SQLite in the run's data dir), e.g.
    /// `postgres://postgres@127.0.0.1:5432/chaos` for the same run on
    /// PostgreSQL. The audit reads the event logs back through the store.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    rng_seed: u64,
    jobs: usize,
    workers: usize,
    faults: BTreeMap<&'static str, u64>,
    completed: usize,
    byte_identical: usize,
    preemptions_graceful: u64,
    preemptions_lease_expired: u64,
    recoveries: u64,
    resumed_from_checkpoint: u64,
    restarted_from_zero: u64,
    recovery_ms_p50: f64,
    recovery_ms_p99: f64,
    recovery_ms_max: f64,
    wasted_seconds: f64,
    fenced_writes_rejected: u64,
    orphaned_output_attempts: u64,
    wall_s: f64,
    failures: Vec<String>,
}

/// A worker slot of the fleet: its process, if running.
struct Slot {
    name: String,
    child: Option<Child>,
    stopped_until: Option<Instant>,
    restart_at: Option<Instant>,
    terminating: bool,
}

struct Env {
    exe: PathBuf,
    base: String,
    logs: PathBuf,
    args: ChaosArgs,
}

pub async fn run(mut args: ChaosArgs) -> anyhow::Result<()> {
    if args.soak {
        args.chaos_secs = 1800.0;
    }
    ensure!(
        args.workers > 0 && args.seeds > 0 && args.jobs > 0,
        "--workers, --seeds and --jobs must be positive"
    );
    let rng_seed = args.rng_seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let dir = tempfile::Builder::new().prefix("videogen-chaos-").tempdir()?;
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let started = Instant::now();
    eprintln!("[chaos] rng seed {rng_seed}; data and logs in {}", dir.path().display());

    let exe = std::env::current_exe().context("locating the videogen binary")?;
    let (mut server, base) = start_server(&exe, &data, &logs, &args).await?;
    let env = Env {
        exe,
        base,
        logs,
        args: args.clone(),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut slots: Vec<Slot> = (0..args.workers)
        .map(|i| Slot {
            name: format!("cw{i}"),
            child: None,
            stopped_until: None,
            restart_at: None,
            terminating: false,
        })
        .collect();
    for slot in &mut slots {
        slot.child = Some(start_worker(&env, &slot.name)?);
    }

    let result = async {
        // Phase 1: one uninterrupted reference render per seed.
        let mut refs = HashMap::new();
        let mut ref_ids = Vec::new();
        for seed in 0..args.seeds {
            ref_ids.push((seed, submit(&http, &env.base, seed, &format!("ref-{seed}")).await?));
        }
        wait_all(
            &http,
            &env.base,
            &ref_ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
            args.timeout_secs,
            || Ok(()),
        )
        .await?;
        for (seed, id) in &ref_ids {
            refs.insert(*seed, sha256(&download(&http, &env.base, id).await?));
        }
        eprintln!("[chaos] {} reference clips rendered", refs.len());

        // Phase 2: the jobs, under fire.
        let mut jobs = Vec::with_capacity(args.jobs);
        for i in 0..args.jobs {
            let seed = i as u64 % args.seeds;
            jobs.push((seed, submit(&http, &env.base, seed, &format!("job-{i}")).await?));
        }
        let ids: Vec<String> = jobs.iter().map(|(_, id)| id.clone()).collect();
        let faults = inject_faults(&env, &mut slots, &mut rng, &http, &ids).await?;
        // Peace: wake zombies, restart the dead, let everything finish. A
        // worker still finishing its uploads after the last SIGTERM exits
        // later: it is restarted then, while the jobs drain.
        for slot in &mut slots {
            heal(&env, slot, true)?;
        }
        wait_all(&http, &env.base, &ids, args.timeout_secs, || {
            slots.iter_mut().try_for_each(|slot| heal(&env, slot, false))
        })
        .await?;
        let metrics = http.get(format!("{}/metrics", env.base)).send().await?.text().await?;
        let mut report = Report {
            rng_seed,
            jobs: args.jobs,
            workers: args.workers,
            faults,
            fenced_writes_rejected: procs::metric_sum(&metrics, "videogen_fenced_writes_rejected_total") as u64,
            ..Report::default()
        };
        for (seed, id) in &jobs {
            let video: Value = get_json(&http, &format!("{}/v1/videos/{id}", env.base)).await?;
            if video["status"] == "completed" {
                report.completed += 1;
            } else {
                report
                    .failures
                    .push(format!("{id}: status {} ({})", video["status"], video["error"]));
                continue;
            }
            if Some(&sha256(&download(&http, &env.base, id).await?)) == refs.get(seed) {
                report.byte_identical += 1;
            } else {
                report
                    .failures
                    .push(format!("{id}: video differs from the seed-{seed} reference"));
            }
        }
        anyhow::Ok((report, ids))
    }
    .await;

    // Stop everything before reading the database file.
    for slot in &mut slots {
        if let Some(c) = slot.child.as_mut() {
            if slot.stopped_until.is_some() {
                let _ = signal(c, Signal::SIGCONT);
            }
            let _ = c.kill().await;
        }
    }
    if let Some(pid) = server.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), server.wait()).await;
    let _ = server.kill().await;

    let outcome = async {
        let (mut report, ids) = result?;
        let url = database_url(&args, &data);
        let store = videogen_store::AnyStore::open(&url, videogen_store::PgOptions::default())
            .await
            .with_context(|| format!("opening {url} for the audit"))?;
        audit_events(store.store().as_ref(), &data, &ids, args.step_ms, &mut report).await?;
        report.wall_s = started.elapsed().as_secs_f64();
        print(&report, args.json)?;
        if !report.failures.is_empty() {
            bail!("{} check(s) failed", report.failures.len());
        }
        anyhow::Ok(())
    }
    .await;
    // A failed run keeps its database and logs for the post-mortem.
    if args.keep || outcome.is_err() {
        let kept = dir.keep();
        eprintln!("[chaos] kept {}", kept.display());
    }
    outcome?;
    Ok(())
}

/// The database the server of this run uses.
fn database_url(a: &ChaosArgs, data: &Path) -> String {
    a.database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.join("videogen.db").display()))
}

async fn start_server(exe: &Path, data: &Path, logs: &Path, a: &ChaosArgs) -> anyhow::Result<(Child, String)> {
    let args: Vec<String> = [
        "--database-url",
        &database_url(a, data),
        "--housekeeping-secs",
        "0.2",
        "--steps",
        &a.steps.to_string(),
        "--lease-ttl-secs",
        &a.lease_ttl_secs.to_string(),
        "--max-attempts",
        "100",
    ]
    .map(str::to_owned)
    .to_vec();
    procs::start_server(exe, data, &logs.join("server.log"), &args, ADMIN_KEY, WORKER_TOKEN).await
}

fn start_worker(env: &Env, name: &str) -> anyhow::Result<Child> {
    let a = &env.args;
    let args: Vec<String> = [
        "--step-ms",
        &a.step_ms.to_string(),
        "--checkpoint-every-steps",
        &a.checkpoint_every_steps.to_string(),
        "--preemption-deadline-secs",
        "5",
    ]
    .map(str::to_owned)
    .to_vec();
    procs::start_worker(
        &env.exe,
        &env.base,
        name,
        &env.logs.join(format!("{name}.log")),
        &args,
        WORKER_TOKEN,
    )
}

fn signal(child: &Child, sig: Signal) -> anyhow::Result<()> {
    let pid = child.id().context("worker already reaped")?;
    kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("sending {sig} to {pid}"))
}

/// Restarts an exited worker when its restart time came (`now` forces it),
/// and wakes a zombie whose sleep is over.
fn heal(env: &Env, slot: &mut Slot, now: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    if let Some(until) = slot.stopped_until
        && (now || t >= until)
    {
        if let Some(c) = &slot.child {
            signal(c, Signal::SIGCONT)?;
        }
        slot.stopped_until = None;
    }
    if let Some(c) = slot.child.as_mut()
        && slot.terminating
        && c.try_wait()?.is_some()
    {
        slot.child = None;
        slot.terminating = false;
        slot.restart_at = Some(t + Duration::from_millis(300));
    }
    if slot.child.is_none() && (now || slot.restart_at.is_some_and(|r| t >= r)) {
        slot.child = Some(start_worker(env, &slot.name)?);
        slot.restart_at = None;
    }
    Ok(())
}

async fn inject_faults(
    env: &Env,
    slots: &mut [Slot],
    rng: &mut StdRng,
    http: &reqwest::Client,
    ids: &[String],
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs_f64(env.args.chaos_secs);
    let ttl = Duration::from_secs_f64(env.args.lease_ttl_secs);
    let mut next_fault = Instant::now() + Duration::from_secs_f64(env.args.fault_every_secs);
    let mut next_check = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for slot in slots.iter_mut() {
            heal(env, slot, false)?;
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_secs(1);
            if count_done(http, &env.base, ids).await? == ids.len() {
                break;
            }
        }
        if Instant::now() < next_fault {
            continue;
        }
        let mean = env.args.fault_every_secs;
        next_fault = Instant::now() + Duration::from_secs_f64(rng.random_range(0.5 * mean..1.5 * mean));
        // Only a running, awake worker can be hit.
        let live: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].child.is_some() && slots[i].stopped_until.is_none() && !slots[i].terminating)
            .collect();
        if live.is_empty() {
            continue;
        }
        let slot = &mut slots[live[rng.random_range(0..live.len())]];
        let Some(child) = slot.child.as_mut() else { continue };
        match rng.random_range(0..3) {
            0 => {
                child.kill().await?;
                slot.child = None;
                slot.restart_at = Some(Instant::now() + Duration::from_millis(rng.random_range(100..1000)));
                *faults.entry("sigkill").or_default() += 1;
            }
            1 => {
                signal(child, Signal::SIGTERM)?;
                slot.terminating = true;
                *faults.entry("sigterm").or_default() += 1;
            }
            _ => {
                signal(child, Signal::SIGSTOP)?;
                // Long enough for its lease to expire and the job to move on.
                let sleep = ttl.mul_f64(rng.random_range(1.5..3.0));
                slot.stopped_until = Some(Instant::now() + sleep);
                *faults.entry("sigstop_sigcont").or_default() += 1;
            }
        }
    }
    Ok(faults)
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = http.get(url).bearer_auth(ADMIN_KEY).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

async fn submit(http: &reqwest::Client, base: &str, seed: u64, key: &str) -> anyhow::Result<String> {
    let body = json!({
        "model": "videogen-ref", "prompt": format!("chaos test clip number {seed}"),
        "seconds": "4", "size": "1280x720", "seed": seed,
    });
    let resp = http
        .post(format!("{base}/v1/videos"))
        .bearer_auth(ADMIN_KEY)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    ensure!(status.is_success(), "submit: {status} {v}");
    v["id"]
        .as_str()
        .map(str::to_owned)
        .context("no id in the create response")
}

/// How many of `ids` reached a terminal status.
async fn count_done(http: &reqwest::Client, base: &str, ids: &[String]) -> anyhow::Result<usize> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut done = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/videos?limit=100&order=asc");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = get_json(http, &url).await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        for v in &data {
            let terminal = matches!(v["status"].as_str(), Some("completed" | "failed"));
            if terminal && v["id"].as_str().is_some_and(|id| wanted.contains(id)) {
                done += 1;
            }
        }
        if page["has_more"] != true {
            return Ok(done);
        }
        after = data.last().and_then(|v| v["id"].as_str()).map(str::to_owned);
    }
}

async fn wait_all(
    http: &reqwest::Client,
    base: &str,
    ids: &[String],
    timeout_secs: f64,
    mut heal: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
    loop {
        heal()?;
        let done = count_done(http, base, ids).await?;
        if done == ids.len() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {done} of {} jobs finished in {timeout_secs} s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn download(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<Vec<u8>> {
    let resp = http
        .get(format!("{base}/v1/videos/{id}/content"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await?;
    ensure!(resp.status().is_success(), "download {id}: {}", resp.status());
    Ok(resp.bytes().await?.to_vec())
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Checks the event log of every job and derives the figures.
async fn audit_events(
    store: &dyn Store,
    data: &Path,
    ids: &[String],
    step_ms: u64,
    r: &mut Report,
) -> anyhow::Result<()> {
    let step_s = step_ms as f64 / 1000.0;
    let mut recoveries_ms = Vec::new();
    for id in ids {
        let vid = VideoId::parse(id).context("job id")?;
        let job = store.job(&vid).await?.with_context(|| format!("job {id} is gone"))?;
        let attempt = i64::from(job.attempt);
        let evs: Vec<(i64, String, Value)> = store
            .events(&vid, 0, EVENTS_MAX)
            .await?
            .into_iter()
            .map(|e| (e.at_ms, e.kind().as_str().to_owned(), e.to_json()))
            .collect();
        let completed: Vec<&Value> = evs.iter().filter(|e| e.1 == "completed").map(|e| &e.2).collect();
        if completed.len() != 1 {
            r.failures.push(format!("{id}: {} completed events", completed.len()));
            continue;
        }
        if completed[0]["attempt"].as_i64() != Some(attempt) {
            r.failures.push(format!(
                "{id}: completed by attempt {} but the job is at attempt {attempt}",
                completed[0]["attempt"]
            ));
        }
        // The committed outputs are the completing attempt's.
        let want = keys::video(&vid, job.attempt);
        let got = job.outputs.as_ref().map(|o| o.video_key.as_str());
        if got != Some(want.as_str()) {
            r.failures
                .push(format!("{id}: committed video {got:?} is not attempt {attempt}'s"));
        }
        let out_dir = data
            .join("blobs")
            .join(keys::job_prefixes(&vid)[0].trim_end_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&out_dir) {
            let others = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy() != attempt.to_string())
                .filter(|e| e.path().join("video.mp4").exists())
                .count();
            r.orphaned_output_attempts += others as u64;
        }
        // Interruptions and what followed them.
        let mut checkpointed = false;
        let mut lost_at: Option<i64> = None;
        let mut awaiting_resume = false;
        for (at, kind, d) in &evs {
            match kind.as_str() {
                "checkpoint" => checkpointed = true,
                "requeued" => {
                    match d["reason"].as_str() {
                        Some("released") => r.preemptions_graceful += 1,
                        Some("lease_expired") => r.preemptions_lease_expired += 1,
                        _ => {}
                    }
                    lost_at = Some(*at);
                    awaiting_resume = checkpointed;
                }
                "leased" => {
                    if let Some(t) = lost_at.take() {
                        r.recoveries += 1;
                        recoveries_ms.push((at - t) as f64);
                    }
                }
                "resumed" => {
                    let from = d["from_step"].as_i64().unwrap_or(0);
                    let prev = d["previous_step"].as_i64().unwrap_or(from);
                    if from > 0 {
                        r.resumed_from_checkpoint += 1;
                    } else {
                        r.failures.push(format!("{id}: resumed from step {from}"));
                    }
                    r.wasted_seconds += (prev - from).max(0) as f64 * step_s;
                    awaiting_resume = false;
                }
                "checkpoint_rejected" => awaiting_resume = false,
                // Generating again without a resume: it restarted from 0.
                "progress" if awaiting_resume && d["phase"] == "generating" => {
                    r.failures
                        .push(format!("{id}: restarted from step 0 despite a checkpoint"));
                    awaiting_resume = false;
                }
                _ => {}
            }
        }
        let restarts = evs.iter().filter(|e| e.1 == "leased").count().saturating_sub(1);
        let resumes = evs.iter().filter(|e| e.1 == "resumed").count();
        r.restarted_from_zero += restarts.saturating_sub(resumes) as u64;
    }
    recoveries_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if recoveries_ms.is_empty() {
            return 0.0;
        }
        let i = ((recoveries_ms.len() as f64 - 1.0) * p).round() as usize;
        recoveries_ms[i.min(recoveries_ms.len() - 1)]
    };
    r.recovery_ms_p50 = pct(0.5);
    r.recovery_ms_p99 = pct(0.99);
    r.recovery_ms_max = recoveries_ms.last().copied().unwrap_or(0.0);
    Ok(())
}

fn print(r: &Report, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "videogen chaos: {} jobs, {} workers, rng seed {}",
        r.jobs, r.workers, r.rng_seed
    );
    println!("faults injected: {:?}", r.faults);
    println!(
        "completed {}/{}; byte-identical to the uninterrupted reference: {}",
        r.completed, r.jobs, r.byte_identical
    );
    println!(
        "preemptions: {} graceful (released), {} lease expiries; recoveries {}",
        r.preemptions_graceful, r.preemptions_lease_expired, r.recoveries
    );
    println!(
        "resumed from a checkpoint: {}; restarted from step 0 (no checkpoint yet): {}",
        r.resumed_from_checkpoint, r.restarted_from_zero
    );
    println!(
        "recovery (re-queued -> leased again), ms: p50 {:.0}, p99 {:.0}, max {:.0}",
        r.recovery_ms_p50, r.recovery_ms_p99, r.recovery_ms_max
    );
    println!("wasted compute (steps redone x step time): {:.1} s", r.wasted_seconds);
    println!("fenced writes rejected (stale attempts): {}", r.fenced_writes_rejected);
    println!(
        "uncommitted output bytes left by lost attempts: {} attempt(s)",
        r.orphaned_output_attempts
    );
    println!("wall time: {:.1} s", r.wall_s);
    if r.failures.is_empty() {
        println!("all checks passed");
    } else {
        for f in &r.failures {
            println!("FAILED: {f}");
        }
    }
    Ok(())
}
