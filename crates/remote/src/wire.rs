//! The OpenAI Videos wire format as the upstreams actually speak it: create
//! bodies (JSON or multipart) and lenient parsing of Video objects and error
//! bodies (OpenAI's envelope, FastAPI's `detail`, plain text).

use std::time::Duration;

use serde_json::{Map, Value, json};
use videogen_model::{GenerationRequest, ModelError};

use crate::RemoteOpenAiConfig;
use crate::config::RequestEncoding;

/// Header OpenAI's SDK pollers read for the next poll's delay.
pub const POLL_AFTER_HEADER: &str = "openai-poll-after-ms";
/// Largest seed sent: JSON numbers above 2^53 lose precision in JavaScript
/// and are refused by videogen; larger seeds are reduced modulo 2^53.
pub const SEED_MASK: u64 = (1 << 53) - 1;
/// Shortest and longest poll delay an upstream's hint may set.
const POLL_HINT_MIN: Duration = Duration::from_millis(10);
const POLL_HINT_MAX: Duration = Duration::from_secs(60);
/// Longest upstream message kept in an error, in characters.
const MESSAGE_MAX_CHARS: usize = 500;

/// A job's lifecycle state, normalised across upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamStatus {
    Queued,
    InProgress,
    Completed,
    /// `failed`, and the terminal states some servers add (`cancelled`,
    /// `expired`, SGLang's `deleted`).
    Failed,
    /// Anything else; treated as still running.
    Other(String),
}

impl UpstreamStatus {
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "queued" | "pending" | "submitted" => UpstreamStatus::Queued,
            "in_progress" | "processing" | "running" | "generating" => UpstreamStatus::InProgress,
            "completed" | "succeeded" | "success" => UpstreamStatus::Completed,
            "failed" | "error" | "cancelled" | "canceled" | "expired" | "deleted" => UpstreamStatus::Failed,
            other => UpstreamStatus::Other(other.to_owned()),
        }
    }
}

/// Why an upstream job failed, as its `error` field says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// `code` as a string (vLLM-Omni may send a number; SGLang sends none).
    pub code: Option<String>,
    pub message: String,
}

/// The fields of a Video object the adapter uses.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamVideo {
    pub id: String,
    pub status: UpstreamStatus,
    /// The status string as sent.
    pub raw_status: String,
    /// `progress` clamped to 0..=100, if sent.
    pub progress: Option<u32>,
    pub error: Option<UpstreamFailure>,
    /// An absolute download URL some servers set (SGLang with cloud storage).
    pub url: Option<String>,
}

/// Parses a Video object. Lenient where the upstreams differ (progress as
/// an integer, a float or a string; `error` as an object or a string), strict
/// where the adapter depends on it (`id`, `status`).
pub fn parse_video(body: &[u8]) -> Result<UpstreamVideo, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("a Video object must be JSON ({e}); got {}", snippet(body)))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("a Video object must be a JSON object; got {}", snippet(body)))?;
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(format!("the Video object has no string 'id': {}", snippet(body))),
    };
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) || id == "." || id == ".." {
        return Err(format!("unusable video id {id:?}"));
    }
    let raw_status = obj
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the Video object has no string 'status': {}", snippet(body)))?
        .to_owned();
    let progress = obj.get("progress").and_then(|p| match p {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('%').parse::<f64>().ok(),
        _ => None,
    });
    let progress = progress.filter(|p| p.is_finite()).map(|p| p.clamp(0.0, 100.0) as u32);
    let error = match obj.get("error") {
        None | Some(Value::Null) => None,
        Some(e) => Some(failure(e)),
    };
    let url = obj
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_owned);
    Ok(UpstreamVideo {
        id,
        status: UpstreamStatus::parse(&raw_status),
        raw_status,
        progress,
        error,
        url,
    })
}

