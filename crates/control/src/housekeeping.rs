//! Background duties of a server node.
//!
//! - The reaper re-queues jobs whose lease expired (their worker died or
//!   stalled) so they resume elsewhere from their last checkpoint, or
//!   dead-letters them once `max_attempts` is spent.
//! - The sweeper applies retention: completed videos past `expires_at` become
//!   `expired` and their bytes are deleted; the content endpoint then says so.
//!   Dead letters keep their checkpoints for
//!   `dead_letter_checkpoint_retention` (a re-drive within it resumes), then
//!   those go too.
//! - The orphan sweep ([`crate::orphans`]) walks one shard of the blob store
//!   per pass for bytes no job wants (a full cycle every 256 passes).

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use videogen_core::VideoId;
use videogen_core::blob::{BlobStore, keys};
use videogen_core::store::Reclaimed;

use crate::fleet::Loss;
use crate::local::Runtime;

/// Expired jobs handled per sweep, so one sweep stays short.
const SWEEP_BATCH: u32 = 256;

/// Runs the reaper and the sweeper every `housekeeping_interval` until `shutdown`.
pub async fn run(rt: Arc<Runtime>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(rt.config.housekeeping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shard: u8 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only the scheduler leader reaps and sweeps (see `leader`).
        if !rt.dispatcher.is_active() {
            continue;
        }
        if let Err(e) = reap(&rt).await {
            tracing::warn!(error = %e, "reaper pass failed");
        }
        if let Err(e) = sweep(&rt).await {
            tracing::warn!(error = %e, "retention sweep failed");
        }
        if let Err(e) = sweep_dead_letter_checkpoints(&rt).await {
            tracing::warn!(error = %e, "dead-letter checkpoint sweep failed");
        }
        if let Err(e) = crate::orphans::sweep_shard(&rt, shard, rt.clock.now_ms()).await {
            tracing::warn!(shard, error = %e, "orphan sweep failed");
        }
        shard = shard.wrapping_add(1);
        rt.fleet.publish_workers(rt.clock.now_ms());
    }
}

/// Expired leases reclaimed per store call; a pass calls again while a
/// call comes back full.
pub const REAP_BATCH: u32 = 256;

/// One reaper pass; returns how many jobs it touched.
pub async fn reap(rt: &Runtime) -> Result<usize, videogen_core::store::StoreError> {
    let now = rt.clock.now_ms();
    let mut touched = 0;
    loop {
        let reclaimed = rt
            .store
            .reclaim_expired(now, rt.config.max_attempts, REAP_BATCH)
            .await?;
        let full = reclaimed.len() == REAP_BATCH as usize;
        for r in &reclaimed {
            let id = match r {
                Reclaimed::Requeued(q) => &q.id,
                Reclaimed::DeadLettered(id) => id,
            };
            rt.fleet.lost(id, Loss::LeaseExpired, now);
        }
        touched += apply_reclaimed(rt, reclaimed, "lease_expired");
        if !full {
            return Ok(touched);
        }
    }
}

/// Re-queues every job leased by a worker of `node` (it restarted, so its
/// in-process workers are gone), page by page; how many jobs it touched.
pub async fn reclaim_node(rt: &Runtime, node: &str) -> Result<usize, videogen_core::store::StoreError> {
    let mut touched = 0;
    loop {
        let now = rt.clock.now_ms();
        let reclaimed = rt
            .store
            .reclaim_node(node, now, rt.config.max_attempts, REAP_BATCH)
            .await?;
        let full = reclaimed.len() == REAP_BATCH as usize;
        touched += apply_reclaimed(rt, reclaimed, "node_restarted");
        if !full {
            return Ok(touched);
        }
    }
}

/// Hands reclaimed jobs back to the scheduler and counts them.
pub fn apply_reclaimed(rt: &Runtime, reclaimed: Vec<Reclaimed>, reason: &'static str) -> usize {
    let n = reclaimed.len();
    for r in reclaimed {
        match r {
            // The store logged each one.
            Reclaimed::Requeued(q) => {
                metrics::counter!("videogen_requeued_total", "reason" => reason).increment(1);
                rt.bus.notify(&q.id);
                rt.dispatcher.enqueue(q);
            }
            Reclaimed::DeadLettered(id) => {
                metrics::counter!("videogen_dead_letter_total").increment(1);
                rt.bus.notify(&id);
            }
        }
    }
    n
}

/// Deletes every byte a job owns (outputs, checkpoints, input), for
/// `reason` (a metric label: `deleted`, `cancelled`, `failed`, `expired`).
/// A failure only leaves garbage, which the orphan sweep removes later.
pub async fn delete_bytes(blob: &dyn BlobStore, id: &VideoId, reason: &'static str) {
    for prefix in keys::job_prefixes(id) {
        if let Err(e) = blob.delete_prefix(&prefix).await {
            tracing::warn!(job = %id, reason, error = %e, "could not delete a job's bytes");
        }
    }
    metrics::counter!("videogen_job_bytes_deleted_total", "reason" => reason).increment(1);
}

/// Deletes the checkpoints of dead letters older than their retention,
/// a batch per pass; returns how many dead letters it cleared.
pub async fn sweep_dead_letter_checkpoints(rt: &Runtime) -> Result<usize, videogen_core::store::StoreError> {
    let retention = i64::try_from(rt.config.dead_letter_checkpoint_retention.as_millis()).unwrap_or(i64::MAX);
    let before = rt.clock.now_ms().saturating_sub(retention);
    let stale = rt.store.stale_dead_letter_checkpoints(before, SWEEP_BATCH).await?;
    let mut cleared = 0;
    for id in &stale {
        let [_, checkpoints, _] = keys::job_prefixes(id);
        if let Err(e) = rt.blob.delete_prefix(&checkpoints).await {
            tracing::warn!(job = %id, error = %e, "could not delete a dead letter's checkpoints");
            continue;
        }
        if rt.store.forget_dead_letter_checkpoints(id).await? {
            cleared += 1;
        }
    }
    if cleared > 0 {
        tracing::info!(
            jobs = cleared,
            "dead letters' checkpoints deleted after their retention"
        );
        metrics::counter!("videogen_dead_letter_checkpoints_deleted_total").increment(cleared as u64);
    }
    Ok(cleared)
}

/// One retention pass; returns how many videos expired.
pub async fn sweep(rt: &Runtime) -> Result<usize, videogen_core::store::StoreError> {
    let now = rt.clock.now_ms();
    let expired = rt.store.expire_due(now, SWEEP_BATCH).await?;
    for job in &expired {
        delete_bytes(rt.blob.as_ref(), &job.id, "expired").await;
        metrics::counter!("videogen_videos_expired_total").increment(1);
        rt.bus.notify(&job.id);
    }
    Ok(expired.len())
}
