//! `videogen bench latent-checkpoint`: writing and restoring the checkpoint
//! of a Wan2.1-14B-sized generation, 1280x720, 81 frames: latents of
//! 16 x 21 x 90 x 160 f32 (18.46 MiB).
//!
//! The checkpoint is a real one: the tiny random Wan pipeline
//! (`make-tiny --adapter wan`) has Wan's VAE geometry (16 latent channels,
//! 8x spatial and 4x temporal compression), so a generation of it started
//! at 1280x720x81 holds exactly those latents, and the host's `checkpoint`
//! op writes them with everything else the format holds (the generator and
//! global RNG states, the prompt embeddings, the scheduler's tensors). It
//! is taken at step 0: the tiny transformer's rotary table is too short to
//! step at 720p, and the default (FlowMatch Euler) scheduler holds no
//! history, so a later step's checkpoint is the same size. The text
//! embeddings are the tiny encoder's (2 x 512 x 32 f32, 128 KiB); see
//! docs/PERFORMANCE.md for what the real model adds.
//!
//! Per run, on one job leased through the store:
//! - **serialise**: `Generation::checkpoint` through [`HostedModel`]: the
//!   host encodes (safetensors + CRC) and sends the bytes over the socket;
//! - **upload**: the runner's CRC-32, then `LocalControl::write_checkpoint`
//!   (size and CRC check, the blob store's `put` under the attempt's key,
//!   the fenced commit of the pointer in SQLite);
//! - **download**: `LocalControl::read_blob` and the runner's size and CRC
//!   check;
//! - **restore**: `Model::resume` of those bytes through [`HostedModel`]
//!   (sent to the host, verified, decoded; the generation continues from it).
//!
//! Stores: a `file://` directory, and `s3s-fs` on loopback (the S3 server of
//! `scripts/s3-server.sh`, started by `videogen_testkit::s3`) through the
//! S3 blob store (multipart above 8 MiB).

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use videogen_blob::{BlobStore, BlobUrl, S3BlobStore, S3Credentials};
use videogen_control::{Dispatcher, JobBus, LocalControl, Runtime, RuntimeConfig};
use videogen_core::blob::keys;
use videogen_core::spec::GenerationParams;
use videogen_core::store::{NewJob, Submitted};
use videogen_core::{Clock, Lease, Seconds, SystemClock, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId};
use videogen_model::{Generation, GenerationRequest, Model};
use videogen_protocol::{ControlPlane, Upload};
use videogen_sched::SchedulerConfig;

use crate::model_host;
use crate::{Machine, Percentiles, print_json};

const MIB: f64 = 1024.0 * 1024.0;
const PROMPT: &str = "a red fox runs in the snow";
const LEASE_TTL_MS: i64 = 600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreChoice {
    File,
    S3,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    File,
    S3,
}

