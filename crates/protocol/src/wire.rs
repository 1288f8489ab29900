//! The internal worker API on the wire: paths, headers and bodies, shared by
//! the server's routes (`videogen-api`) and the client (`RemoteControl` in
//! `videogen-worker`), so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::control::{ReleaseCause, RetryOutcome, WorkerInfo};

/// Header carrying the CRC-32 of an uploaded body (checked by the server).
pub const CRC32_HEADER: &str = "x-videogen-crc32";
/// Longest long poll the server grants.
pub const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(30);

/// Paths of the internal worker API, relative to the server's base URL.
pub mod paths {
    use videogen_core::Lease;

    pub const ACQUIRE: &str = "/internal/v1/acquire";
    pub const FLEET: &str = "/internal/v1/fleet";
    /// Route pattern of one attempt's calls (axum syntax).
    pub const ATTEMPT: &str = "/internal/v1/jobs/{id}/attempts/{attempt}";

    /// `/internal/v1/jobs/{id}/attempts/{attempt}/{tail}` for `lease`.
    pub fn attempt(lease: &Lease, tail: &str) -> String {
        format!("/internal/v1/jobs/{}/attempts/{}/{tail}", lease.job_id, lease.attempt)
    }
}

/// Body of an acquire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub worker: WorkerInfo,
    pub wait_ms: u64,
}

/// Body of an event: `{"kind": …, "data": {…}}`, one of the kinds a worker
/// may append (anything else does not parse).
pub type EventRequest = videogen_core::AttemptEvent;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub video_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub cause: ReleaseCause,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryRequest {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryResponse {
    pub outcome: RetryOutcome,
}
