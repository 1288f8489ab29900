//! Cross-node wake-ups over Redis, when `--redis-url` is set: this node's
//! "job changed" signals go out through [`RedisFanout`], and the other nodes'
//! come in to this node's [`JobBus`] (never back out, or they would loop).
//! Without Redis, PostgreSQL's NOTIFY carries them (see `videogen_store`'s
//! `pg_listen`); either way the store stays the source of truth and a lost
//! signal only delays a stream until its poll fallback.

use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use videogen_control::JobBus;
use videogen_control::bus::RemoteBus;
use videogen_core::VideoId;
use videogen_redis::{FanoutMsg, RedisFanout};

/// [`RemoteBus`] over Redis pub/sub.
pub struct RedisBus(pub RedisFanout);

impl RemoteBus for RedisBus {
    fn publish(&self, id: &VideoId) {
        // The kind is not needed by listeners: they re-read the event log.
        self.0.publish(id.as_str(), "changed");
    }
}

/// Relays other nodes' signals to this node's listeners until `shutdown`.
pub async fn relay(fanout: RedisFanout, bus: JobBus, shutdown: CancellationToken) {
    let mut rx = fanout.subscribe();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => m,
        };
        match msg {
            Ok(FanoutMsg::Changed { job, .. }) => {
                if let Some(id) = VideoId::parse(&job) {
                    bus.notify_local(&id);
                }
            }
            // Missed signals: the streams' poll fallback re-reads within a second.
            Ok(FanoutMsg::Resync) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// A [`JobBus`] that also publishes through `fanout` when there is one.
pub fn bus(fanout: Option<&RedisFanout>) -> JobBus {
    match fanout {
        Some(f) => JobBus::with_remote(Arc::new(RedisBus(f.clone()))),
        None => JobBus::default(),
    }
}
