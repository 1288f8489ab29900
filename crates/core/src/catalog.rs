//! What the platform can generate: one [`ModelCard`] per model of the
//! registry. The API resolves a request's model name (id or alias) and checks
//! its size, duration and extension fields against the card, so a request no
//! worker could run is refused at submit with the `param` at fault; the card
//! also fixes the defaults (steps, guidance, fps, frames) into the stored
//! spec, so every attempt and every resume runs the same generation.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use crate::spec::{
    FPS, GenerationParams, MODEL_MAX_CHARS, PROMPT_MAX_CHARS, REFERENCE_MODEL, Seconds, SpecError, VideoSize,
};

/// Most frames any model may be asked for (a bound on decode memory).
pub const MAX_FRAMES: u32 = 1_000;
/// Largest accepted denoising step count.
pub const MAX_STEPS: u32 = 1_000;

/// An inclusive range with a default inside it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Knob<T> {
    pub default: T,
    pub min: T,
    pub max: T,
}

/// How a `style` preset changes the prompt for one model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StylePreset {
    /// Appended to the prompt (after ", ").
    #[serde(default)]
    pub prompt_suffix: String,
    /// Appended to the negative prompt, for models that take one.
    #[serde(default)]
    pub negative: String,
}

/// One model as the API sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// Other names requests may use (e.g. `sora-2`), resolved at submit.
    pub aliases: Vec<String>,
    /// OpenAI's `owned_by`.
    pub owned_by: String,
    /// OpenAI's `created` (Unix seconds).
    pub created: i64,
    pub sizes: Vec<VideoSize>,
    pub durations: Vec<Seconds>,
    pub fps: Knob<u32>,
    /// Output frames are `multiple * n + offset` (Wan: 4n + 1), the
    /// smallest such count covering `seconds * fps`.
    pub frame_multiple: u32,
    pub frame_offset: u32,
    /// Explicit frame counts for some durations, overriding the rule above.
    pub frames_for_seconds: BTreeMap<u32, u32>,
    pub steps: Knob<u32>,
    /// `None`: the model takes no guidance scale.
    pub guidance: Option<Knob<f32>>,
    pub negative_prompt: bool,
    pub image_to_video: bool,
    pub audio: bool,
    /// `style` presets. With none, any style is accepted and becomes the
    /// prompt suffix `"<style> style"`; with some, only those.
    pub styles: BTreeMap<String, StylePreset>,
    /// Seconds the model needs per step at each size, for ETAs.
    pub seconds_per_step: BTreeMap<String, f64>,
}

/// What a create request asks of its model, as sent.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub seconds: Option<Seconds>,
    pub size: Option<VideoSize>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    pub negative_prompt: Option<String>,
    pub fps: Option<u32>,
    pub style: Option<String>,
    pub has_image: bool,
}

/// A request resolved against its card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub seconds: Seconds,
    pub size: VideoSize,
    pub steps: u32,
    pub params: GenerationParams,
}

impl ModelCard {
    /// The built-in CPU reference model: OpenAI's sizes and durations.
    pub fn reference(default_steps: u32) -> Self {
        Self {
            id: REFERENCE_MODEL.to_owned(),
            aliases: Vec::new(),
            owned_by: "videogen".to_owned(),
            created: 0,
            sizes: VideoSize::OPENAI.to_vec(),
            durations: Seconds::OPENAI.to_vec(),
            fps: Knob {
                default: FPS,
                min: FPS,
                max: FPS,
            },
            frame_multiple: 4,
            frame_offset: 0,
            frames_for_seconds: BTreeMap::new(),
            steps: Knob {
                default: default_steps.clamp(1, MAX_STEPS),
                min: 1,
                max: MAX_STEPS,
            },
            guidance: None,
            negative_prompt: false,
            image_to_video: true,
            audio: false,
            styles: BTreeMap::new(),
            seconds_per_step: BTreeMap::new(),
        }
    }

