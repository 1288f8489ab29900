//! The optional audio track of [`Mp4Encoder`](crate::Mp4Encoder): interleaved
//! f32 PCM in, AAC-LC (`mp4a` + `esds`) out, encoded in process.
//!
//! # Why AAC-LC, and why `fdk-aac`
//!
//! - **The muxer.** `muxide` 0.5 can write two audio sample entries: `mp4a`
//!   with an `esds` (AAC; it takes ADTS frames, strips the headers and writes
//!   the AudioSpecificConfig itself) and `Opus` with a `dOps` (whose pre-skip
//!   is fixed at 312 and whose input rate is always 48 kHz). Both go in a
//!   90 kHz media timescale with no edit list; `retime_audio_track` fixes
//!   that up after muxing (see below).
//! - **Browsers.** AAC-LC in MP4 plays everywhere that H.264 does; Opus in MP4
//!   only in recent Safari versions.
//! - **Sample rates.** AAC-LC codes 44.1 kHz and 48 kHz natively. libopus
//!   only accepts 8/12/16/24/48 kHz, so 44.1 kHz input would need a resampler.
//! - **Building.** `fdk-aac` 0.8 (MIT bindings) bundles the Fraunhofer FDK AAC
//!   source (encoder library 4.0.0, the one ffmpeg's `libfdk_aac` uses) and
//!   compiles it with `cc`: no system library, no cmake, nothing downloaded,
//!   about a minute on two cores. The Opus bindings (`opus` / `audiopus_sys`)
//!   link a system libopus by default on Linux (needs `libopus-dev`); their
//!   bundled `static` build needs `cmake`. No pure-Rust AAC or Opus *encoder*
//!   is mature yet (symphonia and friends only decode).
//! - **Determinism.** FDK AAC is fixed-point C with no threads, so the same
//!   PCM gives the same bytes on every CPU; the f32 → i16 conversion here is
//!   exact IEEE arithmetic.
//! - **Licence.** The FDK AAC code is under Fraunhofer's own licence
//!   (redistribution allowed with its text and the source; it grants no
//!   patent licence, and Debian files it as non-free). It is not the
//!   project's Apache-2.0: a binary distribution must ship that licence text.
//!
//! # Timing: priming, trimming and padding
//!
//! The FDK encoder delays its output by the `nDelay` it reports (2048
//! samples for AAC-LC), so the first decoded samples are silence. After
//! muxing, `retime_audio_track` rewrites the audio `trak` the way ffmpeg
//! writes AAC in MP4:
//! - its media timescale is the sample rate and every AAC frame lasts exactly
//!   1024 ticks (muxide's 90 kHz rounds 44.1 kHz frames to 2089/2090 ticks),
//!   except the last, which ends at the last real sample;
//! - an edit list (`edts`/`elst`) starts presentation after the priming
//!   samples and lasts as long as the video track, so audio and video start
//!   together and have the same duration.
//!
//! PCM past the video's end is never encoded (the encoder only runs up to the
//! samples that the pushed frames cover); a track shorter than the video is
//! padded with silence.

use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};

use crate::MediaError;
use crate::boxes::{self, BoxRef, children, find_child, find_path, read_u32};

/// Sample rates [`AudioFormat`] accepts: the AAC-LC rates up to 48 kHz that
/// browsers decode. Higher rates do not fit the 16.16 sample rate field of an
/// MP4 audio sample entry and add nothing for generated clips.
pub const SUPPORTED_SAMPLE_RATES: [u32; 9] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

/// PCM samples (per channel) in one AAC-LC frame (access unit).
pub const AAC_FRAME_SAMPLES: u32 = 1024;

/// Format of the PCM passed to [`Mp4Encoder::push_audio`](crate::Mp4Encoder::push_audio),
/// which is also the format of the AAC track (no resampling or remixing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// Samples per second per channel: one of [`SUPPORTED_SAMPLE_RATES`].
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo, interleaved left, right).
    pub channels: u16,
}

impl AudioFormat {
    /// 48 kHz stereo, the usual rate for video.
    pub const STEREO_48K: Self = Self {
        sample_rate: 48_000,
        channels: 2,
    };

