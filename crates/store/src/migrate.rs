//! Schema migrations of the SQLite store: the files under
//! `migrations/sqlite/`, embedded in the binary and applied in order on open.
//!
//! Each applied migration is recorded in `schema_migrations` with a SHA-256 of
//! its SQL, so a migration edited after release, or a database written by a
//! newer videogen, is refused at start-up instead of misbehaving later.
//! (`rusqlite_migration` would do the same but pins its own `rusqlite`.)

//! Schema migrations of both engines, embedded in the binary: the files
//! under `migrations/`, applied in order on open.
//!
//! A change of schema is one version. Its SQL is one file,
//! `NNNN_name.sql`, when both engines take it as written; where they cannot
//! (JSON functions, triggers, types), it is `NNNN_name.sqlite.sql` and
//! `NNNN_name.postgres.sql`, whose header says why. A version may exist for
//! one engine only (0004 is a PostgreSQL optimisation). Applied files are
//! never edited: both engines record a checksum of each and refuse a
//! database whose applied SQL changed.
//!
//! - SQLite: this module's runner, which records each version in
//!   `schema_migrations` with a SHA-256 of its SQL and refuses a database
//!   written by a newer videogen. (`rusqlite_migration` would do the same
//!   but pins its own `rusqlite`.)
//! - PostgreSQL: `sqlx`'s migrator over the same list (its
//!   `_sqlx_migrations` table, under an advisory lock).

use crate::error;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use videogen_core::store::StoreError;

/// One schema change: its SQL per engine (`None`: nothing to do there).
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: Option<&'static str>,
    postgres: Option<&'static str>,
}

/// A change written for each engine.
macro_rules! per_engine {
    ($version:expr, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: Some(include_str!(concat!("../migrations/", $name, ".sqlite.sql"))),
            postgres: Some(include_str!(concat!("../migrations/", $name, ".postgres.sql"))),
        }
    };
}

/// Every migration, in order. Versions are never reused or edited.
const MIGRATIONS: &[Migration] = &[
    per_engine!(1, "0001_init"),
    per_engine!(2, "0002_worker_tokens_dead_letter"),
    per_engine!(3, "0003_leader_leases"),
    Migration {
        version: 4,
        name: "0004_statement_event_trigger",
        sqlite: None,
        postgres: Some(include_str!("../migrations/0004_statement_event_trigger.postgres.sql")),
    },
    per_engine!(5, "0005_typed_events"),
    per_engine!(6, "0006_retry_backoff_probes"),
];

/// The name a version is recorded under: the file name without its number.
fn short_name(m: &Migration) -> &'static str {
    m.name.split_once('_').map_or(m.name, |(_, rest)| rest)
}

/// The PostgreSQL migrations, for `sqlx` to apply and check.
pub(crate) fn postgres() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    let migrations = MIGRATIONS
        .iter()
        .filter_map(|m| {
            let sql = m.postgres?;
            Some(sqlx::migrate::Migration::new(
                m.version,
                short_name(m).replace('_', " ").into(),
                sqlx::migrate::MigrationType::Simple,
                sql.into_sql_str(),
                false,
            ))
        })
        .collect();
    sqlx::migrate::Migrator::with_migrations(migrations)
}

/// Applies the missing migrations, each in its own transaction.
pub(crate) fn sqlite(conn: &mut Connection, now_ms: i64) -> Result<(), StoreError> {
    sqlite_until(conn, now_ms, i64::MAX)
}

