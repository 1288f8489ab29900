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
use videogen_core::catalog::Catalog;
use videogen_host::{Host, HostConfig, HostedModel, HostedSpec};
use videogen_model::{Model, ReferenceConfig, ReferenceModel};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::checkpoint::CheckpointPolicy;
use videogen_worker::{Engine, ModelSet, RemoteControl, Worker, WorkerConfig};

use crate::config::{ConfigFile, Flags, Loader, LogOptions, PolicyKind, WorkerOptions};
use crate::registry::RegistryEntry;

/// The adaptive policy's stand-in MTBF until the fleet publishes an estimate.
const ADAPTIVE_DEFAULT_MTBF: Duration = Duration::from_secs(3600);

/// What a worker's slots run: one engine per slot, and the model-host
/// processes behind them (stopped on shutdown).
pub struct SlotPlan {
    pub engines: Vec<Arc<Engine>>,
    pub hosts: Vec<Arc<Host>>,
    /// What loading a model costs these slots, in ms (for warm-first dispatch).
    pub load_ms: Option<u64>,
    /// Each slot's GPU group (`0`, `0+1`), `None` on the CPU.
    pub gpus: Vec<Option<String>>,
    /// Load the models before taking work (hosted and upstream models).
    pub warm_first: bool,
}

impl SlotPlan {
    /// Loads each slot's models before it takes work, so its first job does
    /// not pay the load and a model that cannot load is reported
    /// unavailable (and never leased here) from the start. Blocking.
    pub fn warm_up(&self) {
        let mut seen = std::collections::HashSet::new();
        for engine in &self.engines {
            for id in engine.models.ids() {
                let Some(m) = engine.models.get(&id) else { continue };
                // Shared models (the reference) load once.
                if !seen.insert(Arc::as_ptr(m) as *const () as usize) {
                    continue;
                }
                let started = std::time::Instant::now();
                match m.load() {
                    Ok(()) => {
                        tracing::info!(model = %id, secs = started.elapsed().as_secs_f64(), version = m.version(), "model ready")
                    }
                    Err(e) => tracing::warn!(model = %id, error = %e, "model unavailable on this worker"),
                }
            }
        }
    }

    /// Stops every host process (blocking; call from a blocking context).
    pub fn shutdown_hosts(&self) {
        for h in &self.hosts {
            h.shutdown();
        }
    }
}

/// The moderator every slot shares.
pub fn moderator(o: &WorkerOptions) -> anyhow::Result<Arc<dyn videogen_core::moderation::Moderator>> {
    let m = match &o.blocked_hashes {
        Some(p) => videogen_safety::DenylistModerator::from_hash_file(p)
            .with_context(|| format!("reading --blocked-hashes {}", p.display()))?,
        None => videogen_safety::DenylistModerator::new(),
    };
    Ok(Arc::new(m))
}

fn reference(o: &WorkerOptions) -> Arc<dyn Model> {
    Arc::new(ReferenceModel::new(ReferenceConfig {
        step_time: Duration::from_millis(o.step_ms),
        load_time: Duration::from_millis(o.model_load_ms),
        audio: o.reference_audio,
    }))
}

