//! `videogen bench dispatch --database-url`: the same pipeline on
//! PostgreSQL, against a bare `SKIP LOCKED` claim loop run by `pgbench`.
//!
//! Every pipeline run gets a fresh database (`pgdb`: created with a unique
//! name on the server of `--database-url`, dropped afterwards), so no run
//! sees another's rows or dead tuples. The store is `PgStore` as `serve`
//! uses it: durable commits (`synchronous_commit` as the server has it), the
//! group-committed hot path, the event trigger with its notifications
//! (`--pg-notify-changes false`: without the per-event ones, as a node that
//! fans changes out through Redis runs). Several submits are in flight at
//! once, as from concurrent API requests: one at a time, each waiting for
//! its own durable commit, would bound submission at one per WAL flush.
//!
//! The baseline is what PostgreSQL itself does for a queue on this machine:
//! `pgbench` running one claim per transaction,
//! `UPDATE q SET state = 'running' WHERE id = (SELECT id FROM q WHERE state =
//! 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)`, on a plain table
//! prefilled with queued rows, with as many clients as the pipeline has
//! workers. A pipeline job is three durable writes (submit, lease, complete)
//! where a claim is one, so a ratio of 1 means the store moves a job for the
//! price PostgreSQL charges for a claim. The table has a partial index on its
//! queued rows, as any queue table has (ours: `jobs_runnable`): without it
//! each claim walks the primary key past every row already claimed, and the
//! rate falls through the run (`--pgbench-partial-index false` shows it;
//! `-P 1` progress gives the first and last second's rate).
//!
//! With `--peers`, other PostgreSQL job queues (`peers`) run between our
//! runs, on the same server with as many workers, so ours, pgbench and theirs
//! are measured side by side. `--pg-rounds` repeats the whole sequence;
//! every ratio compares runs of the same round.

use super::peers::{self, Peer, PeerJob, PeerMode, PeerRun, PeerSetup};
use super::{Run, pipeline_on, progress};
use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use std::process::Command;
use std::sync::Arc;
use videogen_core::store::prelude::*;
use videogen_store::{PgOptions, PgStore};
use videogen_testkit::pg_server::{PgServer, PgSettings, TempDb};

/// The pgbench script: one claim per transaction.
const CLAIM_SQL: &str = "UPDATE q SET state = 'running' WHERE id = \
     (SELECT id FROM q WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);\n";

/// The index the claim's `WHERE state = 'queued' ORDER BY id` reads: only
/// queued rows, so a claim does not step over the rows claimed before it.
const QUEUED_INDEX_SQL: &str = "CREATE INDEX q_queued ON q (id) WHERE state = 'queued'";

/// What the PostgreSQL part runs.
pub(super) struct PgPlan<'a> {
    /// The server (any database on it: new ones are created beside it).
    pub url: &'a str,
    /// Jobs of the run with the most workers; fewer workers get
    /// proportionally fewer (at least [`MIN_JOBS`]), so runs take similar time.
    pub jobs: u64,
    pub workers: &'a [usize],
    /// Submits in flight at once (concurrent API requests).
    pub submitters: usize,
    /// `PgOptions::notify_changes` of the store.
    pub notify_changes: bool,
    pub pgbench_seconds: u64,
    /// Whether pgbench's table gets [`QUEUED_INDEX_SQL`].
    pub pgbench_partial_index: bool,
    /// Times the whole sequence (ours, pgbench, peers per worker count) runs.
    pub rounds: usize,
    pub peers: &'a [Peer],
    /// Like `jobs`, for each peer run.
    pub peer_jobs: u64,
    pub peer_setup: PeerSetup,
}

/// Fewest jobs a pipeline run gets.
const MIN_JOBS: u64 = 1_000;
/// Fewest jobs a peer run gets (the slowest peers drain tens of jobs/s with one worker here).
const PEER_MIN_JOBS: u64 = 250;

