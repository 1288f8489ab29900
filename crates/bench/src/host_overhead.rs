//! `videogen bench host`: what the model-host protocol costs per step.
//!
//! - **noop** (no model work: `python/videogen_host/adapters/noop.py`, a
//!   step only counts): the round trip of one `step` request through
//!   [`HostedModel`] (the worker's own path: the host mutex, one JSON frame
//!   each way over the Unix socket, the Python request loop), in µs; then
//!   raw `checkpoint` and `decode` round trips of the make-tiny request
//!   (64x32, 9 frames: a 2.6 KiB checkpoint, 9 frames of 6 KiB).
//! - **wan** (the tiny random Wan 2.1 pipeline of `make-tiny --adapter wan`,
//!   through the production diffusers path, classifier-free guidance on):
//!   seconds per step through [`HostedModel`] against the same steps of the
//!   same request timed inside a plain Python process (the adapter's
//!   `Generation.step`, no protocol), at a few output sizes. The two
//!   generations advance one step at a time, alternately (which side goes
//!   first alternates too), so adjacent steps see the same machine: on a
//!   shared machine the median of the paired differences is the figure to
//!   read. The difference is the protocol's share of a step; it is also
//!   estimated from the noop round trip over the in-process step. The
//!   in-process step is also timed from this side (one line over a pipe
//!   each way: the same process boundary and wake-ups, none of the host's
//!   framing or request loop), which splits the overhead into what any
//!   second process costs on this machine and what the protocol adds.
//!
//! Both run torch with one thread (`VIDEOGEN_HOST_THREADS=1`). Loading
//! (process start, imports, weights) is never timed; the first `--warmup`
//! steps of each generation are left out.

use anyhow::{Context, bail, ensure};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use videogen_model::{GenerationRequest, Model};

use crate::model_host::{self, Micros};
use crate::{Machine, print_json};

/// The issue's targets.
const TARGET_NOOP_STEP_US: f64 = 1000.0;
const TARGET_OVERHEAD_PERCENT: f64 = 1.0;
/// The request `make-tiny` documents for both tiny models.
const PROMPT: &str = "a red fox runs in the snow";
const SEED: u64 = 42;
const FPS: u32 = 16;
const WAN_GUIDANCE: f32 = 5.0;

#[derive(Args, Debug)]
pub struct HostArgs {
    /// The host interpreter (default: `VIDEOGEN_HOST_PYTHON`, else target/host-venv/bin/python).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Timed `step` round trips on the noop model.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=9000))]
    steps: u32,
    /// Timed `checkpoint` and `decode` round trips each on the noop model.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    ops: u32,
    /// Tiny-Wan output sizes, WIDTHxHEIGHTxFRAMES (multiples of 16; frames 4k+1; at most 512 high and wide).
    #[arg(long, value_delimiter = ',', default_value = "32x32x9,128x128x17,256x256x33")]
    wan_sizes: Vec<String>,
    /// Timed steps per tiny-Wan size, on each side.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=5000))]
    wan_steps: u32,
    /// Untimed steps at the start of every generation.
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    build: &'static str,
    host: String,
    torch_threads: &'static str,
    noop: Noop,
    wan: Vec<WanSize>,
    target_noop_step_us: f64,
    target_overhead_percent: f64,
    loadavg_1m_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Noop {
    request: String,
    /// One `step` through `HostedModel` (reply: step, total, preview).
    step: Micros,
    /// One `checkpoint` (the reply carries it as the payload).
    checkpoint: Micros,
    checkpoint_bytes: usize,
    /// One `decode`: the reply, then one `frame` message per frame.
    decode: Micros,
    decode_bytes: usize,
}

#[derive(Debug, Serialize)]
struct WanSize {
    size: String,
    /// The latent tensor the step works on.
    latent_shape: Vec<u64>,
    /// Timed steps on each side (interleaved one by one).
    steps: u32,
    /// `Generation.step` in a plain Python process, ms.
    in_process: Side,
    /// What the host also computes for each step reply (mean and std of the latents), ms.
    preview_ms_mean: f64,
    /// `HostedGeneration::step` (request, the host's step and preview, reply), ms.
    hosted: Side,
    /// hosted mean - in-process mean, ms.
    overhead_ms_mean: f64,
    /// The median of (hosted - in-process) over adjacent pairs of steps, ms.
    overhead_ms_paired_p50: f64,
    /// `overhead_ms_mean` over the in-process mean.
    overhead_percent_mean: f64,
    /// `overhead_ms_paired_p50` over the in-process median.
    overhead_percent_paired_p50: f64,
    /// The noop `step` round trip (p50) over the in-process step (p50).
    noop_estimate_percent: f64,
    /// The in-process step as timed here: a line to the Python process and
    /// its answer (a process boundary, two wake-ups, no framing), ms.
    in_process_round_trip: Side,
    /// The median of (hosted - (that round trip + the preview)) over
    /// adjacent steps: what the host protocol costs beyond any process
    /// boundary, ms; and over the in-process median, %.
    beyond_pipe_ms_paired_p50: f64,
    beyond_pipe_percent_paired_p50: f64,
}

#[derive(Debug, Default, Serialize)]
struct Side {
    count: usize,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    min_ms: f64,
}

impl Side {
    fn of(samples: &mut [Duration]) -> Self {
        let p = crate::Percentiles::of(samples);
        Self {
            count: p.count,
            mean_ms: p.mean_ms,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
            min_ms: samples.first().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        }
    }
}

/// An output size of the tiny Wan model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Size {
    width: u32,
    height: u32,
    frames: u32,
}

