//! Server-side runtime knobs (leases, retries, housekeeping, retention).
//! Worker knobs are `runner::WorkerConfig`. Names carry their unit last.

use std::time::Duration;
use videogen_core::Tier;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Lease time-to-live; heartbeats renew it every `lease_ttl / 3`.
    pub lease_ttl: Duration,
    /// Attempts before a job is dead-lettered (`failed`, `max_attempts_exceeded`).
    pub max_attempts: u32,
    /// How often the reaper and the retention sweeper run.
    pub housekeeping_interval: Duration,
    /// Retention of completed videos per tier.
    pub retention_free: Duration,
    pub retention_paid: Duration,
    pub retention_internal: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            max_attempts: 3,
            housekeeping_interval: Duration::from_secs(1),
            retention_free: ms(Tier::Free.default_retention_ms()),
            retention_paid: ms(Tier::Paid.default_retention_ms()),
            retention_internal: ms(Tier::Internal.default_retention_ms()),
        }
    }
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

impl RuntimeConfig {
    pub fn retention(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Free => self.retention_free,
            Tier::Paid => self.retention_paid,
            Tier::Internal => self.retention_internal,
        }
    }
    pub fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}