    /// Checks the card itself (at start-up, so a bad registry entry stops
    /// the process instead of failing requests).
    pub fn check(&self) -> Result<(), String> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= MODEL_MAX_CHARS
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        for n in std::iter::once(&self.id).chain(&self.aliases) {
            if !name_ok(n) {
                return Err(format!(
                    "model name {n:?}: 1 to {MODEL_MAX_CHARS} characters of A-Z a-z 0-9 - . _"
                ));
            }
        }
        if self.sizes.is_empty() || self.durations.is_empty() {
            return Err(format!("model {}: sizes and durations must not be empty", self.id));
        }
        let knob = |name: &str, k: Knob<u32>, lo: u32, hi: u32| {
            if !(lo <= k.min && k.min <= k.default && k.default <= k.max && k.max <= hi) {
                return Err(format!(
                    "model {}: {name} needs {lo} <= min <= default <= max <= {hi}",
                    self.id
                ));
            }
            Ok(())
        };
        knob("steps", self.steps, 1, MAX_STEPS)?;
        knob("fps", self.fps, 1, 120)?;
        if self.frame_multiple == 0 || self.frame_multiple > 64 || self.frame_offset >= self.frame_multiple.max(2) {
            return Err(format!(
                "model {}: frame_multiple must be 1..=64 and frame_offset below it",
                self.id
            ));
        }
        if let Some(g) = self.guidance
            && !(g.min.is_finite()
                && g.max.is_finite()
                && 0.0 <= g.min
                && g.min <= g.default
                && g.default <= g.max
                && g.max <= 100.0)
        {
            return Err(format!(
                "model {}: guidance needs 0 <= min <= default <= max <= 100",
                self.id
            ));
        }
        for s in &self.durations {
            let f = self.frames(*s, self.fps.max);
            if f == 0 || f > MAX_FRAMES {
                return Err(format!(
                    "model {}: {s} s makes {f} frames; at most {MAX_FRAMES}",
                    self.id
                ));
            }
        }
        Ok(())
    }

    /// Frames for `seconds` at `fps`.
    pub fn frames(&self, seconds: Seconds, fps: u32) -> u32 {
        if fps == self.fps.default
            && let Some(f) = self.frames_for_seconds.get(&seconds.get())
        {
            return *f;
        }
        let raw = seconds.get().saturating_mul(fps);
        let m = self.frame_multiple.max(1);
        let n = raw.saturating_sub(self.frame_offset).div_ceil(m);
        n.saturating_mul(m)
            .saturating_add(self.frame_offset)
            .max(m + self.frame_offset)
    }

    /// Checks a request against this model and fixes every default.
    pub fn resolve(&self, asked: &Asked) -> Result<Resolved, SpecError> {
        let size = asked.size.unwrap_or_else(|| {
            if self.sizes.contains(&VideoSize::default()) {
                VideoSize::default()
            } else {
                self.sizes[0]
            }
        });
        if !self.sizes.contains(&size) {
            return Err(SpecError::unsupported(
                "size",
                format!("model {} does not make {size}; it makes {}", self.id, join(&self.sizes)),
            ));
        }
        let seconds = asked.seconds.unwrap_or_else(|| {
            if self.durations.contains(&Seconds::default()) {
                Seconds::default()
            } else {
                self.durations[0]
            }
        });
        if !self.durations.contains(&seconds) {
            return Err(SpecError::unsupported(
                "seconds",
                format!(
                    "model {} does not make {seconds}-second clips; it makes {}",
                    self.id,
                    join(&self.durations)
                ),
            ));
        }
        let steps = asked.steps.unwrap_or(self.steps.default);
        if !(self.steps.min..=self.steps.max).contains(&steps) {
            return Err(SpecError::new(
                "num_inference_steps",
                format!(
                    "num_inference_steps {steps} is out of range for model {}: {}..={}",
                    self.id, self.steps.min, self.steps.max
                ),
            ));
        }
        let fps = asked.fps.unwrap_or(self.fps.default);
        if !(self.fps.min..=self.fps.max).contains(&fps) {
            return Err(SpecError::new(
                "fps",
                format!(
                    "fps {fps} is out of range for model {}: {}..={}",
                    self.id, self.fps.min, self.fps.max
                ),
            ));
        }
        let guidance_milli = match (asked.guidance_scale, self.guidance) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(SpecError::unsupported(
                    "guidance_scale",
                    format!("model {} takes no guidance_scale", self.id),
                ));
            }
            (g, Some(k)) => {
                let g = g.unwrap_or(f64::from(k.default));
                if !(g.is_finite() && f64::from(k.min) <= g && g <= f64::from(k.max)) {
                    return Err(SpecError::new(
                        "guidance_scale",
                        format!("guidance_scale must be in {}..={} for model {}", k.min, k.max, self.id),
                    ));
                }
                Some((g * 1000.0).round() as u32)
            }
        };
        let preset = match &asked.style {
            None => None,
            // No presets: any style, as a prompt suffix (see `style_suffix`).
            Some(_) if self.styles.is_empty() => None,
            Some(style) => Some(self.styles.get(style).ok_or_else(|| {
                SpecError::unsupported(
                    "style",
                    format!(
                        "model {} has no style {style:?}; it has {}",
                        self.id,
                        if self.styles.is_empty() {
                            "none".to_owned()
                        } else {
                            join(self.styles.keys())
                        }
                    ),
                )
            })?),
        };
        let mut negative_prompt = match &asked.negative_prompt {
            Some(_) if !self.negative_prompt => {
                return Err(SpecError::unsupported(
                    "negative_prompt",
                    format!("model {} takes no negative_prompt", self.id),
                ));
            }
            Some(n) if n.chars().count() > PROMPT_MAX_CHARS || n.chars().any(|c| c.is_control() && c != '\n') => {
                return Err(SpecError::new(
                    "negative_prompt",
                    format!("negative_prompt must be at most {PROMPT_MAX_CHARS} printable characters"),
                ));
            }
            other => other.clone(),
        };
        if let Some(p) = preset
            && self.negative_prompt
            && !p.negative.is_empty()
        {
            negative_prompt = Some(match negative_prompt {
                Some(n) if !n.is_empty() => format!("{n}, {}", p.negative),
                _ => p.negative.clone(),
            });
        }
        if asked.has_image && !self.image_to_video {
            return Err(SpecError::unsupported(
                "input_reference",
                format!("model {} does not take an input_reference image", self.id),
            ));
        }
        let frames = self.frames(seconds, fps);
        // Explicit only where the model differs from the reference defaults,
        // so reference jobs keep their stored shape.
        let reference_like = fps == FPS && frames == seconds.get() * FPS;
        Ok(Resolved {
            seconds,
            size,
            steps,
            params: GenerationParams {
                negative_prompt,
                guidance_milli,
                fps: (!reference_like).then_some(fps),
                frames: (!reference_like).then_some(frames),
            },
        })
    }

    /// What `style` appends to the prompt for this model (a hosted model's
    /// worker applies it; the reference model seeds its shapes from the
    /// style itself).
    pub fn style_suffix(&self, style: Option<&str>) -> Option<String> {
        let style = style?;
        match self.styles.get(style) {
            Some(p) => (!p.prompt_suffix.is_empty()).then(|| p.prompt_suffix.clone()),
            None => Some(format!("{style} style")),
        }
    }
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Why a registry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model registry: {0}")]
pub struct CatalogError(pub String);

