//! When to checkpoint a running generation.
//!
//! Checkpointing trades overhead now for less lost work later: every
//! checkpoint stalls the step loop for `C` seconds, and every preemption throws
//! away the steps since the last checkpoint. On spot machines preemptions are
//! routine, so the interval should follow the preemption rate rather than be a
//! constant picked once.
//!
//! # Pieces
//! - [`CheckpointPolicy`]: the configured rule, fixed bounds or adaptive
//!   (Young–Daly, see [`young_daly_interval`]).
//! - [`CheckpointCostEstimator`] (worker side): EWMA of measured checkpoint cost `C`.
//! - [`PreemptionRateEstimator`] (server side): decayed estimate of the
//!   per-worker preemption rate `λ` across the fleet, published to workers as
//!   MTBF = 1/λ.
//! - [`CheckpointClock`] (per attempt): turns the policy and the current
//!   estimates into a yes/no at each step boundary.
//!
//! Everything here is pure and clock-free: callers pass times in. Instants are
//! `i64` milliseconds since an arbitrary epoch (as `videogen_core::Clock::now_ms`
//! returns); spans are [`Duration`]s, or `f64` seconds where a raw measurement
//! may be garbage and has to be validated.

use std::time::Duration;

/// How a worker decides to checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// Checkpoint when either bound is reached since the last checkpoint.
    /// `every_steps == 0` or `every == Duration::ZERO` turns that bound off;
    /// both off means never checkpoint (except at shutdown, which is the
    /// runner's business).
    Fixed { every_steps: u32, every: Duration },
    /// Checkpoint near the Young–Daly optimum `sqrt(2 · C · MTBF)`, clamped to
    /// `[min, max]`. `default_mtbf` stands in until the server publishes a
    /// fleet estimate. `min` caps the overhead when `C` is mis-measured as tiny
    /// or MTBF collapses; `max` caps the work at risk when MTBF looks huge
    /// (e.g. a young fleet that has not been preempted yet).
    Adaptive {
        min: Duration,
        max: Duration,
        default_mtbf: Duration,
    },
}

impl CheckpointPolicy {
    /// The target interval between checkpoints, for reporting and for the
    /// time bound; `None` for a fixed policy whose time bound is off.
    ///
    /// `checkpoint_cost` is the current [`CheckpointCostEstimator::estimate`];
    /// `published_mtbf` is the server's [`PreemptionRateEstimator::mtbf`], if any.
    pub fn interval(&self, checkpoint_cost: Duration, published_mtbf: Option<Duration>) -> Option<Duration> {
        match *self {
            Self::Fixed { every, .. } => (!every.is_zero()).then_some(every),
            Self::Adaptive { min, max, default_mtbf } => {
                // Misconfigured bounds (min > max) are swapped instead of panicking like `Duration::clamp`.
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                let mtbf = published_mtbf.unwrap_or(default_mtbf);
                Some(young_daly_interval(checkpoint_cost, mtbf).max(lo).min(hi))
            }
        }
    }
}

/// Young–Daly optimal checkpoint interval `T = sqrt(2 · C · MTBF)` (unclamped).
///
/// Inputs: `checkpoint_cost` C is how long one checkpoint delays the
/// generation (time the step loop is blocked, not the upload's wall time if it
/// overlaps with compute); `mtbf` is the mean time between preemptions of one
/// busy worker.
///
/// Why: with preemptions arriving at rate 1/MTBF, a preemption lands on
/// average halfway through an interval, so the expected fraction of time lost
/// is ≈ `C/T` (checkpoint overhead) + `T/(2·MTBF)` (re-done work). That sum is
/// convex in `T` and its derivative vanishes at `sqrt(2·C·MTBF)`; it is a
/// first-order optimum, accurate while `C ≪ T ≪ MTBF`. Restart cost adds a
/// constant per preemption and does not move the optimum at this order.
pub fn young_daly_interval(checkpoint_cost: Duration, mtbf: Duration) -> Duration {
    secs_to_duration((2.0 * checkpoint_cost.as_secs_f64() * mtbf.as_secs_f64()).sqrt())
}

