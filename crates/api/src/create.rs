//! Parsing and validating `POST /v1/videos`, in JSON (curl users) or
//! multipart/form-data (what the official SDKs always send).
//!
//! Everything is checked before anything is written, so a rejected request
//! leaves no state behind. Unknown fields are rejected (as OpenAI does) rather
//! than silently ignored.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{HeaderMap, Request, header};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use videogen_core::catalog::{Asked, Catalog};
use videogen_core::spec::{self, GenerationParams, Seconds, VideoSize};

use crate::decode::DecodeBudget;
use crate::error::{ApiError, ApiResult};
use crate::state::Limits;

/// Longest text field accepted in a multipart body.
const TEXT_FIELD_BYTES_MAX: usize = 64 * 1024;
/// Largest seed: JSON numbers above 2^53 lose precision in JavaScript clients.
pub const SEED_MAX: u64 = (1 << 53) - 1;

/// A create request as sent, before defaults are applied.
#[derive(Debug, Default)]
pub struct CreateRequest {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub seconds: Option<String>,
    pub size: Option<String>,
    pub style: Option<String>,
    pub seed: Option<u64>,
    /// Raw bytes of the input reference image, not yet decoded.
    pub input_reference: Option<Bytes>,
    /// Extension fields, named as vLLM-Omni and SGLang name them.
    pub negative_prompt: Option<String>,
    pub num_inference_steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    pub fps: Option<u32>,
}

/// A validated create request.
#[derive(Debug)]
pub struct ValidCreate {
    pub prompt: String,
    pub model: String,
    pub seconds: Seconds,
    pub size: VideoSize,
    pub style: Option<String>,
    pub seed: Option<u64>,
    /// Denoising steps (the request's or the model's default).
    pub steps: u32,
    /// What the model's card resolved (guidance, fps, frames, negative prompt).
    pub params: GenerationParams,
    /// The input reference re-encoded as PNG (metadata stripped).
    pub input_png: Option<Vec<u8>>,
    /// Identifies the request for idempotency (seed only if the client chose it).
    pub body_hash: String,
}

/// Reads the body within the size limit and dispatches on content type.
pub async fn read(req: Request<Body>, limits: &Limits) -> ApiResult<CreateRequest> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    declared_length_ok(&parts.headers, limits.body_bytes_max)?;
    let bytes = axum::body::to_bytes(body, limits.body_bytes_max)
        .await
        .map_err(|_| ApiError::too_large(format!("Request body exceeds {} bytes.", limits.body_bytes_max)))?;
    // The media type exactly (parameters such as `charset` allowed), so
    // `application/jsonfoo` is not taken for JSON.
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence == "application/json" {
        parse_json(&bytes)
    } else if essence == "multipart/form-data" {
        let req = Request::from_parts(parts, Body::from(bytes));
        let multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", format!("Invalid multipart body: {e}")))?;
        parse_multipart(multipart, limits).await
    } else {
        Err(ApiError::unsupported_media_type(
            "Content-Type must be application/json or multipart/form-data.",
        ))
    }
}

fn declared_length_ok(headers: &HeaderMap, max: usize) -> ApiResult<()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => Err(ApiError::too_large(format!("Request body exceeds {max} bytes."))),
        _ => Ok(()),
    }
}

fn parse_json(bytes: &[u8]) -> ApiResult<CreateRequest> {
    let fields: JsonFields = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request("invalid_json", "Request body must be a JSON object.")
        }
        _ => ApiError::bad_request("invalid_json", format!("Request body is not valid JSON: {e}")),
    })?;
    let map = match fields {
        JsonFields::Unique(map) => map,
        JsonFields::Duplicate(name) => return Err(duplicate_parameter(&name)),
    };
    let mut req = CreateRequest::default();
    for (k, v) in map {
        match k.as_str() {
            "prompt" => req.prompt = Some(json_string(&k, v)?),
            "model" => req.model = Some(json_string(&k, v)?),
            "size" => req.size = Some(json_string(&k, v)?),
            "style" => req.style = json_opt_string(&k, v)?,
            "seconds" => {
                req.seconds = Some(match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    _ => return Err(type_error(&k, "a string such as \"4\"")),
                })
            }
            "seed" => req.seed = json_seed(v)?,
            "input_reference" => req.input_reference = json_input_reference(v)?,
            "negative_prompt" => req.negative_prompt = json_opt_string(&k, v)?,
            "num_inference_steps" => req.num_inference_steps = json_opt_u32(&k, v)?,
            "fps" => req.fps = json_opt_u32(&k, v)?,
            "guidance_scale" => {
                req.guidance_scale = match v {
                    Value::Null => None,
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => Some(parse_f64(&k, &s)?),
                    _ => return Err(type_error(&k, "a number")),
                }
            }
            other => return Err(unknown_parameter(other)),
        }
    }
    Ok(req)
}