    /// Checks the rate and channel count; the error is [`MediaError::InvalidInput`].
    pub fn validate(&self) -> Result<(), MediaError> {
        if !SUPPORTED_SAMPLE_RATES.contains(&self.sample_rate) {
            return Err(MediaError::InvalidInput(format!(
                "audio sample rate {} Hz is not supported (supported: {SUPPORTED_SAMPLE_RATES:?}; \
                 resample before encoding)",
                self.sample_rate
            )));
        }
        if !(1..=2).contains(&self.channels) {
            return Err(MediaError::InvalidInput(format!(
                "{} audio channels: only mono (1) and stereo (2) are supported",
                self.channels
            )));
        }
        Ok(())
    }

    /// AAC-LC bit rate: 64 kbit/s per channel at 32 kHz and above (transparent
    /// for most material), less at lower rates where FDK would clamp it anyway.
    fn bit_rate(&self) -> u32 {
        let per_channel = match self.sample_rate {
            32_000.. => 64_000,
            22_050.. => 48_000,
            16_000.. => 32_000,
            _ => 24_000,
        };
        per_channel * u32::from(self.channels)
    }
}

/// Converts one f32 sample to i16: NaN → 0, clamped to [-1, 1], scaled by
/// 32767 and rounded (exact IEEE arithmetic, so identical everywhere).
fn to_i16(v: f32) -> i16 {
    let v = if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) };
    // |v * 32767| <= 32767, so the cast cannot saturate.
    (v * 32767.0).round() as i16
}

/// Samples per channel covered by `frames` video frames at `fps`:
/// `frames * sample_rate / fps`, rounded down or to nearest.
pub(crate) fn samples_for_frames(frames: u32, fps: u32, sample_rate: u32, nearest: bool) -> u64 {
    let num = u64::from(frames) * u64::from(sample_rate);
    let fps = u64::from(fps.max(1));
    if nearest {
        (2 * num + fps) / (2 * fps)
    } else {
        num / fps
    }
}

/// Streaming AAC-LC encoder state for one track.
pub(crate) struct AacTrack {
    format: AudioFormat,
    encoder: Encoder,
    /// Encoder delay in samples per channel (FDK's `nDelay`).
    priming: u32,
    /// Interleaved i16 PCM pushed but not yet fed to the encoder (it lies past
    /// the samples that the video frames pushed so far cover).
    pending: Vec<i16>,
    /// Samples per channel fed to the encoder, silence included.
    fed: u64,
    /// Encoded ADTS frames, muxed at `finish` once the final length is known.
    frames: Vec<Vec<u8>>,
    /// Encoder output buffer, reused.
    out: Vec<u8>,
}

impl std::fmt::Debug for AacTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacTrack")
            .field("format", &self.format)
            .field("priming", &self.priming)
            .field(
                "pending_samples",
                &(self.pending.len() / usize::from(self.format.channels)),
            )
            .field("fed", &self.fed)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

/// What [`AacTrack::finish`] hands to the muxer and to `retime_audio_track`.
pub(crate) struct EncodedAudio {
    pub priming: u32,
    /// ADTS frames, one per 1024 samples per channel.
    pub frames: Vec<Vec<u8>>,
}

fn aac_err(e: fdk_aac::enc::EncoderError) -> MediaError {
    MediaError::Audio(e.to_string())
}