#[derive(Args, Debug)]
pub struct LatentCheckpointArgs {
    /// The host interpreter (default: `VIDEOGEN_HOST_PYTHON`, else target/host-venv/bin/python).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Blob stores to measure.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// Measured write + restore round trips per store.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    runs: u32,
    /// Unmeasured round trips per store first.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Output width (Wan: a multiple of 16).
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Output height (Wan: a multiple of 16).
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Output frames (Wan: 4k+1).
    #[arg(long, default_value_t = 81)]
    frames: u32,
    /// Denoising steps of the request (the scheduler's tables grow with it).
    #[arg(long, default_value_t = 50)]
    steps: u32,
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
    host: String,
    request: String,
    checkpoint_bytes: usize,
    /// The checkpoint's tensors, as its safetensors header lists them.
    tensors: Vec<Tensor>,
    runs: u32,
    warmup: u32,
    stores: Vec<StoreRun>,
    loadavg_1m_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct StoreRun {
    store: StoreKind,
    server: String,
    serialise: Percentiles,
    upload: Percentiles,
    download: Percentiles,
    restore: Percentiles,
    /// serialise + upload + download + restore, per run.
    end_to_end: Percentiles,
    /// Upload and download at their medians, decimal MB/s.
    upload_mb_per_s_p50: f64,
    download_mb_per_s_p50: f64,
}

pub async fn run(args: LatentCheckpointArgs) -> anyhow::Result<()> {
    ensure!(
        args.width.is_multiple_of(16) && args.height.is_multiple_of(16) && args.frames % 4 == 1,
        "Wan needs width and height multiples of 16 and frames = 4k+1"
    );
    let machine = Machine::detect();
    let python = model_host::python(args.python.as_deref())?;
    let host_version = model_host::versions(&python);
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("videogen-bench-latent-")
        .tempdir_in(&parent)?;
    let wan_dir = dir.path().join("wan");
    eprintln!("[bench latent-checkpoint] writing the tiny Wan pipeline (make-tiny --adapter wan)");
    model_host::make_tiny(&python, "wan", &wan_dir)?;
    let host = model_host::host("bench-latent", &python);
    let model = Arc::new(model_host::hosted(host.clone(), "wan-tiny", "wan", &wan_dir));
    let mut req = GenerationRequest::new(PROMPT, 42, args.width, args.height, args.frames);
    req.steps = args.steps;
    req.fps = 16;
    req.guidance_scale = Some(5.0);
    eprintln!(
        "[bench latent-checkpoint] starting a {}x{}x{} generation in the host",
        args.width, args.height, args.frames
    );
    let generation = {
        let (model, req) = (model.clone(), req.clone());
        tokio::task::spawn_blocking(move || {
            model.load()?;
            let g = model.start(&req)?;
            let ck = g.checkpoint()?;
            Ok::<_, videogen_model::ModelError>((g, ck))
        })
        .await?
        .map_err(|e| anyhow::anyhow!("model host: {e}"))?
    };
    let (mut generation, first) = generation;
    let tensors = tensors_of(&first).context("reading the checkpoint's safetensors header")?;
    let checkpoint_bytes = first.len();
    drop(first);

    let kinds = match args.store {
        StoreChoice::File => vec![StoreKind::File],
        StoreChoice::S3 => vec![StoreKind::S3],
        StoreChoice::Both => vec![StoreKind::File, StoreKind::S3],
    };
    let mut stores = Vec::new();
    for kind in kinds {
        let store_dir = tempfile::Builder::new()
            .prefix("videogen-bench-latent-store-")
            .tempdir_in(&parent)?;
        let (blob, server, s3): (Arc<dyn BlobStore>, String, Option<videogen_testkit::s3::S3Server>) = match kind {
            StoreKind::File => {
                let root = store_dir.path().join("blobs");
                std::fs::create_dir_all(&root)?;
                let url = format!("file://{}", root.display());
                (
                    videogen_blob::open_url(&url).context("opening the file:// store")?,
                    url,
                    None,
                )
            }
            StoreKind::S3 => {
                if videogen_blob::s3s_fs_binary().is_none() {
                    bail!(
                        "s3s-fs, the S3-compatible server this bench runs, is not installed: {}",
                        videogen_testkit::s3::INSTALL_HINT
                    );
                }
                let server = tokio::task::spawn_blocking(videogen_testkit::s3::S3Server::start).await?;
                let url = format!(
                    "s3://{}?endpoint={}&region=us-east-1",
                    videogen_testkit::s3::BUCKET,
                    server.endpoint()
                );
                let creds = S3Credentials::new(videogen_testkit::s3::ACCESS_KEY, videogen_testkit::s3::SECRET_KEY);
                let blob: Arc<dyn BlobStore> = match BlobUrl::parse(&url)? {
                    BlobUrl::S3(location) => Arc::new(S3BlobStore::new(&location, &creds)?),
                    BlobUrl::Local(_) => bail!("{url} is not an s3:// URL"),
                };
                let label = format!("s3s-fs on {} over {}", server.endpoint(), server.data_dir().display());
                (blob, label, Some(server))
            }
        };
        let rt = runtime(&store_dir.path().join("videogen.db"), blob).await?;
        let control = LocalControl::new(rt.clone());
        eprintln!(
            "[bench latent-checkpoint] {kind:?}: {} + {} runs of {:.2} MiB",
            args.warmup,
            args.runs,
            checkpoint_bytes as f64 / MIB
        );
        let mut stages: [Vec<Duration>; 5] = Default::default();
        for i in 0..args.warmup + args.runs {
            let (t, g) = round_trip(&rt, &control, &model, &req, generation, i).await?;
            generation = g;
            if i >= args.warmup {
                for (s, d) in stages.iter_mut().zip(t) {
                    s.push(d);
                }
            }
        }
        drop(s3);
        let [ser, up, down, restore, e2e] = &mut stages;
        let mb_s = |p: &Percentiles| {
            if p.p50_ms > 0.0 {
                checkpoint_bytes as f64 / 1e6 / (p.p50_ms / 1e3)
            } else {
                0.0
            }
        };
        let upload = Percentiles::of(up);
        let download = Percentiles::of(down);
        stores.push(StoreRun {
            store: kind,
            server,
            serialise: Percentiles::of(ser),
            upload_mb_per_s_p50: mb_s(&upload),
            download_mb_per_s_p50: mb_s(&download),
            upload,
            download,
            restore: Percentiles::of(restore),
            end_to_end: Percentiles::of(e2e),
        });
    }
    drop(generation);
    host.shutdown();
    let report = Report {
        bench: "latent-checkpoint",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        host: host_version,
        request: format!(
            "wan (tiny, make-tiny) {}x{}, {} frames, {} steps, checkpoint at step 0",
            args.width, args.height, args.frames, args.steps
        ),
        checkpoint_bytes,
        tensors,
        runs: args.runs,
        warmup: args.warmup,
        stores,
        loadavg_1m_after: crate::loadavg_1m(),
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

/// The control plane `serve` runs, over SQLite at `db` and `blob`.
async fn runtime(db: &std::path::Path, blob: Arc<dyn BlobStore>) -> anyhow::Result<Arc<Runtime>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Arc::new(Runtime {
        store: Arc::new(videogen_store::SqliteStore::open(db).await?),
        blob,
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock,
        config: RuntimeConfig::default(),
        fleet: Arc::default(),
        storage: Default::default(),
    }))
}

/// A fresh job, leased by a bench worker (not timed).
async fn leased_job(rt: &Runtime, n: u32) -> anyhow::Result<Lease> {
    let new = NewJob {
        id: VideoId::generate(),
        tenant: TenantId::parse("bench").context("bench tenant")?,
        tier: Tier::Paid,
        spec: VideoSpec {
            model: "wan-tiny".into(),
            prompt: PROMPT.into(),
            seconds: Seconds::S4,
            size: VideoSize::LANDSCAPE_720,
            seed: u64::from(n),
            style: None,
            steps: 50,
            input_reference: None,
            params: GenerationParams::default(),
        },
        now_ms: rt.clock.now_ms(),
    };
    let Submitted::Created(job) = rt.store.submit(new, None).await? else {
        bail!("a submit without an idempotency key was replayed");
    };
    let worker = WorkerId::new("bench", "w0");
    rt.store
        .lease(&job.id, &worker, rt.clock.now_ms(), LEASE_TTL_MS)
        .await?
        .context("the fresh job could not be leased")
}

/// One checkpoint written and restored: the four stages and their sum,
/// and the restored generation (the host holds one generation at a time:
/// the resumed one replaces the old one).
async fn round_trip(
    rt: &Arc<Runtime>,
    control: &LocalControl,
    model: &Arc<videogen_host::HostedModel>,
    req: &GenerationRequest,
    generation: Box<dyn Generation>,
    n: u32,
) -> anyhow::Result<([Duration; 5], Box<dyn Generation>)> {
    let lease = leased_job(rt, n).await?;
    let host_err = |e: videogen_model::ModelError| anyhow::anyhow!("model host: {e}");

    let t = Instant::now();
    let (generation, bytes) = tokio::task::spawn_blocking(move || {
        let ck = generation.checkpoint();
        (generation, ck)
    })
    .await?;
    let bytes = Bytes::from(bytes.map_err(host_err)?);
    let serialise = t.elapsed();

    let t = Instant::now();
    let crc = crc32fast::hash(&bytes);
    let size = bytes.len() as u64;
    let ck = control
        .write_checkpoint(&lease, 1, crc, Upload::Bytes(bytes))
        .await
        .context("write_checkpoint")?;
    let upload = t.elapsed();

    let t = Instant::now();
    let got = control.read_blob(&lease, &ck.key).await.context("read_blob")?;
    ensure!(
        got.len() as u64 == size && crc32fast::hash(&got) == crc,
        "the checkpoint read back differs"
    );
    let download = t.elapsed();

    drop(generation);
    let t = Instant::now();
    let (m, r) = (model.clone(), req.clone());
    let resumed = tokio::task::spawn_blocking(move || m.resume(&r, &got))
        .await?
        .map_err(host_err)?;
    let restore = t.elapsed();
    ensure!(resumed.steps_done() == 0, "resumed at step {}", resumed.steps_done());

    let [_, checkpoints, _] = keys::job_prefixes(&lease.job_id);
    rt.blob.delete_prefix(&checkpoints).await?;
    let total = serialise + upload + download + restore;
    Ok(([serialise, upload, download, restore, total], resumed))
}

/// The tensors of a checkpoint (docs/MODEL_HOST.md: `VGHCKPT\0`, u16
/// version, u64 body length, a safetensors body, CRC-32).
fn tensors_of(ck: &[u8]) -> anyhow::Result<Vec<Tensor>> {
    const HEAD: usize = 8 + 2 + 8;
    ensure!(ck.len() > HEAD + 8 && ck.starts_with(b"VGHCKPT\0"), "not a checkpoint");
    let body = &ck[HEAD..];
    let mut n = [0u8; 8];
    n.copy_from_slice(&body[..8]);
    let n = usize::try_from(u64::from_le_bytes(n))?;
    ensure!(body.len() >= 8 + n, "safetensors header overruns the body");
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body[8..8 + n])?;
    let mut out = Vec::new();
    for (name, t) in header {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = t["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let bytes = match offsets[..] {
            [a, b] => b.saturating_sub(a),
            _ => 0,
        };
        out.push(Tensor {
            name,
            dtype: t["dtype"].as_str().unwrap_or("?").to_owned(),
            shape,
            bytes,
        });
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

fn print_report(r: &Report) {
    println!(
        "videogen bench latent-checkpoint: {}; {} bytes ({:.2} MiB)",
        r.request,
        r.checkpoint_bytes,
        r.checkpoint_bytes as f64 / MIB
    );
    r.machine.print();
    println!("host: {}", r.host);
    for t in &r.tensors {
        let shape = t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join("x");
        println!("  {:<28} {:<5} {:>18} {:>12} bytes", t.name, t.dtype, shape, t.bytes);
    }
    println!("{} measured runs per store after {} warm-up; ms:", r.runs, r.warmup);
    for s in &r.stores {
        println!("\n{:?}: {}", s.store, s.server);
        println!("  {:<12} {:>9} {:>9} {:>9} {:>9}", "stage", "p50", "p99", "mean", "max");
        for (name, p) in [
            ("serialise", &s.serialise),
            ("upload", &s.upload),
            ("download", &s.download),
            ("restore", &s.restore),
            ("end to end", &s.end_to_end),
        ] {
            println!(
                "  {name:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.p50_ms, p.p99_ms, p.mean_ms, p.max_ms
            );
        }
        println!(
            "  upload {:.0} MB/s, download {:.0} MB/s at the median",
            s.upload_mb_per_s_p50, s.download_mb_per_s_p50
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_read_from_the_safetensors_header() {
        let header = br#"{"__metadata__":{"videogen":"{}"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"U8","shape":[4],"data_offsets":[24,28]}}"#;
        let mut body = (header.len() as u64).to_le_bytes().to_vec();
        body.extend_from_slice(header);
        body.extend_from_slice(&[0; 28]);
        let mut ck = b"VGHCKPT\0".to_vec();
        ck.extend_from_slice(&1u16.to_le_bytes());
        ck.extend_from_slice(&(body.len() as u64).to_le_bytes());
        ck.extend_from_slice(&body);
        ck.extend_from_slice(&[0; 4]);
        let t = tensors_of(&ck).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].bytes, t[0].shape.clone()),
            ("a", 24, vec![2, 3])
        );
        assert_eq!((t[1].name.as_str(), t[1].dtype.as_str(), t[1].bytes), ("b", "U8", 4));
        assert!(tensors_of(b"not a checkpoint at all, nope").is_err());
    }
}
