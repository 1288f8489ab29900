//! The WAL checkpointer: folds the write-ahead log back into the database
//! file on its own thread and connection.
//!
//! SQLite's default is to checkpoint inside whichever commit pushes the WAL
//! past 1,000 pages; that commit then copies pages and `fsync`s, and its
//! caller waits milliseconds instead of microseconds (what dominated the
//! submit p99). The writer turns that off (`wal_autocheckpoint = 0`) and this
//! thread runs a `PASSIVE` checkpoint, which never blocks the writer or the
//! readers, shortly after commits happened. When a checkpoint has caught up
//! and no reader still uses the log, the writer restarts the WAL from its
//! beginning, so the file stays small.

use crate::error;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use videogen_core::store::StoreError;

/// How often the thread looks for new commits.
const INTERVAL: Duration = Duration::from_millis(200);

/// Stops (and joins) the thread when dropped.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` whenever `commits` moved.
    pub(crate) fn spawn(
        path: &Path,
        commits: Arc<AtomicU64>,
        configure: fn(&Connection) -> rusqlite::Result<()>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(error::sqlite)?;
        configure(&conn).map_err(error::sqlite)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("videogen-store-wal".into())
            .spawn(move || {
                let mut seen = commits.load(Ordering::Relaxed);
                // Until stopped (a message, or the sender dropped).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    let now = commits.load(Ordering::Relaxed);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match checkpoint(&conn) {
                        Ok((busy, log, done)) => {
                            tracing::trace!(busy, wal_pages = log, checkpointed = done, "WAL checkpoint");
                        }
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying later"),
                    }
                }
            })
            .map_err(|e| StoreError::fault(format!("starting the WAL checkpointer: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (busy, pages in the WAL, pages copied).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the WAL checkpointer thread panicked");
        }
    }
}