/// The slots of a worker: with `--models` unset, `slots` slots sharing the
/// reference model; otherwise one model host per `--gpus` group (or
/// `slots` CPU hosts), each slot running the listed models on its host.
pub fn plan(
    o: &WorkerOptions,
    registry: &[RegistryEntry],
    catalog: &Catalog,
    slots: usize,
) -> anyhow::Result<SlotPlan> {
    let moderator = moderator(o)?;
    let Some(list) = &o.models else {
        let engine = Arc::new(Engine::single(reference(o), moderator));
        return Ok(SlotPlan {
            engines: vec![engine; slots],
            hosts: Vec::new(),
            load_ms: None,
            gpus: vec![None; slots],
            warm_first: false,
        });
    };
    let mut wanted: Vec<&RegistryEntry> = Vec::new();
    let mut with_reference = false;
    // Upstream engines need no GPU here: one model, shared by every slot.
    let mut remote: Vec<Arc<dyn Model>> = Vec::new();
    for id in list.split(',').map(str::trim) {
        let card = catalog
            .get(id)
            .with_context(|| format!("--models: {id:?} is not in the model registry ([[models]] in --config)"))?;
        match registry.iter().find(|e| e.id == card.id) {
            Some(e) if e.adapter == "remote-openai" => {
                let cfg = e.remote_config().map_err(anyhow::Error::msg)?;
                remote.push(Arc::new(
                    videogen_remote::RemoteOpenAiModel::new(e.id.clone(), cfg).map_err(|e| anyhow::anyhow!("{e}"))?,
                ));
            }
            Some(e) if !e.is_reference() => wanted.push(e),
            _ => with_reference = true,
        }
    }
    let groups: Vec<Option<String>> = match &o.gpus {
        Some(g) => g.split(',').map(|g| Some(g.replace('+', ","))).collect(),
        None => vec![None; slots.max(1)],
    };
    let load_ms = wanted
        .iter()
        .filter_map(|e| e.load_secs)
        .map(|s| (s.max(0.0) * 1000.0) as u64)
        .max();
    let mut plan = SlotPlan {
        engines: Vec::new(),
        hosts: Vec::new(),
        load_ms,
        gpus: Vec::new(),
        warm_first: !wanted.is_empty() || !remote.is_empty(),
    };
    let shared_reference = with_reference.then(|| reference(o));
    for (i, gpus) in groups.into_iter().enumerate() {
        plan.gpus.push(gpus.as_ref().map(|g| g.replace(',', "+")));
        let mut models: Vec<Arc<dyn Model>> = Vec::new();
        if !wanted.is_empty() {
            let name = match &gpus {
                Some(g) => format!("gpu{}", g.replace(',', "+")),
                None => format!("cpu{i}"),
            };
            let mut cfg = HostConfig::python(name, &o.host_python);
            cfg.device = if gpus.is_some() { "cuda".into() } else { "cpu".into() };
            cfg.gpus = gpus;
            cfg.memory_budget_bytes = o.gpu_memory_gb.map(|g| (g * 1e9) as u64);
            if let Some(n) = o.host_threads {
                cfg.env.push(("VIDEOGEN_HOST_THREADS".into(), n.to_string()));
            }
            let host = Host::new(cfg);
            for e in &wanted {
                let card = catalog
                    .get(&e.id)
                    .cloned()
                    .with_context(|| format!("model {} has no card", e.id))?;
                let spec = HostedSpec {
                    card,
                    adapter: e.adapter.clone(),
                    path: e.path.clone().unwrap_or_default(),
                    dtype: e.dtype.to_json(),
                    memory_bytes: e.memory_bytes(),
                };
                models.push(Arc::new(HostedModel::new(host.clone(), spec)));
            }
            plan.hosts.push(host);
        }
        if let Some(r) = &shared_reference {
            models.push(r.clone());
        }
        models.extend(remote.iter().cloned());
        plan.engines.push(Arc::new(Engine {
            models: ModelSet::new(models),
            moderator: moderator.clone(),
        }));
    }
    Ok(plan)
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
        finishing_max: o.finishing,
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
    let registry = loader.models().to_vec();
    let catalog = match crate::registry::catalog(&registry, videogen_model::REFERENCE_DEFAULT_STEPS) {
        Ok(c) => Some(c),
        Err(e) => {
            loader.error_at("model registry", e);
            None
        }
    };
    loader.finish()?;
    let catalog = catalog.context("invalid model registry")?;
    crate::process::init_logging(log.log_format);
    let plan = Arc::new(plan(&options, &registry, &catalog, args.slots as usize)?);
    if plan.warm_first {
        let p = plan.clone();
        tokio::task::spawn_blocking(move || p.warm_up()).await?;
    }
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

    let gpu_slots: Vec<crate::gpu::SlotGpus> = plan
        .gpus
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let label = g.clone()?;
            Some(crate::gpu::SlotGpus {
                worker: WorkerId::new(&name, &format!("s{i}")).to_string(),
                indices: crate::gpu::indices(&label),
                label,
            })
        })
        .collect();
    let nvml = crate::gpu::start_nvml(gpu_slots, shutdown.clone());
    let mut slots = tokio::task::JoinSet::new();
    for (i, engine) in plan.engines.iter().enumerate() {
        let info = WorkerInfo {
            id: WorkerId::new(&name, &format!("s{i}")),
            loaded_models: Vec::new(),
            spot: args.spot,
            memory_class: None,
            model_load_ms: plan.load_ms.unwrap_or(options.model_load_ms),
            serves: None,
            models: Vec::new(),
        };
        let mut config = config.clone();
        config.gpu_id = plan.gpus.get(i).cloned().flatten().unwrap_or_else(|| "cpu".into());
        config.utilization_from_steps = !nvml;
        let w = Worker::new(control.clone(), engine.clone(), info, config);
        slots.spawn(w.run(shutdown.clone()));
    }
    println!(
        "videogen worker {name} ({} slot(s), models {}) working for {}",
        plan.engines.len(),
        plan.engines
            .first()
            .map(|e| e.models.ids().join(","))
            .unwrap_or_default(),
        args.server
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
    let _ = tokio::task::spawn_blocking(move || plan.shutdown_hosts()).await;
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
