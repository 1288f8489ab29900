//! [`SqliteStore`]: the [`Store`] trait on SQLite.

use crate::rows::{
    self, api_key_columns, db, event_data, get, get_phase, get_state, get_u8, get_u32,
    job_columns, queued_columns, to_json,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use videogen_core::store::{
    ApiKey, Idempotency, ListQuery, NewJob, Order, Reclaimed, Store, StoreError, Submitted,
};
use videogen_core::{
    CheckpointRef, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, QueuedJob,
    RequeueReason, TenantId, Transition, VideoId, WorkerId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a connection waits for a lock held by *another process* (or, for
/// readers, a WAL checkpoint) before failing with `SQLITE_BUSY`. Writers of
/// this process never wait on SQLite's lock: they queue on the writer mutex.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read connections of a file-backed store. Reads are short point lookups and
/// small range scans, so a few connections are plenty on small machines.
const READERS: u32 = 4;

/// Error code of dead-lettered jobs (attempts exhausted).
pub const MAX_ATTEMPTS_EXCEEDED: &str = "max_attempts_exceeded";
/// Error code of cancelled jobs.
pub const CANCELLED: &str = "cancelled";

/// The SQLite job store.
///
/// # Write concurrency
///
/// Every write transaction runs on **one writer connection** behind a fair
/// (FIFO) async mutex, and opens with `BEGIN IMMEDIATE`:
///
/// - SQLite allows one writer at a time anyway. Several writer connections
///   would contend on the database lock, and SQLite's busy handler resolves
///   that contention by *sleeping* (1, 2, 5, 10 … ms), which wrecks throughput
///   and, once `busy_timeout` runs out, fails with `SQLITE_BUSY`. Queuing on an
///   in-process mutex instead costs a task wake-up, never fails, and keeps the
///   writer's prepared statements hot in one statement cache.
/// - `BEGIN IMMEDIATE` takes the write lock when the transaction starts, not at
///   its first write. A deferred transaction that reads and then writes can hit
///   `SQLITE_BUSY` on the lock upgrade *without* the busy handler being able to
///   help (another process may be writing the same file, e.g. an admin CLI);
///   with `IMMEDIATE` the only wait is at `BEGIN`, where `busy_timeout` applies.
///   It also makes every read-then-write inside a transaction consistent.
///
/// Reads (`job`, `list_jobs`, `events`, …) use a small pool of separate
/// connections: in WAL mode they read a committed snapshot without blocking,
/// or being blocked by, the writer. The in-memory store has a single
/// connection (an in-memory database is private to its connection), so there
/// reads share the writer's mutex.
///
/// A transaction future dropped half-way (e.g. a cancelled request) is safe:
/// sqlx queues a `ROLLBACK` on the connection before it serves the next
/// caller.
pub struct SqliteStore {
    writer: Mutex<SqliteConnection>,
    /// `None` for the in-memory store: reads go through `writer`.
    readers: Option<SqlitePool>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("in_memory", &self.readers.is_none())
            .finish_non_exhaustive()
    }
}

/// A connection to read with: a pooled reader, or the writer when in memory.
enum ReadConn<'a> {
    Pool(PoolConnection<Sqlite>),
    Writer(MutexGuard<'a, SqliteConnection>),
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            ReadConn::Pool(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            ReadConn::Pool(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
}

type Tx<'c> = Transaction<'c, Sqlite>;

async fn begin(conn: &mut SqliteConnection) -> Result<Tx<'_>, StoreError> {
    conn.begin_with("BEGIN IMMEDIATE").await.map_err(db)
}

async fn commit(tx: Tx<'_>) -> Result<(), StoreError> {
    tx.commit().await.map_err(db)
}

fn stale(lease: &Lease) -> StoreError {
    StoreError::StaleLease { job: lease.job_id.clone(), attempt: lease.attempt }
}

/// `JobState::apply`, as a store error.
fn next(from: JobState, t: Transition) -> Result<JobState, StoreError> {
    Ok(from.apply(t)?)
}

/// Appends one `job_events` row. `seq` comes from `jobs.last_event_seq`, which
/// the same transaction has just incremented: it always equals the previous
/// maximum `seq` of the job plus one (events are only ever added this way and
/// only removed together with the job), without a `MAX()` scan.
async fn insert_event(
    conn: &mut SqliteConnection,
    id: &VideoId,
    seq: i64,
    at_ms: i64,
    kind: &str,
    data: &Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO job_events (job_id, seq, at_ms, kind, data_json) VALUES (?, ?, ?, ?, ?)")
        .bind(id.as_str())
        .bind(seq)
        .bind(at_ms)
        .bind(kind)
        .bind(to_json(data)?)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Running → queued for attempt `attempt` (compare-and-set on state and
/// attempt), with its `requeued` event. `None` if the CAS matched nothing.
async fn requeue_in_tx(
    conn: &mut SqliteConnection,
    id: &VideoId,
    attempt: u32,
    reason: RequeueReason,
    now_ms: i64,
) -> Result<Option<QueuedJob>, StoreError> {
    let from = JobState::Running;
    let to = next(from, Transition::Requeue(reason))?;
    let row = sqlx::query(concat!(
        "UPDATE jobs SET state = ?, phase = ?, enqueued_at_ms = ?, lease_worker = NULL, ",
        "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1 ",
        "WHERE id = ? AND state = ? AND attempt = ? ",
        "RETURNING ",
        queued_columns!(),
        ", progress, checkpoint_json, last_event_seq"
    ))
    .bind(to.as_str())
    .bind(Phase::Queued.as_str())
    .bind(now_ms)
    .bind(id.as_str())
    .bind(from.as_str())
    .bind(i64::from(attempt))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(row) = row else { return Ok(None) };
    let queued = rows::queued_job(&row)?;
    let resume_step = rows::get_checkpoint(&row, "checkpoint_json")?.map_or(0, |c| c.step);
    let data = event_data(
        to,
        Phase::Queued,
        get_u8(&row, "progress")?,
        attempt,
        json!({ "reason": reason.as_str(), "resume_step": resume_step }),
    );
    insert_event(conn, id, get(&row, "last_event_seq")?, now_ms, "requeued", &data).await?;
    Ok(Some(queued))
}

/// Running → failed for attempt `attempt` (compare-and-set on state and
/// attempt), with its `failed` event. `false` if the CAS matched nothing.
async fn fail_in_tx(
    conn: &mut SqliteConnection,
    id: &VideoId,
    attempt: u32,
    error: &JobError,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let from = JobState::Running;
    let to = next(from, Transition::Fail)?;
    let row = sqlx::query(concat!(
        "UPDATE jobs SET state = ?, phase = ?, error_json = ?, lease_worker = NULL, ",
        "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1 ",
        "WHERE id = ? AND state = ? AND attempt = ? ",
        "RETURNING progress, last_event_seq"
    ))
    .bind(to.as_str())
    .bind(Phase::Failed.as_str())
    .bind(to_json(error)?)
    .bind(id.as_str())
    .bind(from.as_str())
    .bind(i64::from(attempt))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(row) = row else { return Ok(false) };
    let data = event_data(
        to,
        Phase::Failed,
        get_u8(&row, "progress")?,
        attempt,
        json!({ "error": rows::error_value(error) }),
    );
    insert_event(conn, id, get(&row, "last_event_seq")?, now_ms, "failed", &data).await?;
    Ok(true)
}

/// Requeues, or dead-letters once `attempt >= max_attempts`, each
/// `(id, attempt)` of `running` (all read in the same transaction).
async fn reclaim_in_tx(
    conn: &mut SqliteConnection,
    running: Vec<(VideoId, u32)>,
    reason: RequeueReason,
    now_ms: i64,
    max_attempts: u32,
) -> Result<Vec<Reclaimed>, StoreError> {
    let mut out = Vec::with_capacity(running.len());
    for (id, attempt) in running {
        if attempt >= max_attempts {
            let error = JobError::new(
                MAX_ATTEMPTS_EXCEEDED,
                format!(
                    "gave up after {attempt} attempts (last one ended: {})",
                    reason.as_str()
                ),
            );
            if fail_in_tx(conn, &id, attempt, &error, now_ms).await? {
                tracing::warn!(job = %id, attempt, reason = reason.as_str(), "job dead-lettered");
                out.push(Reclaimed::DeadLettered(id));
            }
        } else if let Some(q) = requeue_in_tx(conn, &id, attempt, reason, now_ms).await? {
            tracing::info!(job = %id, attempt, reason = reason.as_str(), "job requeued");
            out.push(Reclaimed::Requeued(q));
        }
    }
    Ok(out)
}

fn running_rows(rows: Vec<sqlx::sqlite::SqliteRow>) -> Result<Vec<(VideoId, u32)>, StoreError> {
    rows.iter()
        .map(|r| {
            let id: String = get(r, "id")?;
            let id = VideoId::parse(&id)
                .ok_or_else(|| StoreError::Backend(format!("corrupt job id {id:?}")))?;
            Ok((id, get_u32(r, "attempt")?))
        })
        .collect()
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, applies the
    /// migrations, and sets WAL mode, `synchronous = NORMAL`, foreign keys and
    /// a busy timeout. See the crate docs for the durability this gives.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);
        // WAL is a persistent property of the file: the writer sets it (it
        // needs an exclusive lock the first time), readers find it set.
        let mut writer = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .test_before_acquire(false)
            .idle_timeout(Duration::from_secs(600))
            .max_lifetime(None)
            .connect_with(base.read_only(true))
            .await
            .map_err(db)?;
        Ok(Self { writer: Mutex::new(writer), readers: Some(readers) })
    }

    /// A private in-memory database on a single connection, for tests. It
    /// vanishes when the store is dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true)
            .connect()
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating in-memory store: {e}")))?;
        Ok(Self { writer: Mutex::new(conn), readers: None })
    }

    /// Closes every connection, waiting for them to finish (which also
    /// checkpoints the WAL when this is the last connection to the file).
    /// Dropping the store closes them too, just without waiting.
    pub async fn close(self) -> Result<(), StoreError> {
        if let Some(readers) = &self.readers {
            readers.close().await;
        }
        self.writer.into_inner().close().await.map_err(db)
    }

    async fn read(&self) -> Result<ReadConn<'_>, StoreError> {
        match &self.readers {
            Some(pool) => Ok(ReadConn::Pool(pool.acquire().await.map_err(db)?)),
            None => Ok(ReadConn::Writer(self.writer.lock().await)),
        }
    }

    /// One submit attempt. `Ok(None)`: the idempotency key was inserted
    /// concurrently by another connection; read again.
    async fn try_submit(
        &self,
        job: &NewJob,
        idem: Option<&Idempotency>,
    ) -> Result<Option<Submitted>, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        if let Some(idem) = idem {
            let row = sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                ", idempotency_body_hash FROM jobs WHERE tenant = ? AND idempotency_key = ?"
            ))
            .bind(job.tenant.as_str())
            .bind(idem.key.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(row) = row {
                commit(tx).await?;
                let hash: Option<String> = get(&row, "idempotency_body_hash")?;
                return if hash.as_deref() == Some(idem.body_hash.as_str()) {
                    Ok(Some(Submitted::Replayed(rows::job(&row)?)))
                } else {
                    Err(StoreError::IdempotencyConflict)
                };
            }
        }
        let inserted = sqlx::query(concat!(
            "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, ",
            "total_steps, attempt, created_at_ms, enqueued_at_ms, idempotency_key, ",
            "idempotency_body_hash, last_event_seq) ",
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, 0, ?, ?, ?, ?, 1)"
        ))
        .bind(job.id.as_str())
        .bind(job.tenant.as_str())
        .bind(job.tier.as_str())
        .bind(job.spec.model.as_str())
        .bind(to_json(&job.spec)?)
        .bind(JobState::Queued.as_str())
        .bind(Phase::Queued.as_str())
        .bind(i64::from(job.spec.steps))
        .bind(job.now_ms)
        .bind(job.now_ms)
        .bind(idem.map(|i| i.key.as_str()))
        .bind(idem.map(|i| i.body_hash.as_str()))
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            let idem_race = idem.is_some()
                && e.as_database_error().is_some_and(|d| {
                    d.is_unique_violation() && d.message().contains("idempotency_key")
                });
            return if idem_race { Ok(None) } else { Err(db(e)) };
        }
        let data = event_data(JobState::Queued, Phase::Queued, 0, 0, json!({}));
        insert_event(&mut tx, &job.id, 1, job.now_ms, "created", &data).await?;
        commit(tx).await?;
        Ok(Some(Submitted::Created(Job {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            tier: job.tier,
            spec: job.spec.clone(),
            state: JobState::Queued,
            phase: Phase::Queued,
            progress: 0,
            step: 0,
            attempt: 0,
            created_at_ms: job.now_ms,
            enqueued_at_ms: job.now_ms,
            started_at_ms: None,
            completed_at_ms: None,
            expires_at_ms: None,
            error: None,
            checkpoint: None,
            prev_checkpoint: None,
            outputs: None,
            lease: None,
        })))
    }
}

