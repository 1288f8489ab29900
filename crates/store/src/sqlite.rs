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
//! land together or not at all. Event fields only the database knows at that
//! moment (the current `progress`, the `attempt` of a reclaimed job, the
//! checkpoint step to resume from) are spliced into the JSON payload with
//! `json_set`.
//!
//! Every write is a closure run on the writer thread (see `writer`), inside
//! its own savepoint of a group-committed transaction, so methods that read
//! before they decide (cancel, reclaim, delete, keyed submit) are atomic too.

use crate::readers::Readers;
use crate::rows::{
    self, api_key_columns, db, event_data, get, job_columns, queued_columns, to_json, worker_token_columns,
};
use crate::wal::Checkpointer;
use crate::writer::Writer;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Params, Row, params};
use serde_json::{Value, json};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use videogen_core::store::{
    ApiKey, Idempotency, ListQuery, NewJob, Order, RESIGN_SQL, Reclaimed, Store, StoreError, Submitted, TRY_LEAD_SQL,
    WorkerToken,
};
use videogen_core::{
    CheckpointRef, IllegalTransition, Job, JobError, JobEvent, JobState, Lease, Outputs, Phase, Progress, QueuedJob,
    RequeueReason, TenantId, Transition, VideoId, WorkerId,
};

/// How long a connection waits for a lock held by *another process* (e.g. an
/// admin CLI writing the same file) before failing with `SQLITE_BUSY`. Writes
/// of this process never meet on SQLite's lock: they share one thread.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read connections of a file-backed store. Reads are short point lookups and
/// small range scans, so a few connections are plenty on small machines.
const READERS: usize = 4;

/// Page cache of the writer, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Prepared statements each connection keeps (rusqlite's default is 16; the
/// store has about 30 distinct statements).
const STATEMENT_CACHE: usize = 64;

/// Error code of dead-lettered jobs (attempts exhausted).
pub const MAX_ATTEMPTS_EXCEEDED: &str = "max_attempts_exceeded";
/// Error code of cancelled jobs.
pub const CANCELLED: &str = "cancelled";

/// Longest last-error text kept in a dead letter's message and events: it may
/// come from a remote worker, and it is stored in every event that cites it.
pub(crate) const ERROR_MESSAGE_CHARS_MAX: usize = 1000;

/// The SQLite job store.
///
/// # Concurrency
///
/// - **Writes** are queued to one writer thread that owns the only read-write
///   connection and group-commits them (see the `writer` module): writers of
///   this process never contend on SQLite's lock, never see `SQLITE_BUSY`, and
///   share the cost of a commit under load. An answer is sent only after its
///   transaction committed. Transactions start with `BEGIN IMMEDIATE`, which
///   takes the write lock up front, waiting up to `busy_timeout` if another
///   *process* holds it.
/// - **Reads** (`job`, `list_jobs`, `events`, …) run on a small pool of
///   read-only connections on tokio's blocking threads: in WAL mode they read
///   the last committed snapshot without blocking, or being blocked by, the
///   writer. The in-memory store has one connection (an in-memory database is
///   private to its connection), so there reads queue with the writes.
/// - **WAL checkpoints** run on their own thread and connection (see the
///   `wal` module), so no commit pays for one.
///
/// A caller that stops waiting (a dropped request future) does not stop its
/// write: the write commits or fails as a whole either way.
pub struct SqliteStore {
    writer: Writer,
    /// `None` for the in-memory store: reads go through `writer`.
    readers: Option<Readers>,
    checkpointer: Option<Checkpointer>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("in_memory", &self.readers.is_none())
            .finish_non_exhaustive()
    }
}

pub(crate) fn stale(lease: &Lease) -> StoreError {
    StoreError::StaleLease {
        job: lease.job_id.clone(),
        attempt: lease.attempt,
    }
}

/// [`JobState::apply`], as a store error.
pub(crate) fn next(from: JobState, t: Transition) -> Result<JobState, StoreError> {
    Ok(from.apply(t)?)
}

pub(crate) fn parse_id(s: &str) -> Result<VideoId, StoreError> {
    VideoId::parse(s).ok_or_else(|| StoreError::Backend(format!("corrupt job id {s:?} in the job store")))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs a statement (from the connection's cache); rows changed.
fn exec(conn: &Connection, sql: &str, params: impl Params) -> Result<usize, StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(db)
}

/// The first row of a query (or of an `… RETURNING`), decoded with `f`.
fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = stmt.query(params).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(row) => f(row).map(Some),
        None => Ok(None),
    }
}

