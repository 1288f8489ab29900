//! Rough cost of the hot operations at 100k queued jobs. Not a benchmark and
//! asserts no timings: `cargo test -p videogen-sched --release --test perf -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::Instant;
use videogen_core::{QueuedJob, TenantId, Tier, VideoId};
use videogen_sched::{Scheduler, SchedulerConfig, WorkerView};

#[test]
#[ignore = "timing report, run by hand"]
fn cost_at_100k_queued() {
    const N: usize = 100_000;
    let tenant = TenantId::parse("t").expect("tenant");
    let job = |n: usize, at_ms: i64| QueuedJob {
        id: VideoId::parse(&format!("video_{n:032x}")).expect("id"),
        tenant: tenant.clone(),
        tier: Tier::ALL[n % 3],
        model: format!("m{}", n % 4),
        enqueued_at_ms: at_ms,
        not_before_ms: None,
    };
    // Jobs are built up front so only scheduler work is timed.
    let first: Vec<QueuedJob> = (0..N).map(|n| job(n, n as i64)).collect();
    let mut s = Scheduler::new(SchedulerConfig::default());
    let t = Instant::now();
    for j in first {
        s.enqueue(j);
    }
    let enqueue_ns = t.elapsed().as_nanos() / N as u128;
    println!("enqueue into a queue growing to {N}: {enqueue_ns} ns/job");
    let loaded = vec!["m3".to_owned()];
    let worker = WorkerView {
        loaded_models: &loaded,
        serves: None,
    };

    // Steady state at 100k: one next + one enqueue per step, first with
    // everything fresh (affinity scans), then with everything aged.
    for (phase, now_ms) in [(1, 0), (2, 10_000_000)] {
        let refill: Vec<QueuedJob> = (0..N).map(|k| job(phase * N + k, (phase * N + k) as i64)).collect();
        let t = Instant::now();
        for j in refill {
            std::hint::black_box(s.next(now_ms, &worker).expect("non-empty"));
            s.enqueue(j);
        }
        let pair_ns = t.elapsed().as_nanos() / N as u128;
        println!("phase {phase}: next+enqueue at {} queued: {pair_ns} ns", s.len());
    }
    let probe = VideoId::parse(&format!("video_{:032x}", 2 * N + N / 2)).expect("id");
    let t = Instant::now();
    let pos = s.position(&probe, 0);
    println!(
        "position mid-queue ({pos:?} of {}): {} us",
        s.len(),
        t.elapsed().as_micros()
    );
    // Spread over the whole queue, with nothing aged and with everything aged.
    let probes: Vec<VideoId> = (2 * N..3 * N)
        .step_by(100)
        .map(|n| VideoId::parse(&format!("video_{n:032x}")).expect("id"))
        .collect();
    for now_ms in [0, 10_000_000] {
        let t = Instant::now();
        let found = probes.iter().filter_map(|id| s.position(id, now_ms)).count();
        let per_ns = t.elapsed().as_nanos() / probes.len() as u128;
        println!("position of {found} jobs spread over the queue at now {now_ms}: {per_ns} ns each");
    }
}
