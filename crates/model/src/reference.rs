//! The deterministic CPU reference model.
//!
//! It behaves like a real diffusion model from the outside (slow load,
//! blocking steps, previews, checkpoints) but its "denoiser" is a 3x3
//! smoothing plus a scheduled pull toward the prompt's target field, with a
//! little fresh noise from the checkpointed RNG. Everything runs on one
//! thread in a fixed order, so the same request gives bit-identical latents
//! on every run and across any checkpoint/resume split.

use crate::checkpoint::{self, State};
use crate::frames::{Audio, Frames, LazyFrames};
use crate::request::{GenerationRequest, LatentDims, RgbFrame, SPATIAL_FACTOR, TEMPORAL_FACTOR};
use crate::rng::Xoshiro256;
use crate::scene::{self, GLOW_TO_RGB};
use crate::{Availability, Generation, Model, ModelError};
use std::sync::Once;
use std::time::{Duration, Instant};
use videogen_core::spec::REFERENCE_MODEL;

/// Default number of denoising steps for the reference model.
pub const REFERENCE_DEFAULT_STEPS: u32 = 30;
/// Version of the reference model's arithmetic; bump on any change that
/// alters output, so old checkpoints are refused instead of resumed wrongly.
pub const REFERENCE_VERSION: &str = "1";

/// Weight of the previous latent frame's noise in this frame's noise
/// (AR(1) in time), so residual grain moves smoothly instead of flickering.
const NOISE_TEMPORAL: f32 = 0.8;
/// `sqrt(1 - NOISE_TEMPORAL^2)`: keeps the noise at unit variance.
const NOISE_FRESH: f32 = 0.6;
/// Fresh-noise amplitude at step 0; decays linearly to 0 at the last step.
const NOISE_START: f32 = 0.35;

/// Knobs of the reference model.
#[derive(Debug, Clone)]
pub struct ReferenceConfig {
    /// Minimum wall time per step: after the arithmetic, a step sleeps the
    /// remainder, standing in for a GPU's step time.
    pub step_time: Duration,
    /// Time the first [`Model::load`] sleeps, standing in for loading weights.
    pub load_time: Duration,
    /// Give every clip a prompt-seeded soundtrack (48 kHz stereo), so the
    /// audio path (decode, mux, playback) runs without a GPU model.
    pub audio: bool,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            step_time: Duration::from_millis(100),
            load_time: Duration::ZERO,
            audio: false,
        }
    }
}

impl ReferenceConfig {
    /// No sleeping at all: steps cost only their arithmetic (tests, tools).
    pub fn instant() -> Self {
        Self {
            step_time: Duration::ZERO,
            load_time: Duration::ZERO,
            audio: false,
        }
    }
}

/// The reference [`Model`]: id `videogen-ref`, version [`REFERENCE_VERSION`].
pub struct ReferenceModel {
    cfg: ReferenceConfig,
    loaded: Once,
}

impl ReferenceModel {
    pub fn new(cfg: ReferenceConfig) -> Self {
        Self {
            cfg,
            loaded: Once::new(),
        }
    }

    pub fn config(&self) -> &ReferenceConfig {
        &self.cfg
    }

    /// Whether the one load (the `load_time` stand-in) has finished.
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_completed()
    }
}

impl Default for ReferenceModel {
    fn default() -> Self {
        Self::new(ReferenceConfig::default())
    }
}

impl Model for ReferenceModel {
    fn id(&self) -> &str {
        REFERENCE_MODEL
    }

    fn version(&self) -> &str {
        REFERENCE_VERSION
    }

    fn availability(&self) -> Availability {
        if self.is_loaded() {
            Availability::Warm
        } else {
            Availability::Cold
        }
    }