impl AacTrack {
    pub(crate) fn new(format: AudioFormat) -> Result<Self, MediaError> {
        format.validate()?;
        let encoder = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(format.bit_rate()),
            sample_rate: format.sample_rate,
            // muxide takes ADTS frames and writes the esds from the track config.
            transport: Transport::Adts,
            channels: if format.channels == 1 {
                ChannelMode::Mono
            } else {
                ChannelMode::Stereo
            },
            audio_object_type: AudioObjectType::Mpeg4LowComplexity,
        })
        .map_err(aac_err)?;
        let info = encoder.info().map_err(aac_err)?;
        if info.frameLength != AAC_FRAME_SAMPLES {
            return Err(MediaError::Audio(format!(
                "AAC encoder frame length {} (expected {AAC_FRAME_SAMPLES})",
                info.frameLength
            )));
        }
        let out_len = (info.maxOutBufBytes as usize).max(8192);
        Ok(Self {
            format,
            encoder,
            priming: info.nDelay,
            pending: Vec::new(),
            fed: 0,
            frames: Vec::new(),
            out: vec![0; out_len],
        })
    }

    pub(crate) fn format(&self) -> AudioFormat {
        self.format
    }

    /// Queues interleaved PCM, then encodes what the video already covers.
    pub(crate) fn push(&mut self, pcm: &[f32], covered: u64) -> Result<(), MediaError> {
        let ch = usize::from(self.format.channels);
        if !pcm.len().is_multiple_of(ch) {
            return Err(MediaError::InvalidInput(format!(
                "{} audio samples is not a whole number of {ch}-channel frames",
                pcm.len()
            )));
        }
        self.pending.extend(pcm.iter().map(|&v| to_i16(v)));
        self.feed_pending(covered)
    }

    /// Encodes pending PCM up to `limit` samples per channel in total.
    pub(crate) fn feed_pending(&mut self, limit: u64) -> Result<(), MediaError> {
        let ch = usize::from(self.format.channels);
        let want = limit.saturating_sub(self.fed);
        let n = usize::try_from(want).unwrap_or(usize::MAX).min(self.pending.len() / ch);
        if n == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.encode(&pending[..n * ch]);
        self.pending = pending;
        self.pending.drain(..n * ch);
        result
    }

    /// Feeds interleaved samples to FDK, collecting every frame it completes.
    fn encode(&mut self, mut input: &[i16]) -> Result<(), MediaError> {
        let ch = usize::from(self.format.channels);
        self.fed += (input.len() / ch) as u64;
        while !input.is_empty() {
            let info = self.encoder.encode(input, &mut self.out).map_err(aac_err)?;
            if info.output_size > 0 {
                let frame = self
                    .out
                    .get(..info.output_size)
                    .ok_or_else(|| MediaError::Audio("AAC encoder overran its output buffer".into()))?;
                self.frames.push(frame.to_vec());
            }
            if info.input_consumed == 0 && info.output_size == 0 {
                return Err(MediaError::Audio("AAC encoder consumed no input".into()));
            }
            input = input.get(info.input_consumed..).unwrap_or_default();
        }
        Ok(())
    }

    fn encode_silence(&mut self, samples: u64) -> Result<(), MediaError> {
        let ch = usize::from(self.format.channels);
        let zeros = vec![0i16; AAC_FRAME_SAMPLES as usize * ch];
        let mut left = samples;
        while left > 0 {
            let n = left.min(u64::from(AAC_FRAME_SAMPLES));
            self.encode(&zeros[..n as usize * ch])?;
            left -= n;
        }
        Ok(())
    }

    /// Ends the track at `samples` samples per channel: encodes pending PCM up
    /// to there (dropping the rest), pads with silence, then flushes the
    /// encoder delay with silence so that every presented sample is coded.
    pub(crate) fn finish(mut self, samples: u64) -> Result<EncodedAudio, MediaError> {
        self.feed_pending(samples)?;
        self.pending.clear();
        // Only possible when the track is shorter than the video.
        let short = samples.saturating_sub(self.fed);
        self.encode_silence(short)?;
        // Presentation ends at output sample `priming + samples`: code whole
        // frames up to there (FDK emits one frame per 1024 samples fed).
        let needed = (u64::from(self.priming) + samples).div_ceil(u64::from(AAC_FRAME_SAMPLES));
        let flush = needed * u64::from(AAC_FRAME_SAMPLES) - self.fed;
        self.encode_silence(flush)?;
        if self.frames.len() as u64 != needed {
            return Err(MediaError::Audio(format!(
                "AAC encoder produced {} frames for {} samples, expected {needed}",
                self.frames.len(),
                self.fed
            )));
        }
        Ok(EncodedAudio {
            priming: self.priming,
            frames: self.frames,
        })
    }
}

fn mux_err(msg: impl Into<String>) -> MediaError {
    MediaError::Mux(msg.into())
}

fn make_box(kind: &[u8; 4], payload: &[u8]) -> Result<Vec<u8>, MediaError> {
    let size = u32::try_from(payload.len() + 8).map_err(|_| mux_err("box too large"))?;
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(kind);
    v.extend_from_slice(payload);
    Ok(v)
}

fn raw(bytes: &[u8], b: BoxRef) -> Result<&[u8], MediaError> {
    bytes.get(b.start..b.end).ok_or_else(|| mux_err("box outside the file"))
}

