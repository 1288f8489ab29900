-- Leader leases: which node acts as the singleton scheduler (dispatch,
-- reaper, retention). A holder renews its row well before `expires_at_ms`;
-- another node takes the row over only once it has expired. `term` grows on
-- every change of holder, so logs can tell leaderships apart.
CREATE TABLE leader_leases (
    name          TEXT    NOT NULL PRIMARY KEY,
    holder        TEXT    NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    term          INTEGER NOT NULL
);
