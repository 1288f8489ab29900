//! The documented wait bound, checked in a discrete-event simulation with a
//! virtual clock, C workers and random service times:
//!
//! `wait_J ≤ max_wait_ms[t] + ⌈(A_J + 1)(G_t + 1) / C⌉ · max_service_ms`,
//! `G_t = Σ_{u≠t} (⌈w_u / w_t⌉ + 1)`, `A_J` = same-tier jobs still queued
//! ahead of `J` when it ages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use proptest::prelude::*;
use videogen_core::{QueuedJob, TenantId, Tier, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, TierMap, WorkerView};

const MODELS: [&str; 3] = ["m0", "m1", "m2"];

#[derive(Debug, Clone)]
struct Arrival {
    at_ms: i64,
    tier: Tier,
    model: usize,
    service_ms: i64,
}

fn vid(n: usize) -> VideoId {
    VideoId::parse(&format!("video_{n:032x}")).expect("valid id")
}

fn index_of(id: &VideoId) -> usize {
    usize::from_str_radix(&id.as_str()["video_".len()..], 16).expect("hex id")
}

/// Runs the arrivals (sorted by time) through a scheduler with one worker per
/// entry of `loaded`; returns each job's dispatch time. Panics if a job is
/// dispatched twice or a worker idles while work is queued.
fn simulate(cfg: &SchedulerConfig, arrivals: &[Arrival], loaded: &[Vec<String>]) -> Vec<i64> {
    let tenant = TenantId::parse("t").expect("tenant");
    let mut s = Scheduler::new(cfg.clone());
    let mut dispatched: Vec<Option<i64>> = vec![None; arrivals.len()];
    let mut busy_until: Vec<Option<i64>> = vec![None; loaded.len()];
    let mut arrived = 0;
    let mut now_ms = arrivals.first().map_or(0, |a| a.at_ms);
    loop {
        for b in &mut busy_until {
            if b.is_some_and(|t| t <= now_ms) {
                *b = None;
            }
        }
        while arrived < arrivals.len() && arrivals[arrived].at_ms <= now_ms {
            let a = &arrivals[arrived];
            s.enqueue(QueuedJob {
                id: vid(arrived),
                tenant: tenant.clone(),
                tier: a.tier,
                model: MODELS[a.model].to_owned(),
                enqueued_at_ms: a.at_ms,
                not_before_ms: None,
            });
            arrived += 1;
        }
        for (w, b) in busy_until.iter_mut().enumerate() {
            if b.is_some() {
                continue;
            }
            let Some(job) = s.next(
                now_ms,
                &WorkerView {
                    loaded_models: &loaded[w],
                    serves: None,
                },
            ) else {
                break;
            };
            let n = index_of(&job.id);
            assert!(dispatched[n].is_none(), "job {n} dispatched twice");
            dispatched[n] = Some(now_ms);
            *b = Some(now_ms + arrivals[n].service_ms);
        }
        assert!(
            s.is_empty() || busy_until.iter().all(Option::is_some),
            "idle worker with work"
        );
        let next_arrival = arrivals.get(arrived).map(|a| a.at_ms);
        let next_free = busy_until.iter().flatten().min().copied();
        match (next_arrival, next_free) {
            (None, None) => break,
            (a, f) => now_ms = a.into_iter().chain(f).min().expect("an event"),
        }
    }
    assert!(s.is_empty() && arrived == arrivals.len());
    dispatched
        .into_iter()
        .enumerate()
        .map(|(n, d)| d.unwrap_or_else(|| panic!("job {n} lost")))
        .collect()
}

fn weight(cfg: &SchedulerConfig, t: Tier) -> u64 {
    u64::from((*cfg.weights.get(t)).max(1))
}

/// `G_t`: the most turns other tiers can take between two turns of `t`.
fn others_per_turn(cfg: &SchedulerConfig, t: Tier) -> u64 {
    let w = weight(cfg, t);
    Tier::ALL
        .iter()
        .filter(|&&u| u != t)
        .map(|&u| weight(cfg, u).div_ceil(w) + 1)
        .sum()
}

/// Checks every job against the bound; returns the largest wait per tier.
fn check_bound(
    cfg: &SchedulerConfig,
    arrivals: &[Arrival],
    dispatch_ms: &[i64],
    workers: usize,
    max_service_ms: i64,
) -> TierMap<i64> {
    let mut worst = TierMap::<i64>::default();
    for (j, a) in arrivals.iter().enumerate() {
        let max_wait_ms = (*cfg.max_wait_ms.get(a.tier)).max(0);
        let aged_at_ms = a.at_ms + max_wait_ms;
        let ahead = (0..arrivals.len())
            .filter(|&k| {
                arrivals[k].tier == a.tier && (arrivals[k].at_ms, k) < (a.at_ms, j) && dispatch_ms[k] >= aged_at_ms
            })
            .count() as u64;
        let turns = (ahead + 1) * (others_per_turn(cfg, a.tier) + 1);
        let bound_ms = max_wait_ms + turns.div_ceil(workers as u64) as i64 * max_service_ms;
        let wait_ms = dispatch_ms[j] - a.at_ms;
        assert!(
            wait_ms <= bound_ms,
            "job {j} ({}) waited {wait_ms} ms > bound {bound_ms} ms (ahead {ahead})",
            a.tier
        );
        let w = worst.get_mut(a.tier);
        *w = (*w).max(wait_ms);
    }
    worst
}

