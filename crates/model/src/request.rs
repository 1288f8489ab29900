//! What a model is asked to generate, its validation, and the hash that ties
//! a checkpoint to exactly one request.

use crate::ModelError;
use sha2::{Digest, Sha256};

/// Largest accepted output width or height, in pixels.
pub const MAX_DIMENSION: u32 = 4096;
/// Most output frames accepted in one request.
pub const MAX_FRAMES: u32 = 1000;
/// Most denoising steps accepted in one request.
pub const MAX_STEPS: u32 = 10_000;
/// Largest accepted conditioning image side, in pixels.
pub const MAX_IMAGE_DIMENSION: u32 = 8192;
/// Spatial downsampling from output pixels to latent cells.
pub const SPATIAL_FACTOR: u32 = 8;
/// Temporal downsampling from output frames to latent frames.
pub const TEMPORAL_FACTOR: u32 = 4;
/// Channels per latent cell.
pub const LATENT_CHANNELS: u32 = 4;
/// The reference model's frame rate (and the default of a request).
pub const DEFAULT_FPS: u32 = 24;

/// An 8-bit RGB image, row-major, `data.len() == width * height * 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A decoded output frame.
pub type RgbFrame = RgbImage;

impl RgbImage {
    /// A black image.
    pub fn new(width: u32, height: u32) -> Self {
        let len = width as usize * height as usize * 3;
        Self {
            width,
            height,
            data: vec![0; len],
        }
    }

    /// Decodes PNG, JPEG or WebP bytes (e.g. an uploaded `input_reference`).
    pub fn from_encoded(bytes: &[u8]) -> Result<Self, ModelError> {
        let img = image::load_from_memory(bytes)
            .map_err(|e| ModelError::InvalidRequest(format!("undecodable image: {e}")))?
            .to_rgb8();
        let (width, height) = img.dimensions();
        let out = Self {
            width,
            height,
            data: img.into_raw(),
        };
        out.validate()?;
        Ok(out)
    }

