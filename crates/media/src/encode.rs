//! RGB frames → H.264 (yuv420p, OpenH264) → fast-start MP4 (muxide), with an
//! optional AAC-LC audio track (see [`crate::audio`]).
//!
//! Determinism is a hard requirement (a job resumed from a checkpoint must
//! reproduce the identical file), so:
//! - RGB→YUV uses our own integer BT.601 conversion rather than openh264's,
//!   which picks an AVX2 or scalar float path at runtime depending on the CPU;
//! - the encoder runs single-threaded with rate control off (constant QP), so
//!   no decision depends on timing or thread scheduling;
//! - muxide writes zero creation/modification times, and we embed no metadata;
//! - audio is fixed-point FDK AAC fed the same i16 samples however the PCM
//!   was split between [`Mp4Encoder::push_audio`] calls.

use muxide::api::{AacProfile, AudioCodec, Muxer, MuxerBuilder, VideoCodec};
use openh264::OpenH264API;
use openh264::Timestamp;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange, RateControlMode,
    SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;

use crate::MediaError;
use crate::audio::{AAC_FRAME_SAMPLES, AacTrack, AudioFormat, retime_audio_track, samples_for_frames};
use crate::boxes::{self, BoxRef, find_child, find_path};
use crate::inspect::{Mp4Info, inspect_mp4};

/// OpenH264's resolution limit (level 5.2): 3840 on the long side, 2160 on the short one.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;
const MAX_FPS: u32 = 240;

/// Keyframe interval in seconds: lets browsers seek without decoding from
/// the start, at a small size cost.
const KEYFRAME_INTERVAL_SECS: u32 = 2;

/// Incremental H.264 MP4 encoder: push RGB frames, then [`finish`](Self::finish)
/// to get the complete, fast-start MP4 bytes.
///
/// Quality is a constant QP of 26 (OpenH264's default base QP with rate control
/// off; adaptive quantisation may move P-frames within 22..=32), which gives
/// roughly 1–4 Mbit/s for typical 720p24 generated content.
///
/// An encoder made with [`with_audio`](Self::with_audio) also takes PCM via
/// [`push_audio`](Self::push_audio) and writes an AAC-LC track (about
/// 64 kbit/s per channel) whose presented duration equals the video's.
pub struct Mp4Encoder {
    width: u32,
    height: u32,
    fps: u32,
    encoder: Encoder,
    /// I420 planes (Y, then U, then V), reused between frames.
    yuv: Vec<u8>,
    /// Annex-B bitstream of the current frame, reused between frames.
    annexb: Vec<u8>,
    muxer: Muxer<Vec<u8>>,
    frames: u32,
    audio: Option<AacTrack>,
}

impl std::fmt::Debug for Mp4Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Encoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .field("frames", &self.frames)
            .field("audio", &self.audio)
            .finish_non_exhaustive()
    }
}

