//! Group commit for [`PgStore`](crate::PgStore)'s hot path: submit (without
//! an idempotency key), lease, heartbeat, checkpoint and complete.
//!
//! # Why
//!
//! With `synchronous_commit = on`, every transaction waits for a WAL flush
//! (an `fdatasync`: 0.4 ms to several ms on this machine's virtual disk), and
//! every write answered here must be flushed first. At one transaction per
//! write, three per job, the flushes and the per-transaction overhead bound
//! throughput far below what the statements cost. So writes are queued to
//! one collector task, which takes everything waiting (up to [`MAX_BATCH`])
//! and runs it as **one statement** — one round trip, one implicit
//! transaction, one flush — and answers each caller after that statement,
//! hence its commit, returned. A write that finds the collector idle runs at
//! once, alone: there is no waiting for a batch to fill.
//!
//! # The statement
//!
//! One data-modifying CTE per kind of write present, each a multi-row
//! statement over `unnest` of per-write arrays: `INSERT … SELECT FROM
//! unnest(…)` for submits, `UPDATE jobs … FROM unnest(…) AS b WHERE jobs.id =
//! b_id AND jobs.state = … [AND jobs.attempt = b_attempt]` for the others.
//! Every row keeps its own compare-and-set, with the SET lists of the
//! single-job statements in `sql.rs`, and the statement trigger appends
//! each write's event (the payload built in `postgres/mod.rs` from the same
//! typed events as every other write). `RETURNING b_ord` says which writes matched:
//! a write without a row lost its compare-and-set and gets exactly the
//! answer a lone statement would give (`None`, `StaleLease`).
//!
//! The CTEs of one statement see one snapshot and must not touch a row
//! twice, so a batch holds **at most one write per job**, and a job with a
//! write in a batch still in flight gets no other until that batch has
//! committed: each job's writes run in the order they arrived. Writes of one
//! batch were all in flight together, so any order among them is one their
//! callers could have seen. Two batches run at a time, on two connections
//! (see [`collect`]).
//!
//! # Failures
//!
//! If the statement fails with a database error (a constraint, a deadlock
//! with another process's reaper), nothing of it was committed: its writes
//! run again one by one, each as a batch of its own, so one bad write fails
//! alone. Any other error (the connection broke mid-way: the outcome is
//! unknown) is every write's answer, as it would be for a lone statement.

use crate::error;
use crate::exec::Columns;
use crate::ops::{next, stale};
use crate::rows::{self, created_job, to_json};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{self, JoinSet};
use videogen_core::store::{NewJob, StoreError, Submitted};
use videogen_core::{EventKind, Job, JobState, Lease, Phase, Transition, VideoId, WorkerId};

/// Most writes one statement takes. Bounds the statement's size and the
/// latency one batch adds to the writes queued behind it.
pub(crate) const MAX_BATCH: usize = 128;

/// Session settings of the collector's connections (`PgStore` gives it a
/// pool of its own), so its cached statements look rows up by primary key
/// whatever the table held when they were planned.
///
/// The batch statements run as generic plans (see [`build`]), planned once
/// per connection, typically on a fresh database whose `jobs` table is
/// empty and never analysed. On such a table PostgreSQL prices a scan below
/// an index lookup, and it prices a full scan of a small partial index
/// (`jobs_runnable`, `jobs_leases`, whose `WHERE state = …` a literal
/// compare-and-set would match) below the primary key. The plan then stays
/// cached while the table grows, and each batch scans every queued or
/// running job: measured here, 13–27 ms per batch at 10,000 queued and
/// 10,000 running jobs, against 0.4 ms by primary key. Hence the
/// compare-and-sets compare with `(SELECT 'queued'::text)`, which matches no
/// partial index, and these settings rule out the sequential scan and the
/// merge join over a full index scan, leaving the primary-key lookup per row.
/// Hash joins stay allowed: the final join of the answers uses one, and a
/// hash join on `jobs` would need the disabled sequential scan.
pub(crate) const PLANNER: &str = "SET enable_seqscan = off; SET enable_mergejoin = off";

/// Most yields [`settle`] makes while they keep bringing writes.
const SETTLE_YIELDS: usize = 8;

/// Writes queued before callers wait to queue (back-pressure).
const QUEUE: usize = 4 * MAX_BATCH;

/// Writes the collector takes from the queue ahead of the next batch (the
/// batch, and later writes of jobs already in it).
const WAITING_MAX: usize = 2 * MAX_BATCH;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A submit without idempotency key. `event` is the `created` event's data.
pub(crate) struct SubmitOp {
    pub job: NewJob,
    pub event: String,
}

/// A lease; `event` is the event data without phase, progress and attempt.
pub(crate) struct LeaseOp {
    pub id: VideoId,
    pub worker: WorkerId,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub event: String,
}

