//! `videogen serve`: wires the embedded platform together and runs it.

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_api::{AppState, Limits};
use videogen_core::store::Store;
use videogen_core::{Clock, SystemClock, TenantId, Tier, WorkerId};
use videogen_model::REFERENCE_DEFAULT_STEPS;
use videogen_sched::SchedulerConfig;
use videogen_worker::fleet::FleetStats;
use videogen_worker::{
    ControlPlane, Dispatcher, JobBus, LocalControl, Runtime, RuntimeConfig, Worker, WorkerInfo, housekeeping,
};

use crate::worker::{EngineArgs, secs};

/// Tenant of the bootstrap admin key.
const ADMIN_TENANT: &str = "admin";
/// How long a graceful shutdown waits for workers to checkpoint and release.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long in-flight HTTP requests get to finish on shutdown.
const HTTP_DRAIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory for the SQLite database and blobs.
    #[arg(long, env = "VIDEOGEN_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "VIDEOGEN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// In-process workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Denoising steps per video.
    #[arg(long, default_value_t = REFERENCE_DEFAULT_STEPS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: u32,
    /// Lease time-to-live in seconds; heartbeats renew it every third of it.
    #[arg(long, default_value_t = 30.0)]
    pub lease_ttl_secs: f64,
    /// Attempts before a job is dead-lettered.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Override the retention of every tier, in seconds (default: free 1 d, paid 7 d, internal 30 d).
    #[arg(long)]
    pub retention_secs: Option<f64>,
    /// How often the reaper and the retention sweeper run, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub housekeeping_secs: f64,
    /// Poll interval suggested to SDK pollers (`openai-poll-after-ms`).
    #[arg(long, default_value_t = 1000)]
    pub poll_after_ms: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub async fn open_store(data_dir: &Path) -> anyhow::Result<Arc<videogen_store::SqliteStore>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = videogen_store::SqliteStore::open(&data_dir.join("videogen.db"))
        .await
        .with_context(|| format!("opening database in {}", data_dir.display()))?;
    Ok(Arc::new(store))
}

