//! `videogen bench slow-clients`: a slow-connection attack on a real
//! `videogen serve` process. N connections each send half a request line and
//! hold; meanwhile a prober opens a fresh connection for `GET /healthz` at a
//! steady rate. The report compares the probes' latency before and during the
//! hold, counts probes that failed, and counts how the server treated the
//! attackers (closed by the header-read timeout, refused at the connection
//! cap, or still open at the end).

use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Machine, Percentiles, print_json, procs};

#[derive(clap::Args, Debug)]
pub struct SlowClientsArgs {
    /// Connections that send half a request line and hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    connections: u64,
    /// How long the attackers hold, in seconds (longer than the server's header-read timeout shows it closing them).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    hold_secs: u64,
    /// `/healthz` probes per second, each on a new connection.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    probe_rate: u64,
    /// The `videogen` binary whose `serve` is attacked (default: this one), e.g. an older build to compare.
    #[arg(long)]
    server_exe: Option<std::path::PathBuf>,
    /// Extra flags for the `videogen serve` under test (e.g. `--header-read-timeout=5s`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// One JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    connections: u64,
    hold_secs: u64,
    server_exe: Option<String>,
    server_args: Vec<String>,
    /// Attackers that could not even connect (the client's own limits, or the backlog).
    connect_failed: usize,
    /// Attackers answered 503 at the server's connection cap.
    refused_at_cap: usize,
    /// Attackers the server closed before the hold ended (header-read timeout).
    closed_by_server: usize,
    /// Attackers still open when the hold ended.
    still_open: usize,
    probes_before: Percentiles,
    probes_during: Percentiles,
    probe_failures_before: usize,
    probe_failures_during: usize,
}

/// What became of one attacking connection.
#[derive(Default)]
struct Tally {
    connect_failed: AtomicUsize,
    refused: AtomicUsize,
    closed: AtomicUsize,
    open: AtomicUsize,
}

const HALF_REQUEST: &[u8] = b"GET /healthz HT";
/// A probe slower than this counts as failed (and is abandoned).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: SlowClientsArgs) -> anyhow::Result<()> {
    // The attackers need a descriptor each, like the server.
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-files limit")?;
    anyhow::ensure!(
        limit > args.connections + 256,
        "the open-files limit is {limit}, too low for {} connections (raise the hard limit)",
        args.connections
    );
    let dir = tempfile::tempdir()?;
    let exe = match &args.server_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("locating the videogen binary")?,
    };
    let (mut server, base) = procs::start_server(
        &exe,
        dir.path(),
        &dir.path().join("server.log"),
        &args.server_args,
        "vg_bench_admin_key_0123456789",
        "vgw_bench_worker_token_0123456789",
    )
    .await?;
    let addr = base.trim_start_matches("http://").to_owned();
    eprintln!("[bench slow-clients] server at {base}; probing before the attack");
    let (mut before, failures_before) = probe(&addr, args.probe_rate, Duration::from_secs(3)).await;

    eprintln!(
        "[bench slow-clients] opening {} half-request connections",
        args.connections
    );
    let tally = Arc::new(Tally::default());
    let hold = Duration::from_secs(args.hold_secs);
    let attack_started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (addr, tally) = (addr.clone(), tally.clone());
        attackers.spawn(async move { attack(&addr, attack_started + hold, &tally).await });
    }
    let (mut during, failures_during) = probe(&addr, args.probe_rate, hold).await;
    while attackers.join_next().await.is_some() {}
    let _ = server.kill().await;

    let report = Report {
        bench: "slow-clients",
        machine: Machine::detect(),
        connections: args.connections,
        hold_secs: args.hold_secs,
        server_exe: args.server_exe.map(|p| p.display().to_string()),
        server_args: args.server_args,
        connect_failed: tally.connect_failed.load(Ordering::Relaxed),
        refused_at_cap: tally.refused.load(Ordering::Relaxed),
        closed_by_server: tally.closed.load(Ordering::Relaxed),
        still_open: tally.open.load(Ordering::Relaxed),
        probes_before: Percentiles::of(&mut before),
        probes_during: Percentiles::of(&mut during),
        probe_failures_before: failures_before,
        probe_failures_during: failures_during,
    };
    if args.json {
        return print_json(&report);
    }
    report.machine.print();
    println!(
        "slow clients: {} connections holding half a request line for {} s",
        report.connections, report.hold_secs
    );
    println!(
        "  attackers: {} closed by the server, {} refused at the cap (503), {} still open at the end, {} could not connect",
        report.closed_by_server, report.refused_at_cap, report.still_open, report.connect_failed
    );
    for (name, p, failed) in [
        ("before", &report.probes_before, report.probe_failures_before),
        ("during", &report.probes_during, report.probe_failures_during),
    ] {
        println!(
            "  /healthz {name}: {} ok, {failed} failed; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.count, p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    Ok(())
}

/// One attacker: connect, send half a request line, wait for the server to
/// answer or close, until `until`.
async fn attack(addr: &str, until: Instant, tally: &Tally) {
    let Ok(Ok(mut s)) = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await else {
        tally.connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = s.write_all(HALF_REQUEST).await;
    let mut buf = [0u8; 512];
    match tokio::time::timeout_at(until.into(), s.read(&mut buf)).await {
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 503") => tally.refused.fetch_add(1, Ordering::Relaxed),
        Ok(_) => tally.closed.fetch_add(1, Ordering::Relaxed),
        Err(_) => tally.open.fetch_add(1, Ordering::Relaxed),
    };
}

/// `GET /healthz` on a new connection every `1/rate` s for `length`: the
/// latencies of those answered 200, and how many were not.
async fn probe(addr: &str, rate: u64, length: Duration) -> (Vec<Duration>, usize) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + length;
    let mut probes = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        let addr = addr.to_owned();
        probes.spawn(async move {
            let started = Instant::now();
            let ok = tokio::time::timeout(PROBE_TIMEOUT, healthz(&addr))
                .await
                .is_ok_and(|ok| ok);
            ok.then(|| started.elapsed())
        });
    }
    let (mut ok, mut failed) = (Vec::new(), 0);
    while let Some(r) = probes.join_next().await {
        match r.ok().flatten() {
            Some(d) => ok.push(d),
            None => failed += 1,
        }
    }
    (ok, failed)
}

async fn healthz(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.is_ok() && out.starts_with(b"HTTP/1.1 200")
}