/// Expected fraction of time lost to checkpoints and to re-done work when
/// checkpointing every `interval`: ≈ `C/T + T/(2·MTBF)` (see
/// [`young_daly_interval`]). At the unclamped optimum this is `sqrt(2·C/MTBF)`.
/// Infinite for a zero interval with a non-zero cost, or a zero MTBF.
pub fn expected_overhead_fraction(interval: Duration, checkpoint_cost: Duration, mtbf: Duration) -> f64 {
    let t = interval.as_secs_f64();
    let c = checkpoint_cost.as_secs_f64();
    let m = mtbf.as_secs_f64();
    // 0/0 terms mean "nothing spent", not NaN.
    let overhead = if c == 0.0 { 0.0 } else { c / t };
    let rework = if t == 0.0 { 0.0 } else { t / (2.0 * m) };
    overhead + rework
}

/// EWMA of observed checkpoint costs (seconds the generation was delayed).
///
/// Before the first observation [`estimate`](Self::estimate) returns the prior;
/// the first valid observation replaces it, since one real measurement beats a
/// guess. Garbage samples (NaN, ±∞, negative) are ignored rather than allowed
/// to poison the average.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointCostEstimator {
    alpha: f64,
    estimate_secs: f64,
    samples: u64,
}

impl CheckpointCostEstimator {
    /// Weight of each new sample: recent enough to follow a change in storage
    /// latency within a handful of checkpoints, smooth enough to ride out one slow write.
    pub const DEFAULT_ALPHA: f64 = 0.2;
    /// Low end of a latent-state write to object storage: a low guess errs
    /// toward checkpointing more often until the first measurement corrects it.
    pub const DEFAULT_PRIOR: Duration = Duration::from_secs(5);

    /// `alpha` outside `(0, 1]` (or non-finite) falls back to [`Self::DEFAULT_ALPHA`].
    pub fn new(alpha: f64, prior: Duration) -> Self {
        let alpha = if alpha > 0.0 && alpha <= 1.0 {
            alpha
        } else {
            Self::DEFAULT_ALPHA
        };
        Self {
            alpha,
            estimate_secs: prior.as_secs_f64(),
            samples: 0,
        }
    }

    /// Folds in one measured checkpoint cost in seconds. Returns `false` (and
    /// changes nothing) for a non-finite or negative sample.
    pub fn observe(&mut self, cost_secs: f64) -> bool {
        if !cost_secs.is_finite() || cost_secs < 0.0 {
            return false;
        }
        let next = if self.samples == 0 {
            cost_secs
        } else {
            self.estimate_secs + self.alpha * (cost_secs - self.estimate_secs)
        };
        // Rounding at the top of the f64 range must not produce ∞.
        self.estimate_secs = next.clamp(0.0, f64::MAX);
        self.samples = self.samples.saturating_add(1);
        true
    }

    /// Current estimate of `C`.
    pub fn estimate(&self) -> Duration {
        secs_to_duration(self.estimate_secs)
    }

    /// Valid observations so far (0 means [`estimate`](Self::estimate) is the prior).
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

impl Default for CheckpointCostEstimator {
    fn default() -> Self {
        Self::new(Self::DEFAULT_ALPHA, Self::DEFAULT_PRIOR)
    }
}

/// Fleet-wide estimate of the per-worker preemption rate `λ` (server side).
///
/// Counts preemptions and exposure (busy worker-seconds: a preemption can only
/// cost work while a worker is running a job), both decayed by `2^(-age / half_life)`
/// so the estimate follows a changing spot market. The rate is a gamma-Poisson
/// posterior mean with a constant prior worth `prior_weight` preemptions over
/// `prior_weight · prior_mtbf` of exposure:
///
/// `λ = (preemptions + prior_weight) / (exposure + prior_weight · prior_mtbf)`
///
/// With no preemptions the MTBF therefore grows with exposure but stays finite,
/// and with no data at all it is `prior_mtbf`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreemptionRateEstimator {
    half_life_ms: f64,
    prior_mtbf_secs: f64,
    prior_weight: f64,
    /// Decayed preemption count as of `as_of_ms`.
    preemptions: f64,
    /// Decayed busy worker-seconds as of `as_of_ms`.
    exposure_secs: f64,
    /// Time of the latest record; `None` before the first.
    as_of_ms: Option<i64>,
}

impl PreemptionRateEstimator {
    /// Spot capacity shifts over hours; an hour of memory follows that while
    /// still averaging over many preemptions at fleet scale.
    pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(3600);
    /// ~10 %/hour interruption rate, typical of GPU spot capacity.
    pub const DEFAULT_PRIOR_MTBF: Duration = Duration::from_secs(10 * 3600);
    /// The prior is worth one observed preemption: weak, but enough to keep
    /// the MTBF finite before the first one.
    pub const DEFAULT_PRIOR_WEIGHT: f64 = 1.0;

