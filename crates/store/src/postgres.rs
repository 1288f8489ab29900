//! [`PgStore`]: the [`Store`] trait on PostgreSQL, with the semantics of
//! [`SqliteStore`](crate::SqliteStore) statement for statement.
//!
//! # How a change is written
//!
//! As on SQLite: each state change is one compare-and-set
//! `UPDATE … WHERE id = $n AND state = $m [AND attempt = $k]` whose target
//! state was computed with [`JobState::apply`]; the same statement fills the
//! job's event outbox and bumps `last_event_seq`, and an `AFTER UPDATE`
//! statement trigger (plpgsql, migration 0004) copies the events of every row
//! it changed into `job_events` before the statement ends. Under `READ
//! COMMITTED`, an `UPDATE` that meets a row changed by a concurrent
//! transaction waits for it and re-checks its `WHERE` clause on the new
//! version, so two racing compare-and-sets never both succeed.
//!
//! JSON columns are TEXT (the bytes the application wrote, like SQLite);
//! fields only the database knows are spliced in with `jsonb ||
//! jsonb_build_object(…)`, the counterpart of SQLite's `json_set`.
//!
//! Methods that read before they decide (cancel, redrive, keyed submit,
//! reclaim, requeue-or-dead-letter) run in one transaction; the rest are one
//! statement, which PostgreSQL runs as its own transaction.
//!
//! # Group commit
//!
//! The hot path — submit without an idempotency key, lease, heartbeat,
//! checkpoint, complete — does not run a statement per call: calls are
//! queued to a collector task (`pg_batch`), which runs what is waiting (up to
//! 128 writes, at most one per job) as one statement of multi-row
//! compare-and-sets over `unnest` arrays, hence one transaction and one WAL
//! flush, and answers each call after that commit. A call alone runs at
//! once, as a batch of one. Durability is unchanged (every answered write was
//! committed with the server's `synchronous_commit`); what is shared is the
//! flush, which is what bounds a transaction per write on PostgreSQL.

use crate::pg_batch::{Batcher, CheckpointOp, CompleteOp, GroupCommitStats, HeartbeatOp, LeaseOp, SubmitOp};
use crate::rows::{
    Columns, api_key_columns, corrupt, created_job, decode_api_key, decode_job, decode_queued_job, decode_worker_token,
    event_data, job_columns, queued_columns, to_json, worker_token_columns,
};
use crate::sqlite::{CANCELLED, ERROR_MESSAGE_CHARS_MAX, MAX_ATTEMPTS_EXCEEDED, next, parse_id, stale};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use std::time::Duration;
use videogen_core::store::{
    ApiKey, Idempotency, ListQuery, NewJob, Order, RESIGN_SQL, Reclaimed, Store, StoreError, Submitted, TRY_LEAD_SQL,
    WorkerToken,
};
use videogen_core::{
    CheckpointRef, IllegalTransition, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, QueuedJob,
    RequeueReason, TenantId, Transition, VideoId, WorkerId,
};

/// Connections the pool opens at most. Every method holds one connection for
/// one statement or one short transaction, so a few serve many callers.
const MAX_CONNECTIONS: u32 = 16;

/// Connections of the group-commit collector: one per batch in flight, and
/// one more lets it replace a broken one while the pool closes it.
const BATCH_CONNECTIONS: u32 = crate::pg_batch::DEPTH as u32 + 1;

/// How long a caller waits for a free connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a reclaim runs when PostgreSQL aborts it to break a deadlock.
const DEADLOCK_TRIES: u32 = 3;

/// Errors of the PostgreSQL driver, before they become [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
enum PgError {
    #[error("postgres: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("postgres migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

fn db(e: sqlx::Error) -> StoreError {
    PgError::from(e).into()
}

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.try_get(col).map_err(db)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(col).map_err(db)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.try_get(col).map_err(db)
    }
}

/// `deadlock_detected`: the transaction was rolled back and may run again.
fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("40P01")
}

fn id_of(row: &PgRow) -> Result<VideoId, StoreError> {
    let id: String = row.try_get("id").map_err(db)?;
    parse_id(&id)
}

