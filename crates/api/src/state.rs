//! Shared state of the HTTP layer and its limits.

use std::sync::Arc;
use videogen_core::Clock;
use videogen_core::blob::BlobStore;
use videogen_core::moderation::Moderator;
use videogen_core::store::Store;
use videogen_worker::{ControlPlane, Dispatcher, JobBus};

/// Bounds on every input. Names carry their unit last.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole request body (multipart included).
    pub body_bytes_max: usize,
    /// Encoded input reference image.
    pub image_bytes_max: usize,
    /// Each side of a decoded input reference image.
    pub image_side_px_max: u32,
    pub idempotency_key_chars_max: usize,
    pub list_limit_max: u32,
    pub list_limit_default: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 12 * 1024 * 1024,
            image_bytes_max: 10 * 1024 * 1024,
            image_side_px_max: 4096,
            idempotency_key_chars_max: 255,
            list_limit_max: 100,
            list_limit_default: 20,
        }
    }
}

/// Everything handlers need.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub blob: Arc<dyn BlobStore>,
    pub moderator: Arc<dyn Moderator>,
    pub dispatcher: Arc<Dispatcher>,
    pub bus: JobBus,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// Models this deployment serves; the first is the default.
    pub models: Vec<String>,
    /// Denoising steps given to new jobs.
    pub default_steps: u32,
    /// Renders `/metrics`; `None` disables the endpoint.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Poll hint for SDK pollers (`openai-poll-after-ms`).
    pub poll_after_ms: u64,
    /// The control plane the internal worker API serves; `None` disables it.
    pub control: Option<Arc<dyn ControlPlane>>,
}
