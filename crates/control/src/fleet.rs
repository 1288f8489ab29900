//! Fleet figures the control plane derives from what it sees: how often busy
//! workers get preempted (published to workers for the adaptive checkpoint
//! interval) and how long a preempted job takes to run again.
//!
//! Per node and in memory: a restart starts again from the estimator's prior,
//! which is the right answer for a fleet nobody has observed yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use videogen_core::{VideoId, WorkerId};
use videogen_protocol::{ModelReport, ModelState, WorkerInfo};

use videogen_sched::checkpoint::PreemptionRateEstimator;

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

/// A worker is forgotten after this long without a call.
const WORKER_SILENCE_MS: i64 = 60_000;

#[derive(Default)]
struct Inner {
    estimator: PreemptionRateEstimator,
    leased_at_ms: HashMap<VideoId, i64>,
    lost_at_ms: HashMap<VideoId, i64>,
    workers: HashMap<WorkerId, Seen>,
    /// Which worker runs each leased job (heartbeats name the job, not the worker).
    job_worker: HashMap<VideoId, WorkerId>,
}

/// What the control plane last saw of a worker.
struct Seen {
    at_ms: i64,
    busy: bool,
    /// Models it has loaded.
    models: Vec<String>,
    /// What it reported about each of its models.
    reports: Vec<ModelReport>,
    /// Its current attempt: when it was leased and its last progress percent.
    leased_at_ms: i64,
    percent: u8,
}

/// One model across the workers that reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetModel {
    /// Workers with it loaded.
    pub warm: Vec<String>,
    /// Workers that can load it.
    pub cold: Vec<String>,
    /// Workers where it failed to load, with why.
    pub unavailable: Vec<(String, String)>,
    pub weights_hash: Option<String>,
}

/// A busy worker's remaining time is only extrapolated from this much progress.
const MIN_PERCENT_TO_EXTRAPOLATE: u8 = 5;

#[derive(Default)]
pub struct FleetStats {
    inner: Mutex<Inner>,
}

impl FleetStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker asks for work (idle) with these models loaded.
    pub fn polling(&self, worker: &WorkerInfo, now_ms: i64) {
        let seen = Seen {
            at_ms: now_ms,
            busy: false,
            models: worker.loaded_models.clone(),
            reports: worker.models.clone(),
            leased_at_ms: now_ms,
            percent: 0,
        };
        self.inner().workers.insert(worker.id.clone(), seen);
    }

    /// Each model some worker reported, with who has it warm, cold or
    /// unavailable (workers silent for a minute are forgotten).
    pub fn models(&self, now_ms: i64) -> BTreeMap<String, FleetModel> {
        let inner = self.inner();
        let mut out: BTreeMap<String, FleetModel> = BTreeMap::new();
        for (id, seen) in &inner.workers {
            if now_ms - seen.at_ms > WORKER_SILENCE_MS {
                continue;
            }
            for r in &seen.reports {
                let m = out.entry(r.id.clone()).or_default();
                match r.state {
                    ModelState::Warm => m.warm.push(id.to_string()),
                    ModelState::Cold => m.cold.push(id.to_string()),
                    ModelState::Unavailable => m
                        .unavailable
                        .push((id.to_string(), r.error.clone().unwrap_or_default())),
                }
                if m.weights_hash.is_none() {
                    m.weights_hash.clone_from(&r.weights_hash);
                }
            }
        }
        for m in out.values_mut() {
            m.warm.sort();
            m.cold.sort();
            m.unavailable.sort();
        }
        out
    }

    /// A job's attempt reported in: its worker is alive, busy, this far along.
    pub fn heartbeat(&self, job: &VideoId, percent: u8, now_ms: i64) {
        let mut inner = self.inner();
        if let Some(w) = inner.job_worker.get(job).cloned()
            && let Some(seen) = inner.workers.get_mut(&w)
        {
            seen.at_ms = now_ms;
            seen.busy = true;
            seen.percent = percent.min(100);
        }
    }

    /// How soon a busy worker with `model` loaded is expected to be free, if
    /// within `within_ms`: extrapolated from its attempt's progress so far.
    /// `None` when no warm worker is expected that soon (or nobody can tell).
    pub fn warm_free_within(&self, model: &str, within_ms: i64, now_ms: i64) -> Option<i64> {
        let inner = self.inner();
        inner
            .workers
            .values()
            .filter(|s| s.busy && s.models.iter().any(|m| m == model))
            .filter(|s| s.percent >= MIN_PERCENT_TO_EXTRAPOLATE)
            .map(|s| {
                let elapsed = (now_ms - s.leased_at_ms).max(0);
                elapsed * i64::from(100 - s.percent) / i64::from(s.percent)
            })
            .filter(|&remaining| remaining <= within_ms)
            .min()
    }

    /// Sets `videogen_workers{state, warmth}` and forgets silent workers.
    pub fn publish_workers(&self, now_ms: i64) {
        let mut inner = self.inner();
        inner.workers.retain(|_, s| now_ms - s.at_ms <= WORKER_SILENCE_MS);
        let mut counts = [[0u32; 2]; 2];
        for s in inner.workers.values() {
            counts[usize::from(s.busy)][usize::from(!s.models.is_empty())] += 1;
        }
        for (b, state) in ["idle", "busy"].into_iter().enumerate() {
            for (w, warmth) in ["cold", "warm"].into_iter().enumerate() {
                metrics::gauge!("videogen_workers", "state" => state, "warmth" => warmth).set(f64::from(counts[b][w]));
            }
        }
    }

    /// A job was leased by `worker`: if it had been lost, its recovery is complete.
    pub fn leased(&self, job: &VideoId, worker: &WorkerId, now_ms: i64) {
        let mut inner = self.inner();
        if let Some(seen) = inner.workers.get_mut(worker) {
            seen.busy = true;
            seen.at_ms = now_ms;
            seen.leased_at_ms = now_ms;
            seen.percent = 0;
        }
        bounded_insert_worker(&mut inner.job_worker, job.clone(), worker.clone());
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
    if let Some(w) = inner.job_worker.remove(job)
        && let Some(seen) = inner.workers.get_mut(&w)
    {
        seen.busy = false;
    }
    if let Some(start) = inner.leased_at_ms.remove(job) {
        let secs = (now_ms - start).max(0) as f64 / 1000.0;
        inner.estimator.record_exposure(secs, now_ms);
    }
}

