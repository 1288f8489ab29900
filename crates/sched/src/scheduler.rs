//! The queue and the dispatch decision.

use crate::config::{SchedulerConfig, TierMap};
use crate::fifo::Fifo;
use std::collections::{BTreeSet, HashMap};
use videogen_core::{QueuedJob, Tier, VideoId};

/// What the worker asking for work can run and already has loaded.
#[derive(Debug, Clone, Copy)]
pub struct WorkerView<'a> {
    /// Warm models, for affinity.
    pub loaded_models: &'a [String],
    /// The models it can run at all; `None`: any. A worker is never handed a
    /// job for a model outside this set (it has no such model, or its model
    /// failed to load).
    pub serves: Option<&'a [String]>,
}

impl WorkerView<'static> {
    /// A worker that runs anything and has nothing loaded (affinity never
    /// applies). [`Scheduler::position`] predicts the order this worker would see.
    pub const NONE: WorkerView<'static> = WorkerView {
        loaded_models: &[],
        serves: None,
    };
}

/// Stride of a weight-1 tier. Wide enough that `UNIT / w` stays exact to
/// ~1e-13 for any allowed weight, and u128 passes never overflow in practice.
const STRIDE_UNIT: u128 = 1 << 64;
/// Weights are clamped to `1..=MAX_WEIGHT` (keeps strides ≥ 2^44).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Lane index of a tier (`Tier::ALL` order).
fn lane_ix(tier: Tier) -> usize {
    match tier {
        Tier::Free => 0,
        Tier::Paid => 1,
        Tier::Internal => 2,
    }
}

/// Who wins a tie of passes: lower first, so higher tiers win.
fn tie_rank(tier: Tier) -> u8 {
    match tier {
        Tier::Internal => 0,
        Tier::Paid => 1,
        Tier::Free => 2,
    }
}

/// One tier's queue plus its stride-scheduling state.
#[derive(Debug, Clone)]
struct Lane {
    tier: Tier,
    /// FIFO within the tier: enqueue time, then id.
    fifo: Fifo,
    /// The same jobs' FIFO keys by model, so a worker that serves only some
    /// models finds its oldest job without scanning the others'.
    by_model: HashMap<String, BTreeSet<(i64, VideoId)>>,
    /// Virtual time one dispatch of this tier costs (`STRIDE_UNIT / weight`).
    stride: u128,
    /// Virtual time of this tier's next turn; the effective value is
    /// `max(pass, vt)` so a tier that sat out banks no credit.
    pass: u128,
    max_wait_ms: i64,
}

impl Lane {
    fn deadline_ms(&self, enqueued_at_ms: i64) -> i64 {
        enqueued_at_ms.saturating_add(self.max_wait_ms)
    }

    fn is_aged(&self, enqueued_at_ms: i64, now_ms: i64) -> bool {
        self.deadline_ms(enqueued_at_ms) <= now_ms
    }

    /// FIFO order equals aging order within a tier, so aged jobs are a prefix.
    fn head_aged(&self, now_ms: i64) -> bool {
        self.fifo
            .first()
            .is_some_and(|j| self.is_aged(j.enqueued_at_ms, now_ms))
    }

    fn insert(&mut self, job: QueuedJob) {
        self.by_model
            .entry(job.model.clone())
            .or_default()
            .insert((job.enqueued_at_ms, job.id.clone()));
        self.fifo.insert(job);
    }

    fn take(&mut self, enq: i64, id: &VideoId) -> Option<QueuedJob> {
        let job = self.fifo.remove((enq, id))?;
        if let Some(set) = self.by_model.get_mut(&job.model) {
            set.remove(&(enq, id.clone()));
            if set.is_empty() {
                self.by_model.remove(&job.model);
            }
        }
        Some(job)
    }

    /// The oldest job of any of `models`: its FIFO key. O(|models| log n).
    fn head_of(&self, models: &[String]) -> Option<&(i64, VideoId)> {
        models.iter().filter_map(|m| self.by_model.get(m)?.first()).min()
    }

    /// Aged jobs in this tier (a prefix, see `head_aged`). Expected O(log n).
    fn aged_len(&self, now_ms: i64) -> usize {
        self.fifo.count_while(|j| self.is_aged(j.enqueued_at_ms, now_ms))
    }
}