    /// Degenerate settings are repaired, not rejected: a zero half-life becomes
    /// 1 ms (forget almost at once), a zero prior MTBF becomes 1 s, and a
    /// non-positive or non-finite prior weight becomes [`Self::DEFAULT_PRIOR_WEIGHT`].
    pub fn new(half_life: Duration, prior_mtbf: Duration, prior_weight: f64) -> Self {
        let prior_weight = if prior_weight.is_finite() && prior_weight > 0.0 {
            prior_weight
        } else {
            Self::DEFAULT_PRIOR_WEIGHT
        };
        Self {
            half_life_ms: (half_life.as_secs_f64() * 1e3).max(1.0),
            prior_mtbf_secs: prior_mtbf.as_secs_f64().max(1.0),
            prior_weight,
            preemptions: 0.0,
            exposure_secs: 0.0,
            as_of_ms: None,
        }
    }

    /// Adds `worker_seconds` of busy time observed up to `now_ms`. Returns
    /// `false` (and changes nothing) for a non-finite or negative amount.
    pub fn record_exposure(&mut self, worker_seconds: f64, now_ms: i64) -> bool {
        if !worker_seconds.is_finite() || worker_seconds < 0.0 {
            return false;
        }
        self.advance(now_ms);
        self.exposure_secs = (self.exposure_secs + worker_seconds).min(f64::MAX);
        true
    }

    /// Counts one preemption of a busy worker at `now_ms`.
    pub fn record_preemption(&mut self, now_ms: i64) {
        self.advance(now_ms);
        self.preemptions += 1.0;
    }

    /// Estimated preemptions per busy worker-second at `now_ms`.
    pub fn rate_per_sec(&self, now_ms: i64) -> f64 {
        let (preemptions, exposure) = self.decayed(now_ms);
        (preemptions + self.prior_weight) / (exposure + self.prior_weight * self.prior_mtbf_secs)
    }

    /// Estimated mean time between preemptions of one busy worker at `now_ms`;
    /// this is what workers feed to [`CheckpointClock`].
    pub fn mtbf(&self, now_ms: i64) -> Duration {
        let (preemptions, exposure) = self.decayed(now_ms);
        secs_to_duration((exposure + self.prior_weight * self.prior_mtbf_secs) / (preemptions + self.prior_weight))
    }

    /// Decay factor for going from the last record to `now_ms`. A `now_ms`
    /// earlier than the last record (out-of-order reports, clock skew between
    /// servers) decays nothing rather than inflating old data.
    fn decay_to(&self, now_ms: i64) -> f64 {
        match self.as_of_ms {
            Some(as_of) if now_ms > as_of => {
                let age_ms = now_ms.saturating_sub(as_of) as f64;
                (-age_ms / self.half_life_ms).exp2()
            }
            _ => 1.0,
        }
    }

    fn decayed(&self, now_ms: i64) -> (f64, f64) {
        let k = self.decay_to(now_ms);
        (self.preemptions * k, self.exposure_secs * k)
    }

    fn advance(&mut self, now_ms: i64) {
        let (preemptions, exposure) = self.decayed(now_ms);
        self.preemptions = preemptions;
        self.exposure_secs = exposure;
        self.as_of_ms = Some(self.as_of_ms.map_or(now_ms, |as_of| as_of.max(now_ms)));
    }
}

impl Default for PreemptionRateEstimator {
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_HALF_LIFE,
            Self::DEFAULT_PRIOR_MTBF,
            Self::DEFAULT_PRIOR_WEIGHT,
        )
    }
}

/// Per-attempt checkpoint decision: the policy with its interval resolved from
/// the estimates current when the attempt started (or was last [`retune`](Self::retune)d).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointClock {
    policy: CheckpointPolicy,
    interval: Option<Duration>,
}

impl CheckpointClock {
    /// `checkpoint_cost` from [`CheckpointCostEstimator::estimate`],
    /// `published_mtbf` from the server (`None` → the policy's default).
    pub fn new(policy: CheckpointPolicy, checkpoint_cost: Duration, published_mtbf: Option<Duration>) -> Self {
        Self {
            policy,
            interval: policy.interval(checkpoint_cost, published_mtbf),
        }
    }

