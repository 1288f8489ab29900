//! `videogen bench dispatch --database-url`: the same pipeline on
//! PostgreSQL, against a bare `SKIP LOCKED` claim loop run by `pgbench`.
//!
//! Every pipeline run gets a fresh database (created with a unique name on
//! the server of `--database-url`, dropped afterwards), so no run sees
//! another's rows or dead tuples. The store is `PgStore` as `serve` uses it:
//! durable commits (`synchronous_commit` as the server has it), the
//! group-committed hot path, the event trigger with its notifications.
//!
//! The baseline is what PostgreSQL itself does for a queue on this machine:
//! `pgbench` running one claim per transaction,
//! `UPDATE q SET state = 'running' WHERE id = (SELECT id FROM q WHERE state =
//! 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)`, on a plain table
//! prefilled with queued rows, with as many clients as the pipeline has
//! workers. A pipeline job is three durable writes (submit, lease, complete)
//! where a claim is one, so a ratio of 1 means the store moves a job for the
//! price PostgreSQL charges for a claim.

use super::{Run, pipeline_on, progress};
use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use videogen_core::store::Store;
use videogen_store::PgStore;

/// The pgbench script: one claim per transaction.
const CLAIM_SQL: &str = "UPDATE q SET state = 'running' WHERE id = \
     (SELECT id FROM q WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);\n";

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
    pub pgbench_seconds: u64,
}

/// Fewest jobs a pipeline run gets.
const MIN_JOBS: u64 = 1_000;

#[derive(Debug, Serialize)]
pub(super) struct PgReport {
    /// `server_version` of the server.
    pub server: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub submitters: usize,
    pub pipelines: Vec<PgRun>,
    pub pgbench: Vec<PgbenchRun>,
    /// Why the pgbench baseline did not run, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbench_skipped: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct PgRun {
    #[serde(flatten)]
    pub run: Run,
    /// Group-commit statements (= transactions) the store ran.
    pub commits: u64,
    /// Store writes answered per commit, on average.
    pub writes_per_commit: f64,
    /// `jobs_per_sec` / pgbench claims/s with as many clients as workers.
    pub ratio_to_pgbench: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct PgbenchRun {
    pub clients: usize,
    pub seconds: u64,
    pub claims_per_sec: f64,
    pub latency_ms: Option<f64>,
}

pub(super) async fn run(plan: &PgPlan<'_>) -> anyhow::Result<PgReport> {
    let server = Server::new(plan.url);
    let mut admin = server.admin().await?;
    let version = show(&mut admin, "SHOW server_version").await?;
    let synchronous_commit = show(&mut admin, "SHOW synchronous_commit").await?;
    let fsync = show(&mut admin, "SHOW fsync").await?;
    drop(admin.close().await);

    let most = plan.workers.iter().copied().max().unwrap_or(1).max(1);
    let mut pipelines = Vec::new();
    for &w in plan.workers {
        let jobs = (plan.jobs * w as u64 / most as u64).max(MIN_JOBS).min(plan.jobs);
        progress(&format!(
            "PostgreSQL pipeline, {w} worker(s), {} submits in flight, {jobs} jobs",
            plan.submitters
        ));
        let db = server.create("pipe").await?;
        let result = pipeline(&db, jobs, w, plan.submitters).await;
        server.drop_db(&db).await;
        pipelines.push(result?);
    }

    let mut pgbench = Vec::new();
    let mut pgbench_skipped = None;
    match pgbench_version() {
        Err(why) => {
            progress(&format!("pgbench baseline skipped: {why}"));
            pgbench_skipped = Some(why);
        }
        Ok(_) => {
            let db = server.create("pgbench").await?;
            let result = async {
                for &c in plan.workers {
                    progress(&format!(
                        "pgbench claim loop, {c} client(s), {} s",
                        plan.pgbench_seconds
                    ));
                    pgbench.push(claim_loop(&db, c, plan.pgbench_seconds).await?);
                }
                anyhow::Ok(())
            }
            .await;
            server.drop_db(&db).await;
            result?;
        }
    }
    for p in &mut pipelines {
        p.ratio_to_pgbench = pgbench
            .iter()
            .find(|b| b.clients == p.run.workers)
            .map(|b| p.run.jobs_per_sec / b.claims_per_sec);
    }
    Ok(PgReport {
        server: version,
        synchronous_commit,
        fsync,
        submitters: plan.submitters,
        pipelines,
        pgbench,
        pgbench_skipped,
    })
}

async fn show(admin: &mut PgConnection, sql: &'static str) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(sql).fetch_one(admin).await?)
}

async fn pipeline(db: &Database, jobs: u64, workers: usize, submitters: usize) -> anyhow::Result<PgRun> {
    let store = PgStore::connect(&db.url).await?;
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
async fn claim_loop(db: &Database, clients: usize, seconds: u64) -> anyhow::Result<PgbenchRun> {
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
            .args(["-T", &seconds.to_string()])
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
        clients,
        seconds,
        claims_per_sec,
        latency_ms: figure(&stdout, "latency average = "),
    })
}

