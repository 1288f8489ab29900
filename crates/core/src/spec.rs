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

/// Output resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VideoSize {
    #[serde(rename = "720x1280")]
    Portrait720,
    #[serde(rename = "1280x720")]
    Landscape720,
    #[serde(rename = "1024x1792")]
    Portrait1024,
    #[serde(rename = "1792x1024")]
    Landscape1024,
}

impl VideoSize {
    pub const ALL: [VideoSize; 4] = [
        VideoSize::Portrait720,
        VideoSize::Landscape720,
        VideoSize::Portrait1024,
        VideoSize::Landscape1024,
    ];

    /// `(width, height)` in pixels.
    pub fn dims(self) -> (u32, u32) {
        match self {
            VideoSize::Portrait720 => (720, 1280),
            VideoSize::Landscape720 => (1280, 720),
            VideoSize::Portrait1024 => (1024, 1792),
            VideoSize::Landscape1024 => (1792, 1024),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VideoSize::Portrait720 => "720x1280",
            VideoSize::Landscape720 => "1280x720",
            VideoSize::Portrait1024 => "1024x1792",
            VideoSize::Landscape1024 => "1792x1024",
        }
    }
}

impl Default for VideoSize {
    /// OpenAI's default.
    fn default() -> Self {
        VideoSize::Portrait720
    }
}

impl fmt::Display for VideoSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VideoSize {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        VideoSize::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            SpecError::new(
                "size",
                format!("invalid size {s:?}: expected one of 720x1280, 1280x720, 1024x1792, 1792x1024"),
            )
        })
    }
}

/// Clip duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Seconds {
    /// OpenAI's default.
    #[default]
    #[serde(rename = "4")]
    S4,
    #[serde(rename = "8")]
    S8,
    #[serde(rename = "12")]
    S12,
}

impl Seconds {
    pub const ALL: [Seconds; 3] = [Seconds::S4, Seconds::S8, Seconds::S12];

    pub fn get(self) -> u32 {
        match self {
            Seconds::S4 => 4,
            Seconds::S8 => 8,
            Seconds::S12 => 12,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Seconds::S4 => "4",
            Seconds::S8 => "8",
            Seconds::S12 => "12",
        }
    }
    /// Output frames for this duration at [`FPS`].
    pub fn frames(self) -> u32 {
        self.get() * FPS
    }
}

impl FromStr for Seconds {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "4" => Ok(Seconds::S4),
            "8" => Ok(Seconds::S8),
            "12" => Ok(Seconds::S12),
            _ => Err(SpecError::new(
                "seconds",
                format!("invalid seconds {s:?}: expected one of \"4\", \"8\", \"12\""),
            )),
        }
    }
}

/// A validation failure of one request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The request parameter at fault (OpenAI's `param`).
    pub param: &'static str,
    pub message: String,
}

impl SpecError {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
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
        assert_eq!("640x480".parse::<VideoSize>().unwrap_err().param, "size");
        assert_eq!("12".parse::<Seconds>().unwrap().frames(), 12 * FPS);
        assert_eq!("5".parse::<Seconds>().unwrap_err().param, "seconds");
    }

    #[test]
    fn serde_uses_the_api_literals() {
        assert_eq!(
            serde_json::to_string(&VideoSize::Landscape1024).unwrap(),
            "\"1792x1024\""
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
