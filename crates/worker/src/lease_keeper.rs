//! Keeps one lease alive while its job runs.
//!
//! The runner publishes progress into a `watch` channel and never blocks on
//! the store for it; this task writes it as heartbeats (at most every
//! [`PROGRESS_MIN_INTERVAL`], and at least every TTL/3 so the lease never
//! lapses while the job is healthy). When the store says the lease is stale
//! (cancelled, or reclaimed by another attempt) it fires `lost`, which the
//! runner checks at every step boundary.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use videogen_core::store::{Store, StoreError};
use videogen_core::{Clock, Lease, Progress};

use crate::bus::JobBus;

/// Progress writes are coalesced to at most one per this interval.
pub const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(200);

pub struct LeaseKeeper {
    progress: watch::Sender<Progress>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts heart-beating `lease`. `lost` fires if the lease is lost.
    pub fn spawn(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        bus: JobBus,
        lease: Lease,
        ttl: Duration,
        initial: Progress,
        lost: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = watch::channel(initial);
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let renew_every = (ttl / 3).max(Duration::from_millis(50));
        let task = tokio::spawn(async move {
            let mut last_written: Option<Progress> = None;
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(renew_every) => {}
                }
                let p = *rx.borrow_and_update();
                match store.heartbeat(&lease, &p, clock.now_ms(), ttl_ms).await {
                    Ok(_) => {
                        if last_written.map(|l| (l.phase, l.percent)) != Some((p.phase, p.percent)) {
                            bus.notify(&lease.job_id);
                        }
                        last_written = Some(p);
                    }
                    Err(StoreError::StaleLease { .. } | StoreError::NotFound(_)) => {
                        lost.cancel();
                        break;
                    }
                    Err(e) => tracing::warn!(job = %lease.job_id, error = %e, "heartbeat failed; will retry"),
                }
                // Coalesce bursts of progress into one write per interval.
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tokio::time::sleep(PROGRESS_MIN_INTERVAL) => {}
                }
            }
        });
        Self {
            progress: tx,
            stop,
            task,
        }
    }

    /// Publishes new progress (never blocks).
    pub fn report(&self, p: Progress) {
        self.progress.send_replace(p);
    }

    pub fn current(&self) -> Progress {
        *self.progress.borrow()
    }

    /// A cloneable handle for reporting from blocking code.
    pub fn reporter(&self) -> watch::Sender<Progress> {
        self.progress.clone()
    }

    /// Stops heart-beating and waits for the task to end, so no heartbeat
    /// races the caller's final (fenced) write.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
