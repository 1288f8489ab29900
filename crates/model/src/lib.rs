//! The model seam and a deterministic, checkpointable CPU reference model.
//!
//! Everything around generation (workers, progress, checkpoints, preemption,
//! encoding) codes against [`Model`] and [`Generation`], treating a model as
//! a black box that advances in steps, can decode preview frames at any time
//! and serialises its state to bytes. [`ReferenceModel`] implements the seam
//! on the CPU with real, bit-reproducible arithmetic, so that machinery is
//! exercised for real long before a GPU pipeline exists.
//!
//! # Layout
//! - [`request`]: [`GenerationRequest`], [`RgbImage`], validation limits, latent shape, params hash.
//! - [`error`]: [`ModelError`] with stable codes and retryability.
//! - [`checkpoint`]: the checkpoint byte format and [`checkpoint_info`].
//! - [`frames`]: [`Frames`], what a finished generation decodes to (RGB frames, optional audio).
//! - [`reference`](mod@reference): [`ReferenceModel`]: stepping, checkpoint/resume, decoding.
//! - `scene`: the prompt-derived target field the reference model denoises toward.
//! - [`rng`]: SplitMix64 / xoshiro256** with explicit, serialisable state.

pub mod checkpoint;
pub mod error;
pub mod frames;
pub mod reference;
pub mod request;
pub mod rng;
mod scene;

pub use checkpoint::{CheckpointInfo, checkpoint_info};
pub use error::ModelError;
pub use frames::{Audio, DecodedFrames, Frames};
pub use reference::{REFERENCE_DEFAULT_STEPS, REFERENCE_VERSION, ReferenceConfig, ReferenceModel};
pub use request::{GenerationRequest, LatentDims, RgbFrame, RgbImage};

/// Whether a model can take a job on this worker now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Can run; the first job pays the load.
    Cold,
    /// Loaded: jobs start at once.
    Warm,
    /// Cannot run (failed to load, host down); the reason. The worker takes
    /// no jobs for it until it becomes available again.
    Unavailable(String),
}

/// A text-to-video model. Implementations are shared between worker threads.
pub trait Model: Send + Sync + 'static {
    /// Model name as requests spell it, e.g. `videogen-ref`.
    fn id(&self) -> &str;
    /// Version of the weights/arithmetic; checkpoints only resume on the
    /// same id and version.
    fn version(&self) -> &str;
    /// Loads weights (reference: sleeps `load_time`); idempotent and cheap
    /// after the first call.
    fn load(&self) -> Result<(), ModelError>;
    /// Begins a generation at step 0.
    fn start(&self, req: &GenerationRequest) -> Result<Box<dyn Generation>, ModelError>;
    /// Continues from `checkpoint` bytes produced by
    /// [`Generation::checkpoint`] for the same request.
    fn resume(&self, req: &GenerationRequest, checkpoint: &[u8]) -> Result<Box<dyn Generation>, ModelError>;
    /// Whether it can take a job now (reported to the scheduler).
    fn availability(&self) -> Availability {
        Availability::Warm
    }
    /// Content hash of the loaded weights, once known.
    fn weights_hash(&self) -> Option<String> {
        None
    }
}

/// One in-progress generation. Not `Sync`: one thread drives it.
pub trait Generation: Send {
    /// Runs one denoising step; blocking CPU (or GPU) work. A no-op when done.
    fn step(&mut self) -> Result<(), ModelError>;
    fn steps_done(&self) -> u32;
    fn total_steps(&self) -> u32;
    fn is_done(&self) -> bool {
        self.steps_done() >= self.total_steps()
    }
    /// Serialised state, everything needed to continue bit-exactly (the
    /// reference model's layout is [`checkpoint`]; a hosted model's is in
    /// docs/MODEL_HOST.md). Fails only if the model's process does.
    fn checkpoint(&self) -> Result<Vec<u8>, ModelError>;
    /// Whether [`Generation::checkpoint`] can work at all. A model that
    /// cannot (an upstream engine behind an HTTP API) is never asked, and a
    /// preempted job of it restarts from step 0.
    fn checkpointable(&self) -> bool {
        true
    }
    /// Output frames this generation produces.
    fn frame_count(&self) -> u32;
    /// Decodes output frame `index` (< [`Generation::frame_count`]) to RGB
    /// at the request's width x height. Callable any time (a preview before
    /// done); a pure function of the state.
    fn decode_frame(&self, index: u32) -> RgbFrame;
    /// Decodes the output for encoding. Once this returns, the device is
    /// free for the next generation: encoding, moderation and upload work
    /// from the [`Frames`] alone. The default decodes lazily from the state
    /// (cheap for a CPU model); a hosted model decodes on its GPU here.
    fn into_frames(self: Box<Self>) -> Result<Box<dyn Frames>, ModelError>;
}
