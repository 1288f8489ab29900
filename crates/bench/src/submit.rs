//! `videogen bench submit`: `POST /v1/videos` latency at a fixed open-loop rate.
//!
//! Request `i` is due at `start + i / rate` whatever happened to earlier ones
//! (open loop); its latency runs from that scheduled time to the end of the
//! response body, so a stalled server or a saturated client (all
//! `--concurrency` requests in flight) shows up as latency instead of being
//! hidden by sending less (coordinated omission).
//!
//! By default the server runs in this process, wired like `videogen serve
//! --workers 0` on a temporary data dir (jobs queue up, nothing runs them);
//! `--server` targets an existing server instead.
//!
//! With `--database-url`, the bench creates a fresh PostgreSQL database and
//! starts `--nodes` `videogen serve` child processes on loopback over it:
//! node 0 with `--role all --workers 0` (API and the scheduler leader), the
//! others with `--role api`. Request `i` goes to node `i % nodes`, and the
//! report has latency per node and overall. The database is dropped after.

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use videogen_api::{AppState, Limits};
use videogen_control::{Dispatcher, JobBus};
use videogen_core::store::prelude::*;
use videogen_core::{Clock, SystemClock, TenantId, Tier};
use videogen_model::REFERENCE_DEFAULT_STEPS;
use videogen_sched::SchedulerConfig;

use crate::procs;
use crate::{CpuSnapshot, Machine, Percentiles, print_json};
use videogen_testkit::pg_server::{PgServer, PgSettings, SYNCHRONOUS_COMMIT, WalStats};

