//! [`RemoteOpenAiModel`] and [`RemoteGeneration`]: the `Model` seam over an
//! upstream `/v1/videos`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use image::imageops::{self, FilterType};
use videogen_media::decode::{self, DecodeLimits};
use videogen_model::request::MAX_FRAMES;
use videogen_model::{Availability, DecodedFrames, Frames, Generation, GenerationRequest, Model, ModelError, RgbFrame};

use crate::client::Upstream;
use crate::wire::{self, CreateBody, UpstreamStatus, UpstreamVideo};
use crate::{RemoteError, RemoteOpenAiConfig};

/// The registry adapter name.
pub const ADAPTER: &str = "remote-openai";
/// Steps of every remote generation: the upstream's `progress` is a
/// percentage, so one step is one percent (99 at most until the upstream
/// says `completed`).
pub const TOTAL_STEPS: u32 = 100;
/// Longest one [`Generation::step`] call waits for the progress to move
/// before returning without advancing, so the runner still sees stop
/// requests and lease loss while the upstream grinds (SGLang, for one,
/// reports nothing between 0 and 100).
pub const STEP_MAX_WAIT: Duration = Duration::from_secs(5);
/// Largest upstream frame side decoded.
pub const MAX_UPSTREAM_SIDE: u32 = decode::DEFAULT_MAX_SIDE;

/// First wait before an unreachable upstream is tried again; it doubles up
/// to [`UNAVAILABLE_RETRY_MAX`] (as a hosted model's failed load does).
const UNAVAILABLE_RETRY_MIN: Duration = Duration::from_secs(30);
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(600);
/// `load` probes the upstream at most this often while it is healthy.
const PROBE_EVERY: Duration = Duration::from_secs(30);

struct Unavailable {
    reason: String,
    retry_at: Instant,
    backoff: Duration,
}

#[derive(Default)]
struct Health {
    unavailable: Option<Unavailable>,
    last_ok: Option<Instant>,
}

/// What the model and its generations share.
struct Shared {
    id: String,
    config: RemoteOpenAiConfig,
    upstream: Upstream,
    health: Mutex<Health>,
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how a call went: a success clears an outage, a failure that
    /// says the upstream is unusable starts (or lengthens) one.
    fn note<T>(&self, r: &Result<T, RemoteError>) {
        let mut h = self.health();
        match r {
            Ok(_) => {
                h.unavailable = None;
                h.last_ok = Some(Instant::now());
            }
            Err(e) if e.marks_unavailable() => {
                let backoff = h
                    .unavailable
                    .as_ref()
                    .map_or(UNAVAILABLE_RETRY_MIN, |u| (u.backoff * 2).min(UNAVAILABLE_RETRY_MAX));
                tracing::warn!(model = %self.id, retry_in_s = backoff.as_secs(), "remote-openai upstream unavailable: {e}");
                h.unavailable = Some(Unavailable {
                    reason: e.to_string(),
                    retry_at: Instant::now() + backoff,
                    backoff,
                });
                h.last_ok = None;
            }
            Err(_) => {}
        }
    }

    /// A call on the private runtime, its outcome noted.
    fn call<T, F>(&self, fut: F) -> Result<T, RemoteError>
    where
        F: std::future::Future<Output = Result<T, RemoteError>> + Send + 'static,
        T: Send + 'static,
    {
        let r = self.upstream.block_on(fut).and_then(|r| r);
        self.note(&r);
        r
    }

    /// Cancels the upstream job in the background.
    fn cancel(&self, id: &str) {
        match self.upstream.job_url(id) {
            Ok(url) => {
                tracing::info!(model = %self.id, upstream_id = id, "cancelling the upstream job");
                self.upstream.spawn(self.upstream.http.clone().delete(url));
            }
            Err(e) => tracing::warn!(model = %self.id, "cannot cancel upstream job {id}: {e}"),
        }
    }
}

