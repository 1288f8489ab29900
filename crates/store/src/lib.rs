//! The durable job store: the `videogen_core::store` traits on SQLite
//! ([`SqliteStore`], the embedded default) and PostgreSQL ([`PgStore`]),
//! with one set of statements, one set of operations and one behavioural
//! test suite for both.
//!
//! The store is the source of truth for jobs, their append-only event logs,
//! idempotency records, API keys, worker tokens and the scheduler's leader
//! lease. Every operation is atomic and answers only once durable; every
//! state change is computed with [`videogen_core::JobState::apply`] and
//! persisted with a compare-and-set on the state it was computed from (plus
//! the lease's `attempt` for worker writes, which is the fencing token), and
//! appends its typed event atomically with it.
//!
//! # Layout
//!
//! - `sql` (private): every statement, in SQL both engines run as written.
//! - `ops` (private): every operation, written once against `exec::Tx`:
//!   credentials (API keys and worker tokens share one implementation), jobs,
//!   attempts (the fenced writes), maintenance (reaper, retention, dead
//!   letters), leadership.
//! - `exec` (private): the two executors of those statements (`rusqlite` on
//!   the SQLite writer thread, `sqlx` on PostgreSQL) and row access.
//! - `backend`: [`SqlStore`], the core traits implemented once over a
//!   backend, with the store's logging and metrics.
//! - [`sqlite`]: the SQLite backend: one writer thread with group commit,
//!   a reader pool, a WAL checkpointer (see its docs for durability).
//! - [`postgres`]: the PostgreSQL backend: a `sqlx` pool, the hot path's
//!   group commit (multi-row statements, two batches in flight), and
//!   `LISTEN/NOTIFY` wake-ups ([`postgres::listen`]).
//! - `migrate` (private): the migrations of both engines (`migrations/`:
//!   one file per change where the engines agree, one per engine where
//!   they cannot).
//! - `error` (private): driver errors as `StoreError`s, classified by
//!   whether a retry can help.
//! - [`AnyStore`]: a store of either backend opened from a URL.

mod backend;
mod error;
mod exec;
mod migrate;
mod open;
mod ops;
mod rows;
mod sql;

pub mod postgres;
pub mod sqlite;

pub use backend::{Backend, SqlStore};
pub use open::{AnyStore, DatabaseUrl};
pub use ops::{CANCELLED, MAX_ATTEMPTS_EXCEEDED};
pub use postgres::listen::Wakeup;
pub use postgres::{GroupCommitStats, PgOptions, PgStore};
pub use sqlite::SqliteStore;

#[doc(hidden)]
pub use migrate::postgres_until;
