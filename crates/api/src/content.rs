//! `GET /v1/videos/{id}/content`: the MP4, thumbnail or spritesheet, with
//! single-range `Range` support so players can seek; or, when
//! [`Downloads::redirect`] is on, a `302` to a signed URL so the bytes bypass
//! the API.
//!
//! `GET /files/{key}?expires=<unix secs>&sig=<hex>`: the API's own signed
//! URLs, for blob stores that cannot sign (a local directory). The signature
//! is the credential (no API key): HMAC-SHA256 over the key and expiry with
//! [`Downloads::signing_key`], compared in constant time.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::ops::Range;
use videogen_core::JobState;
use videogen_core::blob::BlobError;
use videogen_core::job::Outputs;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{VideoPath, query_pairs, visible_job};
use crate::state::{AppState, Downloads};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every signed message: a signature made for anything else (a
/// future URL kind, another product using the same key) never verifies here.
const SIGNING_CONTEXT: &[u8] = b"videogen-files-v1\n";
/// Longest a cache may keep a `/files` response.
const FILE_CACHE_SECS_MAX: u64 = 3600;

pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    VideoPath(id): VideoPath,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref(), &["variant"])?;
    let variant = pairs.first().map(|(_, v)| v.as_str()).unwrap_or("video");
    let job = visible_job(&state, &caller, &id).await?;
    let outputs = match (job.state, &job.outputs) {
        (JobState::Completed, Some(o)) => o,
        (JobState::Expired, _) => {
            return Err(ApiError::video_not_found(job.id.as_str()).with_code(
                "video_expired",
                "This video's content has expired and was deleted under the retention policy.",
            ));
        }
        (state, _) => {
            return Err(ApiError::conflict(
                "video_not_ready",
                format!("Video content is not available: the video is {}.", state.api_status()),
            ));
        }
    };
    let (key, content_type) = variant_key(outputs, variant)?;
    let on_err = |e| blob_error(job.id.as_str(), e);
    // Checked even before a redirect: a swept video is `video_expired` here,
    // not a storage error page at the other end of the redirect.
    let size = state.blob.size(key).await.map_err(on_err)?;
    if state.downloads.redirect
        && let Some(location) = signed_location(&state, key).await?
    {
        return redirect(&location);
    }
    let blob = Blob {
        key,
        content_type,
        size,
    };
    serve(&state, &blob, &headers, "private, max-age=3600", on_err).await
}

/// The blob key and content type of a `variant` of the outputs.
fn variant_key<'a>(outputs: &'a Outputs, variant: &str) -> ApiResult<(&'a str, &'static str)> {
    match variant {
        "video" => Ok((&outputs.video_key, "video/mp4")),
        "thumbnail" => Ok((&outputs.thumbnail_key, "image/jpeg")),
        "spritesheet" => Ok((&outputs.spritesheet_key, "image/jpeg")),
        _ => Err(ApiError::invalid(
            "variant",
            "invalid_value",
            "'variant' must be one of 'video', 'thumbnail', 'spritesheet'.",
        )),
    }
}

/// The blob store's own signed URL, else one for `/files`, else `None`
/// (nothing can sign: the caller streams the bytes instead).
async fn signed_location(state: &AppState, key: &str) -> ApiResult<Option<String>> {
    let ttl = state.downloads.ttl;
    let url = state
        .blob
        .signed_url(key, ttl)
        .await
        .map_err(|e| ApiError::blob("signing a download URL", e))?;
    Ok(url.or_else(|| file_url(&state.downloads, key, state.clock.now_ms())))
}

/// A `/files` URL for `key` valid for the configured lifetime, or `None`
/// without a signing key.
pub fn file_url(downloads: &Downloads, key: &str, now_ms: i64) -> Option<String> {
    let signing_key = downloads.signing_key.as_deref()?;
    let expires = unix_secs(now_ms).saturating_add(downloads.ttl.as_secs().max(1));
    let base = downloads.public_base_url.as_deref().unwrap_or("").trim_end_matches('/');
    Some(format!("{base}{}", signed_file_path(signing_key, key, expires)?))
}

/// `/files/{key}?expires=..&sig=..`: the path and query of a URL valid until
/// `expires` (Unix seconds). Blob keys need no escaping (see
/// `videogen_blob::validate_key`).
pub fn signed_file_path(signing_key: &[u8], key: &str, expires: u64) -> Option<String> {
    let sig = hex::encode(file_mac(signing_key, key, expires)?.finalize().into_bytes());
    Some(format!("/files/{key}?expires={expires}&sig={sig}"))
}

