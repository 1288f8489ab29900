//! `videogen worker`: a worker process that runs jobs for a server over its
//! internal HTTP API, holding only a worker token (no database or bucket
//! credentials). Its model, moderation and checkpoint options are
//! [`WorkerOptions`], the same ones `serve` gives its in-process workers
//! (flags, `VIDEOGEN_*` variables, the `[workers]` and `[moderation]`
//! sections of `--config`).
//!
//! SIGTERM (a spot instance's notice) or `POST /preempt` on `--notice-listen`
//! (standing in for the cloud metadata notice) stop it gracefully: each slot
//! finishes its step, checkpoints within `--preemption-deadline-secs`,
//! releases its job so it is re-queued at once, and the process exits.

use anyhow::Context;
use axum::routing::{get, post};
use clap::Args;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_core::WorkerId;
use videogen_model::{ReferenceConfig, ReferenceModel};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::checkpoint::CheckpointPolicy;
use videogen_worker::{Engine, RemoteControl, Worker, WorkerConfig};

use crate::config::{ConfigFile, Flags, Loader, LogOptions, PolicyKind, WorkerOptions};

/// The adaptive policy's stand-in MTBF until the fleet publishes an estimate.
const ADAPTIVE_DEFAULT_MTBF: Duration = Duration::from_secs(3600);

/// The model and moderator of a worker slot.
pub fn engine(o: &WorkerOptions) -> anyhow::Result<Arc<Engine>> {
    let moderator = match &o.blocked_hashes {
        Some(p) => videogen_safety::DenylistModerator::from_hash_file(p)
            .with_context(|| format!("reading --blocked-hashes {}", p.display()))?,
        None => videogen_safety::DenylistModerator::new(),
    };
    let model = ReferenceModel::new(ReferenceConfig {
        step_time: Duration::from_millis(o.step_ms),
        load_time: Duration::from_millis(o.model_load_ms),
    });
    Ok(Arc::new(Engine {
        model: Arc::new(model),
        moderator: Arc::new(moderator),
    }))
}

/// The runtime knobs of a worker slot (validated when the options loaded).
pub fn worker_config(o: &WorkerOptions) -> WorkerConfig {
    let checkpoint = match o.checkpoint_policy {
        PolicyKind::Fixed => CheckpointPolicy::Fixed {
            every_steps: o.checkpoint_every_steps,
            every: o.checkpoint_every,
        },
        PolicyKind::Adaptive => CheckpointPolicy::Adaptive {
            min: o.checkpoint_min,
            max: o.checkpoint_max,
            default_mtbf: ADAPTIVE_DEFAULT_MTBF,
        },
    };
    WorkerConfig {
        checkpoint,
        preemption_deadline: o.preemption_deadline,
        ..WorkerConfig::default()
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
    pub file: ConfigFile,
    #[command(flatten)]
    pub engine: Flags<WorkerOptions>,
}

pub async fn run(args: WorkerArgs, log: &Flags<LogOptions>) -> anyhow::Result<()> {
    let mut loader = Loader::new(&args.file);
    let options: WorkerOptions = loader.resolve(&args.engine);
    let log: LogOptions = loader.resolve(log);
    loader.finish()?;
    crate::process::init_logging(log.log_format);
    let engine = engine(&options)?;
    let config = worker_config(&options);
    let control: Arc<dyn ControlPlane> = Arc::new(RemoteControl::new(&args.server, &args.token)?);
    let name = args.name.clone().unwrap_or_else(default_name);
    anyhow::ensure!(
        !name.is_empty() && !name.contains('/'),
        "--name must be non-empty and contain no '/'"
    );
    let shutdown = CancellationToken::new();

    if let Some(addr) = &args.notice_listen {
        let metrics = crate::process::install_metrics()?;
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
            model_load_ms: options.model_load_ms,
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
        crate::process::wait_for_signal().await;
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
