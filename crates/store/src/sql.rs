//! The one statement set: every statement of the store, in SQL that SQLite
//! and PostgreSQL both run as written. The operations in [`crate::ops`] say
//! which one runs when and with what; [`crate::exec`] runs it on either
//! engine. (The PostgreSQL group commit, `postgres::batch`, runs the hot-path
//! writes as multi-row statements of its own.)
//!
//! What keeps them portable:
//! - `$n` placeholders, introduced in ascending order (see [`crate::exec`]);
//! - no JSON functions: the event fields only the database knows (the job's
//!   state, phase, progress, attempt and checkpoint step right after the
//!   change) are copied from the row into `job_events` by each engine's
//!   trigger (migrations `0005_typed_events.*`), and errors are two plain
//!   columns, `error_code` and `error_message`;
//! - a statement that changes a job sets its event *outbox* (`event_kind`,
//!   `event_at_ms`, `event_data_json`) and bumps `last_event_seq`, which is
//!   what the trigger appends, in the same statement;
//! - literal states only where a partial index must match them
//!   (`state = 'queued'` …); a test pins them to [`JobState::as_str`].
//!
//! [`JobState::as_str`]: videogen_core::JobState::as_str

/// The columns `rows::job` decodes, in `SELECT` / `RETURNING` lists.
macro_rules! job_columns {
    () => {
        "id, tenant, tier, spec_json, state, phase, progress, step, attempt, created_at_ms, \
         enqueued_at_ms, started_at_ms, completed_at_ms, expires_at_ms, error_code, error_message, \
         checkpoint_json, prev_checkpoint_json, outputs_json, lease_worker, lease_expires_at_ms"
    };
}
pub(crate) use job_columns;

/// The columns `rows::queued_job` decodes.
macro_rules! queued_columns {
    () => {
        "id, tenant, tier, model, enqueued_at_ms, not_before_ms"
    };
}

macro_rules! api_key_columns {
    () => {
        "id, hash, prefix, tenant, tier, admin, created_at_ms, revoked_at_ms"
    };
}

macro_rules! worker_token_columns {
    () => {
        "id, hash, prefix, name, created_at_ms, revoked_at_ms"
    };
}

// ---- credentials (one set per table; `ops::credentials` is generic over both)

pub(crate) const INSERT_API_KEY: &str = concat!(
    "INSERT INTO api_keys (",
    api_key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);
pub(crate) const API_KEY_BY_HASH: &str = concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE hash = $1");
/// $1, $2: the cursor (created_at_ms, id); $3 limit.
pub(crate) const LIST_API_KEYS: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM api_keys WHERE (created_at_ms, id) > ($1, $2) ORDER BY created_at_ms, id LIMIT $3"
);
pub(crate) const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL";

pub(crate) const INSERT_WORKER_TOKEN: &str = concat!(
    "INSERT INTO worker_tokens (",
    worker_token_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6)"
);
pub(crate) const WORKER_TOKEN_BY_HASH: &str = concat!(
    "SELECT ",
    worker_token_columns!(),
    " FROM worker_tokens WHERE hash = $1"
);
pub(crate) const LIST_WORKER_TOKENS: &str = concat!(
    "SELECT ",
    worker_token_columns!(),
    " FROM worker_tokens WHERE (created_at_ms, id) > ($1, $2) ORDER BY created_at_ms, id LIMIT $3"
);
pub(crate) const REVOKE_WORKER_TOKEN: &str =
    "UPDATE worker_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL";

// ---- jobs

/// The job, its idempotency record and (by trigger) its `created` event; a
/// keyed duplicate inserts nothing. $1 id, $2 tenant, $3 tier, $4 model,
/// $5 spec, $6 state, $7 phase, $8 total steps, $9 now, $10 idempotency key,
/// $11 body hash, $12 event kind, $13 event data.
pub(crate) const SUBMIT: &str = "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, \
     total_steps, attempt, created_at_ms, enqueued_at_ms, idempotency_key, idempotency_body_hash, \
     last_event_seq, event_kind, event_at_ms, event_data_json) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8, 0, $9, $9, $10, $11, 1, $12, $9, $13) \
     ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// The job an idempotency key names. $1 tenant, $2 key.