/// `None` only if HMAC refused the key, which it does for no length.
fn file_mac(signing_key: &[u8], key: &str, expires: u64) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(signing_key).ok()?;
    mac.update(SIGNING_CONTEXT);
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    Some(mac)
}

fn redirect(location: &str) -> ApiResult<Response> {
    let location = HeaderValue::from_str(location).map_err(|_| ApiError::internal())?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    // The URL expires: a cached redirect would outlive it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn unix_secs(now_ms: i64) -> u64 {
    u64::try_from(now_ms.div_euclid(1000)).unwrap_or(0)
}

/// `GET /files/{*key}`: serves a blob to whoever holds a valid, unexpired
/// signature for it.
pub async fn signed_file(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Some(signing_key) = state.downloads.signing_key.as_deref() else {
        return Err(ApiError::route_not_found());
    };
    let Ok(Path(key)) = key else {
        return Err(invalid_signature());
    };
    let expires = verify_file_query(signing_key, &key, q.as_deref())?;
    let now_ms = state.clock.now_ms();
    if i128::from(now_ms) > i128::from(expires) * 1000 {
        return Err(ApiError::forbidden("").with_code(
            "url_expired",
            "This download URL has expired; request the content again for a fresh one.",
        ));
    }
    let on_err = |e| match e {
        BlobError::NotFound(_) => {
            ApiError::route_not_found().with_code("file_not_found", "This file is no longer available.")
        }
        // A key no object can have (validly signed, so only by whoever holds
        // the signing key): the request's fault, not the server's.
        e @ BlobError::InvalidKey { .. } => ApiError::bad_request("invalid_file_key", e.to_string()),
        other => ApiError::blob("blob read", other),
    };
    let size = state.blob.size(&key).await.map_err(on_err)?;
    let blob = Blob {
        key: &key,
        content_type: content_type_of(&key),
        size,
    };
    let remaining_secs = expires.saturating_sub(unix_secs(now_ms));
    let cache = format!("private, max-age={}", remaining_secs.min(FILE_CACHE_SECS_MAX));
    serve(&state, &blob, &headers, &cache, on_err).await
}

/// The URL's expiry if its signature is valid for `key`.
fn verify_file_query(signing_key: &[u8], key: &str, query: Option<&str>) -> ApiResult<u64> {
    let (expires, sig) = file_query(query).ok_or_else(invalid_signature)?;
    file_mac(signing_key, key, expires)
        .ok_or_else(invalid_signature)?
        .verify_slice(&sig)
        .map_err(|_| invalid_signature())?;
    Ok(expires)
}

/// `expires` and `sig`, each exactly once and nothing else.
fn file_query(query: Option<&str>) -> Option<(u64, Vec<u8>)> {
    let (mut expires, mut sig) = (None, None);
    for (k, v) in form_urlencoded::parse(query?.as_bytes()) {
        match k.as_ref() {
            "expires" if expires.is_none() => expires = Some(v.parse::<u64>().ok()?),
            "sig" if sig.is_none() => sig = Some(hex::decode(v.as_bytes()).ok()?),
            _ => return None,
        }
    }
    Some((expires?, sig?))
}

fn invalid_signature() -> ApiError {
    ApiError::forbidden("").with_code(
        "invalid_signature",
        "This download URL's signature is missing or invalid.",
    )
}

/// Content type from the extension of keys this system writes.
fn content_type_of(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("mp4") => "video/mp4",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// A blob about to be served.
struct Blob<'a> {
    key: &'a str,
    content_type: &'static str,
    size: u64,
}

/// The blob's bytes, or the one range the request asks for.
async fn serve(
    state: &AppState,
    blob: &Blob<'_>,
    headers: &HeaderMap,
    cache_control: &str,
    on_err: impl Fn(BlobError) -> ApiError,
) -> ApiResult<Response> {
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => parse_range(r, blob.size)?,
    };
    let (status, bytes) = match &range {
        None => (StatusCode::OK, state.blob.get(blob.key).await),
        Some(r) => (
            StatusCode::PARTIAL_CONTENT,
            state.blob.get_range(blob.key, r.clone()).await,
        ),
    };
    let bytes = bytes.map_err(on_err)?;
    let mut resp = Response::new(Body::from(bytes.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(blob.content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(cache_control) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}-{}\"", key_tag(blob.key), blob.size)) {
        h.insert(header::ETAG, v);
    }
    if let Some(r) = range {
        let v = format!("bytes {}-{}/{}", r.start, r.end - 1, blob.size);
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// Content of a job that says completed but whose bytes are gone (a sweep in
/// progress) reads as expired; anything else is infrastructure trouble.
fn blob_error(id: &str, e: BlobError) -> ApiError {
    match e {
        BlobError::NotFound(_) => {
            ApiError::video_not_found(id).with_code("video_expired", "This video's content is no longer available.")
        }
        other => ApiError::blob("blob read", other),
    }
}

/// Stable per-object tag: the attempt-scoped key never gets new bytes.
fn key_tag(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Parses one `bytes=` range against `size` (RFC 9110 §14.1.2). Multiple
/// ranges are answered with the whole body (allowed by the RFC).
pub fn parse_range(header: &str, size: u64) -> ApiResult<Option<Range<u64>>> {
    let unsatisfiable =
        || ApiError::range_not_satisfiable(format!("Range '{header}' is not satisfiable for {size} bytes."));
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n = byte_pos(b).ok_or_else(unsatisfiable)?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        size.saturating_sub(n)..size
    } else {
        let start = byte_pos(a).ok_or_else(unsatisfiable)?;
        let end_incl = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            byte_pos(b).ok_or_else(unsatisfiable)?
        };
        if start >= size || end_incl < start {
            return Err(unsatisfiable());
        }
        start..end_incl.min(size - 1) + 1
    };
    Ok(Some(range))
}

