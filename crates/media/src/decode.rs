//! MP4 (H.264) in, RGB frames out: the reverse of [`crate::encode`], for
//! clips made elsewhere (an upstream engine's `/v1/videos/{id}/content`).
//!
//! The container is walked with the same bounds-checked box parser as
//! [`crate::inspect`] (so a file the inspector refuses is refused here too),
//! the `avc1`/`avc3` track's samples are turned from length-prefixed NAL units
//! into an Annex-B stream (parameter sets from `avcC` first) and decoded by
//! the bundled OpenH264 decoder; each picture is converted from I420 to RGB8
//! with an integer BT.601 limited-range matrix (what our encoder and x264
//! write by default; a full-range flag in the VUI is not honoured).
//!
//! Untrusted input: nothing here panics on a truncated, bit-flipped or made-up
//! file, and memory is bounded before anything is decoded:
//! [`DecodeLimits`] caps the frame count, each side and the RGB bytes of all
//! frames together, checked from the container's declarations and again
//! against what the decoder actually produces. A decoder error, a frame whose
//! size changes mid-stream, or fewer pictures than the track declares is an
//! error, never a silently short clip.
//!
//! Not supported (each an error, with the reason): fragmented MP4 (`moof`,
//! no samples in `moov`), codecs other than H.264 (`hvc1`, `av01`, `vp09`,
//! ...), QuickTime files without an `ftyp` box. An audio track is reported
//! ([`VideoInfo::audio_codec`]) but not decoded.

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;

use crate::MediaError;
use crate::inspect::{inspect_mp4, video_track_data};

/// Default [`DecodeLimits::max_frames`]: videogen's largest request.
pub const DEFAULT_MAX_FRAMES: u32 = 1000;
/// Default [`DecodeLimits::max_width`] and [`DecodeLimits::max_height`].
pub const DEFAULT_MAX_SIDE: u32 = 4096;
/// Default [`DecodeLimits::max_rgb_bytes`]: 4 GiB of decoded RGB.
pub const DEFAULT_MAX_RGB_BYTES: u64 = 4 << 30;

/// Bounds on what one decode may produce; checked before decoding (from the
/// container) and while decoding (from the pictures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most frames (video samples) accepted.
    pub max_frames: u32,
    /// Widest frame accepted, in pixels.
    pub max_width: u32,
    /// Tallest frame accepted, in pixels.
    pub max_height: u32,
    /// Most RGB bytes of all frames together (`frames * width * height * 3`).
    pub max_rgb_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_frames: DEFAULT_MAX_FRAMES,
            max_width: DEFAULT_MAX_SIDE,
            max_height: DEFAULT_MAX_SIDE,
            max_rgb_bytes: DEFAULT_MAX_RGB_BYTES,
        }
    }
}

/// What the container says about the video (and whether it has sound).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Sample entry fourcc of the video track (`avc1` or `avc3`).
    pub codec: String,
    /// Frame width: the sample entry's until decoding, then the decoder's.
    pub width: u32,
    /// Frame height: the sample entry's until decoding, then the decoder's.
    pub height: u32,
    /// Video samples (frames) in the track.
    pub frame_count: u32,
    /// Media timescale of the video track.
    pub timescale: u32,
    /// Track duration in `timescale` units.
    pub duration: u64,
    /// Average frame rate (`frame_count` per second of track duration); 0
    /// when the track declares no duration.
    pub fps: f64,
    /// Sample entry fourcc of the first sound track (`mp4a` for AAC), if any.
    pub audio_codec: Option<String>,
}

impl VideoInfo {
    /// [`VideoInfo::fps`] to the nearest whole frame rate in `1..=240`, or
    /// `None` when the track has no usable timing.
    pub fn fps_rounded(&self) -> Option<u32> {
        let f = self.fps.round();
        (f.is_finite() && (1.0..=240.0).contains(&f)).then_some(f as u32)
    }
}

/// One decoded picture, row-major RGB8 (`data.len() == width * height * 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A whole clip in memory ([`decode_mp4`]).
#[derive(Debug, Clone)]
pub struct DecodedVideo {
    pub info: VideoInfo,
    pub frames: Vec<DecodedFrame>,
}

