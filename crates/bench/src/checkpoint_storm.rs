//! `videogen bench checkpoint-storm`: many workers writing checkpoints at
//! once to S3-compatible storage.
//!
//! The bench starts `s3s-fs` (the S3 server the blob tests use, installed by
//! `scripts/s3-server.sh`) on a free loopback port over a temporary directory
//! and opens it as the `s3://` blob store `videogen serve --blob-url` would.
//! `--workers` tasks each play one job's attempt: write a checkpoint of
//! `--checkpoint-mib` under `keys::checkpoint(job, attempt, step)`, then
//! delete the one before the previous, so that only the two checkpoints a job
//! record points at (latest and previous) stay, and start the next one at
//! once. (The control plane itself leaves older checkpoint blobs in place
//! until the job ends; see docs/PERFORMANCE.md §6.) Each
//! worker has one upload in flight, as a runner does, and nothing waits
//! between checkpoints: this is the storm, not a realistic interval.
//!
//! Reported per store: MB/s written, checkpoints/s, and per-checkpoint
//! seconds (the put; the delete of the older one separately). The same runs
//! against a `file://` store in the same process as the comparison.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use rand::RngCore;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use videogen_blob::{BlobStore, BlobUrl, S3BlobStore, S3Credentials};
use videogen_core::VideoId;
use videogen_core::blob::keys;

use crate::procs;
use crate::{CpuSnapshot, Machine, Percentiles, print_json};

const INSTALL_HINT: &str = "install it with scripts/s3-server.sh (or point VIDEOGEN_S3_SERVER at the binary)";
const BUCKET: &str = "videogen-bench";
/// Used when `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` are not both set.
const BENCH_ACCESS_KEY: &str = "videogen-bench-access";
const BENCH_SECRET_KEY: &str = "videogen-bench-secret-0123456789abcdef";
const MIB: f64 = 1024.0 * 1024.0;
/// Every checkpoint belongs to this attempt of its job.
const ATTEMPT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    /// `s3s-fs` on loopback, through the S3 blob store.
    S3,
    /// A local directory, through the `file://` blob store.
    File,
}

#[derive(Args, Debug)]
pub struct CheckpointStormArgs {
    /// Concurrent writers, one job (and one upload in flight) each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Size of each checkpoint in MiB. The default, 11, is the latent state
    /// of a 4 s 1280x720 clip for a production-style video model: 16 latent
    /// channels x 25 latent frames (8x spatial, 4x temporal compression) x
    /// 90 x 160 at 2 bytes (f16) = 10.99 MiB. The reference model's own
    /// checkpoint for that clip (4 channels x 24 frames, f32) is 5.27 MiB.
    #[arg(long, default_value_t = 11.0)]
    checkpoint_mib: f64,
    /// Measured duration per store, seconds.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Unmeasured warm-up per store at the same load, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Stores to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "s3,file")]
    stores: Vec<StoreKind>,
    /// Parent directory of the stores' temporary directories (default: system temp dir).
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
    workers: u32,
    checkpoint_bytes: usize,
    secs: f64,
    warmup_secs: f64,
    runs: Vec<StoreRun>,
    loadavg_1m_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StoreRun {
    store: StoreKind,
    /// What served it.
    server: String,
    /// Checkpoints written in the measured part (started in it, finished).
    checkpoints: usize,
    errors: usize,
    error_kinds: BTreeMap<String, usize>,
    bytes: u64,
    /// From the start of the measured part to the last measured checkpoint's end.
    wall_s: f64,
    /// Decimal megabytes (10^6 bytes) per second.
    mb_per_s: f64,
    checkpoints_per_s: f64,
    /// Checkpoints per worker (an uneven split means an unfair server).
    per_worker: Vec<usize>,
    /// One checkpoint's upload, ms.
    put: Percentiles,
    /// Deleting the checkpoint before the previous one, ms.
    delete: Percentiles,
    /// Objects under the jobs' checkpoint prefixes at the end (expected: 2 per worker).
    objects_left: usize,
    /// Every worker's latest checkpoint read back byte-identical.
    latest_read_back: bool,
    /// CPUs' worth of busy time, machine-wide, during the measured part.
    busy_cpus: Option<f64>,
    /// CPU seconds of this process (client side) during the measured part.
    client_cpu_s: Option<f64>,
    /// CPU seconds of the S3 server during the measured part.
    server_cpu_s: Option<f64>,
    /// Busy CPU time on the machine not spent by this process or the S3
    /// server: other people's work (and the kernel's). Much more than a
    /// second or two means a disturbed run.
    other_cpu_s: Option<f64>,
}

pub async fn run(args: CheckpointStormArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.checkpoint_mib > 0.0 && args.checkpoint_mib <= 1024.0,
        "--checkpoint-mib must be in (0, 1024]"
    );
    anyhow::ensure!(args.secs > 0.0 && args.secs.is_finite(), "--secs must be positive");
    anyhow::ensure!(
        args.warmup_secs >= 0.0 && args.warmup_secs.is_finite(),
        "--warmup-secs must be >= 0"
    );
    anyhow::ensure!(!args.stores.is_empty(), "--stores names no store");
    let machine = Machine::detect();
    let size = (args.checkpoint_mib * MIB).round() as usize;
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;