/// Every model of the registry, by id and alias; the first is the default
/// for requests that name none.
#[derive(Debug, Clone)]
pub struct Catalog {
    cards: Vec<ModelCard>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    pub fn new(cards: Vec<ModelCard>) -> Result<Self, CatalogError> {
        if cards.is_empty() {
            return Err(CatalogError("no models".into()));
        }
        let mut by_name = HashMap::new();
        for (i, c) in cards.iter().enumerate() {
            c.check().map_err(CatalogError)?;
            for n in std::iter::once(&c.id).chain(&c.aliases) {
                if by_name.insert(n.clone(), i).is_some() {
                    return Err(CatalogError(format!("the name {n:?} is used twice")));
                }
            }
        }
        Ok(Self { cards, by_name })
    }

    /// The reference model alone (the embedded default).
    pub fn reference(default_steps: u32) -> Self {
        Self::new(vec![ModelCard::reference(default_steps)]).unwrap_or_else(|_| Self {
            cards: Vec::new(),
            by_name: HashMap::new(),
        })
    }

    pub fn cards(&self) -> &[ModelCard] {
        &self.cards
    }

    /// The card a request's `model` names (`None`: the default model).
    pub fn resolve(&self, name: Option<&str>) -> Result<&ModelCard, SpecError> {
        let Some(name) = name else {
            return self
                .cards
                .first()
                .ok_or_else(|| SpecError::new("model", "no models are configured"));
        };
        self.by_name.get(name).map(|&i| &self.cards[i]).ok_or_else(|| {
            let known: Vec<&str> = self.cards.iter().map(|c| c.id.as_str()).collect();
            SpecError::new(
                "model",
                format!("unknown model {name:?}; available: {}", known.join(", ")),
            )
        })
    }

