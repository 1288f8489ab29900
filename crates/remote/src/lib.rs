//! `remote-openai`: a videogen [`Model`](videogen_model::Model) whose
//! generations run on an upstream engine that serves (a subset of) OpenAI's
//! Videos API, such as SGLang Diffusion, vLLM-Omni, OpenAI itself or another
//! videogen. videogen keeps doing what it does (queueing, tiers, leases,
//! retries, moderation, encoding, storage, SSE); the upstream only denoises.
//!
//! # What it does
//!
//! | seam | upstream call |
//! |---|---|
//! | [`Model::start`](videogen_model::Model::start) | `POST /v1/videos`: `prompt` (the request's `style` appended as a hosted model does, see [`RemoteOpenAiConfig::style_suffixes`]), `model` ([`RemoteOpenAiConfig::upstream_model`]), `size` `"WxH"`, `seconds` (a string: the request's frames / fps, rounded, at least 1) and, unless [`RemoteOpenAiConfig::extension_fields`] is off, `seed` (reduced modulo 2^53), `num_inference_steps`, `fps`, and `negative_prompt` / `guidance_scale` when set; `num_frames` with [`RemoteOpenAiConfig::send_num_frames`]. JSON, or multipart when the request has a first frame (the PNG is the `input_reference` file part) or [`RequestEncoding::Multipart`] is chosen. Optional bearer key. |
//! | [`Generation::step`](videogen_model::Generation::step) | `GET /v1/videos/{id}` every `poll_interval` (or as the upstream's `openai-poll-after-ms` says), until the upstream's `progress` moves, the job ends, or [`STEP_MAX_WAIT`] passes. Steps mirror `progress`: [`TOTAL_STEPS`] = 100, one per percent, capped at 99 until the status is `completed`; so videogen's progress events follow the upstream's. |
//! | [`Generation::into_frames`](videogen_model::Generation::into_frames) | `GET /v1/videos/{id}/content` (at most `max_download_bytes`; up to 5 redirects followed, the key sent to the upstream's origin only), checked to be an MP4 by content (an `ftyp` box), decoded with [`videogen_media::decode`] (H.264 through OpenH264), scaled to the request's size if the upstream's differs, at the MP4's frame rate; then `DELETE` (if [`RemoteOpenAiConfig::delete_after_download`]). |
//! | `Drop` of an unfinished generation, a failed or timed-out one | `DELETE /v1/videos/{id}` in the background (best effort). |
//! | [`Model::load`](videogen_model::Model::load), [`Model::availability`](videogen_model::Model::availability) | `GET /v1/models` as a health probe (any answer but 401/403 counts; every 30 s at most). A failed connect or refused key anywhere marks the model `Unavailable` for 30 s, doubling to 10 min, as a hosted model's failed load does. |
//! | [`Generation::checkpoint`](videogen_model::Generation::checkpoint), [`Model::resume`](videogen_model::Model::resume) | none: checkpointing is impossible (`Internal("remote-openai cannot checkpoint: …")`), resuming answers `CheckpointMismatch("remote-openai cannot resume; restarting")` so the runner restarts at step 0. [`RemoteGeneration::CHECKPOINTABLE`] (false) lets a runner skip checkpoints. |
//!
//! Failures and what a retry can do are tabled on [`RemoteError`]. In short:
//! an unreachable upstream or refused key is `Unavailable`; a 4xx to create,
//! a job failed with a 4xx-like or content-policy code
//! ([`failure_is_retryable`]), a file over the limits or in a codec other
//! than H.264 is `InvalidRequest` (not retried); everything else, including a
//! job stuck past `overall_timeout`, a hung request and content that is not
//! an MP4 at all (an HTML error page), is a retryable `Internal` error, and
//! the upstream job is cancelled.
//!
//! # How the upstreams differ
//!
//! Read from the sources: openai-python `src/openai/types/video*.py`,
//! SGLang `python/sglang/multimodal_gen/runtime/entrypoints/openai/{video_api,protocol}.py`,
//! vLLM-Omni `vllm_omni/entrypoints/openai/protocol/videos.py` and
//! `docs/serving/videos_api.md`, and videogen's own `crates/api`.
//!
//! | | OpenAI | SGLang Diffusion | vLLM-Omni | videogen |
//! |---|---|---|---|---|
//! | create body | JSON or multipart | JSON (extras may be nested in `extra_body`/`extra_json`) or multipart | **multipart only** on `/v1/videos`: use [`RequestEncoding::Multipart`] | JSON or multipart; unknown fields refused |
//! | `seconds` | string, `"4"`/`"8"`/`"12"` | integer (pydantic takes `"4"`), default 4 | string `^[1-9]\d*$` | string, the model's durations |
//! | `size` | 4 fixed sizes | any `WxH` (or `width`/`height`) | `\d+x\d+` (or `width`/`height`, `video_params`) | the model's sizes |
//! | frames | from `seconds` | `num_frames`, else `fps * seconds` (fps default 24) | `num_frames`, else `seconds * fps` (fps default 24) | from `seconds` and the model's rule |
//! | `seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`, `fps` | rejected (unknown parameters): turn `extension_fields` off | accepted (plus `guidance_scale_2`, `true_cfg_scale`, `flow_shift`, …) | accepted (`num_inference_steps` 1..=200, `guidance_scale` 0..=20) | accepted where the model card allows; `seed` ≤ 2^53 − 1 |
//! | image-to-video | `input_reference` file or `{image_url \| file_id}` | `input_reference` file (older versions *required* one on multipart), `reference_url` | `input_reference` file (image or video), JSON `image_reference` | `input_reference` file or data-URL `image_url` |
//! | statuses | `queued`, `in_progress`, `completed`, `failed` | `queued` → `completed` \| `failed` (never `in_progress`) | the four OpenAI statuses | the four OpenAI statuses |
//! | `progress` | integer percent | 0, then 100 at completion: no intermediate progress | "best-effort" integer | 0..=100 through the phases |
//! | failure `error` | `{code, message}` | `{message}` only: no code, so always retried | `{code: int \| str, message}` | `{code, message}` (e.g. `output_moderation_blocked`) |
//! | error responses | `{"error": {message, type, param, code}}` | FastAPI `{"detail": …}` | FastAPI `{"detail": …}` | OpenAI's envelope |
//! | `DELETE /v1/videos/{id}` | deletes; `{id, object: "video.deleted", deleted}` | forgets the record, returns the Video with status `deleted`; the generation keeps running ("TODO: support aborting a job") | deletes job and output; `video.deleted` | cancels a running job, deletes |
//! | `/content` | MP4 (`variant` video, thumbnail, spritesheet) | MP4; 404 while running; 400 when uploaded to cloud storage (the Video's `url` has it: followed, without the key) | MP4 | MP4 (`variant`), ranges; a 302 to a signed URL with `--download-redirect` |
//! | `openai-poll-after-ms` | sent (the SDK's pollers read it) | not sent | not sent | sent |
//! | extra Video fields | `expires_at`, `remixed_from_video_id` | `quality`, `url`, `file_path(s)`, `num_outputs`, `inference_time_s`, `peak_memory_mb` | `media_type`, `file_name`, `inference_time_s`, `stage_durations`, `peak_memory_mb` | `phase`, `queue_position`, `attempt`, `step`, `total_steps`, … |
//!
//! Not handled: fragmented MP4s, non-H.264 video (both refused with the
//! reason), audio (an AAC track is detected and dropped, with a warning),
//! and SGLang's `n > 1` outputs (the first is used).

mod client;
pub mod config;
mod error;
mod model;
pub mod wire;

pub use config::{RemoteOpenAiConfig, RequestEncoding};
pub use error::RemoteError;
pub use model::{ADAPTER, MAX_UPSTREAM_SIDE, RemoteGeneration, RemoteOpenAiModel, STEP_MAX_WAIT, TOTAL_STEPS};
pub use wire::{UpstreamFailure, UpstreamStatus, UpstreamVideo, failure_is_retryable};
