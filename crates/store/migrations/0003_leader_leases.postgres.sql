-- Leader leases: which node acts as the singleton scheduler (dispatch,
-- reaper, retention). A holder renews its row well before `expires_at_ms`;
-- another node takes the row over only once it has expired. `term` grows on
-- every change of holder, so logs can tell leaderships apart.
CREATE TABLE leader_leases (
    name          TEXT   NOT NULL PRIMARY KEY,
    holder        TEXT   NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    term          BIGINT NOT NULL
);

-- Wake-ups across nodes, sent by the same trigger that appends the event, so
-- a listener hears of a change only once it has committed (NOTIFY is
-- delivered at COMMIT, and dropped with a rollback):
-- - `videogen_runnable` (payload: job id) when a job becomes runnable: the
--   scheduler leader picks up jobs submitted on other API nodes at once
--   instead of polling. Low volume: one per submit, re-queue or re-drive.
-- - `videogen_changed` (payload: job id) for every event, so SSE streams on
--   any API node wake at once. A node that fans changes out through Redis
--   instead sets `videogen.notify_changes = off` on its connections: NOTIFY
--   serialises committing transactions on a global lock, so the
--   high-volume channel is worth moving off PostgreSQL when Redis is there.
-- Payloads carry no data: listeners re-read the store, which stays the
-- source of truth, so a missed notification costs latency, never an event.
CREATE OR REPLACE FUNCTION jobs_append_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_events (job_id, seq, at_ms, kind, data_json)
    VALUES (NEW.id, NEW.last_event_seq, NEW.event_at_ms, NEW.event_kind, NEW.event_data_json);
    IF NEW.event_kind IN ('created', 'requeued', 'redriven') THEN
        PERFORM pg_notify('videogen_runnable', NEW.id);
    END IF;
    IF COALESCE(current_setting('videogen.notify_changes', true), '') <> 'off' THEN
        PERFORM pg_notify('videogen_changed', NEW.id);
    END IF;
    RETURN NULL;
END;
$$;