/// Every row of a query (or of an `… RETURNING`), decoded with `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = stmt.query(params).map_err(db)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", true)
}

/// Settings of the writer connection of a file-backed store.
fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    configure(conn).map_err(db)?;
    // WAL is a persistent property of the file: the writer sets it (it needs
    // an exclusive lock the first time), the other connections find it set.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "could not switch the database to WAL mode (it is in {mode:?} mode)"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
    // Checkpoints run on the checkpointer's thread, never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(db)?;
    conn.pragma_update(None, "cache_size", format!("-{WRITER_CACHE_KIB}"))
        .map_err(db)
}

// ---- statements
//
// Numbered parameters (`?1`) are bound in order; a number may appear twice.
// Literal states in WHERE clauses (`state = 'running'`) let SQLite use the
// partial indexes; a unit test pins them to `JobState::as_str`.

/// Running → queued: the shared SET list of release and reclaim.
/// ?1 to-state, ?2 phase, ?3 now, ?4 event data without progress/attempt/resume_step.
/// `enqueued_at_ms` stays: an interrupted job keeps its place in line (and its
/// age for the scheduler's wait bound) instead of queueing again at the back.
macro_rules! requeue_set {
    () => {
        "UPDATE jobs SET state = ?1, phase = ?2, lease_worker = NULL, \
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
    "WHERE state = 'running' AND lease_expires_at_ms < ?5 AND attempt - attempt_floor < ?6 RETURNING ",
    queued_columns!()
);
/// ?5 worker prefix `{node}/`, ?6 max attempts. `substr`/`length` count
/// characters on both sides; no LIKE, so no escaping of `%` and `_`.
const REQUEUE_NODE: &str = concat!(
    requeue_set!(),
    "WHERE state = 'running' AND substr(lease_worker, 1, length(?5)) = ?5 \
     AND attempt - attempt_floor < ?6 RETURNING ",
    queued_columns!()
);
/// ?7 now, ?8 max attempts.
const DEAD_LETTER_EXPIRED: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND lease_expires_at_ms < ?7 AND attempt - attempt_floor >= ?8 RETURNING id"
);
/// ?7 worker prefix, ?8 max attempts.
const DEAD_LETTER_NODE: &str = concat!(
    dead_letter_set!(),
    "WHERE state = 'running' AND substr(lease_worker, 1, length(?7)) = ?7 \
     AND attempt - attempt_floor >= ?8 RETURNING id"
);
/// An attempt's error, budget left. ?5 id, ?6 from-state, ?7 attempt, ?8 max attempts.
const REQUEUE_ON_ERROR: &str = concat!(
    requeue_set!(),
    "WHERE id = ?5 AND state = ?6 AND attempt = ?7 AND attempt - attempt_floor < ?8 RETURNING ",
    queued_columns!()
);
/// An attempt's error, budget spent. ?7 id, ?8 from-state, ?9 attempt, ?10 max attempts.
const DEAD_LETTER_ON_ERROR: &str = concat!(
    dead_letter_set!(),
    "WHERE id = ?7 AND state = ?8 AND attempt = ?9 AND attempt - attempt_floor >= ?10 RETURNING id"
);

/// The predicate of the `jobs_dead_letter` partial index, verbatim: SQLite
/// uses the index only for queries that contain it literally.
macro_rules! dead_letter_where {
    () => {
        "state = 'failed' AND json_extract(error_json, '$.code') = 'max_attempts_exceeded'"
    };
}

/// ?1 after id (`''` for the start), ?2 limit.
const DEAD_LETTERS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE ",
    dead_letter_where!(),
    " AND id > ?1 ORDER BY id LIMIT ?2"
);

