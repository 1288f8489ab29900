//! Generates one clip with the reference model and reports timings.
//!
//! ```text
//! cargo run --release -p videogen-model --example reference_clip -- \
//!     [prompt] [seed] [WIDTHxHEIGHT] [frames] [png-dir]
//! ```
//! Uses the default config (100 ms step_time), so the total is what a
//! worker would see. With a png-dir, a few frames are written for a look.

use std::time::Instant;
use videogen_model::{GenerationRequest, Model, ReferenceConfig, ReferenceModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prompt = args
        .first()
        .cloned()
        .unwrap_or_else(|| "a red fox running through snow".into());
    let seed: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let (w, h) = match args.get(2) {
        Some(s) => {
            let (a, b) = s.split_once('x').ok_or("size must be WIDTHxHEIGHT")?;
            (a.parse()?, b.parse()?)
        }
        None => (1280, 720),
    };
    let frames: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(96);
    let png_dir = args.get(4);

    let req = GenerationRequest::new(prompt, seed, w, h, frames);
    let model = ReferenceModel::new(ReferenceConfig::default());
    let clip = Instant::now();

    let t = Instant::now();
    let mut generation = model.start(&req)?;
    let start_time = t.elapsed();

    // Compute-only step times: a second generation with no step_time floor.
    let fast = ReferenceModel::new(ReferenceConfig::instant());
    let mut probe = fast.start(&req)?;
    let t = Instant::now();
    while !probe.is_done() {
        probe.step()?;
    }
    let compute_per_step = t.elapsed() / req.steps;

    let t = Instant::now();
    while !generation.is_done() {
        generation.step()?;
    }
    let steps_time = t.elapsed();

    let t = Instant::now();
    let ckpt = generation.checkpoint()?;
    let ckpt_time = t.elapsed();
    let t = Instant::now();
    let resumed = model.resume(&req, &ckpt)?;
    let resume_time = t.elapsed();
    drop(resumed);

    let t = Instant::now();
    let mut checksum = 0u64;
    for i in 0..generation.frame_count() {
        let f = generation.decode_frame(i);
        checksum = checksum.wrapping_add(f.data.iter().map(|&b| b as u64).sum::<u64>());
        if let Some(dir) = png_dir
            && i % 24 == 0
        {
            std::fs::create_dir_all(dir)?;
            std::fs::write(format!("{dir}/frame_{i:03}.png"), f.to_png()?)?;
        }
    }
    let decode_time = t.elapsed();
    let total = clip.elapsed();

    println!(
        "request: {w}x{h}, {frames} frames, {} steps, latent {:?}",
        req.steps,
        req.latent_dims()
    );
    println!("start (target + init noise): {start_time:?}");
    println!("compute per step (no sleep):  {compute_per_step:?}");
    println!("{} steps with 100 ms floor:   {steps_time:?}", req.steps);
    println!(
        "checkpoint: {} bytes, encode {ckpt_time:?}, resume {resume_time:?}",
        ckpt.len()
    );
    println!(
        "decode {} frames: {decode_time:?} ({:?}/frame{})",
        generation.frame_count(),
        decode_time / generation.frame_count(),
        if png_dir.is_some() { ", incl. PNG writes" } else { "" }
    );
    println!("whole clip (start + steps + checkpoint/resume + decode): {total:?}");
    println!("pixel checksum: {checksum}");
    Ok(())
}
