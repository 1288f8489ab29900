//! A small pool of read-only connections, used on tokio's blocking threads.
//!
//! In WAL mode a reader sees the last committed snapshot and neither blocks
//! nor waits for the writer thread. A pool crate would bring its own
//! `rusqlite` version requirement; this is the few lines the store needs.

use crate::error;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use videogen_core::store::StoreError;

pub(crate) struct Readers {
    path: PathBuf,
    /// Idle connections; at most `permits` exist at once.
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Semaphore,
    configure: fn(&Connection) -> rusqlite::Result<()>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, max: usize, configure: fn(&Connection) -> rusqlite::Result<()>) -> Self {
        Self {
            path,
            idle: Arc::new(Mutex::new(Vec::with_capacity(max))),
            permits: Semaphore::new(max),
            configure,
        }
    }

    /// Runs `f` on a reader connection on a blocking thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| error::closed())?;
        let idle = self.idle.clone();
        let path = self.path.clone();
        let configure = self.configure;
        tokio::task::spawn_blocking(move || {
            let mut conn = match idle.lock().map(|mut v| v.pop()) {
                Ok(Some(conn)) => conn,
                _ => open(&path, configure)?,
            };
            let out = f(&mut conn);
            // A connection is returned only after a clean read; one that saw
            // an error is dropped and a fresh one opened next time.
            if out.is_ok()
                && let Ok(mut v) = idle.lock()
            {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::fault(format!("store read task failed: {e}")))?
    }

    /// Closes the idle connections.
    pub(crate) fn close(&self) {
        self.permits.close();
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
    }
}

fn open(path: &std::path::Path, configure: fn(&Connection) -> rusqlite::Result<()>) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(error::sqlite)?;
    configure(&conn).map_err(error::sqlite)?;
    Ok(conn)
}
