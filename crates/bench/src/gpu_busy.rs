//! `videogen bench gpu-busy`: how much of the time one worker slot's device
//! spends stepping when jobs come back to back, with the slot finishing
//! each job (moderation, H.264 encoding, upload, commit) before taking the
//! next (`--finishing 0`, the old runner) and with finished jobs encoded in
//! the background while the device runs the next one (`--finishing 2`, the
//! default since issue 12).
//!
//! Everything runs in this process as `videogen serve --workers 1` wires
//! it: the SQLite store and a `file://` blob store in a temporary
//! directory, an active `Dispatcher`, `LocalControl`, and one
//! `videogen_worker::Worker` on the reference model at `--step-ms` per step
//! (standing in for a GPU: a step sleeps what its arithmetic leaves of the
//! step time). All `--jobs` are queued before the worker starts. The model
//! is wrapped to time every call the runner makes on it (start, step,
//! checkpoint, decode); **busy** is the sum of step times over the wall
//! time from the first job's `leased` event to the last one's `completed`
//! event. That wall time ends with the last job's encode and upload, which
//! no next job can overlap, so **busy'** also divides by the device window
//! alone: first `leased` to the end of the last job's decode. The runs use
//! the same settings one after the other, so compare them within one
//! invocation.

use anyhow::{Context, bail, ensure};
use clap::Args;
use serde::Serialize;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use videogen_control::{Dispatcher, JobBus, LocalControl, Runtime, RuntimeConfig};
use videogen_core::event::EventPayload;
use videogen_core::spec::GenerationParams;
use videogen_core::store::{NewJob, Submitted};
use videogen_core::{
    Clock, JobState, QueuedJob, Seconds, SystemClock, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId,
};
use videogen_model::{
    Availability, Frames, Generation, GenerationRequest, Model, ModelError, ReferenceConfig, ReferenceModel, RgbFrame,
};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::SchedulerConfig;
use videogen_worker::{Engine, Worker, WorkerConfig};

use crate::{CpuSnapshot, Machine, Percentiles, print_json};

/// The target for `--finishing 2`.
const TARGET_BUSY_PERCENT: f64 = 97.0;