impl Mp4Encoder {
    /// Creates an encoder for `width`x`height` frames at `fps` frames per second.
    ///
    /// Width and height must be even (yuv420p halves chroma in both directions)
    /// and within OpenH264's 3840x2160 limit; `fps` must be 1..=240.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, MediaError> {
        Self::build(width, height, fps, None)
    }

    /// Like [`new`](Self::new), plus an AAC-LC audio track in `format`: push
    /// its PCM with [`push_audio`](Self::push_audio).
    ///
    /// An unsupported sample rate (see
    /// [`SUPPORTED_SAMPLE_RATES`](crate::audio::SUPPORTED_SAMPLE_RATES)) or a
    /// channel count other than 1 or 2 is [`MediaError::InvalidInput`].
    pub fn with_audio(width: u32, height: u32, fps: u32, format: AudioFormat) -> Result<Self, MediaError> {
        format.validate()?;
        Self::build(width, height, fps, Some(format))
    }

    fn build(width: u32, height: u32, fps: u32, audio: Option<AudioFormat>) -> Result<Self, MediaError> {
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(MediaError::InvalidDimensions(format!(
                "{width}x{height}: width and height must be non-zero and even for yuv420p"
            )));
        }
        if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
            return Err(MediaError::InvalidDimensions(format!(
                "{width}x{height}: exceeds the encoder limit of {MAX_LONG_SIDE}x{MAX_SHORT_SIDE}"
            )));
        }
        if fps == 0 || fps > MAX_FPS {
            return Err(MediaError::InvalidInput(format!(
                "fps {fps} out of range 1..={MAX_FPS}"
            )));
        }

        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            // Rate control off = constant QP: deterministic and independent of timestamps.
            .rate_control_mode(RateControlMode::Off)
            .skip_frames(false)
            .qp(QpRange::new(22, 32))
            // Only used by OpenH264 to choose the H.264 level.
            .bitrate(BitRate::from_bps(4_000_000))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .num_threads(1)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .complexity(Complexity::Medium)
            .intra_frame_period(IntraFramePeriod::from_num_frames(fps * KEYFRAME_INTERVAL_SECS))
            // Matches the conversion in `rgb_to_i420`: BT.601, limited range.
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;

        let mut builder = MuxerBuilder::new(Vec::new())
            .video(VideoCodec::H264, width, height, f64::from(fps))
            .with_fast_start(true);
        if let Some(format) = audio {
            builder = builder.audio(AudioCodec::Aac(AacProfile::Lc), format.sample_rate, format.channels);
        }
        let muxer = builder.build()?;
        let audio = audio.map(AacTrack::new).transpose()?;

        let luma = width as usize * height as usize;
        Ok(Self {
            width,
            height,
            fps,
            encoder,
            yuv: vec![0; luma + luma / 2],
            annexb: Vec::new(),
            muxer,
            frames: 0,
            audio,
        })
    }

    /// Encodes one frame of row-major RGB8 (`width * height * 3` bytes).
    pub fn push_rgb(&mut self, rgb: &[u8]) -> Result<(), MediaError> {
        let (w, h) = (self.width as usize, self.height as usize);
        let expected = w * h * 3;
        if rgb.len() != expected {
            return Err(MediaError::FrameSize {
                expected,
                actual: rgb.len(),
            });
        }
        rgb_to_i420(rgb, w, h, &mut self.yuv);

        let (y, uv) = self.yuv.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        let source = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let pts_ms = u64::from(self.frames) * 1000 / u64::from(self.fps);
        let bitstream = self.encoder.encode_at(&source, Timestamp::from_millis(pts_ms))?;
        let frame_type = bitstream.frame_type();
        self.annexb.clear();
        bitstream.write_vec(&mut self.annexb);
        if self.annexb.is_empty() || matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Err(MediaError::Encoder(format!(
                "frame {} produced no bitstream (frame type {frame_type:?})",
                self.frames
            )));
        }

        let pts = f64::from(self.frames) / f64::from(self.fps);
        self.muxer
            .write_video(pts, &self.annexb, frame_type == FrameType::IDR)?;
        self.frames += 1;
        // PCM that waited for the video to reach it can be encoded now.
        if let Some(audio) = &mut self.audio {
            let covered = samples_for_frames(self.frames, self.fps, audio.format().sample_rate, false);
            audio.feed_pending(covered)?;
        }
        Ok(())
    }

    /// Appends interleaved PCM (`[l, r, l, r, ...]` for stereo) to the audio
    /// track; the length must be a whole number of frames (a multiple of the
    /// channel count).
    ///
    /// Samples are nominally in [-1, 1]: larger magnitudes are clamped and NaN
    /// becomes silence. Audio and video may be pushed in any order and any
    /// chunking; at [`finish`](Self::finish) audio past the video's end is
    /// dropped and a shorter track is padded with silence. Without an audio
    /// track (made by [`new`](Self::new)) this is [`MediaError::InvalidInput`].
    pub fn push_audio(&mut self, interleaved_f32_pcm: &[f32]) -> Result<(), MediaError> {
        let Some(audio) = &mut self.audio else {
            return Err(MediaError::InvalidInput(
                "this encoder has no audio track: create it with Mp4Encoder::with_audio".into(),
            ));
        };
        let covered = samples_for_frames(self.frames, self.fps, audio.format().sample_rate, false);
        audio.push(interleaved_f32_pcm, covered)
    }

    /// The audio track's format, if the encoder has one.
    pub fn audio_format(&self) -> Option<AudioFormat> {
        self.audio.as_ref().map(AacTrack::format)
    }

    /// Number of frames pushed so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Finishes the stream and returns the complete MP4 file.
    ///
    /// The result is checked with [`inspect_mp4`] before it is returned, so a
    /// muxer regression (moov after mdat, wrong sample count or offsets) is an
    /// error here rather than a broken file in storage.
    pub fn finish(self) -> Result<Vec<u8>, MediaError> {
        if self.frames == 0 {
            return Err(MediaError::InvalidInput(
                "cannot finish an MP4 without any frames".into(),
            ));
        }
        let mut muxer = self.muxer;
        let mut audio_layout = None;
        if let Some(audio) = self.audio {
            let format = audio.format();
            let samples = samples_for_frames(self.frames, self.fps, format.sample_rate, true);
            let encoded = audio.finish(samples)?;
            for (i, frame) in encoded.frames.iter().enumerate() {
                let pts = i as f64 * f64::from(AAC_FRAME_SAMPLES) / f64::from(format.sample_rate);
                muxer.write_audio(pts, frame)?;
            }
            audio_layout = Some(AudioLayout {
                format,
                priming: encoded.priming,
                frames: encoded.frames.len(),
                samples,
            });
        }
        muxer.finish_in_place()?;
        let mut bytes = muxer.into_writer();
        if self.frames == 1 {
            // muxide derives the last sample's duration from the previous
            // delta; with a single frame there is none and it writes 1 tick.
            fix_single_frame_duration(&mut bytes, self.fps)?;
        }
        if let Some(a) = &audio_layout {
            bytes = retime_audio_track(&bytes, a.format.sample_rate, a.priming, a.samples)?;
        }

        let info = inspect_mp4(&bytes)?;
        let problem = if !info.moov_before_mdat {
            Some("moov is not before mdat".to_string())
        } else if info.codec != "avc1" {
            Some(format!("codec is {}, expected avc1", info.codec))
        } else if info.sample_count != self.frames {
            Some(format!(
                "{} samples muxed, {} frames encoded",
                info.sample_count, self.frames
            ))
        } else if (info.width, info.height) != (self.width, self.height) {
            Some(format!("size {}x{} muxed", info.width, info.height))
        } else {
            audio_problem(&info, audio_layout.as_ref())
        };
        match problem {
            Some(p) => Err(MediaError::Mux(format!("output failed self-check: {p}"))),
            None => Ok(bytes),
        }
    }
}