/// A videogen model whose generations run on an upstream engine that
/// serves OpenAI's `/v1/videos` (see the crate docs for what is sent and
/// how the upstreams differ).
///
/// It cannot checkpoint: the state lives in the upstream.
/// [`Generation::checkpoint`] fails and [`Model::resume`] answers
/// `CheckpointMismatch`, so a runner that tried restarts at step 0; a
/// runner should instead skip checkpoints where
/// [`Generation::checkpointable`] (or [`RemoteOpenAiModel::CHECKPOINTABLE`]) is false.
pub struct RemoteOpenAiModel {
    version: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteOpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOpenAiModel")
            .field("id", &self.shared.id)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl RemoteOpenAiModel {
    /// Whether generations of this adapter can be checkpointed: never.
    pub const CHECKPOINTABLE: bool = false;

    /// A model named `id` (videogen's name, what requests spell) served by
    /// the upstream `config` describes. Fails on an unusable config; does
    /// not contact the upstream (see [`Model::load`]).
    pub fn new(id: impl Into<String>, config: RemoteOpenAiConfig) -> Result<Self, RemoteError> {
        let upstream = Upstream::new(&config)?;
        let version = format!("{ADAPTER}:{}", config.upstream_model);
        Ok(Self {
            version,
            shared: Arc::new(Shared {
                id: id.into(),
                config,
                upstream,
                health: Mutex::new(Health::default()),
            }),
        })
    }

    pub fn config(&self) -> &RemoteOpenAiConfig {
        &self.shared.config
    }

    /// Always false: see [`RemoteOpenAiModel::CHECKPOINTABLE`].
    pub fn checkpointable(&self) -> bool {
        Self::CHECKPOINTABLE
    }

    /// Checks that the upstream answers (`GET /v1/models`; any answer but
    /// 401/403 will do), updating [`Model::availability`].
    pub fn probe(&self) -> Result<(), ModelError> {
        let url = self.shared.upstream.models_url()?;
        let http = self.shared.upstream.http.clone();
        Ok(self.shared.call(http.probe(url))?)
    }

    /// [`Model::start`], returning the concrete generation (its upstream id
    /// is [`RemoteGeneration::upstream_id`]).
    pub fn start_remote(&self, req: &GenerationRequest) -> Result<RemoteGeneration, ModelError> {
        req.validate_bounds()?;
        let body = CreateBody::new(req, &self.shared.config)?;
        let (content_type, bytes) = body.encode();
        let url = self.shared.upstream.videos_url();
        let http = self.shared.upstream.http.clone();
        let started = Instant::now();
        let (video, hint) = self.shared.call(http.create(url, content_type, bytes))?;
        tracing::info!(model = %self.shared.id, upstream_id = %video.id, status = %video.raw_status, "upstream job created");
        let config = &self.shared.config;
        let mut generation = RemoteGeneration {
            shared: self.shared.clone(),
            id: video.id.clone(),
            width: req.width,
            height: req.height,
            frames: req.frames,
            fps: req.fps,
            deadline: started + config.overall_timeout,
            next_poll: Instant::now() + hint.unwrap_or(config.poll_interval),
            progress: 0,
            completed: false,
            cleanup: true,
            last: video,
        };
        generation.absorb_first()?;
        Ok(generation)
    }
}

impl Model for RemoteOpenAiModel {
    fn id(&self) -> &str {
        &self.shared.id
    }

    /// `remote-openai:<upstream model>`. Checkpoints never resume anyway.
    fn version(&self) -> &str {
        &self.version
    }

    /// Probes the upstream (at most every 30 s while it is healthy); an
    /// unreachable one is `Unavailable` until its backoff has passed.
    fn load(&self) -> Result<(), ModelError> {
        {
            let h = self.shared.health();
            if let Some(u) = &h.unavailable
                && Instant::now() < u.retry_at
            {
                return Err(ModelError::Unavailable(u.reason.clone()));
            }
            if h.unavailable.is_none() && h.last_ok.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return Ok(());
            }
        }
        self.probe()
    }

    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError> {
        Ok(Box::new(self.start_remote(req)?))
    }