/// Weighted-fair, aging, FIFO-within-tier job queue. See the crate docs for
/// the policy and the wait bound it guarantees.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Indexed by [`lane_ix`].
    lanes: [Lane; 3],
    /// Where each queued job sits: its tier and FIFO key.
    index: HashMap<VideoId, (Tier, i64)>,
    /// Global virtual time: the pass of the most recent dispatch.
    vt: u128,
    cfg: SchedulerConfig,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let lane = |tier: Tier| {
            let weight = (*cfg.weights.get(tier)).clamp(1, MAX_WEIGHT);
            let stride = STRIDE_UNIT / u128::from(weight);
            Lane {
                tier,
                fifo: Fifo::new(),
                by_model: HashMap::new(),
                stride,
                pass: stride,
                max_wait_ms: (*cfg.max_wait_ms.get(tier)).max(0),
            }
        };
        Self {
            lanes: [lane(Tier::Free), lane(Tier::Paid), lane(Tier::Internal)],
            index: HashMap::new(),
            vt: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Adds a runnable job. Idempotent on id: re-enqueueing an identical job
    /// is a no-op (it keeps its place); a job with the same id but different
    /// fields *replaces* the queued one (the caller's newest view wins, e.g. a
    /// tier change or a requeue with a new `enqueued_at_ms`) and is placed by
    /// its new fields. Expected O(log n).
    pub fn enqueue(&mut self, job: QueuedJob) {
        if let Some(&(tier, enq)) = self.index.get(&job.id) {
            let lane = &self.lanes[lane_ix(tier)];
            if lane.fifo.get((enq, &job.id)) == Some(&job) {
                return;
            }
            self.remove(&job.id);
        }
        let lane = &mut self.lanes[lane_ix(job.tier)];
        if lane.fifo.is_empty() {
            // A tier (re)joining starts as if it had just had its turn: it
            // cannot cut in ahead of tiers that were already waiting.
            lane.pass = self.vt + lane.stride;
        }
        self.index.insert(job.id.clone(), (job.tier, job.enqueued_at_ms));
        lane.insert(job);
    }

    /// Removes a job (cancelled, deleted, leased elsewhere). `true` if it was
    /// queued. Expected O(log n).
    pub fn remove(&mut self, id: &VideoId) -> bool {
        let Some((tier, enq)) = self.index.remove(id) else {
            return false;
        };
        self.lanes[lane_ix(tier)].take(enq, id).is_some()
    }

    /// Picks and removes the next job for this worker, or `None` if there is
    /// none it can run. Expected O(log n) (plus `affinity_window` model
    /// comparisons, or O(|serves| log n) for a worker serving some models).
    pub fn next(&mut self, now_ms: i64, worker: &WorkerView<'_>) -> Option<QueuedJob> {
        if let Some(serves) = worker.serves {
            return self.next_serving(now_ms, worker.loaded_models, serves);
        }
        let urgent = self.lanes.iter().any(|l| l.head_aged(now_ms));
        let vt = self.vt;
        let lane = self
            .lanes
            .iter_mut()
            .filter(|l| {
                if urgent {
                    l.head_aged(now_ms)
                } else {
                    !l.fifo.is_empty()
                }
            })
            .min_by_key(|l| (l.pass.max(vt), tie_rank(l.tier)))?;
        let base = lane.pass.max(vt);
        self.vt = base;
        lane.pass = base + lane.stride;
        // Aged work is strictly FIFO; affinity may only reorder fresh work,
        // which is why it cannot affect the aging bound.
        let key = if urgent || self.cfg.affinity_window <= 1 {
            None
        } else {
            lane.fifo
                .iter()
                .take(self.cfg.affinity_window)
                .find(|j| worker.loaded_models.contains(&j.model))
                .map(|j| (j.enqueued_at_ms, j.id.clone()))
        };
        let (enq, id) = match key {
            Some(k) => k,
            None => lane.fifo.first().map(|j| (j.enqueued_at_ms, j.id.clone()))?,
        };
        let job = lane.take(enq, &id)?;
        self.index.remove(&job.id);
        Some(job)
    }

    /// [`Scheduler::next`] for a worker that runs only `serves`: the same
    /// tier turns and aging, over the jobs it can run. Jobs it cannot run
    /// keep their places for other workers.
    fn next_serving(&mut self, now_ms: i64, loaded: &[String], serves: &[String]) -> Option<QueuedJob> {
        let heads = self.lanes.each_ref().map(|l| l.head_of(serves).cloned());
        let aged = |i: usize| {
            heads[i]
                .as_ref()
                .is_some_and(|(enq, _)| self.lanes[i].is_aged(*enq, now_ms))
        };
        let urgent = (0..3).any(aged);
        let vt = self.vt;
        let ix = (0..3)
            .filter(|&i| if urgent { aged(i) } else { heads[i].is_some() })
            .min_by_key(|&i| (self.lanes[i].pass.max(vt), tie_rank(self.lanes[i].tier)))?;
        let lane = &mut self.lanes[ix];
        let base = lane.pass.max(vt);
        self.vt = base;
        lane.pass = base + lane.stride;
        let (mut enq, mut id) = heads[ix].clone()?;
        if !urgent && self.cfg.affinity_window > 1 {
            let warm: Vec<String> = loaded.iter().filter(|m| serves.contains(m)).cloned().collect();
            if let Some((wenq, wid)) = lane.head_of(&warm).cloned() {
                let gap = lane.fifo.rank((wenq, &wid)).saturating_sub(lane.fifo.rank((enq, &id)));
                if gap < self.cfg.affinity_window {
                    (enq, id) = (wenq, wid);
                }
            }
        }
        let job = lane.take(enq, &id)?;
        self.index.remove(&job.id);
        Some(job)
    }

    /// How many jobs would be dispatched before this one if nothing else
    /// arrived and every call were `next(now_ms, &WorkerView::NONE)` (0 = next).
    /// `None` if not queued. Affinity can only move fresh jobs of the same
    /// tier by a few places, so for other workers this is an estimate.
    ///
    /// Expected O(log n): the rank in its tier and each tier's aged count are
    /// tree descents (the API asks on every submit and poll), and the
    /// interleaving of tiers is computed in closed form.
    pub fn position(&self, id: &VideoId, now_ms: i64) -> Option<u64> {
        let &(tier, enq) = self.index.get(id)?;
        let t = lane_ix(tier);
        let me = &self.lanes[t];
        let rank_in_lane = me.fifo.rank((enq, id)) as u64;
        let aged = self.lanes.each_ref().map(|l| l.aged_len(now_ms) as u64);
        let vt = self.vt;

        // Phase 1: only tiers with aged heads compete, until their aged
        // prefixes run out. Within a fixed competing set, each tier's turns
        // are at `max(pass, vt) + k * stride` and dispatches are the merge of
        // those sequences by (pass, tie rank).
        let start1 = self.lanes.each_ref().map(|l| l.pass.max(vt));
        if rank_in_lane < aged[t] {
            let turn = start1[t] + u128::from(rank_in_lane) * me.stride;
            let others: u64 = (0..3)
                .filter(|&u| u != t)
                .map(|u| turns_before(&self.lanes[u], start1[u], aged[u], turn, tier))
                .sum();
            return Some(rank_in_lane + others);
        }

        // Phase 2: everything left is fresh; all non-empty tiers compete.
        let mut vt2 = vt;
        let mut pass2 = self.lanes.each_ref().map(|l| l.pass);
        for u in 0..3 {
            if aged[u] > 0 {
                let last = start1[u] + u128::from(aged[u] - 1) * self.lanes[u].stride;
                vt2 = vt2.max(last);
                pass2[u] = last + self.lanes[u].stride;
            }
        }
        let start2 = pass2.map(|p| p.max(vt2));
        let i = rank_in_lane - aged[t];
        let turn = start2[t] + u128::from(i) * me.stride;
        let others: u64 = (0..3)
            .filter(|&u| u != t)
            .map(|u| {
                let fresh = self.lanes[u].fifo.len() as u64 - aged[u];
                turns_before(&self.lanes[u], start2[u], fresh, turn, tier)
            })
            .sum();
        Some(aged.iter().sum::<u64>() + i + others)
    }

    pub fn contains(&self, id: &VideoId) -> bool {
        self.index.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Queued jobs per tier.
    pub fn depth(&self) -> TierMap<usize> {
        TierMap::from_fn(|t| self.lanes[lane_ix(t)].fifo.len())
    }

    /// Longest current wait per tier (ms, never negative), for metrics and
    /// autoscaling. `None` for an empty tier.
    pub fn oldest_wait_ms(&self, now_ms: i64) -> TierMap<Option<i64>> {
        TierMap::from_fn(|t| {
            let head = self.lanes[lane_ix(t)].fifo.first();
            head.map(|j| now_ms.saturating_sub(j.enqueued_at_ms).max(0))
        })
    }
}

/// How many of `lane`'s next `limit` turns, starting at virtual time `start`,
/// come before a turn of `tier` at virtual time `turn` (ties go to the
/// higher tier).
fn turns_before(lane: &Lane, start: u128, limit: u64, turn: u128, tier: Tier) -> u64 {
    if limit == 0 || start > turn {
        return 0;
    }
    let gap = turn - start;
    let mut n = gap.div_ceil(lane.stride);
    if gap.is_multiple_of(lane.stride) && tie_rank(lane.tier) < tie_rank(tier) {
        n += 1;
    }
    u64::try_from(n).unwrap_or(u64::MAX).min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_core::TenantId;

    fn vid(n: u64) -> VideoId {
        VideoId::parse(&format!("video_{n:032x}")).expect("valid id")
    }

    fn job(n: u64, tier: Tier, enqueued_at_ms: i64) -> QueuedJob {
        job_m(n, tier, enqueued_at_ms, "m0")
    }

    fn job_m(n: u64, tier: Tier, enqueued_at_ms: i64, model: &str) -> QueuedJob {
        QueuedJob {
            id: vid(n),
            tenant: TenantId::parse("acme").expect("valid tenant"),
            tier,
            model: model.to_owned(),
            enqueued_at_ms,
            not_before_ms: None,
        }
    }

    fn drain(s: &mut Scheduler, now_ms: i64) -> Vec<u64> {
        std::iter::from_fn(|| s.next(now_ms, &WorkerView::NONE))
            .map(|j| u64::from_str_radix(&j.id.as_str()["video_".len()..], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn empty_scheduler_yields_nothing() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        assert!(s.is_empty());
        assert_eq!(s.next(0, &WorkerView::NONE), None);
        assert_eq!(s.position(&vid(1), 0), None);
        assert_eq!(s.oldest_wait_ms(0), TierMap::default());
    }

    #[test]
    fn paid_goes_before_older_free_when_both_fresh() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job(1, Tier::Free, 0));
        s.enqueue(job(2, Tier::Paid, 1_000));
        assert_eq!(s.position(&vid(2), 2_000), Some(0));
        assert_eq!(s.position(&vid(1), 2_000), Some(1));
        assert_eq!(drain(&mut s, 2_000), vec![2, 1]);
    }

    #[test]
    fn fifo_within_a_tier_by_enqueue_time_then_id() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        for (n, at) in [(5, 300), (3, 100), (4, 100), (1, 200), (2, 0)] {
            s.enqueue(job(n, Tier::Paid, at));
        }
        assert_eq!(drain(&mut s, 1_000), vec![2, 3, 4, 1, 5]);
    }

    #[test]
    fn aged_free_job_overrides_fresh_paid_work() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job(1, Tier::Free, 0));
        for n in 2..50 {
            s.enqueue(job(n, Tier::Paid, 100_000 + n as i64));
        }
        // Not aged yet: paid's share comes first.
        assert_eq!(s.position(&vid(1), 119_999), Some(4));
        // Aged: ahead of every fresh paid job.
        assert_eq!(s.position(&vid(1), 120_000), Some(0));
        assert_eq!(s.next(120_000, &WorkerView::NONE).map(|j| j.id), Some(vid(1)));
    }

    #[test]
    fn aged_jobs_share_by_weight_not_arrival() {
        // Both tiers entirely aged: weights still decide, FIFO inside a tier.
        let mut s = Scheduler::new(SchedulerConfig::default());
        for n in 0..10 {
            s.enqueue(job(n, Tier::Free, n as i64));
            s.enqueue(job(100 + n, Tier::Paid, 1_000 + n as i64));
        }
        let order = drain(&mut s, 10_000_000);
        assert_eq!(&order[..5], &[100, 101, 102, 103, 0]);
        let free: Vec<u64> = order.iter().copied().filter(|&n| n < 100).collect();
        assert_eq!(free, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn weights_respected_over_a_long_backlog() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        for n in 0..3_000u64 {
            let tier = Tier::ALL[(n % 3) as usize];
            s.enqueue(job(n, tier, 0));
        }
        let mut got = TierMap::<u32>::default();
        for _ in 0..1_300 {
            let j = s.next(0, &WorkerView::NONE).expect("backlogged");
            *got.get_mut(j.tier) += 1;
        }
        // 8:4:1 of 1300 = 800:400:100, within one turn each.
        assert!(got.internal.abs_diff(800) <= 1, "{got:?}");
        assert!(got.paid.abs_diff(400) <= 1, "{got:?}");
        assert!(got.free.abs_diff(100) <= 1, "{got:?}");
    }

    #[test]
    fn custom_weights_give_custom_ratio() {
        let cfg = SchedulerConfig {
            weights: TierMap {
                free: 1,
                paid: 2,
                internal: 0,
            },
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(cfg);
        for n in 0..600u64 {
            s.enqueue(job(n, if n % 2 == 0 { Tier::Free } else { Tier::Paid }, 0));
        }
        let free = (0..300)
            .filter_map(|_| s.next(0, &WorkerView::NONE))
            .filter(|j| j.tier == Tier::Free)
            .count();
        assert!(free.abs_diff(100) <= 1, "free got {free} of 300");
    }

    #[test]
    fn a_worker_gets_only_models_it_serves_and_others_keep_their_place() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job_m(1, Tier::Paid, 0, "wan"));
        s.enqueue(job_m(2, Tier::Paid, 1, "ltx"));
        s.enqueue(job_m(3, Tier::Free, 2, "ltx"));
        s.enqueue(job_m(4, Tier::Paid, 3, "wan"));
        let ltx = ["ltx".to_owned()];
        let only_ltx = WorkerView {
            loaded_models: &[],
            serves: Some(&ltx),
        };
        assert_eq!(s.next(10, &only_ltx).map(|j| j.id), Some(vid(2)));
        assert_eq!(s.next(10, &only_ltx).map(|j| j.id), Some(vid(3)));
        assert_eq!(s.next(10, &only_ltx), None);
        // The wan jobs are untouched, in order, for a worker that runs them.
        assert_eq!(s.len(), 2);
        assert_eq!(drain(&mut s, 10), vec![1, 4]);
        let none = WorkerView {
            loaded_models: &[],
            serves: Some(&[]),
        };
        s.enqueue(job_m(5, Tier::Paid, 0, "wan"));
        assert_eq!(s.next(10, &none), None);
        assert!(s.contains(&vid(5)));
    }

    #[test]
    fn a_serving_worker_still_sees_aging_and_affinity() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job_m(1, Tier::Free, 0, "wan"));
        for n in 2..10 {
            s.enqueue(job_m(n, Tier::Paid, 100_000 + n as i64, "wan"));
        }
        s.enqueue(job_m(20, Tier::Paid, 100_004, "ltx"));
        s.enqueue(job_m(21, Tier::Paid, 100_050, "ltx"));
        let both = ["wan".to_owned(), "ltx".to_owned()];
        let warm = ["ltx".to_owned()];
        let view = WorkerView {
            loaded_models: &warm,
            serves: Some(&both),
        };
        // Aged free work first, whatever is warm.
        assert_eq!(s.next(120_000, &view).map(|j| j.id), Some(vid(1)));
        // Then fresh paid work: the warm model's job three places back is
        // within the affinity window; the one further back is not.
        assert_eq!(s.next(110_000, &view).map(|j| j.id), Some(vid(20)));
        assert_eq!(s.next(110_000, &view).map(|j| j.id), Some(vid(2)));
        let cold = WorkerView {
            loaded_models: &[],
            serves: Some(&both),
        };
        assert_eq!(s.next(110_000, &cold).map(|j| j.id), Some(vid(3)));
    }

    #[test]
    fn remove_takes_a_job_out() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        for n in 1..=3 {
            s.enqueue(job(n, Tier::Paid, n as i64));
        }
        assert!(s.remove(&vid(2)));
        assert!(!s.remove(&vid(2)));
        assert!(!s.contains(&vid(2)));
        assert_eq!(s.len(), 2);
        assert_eq!(s.position(&vid(3), 10), Some(1));
        assert_eq!(drain(&mut s, 10), vec![1, 3]);
    }

    #[test]
    fn enqueue_is_idempotent_and_replaces_changed_jobs() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job(1, Tier::Free, 0));
        s.enqueue(job(2, Tier::Free, 10));
        s.enqueue(job(1, Tier::Free, 0));
        assert_eq!(s.len(), 2);
        assert_eq!(s.position(&vid(1), 20), Some(0));
        // Same id, new fields: replaced and re-placed.
        s.enqueue(job(1, Tier::Paid, 15));
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.depth(),
            TierMap {
                free: 1,
                paid: 1,
                internal: 0
            }
        );
        assert_eq!(drain(&mut s, 20), vec![1, 2]);
    }

    #[test]
    fn depth_and_oldest_wait_report_per_tier() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job(1, Tier::Free, 1_000));
        s.enqueue(job(2, Tier::Free, 4_000));
        s.enqueue(job(3, Tier::Internal, 9_000));
        assert_eq!(
            s.depth(),
            TierMap {
                free: 2,
                paid: 0,
                internal: 1
            }
        );
        assert_eq!(
            s.oldest_wait_ms(10_000),
            TierMap {
                free: Some(9_000),
                paid: None,
                internal: Some(1_000)
            }
        );
    }

    #[test]
    fn affinity_prefers_a_loaded_model_near_the_head_only() {
        let loaded = vec!["m2".to_owned()];
        let worker = WorkerView {
            loaded_models: &loaded,
            serves: None,
        };
        let mut s = Scheduler::new(SchedulerConfig::default());
        for (n, m) in [(1, "m0"), (2, "m1"), (3, "m2"), (4, "m2")] {
            s.enqueue(job_m(n, Tier::Paid, n as i64, m));
        }
        assert_eq!(s.next(10, &worker).map(|j| j.id), Some(vid(3)));
        // Outside the window of 4: plain FIFO.
        let mut s = Scheduler::new(SchedulerConfig::default());
        for n in 1..=4 {
            s.enqueue(job_m(n, Tier::Paid, n as i64, "m0"));
        }
        s.enqueue(job_m(5, Tier::Paid, 5, "m2"));
        assert_eq!(s.next(10, &worker).map(|j| j.id), Some(vid(1)));
    }

    #[test]
    fn affinity_never_reorders_aged_jobs() {
        let loaded = vec!["m2".to_owned()];
        let worker = WorkerView {
            loaded_models: &loaded,
            serves: None,
        };
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.enqueue(job_m(1, Tier::Free, 0, "m0"));
        s.enqueue(job_m(2, Tier::Free, 1, "m2"));
        assert_eq!(s.next(500_000, &worker).map(|j| j.id), Some(vid(1)));
    }

    /// The tree-based rank queries against the linear scans they replaced,
    /// and `position` against actually draining the queue, over histories
    /// with out-of-order enqueue times, replacements and removals.
    mod rank_model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// Ids come from a small pool so that re-enqueues hit queued jobs.
        const POOL: u64 = 48;
        const MODELS: [&str; 3] = ["m0", "m1", "m2"];

        #[derive(Debug, Clone)]
        enum Op {
            Enqueue {
                n: u64,
                tier: Tier,
                at_ms: i64,
            },
            /// Re-enqueues the queued job's identical copy (a no-op), if any.
            Reenqueue {
                n: u64,
            },
            Remove {
                n: u64,
            },
            Next {
                now_ms: i64,
                affinity: bool,
            },
            Check {
                now_ms: i64,
            },
        }

        fn op_strategy() -> impl Strategy<Value = Op> {
            let tier = prop_oneof![Just(Tier::Free), Just(Tier::Paid), Just(Tier::Internal)];
            // Narrow times make many ties, decided by id; wide ones arrive in any order.
            let at_ms = prop_oneof![0..20i64, 0..400_000i64];
            let now_ms = 0..800_000i64;
            prop_oneof![
                6 => (0..POOL, tier, at_ms).prop_map(|(n, tier, at_ms)| Op::Enqueue { n, tier, at_ms }),
                1 => (0..POOL).prop_map(|n| Op::Reenqueue { n }),
                2 => (0..POOL).prop_map(|n| Op::Remove { n }),
                2 => (now_ms.clone(), any::<bool>()).prop_map(|(now_ms, affinity)| Op::Next { now_ms, affinity }),
                2 => now_ms.prop_map(|now_ms| Op::Check { now_ms }),
            ]
        }

        /// The naive queue: one ordered map per tier, counted by scanning.
        #[derive(Default)]
        struct Model {
            lanes: [BTreeMap<(i64, VideoId), QueuedJob>; 3],
        }

        impl Model {
            fn find(&self, id: &VideoId) -> Option<&QueuedJob> {
                self.lanes.iter().flat_map(|l| l.values()).find(|j| j.id == *id)
            }

            fn remove(&mut self, id: &VideoId) -> Option<QueuedJob> {
                let (t, k) = self
                    .lanes
                    .iter()
                    .enumerate()
                    .find_map(|(t, l)| l.iter().find(|(_, j)| j.id == *id).map(|(k, _)| (t, k.clone())))?;
                self.lanes[t].remove(&k)
            }

            fn insert(&mut self, job: QueuedJob) {
                self.remove(&job.id);
                let k = (job.enqueued_at_ms, job.id.clone());
                self.lanes[lane_ix(job.tier)].insert(k, job);
            }
        }

        /// Dispatch index of every queued job when draining a copy at `now_ms`.
        fn drain_order(s: &Scheduler, now_ms: i64) -> HashMap<VideoId, u64> {
            let mut s = s.clone();
            (0..)
                .map_while(|i| s.next(now_ms, &WorkerView::NONE).map(|j| (j.id, i)))
                .collect()
        }

        fn check(s: &Scheduler, m: &Model, now_ms: i64) -> Result<(), TestCaseError> {
            for (lane, naive) in s.lanes.iter().zip(&m.lanes) {
                lane.fifo.check_invariants();
                prop_assert!(lane.fifo.iter().eq(naive.values()), "{} queue differs", lane.tier);
                prop_assert_eq!(lane.fifo.len(), naive.len());
                let aged = naive.keys().take_while(|(enq, _)| lane.is_aged(*enq, now_ms)).count();
                prop_assert_eq!(lane.aged_len(now_ms), aged, "{} aged at {}", lane.tier, now_ms);
                for (ix, (enq, id)) in naive.keys().enumerate() {
                    prop_assert_eq!(lane.fifo.rank((*enq, id)), naive.range(..(*enq, id.clone())).count());
                    prop_assert_eq!(lane.fifo.rank((*enq, id)), ix);
                }
            }
            let order = drain_order(s, now_ms);
            prop_assert_eq!(order.len(), s.len());
            for n in 0..POOL {
                let id = vid(n);
                prop_assert_eq!(
                    s.position(&id, now_ms),
                    order.get(&id).copied(),
                    "job {} at {}",
                    n,
                    now_ms
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn rank_queries_match_linear_scans(
                weights in prop::array::uniform3(0..=9u32),
                max_wait in prop::array::uniform3(0..=300_000i64),
                ops in prop::collection::vec(op_strategy(), 0..160),
            ) {
                let cfg = SchedulerConfig {
                    weights: TierMap { free: weights[0], paid: weights[1], internal: weights[2] },
                    max_wait_ms: TierMap { free: max_wait[0], paid: max_wait[1], internal: max_wait[2] },
                    ..SchedulerConfig::default()
                };
                let mut s = Scheduler::new(cfg);
                let mut m = Model::default();
                let loaded = vec!["m1".to_owned()];
                for op in ops {
                    match op {
                        Op::Enqueue { n, tier, at_ms } => {
                            let j = job_m(n, tier, at_ms, MODELS[(n % 3) as usize]);
                            s.enqueue(j.clone());
                            m.insert(j);
                        }
                        Op::Reenqueue { n } => {
                            if let Some(j) = m.find(&vid(n)).cloned() {
                                s.enqueue(j);
                            }
                        }
                        Op::Remove { n } => {
                            prop_assert_eq!(s.remove(&vid(n)), m.remove(&vid(n)).is_some());
                        }
                        Op::Next { now_ms, affinity } => {
                            let worker = if affinity { WorkerView { loaded_models: &loaded, serves: None } } else { WorkerView::NONE };
                            match s.next(now_ms, &worker) {
                                Some(j) => prop_assert_eq!(m.remove(&j.id), Some(j)),
                                None => prop_assert!(m.lanes.iter().all(BTreeMap::is_empty)),
                            }
                        }
                        Op::Check { now_ms } => check(&s, &m, now_ms)?,
                    }
                    prop_assert_eq!(s.len(), m.lanes.iter().map(BTreeMap::len).sum::<usize>());
                }
                check(&s, &m, 400_000)?;
            }
        }
    }
}