#[derive(Args, Debug)]
pub struct GpuBusyArgs {
    /// Jobs per run, all queued before the worker starts.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    jobs: u32,
    /// The reference model's step time, ms (the GPU's step, simulated).
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
    /// Denoising steps per job.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    steps: u32,
    /// Output size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720")]
    size: String,
    /// Clip length in seconds (24 fps).
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    /// `WorkerConfig::finishing_max` of each run, in this order (0: encode
    /// and upload before the next job; N: up to N jobs finishing in the background).
    #[arg(long, value_delimiter = ',', default_value = "0,2")]
    finishing: Vec<usize>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    build: &'static str,
    jobs: u32,
    step_ms: u64,
    steps: u32,
    size: String,
    seconds: u32,
    frames: u32,
    runs: Vec<BusyRun>,
    target_busy_percent: f64,
    loadavg_1m_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct BusyRun {
    finishing: usize,
    completed: usize,
    failed: usize,
    /// First `leased` to last `completed` event, seconds.
    wall_s: f64,
    /// Sum of the model's step times, seconds.
    stepping_s: f64,
    /// `stepping_s / wall_s`.
    busy_percent: f64,
    /// First `leased` to the end of the last job's decode (the device's
    /// last work; the last job's encode and upload, which no next job can
    /// overlap, left out), seconds.
    device_window_s: f64,
    /// `stepping_s / device_window_s`.
    busy_device_window_percent: f64,
    /// Steps + start + checkpoint serialisation + decode, over the wall time.
    device_held_percent: f64,
    steps: u64,
    step_ms_mean: f64,
    step_ms_max: f64,
    starts: u64,
    start_ms_mean: f64,
    checkpoints: u64,
    checkpoint_ms_mean: f64,
    decodes: u64,
    decode_ms_mean: f64,
    /// Jobs per minute over the wall time.
    jobs_per_min: f64,
    /// Each job's `leased` to `completed`, seconds (as ms fields).
    job_lease_to_complete: Percentiles,
    /// CPUs' worth of busy time, machine-wide, during the run.
    busy_cpus: Option<f64>,
}

pub async fn run(args: GpuBusyArgs) -> anyhow::Result<()> {
    let size = VideoSize::from_str(&args.size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    let seconds = Seconds::new(args.seconds).map_err(|e| anyhow::anyhow!("--seconds: {e}"))?;
    ensure!(!args.finishing.is_empty(), "--finishing names no run");
    ensure!(
        args.finishing.iter().all(|f| *f <= 64),
        "--finishing values must be in 0..=64"
    );
    let machine = Machine::detect();
    let frames = seconds.get() * videogen_core::spec::FPS;
    let mut runs = Vec::new();
    for &finishing in &args.finishing {
        eprintln!(
            "[bench gpu-busy] --finishing {finishing}: {} jobs of {} steps x {} ms, {size}, {} frames",
            args.jobs, args.steps, args.step_ms, frames
        );
        runs.push(busy_run(&args, size, seconds, finishing).await?);
    }
    let report = Report {
        bench: "gpu-busy",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        jobs: args.jobs,
        step_ms: args.step_ms,
        steps: args.steps,
        size: size.to_string(),
        seconds: args.seconds,
        frames,
        runs,
        target_busy_percent: TARGET_BUSY_PERCENT,
        loadavg_1m_after: crate::loadavg_1m(),
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

/// Time spent in each call the runner makes on the model.
#[derive(Debug, Default)]
struct DeviceTime {
    steps: u64,
    step: Duration,
    step_max: Duration,
    starts: u64,
    start: Duration,
    checkpoints: u64,
    checkpoint: Duration,
    decodes: u64,
    decode: Duration,
    /// Wall clock (ms since the epoch, as the store's events) when the last decode ended: the device's last work.
    last_decode_end_ms: Option<f64>,
}

/// Now in ms since the epoch, the clock of the store's event times.
fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

type Shared = Arc<Mutex<DeviceTime>>;

fn record(t: &Shared, f: impl FnOnce(&mut DeviceTime)) {
    let mut g = t.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g);
}

/// A model that times what the runner asks of it.
struct TimedModel {
    inner: Arc<dyn Model>,
    time: Shared,
}

impl Model for TimedModel {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn version(&self) -> &str {
        self.inner.version()
    }

    fn load(&self) -> Result<(), ModelError> {
        self.inner.load()
    }

    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError> {
        let t = Instant::now();
        let inner = self.inner.start(req)?;
        record(&self.time, |d| {
            d.starts += 1;
            d.start += t.elapsed();
        });
        Ok(Box::new(TimedGeneration {
            inner,
            time: self.time.clone(),
        }))
    }

    fn resume(&self, req: &GenerationRequest, checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        let t = Instant::now();
        let inner = self.inner.resume(req, checkpoint)?;
        record(&self.time, |d| {
            d.starts += 1;
            d.start += t.elapsed();
        });
        Ok(Box::new(TimedGeneration {
            inner,
            time: self.time.clone(),
        }))
    }

    fn availability(&self) -> Availability {
        self.inner.availability()
    }

    fn weights_hash(&self) -> Option<String> {
        self.inner.weights_hash()
    }
}

struct TimedGeneration {
    inner: Box<dyn Generation>,
    time: Shared,
}

impl Generation for TimedGeneration {
    fn step(&mut self) -> Result<(), ModelError> {
        let t = Instant::now();
        let r = self.inner.step();
        let d = t.elapsed();
        record(&self.time, |s| {
            s.steps += 1;
            s.step += d;
            s.step_max = s.step_max.max(d);
        });
        r
    }

    fn steps_done(&self) -> u32 {
        self.inner.steps_done()
    }

    fn total_steps(&self) -> u32 {
        self.inner.total_steps()
    }

    fn checkpoint(&self) -> Result<Vec<u8>, ModelError> {
        let t = Instant::now();
        let r = self.inner.checkpoint();
        record(&self.time, |s| {
            s.checkpoints += 1;
            s.checkpoint += t.elapsed();
        });
        r
    }

    fn checkpointable(&self) -> bool {
        self.inner.checkpointable()
    }

    fn frame_count(&self) -> u32 {
        self.inner.frame_count()
    }

    fn decode_frame(&self, index: u32) -> RgbFrame {
        self.inner.decode_frame(index)
    }

    fn into_frames(self: Box<Self>) -> Result<Box<dyn Frames>, ModelError> {
        let t = Instant::now();
        let r = self.inner.into_frames();
        record(&self.time, |s| {
            s.decodes += 1;
            s.decode += t.elapsed();
            s.last_decode_end_ms = Some(epoch_ms());
        });
        r
    }
}

async fn busy_run(args: &GpuBusyArgs, size: VideoSize, seconds: Seconds, finishing: usize) -> anyhow::Result<BusyRun> {
    let dir = tempfile::Builder::new().prefix("videogen-bench-gpu-busy-").tempdir()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let blob = Arc::new(videogen_blob::LocalBlobStore::new(&dir.path().join("blobs"))?);
    let rt = Arc::new(Runtime {
        store: Arc::new(videogen_store::SqliteStore::open(&dir.path().join("videogen.db")).await?),
        blob,
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone())),
        bus: JobBus::default(),
        clock: clock.clone(),
        config: RuntimeConfig::default(),
        fleet: Arc::default(),
        storage: Default::default(),
    });
    let tenant = TenantId::parse("bench").context("bench tenant")?;
    let mut ids = Vec::new();
    for n in 0..args.jobs {
        let new = NewJob {
            id: VideoId::generate(),
            tenant: tenant.clone(),
            tier: Tier::Paid,
            spec: VideoSpec {
                model: videogen_core::spec::REFERENCE_MODEL.into(),
                prompt: format!("a lighthouse in a storm, take {n}"),
                seconds,
                size,
                seed: u64::from(n),
                style: None,
                steps: args.steps,
                input_reference: None,
                params: GenerationParams::default(),
            },
            now_ms: clock.now_ms(),
        };
        let Submitted::Created(job) = rt.store.submit(new, None).await? else {
            bail!("a submit without an idempotency key was replayed");
        };
        rt.dispatcher.enqueue(QueuedJob {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            tier: job.tier,
            model: job.spec.model.clone(),
            enqueued_at_ms: job.enqueued_at_ms,
            not_before_ms: None,
        });
        ids.push(job.id);
    }

    let time: Shared = Arc::default();
    let model = TimedModel {
        inner: Arc::new(ReferenceModel::new(ReferenceConfig {
            step_time: Duration::from_millis(args.step_ms),
            ..ReferenceConfig::default()
        })),
        time: time.clone(),
    };
    let engine = Arc::new(Engine::single(
        Arc::new(model),
        Arc::new(videogen_safety::DenylistModerator::new()),
    ));
    let config = WorkerConfig {
        finishing_max: finishing,
        ..WorkerConfig::default()
    };
    let info = WorkerInfo {
        id: WorkerId::new("bench", "w0"),
        loaded_models: Vec::new(),
        spot: false,
        memory_class: None,
        model_load_ms: 0,
        serves: None,
        models: Vec::new(),
    };
    let control: Arc<dyn ControlPlane> = Arc::new(LocalControl::new(rt.clone()));
    let mut changes = rt.bus.subscribe();
    let shutdown = CancellationToken::new();
    let cpu_before = CpuSnapshot::now();
    let worker = tokio::spawn(Worker::new(control, engine, info, config).run(shutdown.clone()));

    // Each job: its steps, plus a generous allowance for encoding on a busy machine.
    let per_job = Duration::from_millis(args.step_ms * u64::from(args.steps)) * 3 + Duration::from_secs(60);
    let deadline = Instant::now() + per_job * args.jobs;
    let mut pending: Vec<VideoId> = ids.clone();
    let mut last_report = Instant::now();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let job = rt.store.job(&id).await?.context("a bench job vanished")?;
            if !matches!(job.state, JobState::Completed | JobState::Failed | JobState::Cancelled) {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            shutdown.cancel();
            bail!(
                "{} jobs not done in {:.0} s",
                pending.len(),
                (per_job * args.jobs).as_secs_f64()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[bench gpu-busy]   {} of {} jobs done",
                ids.len() - pending.len(),
                ids.len()
            );
            last_report = Instant::now();
        }
        tokio::select! {
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let busy_cpus = CpuSnapshot::now()
        .zip(cpu_before)
        .and_then(|(after, before)| after.busy_cpus_since(&before));
    shutdown.cancel();
    worker.await.context("the worker task panicked")?;

    let mut first_lease: Option<i64> = None;
    let mut last_done: Option<i64> = None;
    let (mut completed, mut failed) = (0, 0);
    let mut latencies = Vec::new();
    for id in &ids {
        let events = rt.store.events(id, 0, 10_000).await?;
        let leased = events
            .iter()
            .find(|e| matches!(e.payload, EventPayload::Leased { .. }))
            .map(|e| e.at_ms);
        let done = events
            .iter()
            .rev()
            .find(|e| matches!(e.payload, EventPayload::Completed { .. }))
            .map(|e| e.at_ms);
        if events.iter().any(|e| matches!(e.payload, EventPayload::Failed { .. })) {
            failed += 1;
        }
        if let (Some(l), Some(d)) = (leased, done) {
            completed += 1;
            latencies.push(Duration::from_millis(u64::try_from(d - l).unwrap_or(0)));
            first_lease = Some(first_lease.map_or(l, |f| f.min(l)));
            last_done = Some(last_done.map_or(d, |x| x.max(d)));
        }
    }
    let (Some(first), Some(last)) = (first_lease, last_done) else {
        bail!("no job completed (failed: {failed})");
    };
    let wall_s = (last - first) as f64 / 1e3;
    let d = time.lock().unwrap_or_else(|e| e.into_inner());
    let device_window_s = d
        .last_decode_end_ms
        .map_or(wall_s, |end| ((end - first as f64) / 1e3).min(wall_s));
    let ms_mean = |total: Duration, n: u64| {
        if n == 0 {
            0.0
        } else {
            total.as_secs_f64() * 1e3 / n as f64
        }
    };
    let stepping_s = d.step.as_secs_f64();
    let held_s = (d.step + d.start + d.checkpoint + d.decode).as_secs_f64();
    Ok(BusyRun {
        finishing,
        completed,
        failed,
        wall_s,
        stepping_s,
        busy_percent: stepping_s / wall_s * 100.0,
        device_window_s,
        busy_device_window_percent: stepping_s / device_window_s * 100.0,
        device_held_percent: held_s / wall_s * 100.0,
        steps: d.steps,
        step_ms_mean: ms_mean(d.step, d.steps),
        step_ms_max: d.step_max.as_secs_f64() * 1e3,
        starts: d.starts,
        start_ms_mean: ms_mean(d.start, d.starts),
        checkpoints: d.checkpoints,
        checkpoint_ms_mean: ms_mean(d.checkpoint, d.checkpoints),
        decodes: d.decodes,
        decode_ms_mean: ms_mean(d.decode, d.decodes),
        jobs_per_min: completed as f64 / wall_s * 60.0,
        job_lease_to_complete: Percentiles::of(&mut latencies),
        busy_cpus,
    })
}

fn print_report(r: &Report) {
    println!(
        "videogen bench gpu-busy: {} back-to-back jobs on one worker slot, reference model at {} ms/step, \
         {} steps, {} x {} s ({} frames)",
        r.jobs, r.step_ms, r.steps, r.size, r.seconds, r.frames
    );
    r.machine.print();
    println!(
        "\n  {:>9} {:>5} {:>8} {:>11} {:>7} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>14}",
        "finishing",
        "done",
        "wall s",
        "stepping s",
        "busy %",
        "device s",
        "busy' %",
        "held %",
        "step ms",
        "ckpt ms",
        "jobs/min",
        "CPUs",
        "job p50/max s"
    );
    for run in &r.runs {
        println!(
            "  {:>9} {:>5} {:>8.2} {:>11.2} {:>7.2} {:>9.2} {:>8.2} {:>7.2} {:>9.1} {:>9.1} {:>9.2} {:>8} {:>14}",
            run.finishing,
            format!("{}/{}", run.completed, run.completed + run.failed),
            run.wall_s,
            run.stepping_s,
            run.busy_percent,
            run.device_window_s,
            run.busy_device_window_percent,
            run.device_held_percent,
            run.step_ms_mean,
            run.checkpoint_ms_mean,
            run.jobs_per_min,
            run.busy_cpus.map_or_else(|| "?".to_owned(), |b| format!("{b:.2}")),
            format!(
                "{:.2}/{:.2}",
                run.job_lease_to_complete.p50_ms / 1e3,
                run.job_lease_to_complete.max_ms / 1e3
            ),
        );
    }
    println!(
        "  busy = sum of step times / wall (last completed - first leased); busy' = the same over the device \
         window\n  (first leased - end of the last decode: the last job's encode and upload left out); held = busy \
         plus start,\n  checkpoint serialisation and decode; target: busy >= {:.0} % with background finishing",
        r.target_busy_percent
    );
    if let (Some(before), Some(after)) = (
        r.runs.iter().find(|x| x.finishing == 0),
        r.runs.iter().find(|x| x.finishing > 0),
    ) {
        println!(
            "  finishing {} vs 0 in this run: busy {:.2} % vs {:.2} % (busy' {:.2} % vs {:.2} %), throughput x{:.2}",
            after.finishing,
            after.busy_percent,
            before.busy_percent,
            after.busy_device_window_percent,
            before.busy_device_window_percent,
            after.jobs_per_min / before.jobs_per_min
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timed_model_counts_every_call_on_the_device() {
        let time: Shared = Arc::default();
        let model = TimedModel {
            inner: Arc::new(ReferenceModel::new(ReferenceConfig::instant())),
            time: time.clone(),
        };
        let mut req = GenerationRequest::new("a lighthouse", 1, 64, 32, 8);
        req.steps = 3;
        let mut g = model.start(&req).unwrap();
        while !g.is_done() {
            g.step().unwrap();
        }
        let ck = g.checkpoint().unwrap();
        assert!(!ck.is_empty());
        let frames = g.into_frames().unwrap();
        assert_eq!(frames.count(), 8);
        let resumed = model.resume(&req, &ck).unwrap();
        assert!(resumed.is_done());
        let d = time.lock().unwrap();
        assert_eq!((d.starts, d.steps, d.checkpoints, d.decodes), (2, 3, 1, 1));
        assert!(d.step >= d.step_max && d.last_decode_end_ms.is_some());
    }
}
