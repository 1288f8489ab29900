//! Opening a store from a URL: `sqlite://PATH` (the embedded default; PATH
//! as written, so `sqlite:///var/lib/videogen.db` is absolute and
//! `sqlite://data/videogen.db` relative), `sqlite::memory:` (tests) or
//! `postgres://…` / `postgresql://…`. Opening applies the migrations.

use crate::{PgOptions, PgStore, SqliteStore, Wakeup};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::mpsc;
use videogen_core::secret_url::SecretUrl;
use videogen_core::store::{Store, StoreError};

/// Where the store is, parsed and checked: what parses opens (or fails for a
/// reason outside the URL). `Display`, `Debug` and `Serialize` mask the
/// PostgreSQL password.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// `sqlite://PATH`, the path as written (any `?query` dropped).
    Sqlite(PathBuf),
    /// `sqlite::memory:`, for tests.
    SqliteMemory,
    /// `postgres://…` or `postgresql://…`.
    Postgres(SecretUrl),
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown = SecretUrl::new(s).masked();
        if s == "sqlite::memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(rest) = s.strip_prefix("sqlite://") {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(format!(
                    "{shown:?} names no file: use sqlite://PATH (sqlite:///abs/path.db)"
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // sqlx's own parser, so that what passes here is what it connects with.
            return match sqlx::postgres::PgConnectOptions::from_str(s) {
                Ok(_) => Ok(Self::Postgres(SecretUrl::new(s))),
                Err(e) => Err(format!(
                    "{shown:?} is not a valid PostgreSQL URL ({})",
                    SecretUrl::new(e.to_string())
                )),
            };
        }
        Err(format!(
            "{shown:?} is not a supported database: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB \
             (postgresql:// too)"
        ))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::SqliteMemory => f.write_str("sqlite::memory:"),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl serde::Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A store of either backend, with what only one of them offers.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl AnyStore {
    /// Opens (and migrates) the store at `url`.
    pub async fn open(url: &str, pg: PgOptions) -> Result<Self, StoreError> {
        Self::connect(&url.parse().map_err(StoreError::fault)?, pg).await
    }

    /// Opens (and migrates) the store `url` names, creating a SQLite file's directory.
    pub async fn connect(url: &DatabaseUrl, pg: PgOptions) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::SqliteMemory => Ok(Self::Sqlite(Arc::new(SqliteStore::open_in_memory().await?))),
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::unavailable(format!("creating {}: {e}", dir.display())))?;
                }
                Ok(Self::Sqlite(Arc::new(SqliteStore::open(path).await?)))
            }
            DatabaseUrl::Postgres(url) => Ok(Self::Postgres(Arc::new(PgStore::connect_with(url.expose(), pg).await?))),
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s) => s.clone(),
            Self::Postgres(s) => s.clone(),
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Wake-ups from other nodes: PostgreSQL's LISTEN/NOTIFY. `None` for
    /// SQLite, which one process owns (nothing else can change it).
    pub async fn listen(&self) -> Result<Option<mpsc::Receiver<Wakeup>>, StoreError> {
        match self {
            Self::Sqlite(_) => Ok(None),
            Self::Postgres(s) => s.listen().await.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn database_urls_parse_or_say_why_without_the_password() {
        let ok = |s: &str| s.parse::<DatabaseUrl>().map(|u| u.to_string());
        assert_eq!(
            ok("sqlite://./data/vg.db?mode=rwc").as_deref(),
            Ok("sqlite://./data/vg.db")
        );
        assert!(
            matches!("sqlite:///var/lib/vg.db".parse(), Ok(DatabaseUrl::Sqlite(p)) if p == std::path::Path::new("/var/lib/vg.db"))
        );
        assert_eq!(
            ok("postgresql://vg:pw@db:5432/videogen?sslmode=require").as_deref(),
            Ok("postgresql://vg:****@db:5432/videogen?sslmode=require")
        );
        for bad in [
            "mysql://root:hunter2@db/vg",
            "sqlite://",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let e = ok(bad).err().unwrap_or_default();
            assert!(!e.is_empty() && !e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
