//! Structural MP4 inspection: enough of ISO-BMFF to verify what we write
//! (fast start, codec, size, frame count, duration, and the audio track's
//! codec, rate, channels, frame count and edit list) without ffprobe.
//!
//! Hand-written and bounds-checked on purpose: it runs on untrusted bytes
//! (uploads, blobs read back from storage) and must return an error rather
//! than panic on anything malformed.

use std::ops::Range;

use crate::MediaError;
use crate::boxes::{self, BoxRef, children, find_child, find_path, read_u16, read_u32, read_u64};

/// What [`inspect_mp4`] learned about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Info {
    /// `ftyp` major brand, e.g. `"isom"`.
    pub major_brand: String,
    /// Top-level box types in file order, e.g. `["ftyp", "moov", "mdat"]`.
    pub top_level_boxes: Vec<String>,
    /// True when `moov` precedes `mdat` (fast start / progressive playback).
    pub moov_before_mdat: bool,
    /// Sample entry fourcc of the video track (`"avc1"` for our output).
    pub codec: String,
    /// Coded width from the visual sample entry.
    pub width: u32,
    /// Coded height from the visual sample entry.
    pub height: u32,
    /// Number of samples (frames) in the video track (`stsz`/`stz2`).
    pub sample_count: u32,
    /// Media timescale of the video track (`mdhd`).
    pub timescale: u32,
    /// Video track duration in `timescale` units (`mdhd`).
    pub duration: u64,
    /// Movie timescale (`mvhd`; 1000 for our output).
    pub movie_timescale: u32,
    /// Movie duration in `movie_timescale` units (`mvhd`).
    pub movie_duration: u64,
    /// The first sound track (`hdlr` `soun`), if any.
    pub audio: Option<AudioTrackInfo>,
}

/// What [`inspect_mp4`] learned about the audio track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrackInfo {
    /// Sample entry fourcc: `"mp4a"` (AAC, our output) or e.g. `"Opus"`.
    pub codec: String,
    /// MPEG-4 audio object type from the `esds` AudioSpecificConfig (2 =
    /// AAC-LC); `None` for entries other than `mp4a`.
    pub audio_object_type: Option<u8>,
    /// Sample rate from the audio sample entry (integer part of its 16.16 field).
    pub sample_rate: u32,
    /// Channel count from the audio sample entry.
    pub channels: u16,
    /// Number of samples in the track (`stsz`): access units, i.e. AAC frames
    /// of 1024 PCM samples per channel each.
    pub sample_count: u32,
    /// Media timescale of the track (`mdhd`; the sample rate for our output).
    pub timescale: u32,
    /// Media duration in `timescale` units (`mdhd`), encoder priming included.
    pub duration: u64,
    /// Media time at which presentation starts, in `timescale` units: the
    /// first non-empty edit's `media_time` (the encoder priming that players
    /// skip), 0 without an edit list.
    pub media_start: u64,
    /// Presented duration in movie timescale units (sum of the edit list's
    /// segment durations); `None` without an edit list.
    pub edit_duration: Option<u64>,
    /// Movie timescale (`mvhd`), the unit of `edit_duration`.
    pub movie_timescale: u32,
}

impl AudioTrackInfo {
    /// Presented duration in seconds: the edit list's, else the media
    /// duration after `media_start` (0 when a timescale is 0).
    pub fn duration_secs(&self) -> f64 {
        match self.edit_duration {
            Some(d) if self.movie_timescale > 0 => d as f64 / f64::from(self.movie_timescale),
            Some(_) => 0.0,
            None => self.media_duration_secs() - self.media_start_secs(),
        }
    }

    /// Media duration in seconds, priming included (0 when the timescale is 0).
    pub fn media_duration_secs(&self) -> f64 {
        if self.timescale == 0 {
            0.0
        } else {
            self.duration as f64 / f64::from(self.timescale)
        }
    }

    fn media_start_secs(&self) -> f64 {
        if self.timescale == 0 {
            0.0
        } else {
            self.media_start as f64 / f64::from(self.timescale)
        }
    }

    /// PCM samples per channel that are presented (`duration_secs * timescale`,
    /// rounded); for AAC this is what a decoder outputs after skipping priming.
    pub fn presented_samples(&self) -> u64 {
        (self.duration_secs() * f64::from(self.timescale)).round() as u64
    }
}

