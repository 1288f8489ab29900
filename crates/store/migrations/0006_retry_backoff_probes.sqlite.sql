-- Retries that wait, and a place to prove the database takes writes.
--
-- 1. not_before_ms: a job re-queued after a failed attempt is runnable
--    again only from this instant (exponential backoff with jitter, chosen
--    by the control plane). NULL: at once. The dispatcher holds such jobs
--    aside until they are due, also after a restart (it reads this column).
-- 2. write_probes: one row per node, rewritten by /readyz, so readiness
--    reflects whether this node can write (a full disk fails this write as
--    it fails a submit), not only whether it can read.
ALTER TABLE jobs ADD COLUMN not_before_ms INTEGER;
CREATE TABLE write_probes (
    node  TEXT    NOT NULL PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
