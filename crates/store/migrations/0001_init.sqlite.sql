-- Initial schema of the job store.
--
-- Portable by design (a PostgreSQL implementation follows with the same
-- semantics): ids and enums are TEXT, times are INTEGER Unix milliseconds,
-- structured values are JSON in TEXT columns, booleans are 0/1 integers.

CREATE TABLE jobs (
    id                    TEXT    NOT NULL PRIMARY KEY,   -- video_<uuidv7 hex>, time-ordered
    tenant                TEXT    NOT NULL,
    tier                  TEXT    NOT NULL,               -- Tier::as_str
    model                 TEXT    NOT NULL,               -- copy of spec.model, for the scheduler
    spec_json             TEXT    NOT NULL,               -- VideoSpec
    state                 TEXT    NOT NULL,               -- JobState::as_str
    phase                 TEXT    NOT NULL,               -- Phase::as_str
    progress              INTEGER NOT NULL DEFAULT 0,     -- 0..=100
    step                  INTEGER NOT NULL DEFAULT 0,
    total_steps           INTEGER NOT NULL DEFAULT 0,
    attempt               INTEGER NOT NULL DEFAULT 0,     -- attempts started; the fencing token
    created_at_ms         INTEGER NOT NULL,
    enqueued_at_ms        INTEGER NOT NULL,
    started_at_ms         INTEGER,
    completed_at_ms       INTEGER,
    expires_at_ms         INTEGER,
    error_json            TEXT,                           -- JobError
    checkpoint_json       TEXT,                           -- CheckpointRef
    prev_checkpoint_json  TEXT,                           -- CheckpointRef
    outputs_json          TEXT,                           -- Outputs
    lease_worker          TEXT,                           -- WorkerId "{node}/{name}" while running
    lease_expires_at_ms   INTEGER,
    idempotency_key       TEXT,
    idempotency_body_hash TEXT,
    -- Event outbox: a statement that changes the job also sets these and bumps
    -- last_event_seq; the triggers below then append that event to job_events
    -- in the same statement (hence the same transaction). One statement per
    -- change keeps the hot path to a single round trip. (PostgreSQL: a CTE,
    -- `WITH j AS (UPDATE … RETURNING …) INSERT INTO job_events …`.)
    last_event_seq        INTEGER NOT NULL DEFAULT 0,     -- seq of the newest job_events row
    event_kind            TEXT,
    event_at_ms           INTEGER,
    event_data_json       TEXT,
    CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired')),
    CHECK (progress BETWEEN 0 AND 100)
);

-- Idempotency records: (tenant, key) is unique among keyed submissions only,
-- so unkeyed submissions do not pay for this index.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Runnable jobs, oldest first (scheduler seeding on start-up).
CREATE INDEX jobs_runnable ON jobs (enqueued_at_ms, id) WHERE state = 'queued';
-- Leases to reclaim (reaper) and per-node reclaim on restart.
CREATE INDEX jobs_leases ON jobs (lease_expires_at_ms) WHERE state = 'running';
-- Completed jobs due to expire (retention sweeper).
CREATE INDEX jobs_expiry ON jobs (expires_at_ms) WHERE state = 'completed';
-- A tenant's jobs by id, both directions (cursor pagination).
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);

-- Append-only per-job event log (SSE and audit trail). seq starts at 1.
CREATE TABLE job_events (
    job_id    TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    data_json TEXT    NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TRIGGER jobs_event_on_insert AFTER INSERT ON jobs
WHEN NEW.last_event_seq > 0
BEGIN
    INSERT INTO job_events (job_id, seq, at_ms, kind, data_json)
    VALUES (NEW.id, NEW.last_event_seq, NEW.event_at_ms, NEW.event_kind, NEW.event_data_json);
END;

CREATE TRIGGER jobs_event_on_update AFTER UPDATE OF last_event_seq ON jobs
WHEN NEW.last_event_seq <> OLD.last_event_seq
BEGIN
    INSERT INTO job_events (job_id, seq, at_ms, kind, data_json)
    VALUES (NEW.id, NEW.last_event_seq, NEW.event_at_ms, NEW.event_kind, NEW.event_data_json);
END;

-- API keys: only the SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    hash          TEXT    NOT NULL UNIQUE,
    prefix        TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    tier          TEXT    NOT NULL,
    admin         INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