    fn load(&self) -> Result<(), ModelError> {
        // `Once` makes concurrent first callers wait for the one load.
        self.loaded.call_once(|| std::thread::sleep(self.cfg.load_time));
        Ok(())
    }

    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError> {
        req.validate()?;
        self.load()?;
        let dims = req.latent_dims();
        let target = scene::build(req);
        let mut rng = Xoshiro256::seed_from_u64(req.seed);
        // Initial latents: temporally correlated noise, with the first-frame
        // image (if any) mixed into the first latent frames.
        let mut latents = vec![0.0f32; dims.len()];
        let mut prev = vec![0.0f32; dims.frame_len()];
        for (t, frame) in latents.chunks_exact_mut(dims.frame_len()).enumerate() {
            for (i, (v, p)) in frame.iter_mut().zip(prev.iter_mut()).enumerate() {
                let fresh = rng.noise();
                let n = if t == 0 {
                    fresh
                } else {
                    NOISE_TEMPORAL * *p + NOISE_FRESH * fresh
                };
                *p = n;
                *v = match &target.cond {
                    Some((c, w)) => n * (1.0 - 0.5 * w[t]) + c[i] * w[t],
                    None => n,
                };
            }
        }
        Ok(Box::new(RefGeneration::new(
            self,
            req,
            dims,
            target.field,
            latents,
            rng,
            0,
        )))
    }

    fn resume(&self, req: &GenerationRequest, checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        req.validate()?;
        let parsed = checkpoint::parse(checkpoint)?;
        let info = &parsed.info;
        if info.model_id != self.id() || info.model_version != self.version() {
            return Err(ModelError::CheckpointMismatch(format!(
                "checkpoint is from model {} version {}, this is {} version {}",
                info.model_id,
                info.model_version,
                self.id(),
                self.version()
            )));
        }
        if info.params_hash != req.params_hash() {
            return Err(ModelError::CheckpointMismatch(
                "checkpoint belongs to a different request (params hash differs)".into(),
            ));
        }
        let dims = req.latent_dims();
        if info.latent_dims != dims || info.total_steps != req.steps {
            return Err(ModelError::CheckpointMismatch(format!(
                "checkpoint shape {:?}/{} steps does not match request {dims:?}/{} steps",
                info.latent_dims, info.total_steps, req.steps
            )));
        }
        self.load()?;
        let target = scene::build(req);
        let rng = Xoshiro256::from_state(parsed.rng_state);
        let latents = parsed.latents_f32();
        Ok(Box::new(RefGeneration::new(
            self,
            req,
            dims,
            target.field,
            latents,
            rng,
            info.step,
        )))
    }
}

/// Sample rate of the reference soundtrack.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// A soft three-note chord seeded by the request (its params hash), as long
/// as the clip: stereo, a slow tremolo, faded in and out. Pure arithmetic on
/// `f64`, so the same request always sounds the same.
fn soundtrack(seed: &[u8; 32], frames: u32, fps: u32) -> Audio {
    let n = (u64::from(frames) * u64::from(AUDIO_SAMPLE_RATE) / u64::from(fps.max(1))) as usize;
    // A root between 110 and 220 Hz, then a major or minor third and a fifth.
    let root = 110.0 * (1.0 + f64::from(seed[0]) / 255.0);
    let third = if seed[1].is_multiple_of(2) {
        1.259_921
    } else {
        1.189_207
    };
    let notes = [root, root * third, root * 1.498_307];
    let pan = 0.3 + 0.4 * f64::from(seed[2]) / 255.0;
    let fade = f64::from(AUDIO_SAMPLE_RATE) * 0.05;
    let mut samples = Vec::with_capacity(n * 2);
    for i in 0..n {
        let t = i as f64 / f64::from(AUDIO_SAMPLE_RATE);
        let env = (i as f64 / fade).min((n - i) as f64 / fade).min(1.0);
        let tremolo = 0.8 + 0.2 * (std::f64::consts::TAU * 0.5 * t).sin();
        let v: f64 = notes.iter().map(|f| (std::f64::consts::TAU * f * t).sin()).sum::<f64>() / 3.0;
        let v = 0.4 * env * tremolo * v;
        samples.push((v * (1.0 - pan)) as f32);
        samples.push((v * pan) as f32);
    }
    Audio {
        sample_rate: AUDIO_SAMPLE_RATE,
        channels: 2,
        samples,
    }
}

/// Bilinear sample position: the two source indices and the second's weight.
#[derive(Clone, Copy)]
struct Tap {
    i0: u32,
    i1: u32,
    w: f32,
}

