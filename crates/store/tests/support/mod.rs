//! Shared test support: the backends every store scenario runs on.

pub mod pg;

use tempfile::TempDir;
use videogen_store::SqliteStore;

/// A store on a fresh file; keep the `TempDir` alive as long as the store.
pub async fn file_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("videogen.db")).await.unwrap();
    (store, dir)
}

/// Runs a scenario (`async fn name(store: &dyn Store)`) on a file-backed
/// SQLite store, in memory, and on a fresh PostgreSQL database (see [`pg`]).
macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn on_file() {
                let (store, _dir) = crate::support::file_store().await;
                super::$name(&store).await;
            }
            #[tokio::test]
            async fn in_memory() {
                let store = videogen_store::SqliteStore::open_in_memory().await.unwrap();
                super::$name(&store).await;
            }
            #[tokio::test]
            async fn postgres() {
                let db = crate::support::pg::TestDb::create().await;
                let store = db.store().await;
                super::$name(&store).await;
                store.close().await.unwrap();
            }
        }
    };
}