/// Rebuilds container `b`, replacing each child for which `f` returns
/// `Some(bytes)` and copying the others.
fn rebuild(
    bytes: &[u8],
    b: BoxRef,
    mut f: impl FnMut(BoxRef) -> Result<Option<Vec<Vec<u8>>>, MediaError>,
) -> Result<Vec<u8>, MediaError> {
    let mut payload = Vec::new();
    for child in children(bytes, b.payload())? {
        match f(child)? {
            Some(parts) => parts.iter().for_each(|p| payload.extend_from_slice(p)),
            None => payload.extend_from_slice(raw(bytes, child)?),
        }
    }
    make_box(&b.kind, &payload)
}

fn handler(bytes: &[u8], trak: BoxRef) -> Result<Option<[u8; 4]>, MediaError> {
    let Some(hdlr) = find_path(bytes, trak.payload(), &[b"mdia", b"hdlr"])? else {
        return Ok(None);
    };
    Ok(bytes
        .get(hdlr.payload_start + 8..hdlr.payload_start + 12)
        .and_then(|s| s.try_into().ok()))
}

/// `(is_v1, duration)` of a `tkhd`.
fn tkhd_duration(bytes: &[u8], tkhd: BoxRef) -> Result<(bool, u64), MediaError> {
    let v1 = bytes.get(tkhd.payload_start) == Some(&1);
    let d = if v1 {
        boxes::read_u64(bytes, tkhd.payload_start + 28)?
    } else {
        u64::from(read_u32(bytes, tkhd.payload_start + 20)?)
    };
    Ok((v1, d))
}