/// A heartbeat; `event` is the `progress` event's data, written only if the
/// phase or percent changed.
pub(crate) struct HeartbeatOp {
    pub lease: Lease,
    pub phase: Phase,
    pub percent: u8,
    pub step: u32,
    pub total_steps: u32,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub event: String,
}

/// A checkpoint commit; `checkpoint` is the JSON of the `CheckpointRef`.
pub(crate) struct CheckpointOp {
    pub lease: Lease,
    pub checkpoint: String,
    pub step: u32,
    pub now_ms: i64,
    pub event: String,
}

/// A completion; `outputs` is the JSON of the `Outputs`.
pub(crate) struct CompleteOp {
    pub lease: Lease,
    pub outputs: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub event: String,
}

enum Op {
    Submit(SubmitOp, Reply<Submitted>),
    Lease(LeaseOp, Reply<Option<Lease>>),
    Heartbeat(HeartbeatOp, Reply<()>),
    Checkpoint(CheckpointOp, Reply<()>),
    Complete(CompleteOp, Reply<Job>),
}

impl Op {
    /// The job this write touches: at most one write per job in flight.
    fn job(&self) -> &str {
        match self {
            Op::Submit(op, _) => op.job.id.as_str(),
            Op::Lease(op, _) => op.id.as_str(),
            Op::Heartbeat(op, _) => op.lease.job_id.as_str(),
            Op::Checkpoint(op, _) => op.lease.job_id.as_str(),
            Op::Complete(op, _) => op.lease.job_id.as_str(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Op::Submit(..) => Kind::Submit,
            Op::Lease(..) => Kind::Lease,
            Op::Heartbeat(..) => Kind::Heartbeat,
            Op::Checkpoint(..) => Kind::Checkpoint,
            Op::Complete(..) => Kind::Complete,
        }
    }

    /// Answers the caller from its statement's row (`None`: no row matched).
    /// The caller may have gone away (a dropped request): the write stands.
    fn answer(self, row: Option<&PgRow>) {
        match self {
            Op::Submit(op, reply) => {
                let _ = reply.send(Ok(Submitted::Created(created_job(op.job))));
            }
            Op::Lease(op, reply) => {
                let _ = reply.send(row.map(|r| leased(&op, r)).transpose());
            }
            Op::Heartbeat(op, reply) => {
                let _ = reply.send(row.map(drop).ok_or_else(|| stale(&op.lease)));
            }
            Op::Checkpoint(op, reply) => {
                let _ = reply.send(row.map(drop).ok_or_else(|| stale(&op.lease)));
            }
            Op::Complete(op, reply) => {
                let _ = reply.send(row.map_or_else(|| Err(stale(&op.lease)), |r| rows::job(r)));
            }
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Op::Submit(_, r) => drop(r.send(Err(e))),
            Op::Lease(_, r) => drop(r.send(Err(e))),
            Op::Heartbeat(_, r) | Op::Checkpoint(_, r) => drop(r.send(Err(e))),
            Op::Complete(_, r) => drop(r.send(Err(e))),
        }
    }
}

fn leased(op: &LeaseOp, row: &PgRow) -> Result<Lease, StoreError> {
    let attempt = row.int("leased_attempt")?.unwrap_or(-1);
    let attempt =
        u32::try_from(attempt).map_err(|_| StoreError::corrupt("attempt", format!("{attempt} of job {}", op.id)))?;
    Ok(Lease {
        job_id: op.id.clone(),
        attempt,
        worker: op.worker.clone(),
        expires_at_ms: op.expires_at_ms,
    })
}

/// Counters of the group commit, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Statements run (each one transaction), retries included.
    pub batches: u64,
    /// Writes answered from a batch.
    pub writes: u64,
    /// Batches that failed and whose writes ran again one by one.
    pub retried_batches: u64,
    /// Writes handed to the collector (queued, running or answered).
    pub enqueued: u64,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    /// Wakes [`Batcher::wait_until`] whenever a counter moves.
    changed: Notify,
    batches: AtomicU64,
    writes: AtomicU64,
    retried_batches: AtomicU64,
}

