//! What a finished generation decodes to: the frames an encoder reads and,
//! for models that make sound, an audio track.

use crate::{Generation, RgbFrame};

/// Interleaved PCM in `[-1, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: u16,
    /// `channels` values per sample frame.
    pub samples: Vec<f32>,
}

/// A decoded clip. Not tied to the device: reading it is CPU work.
pub trait Frames: Send {
    fn count(&self) -> u32;
    fn fps(&self) -> u32;
    /// Frame `index`; out-of-range indices give the last frame.
    fn frame(&self, index: u32) -> RgbFrame;
    fn audio(&self) -> Option<&Audio> {
        None
    }
}

/// Frames already in memory (what a hosted model streams back).
#[derive(Debug, Clone)]
pub struct DecodedFrames {
    pub fps: u32,
    pub frames: Vec<RgbFrame>,
    pub audio: Option<Audio>,
}

impl Frames for DecodedFrames {
    fn count(&self) -> u32 {
        u32::try_from(self.frames.len()).unwrap_or(u32::MAX)
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn frame(&self, index: u32) -> RgbFrame {
        let i = (index as usize).min(self.frames.len().saturating_sub(1));
        self.frames.get(i).cloned().unwrap_or_else(|| RgbFrame::new(1, 1))
    }

    fn audio(&self) -> Option<&Audio> {
        self.audio.as_ref()
    }
}

/// Frames decoded on demand from a generation's state (the reference model:
/// decoding a frame is cheap, holding all of them is not).
pub struct LazyFrames<G: Generation + ?Sized> {
    pub generation: Box<G>,
    pub fps: u32,
    pub audio: Option<Audio>,
}

impl<G: Generation + ?Sized> Frames for LazyFrames<G> {
    fn count(&self) -> u32 {
        self.generation.frame_count()
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn frame(&self, index: u32) -> RgbFrame {
        self.generation.decode_frame(index)
    }

    fn audio(&self) -> Option<&Audio> {
        self.audio.as_ref()
    }
}