    let mut runs = Vec::new();
    for &kind in &args.stores {
        let dir = tempfile::Builder::new()
            .prefix("videogen-bench-ckpt-")
            .tempdir_in(&parent)?;
        let run = match kind {
            StoreKind::S3 => {
                let creds = S3Credentials::from_env()
                    .unwrap_or_else(|_| S3Credentials::new(BENCH_ACCESS_KEY, BENCH_SECRET_KEY));
                let mut server = S3Server::start(dir.path(), &creds).await?;
                let url = format!(
                    "s3://{BUCKET}?endpoint=http://127.0.0.1:{}&region=us-east-1",
                    server.port
                );
                let store = open_s3(&url, &creds)?;
                let label = format!(
                    "{} on 127.0.0.1:{} over {}",
                    server.version,
                    server.port,
                    dir.path().display()
                );
                let run = storm(&args, kind, label, store, size, &server.root, server.child.id()).await;
                server.stop().await;
                run?
            }
            StoreKind::File => {
                let root = dir.path().join("blobs");
                std::fs::create_dir_all(&root)?;
                let url = format!("file://{}", root.display());
                let store = videogen_blob::open_url(&url).context("opening the file:// store")?;
                storm(&args, kind, url, store, size, &root, None).await?
            }
        };
        runs.push(run);
    }
    let report = Report {
        bench: "checkpoint-storm",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        workers: args.workers,
        checkpoint_bytes: size,
        secs: args.secs,
        warmup_secs: args.warmup_secs,
        runs,
        loadavg_1m_after: crate::loadavg_1m(),
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

/// The store `videogen serve --blob-url URL` opens ([`videogen_blob::open_url`]'s
/// `s3://` arm), with `creds` given directly: `open_url` reads them from the
/// environment, which this process cannot set for itself safely.
fn open_s3(url: &str, creds: &S3Credentials) -> anyhow::Result<Arc<dyn BlobStore>> {
    match BlobUrl::parse(url)? {
        BlobUrl::S3(location) => Ok(Arc::new(S3BlobStore::new(&location, creds)?)),
        BlobUrl::Local(_) => bail!("{url} is not an s3:// URL"),
    }
}

/// What one writer did in the measured part.
#[derive(Default)]
struct WriterOut {
    puts: Vec<Duration>,
    deletes: Vec<Duration>,
    errors: Vec<String>,
    bytes: u64,
    /// End of its last measured checkpoint.
    last_end: Option<Instant>,
    /// Its newest checkpoint, for reading back.
    latest: Option<String>,
}

async fn storm(
    args: &CheckpointStormArgs,
    kind: StoreKind,
    server: String,
    store: Arc<dyn BlobStore>,
    size: usize,
    root: &Path,
    server_pid: Option<u32>,
) -> anyhow::Result<StoreRun> {
    let jobs: Vec<VideoId> = (0..args.workers).map(|_| VideoId::generate()).collect();
    // Incompressible bytes, different per worker (the server must not be able to dedupe them).
    let payloads: Vec<Bytes> = jobs
        .iter()
        .map(|_| {
            let mut buf = vec![0u8; size];
            rand::rng().fill_bytes(&mut buf);
            Bytes::from(buf)
        })
        .collect();
    // A first write proves the store answers before the clock starts.
    let probe = keys::checkpoint(&jobs[0], ATTEMPT, 0);
    store
        .put(&probe, Bytes::from_static(b"probe"))
        .await
        .with_context(|| format!("first write to the {kind:?} store ({server})"))?;
    store.delete(&probe).await?;

    eprintln!(
        "[bench checkpoint-storm] {kind:?}: {} workers x {:.2} MiB checkpoints, {}s warm-up + {}s measured",
        args.workers,
        size as f64 / MIB,
        args.warmup_secs,
        args.secs
    );
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_secs);
    let stop_at = measure_from + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, payload)) in jobs.iter().zip(&payloads).enumerate() {
        let w = writer(store.clone(), id.clone(), payload.clone(), measure_from, stop_at);
        tasks.spawn(async move { (i, w.await) });
    }
    tokio::time::sleep_until(measure_from).await;
    let cpu_before = CpuSnapshot::now();
    let client_before = procs::cpu_seconds(std::process::id());
    let server_before = server_pid.and_then(procs::cpu_seconds);
    let mut outs: Vec<WriterOut> = jobs.iter().map(|_| WriterOut::default()).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, out) = r.context("checkpoint writer panicked")?;
        outs[i] = out;
    }
    let busy_cpus = CpuSnapshot::now()
        .zip(cpu_before)
        .and_then(|(after, before)| after.busy_cpus_since(&before));
    let delta = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    let client_cpu_s = delta(client_before, procs::cpu_seconds(std::process::id()));
    let server_cpu_s = delta(server_before, server_pid.and_then(procs::cpu_seconds));
    let busy_s = busy_cpus.map(|b| b * measure_from.elapsed().as_secs_f64());

    // Afterwards: what is left, and is the latest checkpoint intact?
    let objects_left = count_checkpoint_files(root);
    let mut latest_read_back = true;
    for (out, payload) in outs.iter().zip(&payloads) {
        let ok = match &out.latest {
            Some(key) => store.get(key).await.is_ok_and(|b| b == *payload),
            None => false,
        };
        latest_read_back &= ok;
    }
    for id in &jobs {
        let [_, checkpoints, _] = keys::job_prefixes(id);
        store.delete_prefix(&checkpoints).await?;
    }

    let last_end = outs.iter().filter_map(|o| o.last_end).max().unwrap_or(stop_at);
    let wall_s = last_end.saturating_duration_since(measure_from).as_secs_f64();

    let bytes: u64 = outs.iter().map(|o| o.bytes).sum();
    let per_worker: Vec<usize> = outs.iter().map(|o| o.puts.len()).collect();
    let checkpoints: usize = per_worker.iter().sum();
    let mut error_kinds = BTreeMap::new();
    for e in outs.iter().flat_map(|o| &o.errors) {
        *error_kinds.entry(e.clone()).or_insert(0) += 1;
    }
    let mut puts: Vec<Duration> = outs.iter().flat_map(|o| o.puts.iter().copied()).collect();
    let mut deletes: Vec<Duration> = outs.iter().flat_map(|o| o.deletes.iter().copied()).collect();
    Ok(StoreRun {
        store: kind,
        server,
        checkpoints,
        errors: error_kinds.values().sum(),
        error_kinds,
        bytes,
        wall_s,
        mb_per_s: bytes as f64 / 1e6 / wall_s,
        checkpoints_per_s: checkpoints as f64 / wall_s,
        per_worker,
        put: Percentiles::of(&mut puts),
        delete: Percentiles::of(&mut deletes),
        objects_left,
        latest_read_back,
        busy_cpus,
        client_cpu_s,
        server_cpu_s,
        other_cpu_s: busy_s.map(|b| b - client_cpu_s.unwrap_or(0.0) - server_cpu_s.unwrap_or(0.0)),
    })
}