impl Counters {
    fn bump(&self, counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Handle to the collector task; clones share it. When the last one is
/// dropped, the task finishes the queued writes and exits.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Op>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts the collector on the current Tokio runtime.
    pub(crate) fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        tokio::spawn(collect(Collector {
            pool,
            rx,
            counters: counters.clone(),
            waiting: VecDeque::new(),
            idle: Vec::new(),
            running: JoinSet::new(),
            busy: HashMap::new(),
        }));
        Self { tx, counters }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            retried_batches: self.counters.retried_batches.load(Ordering::Relaxed),
            enqueued: self.counters.enqueued.load(Ordering::Relaxed),
        }
    }

    /// Returns once `reached` holds for the counters: how tests and
    /// benchmarks wait for writes to reach the collector or batches to
    /// start, instead of sleeping.
    pub(crate) async fn wait_until(&self, reached: impl Fn(&GroupCommitStats) -> bool) {
        loop {
            let changed = self.counters.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change in between is missed.
            changed.as_mut().enable();
            if reached(&self.stats()) {
                return;
            }
            changed.await;
        }
    }

    pub(crate) async fn submit(&self, op: SubmitOp) -> Result<Submitted, StoreError> {
        self.call(|r| Op::Submit(op, r)).await
    }

    pub(crate) async fn lease(&self, op: LeaseOp) -> Result<Option<Lease>, StoreError> {
        self.call(|r| Op::Lease(op, r)).await
    }

    pub(crate) async fn heartbeat(&self, op: HeartbeatOp) -> Result<(), StoreError> {
        self.call(|r| Op::Heartbeat(op, r)).await
    }

    pub(crate) async fn checkpoint(&self, op: CheckpointOp) -> Result<(), StoreError> {
        self.call(|r| Op::Checkpoint(op, r)).await
    }

    pub(crate) async fn complete(&self, op: CompleteOp) -> Result<Job, StoreError> {
        self.call(|r| Op::Complete(op, r)).await
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(op(reply)).await.map_err(|_| error::closed())?;
        self.counters.bump(&self.counters.enqueued, 1);
        answer.await.map_err(|_| error::closed())?
    }
}

// ---- the collector

/// Batches in flight at once, each its own transaction on its own
/// connection. Measured here (8 workers, 2 CPUs, PostgreSQL on the same
/// machine): 1 in flight 5.1k jobs/s, 2 in flight 5.7k, 3 in flight 3.9–4.6k,
/// 4 in flight 3.4–4.1k. A batch waits for its WAL flush with the CPU idle;
/// a second batch fills that wait. More split the writes into smaller
/// statements that pay a transaction each and compete for the 2 CPUs.
pub(crate) const DEPTH: usize = 2;

/// What a finished batch gives back: its connection, unless it may be broken.
type Kept = Option<PoolConnection<Postgres>>;

/// What the collector holds between batches.
struct Collector {
    pool: PgPool,
    rx: mpsc::Receiver<Op>,
    counters: Arc<Counters>,
    /// Writes received and not yet in a batch, in arrival order.
    waiting: VecDeque<Op>,
    /// Connections kept from batch to batch while there is work: taking one
    /// from the pool costs a round trip (sqlx pings it first), a tenth of a
    /// small batch's time. Given back when idle, so `PgStore::close` (which
    /// waits for every connection) never waits on the collector.
    idle: Vec<PoolConnection<Postgres>>,
    /// The batches in flight, a task each: if one panicked, its callers
    /// would hear that the store is closed (their replies dropped), and the
    /// collector lives on.
    running: JoinSet<Kept>,
    /// The jobs of each batch in flight: their later writes wait for it.
    busy: HashMap<task::Id, Vec<String>>,
}

/// Cuts queued writes into batches and runs them, up to [`DEPTH`] at a
/// time, until every handle is gone and every write is answered.
///
/// A write that finds a free slot runs at once: there is no waiting for a
/// batch to fill. While batches commit, the writes arriving meanwhile gather
/// into the next one, which is what makes batches large.
async fn collect(mut c: Collector) {
    let mut open = true;
    loop {
        c.gather();
        while c.running.len() < DEPTH {
            let batch = take_batch(&mut c.waiting, &c.busy);
            if batch.is_empty() {
                break;
            }
            c.start(batch).await;
        }
        if c.running.is_empty() {
            // With nothing in flight the first waiting write always starts,
            // so nothing is waiting either.
            if !open {
                return;
            }
            c.idle.clear();
            match c.rx.recv().await {
                Some(op) => c.waiting.push_back(op),
                None => open = false,
            }
            continue;
        }
        // A batch in flight: take new writes (they may start beside it,
        // unless their job is in it) or its end, whichever comes first.
        let room = open && c.waiting.len() < WAITING_MAX;
        tokio::select! {
            op = c.rx.recv(), if room => match op {
                Some(op) => c.waiting.push_back(op),
                None => open = false,
            },
            done = c.running.join_next_with_id() => {
                c.finished(done);
                settle(&c.rx).await;
            }
        }
    }
}

impl Collector {
    /// Takes what is queued, up to [`WAITING_MAX`] waiting.
    fn gather(&mut self) {
        while self.waiting.len() < WAITING_MAX {
            match self.rx.try_recv() {
                Ok(op) => self.waiting.push_back(op),
                Err(_) => break,
            }
        }
    }

    /// Runs `batch` on a connection of its own.
    async fn start(&mut self, batch: Vec<Op>) {
        let conn = match self.idle.pop() {
            Some(c) => c,
            None => match self.pool.acquire().await {
                Ok(c) => c,
                Err(e) => return fail_all(batch, &Failure::of(&e)),
            },
        };
        let jobs = batch.iter().map(|op| op.job().to_owned()).collect();
        let counters = self.counters.clone();
        let handle = self.running.spawn(async move { run(conn, batch, &counters).await });
        self.busy.insert(handle.id(), jobs);
    }

