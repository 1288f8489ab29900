//! Host failures, and how each reads at the [`ModelError`] seam.

use videogen_model::ModelError;

/// Why a call to a model host failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host answered with an error (its `code`, `message`, `param`).
    #[error("{code}: {message}")]
    Remote {
        code: String,
        message: String,
        param: Option<String>,
    },
    /// The host broke the protocol; nothing it sends can be trusted.
    #[error("model host protocol error: {0}")]
    Protocol(String),
    /// The socket failed or the process is gone.
    #[error("model host exited: {0}")]
    Exited(String),
    /// No answer in time; the host is presumed stuck.
    #[error("model host did not answer {op} within {secs} s")]
    Timeout { op: String, secs: u64 },
    /// The host could not be started (interpreter missing, bad command).
    #[error("model host could not start: {0}")]
    Start(String),
}

impl HostError {
    pub(crate) fn io(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => HostError::Timeout {
                op: "a reply".into(),
                secs: 0,
            },
            UnexpectedEof | BrokenPipe | ConnectionReset => {
                HostError::Exited("the host closed the connection (it exited or was killed)".into())
            }
            _ => HostError::Exited(e.to_string()),
        }
    }

    /// The process must be replaced: it broke, died or hung.
    pub fn is_broken(&self) -> bool {
        matches!(
            self,
            HostError::Protocol(_) | HostError::Exited(_) | HostError::Timeout { .. }
        )
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            HostError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<HostError> for ModelError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Remote { code, message, param } => {
                let message = match param {
                    Some(p) => format!("{message} (param {p})"),
                    None => message,
                };
                match code.as_str() {
                    "invalid_request" => ModelError::InvalidRequest(message),
                    "corrupt_checkpoint" => ModelError::CorruptCheckpoint(message),
                    "checkpoint_mismatch" => ModelError::CheckpointMismatch(message),
                    "load_failed" => ModelError::Unavailable(message),
                    _ => ModelError::Internal(format!("{code}: {message}")),
                }
            }
            HostError::Start(m) => ModelError::Unavailable(format!("model host could not start: {m}")),
            // The attempt in flight is lost with the process; it is retried
            // and resumes from its checkpoint while the host restarts.
            other => ModelError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_codes_map_onto_the_model_seam() {
        let remote = |code: &str| HostError::Remote {
            code: code.into(),
            message: "m".into(),
            param: Some("num_inference_steps".into()),
        };
        let cases = [
            ("invalid_request", "invalid_request"),
            ("corrupt_checkpoint", "corrupt_checkpoint"),
            ("checkpoint_mismatch", "checkpoint_mismatch"),
            ("load_failed", "model_unavailable"),
            ("out_of_memory", "internal"),
            ("anything", "internal"),
        ];
        for (host, model) in cases {
            let e = ModelError::from(remote(host));
            assert_eq!(e.code(), model, "{host}");
        }
        let e = ModelError::from(remote("invalid_request"));
        assert!(e.to_string().contains("num_inference_steps"));
        assert!(ModelError::from(HostError::Exited("eof".into())).is_retryable());
        assert!(
            HostError::Timeout {
                op: "step".into(),
                secs: 1
            }
            .is_broken()
        );
        assert!(!remote("internal").is_broken());
    }
}