/// This node's identity, kept in the data dir so a restart can reclaim the
/// leases its previous incarnation's in-process workers held.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() && !id.contains('/') {
            return Ok(id);
        }
    }
    let id = format!("node-{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Makes sure an admin key exists: `VIDEOGEN_API_KEY` if set, else a new one
/// printed once when the store has no keys at all.
async fn bootstrap_admin_key(store: &dyn Store) -> anyhow::Result<()> {
    let tenant = TenantId::parse(ADMIN_TENANT).context("admin tenant")?;
    let insert = |secret: String| {
        let rec = videogen_api::auth::key_record(&secret, tenant.clone(), Tier::Internal, true, SystemClock.now_ms());
        async move { store.insert_api_key(&rec).await }
    };
    if let Ok(secret) = std::env::var("VIDEOGEN_API_KEY") {
        let secret = secret.trim().to_owned();
        anyhow::ensure!(secret.len() >= 16, "VIDEOGEN_API_KEY must be at least 16 characters");
        anyhow::ensure!(
            !videogen_api::auth::is_worker_secret(&secret),
            "VIDEOGEN_API_KEY is a worker token ({}…); set it as VIDEOGEN_WORKER_TOKEN",
            videogen_api::auth::WORKER_TOKEN_PREFIX
        );
        if store
            .api_key_by_hash(&videogen_api::auth::hash_key(&secret))
            .await?
            .is_none()
        {
            insert(secret).await?;
        }
    } else if store.list_api_keys().await?.is_empty() {
        let secret = videogen_api::auth::generate_secret();
        insert(secret.clone()).await?;
        println!("Admin API key (shown once, store it now): {secret}");
    }
    Ok(())
}

/// Installs `VIDEOGEN_WORKER_TOKEN`, if set, as a worker token, unless its
/// hash is already stored: restarts change nothing, and a revoked bootstrap
/// token stays revoked (rotate it by setting a new one).
async fn bootstrap_worker_token(store: &dyn Store) -> anyhow::Result<()> {
    /// Characters after the `vgw_` prefix, at least.
    const SECRET_CHARS_MIN: usize = 16;
    let Ok(secret) = std::env::var("VIDEOGEN_WORKER_TOKEN") else {
        return Ok(());
    };
    let secret = secret.trim();
    let prefix = videogen_api::auth::WORKER_TOKEN_PREFIX;
    anyhow::ensure!(
        videogen_api::auth::is_worker_secret(secret) && secret.len() >= prefix.len() + SECRET_CHARS_MIN,
        "VIDEOGEN_WORKER_TOKEN must be {prefix} followed by at least {SECRET_CHARS_MIN} characters"
    );
    match store
        .worker_token_by_hash(&videogen_api::auth::hash_key(secret))
        .await?
    {
        None => {
            let rec = videogen_api::auth::worker_token_record(secret, "bootstrap", SystemClock.now_ms());
            store.insert_worker_token(&rec).await?;
            tracing::info!(id = %rec.id, "installed the bootstrap worker token");
        }
        Some(t) if t.revoked_at_ms.is_some() => {
            tracing::warn!(id = %t.id, "VIDEOGEN_WORKER_TOKEN was revoked; workers using it are refused");
        }
        Some(_) => {}
    }
    Ok(())
}

pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .install_recorder()
        .context("installing the metrics recorder")
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let lease_ttl = secs("lease-ttl-secs", args.lease_ttl_secs)?;
    let housekeeping_interval = secs("housekeeping-secs", args.housekeeping_secs)?;
    let retention = args.retention_secs.map(|s| secs("retention-secs", s)).transpose()?;
    let engine = args.engine.engine()?;
    let worker_config = args.engine.worker_config()?;

    let metrics = install_metrics()?;
    let store = open_store(&args.data_dir).await?;
    let blob = Arc::new(videogen_blob::LocalBlobStore::new(&args.data_dir.join("blobs"))?);
    bootstrap_admin_key(store.as_ref()).await?;
    bootstrap_worker_token(store.as_ref()).await?;
    let node = node_id(&args.data_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let mut config = RuntimeConfig {
        lease_ttl,
        max_attempts: args.max_attempts,
        housekeeping_interval,
        ..RuntimeConfig::default()
    };
    if let Some(r) = retention {
        config.retention_free = r;
        config.retention_paid = r;
        config.retention_internal = r;
    }
    let dispatcher = Arc::new(Dispatcher::new(SchedulerConfig::default(), clock.clone()));
    let bus = JobBus::default();
    let rt = Arc::new(Runtime {
        store: store.clone(),
        blob: blob.clone(),
        dispatcher: dispatcher.clone(),
        bus: bus.clone(),
        clock: clock.clone(),
        config,
        fleet: Arc::new(FleetStats::default()),
    });
    let control: Arc<dyn ControlPlane> = Arc::new(LocalControl::new(rt.clone()));

    // Recovery: this node's previous workers are gone; their jobs resume from
    // their last checkpoint. Then load everything runnable.
    let reclaimed = store.reclaim_node(&node, clock.now_ms(), args.max_attempts).await?;
    let n = housekeeping::apply_reclaimed(&rt, reclaimed, "node_restarted");
    if n > 0 {
        tracing::info!(jobs = n, "reclaimed jobs of this node's previous run");
    }
    dispatcher.seed(store.queued_jobs().await?);

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let info = WorkerInfo {
            id: WorkerId::new(&node, &format!("w{i}")),
            loaded_models: Vec::new(),
            spot: false,
            memory_class: None,
            model_load_ms: args.engine.model_load_ms,
        };
        let w = Worker::new(control.clone(), engine.clone(), info, worker_config.clone());
        tasks.spawn(w.run(shutdown.clone()));
    }
    tasks.spawn(housekeeping::run(rt.clone(), shutdown.clone()));

    let state = AppState {
        store: store.clone(),
        blob,
        moderator: engine.moderator.clone(),
        dispatcher,
        bus,
        clock,
        limits: Limits::default(),
        models: vec![engine.model.id().to_owned()],
        default_steps: args.steps,
        metrics: Some(metrics),
        poll_after_ms: args.poll_after_ms,
        control: Some(control),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "videogen listening on http://{addr} (data dir {}, {} worker(s))",
        args.data_dir.display(),
        args.workers
    );
    std::io::stdout().flush()?;

    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: workers checkpoint and release their jobs");
        stop.cancel();
    });
    // Open SSE streams would hold a graceful shutdown forever: give in-flight
    // requests a bounded grace period, then stop serving.
    let server = videogen_api::serve(listener, state, shutdown.clone().cancelled_owned());
    let hard_stop = async {
        shutdown.cancelled().await;
        tokio::time::sleep(HTTP_DRAIN_GRACE).await;
    };
    tokio::select! {
        r = server => r?,
        _ = hard_stop => tracing::warn!("HTTP connections still open after {HTTP_DRAIN_GRACE:?}; closing"),
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within {SHUTDOWN_GRACE:?}; their leases will expire");
    }
    Ok(())
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
