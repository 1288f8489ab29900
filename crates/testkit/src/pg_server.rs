//! A fresh PostgreSQL database per benchmark run, on the server a
//! `--database-url` names, dropped afterwards.

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use std::time::{SystemTime, UNIX_EPOCH};

/// The server of a `--database-url`.
pub struct PgServer {
    /// `postgres://user@host:port` (no database).
    base: String,
    /// `?…` of the URL, possibly empty.
    query: String,
    /// The URL's database (default `postgres`), to connect to for CREATE / DROP DATABASE.
    admin_db: String,
}

/// A database created for one run.
pub struct TempDb {
    pub name: String,
    pub url: String,
}

/// The values `synchronous_commit` takes.
pub const SYNCHRONOUS_COMMIT: &[&str] = &["on", "off", "local", "remote_write", "remote_apply"];

/// Server-wide WAL counters, or their growth over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WalStats {
    pub bytes: f64,
    /// WAL buffer writes to disk.
    pub writes: f64,
    /// WAL flushes (`fdatasync` and the like).
    pub syncs: f64,
}

impl WalStats {
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            bytes: self.bytes - earlier.bytes,
            writes: self.writes - earlier.writes,
            syncs: self.syncs - earlier.syncs,
        }
    }
}

/// What the server says about itself, recorded with the figures.
#[derive(Debug, Clone, Serialize)]
pub struct PgSettings {
    pub server_version: String,
    pub synchronous_commit: String,
    pub fsync: String,
}

impl PgServer {
    pub fn new(url: &str) -> Self {
        let (head, query) = url.find('?').map_or((url, ""), |i| url.split_at(i));
        let authority = head.find("://").map_or(0, |i| i + 3);
        let (base, db) = match head[authority..].find('/') {
            Some(i) => (&head[..authority + i], &head[authority + i + 1..]),
            None => (head, ""),
        };
        Self {
            base: base.to_owned(),
            query: query.to_owned(),
            admin_db: if db.is_empty() { "postgres".into() } else { db.into() },
        }
    }

    /// The URL of database `db` on this server (credentials and options kept).
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}{}", self.base, self.query)
    }

    /// `host:port` and user, without any password, for reports.
    pub fn describe(&self) -> String {
        let authority = self.base.find("://").map_or(0, |i| i + 3);
        let rest = &self.base[authority..];
        match rest.rsplit_once('@') {
            Some((user, host)) => format!("{}@{host}", user.split(':').next().unwrap_or_default()),
            None => rest.to_owned(),
        }
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.url(&self.admin_db)).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {} (database {})",
                self.describe(),
                self.admin_db
            )
        })
    }

    /// The server's settings (as a session on the URL's database sees them).
    pub async fn settings(&self) -> anyhow::Result<PgSettings> {
        Self::settings_of(self.admin().await?).await
    }

    /// The settings a session on `db` gets: the server's, or what `ALTER
    /// DATABASE … SET` changed there.
    pub async fn settings_in(&self, db: &TempDb) -> anyhow::Result<PgSettings> {
        let c = PgConnection::connect(&db.url)
            .await
            .with_context(|| format!("connecting to database {} on {}", db.name, self.describe()))?;
        Self::settings_of(c).await
    }

    async fn settings_of(mut c: PgConnection) -> anyhow::Result<PgSettings> {
        let mut show = async |what: &'static str| -> anyhow::Result<String> {
            let (v,): (String,) = sqlx::query_as(what).fetch_one(&mut c).await?;
            Ok(v)
        };
        let settings = PgSettings {
            server_version: show("SHOW server_version").await?,
            synchronous_commit: show("SHOW synchronous_commit").await?,
            fsync: show("SHOW fsync").await?,
        };
        drop(c.close().await);
        Ok(settings)
    }

    /// Server-wide WAL counters (`pg_stat_wal`, PostgreSQL 14+): everything
    /// on the server counts, not just one database.
    pub async fn wal_stats(&self) -> anyhow::Result<WalStats> {
        let mut c = self.admin().await?;
        let (bytes, writes, syncs): (f64, f64, f64) =
            sqlx::query_as("SELECT wal_bytes::float8, wal_write::float8, wal_sync::float8 FROM pg_stat_wal")
                .fetch_one(&mut c)
                .await
                .context("reading pg_stat_wal")?;
        drop(c.close().await);
        Ok(WalStats { bytes, writes, syncs })
    }

    /// Sets `synchronous_commit` for new sessions on `db` (one of
    /// [`SYNCHRONOUS_COMMIT`]).
    pub async fn set_synchronous_commit(&self, db: &TempDb, value: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            SYNCHRONOUS_COMMIT.contains(&value),
            "synchronous_commit {value:?} is not one of {SYNCHRONOUS_COMMIT:?}"
        );
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{}\" SET synchronous_commit = '{value}'",
                db.name
            )))
            .await
            .with_context(|| format!("setting synchronous_commit on {}", db.name))?;
        drop(admin.close().await);
        Ok(())
    }

    /// A new, empty database with a name no other run uses.
    pub async fn create(&self, what: &str) -> anyhow::Result<TempDb> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("videogen_bench_{what}_{}_{nanos}", std::process::id());
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
            )))
            .await
            .with_context(|| format!("creating database {name}"))?;
        drop(admin.close().await);
        Ok(TempDb {
            url: self.url(&name),
            name,
        })
    }

    /// Drops `db`, ending connections left open. A failure is printed, not
    /// returned: the measurement stands.
    pub async fn drop_db(&self, db: &TempDb) {
        let dropped = async {
            let mut admin = self.admin().await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    db.name
                )))
                .await?;
            drop(admin.close().await);
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("[bench] could not drop database {}: {e:#}", db.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_credentials_and_options_and_reports_hide_the_password() {
        let s = PgServer::new("postgres://u:p@h:5433/app?sslmode=disable");
        assert_eq!(s.url("x"), "postgres://u:p@h:5433/x?sslmode=disable");
        assert_eq!(s.admin_db, "app");
        assert_eq!(s.describe(), "u@h:5433");
        let s = PgServer::new("postgres://postgres@127.0.0.1:5432/");
        assert_eq!(s.url("x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(s.admin_db, "postgres");
        assert_eq!(s.describe(), "postgres@127.0.0.1:5432");
        assert_eq!(PgServer::new("postgres://h").describe(), "h");
    }
}
