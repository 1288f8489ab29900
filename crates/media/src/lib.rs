//! In-process media output for videogen: RGB frames in, a browser-playable
//! H.264 (yuv420p) fast-start MP4 out, plus JPEG thumbnails and spritesheets.
//!
//! Nothing here shells out to ffmpeg: encoding is done by the bundled Cisco
//! OpenH264 (`openh264` crate, compiled from source) and muxing by `muxide`.
//! Output is byte-for-byte deterministic for the same input frames, so a job
//! resumed from a checkpoint reproduces exactly the same file.
//!
//! Layout:
//! - [`encode`]: [`Mp4Encoder`], RGB→yuv420p conversion, H.264 encoding and MP4 muxing.
//! - [`images`]: [`thumbnail_jpeg`] and [`spritesheet_jpeg`].
//! - [`inspect`]: a small bounds-checked MP4 box parser ([`inspect::inspect_mp4`]) used by tests and health checks.
//! - `boxes` (private): the shared box walker that `inspect` and the encoder's duration fix-up use.

mod boxes;
pub mod encode;
pub mod images;
pub mod inspect;

pub use encode::Mp4Encoder;
pub use images::{spritesheet_jpeg, thumbnail_jpeg};

/// Everything that can go wrong while encoding, muxing, imaging or inspecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// Width/height/fps (or tile layout) that we cannot encode.
    #[error("invalid dimensions: {0}")]
    InvalidDimensions(String),
    /// A frame buffer whose length does not match `width * height * 3`.
    #[error("frame has {actual} bytes, expected {expected} (width * height * 3 RGB8)")]
    FrameSize {
        /// Bytes required by the configured size.
        expected: usize,
        /// Bytes actually passed.
        actual: usize,
    },
    /// Invalid argument other than sizes (e.g. no frames at all).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The H.264 encoder failed or produced no output.
    #[error("h264 encoder: {0}")]
    Encoder(String),
    /// The MP4 muxer rejected the stream.
    #[error("mp4 muxer: {0}")]
    Mux(String),
    /// Scaling or JPEG encoding failed.
    #[error("image: {0}")]
    Image(String),
    /// Bytes that are not a (supported) MP4 file.
    #[error("malformed mp4: {0}")]
    Malformed(String),
}

impl From<openh264::Error> for MediaError {
    fn from(e: openh264::Error) -> Self {
        MediaError::Encoder(e.to_string())
    }
}

impl From<muxide::api::MuxerError> for MediaError {
    fn from(e: muxide::api::MuxerError) -> Self {
        MediaError::Mux(e.to_string())
    }
}

impl From<image::ImageError> for MediaError {
    fn from(e: image::ImageError) -> Self {
        MediaError::Image(e.to_string())
    }
}
