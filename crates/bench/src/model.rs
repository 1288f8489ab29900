//! `videogen bench model`: seconds per clip for the reference model plus
//! encoding, for every allowed size at 4 seconds (96 frames at 24 fps).
//!
//! Per clip: **generate** = `start` + every step (with the default config a
//! step sleeps up to its 100 ms step time, standing in for a GPU);
//! **decode+encode** = the worker's encode path: decode every frame, H.264
//! encode and mux it, a thumbnail of the middle frame and a 10-frame
//! spritesheet. Output moderation (a few extra decodes and hashes) and blob
//! uploads are not included. Clips run one at a time on a blocking thread.

use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};
use videogen_core::spec::{FPS, Seconds, VideoSize};
use videogen_model::{GenerationRequest, Model, REFERENCE_DEFAULT_STEPS, ReferenceConfig, ReferenceModel};

use crate::{Machine, print_json};

/// The limit for a default 4 s 1280x720 clip.
const TARGET_SECS: f64 = 30.0;
/// Same layout as the worker's encode path (`videogen_worker::runner`).
const THUMBNAIL_MAX_WIDTH: u32 = 640;
const SPRITESHEET_FRAMES: u32 = 10;
const SPRITESHEET_COLS: u32 = 5;
const SPRITESHEET_TILE_WIDTH: u32 = 192;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Denoising steps per clip.
    #[arg(long, default_value_t = REFERENCE_DEFAULT_STEPS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    steps: u32,
    /// Skip the default-step-time runs (they sleep 100 ms a step).
    #[arg(long)]
    instant_only: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Clip {
    config: &'static str,
    step_time_ms: u64,
    size: String,
    seconds: u32,
    frames: u32,
    steps: u32,
    generate_s: f64,
    decode_s: f64,
    encode_s: f64,
    decode_encode_s: f64,
    total_s: f64,
    mp4_bytes: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    machine: Machine,
    build: &'static str,
    target_secs_default_1280x720: f64,
    clips: Vec<Clip>,
}

pub async fn run(args: ModelArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let mut configs = vec![("instant", ReferenceConfig::instant())];
    if !args.instant_only {
        configs.push(("default", ReferenceConfig::default()));
    }
    let mut clips = Vec::new();
    for (name, cfg) in configs {
        let model = std::sync::Arc::new(ReferenceModel::new(cfg));
        for size in VideoSize::OPENAI {
            eprintln!("[bench model] {name} step time, {size}, 4 s, {} steps", args.steps);
            let (model, steps) = (model.clone(), args.steps);
            let clip = tokio::task::spawn_blocking(move || clip(&model, name, size, steps)).await??;
            clips.push(clip);
        }
    }
    let report = Report {
        bench: "model",
        machine,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        target_secs_default_1280x720: TARGET_SECS,
        clips,
    };
    if args.json {
        print_json(&report)
    } else {
        print_report(&report);
        Ok(())
    }
}

fn print_report(r: &Report) {
    println!("videogen bench model: reference model + H.264/MP4 encode, 4 s clips (96 frames)");
    r.machine.print();
    println!(
        "\n{:<9} {:>7} {:<10} {:>6} {:>11} {:>9} {:>9} {:>14} {:>9} {:>10}",
        "config", "step ms", "size", "steps", "generate s", "decode s", "encode s", "dec+enc s", "total s", "mp4 KiB"
    );
    for c in &r.clips {
        println!(
            "{:<9} {:>7} {:<10} {:>6} {:>11.2} {:>9.2} {:>9.2} {:>14.2} {:>9.2} {:>10.0}",
            c.config,
            c.step_time_ms,
            c.size,
            c.steps,
            c.generate_s,
            c.decode_s,
            c.encode_s,
            c.decode_encode_s,
            c.total_s,
            c.mp4_bytes as f64 / 1024.0
        );
    }
    if let Some(c) = r.clips.iter().find(|c| c.config == "default" && c.size == "1280x720") {
        let verdict = if c.total_s < r.target_secs_default_1280x720 {
            "meets"
        } else {
            "MISSES"
        };
        println!(
            "\ndefault 4 s 1280x720 clip: {:.2} s, {verdict} the < {:.0} s target",
            c.total_s, r.target_secs_default_1280x720
        );
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Generates and encodes one clip, timing each part.
fn clip(model: &ReferenceModel, config: &'static str, size: VideoSize, steps: u32) -> anyhow::Result<Clip> {
    let (width, height) = size.dims();
    let seconds = Seconds::S4;
    let mut req = GenerationRequest::new(
        "a red fox trotting through fresh snow at dawn, cinematic",
        42,
        width,
        height,
        seconds.frames(),
    );
    req.steps = steps;

    let started = Instant::now();
    let mut generation = model.start(&req)?;
    while !generation.is_done() {
        generation.step()?;
    }
    let generate = started.elapsed();

    let n = generation.frame_count();
    let thumb_index = n / 2;
    let count = SPRITESHEET_FRAMES.min(n).max(1);
    let sprite_indices: Vec<u32> = (0..count).map(|k| k * n / count).collect();
    let mut sprites = Vec::with_capacity(sprite_indices.len());
    let (mut decode, mut encode) = (Duration::ZERO, Duration::ZERO);
    let mut enc = videogen_media::Mp4Encoder::new(width, height, FPS)?;
    for i in 0..n {
        let t0 = Instant::now();
        let frame = generation.decode_frame(i);
        let t1 = Instant::now();
        enc.push_rgb(&frame.data)?;
        if i == thumb_index {
            videogen_media::thumbnail_jpeg(frame.width, frame.height, &frame.data, THUMBNAIL_MAX_WIDTH)?;
        }
        decode += t1 - t0;
        encode += t1.elapsed();
        if sprite_indices.contains(&i) {
            sprites.push(frame);
        }
    }
    let t0 = Instant::now();
    let mp4 = enc.finish()?;
    let refs: Vec<(u32, u32, &[u8])> = sprites.iter().map(|f| (f.width, f.height, f.data.as_slice())).collect();
    videogen_media::spritesheet_jpeg(&refs, SPRITESHEET_COLS, SPRITESHEET_TILE_WIDTH)?;
    encode += t0.elapsed();
    let total = started.elapsed();

    Ok(Clip {
        config,
        step_time_ms: model.config().step_time.as_millis() as u64,
        size: size.to_string(),
        seconds: seconds.get(),
        frames: n,
        steps,
        generate_s: secs(generate),
        decode_s: secs(decode),
        encode_s: secs(encode),
        decode_encode_s: secs(decode + encode),
        total_s: secs(total),
        mp4_bytes: mp4.len(),
    })
}