    fn finished(&mut self, done: Option<Result<(task::Id, Kept), task::JoinError>>) {
        match done {
            Some(Ok((id, conn))) => {
                self.busy.remove(&id);
                self.idle.extend(conn);
            }
            Some(Err(e)) => {
                self.busy.remove(&e.id());
                tracing::error!(error = %e, "a store batch task failed");
            }
            None => {}
        }
    }
}

/// Lets the callers a batch just answered run before the next batch is cut.
/// A worker's next write (its lease after its completion) follows its answer
/// within microseconds; without this, the next batch would start with the
/// first of them alone and the rest would wait a whole commit behind it
/// (measured: 1.4k against 3.2k jobs/s with 8 workers). It only yields to
/// tasks already runnable: no delay of its own, and it stops as soon as a
/// yield brings no new write.
async fn settle(rx: &mpsc::Receiver<Op>) {
    for _ in 0..SETTLE_YIELDS {
        let queued = rx.len();
        tokio::task::yield_now().await;
        if rx.len() == queued {
            break;
        }
    }
}

/// The next batch: waiting writes in arrival order, at most one per job (the
/// CTEs of a statement must not touch a row twice) and none for a job with a
/// write in a batch in flight (`busy`); a job's later writes stay, in order,
/// for a later batch.
fn take_batch(waiting: &mut VecDeque<Op>, busy: &HashMap<task::Id, Vec<String>>) -> Vec<Op> {
    let in_flight: HashSet<&str> = busy.values().flatten().map(String::as_str).collect();
    let mut taken: HashSet<String> = HashSet::new();
    let mut batch = Vec::new();
    let mut held = VecDeque::new();
    while batch.len() < MAX_BATCH {
        let Some(op) = waiting.pop_front() else { break };
        if !in_flight.contains(op.job()) && taken.insert(op.job().to_owned()) {
            batch.push(op);
        } else {
            held.push_back(op);
        }
    }
    held.append(waiting);
    *waiting = held;
    batch
}

// ---- running a batch

/// The states and phases the statements write and compare with, each
/// transition computed with [`JobState::apply`] as in the single-job
/// statements. They are spelled into the statement as literals (they are
/// fixed identifiers), leaving only the arrays as parameters (see [`build`]).
/// A compare-and-set reads `jobs.state = (SELECT 'queued'::text)`, not
/// `jobs.state = 'queued'`: see [`PLANNER`].
struct States {
    queued: &'static str,
    leased: &'static str,
    running: &'static str,
    completed: &'static str,
}

impl States {
    fn new() -> Result<Self, StoreError> {
        Ok(Self {
            queued: JobState::Queued.as_str(),
            leased: next(JobState::Queued, Transition::Lease)?.as_str(),
            running: JobState::Running.as_str(),
            completed: next(JobState::Running, Transition::Complete)?.as_str(),
        })
    }

    /// `sql` with every `{name}` replaced by its literal.
    fn spell(&self, sql: &str) -> String {
        let is_queued = format!("(SELECT '{}'::text)", self.queued);
        let is_running = format!("(SELECT '{}'::text)", self.running);
        [
            ("{queued}", self.queued),
            ("{leased}", self.leased),
            ("{running}", self.running),
            ("{completed}", self.completed),
            ("{is_queued}", is_queued.as_str()),
            ("{is_running}", is_running.as_str()),
            ("{phase_queued}", Phase::Queued.as_str()),
            ("{phase_loading}", Phase::LoadingModel.as_str()),
            ("{phase_resuming}", Phase::ResumingFromCheckpoint.as_str()),
            ("{phase_completed}", Phase::Completed.as_str()),
            ("{ev_created}", EventKind::Created.as_str()),
            ("{ev_leased}", EventKind::Leased.as_str()),
            ("{ev_progress}", EventKind::Progress.as_str()),
            ("{ev_checkpoint}", EventKind::Checkpoint.as_str()),
            ("{ev_completed}", EventKind::Completed.as_str()),
        ]
        .into_iter()
        .fold(sql.to_owned(), |sql, (name, literal)| sql.replace(name, literal))
    }
}

