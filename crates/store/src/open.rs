//! Opening a store from a URL: `sqlite://PATH` (the embedded default; PATH
//! as written, so `sqlite:///var/lib/videogen.db` is absolute and
//! `sqlite://data/videogen.db` relative), `sqlite::memory:` (tests) or
//! `postgres://…` / `postgresql://…`. Opening applies the migrations.

use crate::{PgOptions, PgStore, SqliteStore, Wakeup};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use videogen_core::store::{Store, StoreError};

/// A store of either backend, with what only one of them offers.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl AnyStore {
    /// Opens (and migrates) the store at `url`.
    pub async fn open(url: &str, pg: PgOptions) -> Result<Self, StoreError> {
        if url == "sqlite::memory:" {
            return Ok(Self::Sqlite(Arc::new(SqliteStore::open_in_memory().await?)));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::unavailable(format!("creating {}: {e}", dir.display())))?;
            }
            return Ok(Self::Sqlite(Arc::new(SqliteStore::open(path).await?)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(Arc::new(PgStore::connect_with(url, pg).await?)));
        }
        Err(StoreError::fault(
            "database URL must start with sqlite://, postgres:// or postgresql://",
        ))
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
