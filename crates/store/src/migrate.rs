//! Schema migrations of the SQLite store: the files under
//! `migrations/sqlite/`, embedded in the binary and applied in order on open.
//!
//! Each applied migration is recorded in `schema_migrations` with a SHA-256 of
//! its SQL, so a migration edited after release, or a database written by a
//! newer videogen, is refused at start-up instead of misbehaving later.
//! (`rusqlite_migration` would do the same but pins its own `rusqlite`.)

use crate::rows::db;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use videogen_core::store::StoreError;

/// `(version, name, sql)`, in order. Versions are never reused or edited.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/sqlite/0001_init.sql")),
    (
        2,
        "worker_tokens_dead_letter",
        include_str!("../migrations/sqlite/0002_worker_tokens_dead_letter.sql"),
    ),
    (
        3,
        "leader_leases",
        include_str!("../migrations/sqlite/0003_leader_leases.sql"),
    ),
];

/// Applies the missing migrations, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection, now_ms: i64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       INTEGER NOT NULL PRIMARY KEY,
             name          TEXT    NOT NULL,
             sha256        TEXT    NOT NULL,
             applied_at_ms INTEGER NOT NULL
         )",
    )
    .map_err(db)?;
    let newest: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0))
        .map_err(db)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newest) = newest
        && newest > known
    {
        return Err(StoreError::Backend(format!(
            "the database has schema version {newest}, newer than this videogen knows ({known}); \
             upgrade videogen"
        )));
    }
    for &(version, name, sql) in MIGRATIONS {
        let sha = hex::encode(Sha256::digest(sql.as_bytes()));
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let applied: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match applied {
            Some(old) if old == sha => continue,
            Some(_) => {
                return Err(StoreError::Backend(format!(
                    "migration {version} ({name}) changed after it was applied to this database"
                )));
            }
            None => {}
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Backend(format!("applying migration {version} ({name}): {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, sha256, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![version, name, sha, now_ms],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version, name, "applied store migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_refuses_edits_and_newer_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        migrate(&mut conn, 2).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);

        conn.execute("UPDATE schema_migrations SET sha256 = 'x' WHERE version = 1", [])
            .unwrap();
        let e = migrate(&mut conn, 3).unwrap_err().to_string();
        assert!(e.contains("changed after it was applied"), "{e}");

        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'y', 0)", [])
            .unwrap();
        let e = migrate(&mut conn, 4).unwrap_err().to_string();
        assert!(e.contains("newer than this videogen"), "{e}");
    }

    /// A database written by the first release upgrades in place: its jobs
    /// get a zero `attempt_floor` (the budget they always had).
    #[test]
    fn upgrades_a_version_1_database_keeping_its_jobs() {
        let mut conn = Connection::open_in_memory().unwrap();
        let (version, name, sql) = MIGRATIONS[0];
        conn.execute_batch(sql).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, \
             sha256 TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?1, ?2, ?3, 0)",
            params![version, name, hex::encode(Sha256::digest(sql.as_bytes()))],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, attempt, created_at_ms, \
             enqueued_at_ms) VALUES ('video_1', 't', 'free', 'm', '{}', 'failed', 'failed', 3, 0, 0)",
            [],
        )
        .unwrap();
        migrate(&mut conn, 1).unwrap();
        let (attempt, floor): (i64, i64) = conn
            .query_row(
                "SELECT attempt, attempt_floor FROM jobs WHERE id = 'video_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((attempt, floor), (3, 0));
        let tokens: i64 = conn
            .query_row("SELECT COUNT(*) FROM worker_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 0);
    }
}
