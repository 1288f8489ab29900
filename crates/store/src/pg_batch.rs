//! Group commit for [`PgStore`](crate::PgStore)'s hot path: submit (without
//! an idempotency key), lease, heartbeat, checkpoint and complete.
//!
//! # Why
//!
//! With `synchronous_commit = on`, a transaction on PostgreSQL costs about
//! one WAL flush (an `fdatasync`, 0.3 ms to several ms on a virtual disk),
//! and every acknowledged write here must be flushed before it is answered.
//! At one transaction per write, three per job, the flush bounds throughput
//! far below what the statements cost. So writes are queued to one
//! collector task, which takes everything waiting (up to [`MAX_BATCH`]) and
//! runs it as **one statement** — one round trip, one implicit transaction,
//! one flush — and answers each caller after that statement (hence its
//! commit) returned.
//!
//! # The statement
//!
//! One data-modifying CTE per kind of write present, each a multi-row
//! statement over `unnest` of per-write arrays: `INSERT … SELECT FROM
//! unnest(…)` for submits, `UPDATE jobs … FROM unnest(…) AS b WHERE jobs.id =
//! b.b_id AND jobs.state = … [AND jobs.attempt = b.b_attempt]` for the
//! others. Every row keeps its own compare-and-set, with the same SET lists
//! as the single-job statements of `postgres.rs`; the row trigger appends
//! each write's event. `RETURNING b.b_ord` says which writes matched: a
//! write without a row lost its compare-and-set and gets exactly the answer
//! a lone statement would give (`None`, `StaleLease`).
//!
//! The CTEs of one statement all see the same snapshot and must not touch
//! the same row twice, so a batch holds **at most one write per job**; a
//! second write of a job waits for the next batch. Batches in flight at the
//! same time ([`DEPTH`]) never share a job either, so they never wait on
//! each other's row locks (nor deadlock), and each job's writes run in the
//! order they arrived. Writes in one batch were all in flight together, so
//! any order among them is one a caller could have seen.
//!
//! # Failures
//!
//! If the statement fails with a database error (a constraint, a deadlock
//! with a reaper), nothing of it was committed: its writes run again one by
//! one, each as a batch of its own, so one bad write fails alone. Any other
//! error (the connection broke mid-way: the outcome is unknown) is every
//! write's answer, as it would be for a lone statement.

use crate::rows::{Columns, decode_job, to_json};
use crate::sqlite::{next, stale};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Postgres, Row};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use videogen_core::store::{NewJob, StoreError, Submitted};
use videogen_core::{Job, JobState, Lease, Phase, Transition, VideoId, WorkerId};

/// Most writes one statement takes. Bounds the statement's size and the
/// latency one batch adds to the writes queued behind it.
pub(crate) const MAX_BATCH: usize = 128;

/// Batches in flight at once, each on its own pooled connection. More than
/// one, so the next batch is built and sent while the previous one waits for
/// its WAL flush (PostgreSQL flushes the commits waiting together at once);
/// few, so that under load each batch still gathers many writes.
pub(crate) const DEPTH: usize = 4;

/// Writes queued before callers wait to queue (back-pressure).
const QUEUE: usize = 4 * MAX_BATCH;

/// Writes the collector holds back (a job already in a batch in flight)
/// before it stops taking new ones from the queue.
const WAITING_MAX: usize = 4 * MAX_BATCH;

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
                let _ = reply.send(row.map_or_else(|| Err(stale(&op.lease)), decode_job));
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

/// The job a submit created, as the caller gets it back.
pub(crate) fn created_job(job: NewJob) -> Job {
    Job {
        state: JobState::Queued,
        phase: Phase::Queued,
        progress: 0,
        step: 0,
        attempt: 0,
        created_at_ms: job.now_ms,
        enqueued_at_ms: job.now_ms,
        started_at_ms: None,
        completed_at_ms: None,
        expires_at_ms: None,
        error: None,
        checkpoint: None,
        prev_checkpoint: None,
        outputs: None,
        lease: None,
        id: job.id,
        tenant: job.tenant,
        tier: job.tier,
        spec: job.spec,
    }
}