impl Mp4Info {
    /// Track duration in seconds (0 when the timescale is 0).
    pub fn duration_secs(&self) -> f64 {
        if self.timescale == 0 {
            0.0
        } else {
            self.duration as f64 / f64::from(self.timescale)
        }
    }

    /// Average frame rate: samples per second of track duration (0 when the
    /// duration is 0).
    pub fn fps(&self) -> f64 {
        let secs = self.duration_secs();
        if secs > 0.0 {
            f64::from(self.sample_count) / secs
        } else {
            0.0
        }
    }
}

fn malformed(msg: impl Into<String>) -> MediaError {
    MediaError::Malformed(msg.into())
}

fn require(b: Option<BoxRef>, what: &str) -> Result<BoxRef, MediaError> {
    b.ok_or_else(|| malformed(format!("missing '{what}' box")))
}

/// Parses the box structure of an MP4 (ftyp, moov/mvhd, trak/mdia/mdhd,
/// stsd, stsz, stco/co64, edts/elst, mdat) and summarises the video track
/// and, if there is one, the audio track.
///
/// Besides extracting fields it checks the things a browser relies on: an
/// `avc1` entry must carry an `avcC`, an `mp4a` entry an `esds`, and every
/// chunk offset of both tracks must point into the `mdat` payload (which is
/// what breaks when moov is moved without patching offsets).
pub fn inspect_mp4(bytes: &[u8]) -> Result<Mp4Info, MediaError> {
    let top = children(bytes, 0..bytes.len())?;
    let top_level_boxes: Vec<String> = top.iter().map(BoxRef::kind_str).collect();

    let ftyp = require(top.iter().copied().find(|b| &b.kind == b"ftyp"), "ftyp")?;
    let moov_idx = top.iter().position(|b| &b.kind == b"moov");
    let mdat_idx = top.iter().position(|b| &b.kind == b"mdat");
    let (Some(moov_idx), Some(mdat_idx)) = (moov_idx, mdat_idx) else {
        return Err(malformed("file needs both a 'moov' and an 'mdat' box"));
    };
    let moov = top[moov_idx];
    let mdat = top[mdat_idx];

    let brand: [u8; 4] = bytes
        .get(ftyp.payload_start..ftyp.payload_start + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed("ftyp too short for a major brand"))?;

    let trak = video_trak(bytes, moov)?;
    let mdia = require(find_child(bytes, trak.payload(), b"mdia")?, "mdia")?;
    let mdhd = require(find_child(bytes, mdia.payload(), b"mdhd")?, "mdhd")?;
    let (timescale, duration) = parse_mdhd(bytes, mdhd)?;
    let stbl = require(find_path(bytes, mdia.payload(), &[b"minf", b"stbl"])?, "minf/stbl")?;

    let entry = first_sample_entry(bytes, stbl)?;
    let codec = entry.kind_str();
    // VisualSampleEntry: 6 reserved, 2 data_reference_index, 16 pre-defined/
    // reserved, then width and height (u16 each).
    let width = u32::from(read_u16(bytes, entry.payload_start + 24)?);
    let height = u32::from(read_u16(bytes, entry.payload_start + 26)?);
    let is_avc = &entry.kind == b"avc1" || &entry.kind == b"avc3";
    if is_avc && avcc_range(bytes, entry)?.is_none() {
        return Err(malformed("'avc1' sample entry without an 'avcC' box"));
    }

    let sizes = sample_sizes(bytes, stbl)?;
    let sample_count = u32::try_from(sizes.count).map_err(|_| malformed("too many samples"))?;
    check_chunk_offsets(bytes, stbl, mdat)?;

    let mvhd = require(find_child(bytes, moov.payload(), b"mvhd")?, "mvhd")?;
    let (movie_timescale, movie_duration) = parse_mdhd(bytes, mvhd)?;
    let audio = match sound_trak(bytes, moov)? {
        Some(trak) => Some(audio_info(bytes, trak, mdat, movie_timescale)?),
        None => None,
    };

    Ok(Mp4Info {
        major_brand: boxes::fourcc(&brand),
        top_level_boxes,
        moov_before_mdat: moov_idx < mdat_idx,
        codec,
        width,
        height,
        sample_count,
        timescale,
        duration,
        movie_timescale,
        movie_duration,
        audio,
    })
}

