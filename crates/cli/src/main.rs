//! `videogen`: one binary for every role.
//!
//! - `serve`: API, scheduler, in-process workers and housekeeping over the
//!   embedded defaults (SQLite and local files under `--data-dir`).
//! - `config print`: the effective configuration of `serve` (flags,
//!   `VIDEOGEN_*` variables, `--config` file, defaults), secrets masked.
//! - `migrate`: apply the database migrations of the configured database.
//! - `keys`: create, list and revoke API keys and worker tokens (directly on
//!   the data dir).
//! - `jobs`: operator commands on a running server (dead letters, retry).
//! - `worker`: a worker process that runs jobs for a server over HTTP.
//! - `generate`: submit a prompt to a running server and download the MP4.
//! - `chaos`: the fleet under SIGKILL/SIGTERM/SIGSTOP, with end-to-end checks.
//! - `bench`: reproducible benchmarks behind docs/PERFORMANCE.md.
//!
//! `chaos` and `bench` live in `videogen-bench`; this binary only dispatches
//! to them, and leaves them out without the `bench` feature.

mod config;
mod fanout;
mod generate;
mod gpu;
mod jobs;
mod keys;
mod process;
mod registry;
mod serve;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "videogen", version, about = "Self-hosted text-to-video generation platform")]
struct Cli {
    #[command(flatten)]
    log: config::Flags<config::LogOptions>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: HTTP API, scheduler and workers.
    Serve(config::ServeArgs),
    /// Show the configuration `serve` would run with.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Apply the database migrations (`serve` also applies them on start) and exit.
    Migrate(config::ServeArgs),
    /// Manage API keys and worker tokens.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Inspect and re-run dead-lettered jobs on a running server (admin key).
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Run jobs for a server (over its internal worker API).
    Worker(worker::WorkerArgs),
    /// Generate a video on a running server and save it.
    Generate(generate::GenerateArgs),
    /// Kill, stop and preempt workers while jobs run; check nothing is lost or doubled.
    #[cfg(feature = "bench")]
    Chaos(videogen_bench::chaos::ChaosArgs),
    /// Run a benchmark.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(videogen_bench::BenchCommand),
}

/// Runs the command; an error is one `error: …` line on stderr (its causes
/// joined with `: `), never a backtrace, and exit status 1.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let log = cli.log;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, &log).await,
            Command::Config(cmd) => config::run(cmd, &log),
            Command::Migrate(args) => serve::migrate(args, &log).await,
            Command::Keys(cmd) => keys::run(cmd).await,
            Command::Jobs(cmd) => jobs::run(cmd).await,
            Command::Worker(args) => worker::run(args, &log).await,
            Command::Generate(args) => generate::run(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(cmd) => videogen_bench::run(cmd).await,
            #[cfg(feature = "bench")]
            Command::Chaos(args) => videogen_bench::chaos::run(args).await,
        }
    })
}