#[async_trait]
impl Store for SqliteStore {
    // ---- API keys

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(key.id.as_str())
        .bind(key.hash.as_str())
        .bind(key.prefix.as_str())
        .bind(key.tenant.as_str())
        .bind(key.tier.as_str())
        .bind(i64::from(key.admin))
        .bind(key.created_at_ms)
        .bind(key.revoked_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        commit(tx).await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = self.read().await?;
        let row = sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE hash = ?"))
            .bind(hash)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys ORDER BY created_at_ms, id"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        rows.iter().map(rows::api_key).collect()
    }

    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        commit(tx).await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- submission and reads

    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
        // A unique violation on (tenant, idempotency_key) means another
        // connection (another process on the same file) inserted the key
        // between our read and our insert: the retry reads its job. Within
        // this process the writer mutex already serialises the two.
        for _ in 0..3 {
            if let Some(done) = self.try_submit(&job, idem.as_ref()).await? {
                return Ok(done);
            }
        }
        Err(StoreError::Backend("idempotency key kept colliding; giving up".into()))
    }

    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let mut conn = self.read().await?;
        let row = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?"))
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        const ASC: &str =
            concat!("SELECT ", job_columns!(), " FROM jobs WHERE tenant = ? ORDER BY id ASC LIMIT ?");
        const ASC_AFTER: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ? AND id > ? ORDER BY id ASC LIMIT ?"
        );
        const DESC: &str =
            concat!("SELECT ", job_columns!(), " FROM jobs WHERE tenant = ? ORDER BY id DESC LIMIT ?");
        const DESC_AFTER: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ? AND id < ? ORDER BY id DESC LIMIT ?"
        );
        let sql = match (q.order, q.after.is_some()) {
            (Order::Asc, false) => ASC,
            (Order::Asc, true) => ASC_AFTER,
            (Order::Desc, false) => DESC,
            (Order::Desc, true) => DESC_AFTER,
        };
        let mut query = sqlx::query(sql).bind(tenant.as_str());
        if let Some(after) = &q.after {
            query = query.bind(after.as_str());
        }
        let mut conn = self.read().await?;
        let rows = query.bind(i64::from(q.limit)).fetch_all(&mut *conn).await.map_err(db)?;
        rows.iter().map(rows::job).collect()
    }

    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, data_json FROM job_events \
             WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.as_str())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let data: String = get(r, "data_json")?;
                Ok(JobEvent {
                    seq: get(r, "seq")?,
                    at_ms: get(r, "at_ms")?,
                    kind: get(r, "kind")?,
                    data: rows::event_data_from_str(&data)?,
                })
            })
            .collect()
    }

    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError> {
        let mut conn = self.read().await?;
        // The literal 'queued' lets SQLite use the partial index jobs_runnable.
        let rows = sqlx::query(concat!(
            "SELECT ",
            queued_columns!(),
            " FROM jobs WHERE state = 'queued' ORDER BY enqueued_at_ms, id"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        rows.iter().map(rows::queued_job).collect()
    }

    // ---- user actions

    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let row = sqlx::query("SELECT state FROM jobs WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Err(StoreError::NotFound(id.clone())) };
        let from = get_state(&row, "state")?;
        let to = next(from, Transition::Cancel)?;
        let error = JobError::new(CANCELLED, "the video generation was cancelled");
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = ?, phase = ?, error_json = ?, lease_worker = NULL, ",
            "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1 ",
            "WHERE id = ? AND state = ? RETURNING ",
            job_columns!(),
            ", last_event_seq"
        ))
        .bind(to.as_str())
        .bind(Phase::Cancelled.as_str())
        .bind(to_json(&error)?)
        .bind(id.as_str())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        // BEGIN IMMEDIATE holds the write lock since the read above, so the
        // compare-and-set cannot miss; report it as a backend fault if it does.
        let row = row.ok_or_else(|| StoreError::Backend(format!("job {id} changed under a write lock")))?;
        let job = rows::job(&row)?;
        let data = event_data(to, Phase::Cancelled, job.progress, job.attempt, json!({}));
        insert_event(&mut tx, id, get(&row, "last_event_seq")?, now_ms, "cancelled", &data).await?;
        commit(tx).await?;
        Ok(job)
    }

    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        // Explicit, though `ON DELETE CASCADE` would do it: the semantics must
        // not depend on the foreign_keys pragma.
        sqlx::query("DELETE FROM job_events WHERE job_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query(concat!("DELETE FROM jobs WHERE id = ? RETURNING ", job_columns!()))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let job = row.as_ref().map(rows::job).transpose()?;
        commit(tx).await?;
        Ok(job)
    }

    // ---- worker protocol (fenced)

    async fn lease(
        &self,
        id: &VideoId,
        worker: &WorkerId,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let from = JobState::Queued;
        let to = next(from, Transition::Lease)?;
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let row = sqlx::query(
            "UPDATE jobs SET state = ?, attempt = attempt + 1, \
             phase = CASE WHEN checkpoint_json IS NULL THEN ? ELSE ? END, \
             lease_worker = ?, lease_expires_at_ms = ?, \
             started_at_ms = COALESCE(started_at_ms, ?), last_event_seq = last_event_seq + 1 \
             WHERE id = ? AND state = ? RETURNING attempt, phase, progress, last_event_seq",
        )
        .bind(to.as_str())
        .bind(Phase::LoadingModel.as_str())
        .bind(Phase::ResumingFromCheckpoint.as_str())
        .bind(worker.as_str())
        .bind(expires_at_ms)
        .bind(now_ms)
        .bind(id.as_str())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            commit(tx).await?;
            return Ok(None);
        };
        let attempt = get_u32(&row, "attempt")?;
        let data = event_data(
            to,
            get_phase(&row, "phase")?,
            get_u8(&row, "progress")?,
            attempt,
            json!({ "worker": worker.as_str() }),
        );
        insert_event(&mut tx, id, get(&row, "last_event_seq")?, now_ms, "leased", &data).await?;
        commit(tx).await?;
        Ok(Some(Lease { job_id: id.clone(), attempt, worker: worker.clone(), expires_at_ms }))
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        progress: &Progress,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<i64, StoreError> {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let percent = progress.percent.min(100);
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let row = sqlx::query("SELECT phase, progress FROM jobs WHERE id = ? AND state = ? AND attempt = ?")
            .bind(lease.job_id.as_str())
            .bind(JobState::Running.as_str())
            .bind(i64::from(lease.attempt))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Err(stale(lease)) };
        // Only a visible change is logged: heartbeats are frequent, the event
        // log stays bounded by (phases + 101 percent values) per attempt.
        let changed = get_phase(&row, "phase")? != progress.phase || get_u8(&row, "progress")? != percent;
        let row = sqlx::query(
            "UPDATE jobs SET phase = ?, progress = ?, step = ?, total_steps = ?, \
             lease_expires_at_ms = ?, last_event_seq = last_event_seq + ? \
             WHERE id = ? AND state = ? AND attempt = ? RETURNING last_event_seq",
        )
        .bind(progress.phase.as_str())
        .bind(i64::from(percent))
        .bind(i64::from(progress.step))
        .bind(i64::from(progress.total_steps))
        .bind(expires_at_ms)
        .bind(i64::from(changed))
        .bind(lease.job_id.as_str())
        .bind(JobState::Running.as_str())
        .bind(i64::from(lease.attempt))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Err(stale(lease)) };
        if changed {
            let data = event_data(
                JobState::Running,
                progress.phase,
                percent,
                lease.attempt,
                json!({ "step": progress.step, "total_steps": progress.total_steps }),
            );
            insert_event(&mut tx, &lease.job_id, get(&row, "last_event_seq")?, now_ms, "progress", &data)
                .await?;
        }
        commit(tx).await?;
        Ok(expires_at_ms)
    }

    async fn commit_checkpoint(&self, lease: &Lease, ck: &CheckpointRef, now_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let row = sqlx::query(
            "UPDATE jobs SET prev_checkpoint_json = checkpoint_json, checkpoint_json = ?, \
             last_event_seq = last_event_seq + 1 \
             WHERE id = ? AND state = ? AND attempt = ? RETURNING phase, progress, last_event_seq",
        )
        .bind(to_json(ck)?)
        .bind(lease.job_id.as_str())
        .bind(JobState::Running.as_str())
        .bind(i64::from(lease.attempt))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Err(stale(lease)) };
        let data = event_data(
            JobState::Running,
            get_phase(&row, "phase")?,
            get_u8(&row, "progress")?,
            lease.attempt,
            json!({ "step": ck.step, "key": ck.key }),
        );
        insert_event(&mut tx, &lease.job_id, get(&row, "last_event_seq")?, now_ms, "checkpoint", &data).await?;
        commit(tx).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        outputs: &Outputs,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Job, StoreError> {
        let from = JobState::Running;
        let to = next(from, Transition::Complete)?;
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = ?, phase = ?, progress = 100, outputs_json = ?, ",
            "completed_at_ms = ?, expires_at_ms = ?, lease_worker = NULL, lease_expires_at_ms = NULL, ",
            "last_event_seq = last_event_seq + 1 WHERE id = ? AND state = ? AND attempt = ? RETURNING ",
            job_columns!(),
            ", last_event_seq"
        ))
        .bind(to.as_str())
        .bind(Phase::Completed.as_str())
        .bind(to_json(outputs)?)
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(lease.job_id.as_str())
        .bind(from.as_str())
        .bind(i64::from(lease.attempt))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Err(stale(lease)) };
        let job = rows::job(&row)?;
        let data = event_data(
            to,
            Phase::Completed,
            100,
            lease.attempt,
            json!({ "expires_at_ms": expires_at_ms }),
        );
        insert_event(&mut tx, &lease.job_id, get(&row, "last_event_seq")?, now_ms, "completed", &data).await?;
        commit(tx).await?;
        Ok(job)
    }

    async fn fail(&self, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        if !fail_in_tx(&mut tx, &lease.job_id, lease.attempt, error, now_ms).await? {
            return Err(stale(lease));
        }
        commit(tx).await
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<QueuedJob, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let Some(q) = requeue_in_tx(&mut tx, &lease.job_id, lease.attempt, RequeueReason::Released, now_ms).await?
        else {
            return Err(stale(lease));
        };
        commit(tx).await?;
        Ok(q)
    }

    // ---- housekeeping

    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        // The literal 'running' lets SQLite use the partial index jobs_leases.
        let rows = sqlx::query(
            "SELECT id, attempt FROM jobs WHERE state = 'running' AND lease_expires_at_ms < ? \
             ORDER BY lease_expires_at_ms, id",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let running = running_rows(rows)?;
        let out = reclaim_in_tx(&mut tx, running, RequeueReason::LeaseExpired, now_ms, max_attempts).await?;
        commit(tx).await?;
        Ok(out)
    }

    async fn reclaim_node(&self, node: &str, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError> {
        // Worker ids are `{node}/{name}`: compare the prefix including the
        // slash, so node `a` does not match workers of node `ab`. substr/length
        // count characters on both sides; no LIKE, so no escaping of `%`/`_`.
        let prefix = format!("{node}/");
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let rows = sqlx::query(
            "SELECT id, attempt FROM jobs WHERE state = 'running' \
             AND substr(lease_worker, 1, length(?1)) = ?1 ORDER BY id",
        )
        .bind(prefix.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let running = running_rows(rows)?;
        let out = reclaim_in_tx(&mut tx, running, RequeueReason::NodeRestarted, now_ms, max_attempts).await?;
        commit(tx).await?;
        Ok(out)
    }

    async fn expire_due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        let from = JobState::Completed;
        let to = next(from, Transition::Expire)?;
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        // The literal 'completed' in the subquery lets SQLite use jobs_expiry.
        let rows = sqlx::query(concat!(
            "UPDATE jobs SET state = ?, phase = ?, last_event_seq = last_event_seq + 1 ",
            "WHERE state = ? AND id IN (SELECT id FROM jobs WHERE state = 'completed' ",
            "AND expires_at_ms <= ? ORDER BY expires_at_ms, id LIMIT ?) RETURNING ",
            job_columns!(),
            ", last_event_seq"
        ))
        .bind(to.as_str())
        .bind(Phase::Expired.as_str())
        .bind(from.as_str())
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = rows::job(row)?;
            let data = event_data(to, Phase::Expired, job.progress, job.attempt, json!({}));
            insert_event(&mut tx, &job.id, get(row, "last_event_seq")?, now_ms, "expired", &data).await?;
            jobs.push(job);
        }
        commit(tx).await?;
        Ok(jobs)
    }

    async fn append_event(&self, id: &VideoId, kind: &str, data: Value, now_ms: i64) -> Result<i64, StoreError> {
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let seq: Option<i64> =
            sqlx::query_scalar("UPDATE jobs SET last_event_seq = last_event_seq + 1 WHERE id = ? RETURNING last_event_seq")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some(seq) = seq else { return Err(StoreError::NotFound(id.clone())) };
        insert_event(&mut tx, id, seq, now_ms, kind, &data).await?;
        commit(tx).await?;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL literals used for partial indexes must match the state names.
    #[test]
    fn state_literals_match_the_state_machine() {
        assert_eq!(JobState::Queued.as_str(), "queued");
        assert_eq!(JobState::Running.as_str(), "running");
        assert_eq!(JobState::Completed.as_str(), "completed");
    }
}