/// What was encoded into the audio track, for the self-check.
struct AudioLayout {
    format: AudioFormat,
    /// Encoder delay, samples per channel.
    priming: u32,
    /// AAC frames muxed.
    frames: usize,
    /// Presented samples per channel (the video's duration).
    samples: u64,
}

/// Self-check of the audio track against what was encoded: `Some(problem)`.
fn audio_problem(info: &Mp4Info, expected: Option<&AudioLayout>) -> Option<String> {
    let Some(&AudioLayout {
        format,
        priming,
        frames,
        samples,
    }) = expected
    else {
        return info.audio.as_ref().map(|_| "unexpected audio track".to_string());
    };
    let Some(a) = &info.audio else {
        return Some("audio track missing".into());
    };
    if a.codec != "mp4a" || a.audio_object_type != Some(2) {
        Some(format!(
            "audio codec {} (object type {:?}), expected AAC-LC",
            a.codec, a.audio_object_type
        ))
    } else if (a.sample_rate, a.channels) != (format.sample_rate, format.channels) {
        Some(format!("audio muxed as {} Hz x{}", a.sample_rate, a.channels))
    } else if a.sample_count as usize != frames
        || a.timescale != format.sample_rate
        || a.duration != u64::from(priming) + samples
    {
        Some(format!(
            "{} AAC frames lasting {} at timescale {} muxed, {frames} frames of {samples} + {priming} samples encoded",
            a.sample_count, a.duration, a.timescale
        ))
    } else if a.media_start != u64::from(priming) || a.edit_duration != Some(info.movie_duration) {
        Some(format!(
            "audio edit list starts at {} for {:?}, expected {priming} for {}",
            a.media_start, a.edit_duration, info.movie_duration
        ))
    } else {
        None
    }
}