/// Taps for upsampling `src` samples by `factor`, pixel-centre aligned.
fn taps(src: u32, factor: u32, out: u32) -> Vec<Tap> {
    let max = (src - 1) as f32;
    (0..out)
        .map(|o| {
            let pos = ((o as f32 + 0.5) / factor as f32 - 0.5).clamp(0.0, max);
            let i0 = pos.floor() as u32;
            Tap {
                i0,
                i1: (i0 + 1).min(src - 1),
                w: pos - i0 as f32,
            }
        })
        .collect()
}

struct RefGeneration {
    step_time: Duration,
    fps: u32,
    audio: bool,
    model_id: String,
    model_version: String,
    params_hash: [u8; 32],
    dims: LatentDims,
    width: u32,
    height: u32,
    frames: u32,
    total: u32,
    step: u32,
    rng: Xoshiro256,
    /// `[frame][channel][y][x]`.
    latents: Vec<f32>,
    /// Same layout; derived from the request, so never checkpointed.
    target: Vec<f32>,
    /// Scratch: horizontally smoothed plane; noise of the previous frame.
    tmp: Vec<f32>,
    noise: Vec<f32>,
    xtaps: Vec<Tap>,
    ytaps: Vec<Tap>,
}

impl RefGeneration {
    fn new(
        model: &ReferenceModel,
        req: &GenerationRequest,
        dims: LatentDims,
        target: Vec<f32>,
        latents: Vec<f32>,
        rng: Xoshiro256,
        step: u32,
    ) -> Self {
        Self {
            step_time: model.cfg.step_time,
            fps: req.fps,
            audio: model.cfg.audio,
            model_id: model.id().to_string(),
            model_version: model.version().to_string(),
            params_hash: req.params_hash(),
            dims,
            width: req.width,
            height: req.height,
            frames: req.frames,
            total: req.steps,
            step,
            rng,
            latents,
            target,
            tmp: vec![0.0; dims.plane()],
            noise: vec![0.0; dims.frame_len()],
            xtaps: taps(dims.width, SPATIAL_FACTOR, req.width),
            ytaps: taps(dims.height, SPATIAL_FACTOR, req.height),
        }
    }

    /// One denoising step over every plane, in a fixed order.
    fn compute_step(&mut self) {
        let n = self.total as f32;
        let p = (self.step + 1) as f32 / n;
        // Pull toward the target grows quadratically: early steps stay noisy
        // (previews look like denoising), the last ones settle the image.
        let pull = 0.04 + 0.9 * p * p;
        let keep = 1.0 - pull;
        let eta = NOISE_START * (1.0 - p);
        let (w, h) = (self.dims.width as usize, self.dims.height as usize);
        let plane = w * h;
        for (pi, (lat, tgt)) in self
            .latents
            .chunks_exact_mut(plane)
            .zip(self.target.chunks_exact(plane))
            .enumerate()
        {
            let first_frame = pi < self.dims.channels as usize;
            let nb = &mut self.noise[(pi % self.dims.channels as usize) * plane..][..plane];
            // Horizontal [1 2 1]/4 with clamped edges.
            for (src, dst) in lat.chunks_exact(w).zip(self.tmp.chunks_exact_mut(w)) {
                for x in 0..w {
                    let l = src[x.saturating_sub(1)];
                    let r = src[(x + 1).min(w - 1)];
                    dst[x] = (l + 2.0 * src[x] + r) * 0.25;
                }
            }
            // Vertical [1 2 1]/4, fused with the pull and the fresh noise.
            for y in 0..h {
                let up = &self.tmp[y.saturating_sub(1) * w..][..w];
                let mid = &self.tmp[y * w..][..w];
                let down = &self.tmp[(y + 1).min(h - 1) * w..][..w];
                let row = y * w;
                for x in 0..w {
                    let smooth = (up[x] + 2.0 * mid[x] + down[x]) * 0.25;
                    let fresh = self.rng.noise();
                    let noise = if first_frame {
                        fresh
                    } else {
                        NOISE_TEMPORAL * nb[row + x] + NOISE_FRESH * fresh
                    };
                    nb[row + x] = noise;
                    lat[row + x] = keep * smooth + pull * tgt[row + x] + eta * noise;
                }
            }
        }
    }
}