/// Runs one batch on `conn` and answers its writes; a batch that fails with
/// a database error (nothing of it committed) runs again one write at a
/// time. Returns the connection unless it may be broken.
async fn run(
    mut conn: PoolConnection<Postgres>,
    batch: Vec<Op>,
    counters: &Counters,
) -> Option<PoolConnection<Postgres>> {
    let states = match States::new() {
        Ok(s) => s,
        Err(e) => {
            fail_all(batch, &Failure::fault(e.to_string()));
            return Some(conn);
        }
    };
    counters.bump(&counters.batches, 1);
    match execute(&mut conn, &batch, &states).await {
        Ok(rows) => answer_all(batch, rows, counters),
        Err(e @ sqlx::Error::Database(_)) if batch.len() > 1 => {
            counters.bump(&counters.retried_batches, 1);
            tracing::warn!(error = %e, writes = batch.len(), "store batch failed; running its writes one by one");
            for op in batch {
                counters.bump(&counters.batches, 1);
                let one = vec![op];
                match execute(&mut conn, &one, &states).await {
                    Ok(rows) => answer_all(one, rows, counters),
                    Err(e @ sqlx::Error::Database(_)) => fail_all(one, &Failure::of(&e)),
                    Err(e) => {
                        fail_all(one, &Failure::of(&e));
                        return None;
                    }
                }
            }
        }
        Err(e @ sqlx::Error::Database(_)) => fail_all(batch, &Failure::of(&e)),
        Err(e) => {
            // The connection may be broken: the next batch takes another.
            fail_all(batch, &Failure::of(&e));
            return None;
        }
    }
    Some(conn)
}

/// Why a batch failed, answered to each of its writes.
struct Failure {
    retryable: bool,
    message: String,
}

impl Failure {
    fn of(e: &sqlx::Error) -> Self {
        Self {
            retryable: error::pg_is_transient(e),
            message: format!("postgres: {e}"),
        }
    }

    fn fault(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }

    fn error(&self) -> StoreError {
        if self.retryable {
            StoreError::unavailable(self.message.clone())
        } else {
            StoreError::fault(self.message.clone())
        }
    }
}

fn fail_all(batch: Vec<Op>, failure: &Failure) {
    for op in batch {
        op.fail(failure.error());
    }
}

/// Answers every write of a committed batch from the rows, by `ord`.
fn answer_all(batch: Vec<Op>, rows: Vec<PgRow>, counters: &Counters) {
    let mut by_ord: Vec<Option<PgRow>> = batch.iter().map(|_| None).collect();
    for row in rows {
        let ord = row
            .try_get::<Option<i32>, _>("ord")
            .ok()
            .flatten()
            .and_then(|o| usize::try_from(o).ok());
        match ord.and_then(|o| by_ord.get_mut(o)) {
            Some(slot) => *slot = Some(row),
            None => {
                // Committed, yet unanswerable: a bug in the statement.
                tracing::error!(writes = batch.len(), "store batch returned a row without a valid ord");
                return fail_all(
                    batch,
                    &Failure::fault("group commit: a result row without its write (the batch was committed)"),
                );
            }
        }
    }
    counters.bump(&counters.writes, batch.len() as u64);
    for (op, row) in batch.into_iter().zip(by_ord) {
        op.answer(row.as_ref());
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds `batch` to its statement and runs it: one implicit transaction.
async fn execute(conn: &mut PgConnection, batch: &[Op], st: &States) -> Result<Vec<PgRow>, sqlx::Error> {
    let mut submits = Submits::default();
    let mut leases = Leases::default();
    let mut heartbeats = Heartbeats::default();
    let mut checkpoints = Checkpoints::default();
    let mut completes = Completes::default();
    let mut mask = 0u8;
    for (ord, op) in batch.iter().enumerate() {
        // MAX_BATCH fits an i32.
        let ord = ord as i32;
        mask |= op.kind().bit();
        match op {
            Op::Submit(op, _) => submits.push(op).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            Op::Lease(op, _) => leases.push(ord, op),
            Op::Heartbeat(op, _) => heartbeats.push(ord, op),
            Op::Checkpoint(op, _) => checkpoints.push(ord, op),
            Op::Complete(op, _) => completes.push(ord, op),
        }
    }
    // In the order of `KINDS`, as `build` numbers the parameters.
    let mut q = sqlx::query(statement(mask, st));
    let has = |k: Kind| mask & k.bit() != 0;
    if has(Kind::Submit) {
        q = submits.bind(q);
    }
    if has(Kind::Lease) {
        q = leases.bind(q);
    }
    if has(Kind::Heartbeat) {
        q = heartbeats.bind(q);
    }
    if has(Kind::Checkpoint) {
        q = checkpoints.bind(q);
    }
    if has(Kind::Complete) {
        q = completes.bind(q);
    }
    q.fetch_all(conn).await
}

// Per kind: the columns of its `unnest` (name, element type) and the arrays
// that fill them, bound in that order.

const SUBMIT_COLUMNS: UnnestColumns = &[
    ("b_id", "text"),
    ("b_tenant", "text"),
    ("b_tier", "text"),
    ("b_model", "text"),
    ("b_spec", "text"),
    ("b_total_steps", "int8"),
    ("b_now", "int8"),
    ("b_event", "text"),
];

#[derive(Default)]
struct Submits {
    id: Vec<String>,
    tenant: Vec<String>,
    tier: Vec<String>,
    model: Vec<String>,
    spec: Vec<String>,
    total_steps: Vec<i64>,
    now: Vec<i64>,
    event: Vec<String>,
}

impl Submits {
    fn push(&mut self, op: &SubmitOp) -> Result<(), StoreError> {
        let j = &op.job;
        self.spec.push(to_json(&j.spec)?);
        self.id.push(j.id.as_str().to_owned());
        self.tenant.push(j.tenant.as_str().to_owned());
        self.tier.push(j.tier.as_str().to_owned());
        self.model.push(j.spec.model.clone());
        self.total_steps.push(i64::from(j.spec.steps));
        self.now.push(j.now_ms);
        self.event.push(op.event.clone());
        Ok(())
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        q.bind(self.id)
            .bind(self.tenant)
            .bind(self.tier)
            .bind(self.model)
            .bind(self.spec)
            .bind(self.total_steps)
            .bind(self.now)
            .bind(self.event)
    }
}

const LEASE_COLUMNS: UnnestColumns = &[
    ("b_ord", "int4"),
    ("b_id", "text"),
    ("b_worker", "text"),
    ("b_expires", "int8"),
    ("b_now", "int8"),
    ("b_event", "text"),
];

#[derive(Default)]
struct Leases {
    ord: Vec<i32>,
    id: Vec<String>,
    worker: Vec<String>,
    expires: Vec<i64>,
    now: Vec<i64>,
    event: Vec<String>,
}

impl Leases {
    fn push(&mut self, ord: i32, op: &LeaseOp) {
        self.ord.push(ord);
        self.id.push(op.id.as_str().to_owned());
        self.worker.push(op.worker.as_str().to_owned());
        self.expires.push(op.expires_at_ms);
        self.now.push(op.now_ms);
        self.event.push(op.event.clone());
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.worker)
            .bind(self.expires)
            .bind(self.now)
            .bind(self.event)
    }
}

const HEARTBEAT_COLUMNS: UnnestColumns = &[
    ("b_ord", "int4"),
    ("b_id", "text"),
    ("b_attempt", "int8"),
    ("b_phase", "text"),
    ("b_percent", "int8"),
    ("b_step", "int8"),
    ("b_total_steps", "int8"),
    ("b_now", "int8"),
    ("b_expires", "int8"),
    ("b_event", "text"),
];

#[derive(Default)]
struct Heartbeats {
    ord: Vec<i32>,
    id: Vec<String>,
    attempt: Vec<i64>,
    phase: Vec<&'static str>,
    percent: Vec<i64>,
    step: Vec<i64>,
    total_steps: Vec<i64>,
    now: Vec<i64>,
    expires: Vec<i64>,
    event: Vec<String>,
}

impl Heartbeats {
    fn push(&mut self, ord: i32, op: &HeartbeatOp) {
        self.ord.push(ord);
        self.id.push(op.lease.job_id.as_str().to_owned());
        self.attempt.push(i64::from(op.lease.attempt));
        self.phase.push(op.phase.as_str());
        self.percent.push(i64::from(op.percent));
        self.step.push(i64::from(op.step));
        self.total_steps.push(i64::from(op.total_steps));
        self.now.push(op.now_ms);
        self.expires.push(op.expires_at_ms);
        self.event.push(op.event.clone());
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.phase)
            .bind(self.percent)
            .bind(self.step)
            .bind(self.total_steps)
            .bind(self.now)
            .bind(self.expires)
            .bind(self.event)
    }
}

