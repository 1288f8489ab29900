//! A file-backed SQLite store in a temporary directory.

use tempfile::TempDir;
use videogen_store::SqliteStore;

/// A store on a fresh file; keep the `TempDir` alive as long as the store.
pub async fn file_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("videogen.db"))
        .await
        .expect("opening a SQLite store");
    (store, dir)
}