#[derive(Debug, Serialize)]
pub(super) struct PgReport {
    /// `user@host:port` (no password).
    pub server: String,
    pub settings: PgSettings,
    pub submitters: usize,
    pub notify_changes: bool,
    pub rounds: usize,
    pub pipelines: Vec<PgRun>,
    pub pgbench: Vec<PgbenchRun>,
    /// Why the pgbench baseline did not run, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbench_skipped: Option<String>,
    pub peers: Vec<PeerRun>,
    /// Peer runs that failed (the bench exits non-zero after its report).
    pub peer_errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct PgRun {
    #[serde(flatten)]
    pub run: Run,
    /// Group-commit statements (= transactions) the store ran.
    pub commits: u64,
    /// Store writes answered per commit, on average.
    pub writes_per_commit: f64,
    /// `jobs_per_sec` / pgbench claims/s with as many clients as workers, same round.
    pub ratio_to_pgbench: Option<f64>,
    pub round: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct PgbenchRun {
    pub round: usize,
    pub clients: usize,
    pub seconds: u64,
    pub partial_index: bool,
    pub claims_per_sec: f64,
    pub latency_ms: Option<f64>,
    /// Claims/s in each second of the run (`pgbench -P 1`).
    pub progress_tps: Vec<f64>,
}

pub(super) async fn run(plan: &PgPlan<'_>) -> anyhow::Result<PgReport> {
    let server = PgServer::new(plan.url);
    let settings = server.settings().await?;
    let pgbench_skipped = pgbench_version().err();
    if let Some(why) = &pgbench_skipped {
        progress(&format!("pgbench baseline skipped: {why}"));
    }

    let most = plan.workers.iter().copied().max().unwrap_or(1).max(1);
    let (mut pipelines, mut pgbench, mut peer_runs, mut peer_errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=plan.rounds.max(1) {
        for &w in plan.workers {
            let jobs = scaled(plan.jobs, w, most, MIN_JOBS);
            progress(&format!(
                "round {round}: PostgreSQL pipeline, {w} worker(s), {} submits in flight, {jobs} jobs",
                plan.submitters
            ));
            let db = server.create("pipe").await?;
            let result = pipeline(&db, jobs, w, plan.submitters, plan.notify_changes).await;
            server.drop_db(&db).await;
            pipelines.push(PgRun { round, ..result? });

            if pgbench_skipped.is_none() {
                progress(&format!(
                    "round {round}: pgbench claim loop, {w} client(s), {} s, partial index {}",
                    plan.pgbench_seconds,
                    if plan.pgbench_partial_index { "on" } else { "off" }
                ));
                let db = server.create("pgbench").await?;
                let result = claim_loop(&db, w, plan.pgbench_seconds, plan.pgbench_partial_index).await;
                server.drop_db(&db).await;
                pgbench.push(PgbenchRun { round, ..result? });
            }

            for &peer in plan.peers {
                for mode in PeerMode::ALL {
                    let jobs = scaled(plan.peer_jobs, w, most, PEER_MIN_JOBS);
                    progress(&format!(
                        "round {round}: {} ({mode:?}), {w} worker(s), {jobs} jobs",
                        peer.name()
                    ));
                    let db = server.create("peer").await?;
                    let job = PeerJob {
                        peer,
                        mode,
                        url: &db.url,
                        workers: w,
                        jobs,
                        producers: plan.submitters,
                    };
                    let result = peers::run(&plan.peer_setup, &job).await;
                    server.drop_db(&db).await;
                    match result {
                        Ok(r) => peer_runs.push(PeerRun { round, ..r }),
                        Err(e) => {
                            let why = format!("round {round}, {} {mode:?}, {w} worker(s): {e:#}", peer.name());
                            progress(&format!("FAILED: {why}"));
                            peer_errors.push(why);
                        }
                    }
                }
            }
        }
    }
    for p in &mut pipelines {
        p.ratio_to_pgbench = pgbench
            .iter()
            .find(|b| b.round == p.round && b.clients == p.run.workers)
            .map(|b| p.run.jobs_per_sec / b.claims_per_sec);
    }
    for r in &mut peer_runs {
        r.ratio_to_ours = pipelines
            .iter()
            .find(|p| p.round == r.round && p.run.workers == r.workers)
            .map(|p| r.jobs_per_sec / p.run.jobs_per_sec);
    }
    Ok(PgReport {
        server: server.describe(),
        settings,
        submitters: plan.submitters,
        notify_changes: plan.notify_changes,
        rounds: plan.rounds.max(1),
        pipelines,
        pgbench,
        pgbench_skipped,
        peers: peer_runs,
        peer_errors,
    })
}

/// `jobs` for the run with the most workers; proportionally fewer for fewer
/// workers (at least `min`), so runs take similar time.
fn scaled(jobs: u64, workers: usize, most: usize, min: u64) -> u64 {
    (jobs * workers as u64 / most.max(1) as u64).max(min).min(jobs)
}

async fn pipeline(
    db: &TempDb,
    jobs: u64,
    workers: usize,
    submitters: usize,
    notify_changes: bool,
) -> anyhow::Result<PgRun> {
    let options = PgOptions { notify_changes };
    let store = PgStore::connect_with(&db.url, options).await?;
    let before = store.group_commit_stats();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let name = format!("pg pipeline: {workers} worker(s)");
    let run = pipeline_on(shared, jobs, workers, submitters, name).await;
    let after = store.group_commit_stats();
    store.close().await?;
    let run = run?;
    let commits = after.batches - before.batches;
    let writes = after.writes - before.writes;
    Ok(PgRun {
        run,
        commits,
        writes_per_commit: writes as f64 / commits.max(1) as f64,
        ratio_to_pgbench: None,
        round: 0,
    })
}

/// `pgbench --version`, or why it cannot run.
fn pgbench_version() -> Result<String, String> {
    match Command::new("pgbench").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Ok(out) => Err(format!(
            "`pgbench --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("pgbench is not installed (not on PATH)".into()),
        Err(e) => Err(format!("running pgbench: {e}")),
    }
}

/// A fresh queue of queued rows, then `clients` pgbench clients
/// claiming from it for `seconds`.
async fn claim_loop(db: &TempDb, clients: usize, seconds: u64, partial_index: bool) -> anyhow::Result<PgbenchRun> {
    // More rows than the fastest claim rate seen here (~25k/s) can take.
    let rows = 30_000 * seconds.max(1);
    let mut conn = PgConnection::connect(&db.url).await?;
    conn.execute("DROP TABLE IF EXISTS q").await?;
    conn.execute("CREATE TABLE q (id bigserial PRIMARY KEY, state text NOT NULL)")
        .await?;
    sqlx::query("INSERT INTO q (state) SELECT 'queued' FROM generate_series(1, $1)")
        .bind(i64::try_from(rows)?)
        .execute(&mut conn)
        .await?;
    if partial_index {
        conn.execute(QUEUED_INDEX_SQL).await?;
    }
    conn.execute("VACUUM ANALYZE q").await?;
    drop(conn.close().await);

    let script = tempfile::Builder::new()
        .prefix("videogen-claim-")
        .suffix(".sql")
        .tempfile()?;
    std::fs::write(script.path(), CLAIM_SQL)?;
    let threads = clients.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (url, path) = (db.url.clone(), script.path().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("pgbench")
            .args(["-n", "-f"])
            .arg(&path)
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &seconds.to_string(), "-P", "1"])
            .arg(&url)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let claims_per_sec = figure(&stdout, "tps = ").with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    Ok(PgbenchRun {
        round: 0,
        clients,
        seconds,
        partial_index,
        claims_per_sec,
        latency_ms: figure(&stdout, "latency average = "),
        progress_tps: progress_tps(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// The number after `label` in pgbench's output.
fn figure(out: &str, label: &str) -> Option<f64> {
    let rest = &out[out.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The tps of each `progress: 1.0 s, 2046.9 tps, lat …` line (`pgbench -P`).
fn progress_tps(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" tps")?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_figures_are_parsed() {
        let out = "latency average = 0.771 ms\ntps = 1296.5 (without initial connection time)\n";
        assert_eq!(figure(out, "tps = "), Some(1296.5));
        assert_eq!(figure(out, "latency average = "), Some(0.771));
        assert_eq!(figure(out, "nope"), None);
    }

    #[test]
    fn pgbench_progress_lines_are_parsed() {
        let err = "pgbench (15.20)\nprogress: 1.0 s, 2046.9 tps, lat 3.900 ms stddev 1.522, 0 failed\n\
                   progress: 2.0 s, 612.0 tps, lat 13.1 ms stddev 2.0, 0 failed\n";
        assert_eq!(progress_tps(err), vec![2046.9, 612.0]);
    }

    #[test]
    fn fewer_workers_get_proportionally_fewer_jobs() {
        assert_eq!(scaled(20_000, 8, 8, MIN_JOBS), 20_000);
        assert_eq!(scaled(20_000, 1, 8, MIN_JOBS), 2_500);
        assert_eq!(scaled(4_000, 1, 8, MIN_JOBS), MIN_JOBS);
        assert_eq!(scaled(500, 1, 8, MIN_JOBS), 500);
        assert_eq!(scaled(1_000, 1, 8, PEER_MIN_JOBS), PEER_MIN_JOBS);
    }
}