    /// Never resumes: the upstream's state never left it. The runner logs
    /// the rejected checkpoint and starts again at step 0.
    fn resume(&self, _req: &GenerationRequest, _checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError> {
        Err(ModelError::CheckpointMismatch(format!(
            "{ADAPTER} cannot resume; restarting"
        )))
    }

    /// `Unavailable` after a failed connect (or refused credentials) until
    /// the backoff has passed; `Warm` once the upstream answered; `Cold`
    /// before the first contact.
    fn availability(&self) -> Availability {
        let h = self.shared.health();
        match &h.unavailable {
            Some(u) if Instant::now() < u.retry_at => Availability::Unavailable(u.reason.clone()),
            Some(_) => Availability::Cold,
            None if h.last_ok.is_some() => Availability::Warm,
            None => Availability::Cold,
        }
    }
}

/// One job on the upstream. Its steps mirror the upstream's `progress`
/// (0..=100, [`TOTAL_STEPS`] in all); dropping it before its video was
/// downloaded cancels the upstream job (`DELETE /v1/videos/{id}`).
pub struct RemoteGeneration {
    shared: Arc<Shared>,
    id: String,
    width: u32,
    height: u32,
    frames: u32,
    fps: u32,
    /// When the upstream must have completed (create + `overall_timeout`).
    deadline: Instant,
    next_poll: Instant,
    /// Steps done: the upstream's progress, 99 at most until completed.
    progress: u32,
    completed: bool,
    /// Whether dropping this cancels the upstream job.
    cleanup: bool,
    last: UpstreamVideo,
}

impl std::fmt::Debug for RemoteGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGeneration")
            .field("model", &self.shared.id)
            .field("upstream_id", &self.id)
            .field("progress", &self.progress)
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

impl RemoteGeneration {
    /// Whether this generation can be checkpointed: never (also what
    /// [`Generation::checkpointable`] answers).
    pub const CHECKPOINTABLE: bool = false;

    /// The upstream's id of the job.
    pub fn upstream_id(&self) -> &str {
        &self.id
    }

    /// The Video object last read from the upstream.
    pub fn last_status(&self) -> &UpstreamVideo {
        &self.last
    }

    /// Takes in the create reply (a job may be done, or failed, at once).
    fn absorb_first(&mut self) -> Result<(), ModelError> {
        let video = self.last.clone();
        match self.absorb(video) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.give_up(e)),
        }
    }

    /// Takes in a Video object; `Ok(true)` when the step count moved.
    fn absorb(&mut self, video: UpstreamVideo) -> Result<bool, RemoteError> {
        let before = self.progress;
        match video.status {
            UpstreamStatus::Completed => {
                self.progress = TOTAL_STEPS;
                self.completed = true;
            }
            UpstreamStatus::Failed => {
                let (code, message) = video.error.as_ref().map_or_else(
                    || (None, format!("status {}", video.raw_status)),
                    |f| (f.code.clone(), f.message.clone()),
                );
                let retryable = wire::failure_is_retryable(code.as_deref());
                self.last = video;
                return Err(RemoteError::JobFailed {
                    id: self.id.clone(),
                    code,
                    message,
                    retryable,
                });
            }
            _ => {
                let p = video.progress.unwrap_or(0).min(TOTAL_STEPS - 1);
                self.progress = self.progress.max(p);
            }
        }
        self.last = video;
        Ok(self.progress != before)
    }

    /// Ends the generation on an error: cancels the upstream job (once).
    fn give_up(&mut self, e: RemoteError) -> ModelError {
        tracing::warn!(model = %self.shared.id, upstream_id = %self.id, "remote generation failed: {e}");
        if self.cleanup {
            self.cleanup = false;
            self.shared.cancel(&self.id);
        }
        e.into()
    }

    /// Downloads the content: `/content`, or the upstream's absolute `url`
    /// when `/content` will not serve it (SGLang with cloud storage).
    fn download(&self) -> Result<(Vec<u8>, Option<String>), RemoteError> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.overall_timeout;
        let http = self.shared.upstream.http.clone();
        let url = self.shared.upstream.content_url(&self.id)?;
        let max = config.max_download_bytes;
        let r = self.shared.call(http.clone().download(url, true, max, deadline));
        let r = match (r, &self.last.url) {
            (Err(RemoteError::Status { status: 400 | 404, .. }), Some(other)) => {
                let other = url::Url::parse(other)
                    .map_err(|e| RemoteError::Protocol(format!("upstream video url {other:?}: {e}")))?;
                tracing::info!(upstream_id = %self.id, %other, "downloading from the upstream's url");
                self.shared.call(http.download(other, false, max, deadline))
            }
            (r, _) => r,
        };
        r.map_err(|e| match e {
            RemoteError::TooLarge { detail, .. } => RemoteError::TooLarge {
                id: self.id.clone(),
                detail,
            },
            other => other,
        })
    }

    /// Checks, decodes and (if the upstream's size differs) scales the clip
    /// to the request's size.
    fn decode(&self, bytes: &[u8], content_type: Option<&str>) -> Result<DecodedFrames, RemoteError> {
        let id = &self.id;
        decode::sniff_mp4(bytes).map_err(|e| RemoteError::NotVideo {
            id: id.clone(),
            detail: format!("{e} (content type {})", content_type.unwrap_or("not given")),
        })?;
        let to_decode_error = |source| RemoteError::Decode { id: id.clone(), source };
        let info = decode::probe_mp4(bytes).map_err(to_decode_error)?;
        let (w, h) = (self.width, self.height);
        let frame_len = w as usize * h as usize * 3;
        let keep = u64::from(info.frame_count) * frame_len as u64;
        if keep > self.shared.config.max_decoded_bytes {
            return Err(RemoteError::TooLarge {
                id: id.clone(),
                detail: format!(
                    "{} frames at {w}x{h} are {keep} RGB bytes, more than max_decoded_bytes {}",
                    info.frame_count, self.shared.config.max_decoded_bytes
                ),
            });
        }
        if info.frame_count != self.frames {
            tracing::info!(upstream_id = %id, upstream = info.frame_count, asked = self.frames, "upstream made another frame count; keeping its frames");
        }
        let limits = DecodeLimits {
            max_frames: MAX_FRAMES,
            max_width: MAX_UPSTREAM_SIDE,
            max_height: MAX_UPSTREAM_SIDE,
            // What is kept is bounded above; one upstream frame at a time
            // is held beside it.
            max_rgb_bytes: u64::MAX,
        };
        let mut frames = Vec::with_capacity(info.frame_count as usize);
        let decoded = decode::decode_mp4_with(bytes, &limits, |f| {
            frames.push(scale(f, w, h)?);
            Ok::<(), decode::DecodeError>(())
        })
        .map_err(to_decode_error)?;
        if let Some(codec) = &decoded.audio_codec {
            tracing::warn!(upstream_id = %id, codec, "the upstream video has an audio track; it is not decoded and is dropped");
        }
        let fps = decoded.fps_rounded().unwrap_or(self.fps);
        Ok(DecodedFrames {
            fps,
            frames,
            audio: None,
        })
    }
}