/// Every chunk offset of `stbl` must point into the `mdat` payload.
fn check_chunk_offsets(bytes: &[u8], stbl: BoxRef, mdat: BoxRef) -> Result<(), MediaError> {
    for offset in chunk_offsets(bytes, stbl)? {
        let inside = offset >= mdat.payload_start as u64 && offset <= mdat.end as u64;
        if !inside {
            return Err(malformed(format!(
                "chunk offset {offset} points outside mdat payload {}..{}",
                mdat.payload_start, mdat.end
            )));
        }
    }
    Ok(())
}

/// Handler type of a `trak` (`mdia/hdlr`), if it has one.
fn trak_handler(bytes: &[u8], trak: BoxRef) -> Result<Option<[u8; 4]>, MediaError> {
    let Some(hdlr) = find_path(bytes, trak.payload(), &[b"mdia", b"hdlr"])? else {
        return Ok(None);
    };
    // FullBox header (4) + pre_defined (4), then handler_type.
    Ok(bytes
        .get(hdlr.payload_start + 8..hdlr.payload_start + 12)
        .and_then(|s| s.try_into().ok()))
}

/// The first `trak` whose handler is `soun`.
fn sound_trak(bytes: &[u8], moov: BoxRef) -> Result<Option<BoxRef>, MediaError> {
    for trak in children(bytes, moov.payload())?
        .into_iter()
        .filter(|b| &b.kind == b"trak")
    {
        if trak_handler(bytes, trak)? == Some(*b"soun") {
            return Ok(Some(trak));
        }
    }
    Ok(None)
}

fn audio_info(bytes: &[u8], trak: BoxRef, mdat: BoxRef, movie_timescale: u32) -> Result<AudioTrackInfo, MediaError> {
    let mdia = require(find_child(bytes, trak.payload(), b"mdia")?, "audio mdia")?;
    let mdhd = require(find_child(bytes, mdia.payload(), b"mdhd")?, "audio mdhd")?;
    let (timescale, duration) = parse_mdhd(bytes, mdhd)?;
    let stbl = require(
        find_path(bytes, mdia.payload(), &[b"minf", b"stbl"])?,
        "audio minf/stbl",
    )?;
    let entry = first_sample_entry(bytes, stbl)?;
    // AudioSampleEntry: 6 reserved, 2 data_reference_index, 2 version, 6
    // reserved, channelcount, samplesize, 4 pre-defined/reserved, then the
    // 16.16 sample rate.
    let channels = read_u16(bytes, entry.payload_start + 16)?;
    let sample_rate = read_u32(bytes, entry.payload_start + 24)? >> 16;
    let audio_object_type = if &entry.kind == b"mp4a" {
        let asc = esds_audio_specific_config(bytes, entry)?;
        Some(audio_object_type(asc)?)
    } else {
        None
    };
    let sample_count = u32::try_from(sample_sizes(bytes, stbl)?.count).map_err(|_| malformed("too many samples"))?;
    check_chunk_offsets(bytes, stbl, mdat)?;
    let (media_start, edit_duration) = match find_path(bytes, trak.payload(), &[b"edts", b"elst"])? {
        Some(elst) => {
            let (start, total) = parse_elst(bytes, elst)?;
            (start, Some(total))
        }
        None => (0, None),
    };
    Ok(AudioTrackInfo {
        codec: entry.kind_str(),
        audio_object_type,
        sample_rate,
        channels,
        sample_count,
        timescale,
        duration,
        media_start,
        edit_duration,
        movie_timescale,
    })
}

/// Child boxes of an audio sample entry start after its fixed fields: 28
/// bytes for version 0, 44 / 64 for QuickTime's sound description v1 / v2.
fn audio_entry_children(bytes: &[u8], entry: BoxRef) -> Result<std::ops::Range<usize>, MediaError> {
    let fixed = match read_u16(bytes, entry.payload_start + 8)? {
        0 => 28,
        1 => 44,
        2 => 64,
        v => return Err(malformed(format!("unsupported audio sample entry version {v}"))),
    };
    let start = entry.payload_start + fixed;
    if start > entry.end {
        return Err(malformed("audio sample entry too short"));
    }
    Ok(start..entry.end)
}

