//! Shared state of the HTTP layer and its limits.

use std::sync::Arc;
use std::time::Duration;
use videogen_control::{Dispatcher, JobBus};
use videogen_core::Clock;
use videogen_core::blob::BlobStore;
use videogen_core::moderation::Moderator;
use videogen_core::store::Store;
use videogen_protocol::ControlPlane;

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
    /// Memory for decoding input images, shared by the node's requests.
    pub decode: crate::decode::DecodeBudget,
    /// Concurrency, deadlines and open streams of the server as a whole.
    pub server: crate::layers::ServerLimits,
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
            decode: crate::decode::DecodeBudget::default(),
            server: crate::layers::ServerLimits::default(),
        }
    }
}

/// How `GET /v1/videos/{id}/content` hands out bytes.
///
/// With `redirect` on, the API answers `302 Found` to a short-lived signed
/// URL, so large downloads bypass the API nodes: the blob store's own URL
/// where it signs them (S3), else the API's `/files/{key}` route signed with
/// `signing_key`. With neither, or `redirect` off (the default), the API
/// streams the bytes itself.
#[derive(Clone)]
pub struct Downloads {
    pub redirect: bool,
    /// How long a signed URL stays valid (S3 allows at most 7 days).
    pub ttl: Duration,
    /// HMAC-SHA256 key of `/files` URLs; `None` disables that route. Keep it
    /// secret and the same on every API node: it is the only credential.
    pub signing_key: Option<Arc<[u8]>>,
    /// Absolute origin put in front of `/files/...` (e.g.
    /// `https://videos.example.com`); `None` gives a relative `Location`.
    pub public_base_url: Option<String>,
}

impl Default for Downloads {
    fn default() -> Self {
        Self {
            redirect: false,
            ttl: Duration::from_secs(15 * 60),
            signing_key: None,
            public_base_url: None,
        }
    }
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("redirect", &self.redirect)
            .field("ttl", &self.ttl)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "***"))
            .field("public_base_url", &self.public_base_url)
            .finish()
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
    /// The model registry: what requests may name (ids and aliases), the
    /// sizes, durations and knobs of each; the first is the default.
    pub catalog: Arc<videogen_core::catalog::Catalog>,
    /// The fleet as this node's control plane sees it (`/v1/models`);
    /// `None` on a node that runs no control plane.
    pub fleet: Option<Arc<videogen_control::fleet::FleetStats>>,
    /// Renders `/metrics`; `None` disables the endpoint.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Poll hint for SDK pollers (`openai-poll-after-ms`).
    pub poll_after_ms: u64,
    /// The control plane the internal worker API serves; `None` disables it.
    pub control: Option<Arc<dyn ControlPlane>>,
    /// Redirects to signed download URLs; off by default.
    pub downloads: Downloads,
    /// Per-tenant limit on submissions; `None`: unlimited.
    pub submit_limit: Option<SubmitLimit>,
    /// `/readyz`'s write probe of this node.
    pub readiness: Arc<crate::ready::Readiness>,
}

/// At most `per_minute` submissions per tenant per minute, counted by
/// `limiter` (shared by every API node through Redis when configured).
#[derive(Clone)]
pub struct SubmitLimit {
    pub limiter: Arc<dyn videogen_core::rate_limit::RateLimiter>,
    pub per_minute: u32,
}