/// Dead letter → queued: the error goes (into the event, for the record), the
/// budget restarts at the current attempt, and `attempt` itself stays.
/// ?1 to-state, ?2 phase, ?3 now, ?4 event data without progress/attempt/previous_error, ?5 id.
const REDRIVE: &str = concat!(
    "UPDATE jobs SET state = ?1, phase = ?2, enqueued_at_ms = ?3, error_json = NULL, ",
    "attempt_floor = attempt, last_event_seq = last_event_seq + 1, event_kind = 'redriven', ",
    "event_at_ms = ?3, event_data_json = json_set(?4, '$.progress', progress, '$.attempt', attempt, ",
    "'$.previous_error', json(error_json)) WHERE id = ?5 AND ",
    dead_letter_where!(),
    " RETURNING ",
    queued_columns!()
);

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, applies the
    /// migrations, and sets WAL mode, `synchronous = NORMAL`, foreign keys and
    /// a busy timeout. See the crate docs for the durability this gives.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let path = owned.as_path();
            let open = || -> Result<Connection, StoreError> {
                let conn = Connection::open(path).map_err(db)?;
                configure_writer(&conn)?;
                Ok(conn)
            };
            let mut conn = open().map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
            crate::migrate::migrate(&mut conn, now_ms())
                .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening the store: {e}")))??;
        let writer = Writer::spawn(conn, "videogen-store-writer", |conn| {
            // Last one out folds the WAL into the database file.
            if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
                tracing::warn!(error = %e, "final WAL checkpoint failed");
            }
        })?;
        let checkpointer = Checkpointer::spawn(path, writer.commits(), configure)?;
        Ok(Self {
            writer,
            readers: Some(Readers::new(path.to_owned(), READERS, configure)),
            checkpointer: Some(checkpointer),
        })
    }

    /// A private in-memory database on a single connection, for tests. It
    /// vanishes when the store is dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_with_flags(
            ":memory:",
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        configure(&conn).map_err(db)?;
        crate::migrate::migrate(&mut conn, now_ms())?;
        Ok(Self {
            writer: Writer::spawn(conn, "videogen-store-memory", |_| {})?,
            readers: None,
            checkpointer: None,
        })
    }

    /// Finishes the queued writes, checkpoints the WAL into the database file
    /// and closes every connection, waiting for all of it. Dropping the store
    /// does the same, just without waiting.
    pub async fn close(self) -> Result<(), StoreError> {
        let Self {
            mut writer,
            readers,
            checkpointer,
        } = self;
        if let Some(r) = &readers {
            r.close();
        }
        tokio::task::spawn_blocking(move || {
            drop(checkpointer);
            writer.shutdown();
        })
        .await
        .map_err(|e| StoreError::Backend(format!("closing the store: {e}")))
    }

    /// Runs a read on a reader connection (on the writer in memory).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.readers {
            Some(r) => r.call(f).await,
            None => self.writer.call(f).await,
        }
    }

    /// Revokes a credential with `sql` (?1 now, ?2 id); `true` if it was live.
    async fn revoke(&self, sql: &'static str, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .call(move |c| exec(c, sql, params![now_ms, id]).map(|n| n > 0))
            .await
    }

    /// Reclaims running jobs selected by `requeue_sql` / `dead_letter_sql`
    /// (whose filter parameter is `filter`) in one transaction.
    async fn reclaim(
        &self,
        dead_letter_sql: &'static str,
        requeue_sql: &'static str,
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
        let max = i64::from(max_attempts);
        let (dead, requeued) = self
            .writer
            .call(move |c| {
                let dead = all(
                    c,
                    dead_letter_sql,
                    params![
                        failed.as_str(),
                        Phase::Failed.as_str(),
                        MAX_ATTEMPTS_EXCEEDED,
                        reason.as_str(),
                        now_ms,
                        failed_data,
                        filter,
                        max
                    ],
                    |r| parse_id(&get::<String>(r, "id")?),
                )?;
                let requeued = all(
                    c,
                    requeue_sql,
                    params![
                        queued.as_str(),
                        Phase::Queued.as_str(),
                        now_ms,
                        queued_data,
                        filter,
                        max
                    ],
                    rows::queued_job,
                )?;
                Ok((dead, requeued))
            })
            .await?;
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
}

/// Which running jobs a reclaim statement selects; binds as its one parameter.
#[derive(Clone)]
enum Filter {
    /// `lease_expires_at_ms < t`.
    ExpiredBefore(i64),
    /// `lease_worker` starts with this (`{node}/`).
    WorkerPrefix(String),
}

impl rusqlite::ToSql for Filter {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Filter::ExpiredBefore(t) => t.to_sql(),
            Filter::WorkerPrefix(p) => p.to_sql(),
        }
    }
}