fn leased(op: &LeaseOp, row: &PgRow) -> Result<Lease, StoreError> {
    let attempt = row.int("leased_attempt")?.unwrap_or(-1);
    let attempt =
        u32::try_from(attempt).map_err(|_| crate::rows::corrupt("attempt", format!("{attempt} of job {}", op.id)))?;
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
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    retried_batches: AtomicU64,
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
        tokio::spawn(collect(pool, rx, counters.clone()));
        Self { tx, counters }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            retried_batches: self.counters.retried_batches.load(Ordering::Relaxed),
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
        self.tx.send(op(reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the store is closed".into())
}

// ---- the collector

/// Takes queued writes into batches and runs up to [`DEPTH`] at once, each
/// in a task of its own; ends when every handle is gone and all is answered.
async fn collect(pool: PgPool, mut rx: mpsc::Receiver<Op>, counters: Arc<Counters>) {
    let mut waiting: VecDeque<Op> = VecDeque::new();
    // Jobs of the batches in flight, by the task running them.
    let mut busy: HashMap<tokio::task::Id, Vec<String>> = HashMap::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut open = true;
    loop {
        while waiting.len() < WAITING_MAX {
            match rx.try_recv() {
                Ok(op) => waiting.push_back(op),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while running.len() < DEPTH {
            let batch = take_batch(&mut waiting, &in_flight);
            if batch.is_empty() {
                break;
            }
            let jobs: Vec<String> = batch.iter().map(|op| op.job().to_owned()).collect();
            in_flight.extend(jobs.iter().cloned());
            let (pool, counters) = (pool.clone(), counters.clone());
            let task = running.spawn(async move { run(&pool, batch, &counters).await });
            busy.insert(task.id(), jobs);
        }
        if !open && waiting.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            op = rx.recv(), if open && waiting.len() < WAITING_MAX => match op {
                Some(op) => waiting.push_back(op),
                None => open = false,
            },
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        // Its callers got "closed" when their replies dropped.
                        tracing::error!(error = %e, "a store batch task failed");
                        e.id()
                    }
                };
                for job in busy.remove(&id).unwrap_or_default() {
                    in_flight.remove(&job);
                }
            },
            // Not reached: with nothing in flight the loop above started a
            // batch, or `recv` is enabled.
            else => return,
        }
    }
}

/// The next batch: waiting writes in arrival order, at most one per job and
/// none of a job in flight; the others stay, in order.
fn take_batch(waiting: &mut VecDeque<Op>, in_flight: &HashSet<String>) -> Vec<Op> {
    let mut batch = Vec::new();
    let mut jobs: HashSet<String> = HashSet::new();
    let mut held = VecDeque::new();
    while batch.len() < MAX_BATCH {
        let Some(op) = waiting.pop_front() else { break };
        if in_flight.contains(op.job()) || !jobs.insert(op.job().to_owned()) {
            held.push_back(op);
        } else {
            batch.push(op);
        }
    }
    held.append(waiting);
    *waiting = held;
    batch
}

// ---- running a batch

/// The states and phases the statements bind, each transition computed with
/// [`JobState::apply`] as in the single-job statements.
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
}

/// Runs one batch and answers its writes; a batch that fails with a database
/// error (nothing of it committed) runs again one write at a time.
async fn run(pool: &PgPool, batch: Vec<Op>, counters: &Counters) {
    let states = match States::new() {
        Ok(s) => s,
        Err(e) => return fail_all(batch, &e.to_string()),
    };
    counters.batches.fetch_add(1, Ordering::Relaxed);
    match execute(pool, &batch, &states).await {
        Ok(rows) => answer_all(batch, rows, counters),
        Err(e @ sqlx::Error::Database(_)) if batch.len() > 1 => {
            counters.retried_batches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, writes = batch.len(), "store batch failed; running its writes one by one");
            for op in batch {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                let one = vec![op];
                match execute(pool, &one, &states).await {
                    Ok(rows) => answer_all(one, rows, counters),
                    Err(e) => fail_all(one, &e.to_string()),
                }
            }
        }
        Err(e) => fail_all(batch, &e.to_string()),
    }
}