fn tier_strategy() -> impl Strategy<Value = Tier> {
    prop_oneof![2 => Just(Tier::Free), 2 => Just(Tier::Paid), 1 => Just(Tier::Internal)]
}

/// Bursts of same-tier arrivals separated by random gaps.
fn arrivals_strategy(max_service_ms: i64) -> impl Strategy<Value = Vec<Arrival>> {
    let burst = (0..=20_000i64, tier_strategy(), 1..=12usize, 0..3usize);
    (
        prop::collection::vec(burst, 1..40),
        prop::collection::vec(1..=max_service_ms, 500),
    )
        .prop_map(|(bursts, services)| {
            let mut out = Vec::new();
            let mut at_ms = 0;
            for (gap_ms, tier, len, model) in bursts {
                at_ms += gap_ms;
                for k in 0..len {
                    let service_ms = services[out.len() % services.len()];
                    out.push(Arrival {
                        at_ms,
                        tier,
                        model: (model + k) % 3,
                        service_ms,
                    });
                }
            }
            out
        })
}

fn config_strategy() -> impl Strategy<Value = SchedulerConfig> {
    (
        prop::array::uniform3(0..=10u32),
        prop::array::uniform3(0..=300_000i64),
        0..=6usize,
    )
        .prop_map(|(w, mw, affinity_window)| SchedulerConfig {
            weights: TierMap {
                free: w[0],
                paid: w[1],
                internal: w[2],
            },
            max_wait_ms: TierMap {
                free: mw[0],
                paid: mw[1],
                internal: mw[2],
            },
            affinity_window,
        })
}

fn scenario() -> impl Strategy<Value = (SchedulerConfig, i64, Vec<Arrival>, Vec<Vec<String>>)> {
    (
        config_strategy(),
        1_000..=60_000i64,
        prop::collection::vec(0..8u8, 1..=8),
    )
        .prop_flat_map(|(cfg, max_service_ms, masks)| {
            let loaded: Vec<Vec<String>> = masks
                .iter()
                .map(|m| {
                    (0..3)
                        .filter(|b| m & (1 << b) != 0)
                        .map(|b| MODELS[b].to_owned())
                        .collect()
                })
                .collect();
            (
                Just(cfg),
                Just(max_service_ms),
                arrivals_strategy(max_service_ms),
                Just(loaded),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every job is dispatched exactly once (`simulate` asserts it) and within
    /// the documented bound of its tier.
    #[test]
    fn every_job_dispatched_once_within_bound(
        (cfg, max_service_ms, arrivals, loaded) in scenario()
    ) {
        let dispatch_ms = simulate(&cfg, &arrivals, &loaded);
        check_bound(&cfg, &arrivals, &dispatch_ms, loaded.len(), max_service_ms);
    }
}

/// A paid flood at 125% of capacity for six hours: paid backs up and ages,
/// yet every free job still meets its bound, which does not depend on paid.
#[test]
fn paid_flood_does_not_starve_free_jobs() {
    const WORKERS: usize = 4;
    const SERVICE_MS: i64 = 10_000;
    const HORIZON_MS: i64 = 6 * 3_600_000;
    let cfg = SchedulerConfig::default();
    let mut arrivals = Vec::new();
    for at_ms in (0..HORIZON_MS).step_by(2_000) {
        arrivals.push(Arrival {
            at_ms,
            tier: Tier::Paid,
            model: 0,
            service_ms: SERVICE_MS,
        });
        if at_ms % 30_000 == 0 {
            arrivals.push(Arrival {
                at_ms,
                tier: Tier::Free,
                model: 1,
                service_ms: SERVICE_MS,
            });
        }
    }
    let loaded = vec![vec!["m0".to_owned()]; WORKERS];
    let dispatch_ms = simulate(&cfg, &arrivals, &loaded);
    let worst = check_bound(&cfg, &arrivals, &dispatch_ms, WORKERS, SERVICE_MS);
    // The flood really saturated the workers: paid waited far past its aging point.
    assert!(worst.paid > 10 * cfg.max_wait_ms.paid, "paid worst {} ms", worst.paid);
    // Free's worst case with nothing queued ahead: 120 s + ⌈15 / 4⌉ · 10 s.
    assert!(worst.free <= 160_000, "free worst {} ms", worst.free);
}
