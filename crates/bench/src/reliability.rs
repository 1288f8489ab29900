//! `videogen bench reliability`: the infrastructure scenarios of
//! docs/RELIABILITY.md, with real processes.
//!
//! `videogen serve --workers 0` and worker processes on loopback take a
//! steady open-loop load of submissions (each with its own idempotency key
//! and prompt) while one fault strikes:
//!
//! - `server-kill`: the server is SIGKILLed mid-load and restarted on the
//!   same address and data;
//! - `database-stop`: the PostgreSQL server (a private one) is stopped
//!   (`pg_ctl stop -m fast`) for `--fault-secs`, then started;
//! - `blob-full`: the blob directory's file system (give a small one, e.g. a
//!   tmpfs, with `--blob-dir`) is filled to the last byte for `--fault-secs`,
//!   then freed;
//! - `image-uploads`: no fault; `--parallel` multipart submissions of a large
//!   PNG at once, and the server's peak RSS (`VmHWM`).
//!
//! Then it waits for every acknowledged job to end and reports: requests
//! sent, acknowledged, refused (and their statuses), latencies (how many took
//! over 2 s), acknowledged jobs present afterwards, completed, failed and
//! dead-lettered, duplicates (one prompt, two jobs), `/readyz` while the
//! fault lasted, and how long after the fault ended the first submission
//! succeeded. Exits non-zero when an acknowledged job is lost, duplicated or
//! dead-lettered.

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Child;

use crate::{Machine, Percentiles, print_json, procs};

const ADMIN_KEY: &str = "vg_reliability_admin_key_0123456789";
const WORKER_TOKEN: &str = "vgw_reliability_worker_token_0123456789";
/// A request slower than this is abandoned (and counted as unanswered).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The answer time the issue asks every request to meet during an outage.
const ANSWER_BOUND: Duration = Duration::from_secs(2);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    ServerKill,
    DatabaseStop,
    BlobFull,
    ImageUploads,
}

#[derive(clap::Args, Debug)]
pub struct ReliabilityArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Submissions per second (open loop).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=2000))]
    rate: u64,
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    load_secs: u64,
    /// When the fault strikes, in seconds after the load starts.
    #[arg(long, default_value_t = 8)]
    fault_at_secs: u64,
    /// How long the fault lasts (database-stop, blob-full), in seconds.
    #[arg(long, default_value_t = 15)]
    fault_secs: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// blob-full: a directory on a small file system the bench may fill (e.g. a tmpfs of 64 MiB).
    #[arg(long)]
    blob_dir: Option<PathBuf>,
    /// image-uploads: submissions at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// image-uploads: the PNG's side in pixels.
    #[arg(long, default_value_t = 4096)]
    image_side: u32,
    /// Longest wait for the acknowledged jobs to end, in seconds.
    #[arg(long, default_value_t = 600)]
    settle_secs: u64,
    /// The `videogen` binary under test (default: this one).
    #[arg(long)]
    server_exe: Option<PathBuf>,
    /// One JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// One submission (retried under its idempotency key until answered 2xx
/// or 4xx) and what became of it.
#[derive(Debug, Clone, Default)]
struct Sent {
    /// Each try's answer time, for those answered.
    answered: Vec<(u16, Duration)>,
    /// Tries with no answer (refused, reset, or past the request timeout).
    unanswered: usize,
    /// The video's id once a try was answered 200.
    id: Option<String>,
    /// When the 200 came, from the load's start.
    acked_at: Option<Duration>,
}

#[derive(Serialize, Default)]
struct Report {
    bench: &'static str,
    machine: Option<Machine>,
    scenario: Option<Scenario>,
    rate: u64,
    load_secs: u64,
    fault_at_secs: u64,
    fault_secs: u64,
    /// Submissions (each retried under its idempotency key until answered).
    sent: usize,
    acknowledged: usize,
    /// Submissions that needed more than one try.
    retried: usize,
    /// Tries answered with an error status, by status.
    refused: BTreeMap<u16, usize>,
    /// Tries with no answer (connection refused or reset, or past the request timeout).
    unanswered: usize,
    answered_latency: Percentiles,
    answered_over_2s: usize,
    present_after: usize,
    completed: usize,
    failed: BTreeMap<String, usize>,
    lost: usize,
    duplicated: usize,
    /// `/readyz` probes during the fault: ready / not ready / no answer.
    readyz_during_fault: [usize; 3],
    /// From the fault's end to the first acknowledgement after it, ms.
    back_after_ms: Option<f64>,
    /// From the fault's end to the last acknowledged job's completion, s
    /// (completion times are whole seconds).
    drained_after_s: Option<f64>,
    #[serde(skip)]
    last_completed_unix: Option<f64>,
    peak_rss_mib: Option<f64>,
    rss_before_mib: Option<f64>,
}

