//! The writer thread: every write of a store runs here, with group commit.
//!
//! SQLite has one writer at a time, and what a write costs is mostly the
//! commit (WAL frames for every page the transaction touched, the WAL index,
//! the lock), not the statement. So writes are *queued* to one thread that
//! owns the only read-write connection; it takes everything waiting (up to
//! [`MAX_BATCH`]) and runs it in one `BEGIN IMMEDIATE … COMMIT`, each write
//! inside its own `SAVEPOINT`:
//!
//! - a write that fails (an error, or a compare-and-set that lost) is rolled
//!   back to its savepoint and answers its own error; the others go on;
//! - every answer is sent only **after** the `COMMIT` returned, so a caller
//!   never sees a write that could still be lost; if the `COMMIT` fails, every
//!   write of the batch answers that error and nothing of it persists.
//!
//! Under light load a batch holds one write and this costs what a plain
//! transaction does; under heavy load the commit cost is shared by up to
//! `MAX_BATCH` writes. Calls are synchronous `rusqlite` calls on this thread:
//! an async driver's per-statement hop to its own worker thread (sqlx: ~60 µs
//! measured here) cost more than SQLite's own work for these statements.

use crate::error;
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use videogen_core::store::StoreError;

/// Most writes one transaction takes. Bounds the latency a write can add to
/// the others of its batch (hot-path writes take ~5–20 µs each here).
pub(crate) const MAX_BATCH: usize = 128;

/// Writes queued before callers wait to queue (back-pressure instead of an
/// unbounded queue).
const QUEUE: usize = 4 * MAX_BATCH;

/// How long the idle writer keeps polling before it blocks (see [`next_op`]).
const SPIN: Duration = Duration::from_micros(50);

/// A queued write, type-erased.
trait Op: Send {
    /// Runs the write's statements; `false` if it failed.
    fn run(&mut self, conn: &mut Connection) -> bool;
    /// Answers the caller; `commit` is the batch's failure, if it failed.
    fn finish(self: Box<Self>, commit: Option<&BatchFailure>);
}

struct Pending<T, F> {
    f: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op for Pending<T, F>
where
    T: Send,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &mut Connection) -> bool {
        if let Some(f) = self.f.take() {
            // A panicking write must not take the writer thread (and with it
            // every later write) down: it fails alone.
            let out = catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::fault("a store write panicked")));
            self.out = Some(out);
        }
        matches!(self.out, Some(Ok(_)))
    }

    fn finish(self: Box<Self>, commit: Option<&BatchFailure>) {
        let out = match (self.out, commit) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(e.error()),
            (Some(ok), None) => ok,
            (None, None) => Err(StoreError::fault("store write was not run")),
        };
        // The caller may have gone away (a dropped request): the write stands.
        let _ = self.reply.send(out);
    }
}

/// Handle to the writer thread. Dropping it (every clone of the sender) lets
/// the thread finish the queued writes and exit.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Box<dyn Op>>>,
    thread: Option<JoinHandle<()>>,
    /// Transactions committed so far (the WAL checkpointer watches it).
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the thread; `on_exit` runs on it with the connection after the
    /// last write (e.g. a final WAL checkpoint).
    pub(crate) fn spawn(
        conn: Connection,
        name: &str,
        on_exit: impl FnOnce(&Connection) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Box<dyn Op>>(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut conn = conn;
                run(&mut conn, &mut rx, &counter);
                on_exit(&conn);
            })
            .map_err(|e| StoreError::fault(format!("starting the store writer thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            commits,
        })
    }

    pub(crate) fn commits(&self) -> Arc<AtomicU64> {
        self.commits.clone()
    }

    /// Runs `f` in the next batch and returns its result once that batch has
    /// committed. `f` must leave no effect behind when it returns an error;
    /// its savepoint is rolled back then anyway.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Pending {
            f: Some(f),
            out: None,
            reply,
        });
        let tx = self.tx.as_ref().ok_or_else(error::closed)?;
        tx.send(op).await.map_err(|_| error::closed())?;
        answer.await.map_err(|_| error::closed())?
    }

    /// Stops accepting writes, lets the queued ones finish, and waits for the
    /// thread (and its `on_exit`).
    pub(crate) fn shutdown(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Without waiting: the thread drains the queue and exits by itself.
        self.tx = None;
    }
}

