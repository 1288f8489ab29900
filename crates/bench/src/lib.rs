//! `videogen bench` and `videogen chaos`: the reproducible benchmarks behind
//! docs/PERFORMANCE.md and the fleet's fault-injection run. Not part of the
//! platform: the `videogen` binary only dispatches to [`run`] and
//! [`chaos::run`] (cargo feature `bench`, on by default).
//!
//! - [`dispatch`]: no-op jobs through submit → scheduler → lease → complete on
//!   the embedded SQLite store, against a bare-SQLite baseline.
//! - [`submit`]: open-loop `POST /v1/videos` load against an in-process (or
//!   remote) server, or several `serve` processes on one PostgreSQL database,
//!   with latency measured from the scheduled send time.
//! - [`model`]: reference-model generation and H.264 encoding time per size.
//! - [`fleet`]: worker fleet latencies with real processes (pickup, graceful
//!   and ungraceful preemption, checkpoint overhead).
//! - [`checkpoint_storm`]: workers writing checkpoints at once to an
//!   S3-compatible server (`s3s-fs`) on loopback, and to a `file://` store.
//! - [`reliability`]: submissions under load while the server is killed,
//!   the database stopped or the blob store full, and parallel large uploads.
//! - [`slow_clients`]: a slow-connection attack on a `serve` process while
//!   `/healthz` is probed.
//! - [`host_overhead`]: the model-host protocol's cost per step (noop adapter
//!   round trips; tiny Wan through the host against an in-process loop).
//! - [`latent_checkpoint`]: a Wan2.1-14B-sized (1280x720, 81 frames) host
//!   checkpoint serialised, uploaded, downloaded and restored, per blob store.
//! - [`gpu_busy`]: the share of wall time one worker slot's model steps, with
//!   encoding inline (`--finishing 0`) and in the background (`--finishing 2`).
//!
//! Every subcommand prints a human-readable report, or one JSON object on
//! stdout with `--json` (progress goes to stderr either way). Nothing here
//! asserts on timings.
//!
//! - [`chaos`]: a server and workers under SIGKILL/SIGSTOP/preemption, with
//!   end-to-end checks that nothing is lost or completed twice.
//! - [`procs`]: starting `videogen` processes and reading their CPU time and metrics.

mod checkpoint_storm;
mod dispatch;
mod fleet;
mod gpu_busy;
mod host_overhead;
mod latent_checkpoint;
mod model;
mod model_host;
mod reliability;
mod slow_clients;
mod submit;

pub mod chaos;
pub mod procs;

use clap::Subcommand;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Scheduler + store throughput with no-op jobs (no model, no blobs).
    Dispatch(dispatch::DispatchArgs),
    /// HTTP submission latency at a fixed open-loop request rate.
    Submit(submit::SubmitArgs),
    /// Reference-model generation and encoding time per output size.
    Model(model::ModelArgs),
    /// Worker fleet: pickup latency, graceful and ungraceful preemption, checkpoint overhead.
    Fleet(fleet::FleetArgs),
    /// Concurrent checkpoint writes to an S3-compatible server (s3s-fs on loopback).
    CheckpointStorm(checkpoint_storm::CheckpointStormArgs),
    /// A slow-connection attack on `videogen serve`: many half-sent requests held open while /healthz is probed.
    SlowClients(slow_clients::SlowClientsArgs),
    /// Submissions under load while infrastructure fails (server killed, database stopped, blob store full), or parallel large uploads.
    Reliability(reliability::ReliabilityArgs),
    /// Model-host protocol overhead per step: noop round trips, tiny Wan hosted vs in-process.
    Host(host_overhead::HostArgs),
    /// A Wan2.1-14B-sized latent checkpoint: serialise, upload, download, restore, per blob store.
    LatentCheckpoint(latent_checkpoint::LatentCheckpointArgs),
    /// Share of wall time the model steps for back-to-back jobs, encoding inline vs in the background.
    GpuBusy(gpu_busy::GpuBusyArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Dispatch(args) => dispatch::run(args).await,
        BenchCommand::Submit(args) => submit::run(args).await,
        BenchCommand::Model(args) => model::run(args).await,
        BenchCommand::Fleet(args) => fleet::run(args).await,
        BenchCommand::CheckpointStorm(args) => checkpoint_storm::run(args).await,
        BenchCommand::SlowClients(args) => slow_clients::run(args).await,
        BenchCommand::Reliability(args) => reliability::run(args).await,
        BenchCommand::Host(args) => host_overhead::run(args).await,
        BenchCommand::LatentCheckpoint(args) => latent_checkpoint::run(args).await,
        BenchCommand::GpuBusy(args) => gpu_busy::run(args).await,
    }
}

/// The machine a benchmark ran on, recorded with every result.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub os: &'static str,
    pub arch: &'static str,
    /// UTC time the benchmark started, RFC 3339.
    pub date_utc: String,
    /// 1-minute load average when it started (the machine may be shared).
    pub loadavg_1m: Option<f64>,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim())
            })
            .unwrap_or("unknown")
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            date_utc: utc_now(),
            loadavg_1m: loadavg_1m(),
        }
    }

    pub fn print(&self) {
        let load = self.loadavg_1m.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
        println!(
            "machine: {} CPU(s), {}, {:.1} GiB RAM, {}/{}; {}; load average {load} at start",
            self.nproc, self.cpu_model, self.mem_total_gib, self.os, self.arch, self.date_utc
        );
        if cfg!(debug_assertions) {
            println!("WARNING: debug build; measure with `cargo build --release -p videogen`");
        }
    }
}

/// The 1-minute load average from /proc/loadavg.
pub fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Machine-wide CPU time so far (`/proc/stat`, all CPUs), to tell how busy
/// the whole machine was during a run: client, servers and anyone else.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    busy_ticks: u64,
    total_ticks: u64,
}

impl CpuSnapshot {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let t: Vec<u64> = line.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let field = |i: usize| t.get(i).copied().unwrap_or(0);
        let idle = field(3) + field(4);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        Some(Self {
            busy_ticks: busy,
            total_ticks: busy + idle,
        })
    }

    /// CPUs' worth of busy time since `earlier` (0 to `nproc`).
    pub fn busy_cpus_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total_ticks.checked_sub(earlier.total_ticks)?;
        let busy = self.busy_ticks.checked_sub(earlier.busy_ticks)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        (total > 0).then(|| busy as f64 / total as f64 * cpus)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            ms(samples[i - 1])
        };
        let sum: Duration = samples.iter().sum();
        Self {
            count: samples.len(),
            mean_ms: ms(sum) / samples.len() as f64,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            p999_ms: rank(0.999),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }

    #[test]
    fn utc_now_is_rfc3339_shaped() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
