//! OpenAI's error envelope, the one way errors leave the API:
//! `{"error": {"message", "type", "param", "code"}}` with the status the SDKs
//! map to their exception classes (400 BadRequestError, 401
//! AuthenticationError, 404 NotFoundError, 409 ConflictError, ...).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use videogen_core::blob::BlobError;
use videogen_core::store::StoreError;

/// What a 503 tells a client to wait before trying again.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// `Retry-After`, in whole seconds, for 429 and 503 answers.
    pub retry_after_secs: Option<u64>,
    pub kind: &'static str,
    /// Stable machine-readable code; clients may switch on it.
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            retry_after_secs: None,
            kind,
            code,
            param: None,
            message: message.into(),
        }
    }

    /// Same status and type, a more specific code and message.
    pub fn with_code(mut self, code: &'static str, message: impl Into<String>) -> Self {
        self.code = code;
        self.message = message.into();
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: a request field is invalid.
    pub fn invalid(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message).with_param(param)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", message)
    }

    /// 404 for unknown ids and other tenants' ids alike: never reveal existence.
    pub fn video_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "video_not_found",
            format!("No video found with id '{id}'."),
        )
        .with_param("video_id")
    }

    pub fn model_not_found(id: &str) -> Self {
        let shown: String = id.chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model '{shown}' does not exist."),
        )
        .with_param("model")
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", code, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            message,
        )
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            message,
        )
    }

    pub fn range_not_satisfiable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalid_request_error",
            "range_not_satisfiable",
            message,
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "Unknown endpoint.",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "Method not allowed.",
        )
    }

    /// Infrastructure trouble that a retry may get past (database or storage
    /// unavailable): 503 with `Retry-After`. Logged; the client gets no
    /// internals.
    pub fn unavailable(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "{context}");
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "service_unavailable",
            "The service is temporarily unavailable; retry later.",
        );
        e.retry_after_secs = Some(UNAVAILABLE_RETRY_AFTER_SECS);
        e
    }

    /// A failure no retry fixes (corrupt data, a bug): 500. Logged; the
    /// client gets no internals.
    pub fn fault(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::internal()
    }

    /// A store error that is not the request's fault: 503 only when a retry
    /// can help.
    pub fn store(context: &str, e: StoreError) -> Self {
        if e.is_retryable() {
            Self::unavailable(context, &e)
        } else {
            Self::fault(context, &e)
        }
    }

    /// A blob store error other than a missing object (which callers answer
    /// themselves): 503 only when a retry can help.
    pub fn blob(context: &str, e: BlobError) -> Self {
        if e.is_retryable() {
            Self::unavailable(context, &e)
        } else {
            Self::fault(context, &e)
        }
    }

    /// The tenant's submission budget for this window is spent.
    pub fn rate_limited(reset_after: std::time::Duration, per_minute: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("Rate limit reached: at most {per_minute} video submissions per minute. Retry later."),
        );
        e.retry_after_secs = Some(reset_after.as_secs() + u64::from(reset_after.subsec_nanos() > 0));
        e
    }

    /// The tenant has as many event streams open as it may.
    pub fn too_many_streams(max: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too_many_streams",
            format!("At most {max} event streams may be open at once per organization; close one or poll instead."),
        );
        e.retry_after_secs = Some(UNAVAILABLE_RETRY_AFTER_SECS);
        e
    }

    /// The server is at a bound (concurrent requests, open streams): 503
    /// with `Retry-After`; nothing was done.
    pub fn overloaded(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", code, message);
        e.retry_after_secs = Some(UNAVAILABLE_RETRY_AFTER_SECS);
        e
    }

    /// The handler ran past its deadline. A create may or may not have
    /// landed: retry it with the same `Idempotency-Key`.
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "request_timeout",
            "The request took too long and was abandoned; retry it (with the same Idempotency-Key for creates).",
        )
    }

    /// A worker asked this node for work, but another node dispatches.
    pub fn not_leader() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "not_leader",
            "This node is not the scheduler leader; ask another server.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "Internal error.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::video_not_found(id.as_str()),
            StoreError::IllegalTransition(t) => {
                ApiError::conflict("invalid_state", format!("Video is {}: {t}.", t.from))
            }
            StoreError::IdempotencyConflict => ApiError::conflict(
                "idempotency_key_reused",
                "This Idempotency-Key was already used with a different request body.",
            ),
            other => ApiError::store("store error", other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_are_503_only_when_a_retry_can_help() {
        let e = ApiError::from(StoreError::unavailable("pool timed out"));
        assert_eq!(
            (e.status, e.code, e.retry_after_secs),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", Some(1))
        );
        let e = ApiError::from(StoreError::corrupt("state", "\"bogus\""));
        assert_eq!(
            (e.status, e.code, e.retry_after_secs),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", None)
        );
        let e = ApiError::blob("read", BlobError::unavailable("k", "connection reset"));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let invalid = BlobError::InvalidKey {
            key: "../x".into(),
            reason: "'..' segment".into(),
        };
        assert_eq!(
            ApiError::blob("read", invalid).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let e = ApiError::blob("read", BlobError::fault("k", "403 Forbidden"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        // The envelope carries no internals.
        let resp = ApiError::from(StoreError::fault("syntax error at or near SELEC")).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