/// One job's checkpoints back to back until `stop_at`, keeping the latest
/// and the previous one. Counts checkpoints started from `measure_from` on.
async fn writer(
    store: Arc<dyn BlobStore>,
    id: VideoId,
    payload: Bytes,
    measure_from: Instant,
    stop_at: Instant,
) -> WriterOut {
    let mut out = WriterOut::default();
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut step = 0;
    while Instant::now() < stop_at {
        step += 1;
        let key = keys::checkpoint(&id, ATTEMPT, step);
        let started = Instant::now();
        let measured = started >= measure_from;
        if let Err(e) = store.put(&key, payload.clone()).await {
            if measured {
                out.errors.push(format!("put: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let put = started.elapsed();
        kept.push_back(key.clone());
        let mut delete = None;
        while kept.len() > 2 {
            let Some(old) = kept.pop_front() else { break };
            let t = Instant::now();
            match store.delete(&old).await {
                Ok(()) => delete = Some(t.elapsed()),
                Err(e) if measured => out.errors.push(format!("delete: {e}")),
                Err(_) => {}
            }
        }
        if measured {
            out.puts.push(put);
            out.deletes.extend(delete);
            out.bytes += payload.len() as u64;
            out.last_end = Some(Instant::now());
        }
        out.latest = Some(key);
    }
    out
}

/// Files named `*.ckpt` under `root` (the stores keep one file per object
/// under its key; staging and metadata files have other names).
fn count_checkpoint_files(root: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|x| x == "ckpt") => n += 1,
                _ => {}
            }
        }
    }
    n
}

