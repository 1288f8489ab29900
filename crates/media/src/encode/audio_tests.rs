//! Tests of the audio track: structure (inspect), decoding back in process
//! (FDK's decoder) and with ffmpeg, trimming/padding, determinism, bad input.

use std::f32::consts::TAU;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::audio::{AAC_FRAME_SAMPLES, AudioFormat, SUPPORTED_SAMPLE_RATES};
use crate::inspect::{AudioTrackInfo, audio_track_data, inspect_mp4, video_track_data};
use crate::{MediaError, Mp4Encoder};

/// FDK AAC-LC encoder delay (its `nDelay`).
const PRIMING: u64 = 2048;

/// A small moving gradient, enough for the video encoder.
fn frame(w: u32, h: u32, t: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[
                ((x + 2 * t) % 256) as u8,
                ((y * 4) % 256) as u8,
                ((x + y + t) % 256) as u8,
            ]);
        }
    }
    v
}

/// Interleaved test tone from sample `start` for `n` samples per channel:
/// 440 Hz at amplitude 0.5 on the left (or only) channel and the same tone
/// inverted at 0.25 on the right, so a channel swap would show.
fn tone(format: AudioFormat, start: u64, n: u64) -> Vec<f32> {
    let sr = format.sample_rate as f32;
    let mut v = Vec::with_capacity((n * u64::from(format.channels)) as usize);
    for i in start..start + n {
        let s = (TAU * 440.0 * (i as f32) / sr).sin();
        v.push(0.5 * s);
        if format.channels == 2 {
            v.push(-0.25 * s);
        }
    }
    v
}

fn samples_for(frames: u32, fps: u32, sr: u32) -> u64 {
    (2 * u64::from(frames) * u64::from(sr) + u64::from(fps)) / (2 * u64::from(fps))
}

/// Encodes `frames` frames with `pcm` (interleaved), pushing audio in
/// `chunk`-frame pieces alternated with the video frames.
fn encode_av(w: u32, h: u32, fps: u32, frames: u32, format: AudioFormat, pcm: &[f32], chunk: usize) -> Vec<u8> {
    let mut enc = Mp4Encoder::with_audio(w, h, fps, format).unwrap();
    assert_eq!(enc.audio_format(), Some(format));
    let step = chunk * usize::from(format.channels);
    let mut pieces = pcm.chunks(step.max(1));
    for t in 0..frames {
        enc.push_rgb(&frame(w, h, t)).unwrap();
        if let Some(p) = pieces.next() {
            enc.push_audio(p).unwrap();
        }
    }
    for p in pieces {
        enc.push_audio(p).unwrap();
    }
    enc.finish().unwrap()
}

/// A clip whose audio is exactly the video's length of tone.
fn tone_clip(fps: u32, frames: u32, format: AudioFormat) -> (Vec<u8>, Vec<f32>) {
    let n = samples_for(frames, fps, format.sample_rate);
    let pcm = tone(format, 0, n);
    (encode_av(64, 48, fps, frames, format, &pcm, 700), pcm)
}

fn check_structure(mp4: &[u8], fps: u32, frames: u32, format: AudioFormat) -> AudioTrackInfo {
    let info = inspect_mp4(mp4).unwrap();
    assert_eq!(info.top_level_boxes, ["ftyp", "moov", "mdat"]);
    assert!(info.moov_before_mdat);
    assert_eq!(info.codec, "avc1");
    assert_eq!(info.sample_count, frames);
    let video_secs = f64::from(frames) / f64::from(fps);
    assert!(
        (info.duration_secs() - video_secs).abs() < 1e-3,
        "video {}",
        info.duration_secs()
    );

    let a = info.audio.clone().expect("audio track");
    assert_eq!(a.codec, "mp4a");
    assert_eq!(a.audio_object_type, Some(2), "AAC-LC");
    assert_eq!((a.sample_rate, a.channels), (format.sample_rate, format.channels));
    assert_eq!(a.timescale, format.sample_rate);
    let n = samples_for(frames, fps, format.sample_rate);
    let aac_frames = (n + PRIMING).div_ceil(u64::from(AAC_FRAME_SAMPLES));
    assert_eq!(u64::from(a.sample_count), aac_frames);
    // The media ends at the last real sample (the last frame is shortened).
    assert_eq!(a.duration, PRIMING + n);
    assert_eq!(a.media_start, PRIMING);
    // Same presented duration as the video track, to the movie tick.
    assert_eq!(a.edit_duration, Some(info.movie_duration));
    assert!(
        (a.duration_secs() - info.duration_secs()).abs() < 1e-3,
        "audio {} s vs video {} s",
        a.duration_secs(),
        info.duration_secs()
    );
    let presented = a.presented_samples();
    assert!(
        presented.abs_diff(n) <= u64::from(format.sample_rate) / 1000,
        "{presented} vs {n}"
    );
    // The video track still demuxes the same way.
    assert_eq!(video_track_data(mp4).unwrap().samples.len(), frames as usize);
    a
}

