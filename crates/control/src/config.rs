//! Server-side runtime knobs (leases, retries, housekeeping, retention).
//! Worker knobs are `runner::WorkerConfig`. Names carry their unit last.

use std::time::Duration;
use videogen_core::Tier;
use videogen_sched::RetryBackoff;

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
    /// The wait before a failed job's next attempt (exponential, jittered).
    pub retry_backoff: RetryBackoff,
    /// How often a node whose blob store refuses writes probes it.
    pub storage_probe_interval: Duration,
    /// How long a dead letter keeps its checkpoints (a re-drive within it
    /// resumes; after it, the bytes go and a re-drive starts over).
    pub dead_letter_checkpoint_retention: Duration,
    /// Blobs younger than this are never swept as orphans: their job row
    /// may not be committed yet (an input uploaded before its submit).
    pub orphan_grace: Duration,
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
            retry_backoff: RetryBackoff::default(),
            storage_probe_interval: Duration::from_secs(1),
            dead_letter_checkpoint_retention: Duration::from_secs(7 * 24 * 3600),
            orphan_grace: Duration::from_secs(3600),
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
