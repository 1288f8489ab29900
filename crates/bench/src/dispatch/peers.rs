//! `--peers`: the PostgreSQL job queues a user would pick instead of ours,
//! run in the same invocation as our PostgreSQL pipeline, on the same
//! server, each run on a fresh database.
//!
//! Each peer is a small driver script in `crates/bench/peers/` (ours) run
//! with the library that `crates/bench/peers/setup.sh` installed at a pinned
//! version under `target/peers/` (theirs, git-ignored). A driver prints one
//! JSON line ([`PeerRun`]). Two modes:
//! - **matching** ours: the workers start first, then `producers` tasks each
//!   enqueue one job per durable transaction; jobs/s runs from the first
//!   enqueue until every job's completion is committed (no-op handler);
//! - **batch**: the library's bulk insert puts every job in first (not
//!   timed), then jobs/s is how fast the workers drain them.
//!
//! A requested peer whose setup is missing is an error naming the command
//! that installs it, never a silent skip.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Longest a driver may run (setup, inserts, drain) before it is killed.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Peer {
    /// graphile-worker (Node.js).
    Graphile,
    /// pgqueuer (Python, asyncpg).
    Pgqueuer,
    /// procrastinate (Python, psycopg 3).
    Procrastinate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum PeerMode {
    Matching,
    Batch,
}

impl PeerMode {
    pub(super) const ALL: [Self; 2] = [Self::Matching, Self::Batch];

    fn arg(self) -> &'static str {
        match self {
            Self::Matching => "matching",
            Self::Batch => "batch",
        }
    }
}

/// Where the drivers and the installed libraries are.
#[derive(Clone, Debug)]
pub(super) struct PeerSetup {
    /// `crates/bench/peers/`: the driver scripts.
    pub drivers: PathBuf,
    /// `target/peers/` (or `--peers-dir`): what setup.sh installed.
    pub installs: PathBuf,
}

impl PeerSetup {
    /// The drivers beside this crate's sources; the installs where setup.sh
    /// puts them unless `installs` says otherwise.
    pub(super) fn new(installs: Option<PathBuf>) -> Self {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self {
            drivers: crate_dir.join("peers"),
            installs: installs.unwrap_or_else(|| crate_dir.join("../../target/peers")),
        }
    }
}

/// The program and script that run `peer`, with its environment.
struct Launch {
    program: PathBuf,
    script: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
}

impl Peer {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Graphile => "graphile-worker",
            Self::Pgqueuer => "pgqueuer",
            Self::Procrastinate => "procrastinate",
        }
    }

    fn setup_arg(self) -> &'static str {
        match self {
            Self::Graphile => "graphile",
            Self::Pgqueuer => "pgqueuer",
            Self::Procrastinate => "procrastinate",
        }
    }

    /// How to run this peer's driver, or why it cannot run.
    fn launch(self, setup: &PeerSetup) -> Result<Launch, String> {
        let (program, script, marker, env) = match self {
            Self::Graphile => {
                let modules = setup.installs.join("node/node_modules");
                (
                    PathBuf::from("node"),
                    setup.drivers.join("graphile.js"),
                    modules.join("graphile-worker/package.json"),
                    vec![("NODE_PATH", modules)],
                )
            }
            Self::Pgqueuer | Self::Procrastinate => {
                let venv = setup.installs.join(self.name());
                let python = venv.join("bin/python");
                let script = setup.drivers.join(format!("{}_driver.py", self.name()));
                (python.clone(), script, python, Vec::new())
            }
        };
        let missing = |what: &Path| {
            format!(
                "peer {} is not set up ({} is missing); run `bash {}/setup.sh {}`",
                self.name(),
                what.display(),
                setup.drivers.display(),
                self.setup_arg()
            )
        };
        if !script.is_file() {
            return Err(missing(&script));
        }
        if !marker.exists() {
            return Err(missing(&marker));
        }
        Ok(Launch { program, script, env })
    }

    /// Ok if the driver and its library are there (for a check before any run).
    pub(super) fn check(self, setup: &PeerSetup) -> Result<(), String> {
        self.launch(setup).map(drop)
    }
}