fn failure(e: &Value) -> UpstreamFailure {
    match e {
        Value::Object(o) => UpstreamFailure {
            code: o.get("code").and_then(scalar_string),
            message: o
                .get("message")
                .or_else(|| o.get("detail"))
                .and_then(scalar_string)
                .map(|m| clip(&m))
                .unwrap_or_else(|| clip(&e.to_string())),
        },
        other => UpstreamFailure {
            code: None,
            message: clip(&scalar_string(other).unwrap_or_else(|| other.to_string())),
        },
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether an upstream job that failed with `code` may succeed when run
/// again.
///
/// Not retryable: a numeric code in 400..=499 other than 408 and 429
/// (vLLM-Omni puts HTTP statuses there), and codes that say the request or
/// its content is at fault (containing `invalid`, `moderation`, `policy`,
/// `safety`, `blocked`, `unsupported`, `bad_request`, `not_found`).
/// Everything else is retryable, including a failure without a code (SGLang
/// never sends one: its `error` is `{"message": str(exception)}`, and it
/// validates requests at create time, where a refusal is a 400).
pub fn failure_is_retryable(code: Option<&str>) -> bool {
    let Some(code) = code.map(|c| c.trim().to_ascii_lowercase()) else {
        return true;
    };
    if let Ok(n) = code.parse::<u16>() {
        return !(400..500).contains(&n) || n == 408 || n == 429;
    }
    const FATAL: [&str; 8] = [
        "invalid",
        "moderation",
        "policy",
        "safety",
        "blocked",
        "unsupported",
        "bad_request",
        "not_found",
    ];
    !FATAL.iter().any(|f| code.contains(f))
}

/// `(code, message)` from an error response body: OpenAI's
/// `{"error": {"message", "code", "type"}}`, FastAPI's `{"detail": …}`
/// (SGLang, vLLM-Omni; a string or pydantic's list of `{"msg"}`), a bare
/// `{"message"}`, or the text itself.
pub fn error_body(body: &[u8]) -> (Option<String>, String) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, snippet(body));
    };
    let from_obj = |o: &Map<String, Value>| -> Option<(Option<String>, String)> {
        if let Some(e) = o.get("error") {
            let f = failure(e);
            let code = f
                .code
                .or_else(|| e.get("type").and_then(scalar_string))
                .filter(|c| !c.is_empty());
            return Some((code, f.message));
        }
        match o.get("detail") {
            Some(Value::String(s)) => return Some((None, clip(s))),
            Some(Value::Array(items)) => {
                let msgs: Vec<String> = items
                    .iter()
                    .map(|i| i.get("msg").and_then(scalar_string).unwrap_or_else(|| i.to_string()))
                    .collect();
                return Some((None, clip(&msgs.join("; "))));
            }
            Some(other) => return Some((None, clip(&other.to_string()))),
            None => {}
        }
        o.get("message")
            .and_then(scalar_string)
            .map(|m| (o.get("code").and_then(scalar_string), clip(&m)))
    };
    match &v {
        Value::Object(o) => from_obj(o).unwrap_or_else(|| (None, snippet(body))),
        _ => (None, snippet(body)),
    }
}

/// The poll delay an upstream asks for (`openai-poll-after-ms`), bounded.
pub fn poll_hint(value: Option<&str>) -> Option<Duration> {
    let ms = value?.trim().parse::<u64>().ok()?;
    Some(Duration::from_millis(ms).clamp(POLL_HINT_MIN, POLL_HINT_MAX))
}

/// A printable, bounded rendering of a body for error messages.
pub fn snippet(body: &[u8]) -> String {
    if body.is_empty() {
        return "an empty body".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MESSAGE_MAX_CHARS * 4)]);
    let shown: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let shown = clip(shown.trim());
    format!("{shown:?}")
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MESSAGE_MAX_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MESSAGE_MAX_CHARS).collect();
        out.push('…');
        out
    }
}

/// One text field of a create request.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Int(u64),
    Float(f64),
}

impl Field {
    fn json(&self) -> Value {
        match self {
            Field::Text(s) => json!(s),
            Field::Int(n) => json!(n),
            Field::Float(f) => json!(f),
        }
    }

    fn text(&self) -> String {
        match self {
            Field::Text(s) => s.clone(),
            Field::Int(n) => n.to_string(),
            Field::Float(f) => f.to_string(),
        }
    }
}