fn fail_all(batch: Vec<Op>, error: &str) {
    for op in batch {
        op.fail(StoreError::Backend(format!("postgres: {error}")));
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
                    "group commit: a result row without its write (the batch was committed)",
                );
            }
        }
    }
    counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
    for (op, row) in batch.into_iter().zip(by_ord) {
        op.answer(row.as_ref());
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds `batch` to its statement and runs it: one implicit transaction.
async fn execute(pool: &PgPool, batch: &[Op], st: &States) -> Result<Vec<PgRow>, sqlx::Error> {
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
    // Binds in the order of `KINDS`, as `statement` numbers the parameters.
    let mut q = sqlx::query(statement(mask));
    if mask & Kind::Submit.bit() != 0 {
        q = submits.bind(q, st);
    }
    if mask & Kind::Lease.bit() != 0 {
        q = leases.bind(q, st);
    }
    if mask & Kind::Heartbeat.bit() != 0 {
        q = heartbeats.bind(q, st);
    }
    if mask & Kind::Checkpoint.bit() != 0 {
        q = checkpoints.bind(q, st);
    }
    if mask & Kind::Complete.bit() != 0 {
        q = completes.bind(q, st);
    }
    q.fetch_all(pool).await
}

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

    fn bind<'q>(self, q: PgQuery<'q>, st: &States) -> PgQuery<'q> {
        q.bind(self.id)
            .bind(self.tenant)
            .bind(self.tier)
            .bind(self.model)
            .bind(self.spec)
            .bind(self.total_steps)
            .bind(self.now)
            .bind(self.event)
            .bind(st.queued)
            .bind(Phase::Queued.as_str())
    }
}

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

    fn bind<'q>(self, q: PgQuery<'q>, st: &States) -> PgQuery<'q> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.worker)
            .bind(self.expires)
            .bind(self.now)
            .bind(self.event)
            .bind(st.leased)
            .bind(Phase::LoadingModel.as_str())
            .bind(Phase::ResumingFromCheckpoint.as_str())
            .bind(st.queued)
    }
}

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

    fn bind<'q>(self, q: PgQuery<'q>, st: &States) -> PgQuery<'q> {
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
            .bind(st.running)
    }
}

#[derive(Default)]
struct Checkpoints {
    ord: Vec<i32>,
    id: Vec<String>,
    attempt: Vec<i64>,
    checkpoint: Vec<String>,
    now: Vec<i64>,
    event: Vec<String>,
}

impl Checkpoints {
    fn push(&mut self, ord: i32, op: &CheckpointOp) {
        self.ord.push(ord);
        self.id.push(op.lease.job_id.as_str().to_owned());
        self.attempt.push(i64::from(op.lease.attempt));
        self.checkpoint.push(op.checkpoint.clone());
        self.now.push(op.now_ms);
        self.event.push(op.event.clone());
    }

    fn bind<'q>(self, q: PgQuery<'q>, st: &States) -> PgQuery<'q> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.checkpoint)
            .bind(self.now)
            .bind(self.event)
            .bind(st.running)
    }
}

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

    fn bind<'q>(self, q: PgQuery<'q>, st: &States) -> PgQuery<'q> {
        q.bind(self.ord)
            .bind(self.id)
            .bind(self.attempt)
            .bind(self.outputs)
            .bind(self.now)
            .bind(self.expires)
            .bind(self.event)
            .bind(st.completed)
            .bind(Phase::Completed.as_str())
            .bind(st.running)
    }
}