    /// Re-resolves the interval, e.g. after a checkpoint refined the cost
    /// estimate or a fresher MTBF arrived with a heartbeat reply.
    pub fn retune(&mut self, checkpoint_cost: Duration, published_mtbf: Option<Duration>) {
        self.interval = self.policy.interval(checkpoint_cost, published_mtbf);
    }

    /// The interval in force, for progress events and metrics; `None` when a
    /// fixed policy has no time bound.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    pub fn policy(&self) -> &CheckpointPolicy {
        &self.policy
    }

    /// Called at a step boundary: checkpoint now?
    ///
    /// Never with zero steps since the last checkpoint (it would save the same
    /// state again). Fixed: when either enabled bound is reached. Adaptive:
    /// at the boundary closest to the interval `T`, not the first one past it —
    /// if finishing one more step (`step_duration_estimate`) would overshoot `T`
    /// by more than stopping now undershoots it, checkpoint now; on a tie, run
    /// the step.
    pub fn should_checkpoint(
        &self,
        steps_done_since_last: u32,
        elapsed_since_last: Duration,
        step_duration_estimate: Duration,
    ) -> bool {
        if steps_done_since_last == 0 {
            return false;
        }
        match self.policy {
            CheckpointPolicy::Fixed { every_steps, .. } => {
                let by_steps = every_steps > 0 && steps_done_since_last >= every_steps;
                let by_time = self.interval.is_some_and(|every| elapsed_since_last >= every);
                by_steps || by_time
            }
            CheckpointPolicy::Adaptive { .. } => self.interval.is_some_and(|t| {
                // overshoot > undershoot  ⇔  (e + d) − T > T − e  ⇔  2e + d > 2T
                let twice_next_midpoint = elapsed_since_last
                    .saturating_mul(2)
                    .saturating_add(step_duration_estimate);
                elapsed_since_last >= t || twice_next_midpoint > t.saturating_mul(2)
            }),
        }
    }
}

