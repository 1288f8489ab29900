//! The contract between a worker and the platform: what a worker may ask
//! ([`ControlPlane`]) and how that travels over HTTP ([`wire`]).
//!
//! # Layout
//! - [`control`]: the [`ControlPlane`] trait, the one seam between a worker
//!   and everything it must not touch directly, with the types its calls
//!   carry and [`ControlError`].
//! - [`upload`]: upload bodies and the size and checksum checks on them.
//! - [`wire`]: the internal worker API's paths, headers and bodies, shared by
//!   the server's routes (`videogen-api`) and the client (`videogen-worker`).
//!
//! The server side (`LocalControl`) lives in `videogen-control`, the worker
//! runtime and the HTTP client in `videogen-worker`; neither knows the other.

pub mod control;
pub mod upload;
pub mod wire;

pub use control::{
    AssetKind, Assignment, ControlError, ControlPlane, Directive, FleetInfo, HeartbeatReply, ModelReport, ModelState,
    ReleaseCause, RetryOutcome, WorkerInfo, is_stale, status_of,
};
pub use upload::{MAX_UPLOAD_BYTES, Upload, UploadRejected};
