//! `videogen serve`: wires the embedded platform together and runs it.

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_api::layers::ServerLimits;
use videogen_api::{AppState, Limits};
use videogen_control::fleet::FleetStats;
use videogen_control::{Dispatcher, LocalControl, Runtime, RuntimeConfig, housekeeping};
use videogen_core::store::Store;
use videogen_core::{Clock, SystemClock, TenantId, Tier, WorkerId};
use videogen_protocol::{ControlPlane, WorkerInfo};
use videogen_sched::SchedulerConfig;
use videogen_worker::Worker;

use crate::config::{Config, Flags, LogOptions, Role, ServeArgs};
use crate::process::{install_metrics, wait_for_signal};
use videogen_control::leader::{self, LeaderConfig};

/// Tenant of the bootstrap admin key.
const ADMIN_TENANT: &str = "admin";
/// How long a graceful shutdown waits for workers to checkpoint and release.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long in-flight HTTP requests get to finish on shutdown.
const HTTP_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// This node's identity, kept in the data dir so a restart can reclaim the
/// leases its previous incarnation's in-process workers held.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
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
        let hash = videogen_api::auth::hash_key(&secret);
        if store.api_key_by_hash(&hash).await?.is_none()
            && let Err(e) = insert(secret).await
        {
            // Another node starting at the same moment may have inserted it.
            if store.api_key_by_hash(&hash).await?.is_none() {
                return Err(e.into());
            }
        }
    } else if store.list_api_keys(None, 1).await?.is_empty() {
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
            match store.insert_worker_token(&rec).await {
                Ok(()) => tracing::info!(id = %rec.id, "installed the bootstrap worker token"),
                // Another node starting at the same moment may have inserted it.
                Err(_) if store.worker_token_by_hash(&rec.hash).await?.is_some() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(t) if t.revoked_at_ms.is_some() => {
            tracing::warn!(id = %t.id, "VIDEOGEN_WORKER_TOKEN was revoked; workers using it are refused");
        }
        Some(_) => {}
    }
    Ok(())
}