/// Why a file did not decode. The variants say what a caller may do about
/// it: [`NotMp4`](Self::NotMp4) and [`UnsupportedCodec`](Self::UnsupportedCodec)
/// are about the kind of file, [`TooLarge`](Self::TooLarge) about the limits,
/// [`Malformed`](Self::Malformed) and [`Bitstream`](Self::Bitstream) about a
/// damaged one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No `ftyp` box at the start: HTML, JSON, another container, garbage.
    #[error("not an MP4 file: {0}")]
    NotMp4(String),
    /// An MP4 whose video track is not H.264.
    #[error("unsupported video codec '{0}': only H.264 (avc1/avc3) is decoded")]
    UnsupportedCodec(String),
    /// More frames, pixels or bytes than [`DecodeLimits`] allow.
    #[error("video exceeds the decode limits: {0}")]
    TooLarge(String),
    /// The box structure or sample tables are broken.
    #[error("malformed mp4: {0}")]
    Malformed(String),
    /// The H.264 stream does not decode (or decodes to fewer frames).
    #[error("h264 decode failed: {0}")]
    Bitstream(String),
}

impl From<MediaError> for DecodeError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Malformed(m) => DecodeError::Malformed(m),
            other => DecodeError::Malformed(other.to_string()),
        }
    }
}

impl From<DecodeError> for MediaError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge(_) => MediaError::InvalidInput(e.to_string()),
            other => MediaError::Malformed(other.to_string()),
        }
    }
}

/// Checks by content that `bytes` start like an ISO-BMFF file: a first box
/// of type `ftyp` with a plausible size. On failure the error describes what
/// the bytes look like instead (the start of an HTML page, say).
pub fn sniff_mp4(bytes: &[u8]) -> Result<(), DecodeError> {
    let size = bytes.get(0..4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    let kind = bytes.get(4..8);
    match (size, kind) {
        (Some(size), Some(b"ftyp")) if size == 1 || (size >= 16 && u64::from(size) <= bytes.len() as u64) => Ok(()),
        (Some(_), Some(b"ftyp")) => Err(DecodeError::NotMp4(format!(
            "the ftyp box declares an impossible size ({} bytes in total)",
            bytes.len()
        ))),
        _ => Err(DecodeError::NotMp4(describe_start(bytes))),
    }
}

/// A short, printable account of how `bytes` begin.
pub fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "it is empty".into();
    }
    let head = &bytes[..bytes.len().min(48)];
    let printable = head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\n' || b == b'\r' || b == b'\t');
    if printable {
        let text: String = String::from_utf8_lossy(head)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("{} bytes starting with text {:?}", bytes.len(), text.trim())
    } else {
        let hex: Vec<String> = head.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("{} bytes starting with 0x{}", bytes.len(), hex.join(""))
    }
}

/// Parses the container (no decoding) and describes the video track; an
/// error unless it is an H.264 MP4 this module can decode.
pub fn probe_mp4(bytes: &[u8]) -> Result<VideoInfo, DecodeError> {
    sniff_mp4(bytes)?;
    let info = inspect_mp4(bytes)?;
    if info.codec != "avc1" && info.codec != "avc3" {
        return Err(DecodeError::UnsupportedCodec(info.codec));
    }
    let fps = info.fps();
    Ok(VideoInfo {
        codec: info.codec,
        width: info.width,
        height: info.height,
        frame_count: info.sample_count,
        timescale: info.timescale,
        duration: info.duration,
        fps: if fps.is_finite() { fps } else { 0.0 },
        audio_codec: info.audio.map(|a| a.codec),
    })
}

