//! Keeps one pub/sub subscription alive forever and forwards what it hears.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::Client;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Counters, FanoutConfig, FanoutMsg, Wakeup};
use crate::telemetry;

/// Why a subscription ended.
enum Ended {
    Stopped,
    Lost(String),
}

/// Connect, subscribe, forward; on any loss wait a capped exponential backoff
/// and start over. Runs until `stop` is cancelled.
pub(crate) async fn run(
    client: Client,
    channel: String,
    events: broadcast::Sender<FanoutMsg>,
    counters: Arc<Counters>,
    config: FanoutConfig,
    stop: CancellationToken,
) {
    let mut backoff = config.backoff();
    // Logged once per change (not per retry), so an outage is two log lines.
    let mut down_logged = false;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = connect(&client, &channel, config.op_timeout) => attempt,
        };
        match attempt {
            Ok((sink, stream)) => {
                backoff.reset();
                tracing::info!(%channel, "redis subscription established");
                // Counted before the Resync goes out, so a listener that got
                // it sees the count.
                counters.subscribed();
                // Anything published while we were not subscribed is lost.
                let _ = events.send(FanoutMsg::Resync);
                match forward(sink, stream, &events, &counters, &config, &stop).await {
                    Ended::Stopped => return,
                    Ended::Lost(why) => {
                        counters.subscription_failed();
                        telemetry::count_error("subscribe");
                        tracing::warn!(%channel, error = %why, "redis subscription lost; reconnecting");
                        // Failed reconnects until the next success stay quiet.
                        down_logged = true;
                    }
                }
            }
            Err(why) => {
                counters.subscription_failed();
                telemetry::count_error("subscribe");
                if !down_logged {
                    tracing::warn!(%channel, error = %why, "redis subscription unavailable; retrying");
                    down_logged = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn connect(client: &Client, channel: &str, op_timeout: Duration) -> Result<(PubSubSink, PubSubStream), String> {
    let subscribed = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(op_timeout, subscribed).await {
        Ok(Ok(halves)) => Ok(halves),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_elapsed) => Err("connect/SUBSCRIBE timed out".to_owned()),
    }
}

async fn forward(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    events: &broadcast::Sender<FanoutMsg>,
    counters: &Counters,
    config: &FanoutConfig,
    stop: &CancellationToken,
) -> Ended {
    let mut health = tokio::time::interval(config.health_check_interval.max(Duration::from_millis(10)));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.reset(); // the first tick would fire at once; we just subscribed
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ended::Lost("connection closed".to_owned());
                };
                match serde_json::from_slice::<Wakeup>(msg.get_payload_bytes()) {
                    // No listeners is fine.
                    Ok(Wakeup { job, kind }) => drop(events.send(FanoutMsg::Changed { job, kind })),
                    Err(err) => {
                        // Someone else publishing on our channel; not worth a reconnect.
                        telemetry::count_error("decode");
                        tracing::debug!(error = %err, "ignoring malformed wake-up");
                    }
                }
            }
            _ = health.tick() => {
                match tokio::time::timeout(config.op_timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => counters.health_checked(),
                    Ok(Err(err)) => return Ended::Lost(format!("PING failed: {err}")),
                    Err(_elapsed) => return Ended::Lost("PING timed out".to_owned()),
                }
            }
        }
    }
}