fn state_of(id: &VideoId, state: &str) -> Result<JobState, StoreError> {
    JobState::parse(state).ok_or_else(|| corrupt("state", format!("{state:?} of job {id}")))
}

/// Binds a Rust `u32` as BIGINT (the type of every integer column).
fn big(v: u32) -> i64 {
    i64::from(v)
}

// ---- statements
//
// The SQLite statements with PostgreSQL spelling: `$n` parameters, `jsonb ||`
// for `json_set`, `starts_with` for the prefix match. Literal states in WHERE
// clauses let the planner match the partial indexes.

/// Running → queued: the shared SET list of release and reclaim.
/// $1 to-state, $2 phase, $3 now, $4 event data without progress/attempt/resume_step.
/// `enqueued_at_ms` stays: an interrupted job keeps its place in line.
macro_rules! requeue_set {
    () => {
        "UPDATE jobs SET state = $1, phase = $2, lease_worker = NULL, \
         lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
         event_kind = 'requeued', event_at_ms = $3, event_data_json = ($4::jsonb || jsonb_build_object(\
         'progress', progress, 'attempt', attempt, \
         'resume_step', COALESCE((checkpoint_json::jsonb ->> 'step')::bigint, 0)))::text "
    };
}

/// Running → failed with `max_attempts_exceeded`: the shared SET list of the
/// dead-letter statements. $1 to-state, $2 phase, $3 error code, $4 requeue
/// reason, $5 now, $6 event data without progress/attempt/error.
macro_rules! dead_letter_set {
    () => {
        "UPDATE jobs SET state = $1, phase = $2, \
         error_json = jsonb_build_object('code', $3::text, 'message', \
             'gave up after ' || attempt || ' attempts; the last one ended: ' || $4::text)::text, \
         lease_worker = NULL, lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
         event_kind = 'failed', event_at_ms = $5, event_data_json = ($6::jsonb || jsonb_build_object(\
         'progress', progress, 'attempt', attempt, 'error', jsonb_build_object('code', $3::text, \
         'message', 'gave up after ' || attempt || ' attempts; the last one ended: ' || $4::text)))::text "
    };
}

const RELEASE: &str = concat!(
    requeue_set!(),
    "WHERE id = $5 AND state = $6 AND attempt = $7 RETURNING ",
    queued_columns!()
);
/// $5 now, $6 max attempts.
const REQUEUE_EXPIRED: &str = concat!(
    requeue_set!(),
    "WHERE state = 'running' AND lease_expires_at_ms < $5 AND attempt - attempt_floor < $6 RETURNING ",
    queued_columns!()
);
/// $5 worker prefix `{node}/`, $6 max attempts. No LIKE, so no escaping.
const REQUEUE_NODE: &str = concat!(
    requeue_set!(),
    "WHERE state = 'running' AND starts_with(lease_worker, $5) AND attempt - attempt_floor < $6 RETURNING ",
    queued_columns!()
);
/// $7 now, $8 max attempts.
const DEAD_LETTER_EXPIRED: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND lease_expires_at_ms < $7 AND attempt - attempt_floor >= $8 RETURNING id"
);
/// $7 worker prefix, $8 max attempts.
const DEAD_LETTER_NODE: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND starts_with(lease_worker, $7) AND attempt - attempt_floor >= $8 RETURNING id"
);
/// An attempt's error, budget left. $5 id, $6 from-state, $7 attempt, $8 max attempts.
const REQUEUE_ON_ERROR: &str = concat!(
    requeue_set!(),
    "WHERE id = $5 AND state = $6 AND attempt = $7 AND attempt - attempt_floor < $8 RETURNING ",
    queued_columns!()
);
/// An attempt's error, budget spent. $7 id, $8 from-state, $9 attempt, $10 max attempts.
const DEAD_LETTER_ON_ERROR: &str = concat!(
    dead_letter_set!(),
    "WHERE id = $7 AND state = $8 AND attempt = $9 AND attempt - attempt_floor >= $10 RETURNING id"
);

/// The predicate of the `jobs_dead_letter` partial index, verbatim.
macro_rules! dead_letter_where {
    () => {
        "state = 'failed' AND (error_json::jsonb ->> 'code') = 'max_attempts_exceeded'"
    };
}