impl Generation for RefGeneration {
    fn step(&mut self) -> Result<(), ModelError> {
        if self.step >= self.total {
            return Ok(());
        }
        let began = Instant::now();
        self.compute_step();
        self.step += 1;
        if let Some(rest) = self.step_time.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(())
    }

    fn steps_done(&self) -> u32 {
        self.step
    }

    fn total_steps(&self) -> u32 {
        self.total
    }

    fn checkpoint(&self) -> Result<Vec<u8>, ModelError> {
        Ok(checkpoint::encode(&State {
            model_id: &self.model_id,
            model_version: &self.model_version,
            params_hash: &self.params_hash,
            step: self.step,
            total_steps: self.total,
            rng_state: self.rng.state(),
            dims: self.dims,
            latents: &self.latents,
        }))
    }

    fn frame_count(&self) -> u32 {
        self.frames
    }

    fn into_frames(self: Box<Self>) -> Result<Box<dyn Frames>, ModelError> {
        let audio = self.audio.then(|| soundtrack(&self.params_hash, self.frames, self.fps));
        let fps = self.fps;
        Ok(Box::new(LazyFrames {
            generation: self,
            fps,
            audio,
        }))
    }

    /// Out-of-range indices decode the last frame rather than panic.
    fn decode_frame(&self, index: u32) -> RgbFrame {
        let d = self.dims;
        let (lw, lh) = (d.width as usize, d.height as usize);
        let plane = lw * lh;
        let frame_len = d.frame_len();
        let index = index.min(self.frames - 1);
        // Temporal position between latent frames (centre aligned).
        let tl = ((index as f32 + 0.5) / TEMPORAL_FACTOR as f32 - 0.5).clamp(0.0, (d.frames - 1) as f32);
        let t0 = tl.floor() as usize;
        let t1 = (t0 + 1).min(d.frames as usize - 1);
        let wt = tl - t0 as f32;
        let f0 = &self.latents[t0 * frame_len..][..frame_len];
        let f1 = &self.latents[t1 * frame_len..][..frame_len];
        // The latent->RGB map is linear, so apply it at latent resolution
        // (cheap) and clamp only after upsampling. Values in 0..=255 scale.
        let mut low = vec![0.0f32; plane * 3];
        for i in 0..plane {
            let ch = |c: usize| f0[c * plane + i] + (f1[c * plane + i] - f0[c * plane + i]) * wt;
            let glow = GLOW_TO_RGB * ch(3);
            for c in 0..3 {
                low[i * 3 + c] = (ch(c) + glow) * 127.5 + 127.5;
            }
        }
        // Horizontal upsampling of every latent row, then vertical blending.
        let out_w = self.width as usize;
        let mut rows = vec![0.0f32; lh * out_w * 3];
        for (src, dst) in low.chunks_exact(lw * 3).zip(rows.chunks_exact_mut(out_w * 3)) {
            for (tap, px) in self.xtaps.iter().zip(dst.chunks_exact_mut(3)) {
                let a = &src[tap.i0 as usize * 3..][..3];
                let b = &src[tap.i1 as usize * 3..][..3];
                for c in 0..3 {
                    px[c] = a[c] + (b[c] - a[c]) * tap.w;
                }
            }
        }
        let mut data = vec![0u8; out_w * self.height as usize * 3];
        for (tap, out) in self.ytaps.iter().zip(data.chunks_exact_mut(out_w * 3)) {
            let a = &rows[tap.i0 as usize * out_w * 3..][..out_w * 3];
            let b = &rows[tap.i1 as usize * out_w * 3..][..out_w * 3];
            for ((o, &va), &vb) in out.iter_mut().zip(a).zip(b) {
                // `as u8` saturates (and maps NaN to 0), so no panic paths.
                *o = (va + (vb - va) * tap.w + 0.5) as u8;
            }
        }
        RgbFrame {
            width: self.width,
            height: self.height,
            data,
        }
    }
}
