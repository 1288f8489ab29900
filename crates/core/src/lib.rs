//! Domain types and the seams every other videogen crate plugs into.
//!
//! This crate does no I/O. It defines *what* a job is and *which* changes to
//! it are legal; the other crates decide *how* they are stored, scheduled,
//! generated and served.
//!
//! # Layout
//! - [`ids`]: identifiers (`video_…`, tenants, workers) and their parsing rules.
//! - [`spec`]: what a user asked for (size, duration, model, prompt, seed) and its limits.
//! - [`tier`]: service tiers and their retention periods.
//! - [`lifecycle`]: the one job state machine; every persisted state change goes through it.
//! - [`job`]: the job record, leases, progress, checkpoints, outputs, events.
//! - [`clock`]: injected time, so tests and the simulator control it.
//! - [`store`]: the [`store::Store`] trait (SQLite now, PostgreSQL later).
//! - [`blob`]: the [`blob::BlobStore`] trait (local files now, S3 later) and key layout.
//! - [`moderation`]: the [`moderation::Moderator`] trait (denylist now, full safety later).
//! - [`rate_limit`]: the [`rate_limit::RateLimiter`] seam and its in-memory implementation.

pub mod blob;
pub mod clock;
pub mod ids;
pub mod job;
pub mod lifecycle;
pub mod moderation;
pub mod rate_limit;
pub mod spec;
pub mod store;
pub mod tier;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::{TenantId, VideoId, WorkerId};
pub use job::{CheckpointRef, Job, JobError, JobEvent, Lease, Outputs, Phase, Progress, QueuedJob};
pub use lifecycle::{IllegalTransition, JobState, RequeueReason, Transition};
pub use spec::{Seconds, SpecError, VideoSize, VideoSpec};
pub use tier::Tier;