/// The submit of one job: its insert, and on a keyed duplicate the replay.
fn submit_on(
    conn: &Connection,
    job: NewJob,
    idem: Option<Idempotency>,
    created_event: &str,
) -> Result<Submitted, StoreError> {
    // One statement: the job, its idempotency record and (by trigger) its
    // `created` event. A keyed duplicate inserts nothing.
    let inserted = exec(
        conn,
        concat!(
            "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, ",
            "total_steps, attempt, created_at_ms, enqueued_at_ms, idempotency_key, ",
            "idempotency_body_hash, last_event_seq, event_kind, event_at_ms, event_data_json) ",
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, 0, ?9, ?9, ?10, ?11, 1, 'created', ?9, ?12) ",
            "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        ),
        params![
            job.id.as_str(),
            job.tenant.as_str(),
            job.tier.as_str(),
            job.spec.model.as_str(),
            to_json(&job.spec)?,
            JobState::Queued.as_str(),
            Phase::Queued.as_str(),
            i64::from(job.spec.steps),
            job.now_ms,
            idem.as_ref().map(|i| i.key.as_str()),
            idem.as_ref().map(|i| i.body_hash.as_str()),
            created_event,
        ],
    )?;
    if inserted == 1 {
        return Ok(Submitted::Created(crate::rows::created_job(job)));
    }
    let Some(idem) = idem else {
        return Err(StoreError::Backend(format!("job {} was not inserted", job.id)));
    };
    // The conflicting row is visible: this runs under the write lock.
    let found = one(
        conn,
        concat!(
            "SELECT ",
            job_columns!(),
            ", idempotency_body_hash FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2"
        ),
        params![job.tenant.as_str(), idem.key.as_str()],
        |r| Ok((rows::job(r)?, get::<Option<String>>(r, "idempotency_body_hash")?)),
    )?;
    match found {
        Some((job, Some(hash))) if hash == idem.body_hash => Ok(Submitted::Replayed(job)),
        Some(_) => Err(StoreError::IdempotencyConflict),
        None => Err(StoreError::Backend(
            "idempotency conflict without a conflicting job".into(),
        )),
    }
}

#[async_trait]
impl Store for SqliteStore {
    // ---- API keys

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.writer
            .call(move |c| {
                exec(
                    c,
                    concat!(
                        "INSERT INTO api_keys (",
                        api_key_columns!(),
                        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                    ),
                    params![
                        key.id,
                        key.hash,
                        key.prefix,
                        key.tenant.as_str(),
                        key.tier.as_str(),
                        i64::from(key.admin),
                        key.created_at_ms,
                        key.revoked_at_ms
                    ],
                )
                .map(drop)
            })
            .await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            one(
                c,
                concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE hash = ?1"),
                [hash],
                rows::api_key,
            )
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(|c| {
            all(
                c,
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM api_keys ORDER BY created_at_ms, id"
                ),
                [],
                rows::api_key,
            )
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.revoke(
            "UPDATE api_keys SET revoked_at_ms = ?1 WHERE id = ?2 AND revoked_at_ms IS NULL",
            id,
            now_ms,
        )
        .await
    }

    // ---- submission and reads

    async fn submit(&self, job: NewJob, idem: Option<Idempotency>) -> Result<Submitted, StoreError> {
        let created = event_data(JobState::Queued, Some(Phase::Queued), Some(0), Some(0), json!({}))?;
        self.writer.call(move |c| submit_on(c, job, idem, &created)).await
    }

    async fn job(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        self.read(move |c| {
            one(
                c,
                concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1"),
                [id.as_str()],
                rows::job,
            )
        })
        .await
    }

