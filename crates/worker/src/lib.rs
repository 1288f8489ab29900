//! The job runtime: turns queued jobs into finished videos.
//!
//! # Layout
//! - [`control`]: the [`ControlPlane`] trait, the worker's only view of the
//!   platform, and [`LocalControl`], its implementation over store, bucket and
//!   scheduler (in-process workers, and the server side of the internal
//!   worker API); [`remote`]: the same trait over that HTTP API.
//! - [`dispatch`]: the [`Dispatcher`] owns the pure scheduler and wakes idle
//!   workers (long-poll acquires).
//! - [`bus`]: a process-local fan-out of "job X changed" signals (SSE wake-ups).
//! - [`runner`]: a [`Worker`] slot runs one attempt at a time: resume or
//!   start, step, checkpoint (uploads overlap the next steps), moderate,
//!   encode, commit; stops gracefully on notice.
//! - [`leader`]: the scheduler singleton (a leader lease in the store) and
//!   wake-ups from other nodes.
//! - [`lease_keeper`]: one task per running job that heart-beats the lease
//!   with the latest progress and relays the control plane's directives.
//! - [`checkpoint_policy`]: when to checkpoint (fixed, or Young–Daly from
//!   the measured checkpoint cost and the fleet's preemption rate).
//! - [`fleet`]: preemption and recovery figures the control plane derives.
//! - [`housekeeping`]: the reaper (expired leases → queue or dead letter) and
//!   the retention sweeper (expired videos → bytes deleted).
//! - [`config`]: server-side knobs.

pub mod bus;
pub mod checkpoint_policy;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod fleet;
pub mod housekeeping;
pub mod leader;
pub mod lease_keeper;
pub mod remote;
pub mod runner;

pub use bus::JobBus;
pub use config::RuntimeConfig;
pub use control::{ControlPlane, LocalControl, Runtime, WorkerInfo};
pub use dispatch::Dispatcher;
pub use runner::{Engine, Worker, WorkerConfig};