/// A decoded frame at `w` x `h` (bilinear scaling when the sizes differ).
fn scale(f: decode::DecodedFrame, w: u32, h: u32) -> Result<RgbFrame, decode::DecodeError> {
    if (f.width, f.height) == (w, h) {
        return Ok(RgbFrame {
            width: w,
            height: h,
            data: f.data,
        });
    }
    let (fw, fh) = (f.width, f.height);
    let img = image::RgbImage::from_raw(fw, fh, f.data)
        .ok_or_else(|| decode::DecodeError::Bitstream(format!("a {fw}x{fh} frame of the wrong length")))?;
    let scaled = imageops::resize(&img, w, h, FilterType::Triangle);
    Ok(RgbFrame {
        width: w,
        height: h,
        data: scaled.into_raw(),
    })
}

impl Generation for RemoteGeneration {
    /// Polls `GET /v1/videos/{id}` until the upstream's progress moves (or
    /// the job completes), at most [`STEP_MAX_WAIT`]; the wait between
    /// polls is `poll_interval` or the upstream's `openai-poll-after-ms`.
    /// A failed job, a poll error, or `overall_timeout` passing fails the
    /// step and cancels the upstream job.
    fn step(&mut self) -> Result<(), ModelError> {
        if self.completed {
            return Ok(());
        }
        let began = Instant::now();
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                let e = RemoteError::Deadline {
                    id: self.id.clone(),
                    after: self.shared.config.overall_timeout,
                    status: self.last.raw_status.clone(),
                    progress: self.progress,
                };
                return Err(self.give_up(e));
            }
            let wake = self.next_poll.min(self.deadline);
            if wake > now {
                std::thread::sleep(wake - now);
            }
            if Instant::now() >= self.deadline {
                continue;
            }
            let url = match self.shared.upstream.job_url(&self.id) {
                Ok(u) => u,
                Err(e) => return Err(self.give_up(e)),
            };
            let http = self.shared.upstream.http.clone();
            let polled = self.shared.call(http.retrieve(url));
            let (video, hint) = match polled {
                Ok(v) => v,
                Err(e) => return Err(self.give_up(e)),
            };
            self.next_poll = Instant::now() + hint.unwrap_or(self.shared.config.poll_interval);
            if video.id != self.id {
                let e = RemoteError::Protocol(format!("polled job {}, got job {}", self.id, video.id));
                return Err(self.give_up(e));
            }
            match self.absorb(video) {
                Ok(true) => return Ok(()),
                Ok(false) if began.elapsed() >= STEP_MAX_WAIT => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.give_up(e)),
            }
        }
    }

    fn steps_done(&self) -> u32 {
        self.progress
    }

    fn total_steps(&self) -> u32 {
        TOTAL_STEPS
    }

    fn is_done(&self) -> bool {
        self.completed
    }

    /// False: the runner should not call [`Generation::checkpoint`].
    fn checkpointable(&self) -> bool {
        Self::CHECKPOINTABLE
    }

    /// Always an error: the state is the upstream's.
    fn checkpoint(&self) -> Result<Vec<u8>, ModelError> {
        Err(ModelError::Internal(format!(
            "{ADAPTER} cannot checkpoint: generation {} runs on the upstream at {}, whose state never leaves it",
            self.id, self.shared.config.base_url
        )))
    }

    /// The request's frame count (the upstream's may differ; the clip from
    /// [`Generation::into_frames`] has the upstream's).
    fn frame_count(&self) -> u32 {
        self.frames
    }

    /// Black: the upstream offers no previews.
    fn decode_frame(&self, _index: u32) -> RgbFrame {
        RgbFrame::new(self.width, self.height)
    }

    /// Downloads `/v1/videos/{id}/content` (at most `max_download_bytes`),
    /// checks it is an MP4 by content, decodes it to RGB at the request's
    /// size (scaling if the upstream's differs) with the MP4's frame rate,
    /// and deletes the upstream job if `delete_after_download`.
    fn into_frames(mut self: Box<Self>) -> Result<Box<dyn Frames>, ModelError> {
        if !self.completed {
            return Err(ModelError::Internal(format!(
                "{ADAPTER}: upstream job {} is {} at {}%, not completed",
                self.id, self.last.raw_status, self.progress
            )));
        }
        let (bytes, content_type) = match self.download() {
            Ok(b) => b,
            Err(e) => return Err(self.give_up(e)),
        };
        let frames = match self.decode(&bytes, content_type.as_deref()) {
            Ok(f) => f,
            Err(e) => return Err(self.give_up(e)),
        };
        drop(bytes);
        if self.shared.config.delete_after_download {
            self.shared.cancel(&self.id);
        }
        self.cleanup = false;
        Ok(Box::new(frames))
    }
}

