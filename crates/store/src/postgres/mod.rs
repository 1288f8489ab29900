//! [`PgStore`]: the store on PostgreSQL, with the semantics of
//! [`SqliteStore`](crate::SqliteStore): the same operations of
//! [`crate::ops`] and the same statements of [`crate::sql`].
//!
//! # How a change is written
//!
//! As on SQLite, each state change is one compare-and-set whose target state
//! was computed with [`JobState::apply`](videogen_core::JobState::apply);
//! the statement fills the job's event outbox and an `AFTER` statement
//! trigger (plpgsql, migrations 0004 and 0005) copies the events of every
//! row it changed into `job_events` before the statement ends. Under `READ
//! COMMITTED`, an `UPDATE` that meets a row changed by a concurrent
//! transaction waits for it and re-checks its `WHERE` clause on the new
//! version, so two racing compare-and-sets never both succeed.
//!
//! Reads run on a pooled connection; every other operation runs in one
//! transaction ([`Backend::write`]).
//!
//! # Group commit
//!
//! The hot path (submit without an idempotency key, lease, heartbeat,
//! checkpoint, complete) does not run a transaction per call: calls are
//! queued to a collector task (`batch`), which runs what is waiting (up to
//! 128 writes, at most one per job) as one statement of multi-row
//! compare-and-sets over `unnest` arrays, hence one transaction and one WAL
//! flush, and answers each call after that commit. Durability is unchanged
//! (every answered write was committed with the server's
//! `synchronous_commit`); what is shared is the flush, which is what bounds a
//! transaction per write on PostgreSQL.

mod batch;
pub mod listen;

pub use batch::GroupCommitStats;

use crate::backend::{Backend, SqlStore};
use crate::error;
use crate::exec::{Op, PgTx};
use crate::ops::outbox;
use batch::{Batcher, CheckpointOp, CompleteOp, HeartbeatOp, LeaseOp, SubmitOp};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::future::Future;
use std::time::Duration;
use videogen_core::store::{NewJob, StoreError, Submitted};
use videogen_core::{CheckpointRef, EventPayload, Job, Lease, Outputs, Progress, VideoId, WorkerId};

/// Connections the pool opens at most. Every method holds one connection for
/// one statement or one short transaction, so a few serve many callers.
const MAX_CONNECTIONS: u32 = 16;

/// Connections of the group-commit collector: one per batch in flight, and
/// one more lets it replace a broken one while the pool closes it.
const BATCH_CONNECTIONS: u32 = batch::DEPTH as u32 + 1;

/// How long a caller waits for a connection before failing (as
/// unavailable: the pool is exhausted, or the server cannot be reached:
/// sqlx keeps reconnecting until this passes). Short, so that while the
/// database is down requests fail at once with a 503 instead of piling up
/// (they waited up to 30 s, and 2,000 piled up in 12 s of outage).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The PostgreSQL migrations, in the form `sqlx` applies and records.
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(crate::migrate::postgres);

/// How a [`PgStore`] behaves beyond the database it talks to.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Whether every job event also sends a `videogen_changed` notification
    /// (SSE wake-ups on other nodes). Turn off when Redis fans changes out.
    pub notify_changes: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self { notify_changes: true }
    }
}

/// The PostgreSQL job store: a connection pool; all state is in the
/// database, so any number of server processes may share one.
pub type PgStore = SqlStore<PgBackend>;

/// PostgreSQL as a [`Backend`]; clones share the pools and the collector.
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
    /// Connections of the group commit only (see [`PgStore::connect_with`]).
    batch_pool: PgPool,
    /// The group-commit collector of the hot path.
    batch: Batcher,
}

