//! The model registry: the `[[models]]` entries of the config file, read by
//! `serve` (the catalogue the API validates against and lists at
//! `/v1/models`) and by `videogen worker` (the models its host processes
//! load). One entry per model:
//!
//! ```toml
//! [[models]]
//! id = "wan2.1-t2v-1.3b"
//! aliases = ["sora-2"]
//! adapter = "wan"                 # wan | ltx | cogvideox | hunyuan | noop | reference
//! path = "/models/Wan2.1-T2V-1.3B-Diffusers"
//! dtype = "bfloat16"
//! sizes = ["832x480", "480x832"]
//! seconds = [5]
//! fps = 16
//! frame_multiple = 4              # frames are 4n + 1 ...
//! frame_offset = 1
//! steps = 30
//! guidance_scale = 5.0
//! negative_prompt = true
//! gpu_memory_gb = 24
//! load_secs = 40
//! seconds_per_step = { "832x480" = 1.1 }
//! ```
//!
//! The first entry is the default model of requests that name none. The
//! built-in reference model is always in the catalogue: where an entry with
//! `adapter = "reference"` puts it (to give it aliases), else after the rest.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use videogen_core::catalog::{Catalog, Knob, MAX_STEPS, ModelCard, StylePreset};
use videogen_core::spec::{REFERENCE_MODEL, Seconds, VideoSize};

/// The adapters the host package implements, and the built-in model.
pub const ADAPTERS: &[&str] = &[
    "wan",
    "ltx",
    "cogvideox",
    "hunyuan",
    "noop",
    "reference",
    "remote-openai",
];

/// A duration as TOML gives it: `5` or `"5"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SecondsValue {
    Int(u32),
    Text(String),
}

/// Weights' dtype: one for every component, or per component, e.g.
/// `{ default = "bfloat16", vae = "float32" }` (Wan's VAE is best in fp32).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Dtype {
    One(String),
    PerComponent(BTreeMap<String, String>),
}

impl Dtype {
    /// As the host's `load` takes it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Dtype::One(d) => serde_json::Value::String(d.clone()),
            Dtype::PerComponent(m) => serde_json::json!(m),
        }
    }

    fn check(&self) -> Result<(), String> {
        const OK: [&str; 3] = ["bfloat16", "float16", "float32"];
        let values: Vec<&String> = match self {
            Dtype::One(d) => vec![d],
            Dtype::PerComponent(m) if !m.contains_key("default") => {
                return Err("a per-component dtype needs a `default`".into());
            }
            Dtype::PerComponent(m) => m.values().collect(),
        };
        match values.into_iter().find(|d| !OK.contains(&d.as_str())) {
            Some(d) => Err(format!("dtype {d:?} is not bfloat16, float16 or float32")),
            None => Ok(()),
        }
    }
}

/// One `[[models]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub adapter: String,
    /// The diffusers model directory (not for `reference`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    #[serde(default)]
    owned_by: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    sizes: Vec<String>,
    #[serde(default)]
    seconds: Vec<SecondsValue>,
    #[serde(default)]
    fps: Option<u32>,
    #[serde(default)]
    fps_min: Option<u32>,
    #[serde(default)]
    fps_max: Option<u32>,
    #[serde(default)]
    frame_multiple: Option<u32>,
    #[serde(default)]
    frame_offset: Option<u32>,
    /// Explicit frame counts per duration, e.g. `{ "5" = 81 }`.
    #[serde(default)]
    frames: BTreeMap<String, u32>,
    #[serde(default)]
    steps: Option<u32>,
    #[serde(default)]
    steps_min: Option<u32>,
    #[serde(default)]
    steps_max: Option<u32>,
    #[serde(default)]
    guidance_scale: Option<f32>,
    #[serde(default)]
    guidance_min: Option<f32>,
    #[serde(default)]
    guidance_max: Option<f32>,
    #[serde(default)]
    negative_prompt: bool,
    #[serde(default)]
    image_to_video: bool,
    #[serde(default)]
    audio: bool,
    #[serde(default)]
    styles: BTreeMap<String, StylePreset>,
    /// GPU memory the loaded model needs, for eviction and placement.
    #[serde(default)]
    pub gpu_memory_gb: Option<f64>,
    /// How long a load takes (cold start), for scheduling.
    #[serde(default)]
    pub load_secs: Option<f64>,
    #[serde(default)]
    seconds_per_step: BTreeMap<String, f64>,
    /// `remote-openai`: the upstream engine.
    #[serde(default, flatten)]
    pub remote: RemoteFields,
}

