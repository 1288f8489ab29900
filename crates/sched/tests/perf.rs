//! Rough cost of the hot operations at 100k queued jobs. Not a benchmark and
//! asserts no timings: `cargo test -p videogen-sched --release --test perf -- --ignored --nocapture`.

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
    };
    let mut s = Scheduler::new(SchedulerConfig::default());
    let t = Instant::now();
    for n in 0..N {
        s.enqueue(job(n, n as i64));
    }
    let enqueue_ns = t.elapsed().as_nanos() / N as u128;
    let loaded = vec!["m3".to_owned()];
    let worker = WorkerView {
        loaded_models: &loaded,
    };

    // Steady state at 100k: one next + one enqueue per step, fresh and aged.
    for (label, now_ms) in [("fresh", 0), ("aged", 10_000_000)] {
        let t = Instant::now();
        for k in 0..N {
            let j = s.next(now_ms, &worker).expect("non-empty");
            std::hint::black_box(&j);
            s.enqueue(job(N + k, j.enqueued_at_ms + N as i64));
        }
        let pair_ns = t.elapsed().as_nanos() / N as u128;
        println!("{label}: next+enqueue at {} queued: {pair_ns} ns", s.len());
    }
    let probe = VideoId::parse(&format!("video_{:032x}", 2 * N + N / 2)).expect("id");
    let t = Instant::now();
    let pos = s.position(&probe, 0);
    println!(
        "position (mid-queue, {pos:?}): {} µs",
        t.elapsed().as_micros()
    );
    println!("enqueue into growing queue: {enqueue_ns} ns/job");
}