/// Row-major RGB8 → I420 (planar Y, U, V), BT.601 limited range, 2x2 chroma
/// averaging. Integer-only so the result is identical on every CPU.
fn rgb_to_i420(rgb: &[u8], w: usize, h: usize, out: &mut [u8]) {
    let (y_plane, uv) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = uv.split_at_mut(w * h / 4);
    let cw = w / 2;
    for cy in 0..h / 2 {
        let row0 = &rgb[(2 * cy) * w * 3..(2 * cy + 1) * w * 3];
        let row1 = &rgb[(2 * cy + 1) * w * 3..(2 * cy + 2) * w * 3];
        let (y_top, y_bottom) = y_plane[2 * cy * w..(2 * cy + 2) * w].split_at_mut(w);
        let u_row = &mut u_plane[cy * cw..(cy + 1) * cw];
        let v_row = &mut v_plane[cy * cw..(cy + 1) * cw];
        for cx in 0..cw {
            let mut rs = 0i32;
            let mut gs = 0i32;
            let mut bs = 0i32;
            for (row, y_row) in [(row0, &mut *y_top), (row1, &mut *y_bottom)] {
                for dx in 0..2 {
                    let x = 2 * cx + dx;
                    let r = i32::from(row[3 * x]);
                    let g = i32::from(row[3 * x + 1]);
                    let b = i32::from(row[3 * x + 2]);
                    y_row[x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
                    rs += r;
                    gs += g;
                    bs += b;
                }
            }
            // Sums of four pixels: divide by 4 * 256 with rounding.
            u_row[cx] = (((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128).clamp(0, 255) as u8;
            v_row[cx] = (((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128).clamp(0, 255) as u8;
        }
    }
}

/// Sets the sole sample's duration to one frame (`timescale / fps`) in stts,
/// mdhd, tkhd and mvhd. Only fixed-width fields change, so no offsets move.
fn fix_single_frame_duration(bytes: &mut [u8], fps: u32) -> Result<(), MediaError> {
    let missing = |what: &str| MediaError::Mux(format!("muxed file lacks '{what}'"));
    let top = boxes::children(bytes, 0..bytes.len())?;
    let moov = top
        .iter()
        .copied()
        .find(|b| &b.kind == b"moov")
        .ok_or_else(|| missing("moov"))?;
    let mvhd = find_child(bytes, moov.payload(), b"mvhd")?.ok_or_else(|| missing("mvhd"))?;
    let trak = find_child(bytes, moov.payload(), b"trak")?.ok_or_else(|| missing("trak"))?;
    let tkhd = find_child(bytes, trak.payload(), b"tkhd")?.ok_or_else(|| missing("tkhd"))?;
    let mdhd = find_path(bytes, trak.payload(), &[b"mdia", b"mdhd"])?.ok_or_else(|| missing("mdhd"))?;
    let stts =
        find_path(bytes, trak.payload(), &[b"mdia", b"minf", b"stbl", b"stts"])?.ok_or_else(|| missing("stts"))?;

    let (media_ts, media_dur_at, media_v1) = timescale_and_duration_at(bytes, mdhd, 12, 20)?;
    let ticks = (u64::from(media_ts) + u64::from(fps) / 2) / u64::from(fps);
    write_duration(bytes, media_dur_at, media_v1, ticks)?;

    // stts: FullBox header, entry_count, then (count, delta); one frame = one entry.
    let entries = boxes::read_u32(bytes, stts.payload_start + 4)?;
    if entries != 1 {
        return Err(MediaError::Mux(format!("single-frame stts has {entries} entries")));
    }
    let delta = u32::try_from(ticks).map_err(|_| MediaError::Mux("frame too long".into()))?;
    boxes::write_u32(bytes, stts.payload_start + 12, delta)?;

    let (movie_ts, movie_dur_at, movie_v1) = timescale_and_duration_at(bytes, mvhd, 12, 20)?;
    let movie_ticks = (u64::from(movie_ts) + u64::from(fps) / 2) / u64::from(fps);
    write_duration(bytes, movie_dur_at, movie_v1, movie_ticks)?;
    // tkhd (in movie timescale): v0 duration at 20, v1 at 28.
    let tkhd_v1 = bytes.get(tkhd.payload_start) == Some(&1);
    let tkhd_at = tkhd.payload_start + if tkhd_v1 { 28 } else { 20 };
    write_duration(bytes, tkhd_at, tkhd_v1, movie_ticks)
}

/// For mvhd/mdhd (same layout up to duration): `(timescale, duration offset, is_v1)`.
fn timescale_and_duration_at(
    bytes: &[u8],
    b: BoxRef,
    v0_ts: usize,
    v1_ts: usize,
) -> Result<(u32, usize, bool), MediaError> {
    let v1 = bytes.get(b.payload_start) == Some(&1);
    let ts_at = b.payload_start + if v1 { v1_ts } else { v0_ts };
    let ts = boxes::read_u32(bytes, ts_at)?;
    if ts == 0 {
        return Err(MediaError::Mux("zero timescale".into()));
    }
    Ok((ts, ts_at + 4, v1))
}

fn write_duration(bytes: &mut [u8], at: usize, v1: bool, value: u64) -> Result<(), MediaError> {
    if v1 {
        boxes::write_u64(bytes, at, value)
    } else {
        let v = u32::try_from(value).map_err(|_| MediaError::Mux("duration overflow".into()))?;
        boxes::write_u32(bytes, at, v)
    }
}

#[cfg(test)]
mod audio_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::video_track_data;
    use std::time::Instant;

    /// A gradient that slides one pixel per frame plus a moving square, so
    /// the encoder has real motion to code.
    fn frame(w: u32, h: u32, t: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        let (sq, sx, sy) = (h / 4, (t * 3) % w, (t * 2) % h);
        for y in 0..h {
            for x in 0..w {
                let in_square = x >= sx && x < sx + sq && y >= sy && y < sy + sq;
                if in_square {
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

    fn encode_clip(w: u32, h: u32, fps: u32, n: u32) -> Vec<u8> {
        let mut enc = Mp4Encoder::new(w, h, fps).unwrap();
        for t in 0..n {
            enc.push_rgb(&frame(w, h, t)).unwrap();
        }
        assert_eq!(enc.frames(), n);
        enc.finish().unwrap()
    }

    fn assert_structure(mp4: &[u8], w: u32, h: u32, fps: u32, n: u32) {
        let info = inspect_mp4(mp4).unwrap();
        assert_eq!(info.top_level_boxes.first().map(String::as_str), Some("ftyp"));
        assert!(info.moov_before_mdat, "{:?}", info.top_level_boxes);
        assert_eq!(info.major_brand, "isom");
        assert_eq!(info.codec, "avc1");
        assert_eq!((info.width, info.height), (w, h));
        assert_eq!(info.sample_count, n);
        let expected = f64::from(n) / f64::from(fps);
        assert!(
            (info.duration_secs() - expected).abs() < 1e-3,
            "duration {} vs {expected}",
            info.duration_secs()
        );
        assert!((info.fps() - f64::from(fps)).abs() < 0.01, "fps {}", info.fps());
    }

    #[test]
    fn small_clip_structure() {
        let mp4 = encode_clip(64, 48, 24, 24);
        assert_structure(&mp4, 64, 48, 24, 24);
    }

    #[test]
    fn hd_clip_structure() {
        let mp4 = encode_clip(1280, 720, 24, 3);
        assert_structure(&mp4, 1280, 720, 24, 3);
        for (w, h) in [(720, 1280), (1792, 1024), (1024, 1792)] {
            let mp4 = encode_clip(w, h, 24, 2);
            assert_structure(&mp4, w, h, 24, 2);
        }
    }

    #[test]
    fn single_frame_has_one_frame_duration() {
        let mp4 = encode_clip(64, 48, 24, 1);
        assert_structure(&mp4, 64, 48, 24, 1);
    }

    #[test]
    fn other_frame_rates() {
        let mp4 = encode_clip(64, 48, 30, 7);
        assert_structure(&mp4, 64, 48, 30, 7);
    }

    #[test]
    fn deterministic_output() {
        let a = encode_clip(64, 48, 24, 30);
        let b = encode_clip(64, 48, 24, 30);
        assert!(a == b, "two encodes of the same frames differ");
        let a = encode_clip(1280, 720, 24, 2);
        let b = encode_clip(1280, 720, 24, 2);
        assert!(a == b, "two 720p encodes of the same frames differ");
    }

    #[test]
    fn truncated_or_corrupted_real_file_never_panics() {
        let mp4 = encode_clip(64, 48, 24, 6);
        for len in 0..mp4.len() {
            assert!(inspect_mp4(&mp4[..len]).is_err(), "truncated to {len} parsed");
            let _ = video_track_data(&mp4[..len]);
        }
        let moov_end = 200.min(mp4.len());
        for i in 0..moov_end {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut m = mp4.clone();
                m[i] ^= bit;
                let _ = inspect_mp4(&m);
                let _ = video_track_data(&m);
            }
        }
    }

    #[test]
    fn wrong_frame_length_is_an_error() {
        let mut enc = Mp4Encoder::new(64, 48, 24).unwrap();
        let short = vec![0u8; 64 * 48 * 3 - 1];
        let err = enc.push_rgb(&short).unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::FrameSize {
                    expected: 9216,
                    actual: 9215
                }
            ),
            "{err}"
        );
        assert!(enc.push_rgb(&[]).is_err());
        assert_eq!(enc.frames(), 0);
        // The encoder stays usable after a rejected frame.
        enc.push_rgb(&frame(64, 48, 0)).unwrap();
        assert!(enc.finish().is_ok());
    }

    #[test]
    fn invalid_parameters() {
        assert!(Mp4Encoder::new(63, 48, 24).is_err());
        assert!(Mp4Encoder::new(64, 47, 24).is_err());
        assert!(Mp4Encoder::new(0, 48, 24).is_err());
        assert!(Mp4Encoder::new(64, 48, 0).is_err());
        assert!(Mp4Encoder::new(4096, 2160, 24).is_err());
        let enc = Mp4Encoder::new(64, 48, 24).unwrap();
        assert!(matches!(enc.finish(), Err(MediaError::InvalidInput(_))));
    }

    #[test]
    fn encoder_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Mp4Encoder>();
    }

    #[test]
    fn rgb_to_i420_reference_colours() {
        let mut out = vec![0u8; 4 + 2];
        rgb_to_i420(&[255; 12], 2, 2, &mut out);
        assert_eq!(out, [235, 235, 235, 235, 128, 128]);
        rgb_to_i420(&[0; 12], 2, 2, &mut out);
        assert_eq!(out, [16, 16, 16, 16, 128, 128]);
        let red = [255, 0, 0].repeat(4);
        rgb_to_i420(&red, 2, 2, &mut out);
        assert_eq!(out, [82, 82, 82, 82, 90, 240]);
    }

    /// Demuxes our own file and decodes it with OpenH264's decoder: proves
    /// the avcC, sample offsets and bitstream are all usable, and that the
    /// picture is close to the input.
    #[test]
    fn decodes_back_to_the_input() {
        let (w, h, n) = (128u32, 96u32, 12u32);
        let mp4 = encode_clip(w, h, 24, n);
        let track = video_track_data(&mp4).unwrap();
        assert_eq!(track.samples.len(), n as usize);

        // avcC: version, profile, compat, level, 0xFF (4-byte lengths), SPS count, ...
        let avcc = &track.avcc;
        assert_eq!(avcc[0], 1);
        assert_eq!(avcc[4] & 0x03, 3, "NAL length size must be 4");
        let sps_len = usize::from(u16::from_be_bytes([avcc[6], avcc[7]]));
        let sps = &avcc[8..8 + sps_len];
        let pps_at = 8 + sps_len + 1;
        let pps_len = usize::from(u16::from_be_bytes([avcc[pps_at], avcc[pps_at + 1]]));
        let pps = &avcc[pps_at + 2..pps_at + 2 + pps_len];

        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut decoded = 0;
        for (i, range) in track.samples.iter().enumerate() {
            let mut annexb = Vec::new();
            if i == 0 {
                for ps in [sps, pps] {
                    annexb.extend_from_slice(&[0, 0, 0, 1]);
                    annexb.extend_from_slice(ps);
                }
            }
            let mut sample = &mp4[range.clone()];
            while !sample.is_empty() {
                let len = u32::from_be_bytes(sample[..4].try_into().unwrap()) as usize;
                annexb.extend_from_slice(&[0, 0, 0, 1]);
                annexb.extend_from_slice(&sample[4..4 + len]);
                sample = &sample[4 + len..];
            }
            if let Some(yuv) = decoder.decode(&annexb).unwrap() {
                use openh264::formats::YUVSource;
                assert_eq!(yuv.dimensions(), (w as usize, h as usize));
                let mut rgb = vec![0u8; (w * h * 3) as usize];
                yuv.write_rgb8(&mut rgb);
                let src = frame(w, h, decoded);
                let mae = rgb
                    .iter()
                    .zip(&src)
                    .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                    .sum::<u64>() as f64
                    / rgb.len() as f64;
                assert!(mae < 10.0, "frame {decoded}: mean abs error {mae}");
                decoded += 1;
            }
        }
        assert_eq!(decoded, n);
    }

    /// Cross-check with ffprobe. A missing ffprobe fails the test (CI
    /// installs ffmpeg); only `VIDEOGEN_SKIP_FFPROBE=1`, set by hand on a
    /// machine without it, skips the check, and never under `CI`.
    #[test]
    fn ffprobe_agrees() {
        let probe = std::process::Command::new("ffprobe").arg("-version").output();
        if !probe.is_ok_and(|o| o.status.success()) {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            let skip = std::env::var_os("VIDEOGEN_SKIP_FFPROBE").is_some_and(|v| v == "1");
            assert!(
                skip && !ci,
                "ffprobe is not on PATH: install ffmpeg (apt-get install ffmpeg), \
                 or set VIDEOGEN_SKIP_FFPROBE=1 to skip this check outside CI"
            );
            eprintln!("note: ffprobe not on PATH and VIDEOGEN_SKIP_FFPROBE=1: skipping ffprobe_agrees");
            return;
        }
        for (w, h, n) in [(1280u32, 720u32, 12u32), (1792, 1024, 3), (1024, 1792, 3), (64, 48, 1)] {
            ffprobe_check(w, h, 24, n);
        }
    }

    fn ffprobe_check(w: u32, h: u32, fps: u32, n: u32) {
        let mp4 = encode_clip(w, h, fps, n);
        let dir = std::env::temp_dir().join(format!("videogen-media-ffprobe-{}-{w}x{h}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clip.mp4");
        std::fs::write(&path, &mp4).unwrap();
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries"])
            .arg("stream=codec_name,pix_fmt,width,height,nb_frames,nb_read_frames,avg_frame_rate,duration")
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ffprobe failed on {w}x{h}: {stderr}");
        assert!(
            stderr.trim().is_empty(),
            "ffprobe reported problems on {w}x{h}: {stderr}"
        );
        let field = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {stdout}"))
                .to_string()
        };
        assert_eq!(field("codec_name"), "h264");
        assert_eq!(field("pix_fmt"), "yuv420p");
        assert_eq!(field("width"), w.to_string());
        assert_eq!(field("height"), h.to_string());
        assert_eq!(field("nb_frames"), n.to_string());
        assert_eq!(field("nb_read_frames"), n.to_string());
        assert_eq!(field("avg_frame_rate"), format!("{fps}/1"));
        let dur: f64 = field("duration").parse().unwrap();
        assert!(
            (dur - f64::from(n) / f64::from(fps)).abs() < 1e-3,
            "{w}x{h}: duration {dur}"
        );
    }

    /// `cargo test -p videogen-media --release -- --ignored --nocapture encode_speed`
    #[test]
    #[ignore = "timing benchmark; run in release mode"]
    fn encode_speed_720p_96_frames() {
        let (w, h, fps, n) = (1280u32, 720u32, 24u32, 96u32);
        let frames: Vec<Vec<u8>> = (0..n).map(|t| frame(w, h, t)).collect();
        let start = Instant::now();
        let mut enc = Mp4Encoder::new(w, h, fps).unwrap();
        for f in &frames {
            enc.push_rgb(f).unwrap();
        }
        let mp4 = enc.finish().unwrap();
        let secs = start.elapsed().as_secs_f64();
        let mbps = mp4.len() as f64 * 8.0 / (f64::from(n) / f64::from(fps)) / 1e6;
        if let Some(path) = std::env::var_os("VIDEOGEN_MEDIA_DUMP") {
            std::fs::write(path, &mp4).unwrap();
        }
        println!(
            "encoded {n} frames {w}x{h} in {secs:.2}s ({:.1} fps), {} bytes, {mbps:.2} Mbit/s",
            f64::from(n) / secs,
            mp4.len()
        );
    }
}
