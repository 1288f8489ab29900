//! The moderation seam. Every prompt passes a [`Moderator`] before its job is
//! queued, and sampled output frames pass it before the video is viewable.

use async_trait::async_trait;

/// An RGB8 frame sampled from an output, for output moderation.
#[derive(Debug, Clone)]
pub struct FrameSample {
    pub index: u32,
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    pub rgb: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Block {
        /// Stable category, e.g. `violence`, `sexual`, `denylist`.
        category: String,
        /// Human-readable reason, safe to show the submitter.
        reason: String,
    },
}

#[async_trait]
pub trait Moderator: Send + Sync + 'static {
    /// Checks a prompt (and style) before the job is accepted.
    async fn check_prompt(&self, prompt: &str, style: Option<&str>) -> Verdict;
    /// Checks sampled frames of a finished generation before it is viewable.
    async fn check_frames(&self, prompt: &str, frames: &[FrameSample]) -> Verdict;
}