/// A JSON object's fields in order, or the first name given twice: a
/// `serde_json::Value` keeps only the last of duplicate keys, which would let
/// `{"prompt":"x","prompt":"y"}` through while multipart refuses the same.
enum JsonFields {
    Unique(Vec<(String, Value)>),
    Duplicate(String),
}

impl<'de> serde::Deserialize<'de> for JsonFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = JsonFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonFields, A::Error> {
                let mut fields: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if fields.iter().any(|(seen, _)| *seen == k) {
                        // Drain the rest so the whole body is still checked as JSON.
                        while map
                            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                            .is_some()
                        {}
                        return Ok(JsonFields::Duplicate(k));
                    }
                    fields.push((k, v));
                }
                Ok(JsonFields::Unique(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

fn duplicate_parameter(name: &str) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    ApiError::invalid(
        shown.clone(),
        "duplicate_parameter",
        format!("'{shown}' was sent twice."),
    )
}

fn type_error(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        param,
        "invalid_type",
        format!("Invalid type for '{param}': expected {expected}."),
    )
}

fn unknown_parameter(name: &str) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    ApiError::invalid(
        shown.clone(),
        "unknown_parameter",
        format!("Unrecognized request argument supplied: {shown}"),
    )
}

fn json_string(param: &str, v: Value) -> ApiResult<String> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(type_error(param, "a string")),
    }
}

fn json_opt_string(param: &str, v: Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        other => json_string(param, other).map(Some),
    }
}

/// Largest integer extension field accepted (steps, fps).
const EXT_INT_MAX: u64 = 100_000;

fn json_opt_u32(param: &str, v: Value) -> ApiResult<Option<u32>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .filter(|x| *x <= EXT_INT_MAX)
            .map(|x| Some(x as u32))
            .ok_or_else(|| type_error(param, "a non-negative integer")),
        Value::String(s) => parse_u32(param, &s).map(Some),
        _ => Err(type_error(param, "an integer")),
    }
}

fn parse_u32(param: &str, s: &str) -> ApiResult<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(type_error(param, "a non-negative integer"));
    }
    s.parse::<u32>()
        .ok()
        .filter(|x| u64::from(*x) <= EXT_INT_MAX)
        .ok_or_else(|| type_error(param, "a non-negative integer"))
}

fn parse_f64(param: &str, s: &str) -> ApiResult<f64> {
    let s = s.trim();
    let ok = !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    s.parse::<f64>()
        .ok()
        .filter(|v| ok && v.is_finite())
        .ok_or_else(|| type_error(param, "a number"))
}

fn json_seed(v: Value) -> ApiResult<Option<u64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().filter(|s| *s <= SEED_MAX).map(Some).ok_or_else(seed_error),
        Value::String(s) => parse_seed(&s).map(Some),
        _ => Err(seed_error()),
    }
}

fn seed_error() -> ApiError {
    ApiError::invalid(
        "seed",
        "invalid_seed",
        format!("'seed' must be an integer from 0 to {SEED_MAX}."),
    )
}

fn parse_seed(s: &str) -> ApiResult<u64> {
    let s = s.trim();
    // Digits only: `u64::from_str` also takes a leading `+`.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(seed_error());
    }
    s.parse::<u64>().ok().filter(|v| *v <= SEED_MAX).ok_or_else(seed_error)
}

fn json_input_reference(v: Value) -> ApiResult<Option<Bytes>> {
    match v {
        Value::Null => Ok(None),
        Value::Object(map) => input_reference_object(map),
        _ => Err(type_error("input_reference", "an object with 'image_url'")),
    }
}

fn input_reference_object(map: Map<String, Value>) -> ApiResult<Option<Bytes>> {
    let mut image_url = None;
    for (k, v) in map {
        match k.as_str() {
            "image_url" => image_url = Some(json_string("input_reference.image_url", v)?),
            "file_id" => return Err(file_ids_unsupported()),
            other => return Err(unknown_parameter(&format!("input_reference.{other}"))),
        }
    }
    match image_url {
        Some(url) => decode_data_url(&url).map(Some),
        None => Err(ApiError::invalid(
            "input_reference",
            "missing_required_parameter",
            "input_reference needs 'image_url'.",
        )),
    }
}

fn file_ids_unsupported() -> ApiError {
    ApiError::invalid(
        "input_reference.file_id",
        "unsupported_parameter",
        "File ids are not supported; upload the image or send a base64 data URL in 'image_url'.",
    )
}

