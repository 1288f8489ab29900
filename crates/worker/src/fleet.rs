//! Fleet figures the control plane derives from what it sees: how often busy
//! workers get preempted (published to workers for the adaptive checkpoint
//! interval) and how long a preempted job takes to run again.
//!
//! Per node and in memory: a restart starts again from the estimator's prior,
//! which is the right answer for a fleet nobody has observed yet.

use std::collections::HashMap;
use std::sync::Mutex;
use videogen_core::VideoId;

use crate::checkpoint_policy::PreemptionRateEstimator;

/// Jobs remembered between "lost" and "leased again"; beyond this the oldest
/// are forgotten (a job cancelled while re-queued never leases again).
const MAX_TRACKED: usize = 100_000;

/// How a running attempt was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The worker had notice: it checkpointed and released the job.
    Graceful,
    /// The lease expired: the worker died, froze or lost the network.
    LeaseExpired,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Graceful => "graceful",
            Loss::LeaseExpired => "lease_expired",
        }
    }
}

#[derive(Default)]
struct Inner {
    estimator: PreemptionRateEstimator,
    leased_at_ms: HashMap<VideoId, i64>,
    lost_at_ms: HashMap<VideoId, i64>,
}

#[derive(Default)]
pub struct FleetStats {
    inner: Mutex<Inner>,
}

impl FleetStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job was leased: if it had been lost, its recovery is complete.
    pub fn leased(&self, job: &VideoId, now_ms: i64) {
        let mut inner = self.inner();
        if let Some(lost) = inner.lost_at_ms.remove(job) {
            let secs = (now_ms - lost).max(0) as f64 / 1000.0;
            metrics::histogram!("videogen_preemption_recovery_seconds").record(secs);
        }
        bounded_insert(&mut inner.leased_at_ms, job.clone(), now_ms);
    }

    /// An attempt ended normally (completed, failed, retried): its time
    /// counts as exposure to preemption that did not happen.
    pub fn ended(&self, job: &VideoId, now_ms: i64) {
        let mut inner = self.inner();
        end(&mut inner, job, now_ms);
    }

    /// An attempt was preempted.
    pub fn lost(&self, job: &VideoId, how: Loss, now_ms: i64) {
        metrics::counter!("videogen_preemptions_total", "kind" => how.as_str()).increment(1);
        if how == Loss::LeaseExpired {
            metrics::counter!("videogen_lease_expirations_total").increment(1);
        }
        let mut inner = self.inner();
        end(&mut inner, job, now_ms);
        inner.estimator.record_preemption(now_ms);
        bounded_insert(&mut inner.lost_at_ms, job.clone(), now_ms);
    }

    /// Smoothed mean time between preemptions of one busy worker.
    pub fn mtbf_secs(&self, now_ms: i64) -> f64 {
        self.inner().estimator.mtbf(now_ms).as_secs_f64()
    }
}

fn end(inner: &mut Inner, job: &VideoId, now_ms: i64) {
    if let Some(start) = inner.leased_at_ms.remove(job) {
        let secs = (now_ms - start).max(0) as f64 / 1000.0;
        inner.estimator.record_exposure(secs, now_ms);
    }
}

fn bounded_insert(map: &mut HashMap<VideoId, i64>, job: VideoId, at_ms: i64) {
    if map.len() >= MAX_TRACKED
        && let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(job, at_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preemptions_shorten_the_published_mtbf() {
        let quiet = FleetStats::default();
        let busy = FleetStats::default();
        let hour_ms = 3_600_000;
        for i in 0..50 {
            let id = VideoId::generate();
            let t = i * 60_000;
            quiet.leased(&id, t);
            quiet.ended(&id, t + 60_000);
            busy.leased(&id, t);
            busy.lost(&id, Loss::LeaseExpired, t + 60_000);
        }
        assert!(busy.mtbf_secs(hour_ms) < quiet.mtbf_secs(hour_ms) / 5.0);
        assert!(busy.mtbf_secs(hour_ms).is_finite() && busy.mtbf_secs(hour_ms) > 0.0);
    }
}
