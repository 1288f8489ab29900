//! `/readyz`: whether this node can take work now.
//!
//! Ready means the database takes a *write* from this node within a short
//! deadline (a read alone passes on a full disk, where every submit
//! fails), and dispatch is not paused because the blob store refuses
//! writes. A load balancer or Kubernetes probe takes the node out while
//! either holds, and puts it back without a restart when both clear.
//!
//! The probe is a one-row upsert (`MaintenanceStore::probe_write`); its
//! outcome is kept for [`PROBE_EVERY`], and concurrent callers share one
//! probe, so an unauthenticated flood of `/readyz` costs the database at
//! most one write per interval.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use videogen_core::Clock;
use videogen_core::store::Store;

/// How long a probe's outcome stands.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as failed: readiness must
/// answer quickly even when the database hangs.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The write probe of one node, shared by its `/readyz` callers.
#[derive(Debug)]
pub struct Readiness {
    node: String,
    probe_every: Duration,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new("default")
    }
}

impl Readiness {
    /// `node` names this node's probe row.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            probe_every: PROBE_EVERY,
            last: Mutex::new(None),
        }
    }

    /// Keeps a probe's outcome for `every` instead of [`PROBE_EVERY`].
    pub fn with_probe_every(mut self, every: Duration) -> Self {
        self.probe_every = every;
        self
    }

    /// Whether the database took this node's write, probing at most once
    /// per [`PROBE_EVERY`] (or as set); the error says why not.
    pub async fn database(&self, store: &Arc<dyn Store>, clock: &Arc<dyn Clock>) -> Result<(), String> {
        // Held across the probe: callers that arrive meanwhile wait for it.
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = last.as_ref()
            && at.elapsed() < self.probe_every
        {
            return outcome.clone();
        }
        let probe = store.probe_write(&self.node, clock.now_ms());
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("database refuses writes: {e}")),
            Err(_) => Err(format!("database write probe took over {PROBE_TIMEOUT:?}")),
        };
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }
}
