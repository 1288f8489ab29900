//! `videogen`: one binary for every role.
//!
//! - `serve`: API, scheduler, in-process workers and housekeeping over the
//!   embedded defaults (SQLite and local files under `--data-dir`).
//! - `keys`: create, list and revoke API keys (directly on the data dir).
//! - `generate`: submit a prompt to a running server and download the MP4.
//! - `bench`: reproducible benchmarks behind docs/PERFORMANCE.md.

mod bench;
mod generate;
mod keys;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "videogen", version, about = "Self-hosted text-to-video generation platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: HTTP API, scheduler and workers.
    Serve(serve::ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Generate a video on a running server and save it.
    Generate(generate::GenerateArgs),
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Keys(cmd) => keys::run(cmd).await,
            Command::Generate(args) => generate::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
        }
    })
}
