//! The job runtime: turns queued jobs into finished videos.
//!
//! # Layout
//! - [`dispatch`]: the [`Dispatcher`] owns the pure scheduler, wakes idle
//!   workers, and tracks running jobs so a cancel reaches them at the next step.
//! - [`bus`]: a process-local fan-out of "job X changed" signals (SSE wake-ups).
//! - [`lease_keeper`]: one task per running job that heart-beats the lease
//!   with the latest progress and notices when the lease is lost.
//! - [`runner`]: runs one leased attempt: resume or start, step, checkpoint,
//!   moderate, encode, commit — every write fenced by the lease.
//! - [`housekeeping`]: the reaper (expired leases → queue or dead letter) and
//!   the retention sweeper (expired videos → bytes deleted).
//! - [`config`]: knobs shared by the above.
//!
//! The runtime talks to storage only through the `Store` and `BlobStore`
//! traits, and to the model only through `videogen_model::Model`.

pub mod bus;
pub mod config;
pub mod dispatch;
pub mod housekeeping;
pub mod lease_keeper;
pub mod runner;

pub use bus::JobBus;
pub use config::RuntimeConfig;
pub use dispatch::Dispatcher;
pub use runner::{Runtime, Worker};