/// Only `data:` URLs: fetching arbitrary URLs server-side would be an SSRF hole.
fn decode_data_url(url: &str) -> ApiResult<Bytes> {
    let err = |m: &str| ApiError::invalid("input_reference.image_url", "invalid_image_url", m.to_owned());
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        err("Only base64 data URLs (data:image/png;base64,...) are accepted; remote URLs are not fetched.")
    })?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| err("Malformed data URL."))?;
    if !meta.ends_with(";base64") {
        return Err(err("Data URL must be base64-encoded."));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(Bytes::from)
        .map_err(|_| err("Data URL is not valid base64."))
}

async fn parse_multipart(mut mp: Multipart, limits: &Limits) -> ApiResult<CreateRequest> {
    let mut req = CreateRequest::default();
    let mut seen = std::collections::HashSet::new();
    loop {
        let field = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", format!("Invalid multipart body: {e}")))?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_owned();
        if !seen.insert(name.clone()) {
            return Err(duplicate_parameter(&name));
        }
        let is_file = field.file_name().is_some();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", format!("Invalid multipart body: {e}")))?;
        if name == "input_reference" {
            if data.len() > limits.image_bytes_max {
                return Err(ApiError::too_large(format!(
                    "input_reference is {} bytes; the limit is {}.",
                    data.len(),
                    limits.image_bytes_max
                ))
                .with_param("input_reference"));
            }
            if !is_file {
                return Err(type_error("input_reference", "an uploaded image file"));
            }
            req.input_reference = Some(data);
            continue;
        }
        if data.len() > TEXT_FIELD_BYTES_MAX {
            return Err(ApiError::invalid(
                name.clone(),
                "field_too_large",
                format!("'{name}' is too long."),
            ));
        }
        let text = String::from_utf8(data.to_vec())
            .map_err(|_| ApiError::invalid(name.clone(), "invalid_encoding", format!("'{name}' is not UTF-8.")))?;
        match name.as_str() {
            "prompt" => req.prompt = Some(text),
            "model" => req.model = Some(text),
            "seconds" => req.seconds = Some(text),
            "size" => req.size = Some(text),
            "style" => req.style = Some(text),
            "seed" => req.seed = Some(parse_seed(&text)?),
            "negative_prompt" => req.negative_prompt = Some(text),
            "num_inference_steps" => req.num_inference_steps = Some(parse_u32(&name, &text)?),
            "fps" => req.fps = Some(parse_u32(&name, &text)?),
            "guidance_scale" => req.guidance_scale = Some(parse_f64(&name, &text)?),
            "input_reference[image_url]" => req.input_reference = Some(decode_data_url(&text)?),
            "input_reference[file_id]" => return Err(file_ids_unsupported()),
            other => return Err(unknown_parameter(other)),
        }
    }
    Ok(req)
}

/// Applies defaults and checks every field; decodes the image (in a blocking
/// task: decoding is CPU work).
pub async fn validate(req: CreateRequest, catalog: &Catalog, limits: &Limits) -> ApiResult<ValidCreate> {
    let field = |e: spec::SpecError| ApiError::invalid(e.param, e.code, e.message);
    let prompt = req.prompt.ok_or_else(|| {
        ApiError::invalid(
            "prompt",
            "missing_required_parameter",
            "Missing required parameter: 'prompt'.",
        )
    })?;
    spec::validate_prompt(&prompt).map_err(field)?;
    if req
        .model
        .as_deref()
        .is_some_and(|m| m.is_empty() || m.len() > spec::MODEL_MAX_CHARS)
    {
        return Err(field(spec::SpecError::new(
            "model",
            format!("model must be 1 to {} characters", spec::MODEL_MAX_CHARS),
        )));
    }
    let card = catalog.resolve(req.model.as_deref()).map_err(field)?;
    if req.input_reference.is_some() && !card.image_to_video {
        // Before decoding: no CPU spent on an image the model cannot take.
        return Err(field(spec::SpecError::unsupported(
            "input_reference",
            format!("model {} does not take an input_reference image", card.id),
        )));
    }
    let seconds: Option<Seconds> = req.seconds.as_deref().map(str::parse).transpose().map_err(field)?;
    let size: Option<VideoSize> = req.size.as_deref().map(str::parse).transpose().map_err(field)?;
    if let Some(style) = &req.style {
        spec::validate_style(style).map_err(field)?;
    }
    let input_png = match req.input_reference {
        None => None,
        Some(bytes) => {
            let (max_bytes, max_side, budget) =
                (limits.image_bytes_max, limits.image_side_px_max, limits.decode.clone());
            Some(
                tokio::task::spawn_blocking(move || check_image(&bytes, max_bytes, max_side, &budget))
                    .await
                    .map_err(|_| ApiError::internal())??,
            )
        }
    };
    let resolved = card
        .resolve(&Asked {
            seconds,
            size,
            steps: req.num_inference_steps,
            guidance_scale: req.guidance_scale,
            negative_prompt: req.negative_prompt.clone(),
            fps: req.fps,
            style: req.style.clone(),
            has_image: input_png.is_some(),
        })
        .map_err(field)?;
    let model = card.id.clone();
    let mut h = Sha256::new();
    let mut canonical = serde_json::json!({
        "prompt": prompt, "model": model, "seconds": resolved.seconds.to_string(), "size": resolved.size.to_string(),
        "style": req.style, "seed": req.seed,
        "input_reference": input_png.as_ref().map(|b| hex::encode(Sha256::digest(b))),
    });
    // Extension fields only when sent, so a plain request hashes as it did
    // before they existed (idempotency records stay valid across upgrades).
    let ext = [
        ("negative_prompt", serde_json::json!(req.negative_prompt)),
        ("num_inference_steps", serde_json::json!(req.num_inference_steps)),
        ("guidance_scale", serde_json::json!(req.guidance_scale)),
        ("fps", serde_json::json!(req.fps)),
    ];
    for (k, v) in ext {
        if !v.is_null() {
            canonical[k] = v;
        }
    }
    h.update(canonical.to_string().as_bytes());
    Ok(ValidCreate {
        prompt,
        model,
        seconds: resolved.seconds,
        size: resolved.size,
        style: req.style,
        seed: req.seed,
        steps: resolved.steps,
        params: resolved.params,
        input_png,
        body_hash: hex::encode(h.finalize()),
    })
}

