//! Still images derived from frames: a poster thumbnail and a hover/scrub
//! spritesheet, both JPEG (small, universally displayable).

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{ExtendedColorType, RgbImage};

use crate::MediaError;

/// JPEG quality: visually clean for previews at a fraction of PNG size.
const JPEG_QUALITY: u8 = 85;
/// JPEG cannot store dimensions above this.
const MAX_JPEG_SIDE: u32 = u16::MAX as u32;

/// JPEG of one RGB frame, scaled down (aspect kept) so that its width is at
/// most `max_width`. Frames already narrow enough are not upscaled.
pub fn thumbnail_jpeg(width: u32, height: u32, rgb: &[u8], max_width: u32) -> Result<Vec<u8>, MediaError> {
    if max_width == 0 {
        return Err(MediaError::InvalidDimensions("thumbnail max_width must be > 0".into()));
    }
    let img = to_image(width, height, rgb)?;
    let img = if width > max_width {
        let h = scaled_height(width, height, max_width);
        imageops::resize(&img, max_width, h, FilterType::Triangle)
    } else {
        img
    };
    encode_jpeg(&img)
}

/// Grid spritesheet JPEG. `frames` are `(width, height, rgb)` of equal size;
/// tile `i` sits at column `i % cols`, row `i / cols`, each scaled to
/// `tile_width` wide (aspect kept). The sheet is `min(cols, n)` tiles wide and
/// `ceil(n / cols)` tall; unused cells in the last row are black.
pub fn spritesheet_jpeg(frames: &[(u32, u32, &[u8])], cols: u32, tile_width: u32) -> Result<Vec<u8>, MediaError> {
    let Some(&(w, h, _)) = frames.first() else {
        return Err(MediaError::InvalidInput("spritesheet needs at least one frame".into()));
    };
    if cols == 0 || tile_width == 0 {
        return Err(MediaError::InvalidDimensions(format!(
            "spritesheet cols ({cols}) and tile_width ({tile_width}) must be > 0"
        )));
    }
    if let Some((i, &(fw, fh, _))) = frames.iter().enumerate().find(|(_, (fw, fh, _))| (*fw, *fh) != (w, h)) {
        return Err(MediaError::InvalidDimensions(format!(
            "spritesheet frame {i} is {fw}x{fh}, frame 0 is {w}x{h}"
        )));
    }
    let n = u32::try_from(frames.len()).map_err(|_| MediaError::InvalidInput("too many spritesheet frames".into()))?;
    if w == 0 || h == 0 {
        return Err(MediaError::InvalidDimensions(format!("frame size {w}x{h}")));
    }
    let tile_height = scaled_height(w, h, tile_width);
    let grid_cols = cols.min(n);
    let grid_rows = n.div_ceil(cols);
    let sheet_w = u64::from(grid_cols) * u64::from(tile_width);
    let sheet_h = u64::from(grid_rows) * u64::from(tile_height);
    if sheet_w > u64::from(MAX_JPEG_SIDE) || sheet_h > u64::from(MAX_JPEG_SIDE) {
        return Err(MediaError::InvalidDimensions(format!(
            "spritesheet would be {sheet_w}x{sheet_h}, JPEG allows at most {MAX_JPEG_SIDE} per side"
        )));
    }

    let mut sheet = RgbImage::new(sheet_w as u32, sheet_h as u32);
    for (i, &(fw, fh, rgb)) in frames.iter().enumerate() {
        let i = i as u32;
        let tile = imageops::resize(&to_image(fw, fh, rgb)?, tile_width, tile_height, FilterType::Triangle);
        let x = i64::from((i % cols) * tile_width);
        let y = i64::from((i / cols) * tile_height);
        imageops::replace(&mut sheet, &tile, x, y);
    }
    encode_jpeg(&sheet)
}

