//! `videogen bench dispatch`: no-op jobs through the real hot path.
//!
//! Pipeline (one fresh database file per run, WAL, as in production): a
//! producer task calls `store.submit` then `dispatcher.enqueue`; `N` worker
//! tasks loop `dispatcher.next` → `store.lease` → `store.complete` (dummy
//! outputs: no model, no blobs). Jobs/s is completed jobs over the wall time
//! from the first submit to the last completion.
//!
//! Two references run in the same process on the same kind of file:
//! - **baseline**: bare SQLite (rusqlite), one autocommit `INSERT`, `UPDATE`, `UPDATE` per
//!   job on a plain table (WAL, `synchronous = NORMAL`), what SQLite itself
//!   costs for three single-statement transactions per job;
//! - **store serial**: `submit`, `lease`, `complete` one after the other in a
//!   single task, without the dispatcher: the store's own cost per job.
//!
//! The baseline runs before and after the pipelines; ratios use their mean.
//!
//! With `--database-url`, the same pipeline also runs on PostgreSQL (`pg`):
//! a fresh database per run, several submits in flight (each one waits for a
//! durable commit), and `pgbench` running a bare `SKIP LOCKED` claim loop as
//! that backend's baseline; with `--peers`, other PostgreSQL job queues
//! (graphile-worker, pgqueuer, procrastinate) in the same interleaved run.

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use videogen_control::Dispatcher;
use videogen_core::spec::{REFERENCE_MODEL, Seconds, VideoSize, VideoSpec};
use videogen_core::store::prelude::*;
use videogen_core::store::{NewJob, Submitted};
use videogen_core::{Clock, Outputs, QueuedJob, SystemClock, TenantId, Tier, VideoId, WorkerId};
use videogen_sched::SchedulerConfig;
use videogen_store::SqliteStore;

use crate::{Machine, Percentiles, print_json};

mod peers;
mod pg;

/// The target for the full pipeline on a 2-core machine.
const TARGET_JOBS_PER_SEC: f64 = 5_000.0;
const LEASE_TTL_MS: i64 = 30_000;
const RETENTION_MS: i64 = 86_400_000;

#[derive(Args, Debug)]
pub struct DispatchArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    jobs: u64,
    /// Worker counts to run the pipeline with, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    workers: Vec<usize>,
    /// Also run the baseline with this many jobs' statements per transaction
    /// (group commit: the ceiling batching could reach); 0 skips it.
    #[arg(long, default_value_t = 64)]
    group: u64,
    /// Parent directory for the per-run database files (default: system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also run the pipeline on PostgreSQL, on fresh databases created (and
    /// dropped) on this server, e.g. `postgres://postgres@127.0.0.1:5432/postgres`,
    /// with a pgbench claim-loop baseline.
    #[arg(long)]
    database_url: Option<String>,
    /// Jobs of a PostgreSQL run with the most workers (runs with fewer
    /// workers get proportionally fewer, at least 1,000).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pg_jobs: u64,
    /// Submits in flight at once in a PostgreSQL run (concurrent API
    /// requests). One at a time, a durable commit each, would bound
    /// submission at one per WAL flush.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pg_submitters: u64,
    /// Whether the PostgreSQL store sends a change notification per job
    /// event (`PgOptions::notify_changes`; off where Redis fans changes out).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pg_notify_changes: bool,
    /// Duration of each pgbench baseline run, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pgbench_seconds: u64,
    /// Whether the pgbench table has a partial index on its queued rows
    /// (without one each claim steps over every row claimed before it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pgbench_partial_index: bool,
    /// Times the PostgreSQL sequence (ours, pgbench, peers, per worker
    /// count) runs; ratios compare runs of the same round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    pg_rounds: u64,
    /// Other PostgreSQL job queues to run between ours, comma-separated
    /// (needs `--database-url` and `bash crates/bench/peers/setup.sh`).
    #[arg(long, value_enum, value_delimiter = ',')]
    peers: Vec<peers::Peer>,
    /// Jobs of a peer run with the most workers (fewer workers get
    /// proportionally fewer, at least 250).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    peer_jobs: u64,
    /// Where setup.sh installed the peers (default: target/peers of this checkout).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// Throughput and per-operation latency of one run.