/// Decodes every frame of an H.264 MP4 into memory; see [`decode_mp4_with`].
pub fn decode_mp4(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedVideo, DecodeError> {
    let mut frames = Vec::new();
    let info = decode_mp4_with(bytes, limits, |f| {
        frames.push(f);
        Ok::<(), DecodeError>(())
    })?;
    Ok(DecodedVideo { info, frames })
}

/// Decodes every frame of an H.264 MP4, in presentation order, handing each
/// to `on_frame` as soon as it is decoded (so a caller that scales or
/// encodes frames never holds more than it keeps). Returns the track's
/// [`VideoInfo`] with the decoded size.
///
/// The limits are checked against the container's declarations before the
/// decoder starts and against every picture it produces. An error from
/// `on_frame` stops the decode and is returned as is.
pub fn decode_mp4_with<E: From<DecodeError>>(
    bytes: &[u8],
    limits: &DecodeLimits,
    mut on_frame: impl FnMut(DecodedFrame) -> Result<(), E>,
) -> Result<VideoInfo, E> {
    let mut info = probe_mp4(bytes)?;
    check_declared(&info, limits)?;
    let track = video_track_data(bytes).map_err(DecodeError::from)?;
    if track.samples.len() != info.frame_count as usize {
        return Err(DecodeError::Malformed(format!(
            "{} samples located, {} declared",
            track.samples.len(),
            info.frame_count
        ))
        .into());
    }
    let avcc = parse_avcc(&track.avcc)?;
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| DecodeError::Bitstream(format!("cannot create the decoder: {e}")))?;

    let mut state = Emitted {
        limits: *limits,
        declared: info.frame_count,
        count: 0,
        dims: None,
    };
    let mut annexb = Vec::new();
    for (i, range) in track.samples.iter().enumerate() {
        annexb.clear();
        if i == 0 {
            for ps in avcc.sps.iter().chain(&avcc.pps) {
                annexb.extend_from_slice(&[0, 0, 0, 1]);
                annexb.extend_from_slice(ps);
            }
        }
        let sample = bytes
            .get(range.clone())
            .ok_or_else(|| DecodeError::Malformed(format!("sample {i} lies outside the file")))?;
        append_annexb(sample, avcc.nal_length_size, &mut annexb)
            .map_err(|m| DecodeError::Malformed(format!("sample {i}: {m}")))?;
        let picture = decoder
            .decode(&annexb)
            .map_err(|e| DecodeError::Bitstream(format!("sample {i}: {e}")))?;
        if let Some(yuv) = picture {
            let frame = state.convert(&yuv)?;
            on_frame(frame)?;
        }
    }
    let rest = decoder
        .flush_remaining()
        .map_err(|e| DecodeError::Bitstream(format!("flushing the decoder: {e}")))?;
    for yuv in &rest {
        let frame = state.convert(yuv)?;
        on_frame(frame)?;
    }
    if state.count != info.frame_count {
        return Err(DecodeError::Bitstream(format!(
            "decoded {} of the {} frames the track declares",
            state.count, info.frame_count
        ))
        .into());
    }
    if let Some((w, h)) = state.dims {
        info.width = w;
        info.height = h;
    }
    Ok(info)
}

/// The limits against the container's own declarations (before decoding).
fn check_declared(info: &VideoInfo, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if info.frame_count == 0 {
        return Err(DecodeError::Malformed(
            "the video track has no samples (a fragmented MP4 is not supported)".into(),
        ));
    }
    if info.frame_count > limits.max_frames {
        return Err(DecodeError::TooLarge(format!(
            "{} frames, at most {} allowed",
            info.frame_count, limits.max_frames
        )));
    }
    check_size(info.width, info.height, info.frame_count, limits)
}

fn check_size(width: u32, height: u32, frames: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width > limits.max_width || height > limits.max_height {
        return Err(DecodeError::TooLarge(format!(
            "frames of {width}x{height}, at most {}x{} allowed",
            limits.max_width, limits.max_height
        )));
    }
    let total = u64::from(width)
        .saturating_mul(u64::from(height))
        .saturating_mul(3)
        .saturating_mul(u64::from(frames));
    if total > limits.max_rgb_bytes {
        return Err(DecodeError::TooLarge(format!(
            "{frames} frames of {width}x{height} are {total} RGB bytes, at most {} allowed",
            limits.max_rgb_bytes
        )));
    }
    Ok(())
}

/// Pictures handed out so far, and the size every one must share.
struct Emitted {
    limits: DecodeLimits,
    declared: u32,
    count: u32,
    dims: Option<(u32, u32)>,
}

