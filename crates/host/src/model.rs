//! [`HostedModel`]: the [`Model`] seam over a [`Host`]. Every call is one
//! protocol request; the generation lives in the host process, so a
//! generation of an older process (the host restarted under it) fails with
//! a retryable error and the job resumes from its checkpoint.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use videogen_core::catalog::MAX_FRAMES;
use videogen_model::{
    Audio, Availability, DecodedFrames, Frames, Generation, GenerationRequest, Model, ModelError, RgbFrame,
};

use crate::conn::request;
use crate::host::Host;
use crate::wire::Frame;
use crate::{HostError, HostedSpec};

/// First wait before a model that failed to load is tried again; it doubles
/// up to [`UNAVAILABLE_RETRY_MAX`].
const UNAVAILABLE_RETRY_MIN: Duration = Duration::from_secs(30);
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(600);
/// Longest side of a decoded frame accepted from a host.
const MAX_SIDE: u32 = 8192;
/// Most audio values (samples x channels) accepted from a host: 10 minutes
/// of 48 kHz stereo.
const MAX_AUDIO_VALUES: u64 = 48_000 * 2 * 600;

struct Unavailable {
    reason: String,
    retry_at: Instant,
    backoff: Duration,
}

/// One registry entry served by a host process.
pub struct HostedModel {
    host: Arc<Host>,
    spec: HostedSpec,
    /// The weights hash of the first successful load: the model's version.
    version: OnceLock<String>,
    unavailable: Mutex<Option<Unavailable>>,
}

