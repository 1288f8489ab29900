//! What a user asked for, validated. Allowed values follow OpenAI's Videos API
//! (`seconds` ∈ {4, 8, 12}; four portrait/landscape sizes) so SDKs work as is.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest prompt accepted, in characters.
pub const PROMPT_MAX_CHARS: usize = 4_000;
/// Longest `style` preset name accepted, in characters.
pub const STYLE_MAX_CHARS: usize = 64;
/// Longest model name accepted.
pub const MODEL_MAX_CHARS: usize = 64;
/// Output frame rate of every clip.
pub const FPS: u32 = 24;
/// The built-in reference model; the default when a request names none.
pub const REFERENCE_MODEL: &str = "videogen-ref";

/// Largest output side accepted at the API, in pixels (a model's catalogue
/// entry narrows it to the sizes it supports).
pub const MAX_SIDE: u32 = 4096;
/// Longest clip accepted at the API, in seconds.
pub const MAX_SECONDS: u32 = 120;

/// Output resolution, `WIDTHxHEIGHT` on the wire. OpenAI's four sizes are the
/// reference model's; a hosted model lists its own (e.g. Wan's `832x480`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VideoSize {
    width: u32,
    height: u32,
}

impl VideoSize {
    pub const PORTRAIT_720: VideoSize = VideoSize {
        width: 720,
        height: 1280,
    };
    pub const LANDSCAPE_720: VideoSize = VideoSize {
        width: 1280,
        height: 720,
    };
    pub const PORTRAIT_1024: VideoSize = VideoSize {
        width: 1024,
        height: 1792,
    };
    pub const LANDSCAPE_1024: VideoSize = VideoSize {
        width: 1792,
        height: 1024,
    };
    /// The sizes OpenAI's Videos API accepts.
    pub const OPENAI: [VideoSize; 4] = [
        VideoSize::PORTRAIT_720,
        VideoSize::LANDSCAPE_720,
        VideoSize::PORTRAIT_1024,
        VideoSize::LANDSCAPE_1024,
    ];

    /// A size with both sides in `8..=MAX_SIDE` and multiples of 8 (what
    /// every latent-diffusion VAE needs).
    pub fn new(width: u32, height: u32) -> Result<Self, SpecError> {
        let ok = |v: u32| (8..=MAX_SIDE).contains(&v) && v.is_multiple_of(8);
        if !ok(width) || !ok(height) {
            return Err(SpecError::new(
                "size",
                format!("invalid size {width}x{height}: each side must be a multiple of 8 in 8..={MAX_SIDE}"),
            ));
        }
        Ok(Self { width, height })
    }

    /// `(width, height)` in pixels.
    pub fn dims(self) -> (u32, u32) {
        (self.width, self.height)
    }
}

impl Default for VideoSize {
    /// OpenAI's default.
    fn default() -> Self {
        VideoSize::PORTRAIT_720
    }
}

impl fmt::Display for VideoSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for VideoSize {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::new(
                "size",
                format!("invalid size {s:?}: expected WIDTHxHEIGHT, e.g. 1280x720"),
            )
        };
        let (w, h) = s.split_once('x').ok_or_else(bad)?;
        let side = |v: &str| {
            if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            v.parse::<u32>().map_err(|_| bad())
        };
        VideoSize::new(side(w)?, side(h)?)
    }
}

impl Serialize for VideoSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VideoSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Clip duration in whole seconds, a string on the wire (`"4"`) as in
/// OpenAI's API. OpenAI's 4, 8 and 12 are the reference model's; a hosted
/// model's catalogue entry lists its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seconds(u32);

impl Seconds {
    pub const S4: Seconds = Seconds(4);
    pub const S8: Seconds = Seconds(8);
    pub const S12: Seconds = Seconds(12);
    /// The durations OpenAI's Videos API accepts.
    pub const OPENAI: [Seconds; 3] = [Seconds::S4, Seconds::S8, Seconds::S12];

    /// A duration in `1..=MAX_SECONDS`.
    pub fn new(seconds: u32) -> Result<Self, SpecError> {
        if !(1..=MAX_SECONDS).contains(&seconds) {
            return Err(SpecError::new(
                "seconds",
                format!("invalid seconds {seconds}: expected 1..={MAX_SECONDS}"),
            ));
        }
        Ok(Self(seconds))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Output frames for this duration at the reference model's [`FPS`].
    pub fn frames(self) -> u32 {
        self.0 * FPS
    }
}

impl Default for Seconds {
    /// OpenAI's default.
    fn default() -> Self {
        Seconds::S4
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Seconds {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::new(
                "seconds",
                format!("invalid seconds {s:?}: expected a whole number such as \"4\""),
            )
        };
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Seconds::new(s.parse().map_err(|_| bad())?)
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A validation failure of one request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The request parameter at fault (OpenAI's `param`).
    pub param: &'static str,
    /// Stable machine-readable reason (OpenAI's `code`): `invalid_value`, or
    /// `unsupported_by_model` when the value is fine but the model cannot.
    pub code: &'static str,
    pub message: String,
}

impl SpecError {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
            code: "invalid_value",
            message: message.into(),
        }
    }