impl Emitted {
    fn convert(&mut self, yuv: &DecodedYUV<'_>) -> Result<DecodedFrame, DecodeError> {
        if self.count >= self.declared {
            return Err(DecodeError::Bitstream(format!(
                "the decoder produced more pictures than the {} samples",
                self.declared
            )));
        }
        let (w, h) = yuv.dimensions();
        let (Ok(width), Ok(height)) = (u32::try_from(w), u32::try_from(h)) else {
            return Err(DecodeError::Bitstream(format!("picture of {w}x{h}")));
        };
        if width == 0 || height == 0 {
            return Err(DecodeError::Bitstream(format!("picture of {width}x{height}")));
        }
        match self.dims {
            None => {
                check_size(width, height, self.declared, &self.limits)?;
                self.dims = Some((width, height));
            }
            Some(d) if d != (width, height) => {
                return Err(DecodeError::Bitstream(format!(
                    "picture {} is {width}x{height}, the first was {}x{}",
                    self.count, d.0, d.1
                )));
            }
            Some(_) => {}
        }
        let (sy, su, sv) = yuv.strides();
        let data = i420_to_rgb(
            Planes {
                y: yuv.y(),
                u: yuv.u(),
                v: yuv.v(),
                strides: (sy, su, sv),
            },
            w,
            h,
        )?;
        self.count += 1;
        Ok(DecodedFrame { width, height, data })
    }
}

/// The parameter sets and NAL length size of an `AVCDecoderConfigurationRecord`.
struct Avcc<'a> {
    nal_length_size: usize,
    sps: Vec<&'a [u8]>,
    pps: Vec<&'a [u8]>,
}

fn parse_avcc(avcc: &[u8]) -> Result<Avcc<'_>, DecodeError> {
    let bad = |m: &str| DecodeError::Malformed(format!("avcC: {m}"));
    let byte = |at: usize| avcc.get(at).copied().ok_or_else(|| bad("truncated"));
    if byte(0)? != 1 {
        return Err(bad("configuration version is not 1"));
    }
    let nal_length_size = usize::from(byte(4)? & 0x03) + 1;
    let mut pos = 5;
    let num_sps = usize::from(byte(pos)? & 0x1f);
    pos += 1;
    let sps = parameter_sets(avcc, num_sps, &mut pos)?;
    let num_pps = usize::from(byte(pos)?);
    pos += 1;
    let pps = parameter_sets(avcc, num_pps, &mut pos)?;
    if sps.is_empty() || pps.is_empty() {
        return Err(bad("no SPS or no PPS"));
    }
    Ok(Avcc {
        nal_length_size,
        sps,
        pps,
    })
}

/// `count` parameter sets (a u16 length, then the bytes) from `*pos` on.
fn parameter_sets<'a>(avcc: &'a [u8], count: usize, pos: &mut usize) -> Result<Vec<&'a [u8]>, DecodeError> {
    let bad = |m: &str| DecodeError::Malformed(format!("avcC: {m}"));
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = avcc
            .get(*pos..*pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("truncated"))?;
        let set = avcc
            .get(*pos + 2..*pos + 2 + len)
            .ok_or_else(|| bad("parameter set runs past the record"))?;
        if set.is_empty() {
            return Err(bad("empty parameter set"));
        }
        out.push(set);
        *pos += 2 + len;
    }
    Ok(out)
}

/// Appends the NAL units of one length-prefixed sample to `out` as Annex B
/// (a 4-byte start code before each).
fn append_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut rest = sample;
    if rest.is_empty() {
        return Err("empty sample".into());
    }
    while !rest.is_empty() {
        let Some((prefix, tail)) = rest.split_at_checked(length_size) else {
            return Err(format!("{} bytes left, too few for a NAL length", rest.len()));
        };
        let len = prefix.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let Some((nal, tail)) = tail.split_at_checked(len) else {
            return Err(format!("NAL unit of {len} bytes, {} remain", tail.len()));
        };
        if !nal.is_empty() {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        rest = tail;
    }
    Ok(())
}

/// The three planes of an I420 picture as the decoder lends them.
struct Planes<'a> {
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
    strides: (usize, usize, usize),
}