const CHECKPOINT_COLUMNS: UnnestColumns = &[
    ("b_ord", "int4"),
    ("b_id", "text"),
    ("b_attempt", "int8"),
    ("b_checkpoint", "text"),
    ("b_step", "int8"),
    ("b_now", "int8"),
    ("b_event", "text"),
];

#[derive(Default)]
struct Checkpoints {
    ord: Vec<i32>,
    id: Vec<String>,
    attempt: Vec<i64>,
    checkpoint: Vec<String>,
    step: Vec<i64>,
    now: Vec<i64>,
    event: Vec<String>,
}

impl Checkpoints {
    fn push(&mut self, ord: i32, op: &CheckpointOp) {
        self.ord.push(ord);
        self.id.push(op.lease.job_id.as_str().to_owned());
        self.attempt.push(i64::from(op.lease.attempt));
        self.checkpoint.push(op.checkpoint.clone());
        self.step.push(i64::from(op.step));
        self.now.push(op.now_ms);
        self.event.push(op.event.clone());
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.checkpoint)
            .bind(self.step)
            .bind(self.now)
            .bind(self.event)
    }
}

const COMPLETE_COLUMNS: UnnestColumns = &[
    ("b_ord", "int4"),
    ("b_id", "text"),
    ("b_attempt", "int8"),
    ("b_outputs", "text"),
    ("b_now", "int8"),
    ("b_expires", "int8"),
    ("b_event", "text"),
];

#[derive(Default)]
struct Completes {
    ord: Vec<i32>,
    id: Vec<String>,
    attempt: Vec<i64>,
    outputs: Vec<String>,
    now: Vec<i64>,
    expires: Vec<i64>,
    event: Vec<String>,
}