// ---- the statements
//
// Each kind's statement numbers its parameters from $1; `statement` shifts
// them past the kinds before it. The columns of `unnest` are prefixed `b_`
// so that no name is ambiguous next to the `jobs` columns.

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

    /// The CTE's name and statement.
    fn cte(self) -> (&'static str, &'static str) {
        match self {
            Kind::Submit => ("s", SUBMITS),
            Kind::Lease => ("l", LEASES),
            Kind::Heartbeat => ("h", HEARTBEATS),
            Kind::Checkpoint => ("c", CHECKPOINTS),
            Kind::Complete => ("d", COMPLETES),
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

/// $1..$8 per job, $9 state, $10 phase. The `created` event comes from the
/// insert trigger; `idempotency_*` stay NULL (keyed submits do not batch).
const SUBMITS: &str = "INSERT INTO jobs (id, tenant, tier, model, spec_json, state, phase, progress, step, \
     total_steps, attempt, created_at_ms, enqueued_at_ms, last_event_seq, event_kind, event_at_ms, event_data_json) \
     SELECT b_id, b_tenant, b_tier, b_model, b_spec, $9::text, $10::text, 0, 0, b_total_steps, 0, b_now, b_now, \
     1, 'created', b_now, b_event \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[]) \
     AS b(b_id, b_tenant, b_tier, b_model, b_spec, b_total_steps, b_now, b_event)";

/// $1..$6 per lease, $7 to-state, $8 / $9 the phase without / with a
/// checkpoint, $10 from-state. Returns the new attempt (the fencing token).
const LEASES: &str = "UPDATE jobs SET state = $7::text, attempt = jobs.attempt + 1, \
     phase = CASE WHEN jobs.checkpoint_json IS NULL THEN $8::text ELSE $9::text END, \
     lease_worker = b_worker, lease_expires_at_ms = b_expires, \
     started_at_ms = COALESCE(jobs.started_at_ms, b_now), \
     last_event_seq = jobs.last_event_seq + 1, event_kind = 'leased', event_at_ms = b_now, \
     event_data_json = (b_event::jsonb || jsonb_build_object(\
         'phase', CASE WHEN jobs.checkpoint_json IS NULL THEN $8::text ELSE $9::text END, \
         'progress', jobs.progress, 'attempt', jobs.attempt + 1))::text \
     FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[]) \
     AS b(b_ord, b_id, b_worker, b_expires, b_now, b_event) \
     WHERE jobs.id = b_id AND jobs.state = $10::text \
     RETURNING b_ord, jobs.attempt AS leased_attempt";

/// $1..$10 per heartbeat, $11 state. A `progress` event only when the phase
/// or percent changes; SET expressions all see the row as it was.
const HEARTBEATS: &str = "UPDATE jobs SET \
     last_event_seq = jobs.last_event_seq + (jobs.phase <> b_phase OR jobs.progress <> b_percent)::int, \
     event_kind = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN 'progress' ELSE jobs.event_kind END, \
     event_at_ms = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN b_now ELSE jobs.event_at_ms END, \
     event_data_json = CASE WHEN jobs.phase <> b_phase OR jobs.progress <> b_percent \
         THEN b_event ELSE jobs.event_data_json END, \
     phase = b_phase, progress = b_percent, step = b_step, total_steps = b_total_steps, \
     lease_expires_at_ms = b_expires \
     FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[], $7::int8[], \
         $8::int8[], $9::int8[], $10::text[]) \
     AS b(b_ord, b_id, b_attempt, b_phase, b_percent, b_step, b_total_steps, b_now, b_expires, b_event) \
     WHERE jobs.id = b_id AND jobs.state = $11::text AND jobs.attempt = b_attempt \
     RETURNING b_ord";

/// $1..$6 per checkpoint, $7 state.
const CHECKPOINTS: &str = "UPDATE jobs SET prev_checkpoint_json = jobs.checkpoint_json, \
     checkpoint_json = b_checkpoint, last_event_seq = jobs.last_event_seq + 1, event_kind = 'checkpoint', \
     event_at_ms = b_now, event_data_json = (b_event::jsonb || \
         jsonb_build_object('phase', jobs.phase, 'progress', jobs.progress))::text \
     FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::text[]) \
     AS b(b_ord, b_id, b_attempt, b_checkpoint, b_now, b_event) \
     WHERE jobs.id = b_id AND jobs.state = $7::text AND jobs.attempt = b_attempt \
     RETURNING b_ord";

/// $1..$7 per completion, $8 to-state, $9 phase, $10 from-state. Returns the
/// completed job.
const COMPLETES: &str = concat!(
    "UPDATE jobs SET state = $8::text, phase = $9::text, progress = 100, outputs_json = b_outputs, ",
    "completed_at_ms = b_now, expires_at_ms = b_expires, lease_worker = NULL, lease_expires_at_ms = NULL, ",
    "last_event_seq = jobs.last_event_seq + 1, event_kind = 'completed', event_at_ms = b_now, ",
    "event_data_json = b_event ",
    "FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[], $7::text[]) ",
    "AS b(b_ord, b_id, b_attempt, b_outputs, b_now, b_expires, b_event) ",
    "WHERE jobs.id = b_id AND jobs.state = $10::text AND jobs.attempt = b_attempt ",
    "RETURNING b_ord, ",
    crate::rows::job_columns!()
);

/// The statement for a batch with the kinds in `mask`, built once per mask.
fn statement(mask: u8) -> &'static str {
    static BUILT: [OnceLock<String>; 1 << KINDS.len()] = [const { OnceLock::new() }; 1 << KINDS.len()];
    BUILT[usize::from(mask)].get_or_init(|| build(mask))
}

/// `WITH <one CTE per kind> SELECT ord, leased_attempt [, the completed
/// job's columns]`: a row per write that matched. Data-modifying CTEs run to
/// completion whether or not the query reads them.
fn build(mask: u8) -> String {
    let mut ctes = Vec::new();
    let mut matched = Vec::new();
    let mut params = 0;
    for kind in KINDS.into_iter().filter(|k| mask & k.bit() != 0) {
        let (name, sql) = kind.cte();
        ctes.push(format!("{name} AS ({})", shift_params(sql, params)));
        params += max_param(sql);
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

/// `sql` with every `$n` renumbered `$(n + by)`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The highest `$n` in `sql`.
fn max_param(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|s| {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            s[..digits].parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_across_the_ctes() {
        assert_eq!(shift_params("a = $1 AND b = $10::text", 7), "a = $8 AND b = $17::text");
        assert_eq!(max_param(LEASES), 10);
        assert_eq!(max_param(SUBMITS), 10);
        assert_eq!(max_param(HEARTBEATS), 11);
        assert_eq!(max_param(CHECKPOINTS), 7);
        assert_eq!(max_param(COMPLETES), 10);
        let all = statement(u8::MAX >> 3);
        assert_eq!(max_param(all), 10 + 10 + 11 + 7 + 10, "{all}");
        for n in 1..=48 {
            assert!(all.contains(&format!("${n}:")), "${n} missing in {all}");
        }
    }

    #[test]
    fn a_statement_reads_the_kinds_it_has() {
        let leases = statement(Kind::Lease.bit());
        assert!(leases.starts_with("WITH l AS (UPDATE jobs"), "{leases}");
        assert!(leases.ends_with("FROM l"), "{leases}");
        let submits = statement(Kind::Submit.bit());
        assert!(submits.ends_with("WHERE false"), "{submits}");
        let both = statement(Kind::Lease.bit() | Kind::Complete.bit());
        assert!(both.contains("LEFT JOIN d ON d.b_ord = u.ord"), "{both}");
    }
}