pub(crate) const BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    job_columns!(),
    ", idempotency_body_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
);

pub(crate) const JOB: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");

/// $1 tenant, $2 after id (`''` sorts before every id), $3 limit.
pub(crate) const LIST_JOBS_ASC: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE tenant = $1 AND id > $2 ORDER BY id ASC LIMIT $3"
);
/// $1 tenant, $2 before id, $3 limit.
pub(crate) const LIST_JOBS_DESC: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
);
/// Newest first without a cursor (no string sorts after every id on both
/// engines). $1 tenant, $2 limit.
pub(crate) const LIST_JOBS_NEWEST: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE tenant = $1 ORDER BY id DESC LIMIT $2"
);

/// $1 job, $2 after seq, $3 limit.
pub(crate) const EVENTS: &str = "SELECT seq, at_ms, kind, state, phase, progress, attempt, checkpoint_step, data_json \
     FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// Through the `jobs_runnable` index. $1, $2: the cursor (enqueued_at_ms, id); $3 limit.
pub(crate) const QUEUED_JOBS: &str = concat!(
    "SELECT ",
    queued_columns!(),
    " FROM jobs WHERE state = 'queued' AND (enqueued_at_ms, id) > ($1, $2) ORDER BY enqueued_at_ms, id LIMIT $3"
);
pub(crate) const QUEUED_JOB: &str = concat!(
    "SELECT ",
    queued_columns!(),
    " FROM jobs WHERE id = $1 AND state = 'queued'"
);

pub(crate) const JOB_STATE: &str = "SELECT state FROM jobs WHERE id = $1";

/// From any state the transition is legal from ($9, $10: see
/// `ops::jobs::CANCELLABLE`). $1 to-state, $2 phase, $3 error code,
/// $4 error message, $5 event kind, $6 now, $7 event data, $8 id.
pub(crate) const CANCEL: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, error_code = $3, error_message = $4, lease_worker = NULL, ",
    "lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, event_kind = $5, event_at_ms = $6, ",
    "event_data_json = $7 WHERE id = $8 AND state IN ($9, $10) RETURNING ",
    job_columns!()
);

/// The job, then its events (a foreign key does not do it on PostgreSQL,
/// see migration 0004); the second statement's snapshot also sees an event
/// committed by an update the first one waited for.
pub(crate) const DELETE_JOB: &str = concat!("DELETE FROM jobs WHERE id = $1 RETURNING ", job_columns!());
pub(crate) const DELETE_EVENTS: &str = "DELETE FROM job_events WHERE job_id = $1";

/// An event without a state change. $1 kind, $2 now, $3 data, $4 id.
pub(crate) const APPEND_EVENT: &str = "UPDATE jobs SET last_event_seq = last_event_seq + 1, event_kind = $1, \
     event_at_ms = $2, event_data_json = $3 WHERE id = $4 RETURNING last_event_seq";

// ---- attempts (fenced on id, state and attempt)

/// Queued → running, attempt + 1 (the new fencing token). $1 to-state,
/// $2 phase without a checkpoint, $3 phase with one, $4 worker, $5 lease
/// expiry, $6 now, $7 event kind, $8 event data, $9 id, $10 from-state.
pub(crate) const LEASE: &str = "UPDATE jobs SET state = $1, attempt = attempt + 1, \
     phase = CASE WHEN checkpoint_json IS NULL THEN $2 ELSE $3 END, \
     lease_worker = $4, lease_expires_at_ms = $5, started_at_ms = COALESCE(started_at_ms, $6), \
     last_event_seq = last_event_seq + 1, event_kind = $7, event_at_ms = $6, event_data_json = $8 \
     WHERE id = $9 AND state = $10 RETURNING attempt";