/// Waits for the next write: first briefly polling, then blocking. A caller
/// that writes again right after its answer (a worker's lease after its
/// completion) then finds the thread awake instead of paying a futex wake-up,
/// which costs more than the write itself on a busy small machine.
fn next_op(rx: &mut mpsc::Receiver<Box<dyn Op>>) -> Option<Box<dyn Op>> {
    use mpsc::error::TryRecvError;
    let spin_until = Instant::now() + SPIN;
    loop {
        match rx.try_recv() {
            Ok(op) => return Some(op),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < spin_until => std::thread::yield_now(),
            // A plain thread, not a runtime's: blocking here is what it is for.
            Err(TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

/// Why a batch did not commit, answered to each of its writes.
pub(crate) struct BatchFailure {
    retryable: bool,
    message: String,
}

impl BatchFailure {
    fn of(e: rusqlite::Error) -> Self {
        let e = error::sqlite(e);
        Self {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }

    fn error(&self) -> StoreError {
        let message = format!("the transaction failed: {}", self.message);
        if self.retryable {
            StoreError::unavailable(message)
        } else {
            StoreError::fault(message)
        }
    }
}

fn run(conn: &mut Connection, rx: &mut mpsc::Receiver<Box<dyn Op>>, commits: &AtomicU64) {
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = next_op(rx) {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let outcome = run_batch(conn, &mut batch);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        let failure = outcome.err();
        for op in batch.drain(..) {
            op.finish(failure.as_ref());
        }
    }
}

/// One transaction over `batch`. `Err` if it did not commit.
fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn Op>]) -> Result<(), BatchFailure> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = run_ops(conn, batch).and_then(|()| exec(conn, "COMMIT"));
    if let Err(e) = &result {
        // Also after a failed COMMIT: leave no transaction open. An error here
        // means SQLite already rolled back.
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        tracing::error!(error = %e.message, writes = batch.len(), "store transaction failed; its writes are lost");
    }
    result
}

fn run_ops(conn: &mut Connection, batch: &mut [Box<dyn Op>]) -> Result<(), BatchFailure> {
    if let [op] = batch {
        // Alone in its transaction: its failure is the transaction's rollback.
        if op.run(conn) {
            return Ok(());
        }
        exec(conn, "ROLLBACK")?;
        return exec(conn, "BEGIN IMMEDIATE");
    }
    for op in batch.iter_mut() {
        exec(conn, "SAVEPOINT op")?;
        if !op.run(conn) {
            // Fails when SQLite rolled the whole transaction back (I/O error,
            // disk full): then the batch fails.
            exec(conn, "ROLLBACK TO op")?;
        }
        exec(conn, "RELEASE op")?;
    }
    Ok(())
}

fn exec(conn: &Connection, sql: &str) -> Result<(), BatchFailure> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(BatchFailure::of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(c: &Connection, v: i64) -> Result<(), StoreError> {
        c.execute("INSERT INTO t (v) VALUES (?1)", [v])
            .map(drop)
            .map_err(error::sqlite)
    }

    /// Writes queued while the writer is busy share one transaction; the one
    /// that fails is rolled back alone (its first statement included), and the
    /// others commit.
    #[tokio::test]
    async fn queued_writes_commit_together_and_a_failed_one_rolls_back_alone() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)").unwrap();
        let w = Writer::spawn(conn, "test-writer", |_| {}).unwrap();
        let commits = w.commits();
        let (open_gate, gate) = std::sync::mpsc::channel::<()>();
        // `join!` polls in order: each call is queued before the gate opens.
        let (blocked, a, b, c, ()) = tokio::join!(
            w.call(move |_| {
                gate.recv().map_err(|_| StoreError::fault("gate"))?;
                Ok(())
            }),
            w.call(|c| insert(c, 1)),
            w.call(|c| {
                insert(c, 2)?;
                Err::<(), _>(StoreError::IdempotencyConflict)
            }),
            w.call(|c| insert(c, 3)),
            async { open_gate.send(()).unwrap() },
        );
        blocked.unwrap();
        a.unwrap();
        assert!(matches!(b, Err(StoreError::IdempotencyConflict)), "{b:?}");
        c.unwrap();
        // The blocking write may have been taken alone; the other three were
        // queued behind it and went in one transaction.
        assert!(commits.load(Ordering::Relaxed) <= 2);
        let rows = w
            .call(|c| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v").map_err(error::sqlite)?;
                let v = s.query_map([], |r| r.get::<_, i64>(0)).map_err(error::sqlite)?;
                v.collect::<Result<Vec<_>, _>>().map_err(error::sqlite)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![1, 3]);
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives_on() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)").unwrap();
        let w = Writer::spawn(conn, "test-writer", |_| {}).unwrap();
        let r = w.call(|_| -> Result<(), StoreError> { panic!("boom") }).await;
        assert!(
            matches!(r, Err(StoreError::Fault(ref m)) if m.to_string().contains("panicked")),
            "{r:?}"
        );
        w.call(|c| insert(c, 7)).await.unwrap();
    }
}