#[derive(Debug, Serialize)]
struct Run {
    name: String,
    workers: usize,
    jobs: u64,
    wall_s: f64,
    jobs_per_sec: f64,
    /// `jobs_per_sec` / mean baseline `jobs_per_sec`.
    ratio_to_baseline: f64,
    /// Pipelines: when the producer had submitted every job.
    #[serde(skip_serializing_if = "Option::is_none")]
    submits_done_s: Option<f64>,
    /// Latency of each operation (store methods include waiting for the writer).
    ops: Vec<(String, Percentiles)>,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    build: &'static str,
    jobs: u64,
    target_jobs_per_sec: f64,
    baseline_before: Run,
    baseline_after: Run,
    store_serial: Run,
    pipelines: Vec<Run>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_grouped: Option<Run>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<pg::PgReport>,
}

pub async fn run(args: DispatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.workers.is_empty() && !args.workers.contains(&0),
        "--workers must be positive counts"
    );
    anyhow::ensure!(
        args.peers.is_empty() || args.database_url.is_some(),
        "--peers needs --database-url (the peers run on PostgreSQL)"
    );
    // A peer asked for but not installed stops the bench before it measures anything.
    let peer_setup = peers::PeerSetup::new(args.peers_dir.clone());
    for peer in &args.peers {
        peer.check(&peer_setup).map_err(anyhow::Error::msg)?;
    }
    let machine = Machine::detect();
    let parent = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let fresh = || {
        tempfile::Builder::new()
            .prefix("videogen-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temp dir in {}", parent.display()))
    };
    let n = args.jobs;

    progress(&format!("baseline (bare SQLite), {n} jobs"));
    let mut baseline_before = baseline(&fresh()?.path().join("baseline.db"), n, 1).await?;
    progress(&format!("store serial, {n} jobs"));
    let mut store_serial = store_serial(fresh()?.path(), n).await?;
    let mut pipelines = Vec::new();
    for &w in &args.workers {
        progress(&format!("pipeline, {w} worker(s), {n} jobs"));
        pipelines.push(pipeline(fresh()?.path(), n, w).await?);
    }
    progress(&format!("baseline again, {n} jobs"));
    let mut baseline_after = baseline(&fresh()?.path().join("baseline.db"), n, 1).await?;
    let mut baseline_grouped = None;
    if args.group > 1 {
        progress(&format!("baseline, {} jobs per transaction, {n} jobs", args.group));
        baseline_grouped = Some(baseline(&fresh()?.path().join("baseline.db"), n, args.group).await?);
    }

    let mut postgres = None;
    if let Some(url) = &args.database_url {
        let plan = pg::PgPlan {
            url,
            jobs: args.pg_jobs,
            workers: &args.workers,
            submitters: usize::try_from(args.pg_submitters)?,
            notify_changes: args.pg_notify_changes,
            pgbench_seconds: args.pgbench_seconds,
            pgbench_partial_index: args.pgbench_partial_index,
            rounds: usize::try_from(args.pg_rounds)?,
            peers: &args.peers,
            peer_jobs: args.peer_jobs,
            peer_setup,
        };
        postgres = Some(pg::run(&plan).await?);
    }

    let base = (baseline_before.jobs_per_sec + baseline_after.jobs_per_sec) / 2.0;
    for r in [&mut baseline_before, &mut baseline_after, &mut store_serial]
        .into_iter()
        .chain(pipelines.iter_mut())
        .chain(baseline_grouped.as_mut())
    {
        r.ratio_to_baseline = r.jobs_per_sec / base;
    }
    for p in postgres.iter_mut().flat_map(|p| p.pipelines.iter_mut()) {
        p.run.ratio_to_baseline = p.run.jobs_per_sec / base;
    }
    let report = Report {
        bench: "dispatch",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        jobs: n,
        target_jobs_per_sec: TARGET_JOBS_PER_SEC,
        baseline_before,
        baseline_after,
        store_serial,
        pipelines,
        baseline_grouped,
        postgres,
    };
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    let failed = report.postgres.as_ref().map_or(0, |p| p.peer_errors.len());
    anyhow::ensure!(failed == 0, "{failed} peer run(s) failed (see the report)");
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("[bench dispatch] {msg}");
}