#[test]
fn tone_clip_has_matching_tracks() {
    let stereo = AudioFormat::STEREO_48K;
    let (mp4, _) = tone_clip(24, 24, stereo);
    check_structure(&mp4, 24, 24, stereo);

    // 7 frames at 24 fps of 44.1 kHz is 12862.5 samples: rounding, and AAC
    // frames that do not divide the 90 kHz clock.
    let mono = AudioFormat {
        sample_rate: 44_100,
        channels: 1,
    };
    let (mp4, _) = tone_clip(24, 7, mono);
    check_structure(&mp4, 24, 7, mono);

    // One frame: the single-frame duration fix-up and the audio rewrite together.
    let (mp4, _) = tone_clip(30, 1, stereo);
    check_structure(&mp4, 30, 1, stereo);
}

#[test]
fn every_supported_rate_and_layout() {
    for sample_rate in SUPPORTED_SAMPLE_RATES {
        for channels in [1, 2] {
            let format = AudioFormat { sample_rate, channels };
            let (mp4, _) = tone_clip(24, 5, format);
            check_structure(&mp4, 24, 5, format);
        }
    }
}

/// Signal-to-noise ratio (dB) of `decoded` against `reference`, both
/// interleaved i16-scaled, over their common length.
fn snr_db(reference: &[f32], decoded: &[i16]) -> f64 {
    let mut signal = 0.0f64;
    let mut noise = 0.0f64;
    for (&r, &d) in reference.iter().zip(decoded) {
        let r = f64::from(r) * 32767.0;
        signal += r * r;
        noise += (r - f64::from(d)).powi(2);
    }
    10.0 * (signal / noise.max(1e-9)).log10()
}

/// Demuxes the AAC track and decodes it with FDK's decoder, then applies the
/// edit list by hand: proves the esds, sample offsets, priming and trimming.
#[test]
fn decodes_back_in_sync() {
    let format = AudioFormat::STEREO_48K;
    let (fps, frames) = (24, 12);
    let (mp4, pcm) = tone_clip(fps, frames, format);
    let info = inspect_mp4(&mp4).unwrap().audio.unwrap();
    let track = audio_track_data(&mp4).unwrap();
    assert_eq!(track.samples.len(), info.sample_count as usize);

    let mut dec = fdk_aac::dec::Decoder::new(fdk_aac::dec::Transport::Raw);
    dec.config_raw(&track.asc).unwrap();
    let mut decoded: Vec<i16> = Vec::new();
    let mut buf = vec![0i16; 8192];
    for r in &track.samples {
        let au = &mp4[r.clone()];
        assert_eq!(dec.fill(au).unwrap(), au.len());
        dec.decode_frame(&mut buf).unwrap();
        let n = dec.decoded_frame_size();
        assert_eq!(n, 1024 * 2);
        decoded.extend_from_slice(&buf[..n]);
    }
    // FDK's decoder adds its own delay (concealment and limiter look-ahead)
    // on top of the priming that the edit list skips; without a flush call in
    // the bindings, its last `output_delay` samples stay inside it.
    let output_delay = dec.stream_info().outputDelay as usize;
    assert!(output_delay < 4096, "decoder delay {output_delay}");
    let start = (info.media_start as usize + output_delay) * 2;
    let end = (start + info.presented_samples() as usize * 2).min(decoded.len());
    let presented = &decoded[start..end];
    assert!(
        presented.len() + output_delay * 2 >= pcm.len(),
        "{} vs {}",
        presented.len(),
        pcm.len()
    );

    let snr = snr_db(&pcm, presented);
    assert!(snr > 25.0, "decoded tone SNR {snr:.1} dB");
    // The check discriminates: without skipping the priming it fails.
    let unskipped = snr_db(&pcm, &decoded[output_delay * 2..]);
    assert!(unskipped < 3.0, "unskipped SNR {unskipped:.1} dB");
    // Left and right stay in order (right is the inverted, quieter copy).
    let (l, r): (Vec<i16>, Vec<i16>) = presented.chunks(2).map(|c| (c[0], c[1])).unzip();
    let dot: f64 = l.iter().zip(&r).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
    let ll: f64 = l.iter().map(|&a| f64::from(a).powi(2)).sum();
    let rr: f64 = r.iter().map(|&a| f64::from(a).powi(2)).sum();
    assert!(dot < 0.0 && ll > 3.0 * rr, "channels swapped or mixed");
}