impl Size {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<u32> = s
            .split('x')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--wan-sizes: {s:?} is not WIDTHxHEIGHTxFRAMES"))?;
        let [width, height, frames] = parts[..] else {
            bail!("--wan-sizes: {s:?} is not WIDTHxHEIGHTxFRAMES");
        };
        ensure!(
            width.is_multiple_of(16)
                && height.is_multiple_of(16)
                && (16..=512).contains(&width)
                && (16..=512).contains(&height),
            "--wan-sizes: {s}: width and height must be multiples of 16 in 16..=512 (the tiny model's rotary table)"
        );
        ensure!(
            frames % 4 == 1 && frames <= 125,
            "--wan-sizes: {s}: frames must be 4k+1, at most 125"
        );
        Ok(Self { width, height, frames })
    }

    fn label(&self) -> String {
        format!("{}x{}x{}", self.width, self.height, self.frames)
    }
}

pub async fn run(args: HostArgs) -> anyhow::Result<()> {
    let sizes: Vec<Size> = args
        .wan_sizes
        .iter()
        .map(|s| Size::parse(s))
        .collect::<Result<_, _>>()?;
    let machine = Machine::detect();
    let python = model_host::python(args.python.as_deref())?;
    let host_version = model_host::versions(&python);
    let dir = tempfile::Builder::new().prefix("videogen-bench-host-").tempdir()?;
    let noop_dir = dir.path().join("noop");
    let wan_dir = dir.path().join("wan");
    eprintln!("[bench host] writing the tiny noop and Wan pipelines (make-tiny)");
    model_host::make_tiny(&python, "noop", &noop_dir)?;
    model_host::make_tiny(&python, "wan", &wan_dir)?;

    let noop = {
        let (python, noop_dir) = (python.clone(), noop_dir.clone());
        let (steps, ops, warmup) = (args.steps, args.ops, args.warmup);
        tokio::task::spawn_blocking(move || noop_bench(&python, &noop_dir, steps, ops, warmup)).await??
    };
    let wan = {
        let (python, wan_dir) = (python.clone(), wan_dir.clone());
        let (steps, warmup) = (args.wan_steps, args.warmup);
        let noop_p50_us = noop.step.p50_us;
        tokio::task::spawn_blocking(move || wan_bench(&python, &wan_dir, &sizes, steps, warmup, noop_p50_us)).await??
    };
    let report = Report {
        bench: "host",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        host: host_version,
        torch_threads: model_host::HOST_THREADS,
        noop,
        wan,
        target_noop_step_us: TARGET_NOOP_STEP_US,
        target_overhead_percent: TARGET_OVERHEAD_PERCENT,
        loadavg_1m_after: crate::loadavg_1m(),
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

fn request(width: u32, height: u32, frames: u32, steps: u32) -> GenerationRequest {
    let mut r = GenerationRequest::new(PROMPT, SEED, width, height, frames);
    r.steps = steps;
    r.fps = FPS;
    r
}

fn model_err(e: videogen_model::ModelError) -> anyhow::Error {
    anyhow::anyhow!("model host: {e}")
}

fn noop_bench(python: &Path, dir: &Path, steps: u32, ops: u32, warmup: u32) -> anyhow::Result<Noop> {
    let host = model_host::host("bench-noop", python);
    let model = model_host::hosted(host.clone(), "noop", "noop", dir);
    model.load().map_err(model_err)?;
    let (w, h, f) = (64, 32, 9);

    eprintln!("[bench host] noop: {steps} step round trips");
    let mut g = model.start(&request(w, h, f, warmup + steps)).map_err(model_err)?;
    for _ in 0..warmup {
        g.step().map_err(model_err)?;
    }
    let mut step_t = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let t = Instant::now();
        g.step().map_err(model_err)?;
        step_t.push(t.elapsed());
    }
    ensure!(g.is_done(), "noop generation not done after its steps");

    eprintln!("[bench host] noop: {ops} checkpoint and {ops} decode round trips");
    let mut g = model.start(&request(w, h, f, ops + 2)).map_err(model_err)?;
    g.step().map_err(model_err)?;
    let mut ck_t = Vec::with_capacity(ops as usize);
    let mut checkpoint_bytes = 0;
    for _ in 0..warmup {
        g.checkpoint().map_err(model_err)?;
    }
    for _ in 0..ops {
        let t = Instant::now();
        let ck = g.checkpoint().map_err(model_err)?;
        ck_t.push(t.elapsed());
        checkpoint_bytes = ck.len();
    }
    // A step clears the cached preview, so each decode_frame decodes the clip again.
    let mut dec_t = Vec::with_capacity(ops as usize);
    for _ in 0..ops {
        g.step().map_err(model_err)?;
        let t = Instant::now();
        let frame = g.decode_frame(0);
        dec_t.push(t.elapsed());
        ensure!(frame.data.len() == (w * h * 3) as usize, "noop decoded a short frame");
    }
    drop(g);
    host.shutdown();
    Ok(Noop {
        request: format!("{w}x{h}, {f} frames"),
        step: Micros::of(&mut step_t),
        checkpoint: Micros::of(&mut ck_t),
        checkpoint_bytes,
        decode: Micros::of(&mut dec_t),
        decode_bytes: (w * h * 3 * f) as usize,
    })
}

/// The tiny Wan model inside one Python process, loaded as the host loads
/// it, driven one line at a time on stdin: `start W H F STEPS` starts the
/// request the worker sends (answers the latent shape), `step` runs one
/// `Generation.step` and answers its time and the preview's (the host
/// computes a preview for every step reply) in seconds.
const IN_PROCESS_LOOP: &str = r#"
import json, sys, time
from videogen_host import adapters, runtime
from videogen_host.adapters.base import ModelSpec
from videogen_host.request import parse_request
cfg = json.loads(sys.argv[1])
runtime.set_environment()
model = adapters.load(ModelSpec(id="wan", adapter="wan", path=cfg["path"], dtype="float32"), "cpu")
model.device_kind = "cpu"
torch = runtime.setup_torch()
print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
gen = None
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "start":
        w, h, f, steps = (int(x) for x in cmd[1:5])
        req = {"prompt": cfg["prompt"], "negative_prompt": None, "seed": cfg["seed"], "width": w, "height": h,
               "frames": f, "fps": cfg["fps"], "steps": steps, "guidance_scale": cfg["guidance"], "image": None}
        if gen is not None:
            gen.close()
        gen = model.start(parse_request(req, None))
        print(json.dumps({"shape": list(gen.latents.shape)}), flush=True)
    elif cmd[0] == "step":
        t = time.perf_counter()
        gen.step()
        step = time.perf_counter() - t
        t = time.perf_counter()
        gen.preview()
        print(json.dumps({"step_s": step, "preview_s": time.perf_counter() - t}), flush=True)
    else:
        break
"#;

/// The Python process of [`IN_PROCESS_LOOP`].
struct InProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl InProcess {
    fn start(python: &Path, dir: &Path) -> anyhow::Result<Self> {
        let cfg = serde_json::json!({
            "path": dir, "prompt": PROMPT, "seed": SEED, "fps": FPS, "guidance": WAN_GUIDANCE,
        });
        let mut child = std::process::Command::new(python)
            .args(["-c", IN_PROCESS_LOOP])
            .arg(cfg.to_string())
            .env("VIDEOGEN_HOST_THREADS", model_host::HOST_THREADS)
            .env("VIDEOGEN_HOST_DEVICE", "cpu")
            .env("VIDEOGEN_HOST_LOG", "WARNING")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the in-process Python loop")?;
        let stdin = child.stdin.take().context("the loop's stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("the loop's stdout")?);
        let mut p = Self { child, stdin, stdout };
        let hello = p.reply()?;
        let threads = hello["threads"].as_u64().unwrap_or(0);
        ensure!(
            threads.to_string() == model_host::HOST_THREADS,
            "the in-process loop runs {threads} torch threads"
        );
        Ok(p)
    }

    fn reply(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the in-process Python loop exited (run it by hand: {IN_PROCESS_LOOP_HINT})");
        }
        serde_json::from_str(line.trim()).with_context(|| format!("the in-process loop said {line:?}"))
    }

    fn send(&mut self, line: &str) -> anyhow::Result<serde_json::Value> {
        use std::io::Write;
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.reply()
    }

    /// Starts `size`; returns the latent shape.
    fn begin(&mut self, size: Size, steps: u32) -> anyhow::Result<Vec<u64>> {
        let r = self.send(&format!("start {} {} {} {steps}", size.width, size.height, size.frames))?;
        Ok(r["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default())
    }

    /// One step: (step, preview) as timed inside Python, and the whole
    /// exchange as timed here (a process boundary with a one-line protocol).
    fn step(&mut self) -> anyhow::Result<LocalStep> {
        let t = Instant::now();
        let r = self.send("step")?;
        let round_trip = t.elapsed();
        let d = |k: &str| Duration::from_secs_f64(r[k].as_f64().unwrap_or(0.0).max(0.0));
        Ok(LocalStep {
            step: d("step_s"),
            preview: d("preview_s"),
            round_trip,
        })
    }
}

struct LocalStep {
    step: Duration,
    preview: Duration,
    round_trip: Duration,
}

const IN_PROCESS_LOOP_HINT: &str = "a broken virtualenv or make-tiny pipeline; see scripts/host-venv.sh";

impl Drop for InProcess {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mean(v: &[Duration]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64
}

/// The median of `v` (sorted in place); 0 when empty.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn wan_bench(
    python: &Path,
    dir: &Path,
    sizes: &[Size],
    steps: u32,
    warmup: u32,
    noop_p50_us: f64,
) -> anyhow::Result<Vec<WanSize>> {
    let host = model_host::host("bench-wan", python);
    let model = model_host::hosted(host.clone(), "wan-tiny", "wan", dir);
    eprintln!("[bench host] tiny Wan: loading it in the host and in a plain Python process");
    model.load().map_err(model_err)?;
    let mut local = InProcess::start(python, dir)?;
    let mut out = Vec::new();
    for size in sizes {
        eprintln!(
            "[bench host] tiny Wan {}: {steps} steps each way, interleaved",
            size.label()
        );
        let total = warmup + steps;
        let mut req = request(size.width, size.height, size.frames, total);
        req.guidance_scale = Some(WAN_GUIDANCE);
        let mut g = model.start(&req).map_err(model_err)?;
        let latent_shape = local.begin(*size, total)?;
        for _ in 0..warmup {
            g.step().map_err(model_err)?;
            local.step()?;
        }
        let (mut hosted, mut inproc, mut previews, mut piped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut diffs_ms, mut pipe_diffs_ms) = (Vec::new(), Vec::new());
        for i in 0..steps {
            // Alternate which side goes first, so neither always follows the other.
            let time_hosted = |g: &mut Box<dyn videogen_model::Generation>| -> anyhow::Result<Duration> {
                let t = Instant::now();
                g.step().map_err(model_err)?;
                Ok(t.elapsed())
            };
            let (h, l) = if i % 2 == 0 {
                let h = time_hosted(&mut g)?;
                (h, local.step()?)
            } else {
                let l = local.step()?;
                (time_hosted(&mut g)?, l)
            };
            diffs_ms.push((h.as_secs_f64() - l.step.as_secs_f64()) * 1e3);
            pipe_diffs_ms.push((h.as_secs_f64() - (l.round_trip.as_secs_f64() + l.preview.as_secs_f64())) * 1e3);
            hosted.push(h);
            inproc.push(l.step);
            previews.push(l.preview);
            piped.push(l.round_trip);
        }
        drop(g);
        let preview_ms_mean = mean(&previews) * 1e3;
        let inp = Side::of(&mut inproc);
        let hos = Side::of(&mut hosted);
        let pct = |over: f64, base: f64| if base > 0.0 { over / base * 100.0 } else { 0.0 };
        let overhead_ms_mean = hos.mean_ms - inp.mean_ms;
        let overhead_ms_paired_p50 = median(&mut diffs_ms);
        let beyond_pipe_ms_paired_p50 = median(&mut pipe_diffs_ms);
        out.push(WanSize {
            in_process_round_trip: Side::of(&mut piped),
            beyond_pipe_ms_paired_p50,
            beyond_pipe_percent_paired_p50: pct(beyond_pipe_ms_paired_p50, inp.p50_ms),
            size: size.label(),
            latent_shape,
            steps,
            preview_ms_mean,
            overhead_ms_mean,
            overhead_ms_paired_p50,
            overhead_percent_mean: pct(overhead_ms_mean, inp.mean_ms),
            overhead_percent_paired_p50: pct(overhead_ms_paired_p50, inp.p50_ms),
            noop_estimate_percent: pct(noop_p50_us / 1e3, inp.p50_ms),
            in_process: inp,
            hosted: hos,
        });
    }
    drop(local);
    host.shutdown();
    Ok(out)
}

fn print_report(r: &Report) {
    println!("videogen bench host: model-host protocol overhead per step");
    r.machine.print();
    println!(
        "host: {}; VIDEOGEN_HOST_THREADS={} on both sides",
        r.host, r.torch_threads
    );
    let n = &r.noop;
    let line = |name: &str, m: &Micros| {
        println!(
            "  {name:<11} p50 {:>8.1}  p99 {:>8.1}  mean {:>8.1}  max {:>9.1} µs  ({} round trips)",
            m.p50_us, m.p99_us, m.mean_us, m.max_us, m.count
        )
    };
    println!("\nnoop adapter (no model work), {} through HostedModel:", n.request);
    line("step", &n.step);
    line("checkpoint", &n.checkpoint);
    line("decode", &n.decode);
    println!(
        "  checkpoint {} bytes; decode {} bytes of frames; target: step < {:.0} µs: {}",
        n.checkpoint_bytes,
        n.decode_bytes,
        r.target_noop_step_us,
        if n.step.p50_us < r.target_noop_step_us && n.step.p99_us < r.target_noop_step_us {
            "met (p50 and p99)"
        } else if n.step.p50_us < r.target_noop_step_us {
            "met at p50, not at p99"
        } else {
            "NOT met"
        }
    );
    println!(
        "\ntiny Wan (make-tiny --adapter wan, guidance 5.0), ms per step; hosted and in-process steps interleaved one by one:"
    );
    println!(
        "  {:<12} {:>16} {:>6} {:>12} {:>12} {:>11} {:>11} {:>12} {:>10} {:>10} {:>11} {:>12}",
        "size",
        "latents",
        "steps",
        "in-proc p50",
        "in-proc mean",
        "hosted p50",
        "hosted mean",
        "paired p50",
        "by means",
        "noop est.",
        "piped p50",
        "beyond pipe"
    );
    for w in &r.wan {
        let shape = w.latent_shape.iter().map(u64::to_string).collect::<Vec<_>>().join("x");
        println!(
            "  {:<12} {:>16} {:>6} {:>12.3} {:>12.3} {:>11.3} {:>11.3} {:>+11.2}% {:>+9.2}% {:>9.2}% {:>11.3} {:>+11.2}%",
            w.size,
            shape,
            w.steps,
            w.in_process.p50_ms,
            w.in_process.mean_ms,
            w.hosted.p50_ms,
            w.hosted.mean_ms,
            w.overhead_percent_paired_p50,
            w.overhead_percent_mean,
            w.noop_estimate_percent,
            w.in_process_round_trip.p50_ms,
            w.beyond_pipe_percent_paired_p50
        );
    }
    println!(
        "  paired p50 = median of (hosted - in-process) over adjacent steps / in-process p50; by means = hosted mean /\n  \
         in-process mean - 1; noop est. = noop step p50 / in-process p50; piped = the in-process step timed from here\n  \
         (one line over a pipe each way); beyond pipe = median of (hosted - piped - preview) / in-process p50. The\n  \
         host also computes each reply's preview (mean, std of the latents), inside the hosted figure: {} ms mean.\n  \
         Target: overhead < {:.0} % of the step",
        r.wan
            .iter()
            .map(|w| format!("{} {:.3}", w.size, w.preview_ms_mean))
            .collect::<Vec<_>>()
            .join(", "),
        r.target_overhead_percent
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn wan_sizes_parse_and_are_checked() {
        assert_eq!(
            Size::parse("256x128x33").unwrap(),
            Size {
                width: 256,
                height: 128,
                frames: 33
            }
        );
        assert!(Size::parse("250x128x33").is_err(), "not a multiple of 16");
        assert!(Size::parse("256x128x32").is_err(), "frames not 4k+1");
        assert!(Size::parse("1024x128x33").is_err(), "past the rotary table");
        assert!(Size::parse("256x128").is_err());
    }
}