/// The target at 500 req/s.
const TARGET_P99_MS: f64 = 10.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bootstrap secrets of the `--database-url` nodes (they live and die with the bench's database).
const NODE_ADMIN_KEY: &str = "vg_bench_submit_admin_key_0123456789abcdef";
const NODE_WORKER_TOKEN: &str = "vgw_bench_submit_worker_token_0123456789abcdef";

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Offered load, requests per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Most requests in flight; a request due while all are busy waits (and
    /// that wait counts as latency).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Unmeasured warm-up at the same rate, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Target an existing server (e.g. http://127.0.0.1:8080) instead of an in-process one.
    #[arg(long, requires = "api_key")]
    server: Option<String>,
    /// API key for `--server`.
    #[arg(long, env = "VIDEOGEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Parent directory for the in-process server's data dir, or the nodes'
    /// data dirs and logs (default: system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL server to run the API on, e.g.
    /// `postgres://postgres@127.0.0.1:5432/`: the bench creates a fresh
    /// database there (dropped afterwards) and starts `--nodes` `videogen
    /// serve` processes on it instead of the in-process server.
    #[arg(long, conflicts_with = "server")]
    database_url: Option<String>,
    /// `videogen serve` processes with `--database-url`: node 0 runs `--role
    /// all --workers 0`, the others `--role api`; requests alternate between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    nodes: u32,
    /// `synchronous_commit` for the bench's database (default: the
    /// server's). `off` answers before the WAL flush: a diagnostic that
    /// shows what the flush costs, not a setting to run videogen with.
    #[arg(long, requires = "database_url", value_parser = clap::builder::PossibleValuesParser::new(SYNCHRONOUS_COMMIT))]
    pg_synchronous_commit: Option<String>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    build: &'static str,
    target: String,
    offered_rate: f64,
    secs: f64,
    concurrency: usize,
    warmup_secs: f64,
    sent: usize,
    ok: usize,
    errors: usize,
    /// Error kinds (HTTP status or transport) and their counts.
    error_kinds: BTreeMap<String, usize>,
    /// Successful responses per second of measured wall time.
    achieved_rate: f64,
    wall_s: f64,
    /// Scheduled time → end of response, successful requests only.
    latency: Percentiles,
    /// Request actually started → end of response, successful requests only
    /// (server + network; hides client-side stalls, so not the headline).
    service: Percentiles,
    /// Scheduled time → request actually started (client-side lag, incl. waiting for a slot).
    send_lag: Percentiles,
    target_p99_ms: f64,
    jobs_queued_after: Option<usize>,
    loadavg_1m_after: Option<f64>,
    /// CPUs' worth of busy time, machine-wide, during the measured part.
    busy_cpus: Option<f64>,
    /// CPU seconds of this process (the load generator, and the server in
    /// the in-process mode) during the measured part.
    client_cpu_s: Option<f64>,
    /// Busy CPU time on the machine not spent by this process, the nodes or
    /// (with `--database-url`) PostgreSQL: other people's work and the
    /// kernel's. Much more than a second or two means a disturbed run.
    other_cpu_s: Option<f64>,
    /// With `--database-url`: the server, its durability settings, the jobs
    /// found in the database afterwards and what each node used.
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<PgRun>,
    /// Per node, when there are several targets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeReport>,
    /// The measured seconds with the most requests over the target (at most
    /// 5), by scheduled send time: tells periodic stalls from a spread tail.
    slow_seconds: Vec<SlowSecond>,
}

#[derive(Debug, Serialize)]
struct SlowSecond {
    /// Seconds into the measured part.
    second: u64,
    /// Requests due in that second slower than the target (errors included).
    over_target: usize,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct PgRun {
    server: String,
    settings: PgSettings,
    /// Rows in `jobs` after the run.
    jobs_in_database_after: i64,
    /// Successful submissions, warm-up included (should equal the rows).
    ok_total: usize,
    /// CPU seconds of all `postgres` processes on this machine during the measured part.
    postgres_cpu_s: Option<f64>,
    /// Server-wide WAL written and flushed during the measured part.
    wal: Option<WalStats>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    node: usize,
    url: String,
    role: &'static str,
    sent: usize,
    ok: usize,
    errors: usize,
    achieved_rate: f64,
    latency: Percentiles,
    service: Percentiles,
    /// CPU seconds the node's process used during the measured part.
    cpu_s: Option<f64>,
}

/// Outcome of one request.
struct Sample {
    /// Index of the target it went to.
    node: usize,
    /// Scheduled send time, from the first request's.
    due: Duration,
    latency: Duration,
    service: Duration,
    lag: Duration,
    error: Option<String>,
}

/// What the load goes to.
struct Targets {
    /// Base URLs; request `i` goes to `bases[i % len]`.
    bases: Vec<String>,
    key: String,
    /// Role of each base, for the report.
    roles: Vec<&'static str>,
    /// Process ids of the nodes, when the bench started them.
    pids: Vec<u32>,
    label: String,
}

/// Figures of the measured part.
struct Measured {
    samples: Vec<Sample>,
    wall: Duration,
    warmup_ok: usize,
    busy_cpus: Option<f64>,
    /// CPU seconds per target process, and of this process.
    node_cpu_s: Vec<Option<f64>>,
    client_cpu_s: Option<f64>,
    postgres_cpu_s: f64,
    wal: Option<WalStats>,
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0 && args.rate.is_finite(), "--rate must be positive");
    anyhow::ensure!(args.secs > 0.0 && args.secs.is_finite(), "--secs must be positive");
    anyhow::ensure!(
        args.warmup_secs >= 0.0 && args.warmup_secs.is_finite(),
        "--warmup-secs must be >= 0"
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(
        args.nodes == 1 || args.database_url.is_some(),
        "--nodes {} needs --database-url (the nodes share a PostgreSQL database)",
        args.nodes
    );
    let machine = Machine::detect();

    let report = match (&args.server, &args.database_url) {
        (Some(url), _) => {
            let key = args.api_key.clone().context("--server needs --api-key")?;
            let targets = Targets {
                bases: vec![url.trim_end_matches('/').to_owned()],
                key,
                roles: vec!["remote"],
                pids: Vec::new(),
                label: format!("remote {url}"),
            };
            let m = measure(&args, &targets, None).await?;
            report(&args, machine, &targets, m, None, None)
        }
        (None, Some(url)) => run_nodes(&args, machine, url).await?,
        (None, None) => {
            let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
            let dir = tempfile::Builder::new()
                .prefix("videogen-bench-submit-")
                .tempdir_in(&parent)?;
            let shutdown = CancellationToken::new();
            let (base, key, dispatcher) = start_server(dir.path(), &shutdown).await?;
            let targets = Targets {
                label: format!("in-process server at {base} (--workers 0 semantics)"),
                bases: vec![base],
                key,
                roles: vec!["in-process"],
                pids: Vec::new(),
            };
            let m = measure(&args, &targets, None).await;
            let queued = dispatcher.queued();
            shutdown.cancel();
            report(&args, machine, &targets, m?, Some(queued), None)
        }
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

/// Warm-up, then the measured part, against `t`.
async fn measure(args: &SubmitArgs, t: &Targets, pg: Option<&PgServer>) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let urls: Vec<String> = t.bases.iter().map(|b| format!("{b}/v1/videos")).collect();
    let limit = Arc::new(Semaphore::new(args.concurrency));

    let mut warmup_ok = 0;
    if args.warmup_secs > 0.0 {
        eprintln!(
            "[bench submit] warm-up: {:.0} req/s for {}s against {}",
            args.rate, args.warmup_secs, t.label
        );
        let (warm, _) = fire(&client, &urls, &t.key, args.rate, args.warmup_secs, &limit, 0).await;
        warmup_ok = warm.iter().filter(|s| s.error.is_none()).count();
    }
    eprintln!("[bench submit] measuring: {:.0} req/s for {}s", args.rate, args.secs);
    let cpu_before = CpuSnapshot::now();
    let nodes_before: Vec<Option<f64>> = t.pids.iter().map(|&p| procs::cpu_seconds(p)).collect();
    let client_before = procs::cpu_seconds(std::process::id());
    let pg_before = procs::cpu_seconds_by_name("postgres");
    let wal_before = match pg {
        Some(pg) => Some(pg.wal_stats().await?),
        None => None,
    };
    let (samples, wall) = fire(&client, &urls, &t.key, args.rate, args.secs, &limit, 1 << 32).await;
    let busy_cpus = CpuSnapshot::now()
        .zip(cpu_before)
        .and_then(|(after, before)| after.busy_cpus_since(&before));
    let delta = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    let node_cpu_s = t
        .pids
        .iter()
        .zip(nodes_before)
        .map(|(&p, before)| delta(before, procs::cpu_seconds(p)))
        .collect();
    let client_cpu_s = delta(client_before, procs::cpu_seconds(std::process::id()));
    let postgres_cpu_s = procs::cpu_seconds_between(&pg_before, &procs::cpu_seconds_by_name("postgres"));
    let wal = match (pg, wal_before) {
        (Some(pg), Some(before)) => Some(pg.wal_stats().await?.since(&before)),
        _ => None,
    };
    Ok(Measured {
        samples,
        wall,
        warmup_ok,
        busy_cpus,
        node_cpu_s,
        client_cpu_s,
        postgres_cpu_s,
        wal,
    })
}

/// Latency, service and lag percentiles and error kinds of `samples`.
struct Summary {
    latency: Percentiles,
    service: Percentiles,
    send_lag: Percentiles,
    ok: usize,
    error_kinds: BTreeMap<String, usize>,
}

fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>) -> Summary {
    let mut latencies = Vec::new();
    let mut services = Vec::new();
    let mut lags = Vec::new();
    let mut error_kinds = BTreeMap::new();
    for s in samples {
        lags.push(s.lag);
        match &s.error {
            None => {
                latencies.push(s.latency);
                services.push(s.service);
            }
            Some(kind) => *error_kinds.entry(kind.clone()).or_insert(0) += 1,
        }
    }
    Summary {
        ok: latencies.len(),
        latency: Percentiles::of(&mut latencies),
        service: Percentiles::of(&mut services),
        send_lag: Percentiles::of(&mut lags),
        error_kinds,
    }
}

fn report(
    args: &SubmitArgs,
    machine: Machine,
    t: &Targets,
    m: Measured,
    jobs_queued_after: Option<usize>,
    postgres: Option<PgRun>,
) -> Report {
    let wall_s = m.wall.as_secs_f64();
    let all = summarize(m.samples.iter());
    let nodes = if t.bases.len() > 1 || !t.pids.is_empty() {
        (0..t.bases.len())
            .map(|i| {
                let of_node: Vec<&Sample> = m.samples.iter().filter(|s| s.node == i).collect();
                let s = summarize(of_node.iter().copied());
                NodeReport {
                    node: i,
                    url: t.bases[i].clone(),
                    role: t.roles[i],
                    sent: of_node.len(),
                    ok: s.ok,
                    errors: of_node.len() - s.ok,
                    achieved_rate: s.ok as f64 / wall_s,
                    latency: s.latency,
                    service: s.service,
                    cpu_s: m.node_cpu_s.get(i).copied().flatten(),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let slow_seconds = slow_seconds(&m.samples, Duration::from_secs_f64(TARGET_P99_MS / 1e3));
    let pg_cpu_s = if postgres.is_some() { m.postgres_cpu_s } else { 0.0 };
    let other_cpu_s = m.busy_cpus.map(|b| {
        let ours: f64 = m.node_cpu_s.iter().flatten().sum::<f64>() + m.client_cpu_s.unwrap_or(0.0);
        b * wall_s - ours - pg_cpu_s
    });
    let postgres = postgres.map(|p| PgRun {
        ok_total: m.warmup_ok + all.ok,
        postgres_cpu_s: Some(m.postgres_cpu_s),
        wal: m.wal,
        ..p
    });
    Report {
        bench: "submit",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        target: t.label.clone(),
        offered_rate: args.rate,
        secs: args.secs,
        concurrency: args.concurrency,
        warmup_secs: args.warmup_secs,
        sent: m.samples.len(),
        ok: all.ok,
        errors: m.samples.len() - all.ok,
        error_kinds: all.error_kinds,
        achieved_rate: all.ok as f64 / wall_s,
        wall_s,
        latency: all.latency,
        service: all.service,
        send_lag: all.send_lag,
        target_p99_ms: TARGET_P99_MS,
        jobs_queued_after,
        loadavg_1m_after: crate::loadavg_1m(),
        busy_cpus: m.busy_cpus,
        client_cpu_s: m.client_cpu_s,
        other_cpu_s,
        postgres,
        nodes,
        slow_seconds,
    }
}

/// The (at most 5) seconds of scheduled send time with the most requests
/// slower than `target` or failed, worst first.
fn slow_seconds(samples: &[Sample], target: Duration) -> Vec<SlowSecond> {
    let mut by_second: BTreeMap<u64, SlowSecond> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.error.is_some() || s.latency > target) {
        let second = s.due.as_secs();
        let e = by_second.entry(second).or_insert(SlowSecond {
            second,
            over_target: 0,
            max_ms: 0.0,
        });
        e.over_target += 1;
        e.max_ms = e.max_ms.max(s.latency.as_secs_f64() * 1e3);
    }
    let mut worst: Vec<SlowSecond> = by_second.into_values().collect();
    worst.sort_by(|a, b| b.over_target.cmp(&a.over_target).then(a.second.cmp(&b.second)));
    worst.truncate(5);
    worst
}

/// `--database-url`: a fresh database, `--nodes` `serve` processes on it,
/// the load, then everything torn down (the database dropped) whatever happened.
async fn run_nodes(args: &SubmitArgs, machine: Machine, url: &str) -> anyhow::Result<Report> {
    let server = PgServer::new(url);
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("videogen-bench-submit-pg-")
        .tempdir_in(&parent)?;
    let db = server.create("submit").await?;
    let settings = async {
        if let Some(v) = &args.pg_synchronous_commit {
            server.set_synchronous_commit(&db, v).await?;
        }
        server.settings_in(&db).await
    }
    .await;
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            server.drop_db(&db).await;
            return Err(e);
        }
    };
    eprintln!(
        "[bench submit] database {} on {}; {} node(s), logs in {}",
        db.name,
        server.describe(),
        args.nodes,
        dir.path().display()
    );
    let mut children = Vec::new();
    let key = videogen_api::auth::generate_secret();
    let result = async {
        let mut bases = Vec::new();
        let mut roles = Vec::new();
        for i in 0..args.nodes as usize {
            let role = if i == 0 { "all" } else { "api" };
            let (child, base) = start_node(dir.path(), i, role, &db.url).await?;
            eprintln!("[bench submit] node {i} (--role {role}) at {base}");
            children.push(child);
            bases.push(base);
            roles.push(role);
            if i == 0 {
                // The first node has migrated the database: add the bench's key.
                insert_bench_key(&db.url, &key).await?;
            }
        }
        let targets = Targets {
            label: format!(
                "{} `videogen serve` process(es) on PostgreSQL {} (node 0 --role all --workers 0, others --role api)",
                args.nodes,
                server.describe()
            ),
            pids: children.iter().filter_map(Child::id).collect(),
            bases,
            key: key.clone(),
            roles,
        };
        let m = measure(args, &targets, Some(&server)).await?;
        let jobs = count_jobs(&db.url).await?;
        let pg = PgRun {
            server: server.describe(),
            settings,
            jobs_in_database_after: jobs,
            ok_total: 0,
            postgres_cpu_s: None,
            wal: None,
        };
        Ok(report(args, machine, &targets, m, None, Some(pg)))
    }
    .await;
    for c in &mut children {
        let _ = c.kill().await;
    }
    server.drop_db(&db).await;
    if result.is_err() {
        // Keep the logs of a failed run.
        let kept = dir.keep();
        eprintln!("[bench submit] node logs kept in {}", kept.display());
    }
    result
}

/// Starts node `i` of the `--database-url` run with its own data dir and log.
async fn start_node(dir: &Path, i: usize, role: &str, db_url: &str) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe().context("locating the videogen binary")?;
    let data = dir.join(format!("node{i}"));
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let extra: Vec<String> = [
        "--role",
        role,
        "--database-url",
        db_url,
        "--blob-url",
        &format!("file://{}", blobs.display()),
    ]
    .map(str::to_owned)
    .to_vec();
    let log = dir.join(format!("node{i}.log"));
    procs::start_server(&exe, &data, &log, &extra, NODE_ADMIN_KEY, NODE_WORKER_TOKEN)
        .await
        .with_context(|| format!("starting node {i} (log: {})", log.display()))
}

/// A paid-tier key for tenant `bench`, as the in-process mode makes.
async fn insert_bench_key(db_url: &str, secret: &str) -> anyhow::Result<()> {
    let store = videogen_store::PgStore::connect(db_url).await?;
    let tenant = TenantId::parse("bench").context("bench tenant")?;
    store
        .insert_api_key(&videogen_api::auth::key_record(
            secret,
            tenant,
            Tier::Paid,
            false,
            SystemClock.now_ms(),
        ))
        .await?;
    store.close().await?;
    Ok(())
}

async fn count_jobs(db_url: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(db_url).await?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs").fetch_one(&mut c).await?;
    drop(c.close().await);
    Ok(n)
}

fn print_report(r: &Report) {
    println!("videogen bench submit: open-loop POST /v1/videos (JSON body)");
    r.machine.print();
    println!("target: {}", r.target);
    println!(
        "offered {:.0} req/s for {}s (after {}s warm-up), at most {} in flight",
        r.offered_rate, r.secs, r.warmup_secs, r.concurrency
    );
    println!(
        "sent {}, ok {}, errors {}; achieved {:.1} ok/s over {:.2}s",
        r.sent, r.ok, r.errors, r.achieved_rate, r.wall_s
    );
    for (kind, n) in &r.error_kinds {
        println!("  error {kind}: {n}");
    }
    let l = &r.latency;
    println!(
        "latency from scheduled send, ms: mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    let v = &r.service;
    println!(
        "service time (actual send to response), ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        v.p50_ms, v.p90_ms, v.p99_ms, v.max_ms
    );
    let g = &r.send_lag;
    println!(
        "client send lag, ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        g.p50_ms, g.p99_ms, g.max_ms
    );
    if let Some(q) = r.jobs_queued_after {
        println!("jobs queued in the server afterwards: {q}");
    }
    if !r.nodes.is_empty() {
        println!("per node (latency from scheduled send; service = actual send to response), ms:");
        for n in &r.nodes {
            let (l, v) = (&n.latency, &n.service);
            let cpu = n.cpu_s.map_or_else(|| "?".to_owned(), |c| format!("{c:.1}"));
            println!(
                "  node {} ({:<3} {}): sent {} ok {} errors {}, {:.1} ok/s; latency p50 {:.2} p99 {:.2} \
                 p99.9 {:.2} max {:.2}; service p50 {:.2} p99 {:.2}; {cpu} CPU s",
                n.node,
                n.role,
                n.url,
                n.sent,
                n.ok,
                n.errors,
                n.achieved_rate,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                v.p50_ms,
                v.p99_ms
            );
        }
    }
    if let Some(p) = &r.postgres {
        let st = &p.settings;
        println!(
            "PostgreSQL {} at {} (synchronous_commit={}, fsync={}): {} job rows afterwards for {} ok submissions \
             (warm-up included){}",
            st.server_version,
            p.server,
            st.synchronous_commit,
            st.fsync,
            p.jobs_in_database_after,
            p.ok_total,
            if p.jobs_in_database_after == p.ok_total as i64 {
                ""
            } else {
                " MISMATCH"
            }
        );
        println!(
            "CPU s of all postgres processes during the measured part: {}",
            p.postgres_cpu_s.map_or_else(|| "?".to_owned(), |c| format!("{c:.1}"))
        );
        if let Some(w) = &p.wal {
            println!(
                "WAL during the measured part (server-wide): {:.1} MB, {:.0} bytes per ok request; {:.0} flushes \
                 ({:.0}/s, {:.1} requests per flush)",
                w.bytes / 1e6,
                w.bytes / r.ok.max(1) as f64,
                w.syncs,
                w.syncs / r.wall_s,
                r.ok as f64 / w.syncs.max(1.0)
            );
        }
    }
    if !r.slow_seconds.is_empty() {
        let worst: Vec<String> = r
            .slow_seconds
            .iter()
            .map(|w| format!("s{}: {} (max {:.1} ms)", w.second, w.over_target, w.max_ms))
            .collect();
        println!(
            "seconds with the most requests over {:.0} ms: {}",
            r.target_p99_ms,
            worst.join(", ")
        );
    }
    if let Some(b) = r.busy_cpus {
        let cpu = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.1}"));
        println!(
            "machine busy during the measured part: {b:.2} of {} CPUs; CPU s: this process {}, \
             anything else on the machine {} (more than a second or two: a disturbed run)",
            r.machine.nproc,
            cpu(r.client_cpu_s),
            cpu(r.other_cpu_s)
        );
    }
    let verdict = if r.latency.p99_ms < r.target_p99_ms && r.errors == 0 {
        "meets"
    } else {
        "MISSES"
    };
    println!(
        "p99 {:.2} ms {verdict} the < {:.0} ms target (with 0 errors)",
        r.latency.p99_ms, r.target_p99_ms
    );
}

/// Sends `rate * secs` requests on schedule, request `i` to `urls[i % len]`;
/// returns their samples and the wall time from the first scheduled send to
/// the last response.
async fn fire(
    client: &reqwest::Client,
    urls: &[String],
    key: &str,
    rate: f64,
    secs: f64,
    limit: &Arc<Semaphore>,
    seed_base: u64,
) -> (Vec<Sample>, Duration) {
    let total = (rate * secs).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let node = (i % urls.len() as u64) as usize;
        let (client, url, key, limit) = (client.clone(), urls[node].clone(), key.to_owned(), limit.clone());
        tasks.spawn(async move {
            // The semaphore is never closed; if it were, the submit would run unthrottled.
            let _permit = limit.acquire_owned().await.ok();
            let lag = due.elapsed();
            let body = serde_json::json!({
                "prompt": format!("bench clip {i}: a red fox trotting through fresh snow at dawn"),
                "seconds": "4",
                "size": "1280x720",
                "seed": (seed_base + i) & ((1 << 53) - 1),
            });
            let sent = client.post(&url).bearer_auth(&key).json(&body).send().await;
            let error = match sent {
                Err(e) => Some(transport_kind(&e)),
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Err(e) => Some(transport_kind(&e)),
                        Ok(_) if status.is_success() => None,
                        Ok(_) => Some(format!("http {}", status.as_u16())),
                    }
                }
            };
            let end = Instant::now();
            (
                end,
                Sample {
                    node,
                    due: due - start,
                    latency: end - due,
                    service: end - due - lag,
                    lag,
                    error,
                },
            )
        });
    }
    let mut samples = Vec::with_capacity(total as usize);
    let mut last = start;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((end, s)) => {
                last = last.max(end);
                samples.push(s);
            }
            Err(e) => samples.push(Sample {
                node: 0,
                due: Duration::ZERO,
                latency: Duration::ZERO,
                service: Duration::ZERO,
                lag: Duration::ZERO,
                error: Some(format!("task: {e}")),
            }),
        }
    }
    (samples, last.saturating_duration_since(start))
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        format!("transport: {e}")
    }
}

