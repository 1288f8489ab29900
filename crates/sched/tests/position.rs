//! `position` must predict `next` exactly: with no arrivals and a fixed clock,
//! draining dispatches every job at the index `position` gave it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use proptest::prelude::*;
use videogen_core::{QueuedJob, TenantId, Tier, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, TierMap, WorkerView};

fn vid(n: usize) -> VideoId {
    VideoId::parse(&format!("video_{n:032x}")).expect("valid id")
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { tier: Tier, at_ms: i64 },
    Next { now_ms: i64 },
    Remove { nth: usize },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let tier = prop_oneof![Just(Tier::Free), Just(Tier::Paid), Just(Tier::Internal)];
    prop_oneof![
        6 => (tier, 0..400_000i64).prop_map(|(tier, at_ms)| Op::Enqueue { tier, at_ms }),
        2 => (0..800_000i64).prop_map(|now_ms| Op::Next { now_ms }),
        1 => (0..200usize).prop_map(|nth| Op::Remove { nth }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn position_matches_drain_order(
        weights in prop::array::uniform3(0..=9u32),
        max_wait in prop::array::uniform3(0..=300_000i64),
        ops in prop::collection::vec(op_strategy(), 0..200),
        now_ms in 0..800_000i64,
    ) {
        let cfg = SchedulerConfig {
            weights: TierMap { free: weights[0], paid: weights[1], internal: weights[2] },
            max_wait_ms: TierMap { free: max_wait[0], paid: max_wait[1], internal: max_wait[2] },
            ..SchedulerConfig::default()
        };
        let tenant = TenantId::parse("t").expect("tenant");
        let mut s = Scheduler::new(cfg);
        // A random history first, so the stride state is not pristine.
        let mut ids = Vec::new();
        for op in ops {
            match op {
                Op::Enqueue { tier, at_ms } => {
                    let id = vid(ids.len());
                    ids.push(id.clone());
                    s.enqueue(QueuedJob { id, tenant: tenant.clone(), tier, model: "m".into(), enqueued_at_ms: at_ms, not_before_ms: None });
                }
                Op::Next { now_ms } => { s.next(now_ms, &WorkerView::NONE); }
                Op::Remove { nth } => { if let Some(id) = ids.get(nth) { s.remove(id); } }
            }
        }
        let predicted: Vec<Option<u64>> = ids.iter().map(|id| s.position(id, now_ms)).collect();
        let queued = s.len();
        let mut order = 0u64;
        while let Some(job) = s.next(now_ms, &WorkerView::NONE) {
            let n = ids.iter().position(|id| *id == job.id).expect("known id");
            prop_assert_eq!(predicted[n], Some(order), "job {} ({})", n, job.tier);
            order += 1;
        }
        prop_assert_eq!(order as usize, queued);
        prop_assert_eq!(predicted.iter().flatten().count(), queued);
    }
}
