use thiserror::Error;

/// Errors from setting up a Redis client. Only construction can fail: once
/// built, every operation degrades (drops, falls back) instead of erroring,
/// because Redis is never allowed to fail a request.
#[derive(Debug, Error)]
pub enum RedisError {
    /// The URL could not be parsed; the URL itself is not echoed because it may
    /// carry a password.
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] redis::RedisError),
    /// Background tasks need a Tokio runtime to be spawned on.
    #[error("Redis clients must be created inside a Tokio runtime")]
    NoRuntime,
}