    /// Encodes as PNG (previews, debugging).
    pub fn to_png(&self) -> Result<Vec<u8>, ModelError> {
        use image::ImageEncoder;
        self.validate()?;
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&self.data, self.width, self.height, image::ExtendedColorType::Rgb8)
            .map_err(|e| ModelError::Internal(format!("png encoding failed: {e}")))?;
        Ok(out)
    }

    /// Checks that the buffer matches the dimensions and that they are sane.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.width == 0 || self.height == 0 || self.width > MAX_IMAGE_DIMENSION || self.height > MAX_IMAGE_DIMENSION
        {
            return Err(ModelError::InvalidRequest(format!(
                "image is {}x{}: each side must be 1..={MAX_IMAGE_DIMENSION}",
                self.width, self.height
            )));
        }
        let want = self.width as usize * self.height as usize * 3;
        if self.data.len() != want {
            return Err(ModelError::InvalidRequest(format!(
                "image buffer has {} bytes, {}x{} RGB needs {want}",
                self.data.len(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }
}

/// One generation job as the model sees it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: String,
    pub style: Option<String>,
    pub seed: u64,
    /// Output width in pixels; a multiple of 8.
    pub width: u32,
    /// Output height in pixels; a multiple of 8.
    pub height: u32,
    /// Output frames (e.g. 96 for 4 s at 24 fps); a multiple of 4.
    pub frames: u32,
    /// Denoising steps, >= 1.
    pub steps: u32,
    /// Optional conditioning image (any size); shapes frame 0 and fades
    /// over the following frames.
    pub first_frame: Option<RgbImage>,
    /// What the output should not look like, for models that take one.
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance, for models that take it.
    pub guidance_scale: Option<f32>,
    /// Output frame rate.
    pub fps: u32,
}

/// Shape of the latent tensor, stored `[frames][channels][height][width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LatentDims {
    pub channels: u32,
    pub frames: u32,
    pub height: u32,
    pub width: u32,
}

impl LatentDims {
    /// Cells in one channel plane.
    pub fn plane(&self) -> usize {
        self.height as usize * self.width as usize
    }

    /// Values in one latent frame (all channels).
    pub fn frame_len(&self) -> usize {
        self.plane() * self.channels as usize
    }

    /// Values in the whole tensor; `None` if it overflows `usize`.
    pub fn checked_len(&self) -> Option<usize> {
        (self.channels as usize)
            .checked_mul(self.frames as usize)?
            .checked_mul(self.height as usize)?
            .checked_mul(self.width as usize)
    }

    pub fn len(&self) -> usize {
        self.frame_len() * self.frames as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GenerationRequest {
    /// A request with the reference defaults for everything but the prompt
    /// and output shape.
    pub fn new(prompt: impl Into<String>, seed: u64, width: u32, height: u32, frames: u32) -> Self {
        Self {
            prompt: prompt.into(),
            style: None,
            seed,
            width,
            height,
            frames,
            steps: crate::REFERENCE_DEFAULT_STEPS,
            first_frame: None,
            negative_prompt: None,
            guidance_scale: None,
            fps: DEFAULT_FPS,
        }
    }

    /// Rejects requests the reference model cannot run (its latent grid
    /// needs multiples of 8 pixels and 4 frames). Deterministic: the same
    /// request always gets the same answer.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidRequest(m));
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if !v.is_multiple_of(SPATIAL_FACTOR) {
                return bad(format!(
                    "{name} {v} must be a non-zero multiple of {SPATIAL_FACTOR} up to {MAX_DIMENSION}"
                ));
            }
        }
        if !self.frames.is_multiple_of(TEMPORAL_FACTOR) {
            return bad(format!(
                "frames {} must be a non-zero multiple of {TEMPORAL_FACTOR} up to {MAX_FRAMES}",
                self.frames
            ));
        }
        self.validate_bounds()
    }

    /// The bounds every model shares (sizes, frames, steps, fps, guidance,
    /// the image); a model checks its own multiples on top.
    pub fn validate_bounds(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidRequest(m));
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v > MAX_DIMENSION {
                return bad(format!("{name} {v} must be in 1..={MAX_DIMENSION}"));
            }
        }
        if self.frames == 0 || self.frames > MAX_FRAMES {
            return bad(format!("frames {} must be in 1..={MAX_FRAMES}", self.frames));
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!("steps {} must be in 1..={MAX_STEPS}", self.steps));
        }
        if let Some(img) = &self.first_frame {
            img.validate()?;
        }
        if self.fps == 0 || self.fps > 120 {
            return bad(format!("fps {} must be in 1..=120", self.fps));
        }
        if self.guidance_scale.is_some_and(|g| !g.is_finite() || g < 0.0) {
            return bad("guidance_scale must be a finite, non-negative number".into());
        }
        Ok(())
    }

    /// Latent shape: 8x spatial and 4x temporal downsampling.
    pub fn latent_dims(&self) -> LatentDims {
        LatentDims {
            channels: LATENT_CHANNELS,
            frames: self.frames / TEMPORAL_FACTOR,
            height: self.height / SPATIAL_FACTOR,
            width: self.width / SPATIAL_FACTOR,
        }
    }

    /// SHA-256 over every field that affects the output, with length
    /// prefixes so no two requests share an encoding. A checkpoint records
    /// this so it can only resume the request that wrote it.
    pub fn params_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"videogen-model/request/v1\0");
        let put_bytes = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put_bytes(&mut h, self.prompt.as_bytes());
        match &self.style {
            Some(s) => {
                h.update([1]);
                put_bytes(&mut h, s.as_bytes());
            }
            None => h.update([0]),
        }
        h.update(self.seed.to_le_bytes());
        for v in [self.width, self.height, self.frames, self.steps] {
            h.update(v.to_le_bytes());
        }
        match &self.first_frame {
            Some(img) => {
                h.update([1]);
                h.update(img.width.to_le_bytes());
                h.update(img.height.to_le_bytes());
                put_bytes(&mut h, &img.data);
            }
            None => h.update([0]),
        }
        // Fields added later are hashed only when they differ from the
        // defaults, so checkpoints written before they existed still resume.
        if let Some(n) = &self.negative_prompt {
            h.update(b"negative_prompt");
            put_bytes(&mut h, n.as_bytes());
        }
        if let Some(g) = self.guidance_scale {
            h.update(b"guidance_scale");
            h.update(g.to_bits().to_le_bytes());
        }
        if self.fps != DEFAULT_FPS {
            h.update(b"fps");
            h.update(self.fps.to_le_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> GenerationRequest {
        GenerationRequest::new("a red fox", 1, 64, 48, 8)
    }

    #[test]
    fn latent_dims_downsample() {
        let r = GenerationRequest::new("x", 0, 1280, 720, 96);
        let d = r.latent_dims();
        assert_eq!((d.channels, d.frames, d.height, d.width), (4, 24, 90, 160));
        assert_eq!(d.len(), 4 * 24 * 90 * 160);
        assert_eq!(d.checked_len(), Some(d.len()));
    }

    #[test]
    fn validation() {
        assert!(req().validate().is_ok());
        let cases: Vec<fn(&mut GenerationRequest)> = vec![
            |r| r.steps = 0,
            |r| r.steps = MAX_STEPS + 1,
            |r| r.frames = 0,
            |r| r.frames = 6,
            |r| r.frames = 1004,
            |r| r.width = 0,
            |r| r.width = 12,
            |r| r.height = 4104,
            |r| {
                r.first_frame = Some(RgbImage {
                    width: 2,
                    height: 2,
                    data: vec![0; 5],
                })
            },
            |r| r.first_frame = Some(RgbImage::new(0, 3)),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut r = req();
            f(&mut r);
            assert!(
                matches!(r.validate(), Err(ModelError::InvalidRequest(_))),
                "case {i} should be invalid"
            );
        }
    }

    #[test]
    fn params_hash_covers_every_field() {
        let base = req().params_hash();
        assert_eq!(base, req().params_hash());
        let changes: Vec<fn(&mut GenerationRequest)> = vec![
            |r| r.prompt.push('!'),
            |r| r.style = Some(String::new()),
            |r| r.seed = 2,
            |r| r.width = 72,
            |r| r.height = 56,
            |r| r.frames = 12,
            |r| r.steps = 31,
            |r| r.first_frame = Some(RgbImage::new(1, 1)),
            |r| r.negative_prompt = Some(String::new()),
            |r| r.guidance_scale = Some(5.0),
            |r| r.fps = 16,
        ];
        for (i, f) in changes.iter().enumerate() {
            let mut r = req();
            f(&mut r);
            assert_ne!(r.params_hash(), base, "change {i} must alter the hash");
        }
    }

    #[test]
    fn png_round_trip() {
        let mut img = RgbImage::new(3, 2);
        img.data.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8 * 10);
        let png = img.to_png().unwrap();
        assert_eq!(RgbImage::from_encoded(&png).unwrap(), img);
        assert!(matches!(
            RgbImage::from_encoded(b"not an image"),
            Err(ModelError::InvalidRequest(_))
        ));
    }
}