/// I420 → row-major RGB8, BT.601 limited range, nearest chroma sample.
/// Integer-only (the same on every CPU) and bounds-checked: planes or
/// strides too short for `w` x `h` are an error.
fn i420_to_rgb(p: Planes<'_>, w: usize, h: usize) -> Result<Vec<u8>, DecodeError> {
    let (sy, su, sv) = p.strides;
    let cw = w.div_ceil(2);
    if sy < w || su < cw || sv < cw {
        return Err(DecodeError::Bitstream(format!(
            "plane strides {sy}/{su}/{sv} too small for a width of {w}"
        )));
    }
    let row_len = w
        .checked_mul(3)
        .ok_or_else(|| DecodeError::Bitstream("picture too wide".into()))?;
    let len = row_len
        .checked_mul(h)
        .ok_or_else(|| DecodeError::Bitstream("picture too large".into()))?;
    let short = |plane: &str, row: usize| DecodeError::Bitstream(format!("{plane} plane ends before row {row}"));
    let mut out = vec![0u8; len];
    for (row, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let y_row = p.y.get(row * sy..row * sy + w).ok_or_else(|| short("Y", row))?;
        let crow = row / 2;
        let u_row = chroma_row(p.u, su, crow, cw).ok_or_else(|| short("U", row))?;
        let v_row = chroma_row(p.v, sv, crow, cw).ok_or_else(|| short("V", row))?;
        for (((px2, y2), &u), &v) in out_row.chunks_mut(6).zip(y_row.chunks(2)).zip(u_row).zip(v_row) {
            let d = i32::from(u) - 128;
            let e = i32::from(v) - 128;
            let (rc, gc, bc) = (409 * e + 128, -100 * d - 208 * e + 128, 516 * d + 128);
            for (px, &yy) in px2.chunks_exact_mut(3).zip(y2) {
                let c = 298 * (i32::from(yy) - 16);
                px[0] = ((c + rc) >> 8).clamp(0, 255) as u8;
                px[1] = ((c + gc) >> 8).clamp(0, 255) as u8;
                px[2] = ((c + bc) >> 8).clamp(0, 255) as u8;
            }
        }
    }
    Ok(out)
}

