//! The platform's pure decisions: which queued job runs next ([`Scheduler`])
//! when a running job checkpoints ([`checkpoint`]), and how long a failed
//! job waits before its next attempt ([`retry`]).
//!
//! No I/O, no threads, no clock: every time-dependent call takes `now_ms`, so
//! the same code runs in the server, in tests with a virtual clock and in the
//! simulator. `enqueue`, `remove`, `next` and `position` are expected
//! O(log n).
//!
//! # Policy
//! Tiers are free, paid and internal; each has a FIFO queue ordered by
//! `(enqueued_at_ms, id)`. A job is *aged* once it has waited
//! `max_wait_ms[tier]` (defaults: free 120 s, paid 300 s, internal 600 s).
//!
//! 1. **Aging first.** If any job is aged, `next` returns an aged job: the
//!    candidates are the tiers whose head is aged. Only otherwise do all
//!    non-empty tiers compete.
//! 2. **Weighted fair share between the competing tiers** by stride
//!    scheduling: tier `t` has `stride_t = 2^64 / w_t` (weights default
//!    internal 8, paid 4, free 1; clamped to `1..=1_000_000`), the competing
//!    tier with the smallest pass `max(pass_t, vt)` wins (ties: internal, paid,
//!    free), and its pass advances by its stride. A tier that was empty or sat
//!    out banks no credit. Hence between two turns of a competing tier `t`
//!    the other tiers get at most `G_t = Σ_{u≠t} (⌈w_u / w_t⌉ + 1)` turns
//!    (defaults: `G_free` = 14, `G_paid` = 5, `G_internal` = 4).
//! 3. **FIFO within a tier.** Aged jobs are always taken from the head.
//! 4. **Model affinity** (fresh work only): when no job is aged, the winning
//!    tier hands out the first of its `affinity_window` (default 4) oldest
//!    jobs whose model the worker has loaded, else its head. Aged jobs are
//!    never reordered, so affinity cannot weaken the bound below.
//!
//! Across tiers, aged jobs share by weight instead of going strictly oldest
//! first: with a global oldest-first rule a sustained paid overload (whose
//! jobs age too) would delay aged free jobs without limit, whereas this way a
//! job's bound depends only on its own tier's backlog.
//!
//! # Wait bound
//! With `C` work-conserving workers (an idle worker calls `next` whenever the
//! queue is non-empty) and every service time at most `max_service_ms`, a
//! job `J` of tier `t` is dispatched within
//!
//! ```text
//! wait_J ≤ max_wait_ms[t] + ⌈(A_J + 1) · (G_t + 1) / C⌉ · max_service_ms
//! ```
//!
//! where `A_J` is the number of tier-`t` jobs still queued ahead of `J` when
//! `J` ages. Derivation: from the moment `d_J` that `J` ages until it is
//! dispatched, tier `t` has an aged head, so it competes at every dispatch
//! and takes its jobs FIFO; it therefore gets at least one of every `G_t + 1`
//! dispatches and `J` is among the first `(A_J + 1)(G_t + 1)` dispatches at or
//! after `d_J`. Every worker is busy at `d_J` and starts a new job at least
//! every `max_service_ms`, so `k` dispatches take at most
//! `⌈k / C⌉ · max_service_ms`. Arrivals to other tiers, however many, do not
//! enter the bound. `tests/bounds.rs` checks exactly this formula.
//!
//! # Layout
//! - [`config`]: [`TierMap`] and [`SchedulerConfig`] (weights, max waits, affinity window).
//! - [`scheduler`]: [`Scheduler`] (queue, `next`, `position`, metrics) and [`WorkerView`].
//! - `fifo`: one tier's queue, a treap that also answers "how many jobs are ahead".

pub mod checkpoint;
pub mod config;
mod fifo;
pub mod retry;
pub mod scheduler;

pub use config::{SchedulerConfig, TierMap};
pub use retry::RetryBackoff;
pub use scheduler::{MAX_WEIGHT, Scheduler, WorkerView};