/// The `remote-openai` adapter's fields: an upstream SGLang Diffusion,
/// vLLM-Omni (`encoding = "multipart"`, `send_num_frames = true`), OpenAI
/// (`extension_fields = false`) or another videogen.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemoteFields {
    pub base_url: Option<String>,
    /// The upstream's name for the model.
    pub upstream_model: Option<String>,
    /// The environment variable holding the upstream's API key (never the key itself).
    pub api_key_env: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub overall_timeout_secs: Option<u64>,
    pub max_download_bytes: Option<u64>,
    /// `json` (default) or `multipart`.
    pub encoding: Option<String>,
    pub send_num_frames: Option<bool>,
    pub extension_fields: Option<bool>,
}

impl RegistryEntry {
    /// The `remote-openai` config of this entry (the key read from its variable now).
    pub fn remote_config(&self) -> Result<videogen_remote::RemoteOpenAiConfig, String> {
        let r = &self.remote;
        let at = |m: &str| format!("[[models]] {}: {m}", self.id);
        let base = r
            .base_url
            .clone()
            .ok_or_else(|| at("`base_url` is required for remote-openai"))?;
        let upstream = r
            .upstream_model
            .clone()
            .ok_or_else(|| at("`upstream_model` is required for remote-openai"))?;
        let mut c = videogen_remote::RemoteOpenAiConfig::new(base, upstream);
        if let Some(var) = &r.api_key_env {
            c.api_key = Some(std::env::var(var).map_err(|_| at(&format!("api_key_env: ${var} is not set")))?);
        }
        let secs = std::time::Duration::from_secs;
        if let Some(ms) = r.poll_interval_ms {
            c.poll_interval = std::time::Duration::from_millis(ms);
        }
        if let Some(s) = r.request_timeout_secs {
            c.request_timeout = secs(s);
        }
        if let Some(s) = r.overall_timeout_secs {
            c.overall_timeout = secs(s);
        }
        if let Some(b) = r.max_download_bytes {
            c.max_download_bytes = b;
        }
        c.encoding = match r.encoding.as_deref() {
            None | Some("json") => videogen_remote::RequestEncoding::Json,
            Some("multipart") => videogen_remote::RequestEncoding::Multipart,
            Some(other) => return Err(at(&format!("encoding {other:?} is not json or multipart"))),
        };
        if let Some(b) = r.send_num_frames {
            c.send_num_frames = b;
        }
        if let Some(b) = r.extension_fields {
            c.extension_fields = b;
        }
        c.style_suffixes = self
            .styles
            .iter()
            .map(|(k, v)| (k.clone(), v.prompt_suffix.clone()))
            .collect();
        c.videos_url().map_err(|e| at(&e.to_string()))?;
        Ok(c)
    }

    fn remote_fields_set(&self) -> bool {
        let r = &self.remote;
        r.base_url.is_some() || r.upstream_model.is_some() || r.api_key_env.is_some() || r.encoding.is_some()
    }
}

fn default_dtype() -> Dtype {
    Dtype::One("bfloat16".into())
}

/// The `models` key of a config file (the rest of the file is the options').
#[derive(Debug, Default, Deserialize)]
struct RegistryFile {
    #[serde(default)]
    models: Vec<RegistryEntry>,
}

