//! Domain types and the seams every other videogen crate plugs into.
//!
//! This crate does no I/O. It defines *what* a job is and *which* changes to
//! it are legal; the other crates decide *how* they are stored, scheduled,
//! generated and served.
//!
//! # Layout
//! - [`ids`]: identifiers (`video_…`, tenants, workers) and their parsing rules.
//! - [`spec`]: what a user asked for (size, duration, model, prompt, seed) and its limits.
//! - [`catalog`]: the model registry as the API sees it ([`catalog::ModelCard`]): names, sizes, durations, knobs.
//! - [`tier`]: service tiers and their retention periods.
//! - [`lifecycle`]: the one job state machine; every persisted state change goes through it.
//! - [`job`]: the job record, leases, progress, checkpoints, outputs.
//! - [`event`]: the typed event log (kinds and payloads) every store, worker and SSE reader shares.
//! - [`clock`]: injected time, so tests and the simulator control it.
//! - [`store`]: the store seam, split by concern ([`store::Store`] is all of them).
//! - [`blob`]: the [`blob::BlobStore`] trait (local files, S3) and key layout.
//! - [`moderation`]: the [`moderation::Moderator`] trait (denylist now, full safety later).
//! - [`rate_limit`]: the [`rate_limit::RateLimiter`] seam and its in-memory implementation.
//! - [`secret_url`]: service URLs that may hold credentials, masked wherever shown.

pub mod blob;
pub mod catalog;
pub mod clock;
pub mod event;
pub mod ids;
pub mod job;
pub mod lifecycle;
pub mod moderation;
pub mod rate_limit;
pub mod secret_url;
pub mod spec;
pub mod store;
pub mod tier;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{AttemptEvent, EventKind, EventPayload, JobEvent};
pub use ids::{TenantId, VideoId, WorkerId};
pub use job::{CheckpointRef, Job, JobError, Lease, Outputs, Phase, Progress, QueuedJob};
pub use lifecycle::{IllegalTransition, JobState, RequeueReason, Transition};
pub use spec::{Seconds, SpecError, VideoSize, VideoSpec};
pub use tier::Tier;