/// One MPEG-4 descriptor header (tag, expandable size) at `at`, bounded by
/// `end`: `(tag, payload range)`.
fn descriptor(bytes: &[u8], at: usize, end: usize) -> Result<(u8, Range<usize>), MediaError> {
    let byte = |i: usize| {
        if i < end {
            bytes.get(i).copied().ok_or_else(|| malformed("truncated esds"))
        } else {
            Err(malformed("truncated esds descriptor"))
        }
    };
    let tag = byte(at)?;
    let mut size = 0usize;
    let mut pos = at + 1;
    for i in 0..4 {
        let b = byte(pos)?;
        pos += 1;
        size = (size << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(malformed("esds descriptor size longer than 4 bytes"));
        }
    }
    let payload_end = pos
        .checked_add(size)
        .filter(|&e| e <= end)
        .ok_or_else(|| malformed("esds descriptor overruns"))?;
    Ok((tag, pos..payload_end))
}

/// The AudioSpecificConfig bytes inside an `mp4a` entry's `esds`
/// (ES_Descriptor → DecoderConfigDescriptor → DecoderSpecificInfo).
fn esds_audio_specific_config(bytes: &[u8], entry: BoxRef) -> Result<&[u8], MediaError> {
    let esds = require(find_child(bytes, audio_entry_children(bytes, entry)?, b"esds")?, "esds")?;
    // FullBox header, then the ES_Descriptor.
    let (tag, es) = descriptor(bytes, esds.payload_start + 4, esds.end)?;
    if tag != 0x03 {
        return Err(malformed(format!(
            "esds starts with descriptor tag {tag}, not ES_Descriptor"
        )));
    }
    // ES_ID (2), flags (1), then optional fields the flags announce.
    let flags = *bytes
        .get(es.start + 2)
        .ok_or_else(|| malformed("short ES_Descriptor"))?;
    let mut pos = es.start + 3;
    if flags & 0x80 != 0 {
        pos += 2; // dependsOn_ES_ID
    }
    if flags & 0x40 != 0 {
        let url_len = *bytes.get(pos).ok_or_else(|| malformed("short ES_Descriptor URL"))?;
        pos += 1 + usize::from(url_len);
    }
    if flags & 0x20 != 0 {
        pos += 2; // OCR_ES_Id
    }
    let (tag, dc) = descriptor(bytes, pos, es.end)?;
    if tag != 0x04 {
        return Err(malformed(format!("expected DecoderConfigDescriptor, found tag {tag}")));
    }
    // objectTypeIndication, streamType, bufferSizeDB (3), max and avg bitrate.
    let (tag, dsi) = descriptor(bytes, dc.start + 13, dc.end)?;
    if tag != 0x05 {
        return Err(malformed(format!("expected DecoderSpecificInfo, found tag {tag}")));
    }
    bytes.get(dsi).ok_or_else(|| malformed("truncated AudioSpecificConfig"))
}

/// audioObjectType from the first bits of an AudioSpecificConfig (5 bits;
/// 31 escapes to 32 + the next 6 bits).
fn audio_object_type(asc: &[u8]) -> Result<u8, MediaError> {
    let b0 = *asc.first().ok_or_else(|| malformed("empty AudioSpecificConfig"))?;
    let aot = b0 >> 3;
    if aot != 31 {
        return Ok(aot);
    }
    let b1 = *asc.get(1).ok_or_else(|| malformed("short AudioSpecificConfig"))?;
    Ok(32 + (((b0 & 0x07) << 3) | (b1 >> 5)))
}

/// `(media_time of the first non-empty edit, total segment duration)` from
/// an `elst` of version 0 or 1.
fn parse_elst(bytes: &[u8], elst: BoxRef) -> Result<(u64, u64), MediaError> {
    let p = elst.payload_start;
    let version = *bytes.get(p).ok_or_else(|| malformed("empty elst"))?;
    let entry_len: usize = match version {
        0 => 12,
        1 => 20,
        v => return Err(malformed(format!("unsupported elst version {v}"))),
    };
    let count = read_u32(bytes, p + 4)?;
    if (p + 8) as u64 + u64::from(count) * entry_len as u64 > elst.end as u64 {
        return Err(malformed(format!("elst claims {count} entries but is too short")));
    }
    let mut start = None;
    let mut total: u64 = 0;
    for i in 0..count as usize {
        let at = p + 8 + i * entry_len;
        let (segment, media_time) = if version == 0 {
            (
                u64::from(read_u32(bytes, at)?),
                i64::from(read_u32(bytes, at + 4)? as i32),
            )
        } else {
            (read_u64(bytes, at)?, read_u64(bytes, at + 8)? as i64)
        };
        total = total.saturating_add(segment);
        if media_time >= 0 && start.is_none() {
            start = Some(media_time as u64);
        }
    }
    Ok((start.unwrap_or(0), total))
}

