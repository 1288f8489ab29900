//! Bounds-checked ISO-BMFF box walking shared by [`crate::inspect`] and the
//! encoder's post-mux fix-ups. Works on offsets so callers can both read and
//! patch in place; every access is checked, nothing here can panic.

use std::ops::Range;

use crate::MediaError;

/// One box found inside a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoxRef {
    /// Four-character type, e.g. `*b"moov"`.
    pub kind: [u8; 4],
    /// Offset of the first header byte.
    pub start: usize,
    /// Offset of the first payload byte (after size/type/largesize).
    pub payload_start: usize,
    /// One past the last byte of the box.
    pub end: usize,
}

impl BoxRef {
    pub(crate) fn payload(&self) -> Range<usize> {
        self.payload_start..self.end
    }

    pub(crate) fn kind_str(&self) -> String {
        fourcc(&self.kind)
    }
}

/// Printable form of a fourcc; non-printable bytes become `?` so garbage never
/// produces odd strings.
pub(crate) fn fourcc(kind: &[u8; 4]) -> String {
    kind.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn malformed(msg: impl Into<String>) -> MediaError {
    MediaError::Malformed(msg.into())
}

/// Lists the boxes that tile `range` of `bytes` exactly (no trailing garbage
/// allowed, sizes must nest inside the parent).
pub(crate) fn children(bytes: &[u8], range: Range<usize>) -> Result<Vec<BoxRef>, MediaError> {
    if range.start > range.end || range.end > bytes.len() {
        return Err(malformed("box range outside of the file"));
    }
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let remaining = range.end - pos;
        if remaining < 8 {
            return Err(malformed(format!(
                "{remaining} trailing bytes at offset {pos}, too short for a box header"
            )));
        }
        let size32 = read_u32(bytes, pos)?;
        let kind: [u8; 4] = bytes
            .get(pos + 4..pos + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| malformed("truncated box type"))?;
        let (header, size) = match size32 {
            // Box runs to the end of its parent.
            0 => (8usize, remaining as u64),
            1 => {
                if remaining < 16 {
                    return Err(malformed(format!(
                        "box '{}' at offset {pos} has a truncated 64-bit size",
                        fourcc(&kind)
                    )));
                }
                (16usize, read_u64(bytes, pos + 8)?)
            }
            n => (8usize, u64::from(n)),
        };
        if size < header as u64 || size > remaining as u64 {
            return Err(malformed(format!(
                "box '{}' at offset {pos} has size {size}, but {remaining} bytes remain",
                fourcc(&kind)
            )));
        }
        // size <= remaining <= usize::MAX, so the cast is lossless.
        let end = pos + size as usize;
        out.push(BoxRef {
            kind,
            start: pos,
            payload_start: pos + header,
            end,
        });
        pos = end;
    }
    Ok(out)
}

/// First child of `parent_range` with type `kind`, if any.
pub(crate) fn find_child(
    bytes: &[u8],
    parent_range: Range<usize>,
    kind: &[u8; 4],
) -> Result<Option<BoxRef>, MediaError> {
    Ok(children(bytes, parent_range)?.into_iter().find(|b| &b.kind == kind))
}

/// Follows a path of box types (first match at every level), e.g.
/// `[b"moov", b"trak", b"mdia"]`, returning the last box.
pub(crate) fn find_path(bytes: &[u8], range: Range<usize>, path: &[&[u8; 4]]) -> Result<Option<BoxRef>, MediaError> {
    let mut current: Option<BoxRef> = None;
    let mut range = range;
    for kind in path {
        match find_child(bytes, range, kind)? {
            Some(b) => {
                range = b.payload();
                current = Some(b);
            }
            None => return Ok(None),
        }
    }
    Ok(current)
}

pub(crate) fn read_u16(bytes: &[u8], at: usize) -> Result<u16, MediaError> {
    at.checked_add(2)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or_else(|| malformed(format!("truncated u16 at offset {at}")))
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Result<u32, MediaError> {
    at.checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| malformed(format!("truncated u32 at offset {at}")))
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> Result<u64, MediaError> {
    at.checked_add(8)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| malformed(format!("truncated u64 at offset {at}")))
}

pub(crate) fn write_u32(bytes: &mut [u8], at: usize, v: u32) -> Result<(), MediaError> {
    let slot = at
        .checked_add(4)
        .and_then(|end| bytes.get_mut(at..end))
        .ok_or_else(|| malformed(format!("cannot patch u32 at offset {at}")))?;
    slot.copy_from_slice(&v.to_be_bytes());
    Ok(())
}

pub(crate) fn write_u64(bytes: &mut [u8], at: usize, v: u64) -> Result<(), MediaError> {
    let slot = at
        .checked_add(8)
        .and_then(|end| bytes.get_mut(at..end))
        .ok_or_else(|| malformed(format!("cannot patch u64 at offset {at}")))?;
    slot.copy_from_slice(&v.to_be_bytes());
    Ok(())
}
