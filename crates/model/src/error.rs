//! The one error type of the model seam.

/// Why a model call failed. Callers branch on [`ModelError::is_retryable`]
/// and report [`ModelError::code`]; the message is for humans.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The request itself is unusable; retrying it will fail the same way.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Checkpoint bytes are damaged: bad magic, length or CRC.
    #[error("corrupt checkpoint: {0}")]
    CorruptCheckpoint(String),
    /// A well-formed checkpoint that belongs to another model id/version,
    /// format version or request.
    #[error("checkpoint mismatch: {0}")]
    CheckpointMismatch(String),
    /// The model cannot run on this worker now: its weights failed to load,
    /// or its host process is down and restarting. Not the job's fault: the
    /// job goes back uncharged, and the worker stops taking jobs for the
    /// model until it loads.
    #[error("model unavailable: {0}")]
    Unavailable(String),
    /// Anything else (for real models: OOM, driver errors, ...).
    #[error("internal model error: {0}")]
    Internal(String),
}

impl ModelError {
    /// Whether running the same call again may succeed. Only internal
    /// failures and an unavailable model are transient; a bad request or checkpoint stays bad (the
    /// caller may still restart from scratch without the checkpoint).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Internal(_) | ModelError::Unavailable(_))
    }

    /// Stable snake_case identifier for logs, metrics and job errors.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::InvalidRequest(_) => "invalid_request",
            ModelError::CorruptCheckpoint(_) => "corrupt_checkpoint",
            ModelError::CheckpointMismatch(_) => "checkpoint_mismatch",
            ModelError::Unavailable(_) => "model_unavailable",
            ModelError::Internal(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retryability() {
        let cases = [
            (ModelError::InvalidRequest("x".into()), "invalid_request", false),
            (ModelError::CorruptCheckpoint("x".into()), "corrupt_checkpoint", false),
            (ModelError::CheckpointMismatch("x".into()), "checkpoint_mismatch", false),
            (ModelError::Unavailable("x".into()), "model_unavailable", true),
            (ModelError::Internal("x".into()), "internal", true),
        ];
        for (e, code, retry) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.is_retryable(), retry);
            assert!(e.to_string().contains('x'));
        }
    }
}
