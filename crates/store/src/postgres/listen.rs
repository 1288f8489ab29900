//! Wake-ups across nodes over PostgreSQL `LISTEN/NOTIFY`.
//!
//! The job-event trigger (migrations 0003–0005) notifies `videogen_runnable`
//! when jobs become runnable and `videogen_changed` when they have new
//! events, once per statement. Notifications are delivered only after their
//! transaction commits, and carry only job ids (comma-separated, up to 100):
//! a listener re-reads the store, so a lost notification (for instance
//! while the listening connection reconnects) costs latency, never data. After
//! each reconnect the listener says [`Wakeup::Resync`] so its consumer can
//! re-read what it may have missed.

pub use videogen_core::store::Wakeup;

use super::PgStore;
use crate::error;
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
        let mut listener = PgListener::connect_with(&self.backend.pool).await.map_err(error::pg)?;
        listener
            .listen_all([RUNNABLE_CHANNEL, CHANGED_CHANNEL])
            .await
            .map_err(error::pg)?;
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
        let wakeups = match received {
            Ok(Some(n)) => {
                backoff = Duration::from_millis(50);
                if !healthy {
                    tracing::info!("LISTEN connection re-established");
                    healthy = true;
                }
                wakeups(n.channel(), n.payload())
            }
            // The connection dropped; the next call reconnects and listens again.
            Ok(None) => vec![Wakeup::Resync],
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    healthy = false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                vec![Wakeup::Resync]
            }
        };
        for wakeup in wakeups {
            if tx.send(wakeup).await.is_err() {
                return;
            }
        }
    }
}

/// The wake-ups of one notification: its payload is the comma-separated ids
/// of the jobs one statement changed (migration 0004). Anything that is not
/// an id is skipped.
fn wakeups(channel: &str, payload: &str) -> Vec<Wakeup> {
    payload
        .split(',')
        .filter_map(VideoId::parse)
        .map(|id| {
            if channel == RUNNABLE_CHANNEL {
                Wakeup::Runnable(id)
            } else {
                Wakeup::Changed(id)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_of_several_ids_wakes_each_and_skips_what_is_not_an_id() {
        let a = VideoId::parse("video_0195e6a2b3c47d8e9f0a1b2c3d4e5f60").unwrap();
        let b = VideoId::parse("video_0195e6a2b3c47d8e9f0a1b2c3d4e5f61").unwrap();
        let payload = format!("{a},nonsense,{b},");
        assert_eq!(
            wakeups(RUNNABLE_CHANNEL, &payload),
            vec![Wakeup::Runnable(a.clone()), Wakeup::Runnable(b.clone())]
        );
        assert_eq!(wakeups(CHANGED_CHANNEL, a.as_str()), vec![Wakeup::Changed(a)]);
        assert!(wakeups(CHANGED_CHANNEL, "").is_empty());
    }
}
