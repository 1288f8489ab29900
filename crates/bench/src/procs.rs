//! Starting `videogen serve` and `videogen worker` as child processes on
//! loopback, and reading their Prometheus metrics, for `videogen chaos` and
//! `videogen bench fleet`.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `serve --workers 0` on an ephemeral port; returns it and its base URL.
pub async fn start_server(
    exe: &Path,
    data: &Path,
    log: &Path,
    extra: &[String],
    admin_key: &str,
    worker_token: &str,
) -> anyhow::Result<(Child, String)> {
    start_server_on(exe, "127.0.0.1:0", data, log, extra, admin_key, worker_token).await
}

/// [`start_server`] listening on `listen` (a restarted server keeps its
/// address, so its workers find it again); the log is appended to.
pub async fn start_server_on(
    exe: &Path,
    listen: &str,
    data: &Path,
    log: &Path,
    extra: &[String],
    admin_key: &str,
    worker_token: &str,
) -> anyhow::Result<(Child, String)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", listen, "--workers", "0"])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("VIDEOGEN_API_KEY", admin_key)
        .env("VIDEOGEN_WORKER_TOKEN", worker_token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("videogen listening on ") {
                return anyhow::Ok(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not start within 60 s")??;
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, base))
}

/// Starts `worker --server base --name name`, logging to `log`.
pub fn start_worker(
    exe: &Path,
    base: &str,
    name: &str,
    log: &Path,
    extra: &[String],
    worker_token: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(exe)
        .args(["worker", "--server", base, "--name", name])
        .args(extra)
        .env("VIDEOGEN_WORKER_TOKEN", worker_token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting worker {name}"))
}

/// User + system CPU seconds `pid` has used so far (Linux `/proc/PID/stat`;
/// `None` elsewhere or once it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    /// `USER_HZ`: the unit of `/proc` CPU times, 100 on every Linux ABI.
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ", fields start at 3 (state); utime and stime are 14 and 15.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU seconds so far of every process named `comm` (e.g. `postgres`: the
/// server and all its backends), by process id.
pub fn cpu_seconds_by_name(comm: &str) -> std::collections::HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter_map(|pid| Some((pid, cpu_seconds(pid)?)))
        .collect()
}

/// CPU seconds used between two [`cpu_seconds_by_name`] snapshots (a
/// process that started in between counts whole, one that ended not at all).
pub fn cpu_seconds_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, a)| a - before.get(pid).copied().unwrap_or(0.0))
        .filter(|d| *d > 0.0)
        .sum()
}

/// Sum of a metric's samples over all label sets in a Prometheus text page
/// (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_reads_this_process() {
        let before = cpu_seconds(std::process::id()).expect("/proc/self/stat");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(cpu_seconds(std::process::id()).unwrap() >= before);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