/// Progress and a longer lease; an event only when the phase or percent
/// changes (SET expressions all see the row as it was). $1 phase,
/// $2 percent, $3 event kind, $4 now, $5 event data, $6 step, $7 total
/// steps, $8 lease expiry, $9 id, $10 state, $11 attempt.
pub(crate) const HEARTBEAT: &str = "UPDATE jobs SET \
     last_event_seq = last_event_seq + CASE WHEN phase <> $1 OR progress <> $2 THEN 1 ELSE 0 END, \
     event_kind = CASE WHEN phase <> $1 OR progress <> $2 THEN $3 ELSE event_kind END, \
     event_at_ms = CASE WHEN phase <> $1 OR progress <> $2 THEN $4 ELSE event_at_ms END, \
     event_data_json = CASE WHEN phase <> $1 OR progress <> $2 THEN $5 ELSE event_data_json END, \
     phase = $1, progress = $2, step = $6, total_steps = $7, lease_expires_at_ms = $8 \
     WHERE id = $9 AND state = $10 AND attempt = $11";

/// The new checkpoint, keeping the previous one. $1 checkpoint, $2 its
/// step, $3 event kind, $4 now, $5 event data, $6 id, $7 state, $8 attempt.
pub(crate) const COMMIT_CHECKPOINT: &str = "UPDATE jobs SET prev_checkpoint_json = checkpoint_json, \
     checkpoint_json = $1, checkpoint_step = $2, last_event_seq = last_event_seq + 1, event_kind = $3, \
     event_at_ms = $4, event_data_json = $5 WHERE id = $6 AND state = $7 AND attempt = $8";

/// Running → completed with the outputs. $1 to-state, $2 phase, $3 outputs,
/// $4 now, $5 expiry, $6 event kind, $7 event data, $8 id, $9 from-state,
/// $10 attempt.
pub(crate) const COMPLETE: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, progress = 100, outputs_json = $3, completed_at_ms = $4, ",
    "expires_at_ms = $5, lease_worker = NULL, lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, ",
    "event_kind = $6, event_at_ms = $4, event_data_json = $7 WHERE id = $8 AND state = $9 AND attempt = $10 ",
    "RETURNING ",
    job_columns!()
);

/// Running → failed: the SET list and fence of every failing statement.
/// $1 to-state, $2 phase, $3 error code, $4 error message, $5 event kind,
/// $6 now, $7 event data, $8 id, $9 from-state, $10 attempt.
macro_rules! fail_where {
    () => {
        "UPDATE jobs SET state = $1, phase = $2, error_code = $3, error_message = $4, lease_worker = NULL, \
         lease_expires_at_ms = NULL, last_event_seq = last_event_seq + 1, event_kind = $5, event_at_ms = $6, \
         event_data_json = $7 WHERE id = $8 AND state = $9 AND attempt = $10"
    };
}

pub(crate) const FAIL: &str = fail_where!();
/// An attempt's error with its budget spent. $11 max attempts.
pub(crate) const DEAD_LETTER_OVER_BUDGET: &str =
    concat!(fail_where!(), " AND attempt - attempt_floor >= $11 RETURNING id");
/// A reclaimed job whose lease is still expired. $11 now.
pub(crate) const DEAD_LETTER_EXPIRED: &str = concat!(fail_where!(), " AND lease_expires_at_ms < $11 RETURNING id");
/// A reclaimed job still leased by the node. $11 worker prefix `{node}/`.
pub(crate) const DEAD_LETTER_OF_NODE: &str = concat!(
    fail_where!(),
    " AND substr(lease_worker, 1, length($11)) = $11 RETURNING id"
);

/// Running → queued: the SET list and fence of every re-queue.
/// `enqueued_at_ms` stays: an interrupted job keeps its place in line (and
/// its age for the scheduler's wait bound). $1 to-state, $2 phase, $3 event
/// kind, $4 now, $5 event data, $6 id, $7 from-state, $8 attempt.
macro_rules! requeue_where {
    () => {
        "UPDATE jobs SET state = $1, phase = $2, lease_worker = NULL, lease_expires_at_ms = NULL, \
         last_event_seq = last_event_seq + 1, event_kind = $3, event_at_ms = $4, event_data_json = $5, \
         not_before_ms = NULL WHERE id = $6 AND state = $7 AND attempt = $8"
    };
}

