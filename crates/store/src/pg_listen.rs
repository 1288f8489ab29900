//! Wake-ups across nodes over PostgreSQL `LISTEN/NOTIFY`.
//!
//! The job-event trigger (migration 0003) notifies `videogen_runnable` when a
//! job becomes runnable and `videogen_changed` on every event. Notifications
//! are delivered only after their transaction commits, and carry only the job
//! id: a listener re-reads the store, so a lost notification (for instance
//! while the listening connection reconnects) costs latency, never data. After
//! each reconnect the listener says [`Wakeup::Resync`] so its consumer can
//! re-read what it may have missed.

pub use videogen_core::store::Wakeup;

use crate::postgres::PgStore;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;
use videogen_core::VideoId;
use videogen_core::store::StoreError;

/// Channel of "a job became runnable" (submit, re-queue, re-drive).
pub const RUNNABLE_CHANNEL: &str = "videogen_runnable";
/// Channel of "a job has a new event".
pub const CHANGED_CHANNEL: &str = "videogen_changed";
/// Wake-ups buffered for a slow consumer; beyond that the listener waits
/// (PostgreSQL queues notifications for the connection meanwhile).
const BUFFER: usize = 4096;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl PgStore {
    /// Listens on both channels on a connection taken from the pool until
    /// the receiver is dropped, reconnecting with capped backoff.
    pub async fn listen(&self) -> Result<mpsc::Receiver<Wakeup>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("LISTEN connection: {e}")))?;
        listener
            .listen_all([RUNNABLE_CHANNEL, CHANGED_CHANNEL])
            .await
            .map_err(|e| StoreError::Backend(format!("LISTEN: {e}")))?;
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(pump(listener, tx));
        Ok(rx)
    }
}

async fn pump(mut listener: PgListener, tx: mpsc::Sender<Wakeup>) {
    let mut backoff = Duration::from_millis(50);
    let mut healthy = true;
    loop {
        let received = tokio::select! {
            // Nobody listens any more: return the connection to the pool (a
            // pool's `close` waits for it).
            _ = tx.closed() => return,
            r = listener.try_recv() => r,
        };
        let wakeup = match received {
            Ok(Some(n)) => {
                backoff = Duration::from_millis(50);
                if !healthy {
                    tracing::info!("LISTEN connection re-established");
                    healthy = true;
                }
                match VideoId::parse(n.payload()) {
                    Some(id) if n.channel() == RUNNABLE_CHANNEL => Wakeup::Runnable(id),
                    Some(id) => Wakeup::Changed(id),
                    None => continue,
                }
            }
            // The connection dropped; the next call reconnects and listens again.
            Ok(None) => Wakeup::Resync,
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    healthy = false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Wakeup::Resync
            }
        };
        if tx.send(wakeup).await.is_err() {
            return;
        }
    }
}
