-- Job events appended once per statement instead of once per row.
--
-- The row triggers of 0001/0003 ran a plpgsql function per changed job: an
-- INSERT into job_events (itself checked row by row against jobs by the
-- foreign key) and up to two NOTIFYs. A group-committed batch (pg_batch.rs)
-- changes up to 128 jobs in one statement, and paid that per write.
-- Statement-level triggers with transition tables do the same once per
-- statement: one INSERT … SELECT of every event, and one NOTIFY per channel
-- carrying the statement's job ids, comma-separated, at most 100 per
-- notification (payloads are limited to 8000 bytes; listeners split them).
-- A statement that changes jobs in several CTEs fires each trigger once,
-- with every changed row in its transition tables.
--
-- The foreign key from job_events to jobs goes: events are appended only
-- here, from the jobs rows themselves, and deleting a job deletes its events
-- in the same statement (PgStore::delete), as ON DELETE CASCADE did.

ALTER TABLE job_events DROP CONSTRAINT job_events_job_id_fkey;

DROP TRIGGER jobs_event_on_insert ON jobs;
DROP TRIGGER jobs_event_on_update ON jobs;
DROP FUNCTION jobs_append_event();

-- Appends the event of every row the statement gave a new last_event_seq
-- (an insert with seq > 0; an update that moved it: a heartbeat without news
-- leaves it as it was), then sends the wake-ups of 0003.
CREATE FUNCTION jobs_append_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text[];
    runnable text[];
    i int;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH e AS (
            INSERT INTO job_events (job_id, seq, at_ms, kind, data_json)
            SELECT id, last_event_seq, event_at_ms, event_kind, event_data_json
            FROM new_rows WHERE last_event_seq > 0
            RETURNING job_id, kind)
        SELECT array_agg(job_id),
               array_agg(job_id) FILTER (WHERE kind IN ('created', 'requeued', 'redriven'))
        INTO changed, runnable FROM e;
    ELSE
        WITH e AS (
            INSERT INTO job_events (job_id, seq, at_ms, kind, data_json)
            SELECT n.id, n.last_event_seq, n.event_at_ms, n.event_kind, n.event_data_json
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

CREATE TRIGGER jobs_events_on_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_append_events();

CREATE TRIGGER jobs_events_on_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_append_events();