/// A create request, before encoding.
#[derive(Debug, Clone)]
pub struct CreateBody {
    pub fields: Vec<(&'static str, Field)>,
    /// The first frame as PNG, sent as the `input_reference` file.
    pub input_png: Option<Vec<u8>>,
    pub encoding: RequestEncoding,
}

/// Clip duration sent as OpenAI's `seconds`: the request's frames at its
/// frame rate, rounded, at least 1.
pub fn seconds_for(req: &GenerationRequest) -> u32 {
    let fps = req.fps.max(1);
    (req.frames + fps / 2).checked_div(fps).unwrap_or(1).max(1)
}

impl CreateBody {
    /// The fields videogen sends for `req` under `config`.
    pub fn new(req: &GenerationRequest, config: &RemoteOpenAiConfig) -> Result<Self, ModelError> {
        let prompt = match req.style.as_deref() {
            None => req.prompt.clone(),
            Some(style) => match config.style_suffixes.get(style) {
                Some(suffix) if suffix.is_empty() => req.prompt.clone(),
                Some(suffix) => format!("{}, {suffix}", req.prompt),
                None => format!("{}, {style} style", req.prompt),
            },
        };
        let mut fields = vec![
            ("prompt", Field::Text(prompt)),
            ("model", Field::Text(config.upstream_model.clone())),
            ("size", Field::Text(format!("{}x{}", req.width, req.height))),
            ("seconds", Field::Text(seconds_for(req).to_string())),
        ];
        if config.extension_fields {
            fields.push(("seed", Field::Int(req.seed & SEED_MASK)));
            fields.push(("num_inference_steps", Field::Int(u64::from(req.steps))));
            fields.push(("fps", Field::Int(u64::from(req.fps))));
            if let Some(n) = &req.negative_prompt {
                fields.push(("negative_prompt", Field::Text(n.clone())));
            }
            if let Some(g) = req.guidance_scale {
                // Through its decimal form, so 7.1f32 goes out as 7.1.
                let g = g.to_string().parse::<f64>().unwrap_or(f64::from(g));
                fields.push(("guidance_scale", Field::Float(g)));
            }
        }
        if config.send_num_frames {
            fields.push(("num_frames", Field::Int(u64::from(req.frames))));
        }
        let input_png = req.first_frame.as_ref().map(|f| f.to_png()).transpose()?;
        Ok(Self {
            fields,
            input_png,
            encoding: config.encoding,
        })
    }

