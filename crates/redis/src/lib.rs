//! Redis as an optional accelerator for multi-node deployments.
//!
//! The durable store (SQLite/PostgreSQL) stays the source of truth for jobs and
//! their event logs. Redis only makes things faster across API nodes:
//!
//! - [`RedisFanout`] carries "job X changed" wake-ups between nodes over pub/sub,
//!   so an SSE stream on node A wakes up when a worker reports through node B.
//! - [`RedisRateLimiter`] shares rate-limit counters between nodes.
//!
//! Losing Redis (stopped, partitioned, `FLUSHALL`) therefore never loses a job or
//! an event and never fails a request: wake-ups degrade to the listeners' own
//! polling, and rate limits degrade to per-node counting.

mod backoff;
mod error;
mod fanout;
mod link;
mod publisher;
mod redis_limiter;
mod subscriber;
mod telemetry;
mod url;

pub use error::RedisError;
pub use fanout::{FanoutConfig, FanoutMsg, FanoutStats, RedisFanout};
pub use redis_limiter::{RedisRateLimiter, RedisRateLimiterConfig};
pub use url::RedisUrl;