fn s3_server_binary() -> anyhow::Result<PathBuf> {
    videogen_blob::s3s_fs_binary()
        .with_context(|| format!("s3s-fs, the S3-compatible server this bench runs, is not installed: {INSTALL_HINT}"))
}

/// `s3s-fs` on a free loopback port; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
    /// Its data directory (buckets are subdirectories).
    root: PathBuf,
    version: String,
}

impl S3Server {
    async fn start(dir: &Path, creds: &S3Credentials) -> anyhow::Result<Self> {
        let bin = s3_server_binary()?;
        let version = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} ({INSTALL_HINT})", bin.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let root = dir.join("data");
        std::fs::create_dir_all(root.join(BUCKET))?;
        // Another process may take the free port before the server binds it.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = std::fs::File::create(dir.join("s3s-fs.log"))?;
            let child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &creds.access_key_id])
                .args(["--secret-key", creds.secret_access_key()])
                .arg(&root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {} ({INSTALL_HINT})", bin.display()))?;
            let mut server = Self {
                child,
                port,
                root: root.clone(),
                version: version.clone(),
            };
            if server.ready().await {
                return Ok(server);
            }
            server.stop().await;
        }
        bail!(
            "s3s-fs did not start on loopback (log: {}); is it the version scripts/s3-server.sh installs?",
            dir.join("s3s-fs.log").display()
        )
    }

    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn print_report(r: &Report) {
    println!(
        "videogen bench checkpoint-storm: {} workers, each writing {:.2} MiB checkpoints back to back \
         (keeping latest + previous)",
        r.workers,
        r.checkpoint_bytes as f64 / MIB
    );
    r.machine.print();
    println!("{}s measured per store after {}s warm-up", r.secs, r.warmup_secs);
    let s = |ms: f64| ms / 1e3;
    for run in &r.runs {
        println!("\n{:?}: {}", run.store, run.server);
        println!(
            "  {} checkpoints, {:.1} MB in {:.2}s: {:.1} MB/s, {:.2} checkpoints/s; errors {}; per worker {:?}",
            run.checkpoints,
            run.bytes as f64 / 1e6,
            run.wall_s,
            run.mb_per_s,
            run.checkpoints_per_s,
            run.errors,
            run.per_worker
        );
        for (kind, n) in &run.error_kinds {
            println!("  error {kind}: {n}");
        }
        let p = &run.put;
        println!(
            "  seconds per checkpoint (put): mean {:.3}  p50 {:.3}  p99 {:.3}  max {:.3}",
            s(p.mean_ms),
            s(p.p50_ms),
            s(p.p99_ms),
            s(p.max_ms)
        );
        let d = &run.delete;
        println!(
            "  delete of the older one, ms: p50 {:.2}  p99 {:.2}  max {:.2}",
            d.p50_ms, d.p99_ms, d.max_ms
        );
        let cpu = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        println!(
            "  CPU during the measured part: machine {} of {} CPUs busy; client {} s, server {} s, anything else {} s",
            run.busy_cpus.map_or_else(|| "?".to_owned(), |b| format!("{b:.2}")),
            r.machine.nproc,
            cpu(run.client_cpu_s),
            cpu(run.server_cpu_s),
            cpu(run.other_cpu_s)
        );
        println!(
            "  afterwards: {} checkpoint objects left (expected {}), latest read back intact: {}",
            run.objects_left,
            2 * r.workers,
            if run.latest_read_back { "yes" } else { "NO" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_keeps_only_the_latest_and_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(videogen_blob::LocalBlobStore::new(dir.path()).unwrap());
        let id = VideoId::generate();
        let now = Instant::now();
        let stop = now + Duration::from_millis(300);
        let out = writer(store.clone(), id.clone(), Bytes::from_static(&[7; 1024]), now, stop).await;
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let n = out.puts.len();
        assert!(n >= 3, "only {n} checkpoints in 300 ms");
        assert_eq!(out.deletes.len(), n - 2);
        assert_eq!(out.bytes, 1024 * n as u64);
        assert_eq!(count_checkpoint_files(dir.path()), 2);
        let latest = out.latest.unwrap();
        assert_eq!(latest, keys::checkpoint(&id, ATTEMPT, n as u32));
        assert_eq!(store.get(&latest).await.unwrap().len(), 1024);
        let previous = keys::checkpoint(&id, ATTEMPT, n as u32 - 1);
        assert_eq!(store.size(&previous).await.unwrap(), 1024);
    }
}
