//! The prompt-derived "target" the reference model denoises toward: a
//! palette, drifting soft blobs and a moving background wave, plus the
//! optional first-frame image fading out over the first latent frames.
//!
//! Only `+ - * /` and `floor` are used (no libm): libm's
//! `sin`/`exp` may differ between platforms, and a checkpoint taken on one
//! worker must resume bit-identically on another.

use crate::request::{GenerationRequest, LatentDims, RgbImage, TEMPORAL_FACTOR};
use crate::rng::SplitMix64;
use sha2::{Digest, Sha256};
use videogen_core::spec::FPS;

/// Colour weight of the glow channel (3) when decoding to RGB.
pub(crate) const GLOW_TO_RGB: f32 = 0.25;
/// How much of the first-frame image survives into each following latent
/// frame (geometric fade).
const FIRST_FRAME_FADE: f32 = 0.55;

/// `sin(x)` from a range-reduced Taylor series: portable, and within about
/// `2e-6 * (1 + |x|)` of libm (the f32 range reduction dominates).
pub(crate) fn sin(x: f32) -> f32 {
    const INV_TAU: f32 = 1.0 / std::f32::consts::TAU;
    let mut turns = x * INV_TAU;
    turns -= (turns + 0.5).floor(); // [-0.5, 0.5)
    // Fold into [-0.25, 0.25] using sin(pi - y) = sin(y).
    if turns > 0.25 {
        turns = 0.5 - turns;
    } else if turns < -0.25 {
        turns = -0.5 - turns;
    }
    let y = turns * std::f32::consts::TAU;
    let y2 = y * y;
    y * (1.0 + y2 * (-1.0 / 6.0 + y2 * (1.0 / 120.0 + y2 * (-1.0 / 5040.0 + y2 / 362_880.0))))
}

/// Reflects `x` into `[0, 1]` (a bouncing position).
fn bounce(x: f32) -> f32 {
    let m = x - 2.0 * (x * 0.5).floor(); // [0, 2)
    if m > 1.0 { 2.0 - m } else { m }
}

/// HSV (all in `[0, 1]`, hue wraps) to RGB in `[0, 1]`.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = (h - h.floor()) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

struct Blob {
    color: [f32; 3],
    /// Base centre in normalised coordinates.
    cx: f32,
    cy: f32,
    /// Radius in units of the shorter frame side.
    radius: f32,
    /// Drift in normalised units per second (bounces off the edges).
    vx: f32,
    vy: f32,
    /// Orbit on top of the drift.
    orbit: f32,
    omega: f32,
    phase: f32,
}

struct Scene {
    bg: [[f32; 3]; 2],
    wave_freq: f32,
    wave_speed: f32,
    blobs: Vec<Blob>,
}

impl Scene {
    /// Palette, motion direction and speed come from the prompt (and style);
    /// the seed jitters the layout and motion phases, so the same prompt with
    /// another seed is recognisably related but visibly different.
    fn new(req: &GenerationRequest) -> Self {
        let mut h = Sha256::new();
        h.update(b"videogen-model/scene/v1\0");
        h.update((req.prompt.len() as u64).to_le_bytes());
        h.update(req.prompt.as_bytes());
        if let Some(style) = &req.style {
            h.update([1]);
            h.update(style.as_bytes());
        }
        let digest: [u8; 32] = h.finalize().into();
        let mut word = [0u8; 8];
        word.copy_from_slice(&digest[..8]);
        let mut p = SplitMix64(u64::from_le_bytes(word));
        let mut s = SplitMix64(req.seed ^ 0xA5A5_5A5A_C3C3_3C3C);

        let base_hue = p.next_f32();
        let spread = p.range(0.08, 0.35);
        let bg = [
            hsv(base_hue + 0.5, p.range(0.3, 0.7), p.range(0.08, 0.25)),
            hsv(base_hue + 0.5 + spread, p.range(0.3, 0.8), p.range(0.25, 0.5)),
        ];
        // Global motion direction and speed shared by all blobs.
        let dir = p.range(0.0, std::f32::consts::TAU);
        let speed = p.range(0.03, 0.12);
        let (dx, dy) = (sin(dir + std::f32::consts::FRAC_PI_2), sin(dir));
        let count = 3 + (p.next_u64() % 4) as usize;
        let blobs = (0..count)
            .map(|i| {
                let hue = base_hue + spread * (i as f32 - 1.0) + p.range(-0.04, 0.04);
                let personal = p.range(0.6, 1.4);
                Blob {
                    color: hsv(hue, p.range(0.55, 0.95), p.range(0.75, 1.0)),
                    cx: p.next_f32() + s.range(-0.2, 0.2),
                    cy: p.next_f32() + s.range(-0.2, 0.2),
                    radius: p.range(0.12, 0.32) * s.range(0.85, 1.15),
                    vx: dx * speed * personal,
                    vy: dy * speed * personal,
                    orbit: p.range(0.02, 0.08),
                    omega: p.range(0.6, 2.0),
                    phase: s.range(0.0, std::f32::consts::TAU),
                }
            })
            .collect();
        Scene {
            bg,
            wave_freq: p.range(1.0, 3.0),
            wave_speed: p.range(0.1, 0.4) * if s.next_u64() & 1 == 0 { 1.0 } else { -1.0 },
            blobs,
        }
    }