/// One driver run, as the driver reports it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeerRun {
    pub peer: String,
    pub version: String,
    pub mode: String,
    pub workers: usize,
    /// Producers enqueueing one job at a time (matching mode; 0 in batch mode).
    pub producers: usize,
    pub jobs: u64,
    /// Matching: first enqueue to last committed completion; batch: the drain.
    pub wall_s: f64,
    pub jobs_per_sec: f64,
    /// Matching: until every job was enqueued; batch: the bulk insert (not in `wall_s`).
    pub enqueue_s: f64,
    /// `jobs_per_sec` / our pipeline's jobs/s with as many workers, same round.
    #[serde(default)]
    pub ratio_to_ours: Option<f64>,
    #[serde(default)]
    pub round: usize,
}

/// What one driver run is asked to do.
pub(super) struct PeerJob<'a> {
    pub peer: Peer,
    pub mode: PeerMode,
    pub url: &'a str,
    pub workers: usize,
    pub jobs: u64,
    pub producers: usize,
}

/// Runs the driver of `job.peer` on the (fresh) database at `job.url` and
/// parses the JSON line it prints last.
pub(super) async fn run(setup: &PeerSetup, job: &PeerJob<'_>) -> anyhow::Result<PeerRun> {
    let launch = job.peer.launch(setup).map_err(anyhow::Error::msg)?;
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.arg(&launch.script)
        .args(["--url", job.url, "--mode", job.mode.arg()])
        .args(["--workers", &job.workers.to_string()])
        .args(["--jobs", &job.jobs.to_string()])
        .args(["--producers", &job.producers.to_string()])
        .envs(launch.env.iter().map(|(k, v)| (k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{} driver ({} mode)", job.peer.name(), job.mode.arg());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {what}: {}", launch.program.display()))?;
    let out = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} still running after {} s", DRIVER_TIMEOUT.as_secs()))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        stdout.trim(),
        tail(&stderr, 2_000)
    );
    parse(&stdout).with_context(|| {
        format!(
            "{what} printed no result line: {}{}",
            stdout.trim(),
            tail(&stderr, 2_000)
        )
    })
}

/// The last non-empty line of a driver's stdout, as a [`PeerRun`].
fn parse(stdout: &str) -> anyhow::Result<PeerRun> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("empty output")?;
    Ok(serde_json::from_str(line)?)
}

/// At most the last `max` bytes of `s` (on a char boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_of_a_driver_is_its_result() {
        let out = "noise\n{\"peer\":\"pgqueuer\",\"version\":\"1.6.0\",\"mode\":\"batch\",\"workers\":8,\
                   \"producers\":0,\"jobs\":5000,\"wall_s\":2.5,\"jobs_per_sec\":2000.0,\"enqueue_s\":0.2}\n\n";
        let run = parse(out).unwrap();
        assert_eq!((run.peer.as_str(), run.workers, run.jobs), ("pgqueuer", 8, 5000));
        assert_eq!(run.ratio_to_ours, None);
        assert!(parse("").is_err());
        assert!(parse("not json\n").is_err());
    }

    #[test]
    fn a_peer_not_set_up_names_the_command_that_installs_it() {
        let setup = PeerSetup {
            drivers: PeerSetup::new(None).drivers,
            installs: PathBuf::from("/nonexistent/peers"),
        };
        for peer in [Peer::Graphile, Peer::Pgqueuer, Peer::Procrastinate] {
            let why = peer.check(&setup).unwrap_err();
            assert!(why.contains("is not set up"), "{why}");
            assert!(why.contains(&format!("setup.sh {}", peer.setup_arg())), "{why}");
        }
    }

    #[test]
    fn tail_keeps_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("aé", 1), "");
    }
}