struct Env {
    exe: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    listen: String,
    base: String,
    server_args: Vec<String>,
    http: reqwest::Client,
}

pub async fn run(args: ReliabilityArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = match &args.server_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("locating the videogen binary")?,
    };
    let (data, logs) = (dir.path().join("data"), dir.path().join("logs"));
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&logs)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");

    let mut server_args: Vec<String> = ["--steps", "4", "--housekeeping-secs", "0.5", "--max-attempts", "3"]
        .map(str::to_owned)
        .to_vec();
    let pg = match args.scenario {
        Scenario::DatabaseStop => {
            let pg = tokio::task::spawn_blocking(videogen_testkit::pg::PrivateServer::start)
                .await?
                .map_err(anyhow::Error::msg)
                .context("starting a private PostgreSQL (needs the postgresql package)")?;
            server_args.extend(["--database-url".to_owned(), pg.url()]);
            Some(pg)
        }
        _ => None,
    };
    if args.scenario == Scenario::BlobFull {
        let blobs = args
            .blob_dir
            .as_ref()
            .context("blob-full needs --blob-dir on a small file system")?;
        std::fs::create_dir_all(blobs)?;
        server_args.extend(["--blob-url".to_owned(), format!("file://{}", blobs.display())]);
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(64)
        .build()?;
    let mut env = Env {
        exe,
        data,
        logs,
        listen,
        base: String::new(),
        server_args,
        http,
    };
    let mut server = start_server(&mut env).await?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let name = format!("w{i}");
        let extra = ["--step-ms", "50", "--checkpoint-every-steps", "1"].map(str::to_owned);
        workers.push(procs::start_worker(
            &env.exe,
            &env.base,
            &name,
            &env.logs.join(format!("{name}.log")),
            &extra,
            WORKER_TOKEN,
        )?);
    }

    let mut report = Report {
        bench: "reliability",
        scenario: Some(args.scenario),
        rate: args.rate,
        load_secs: args.load_secs,
        fault_at_secs: args.fault_at_secs,
        fault_secs: args.fault_secs,
        ..Report::default()
    };
    let load_started_unix = unix_now();
    let mut report_fault_end_unix = None;
    let sent = if args.scenario == Scenario::ImageUploads {
        image_uploads(&env, &args, server.id(), &mut report).await?
    } else {
        let (sent, fault_end) = load_with_fault(&mut env, &args, &mut server, pg.as_ref(), &mut report).await?;
        report_fault_end_unix = fault_end.map(|d| load_started_unix + d.as_secs_f64());
        report.back_after_ms = fault_end.and_then(|end| {
            sent.iter()
                .filter_map(|s| s.acked_at)
                .filter(|at| *at >= end)
                .min()
                .map(|at| (at - end).as_secs_f64() * 1e3)
        });
        sent
    };
    summarise(&env, &args, &sent, &mut report).await?;
    if let (Some(end), Some(last)) = (report_fault_end_unix, report.last_completed_unix) {
        report.drained_after_s = Some(last - end);
    }
    for w in &mut workers {
        let _ = w.kill().await;
    }
    let _ = server.kill().await;
    report.machine = Some(Machine::detect());
    let failed_checks = checks(&report, args.scenario);
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if !failed_checks.is_empty() {
        bail!("checks failed: {}", failed_checks.join("; "));
    }
    Ok(())
}

async fn start_server(env: &mut Env) -> anyhow::Result<Child> {
    let (child, base) = procs::start_server_on(
        &env.exe,
        &env.listen,
        &env.data,
        &env.logs.join("server.log"),
        &env.server_args,
        ADMIN_KEY,
        WORKER_TOKEN,
    )
    .await?;
    env.base = base;
    Ok(child)
}