    /// Writes latent frame `t` (layout `[channel][y][x]`) at time `secs`.
    fn render(&self, dims: LatentDims, secs: f32, out: &mut [f32]) {
        let (w, h) = (dims.width as usize, dims.height as usize);
        let plane = w * h;
        let short = w.min(h) as f32;
        // Per-blob position for this instant, in latent cells.
        let placed: Vec<([f32; 3], f32, f32, f32)> = self
            .blobs
            .iter()
            .map(|b| {
                let ox = b.orbit * sin(b.omega * secs + b.phase + std::f32::consts::FRAC_PI_2);
                let oy = b.orbit * sin(b.omega * secs + b.phase);
                let cx = bounce(b.cx + b.vx * secs + ox) * w as f32;
                let cy = bounce(b.cy + b.vy * secs + oy) * h as f32;
                let r = b.radius * short;
                (b.color, cx, cy, 1.0 / (r * r))
            })
            .collect();
        for y in 0..h {
            let fy = y as f32 + 0.5;
            let v = fy / h as f32;
            for x in 0..w {
                let fx = x as f32 + 0.5;
                let u = fx / w as f32;
                let wave = sin(std::f32::consts::TAU * (self.wave_freq * (u + 0.5 * v) - self.wave_speed * secs));
                let mix = (0.75 * v + 0.25 * u + 0.12 * wave).clamp(0.0, 1.0);
                let mut col = [0.0f32; 3];
                for (c, o) in col.iter_mut().enumerate() {
                    *o = self.bg[0][c] + (self.bg[1][c] - self.bg[0][c]) * mix;
                }
                let mut glow = 0.0f32;
                for &(bc, cx, cy, inv_r2) in &placed {
                    let (ddx, ddy) = (fx - cx, fy - cy);
                    let k = 1.0 - (ddx * ddx + ddy * ddy) * inv_r2;
                    if k > 0.0 {
                        let a = 0.9 * k * k * (3.0 - 2.0 * k);
                        for c in 0..3 {
                            col[c] += (bc[c] - col[c]) * a;
                        }
                        glow += a;
                    }
                }
                let i = y * w + x;
                for c in 0..3 {
                    out[c * plane + i] = col[c] * 2.0 - 1.0;
                }
                out[3 * plane + i] = 0.4 * glow.min(1.5) - 0.1;
            }
        }
    }
}

/// The first-frame image box-averaged down to the latent grid, in latent
/// channel space (`[channel][y][x]`, glow channel 0).
fn condition(img: &RgbImage, dims: LatentDims) -> Vec<f32> {
    let (w, h) = (dims.width as usize, dims.height as usize);
    let (iw, ih) = (img.width as usize, img.height as usize);
    let plane = w * h;
    let mut out = vec![0.0f32; dims.frame_len()];
    let span = |i: usize, n: usize, src: usize| {
        let a = i * src / n;
        let b = ((i + 1) * src / n).max(a + 1).min(src);
        (a, b)
    };
    for y in 0..h {
        let (y0, y1) = span(y, h, ih);
        for x in 0..w {
            let (x0, x1) = span(x, w, iw);
            let mut sum = [0u64; 3];
            for sy in y0..y1 {
                let row = &img.data[(sy * iw + x0) * 3..(sy * iw + x1) * 3];
                for px in row.chunks_exact(3) {
                    for c in 0..3 {
                        sum[c] += px[c] as u64;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as f32 * 255.0;
            for c in 0..3 {
                out[c * plane + y * w + x] = sum[c] as f32 / n * 2.0 - 1.0;
            }
        }
    }
    out
}

/// Target latents and the per-frame weight of the conditioning image (used
/// to seed the initial latents), for a validated request.
pub(crate) struct Target {
    pub field: Vec<f32>,
    pub cond: Option<(Vec<f32>, Vec<f32>)>,
}

pub(crate) fn build(req: &GenerationRequest) -> Target {
    let dims = req.latent_dims();
    let frame_len = dims.frame_len();
    let scene = Scene::new(req);
    let mut field = vec![0.0f32; dims.len()];
    for (t, out) in field.chunks_exact_mut(frame_len).enumerate() {
        // Centre of the output frames this latent frame stands for.
        let secs = (t as f32 * TEMPORAL_FACTOR as f32 + 0.5 * (TEMPORAL_FACTOR - 1) as f32) / FPS as f32;
        scene.render(dims, secs, out);
    }
    let cond = req.first_frame.as_ref().map(|img| {
        let c = condition(img, dims);
        let mut weights = Vec::with_capacity(dims.frames as usize);
        let mut w = 1.0f32;
        for out in field.chunks_exact_mut(frame_len) {
            weights.push(w);
            for (o, &ci) in out.iter_mut().zip(&c) {
                *o += (ci - *o) * w;
            }
            w *= FIRST_FRAME_FADE;
        }
        (c, weights)
    });
    Target { field, cond }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_sin_is_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!((sin(x) - x.sin()).abs() < 2e-6 * (1.0 + x.abs()), "x={x}");
        }
    }

    #[test]
    fn bounce_stays_in_unit_range() {
        for i in -500..500 {
            let b = bounce(i as f32 * 0.013);
            assert!((0.0..=1.0).contains(&b));
        }
        assert_eq!(bounce(1.25), 0.75);
        assert_eq!(bounce(-0.25), 0.25);
    }

    #[test]
    fn condition_averages_boxes() {
        let mut req = GenerationRequest::new("x", 0, 16, 8, 4);
        // 4x2 image, left half white, right half black -> 2x1 latent grid.
        let mut data = vec![0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in 0..2 {
                data[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].fill(255);
            }
        }
        req.first_frame = Some(RgbImage {
            width: 4,
            height: 2,
            data,
        });
        let c = condition(req.first_frame.as_ref().unwrap(), req.latent_dims());
        assert_eq!(c.len(), 8);
        assert_eq!(&c[0..2], &[1.0, -1.0]);
        assert_eq!(&c[6..8], &[0.0, 0.0]);
    }
}
