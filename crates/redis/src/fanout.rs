//! Cross-node "job X changed" wake-ups over Redis pub/sub.
//!
//! Wake-ups carry no data that matters for correctness: a listener that gets
//! one re-reads the job's event log from the store. So delivery is best-effort
//! on purpose. A publish that cannot reach Redis is dropped (and counted); a
//! subscriber that was disconnected emits [`FanoutMsg::Resync`] so its
//! listeners re-read everything they watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;
use crate::error::RedisError;
use crate::link::Link;
use crate::{publisher, subscriber, telemetry};

/// Bounded like the in-process JobBus: a slow listener lags (and should
/// resync) instead of growing memory.
const EVENTS_CAPACITY: usize = 4096;

/// What subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutMsg {
    /// Some node reported that `job` changed; `kind` is the event kind, a hint
    /// only (listeners re-read the store either way).
    Changed { job: String, kind: String },
    /// The subscription was (re)established and messages may have been missed
    /// before it: re-read every job you watch. Also sent after the first
    /// connect, since publishes before it were not seen either. Listeners
    /// should treat `broadcast::error::RecvError::Lagged` the same way.
    Resync,
}

/// Tuning for [`RedisFanout`]; the defaults suit a LAN Redis.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Prefix of the channel name (`{prefix}events`), so several deployments
    /// or test runs can share one server without hearing each other.
    pub prefix: String,
    /// Wake-ups waiting to be published; beyond it they are dropped rather than
    /// making `publish` wait.
    pub queue_capacity: usize,
    /// Upper bound for one connect or command round trip.
    pub op_timeout: Duration,
    /// First reconnect delay after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the subscriber PINGs, to notice a silently dead connection
    /// (e.g. a network partition that sends no FIN).
    pub health_check_interval: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            prefix: "videogen:".to_owned(),
            queue_capacity: 1024,
            op_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(5),
        }
    }
}

impl FanoutConfig {
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_min, self.backoff_max)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}

/// Counts since this fanout was created, for health pages and tests (the same
/// numbers also go to the `metrics` recorder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Wake-ups that Redis accepted.
    pub published: u64,
    /// Wake-ups dropped: queue full, Redis down, or the PUBLISH failed.
    pub dropped: u64,
    /// Subscriptions established (the first one included); each sent a
    /// [`FanoutMsg::Resync`].
    pub subscriptions: u64,
    /// Subscriptions lost (closed, failed or unanswered PING) plus attempts
    /// to subscribe that failed.
    pub subscription_failures: u64,
    /// Health-check PINGs answered.
    pub health_checks: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    subscriptions: AtomicU64,
    subscription_failures: AtomicU64,
    health_checks: AtomicU64,
}

impl Counters {
    pub(crate) fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn subscription_failed(&self) {
        self.subscription_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn health_checked(&self) {
        self.health_checks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        telemetry::count_publish_dropped(n);
    }
}

/// A wake-up as it travels through the queue and over the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Wakeup {
    pub(crate) job: String,
    pub(crate) kind: String,
}

/// Publishes and receives job wake-ups through Redis pub/sub.
///
/// Cheap to clone; background tasks stop when the last clone is dropped.
/// Every node (this one included) that subscribed hears every publish, so
/// a node's own wake-ups come back to it: harmless, since wake-ups are
/// idempotent (the listener re-reads the store), and simpler than filtering.
#[derive(Clone)]
pub struct RedisFanout {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Wakeup>,
    events: broadcast::Sender<FanoutMsg>,
    counters: Arc<Counters>,
    channel: String,
    _stop_tasks: DropGuard,
}

impl std::fmt::Debug for RedisFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisFanout")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

impl RedisFanout {
    /// Same as [`RedisFanout::connect_with`] with the default config.
    pub fn connect(url: &str) -> Result<Self, RedisError> {
        Self::connect_with(url, FanoutConfig::default())
    }

    /// Validates `url` and starts the publisher and subscriber tasks; it does
    /// not wait for Redis, which may be down now and come up later. Must be
    /// called inside a Tokio runtime.
    pub fn connect_with(url: &str, config: FanoutConfig) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::InvalidUrl)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RedisError::NoRuntime)?;

        let channel = config.channel();
        let counters = Arc::new(Counters::default());
        let (queue, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let stop = CancellationToken::new();

        let link = Link::new(client.clone(), "publish", config.op_timeout, config.backoff());
        runtime.spawn(publisher::run(
            link,
            channel.clone(),
            queue_rx,
            counters.clone(),
            config.op_timeout,
        ));
        runtime.spawn(subscriber::run(
            client,
            channel.clone(),
            events.clone(),
            counters.clone(),
            config,
            stop.clone(),
        ));

        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                events,
                counters,
                channel,
                _stop_tasks: stop.drop_guard(),
            }),
        })
    }

    /// Announces that `job` changed. Never waits: the wake-up is queued for a
    /// background task, or dropped (and counted) when the queue is full.
    pub fn publish(&self, job: &str, kind: &str) {
        let wakeup = Wakeup {
            job: job.to_owned(),
            kind: kind.to_owned(),
        };
        if self.inner.queue.try_send(wakeup).is_err() {
            self.inner.counters.dropped(1);
        }
    }

    /// Wake-ups from every node, plus [`FanoutMsg::Resync`] after each
    /// (re)connect of the subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<FanoutMsg> {
        self.inner.events.subscribe()
    }

    /// The pub/sub channel in use, `{prefix}events`.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    pub fn stats(&self) -> FanoutStats {
        FanoutStats {
            published: self.inner.counters.published.load(Ordering::Relaxed),
            dropped: self.inner.counters.dropped.load(Ordering::Relaxed),
            subscriptions: self.inner.counters.subscriptions.load(Ordering::Relaxed),
            subscription_failures: self.inner.counters.subscription_failures.load(Ordering::Relaxed),
            health_checks: self.inner.counters.health_checks.load(Ordering::Relaxed),
        }
    }
}