#[test]
fn deterministic_whatever_the_push_order() {
    let format = AudioFormat::STEREO_48K;
    let (fps, frames) = (24, 10);
    let n = samples_for(frames, fps, format.sample_rate);
    let pcm = tone(format, 0, n);
    let a = encode_av(64, 48, fps, frames, format, &pcm, 700);
    let b = encode_av(64, 48, fps, frames, format, &pcm, 700);
    assert!(a == b, "two encodes of the same input differ");
    // Different chunking of the same samples.
    let c = encode_av(64, 48, fps, frames, format, &pcm, 1);
    assert!(a == c, "pushing one sample at a time changed the file");
    // All audio first, then all video.
    let mut enc = Mp4Encoder::with_audio(64, 48, fps, format).unwrap();
    enc.push_audio(&pcm).unwrap();
    for t in 0..frames {
        enc.push_rgb(&frame(64, 48, t)).unwrap();
    }
    assert!(a == enc.finish().unwrap(), "audio before video changed the file");
    // All video first, then all audio.
    let mut enc = Mp4Encoder::with_audio(64, 48, fps, format).unwrap();
    for t in 0..frames {
        enc.push_rgb(&frame(64, 48, t)).unwrap();
    }
    enc.push_audio(&pcm).unwrap();
    assert!(a == enc.finish().unwrap(), "audio after video changed the file");
}

#[test]
fn long_audio_is_trimmed_and_short_audio_padded() {
    let format = AudioFormat {
        sample_rate: 44_100,
        channels: 2,
    };
    let (fps, frames) = (24, 6);
    let n = samples_for(frames, fps, format.sample_rate);
    let exact = encode_av(64, 48, fps, frames, format, &tone(format, 0, n), 500);
    // Three times as long: the extra samples are dropped, not encoded.
    let long = encode_av(64, 48, fps, frames, format, &tone(format, 0, 3 * n), 500);
    assert!(exact == long, "audio past the video's end changed the file");
    check_structure(&long, fps, frames, format);

    // Half as long, then silence: same as padding by hand.
    let mut half = tone(format, 0, n / 2);
    let short = encode_av(64, 48, fps, frames, format, &half, 500);
    half.resize((n * 2) as usize, 0.0);
    let padded = encode_av(64, 48, fps, frames, format, &half, 500);
    assert!(short == padded, "short audio was not padded with silence");
    check_structure(&short, fps, frames, format);

    // No audio at all: a silent track of the right length.
    let silent = encode_av(64, 48, fps, frames, format, &[], 500);
    check_structure(&silent, fps, frames, format);
}

#[test]
fn out_of_range_samples_are_clamped_and_nan_is_silence() {
    let format = AudioFormat {
        sample_rate: 48_000,
        channels: 1,
    };
    let wild: Vec<f32> = (0..4000)
        .map(|i| match i % 4 {
            0 => f32::NAN,
            1 => 3.5,
            2 => -1e30,
            _ => f32::INFINITY,
        })
        .collect();
    let tame: Vec<f32> = (0..4000)
        .map(|i| match i % 4 {
            0 => 0.0,
            1 => 1.0,
            2 => -1.0,
            _ => 1.0,
        })
        .collect();
    let a = encode_av(64, 48, 24, 2, format, &wild, 1000);
    let b = encode_av(64, 48, 24, 2, format, &tame, 1000);
    assert!(a == b);
}

#[test]
fn bad_audio_input_is_rejected() {
    for (sample_rate, channels) in [(44_000, 2), (96_000, 2), (0, 2), (48_000, 0), (48_000, 3), (44_100, 6)] {
        let err = Mp4Encoder::with_audio(64, 48, 24, AudioFormat { sample_rate, channels }).unwrap_err();
        assert!(
            matches!(err, MediaError::InvalidInput(_)),
            "{sample_rate} Hz x{channels}: {err}"
        );
    }
    // Video checks still apply.
    assert!(matches!(
        Mp4Encoder::with_audio(63, 48, 24, AudioFormat::STEREO_48K),
        Err(MediaError::InvalidDimensions(_))
    ));

    // Audio on a video-only encoder.
    let mut enc = Mp4Encoder::new(64, 48, 24).unwrap();
    assert_eq!(enc.audio_format(), None);
    assert!(matches!(enc.push_audio(&[0.0; 2]), Err(MediaError::InvalidInput(_))));

    // A partial stereo frame is rejected and changes nothing.
    let format = AudioFormat::STEREO_48K;
    let pcm = tone(format, 0, 4000);
    let mut enc = Mp4Encoder::with_audio(64, 48, 24, format).unwrap();
    enc.push_rgb(&frame(64, 48, 0)).unwrap();
    assert!(matches!(enc.push_audio(&[0.1; 3]), Err(MediaError::InvalidInput(_))));
    enc.push_audio(&pcm).unwrap();
    enc.push_rgb(&frame(64, 48, 1)).unwrap();
    let with_error = enc.finish().unwrap();
    assert!(with_error == encode_av(64, 48, 24, 2, format, &pcm, 4000));

    // Still no MP4 without video, audio or not.
    let mut enc = Mp4Encoder::with_audio(64, 48, 24, format).unwrap();
    enc.push_audio(&pcm).unwrap();
    assert!(matches!(enc.finish(), Err(MediaError::InvalidInput(_))));
}