impl Completes {
    fn push(&mut self, ord: i32, op: &CompleteOp) {
        self.ord.push(ord);
        self.id.push(op.lease.job_id.as_str().to_owned());
        self.attempt.push(i64::from(op.lease.attempt));
        self.outputs.push(op.outputs.clone());
        self.now.push(op.now_ms);
        self.expires.push(op.expires_at_ms);
        self.event.push(op.event.clone());
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.outputs)
            .bind(self.now)
            .bind(self.expires)
            .bind(self.event)
    }
}

// ---- the statements
//
// `{b}` is the kind's `unnest` of its arrays, `AS b(b_…)`: the `b_` prefix
// keeps every name unambiguous next to the `jobs` columns. `{queued}` etc.
// are the literals of [`States::spell`].

/// The columns of a kind's `unnest`: name and element type.
type UnnestColumns = &'static [(&'static str, &'static str)];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Submit,
    Lease,
    Heartbeat,
    Checkpoint,
    Complete,
}

/// Every kind, in the order of the CTEs and of the parameters.
const KINDS: [Kind; 5] = [
    Kind::Submit,
    Kind::Lease,
    Kind::Heartbeat,
    Kind::Checkpoint,
    Kind::Complete,
];

impl Kind {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The CTE's name, its `unnest` columns and its statement.
    fn cte(self) -> (&'static str, UnnestColumns, &'static str) {
        match self {
            Kind::Submit => ("s", SUBMIT_COLUMNS, SUBMITS),
            Kind::Lease => ("l", LEASE_COLUMNS, LEASES),
            Kind::Heartbeat => ("h", HEARTBEAT_COLUMNS, HEARTBEATS),
            Kind::Checkpoint => ("c", CHECKPOINT_COLUMNS, CHECKPOINTS),
            Kind::Complete => ("d", COMPLETE_COLUMNS, COMPLETES),
        }
    }

    /// The `(ord, leased_attempt)` rows of the writes that matched; submits
    /// have none (the statement inserts every one, or fails).
    fn matched(self) -> Option<&'static str> {
        match self {
            Kind::Submit => None,
            Kind::Lease => Some("SELECT b_ord AS ord, leased_attempt FROM l"),
            Kind::Heartbeat => Some("SELECT b_ord AS ord, NULL::int8 AS leased_attempt FROM h"),
            Kind::Checkpoint => Some("SELECT b_ord AS ord, NULL::int8 AS leased_attempt FROM c"),
            Kind::Complete => Some("SELECT b_ord AS ord, NULL::int8 AS leased_attempt FROM d"),
        }
    }
}

/// The `created` event comes from the insert trigger; `idempotency_*` stay
/// NULL (keyed submits do not batch).
const SUBMITS: &str = "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, \
     total_steps, attempt, created_at_ms, enqueued_at_ms, last_event_seq, event_kind, event_at_ms, event_data_json) \
     SELECT b_id, b_tenant, b_tier, b_model, b_spec, '{queued}', '{phase_queued}', 0, 0, b_total_steps, 0, \
     b_now, b_now, 1, '{ev_created}', b_now, b_event FROM {b}";

/// Returns the new attempt (the fencing token).
const LEASES: &str = "UPDATE jobs SET state = '{leased}', attempt = jobs.attempt + 1, \
     phase = CASE WHEN jobs.checkpoint_json IS NULL THEN '{phase_loading}' ELSE '{phase_resuming}' END, \
     lease_worker = b_worker, lease_expires_at_ms = b_expires, \
     started_at_ms = COALESCE(jobs.started_at_ms, b_now), \
     last_event_seq = jobs.last_event_seq + 1, event_kind = '{ev_leased}', event_at_ms = b_now, \
     event_data_json = b_event \
     FROM {b} WHERE jobs.id = b_id AND jobs.state = {is_queued} \
     RETURNING b_ord, jobs.attempt AS leased_attempt";

/// A `progress` event only when the phase or percent changes; SET
/// expressions all see the row as it was.
const HEARTBEATS: &str = "UPDATE jobs SET \
     last_event_seq = jobs.last_event_seq + (jobs.phase <> b_phase OR jobs.progress <> b_percent)::int, \
     event_kind = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN '{ev_progress}' ELSE jobs.event_kind END, \
     event_at_ms = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN b_now ELSE jobs.event_at_ms END, \
     event_data_json = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN b_event ELSE jobs.event_data_json END, \
     phase = b_phase, progress = b_percent, step = b_step, total_steps = b_total_steps, \
     lease_expires_at_ms = b_expires \
     FROM {b} WHERE jobs.id = b_id AND jobs.state = {is_running} AND jobs.attempt = b_attempt \
     RETURNING b_ord";

const CHECKPOINTS: &str = "UPDATE jobs SET prev_checkpoint_json = jobs.checkpoint_json, \
     checkpoint_json = b_checkpoint, checkpoint_step = b_step, last_event_seq = jobs.last_event_seq + 1, \
     event_kind = '{ev_checkpoint}', event_at_ms = b_now, event_data_json = b_event \
     FROM {b} WHERE jobs.id = b_id AND jobs.state = {is_running} AND jobs.attempt = b_attempt \
     RETURNING b_ord";