/// The `trak` whose handler is `vide`, else the first `trak`.
fn video_trak(bytes: &[u8], moov: BoxRef) -> Result<BoxRef, MediaError> {
    let traks: Vec<BoxRef> = children(bytes, moov.payload())?
        .into_iter()
        .filter(|b| &b.kind == b"trak")
        .collect();
    for trak in &traks {
        if trak_handler(bytes, *trak)? == Some(*b"vide") {
            return Ok(*trak);
        }
    }
    traks.first().copied().ok_or_else(|| malformed("moov has no 'trak'"))
}

/// `(timescale, duration)` from an `mdhd` of version 0 or 1.
fn parse_mdhd(bytes: &[u8], mdhd: BoxRef) -> Result<(u32, u64), MediaError> {
    let p = mdhd.payload_start;
    let version = *bytes.get(p).ok_or_else(|| malformed("empty mdhd"))?;
    let (timescale, duration) = match version {
        0 => (read_u32(bytes, p + 12)?, u64::from(read_u32(bytes, p + 16)?)),
        1 => (read_u32(bytes, p + 20)?, read_u64(bytes, p + 24)?),
        v => return Err(malformed(format!("unsupported mdhd version {v}"))),
    };
    if p + if version == 0 { 20 } else { 32 } > mdhd.end {
        return Err(malformed("mdhd shorter than its fields"));
    }
    Ok((timescale, duration))
}

/// First entry of `stsd` (entries start after FullBox header + entry_count).
fn first_sample_entry(bytes: &[u8], stbl: BoxRef) -> Result<BoxRef, MediaError> {
    let stsd = require(find_child(bytes, stbl.payload(), b"stsd")?, "stsd")?;
    let entry_count = read_u32(bytes, stsd.payload_start + 4)?;
    if entry_count == 0 {
        return Err(malformed("stsd has no sample entries"));
    }
    let entries_start = stsd.payload_start + 8;
    if entries_start > stsd.end {
        return Err(malformed("stsd too short"));
    }
    children(bytes, entries_start..stsd.end)?
        .into_iter()
        .next()
        .ok_or_else(|| malformed("stsd has no sample entries"))
}

/// Payload range of the `avcC` inside an `avc1` entry (its child boxes start
/// after the 78-byte VisualSampleEntry fields).
fn avcc_range(bytes: &[u8], entry: BoxRef) -> Result<Option<Range<usize>>, MediaError> {
    let start = entry.payload_start + 78;
    if start > entry.end {
        return Err(malformed("visual sample entry too short"));
    }
    Ok(find_child(bytes, start..entry.end, b"avcC")?.map(|b| b.payload()))
}

/// Sample sizes from `stsz` (or compact `stz2`).
struct SampleSizes {
    count: u64,
    /// `Some(size)` when all samples share one size, else the table.
    uniform: Option<u32>,
    table: Vec<u32>,
}

fn sample_sizes(bytes: &[u8], stbl: BoxRef) -> Result<SampleSizes, MediaError> {
    if let Some(stsz) = find_child(bytes, stbl.payload(), b"stsz")? {
        let p = stsz.payload_start;
        let size = read_u32(bytes, p + 4)?;
        let count = read_u32(bytes, p + 8)?;
        if size != 0 {
            // Every sample occupies at least one byte of the file.
            if u64::from(count) > bytes.len() as u64 {
                return Err(malformed(format!(
                    "stsz claims {count} samples, more than the file has bytes"
                )));
            }
            return Ok(SampleSizes {
                count: u64::from(count),
                uniform: Some(size),
                table: Vec::new(),
            });
        }
        // Check the table fits before allocating anything for it.
        let table_end = (p + 12) as u64 + u64::from(count) * 4;
        if table_end > stsz.end as u64 {
            return Err(malformed(format!("stsz claims {count} samples but is too short")));
        }
        let table = (0..count as usize)
            .map(|i| read_u32(bytes, p + 12 + i * 4))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(SampleSizes {
            count: u64::from(count),
            uniform: None,
            table,
        });
    }
    if let Some(stz2) = find_child(bytes, stbl.payload(), b"stz2")? {
        // Only the count is needed for inspection; compact tables are rare.
        let count = read_u32(bytes, stz2.payload_start + 8)?;
        return Ok(SampleSizes {
            count: u64::from(count),
            uniform: None,
            table: Vec::new(),
        });
    }
    Err(malformed("missing 'stsz'/'stz2' box"))
}