/// Reads the `[[models]]` entries of a config file's text.
pub fn parse(text: &str) -> Result<Vec<RegistryEntry>, String> {
    let file: RegistryFile = toml::from_str(text).map_err(|e| format!("[[models]]: {}", e.message().trim()))?;
    for e in &file.models {
        if !ADAPTERS.contains(&e.adapter.as_str()) {
            return Err(format!(
                "[[models]] {}: unknown adapter {:?}; known: {}",
                e.id,
                e.adapter,
                ADAPTERS.join(", ")
            ));
        }
        if e.adapter == "reference" && e.id != REFERENCE_MODEL {
            return Err(format!(
                "[[models]] {}: the reference adapter's id is {REFERENCE_MODEL}",
                e.id
            ));
        }
        if e.adapter == "remote-openai" {
            if e.remote.base_url.is_none() || e.remote.upstream_model.is_none() {
                return Err(format!(
                    "[[models]] {}: remote-openai needs `base_url` and `upstream_model`",
                    e.id
                ));
            }
        } else if e.remote_fields_set() {
            return Err(format!(
                "[[models]] {}: base_url, upstream_model, api_key_env and encoding are for adapter = \"remote-openai\"",
                e.id
            ));
        }
        if !matches!(e.adapter.as_str(), "reference" | "remote-openai") && e.path.is_none() {
            return Err(format!("[[models]] {}: `path` (the model directory) is required", e.id));
        }
        e.dtype.check().map_err(|m| format!("[[models]] {}: {m}", e.id))?;
    }
    Ok(file.models)
}

impl RegistryEntry {
    pub fn is_reference(&self) -> bool {
        self.adapter == "reference"
    }