/// Checks an input image by its bytes (never its name), bounds its size and
/// reserves its decode memory from `budget` before decoding it, and
/// re-encodes it as PNG.
pub fn check_image(bytes: &[u8], max_bytes: usize, max_side: u32, budget: &DecodeBudget) -> ApiResult<Vec<u8>> {
    let bad = |code: &'static str, m: String| ApiError::invalid("input_reference", code, m);
    if bytes.len() > max_bytes {
        return Err(
            ApiError::too_large(format!("input_reference exceeds {max_bytes} bytes.")).with_param("input_reference"),
        );
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| {
            matches!(
                f,
                image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
            )
        })
        .ok_or_else(|| {
            bad(
                "invalid_image_format",
                "input_reference must be a PNG, JPEG or WebP image.".into(),
            )
        })?;
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| bad("invalid_image", format!("input_reference could not be read: {e}")))?;
    if w == 0 || h == 0 || w > max_side || h > max_side {
        return Err(bad(
            "invalid_image_dimensions",
            format!("input_reference is {w}x{h}; each side must be 1 to {max_side} pixels."),
        ));
    }
    let _reserved = budget.reserve(w, h)?;
    let mut r = reader();
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(max_side);
    lim.max_image_height = Some(max_side);
    lim.max_alloc = Some(u64::from(max_side) * u64::from(max_side) * 4 + (1 << 20));
    r.limits(lim);
    let img = r
        .decode()
        .map_err(|e| bad("invalid_image", format!("input_reference could not be decoded: {e}")))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8()
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| bad("invalid_image", format!("input_reference could not be re-encoded: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_seconds_accepts_strings_and_integers() {
        let r = parse_json(br#"{"prompt":"x","seconds":8}"#).unwrap();
        assert_eq!(r.seconds.as_deref(), Some("8"));
        let r = parse_json(br#"{"prompt":"x","seconds":"12"}"#).unwrap();
        assert_eq!(r.seconds.as_deref(), Some("12"));
    }

    #[test]
    fn json_rejects_unknown_fields_and_wrong_types() {
        assert_eq!(
            parse_json(br#"{"prompt":"x","colour":"red"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("colour")
        );
        assert_eq!(
            parse_json(br#"{"prompt":5}"#).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            parse_json(br#"{"prompt":"x","seed":-1}"#).unwrap_err().param.as_deref(),
            Some("seed")
        );
        assert_eq!(parse_json(br#"[1]"#).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn remote_image_urls_are_refused() {
        let e = parse_json(br#"{"prompt":"x","input_reference":{"image_url":"http://169.254.169.254/"}}"#).unwrap_err();
        assert_eq!(e.code, "invalid_image_url");
    }

    #[test]
    fn images_are_checked_by_content_not_name() {
        let e = check_image(b"GIF89a....", 1 << 20, 4096, &DecodeBudget::default()).unwrap_err();
        assert_eq!(e.code, "invalid_image_format");
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(8, 8)
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        assert!(check_image(png.get_ref(), 1 << 20, 4096, &DecodeBudget::default()).is_ok());
        assert_eq!(
            check_image(png.get_ref(), 1 << 20, 4, &DecodeBudget::default())
                .unwrap_err()
                .code,
            "invalid_image_dimensions"
        );
        let truncated = &png.get_ref()[..png.get_ref().len() / 2];
        assert_eq!(
            check_image(truncated, 1 << 20, 4096, &DecodeBudget::default())
                .unwrap_err()
                .code,
            "invalid_image"
        );
    }
}
