//! In-process media output for videogen: RGB frames (and optionally PCM
//! audio) in, a browser-playable H.264 (yuv420p) + AAC-LC fast-start MP4 out,
//! plus JPEG thumbnails and spritesheets.
//!
//! Nothing here shells out to ffmpeg: video is encoded by the bundled Cisco
//! OpenH264 (`openh264` crate, compiled from source), audio by the bundled
//! Fraunhofer FDK AAC (`fdk-aac` crate, compiled from source), and muxing is
//! done by `muxide`. Output is byte-for-byte deterministic for the same input
//! frames and samples, so a job resumed from a checkpoint reproduces exactly
//! the same file.
//!
//! Layout:
//! - [`encode`]: [`Mp4Encoder`], RGB→yuv420p conversion, H.264 encoding and MP4 muxing.
//! - [`decode`]: the reverse for H.264 MP4s made elsewhere ([`decode::decode_mp4`]): bounded,
//!   hostile-input-safe demuxing and OpenH264 decoding to RGB frames.
//! - [`audio`]: [`AudioFormat`] and the optional AAC-LC track (PCM→AAC, priming
//!   and trimming, the post-mux edit list); its docs say why AAC-LC and FDK.
//! - [`images`]: [`thumbnail_jpeg`] and [`spritesheet_jpeg`].
//! - [`inspect`]: a small bounds-checked MP4 box parser ([`inspect::inspect_mp4`]) used by tests and
//!   health checks; it reports the video track and, when present, the audio track.
//! - `boxes` (private): the shared box walker that `inspect` and the encoder's post-mux fix-ups
//!   (single-frame duration, audio timing) use.

pub mod audio;
mod boxes;
pub mod decode;
pub mod encode;
pub mod images;
pub mod inspect;

pub use audio::AudioFormat;
pub use decode::{DecodeError, DecodeLimits, DecodedFrame, DecodedVideo, VideoInfo, decode_mp4, decode_mp4_with};
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
    /// Invalid argument other than sizes (e.g. no frames at all, an
    /// unsupported audio sample rate or channel count, audio pushed to an
    /// encoder without an audio track).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The H.264 encoder failed or produced no output.
    #[error("h264 encoder: {0}")]
    Encoder(String),
    /// The AAC encoder failed or misbehaved.
    #[error("aac encoder: {0}")]
    Audio(String),
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
