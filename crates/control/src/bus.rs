//! "Job X changed" signals within one process, so SSE streams wake up at once
//! instead of polling. Signals carry no data: listeners re-read the store's
//! event log, which stays the source of truth (a lagging listener loses nothing).

use std::sync::Arc;
use tokio::sync::broadcast;
use videogen_core::VideoId;

/// Bounded: a slow listener lags (and re-reads) instead of growing memory.
const BUS_CAPACITY: usize = 4096;

/// Carries this node's signals to the other nodes (e.g. Redis pub/sub).
/// Best effort and non-blocking: a lost signal only delays a stream until
/// its poll fallback.
pub trait RemoteBus: Send + Sync + 'static {
    fn publish(&self, id: &VideoId);
}

#[derive(Clone)]
pub struct JobBus {
    tx: broadcast::Sender<VideoId>,
    remote: Option<Arc<dyn RemoteBus>>,
}

impl std::fmt::Debug for JobBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBus")
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

impl Default for JobBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BUS_CAPACITY).0,
            remote: None,
        }
    }
}

impl JobBus {
    /// A bus whose signals also go to the other nodes through `remote`.
    pub fn with_remote(remote: Arc<dyn RemoteBus>) -> Self {
        Self {
            remote: Some(remote),
            ..Self::default()
        }
    }

    /// Signals a change made by this node, here and on the other nodes.
    pub fn notify(&self, id: &VideoId) {
        self.notify_local(id);
        if let Some(r) = &self.remote {
            r.publish(id);
        }
    }

    /// Signals a change heard from another node, to this node's listeners only.
    pub fn notify_local(&self, id: &VideoId) {
        // No listeners is fine.
        let _ = self.tx.send(id.clone());
    }
    pub fn subscribe(&self) -> broadcast::Receiver<VideoId> {
        self.tx.subscribe()
    }
}