/// Height matching `new_width` at the source aspect ratio, rounded, >= 1.
fn scaled_height(width: u32, height: u32, new_width: u32) -> u32 {
    let h = (u64::from(height) * u64::from(new_width) + u64::from(width) / 2) / u64::from(width);
    h.clamp(1, u64::from(u32::MAX)) as u32
}

fn to_image(width: u32, height: u32, rgb: &[u8]) -> Result<RgbImage, MediaError> {
    let expected = (width as usize)
        .checked_mul(height as usize)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(|| MediaError::InvalidDimensions(format!("{width}x{height} overflows")))?;
    if width == 0 || height == 0 {
        return Err(MediaError::InvalidDimensions(format!("frame size {width}x{height}")));
    }
    if rgb.len() != expected {
        return Err(MediaError::FrameSize {
            expected,
            actual: rgb.len(),
        });
    }
    RgbImage::from_raw(width, height, rgb.to_vec())
        .ok_or_else(|| MediaError::Image("RGB buffer does not match its size".into()))
}

fn encode_jpeg(img: &RgbImage) -> Result<Vec<u8>, MediaError> {
    if img.width() > MAX_JPEG_SIDE || img.height() > MAX_JPEG_SIDE {
        return Err(MediaError::InvalidDimensions(format!(
            "{}x{} exceeds the JPEG limit of {MAX_JPEG_SIDE} per side",
            img.width(),
            img.height()
        )));
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).encode(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
            }
        }
        v
    }

    fn decode(jpeg: &[u8]) -> image::DynamicImage {
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap()
    }

    #[test]
    fn thumbnail_scales_down_keeping_aspect() {
        let rgb = gradient(1280, 720);
        let jpeg = thumbnail_jpeg(1280, 720, &rgb, 320).unwrap();
        let img = decode(&jpeg);
        assert_eq!((img.width(), img.height()), (320, 180));

        let rgb = gradient(720, 1280);
        let img = decode(&thumbnail_jpeg(720, 1280, &rgb, 256).unwrap());
        assert_eq!((img.width(), img.height()), (256, 455));
    }

    #[test]
    fn thumbnail_never_upscales() {
        let rgb = gradient(64, 48);
        let img = decode(&thumbnail_jpeg(64, 48, &rgb, 320).unwrap());
        assert_eq!((img.width(), img.height()), (64, 48));
    }

    #[test]
    fn thumbnail_rejects_bad_input() {
        let rgb = gradient(64, 48);
        assert!(matches!(
            thumbnail_jpeg(64, 48, &rgb[1..], 32),
            Err(MediaError::FrameSize { .. })
        ));
        assert!(thumbnail_jpeg(64, 48, &rgb, 0).is_err());
        assert!(thumbnail_jpeg(0, 48, &[], 32).is_err());
    }

    #[test]
    fn spritesheet_grid_layout() {
        let a = gradient(64, 48);
        let frames: Vec<(u32, u32, &[u8])> = (0..5).map(|_| (64, 48, a.as_slice())).collect();
        let img = decode(&spritesheet_jpeg(&frames, 3, 32).unwrap());
        // 3 columns x 2 rows of 32x24 tiles.
        assert_eq!((img.width(), img.height()), (96, 48));

        let img = decode(&spritesheet_jpeg(&frames[..2], 4, 32).unwrap());
        assert_eq!((img.width(), img.height()), (64, 24));
    }

    #[test]
    fn spritesheet_rejects_bad_input() {
        let a = gradient(64, 48);
        let b = gradient(48, 64);
        assert!(spritesheet_jpeg(&[], 3, 32).is_err());
        assert!(spritesheet_jpeg(&[(64, 48, &a)], 0, 32).is_err());
        assert!(spritesheet_jpeg(&[(64, 48, &a)], 3, 0).is_err());
        assert!(spritesheet_jpeg(&[(64, 48, &a), (48, 64, &b)], 3, 32).is_err());
        assert!(spritesheet_jpeg(&[(64, 48, &a[3..])], 3, 32).is_err());
    }
}
