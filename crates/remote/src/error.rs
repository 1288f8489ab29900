//! [`RemoteError`]: what went wrong talking to the upstream, and how each
//! case reads as a [`ModelError`] (who is at fault, whether a retry helps).

use std::time::Duration;

use videogen_media::DecodeError;
use videogen_model::ModelError;

/// A failure of the remote-openai adapter.
///
/// | case | as [`ModelError`] | why |
/// |---|---|---|
/// | [`Config`](Self::Config), [`Connect`](Self::Connect), [`Unauthorized`](Self::Unauthorized), [`Misconfigured`](Self::Misconfigured) | `Unavailable` (retryable; the model is marked unavailable with backoff) | the upstream cannot serve anyone from here: not the job's fault |
/// | [`Rejected`](Self::Rejected) (a 4xx to create) | `InvalidRequest` | the upstream refuses this request; it would refuse it again |
/// | [`JobFailed`](Self::JobFailed) | `InvalidRequest` for a 4xx-like or content-policy code, else `Internal` | see [`crate::failure_is_retryable`] |
/// | [`Timeout`](Self::Timeout), [`Deadline`](Self::Deadline) | `Internal` (retryable); the upstream job is cancelled | a hung request or a stuck job may well go through next time |
/// | [`Status`](Self::Status), [`Transport`](Self::Transport), [`Protocol`](Self::Protocol), [`RuntimeGone`](Self::RuntimeGone) | `Internal` | upstream 5xx/429, a lost job, a broken reply |
/// | [`NotVideo`](Self::NotVideo) | `Internal` | an HTML error page or a truncated body is what proxies and overloaded engines send; the job's attempt budget bounds the retries |
/// | [`TooLarge`](Self::TooLarge), [`Decode`](Self::Decode) of an unsupported codec or over the limits | `InvalidRequest` | the same request makes the same file again |
/// | [`Decode`](Self::Decode) of a damaged file | `Internal` | a corrupt transfer or a crashed muxer; a new attempt makes a new file |
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The adapter's configuration is unusable.
    #[error("remote-openai configuration: {0}")]
    Config(String),
    /// No connection (refused, DNS, TLS, connect timeout).
    #[error("cannot reach the upstream at {url}: {message}")]
    Connect { url: String, message: String },
    /// A request got no (complete) answer within `request_timeout`.
    #[error("upstream {what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The connection broke mid-request.
    #[error("upstream {what} failed: {message}")]
    Transport { what: String, message: String },
    /// 401 or 403: the API key is missing, wrong or lacks access.
    #[error("upstream refused the credentials for {what} ({status}): {message}")]
    Unauthorized { what: String, status: u16, message: String },
    /// 404 or 405 to create: no `/v1/videos` there, or no such model.
    #[error("upstream has no video endpoint or model for {what} ({status}): {message}")]
    Misconfigured { what: String, status: u16, message: String },
    /// A 4xx (other than the above, 408, 409 and 429) to create.
    #[error("upstream rejected the request ({status}{}): {message}", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// Any other unexpected HTTP status (5xx, 429, a poll's 404).
    #[error("upstream answered {status} to {what}: {message}")]
    Status { what: String, status: u16, message: String },
    /// A reply that is not the JSON it should be.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The upstream job ended `failed`.
    #[error("upstream job {id} failed{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    JobFailed {
        id: String,
        code: Option<String>,
        message: String,
        retryable: bool,
    },
    /// The job did not complete within `overall_timeout`.
    #[error("upstream job {id} not completed after {after:?} (last status {status}, progress {progress}%)")]
    Deadline {
        id: String,
        after: Duration,
        status: String,
        progress: u32,
    },
    /// `/content` answered something other than an MP4.
    #[error("upstream content of job {id} is not an MP4 video: {detail}")]
    NotVideo { id: String, detail: String },
    /// `/content` is larger than `max_download_bytes`, or the clip would
    /// decode to more than `max_decoded_bytes`.
    #[error("upstream video of job {id} is too large: {detail}")]
    TooLarge { id: String, detail: String },
    /// The MP4 does not decode.
    #[error("upstream video of job {id} does not decode: {source}")]
    Decode { id: String, source: DecodeError },
    /// The adapter's I/O runtime stopped (the process is shutting down).
    #[error("the remote-openai I/O runtime is gone")]
    RuntimeGone,
}

impl RemoteError {
    /// Whether the upstream as a whole is unusable from here, so the model
    /// should be reported unavailable for a while.
    pub fn marks_unavailable(&self) -> bool {
        matches!(
            self,
            RemoteError::Config(_)
                | RemoteError::Connect { .. }
                | RemoteError::Unauthorized { .. }
                | RemoteError::Misconfigured { .. }
        )
    }

    /// Whether running the job again may succeed (the [`ModelError`] it
    /// becomes says the same).
    pub fn is_retryable(&self) -> bool {
        ModelError::from(self.clone()).is_retryable()
    }
}

impl From<RemoteError> for ModelError {
    fn from(e: RemoteError) -> Self {
        let msg = format!("remote-openai: {e}");
        match &e {
            RemoteError::Config(_)
            | RemoteError::Connect { .. }
            | RemoteError::Unauthorized { .. }
            | RemoteError::Misconfigured { .. } => ModelError::Unavailable(msg),
            RemoteError::Rejected { .. } | RemoteError::TooLarge { .. } => ModelError::InvalidRequest(msg),
            RemoteError::JobFailed { retryable: false, .. } => ModelError::InvalidRequest(msg),
            RemoteError::Decode {
                source: DecodeError::UnsupportedCodec(_) | DecodeError::TooLarge(_),
                ..
            } => ModelError::InvalidRequest(msg),
            _ => ModelError::Internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_fault() {
        let s = String::new;
        let cases: Vec<(RemoteError, &str)> = vec![
            (RemoteError::Config(s()), "model_unavailable"),
            (RemoteError::Connect { url: s(), message: s() }, "model_unavailable"),
            (
                RemoteError::Unauthorized {
                    what: s(),
                    status: 401,
                    message: s(),
                },
                "model_unavailable",
            ),
            (
                RemoteError::Rejected {
                    status: 400,
                    code: None,
                    message: s(),
                },
                "invalid_request",
            ),
            (
                RemoteError::JobFailed {
                    id: s(),
                    code: None,
                    message: s(),
                    retryable: true,
                },
                "internal",
            ),
            (
                RemoteError::JobFailed {
                    id: s(),
                    code: Some("moderation_blocked".into()),
                    message: s(),
                    retryable: false,
                },
                "invalid_request",
            ),
            (
                RemoteError::Timeout {
                    what: s(),
                    after: Duration::from_secs(1),
                },
                "internal",
            ),
            (RemoteError::NotVideo { id: s(), detail: s() }, "internal"),
            (RemoteError::TooLarge { id: s(), detail: s() }, "invalid_request"),
            (
                RemoteError::Decode {
                    id: s(),
                    source: DecodeError::UnsupportedCodec("hvc1".into()),
                },
                "invalid_request",
            ),
            (
                RemoteError::Decode {
                    id: s(),
                    source: DecodeError::Bitstream(s()),
                },
                "internal",
            ),
        ];
        for (e, code) in cases {
            let unavailable = e.marks_unavailable();
            let m = ModelError::from(e.clone());
            assert_eq!(m.code(), code, "{e}");
            assert_eq!(unavailable, code == "model_unavailable", "{e}");
            assert_eq!(e.is_retryable(), code != "invalid_request", "{e}");
            assert!(m.to_string().contains("remote-openai"), "{m}");
        }
    }
}
