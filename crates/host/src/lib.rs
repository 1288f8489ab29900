//! Real models for videogen: supervised **model-host** processes (the
//! Python package `python/videogen_host` runs diffusers pipelines for Wan,
//! LTX-Video, CogVideoX and HunyuanVideo one denoising step at a time) behind
//! the [`videogen_model::Model`] seam, so leases, heartbeats, progress,
//! checkpoints and preemption stay one code path for every model.
//!
//! The protocol is docs/MODEL_HOST.md. A host runs in its own process (a
//! CUDA fault or an OOM kill takes down only the host; the worker keeps its
//! leases and starts a new one) and talks over a Unix socket (the host's
//! stdout and stderr are for its logs, which the worker forwards).
//!
//! # Layout
//! - [`wire`]: the frame (`VGH1`, JSON header, raw payload) and its bounds.
//! - `conn`: one host process: spawn, handshake, calls, kill on drop.
//! - [`host`](mod@host): [`Host`], the supervisor: start on demand, restart with backoff,
//!   idle health checks, models loaded in LRU order under a memory budget.
//! - [`model`]: [`HostedModel`] / its generation, the `Model` seam over a host.
//! - [`error`]: [`HostError`] and how each failure reads as a `ModelError`.

mod conn;
pub mod error;
pub mod host;
pub mod model;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub use error::HostError;
pub use host::Host;
pub use model::HostedModel;

/// The protocol version this worker speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// How to run one host process.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Name in logs, e.g. `gpu0`.
    pub name: String,
    /// The interpreter (a virtualenv's `python`).
    pub program: PathBuf,
    /// Arguments before `--connect <socket>`: `["-m", "videogen_host"]`.
    pub args: Vec<String>,
    /// Extra environment (e.g. `VIDEOGEN_HOST_THREADS`).
    pub env: Vec<(String, String)>,
    /// `CUDA_VISIBLE_DEVICES` for the process; `None` on a CPU host.
    pub gpus: Option<String>,
    /// `cuda` or `cpu` (`VIDEOGEN_HOST_DEVICE`).
    pub device: String,
    /// GPU memory the host's models may use together; loading past it
    /// evicts the least recently used. `None`: no limit.
    pub memory_budget_bytes: Option<u64>,
    pub start_timeout: Duration,
    pub load_timeout: Duration,
    /// Longest one denoising step (or a resume) may take.
    pub step_timeout: Duration,
    /// Everything else (checkpoint, each decoded frame, cancel, unload).
    pub op_timeout: Duration,
    /// First wait before a crashed host is started again; it doubles with
    /// each crash in a row, up to a minute.
    pub restart_backoff: Duration,
    /// Idle health-check period; zero disables the checker.
    pub health_interval: Duration,
    pub health_timeout: Duration,
    /// Largest payload accepted from the host.
    pub max_payload_bytes: u64,
}

impl HostConfig {
    /// A CPU host run by `program -m videogen_host`, with production timeouts.
    pub fn python(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: vec!["-m".into(), "videogen_host".into()],
            env: Vec::new(),
            gpus: None,
            device: "cpu".into(),
            memory_budget_bytes: None,
            start_timeout: Duration::from_secs(120),
            load_timeout: Duration::from_secs(1800),
            step_timeout: Duration::from_secs(600),
            op_timeout: Duration::from_secs(300),
            restart_backoff: Duration::from_secs(1),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(10),
            max_payload_bytes: 4 << 30,
        }
    }
}

/// One registry entry as a host loads it.
#[derive(Debug, Clone)]
pub struct HostedSpec {
    /// What the API knows of it (id, sizes, styles, knobs).
    pub card: videogen_core::catalog::ModelCard,
    /// The host's adapter: `wan`, `ltx`, `cogvideox`, `hunyuan`, `noop`.
    pub adapter: String,
    /// The diffusers model directory.
    pub path: PathBuf,
    /// `"bfloat16"`, `"float16"` or `"float32"`, or per component
    /// (`{"default": "bfloat16", "vae": "float32"}`), as `load` takes it.
    pub dtype: serde_json::Value,
    /// GPU memory it needs loaded, from the registry (for eviction).
    pub memory_bytes: u64,
}