/// Chunk offsets from `stco` or `co64`.
fn chunk_offsets(bytes: &[u8], stbl: BoxRef) -> Result<Vec<u64>, MediaError> {
    let (b, wide) = if let Some(b) = find_child(bytes, stbl.payload(), b"stco")? {
        (b, false)
    } else if let Some(b) = find_child(bytes, stbl.payload(), b"co64")? {
        (b, true)
    } else {
        return Err(malformed("missing 'stco'/'co64' box"));
    };
    let p = b.payload_start;
    let count = read_u32(bytes, p + 4)?;
    let width: u64 = if wide { 8 } else { 4 };
    if (p + 8) as u64 + u64::from(count) * width > b.end as u64 {
        return Err(malformed(format!(
            "chunk offset table claims {count} entries but is too short"
        )));
    }
    (0..count as usize)
        .map(|i| {
            if wide {
                read_u64(bytes, p + 8 + i * 8)
            } else {
                read_u32(bytes, p + 8 + i * 4).map(u64::from)
            }
        })
        .collect()
}

/// `(first_chunk, samples_per_chunk)` runs from `stsc`.
fn sample_to_chunk(bytes: &[u8], stbl: BoxRef) -> Result<Vec<(u32, u32)>, MediaError> {
    let stsc = require(find_child(bytes, stbl.payload(), b"stsc")?, "stsc")?;
    let p = stsc.payload_start;
    let count = read_u32(bytes, p + 4)?;
    if (p + 8) as u64 + u64::from(count) * 12 > stsc.end as u64 {
        return Err(malformed("stsc too short"));
    }
    (0..count as usize)
        .map(|i| {
            let at = p + 8 + i * 12;
            Ok((read_u32(bytes, at)?, read_u32(bytes, at + 4)?))
        })
        .collect()
}

/// Video track details beyond [`Mp4Info`] that tests need to decode the
/// stream back: the `avcC` record and every sample's byte range.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct VideoTrackData {
    pub avcc: Vec<u8>,
    pub samples: Vec<Range<usize>>,
}

/// Locates every video sample via stsc/stco/stsz (bounds-checked).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn video_track_data(bytes: &[u8]) -> Result<VideoTrackData, MediaError> {
    let top = children(bytes, 0..bytes.len())?;
    let moov = require(top.iter().copied().find(|b| &b.kind == b"moov"), "moov")?;
    let trak = video_trak(bytes, moov)?;
    let stbl = require(find_path(bytes, trak.payload(), &[b"mdia", b"minf", b"stbl"])?, "stbl")?;
    let entry = first_sample_entry(bytes, stbl)?;
    let avcc = avcc_range(bytes, entry)?
        .and_then(|r| bytes.get(r))
        .ok_or_else(|| malformed("no avcC"))?
        .to_vec();
    let samples = sample_ranges(bytes, stbl)?;
    Ok(VideoTrackData { avcc, samples })
}

/// Audio track details for tests that decode the stream back: the
/// AudioSpecificConfig and every sample's byte range.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct AudioTrackData {
    pub asc: Vec<u8>,
    pub samples: Vec<Range<usize>>,
}

/// Locates every sample of the (first) sound track (bounds-checked).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn audio_track_data(bytes: &[u8]) -> Result<AudioTrackData, MediaError> {
    let top = children(bytes, 0..bytes.len())?;
    let moov = require(top.iter().copied().find(|b| &b.kind == b"moov"), "moov")?;
    let trak = sound_trak(bytes, moov)?.ok_or_else(|| malformed("no sound trak"))?;
    let stbl = require(find_path(bytes, trak.payload(), &[b"mdia", b"minf", b"stbl"])?, "stbl")?;
    let entry = first_sample_entry(bytes, stbl)?;
    let asc = esds_audio_specific_config(bytes, entry)?.to_vec();
    let samples = sample_ranges(bytes, stbl)?;
    Ok(AudioTrackData { asc, samples })
}

