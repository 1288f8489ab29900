//! 64-bit difference hash (dHash) of an RGB frame, and hash-list parsing.
//!
//! dHash: convert to grayscale, shrink to 9×8 by area averaging, then for
//! each of the 8 rows emit one bit per neighbouring pair (`left < right`).
//! Re-encoding, mild noise and rescaling barely move the result, so a small
//! Hamming distance to a listed hash means "probably the same picture".

use std::path::Path;

/// Default Hamming-distance threshold: at most this many differing bits (of
/// 64) count as a match.
pub const DEFAULT_HASH_THRESHOLD: u32 = 6;

/// The dHash of a `width`×`height` row-major RGB8 image.
///
/// Degenerate input (a zero dimension, or fewer than `width * height * 3`
/// bytes) hashes to 0, the hash of a flat image.
pub fn dhash(width: u32, height: u32, rgb: &[u8]) -> u64 {
    let (w, h) = (width as usize, height as usize);
    let needed = w.checked_mul(h).and_then(|n| n.checked_mul(3));
    if w == 0 || h == 0 || needed.is_none_or(|n| rgb.len() < n) {
        return 0;
    }
    // Luma as integers scaled by 1000 (BT.601 weights).
    let luma = |x: usize, y: usize| -> u64 {
        let i = (y * w + x) * 3;
        299 * u64::from(rgb[i]) + 587 * u64::from(rgb[i + 1]) + 114 * u64::from(rgb[i + 2])
    };
    // Cell `i` of `n` covers source pixels `start..end`; never empty, so
    // images smaller than 9×8 still hash (by repeating pixels).
    let span = |i: usize, n: usize, len: usize| {
        let start = i * len / n;
        let end = ((i + 1) * len / n).max(start + 1).min(len);
        (start.min(len - 1), end)
    };
    let mut cells = [[0u64; 9]; 8];
    for (cy, row) in cells.iter_mut().enumerate() {
        let (y0, y1) = span(cy, 8, h);
        for (cx, cell) in row.iter_mut().enumerate() {
            let (x0, x1) = span(cx, 9, w);
            let mut sum = 0u64;
            for y in y0..y1 {
                for x in x0..x1 {
                    sum += luma(x, y);
                }
            }
            let count = ((y1 - y0) * (x1 - x0)) as u64;
            *cell = sum / count;
        }
    }
    let mut hash = 0u64;
    for row in &cells {
        for pair in row.windows(2) {
            hash = (hash << 1) | u64::from(pair[0] < pair[1]);
        }
    }
    hash
}

/// Number of differing bits between two hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Errors loading a hash list.
#[derive(Debug, thiserror::Error)]
pub enum HashListError {
    #[error("reading hash list {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("hash list line {line}: {msg}")]
    Parse { line: usize, msg: String },
}

/// Parses a hash list: one hex hash per line (optional `0x`, 1–16 hex
/// digits); blank lines and `#` comments (whole-line or trailing) ignored.
pub fn parse_hash_list(text: &str) -> Result<Vec<u64>, HashListError> {
    let mut hashes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let hex = content
            .strip_prefix("0x")
            .or_else(|| content.strip_prefix("0X"))
            .unwrap_or(content);
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HashListError::Parse {
                line: i + 1,
                msg: format!("expected 1 to 16 hex digits, got {content:?}"),
            });
        }
        let hash = u64::from_str_radix(hex, 16).map_err(|e| HashListError::Parse {
            line: i + 1,
            msg: e.to_string(),
        })?;
        hashes.push(hash);
    }
    Ok(hashes)
}

/// Reads and parses a hash list file (see [`parse_hash_list`]).
pub fn load_hash_file(path: &Path) -> Result<Vec<u64>, HashListError> {
    let text = std::fs::read_to_string(path).map_err(|source| HashListError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_hash_list(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_inputs_hash_to_zero() {
        assert_eq!(dhash(0, 10, &[]), 0);
        assert_eq!(dhash(10, 10, &[0; 10]), 0);
        assert_eq!(dhash(4, 4, &[200; 48]), 0);
    }

    #[test]
    fn horizontal_gradient_sets_every_bit() {
        let (w, h) = (90u32, 40u32);
        let mut rgb = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                let v = (x * 255 / (w - 1)) as u8;
                rgb.extend([v, v, v]);
            }
        }
        assert_eq!(dhash(w, h, &rgb), u64::MAX);
        // A mirrored gradient sets none.
        let mirrored: Vec<u8> = rgb.iter().map(|v| 255 - v).collect();
        assert_eq!(dhash(w, h, &mirrored), 0);
    }

    #[test]
    fn tiny_images_still_hash() {
        // 2x1: dark then bright; cells repeat pixels so only the boundary differs.
        let rgb = [0, 0, 0, 255, 255, 255];
        assert_ne!(dhash(2, 1, &rgb), 0);
    }

    #[test]
    fn hash_list_parsing() {
        let text = "# known bad\n\n0xFFFF0000ffff0000\n  abc  # trailing comment\n0\n";
        assert_eq!(parse_hash_list(text).unwrap(), [0xFFFF_0000_FFFF_0000, 0xABC, 0]);
        for bad in ["xyz", "0x", "12345678901234567", "-1", "12 34"] {
            match parse_hash_list(&format!("00\n{bad}\n")) {
                Err(HashListError::Parse { line: 2, .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
