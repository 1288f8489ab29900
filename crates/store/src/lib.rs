//! The durable job store: [`SqliteStore`] and [`PgStore`], the SQLite and
//! PostgreSQL implementations of [`videogen_core::store::Store`], with the
//! same semantics (the behavioural tests run every scenario on both).
//!
//! The store is the source of truth for jobs, their append-only event logs,
//! idempotency records and API keys. Every trait method is atomic (a savepoint
//! inside a group-committed transaction) and answers only once durable; every state change is computed with
//! [`videogen_core::JobState::apply`] and persisted with a compare-and-set on
//! the state it was computed from (plus the lease's `attempt` for worker
//! writes, which is the fencing token), and appends its `job_events` row
//! atomically with it.
//!
//! # Durability
//!
//! The database runs in WAL mode with `synchronous = NORMAL`. A committed
//! transaction is in the WAL file (in the OS page cache at least) before the
//! commit returns, so it survives the *process* dying at any point, `kill -9`
//! included — which is the requirement. What `NORMAL` gives up compared with
//! `FULL` is durability of the last few transactions across an OS crash or
//! power loss (the database stays consistent, but may roll back to an earlier
//! commit); in exchange a commit costs no `fsync`, which is what makes
//! thousands of jobs per second possible. Foreign keys are on and a
//! `busy_timeout` is set for other processes sharing the file.
//!
//! # Concurrency
//!
//! All writes of one [`SqliteStore`] run on one writer thread that owns the
//! only read-write connection and **group-commits** them: the writes waiting
//! when it becomes free share one `BEGIN IMMEDIATE … COMMIT`, each in its own
//! savepoint, and each caller is answered after the commit. Writers of this
//! process never meet on SQLite's lock (no `SQLITE_BUSY`), and under load the
//! cost of a commit is shared. The hot-path methods (submit, lease,
//! heartbeat, checkpoint, complete, fail, release) are each **one
//! statement**: the compare-and-set `UPDATE` fills an event outbox on the job
//! row and a trigger appends it to `job_events`. Reads use a small pool of
//! read-only connections, which WAL lets run beside the writer, and a
//! checkpointer thread folds the WAL back into the database file so that no
//! commit pays for it. The store uses `rusqlite` (synchronous, on threads it
//! owns) rather than an async driver: an async driver's hop to its own thread
//! per statement cost several times SQLite's own work for these statements
//! (see docs/PERFORMANCE.md).
//!
//! [`PgStore`] group-commits its hot path too, for a different reason: on
//! PostgreSQL with `synchronous_commit = on` every transaction waits for a
//! WAL flush, so a transaction per write bounds throughput far below what
//! the statements cost. Submits without idempotency key, leases, heartbeats,
//! checkpoints and completions are queued to one collector task (`pg_batch`)
//! that runs the writes waiting (up to 128, at most one per job) as **one
//! statement** — a multi-row compare-and-set per kind of write, over `unnest`
//! of per-write arrays, so each row keeps its own `WHERE state = … AND
//! attempt = …` and its trigger-appended event — and answers each caller
//! after that statement's commit. A batch that fails with a database error
//! runs again write by write, so one bad write fails alone. The other
//! methods are a statement or a short transaction each, on a `sqlx` pool.

//! # Layout
//!
//! - `migrations/sqlite/`: the schema, embedded and applied on open (`migrate`).
//!   Tables `jobs` (with partial indexes for runnable jobs, live leases, due
//!   expiries and dead letters), `job_events` (filled by triggers from the
//!   job's event outbox), `api_keys`, `worker_tokens`; ids are TEXT and times
//!   INTEGER Unix milliseconds so a PostgreSQL implementation can share the
//!   semantics.
//! - [`sqlite`]: [`SqliteStore`], its constructors and the trait implementation.
//! - `migrations/postgres/` and [`postgres`]: the same schema and statements
//!   on PostgreSQL ([`PgStore`], a `sqlx` connection pool); the event outbox
//!   is copied into `job_events` by a plpgsql trigger. `pg_batch` (private):
//!   its group commit, with [`GroupCommitStats`] for benchmarks and tests.
//! - `writer`, `readers`, `wal` (private): the writer thread with group
//!   commit, the reader pool, the WAL checkpointer.
//! - `migrate` (private): the migration runner; `rows` (private): row
//!   decoding and event payloads.

mod migrate;
mod open;
mod pg_batch;
pub mod pg_listen;
pub mod postgres;
mod readers;
mod rows;
pub mod sqlite;
mod wal;
mod writer;

pub use open::AnyStore;
pub use pg_batch::GroupCommitStats;
pub use pg_listen::Wakeup;
pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;