    /// The entry as the API sees it.
    pub fn card(&self, default_steps: u32) -> Result<ModelCard, String> {
        let at = |what: String| format!("[[models]] {}: {what}", self.id);
        if self.is_reference() {
            let mut card = ModelCard::reference(default_steps);
            card.aliases.clone_from(&self.aliases);
            if let Some(o) = &self.owned_by {
                card.owned_by.clone_from(o);
            }
            card.created = self.created.unwrap_or(0);
            return Ok(card);
        }
        let sizes = self
            .sizes
            .iter()
            .map(|s| s.parse::<VideoSize>().map_err(|e| at(e.message)))
            .collect::<Result<Vec<_>, _>>()?;
        let durations = self
            .seconds
            .iter()
            .map(|s| match s {
                SecondsValue::Int(n) => Seconds::new(*n),
                SecondsValue::Text(t) => t.parse(),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(e.message))?;
        let fps = self.fps.unwrap_or(16);
        let steps = self.steps.unwrap_or(30);
        let frames_for_seconds = self
            .frames
            .iter()
            .map(|(k, v)| {
                k.parse::<u32>()
                    .map(|k| (k, *v))
                    .map_err(|_| at(format!("frames key {k:?} is not a number of seconds")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let guidance = self.guidance_scale.map(|g| Knob {
            default: g,
            min: self.guidance_min.unwrap_or(0.0),
            max: self.guidance_max.unwrap_or(20.0_f32.max(g)),
        });
        let card = ModelCard {
            id: self.id.clone(),
            aliases: self.aliases.clone(),
            owned_by: self.owned_by.clone().unwrap_or_else(|| "videogen".into()),
            created: self.created.unwrap_or(0),
            sizes,
            durations,
            fps: Knob {
                default: fps,
                min: self.fps_min.unwrap_or(fps),
                max: self.fps_max.unwrap_or(fps),
            },
            frame_multiple: self.frame_multiple.unwrap_or(4),
            frame_offset: self.frame_offset.unwrap_or(1),
            frames_for_seconds,
            steps: Knob {
                default: steps,
                min: self.steps_min.unwrap_or(1),
                max: self.steps_max.unwrap_or(MAX_STEPS.min(steps.max(100))),
            },
            guidance,
            negative_prompt: self.negative_prompt,
            image_to_video: self.image_to_video,
            audio: self.audio,
            styles: self.styles.clone(),
            seconds_per_step: self.seconds_per_step.clone(),
        };
        card.check().map_err(at)?;
        Ok(card)
    }

    /// GPU memory as bytes (0: unknown).
    pub fn memory_bytes(&self) -> u64 {
        self.gpu_memory_gb.map_or(0, |g| (g.max(0.0) * 1e9) as u64)
    }
}

/// The catalogue: the entries in order, the reference model where its entry
/// is or last.
pub fn catalog(entries: &[RegistryEntry], default_steps: u32) -> Result<Catalog, String> {
    let mut cards = entries
        .iter()
        .map(|e| e.card(default_steps))
        .collect::<Result<Vec<_>, _>>()?;
    if !entries.iter().any(RegistryEntry::is_reference) {
        cards.push(ModelCard::reference(default_steps));
    }
    Catalog::new(cards).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN: &str = r#"
listen = "127.0.0.1:8080"
[[models]]
id = "wan2.1-t2v-1.3b"
aliases = ["sora-2"]
adapter = "wan"
path = "/models/wan"
sizes = ["832x480", "480x832"]
seconds = [5, "3"]
fps = 16
steps = 30
steps_max = 80
guidance_scale = 5.0
negative_prompt = true
gpu_memory_gb = 24
frames = { "5" = 81 }
[models.styles.anime]
prompt_suffix = "anime style"

[[models]]
id = "videogen-ref"
adapter = "reference"
aliases = ["sora-2-pro"]
"#;

    #[test]
    fn entries_become_cards_in_order() {
        let entries = parse(WAN).unwrap();
        let c = catalog(&entries, 12).unwrap();
        let ids: Vec<&str> = c.cards().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["wan2.1-t2v-1.3b", "videogen-ref"]);
        let wan = c.resolve(Some("sora-2")).unwrap();
        assert_eq!(wan.sizes.len(), 2);
        assert_eq!(wan.durations.iter().map(|s| s.get()).collect::<Vec<_>>(), [5, 3]);
        assert_eq!((wan.steps.default, wan.steps.max), (30, 80));
        assert_eq!(wan.frames(Seconds::new(5).unwrap(), 16), 81);
        assert_eq!(wan.frames(Seconds::new(3).unwrap(), 16), 49);
        assert_eq!(entries[0].memory_bytes(), 24_000_000_000);
        assert_eq!(entries[0].dtype.to_json(), serde_json::json!("bfloat16"));
        let per = parse("[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"\ndtype = { default = \"bfloat16\", vae = \"float32\" }").unwrap();
        assert_eq!(
            per[0].dtype.to_json(),
            serde_json::json!({"default": "bfloat16", "vae": "float32"})
        );
        assert_eq!(c.resolve(Some("sora-2-pro")).unwrap().steps.default, 12);
    }

    #[test]
    fn without_an_entry_the_reference_model_comes_last() {
        let c = catalog(&parse("").unwrap(), 30).unwrap();
        assert_eq!(c.cards().len(), 1);
        let only_wan = WAN.split("[[models]]\nid = \"videogen-ref\"").next().unwrap();
        let c = catalog(&parse(only_wan).unwrap(), 30).unwrap();
        assert_eq!(c.cards().last().unwrap().id, REFERENCE_MODEL);
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            (
                "[[models]]\nid = \"x\"\nadapter = \"nope\"\npath = \"/m\"",
                "unknown adapter",
            ),
            ("[[models]]\nid = \"x\"\nadapter = \"wan\"", "path"),
            (
                "[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"\ncolour = 1",
                "unknown field",
            ),
            (
                "[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"\ndtype = \"int8\"",
                "dtype",
            ),
            ("[[models]]\nid = \"y\"\nadapter = \"reference\"", "videogen-ref"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let remote = "[[models]]\nid = \"up\"\nadapter = \"remote-openai\"\nbase_url = \"http://sglang:30000\"\nupstream_model = \"Wan-AI/Wan2.1\"\nencoding = \"multipart\"\nsizes = [\"832x480\"]\nseconds = [5]";
        let entries = parse(remote).unwrap();
        let cfg = entries[0].remote_config().unwrap();
        assert_eq!(cfg.encoding, videogen_remote::RequestEncoding::Multipart);
        assert_eq!(cfg.videos_url().unwrap().as_str(), "http://sglang:30000/v1/videos");
        assert!(
            parse(&remote.replace("upstream_model = \"Wan-AI/Wan2.1\"\n", ""))
                .unwrap_err()
                .contains("upstream_model")
        );
        assert!(
            parse("[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"\nbase_url = \"http://a\"")
                .unwrap_err()
                .contains("remote-openai")
        );
        let no_sizes = parse("[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"").unwrap();
        assert!(catalog(&no_sizes, 30).unwrap_err().contains("sizes"));
        let bad_size =
            parse("[[models]]\nid = \"x\"\nadapter = \"wan\"\npath = \"/m\"\nsizes = [\"83x48\"]\nseconds = [5]")
                .unwrap();
        assert!(catalog(&bad_size, 30).unwrap_err().contains("size"));
    }
}