/// Chroma row `crow` (`cw` samples). OpenH264 lends chroma planes of
/// `height * stride / 2` bytes, one row short for odd heights: the last row
/// then repeats its neighbour.
fn chroma_row(plane: &[u8], stride: usize, crow: usize, cw: usize) -> Option<&[u8]> {
    let row = |c: usize| plane.get(c * stride..c * stride + cw);
    row(crow).or_else(|| crow.checked_sub(1).and_then(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mp4Encoder;
    use proptest::prelude::*;

    /// A gradient with a moving square (the encoder tests' pattern).
    fn frame(w: u32, h: u32, t: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        let (sq, sx, sy) = (h / 4, (t * 3) % w, (t * 2) % h);
        for y in 0..h {
            for x in 0..w {
                if x >= sx && x < sx + sq && y >= sy && y < sy + sq {
                    v.extend_from_slice(&[240, 240, 32]);
                } else {
                    v.extend_from_slice(&[
                        ((x + t) * 255 / (w + t)) as u8,
                        (y * 255 / h) as u8,
                        ((x + y + 4 * t) % 256) as u8,
                    ]);
                }
            }
        }
        v
    }

    fn clip(w: u32, h: u32, fps: u32, n: u32) -> Vec<u8> {
        let mut enc = Mp4Encoder::new(w, h, fps).unwrap();
        for t in 0..n {
            enc.push_rgb(&frame(w, h, t)).unwrap();
        }
        enc.finish().unwrap()
    }

    fn mae(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn decodes_our_own_encoder_output() {
        for (w, h, fps, n) in [
            (128u32, 96u32, 24u32, 30u32),
            (64, 48, 30, 7),
            (64, 48, 24, 1),
            (320, 176, 16, 9),
        ] {
            let mp4 = clip(w, h, fps, n);
            let video = decode_mp4(&mp4, &DecodeLimits::default()).unwrap();
            assert_eq!(video.info.codec, "avc1");
            assert_eq!((video.info.width, video.info.height), (w, h));
            assert_eq!(video.info.frame_count, n);
            assert_eq!(video.info.fps_rounded(), Some(fps), "{w}x{h}: fps {}", video.info.fps);
            assert_eq!(video.info.audio_codec, None);
            assert_eq!(video.frames.len(), n as usize);
            for (t, f) in video.frames.iter().enumerate() {
                assert_eq!((f.width, f.height), (w, h));
                let err = mae(&f.data, &frame(w, h, t as u32));
                // H.264 at QP 26 is lossy; a wrong frame order or colour
                // matrix would be far off.
                assert!(err < 10.0, "{w}x{h} frame {t}: mean abs error {err}");
            }
        }
    }

    #[test]
    fn frames_come_in_presentation_order() {
        // Flat grey levels 20 apart: each decoded frame's mean names it.
        let (w, h, n) = (64u32, 48u32, 12u32);
        let mut enc = Mp4Encoder::new(w, h, 24).unwrap();
        for t in 0..n {
            enc.push_rgb(&vec![(10 + 20 * t) as u8; (w * h * 3) as usize]).unwrap();
        }
        let video = decode_mp4(&enc.finish().unwrap(), &DecodeLimits::default()).unwrap();
        for (t, f) in video.frames.iter().enumerate() {
            let mean = f.data.iter().map(|&b| f64::from(b)).sum::<f64>() / f.data.len() as f64;
            let want = f64::from(10 + 20 * t as u32);
            assert!((mean - want).abs() < 4.0, "frame {t}: mean {mean}, want {want}");
        }
    }

    #[test]
    fn reports_an_audio_track() {
        let fmt = crate::AudioFormat {
            sample_rate: 48_000,
            channels: 2,
        };
        let mut enc = Mp4Encoder::with_audio(64, 48, 24, fmt).unwrap();
        for t in 0..6 {
            enc.push_rgb(&frame(64, 48, t)).unwrap();
        }
        enc.push_audio(&vec![0.1; 48_000 / 4 * 2]).unwrap();
        let mp4 = enc.finish().unwrap();
        let video = decode_mp4(&mp4, &DecodeLimits::default()).unwrap();
        assert_eq!(video.info.audio_codec.as_deref(), Some("mp4a"));
        assert_eq!(video.frames.len(), 6);
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let mp4 = clip(64, 48, 24, 8);
        let few = DecodeLimits {
            max_frames: 7,
            ..DecodeLimits::default()
        };
        assert!(matches!(decode_mp4(&mp4, &few), Err(DecodeError::TooLarge(_))));
        let narrow = DecodeLimits {
            max_width: 63,
            ..DecodeLimits::default()
        };
        assert!(matches!(decode_mp4(&mp4, &narrow), Err(DecodeError::TooLarge(_))));
        let small = DecodeLimits {
            max_rgb_bytes: 64 * 48 * 3 * 8 - 1,
            ..DecodeLimits::default()
        };
        let err = decode_mp4(&mp4, &small).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge(_)), "{err}");
        let exact = DecodeLimits {
            max_frames: 8,
            max_width: 64,
            max_height: 48,
            max_rgb_bytes: 64 * 48 * 3 * 8,
        };
        assert_eq!(decode_mp4(&mp4, &exact).unwrap().frames.len(), 8);
    }

    #[test]
    fn a_callback_error_stops_the_decode() {
        let mp4 = clip(64, 48, 24, 8);
        let mut seen = 0;
        let r = decode_mp4_with(&mp4, &DecodeLimits::default(), |_| {
            seen += 1;
            if seen == 3 {
                Err(DecodeError::TooLarge("enough".into()))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err(), DecodeError::TooLarge("enough".into()));
        assert_eq!(seen, 3);
    }

    #[test]
    fn refuses_what_is_not_an_mp4() {
        for (bytes, hint) in [
            (
                &b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"[..],
                "DOCTYPE",
            ),
            (&b"{\"error\":{\"message\":\"nope\"}}"[..], "error"),
            (&b""[..], "empty"),
            (&[0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81][..], "0x1a45dfa3"), // Matroska / WebM
        ] {
            let err = decode_mp4(bytes, &DecodeLimits::default()).unwrap_err();
            assert!(matches!(err, DecodeError::NotMp4(_)), "{err}");
            assert!(err.to_string().contains(hint), "{err}");
        }
    }

    #[test]
    fn refuses_other_codecs() {
        let mut mp4 = clip(64, 48, 24, 2);
        let at = mp4.windows(4).position(|w| w == b"avc1").unwrap();
        mp4[at..at + 4].copy_from_slice(b"hvc1");
        let err = decode_mp4(&mp4, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedCodec("hvc1".into()));
        assert!(err.to_string().contains("only H.264"));
    }

    #[test]
    fn refuses_a_track_without_samples() {
        let mp4 = clip(64, 48, 24, 3);
        // Zero the stsz sample count (uniform size 0, count 0): what a
        // fragmented file's moov looks like.
        let mut m = mp4.clone();
        let at = m.windows(4).position(|w| w == b"stsz").unwrap();
        for b in &mut m[at + 12..at + 16] {
            *b = 0;
        }
        let err = decode_mp4(&m, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn truncated_files_are_errors() {
        let mp4 = clip(64, 48, 24, 6);
        for len in 0..mp4.len() {
            assert!(
                decode_mp4(&mp4[..len], &DecodeLimits::default()).is_err(),
                "truncated to {len} decoded"
            );
        }
    }

    #[test]
    fn bit_flips_never_panic() {
        let mp4 = clip(64, 48, 24, 6);
        // Every byte of the header region, three patterns each; the media
        // data (corrupt H.264 for the decoder) at a stride.
        let header_end = mp4
            .windows(4)
            .position(|w| w == b"mdat")
            .unwrap_or(mp4.len())
            .min(mp4.len());
        let positions = (0..header_end).chain((header_end..mp4.len()).step_by(7));
        for i in positions {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut m = mp4.clone();
                m[i] ^= bit;
                if let Ok(v) = decode_mp4(&m, &DecodeLimits::default()) {
                    assert_eq!(v.frames.len() as u32, v.info.frame_count);
                    for f in &v.frames {
                        assert_eq!(f.data.len(), f.width as usize * f.height as usize * 3);
                    }
                }
            }
        }
    }

    #[test]
    fn avcc_and_nal_parsing_are_bounds_checked() {
        assert!(parse_avcc(&[]).is_err());
        assert!(parse_avcc(&[1, 66, 0, 30, 0xff, 0xe1, 0, 200, 1]).is_err());
        assert!(parse_avcc(&[1, 66, 0, 30, 0xff, 0xe0, 0]).is_err()); // no SPS
        let ok = parse_avcc(&[1, 66, 0, 30, 0xfd, 0xe1, 0, 1, 0x67, 1, 0, 1, 0x68]).unwrap();
        assert_eq!(ok.nal_length_size, 2);
        assert_eq!((ok.sps, ok.pps), (vec![&[0x67u8][..]], vec![&[0x68u8][..]]));
        let mut out = Vec::new();
        assert!(append_annexb(&[0, 0, 0, 5, 1, 2], 4, &mut out).is_err());
        assert!(append_annexb(&[0, 0, 0], 4, &mut out).is_err());
        assert!(append_annexb(&[], 4, &mut out).is_err());
        out.clear();
        append_annexb(&[0, 2, 9, 9, 0, 0, 0, 1, 7], 2, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 9, 9, 0, 0, 0, 1, 7]);
    }

    #[test]
    fn i420_conversion_reference_colours_and_short_planes() {
        let planes = |y: &'static [u8], u: &'static [u8], v: &'static [u8]| Planes {
            y,
            u,
            v,
            strides: (2, 1, 1),
        };
        // Our encoder's white, black and red (see encode.rs).
        let white = i420_to_rgb(planes(&[235; 4], &[128], &[128]), 2, 2).unwrap();
        assert_eq!(white, [255; 12]);
        let black = i420_to_rgb(planes(&[16; 4], &[128], &[128]), 2, 2).unwrap();
        assert_eq!(black, [0; 12]);
        let red = i420_to_rgb(planes(&[82; 4], &[90], &[240]), 2, 2).unwrap();
        for px in red.chunks(3) {
            assert!(px[0] >= 250 && px[1] <= 5 && px[2] <= 5, "{px:?}");
        }
        assert!(i420_to_rgb(planes(&[16; 3], &[128], &[128]), 2, 2).is_err());
        assert!(i420_to_rgb(planes(&[16; 4], &[], &[128]), 2, 2).is_err());
        let narrow = Planes {
            y: &[16; 4],
            u: &[128],
            v: &[128],
            strides: (1, 1, 1),
        };
        assert!(i420_to_rgb(narrow, 2, 2).is_err());
        // Odd height: the last chroma row repeats.
        let odd = i420_to_rgb(planes(&[16; 6], &[128], &[128]), 2, 3).unwrap();
        assert_eq!(odd, [0; 18]);
    }

    #[test]
    fn errors_convert_to_media_errors() {
        let e: MediaError = DecodeError::TooLarge("x".into()).into();
        assert!(matches!(e, MediaError::InvalidInput(_)));
        let e: MediaError = DecodeError::NotMp4("x".into()).into();
        assert!(matches!(e, MediaError::Malformed(_)));
    }

    /// A libx264 High-profile file with B-frames (what SGLang and vLLM-Omni
    /// write through ffmpeg): decoded in presentation order and close to
    /// ffmpeg's own decode. Needs ffmpeg; a missing one fails the test
    /// unless `VIDEOGEN_SKIP_FFPROBE=1` (never under `CI`), like
    /// encode.rs's ffprobe check.
    #[test]
    fn decodes_x264_b_frames_like_ffmpeg() {
        let ffmpeg = std::process::Command::new("ffmpeg").arg("-version").output();
        if !ffmpeg.is_ok_and(|o| o.status.success()) {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            let skip = std::env::var_os("VIDEOGEN_SKIP_FFPROBE").is_some_and(|v| v == "1");
            assert!(
                skip && !ci,
                "ffmpeg is not on PATH: install ffmpeg, or set VIDEOGEN_SKIP_FFPROBE=1"
            );
            eprintln!("note: ffmpeg not on PATH: skipping decodes_x264_b_frames_like_ffmpeg");
            return;
        }
        let dir = tempfile_dir();
        let path = dir.join("x264.mp4");
        let made = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=160x96:rate=16:duration=2",
            ])
            .args([
                "-c:v",
                "libx264",
                "-profile:v",
                "high",
                "-bf",
                "3",
                "-g",
                "12",
                "-pix_fmt",
                "yuv420p",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let reference = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .unwrap();
        assert!(reference.status.success());
        let mp4 = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let video = decode_mp4(&mp4, &DecodeLimits::default()).unwrap();
        assert_eq!(
            (video.info.width, video.info.height, video.info.frame_count),
            (160, 96, 32)
        );
        assert_eq!(video.info.fps_rounded(), Some(16));
        let frame_len = 160 * 96 * 3;
        assert_eq!(reference.stdout.len(), frame_len * 32);
        for (i, (ours, theirs)) in video.frames.iter().zip(reference.stdout.chunks(frame_len)).enumerate() {
            let err = mae(&ours.data, theirs);
            assert!(err < 3.0, "frame {i}: mean abs error {err} against ffmpeg");
        }
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "videogen-media-decode-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// One 4-frame clip, encoded once for all proptest cases.
    fn small_clip() -> &'static [u8] {
        static CLIP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        CLIP.get_or_init(|| clip(64, 48, 24, 4))
    }

    fn box_(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_mp4(&data, &DecodeLimits::default());
            let mut with_ftyp = box_(b"ftyp", b"isom\0\0\x02\0isom");
            with_ftyp.extend_from_slice(&data);
            let _ = decode_mp4(&with_ftyp, &DecodeLimits::default());
        }

        #[test]
        fn never_panics_on_mutated_real_files(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut m = small_clip().to_vec();
            for (at, byte) in &edits {
                let i = at.index(m.len());
                m[i] = *byte;
            }
            if truncate {
                let len = cut.index(m.len());
                m.truncate(len);
            }
            if let Ok(v) = decode_mp4(&m, &DecodeLimits::default()) {
                prop_assert_eq!(v.frames.len() as u32, v.info.frame_count);
            }
        }
    }
}