/// The open-loop load, with the scenario's fault at `fault_at_secs`;
/// returns every submission and when the fault ended (from the load's start).
async fn load_with_fault(
    env: &mut Env,
    args: &ReliabilityArgs,
    server: &mut Child,
    pg: Option<&videogen_testkit::pg::PrivateServer>,
    report: &mut Report,
) -> anyhow::Result<(Vec<Sent>, Option<Duration>)> {
    let started = Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let readyz = Arc::new(Mutex::new(Vec::<(Duration, Option<u16>)>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (http, base, results, stop) = (env.http.clone(), env.base.clone(), results.clone(), stop.clone());
        let rate = args.rate;
        tokio::spawn(async move { submit_loop(http, base, rate, started, results, stop).await })
    };
    let prober = {
        let (http, base, readyz, stop) = (env.http.clone(), env.base.clone(), readyz.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tick.tick().await;
                let r = tokio::time::timeout(ANSWER_BOUND, http.get(format!("{base}/readyz")).send()).await;
                let status = r.ok().and_then(Result::ok).map(|r| r.status().as_u16());
                readyz
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((started.elapsed(), status));
            }
        })
    };
    let fault_at = Duration::from_secs(args.fault_at_secs);
    tokio::time::sleep_until((started + fault_at).into()).await;
    let fault_secs = Duration::from_secs(args.fault_secs);
    let mut fault_window = (started.elapsed(), started.elapsed());
    let fault_end = match args.scenario {
        Scenario::ServerKill => {
            eprintln!("[reliability] SIGKILL to the server at {:?}", started.elapsed());
            server.start_kill()?;
            let _ = server.wait().await;
            *server = start_server(env).await?;
            eprintln!("[reliability] server back at {:?}", started.elapsed());
            fault_window.1 = started.elapsed();
            Some(started.elapsed())
        }
        Scenario::DatabaseStop => {
            let pg = pg.context("no database")?;
            eprintln!("[reliability] stopping PostgreSQL at {:?}", started.elapsed());
            blocking(|| pg.stop()).await?;
            tokio::time::sleep(fault_secs).await;
            fault_window.1 = started.elapsed();
            blocking(|| pg.resume()).await?;
            eprintln!("[reliability] PostgreSQL back at {:?}", started.elapsed());
            Some(started.elapsed())
        }
        Scenario::BlobFull => {
            let blobs = args.blob_dir.clone().context("no --blob-dir")?;
            eprintln!("[reliability] filling {} at {:?}", blobs.display(), started.elapsed());
            let filler = blobs.join("filler.bin");
            let filled = tokio::task::spawn_blocking({
                let filler = filler.clone();
                move || fill(&filler)
            })
            .await??;
            eprintln!("[reliability] {} MiB written; full", filled >> 20);
            tokio::time::sleep(fault_secs).await;
            fault_window.1 = started.elapsed();
            std::fs::remove_file(&filler)?;
            eprintln!("[reliability] space freed at {:?}", started.elapsed());
            Some(started.elapsed())
        }
        Scenario::ImageUploads => None,
    };
    tokio::time::sleep_until((started + Duration::from_secs(args.load_secs)).into()).await;
    stop.cancel();
    load.await?;
    prober.abort();
    let probes = readyz.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (at, status) in probes {
        if at >= fault_window.0 && at <= fault_window.1 {
            let slot = match status {
                Some(200) => 0,
                Some(_) => 1,
                None => 2,
            };
            report.readyz_during_fault[slot] += 1;
        }
    }
    let sent = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((sent, fault_end))
}

async fn blocking(f: impl FnOnce() -> Result<(), String> + Send) -> anyhow::Result<()> {
    // Scoped: `f` borrows the server handle, and these calls are short.
    tokio::task::block_in_place(f).map_err(anyhow::Error::msg)
}

/// Writes `path` until the file system is full; the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // The last partial block, byte by byte, so not even a small write fits.
    let one = [0u8; 4096];
    while let Ok(n) = f.write(&one) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    Ok(written)
}

