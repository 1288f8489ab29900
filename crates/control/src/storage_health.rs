//! Whether the node's blob store takes writes, and dispatch paused while it
//! does not.
//!
//! A full disk or an unreachable bucket is not the job's fault: an attempt
//! that cannot write its outputs gives the job back uncharged (see the
//! worker runner), and starting more attempts could only fail the same way.
//! So the first output write that fails for a retryable reason
//! ([`BlobError::is_retryable`]; a checkpoint is optional and does not count)
//! pauses dispatch (reason `blob_store_unwritable`, in `/readyz` and
//! `videogen_dispatch_paused`), and [`run`] probes the store, with the size of
//! the write that failed, until a probe goes through; then dispatch resumes
//! and the queued jobs run. Nothing is lost or dead-lettered in between.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use videogen_core::blob::{BlobError, keys};

use crate::local::Runtime;

/// The dispatcher's pause reason while writes fail.
pub const PAUSE_REASON: &str = "blob_store_unwritable";
/// A probe is at least this large, so a nearly full disk does not pass it.
const PROBE_MIN_BYTES: u64 = 64 * 1024;
/// And at most this large, whatever failed.
const PROBE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The last failure of a blob write, while it stands.
#[derive(Debug, Default)]
pub struct StorageHealth {
    failing: Mutex<Option<Failing>>,
}

#[derive(Debug, Clone)]
struct Failing {
    detail: String,
    /// Size of the largest write that failed: the probe writes as much.
    bytes: u64,
}

impl StorageHealth {
    /// Records a failed write of `bytes`. A retryable failure of a write
    /// the attempt needs (`required`: an output) pauses dispatch; a later
    /// success proves nothing about larger writes, so only a probe of this
    /// size lifts it. A failed checkpoint is only counted: the attempt goes
    /// on without it, and pausing for it would stop jobs that could finish.
    pub fn write_failed(&self, rt: &Runtime, bytes: u64, e: &BlobError, required: bool) {
        if !e.is_retryable() {
            return;
        }
        metrics::counter!("videogen_blob_write_failures_total", "required" => if required { "true" } else { "false" })
            .increment(1);
        if !required {
            return;
        }
        let detail = e.to_string();
        {
            let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
            let bytes = f.as_ref().map_or(bytes, |old| old.bytes.max(bytes));
            *f = Some(Failing {
                detail: detail.clone(),
                bytes,
            });
        }
        rt.dispatcher.pause(PAUSE_REASON, &detail);
    }

    /// Whether writes are failing now (and why).
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|f| f.detail.clone())
    }

    fn probe_bytes(&self) -> Option<u64> {
        let f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        f.as_ref().map(|f| f.bytes.clamp(PROBE_MIN_BYTES, PROBE_MAX_BYTES))
    }

    fn recovered(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Probes a failing store every `interval` (and does nothing while writes
/// succeed) until `shutdown`.
pub async fn run(rt: Arc<Runtime>, node: String, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        probe_once(&rt, &node).await;
    }
}

/// One probe, if writes are failing; true when the store took it (and
/// dispatch resumed).
pub async fn probe_once(rt: &Runtime, node: &str) -> bool {
    let Some(size) = rt.storage.probe_bytes() else {
        return false;
    };
    let key = keys::write_probe(node);
    let body = bytes::Bytes::from(vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)]);
    match rt.blob.put(&key, body).await {
        Ok(()) => {
            if let Err(e) = rt.blob.delete(&key).await {
                tracing::warn!(key, error = %e, "could not delete the write probe");
            }
            rt.storage.recovered();
            rt.dispatcher.resume(PAUSE_REASON);
            tracing::info!(bytes = size, "blob store takes writes again");
            true
        }
        Err(e) => {
            tracing::debug!(bytes = size, error = %e, "blob store still refuses writes");
            false
        }
    }
}