/// Starts the API like `videogen serve --workers 0` on `data_dir`, listening
/// on 127.0.0.1:0 until `shutdown`; returns its base URL, a bench API key and
/// the dispatcher (to read the queue depth afterwards).
async fn start_server(
    data_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<(String, String, Arc<Dispatcher>)> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let store = Arc::new(videogen_store::SqliteStore::open(&data_dir.join("videogen.db")).await?);
    let blob = Arc::new(videogen_blob::LocalBlobStore::new(&data_dir.join("blobs"))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dispatcher = Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone()));
    dispatcher.seed(store.queued_jobs(None, u32::MAX).await?);

    let secret = videogen_api::auth::generate_secret();
    let tenant = TenantId::parse("bench").context("bench tenant")?;
    store
        .insert_api_key(&videogen_api::auth::key_record(
            &secret,
            tenant,
            Tier::Paid,
            false,
            clock.now_ms(),
        ))
        .await?;

    let state = AppState {
        store,
        blob,
        moderator: Arc::new(videogen_safety::DenylistModerator::new()),
        dispatcher: dispatcher.clone(),
        bus: JobBus::default(),
        clock,
        limits: Limits::default(),
        catalog: Arc::new(videogen_core::catalog::Catalog::reference(REFERENCE_DEFAULT_STEPS)),
        fleet: None,
        metrics: Some(metrics),
        poll_after_ms: 1000,
        control: None,
        downloads: videogen_api::state::Downloads::default(),
        submit_limit: None,
        readiness: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(e) = videogen_api::serve(listener, state, stop).await {
            eprintln!("[bench submit] server error: {e}");
        }
    });
    Ok((format!("http://{addr}"), secret, dispatcher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(due_ms: u64, latency_ms: u64, error: bool) -> Sample {
        Sample {
            node: 0,
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            service: Duration::ZERO,
            lag: Duration::ZERO,
            error: error.then(|| "http 500".to_owned()),
        }
    }

    #[test]
    fn slow_seconds_count_requests_over_the_target_per_scheduled_second() {
        let samples = [
            sample(100, 1, false),
            sample(2_100, 30, false),
            sample(2_900, 12, false),
            sample(5_000, 2, true),
            sample(5_500, 3, false),
        ];
        let worst = slow_seconds(&samples, Duration::from_millis(10));
        let got: Vec<(u64, usize)> = worst.iter().map(|w| (w.second, w.over_target)).collect();
        assert_eq!(got, [(2, 2), (5, 1)]);
        assert_eq!(worst[0].max_ms, 30.0);
        assert!(slow_seconds(&samples[..1], Duration::from_millis(10)).is_empty());
    }
}