async fn submit_loop(
    http: reqwest::Client,
    base: String,
    rate: u64,
    started: Instant,
    results: Arc<Mutex<Vec<Sent>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        n += 1;
        let (http, base, results, stop) = (http.clone(), base.clone(), results.clone(), stop.clone());
        inflight.spawn(async move {
            let body = json!({"prompt": format!("reliability probe {n}"), "seconds": "4", "size": "720x1280"});
            let mut sent = Sent::default();
            // A client that does what a client should: retry what was not
            // answered for sure, under the same key, a while past the load.
            let give_up = Instant::now() + Duration::from_secs(120);
            loop {
                let req = http
                    .post(format!("{base}/v1/videos"))
                    .bearer_auth(ADMIN_KEY)
                    .header("Idempotency-Key", format!("reliability-{n}"))
                    .json(&body);
                match try_once(req, started, &mut sent).await {
                    Some(status) if status == 200 || ((400..500).contains(&status) && status != 429) => break,
                    _ => {}
                }
                if Instant::now() > give_up || (stop.is_cancelled() && sent.answered.len() + sent.unanswered > 40) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            results.lock().unwrap_or_else(|e| e.into_inner()).push(sent);
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// Sends one try of a submission and records its answer in `sent`; the
/// status, if it was answered.
async fn try_once(req: reqwest::RequestBuilder, started: Instant, sent: &mut Sent) -> Option<u16> {
    let t0 = Instant::now();
    let Ok(r) = req.send().await else {
        sent.unanswered += 1;
        return None;
    };
    let status = r.status().as_u16();
    sent.answered.push((status, t0.elapsed()));
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status == 200 {
        sent.id = v["id"].as_str().map(str::to_owned);
        sent.acked_at = Some(started.elapsed());
    }
    Some(status)
}

/// Peak RSS of `pid` (`VmHWM`) and current RSS, MiB.
fn rss_mib(pid: u32) -> (Option<f64>, Option<f64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `--parallel` multipart submissions of a large PNG at once.
async fn image_uploads(
    env: &Env,
    args: &ReliabilityArgs,
    server_pid: Option<u32>,
    report: &mut Report,
) -> anyhow::Result<Vec<Sent>> {
    let pid = server_pid.context("server pid")?;
    let png = {
        let side = args.image_side;
        let img = image::RgbImage::from_pixel(side, side, image::Rgb([40, 90, 160]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)?;
        out.into_inner()
    };
    eprintln!(
        "[reliability] {} parallel uploads of a {side}x{side} PNG ({} KiB)",
        args.parallel,
        png.len() >> 10,
        side = args.image_side
    );
    report.rss_before_mib = rss_mib(pid).1;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.parallel {
        let (http, base, png) = (env.http.clone(), env.base.clone(), png.clone());
        tasks.spawn(async move {
            let boundary = "reliability-boundary-7f3a";
            let prompt = format!("reliability upload {n}");
            let mut body = Vec::new();
            for (name, value) in [("prompt", prompt.as_str()), ("seconds", "4"), ("size", "720x1280")] {
                body.extend_from_slice(
                    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"r.png\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&png);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let mut sent = Sent::default();
            let req = http
                .post(format!("{base}/v1/videos"))
                .bearer_auth(ADMIN_KEY)
                .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
                .body(body);
            try_once(req, started, &mut sent).await;
            sent
        });
    }
    let mut sent = Vec::new();
    while let Some(s) = tasks.join_next().await {
        sent.push(s?);
    }
    report.peak_rss_mib = rss_mib(pid).0;
    Ok(sent)
}

/// Counts the answers, waits for the acknowledged jobs to end, and audits them.
async fn summarise(env: &Env, args: &ReliabilityArgs, sent: &[Sent], report: &mut Report) -> anyhow::Result<()> {
    report.sent = sent.len();
    let mut latencies = Vec::new();
    for s in sent {
        if s.id.is_some() {
            report.acknowledged += 1;
        }
        if s.answered.len() + s.unanswered > 1 {
            report.retried += 1;
        }
        for (status, l) in &s.answered {
            if *status != 200 {
                *report.refused.entry(*status).or_default() += 1;
            }
            latencies.push(*l);
        }
        report.unanswered += s.unanswered;
    }
    report.answered_over_2s = latencies.iter().filter(|l| **l > ANSWER_BOUND).count();
    report.answered_latency = Percentiles::of(&mut latencies);

    let acked: Vec<&Sent> = sent.iter().filter(|s| s.id.is_some()).collect();
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let mut states: HashMap<String, Value> = HashMap::new();
    loop {
        states.clear();
        for s in &acked {
            let id = s.id.as_deref().unwrap_or_default();
            let r = env
                .http
                .get(format!("{}/v1/videos/{id}", env.base))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
            if let Ok(r) = r
                && r.status().is_success()
            {
                states.insert(id.to_owned(), r.json().await.unwrap_or(Value::Null));
            }
        }
        let pending = states
            .values()
            .filter(|v| v["status"] == "queued" || v["status"] == "in_progress")
            .count();
        if pending == 0 || Instant::now() > deadline {
            if pending > 0 {
                eprintln!(
                    "[reliability] {pending} jobs still unfinished after {} s",
                    args.settle_secs
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.present_after = states.len();
    report.lost = acked.len() - states.len();
    for v in states.values() {
        if let Some(at) = v["completed_at"].as_f64() {
            report.last_completed_unix = Some(report.last_completed_unix.map_or(at, |l: f64| l.max(at)));
        }
        match v["status"].as_str() {
            Some("completed") => report.completed += 1,
            Some("failed") => {
                let code = v["error"]["code"].as_str().unwrap_or("?").to_owned();
                *report.failed.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }
    // Duplicates: every prompt is one submission; two jobs with it is a duplicate.
    let mut by_prompt: HashMap<String, usize> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/videos?limit=100&order=asc", env.base);
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = env.http.get(url).bearer_auth(ADMIN_KEY).send().await?.json().await?;
        for v in page["data"].as_array().into_iter().flatten() {
            if let Some(p) = v["prompt"].as_str() {
                *by_prompt.entry(p.to_owned()).or_default() += 1;
            }
        }
        ensure!(page["data"].is_array(), "listing failed: {page}");
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    report.duplicated = by_prompt.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    Ok(())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn checks(r: &Report, scenario: Scenario) -> Vec<String> {
    let mut failed = Vec::new();
    if r.lost > 0 {
        failed.push(format!("{} acknowledged jobs lost", r.lost));
    }
    if r.duplicated > 0 {
        failed.push(format!("{} duplicated", r.duplicated));
    }
    if let Some(n) = r.failed.get(videogen_core::job::MAX_ATTEMPTS_EXCEEDED) {
        failed.push(format!("{n} dead-lettered"));
    }
    if scenario != Scenario::ImageUploads && r.completed != r.acknowledged {
        failed.push(format!("{} of {} acknowledged completed", r.completed, r.acknowledged));
    }
    failed
}

fn print_report(r: &Report) {
    if let Some(m) = &r.machine {
        m.print();
    }
    let fault = match r.scenario {
        Some(Scenario::ServerKill) => format!("server killed at {} s", r.fault_at_secs),
        Some(Scenario::DatabaseStop) => format!("database stopped at {} s for {} s", r.fault_at_secs, r.fault_secs),
        Some(Scenario::BlobFull) => format!("blob store full at {} s for {} s", r.fault_at_secs, r.fault_secs),
        Some(Scenario::ImageUploads) | None => "all at once, no fault".to_owned(),
    };
    match r.scenario {
        Some(Scenario::ImageUploads) => println!("reliability image-uploads: {} submissions, {fault}", r.sent),
        _ => println!(
            "reliability {:?}: {} submissions at {}/s over {} s, {fault}",
            r.scenario.unwrap_or(Scenario::ServerKill),
            r.sent,
            r.rate,
            r.load_secs
        ),
    }
    println!(
        "  answers: {} acknowledged ({} after retries); tries refused {:?}, {} unanswered; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} over 2 s",
        r.acknowledged,
        r.retried,
        r.refused,
        r.unanswered,
        r.answered_latency.p50_ms,
        r.answered_latency.p99_ms,
        r.answered_latency.max_ms,
        r.answered_over_2s
    );
    println!(
        "  acknowledged jobs: {} present after, {} completed, failed {:?}, {} lost, {} duplicated",
        r.present_after, r.completed, r.failed, r.lost, r.duplicated
    );
    println!(
        "  /readyz during the fault: {} ready, {} not ready, {} unanswered (within 2 s)",
        r.readyz_during_fault[0], r.readyz_during_fault[1], r.readyz_during_fault[2]
    );
    if let Some(ms) = r.back_after_ms {
        println!("  first acknowledgement after the fault ended: {ms:.0} ms later");
    }
    if let Some(s) = r.drained_after_s {
        println!("  last acknowledged job completed {s:.0} s after the fault ended");
    }
    if let (Some(before), Some(peak)) = (r.rss_before_mib, r.peak_rss_mib) {
        println!("  server RSS: {before:.0} MiB before, {peak:.0} MiB peak");
    }
}
