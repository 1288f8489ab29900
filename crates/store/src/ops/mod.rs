//! Every store operation, written once against [`Tx`](crate::exec::Tx):
//! which statements of [`crate::sql`] run, with what, and what their rows
//! mean. The decisions are the state machine's ([`JobState::apply`]): each
//! change is computed here and persisted by a compare-and-set on the state
//! it was computed from (plus the lease's attempt, the fencing token, for
//! worker writes). Event payloads are typed ([`EventPayload`]); the fields
//! of the job the event describes come from the row (see `sql.rs`).
//!
//! Run by a backend: on SQLite inside one savepoint of the writer thread's
//! group commit, on PostgreSQL inside one transaction (or, for the hot
//! path, by the group commit's multi-row statements with the same
//! payloads).

pub(crate) mod attempts;
pub(crate) mod credentials;
pub(crate) mod jobs;
pub(crate) mod leadership;
pub(crate) mod maintenance;

use videogen_core::store::StoreError;
use videogen_core::{EventPayload, JobState, Lease, Transition};

/// Error code of dead-lettered jobs (attempts exhausted).
pub use videogen_core::job::MAX_ATTEMPTS_EXCEEDED;
/// Error code of cancelled jobs.
pub const CANCELLED: &str = "cancelled";

/// Longest last-error text kept in a dead letter's message and events: it may
/// come from a remote worker, and it is stored in every event that cites it.
pub(crate) const ERROR_MESSAGE_CHARS_MAX: usize = 1000;

/// [`JobState::apply`], as a store error.
pub(crate) fn next(from: JobState, t: Transition) -> Result<JobState, StoreError> {
    Ok(from.apply(t)?)
}

pub(crate) fn stale(lease: &Lease) -> StoreError {
    StoreError::StaleLease {
        job: lease.job_id.clone(),
        attempt: lease.attempt,
    }
}

/// The outbox columns of an event: its kind and its data as JSON text.
pub(crate) fn outbox(event: &EventPayload) -> (&'static str, String) {
    (event.kind().as_str(), event.data_json())
}

/// A text cut to at most `max` characters (not bytes).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