/// Returns the completed job.
const COMPLETES: &str = concat!(
    "UPDATE jobs SET state = '{completed}', phase = '{phase_completed}', progress = 100, ",
    "outputs_json = b_outputs, completed_at_ms = b_now, expires_at_ms = b_expires, ",
    "lease_worker = NULL, lease_expires_at_ms = NULL, last_event_seq = jobs.last_event_seq + 1, ",
    "event_kind = '{ev_completed}', event_at_ms = b_now, event_data_json = b_event ",
    "FROM {b} WHERE jobs.id = b_id AND jobs.state = {is_running} AND jobs.attempt = b_attempt ",
    "RETURNING b_ord, ",
    crate::sql::job_columns!()
);

/// The statement for a batch with the kinds in `mask`, built once per mask
/// (`States` are constants).
fn statement(mask: u8, st: &States) -> &'static str {
    static BUILT: [OnceLock<String>; 1 << KINDS.len()] = [const { OnceLock::new() }; 1 << KINDS.len()];
    BUILT[usize::from(mask)].get_or_init(|| build(mask, st))
}

/// `WITH <one CTE per kind> SELECT ord, leased_attempt [, the completed
/// job's columns]`: a row per write that matched. Data-modifying CTEs run to
/// completion whether or not the query reads them.
///
/// Each array is passed as `(SELECT $n::type[])`, which the planner sees as
/// an opaque value: plans then cost the same whatever the batch holds, so
/// PostgreSQL settles on a generic plan of the prepared statement after five
/// runs instead of planning every batch anew (custom plans, ~0.3 ms here, a
/// third of a small batch's time).
fn build(mask: u8, st: &States) -> String {
    let mut ctes = Vec::new();
    let mut matched = Vec::new();
    let mut params = 0;
    for kind in KINDS.into_iter().filter(|k| mask & k.bit() != 0) {
        let (name, columns, sql) = kind.cte();
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("(SELECT ${}::{ty}[])", params + i + 1))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let from = format!("unnest({}) AS b({})", arrays.join(", "), names.join(", "));
        ctes.push(format!("{name} AS ({})", st.spell(sql).replace("{b}", &from)));
        params += columns.len();
        matched.extend(kind.matched());
    }
    let select = if matched.is_empty() {
        "SELECT NULL::int4 AS ord, NULL::int8 AS leased_attempt WHERE false".to_owned()
    } else if mask & Kind::Complete.bit() != 0 {
        format!(
            "SELECT u.ord, u.leased_attempt, d.* FROM ({}) AS u LEFT JOIN d ON d.b_ord = u.ord",
            matched.join(" UNION ALL ")
        )
    } else {
        matched.join(" UNION ALL ")
    };
    format!("WITH {} {select}", ctes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states() -> States {
        States::new().unwrap()
    }

    #[test]
    fn every_array_is_a_parameter_in_order_and_every_literal_is_spelled() {
        let all = build(u8::MAX >> 3, &states());
        let n = [
            SUBMIT_COLUMNS,
            LEASE_COLUMNS,
            HEARTBEAT_COLUMNS,
            CHECKPOINT_COLUMNS,
            COMPLETE_COLUMNS,
        ]
        .iter()
        .map(|c| c.len())
        .sum::<usize>();
        for i in 1..=n {
            assert_eq!(all.matches(&format!("(SELECT ${i}::")).count(), 1, "${i} in {all}");
        }
        assert!(!all.contains(&format!("${}", n + 1)), "{all}");
        assert!(!all.contains('{') && !all.contains('}'), "a placeholder is left: {all}");
        assert!(
            all.contains("jobs.state = (SELECT 'queued'::text)")
                && all.contains("jobs.state = (SELECT 'running'::text)")
                && all.contains("SET state = 'running'"),
            "{all}"
        );
        assert!(
            !all.contains("jobs.state = 'queued'") && !all.contains("jobs.state = 'running'"),
            "a compare-and-set a partial index could match: {all}"
        );
    }

    #[test]
    fn a_statement_reads_the_kinds_it_has() {
        let st = states();
        let leases = build(Kind::Lease.bit(), &st);
        assert!(leases.starts_with("WITH l AS (UPDATE jobs"), "{leases}");
        assert!(leases.ends_with("FROM l"), "{leases}");
        let submits = build(Kind::Submit.bit(), &st);
        assert!(submits.ends_with("WHERE false"), "{submits}");
        let both = build(Kind::Lease.bit() | Kind::Complete.bit(), &st);
        assert!(both.contains("LEFT JOIN d ON d.b_ord = u.ord"), "{both}");
        assert!(
            both.contains("(SELECT $7::int4[])"),
            "the completes' arrays follow the leases': {both}"
        );
    }
}