/// $1 after id (`''` for the start), $2 limit.
const DEAD_LETTERS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE ",
    dead_letter_where!(),
    " AND id > $1 ORDER BY id LIMIT $2"
);

/// Dead letter → queued: the error goes (into the event), the budget restarts
/// at the current attempt, and `attempt` itself stays.
/// $1 to-state, $2 phase, $3 now, $4 event data without progress/attempt/previous_error, $5 id.
const REDRIVE: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, enqueued_at_ms = $3, error_json = NULL, ",
    "attempt_floor = attempt, last_event_seq = last_event_seq + 1, event_kind = 'redriven', ",
    "event_at_ms = $3, event_data_json = ($4::jsonb || jsonb_build_object('progress', progress, ",
    "'attempt', attempt, 'previous_error', error_json::jsonb))::text WHERE id = $5 AND ",
    dead_letter_where!(),
    " RETURNING ",
    queued_columns!()
);

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

/// The PostgreSQL job store: a connection pool; all state is in the database,
/// so any number of server processes may share one.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// Connections of the group commit only (see [`PgStore::connect_with`]).
    batch_pool: PgPool,
    /// The group-commit collector of the hot path (clones share it).
    batch: Batcher,
}

/// Which running jobs a reclaim statement selects.
enum Filter {
    /// `lease_expires_at_ms < t`.
    ExpiredBefore(i64),
    /// `lease_worker` starts with this (`{node}/`).
    WorkerPrefix(String),
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl Filter {
    fn bind<'q>(&self, q: PgQuery<'q>) -> PgQuery<'q> {
        match self {
            Filter::ExpiredBefore(t) => q.bind(*t),
            Filter::WorkerPrefix(p) => q.bind(p.clone()),
        }
    }
}

/// The PostgreSQL migrations, embedded.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl PgStore {
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
            .map_err(|e| StoreError::Backend(format!("connecting to PostgreSQL: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(PgError::from)?;
        // The group commit's own connections, with planner settings that
        // keep its cached plan on primary-key lookups (see `pg_batch::PLANNER`).
        let batch_pool = PgPoolOptions::new()
            .max_connections(BATCH_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    sqlx::query(set_notify).execute(&mut *conn).await?;
                    sqlx::raw_sql(crate::pg_batch::PLANNER).execute(conn).await.map(|_| ())
                })
            })
            .connect_lazy(url)
            .map_err(|e| StoreError::Backend(format!("connecting to PostgreSQL: {e}")))?;
        Ok(Self {
            batch: Batcher::spawn(batch_pool.clone()),
            batch_pool,
            pool,
        })
    }

    /// Counters of the group commit (statements run, writes they answered),
    /// for benchmarks and tests.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.batch.stats()
    }

    /// Closes every connection, waiting for the ones in use to be returned.
    pub async fn close(self) -> Result<(), StoreError> {
        self.pool.close().await;
        self.batch_pool.close().await;
        Ok(())
    }

    /// Revokes a credential with `sql` ($1 now, $2 id); `true` if it was live.
    async fn revoke(&self, sql: &'static str, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(sql)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    /// Dead-letters, then re-queues, the running jobs `filter` selects, in one
    /// transaction.
    async fn reclaim(
        &self,
        sql: (&'static str, &'static str),
        filter: Filter,
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
        let max = big(max_attempts);
        // Two reapers (of two server processes) updating the same rows in a
        // different order can deadlock; PostgreSQL aborts one of them, which
        // then runs again on what is left.
        let mut tries = 0;
        let (dead, requeued) = loop {
            tries += 1;
            let mut tx = self.pool.begin().await.map_err(db)?;
            let q = sqlx::query(sql.0)
                .bind(failed.as_str())
                .bind(Phase::Failed.as_str())
                .bind(MAX_ATTEMPTS_EXCEEDED)
                .bind(reason.as_str())
                .bind(now_ms)
                .bind(failed_data.as_str());
            let dead = match filter.bind(q).bind(max).fetch_all(&mut *tx).await {
                Ok(rows) => rows,
                Err(e) if tries < DEADLOCK_TRIES && is_deadlock(&e) => continue,
                Err(e) => return Err(db(e)),
            };
            let q = sqlx::query(sql.1)
                .bind(queued.as_str())
                .bind(Phase::Queued.as_str())
                .bind(now_ms)
                .bind(queued_data.as_str());
            let requeued = match filter.bind(q).bind(max).fetch_all(&mut *tx).await {
                Ok(rows) => rows,
                Err(e) if tries < DEADLOCK_TRIES && is_deadlock(&e) => continue,
                Err(e) => return Err(db(e)),
            };
            tx.commit().await.map_err(db)?;
            break (dead, requeued);
        };
        let dead = dead.iter().map(id_of).collect::<Result<Vec<_>, _>>()?;
        let requeued = requeued.iter().map(decode_queued_job).collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(dead.len() + requeued.len());
        for id in dead {
            tracing::warn!(job = %id, reason = reason.as_str(), "job dead-lettered: attempts exhausted");
            out.push(Reclaimed::DeadLettered(id));
        }
        for q in requeued {
            tracing::info!(job = %q.id, reason = reason.as_str(), "job requeued");
            out.push(Reclaimed::Requeued(q));
        }
        Ok(out)
    }

    /// A job's state, locked until the transaction ends; `NotFound` if none.
    async fn locked_state(conn: &mut PgConnection, id: &VideoId) -> Result<JobState, StoreError> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(conn)
            .await
            .map_err(db)?;
        let state = state.ok_or_else(|| StoreError::NotFound(id.clone()))?;
        state_of(id, &state)
    }
}

