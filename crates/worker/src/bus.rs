//! "Job X changed" signals within one process, so SSE streams wake up at once
//! instead of polling. Signals carry no data: listeners re-read the store's
//! event log, which stays the source of truth (a lagging listener loses nothing).

use tokio::sync::broadcast;
use videogen_core::VideoId;

/// Bounded: a slow listener lags (and re-reads) instead of growing memory.
const BUS_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct JobBus {
    tx: broadcast::Sender<VideoId>,
}

impl Default for JobBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }
}

impl JobBus {
    pub fn notify(&self, id: &VideoId) {
        // No listeners is fine.
        let _ = self.tx.send(id.clone());
    }
    pub fn subscribe(&self) -> broadcast::Receiver<VideoId> {
        self.tx.subscribe()
    }
}
