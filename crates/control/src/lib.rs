//! The control plane on the server: everything between the store and the
//! workers that decides and coordinates, but runs no model.
//!
//! # Layout
//! - [`local`]: [`Runtime`] (what a node runs jobs with) and [`LocalControl`],
//!   the [`videogen_protocol::ControlPlane`] over store, bucket and scheduler
//!   (in-process workers, and the server side of the internal worker API).
//! - [`dispatch`]: the [`Dispatcher`] owns the pure scheduler and wakes idle
//!   workers (long-poll acquires).
//! - [`bus`]: a process-local fan-out of "job X changed" signals (SSE wake-ups).
//! - [`leader`]: the scheduler singleton (a leader lease in the store) and
//!   wake-ups from other nodes.
//! - [`fleet`]: preemption and recovery figures the control plane derives.
//! - [`housekeeping`]: the reaper (expired leases → queue or dead letter),
//!   the retention sweeper (expired videos → bytes deleted, dead letters'
//!   checkpoints past their retention deleted) and the orphan sweep.
//! - [`orphans`]: which bytes a job in each state still needs, and the
//!   shard-by-shard sweep of those it does not.
//! - [`storage_health`]: dispatch paused while the blob store refuses
//!   writes (full disk, unreachable bucket), and the probe that resumes it.
//! - [`config`]: server-side knobs.

pub mod bus;
pub mod config;
pub mod dispatch;
pub mod fleet;
pub mod housekeeping;
pub mod leader;
pub mod local;
pub mod orphans;
pub mod storage_health;

pub use bus::JobBus;
pub use config::RuntimeConfig;
pub use dispatch::Dispatcher;
pub use fleet::FleetModel;
pub use local::{LocalControl, Runtime};