/// [`sqlite`] up to `last` (tests of upgrades start from an old schema).
fn sqlite_until(conn: &mut Connection, now_ms: i64, last: i64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       INTEGER NOT NULL PRIMARY KEY,
             name          TEXT    NOT NULL,
             sha256        TEXT    NOT NULL,
             applied_at_ms INTEGER NOT NULL
         )",
    )
    .map_err(error::sqlite)?;
    let newest: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0))
        .map_err(error::sqlite)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newest) = newest
        && newest > known
    {
        return Err(StoreError::fault(format!(
            "the database has schema version {newest}, newer than this videogen knows ({known}); \
             upgrade videogen"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version <= last) {
        let Some(sql) = m.sqlite else { continue };
        let (version, name) = (m.version, short_name(m));
        let sha = hex::encode(Sha256::digest(sql.as_bytes()));
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error::sqlite)?;
        let applied: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(error::sqlite)?;
        match applied {
            Some(old) if old == sha => continue,
            Some(_) => {
                return Err(StoreError::fault(format!(
                    "migration {version} ({name}) changed after it was applied to this database"
                )));
            }
            None => {}
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::fault(format!("applying migration {version} ({name}): {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, sha256, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![version, name, sha, now_ms],
        )
        .map_err(error::sqlite)?;
        tx.commit().map_err(error::sqlite)?;
        tracing::info!(version, name, "applied store migration");
    }
    Ok(())
}

/// The PostgreSQL migrations up to `last`, for tests of upgrades.
#[doc(hidden)]
pub fn postgres_until(last: i64) -> sqlx::migrate::Migrator {
    let mut m = postgres();
    m.migrations = std::borrow::Cow::Owned(m.migrations.iter().filter(|m| m.version <= last).cloned().collect());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_versions() -> i64 {
        MIGRATIONS.iter().filter(|m| m.sqlite.is_some()).count() as i64
    }

    #[test]
    fn applies_once_and_refuses_edits_and_newer_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        sqlite(&mut conn, 1).unwrap();
        sqlite(&mut conn, 2).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, sqlite_versions());

        conn.execute("UPDATE schema_migrations SET sha256 = 'x' WHERE version = 1", [])
            .unwrap();
        let e = sqlite(&mut conn, 3).unwrap_err().to_string();
        assert!(e.contains("changed after it was applied"), "{e}");

        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'y', 0)", [])
            .unwrap();
        let e = sqlite(&mut conn, 4).unwrap_err().to_string();
        assert!(e.contains("newer than this videogen"), "{e}");
    }

    /// The files the versions name are the ones on disk, and each engine's
    /// versions only grow.
    #[test]
    fn versions_grow_and_names_match_their_numbers() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        for m in MIGRATIONS {
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
            assert!(m.sqlite.is_some() || m.postgres.is_some(), "{}", m.name);
        }
    }

    /// A database written by the first release upgrades in place: its jobs
    /// get a zero `attempt_floor` (the budget they always had).
    #[test]
    fn upgrades_a_version_1_database_keeping_its_jobs() {
        let mut conn = Connection::open_in_memory().unwrap();
        sqlite_until(&mut conn, 0, 1).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, attempt, created_at_ms, \
             enqueued_at_ms) VALUES ('video_1', 't', 'free', 'm', '{}', 'failed', 'failed', 3, 0, 0)",
            [],
        )
        .unwrap();
        sqlite(&mut conn, 1).unwrap();
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

    /// A database of the release before typed events keeps its jobs' errors
    /// and checkpoint steps, and its events their job fields.
    #[test]
    fn upgrades_a_version_3_database_to_typed_events() {
        let mut conn = Connection::open_in_memory().unwrap();
        sqlite_until(&mut conn, 0, 3).unwrap();
        conn.execute_batch(
            r#"INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, attempt, created_at_ms,
                   enqueued_at_ms, error_json, checkpoint_json, last_event_seq, event_kind, event_at_ms,
                   event_data_json)
               VALUES ('video_2', 't', 'free', 'm', '{}', 'failed', 'failed', 3, 0, 0,
                   '{"code":"max_attempts_exceeded","message":"gave up"}',
                   '{"key":"k","step":12,"attempt":2,"crc32":1,"size_bytes":3}', 1, 'requeued', 5,
                   '{"status":"queued","state":"queued","phase":"queued","progress":40,"attempt":2,"reason":"released","resume_step":12}');"#,
        )
        .unwrap();
        sqlite(&mut conn, 1).unwrap();
        let job: (String, String, i64) = conn
            .query_row(
                "SELECT error_code, error_message, checkpoint_step FROM jobs WHERE id = 'video_2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(job, ("max_attempts_exceeded".into(), "gave up".into(), 12));
        let event: (String, String, i64, i64, i64) = conn
            .query_row(
                "SELECT state, phase, progress, attempt, checkpoint_step FROM job_events WHERE job_id = 'video_2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(event, ("queued".into(), "queued".into(), 40, 2, 12));
        let dead: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND error_code = 'max_attempts_exceeded'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dead, 1);
    }
}
