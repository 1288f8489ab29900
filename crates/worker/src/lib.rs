//! The worker runtime: turns leased jobs into finished videos.
//!
//! A worker sees the platform only through [`videogen_protocol::ControlPlane`]:
//! in `videogen serve` that is `videogen_control::LocalControl`; in a
//! `videogen worker` process it is [`RemoteControl`] over HTTP. This crate
//! knows neither the store nor the scheduler.
//!
//! # Layout
//! - [`runner`]: a [`Worker`] slot runs one attempt at a time: resume or
//!   start, step, checkpoint (uploads overlap the next steps), moderate,
//!   encode, commit; stops gracefully on notice.
//! - [`lease_keeper`]: one task per running job that heart-beats the lease
//!   with the latest progress and relays the control plane's directives.
//! - [`remote`]: [`RemoteControl`], the control plane over the internal
//!   worker API.
//! - [`utilization`]: the device's stepping fraction as `videogen_gpu_utilization`.
//!
//! When to checkpoint is a pure decision in `videogen_sched::checkpoint`.

pub mod lease_keeper;
pub mod remote;
pub mod runner;
pub mod utilization;

pub use remote::RemoteControl;
pub use runner::{Engine, ModelSet, Worker, WorkerConfig};