impl HostedModel {
    pub fn new(host: Arc<Host>, spec: HostedSpec) -> Self {
        Self {
            host,
            spec,
            version: OnceLock::new(),
            unavailable: Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &HostedSpec {
        &self.spec
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    fn unavailable(&self) -> std::sync::MutexGuard<'_, Option<Unavailable>> {
        self.unavailable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failed load: the model is unavailable until `retry_at`.
    fn mark_unavailable(&self, reason: String) {
        let mut u = self.unavailable();
        let backoff = u
            .as_ref()
            .map_or(UNAVAILABLE_RETRY_MIN, |p| (p.backoff * 2).min(UNAVAILABLE_RETRY_MAX));
        tracing::warn!(model = %self.spec.card.id, retry_in_s = backoff.as_secs(), "model unavailable: {reason}");
        *u = Some(Unavailable {
            reason,
            retry_at: Instant::now() + backoff,
            backoff,
        });
    }

    /// Loads the model in the running host if it is not, then sends one
    /// request to the same process; returns the reply and the epoch it ran in.
    fn call_loaded(&self, header: Value, payload: &[u8], timeout: Duration) -> Result<(Frame, u64), ModelError> {
        let r = self.host.with(|conn, st| {
            let loaded = self.host.ensure_loaded(conn, st, &self.spec)?;
            self.note_version(&loaded.weights_hash);
            let reply = self.host.call(conn, header, payload, timeout)?;
            Ok((reply, st.epoch))
        });
        match r {
            Ok(v) => {
                *self.unavailable() = None;
                Ok(v)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn note_version(&self, hash: &str) {
        if self.version.set(hash.to_owned()).is_err() && self.version.get().map(String::as_str) != Some(hash) {
            // Someone replaced the files under a running worker: checkpoints
            // of the old weights are refused by the host (weights hash).
            tracing::warn!(model = %self.spec.card.id, now = hash, "model weights changed since the first load");
        }
    }

    fn failed(&self, e: HostError) -> ModelError {
        let err = ModelError::from(e);
        if let ModelError::Unavailable(reason) = &err {
            self.mark_unavailable(reason.clone());
        }
        err
    }

    fn request_json(&self, req: &GenerationRequest) -> Value {
        let mut prompt = req.prompt.clone();
        if let Some(suffix) = self.spec.card.style_suffix(req.style.as_deref()) {
            prompt = format!("{prompt}, {suffix}");
        }
        json!({
            "prompt": prompt,
            "negative_prompt": req.negative_prompt,
            "seed": req.seed,
            "width": req.width,
            "height": req.height,
            "frames": req.frames,
            "fps": req.fps,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            // The digest travels with start and resume alike, so a resume
            // proves it continues the same image (its pixels stay home).
            "image": req.first_frame.as_ref().map(|i| json!({
                "width": i.width,
                "height": i.height,
                "sha256": hex::encode(Sha256::digest(&i.data)),
            })),
        })
    }

    fn begin(&self, op: &str, req: &GenerationRequest, payload: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        req.validate_bounds()?;
        let header = request(op, json!({"id": self.spec.card.id, "request": self.request_json(req)}));
        let (reply, epoch) = self.call_loaded(header, payload, self.host.config().step_timeout)?;
        let field = |k: &str| reply.need_u32(k).map_err(ModelError::from);
        let generation = HostedGeneration {
            host: self.host.clone(),
            model: self.spec.card.id.clone(),
            epoch,
            step: field("step")?,
            total: field("total_steps")?,
            frames: field("frames")?,
            fps: reply.need_u32("fps").unwrap_or(req.fps),
            width: req.width,
            height: req.height,
            preview: Mutex::new(None),
        };
        if generation.frames == 0 || generation.frames > MAX_FRAMES || generation.step > generation.total {
            return Err(ModelError::Internal(format!(
                "host reported {} frames, step {}/{}",
                generation.frames, generation.step, generation.total
            )));
        }
        Ok(Box::new(generation))
    }
}

impl Model for HostedModel {
    fn id(&self) -> &str {
        &self.spec.card.id
    }

    fn version(&self) -> &str {
        self.version.get().map_or("unloaded", String::as_str)
    }

    fn load(&self) -> Result<(), ModelError> {
        let r = self.host.with(|conn, st| self.host.ensure_loaded(conn, st, &self.spec));
        match r {
            Ok(l) => {
                self.note_version(&l.weights_hash);
                *self.unavailable() = None;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError> {
        let image = req.first_frame.as_ref().map(|i| i.data.as_slice()).unwrap_or_default();
        self.begin("start", req, image)
    }

    fn resume(&self, req: &GenerationRequest, checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        // The image travels in the request hash only: a resume needs no
        // pixels (the encoded image is in the checkpoint).
        self.begin("resume", req, checkpoint)
    }

    fn availability(&self) -> Availability {
        if let Some(u) = self.unavailable().as_ref()
            && Instant::now() < u.retry_at
        {
            return Availability::Unavailable(u.reason.clone());
        }
        if self.host.loaded().iter().any(|m| m.id == self.spec.card.id) {
            Availability::Warm
        } else {
            Availability::Cold
        }
    }

    fn weights_hash(&self) -> Option<String> {
        self.version.get().cloned()
    }
}

/// A generation living in a host process.
struct HostedGeneration {
    host: Arc<Host>,
    model: String,
    /// The process it lives in.
    epoch: u64,
    step: u32,
    total: u32,
    frames: u32,
    fps: u32,
    width: u32,
    height: u32,
    /// A preview decode, cached (previews are not on the hot path).
    preview: Mutex<Option<DecodedFrames>>,
}

impl HostedGeneration {
    /// One request to the process this generation lives in.
    fn call(&self, op: &str, timeout: Duration) -> Result<Frame, ModelError> {
        let epoch = self.epoch;
        self.host
            .with(|conn, st| {
                if st.epoch != epoch {
                    return Err(HostError::Exited(
                        "the model host restarted; this generation is gone".into(),
                    ));
                }
                conn.call(request(op, json!({})), &[], timeout)
            })
            .map_err(ModelError::from)
    }

    fn decode(&self) -> Result<DecodedFrames, ModelError> {
        let epoch = self.epoch;
        let op_timeout = self.host.config().op_timeout;
        let (w, h) = (self.width, self.height);
        self.host
            .with(|conn, st| {
                if st.epoch != epoch {
                    return Err(HostError::Exited(
                        "the model host restarted; this generation is gone".into(),
                    ));
                }
                let reply = conn.call(request("decode", json!({})), &[], self.host.config().step_timeout)?;
                let n = reply.need_u32("frames")?;
                let (fw, fh) = (reply.need_u32("width")?, reply.need_u32("height")?);
                if n == 0 || n > MAX_FRAMES || fw == 0 || fh == 0 || fw > MAX_SIDE || fh > MAX_SIDE {
                    return Err(HostError::Protocol(format!("decode announced {n} frames of {fw}x{fh}")));
                }
                if (fw, fh) != (w, h) {
                    return Err(HostError::Protocol(format!(
                        "decoded {fw}x{fh}, the request is {w}x{h}"
                    )));
                }
                let fps = reply.need_u32("fps").unwrap_or(self.fps);
                let audio_spec = reply.header.get("audio").filter(|a| !a.is_null()).cloned();
                let frame_len = fw as usize * fh as usize * 3;
                let mut frames = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let f = conn.read(op_timeout)?;
                    if f.str("op") != Some("frame")
                        || f.u64("index") != Some(u64::from(i))
                        || f.payload.len() != frame_len
                    {
                        return Err(HostError::Protocol(format!(
                            "frame {i}: expected {frame_len} RGB bytes, got {} ({:?})",
                            f.payload.len(),
                            f.str("op")
                        )));
                    }
                    frames.push(RgbFrame {
                        width: fw,
                        height: fh,
                        data: f.payload,
                    });
                }
                let audio = match audio_spec {
                    None => None,
                    Some(a) => {
                        let get = |k: &str| a.get(k).and_then(Value::as_u64).unwrap_or(0);
                        let (rate, channels, samples) = (get("sample_rate"), get("channels"), get("samples"));
                        let values = samples.saturating_mul(channels);
                        if !(8_000..=192_000).contains(&rate)
                            || !(1..=8).contains(&channels)
                            || values > MAX_AUDIO_VALUES
                        {
                            return Err(HostError::Protocol(format!("bad audio {a}")));
                        }
                        let m = conn.read(op_timeout)?;
                        if m.str("op") != Some("audio") || m.payload.len() as u64 != values * 4 {
                            return Err(HostError::Protocol(
                                "audio message does not match its announcement".into(),
                            ));
                        }
                        Some(Audio {
                            sample_rate: rate as u32,
                            channels: channels as u16,
                            samples: m
                                .payload
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        })
                    }
                };
                Ok(DecodedFrames { fps, frames, audio })
            })
            .map_err(ModelError::from)
    }
}

impl Generation for HostedGeneration {
    fn step(&mut self) -> Result<(), ModelError> {
        if self.step >= self.total {
            return Ok(());
        }
        let reply = self.call("step", self.host.config().step_timeout)?;
        let step = reply.need_u32("step")?;
        if step != self.step + 1 {
            return Err(ModelError::Internal(format!(
                "model {}: host stepped to {step}, expected {}",
                self.model,
                self.step + 1
            )));
        }
        self.step = step;
        if let Ok(mut p) = self.preview.lock() {
            *p = None;
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
        let reply = self.call("checkpoint", self.host.config().op_timeout)?;
        if reply.payload.is_empty() {
            return Err(ModelError::Internal("host sent an empty checkpoint".into()));
        }
        Ok(reply.payload)
    }

    fn frame_count(&self) -> u32 {
        self.frames
    }

    /// A preview (or final) frame; decodes the whole clip once and caches
    /// it. A failed decode previews as black: previews never fail a job.
    fn decode_frame(&self, index: u32) -> RgbFrame {
        let mut cache = self.preview.lock().unwrap_or_else(|e| e.into_inner());
        if cache.is_none() {
            match self.decode() {
                Ok(d) => *cache = Some(d),
                Err(e) => {
                    tracing::warn!(model = %self.model, error = %e, "preview decode failed");
                    return RgbFrame::new(self.width, self.height);
                }
            }
        }
        cache
            .as_ref()
            .map_or_else(|| RgbFrame::new(self.width, self.height), |d| d.frame(index))
    }

    fn into_frames(self: Box<Self>) -> Result<Box<dyn Frames>, ModelError> {
        let cached = self.preview.lock().ok().and_then(|mut p| p.take());
        let decoded = match cached {
            Some(d) => d,
            None => self.decode()?,
        };
        // The host holds nothing more for this generation.
        let _ = self.call("cancel", self.host.config().op_timeout);
        Ok(Box::new(decoded))
    }
}