impl SqlStore<PgBackend> {
    /// A digest of every migration (version and checksum): equal digests
    /// mean equal schemas, e.g. for reusing a migrated template database.
    pub fn schema_fingerprint() -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for m in MIGRATOR.iter() {
            digest.update(m.version.to_le_bytes());
            digest.update(&m.checksum);
        }
        hex::encode(digest.finalize())
    }

    /// Connects to the database at `url` (`postgres://user@host:port/db`) and
    /// applies the migrations (under an advisory lock, so processes starting
    /// together do not race).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// [`PgStore::connect`] with options.
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let set_notify: &'static str = if options.notify_changes {
            "SET videogen.notify_changes = 'on'"
        } else {
            "SET videogen.notify_changes = 'off'"
        };
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // Read by the event trigger (migration 0003).
                    sqlx::query(set_notify).execute(conn).await.map(|_| ())
                })
            })
            .connect(url)
            .await
            .map_err(error::pg)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::fault(format!("applying the PostgreSQL migrations: {e}")))?;
        // The group commit's own connections, with planner settings that
        // keep its cached plan on primary-key lookups (see `batch::PLANNER`).
        let batch_pool = PgPoolOptions::new()
            .max_connections(BATCH_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    sqlx::query(set_notify).execute(&mut *conn).await?;
                    sqlx::raw_sql(batch::PLANNER).execute(conn).await.map(|_| ())
                })
            })
            .connect_lazy(url)
            .map_err(error::pg)?;
        Ok(Self::new(PgBackend {
            batch: Batcher::spawn(batch_pool.clone()),
            batch_pool,
            pool,
        }))
    }

    /// Counters of the group commit (statements run, writes they answered),
    /// for benchmarks and tests.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.backend.batch.stats()
    }

    /// Returns once `reached` holds for the group commit's counters (for
    /// tests and benchmarks that must know writes reached the collector).
    pub async fn group_commit_reached(&self, reached: impl Fn(&GroupCommitStats) -> bool) {
        self.backend.batch.wait_until(reached).await;
    }

    /// Closes every connection, waiting for the ones in use to be returned.
    pub async fn close(self) -> Result<(), StoreError> {
        self.backend.pool.close().await;
        self.backend.batch_pool.close().await;
        Ok(())
    }
}

impl Backend for PgBackend {
    type Tx<'t> = PgTx<'t>;

    async fn read<R, F>(&self, op: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static,
    {
        let mut conn = self.pool.acquire().await.map_err(error::pg)?;
        op(&mut PgTx::new(&mut conn)).await
    }

    async fn write<R, F>(&self, op: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static,
    {
        let mut tx = self.pool.begin().await.map_err(error::pg)?;
        let out = op(&mut PgTx::new(&mut tx)).await;
        // An error rolls back: the transaction is dropped unfinished.
        let out = out?;
        tx.commit().await.map_err(error::pg)?;
        Ok(out)
    }

    fn submit_unkeyed(&self, job: NewJob) -> impl Future<Output = Result<Submitted, StoreError>> + Send {
        let (_, event) = outbox(&EventPayload::Created {});
        self.batch.submit(SubmitOp { job, event })
    }

    fn lease(
        &self,
        id: VideoId,
        worker: WorkerId,
        now_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send {
        let (_, event) = outbox(&EventPayload::Leased { worker: worker.clone() });
        self.batch.lease(LeaseOp {
            id,
            worker,
            now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            event,
        })
    }

    fn heartbeat(
        &self,
        lease: Lease,
        progress: Progress,
        now_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let (_, event) = outbox(&EventPayload::Progress {
            step: progress.step,
            total_steps: progress.total_steps,
        });
        let op = HeartbeatOp {
            lease,
            phase: progress.phase,
            percent: progress.percent.min(100),
            step: progress.step,
            total_steps: progress.total_steps,
            now_ms,
            expires_at_ms,
            event,
        };
        async move {
            self.batch.heartbeat(op).await?;
            Ok(expires_at_ms)
        }
    }

    fn commit_checkpoint(
        &self,
        lease: Lease,
        ck: CheckpointRef,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (_, event) = outbox(&EventPayload::Checkpoint {
            step: ck.step,
            key: ck.key.clone(),
        });
        async move {
            let checkpoint = crate::rows::to_json(&ck)?;
            self.batch
                .checkpoint(CheckpointOp {
                    lease,
                    checkpoint,
                    step: ck.step,
                    now_ms,
                    event,
                })
                .await
        }
    }

    fn complete(
        &self,
        lease: Lease,
        outputs: Outputs,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send {
        let (_, event) = outbox(&EventPayload::Completed { expires_at_ms });
        async move {
            let outputs = crate::rows::to_json(&outputs)?;
            self.batch
                .complete(CompleteOp {
                    lease,
                    outputs,
                    now_ms,
                    expires_at_ms,
                    event,
                })
                .await
        }
    }
}
