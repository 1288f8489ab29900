//! [`SqliteStore`]: the [`Store`] trait on SQLite.
//!
//! # How a change is written
//!
//! Each state change is one `UPDATE … WHERE id = ? AND state = ? [AND attempt = ?]`
//! (the compare-and-set), whose target state was computed with
//! [`JobState::apply`]. The same statement fills the job's event *outbox*
//! (`event_kind`, `event_at_ms`, `event_data_json`) and bumps
//! `last_event_seq`; a trigger copies that event into `job_events`. A
//! statement is atomic together with its triggers, so the change and its event
//! land together or not at all, in one round trip to the database thread. Event
//! fields only the database knows at that moment (the current `progress`, the
//! `attempt` of a reclaimed job, the checkpoint step to resume from) are
//! spliced into the JSON payload with `json_set`.
//!
//! Methods that need a read before they can decide (cancel, reclaim, delete,
//! keyed submit) run in an explicit `BEGIN IMMEDIATE` transaction instead.

use crate::rows::{self, api_key_columns, db, event_data, get, job_columns, queued_columns, to_json};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};
use videogen_core::store::{ApiKey, Idempotency, ListQuery, NewJob, Order, Reclaimed, Store, StoreError, Submitted};
use videogen_core::{
    CheckpointRef, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, QueuedJob, RequeueReason,
    TenantId, Transition, VideoId, WorkerId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a connection waits for a lock held by *another process* (or, for
/// readers, a WAL checkpoint) before failing with `SQLITE_BUSY`. Writers of
/// this process never wait on SQLite's lock: they queue on the writer mutex.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read connections of a file-backed store. Reads are short point lookups and
/// small range scans, so a few connections are plenty on small machines.
const READERS: u32 = 4;

/// Pages of WAL after which a commit checkpoints it into the database file
/// (SQLite's default is 1,000, i.e. ~4 MiB). Checkpoints are the only writes
/// that `fsync` under `synchronous = NORMAL`; a larger WAL makes them rarer and
/// lets one checkpoint absorb many commits to the same hot pages.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 8_192;

/// Page cache of the writer, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Error code of dead-lettered jobs (attempts exhausted).
pub const MAX_ATTEMPTS_EXCEEDED: &str = "max_attempts_exceeded";
/// Error code of cancelled jobs.
pub const CANCELLED: &str = "cancelled";

/// The SQLite job store.
///
/// # Write concurrency
///
/// Every write runs on **one writer connection** behind a fair (FIFO) async
/// mutex:
///
/// - SQLite allows one writer at a time anyway. Several writer connections
///   would contend on the database lock, and SQLite's busy handler resolves
///   that contention by *sleeping* (1, 2, 5, 10 … ms), which wrecks throughput
///   and, once `busy_timeout` runs out, fails with `SQLITE_BUSY`. Queuing on an
///   in-process mutex instead costs a task wake-up, never fails, and keeps the
///   writer's prepared statements hot in one statement cache.
/// - Most writes are a single statement (see the module docs), which SQLite
///   runs as its own transaction and which takes the write lock when it
///   starts, retrying under `busy_timeout` if another *process* holds it.
///   Multi-statement writes open with `BEGIN IMMEDIATE`, which likewise takes
///   the write lock up front: a deferred transaction that reads and then writes
///   can fail its lock upgrade with `SQLITE_BUSY` without the busy handler
///   being able to help. Both matter only when another process (e.g. an admin
///   CLI) writes the same file; in-process writers never meet on SQLite's lock.
///
/// Reads (`job`, `list_jobs`, `events`, …) use a small pool of read-only
/// connections: in WAL mode they read a committed snapshot without blocking,
/// or being blocked by, the writer. The in-memory store has a single
/// connection (an in-memory database is private to its connection), so there
/// reads share the writer's mutex.
///
/// A write future dropped half-way (e.g. a cancelled request) is safe: a
/// single statement is atomic, and for explicit transactions sqlx queues a
/// `ROLLBACK` on the connection before it serves the next caller.
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

async fn begin(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>, StoreError> {
    conn.begin_with("BEGIN IMMEDIATE").await.map_err(db)
}

fn stale(lease: &Lease) -> StoreError {
    StoreError::StaleLease {
        job: lease.job_id.clone(),
        attempt: lease.attempt,
    }
}

/// [`JobState::apply`], as a store error.
fn next(from: JobState, t: Transition) -> Result<JobState, StoreError> {
    Ok(from.apply(t)?)
}

fn parse_id(s: &str) -> Result<VideoId, StoreError> {
    VideoId::parse(s).ok_or_else(|| StoreError::Backend(format!("corrupt job id {s:?} in the job store")))
}

// ---- statements
//
// Numbered parameters (`?1`) are bound in order; a number may appear twice.
// Literal states in WHERE clauses (`state = 'running'`) let SQLite use the
// partial indexes; a unit test pins them to `JobState::as_str`.

/// Running → queued: the shared SET list of release and reclaim.
/// ?1 to-state, ?2 phase, ?3 now, ?4 event data without progress/attempt/resume_step.
macro_rules! requeue_set {
    () => {
        "UPDATE jobs SET state = ?1, phase = ?2, enqueued_at_ms = ?3, lease_worker = NULL, \
         lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
         event_kind = 'requeued', event_at_ms = ?3, event_data_json = json_set(?4, \
         '$.progress', progress, '$.attempt', attempt, \
         '$.resume_step', COALESCE(json_extract(checkpoint_json, '$.step'), 0)) "
    };
}

/// Running → failed with `max_attempts_exceeded`: the shared SET list of the
/// reclaim dead-letter statements. ?1 to-state, ?2 phase, ?3 error code,
/// ?4 requeue reason, ?5 now, ?6 event data without progress/attempt/error.
macro_rules! dead_letter_set {
    () => {
        "UPDATE jobs SET state = ?1, phase = ?2, \
         error_json = json_object('code', ?3, 'message', \
             'gave up after ' || attempt || ' attempts; the last one ended: ' || ?4), \
         lease_worker = NULL, lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
         event_kind = 'failed', event_at_ms = ?5, event_data_json = json_set(?6, \
         '$.progress', progress, '$.attempt', attempt, '$.error', json_object('code', ?3, \
         'message', 'gave up after ' || attempt || ' attempts; the last one ended: ' || ?4)) "
    };
}

const RELEASE: &str = concat!(
    requeue_set!(),
    "WHERE id = ?5 AND state = ?6 AND attempt = ?7 RETURNING ",
    queued_columns!()
);
/// ?5 now, ?6 max attempts.
const REQUEUE_EXPIRED: &str = concat!(
    requeue_set!(),
    "WHERE state = 'running' AND lease_expires_at_ms < ?5 AND attempt < ?6 RETURNING ",
    queued_columns!()
);
/// ?5 worker prefix `{node}/`, ?6 max attempts. `substr`/`length` count
/// characters on both sides; no LIKE, so no escaping of `%` and `_`.
const REQUEUE_NODE: &str = concat!(
    requeue_set!(),
    "WHERE state = 'running' AND substr(lease_worker, 1, length(?5)) = ?5 AND attempt < ?6 \
     RETURNING ",
    queued_columns!()
);
/// ?7 now, ?8 max attempts.
const DEAD_LETTER_EXPIRED: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND lease_expires_at_ms < ?7 AND attempt >= ?8 RETURNING id"
);
/// ?7 worker prefix, ?8 max attempts.
const DEAD_LETTER_NODE: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND substr(lease_worker, 1, length(?7)) = ?7 AND attempt >= ?8 \
     RETURNING id"
);

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, applies the
    /// migrations, and sets WAL mode, `synchronous = NORMAL`, foreign keys and
    /// a busy timeout. See the crate docs for the durability this gives.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal)
            // Per-statement logging times every statement; failures reach the
            // caller as StoreError instead.
            .disable_statement_logging();
        // WAL is a persistent property of the file: the writer sets it (it
        // needs an exclusive lock the first time), readers find it set.
        let mut writer = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
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
        Ok(Self {
            writer: Mutex::new(writer),
            readers: Some(readers),
        })
    }

    /// A private in-memory database on a single connection, for tests. It
    /// vanishes when the store is dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true)
            .disable_statement_logging()
            .connect()
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating in-memory store: {e}")))?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: None,
        })
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

    /// One submit attempt. `Ok(None)`: the key's job vanished between the
    /// conflicting insert and the read (deleted by another process); retry.
    async fn try_submit(
        &self,
        job: &NewJob,
        idem: Option<&Idempotency>,
        created_event: &str,
    ) -> Result<Option<Submitted>, StoreError> {
        let mut conn = self.writer.lock().await;
        // One statement: the job, its idempotency record and (by trigger) its
        // `created` event. A keyed duplicate inserts nothing.
        let inserted = sqlx::query(concat!(
            "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, ",
            "total_steps, attempt, created_at_ms, enqueued_at_ms, idempotency_key, ",
            "idempotency_body_hash, last_event_seq, event_kind, event_at_ms, event_data_json) ",
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, 0, ?9, ?9, ?10, ?11, 1, 'created', ?9, ?12) ",
            "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
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
        .bind(idem.map(|i| i.key.as_str()))
        .bind(idem.map(|i| i.body_hash.as_str()))
        .bind(created_event)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if inserted.rows_affected() == 1 {
            return Ok(Some(Submitted::Created(Job {
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
            })));
        }
        let Some(idem) = idem else {
            return Err(StoreError::Backend(format!("job {} was not inserted", job.id)));
        };
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            ", idempotency_body_hash FROM jobs WHERE tenant = ? AND idempotency_key = ?"
        ))
        .bind(job.tenant.as_str())
        .bind(idem.key.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let hash: Option<String> = get(&row, "idempotency_body_hash")?;
        if hash.as_deref() == Some(idem.body_hash.as_str()) {
            Ok(Some(Submitted::Replayed(rows::job(&row)?)))
        } else {
            Err(StoreError::IdempotencyConflict)
        }
    }

    /// Reclaims running jobs selected by `requeue_sql` / `dead_letter_sql`
    /// (whose filter parameter is `filter`) in one transaction.
    async fn reclaim(
        &self,
        dead_letter_sql: &'static str,
        requeue_sql: &'static str,
        filter: Filter<'_>,
        reason: RequeueReason,
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<Vec<Reclaimed>, StoreError> {
        let from = JobState::Running;
        let failed = next(from, Transition::Fail)?;
        let queued = next(from, Transition::Requeue(reason))?;
        let failed_data = event_data(failed, Some(Phase::Failed), None, None, json!({}))?;
        let queued_data = event_data(
            queued,
            Some(Phase::Queued),
            None,
            None,
            json!({ "reason": reason.as_str() }),
        )?;
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let dead = sqlx::query_scalar::<_, String>(dead_letter_sql)
            .bind(failed.as_str())
            .bind(Phase::Failed.as_str())
            .bind(MAX_ATTEMPTS_EXCEEDED)
            .bind(reason.as_str())
            .bind(now_ms)
            .bind(failed_data.as_str());
        let dead = match filter {
            Filter::ExpiredBefore(t) => dead.bind(t),
            Filter::WorkerPrefix(p) => dead.bind(p),
        };
        let dead = dead
            .bind(i64::from(max_attempts))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let requeued = sqlx::query(requeue_sql)
            .bind(queued.as_str())
            .bind(Phase::Queued.as_str())
            .bind(now_ms)
            .bind(queued_data.as_str());
        let requeued = match filter {
            Filter::ExpiredBefore(t) => requeued.bind(t),
            Filter::WorkerPrefix(p) => requeued.bind(p),
        };
        let requeued = requeued
            .bind(i64::from(max_attempts))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        drop(conn);

        let mut out = Vec::with_capacity(dead.len() + requeued.len());
        for id in dead {
            let id = parse_id(&id)?;
            tracing::warn!(job = %id, reason = reason.as_str(), "job dead-lettered: attempts exhausted");
            out.push(Reclaimed::DeadLettered(id));
        }
        for row in &requeued {
            let q = rows::queued_job(row)?;
            tracing::info!(job = %q.id, reason = reason.as_str(), "job requeued");
            out.push(Reclaimed::Requeued(q));
        }
        Ok(out)
    }
}