/// The number after `label` in pgbench's output.
fn figure(out: &str, label: &str) -> Option<f64> {
    let rest = &out[out.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The server of `--database-url`.
struct Server {
    /// `postgres://user@host:port` (no database).
    base: String,
    /// `?…` of the URL, possibly empty.
    query: String,
    /// The database of the URL, to connect to for CREATE / DROP DATABASE.
    admin_db: String,
}

/// A database created for one run.
struct Database {
    name: String,
    url: String,
}

impl Server {
    fn new(url: &str) -> Self {
        let (head, query) = url.find('?').map_or((url, ""), |i| url.split_at(i));
        let authority = head.find("://").map_or(0, |i| i + 3);
        let (base, db) = match head[authority..].find('/') {
            Some(i) => (&head[..authority + i], &head[authority + i + 1..]),
            None => (head, ""),
        };
        Self {
            base: base.to_owned(),
            query: query.to_owned(),
            admin_db: if db.is_empty() { "postgres".into() } else { db.into() },
        }
    }

    fn url(&self, db: &str) -> String {
        format!("{}/{db}{}", self.base, self.query)
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        let url = self.url(&self.admin_db);
        PgConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to {}", self.url(&self.admin_db)))
    }

    /// A new, empty database with a name no other run uses.
    async fn create(&self, what: &str) -> anyhow::Result<Database> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("videogen_bench_{what}_{}_{nanos}", std::process::id());
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
            )))
            .await
            .with_context(|| format!("creating database {name}"))?;
        drop(admin.close().await);
        Ok(Database {
            url: self.url(&name),
            name,
        })
    }

    /// Drops `db`, ending connections left open; a failure is reported, not
    /// returned (the measurement stands).
    async fn drop_db(&self, db: &Database) {
        let dropped = async {
            let mut admin = self.admin().await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    db.name
                )))
                .await?;
            drop(admin.close().await);
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            progress(&format!("could not drop database {}: {e:#}", db.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_keep_credentials_and_options() {
        let s = Server::new("postgres://u:p@h:5433/app?sslmode=disable");
        assert_eq!(s.url("x"), "postgres://u:p@h:5433/x?sslmode=disable");
        assert_eq!(s.admin_db, "app");
        let s = Server::new("postgres://postgres@127.0.0.1:5432");
        assert_eq!(s.url("x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(s.admin_db, "postgres");
    }

    #[test]
    fn pgbench_figures_are_parsed() {
        let out = "latency average = 0.771 ms\ntps = 1296.5 (without initial connection time)\n";
        assert_eq!(figure(out, "tps = "), Some(1296.5));
        assert_eq!(figure(out, "latency average = "), Some(0.771));
        assert_eq!(figure(out, "nope"), None);
    }
}