fn print_report(r: &Report) {
    println!("videogen bench dispatch: no-op jobs, embedded SQLite store (WAL, synchronous=NORMAL)");
    r.machine.print();
    println!(
        "jobs per run: {}; target: >= {:.0} jobs/s end to end\n",
        r.jobs, r.target_jobs_per_sec
    );
    println!(
        "{:<38} {:>8} {:>11} {:>8} {:>14}",
        "run", "wall s", "jobs/s", "x base", "submits done s"
    );
    let runs = [&r.baseline_before, &r.store_serial]
        .into_iter()
        .chain(&r.pipelines)
        .chain([&r.baseline_after])
        .chain(&r.baseline_grouped);
    for run in runs.clone() {
        let submits = run.submits_done_s.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
        println!(
            "{:<38} {:>8.2} {:>11.0} {:>8.2} {:>14}",
            run.name, run.wall_s, run.jobs_per_sec, run.ratio_to_baseline, submits
        );
    }
    println!("\nper-operation latency, ms (store calls include queueing for the single writer):");
    println!(
        "{:<38} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run", "op", "mean", "p50", "p99", "p99.9", "max"
    );
    for run in runs {
        for (op, p) in &run.ops {
            println!(
                "{:<38} {:<10} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                run.name, op, p.mean_ms, p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
    }
    let pg_runs = r.postgres.iter().flat_map(|p| p.pipelines.iter().map(|p| &p.run));
    for p in r.pipelines.iter().chain(pg_runs) {
        let verdict = if p.jobs_per_sec >= r.target_jobs_per_sec {
            "meets"
        } else {
            "MISSES"
        };
        println!(
            "\n{}: {:.0} jobs/s {verdict} the {:.0} jobs/s target",
            p.name, p.jobs_per_sec, r.target_jobs_per_sec
        );
    }
    if let Some(p) = &r.postgres {
        print_postgres(p);
    }
}

fn print_postgres(r: &pg::PgReport) {
    println!(
        "\nPostgreSQL {} at {} (synchronous_commit={}, fsync={}); a fresh database per run; \
         change notifications {}",
        r.settings.server_version,
        r.server,
        r.settings.synchronous_commit,
        r.settings.fsync,
        if r.notify_changes { "on" } else { "off" }
    );
    match &r.pgbench_skipped {
        Some(why) => println!("pgbench baseline skipped: {why}"),
        None => {
            println!(
                "{:<6} {:<38} {:>5} {:>10} {:>11} {:>11} {:>11}",
                "round", "baseline", "s", "claims/s", "latency ms", "first 1 s", "last 1 s"
            );
            for b in &r.pgbench {
                let latency = b.latency_ms.map_or_else(|| "-".to_owned(), |l| format!("{l:.3}"));
                let tps = |t: Option<&f64>| t.map_or_else(|| "-".to_owned(), |t| format!("{t:.0}"));
                let index = if b.partial_index { "" } else { ", no index" };
                println!(
                    "{:<6} {:<38} {:>5} {:>10.0} {:>11} {:>11} {:>11}",
                    b.round,
                    format!("pgbench SKIP LOCKED claim, {} client(s){index}", b.clients),
                    b.seconds,
                    b.claims_per_sec,
                    latency,
                    tps(b.progress_tps.first()),
                    tps(b.progress_tps.last())
                );
            }
        }
    }
    println!(
        "{:<6} {:<38} {:>8} {:>11} {:>10} {:>10} {:>8} {:>14}",
        "round", "run", "wall s", "jobs/s", "x pgbench", "writes/tx", "x base", "submits done s"
    );
    for p in &r.pipelines {
        let ratio = p.ratio_to_pgbench.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
        let submits = p
            .run
            .submits_done_s
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
        println!(
            "{:<6} {:<38} {:>8.2} {:>11.0} {:>10} {:>10.1} {:>8.2} {:>14}",
            p.round,
            p.run.name,
            p.run.wall_s,
            p.run.jobs_per_sec,
            ratio,
            p.writes_per_commit,
            p.run.ratio_to_baseline,
            submits
        );
    }
    println!(
        "({} submits in flight; x pgbench: jobs/s over pgbench claims/s with as many clients as workers; \
         writes/tx: store writes per group commit; x base: over the SQLite baseline above)",
        r.submitters
    );
    if !r.peers.is_empty() || !r.peer_errors.is_empty() {
        print_peers(r);
    }
    println!("\nper-operation latency, ms (PostgreSQL store calls include waiting for their group commit):");
    println!(
        "{:<38} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run", "op", "mean", "p50", "p99", "p99.9", "max"
    );
    for p in &r.pipelines {
        for (op, q) in &p.run.ops {
            println!(
                "{:<38} {:<10} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                p.run.name, op, q.mean_ms, q.p50_ms, q.p99_ms, q.p999_ms, q.max_ms
            );
        }
    }
}

fn print_peers(r: &pg::PgReport) {
    println!("\npeers on the same server, a fresh database per run:");
    println!(
        "{:<6} {:<48} {:>8} {:>8} {:>11} {:>8} {:>11}",
        "round", "run", "jobs", "wall s", "jobs/s", "x ours", "enqueue s"
    );
    for p in &r.peers {
        let ratio = p.ratio_to_ours.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
        println!(
            "{:<6} {:<48} {:>8} {:>8.2} {:>11.0} {:>8} {:>11.2}",
            p.round,
            format!("{} {} {}, {} worker(s)", p.peer, p.version, p.mode, p.workers),
            p.jobs,
            p.wall_s,
            p.jobs_per_sec,
            ratio,
            p.enqueue_s
        );
    }
    println!(
        "(matching: {} producers, one durable enqueue each, until the last completion is committed; \
         batch: bulk insert first (enqueue s, not timed), then the drain; x ours: jobs/s over our \
         PostgreSQL pipeline's with as many workers, same round)",
        r.submitters
    );
    for e in &r.peer_errors {
        println!("FAILED: {e}");
    }
}

fn spec() -> VideoSpec {
    VideoSpec {
        model: REFERENCE_MODEL.to_owned(),
        prompt: "a red fox trotting through fresh snow at dawn, cinematic".to_owned(),
        seconds: Seconds::S4,
        size: VideoSize::LANDSCAPE_720,
        seed: 42,
        style: None,
        steps: 30,
        input_reference: None,
        params: Default::default(),
    }
}

fn tier(i: u64) -> Tier {
    [Tier::Free, Tier::Paid, Tier::Internal][(i % 3) as usize]
}

fn outputs(id: &VideoId) -> Outputs {
    Outputs {
        video_key: format!("videos/{id}/1/video.mp4"),
        thumbnail_key: format!("videos/{id}/1/thumbnail.jpg"),
        spritesheet_key: format!("videos/{id}/1/spritesheet.jpg"),
        video_bytes: 1_234_567,
    }
}

fn new_job(i: u64, tenant: &TenantId, spec: &VideoSpec, now_ms: i64) -> NewJob {
    NewJob {
        id: VideoId::generate(),
        tenant: tenant.clone(),
        tier: tier(i),
        spec: spec.clone(),
        now_ms,
    }
}

fn tenant() -> anyhow::Result<TenantId> {
    TenantId::parse("bench").ok_or_else(|| anyhow::anyhow!("'bench' is not a valid tenant id"))
}

fn finish_run(name: String, workers: usize, jobs: u64, wall: Duration, ops: Vec<(&str, Vec<Duration>)>) -> Run {
    let wall_s = wall.as_secs_f64();
    Run {
        name,
        workers,
        jobs,
        wall_s,
        jobs_per_sec: jobs as f64 / wall_s,
        ratio_to_baseline: 0.0,
        submits_done_s: None,
        ops: ops
            .into_iter()
            .map(|(op, mut v)| (op.to_owned(), Percentiles::of(&mut v)))
            .collect(),
    }
}

/// Bare SQLite (rusqlite, prepared statements, same pragmas as the store
/// except that SQLite checkpoints the WAL itself): per job, INSERT, UPDATE
/// (lease), UPDATE (complete), each its own autocommit transaction, or with
/// `group > 1` the statements of `group` jobs in one `BEGIN IMMEDIATE … COMMIT`.
async fn baseline(file: &Path, jobs: u64, group: u64) -> anyhow::Result<Run> {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || baseline_blocking(&file, jobs, group)).await?
}

fn baseline_blocking(file: &Path, jobs: u64, group: u64) -> anyhow::Result<Run> {
    let conn = rusqlite::Connection::open(file).with_context(|| format!("opening {}", file.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.execute_batch(
        "CREATE TABLE bench_jobs (id TEXT NOT NULL PRIMARY KEY, tenant TEXT NOT NULL, \
         state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, spec_json TEXT NOT NULL, \
         worker TEXT, outputs_json TEXT, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER)",
    )?;
    let spec_json = serde_json::to_string(&spec())?;
    let clock = SystemClock;
    let (mut ins, mut upd1, mut upd2) = (Vec::new(), Vec::new(), Vec::new());
    let mut insert = conn.prepare(
        "INSERT INTO bench_jobs (id, tenant, state, spec_json, created_at_ms) VALUES (?1, ?2, 'queued', ?3, ?4)",
    )?;
    let mut lease = conn.prepare(
        "UPDATE bench_jobs SET state = 'running', attempt = attempt + 1, worker = ?1, updated_at_ms = ?2 \
         WHERE id = ?3 AND state = 'queued'",
    )?;
    let mut complete = conn.prepare(
        "UPDATE bench_jobs SET state = 'completed', outputs_json = ?1, updated_at_ms = ?2 \
         WHERE id = ?3 AND state = 'running' AND attempt = 1",
    )?;
    let start = Instant::now();
    for i in 0..jobs {
        if group > 1 && i % group == 0 {
            if i > 0 {
                conn.execute_batch("COMMIT")?;
            }
            conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        let id = VideoId::generate();
        let outputs_json = serde_json::to_string(&outputs(&id))?;
        let t0 = Instant::now();
        insert.execute(rusqlite::params![id.as_str(), "bench", spec_json, clock.now_ms()])?;
        let t1 = Instant::now();
        let leased = lease.execute(rusqlite::params!["bench/w0", clock.now_ms(), id.as_str()])?;
        let t2 = Instant::now();
        let completed = complete.execute(rusqlite::params![outputs_json, clock.now_ms(), id.as_str()])?;
        let t3 = Instant::now();
        anyhow::ensure!(leased == 1 && completed == 1, "baseline update missed");
        ins.push(t1 - t0);
        upd1.push(t2 - t1);
        upd2.push(t3 - t2);
    }
    if group > 1 {
        conn.execute_batch("COMMIT")?;
    }
    let wall = start.elapsed();
    let name = if group > 1 {
        format!("baseline, {group} jobs per transaction")
    } else {
        "baseline: SQLite INSERT+UPDATE+UPDATE".to_owned()
    };
    Ok(finish_run(
        name,
        1,
        jobs,
        wall,
        vec![("insert", ins), ("update1", upd1), ("update2", upd2)],
    ))
}

/// The store alone: submit, lease, complete per job in one task.
async fn store_serial(dir: &Path, jobs: u64) -> anyhow::Result<Run> {
    let store = SqliteStore::open(&dir.join("videogen.db")).await?;
    let clock = SystemClock;
    let (tenant, spec) = (tenant()?, spec());
    let worker = WorkerId::new("bench", "w0");
    let (mut sub, mut lea, mut com) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..jobs {
        let t0 = Instant::now();
        let Submitted::Created(job) = store.submit(new_job(i, &tenant, &spec, clock.now_ms()), None).await? else {
            bail!("submit without idempotency key replayed a job");
        };
        let t1 = Instant::now();
        let now = clock.now_ms();
        let lease = store
            .lease(&job.id, &worker, now, LEASE_TTL_MS)
            .await?
            .context("fresh job not leasable")?;
        let t2 = Instant::now();
        let now = clock.now_ms();
        store
            .complete(&lease, &outputs(&job.id), now, now + RETENTION_MS)
            .await?;
        let t3 = Instant::now();
        sub.push(t1 - t0);
        lea.push(t2 - t1);
        com.push(t3 - t2);
    }
    let wall = start.elapsed();
    store.close().await?;
    Ok(finish_run(
        "store serial: submit+lease+complete".into(),
        1,
        jobs,
        wall,
        vec![("submit", sub), ("lease", lea), ("complete", com)],
    ))
}

/// Producer and `workers` worker tasks running concurrently on a fresh
/// SQLite store (one submit in flight at a time: the single writer's group
/// commit makes each one cheap).
async fn pipeline(dir: &Path, jobs: u64, workers: usize) -> anyhow::Result<Run> {
    let store = Arc::new(SqliteStore::open(&dir.join("videogen.db")).await?);
    let run = pipeline_on(
        store.clone(),
        jobs,
        workers,
        1,
        format!("pipeline: {workers} worker(s)"),
    )
    .await?;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    Ok(run)
}

/// `submitters` producer tasks (each: `store.submit` then
/// `dispatcher.enqueue`, one job at a time) and `workers` worker tasks
/// (`dispatcher.next` → `store.lease` → `store.complete`) on `store`.
async fn pipeline_on(
    store: Arc<dyn Store>,
    jobs: u64,
    workers: usize,
    submitters: usize,
    name: String,
) -> anyhow::Result<Run> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dispatcher = Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone()));
    let shutdown = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let target = usize::try_from(jobs)?;
    let next_job = Arc::new(AtomicU64::new(0));

    let start = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..submitters.max(1) {
        let (store, clock, dispatcher, shutdown, next_job) = (
            store.clone(),
            clock.clone(),
            dispatcher.clone(),
            shutdown.clone(),
            next_job.clone(),
        );
        let tenant = tenant()?;
        producers.spawn(async move {
            let spec = spec();
            let mut lat = Vec::with_capacity(target / submitters.max(1) + 1);
            let result = async {
                loop {
                    let i = next_job.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs || shutdown.is_cancelled() {
                        break;
                    }
                    let t0 = Instant::now();
                    let Submitted::Created(job) =
                        store.submit(new_job(i, &tenant, &spec, clock.now_ms()), None).await?
                    else {
                        bail!("submit without idempotency key replayed a job");
                    };
                    dispatcher.enqueue(QueuedJob {
                        id: job.id,
                        tenant: job.tenant,
                        tier: job.tier,
                        model: job.spec.model,
                        enqueued_at_ms: job.enqueued_at_ms,
                        not_before_ms: None,
                    });
                    lat.push(t0.elapsed());
                }
                anyhow::Ok(())
            }
            .await;
            if result.is_err() {
                // The workers would wait forever for the jobs not submitted.
                shutdown.cancel();
            }
            result.map(|()| (lat, start.elapsed()))
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, clock, dispatcher, shutdown, done) = (
            store.clone(),
            clock.clone(),
            dispatcher.clone(),
            shutdown.clone(),
            done.clone(),
        );
        tasks.spawn(async move {
            let id = WorkerId::new("bench", &format!("w{w}"));
            let loaded = vec![REFERENCE_MODEL.to_owned()];
            let (mut lea, mut com) = (Vec::new(), Vec::new());
            let result = async {
                while let Some(job) = dispatcher.next(&loaded, &shutdown).await {
                    let t0 = Instant::now();
                    let lease = store
                        .lease(&job.id, &id, clock.now_ms(), LEASE_TTL_MS)
                        .await?
                        .with_context(|| format!("job {} not leasable", job.id))?;
                    let t1 = Instant::now();
                    let now = clock.now_ms();
                    store
                        .complete(&lease, &outputs(&job.id), now, now + RETENTION_MS)
                        .await?;
                    com.push(t1.elapsed());
                    lea.push(t1 - t0);
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == target {
                        shutdown.cancel();
                    }
                }
                anyhow::Ok(())
            }
            .await;
            if result.is_err() {
                // Stop everyone rather than wait forever for jobs that will not finish.
                shutdown.cancel();
            }
            result.map(|()| (lea, com))
        });
    }
    let (mut lea, mut com) = (Vec::new(), Vec::new());
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((l, c)) => {
                lea.extend(l);
                com.extend(c);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let wall = start.elapsed();
    let (mut sub, mut submit_wall) = (Vec::with_capacity(target), Duration::ZERO);
    while let Some(r) = producers.join_next().await {
        let (lat, at) = r??;
        sub.extend(lat);
        submit_wall = submit_wall.max(at);
    }
    if let Some(e) = first_err {
        return Err(e.context("worker failed"));
    }
    let completed = done.load(Ordering::Relaxed);
    anyhow::ensure!(completed == target, "only {completed} of {target} jobs completed");
    anyhow::ensure!(
        store.queued_jobs(None, 1).await?.is_empty(),
        "jobs left queued in the store"
    );
    let mut run = finish_run(
        name,
        workers,
        jobs,
        wall,
        vec![("submit", sub), ("lease", lea), ("complete", com)],
    );
    run.submits_done_s = Some(submit_wall.as_secs_f64());
    Ok(run)
}
