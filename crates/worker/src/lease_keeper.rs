//! Keeps one lease alive while its job runs.
//!
//! The runner publishes progress into a `watch` channel and never blocks on
//! the control plane for it; this task writes it as heartbeats (at most every
//! [`PROGRESS_MIN_INTERVAL`], and at least every TTL/3 so the lease never
//! lapses while the job is healthy). When the control plane says the lease
//! is stale (cancelled, or reclaimed by another attempt) it fires `lost`, and
//! when it asks for the job back it fires `release`; the runner checks both at
//! every step boundary.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use videogen_core::{Lease, Progress};

use videogen_protocol::{ControlError, ControlPlane, Directive};

/// Progress writes are coalesced to at most one per this interval.
pub const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(200);

pub struct LeaseKeeper {
    progress: watch::Sender<Progress>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What the keeper signals to the attempt.
#[derive(Clone, Default)]
pub struct Signals {
    /// The lease is gone (cancelled, or another attempt owns the job): stop.
    pub lost: CancellationToken,
    /// Fired before `lost` when the control plane said why: the job was
    /// cancelled (rather than given to another attempt).
    pub cancelled: CancellationToken,
    /// The control plane asks for a checkpoint and the job back.
    pub release: CancellationToken,
}

impl LeaseKeeper {
    /// Starts heart-beating `lease` every `ttl / 3` (and on progress).
    pub fn spawn(
        control: Arc<dyn ControlPlane>,
        lease: Lease,
        ttl: Duration,
        initial: Progress,
        signals: Signals,
    ) -> Self {
        let (tx, mut rx) = watch::channel(initial);
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let renew_every = (ttl / 3).max(Duration::from_millis(50));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(renew_every) => {}
                }
                let p = *rx.borrow_and_update();
                match control.heartbeat(&lease, &p).await {
                    Ok(reply) => match reply.directive {
                        Directive::Continue => {}
                        Directive::Release => signals.release.cancel(),
                        Directive::Cancel => {
                            signals.cancelled.cancel();
                            signals.lost.cancel();
                            break;
                        }
                    },
                    Err(ControlError::Stale { .. }) => {
                        signals.lost.cancel();
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