/// The submit of one job, in a transaction: its insert, and on a keyed
/// duplicate the replay.
async fn submit_on(
    conn: &mut PgConnection,
    job: NewJob,
    idem: Option<Idempotency>,
    created_event: String,
) -> Result<Submitted, StoreError> {
    // One statement: the job, its idempotency record and (by trigger) its
    // `created` event. A keyed duplicate inserts nothing; if the duplicate is
    // not committed yet, PostgreSQL waits for it to commit or roll back.
    let inserted = sqlx::query(concat!(
        "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, ",
        "total_steps, attempt, created_at_ms, enqueued_at_ms, idempotency_key, ",
        "idempotency_body_hash, last_event_seq, event_kind, event_at_ms, event_data_json) ",
        "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8, 0, $9, $9, $10, $11, 1, 'created', $9, $12) ",
        "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    ))
    .bind(job.id.as_str())
    .bind(job.tenant.as_str())
    .bind(job.tier.as_str())
    .bind(job.spec.model.as_str())
    .bind(to_json(&job.spec)?)
    .bind(JobState::Queued.as_str())
    .bind(Phase::Queued.as_str())
    .bind(big(job.spec.steps))
    .bind(job.now_ms)
    .bind(idem.as_ref().map(|i| i.key.as_str()))
    .bind(idem.as_ref().map(|i| i.body_hash.as_str()))
    .bind(created_event)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    if inserted == 1 {
        return Ok(Submitted::Created(created_job(job)));
    }
    let Some(idem) = idem else {
        return Err(StoreError::Backend(format!("job {} was not inserted", job.id)));
    };
    // READ COMMITTED: this statement sees the committed conflicting row.
    let found = sqlx::query(concat!(
        "SELECT ",
        job_columns!(),
        ", idempotency_body_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
    ))
    .bind(job.tenant.as_str())
    .bind(idem.key.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(row) = found else {
        return Err(StoreError::Backend(
            "idempotency conflict without a conflicting job".into(),
        ));
    };
    let hash: Option<String> = row.try_get("idempotency_body_hash").map_err(db)?;
    if hash.as_deref() == Some(idem.body_hash.as_str()) {
        Ok(Submitted::Replayed(decode_job(&row)?))
    } else {
        Err(StoreError::IdempotencyConflict)
    }
}

#[async_trait]
impl Store for PgStore {
    // ---- API keys

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&key.id)
        .bind(&key.hash)
        .bind(&key.prefix)
        .bind(key.tenant.as_str())
        .bind(key.tier.as_str())
        .bind(key.admin)
        .bind(key.created_at_ms)
        .bind(key.revoked_at_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(decode_api_key)
            .transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys ORDER BY created_at_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(decode_api_key)
        .collect()
    }

    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.revoke(
            "UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
            id,
            now_ms,
        )
        .await
    }

    // ---- submission and reads

    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
        let created = event_data(JobState::Queued, Some(Phase::Queued), Some(0), Some(0), json!({}))?;
        if idem.is_none() {
            // Nothing to read first: the insert alone, group-committed.
            return self.batch.submit(SubmitOp { job, event: created }).await;
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let submitted = submit_on(&mut tx, job, idem, created).await?;
        tx.commit().await.map_err(db)?;
        Ok(submitted)
    }

    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(decode_job)
            .transpose()
    }

    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        const ASC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = $1 AND id > $2 ORDER BY id ASC LIMIT $3"
        );
        const DESC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        const DESC_FROM_NEWEST: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = $1 ORDER BY id DESC LIMIT $2"
        );
        // '' sorts before every id; there is no portable string that sorts
        // after every id, so newest-first without a cursor has its own statement.
        let (sql, bound) = match (q.order, &q.after) {
            (Order::Asc, Some(a)) => (ASC, Some(a.as_str())),
            (Order::Asc, None) => (ASC, Some("")),
            (Order::Desc, Some(a)) => (DESC, Some(a.as_str())),
            (Order::Desc, None) => (DESC_FROM_NEWEST, None),
        };
        let mut query = sqlx::query(sql).bind(tenant.as_str());
        if let Some(bound) = bound {
            query = query.bind(bound);
        }
        query
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(decode_job)
            .collect()
    }

    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        sqlx::query(
            "SELECT seq, at_ms, kind, data_json FROM job_events \
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after_seq)
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            let data: String = r.try_get("data_json").map_err(db)?;
            Ok(JobEvent {
                seq: r.try_get("seq").map_err(db)?,
                at_ms: r.try_get("at_ms").map_err(db)?,
                kind: r.try_get("kind").map_err(db)?,
                data: crate::rows::event_data_from_str(&data)?,
            })
        })
        .collect()
    }

    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            queued_columns!(),
            " FROM jobs WHERE state = 'queued' ORDER BY enqueued_at_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(decode_queued_job)
        .collect()
    }

    async fn queued_job(&self, id: &VideoId) -> Result<Option<QueuedJob>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            queued_columns!(),
            " FROM jobs WHERE id = $1 AND state = 'queued'"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(decode_queued_job)
        .transpose()
    }

    // ---- user actions

    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError> {
        let error = to_json(&JobError::new(CANCELLED, "the video generation was cancelled"))?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The row lock holds the state still until the update below.
        let from = Self::locked_state(&mut tx, id).await?;
        let to = next(from, Transition::Cancel)?;
        let data = event_data(to, Some(Phase::Cancelled), None, None, json!({}))?;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = $1, phase = $2, error_json = $3, lease_worker = NULL, ",
            "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, ",
            "event_kind = 'cancelled', event_at_ms = $4, ",
            "event_data_json = ($5::jsonb || jsonb_build_object('progress', progress, 'attempt', attempt))::text ",
            "WHERE id = $6 AND state = $7 RETURNING ",
            job_columns!()
        ))
        .bind(to.as_str())
        .bind(Phase::Cancelled.as_str())
        .bind(error)
        .bind(now_ms)
        .bind(data)
        .bind(id.as_str())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        // The row is locked, so the compare-and-set cannot miss; report it as
        // a fault if it does.
        let row = row.ok_or_else(|| StoreError::Backend(format!("job {id} changed under a row lock")))?;
        let job = decode_job(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(job)
    }

    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        // The job, then its events, in one transaction (what `ON DELETE
        // CASCADE` did before migration 0004). The second statement takes a
        // new snapshot, so it also sees an event committed by an update the
        // first one waited for.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(concat!("DELETE FROM jobs WHERE id = $1 RETURNING ", job_columns!()))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM job_events WHERE job_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let job = decode_job(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(job))
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
        self.batch
            .lease(LeaseOp {
                id: id.clone(),
                worker: worker.clone(),
                now_ms,
                expires_at_ms,
                event: data,
            })
            .await
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
        // A `progress` event only when the phase or percent changes (see the
        // SQLite store).
        self.batch
            .heartbeat(HeartbeatOp {
                lease: lease.clone(),
                phase: progress.phase,
                percent,
                step: progress.step,
                total_steps: progress.total_steps,
                now_ms,
                expires_at_ms,
                event: data,
            })
            .await?;
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
        self.batch
            .checkpoint(CheckpointOp {
                lease: lease.clone(),
                checkpoint: to_json(ck)?,
                now_ms,
                event: data,
            })
            .await
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
        self.batch
            .complete(CompleteOp {
                lease: lease.clone(),
                outputs: to_json(outputs)?,
                now_ms,
                expires_at_ms,
                event: data,
            })
            .await
    }

    async fn fail(&self, lease: &Lease, error: &JobError, now_ms: i64) -> Result<(), StoreError> {
        let from = JobState::Running;
        let to = next(from, Transition::Fail)?;
        let data = event_data(
            to,
            Some(Phase::Failed),
            None,
            Some(lease.attempt),
            json!({ "error": crate::rows::error_value(error) }),
        )?;
        let done = sqlx::query(
            "UPDATE jobs SET state = $1, phase = $2, error_json = $3, lease_worker = NULL, \
             lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
             event_kind = 'failed', event_at_ms = $4, \
             event_data_json = ($5::jsonb || jsonb_build_object('progress', progress))::text \
             WHERE id = $6 AND state = $7 AND attempt = $8",
        )
        .bind(to.as_str())
        .bind(Phase::Failed.as_str())
        .bind(to_json(error)?)
        .bind(now_ms)
        .bind(data)
        .bind(lease.job_id.as_str())
        .bind(from.as_str())
        .bind(big(lease.attempt))
        .execute(&self.pool)
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
        let row = sqlx::query(RELEASE)
            .bind(to.as_str())
            .bind(Phase::Queued.as_str())
            .bind(now_ms)
            .bind(data)
            .bind(lease.job_id.as_str())
            .bind(from.as_str())
            .bind(big(lease.attempt))
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref()
            .map(decode_queued_job)
            .transpose()?
            .ok_or_else(|| stale(lease))
    }

    // ---- housekeeping

    async fn reclaim_expired(&self, now_ms: i64, max_attempts: u32) -> Result<Vec<Reclaimed>, StoreError> {
        self.reclaim(
            (DEAD_LETTER_EXPIRED, REQUEUE_EXPIRED),
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
        self.reclaim(
            (DEAD_LETTER_NODE, REQUEUE_NODE),
            Filter::WorkerPrefix(format!("{node}/")),
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
        // A concurrent sweep blocks on the rows this one updates, then finds
        // their state changed and skips them: each job expires once.
        let mut jobs = sqlx::query(concat!(
            "UPDATE jobs SET state = $1, phase = $2, last_event_seq = last_event_seq + 1, ",
            "event_kind = 'expired', event_at_ms = $3, ",
            "event_data_json = ($4::jsonb || jsonb_build_object('progress', progress, 'attempt', attempt))::text ",
            "WHERE id IN (SELECT id FROM jobs WHERE state = 'completed' AND expires_at_ms <= $3 ",
            "ORDER BY expires_at_ms, id LIMIT $5) AND state = $6 RETURNING ",
            job_columns!()
        ))
        .bind(to.as_str())
        .bind(Phase::Expired.as_str())
        .bind(now_ms)
        .bind(data)
        .bind(big(limit))
        .bind(from.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(decode_job)
        .collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        Ok(jobs)
    }

    async fn append_event(&self, id: &VideoId, kind: &str, data: Value, now_ms: i64) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET last_event_seq = last_event_seq + 1, event_kind = $1, \
             event_at_ms = $2, event_data_json = $3 WHERE id = $4 RETURNING last_event_seq",
        )
        .bind(kind)
        .bind(now_ms)
        .bind(to_json(&data)?)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        seq.ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    // ---- worker tokens

    async fn insert_worker_token(&self, token: &WorkerToken) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO worker_tokens (",
            worker_token_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&token.id)
        .bind(&token.hash)
        .bind(&token.prefix)
        .bind(&token.name)
        .bind(token.created_at_ms)
        .bind(token.revoked_at_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<WorkerToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            worker_token_columns!(),
            " FROM worker_tokens WHERE hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(decode_worker_token)
        .transpose()
    }

    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            worker_token_columns!(),
            " FROM worker_tokens ORDER BY created_at_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(decode_worker_token)
        .collect()
    }

    async fn revoke_worker_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.revoke(
            "UPDATE worker_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
            id,
            now_ms,
        )
        .await
    }

    // ---- dead letters

    async fn try_lead(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(TRY_LEAD_SQL)
            .bind(name)
            .bind(holder)
            .bind(now_ms.saturating_add(ttl_ms))
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(RESIGN_SQL)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db)
    }

    async fn dead_letters(&self, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError> {
        // Every id sorts after ''.
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        sqlx::query(DEAD_LETTERS)
            .bind(after)
            .bind(big(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(decode_job)
            .collect()
    }

    async fn redrive(&self, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError> {
        let to = next(JobState::Failed, Transition::Redrive)?;
        let data = event_data(to, Some(Phase::Queued), None, None, json!({}))?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query(REDRIVE)
            .bind(to.as_str())
            .bind(Phase::Queued.as_str())
            .bind(now_ms)
            .bind(data)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if let Some(row) = row {
            let queued = decode_queued_job(&row)?;
            tx.commit().await.map_err(db)?;
            return Ok(queued);
        }
        // Not a dead letter: say why, from the state it is in. A failed job
        // that is not a dead letter (a fatal error, e.g. moderation) would
        // fail the same way again. The transaction changed nothing; dropping
        // it rolls back.
        let from = Self::locked_state(&mut tx, id).await?;
        Err(IllegalTransition {
            from,
            transition: Transition::Redrive,
        }
        .into())
    }

    async fn requeue_or_dead_letter(
        &self,
        lease: &Lease,
        reason_message: &str,
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<Reclaimed, StoreError> {
        let from = JobState::Running;
        let reason = RequeueReason::Error;
        let queued = next(from, Transition::Requeue(reason))?;
        let failed = next(from, Transition::Fail)?;
        let message: String = reason_message.chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
        let queued_data = event_data(
            queued,
            Some(Phase::Queued),
            None,
            None,
            json!({ "reason": reason.as_str(), "error": message }),
        )?;
        let failed_data = event_data(failed, Some(Phase::Failed), None, None, json!({}))?;
        let ended = format!("{}: {message}", reason.as_str());
        let (attempt, max) = (big(lease.attempt), big(max_attempts));
        // Both statements are fenced on (id, state, attempt), so at most one
        // matches; one transaction, so the decision is atomic.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let requeued = sqlx::query(REQUEUE_ON_ERROR)
            .bind(queued.as_str())
            .bind(Phase::Queued.as_str())
            .bind(now_ms)
            .bind(queued_data)
            .bind(lease.job_id.as_str())
            .bind(from.as_str())
            .bind(attempt)
            .bind(max)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let outcome = match requeued {
            Some(row) => Some(Reclaimed::Requeued(decode_queued_job(&row)?)),
            None => sqlx::query(DEAD_LETTER_ON_ERROR)
                .bind(failed.as_str())
                .bind(Phase::Failed.as_str())
                .bind(MAX_ATTEMPTS_EXCEEDED)
                .bind(ended)
                .bind(now_ms)
                .bind(failed_data)
                .bind(lease.job_id.as_str())
                .bind(from.as_str())
                .bind(attempt)
                .bind(max)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .as_ref()
                .map(id_of)
                .transpose()?
                .map(Reclaimed::DeadLettered),
        };
        tx.commit().await.map_err(db)?;
        match &outcome {
            Some(Reclaimed::Requeued(q)) => tracing::info!(job = %q.id, reason = reason.as_str(), "job requeued"),
            Some(Reclaimed::DeadLettered(id)) => {
                tracing::warn!(job = %id, "job dead-lettered: attempts exhausted");
            }
            None => {}
        }
        outcome.ok_or_else(|| stale(lease))
    }
}