/// Given back through no fault of the job (shutdown, preemption, storage
/// or database trouble): the attempt is not charged (`attempt_floor` moves
/// with it), so infrastructure faults never dead-letter a job. $1 to-state,
/// $2 phase, $3 event kind, $4 now, $5 event data, $6 not-before (or
/// NULL), $7 id, $8 from-state, $9 attempt.
pub(crate) const RELEASE: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, lease_worker = NULL, lease_expires_at_ms = NULL, ",
    "last_event_seq = last_event_seq + 1, event_kind = $3, event_at_ms = $4, event_data_json = $5, ",
    "not_before_ms = $6, attempt_floor = attempt_floor + 1 WHERE id = $7 AND state = $8 AND attempt = $9 ",
    "RETURNING ",
    queued_columns!()
);
/// An attempt's error with budget left, runnable again from the backoff's
/// end. $1 to-state, $2 phase, $3 event kind, $4 now, $5 event data,
/// $6 not-before, $7 id, $8 from-state, $9 attempt, $10 max attempts.
pub(crate) const REQUEUE_WITHIN_BUDGET: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, lease_worker = NULL, lease_expires_at_ms = NULL, ",
    "last_event_seq = last_event_seq + 1, event_kind = $3, event_at_ms = $4, event_data_json = $5, ",
    "not_before_ms = $6 WHERE id = $7 AND state = $8 AND attempt = $9 AND attempt - attempt_floor < $10 ",
    "RETURNING ",
    queued_columns!()
);
/// A reclaimed job whose lease is still expired. $9 now.
pub(crate) const REQUEUE_EXPIRED: &str = concat!(
    requeue_where!(),
    " AND lease_expires_at_ms < $9 RETURNING ",
    queued_columns!()
);
/// A reclaimed job still leased by the node. $9 worker prefix `{node}/`.
pub(crate) const REQUEUE_OF_NODE: &str = concat!(
    requeue_where!(),
    " AND substr(lease_worker, 1, length($9)) = $9 RETURNING ",
    queued_columns!()
);

// ---- maintenance

/// Running jobs whose lease expired, through the `jobs_leases` index.
/// $1 now, $2 limit.
pub(crate) const EXPIRED_LEASES: &str = "SELECT id, attempt, attempt_floor FROM jobs \
     WHERE state = 'running' AND lease_expires_at_ms < $1 ORDER BY lease_expires_at_ms, id LIMIT $2";
/// Running jobs leased by a worker of a node: `substr`/`length` count
/// characters on both engines, and with no `LIKE` nothing needs escaping.
/// $1 worker prefix `{node}/`, $2 limit.
pub(crate) const LEASES_OF_NODE: &str = "SELECT id, attempt, attempt_floor FROM jobs \
     WHERE state = 'running' AND substr(lease_worker, 1, length($1)) = $1 ORDER BY id LIMIT $2";

/// Completed → expired for the jobs due first. $1 to-state, $2 phase,
/// $3 event kind, $4 now, $5 event data, $6 limit, $7 from-state.
pub(crate) const EXPIRE_DUE: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, last_event_seq = last_event_seq + 1, event_kind = $3, ",
    "event_at_ms = $4, event_data_json = $5 WHERE id IN (SELECT id FROM jobs WHERE state = 'completed' ",
    "AND expires_at_ms <= $4 ORDER BY expires_at_ms, id LIMIT $6) AND state = $7 RETURNING ",
    job_columns!()
);

/// The predicate of the `jobs_dead_letter` partial index, verbatim: SQLite
/// uses the index only for queries that contain it literally.
macro_rules! dead_letter_where {
    () => {
        "state = 'failed' AND error_code = 'max_attempts_exceeded'"
    };
}

/// $1 after id (`''` for the start), $2 limit.
pub(crate) const DEAD_LETTERS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE ",
    dead_letter_where!(),
    " AND id > $1 ORDER BY id LIMIT $2"
);

/// Dead letters whose last event is older than $1 that still point at
/// checkpoints (their retention is over). $2 limit.
pub(crate) const STALE_DEAD_LETTER_CHECKPOINTS: &str = concat!(
    "SELECT id FROM jobs WHERE ",
    dead_letter_where!(),
    " AND checkpoint_json IS NOT NULL AND event_at_ms < $1 ORDER BY id LIMIT $2"
);