#[test]
fn truncated_or_corrupted_av_file_never_panics() {
    let (mp4, _) = tone_clip(24, 3, AudioFormat::STEREO_48K);
    for len in 0..mp4.len() {
        assert!(inspect_mp4(&mp4[..len]).is_err(), "truncated to {len} parsed");
        let _ = audio_track_data(&mp4[..len]);
    }
    let moov_end = 1200.min(mp4.len());
    for i in 0..moov_end {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut m = mp4.clone();
            m[i] ^= bit;
            let _ = inspect_mp4(&m);
            let _ = audio_track_data(&m);
        }
    }
}

/// Fails, never skips, when the tool is missing: this test is the proof that
/// real decoders accept the audio track.
fn require_tool(name: &str) {
    let ok = Command::new(name)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{name} is not on PATH: install ffmpeg (apt-get install ffmpeg); \
         the audio track cannot be validated without it"
    );
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("videogen-media-audio-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clip.mp4");
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// ffprobe sees an AAC-LC stream of the right format and length next to the
/// H.264 one, ffmpeg decodes the whole file without a single error, and the
/// PCM it decodes (honouring our edit list, as browsers do) is the tone, in
/// sync and of the video's length.
#[test]
fn ffmpeg_decodes_the_audio_track() {
    require_tool("ffprobe");
    require_tool("ffmpeg");
    let cases = [
        (24, 24, AudioFormat::STEREO_48K),
        (
            24,
            7,
            AudioFormat {
                sample_rate: 44_100,
                channels: 1,
            },
        ),
    ];
    for (fps, frames, format) in cases {
        let tag = format!("{}-{}", format.sample_rate, format.channels);
        let (mp4, pcm) = tone_clip(fps, frames, format);
        let file = TempFile::new(&tag, &mp4);

        let out = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries"])
            .arg("stream=index,codec_type,codec_name,profile,sample_rate,channels,duration,nb_frames")
            .args(["-of", "compact=nokey=0"])
            .arg(file.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "ffprobe {tag}: {stderr}"
        );
        let streams: Vec<&str> = stdout.lines().collect();
        assert_eq!(streams.len(), 2, "{stdout}");
        assert!(
            streams[0].contains("codec_type=video") && streams[0].contains("codec_name=h264"),
            "{stdout}"
        );
        let audio = streams[1];
        let field = |k: &str| {
            audio
                .split('|')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {audio}"))
                .to_string()
        };
        assert_eq!(field("codec_type"), "audio");
        assert_eq!(field("codec_name"), "aac");
        assert_eq!(field("profile"), "LC");
        assert_eq!(field("sample_rate"), format.sample_rate.to_string());
        assert_eq!(field("channels"), format.channels.to_string());
        let video_secs = f64::from(frames) / f64::from(fps);
        let dur: f64 = field("duration").parse().unwrap();
        assert!(
            (dur - video_secs).abs() < 2e-3,
            "{tag}: audio duration {dur} vs {video_secs}"
        );

        // Full decode of both streams: any error is printed at `-v error`.
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(file.path())
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "ffmpeg {tag}: {stderr}"
        );

        // The decoded PCM itself.
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(file.path())
            .args(["-map", "0:a:0", "-f", "s16le", "-acodec", "pcm_s16le", "-"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "ffmpeg pcm {tag}: {stderr}"
        );
        let decoded: Vec<i16> = out
            .stdout
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let ch = usize::from(format.channels);
        // The edit list ends on the movie's millisecond; ffmpeg (like ffmpeg
        // on its own AAC files) skips the priming but decodes the last frame
        // whole.
        let ms = (format.sample_rate as usize).div_ceil(1000) * ch;
        let frame = AAC_FRAME_SAMPLES as usize * ch;
        assert!(
            decoded.len() + ms >= pcm.len() && decoded.len() < pcm.len() + frame,
            "{tag}: ffmpeg decoded {} samples, {} pushed",
            decoded.len() / ch,
            pcm.len() / ch
        );
        let snr = snr_db(&pcm, &decoded);
        assert!(
            snr > 25.0,
            "{tag}: tone SNR after ffmpeg decode {snr:.1} dB (priming not skipped?)"
        );
    }
}
