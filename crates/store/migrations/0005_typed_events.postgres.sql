-- Typed job events, and SQL both engines run as written (store/src/sql.rs).
--
-- This file and 0005_typed_events.sqlite.sql differ because the backfill
-- reads the old JSON columns with each engine's own JSON functions, and
-- triggers are written in each engine's own language.
--
-- 1. A job's error becomes two plain columns, error_code and error_message,
--    instead of JSON: statements set them without JSON functions, and the
--    dead-letter index matches a plain column.
-- 2. checkpoint_step mirrors the step of checkpoint_json, for events.
-- 3. Every event records the job as it was right after it: state, phase,
--    progress, attempt and checkpoint step, copied from the row by the
--    statement trigger, so no writer assembles them. data_json keeps only
--    the event's own payload (rows written before keep theirs, whose extra
--    fields readers ignore; their job fields are read back from them here).

ALTER TABLE jobs
    ADD COLUMN error_code TEXT,
    ADD COLUMN error_message TEXT,
    ADD COLUMN checkpoint_step BIGINT;
UPDATE jobs SET error_code = error_json::jsonb ->> 'code',
                error_message = error_json::jsonb ->> 'message'
    WHERE error_json IS NOT NULL;
UPDATE jobs SET checkpoint_step = (checkpoint_json::jsonb ->> 'step')::bigint
    WHERE checkpoint_json IS NOT NULL;
DROP INDEX jobs_dead_letter;
ALTER TABLE jobs DROP COLUMN error_json;
-- Dead letters by id; queries repeat this predicate so the planner matches it.
CREATE INDEX jobs_dead_letter ON jobs (id) WHERE state = 'failed' AND error_code = 'max_attempts_exceeded';

ALTER TABLE job_events
    ADD COLUMN state TEXT,
    ADD COLUMN phase TEXT,
    ADD COLUMN progress BIGINT,
    ADD COLUMN attempt BIGINT,
    ADD COLUMN checkpoint_step BIGINT;
UPDATE job_events SET
    state = COALESCE(data_json::jsonb ->> 'state', 'queued'),
    phase = COALESCE(data_json::jsonb ->> 'phase', 'queued'),
    progress = COALESCE((data_json::jsonb ->> 'progress')::bigint, 0),
    attempt = COALESCE((data_json::jsonb ->> 'attempt')::bigint, 0),
    checkpoint_step = (data_json::jsonb ->> 'resume_step')::bigint;
ALTER TABLE job_events
    ALTER COLUMN state SET NOT NULL,
    ALTER COLUMN phase SET NOT NULL,
    ALTER COLUMN progress SET NOT NULL,
    ALTER COLUMN attempt SET NOT NULL;

-- As in 0004, with the job's fields copied into each event.
CREATE OR REPLACE FUNCTION jobs_append_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text[];
    runnable text[];
    i int;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH e AS (
            INSERT INTO job_events (job_id, seq, at_ms, kind, data_json, state, phase, progress, attempt,
                                    checkpoint_step)
            SELECT id, last_event_seq, event_at_ms, event_kind, event_data_json, state, phase, progress, attempt,
                   checkpoint_step
            FROM new_rows WHERE last_event_seq > 0
            RETURNING job_id, kind)
        SELECT array_agg(job_id),
               array_agg(job_id) FILTER (WHERE kind IN ('created', 'requeued', 'redriven'))
        INTO changed, runnable FROM e;
    ELSE
        WITH e AS (
            INSERT INTO job_events (job_id, seq, at_ms, kind, data_json, state, phase, progress, attempt,
                                    checkpoint_step)
            SELECT n.id, n.last_event_seq, n.event_at_ms, n.event_kind, n.event_data_json, n.state, n.phase,
                   n.progress, n.attempt, n.checkpoint_step
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.last_event_seq <> o.last_event_seq
            RETURNING job_id, kind)
        SELECT array_agg(job_id),
               array_agg(job_id) FILTER (WHERE kind IN ('created', 'requeued', 'redriven'))
        INTO changed, runnable FROM e;
    END IF;
    FOR i IN 1 .. COALESCE(array_length(runnable, 1), 0) BY 100 LOOP
        PERFORM pg_notify('videogen_runnable', array_to_string(runnable[i : i + 99], ','));
    END LOOP;
    IF COALESCE(current_setting('videogen.notify_changes', true), '') <> 'off' THEN
        FOR i IN 1 .. COALESCE(array_length(changed, 1), 0) BY 100 LOOP
            PERFORM pg_notify('videogen_changed', array_to_string(changed[i : i + 99], ','));
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;