/// A dead letter forgets its checkpoints (their bytes are gone), so a
/// re-drive starts over instead of trying them. No event: nothing a
/// client sees changes. $1 id.
pub(crate) const FORGET_DEAD_LETTER_CHECKPOINTS: &str = concat!(
    "UPDATE jobs SET checkpoint_json = NULL, prev_checkpoint_json = NULL, checkpoint_step = NULL WHERE id = $1 AND ",
    dead_letter_where!()
);

/// What a re-drive reads first: the state (for the error if it is not a
/// dead letter), and the error and attempt it re-drives.
pub(crate) const REDRIVE_CANDIDATE: &str = "SELECT state, error_code, error_message, attempt FROM jobs WHERE id = $1";

/// Dead letter → queued: the error goes (into the event), the budget restarts
/// at the current attempt, and `attempt` itself stays. Fenced on the
/// attempt read, so the event names the dead letter it re-drove.
/// $1 to-state, $2 phase, $3 now, $4 event kind, $5 event data, $6 id,
/// $7 attempt.
pub(crate) const REDRIVE: &str = concat!(
    "UPDATE jobs SET state = $1, phase = $2, enqueued_at_ms = $3, error_code = NULL, error_message = NULL, ",
    "attempt_floor = attempt, not_before_ms = NULL, last_event_seq = last_event_seq + 1, event_kind = $4, ",
    "event_at_ms = $3, ",
    "event_data_json = $5 WHERE id = $6 AND attempt = $7 AND ",
    dead_letter_where!(),
    " RETURNING ",
    queued_columns!()
);

// ---- leadership

/// Takes the lease if it is free, expired or already ours (a renewal);
/// `term` grows with every change of holder. $1 name, $2 holder, $3 new
/// expiry, $4 now.
pub(crate) const TRY_LEAD: &str = "INSERT INTO leader_leases (name, holder, expires_at_ms, term) \
     VALUES ($1, $2, $3, 1) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
     expires_at_ms = excluded.expires_at_ms, \
     term = leader_leases.term + CASE WHEN leader_leases.holder = excluded.holder THEN 0 ELSE 1 END \
     WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at_ms <= $4 RETURNING term";

/// $1 name, $2 holder.
pub(crate) const RESIGN: &str = "DELETE FROM leader_leases WHERE name = $1 AND holder = $2";

/// The write `/readyz` proves the database takes. $1 node, $2 now.
pub(crate) const WRITE_PROBE: &str = "INSERT INTO write_probes (node, at_ms) VALUES ($1, $2) \
     ON CONFLICT (node) DO UPDATE SET at_ms = excluded.at_ms";