/// Seconds → `Duration`, saturating: NaN and negatives → 0, too large → `Duration::MAX`.
fn secs_to_duration(secs: f64) -> Duration {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) => d,
        Err(_) if secs > 0.0 => Duration::MAX,
        Err(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    const ADAPTIVE: CheckpointPolicy = CheckpointPolicy::Adaptive {
        min: secs(30),
        max: secs(300),
        default_mtbf: secs(3600),
    };

    #[test]
    fn young_daly_known_values() {
        // sqrt(2 · 2 · 3600) = 120
        assert!(close(
            young_daly_interval(secs(2), secs(3600)).as_secs_f64(),
            120.0,
            1e-9
        ));
        // sqrt(2 · 5 · 36000) = 600
        assert!(close(
            young_daly_interval(secs(5), secs(36_000)).as_secs_f64(),
            600.0,
            1e-9
        ));
        assert_eq!(young_daly_interval(Duration::ZERO, secs(3600)), Duration::ZERO);
        assert_eq!(young_daly_interval(secs(2), Duration::ZERO), Duration::ZERO);
        assert_eq!(young_daly_interval(Duration::MAX, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn overhead_fraction_at_optimum_is_sqrt_2c_over_mtbf() {
        let f = expected_overhead_fraction(secs(120), secs(2), secs(3600));
        assert!(close(f, (2.0_f64 * 2.0 / 3600.0).sqrt(), 1e-9));
        assert!(close(f, 1.0 / 30.0, 1e-9));
        assert!(expected_overhead_fraction(secs(60), secs(2), secs(3600)) > f);
        assert!(expected_overhead_fraction(secs(240), secs(2), secs(3600)) > f);
        assert_eq!(expected_overhead_fraction(Duration::ZERO, Duration::ZERO, secs(1)), 0.0);
        assert_eq!(
            expected_overhead_fraction(Duration::ZERO, secs(1), secs(1)),
            f64::INFINITY
        );
        assert_eq!(
            expected_overhead_fraction(secs(1), Duration::ZERO, Duration::ZERO),
            f64::INFINITY
        );
    }

    #[test]
    fn adaptive_interval_is_clamped() {
        let t = ADAPTIVE.interval(secs(2), Some(secs(3600))).unwrap();
        assert!(close(t.as_secs_f64(), 120.0, 1e-9));
        // sqrt(2 · 0.01 · 60) ≈ 1.1 s → min
        assert_eq!(
            ADAPTIVE.interval(Duration::from_millis(10), Some(secs(60))),
            Some(secs(30))
        );
        assert_eq!(ADAPTIVE.interval(Duration::ZERO, Some(secs(60))), Some(secs(30)));
        // sqrt(2 · 100 · 10⁶) ≈ 14142 s → max
        assert_eq!(ADAPTIVE.interval(secs(100), Some(secs(1_000_000))), Some(secs(300)));
        assert_eq!(ADAPTIVE.interval(Duration::MAX, Some(Duration::MAX)), Some(secs(300)));
    }

    #[test]
    fn adaptive_uses_default_mtbf_until_published_and_tolerates_swapped_bounds() {
        let t = ADAPTIVE.interval(secs(2), None).unwrap();
        assert!(close(t.as_secs_f64(), 120.0, 1e-9));
        let swapped = CheckpointPolicy::Adaptive {
            min: secs(300),
            max: secs(30),
            default_mtbf: secs(3600),
        };
        assert_eq!(swapped.interval(secs(100), Some(secs(1_000_000))), Some(secs(300)));
        assert_eq!(swapped.interval(Duration::ZERO, None), Some(secs(30)));
    }

    #[test]
    fn cost_estimator_prior_then_first_sample_then_ewma() {
        let mut est = CheckpointCostEstimator::new(0.5, secs(5));
        assert_eq!(est.estimate(), secs(5));
        assert_eq!(est.samples(), 0);
        assert!(est.observe(2.0));
        assert_eq!(est.estimate(), secs(2));
        assert!(est.observe(4.0));
        assert_eq!(est.estimate(), secs(3));
        assert_eq!(est.samples(), 2);
    }

    #[test]
    fn cost_estimator_converges() {
        let mut est = CheckpointCostEstimator::default();
        assert!(est.observe(30.0));
        for _ in 0..200 {
            est.observe(8.0);
        }
        assert!(close(est.estimate().as_secs_f64(), 8.0, 1e-6));
    }

    #[test]
    fn cost_estimator_ignores_garbage() {
        let mut est = CheckpointCostEstimator::new(0.3, secs(5));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0001] {
            assert!(!est.observe(bad));
        }
        assert_eq!((est.estimate(), est.samples()), (secs(5), 0));
        assert!(est.observe(3.0));
        assert!(!est.observe(f64::NAN));
        assert_eq!(est.estimate(), secs(3));
        // Huge but finite samples saturate instead of overflowing.
        assert!(est.observe(f64::MAX));
        assert!(est.observe(f64::MAX));
        assert_eq!(est.estimate(), Duration::MAX);
        assert!(est.estimate_secs.is_finite());
    }

    #[test]
    fn cost_estimator_recovers_from_an_outlier() {
        let mut est = CheckpointCostEstimator::default();
        est.observe(5.0);
        est.observe(600.0);
        assert!(est.estimate() > secs(100));
        for _ in 0..40 {
            est.observe(5.0);
        }
        assert!(close(est.estimate().as_secs_f64(), 5.0, 0.01));
    }

    #[test]
    fn cost_estimator_repairs_bad_alpha() {
        for alpha in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
            let est = CheckpointCostEstimator::new(alpha, secs(1));
            assert_eq!(est.alpha, CheckpointCostEstimator::DEFAULT_ALPHA);
        }
        assert_eq!(CheckpointCostEstimator::new(1.0, secs(1)).alpha, 1.0);
    }

    #[test]
    fn rate_estimator_without_data_is_prior() {
        let est = PreemptionRateEstimator::new(secs(3600), secs(7200), 1.0);
        assert_eq!(est.mtbf(0), secs(7200));
        assert!(close(est.rate_per_sec(123), 1.0 / 7200.0, 1e-12));
    }

    #[test]
    fn zero_preemptions_give_finite_growing_mtbf() {
        let mut est = PreemptionRateEstimator::new(secs(3600), secs(3600), 1.0);
        let mut prev = est.mtbf(0);
        for minute in 1..=600_i64 {
            // 100 busy workers reporting every minute.
            est.record_exposure(6000.0, minute * 60_000);
            let mtbf = est.mtbf(minute * 60_000);
            assert!(mtbf < Duration::MAX);
            assert!(mtbf.as_secs_f64().is_finite());
            if minute < 60 {
                assert!(mtbf > prev);
            }
            prev = mtbf;
        }
        // Decayed exposure saturates near 100 · h/ln 2 worker-seconds.
        let expected = 3600.0 + 100.0 * 3600.0 / std::f64::consts::LN_2;
        assert!(close(prev.as_secs_f64(), expected, 0.02), "{prev:?}");
    }

    #[test]
    fn rate_estimator_converges_to_true_mtbf() {
        // 100 busy workers, one preemption per minute fleet-wide → MTBF 6000 s.
        // A light prior (0.1) so its bias is small next to ~87 decayed preemptions.
        let mut est = PreemptionRateEstimator::new(secs(3600), secs(36_000), 0.1);
        for minute in 1..=24 * 60_i64 {
            let now = minute * 60_000;
            est.record_exposure(6000.0, now);
            est.record_preemption(now);
        }
        let mtbf = est.mtbf(24 * 3_600_000).as_secs_f64();
        assert!(close(mtbf, 6000.0, 0.02), "{mtbf}");
    }

    #[test]
    fn old_preemptions_weigh_less() {
        let h = 3_600_000_i64;
        let mut est = PreemptionRateEstimator::new(secs(3600), secs(3600), 1.0);
        est.record_preemption(0);
        assert!(close(est.decayed(h).0, 0.5, 1e-12));
        assert!(close(est.decayed(3 * h).0, 0.125, 1e-12));

        // Same totals, different timing: recent trouble means a shorter MTBF.
        let mut old = PreemptionRateEstimator::default();
        let mut recent = PreemptionRateEstimator::default();
        for i in 0..10 {
            old.record_preemption(i);
            recent.record_preemption(5 * h + i);
        }
        old.record_exposure(36_000.0, 5 * h + 10);
        recent.record_exposure(36_000.0, 5 * h + 10);
        assert!(old.mtbf(5 * h + 10) > recent.mtbf(5 * h + 10) * 5);
    }

    #[test]
    fn rate_estimator_robust_to_garbage_and_out_of_order_times() {
        let mut est = PreemptionRateEstimator::default();
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            assert!(!est.record_exposure(bad, 0));
        }
        assert_eq!(est.mtbf(0), PreemptionRateEstimator::DEFAULT_PRIOR_MTBF);
        est.record_preemption(10_000);
        // Earlier than the last record: no decay, no growth, no panic.
        assert!(est.record_exposure(100.0, 5_000));
        assert_eq!(est.as_of_ms, Some(10_000));
        assert!(close(est.decayed(0).0, 1.0, 1e-12));
        // Extreme timestamps.
        est.record_preemption(i64::MIN);
        est.record_exposure(f64::MAX, i64::MAX);
        est.record_exposure(f64::MAX, i64::MAX);
        assert!(est.mtbf(i64::MAX) > Duration::ZERO);
        let degenerate = PreemptionRateEstimator::new(Duration::ZERO, Duration::ZERO, f64::NAN);
        assert!(degenerate.mtbf(0) > Duration::ZERO);
        assert!(degenerate.rate_per_sec(0).is_finite());
    }

    #[test]
    fn fixed_policy_bounds() {
        let step = secs(1);
        let both = CheckpointClock::new(
            CheckpointPolicy::Fixed {
                every_steps: 5,
                every: secs(10),
            },
            secs(2),
            None,
        );
        assert_eq!(both.interval(), Some(secs(10)));
        assert!(!both.should_checkpoint(4, secs(9), step));
        assert!(both.should_checkpoint(5, secs(1), step));
        assert!(both.should_checkpoint(1, secs(10), step));
        assert!(!both.should_checkpoint(0, secs(100), step));

        let steps_off = CheckpointClock::new(
            CheckpointPolicy::Fixed {
                every_steps: 0,
                every: secs(10),
            },
            secs(2),
            None,
        );
        assert!(!steps_off.should_checkpoint(1000, secs(9), step));
        assert!(steps_off.should_checkpoint(1, secs(10), step));

        let time_off = CheckpointClock::new(
            CheckpointPolicy::Fixed {
                every_steps: 5,
                every: Duration::ZERO,
            },
            secs(2),
            None,
        );
        assert_eq!(time_off.interval(), None);
        assert!(!time_off.should_checkpoint(4, secs(10_000), step));
        assert!(time_off.should_checkpoint(5, Duration::ZERO, step));

        let never = CheckpointClock::new(
            CheckpointPolicy::Fixed {
                every_steps: 0,
                every: Duration::ZERO,
            },
            secs(2),
            None,
        );
        assert!(!never.should_checkpoint(u32::MAX, Duration::MAX, Duration::MAX));
    }

    #[test]
    fn adaptive_checkpoints_at_closest_boundary() {
        let clock = CheckpointClock::new(ADAPTIVE, secs(2), Some(secs(3600)));
        let t = clock.interval().unwrap();
        assert!(close(t.as_secs_f64(), 120.0, 1e-9));
        let ms = Duration::from_millis;
        let t = secs(120);
        let clock = CheckpointClock {
            policy: ADAPTIVE,
            interval: Some(t),
        };
        // Next boundary at 130 s overshoots by 10 < undershoot 20: keep going.
        assert!(!clock.should_checkpoint(10, secs(100), secs(30)));
        // Next at 140 s overshoots by 30 > 10: checkpoint now, before T.
        assert!(clock.should_checkpoint(11, secs(110), secs(30)));
        // Tie (undershoot 20, overshoot 20): run the step.
        assert!(!clock.should_checkpoint(10, secs(100), secs(40)));
        assert!(clock.should_checkpoint(10, secs(100), secs(40) + ms(1)));
        // Past T always checkpoints; no step estimate means "at or after T".
        assert!(clock.should_checkpoint(1, secs(121), Duration::ZERO));
        assert!(clock.should_checkpoint(1, t, Duration::ZERO));
        assert!(!clock.should_checkpoint(1, t - ms(1), Duration::ZERO));
        // Nothing new to save.
        assert!(!clock.should_checkpoint(0, secs(500), secs(30)));
        // Saturating arithmetic on absurd inputs.
        assert!(clock.should_checkpoint(1, Duration::MAX, Duration::MAX));
    }

    #[test]
    fn retune_follows_new_estimates() {
        let mut clock = CheckpointClock::new(ADAPTIVE, secs(2), None);
        assert!(close(clock.interval().unwrap().as_secs_f64(), 120.0, 1e-9));
        // C = 8 s → sqrt(2 · 8 · 3600) = 240 s.
        clock.retune(secs(8), Some(secs(3600)));
        assert!(close(clock.interval().unwrap().as_secs_f64(), 240.0, 1e-9));
        assert_eq!(clock.policy(), &ADAPTIVE);
    }

    proptest! {
        /// The clamped Young–Daly interval minimises the first-order overhead
        /// over every interval allowed by the policy.
        #[test]
        fn chosen_interval_minimises_overhead_within_bounds(
            cost_ms in 0u64..120_000,
            mtbf_s in 1u64..30 * 86_400,
            min_ms in 1u64..1_800_000,
            span_ms in 0u64..7_200_000,
            published in any::<bool>(),
            fracs in proptest::collection::vec(0.0f64..=1.0, 32),
        ) {
            let (cost, mtbf) = (Duration::from_millis(cost_ms), secs(mtbf_s));
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + span_ms));
            let policy = if published {
                CheckpointPolicy::Adaptive { min, max, default_mtbf: secs(1) }
            } else {
                CheckpointPolicy::Adaptive { min, max, default_mtbf: mtbf }
            };
            let chosen = policy.interval(cost, published.then_some(mtbf)).unwrap();
            prop_assert!(min <= chosen && chosen <= max);
            let best = expected_overhead_fraction(chosen, cost, mtbf);
            let grid = (0..=64).map(|i| f64::from(i) / 64.0);
            for frac in grid.chain(fracs) {
                let other = min + (max - min).mul_f64(frac);
                let f = expected_overhead_fraction(other, cost, mtbf);
                prop_assert!(best <= f * (1.0 + 1e-9), "T={chosen:?}: {best} > {f} at {other:?}");
            }
        }

        /// With steady steps, the adaptive clock stops at the step boundary
        /// closest to T.
        #[test]
        fn adaptive_stops_at_closest_boundary(t_ms in 1u64..600_000, step_ms in 1u64..100_000) {
            let (t, step) = (Duration::from_millis(t_ms), Duration::from_millis(step_ms));
            let clock = CheckpointClock { policy: ADAPTIVE, interval: Some(t) };
            let chosen = (1u32..).find(|&k| clock.should_checkpoint(k, step * k, step)).unwrap();
            let miss = |k: u32| (step * k).abs_diff(t);
            let last = t_ms / step_ms + 2;
            for k in 1..=u32::try_from(last).unwrap() {
                prop_assert!(miss(chosen) <= miss(k), "stopped at {chosen}, {k} is closer");
            }
        }
    }
}