/// Post-mux fix-up of the audio `trak` that muxide wrote (see the module
/// docs): media timescale = sample rate, 1024 ticks per AAC frame, and an
/// edit list that skips `priming` samples and lasts as long as the video
/// track. `moov` changes size, so every chunk offset is shifted to match.
pub(crate) fn retime_audio_track(
    bytes: &[u8],
    sample_rate: u32,
    priming: u32,
    samples: u64,
) -> Result<Vec<u8>, MediaError> {
    let missing = |what: &str| mux_err(format!("muxed file lacks '{what}'"));
    let top = children(bytes, 0..bytes.len())?;
    let moov = top
        .iter()
        .copied()
        .find(|b| &b.kind == b"moov")
        .ok_or_else(|| missing("moov"))?;
    let mdat = top
        .iter()
        .copied()
        .find(|b| &b.kind == b"mdat")
        .ok_or_else(|| missing("mdat"))?;
    let traks: Vec<BoxRef> = children(bytes, moov.payload())?
        .into_iter()
        .filter(|b| &b.kind == b"trak")
        .collect();
    let mut video = None;
    let mut audio = None;
    for t in traks {
        match &handler(bytes, t)? {
            Some(h) if h == b"vide" && video.is_none() => video = Some(t),
            Some(h) if h == b"soun" && audio.is_none() => audio = Some(t),
            _ => {}
        }
    }
    let video = video.ok_or_else(|| missing("video trak"))?;
    let audio = audio.ok_or_else(|| missing("audio trak"))?;

    let video_tkhd = find_child(bytes, video.payload(), b"tkhd")?.ok_or_else(|| missing("tkhd"))?;
    let (_, movie_duration) = tkhd_duration(bytes, video_tkhd)?;
    let movie_duration = u32::try_from(movie_duration).map_err(|_| mux_err("video too long for a v0 edit list"))?;
    let sample_count = {
        let stsz =
            find_path(bytes, audio.payload(), &[b"mdia", b"minf", b"stbl", b"stsz"])?.ok_or_else(|| missing("stsz"))?;
        read_u32(bytes, stsz.payload_start + 8)?
    };
    // The last frame only lasts up to the last real sample: its stts delta
    // is shortened, as ffmpeg's encoders and muxer do it.
    let media_duration = u64::from(priming) + samples;
    let full_frames = sample_count.saturating_sub(1);
    let last = media_duration
        .checked_sub(u64::from(full_frames) * u64::from(AAC_FRAME_SAMPLES))
        .filter(|&d| d > 0 && d <= u64::from(AAC_FRAME_SAMPLES))
        .ok_or_else(|| mux_err(format!("{sample_count} AAC frames do not fit {media_duration} samples")))?;
    let last = last as u32;
    let media_duration = u32::try_from(media_duration).map_err(|_| mux_err("audio too long for a v0 mdhd"))?;
    let priming = i32::try_from(priming).map_err(|_| mux_err("priming out of range"))?;

    let new_audio = rebuild(bytes, audio, |b| match &b.kind {
        b"tkhd" => {
            let mut tkhd = raw(bytes, b)?.to_vec();
            let (v1, _) = tkhd_duration(bytes, b)?;
            if v1 {
                return Err(mux_err("unexpected v1 audio tkhd"));
            }
            // Patch the duration (v0: 8-byte header + 20) in the copy.
            boxes::write_u32(&mut tkhd, 8 + 20, movie_duration)?;
            let mut elst = Vec::with_capacity(20);
            elst.extend_from_slice(&0u32.to_be_bytes()); // version 0, flags
            elst.extend_from_slice(&1u32.to_be_bytes()); // entry_count
            elst.extend_from_slice(&movie_duration.to_be_bytes()); // segment_duration (movie timescale)
            elst.extend_from_slice(&priming.to_be_bytes()); // media_time (media timescale)
            elst.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // media_rate 1.0
            let edts = make_box(b"edts", &make_box(b"elst", &elst)?)?;
            Ok(Some(vec![tkhd, edts]))
        }
        b"edts" => Err(mux_err("audio trak already has an edit list")),
        b"mdia" => rebuild(bytes, b, |m| match &m.kind {
            b"mdhd" => {
                let old = raw(bytes, m)?;
                let version = old.get(8).copied().unwrap_or(0);
                let lang_at = 8 + if version == 1 { 32 } else { 20 };
                let language = old.get(lang_at..lang_at + 2).ok_or_else(|| mux_err("short mdhd"))?;
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&[0; 12]); // version 0, flags, creation and modification times
                p.extend_from_slice(&sample_rate.to_be_bytes());
                p.extend_from_slice(&media_duration.to_be_bytes());
                p.extend_from_slice(language);
                p.extend_from_slice(&[0, 0]); // pre_defined
                Ok(Some(vec![make_box(b"mdhd", &p)?]))
            }
            b"minf" => Ok(Some(vec![rebuild(bytes, m, |s| match &s.kind {
                b"stbl" => Ok(Some(vec![rebuild(bytes, s, |t| match &t.kind {
                    b"stts" => {
                        let mut entries = Vec::with_capacity(2);
                        if last == AAC_FRAME_SAMPLES {
                            entries.push((sample_count, AAC_FRAME_SAMPLES));
                        } else {
                            if full_frames > 0 {
                                entries.push((full_frames, AAC_FRAME_SAMPLES));
                            }
                            entries.push((1, last));
                        }
                        let mut p = Vec::with_capacity(24);
                        p.extend_from_slice(&0u32.to_be_bytes()); // version, flags
                        p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                        for (count, delta) in entries {
                            p.extend_from_slice(&count.to_be_bytes());
                            p.extend_from_slice(&delta.to_be_bytes());
                        }
                        Ok(Some(vec![make_box(b"stts", &p)?]))
                    }
                    b"ctts" => Err(mux_err("unexpected ctts in audio trak")),
                    _ => Ok(None),
                })?])),
                _ => Ok(None),
            })?])),
            _ => Ok(None),
        })
        .map(|v| Some(vec![v])),
        _ => Ok(None),
    })?;

    let mut new_moov = rebuild(bytes, moov, |b| {
        Ok((b.start == audio.start).then(|| vec![new_audio.clone()]))
    })?;
    if moov.start < mdat.start {
        let delta = new_moov.len() as i64 - (moov.end - moov.start) as i64;
        shift_chunk_offsets(&mut new_moov, delta)?;
    }
    let mut out = Vec::with_capacity(bytes.len() + new_moov.len() - (moov.end - moov.start));
    out.extend_from_slice(&bytes[..moov.start]);
    out.extend_from_slice(&new_moov);
    out.extend_from_slice(&bytes[moov.end..]);
    Ok(out)
}