/// Byte ranges of every sample of a track, via stsc/stco/stsz.
fn sample_ranges(bytes: &[u8], stbl: BoxRef) -> Result<Vec<Range<usize>>, MediaError> {
    let sizes = sample_sizes(bytes, stbl)?;
    let offsets = chunk_offsets(bytes, stbl)?;
    let runs = sample_to_chunk(bytes, stbl)?;

    let mut samples = Vec::new();
    let mut sample_idx: u64 = 0;
    for (chunk_idx, &chunk_offset) in offsets.iter().enumerate() {
        let chunk_no = chunk_idx as u32 + 1;
        let per_chunk = runs
            .iter()
            .rev()
            .find(|(first, _)| *first <= chunk_no)
            .map(|&(_, n)| n)
            .ok_or_else(|| malformed("stsc does not cover chunk"))?;
        let mut pos = chunk_offset;
        for _ in 0..per_chunk {
            if sample_idx >= sizes.count {
                break;
            }
            let size = match sizes.uniform {
                Some(s) => s,
                None => *sizes
                    .table
                    .get(sample_idx as usize)
                    .ok_or_else(|| malformed("sample size missing"))?,
            };
            let end = pos.checked_add(u64::from(size)).filter(|&e| e <= bytes.len() as u64);
            let Some(end) = end else {
                return Err(malformed("sample extends past end of file"));
            };
            samples.push(pos as usize..end as usize);
            pos = end;
            sample_idx += 1;
        }
    }
    if sample_idx != sizes.count {
        return Err(malformed("chunks hold fewer samples than stsz declares"));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn rejects_empty_and_short() {
        assert!(inspect_mp4(&[]).is_err());
        assert!(inspect_mp4(&[0, 0, 0]).is_err());
        assert!(inspect_mp4(b"\0\0\0\x08ftyp").is_err()); // no moov/mdat
    }

    #[test]
    fn rejects_oversized_and_undersized_boxes() {
        // Size larger than the file.
        assert!(inspect_mp4(b"\0\0\x10\0ftypisom").is_err());
        // Size smaller than a header.
        assert!(inspect_mp4(b"\0\0\0\x04ftypisom").is_err());
        // 64-bit size that is huge.
        let mut v = 1u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(inspect_mp4(&v).is_err());
    }

    #[test]
    fn rejects_structure_without_track() {
        let mut f = bx(b"ftyp", b"isom\0\0\x02\0isom");
        f.extend(bx(b"moov", &[]));
        f.extend(bx(b"mdat", &[1, 2, 3]));
        let err = inspect_mp4(&f).unwrap_err();
        assert!(err.to_string().contains("trak"), "{err}");
    }

    #[test]
    fn lying_stsz_count_does_not_allocate_or_panic() {
        let mut stsz = vec![0u8; 8];
        stsz.extend_from_slice(&u32::MAX.to_be_bytes());
        let stbl = bx(b"stbl", &bx(b"stsz", &stsz));
        let parsed = children(&stbl, 0..stbl.len()).unwrap()[0];
        assert!(sample_sizes(&stbl, parsed).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = inspect_mp4(&data);
            let _ = video_track_data(&data);
        }

        #[test]
        fn never_panics_on_box_shaped_garbage(
            boxes in proptest::collection::vec(
                (prop::sample::select(vec![*b"ftyp", *b"moov", *b"trak", *b"mdia", *b"mdhd",
                    *b"minf", *b"stbl", *b"stsd", *b"stsz", *b"stco", *b"co64", *b"mdat", *b"avc1"]),
                 proptest::collection::vec(any::<u8>(), 0..64)),
                0..8)
        ) {
            // Nest them: every box wraps the following ones, then append raw.
            let mut data = Vec::new();
            for (kind, payload) in boxes.iter().rev() {
                let mut p = payload.clone();
                p.extend_from_slice(&data);
                data = bx(kind, &p);
            }
            let _ = inspect_mp4(&data);
            let _ = video_track_data(&data);
        }
    }
}
