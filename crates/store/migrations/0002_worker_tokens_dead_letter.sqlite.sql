-- Worker tokens, and re-driving dead-lettered jobs.

-- Credentials of worker processes. A table of their own, not a flag on
-- api_keys: a worker token can never pass as a tenant key, nor the reverse.
-- Only the SHA-256 of the secret is stored.
CREATE TABLE worker_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,   -- wtok_<16 hex of the hash>
    hash          TEXT    NOT NULL UNIQUE,
    prefix        TEXT    NOT NULL,               -- first characters of the secret (vgw_…)
    name          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

-- The `attempt` at which the job's current budget of attempts started. A
-- re-drive sets it to the current attempt instead of resetting `attempt`,
-- which is the fencing token and must only grow; the retry / dead-letter
-- decisions compare `attempt - attempt_floor` with the maximum.
ALTER TABLE jobs ADD COLUMN attempt_floor INTEGER NOT NULL DEFAULT 0;

-- Dead letters by id (admin listing, re-drive), without scanning every failed
-- job. Queries must repeat this WHERE clause literally for SQLite to use it.
CREATE INDEX jobs_dead_letter ON jobs (id)
    WHERE state = 'failed' AND json_extract(error_json, '$.code') = 'max_attempts_exceeded';
