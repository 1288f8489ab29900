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

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use videogen_api::{AppState, Limits};
use videogen_core::store::Store;
use videogen_core::{Clock, SystemClock, TenantId, Tier};
use videogen_model::{Model, REFERENCE_DEFAULT_STEPS, ReferenceModel};
use videogen_sched::SchedulerConfig;
use videogen_worker::{Dispatcher, JobBus};

use super::{Machine, Percentiles, print_json};

/// The target at 500 req/s.
const TARGET_P99_MS: f64 = 10.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Parent directory for the in-process server's data dir (default: system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
}

/// Outcome of one request.
struct Sample {
    latency: Duration,
    service: Duration,
    lag: Duration,
    error: Option<String>,
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0 && args.rate.is_finite(), "--rate must be positive");
    anyhow::ensure!(args.secs > 0.0 && args.secs.is_finite(), "--secs must be positive");
    anyhow::ensure!(
        args.warmup_secs >= 0.0 && args.warmup_secs.is_finite(),
        "--warmup-secs must be >= 0"
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    let machine = Machine::detect();

    let shutdown = CancellationToken::new();
    let (base, key, local, _dir) = match &args.server {
        Some(url) => {
            let key = args.api_key.clone().context("--server needs --api-key")?;
            (url.trim_end_matches('/').to_owned(), key, None, None)
        }
        None => {
            let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
            let dir = tempfile::Builder::new()
                .prefix("videogen-bench-submit-")
                .tempdir_in(&parent)?;
            let (url, key, dispatcher) = start_server(dir.path(), &shutdown).await?;
            (url, key, Some(dispatcher), Some(dir))
        }
    };
    let target = match &args.server {
        Some(url) => format!("remote {url}"),
        None => format!("in-process server at {base} (--workers 0 semantics)"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = format!("{base}/v1/videos");
    let limit = Arc::new(Semaphore::new(args.concurrency));

    if args.warmup_secs > 0.0 {
        eprintln!(
            "[bench submit] warm-up: {:.0} req/s for {}s against {target}",
            args.rate, args.warmup_secs
        );
        let _ = fire(&client, &url, &key, args.rate, args.warmup_secs, &limit, 0).await;
    }
    eprintln!("[bench submit] measuring: {:.0} req/s for {}s", args.rate, args.secs);
    let (samples, wall) = fire(&client, &url, &key, args.rate, args.secs, &limit, 1 << 32).await;
    let jobs_queued_after = local.as_ref().map(|d| d.queued());
    shutdown.cancel();

    let mut latencies = Vec::with_capacity(samples.len());
    let mut services = Vec::with_capacity(samples.len());
    let mut lags = Vec::with_capacity(samples.len());
    let mut error_kinds = BTreeMap::new();
    for s in &samples {
        lags.push(s.lag);
        match &s.error {
            None => {
                latencies.push(s.latency);
                services.push(s.service);
            }
            Some(kind) => *error_kinds.entry(kind.clone()).or_insert(0) += 1,
        }
    }
    let ok = latencies.len();
    let report = Report {
        bench: "submit",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        target,
        offered_rate: args.rate,
        secs: args.secs,
        concurrency: args.concurrency,
        warmup_secs: args.warmup_secs,
        sent: samples.len(),
        ok,
        errors: samples.len() - ok,
        error_kinds,
        achieved_rate: ok as f64 / wall.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        latency: Percentiles::of(&mut latencies),
        service: Percentiles::of(&mut services),
        send_lag: Percentiles::of(&mut lags),
        target_p99_ms: TARGET_P99_MS,
        jobs_queued_after,
        loadavg_1m_after: super::loadavg_1m(),
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
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

/// Sends `rate * secs` requests on schedule; returns their samples and the
/// wall time from the first scheduled send to the last response.
async fn fire(
    client: &reqwest::Client,
    url: &str,
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
        let (client, url, key, limit) = (client.clone(), url.to_owned(), key.to_owned(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore never closed");
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
    let model = ReferenceModel::default();
    let dispatcher = Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone()));
    dispatcher.seed(store.queued_jobs().await?);

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
        models: vec![model.id().to_owned()],
        default_steps: REFERENCE_DEFAULT_STEPS,
        metrics: Some(metrics),
        poll_after_ms: 1000,
        control: None,
        downloads: videogen_api::state::Downloads::default(),
        submit_limit: None,
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
