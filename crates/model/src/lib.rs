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
//! - [`reference`](mod@reference): [`ReferenceModel`]: stepping, checkpoint/resume, decoding.
//! - `scene`: the prompt-derived target field the reference model denoises toward.
//! - [`rng`]: SplitMix64 / xoshiro256** with explicit, serialisable state.

pub mod checkpoint;
pub mod error;
pub mod reference;
pub mod request;
pub mod rng;
mod scene;

pub use checkpoint::{CheckpointInfo, checkpoint_info};
pub use error::ModelError;
pub use reference::{REFERENCE_DEFAULT_STEPS, REFERENCE_VERSION, ReferenceConfig, ReferenceModel};
pub use request::{GenerationRequest, LatentDims, RgbFrame, RgbImage};

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
    /// Serialised state: magic, format version, model id+version, request
    /// params hash (sha256), step, RNG state, latent dims, latents (f32 LE),
    /// crc32 trailer. See [`checkpoint`].
    fn checkpoint(&self) -> Vec<u8>;
    /// Output frames this generation produces.
    fn frame_count(&self) -> u32;
    /// Decodes output frame `index` (< [`Generation::frame_count`]) to RGB
    /// at the request's width x height. Callable any time (a preview before
    /// done); a pure function of the state.
    fn decode_frame(&self, index: u32) -> RgbFrame;
}