/// Which running jobs a reclaim statement selects.
#[derive(Clone, Copy)]
enum Filter<'a> {
    /// `lease_expires_at_ms < t`.
    ExpiredBefore(i64),
    /// `lease_worker` starts with this (`{node}/`).
    WorkerPrefix(&'a str),
}

#[async_trait]
impl Store for SqliteStore {
    // ---- API keys

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await;
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
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        Ok(())
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
        let done = sqlx::query("UPDATE api_keys SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    // ---- submission and reads

    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
        let created = event_data(JobState::Queued, Some(Phase::Queued), Some(0), Some(0), json!({}))?;
        // Within this process the writer mutex serialises two submits of the
        // same key: the second one's insert conflicts and it reads the first
        // one's job. A retry is only needed if that job is deleted in between
        // (by another process).
        for _ in 0..3 {
            if let Some(done) = self.try_submit(&job, idem.as_ref(), &created).await? {
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
        const ASC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ? ORDER BY id ASC LIMIT ?"
        );
        const ASC_AFTER: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ? AND id > ? ORDER BY id ASC LIMIT ?"
        );
        const DESC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ? ORDER BY id DESC LIMIT ?"
        );
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
        let error = JobError::new(CANCELLED, "the video generation was cancelled");
        let mut conn = self.writer.lock().await;
        let mut tx = begin(&mut conn).await?;
        let from: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(from) = from else {
            return Err(StoreError::NotFound(id.clone()));
        };
        let from =
            JobState::parse(&from).ok_or_else(|| StoreError::Backend(format!("corrupt state {from:?} of job {id}")))?;
        let to = next(from, Transition::Cancel)?;
        let data = event_data(to, Some(Phase::Cancelled), None, None, json!({}))?;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = ?1, phase = ?2, error_json = ?3, lease_worker = NULL, ",
            "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, ",
            "event_kind = 'cancelled', event_at_ms = ?4, ",
            "event_data_json = json_set(?5, '$.progress', progress, '$.attempt', attempt) ",
            "WHERE id = ?6 AND state = ?7 RETURNING ",
            job_columns!()
        ))
        .bind(to.as_str())
        .bind(Phase::Cancelled.as_str())
        .bind(to_json(&error)?)
        .bind(now_ms)
        .bind(data)
        .bind(id.as_str())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        // BEGIN IMMEDIATE holds the write lock since the read above, so the
        // compare-and-set cannot miss; report it as a backend fault if it does.
        let row = row.ok_or_else(|| StoreError::Backend(format!("job {id} changed under a write lock")))?;
        let job = rows::job(&row)?;
        tx.commit().await.map_err(db)?;
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
        tx.commit().await.map_err(db)?;
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
        let data = event_data(to, None, None, None, json!({ "worker": worker.as_str() }))?;
        let mut conn = self.writer.lock().await;
        let attempt: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = ?1, attempt = attempt + 1, \
             phase = CASE WHEN checkpoint_json IS NULL THEN ?2 ELSE ?3 END, \
             lease_worker = ?4, lease_expires_at_ms = ?5, started_at_ms = COALESCE(started_at_ms, ?6), \
             last_event_seq = last_event_seq + 1, event_kind = 'leased', event_at_ms = ?6, \
             event_data_json = json_set(?7, \
                 '$.phase', CASE WHEN checkpoint_json IS NULL THEN ?2 ELSE ?3 END, \
                 '$.progress', progress, '$.attempt', attempt + 1) \
             WHERE id = ?8 AND state = ?9 RETURNING attempt",
        )
        .bind(to.as_str())
        .bind(Phase::LoadingModel.as_str())
        .bind(Phase::ResumingFromCheckpoint.as_str())
        .bind(worker.as_str())
        .bind(expires_at_ms)
        .bind(now_ms)
        .bind(data)
        .bind(id.as_str())
        .bind(from.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        drop(conn);
        let Some(attempt) = attempt else { return Ok(None) };
        let attempt = u32::try_from(attempt)
            .map_err(|_| StoreError::Backend(format!("corrupt attempt {attempt} of job {id}")))?;
        Ok(Some(Lease {
            job_id: id.clone(),
            attempt,
            worker: worker.clone(),
            expires_at_ms,
        }))
    }

    async fn heartbeat(&self, lease: &Lease, progress: &Progress, now_ms: i64, ttl_ms: i64) -> Result<i64, StoreError> {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let percent = progress.percent.min(100);
        let data = event_data(
            JobState::Running,
            Some(progress.phase),
            Some(percent),
            Some(lease.attempt),
            json!({ "step": progress.step, "total_steps": progress.total_steps }),
        )?;
        // A `progress` event only when the phase or percent changes: heartbeats
        // are frequent, and this bounds the log to (phases + 101) per attempt.
        // SET expressions all see the row as it was before the update.
        let mut conn = self.writer.lock().await;
        let done = sqlx::query(
            "UPDATE jobs SET \
             last_event_seq = last_event_seq + (phase <> ?1 OR progress <> ?2), \
             event_kind = CASE WHEN phase <> ?1 OR progress <> ?2 THEN 'progress' ELSE event_kind END, \
             event_at_ms = CASE WHEN phase <> ?1 OR progress <> ?2 THEN ?3 ELSE event_at_ms END, \
             event_data_json = CASE WHEN phase <> ?1 OR progress <> ?2 THEN ?4 ELSE event_data_json END, \
             phase = ?1, progress = ?2, step = ?5, total_steps = ?6, lease_expires_at_ms = ?7 \
             WHERE id = ?8 AND state = ?9 AND attempt = ?10",
        )
        .bind(progress.phase.as_str())
        .bind(i64::from(percent))
        .bind(now_ms)
        .bind(data)
        .bind(i64::from(progress.step))
        .bind(i64::from(progress.total_steps))
        .bind(expires_at_ms)
        .bind(lease.job_id.as_str())
        .bind(JobState::Running.as_str())
        .bind(i64::from(lease.attempt))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(stale(lease));
        }
        Ok(expires_at_ms)
    }

    async fn commit_checkpoint(&self, lease: &Lease, ck: &CheckpointRef, now_ms: i64) -> Result<(), StoreError> {
        let data = event_data(
            JobState::Running,
            None,
            None,
            Some(lease.attempt),
            json!({ "step": ck.step, "key": ck.key }),
        )?;
        let mut conn = self.writer.lock().await;
        let done = sqlx::query(
            "UPDATE jobs SET prev_checkpoint_json = checkpoint_json, checkpoint_json = ?1, \
             last_event_seq = last_event_seq + 1, event_kind = 'checkpoint', event_at_ms = ?2, \
             event_data_json = json_set(?3, '$.phase', phase, '$.progress', progress) \
             WHERE id = ?4 AND state = ?5 AND attempt = ?6",
        )
        .bind(to_json(ck)?)
        .bind(now_ms)
        .bind(data)
        .bind(lease.job_id.as_str())
        .bind(JobState::Running.as_str())
        .bind(i64::from(lease.attempt))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(stale(lease));
        }
        Ok(())
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
        let data = event_data(
            to,
            Some(Phase::Completed),
            Some(100),
            Some(lease.attempt),
            json!({ "expires_at_ms": expires_at_ms }),
        )?;
        let mut conn = self.writer.lock().await;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = ?1, phase = ?2, progress = 100, outputs_json = ?3, ",
            "completed_at_ms = ?4, expires_at_ms = ?5, lease_worker = NULL, lease_expires_at_ms = NULL, ",
            "last_event_seq = last_event_seq + 1, event_kind = 'completed', event_at_ms = ?4, ",
            "event_data_json = ?6 WHERE id = ?7 AND state = ?8 AND attempt = ?9 RETURNING ",
            job_columns!()
        ))
        .bind(to.as_str())
        .bind(Phase::Completed.as_str())
        .bind(to_json(outputs)?)
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(data)
        .bind(lease.job_id.as_str())
        .bind(from.as_str())
        .bind(i64::from(lease.attempt))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        drop(conn);
        let Some(row) = row else { return Err(stale(lease)) };
        rows::job(&row)
    }

    async fn fail(&self, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError> {
        let from = JobState::Running;
        let to = next(from, Transition::Fail)?;
        let data = event_data(
            to,
            Some(Phase::Failed),
            None,
            Some(lease.attempt),
            json!({ "error": rows::error_value(error) }),
        )?;
        let mut conn = self.writer.lock().await;
        let done = sqlx::query(
            "UPDATE jobs SET state = ?1, phase = ?2, error_json = ?3, lease_worker = NULL, \
             lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
             event_kind = 'failed', event_at_ms = ?4, event_data_json = json_set(?5, '$.progress', progress) \
             WHERE id = ?6 AND state = ?7 AND attempt = ?8",
        )
        .bind(to.as_str())
        .bind(Phase::Failed.as_str())
        .bind(to_json(error)?)
        .bind(now_ms)
        .bind(data)
        .bind(lease.job_id.as_str())
        .bind(from.as_str())
        .bind(i64::from(lease.attempt))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(stale(lease));
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<QueuedJob, StoreError> {
        let from = JobState::Running;
        let reason = RequeueReason::Released;
        let to = next(from, Transition::Requeue(reason))?;
        let data = event_data(
            to,
            Some(Phase::Queued),
            None,
            None,
            json!({ "reason": reason.as_str() }),
        )?;
        let mut conn = self.writer.lock().await;
        let row = sqlx::query(RELEASE)
            .bind(to.as_str())
            .bind(Phase::Queued.as_str())
            .bind(now_ms)
            .bind(data)
            .bind(lease.job_id.as_str())
            .bind(from.as_str())
            .bind(i64::from(lease.attempt))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        drop(conn);
        let Some(row) = row else { return Err(stale(lease)) };
        rows::queued_job(&row)
    }

    // ---- housekeeping

    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError> {
        self.reclaim(
            DEAD_LETTER_EXPIRED,
            REQUEUE_EXPIRED,
            Filter::ExpiredBefore(now_ms),
            RequeueReason::LeaseExpired,
            now_ms,
            max_attempts,
        )
        .await
    }

    async fn reclaim_node(&self, node: &str, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError> {
        // Worker ids are `{node}/{name}`: match the prefix including the slash,
        // so node `a` does not reclaim the workers of node `ab`.
        let prefix = format!("{node}/");
        self.reclaim(
            DEAD_LETTER_NODE,
            REQUEUE_NODE,
            Filter::WorkerPrefix(&prefix),
            RequeueReason::NodeRestarted,
            now_ms,
            max_attempts,
        )
        .await
    }

    async fn expire_due(&self, now_ms: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        let from = JobState::Completed;
        let to = next(from, Transition::Expire)?;
        let data = event_data(to, Some(Phase::Expired), None, None, json!({}))?;
        let mut conn = self.writer.lock().await;
        let rows = sqlx::query(concat!(
            "UPDATE jobs SET state = ?1, phase = ?2, last_event_seq = last_event_seq + 1, ",
            "event_kind = 'expired', event_at_ms = ?3, ",
            "event_data_json = json_set(?4, '$.progress', progress, '$.attempt', attempt) ",
            "WHERE id IN (SELECT id FROM jobs WHERE state = 'completed' AND expires_at_ms <= ?3 ",
            "ORDER BY expires_at_ms, id LIMIT ?5) AND state = ?6 RETURNING ",
            job_columns!()
        ))
        .bind(to.as_str())
        .bind(Phase::Expired.as_str())
        .bind(now_ms)
        .bind(data)
        .bind(i64::from(limit))
        .bind(from.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        drop(conn);
        let mut jobs = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        Ok(jobs)
    }

    async fn append_event(&self, id: &VideoId, kind: &str, data: Value, now_ms: i64) -> Result<i64, StoreError> {
        let data = to_json(&data)?;
        let mut conn = self.writer.lock().await;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET last_event_seq = last_event_seq + 1, event_kind = ?1, \
             event_at_ms = ?2, event_data_json = ?3 WHERE id = ?4 RETURNING last_event_seq",
        )
        .bind(kind)
        .bind(now_ms)
        .bind(data)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        seq.ok_or_else(|| StoreError::NotFound(id.clone()))
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
