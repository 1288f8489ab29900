//! Process-wide set-up shared by the commands: logging, the metrics
//! recorder, the open-files limit, and waiting for a stop signal. A leaf: it
//! uses no other module.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;

use crate::config::LogFormat;

/// Logs to stderr at `RUST_LOG` (default `info`): coloured text only when
/// stderr is a terminal and `NO_COLOR` is unset or empty, or JSON lines.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A subscriber already installed (a second call) keeps logging as it was.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Descriptors kept for everything but client connections: the database,
/// blob files, Redis, worker sockets, the process's own.
const FDS_RESERVED: u64 = 1024;

/// Raises the open-files limit to its hard limit and returns the connection
/// cap that fits under it (`wanted` when it fits). Past the limit `accept`
/// fails with EMFILE for every client, so the cap must refuse first.
pub fn connection_budget(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit; keeping --max-connections as set");
            return wanted;
        }
    };
    let room = usize::try_from(limit.saturating_sub(FDS_RESERVED).max(16)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = room,
            "the open-files limit is too low for --max-connections; capping connections below it"
        );
    }
    wanted.min(room)
}

pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Returns on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