impl Drop for RemoteGeneration {
    fn drop(&mut self) {
        if self.cleanup {
            self.cleanup = false;
            self.shared.cancel(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_or_resizes() {
        let f = decode::DecodedFrame {
            width: 4,
            height: 2,
            data: vec![200; 24],
        };
        let same = scale(f.clone(), 4, 2).unwrap();
        assert_eq!(same.data, vec![200; 24]);
        let half = scale(f, 2, 1).unwrap();
        assert_eq!((half.width, half.height, half.data.len()), (2, 1, 6));
        assert!(half.data.iter().all(|&b| b == 200));
        let wrong = decode::DecodedFrame {
            width: 4,
            height: 2,
            data: vec![0; 5],
        };
        assert!(scale(wrong, 2, 1).is_err());
    }

    #[test]
    fn resume_restarts_and_the_model_never_checkpoints() {
        let m = RemoteOpenAiModel::new("remote", RemoteOpenAiConfig::new("http://127.0.0.1:9", "m")).unwrap();
        let req = GenerationRequest::new("x", 1, 64, 48, 8);
        let Err(err) = m.resume(&req, b"anything") else {
            panic!("resumed");
        };
        assert!(matches!(err, ModelError::CheckpointMismatch(_)), "{err}");
        assert!(err.to_string().contains("cannot resume; restarting"));
        assert!(!m.checkpointable());
        assert_eq!(m.version(), "remote-openai:m");
        assert_eq!(m.id(), "remote");
        assert_eq!(m.availability(), Availability::Cold);
    }
}