/// Adds `delta` to every `stco`/`co64` entry of every track in `moov` (a
/// complete `moov` box at offset 0 of the slice).
fn shift_chunk_offsets(moov: &mut [u8], delta: i64) -> Result<(), MediaError> {
    let top = children(moov, 0..moov.len())?;
    let root = top.first().copied().ok_or_else(|| mux_err("empty moov"))?;
    for trak in children(moov, root.payload())?
        .into_iter()
        .filter(|b| &b.kind == b"trak")
    {
        let Some(stbl) = find_path(moov, trak.payload(), &[b"mdia", b"minf", b"stbl"])? else {
            continue;
        };
        for table in children(moov, stbl.payload())? {
            let wide = match &table.kind {
                b"stco" => false,
                b"co64" => true,
                _ => continue,
            };
            let count = read_u32(moov, table.payload_start + 4)? as usize;
            for i in 0..count {
                if wide {
                    let at = table.payload_start + 8 + i * 8;
                    let v = boxes::read_u64(moov, at)?;
                    let v = v
                        .checked_add_signed(delta)
                        .ok_or_else(|| mux_err("chunk offset overflow"))?;
                    boxes::write_u64(moov, at, v)?;
                } else {
                    let at = table.payload_start + 8 + i * 4;
                    let v = i64::from(read_u32(moov, at)?) + delta;
                    let v = u32::try_from(v).map_err(|_| mux_err("chunk offset out of 32-bit range"))?;
                    boxes::write_u32(moov, at, v)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_conversion() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(1.0), 32767);
        assert_eq!(to_i16(-1.0), -32767);
        assert_eq!(to_i16(7.5), 32767);
        assert_eq!(to_i16(-3.0), -32767);
        assert_eq!(to_i16(f32::INFINITY), 32767);
        assert_eq!(to_i16(f32::NEG_INFINITY), -32767);
        assert_eq!(to_i16(f32::NAN), 0);
        assert_eq!(to_i16(0.5), 16384);
    }

    #[test]
    fn sample_counts() {
        assert_eq!(samples_for_frames(24, 24, 48_000, true), 48_000);
        assert_eq!(samples_for_frames(7, 24, 44_100, false), 12_862);
        assert_eq!(samples_for_frames(7, 24, 44_100, true), 12_863);
        assert_eq!(samples_for_frames(0, 24, 44_100, true), 0);
    }

    #[test]
    fn formats() {
        for sample_rate in SUPPORTED_SAMPLE_RATES {
            for channels in [1, 2] {
                AudioFormat { sample_rate, channels }.validate().unwrap();
            }
        }
        for (sample_rate, channels) in [(48_000, 0), (48_000, 3), (44_000, 2), (96_000, 2), (0, 1)] {
            let err = AudioFormat { sample_rate, channels }.validate().unwrap_err();
            assert!(matches!(err, MediaError::InvalidInput(_)), "{err}");
        }
    }

    /// FDK's behaviour that `finish` relies on: 2048 samples of delay and one
    /// ADTS frame per 1024 samples fed, from the very first frame.
    #[test]
    fn encoder_frames_and_delay() {
        for sample_rate in SUPPORTED_SAMPLE_RATES {
            for channels in [1u16, 2] {
                let mut t = AacTrack::new(AudioFormat { sample_rate, channels }).unwrap();
                assert_eq!(t.priming, 2048, "{sample_rate} Hz x{channels}");
                let pcm: Vec<f32> = (0..3000 * usize::from(channels))
                    .map(|i| (i as f32 * 0.01).sin())
                    .collect();
                t.push(&pcm, 10_000).unwrap();
                assert_eq!(t.fed, 3000);
                assert_eq!(t.frames.len(), 2);
                for f in &t.frames {
                    assert_eq!(&f[..2], &[0xff, 0xf1], "ADTS sync, MPEG-4, no CRC");
                }
                let done = t.finish(3000).unwrap();
                assert_eq!(done.frames.len(), 5); // ceil((2048 + 3000) / 1024)
            }
        }
    }

    #[test]
    fn pending_pcm_waits_for_video() {
        let mut t = AacTrack::new(AudioFormat::STEREO_48K).unwrap();
        t.push(&[0.25; 4000], 0).unwrap();
        assert_eq!((t.fed, t.pending.len()), (0, 4000));
        t.feed_pending(1500).unwrap();
        assert_eq!((t.fed, t.pending.len()), (1500, 1000));
        assert_eq!(t.frames.len(), 1);
        assert!(t.push(&[0.0; 3], 10_000).is_err(), "odd sample count for stereo");
        let done = t.finish(1800).unwrap();
        assert_eq!(done.frames.len(), 4); // ceil((2048 + 1800) / 1024)
    }
}