fn bounded_insert_worker(map: &mut HashMap<VideoId, WorkerId>, job: VideoId, worker: WorkerId) {
    if map.len() >= MAX_TRACKED {
        map.clear(); // Only a gauge's accuracy depends on it.
    }
    map.insert(job, worker);
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
    fn a_busy_warm_worker_is_expected_free_from_its_progress() {
        let f = FleetStats::default();
        let warm = WorkerId::new("n", "warm");
        let mut info = WorkerInfo::new(warm.clone());
        info.loaded_models = vec!["m".to_owned()];
        f.polling(&info, 0);
        let job = VideoId::generate();
        f.leased(&job, &warm, 0);
        // Too little progress to extrapolate from.
        f.heartbeat(&job, 2, 1_000);
        assert_eq!(f.warm_free_within("m", 60_000, 1_000), None);
        // 80 % after 8 s: about 2 s to go.
        f.heartbeat(&job, 80, 8_000);
        assert_eq!(f.warm_free_within("m", 5_000, 8_000), Some(2_000));
        assert_eq!(f.warm_free_within("m", 1_000, 8_000), None);
        assert_eq!(f.warm_free_within("other", 5_000, 8_000), None);
        // Done: nobody is busy any more.
        f.ended(&job, 10_000);
        assert_eq!(f.warm_free_within("m", 60_000, 10_000), None);
    }

    #[test]
    fn model_reports_are_gathered_per_model() {
        let f = FleetStats::default();
        let report = |id: &str, state, error: Option<&str>| ModelReport {
            id: id.into(),
            state,
            weights_hash: (state == ModelState::Warm).then(|| "sha256:ab".to_owned()),
            error: error.map(str::to_owned),
        };
        let mut a = WorkerInfo::new(WorkerId::new("n", "a"));
        a.models = vec![
            report("wan", ModelState::Warm, None),
            report("ltx", ModelState::Cold, None),
        ];
        let mut b = WorkerInfo::new(WorkerId::new("n", "b"));
        b.models = vec![report("wan", ModelState::Unavailable, Some("bad path"))];
        f.polling(&a, 0);
        f.polling(&b, 0);
        let m = f.models(1_000);
        assert_eq!(m["wan"].warm, vec!["n/a".to_owned()]);
        assert_eq!(m["wan"].unavailable, vec![("n/b".to_owned(), "bad path".to_owned())]);
        assert_eq!(m["wan"].weights_hash.as_deref(), Some("sha256:ab"));
        assert_eq!(m["ltx"].cold, vec!["n/a".to_owned()]);
        // Silent workers drop out.
        assert!(f.models(1_000 + WORKER_SILENCE_MS + 1).is_empty());
    }

    #[test]
    fn preemptions_shorten_the_published_mtbf() {
        let quiet = FleetStats::default();
        let busy = FleetStats::default();
        let hour_ms = 3_600_000;
        for i in 0..50 {
            let id = VideoId::generate();
            let t = i * 60_000;
            let w = WorkerId::new("n", "w");
            quiet.leased(&id, &w, t);
            quiet.ended(&id, t + 60_000);
            busy.leased(&id, &w, t);
            busy.lost(&id, Loss::LeaseExpired, t + 60_000);
        }
        assert!(busy.mtbf_secs(hour_ms) < quiet.mtbf_secs(hour_ms) / 5.0);
        assert!(busy.mtbf_secs(hour_ms).is_finite() && busy.mtbf_secs(hour_ms) > 0.0);
    }
}
