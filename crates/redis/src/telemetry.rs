//! Metric names in one place, so dashboards and code cannot drift apart.

/// One failed Redis round trip (connect, command, timeout) for `op`:
/// "publish", "subscribe", "ratelimit" or "decode".
pub(crate) fn count_error(op: &'static str) {
    metrics::counter!("videogen_redis_errors_total", "op" => op).increment(1);
}

/// Wake-ups that never reached Redis (queue full or Redis down). Harmless for
/// correctness (listeners also poll the store), but a rising rate means
/// cross-node wake-ups are slow.
pub(crate) fn count_publish_dropped(n: u64) {
    metrics::counter!("videogen_redis_publish_dropped_total").increment(n);
}

/// Rate-limit checks answered by the per-node fallback because Redis was
/// unreachable; while it rises, limits hold per node rather than cluster-wide.
pub(crate) fn count_ratelimit_fallback() {
    metrics::counter!("videogen_redis_ratelimit_fallback_total").increment(1);
}
