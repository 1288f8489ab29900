//! `GET /v1/videos/{id}/content`: the MP4, thumbnail or spritesheet, with
//! single-range `Range` support so players can seek.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use std::ops::Range;
use videogen_core::JobState;
use videogen_core::blob::BlobError;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{VideoPath, query_pairs, visible_job};
use crate::state::AppState;

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
    let (key, content_type) = match variant {
        "video" => (&outputs.video_key, "video/mp4"),
        "thumbnail" => (&outputs.thumbnail_key, "image/jpeg"),
        "spritesheet" => (&outputs.spritesheet_key, "image/jpeg"),
        _ => {
            return Err(ApiError::invalid(
                "variant",
                "invalid_value",
                "'variant' must be one of 'video', 'thumbnail', 'spritesheet'.",
            ));
        }
    };
    let size = state
        .blob
        .size(key)
        .await
        .map_err(|e| blob_error(&job.id.to_string(), e))?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => parse_range(r, size)?,
    };
    let (status, bytes) = match &range {
        None => (StatusCode::OK, state.blob.get(key).await),
        Some(r) => (StatusCode::PARTIAL_CONTENT, state.blob.get_range(key, r.clone()).await),
    };
    let bytes = bytes.map_err(|e| blob_error(&job.id.to_string(), e))?;
    let mut resp = Response::new(Body::from(bytes.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}-{}\"", key_tag(key), size)) {
        h.insert(header::ETAG, v);
    }
    if let Some(r) = range {
        let v = format!("bytes {}-{}/{}", r.start, r.end - 1, size);
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
        other => ApiError::unavailable("blob read", &other),
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
        let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
        let end_incl = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().map_err(|_| unsatisfiable())?
        };
        if start >= size || end_incl < start {
            return Err(unsatisfiable());
        }
        start..end_incl.min(size - 1) + 1
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), Some(0..100));
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), Some(900..1000));
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), Some(900..1000));
        assert_eq!(parse_range("bytes=990-5000", 1000).unwrap(), Some(990..1000));
        assert_eq!(parse_range("bytes=-5000", 1000).unwrap(), Some(0..1000));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 1000).unwrap(), None);
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=x-1",
            "bytes=-0",
            "bytes=-",
            "bytes=1",
        ] {
            assert_eq!(
                parse_range(bad, 1000).unwrap_err().status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{bad}"
            );
        }
    }
}