    /// A value this model does not support (another model might).
    pub fn unsupported(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
            code: "unsupported_by_model",
            message: message.into(),
        }
    }
}

/// A complete, validated generation request as stored with the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VideoSpec {
    pub model: String,
    pub prompt: String,
    pub seconds: Seconds,
    pub size: VideoSize,
    pub seed: u64,
    pub style: Option<String>,
    /// Denoising steps, fixed at submit so a resumed job runs the same schedule.
    pub steps: u32,
    /// Blob key of a validated input reference image (conditions frame 0).
    pub input_reference: Option<String>,
    /// What the model's catalogue entry and the request's extension fields
    /// resolved to at submit (absent on jobs stored before there were any).
    #[serde(default, skip_serializing_if = "GenerationParams::is_empty")]
    pub params: GenerationParams,
}

/// The model-facing parameters fixed at submit, from the request's extension
/// fields (named as vLLM-Omni names them) and the model's catalogue entry, so
/// every attempt and every resume runs exactly the same generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenerationParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale in thousandths: exact, so the spec
    /// stays hashable and a resumed request hashes the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_milli: Option<u32>,
    /// Output frame rate; absent means the reference model's [`FPS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Output frames; absent means `seconds * fps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
}

impl GenerationParams {
    pub fn is_empty(&self) -> bool {
        *self == GenerationParams::default()
    }

    /// Guidance as the float a pipeline takes.
    pub fn guidance_scale(&self) -> Option<f32> {
        self.guidance_milli.map(|m| m as f32 / 1000.0)
    }
}

impl VideoSpec {
    /// Output frame rate.
    pub fn fps(&self) -> u32 {
        self.params.fps.unwrap_or(FPS)
    }

    /// Output frames.
    pub fn frames(&self) -> u32 {
        self.params.frames.unwrap_or_else(|| self.seconds.get() * self.fps())
    }
}

/// Checks the free-text fields every entry point shares.
pub fn validate_prompt(prompt: &str) -> Result<(), SpecError> {
    if prompt.trim().is_empty() {
        return Err(SpecError::new("prompt", "prompt must not be empty"));
    }
    let n = prompt.chars().count();
    if n > PROMPT_MAX_CHARS {
        return Err(SpecError::new(
            "prompt",
            format!("prompt is {n} characters; the limit is {PROMPT_MAX_CHARS}"),
        ));
    }
    if prompt
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(SpecError::new("prompt", "prompt contains control characters"));
    }
    Ok(())
}

pub fn validate_style(style: &str) -> Result<(), SpecError> {
    let n = style.chars().count();
    if n == 0 || n > STYLE_MAX_CHARS || style.chars().any(char::is_control) {
        return Err(SpecError::new(
            "style",
            format!("style must be 1 to {STYLE_MAX_CHARS} printable characters"),
        ));
    }
    Ok(())
}

pub fn validate_model(model: &str, known: &[&str]) -> Result<(), SpecError> {
    if model.is_empty() || model.len() > MODEL_MAX_CHARS || !known.contains(&model) {
        return Err(SpecError::new(
            "model",
            format!("unknown model {model:?}; available: {}", known.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_seconds_parse_only_allowed_values() {
        assert_eq!("1280x720".parse::<VideoSize>().unwrap().dims(), (1280, 720));
        assert_eq!("1024x1792".parse::<VideoSize>().unwrap().dims(), (1024, 1792));
        assert_eq!("832x480".parse::<VideoSize>().unwrap().dims(), (832, 480));
        for bad in [
            "640x", "x480", "641x480", "0x0", "+640x480", "99999x8", "640X480", " 640x480",
        ] {
            assert_eq!(bad.parse::<VideoSize>().unwrap_err().param, "size", "{bad}");
        }
        assert_eq!("12".parse::<Seconds>().unwrap().frames(), 12 * FPS);
        assert_eq!("5".parse::<Seconds>().unwrap().get(), 5);
        for bad in ["0", "", "-4", "4.5", "121", "99999"] {
            assert_eq!(bad.parse::<Seconds>().unwrap_err().param, "seconds", "{bad}");
        }
    }

    #[test]
    fn serde_uses_the_api_literals() {
        assert_eq!(
            serde_json::to_string(&VideoSize::LANDSCAPE_1024).unwrap(),
            "\"1792x1024\""
        );
        assert_eq!(
            serde_json::from_str::<VideoSize>("\"832x480\"").unwrap().dims(),
            (832, 480)
        );
        assert_eq!(serde_json::to_string(&Seconds::S8).unwrap(), "\"8\"");
    }

    #[test]
    fn prompts_are_bounded() {
        assert!(validate_prompt("a red fox").is_ok());
        assert!(validate_prompt("   ").is_err());
        assert!(validate_prompt(&"é".repeat(PROMPT_MAX_CHARS)).is_ok());
        assert!(validate_prompt(&"a".repeat(PROMPT_MAX_CHARS + 1)).is_err());
        assert!(validate_prompt("bell\u{7}").is_err());
    }
}