/// Every statement, for the tests that check them on both engines.
#[cfg(test)]
pub(crate) const ALL: &[(&str, &str)] = &[
    ("INSERT_API_KEY", INSERT_API_KEY),
    ("API_KEY_BY_HASH", API_KEY_BY_HASH),
    ("LIST_API_KEYS", LIST_API_KEYS),
    ("REVOKE_API_KEY", REVOKE_API_KEY),
    ("INSERT_WORKER_TOKEN", INSERT_WORKER_TOKEN),
    ("WORKER_TOKEN_BY_HASH", WORKER_TOKEN_BY_HASH),
    ("LIST_WORKER_TOKENS", LIST_WORKER_TOKENS),
    ("REVOKE_WORKER_TOKEN", REVOKE_WORKER_TOKEN),
    ("SUBMIT", SUBMIT),
    ("BY_IDEMPOTENCY_KEY", BY_IDEMPOTENCY_KEY),
    ("JOB", JOB),
    ("LIST_JOBS_ASC", LIST_JOBS_ASC),
    ("LIST_JOBS_DESC", LIST_JOBS_DESC),
    ("LIST_JOBS_NEWEST", LIST_JOBS_NEWEST),
    ("EVENTS", EVENTS),
    ("QUEUED_JOBS", QUEUED_JOBS),
    ("QUEUED_JOB", QUEUED_JOB),
    ("JOB_STATE", JOB_STATE),
    ("CANCEL", CANCEL),
    ("DELETE_JOB", DELETE_JOB),
    ("DELETE_EVENTS", DELETE_EVENTS),
    ("APPEND_EVENT", APPEND_EVENT),
    ("LEASE", LEASE),
    ("HEARTBEAT", HEARTBEAT),
    ("COMMIT_CHECKPOINT", COMMIT_CHECKPOINT),
    ("COMPLETE", COMPLETE),
    ("FAIL", FAIL),
    ("DEAD_LETTER_OVER_BUDGET", DEAD_LETTER_OVER_BUDGET),
    ("DEAD_LETTER_EXPIRED", DEAD_LETTER_EXPIRED),
    ("DEAD_LETTER_OF_NODE", DEAD_LETTER_OF_NODE),
    ("RELEASE", RELEASE),
    ("REQUEUE_WITHIN_BUDGET", REQUEUE_WITHIN_BUDGET),
    ("REQUEUE_EXPIRED", REQUEUE_EXPIRED),
    ("REQUEUE_OF_NODE", REQUEUE_OF_NODE),
    ("EXPIRED_LEASES", EXPIRED_LEASES),
    ("LEASES_OF_NODE", LEASES_OF_NODE),
    ("EXPIRE_DUE", EXPIRE_DUE),
    ("DEAD_LETTERS", DEAD_LETTERS),
    ("STALE_DEAD_LETTER_CHECKPOINTS", STALE_DEAD_LETTER_CHECKPOINTS),
    ("FORGET_DEAD_LETTER_CHECKPOINTS", FORGET_DEAD_LETTER_CHECKPOINTS),
    ("REDRIVE_CANDIDATE", REDRIVE_CANDIDATE),
    ("REDRIVE", REDRIVE),
    ("TRY_LEAD", TRY_LEAD),
    ("RESIGN", RESIGN),
    ("WRITE_PROBE", WRITE_PROBE),
];

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_core::JobState;

    fn migrated() -> rusqlite::Connection {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::migrate::sqlite(&mut conn, 0).unwrap();
        conn
    }

    /// SQLite numbers `$n` parameters in order of first appearance; binding
    /// by position is right only if that order is `$1, $2, …`.
    #[test]
    fn every_statement_prepares_on_sqlite_with_its_parameters_in_order() {
        let conn = migrated();
        for (name, sql) in ALL {
            let stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{name}: {e}"));
            for i in 1..=stmt.parameter_count() {
                assert_eq!(
                    stmt.parameter_name(i),
                    Some(format!("${i}").as_str()),
                    "{name}: parameter {i}"
                );
            }
        }
    }

    fn plan(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(params, |r| r.get::<_, String>("detail"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The maintenance reads and the dead-letter listing read their partial
    /// indexes, not every job.
    #[test]
    fn maintenance_reads_use_their_partial_indexes() {
        let conn = migrated();
        for (sql, index, params) in [
            (
                DEAD_LETTERS,
                "jobs_dead_letter",
                vec![rusqlite::types::Value::Text(String::new()), 10.into()],
            ),
            (EXPIRED_LEASES, "jobs_leases", vec![0.into(), 10.into()]),
            (
                QUEUED_JOBS,
                "jobs_runnable",
                vec![0.into(), String::new().into(), 10.into()],
            ),
        ] {
            let plan = plan(&conn, sql, rusqlite::params_from_iter(params));
            assert!(plan.iter().any(|d| d.contains(index)), "{sql}: {plan:?}");
            assert!(!plan.iter().any(|d| d.starts_with("SCAN jobs")), "{sql}: {plan:?}");
        }
    }

    /// The literals that partial indexes match are the state machine's names.
    #[test]
    fn state_literals_match_the_state_machine() {
        assert_eq!(JobState::Queued.as_str(), "queued");
        assert_eq!(JobState::Running.as_str(), "running");
        assert_eq!(JobState::Completed.as_str(), "completed");
        assert_eq!(JobState::Failed.as_str(), "failed");
        assert!(dead_letter_where!().ends_with(&format!("'{}'", crate::ops::MAX_ATTEMPTS_EXCEEDED)));
    }
}