pub async fn run(args: ServeArgs, log: &Flags<LogOptions>) -> anyhow::Result<()> {
    let cfg = Config::load(&args, log)?;
    crate::process::init_logging(cfg.log.log_format);
    let lease_ttl = cfg.server.lease_ttl;
    let housekeeping_interval = cfg.server.housekeeping;
    let retention = cfg.server.retention;
    let plan = Arc::new(crate::worker::plan(
        &cfg.worker,
        &cfg.models,
        &cfg.catalog,
        cfg.server.workers,
    )?);
    if plan.warm_first {
        let p = plan.clone();
        tokio::task::spawn_blocking(move || p.warm_up()).await?;
    }
    let moderator = crate::worker::moderator(&cfg.worker)?;
    let worker_config = crate::worker::worker_config(&cfg.worker);

    let metrics = install_metrics()?;
    // Redis, when configured, fans "job changed" signals out between nodes;
    // PostgreSQL then only announces runnable jobs (see `fanout`).
    let redis = cfg
        .server
        .redis_url
        .as_ref()
        .map(|u| videogen_redis::RedisFanout::connect(u.expose()))
        .transpose()
        .context("--redis-url")?;
    let pg = videogen_store::PgOptions {
        notify_changes: redis.is_none(),
    };
    let any_store = videogen_store::AnyStore::connect(&cfg.storage.database_url, pg)
        .await
        .with_context(|| format!("opening the database {}", cfg.storage.database_url))?;
    let store = any_store.store();
    let blob = cfg.storage.blob_url.open().context("--blob-url")?;
    bootstrap_admin_key(store.as_ref()).await?;
    bootstrap_worker_token(store.as_ref()).await?;
    let node = match &cfg.server.node_id {
        Some(id) => id.clone(),
        None => node_id(&cfg.storage.data_dir)?,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let mut config = RuntimeConfig {
        lease_ttl,
        max_attempts: cfg.server.max_attempts,
        housekeeping_interval,
        retry_backoff: videogen_sched::RetryBackoff {
            base: cfg.server.retry_backoff,
            max: cfg.server.retry_backoff_max,
        },
        dead_letter_checkpoint_retention: cfg.server.dead_letter_checkpoints,
        ..RuntimeConfig::default()
    };
    if let Some(r) = retention {
        config.retention_free = r;
        config.retention_paid = r;
        config.retention_internal = r;
    }
    // Passive until this node wins the scheduler's leader lease (below).
    let dispatcher = Arc::new(Dispatcher::passive(SchedulerConfig::default(), clock.clone()));
    let bus = crate::fanout::bus(redis.as_ref());
    let rt = Arc::new(Runtime {
        store: store.clone(),
        blob: blob.clone(),
        dispatcher: dispatcher.clone(),
        bus: bus.clone(),
        clock: clock.clone(),
        config,
        fleet: Arc::new(FleetStats::default()),
        storage: Default::default(),
    });
    let control: Arc<dyn ControlPlane> = Arc::new(LocalControl::new(rt.clone()));
    let runs_workers = cfg.server.role == Role::All;
    let leader = LeaderConfig {
        node: node.clone(),
        ttl: cfg.server.leader_lease,
        contend: cfg.server.role != Role::Api,
    };

    // Recovery: this node's previous in-process workers are gone; their jobs
    // resume from their last checkpoint.
    if runs_workers {
        let n = housekeeping::reclaim_node(&rt, &node).await?;
        if n > 0 {
            tracing::info!(jobs = n, "reclaimed jobs of this node's previous run");
        }
    }
    // Listen before the first look at the queue, so no job made runnable in
    // between is missed; then try for the lead at once, so a single node
    // dispatches from its first request.
    let wakeups = any_store
        .listen()
        .await
        .context("listening for other nodes' wake-ups")?;
    if leader.contend {
        leader::contend_once(&rt, &leader).await?;
    }

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if runs_workers {
        for (i, engine) in plan.engines.iter().enumerate() {
            let info = WorkerInfo {
                id: WorkerId::new(&node, &format!("w{i}")),
                loaded_models: Vec::new(),
                spot: false,
                memory_class: None,
                model_load_ms: plan.load_ms.unwrap_or(cfg.worker.model_load_ms),
                serves: None,
                models: Vec::new(),
            };
            let w = Worker::new(control.clone(), engine.clone(), info, worker_config.clone());
            tasks.spawn(w.run(shutdown.clone()));
        }
    }
    if leader.contend {
        tasks.spawn(housekeeping::run(rt.clone(), shutdown.clone()));
    }
    tasks.spawn(leader::run(rt.clone(), leader, wakeups, shutdown.clone()));
    tasks.spawn(videogen_control::storage_health::run(
        rt.clone(),
        node.clone(),
        rt.config.storage_probe_interval,
        shutdown.clone(),
    ));
    if let Some(f) = redis {
        tasks.spawn(crate::fanout::relay(f, bus.clone(), shutdown.clone()));
    }

    let state = AppState {
        store: store.clone(),
        blob,
        moderator,
        dispatcher,
        bus,
        clock,
        limits: Limits {
            server: ServerLimits {
                concurrent_requests_max: cfg.server.max_concurrent_requests,
                request_timeout: cfg.server.request_timeout,
                worker_request_timeout: cfg.server.worker_request_timeout,
                sse_streams_max: cfg.server.max_sse_streams,
                sse_streams_per_tenant_max: cfg.server.max_sse_streams_per_tenant,
                connections_max: crate::process::connection_budget(cfg.server.max_connections),
                header_read_timeout: cfg.server.header_read_timeout,
                ..ServerLimits::default()
            },
            decode: videogen_api::decode::DecodeBudget::new(cfg.server.image_decode_mib << 20),
            ..Limits::default()
        },
        catalog: Arc::new(cfg.catalog.clone()),
        fleet: Some(rt.fleet.clone()),
        metrics: Some(metrics),
        poll_after_ms: cfg.server.poll_after_ms,
        control: Some(control),
        downloads: downloads(&cfg),
        submit_limit: submit_limit(&cfg)?,
        readiness: Arc::new(videogen_api::ready::Readiness::new(node.clone())),
    };
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "videogen listening on http://{addr} (role {:?}, {} store, data dir {}, {} worker(s))",
        cfg.server.role,
        any_store.backend(),
        cfg.storage.data_dir.display(),
        if runs_workers { cfg.server.workers } else { 0 }
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
    let _ = tokio::task::spawn_blocking(move || plan.shutdown_hosts()).await;
    Ok(())
}

/// The per-tenant submission limit, counted in Redis when configured (so it
/// holds across API nodes), else on this node.
fn submit_limit(cfg: &Config) -> anyhow::Result<Option<videogen_api::state::SubmitLimit>> {
    let per_minute = cfg.server.rate_limit_per_minute;
    if per_minute == 0 {
        return Ok(None);
    }
    let limiter: Arc<dyn videogen_core::rate_limit::RateLimiter> = match &cfg.server.redis_url {
        Some(u) => Arc::new(videogen_redis::RedisRateLimiter::connect(u.expose()).context("--redis-url")?),
        None => Arc::new(videogen_core::rate_limit::LocalRateLimiter::new()),
    };
    Ok(Some(videogen_api::state::SubmitLimit { limiter, per_minute }))
}

/// How downloads are handed out (see [`videogen_api::state::Downloads`]).
fn downloads(cfg: &Config) -> videogen_api::state::Downloads {
    videogen_api::state::Downloads {
        redirect: cfg.server.download_redirect,
        ttl: cfg.server.signed_url_ttl,
        signing_key: cfg
            .server
            .url_signing_key
            .as_ref()
            .map(|k| Arc::from(secrecy::ExposeSecret::expose_secret(k).as_bytes())),
        public_base_url: cfg.server.public_url.clone(),
    }
}

/// `videogen migrate`: opens the configured database, which applies any
/// missing migration (under a lock, so it is safe beside running nodes).
pub async fn migrate(args: ServeArgs, log: &Flags<LogOptions>) -> anyhow::Result<()> {
    let cfg = Config::load(&args, log)?;
    let url = &cfg.storage.database_url;
    let store = videogen_store::AnyStore::connect(url, videogen_store::PgOptions::default())
        .await
        .with_context(|| format!("migrating {url}"))?;
    println!("{} database {url} is up to date", store.backend());
    Ok(())
}