/// A position of a `Range`: decimal digits only (`1*DIGIT`, no sign),
/// saturating, so a position past `u64::MAX` still means "past the end"
/// (`bytes=0-99999999999999999999` is the whole body, not a 416).
fn byte_pos(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| {
        s.bytes()
            .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn file_urls_carry_key_expiry_and_signature() {
        let mut d = Downloads {
            signing_key: Some(Arc::from(&b"k"[..])),
            ttl: std::time::Duration::from_secs(60),
            ..Downloads::default()
        };
        let url = file_url(&d, "outputs/ab/v/1/video.mp4", 1_000_999).unwrap();
        assert!(
            url.starts_with("/files/outputs/ab/v/1/video.mp4?expires=1060&sig="),
            "{url}"
        );
        let (_, sig) = url.split_once("&sig=").unwrap();
        assert_eq!(sig.len(), 64);
        assert_eq!(
            verify_file_query(b"k", "outputs/ab/v/1/video.mp4", url.split_once('?').map(|(_, q)| q)).unwrap(),
            1060
        );
        d.public_base_url = Some("https://videos.example.com/".into());
        let url = file_url(&d, "a/b.jpg", 0).unwrap();
        assert!(
            url.starts_with("https://videos.example.com/files/a/b.jpg?expires=60&sig="),
            "{url}"
        );
        d.signing_key = None;
        assert_eq!(file_url(&d, "a/b.jpg", 0), None);
    }

    #[test]
    fn file_queries_need_exactly_expires_and_sig() {
        assert_eq!(file_query(Some("expires=5&sig=00ff")), Some((5, vec![0, 255])));
        assert_eq!(file_query(Some("sig=00ff&expires=5")), Some((5, vec![0, 255])));
        for bad in [
            "",
            "expires=5",
            "sig=00",
            "expires=-1&sig=00",
            "expires=5&sig=0g",
            "expires=5&sig=00&x=1",
        ] {
            assert_eq!(file_query(Some(bad)), None, "{bad}");
        }
        assert_eq!(file_query(Some("expires=5&expires=6&sig=00")), None);
        assert_eq!(file_query(None), None);
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_of("outputs/ab/v/1/video.mp4"), "video/mp4");
        assert_eq!(content_type_of("outputs/ab/v/1/thumbnail.jpg"), "image/jpeg");
        assert_eq!(content_type_of("inputs/ab/v/reference.png"), "image/png");
        assert_eq!(
            content_type_of("checkpoints/ab/v/1/000001.ckpt"),
            "application/octet-stream"
        );
        assert_eq!(content_type_of("noext"), "application/octet-stream");
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), Some(0..100));
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), Some(900..1000));
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), Some(900..1000));
        assert_eq!(parse_range("bytes=990-5000", 1000).unwrap(), Some(990..1000));
        assert_eq!(parse_range("bytes=-5000", 1000).unwrap(), Some(0..1000));
        // Positions past u64::MAX are past the end, not invalid.
        assert_eq!(
            parse_range("bytes=0-18446744073709551616", 1000).unwrap(),
            Some(0..1000)
        );
        assert_eq!(parse_range("bytes=-99999999999999999999", 1000).unwrap(), Some(0..1000));
        assert_eq!(parse_range("bytes=-18446744073709551616", 1).unwrap(), Some(0..1));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 1000).unwrap(), None);
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=x-1",
            "bytes=-0",
            "bytes=-",
            "bytes=1",
            "bytes=+5-",
            "bytes=5-+9",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(
                parse_range(bad, 1000).unwrap_err().status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{bad}"
            );
        }
    }
}
