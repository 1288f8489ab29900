//! The scheduler singleton, and wake-ups from other nodes.
//!
//! Several nodes may run the scheduler role; one at a time dispatches, reaps
//! and sweeps: the holder of the store's leader lease ([`SCHEDULER_LEASE`]).
//! It renews the lease every third of its time-to-live and steps down
//! (deactivates its dispatcher) as soon as a renewal is refused, or when
//! failed renewals leave less than a third of the lease; a renewal that
//! does not answer within a third of the lease counts as failed. Correctness never
//! rests on the lease: every lease of a job is a compare-and-set in the
//! store, so two nodes that both believe they lead (a paused process, a
//! skewed clock) can waste a draw but never run a job twice.
//!
//! The same task follows the store's wake-ups ([`Wakeup`]): a job made
//! runnable on another node joins the leader's queue at once, a change wakes
//! this node's SSE streams, and after a reconnect (or every
//! [`RESYNC_EVERY`]) the leader re-reads the queue, so a lost notification
//! delays a job by seconds at most, and never loses it.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use videogen_core::store::{StoreError, Wakeup};

use crate::local::Runtime;

/// Name of the scheduler's leader lease in the store.
pub const SCHEDULER_LEASE: &str = "scheduler";
/// How often the leader re-reads the queue regardless of wake-ups.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// This node's name in the lease (unique per process).
    pub node: String,
    /// The lease's time-to-live; a dead leader is replaced within it.
    pub ttl: Duration,
    /// Whether this node competes for the lease (scheduler roles), or only
    /// follows wake-ups (API nodes).
    pub contend: bool,
}

/// Takes or renews the lease once; activates or deactivates the dispatcher
/// accordingly. `Ok(true)` while this node leads.
pub async fn contend_once(rt: &Runtime, cfg: &LeaderConfig) -> Result<bool, StoreError> {
    let now = rt.clock.now_ms();
    let ttl_ms = i64::try_from(cfg.ttl.as_millis()).unwrap_or(i64::MAX);
    match rt.store.try_lead(SCHEDULER_LEASE, &cfg.node, now, ttl_ms).await? {
        Some(term) => {
            if !rt.dispatcher.is_active() {
                let queued = queued_jobs(rt).await?;
                tracing::info!(node = %cfg.node, term, queued = queued.len(), "this node is the scheduler leader");
                metrics::counter!("videogen_leader_elections_total").increment(1);
                rt.dispatcher.activate(queued);
            }
            metrics::gauge!("videogen_scheduler_leader").set(1.0);
            Ok(true)
        }
        None => {
            step_down(rt, "another node holds the lease");
            Ok(false)
        }
    }
}

fn step_down(rt: &Runtime, why: &str) {
    if rt.dispatcher.is_active() {
        tracing::warn!(why, "no longer the scheduler leader");
        rt.dispatcher.deactivate();
    }
    metrics::gauge!("videogen_scheduler_leader").set(0.0);
}

/// Contends for the lease (if configured) and follows `wakeups` until
/// `shutdown`; then resigns, so another node takes over at once.
pub async fn run(
    rt: Arc<Runtime>,
    cfg: LeaderConfig,
    mut wakeups: Option<mpsc::Receiver<Wakeup>>,
    shutdown: CancellationToken,
) {
    let mut renew = tokio::time::interval(cfg.ttl / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until when the lease is ours for sure, by this node's monotonic clock.
    let mut held_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = renew.tick(), if cfg.contend => {
                let asked = Instant::now();
                // Bounded by a third of the lease, so a store that hangs (a
                // lock, a partition) leaves time to step down before the
                // lease can pass to another node.
                let renewal = tokio::time::timeout(cfg.ttl / 3, contend_once(&rt, &cfg)).await;
                match renewal.unwrap_or_else(|_| Err(StoreError::unavailable("the lease renewal timed out"))) {
                    Ok(true) => held_until = Some(asked + cfg.ttl),
                    Ok(false) => held_until = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader lease renewal failed");
                        if held_until.is_none_or(|t| Instant::now() + cfg.ttl / 3 >= t) {
                            step_down(&rt, "the lease could not be renewed in time");
                            held_until = None;
                        }
                    }
                }
            }
            _ = resync.tick() => resync_queue(&rt).await,
            w = next_wakeup(&mut wakeups) => match w {
                Some(w) => on_wakeup(&rt, w).await,
                None => {
                    tracing::warn!("wake-up listener ended; relying on the periodic re-sync");
                    wakeups = None;
                }
            },
        }
    }
    if cfg.contend && rt.dispatcher.is_active() {
        rt.dispatcher.deactivate();
        if let Err(e) = rt.store.resign(SCHEDULER_LEASE, &cfg.node).await {
            tracing::warn!(error = %e, "could not resign the leader lease; it will expire");
        }
    }
}

async fn next_wakeup(rx: &mut Option<mpsc::Receiver<Wakeup>>) -> Option<Wakeup> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn on_wakeup(rt: &Runtime, w: Wakeup) {
    match w {
        Wakeup::Changed(id) => rt.bus.notify_local(&id),
        Wakeup::Runnable(id) => {
            rt.bus.notify_local(&id);
            if !rt.dispatcher.is_active() {
                return;
            }
            match rt.store.queued_job(&id).await {
                Ok(Some(job)) => rt.dispatcher.enqueue(job),
                Ok(None) => {} // leased, cancelled or deleted since
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "reading a runnable job failed; the re-sync will add it")
                }
            }
        }
        Wakeup::Resync => resync_queue(rt).await,
    }
}

/// Jobs read per page when loading the queue.
const QUEUE_PAGE: u32 = 1000;

/// Every queued job, oldest first, read page by page (each read bounded).
pub async fn queued_jobs(rt: &Runtime) -> Result<Vec<videogen_core::QueuedJob>, StoreError> {
    let mut all: Vec<videogen_core::QueuedJob> = Vec::new();
    loop {
        let page = rt.store.queued_jobs(all.last(), QUEUE_PAGE).await?;
        let done = page.len() < QUEUE_PAGE as usize;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// Adds every queued job the dispatcher lacks (the leader only).
async fn resync_queue(rt: &Runtime) {
    if !rt.dispatcher.is_active() {
        return;
    }
    match queued_jobs(rt).await {
        Ok(jobs) => rt.dispatcher.seed(jobs),
        Err(e) => tracing::warn!(error = %e, "queue re-sync failed"),
    }
}