    /// `(content type, body bytes)`.
    pub fn encode(&self) -> (String, Vec<u8>) {
        if self.encoding == RequestEncoding::Json && self.input_png.is_none() {
            let map: Map<String, Value> = self.fields.iter().map(|(k, v)| ((*k).to_owned(), v.json())).collect();
            let body = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
            return ("application/json".into(), body);
        }
        let parts: Vec<(&str, String)> = self.fields.iter().map(|(k, v)| (*k, v.text())).collect();
        let boundary = boundary_for(&parts, self.input_png.as_deref());
        let mut body = Vec::new();
        for (name, value) in &parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
            body.extend_from_slice(value.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        if let Some(png) = &self.input_png {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=\"input_reference\"; filename=\"input_reference.png\"\r\n",
            );
            body.extend_from_slice(b"Content-Type: image/png\r\n\r\n");
            body.extend_from_slice(png);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }
}

/// A multipart boundary that occurs in no part.
fn boundary_for(parts: &[(&str, String)], file: Option<&[u8]>) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut n = seed ^ u64::from(std::process::id()).rotate_left(32);
    loop {
        let b = format!("videogen-remote-{n:016x}");
        let inside = |hay: &[u8]| hay.windows(b.len()).any(|w| w == b.as_bytes());
        if !parts.iter().any(|(_, v)| inside(v.as_bytes())) && !file.is_some_and(inside) {
            return b;
        }
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use videogen_model::RgbImage;

    #[test]
    fn parses_the_three_dialects() {
        let openai = br#"{"id":"video_1","object":"video","status":"in_progress","progress":42,"model":"sora-2","seconds":"4","size":"720x1280","created_at":1}"#;
        let v = parse_video(openai).unwrap();
        assert_eq!(
            (v.id.as_str(), &v.status, v.progress),
            ("video_1", &UpstreamStatus::InProgress, Some(42))
        );
        // SGLang: failure without a code, extra fields.
        let sglang = br#"{"id":"abc","object":"video","status":"failed","progress":0,"quality":"standard","file_path":null,"error":{"message":"CUDA out of memory"}}"#;
        let v = parse_video(sglang).unwrap();
        assert_eq!(v.status, UpstreamStatus::Failed);
        assert_eq!(
            v.error,
            Some(UpstreamFailure {
                code: None,
                message: "CUDA out of memory".into()
            })
        );
        // vLLM-Omni: numeric error code, float progress.
        let vllm =
            br#"{"id":"video_gen_9","status":"failed","progress":12.7,"error":{"code":400,"message":"bad size"}}"#;
        let v = parse_video(vllm).unwrap();
        assert_eq!(v.progress, Some(12));
        assert_eq!(v.error.unwrap().code.as_deref(), Some("400"));
        // SGLang with cloud storage.
        let cloud = br#"{"id":"c","status":"completed","progress":100,"url":"https://bucket.example/c.mp4"}"#;
        assert_eq!(
            parse_video(cloud).unwrap().url.as_deref(),
            Some("https://bucket.example/c.mp4")
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            &b"<html>502</html>"[..],
            b"[]",
            br#"{"status":"queued"}"#,
            br#"{"id":"","status":"queued"}"#,
            br#"{"id":"..","status":"queued"}"#,
            br#"{"id":"x"}"#,
        ] {
            assert!(parse_video(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let v = parse_video(br#"{"id":"x","status":"queued","progress":"250"}"#).unwrap();
        assert_eq!(v.progress, Some(100));
        assert_eq!(
            parse_video(br#"{"id":"x","status":"weird","progress":-3}"#)
                .unwrap()
                .progress,
            Some(0)
        );
    }

    #[test]
    fn statuses_normalise() {
        assert_eq!(UpstreamStatus::parse("queued"), UpstreamStatus::Queued);
        assert_eq!(UpstreamStatus::parse("IN_PROGRESS"), UpstreamStatus::InProgress);
        assert_eq!(UpstreamStatus::parse("completed"), UpstreamStatus::Completed);
        for s in ["failed", "cancelled", "deleted", "expired"] {
            assert_eq!(UpstreamStatus::parse(s), UpstreamStatus::Failed, "{s}");
        }
        assert_eq!(
            UpstreamStatus::parse("warming"),
            UpstreamStatus::Other("warming".into())
        );
    }

    #[test]
    fn failure_codes_classify() {
        for fatal in [
            "400",
            "422",
            "invalid_request",
            "moderation_blocked",
            "content_policy_violation",
            "output_moderation_blocked",
            "unsupported_parameter",
        ] {
            assert!(!failure_is_retryable(Some(fatal)), "{fatal}");
        }
        for retry in [
            None,
            Some("500"),
            Some("429"),
            Some("408"),
            Some("internal"),
            Some("max_attempts_exceeded"),
        ] {
            assert!(failure_is_retryable(retry), "{retry:?}");
        }
    }

    #[test]
    fn error_bodies_of_every_shape() {
        let openai = br#"{"error":{"message":"Invalid size","type":"invalid_request_error","param":"size","code":"invalid_value"}}"#;
        assert_eq!(
            error_body(openai),
            (Some("invalid_value".into()), "Invalid size".into())
        );
        let typed = br#"{"error":{"message":"m","type":"invalid_request_error","code":null}}"#;
        assert_eq!(error_body(typed), (Some("invalid_request_error".into()), "m".into()));
        assert_eq!(
            error_body(br#"{"detail":"Video not found"}"#),
            (None, "Video not found".into())
        );
        let pydantic = br#"{"detail":[{"loc":["body","seconds"],"msg":"String should match pattern","type":"x"}]}"#;
        assert_eq!(error_body(pydantic), (None, "String should match pattern".into()));
        let (code, msg) = error_body(b"<html>Bad Gateway</html>");
        assert_eq!(code, None);
        assert!(msg.contains("Bad Gateway"), "{msg}");
        assert_eq!(error_body(b""), (None, "an empty body".into()));
    }

    #[test]
    fn poll_hints_are_bounded() {
        assert_eq!(poll_hint(Some("250")), Some(Duration::from_millis(250)));
        assert_eq!(poll_hint(Some("0")), Some(POLL_HINT_MIN));
        assert_eq!(poll_hint(Some("99999999")), Some(POLL_HINT_MAX));
        assert_eq!(poll_hint(Some("soon")), None);
        assert_eq!(poll_hint(None), None);
    }

    fn request() -> GenerationRequest {
        let mut r = GenerationRequest::new("a red fox", u64::MAX, 832, 480, 81);
        r.fps = 16;
        r.steps = 30;
        r
    }

    #[test]
    fn json_body_has_the_fields_and_extensions() {
        let mut req = request();
        req.negative_prompt = Some("blurry".into());
        req.guidance_scale = Some(7.1);
        let cfg = RemoteOpenAiConfig::new("http://h", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers");
        let (ct, body) = CreateBody::new(&req, &cfg).unwrap().encode();
        assert_eq!(ct, "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "prompt": "a red fox", "model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "size": "832x480",
                "seconds": "5", "seed": SEED_MASK, "num_inference_steps": 30, "fps": 16,
                "negative_prompt": "blurry", "guidance_scale": 7.1,
            })
        );
        let plain = RemoteOpenAiConfig {
            extension_fields: false,
            send_num_frames: true,
            ..cfg
        };
        let (_, body) = CreateBody::new(&req, &plain).unwrap().encode();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"prompt": "a red fox", "model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "size": "832x480", "seconds": "5", "num_frames": 81})
        );
    }

    #[test]
    fn multipart_body_carries_the_image() {
        let mut req = request();
        req.first_frame = Some(RgbImage::new(4, 4));
        let cfg = RemoteOpenAiConfig::new("http://h", "m");
        let (ct, body) = CreateBody::new(&req, &cfg).unwrap().encode();
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(text.contains("name=\"prompt\"\r\n\r\na red fox\r\n"));
        assert!(text.contains("name=\"seconds\"\r\n\r\n5\r\n"));
        assert!(text.contains("name=\"input_reference\"; filename=\"input_reference.png\"\r\nContent-Type: image/png"));
        assert!(body.windows(8).any(|w| w == b"\x89PNG\r\n\x1a\n"));
        // Forced multipart without an image: text parts only.
        let forced = RemoteOpenAiConfig {
            encoding: RequestEncoding::Multipart,
            ..cfg
        };
        let (ct, body) = CreateBody::new(&request(), &forced).unwrap().encode();
        assert!(ct.starts_with("multipart/form-data; boundary="));
        assert!(!String::from_utf8_lossy(&body).contains("input_reference"));
    }

    #[test]
    fn styles_become_prompt_suffixes() {
        let mut cfg = RemoteOpenAiConfig::new("http://h", "m");
        cfg.style_suffixes
            .insert("noir".into(), "black and white, high contrast".into());
        cfg.style_suffixes.insert("plain".into(), String::new());
        let prompt = |style: Option<&str>| {
            let mut r = request();
            r.style = style.map(str::to_owned);
            let (_, body) = CreateBody::new(&r, &cfg).unwrap().encode();
            serde_json::from_slice::<Value>(&body).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(prompt(None), "a red fox");
        assert_eq!(prompt(Some("noir")), "a red fox, black and white, high contrast");
        assert_eq!(prompt(Some("plain")), "a red fox");
        assert_eq!(prompt(Some("watercolour")), "a red fox, watercolour style");
    }

    #[test]
    fn seconds_round_and_never_reach_zero() {
        let mut r = request();
        for (frames, fps, want) in [(81, 16, 5), (96, 24, 4), (1, 24, 1), (36, 24, 2), (120, 0, 120)] {
            r.frames = frames;
            r.fps = fps;
            assert_eq!(seconds_for(&r), want, "{frames}@{fps}");
        }
    }

    #[test]
    fn boundary_avoids_the_content() {
        let parts = vec![("prompt", "videogen-remote-".repeat(3))];
        let b = boundary_for(&parts, None);
        assert!(!parts[0].1.contains(&b));
    }
}
