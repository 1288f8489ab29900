//! `videogen worker`: a worker process that runs jobs for a server over its
//! internal HTTP API, holding only a worker token (no database or bucket
//! credentials). Also the model/engine flags `serve` shares for its
//! in-process workers.
//!
//! SIGTERM (a spot instance's notice) or `POST /preempt` on `--notice-listen`
//! (standing in for the cloud metadata notice) stop it gracefully: each slot
//! finishes its step, checkpoints within `--preemption-deadline-secs`,
//! releases its job so it is re-queued at once, and the process exits.

use anyhow::Context;
use axum::routing::{get, post};
use clap::{Args, ValueEnum};
use metrics_exporter_prometheus::PrometheusHandle;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_core::WorkerId;
use videogen_model::{ReferenceConfig, ReferenceModel};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::checkpoint::CheckpointPolicy;
use videogen_worker::{Engine, RemoteControl, Worker, WorkerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Every `--checkpoint-every-steps` steps or `--checkpoint-every-secs` seconds.
    Fixed,
    /// Young–Daly `sqrt(2·C·MTBF)` from the measured checkpoint cost and the
    /// fleet's preemption rate, within `--checkpoint-min-secs`..`--checkpoint-max-secs`.
    Adaptive,
}

/// The model, moderation and checkpoint flags of a worker slot.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Minimum wall time of one reference-model step (speed knob), in ms.
    #[arg(long, default_value_t = 100)]
    pub step_ms: u64,
    /// Simulated model load time, in ms (paid once per worker process).
    #[arg(long, default_value_t = 0)]
    pub model_load_ms: u64,
    /// How the checkpoint interval is chosen.
    #[arg(long, value_enum, default_value_t = PolicyKind::Fixed)]
    pub checkpoint_policy: PolicyKind,
    /// Fixed policy: checkpoint every this many steps (0: only by time).
    #[arg(long, default_value_t = 5)]
    pub checkpoint_every_steps: u32,
    /// Fixed policy: ... or every this many seconds, whichever is first.
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_every_secs: f64,
    /// Adaptive policy: shortest interval.
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_min_secs: f64,
    /// Adaptive policy: longest interval.
    #[arg(long, default_value_t = 600.0)]
    pub checkpoint_max_secs: f64,
    /// Longest a graceful stop may take from notice to release (GCE gives 30 s, AWS 120 s).
    #[arg(long, default_value_t = 25.0)]
    pub preemption_deadline_secs: f64,
    /// File of 64-bit perceptual hashes (hex, one per line) that output moderation blocks.
    #[arg(long, env = "VIDEOGEN_BLOCKED_HASHES")]
    pub blocked_hashes: Option<PathBuf>,
}

pub fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} must be a positive number of seconds"))
}

impl EngineArgs {
    pub fn engine(&self) -> anyhow::Result<Arc<Engine>> {
        let moderator = match &self.blocked_hashes {
            Some(p) => videogen_safety::DenylistModerator::from_hash_file(p)
                .with_context(|| format!("reading --blocked-hashes {}", p.display()))?,
            None => videogen_safety::DenylistModerator::new(),
        };
        let model = ReferenceModel::new(ReferenceConfig {
            step_time: Duration::from_millis(self.step_ms),
            load_time: Duration::from_millis(self.model_load_ms),
        });
        Ok(Arc::new(Engine {
            model: Arc::new(model),
            moderator: Arc::new(moderator),
        }))
    }

    pub fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let checkpoint = match self.checkpoint_policy {
            PolicyKind::Fixed => CheckpointPolicy::Fixed {
                every_steps: self.checkpoint_every_steps,
                every: secs("checkpoint-every-secs", self.checkpoint_every_secs)?,
            },
            PolicyKind::Adaptive => {
                let min = secs("checkpoint-min-secs", self.checkpoint_min_secs)?;
                let max = secs("checkpoint-max-secs", self.checkpoint_max_secs)?;
                anyhow::ensure!(
                    min <= max,
                    "--checkpoint-min-secs must not exceed --checkpoint-max-secs"
                );
                CheckpointPolicy::Adaptive {
                    min,
                    max,
                    default_mtbf: Duration::from_secs(3600),
                }
            }
        };
        Ok(WorkerConfig {
            checkpoint,
            preemption_deadline: secs("preemption-deadline-secs", self.preemption_deadline_secs)?,
            ..WorkerConfig::default()
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Base URL of the videogen server.
    #[arg(long, env = "VIDEOGEN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Worker token (`videogen keys create --worker`).
    #[arg(long, env = "VIDEOGEN_WORKER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Jobs this process runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// Name of this worker (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// This machine is preemptible (spot).
    #[arg(long)]
    pub spot: bool,
    /// Serve `POST /preempt` (graceful stop), `GET /metrics` and `GET /healthz` here.
    #[arg(long)]
    pub notice_listen: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let engine = args.engine.engine()?;
    let config = args.engine.worker_config()?;
    let control: Arc<dyn ControlPlane> = Arc::new(RemoteControl::new(&args.server, &args.token)?);
    let name = args.name.clone().unwrap_or_else(default_name);
    anyhow::ensure!(
        !name.is_empty() && !name.contains('/'),
        "--name must be non-empty and contain no '/'"
    );
    let shutdown = CancellationToken::new();

    if let Some(addr) = &args.notice_listen {
        let metrics = crate::serve::install_metrics()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --notice-listen {addr}"))?;
        println!("notice endpoint on http://{}", listener.local_addr()?);
        tokio::spawn(notice_server(listener, metrics, shutdown.clone()));
    }

    let mut slots = tokio::task::JoinSet::new();
    for i in 0..args.slots {
        let info = WorkerInfo {
            id: WorkerId::new(&name, &format!("s{i}")),
            loaded_models: Vec::new(),
            spot: args.spot,
            memory_class: None,
            model_load_ms: args.engine.model_load_ms,
        };
        let w = Worker::new(control.clone(), engine.clone(), info, config.clone());
        slots.spawn(w.run(shutdown.clone()));
    }
    println!(
        "videogen worker {name} ({} slot(s)) working for {}",
        args.slots, args.server
    );
    use std::io::Write;
    std::io::stdout().flush()?;

    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::serve::wait_for_signal().await;
        tracing::info!("stop requested: slots checkpoint and release their jobs");
        stop.cancel();
    });
    shutdown.cancelled().await;
    // The slots obey the preemption deadline themselves; this only bounds a hang.
    let grace = config.preemption_deadline + Duration::from_secs(5);
    if tokio::time::timeout(grace, async { while slots.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("slots did not stop within {grace:?}; their leases will expire");
    }
    Ok(())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let host = if host.is_empty() { "worker".to_owned() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The notice endpoint: the stand-in for a cloud's preemption notice.
async fn notice_server(listener: tokio::net::TcpListener, metrics: PrometheusHandle, shutdown: CancellationToken) {
    let stop = shutdown.clone();
    let app = axum::Router::new()
        .route(
            "/preempt",
            post(move || {
                let stop = stop.clone();
                async move {
                    tracing::info!("preemption notice received");
                    stop.cancel();
                    "stopping\n"
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(move || std::future::ready(metrics.render())));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "notice endpoint stopped");
    }
}
