//! [`SqliteStore`]: the store on SQLite, the embedded default.
//!
//! # How a change is written
//!
//! Each operation of [`crate::ops`] runs as a closure on the writer thread
//! (see `writer`), inside its own savepoint of a group-committed
//! transaction, so operations that read before they decide (cancel, reclaim,
//! re-drive, keyed submit) are atomic too. Reads run on a pool of read-only
//! connections (`readers`), which WAL lets run beside the writer; the
//! in-memory store has one connection, so its reads queue with the writes.
//! A thread of its own folds the WAL back into the database file (`wal`).
//! The store uses `rusqlite` (synchronous, on threads it owns) rather than an
//! async driver: an async driver's hop to its own thread per statement cost
//! several times SQLite's own work for these statements (see
//! docs/PERFORMANCE.md).
//!
//! # Durability
//!
//! WAL mode with `synchronous = NORMAL`: a committed transaction is in the
//! WAL file (in the OS page cache at least) before the commit returns, so it
//! survives the *process* dying at any point, `kill -9` included. What
//! `NORMAL` gives up compared with `FULL` is the last few transactions across
//! an OS crash or power loss (the database stays consistent, but may roll
//! back to an earlier commit); in exchange a commit costs no `fsync`. Foreign
//! keys are on and a `busy_timeout` is set for other processes sharing the
//! file.

mod readers;
mod wal;
mod writer;

use crate::backend::{Backend, SqlStore};
use crate::error;
use crate::exec::{Op, SqliteTx, run_sqlite};
use readers::Readers;
use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use videogen_core::store::StoreError;
use wal::Checkpointer;
use writer::Writer;

/// How long a connection waits for a lock held by *another process* (e.g. an
/// admin CLI writing the same file) before failing with `SQLITE_BUSY`. Writes
/// of this process never meet on SQLite's lock: they share one thread.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read connections of a file-backed store. Reads are short point lookups and
/// small range scans, so a few connections are plenty on small machines.
const READERS: usize = 4;

/// Page cache of the writer, in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Prepared statements each connection keeps (rusqlite's default is 16; the
/// store has about 40 distinct statements).
const STATEMENT_CACHE: usize = 64;

/// The SQLite job store.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// SQLite as a [`Backend`]: one writer thread with group commit, a reader
/// pool, a WAL checkpointer.
///
/// A caller that stops waiting (a dropped request future) does not stop its
/// write: the write commits or fails as a whole either way.
pub struct SqliteBackend {
    writer: Writer,
    /// `None` for the in-memory store: reads go through `writer`.
    readers: Option<Readers>,
    checkpointer: Option<Checkpointer>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("in_memory", &self.readers.is_none())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", true)
}

/// Settings of the writer connection of a file-backed store.
fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    configure(conn).map_err(error::sqlite)?;
    // WAL is a persistent property of the file: the writer sets it (it needs
    // an exclusive lock the first time), the other connections find it set.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(error::sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::fault(format!(
            "could not switch the database to WAL mode (it is in {mode:?} mode)"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(error::sqlite)?;
    // Checkpoints run on the checkpointer's thread, never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(error::sqlite)?;
    conn.pragma_update(None, "cache_size", format!("-{WRITER_CACHE_KIB}"))
        .map_err(error::sqlite)
}

/// Says which file an error was about, keeping whether a retry may help.
fn about(path: &Path, what: &str, e: StoreError) -> StoreError {
    let message = format!("{what} {}: {e}", path.display());
    if e.is_retryable() {
        StoreError::unavailable(message)
    } else {
        StoreError::fault(message)
    }
}

impl SqlStore<SqliteBackend> {
    /// Opens (creating if missing) the database file at `path`, applies the
    /// migrations, and sets WAL mode, `synchronous = NORMAL`, foreign keys and
    /// a busy timeout. See the module docs for the durability this gives.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let path = owned.as_path();
            let open = || -> Result<Connection, StoreError> {
                let conn = Connection::open(path).map_err(error::sqlite)?;
                configure_writer(&conn)?;
                Ok(conn)
            };
            let mut conn = open().map_err(|e| about(path, "opening", e))?;
            crate::migrate::sqlite(&mut conn, now_ms()).map_err(|e| about(path, "migrating", e))?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::fault(format!("opening the store: {e}")))??;
        let writer = Writer::spawn(conn, "videogen-store-writer", |conn| {
            // Last one out folds the WAL into the database file.
            if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
                tracing::warn!(error = %e, "final WAL checkpoint failed");
            }
        })?;
        let checkpointer = Checkpointer::spawn(path, writer.commits(), configure)?;
        Ok(Self::new(SqliteBackend {
            writer,
            readers: Some(Readers::new(path.to_owned(), READERS, configure)),
            checkpointer: Some(checkpointer),
        }))
    }

    /// A private in-memory database on a single connection, for tests. It
    /// vanishes when the store is dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_with_flags(
            ":memory:",
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(error::sqlite)?;
        configure(&conn).map_err(error::sqlite)?;
        crate::migrate::sqlite(&mut conn, now_ms())?;
        Ok(Self::new(SqliteBackend {
            writer: Writer::spawn(conn, "videogen-store-memory", |_| {})?,
            readers: None,
            checkpointer: None,
        }))
    }

    /// Finishes the queued writes, checkpoints the WAL into the database file
    /// and closes every connection, waiting for all of it. Dropping the store
    /// does the same, just without waiting.
    pub async fn close(self) -> Result<(), StoreError> {
        let SqliteBackend {
            mut writer,
            readers,
            checkpointer,
        } = self.backend;
        if let Some(r) = &readers {
            r.close();
        }
        tokio::task::spawn_blocking(move || {
            drop(checkpointer);
            writer.shutdown();
        })
        .await
        .map_err(|e| StoreError::fault(format!("closing the store: {e}")))
    }
}

impl Backend for SqliteBackend {
    type Tx<'t> = SqliteTx<'t>;

    async fn read<R, F>(&self, op: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static,
    {
        match &self.readers {
            Some(r) => r.call(move |conn| run_sqlite(conn, op)).await,
            None => self.writer.call(move |conn| run_sqlite(conn, op)).await,
        }
    }

    fn write<R, F>(&self, op: F) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx<'t>) -> Op<'t, R> + Send + 'static,
    {
        self.writer.call(move |conn| run_sqlite(conn, op))
    }
}