    async fn list_jobs(&self, tenant: &TenantId, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        const ASC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ?1 AND id > ?2 ORDER BY id ASC LIMIT ?3"
        );
        const DESC: &str = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE tenant = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
        );
        // Without a cursor, the bound is one that sorts before / after every
        // id (`video_` + hex): the same two statements serve both cases.
        let (sql, bound) = match (q.order, &q.after) {
            (Order::Asc, Some(a)) => (ASC, a.as_str().to_owned()),
            (Order::Asc, None) => (ASC, String::new()),
            (Order::Desc, Some(a)) => (DESC, a.as_str().to_owned()),
            (Order::Desc, None) => (DESC, "\u{10FFFF}".to_owned()),
        };
        let tenant = tenant.clone();
        let limit = i64::from(q.limit);
        self.read(move |c| all(c, sql, params![tenant.as_str(), bound, limit], rows::job))
            .await
    }

    async fn events(&self, id: &VideoId, after_seq: i64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let id = id.clone();
        self.read(move |c| {
            all(
                c,
                "SELECT seq, at_ms, kind, data_json FROM job_events \
                 WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                params![id.as_str(), after_seq, i64::from(limit)],
                |r| {
                    let data: String = get(r, "data_json")?;
                    Ok(JobEvent {
                        seq: get(r, "seq")?,
                        at_ms: get(r, "at_ms")?,
                        kind: get(r, "kind")?,
                        data: rows::event_data_from_str(&data)?,
                    })
                },
            )
        })
        .await
    }

    async fn queued_jobs(&self) -> Result<Vec<QueuedJob>, StoreError> {
        self.read(|c| {
            all(
                c,
                concat!(
                    "SELECT ",
                    queued_columns!(),
                    " FROM jobs WHERE state = 'queued' ORDER BY enqueued_at_ms, id"
                ),
                [],
                rows::queued_job,
            )
        })
        .await
    }

    async fn queued_job(&self, id: &VideoId) -> Result<Option<QueuedJob>, StoreError> {
        let id = id.clone();
        self.read(move |c| {
            one(
                c,
                concat!(
                    "SELECT ",
                    queued_columns!(),
                    " FROM jobs WHERE id = ?1 AND state = 'queued'"
                ),
                [id.as_str()],
                rows::queued_job,
            )
        })
        .await
    }

    // ---- user actions

    async fn cancel(&self, id: &VideoId, now_ms: i64) -> Result<Job, StoreError> {
        let error = to_json(&JobError::new(CANCELLED, "the video generation was cancelled"))?;
        let id = id.clone();
        self.writer
            .call(move |c| {
                let from: Option<String> = one(c, "SELECT state FROM jobs WHERE id = ?1", [id.as_str()], |r| {
                    get(r, "state")
                })?;
                let Some(from) = from else {
                    return Err(StoreError::NotFound(id));
                };
                let from = JobState::parse(&from)
                    .ok_or_else(|| StoreError::Backend(format!("corrupt state {from:?} of job {id}")))?;
                let to = next(from, Transition::Cancel)?;
                let data = event_data(to, Some(Phase::Cancelled), None, None, json!({}))?;
                let job = one(
                    c,
                    concat!(
                        "UPDATE jobs SET state = ?1, phase = ?2, error_json = ?3, lease_worker = NULL, ",
                        "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, ",
                        "event_kind = 'cancelled', event_at_ms = ?4, ",
                        "event_data_json = json_set(?5, '$.progress', progress, '$.attempt', attempt) ",
                        "WHERE id = ?6 AND state = ?7 RETURNING ",
                        job_columns!()
                    ),
                    params![
                        to.as_str(),
                        Phase::Cancelled.as_str(),
                        error,
                        now_ms,
                        data,
                        id.as_str(),
                        from.as_str()
                    ],
                    rows::job,
                )?;
                // The read above ran under the write lock, so the
                // compare-and-set cannot miss; report it as a fault if it does.
                job.ok_or_else(|| StoreError::Backend(format!("job {id} changed under a write lock")))
            })
            .await
    }

    async fn delete(&self, id: &VideoId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        self.writer
            .call(move |c| {
                // Explicit, though `ON DELETE CASCADE` would do it: the
                // semantics must not depend on the foreign_keys pragma.
                exec(c, "DELETE FROM job_events WHERE job_id = ?1", [id.as_str()])?;
                one(
                    c,
                    concat!("DELETE FROM jobs WHERE id = ?1 RETURNING ", job_columns!()),
                    [id.as_str()],
                    rows::job,
                )
            })
            .await
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
        let (job_id, worker_id) = (id.clone(), worker.clone());
        let attempt: Option<i64> = self
            .writer
            .call(move |c| {
                one(
                    c,
                    "UPDATE jobs SET state = ?1, attempt = attempt + 1, \
                     phase = CASE WHEN checkpoint_json IS NULL THEN ?2 ELSE ?3 END, \
                     lease_worker = ?4, lease_expires_at_ms = ?5, started_at_ms = COALESCE(started_at_ms, ?6), \
                     last_event_seq = last_event_seq + 1, event_kind = 'leased', event_at_ms = ?6, \
                     event_data_json = json_set(?7, \
                         '$.phase', CASE WHEN checkpoint_json IS NULL THEN ?2 ELSE ?3 END, \
                         '$.progress', progress, '$.attempt', attempt + 1) \
                     WHERE id = ?8 AND state = ?9 RETURNING attempt",
                    params![
                        to.as_str(),
                        Phase::LoadingModel.as_str(),
                        Phase::ResumingFromCheckpoint.as_str(),
                        worker_id.as_str(),
                        expires_at_ms,
                        now_ms,
                        data,
                        job_id.as_str(),
                        from.as_str()
                    ],
                    |r| get(r, "attempt"),
                )
            })
            .await?;
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
        let (phase, step, total) = (progress.phase, progress.step, progress.total_steps);
        let (job_id, attempt) = (lease.job_id.clone(), lease.attempt);
        // A `progress` event only when the phase or percent changes: heartbeats
        // are frequent, and this bounds the log to (phases + 101) per attempt.
        // SET expressions all see the row as it was before the update.
        let changed = self
            .writer
            .call(move |c| {
                exec(
                    c,
                    "UPDATE jobs SET \
                     last_event_seq = last_event_seq + (phase <> ?1 OR progress <> ?2), \
                     event_kind = CASE WHEN phase <> ?1 OR progress <> ?2 THEN 'progress' ELSE event_kind END, \
                     event_at_ms = CASE WHEN phase <> ?1 OR progress <> ?2 THEN ?3 ELSE event_at_ms END, \
                     event_data_json = CASE WHEN phase <> ?1 OR progress <> ?2 THEN ?4 ELSE event_data_json END, \
                     phase = ?1, progress = ?2, step = ?5, total_steps = ?6, lease_expires_at_ms = ?7 \
                     WHERE id = ?8 AND state = ?9 AND attempt = ?10",
                    params![
                        phase.as_str(),
                        i64::from(percent),
                        now_ms,
                        data,
                        i64::from(step),
                        i64::from(total),
                        expires_at_ms,
                        job_id.as_str(),
                        JobState::Running.as_str(),
                        i64::from(attempt)
                    ],
                )
            })
            .await?;
        if changed == 0 {
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
        let ck = to_json(ck)?;
        let (job_id, attempt) = (lease.job_id.clone(), lease.attempt);
        let changed = self
            .writer
            .call(move |c| {
                exec(
                    c,
                    "UPDATE jobs SET prev_checkpoint_json = checkpoint_json, checkpoint_json = ?1, \
                     last_event_seq = last_event_seq + 1, event_kind = 'checkpoint', event_at_ms = ?2, \
                     event_data_json = json_set(?3, '$.phase', phase, '$.progress', progress) \
                     WHERE id = ?4 AND state = ?5 AND attempt = ?6",
                    params![
                        ck,
                        now_ms,
                        data,
                        job_id.as_str(),
                        JobState::Running.as_str(),
                        i64::from(attempt)
                    ],
                )
            })
            .await?;
        if changed == 0 {
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
        let outputs = to_json(outputs)?;
        let (job_id, attempt) = (lease.job_id.clone(), lease.attempt);
        let job = self
            .writer
            .call(move |c| {
                one(
                    c,
                    concat!(
                        "UPDATE jobs SET state = ?1, phase = ?2, progress = 100, outputs_json = ?3, ",
                        "completed_at_ms = ?4, expires_at_ms = ?5, lease_worker = NULL, lease_expires_at_ms = NULL, ",
                        "last_event_seq = last_event_seq + 1, event_kind = 'completed', event_at_ms = ?4, ",
                        "event_data_json = ?6 WHERE id = ?7 AND state = ?8 AND attempt = ?9 RETURNING ",
                        job_columns!()
                    ),
                    params![
                        to.as_str(),
                        Phase::Completed.as_str(),
                        outputs,
                        now_ms,
                        expires_at_ms,
                        data,
                        job_id.as_str(),
                        from.as_str(),
                        i64::from(attempt)
                    ],
                    rows::job,
                )
            })
            .await?;
        job.ok_or_else(|| stale(lease))
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
        let error = to_json(error)?;
        let (job_id, attempt) = (lease.job_id.clone(), lease.attempt);
        let changed = self
            .writer
            .call(move |c| {
                exec(
                    c,
                    "UPDATE jobs SET state = ?1, phase = ?2, error_json = ?3, lease_worker = NULL, \
                     lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, \
                     event_kind = 'failed', event_at_ms = ?4, event_data_json = json_set(?5, '$.progress', progress) \
                     WHERE id = ?6 AND state = ?7 AND attempt = ?8",
                    params![
                        to.as_str(),
                        Phase::Failed.as_str(),
                        error,
                        now_ms,
                        data,
                        job_id.as_str(),
                        from.as_str(),
                        i64::from(attempt)
                    ],
                )
            })
            .await?;
        if changed == 0 {
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
        let (job_id, attempt) = (lease.job_id.clone(), lease.attempt);
        let queued = self
            .writer
            .call(move |c| {
                one(
                    c,
                    RELEASE,
                    params![
                        to.as_str(),
                        Phase::Queued.as_str(),
                        now_ms,
                        data,
                        job_id.as_str(),
                        from.as_str(),
                        i64::from(attempt)
                    ],
                    rows::queued_job,
                )
            })
            .await?;
        queued.ok_or_else(|| stale(lease))
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
        self.reclaim(
            DEAD_LETTER_NODE,
            REQUEUE_NODE,
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
        let mut jobs = self
            .writer
            .call(move |c| {
                all(
                    c,
                    concat!(
                        "UPDATE jobs SET state = ?1, phase = ?2, last_event_seq = last_event_seq + 1, ",
                        "event_kind = 'expired', event_at_ms = ?3, ",
                        "event_data_json = json_set(?4, '$.progress', progress, '$.attempt', attempt) ",
                        "WHERE id IN (SELECT id FROM jobs WHERE state = 'completed' AND expires_at_ms <= ?3 ",
                        "ORDER BY expires_at_ms, id LIMIT ?5) AND state = ?6 RETURNING ",
                        job_columns!()
                    ),
                    params![
                        to.as_str(),
                        Phase::Expired.as_str(),
                        now_ms,
                        data,
                        i64::from(limit),
                        from.as_str()
                    ],
                    rows::job,
                )
            })
            .await?;
        jobs.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        Ok(jobs)
    }

    async fn append_event(&self, id: &VideoId, kind: &str, data: Value, now_ms: i64) -> Result<i64, StoreError> {
        let data = to_json(&data)?;
        let (id, kind) = (id.clone(), kind.to_owned());
        self.writer
            .call(move |c| {
                let seq = one(
                    c,
                    "UPDATE jobs SET last_event_seq = last_event_seq + 1, event_kind = ?1, \
                     event_at_ms = ?2, event_data_json = ?3 WHERE id = ?4 RETURNING last_event_seq",
                    params![kind, now_ms, data, id.as_str()],
                    |r| get(r, "last_event_seq"),
                )?;
                seq.ok_or(StoreError::NotFound(id))
            })
            .await
    }

    // ---- worker tokens

    async fn insert_worker_token(&self, token: &WorkerToken) -> Result<(), StoreError> {
        let token = token.clone();
        self.writer
            .call(move |c| {
                exec(
                    c,
                    concat!(
                        "INSERT INTO worker_tokens (",
                        worker_token_columns!(),
                        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ),
                    params![
                        token.id,
                        token.hash,
                        token.prefix,
                        token.name,
                        token.created_at_ms,
                        token.revoked_at_ms
                    ],
                )
                .map(drop)
            })
            .await
    }

    async fn worker_token_by_hash(&self, hash: &str) -> Result<Option<WorkerToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |c| {
            one(
                c,
                concat!(
                    "SELECT ",
                    worker_token_columns!(),
                    " FROM worker_tokens WHERE hash = ?1"
                ),
                [hash],
                rows::worker_token,
            )
        })
        .await
    }

    async fn list_worker_tokens(&self) -> Result<Vec<WorkerToken>, StoreError> {
        self.read(|c| {
            all(
                c,
                concat!(
                    "SELECT ",
                    worker_token_columns!(),
                    " FROM worker_tokens ORDER BY created_at_ms, id"
                ),
                [],
                rows::worker_token,
            )
        })
        .await
    }

    async fn revoke_worker_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.revoke(
            "UPDATE worker_tokens SET revoked_at_ms = ?1 WHERE id = ?2 AND revoked_at_ms IS NULL",
            id,
            now_ms,
        )
        .await
    }

    // ---- dead letters

    async fn try_lead(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        self.writer
            .call(move |c| {
                c.query_row(TRY_LEAD_SQL, params![name, holder, expires_at_ms, now_ms], |r| r.get(0))
                    .optional()
                    .map_err(db)
            })
            .await
    }

    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer
            .call(move |c| exec(c, RESIGN_SQL, params![name, holder]).map(|_| ()))
            .await
    }

    async fn dead_letters(&self, limit: u32, after: Option<VideoId>) -> Result<Vec<Job>, StoreError> {
        // Every id sorts after '' (see list_jobs).
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        let limit = i64::from(limit);
        self.read(move |c| all(c, DEAD_LETTERS, params![after, limit], rows::job))
            .await
    }

    async fn redrive(&self, id: &VideoId, now_ms: i64) -> Result<QueuedJob, StoreError> {
        let to = next(JobState::Failed, Transition::Redrive)?;
        let data = event_data(to, Some(Phase::Queued), None, None, json!({}))?;
        let id = id.clone();
        self.writer
            .call(move |c| {
                let queued = one(
                    c,
                    REDRIVE,
                    params![to.as_str(), Phase::Queued.as_str(), now_ms, data, id.as_str()],
                    rows::queued_job,
                )?;
                if let Some(q) = queued {
                    return Ok(q);
                }
                // Not a dead letter: say why, from the state it is in.
                let from: Option<String> = one(c, "SELECT state FROM jobs WHERE id = ?1", [id.as_str()], |r| {
                    get(r, "state")
                })?;
                let Some(from) = from else {
                    return Err(StoreError::NotFound(id));
                };
                let from = JobState::parse(&from)
                    .ok_or_else(|| StoreError::Backend(format!("corrupt state {from:?} of job {id}")))?;
                // A failed job that is not a dead letter (a fatal error, e.g.
                // moderation) would fail the same way again.
                Err(IllegalTransition {
                    from,
                    transition: Transition::Redrive,
                }
                .into())
            })
            .await
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
        let (job_id, attempt, max) = (lease.job_id.clone(), i64::from(lease.attempt), i64::from(max_attempts));
        // Both statements are fenced on (id, state, attempt), so at most one
        // matches; the closure is one savepoint, so the decision is atomic.
        let outcome = self
            .writer
            .call(move |c| {
                let requeued = one(
                    c,
                    REQUEUE_ON_ERROR,
                    params![
                        queued.as_str(),
                        Phase::Queued.as_str(),
                        now_ms,
                        queued_data,
                        job_id.as_str(),
                        from.as_str(),
                        attempt,
                        max
                    ],
                    rows::queued_job,
                )?;
                if let Some(q) = requeued {
                    return Ok(Some(Reclaimed::Requeued(q)));
                }
                let dead = one(
                    c,
                    DEAD_LETTER_ON_ERROR,
                    params![
                        failed.as_str(),
                        Phase::Failed.as_str(),
                        MAX_ATTEMPTS_EXCEEDED,
                        ended,
                        now_ms,
                        failed_data,
                        job_id.as_str(),
                        from.as_str(),
                        attempt,
                        max
                    ],
                    |r| parse_id(&get::<String>(r, "id")?),
                )?;
                Ok(dead.map(Reclaimed::DeadLettered))
            })
            .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL literals used for partial indexes must match the state names.
    #[test]
    fn state_literals_match_the_state_machine() {
        assert_eq!(JobState::Queued.as_str(), "queued");
        assert_eq!(JobState::Running.as_str(), "running");
        assert_eq!(JobState::Completed.as_str(), "completed");
        assert_eq!(JobState::Failed.as_str(), "failed");
        assert!(dead_letter_where!().ends_with(&format!("'{MAX_ATTEMPTS_EXCEEDED}'")));
    }

    /// The dead-letter listing reads the partial index, not every job.
    #[test]
    fn dead_letters_use_their_partial_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::migrate::migrate(&mut conn, 0).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {DEAD_LETTERS}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(params!["", 10], |r| r.get::<_, String>("detail"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|d| d.contains("jobs_dead_letter")),
            "plan does not use the index: {plan:?}"
        );
        assert!(
            !plan.iter().any(|d| d.starts_with("SCAN jobs ") || d == "SCAN jobs"),
            "{plan:?}"
        );
    }
}
