-- Typed job events, and SQL both engines run as written (store/src/sql.rs).
--
-- This file and 0005_typed_events.postgres.sql differ because the backfill
-- reads the old JSON columns with each engine's own JSON functions, and
-- triggers are written in each engine's own language.
--
-- 1. A job's error becomes two plain columns, error_code and error_message,
--    instead of JSON: statements set them without JSON functions, and the
--    dead-letter index matches a plain column.
-- 2. checkpoint_step mirrors the step of checkpoint_json, for events.
-- 3. Every event records the job as it was right after it: state, phase,
--    progress, attempt and checkpoint step, copied from the row by the
--    trigger, so no writer assembles them. data_json keeps only the event's
--    own payload (rows written before keep theirs, whose extra fields
--    readers ignore; their job fields are read back from them here).

DROP TRIGGER jobs_event_on_insert;
DROP TRIGGER jobs_event_on_update;

ALTER TABLE jobs ADD COLUMN error_code TEXT;
ALTER TABLE jobs ADD COLUMN error_message TEXT;
ALTER TABLE jobs ADD COLUMN checkpoint_step INTEGER;
UPDATE jobs SET error_code = json_extract(error_json, '$.code'),
                error_message = json_extract(error_json, '$.message')
    WHERE error_json IS NOT NULL;
UPDATE jobs SET checkpoint_step = json_extract(checkpoint_json, '$.step')
    WHERE checkpoint_json IS NOT NULL;
DROP INDEX jobs_dead_letter;
ALTER TABLE jobs DROP COLUMN error_json;
-- Dead letters by id; queries repeat this predicate literally.
CREATE INDEX jobs_dead_letter ON jobs (id) WHERE state = 'failed' AND error_code = 'max_attempts_exceeded';

ALTER TABLE job_events ADD COLUMN state TEXT NOT NULL DEFAULT 'queued';
ALTER TABLE job_events ADD COLUMN phase TEXT NOT NULL DEFAULT 'queued';
ALTER TABLE job_events ADD COLUMN progress INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_events ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_events ADD COLUMN checkpoint_step INTEGER;
UPDATE job_events SET
    state = COALESCE(json_extract(data_json, '$.state'), 'queued'),
    phase = COALESCE(json_extract(data_json, '$.phase'), 'queued'),
    progress = COALESCE(json_extract(data_json, '$.progress'), 0),
    attempt = COALESCE(json_extract(data_json, '$.attempt'), 0),
    checkpoint_step = json_extract(data_json, '$.resume_step');

CREATE TRIGGER jobs_event_on_insert AFTER INSERT ON jobs
WHEN NEW.last_event_seq > 0
BEGIN
    INSERT INTO job_events (job_id, seq, at_ms, kind, data_json, state, phase, progress, attempt, checkpoint_step)
    VALUES (NEW.id, NEW.last_event_seq, NEW.event_at_ms, NEW.event_kind, NEW.event_data_json,
            NEW.state, NEW.phase, NEW.progress, NEW.attempt, NEW.checkpoint_step);
END;

CREATE TRIGGER jobs_event_on_update AFTER UPDATE OF last_event_seq ON jobs
WHEN NEW.last_event_seq <> OLD.last_event_seq
BEGIN
    INSERT INTO job_events (job_id, seq, at_ms, kind, data_json, state, phase, progress, attempt, checkpoint_step)
    VALUES (NEW.id, NEW.last_event_seq, NEW.event_at_ms, NEW.event_kind, NEW.event_data_json,
            NEW.state, NEW.phase, NEW.progress, NEW.attempt, NEW.checkpoint_step);
END;
