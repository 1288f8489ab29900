//! Drains the publish queue into Redis, off the callers' path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::fanout::{Counters, Wakeup};
use crate::link::Link;

/// Wake-ups sent per round trip; pipelining keeps up with bursts (a job
/// finishing emits several events at once) without one RTT per event.
const MAX_BATCH: usize = 64;

/// Runs until every sender is gone (the fanout was dropped).
pub(crate) async fn run(
    link: Link,
    channel: String,
    mut queue: mpsc::Receiver<Wakeup>,
    counters: Arc<Counters>,
    op_timeout: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let n = batch.len() as u64;
        // Sending stale wake-ups after an outage is pointless (subscribers
        // resync on reconnect), so a batch that cannot go now is dropped.
        match publish_batch(&link, &channel, &batch, op_timeout).await {
            Ok(()) => counters.published(n),
            Err(()) => counters.dropped(n),
        }
        batch.clear();
    }
}

async fn publish_batch(link: &Link, channel: &str, batch: &[Wakeup], op_timeout: Duration) -> Result<(), ()> {
    let Some(mut conn) = link.connection().await else {
        return Err(());
    };
    let mut pipe = redis::pipe();
    for wakeup in batch {
        // Two strings always serialize; a wake-up that did not would only
        // leave its subscribers on their poll fallback.
        let Ok(payload) = serde_json::to_string(wakeup) else {
            continue;
        };
        pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
    }
    match tokio::time::timeout(op_timeout, pipe.exec_async(&mut conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            link.record_failure(&err);
            Err(())
        }
        Err(_elapsed) => {
            link.record_failure(&"PUBLISH timed out");
            Err(())
        }
    }
}