    /// A card by id or alias.
    pub fn get(&self, name: &str) -> Option<&ModelCard> {
        self.by_name.get(name).map(|&i| &self.cards[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan() -> ModelCard {
        ModelCard {
            id: "wan2.1-t2v-1.3b".into(),
            aliases: vec!["sora-2".into()],
            sizes: vec![VideoSize::new(832, 480).unwrap(), VideoSize::new(480, 832).unwrap()],
            durations: vec![Seconds::new(5).unwrap()],
            fps: Knob {
                default: 16,
                min: 8,
                max: 24,
            },
            frame_multiple: 4,
            frame_offset: 1,
            steps: Knob {
                default: 30,
                min: 1,
                max: 100,
            },
            guidance: Some(Knob {
                default: 5.0,
                min: 1.0,
                max: 20.0,
            }),
            negative_prompt: true,
            image_to_video: false,
            styles: BTreeMap::from([(
                "anime".to_owned(),
                StylePreset {
                    prompt_suffix: "anime style".into(),
                    negative: "photo".into(),
                },
            )]),
            ..ModelCard::reference(30)
        }
    }

    #[test]
    fn frames_follow_the_models_rule() {
        let w = wan();
        assert_eq!(w.frames(Seconds::new(5).unwrap(), 16), 81);
        assert_eq!(w.frames(Seconds::new(1).unwrap(), 16), 17);
        let r = ModelCard::reference(30);
        assert_eq!(r.frames(Seconds::S4, 24), 96);
        let mut explicit = wan();
        explicit.frames_for_seconds.insert(5, 77);
        assert_eq!(explicit.frames(Seconds::new(5).unwrap(), 16), 77);
        assert_eq!(explicit.frames(Seconds::new(5).unwrap(), 24), 121);
    }

    #[test]
    fn defaults_are_fixed_into_the_params() {
        let r = wan().resolve(&Asked::default()).unwrap();
        assert_eq!(r.size.dims(), (832, 480));
        assert_eq!(r.seconds.get(), 5);
        assert_eq!(r.steps, 30);
        assert_eq!(r.params.guidance_milli, Some(5000));
        assert_eq!((r.params.fps, r.params.frames), (Some(16), Some(81)));
        // The reference model's jobs keep the shape they always had.
        let r = ModelCard::reference(30).resolve(&Asked::default()).unwrap();
        assert!(r.params.is_empty());
    }

    #[test]
    fn each_refusal_names_its_param() {
        let cases: Vec<(Asked, &str, &str)> = vec![
            (
                Asked {
                    size: Some(VideoSize::LANDSCAPE_720),
                    ..Default::default()
                },
                "size",
                "unsupported_by_model",
            ),
            (
                Asked {
                    seconds: Some(Seconds::S8),
                    ..Default::default()
                },
                "seconds",
                "unsupported_by_model",
            ),
            (
                Asked {
                    steps: Some(0),
                    ..Default::default()
                },
                "num_inference_steps",
                "invalid_value",
            ),
            (
                Asked {
                    steps: Some(101),
                    ..Default::default()
                },
                "num_inference_steps",
                "invalid_value",
            ),
            (
                Asked {
                    fps: Some(60),
                    ..Default::default()
                },
                "fps",
                "invalid_value",
            ),
            (
                Asked {
                    guidance_scale: Some(f64::NAN),
                    ..Default::default()
                },
                "guidance_scale",
                "invalid_value",
            ),
            (
                Asked {
                    guidance_scale: Some(50.0),
                    ..Default::default()
                },
                "guidance_scale",
                "invalid_value",
            ),
            (
                Asked {
                    style: Some("noir".into()),
                    ..Default::default()
                },
                "style",
                "unsupported_by_model",
            ),
            (
                Asked {
                    has_image: true,
                    ..Default::default()
                },
                "input_reference",
                "unsupported_by_model",
            ),
        ];
        for (asked, param, code) in cases {
            let e = wan().resolve(&asked).unwrap_err();
            assert_eq!((e.param, e.code), (param, code), "{asked:?}: {e}");
        }
        let r = ModelCard::reference(30);
        let e = r
            .resolve(&Asked {
                negative_prompt: Some("x".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.param, "negative_prompt");
        let e = r
            .resolve(&Asked {
                guidance_scale: Some(3.0),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.param, "guidance_scale");
    }

    #[test]
    fn styles_extend_the_negative_prompt() {
        let asked = Asked {
            style: Some("anime".into()),
            negative_prompt: Some("blur".into()),
            ..Default::default()
        };
        let r = wan().resolve(&asked).unwrap();
        assert_eq!(r.params.negative_prompt.as_deref(), Some("blur, photo"));
        assert_eq!(wan().style_suffix(Some("anime")).as_deref(), Some("anime style"));
        let mut plain = wan();
        plain.styles.clear();
        assert_eq!(plain.style_suffix(Some("noir")).as_deref(), Some("noir style"));
        assert!(
            plain
                .resolve(&Asked {
                    style: Some("noir".into()),
                    ..Default::default()
                })
                .is_ok()
        );
        // The reference model takes any style name (it seeds its shapes).
        assert!(
            ModelCard::reference(30)
                .resolve(&Asked {
                    style: Some("noir".into()),
                    ..Default::default()
                })
                .is_ok()
        );
    }

    #[test]
    fn catalog_resolves_ids_and_aliases_and_refuses_duplicates() {
        let c = Catalog::new(vec![ModelCard::reference(30), wan()]).unwrap();
        assert_eq!(c.resolve(None).unwrap().id, REFERENCE_MODEL);
        assert_eq!(c.resolve(Some("sora-2")).unwrap().id, "wan2.1-t2v-1.3b");
        assert_eq!(c.resolve(Some("nope")).unwrap_err().param, "model");
        let mut dup = wan();
        dup.id = "other".into();
        assert!(Catalog::new(vec![wan(), dup]).is_err());
        let mut bad = wan();
        bad.steps.default = 0;
        assert!(Catalog::new(vec![bad]).is_err());
    }
}
