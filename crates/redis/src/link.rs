//! A command connection that fails fast while Redis is down.
//!
//! Callers (the publisher task, the rate limiter) must never queue up behind a
//! dead server, so after a failure the link stays "open" (no attempts) for a
//! capped exponential backoff, and only one caller at a time tries to reconnect;
//! everyone else is told "not now" at once and takes their fallback path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::telemetry;

#[derive(Debug)]
pub(crate) struct Link {
    client: Client,
    config: AsyncConnectionConfig,
    /// Metric label and log name, e.g. "publish" or "ratelimit".
    op: &'static str,
    state: Mutex<State>,
    connecting: AtomicBool,
}

#[derive(Debug)]
struct State {
    conn: Option<MultiplexedConnection>,
    backoff: Backoff,
    /// No connection attempts before this instant.
    retry_at: Option<Instant>,
    /// Last state logged, so a long outage logs once, not once per retry.
    health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Up,
    Down,
}

impl Link {
    pub(crate) fn new(client: Client, op: &'static str, op_timeout: Duration, backoff: Backoff) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout));
        Self {
            client,
            config,
            op,
            state: Mutex::new(State {
                conn: None,
                backoff,
                retry_at: None,
                health: Health::Unknown,
            }),
            connecting: AtomicBool::new(false),
        }
    }

    /// A live connection, or `None` when Redis is known to be down (backoff
    /// pending) or another caller is already connecting. Never waits for
    /// longer than one connection attempt.
    pub(crate) async fn connection(&self) -> Option<MultiplexedConnection> {
        {
            let state = self.lock();
            if let Some(conn) = &state.conn {
                return Some(conn.clone());
            }
            if state.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Cleared on every exit, including when the caller's timeout drops us.
        let _guard = ConnectingGuard(&self.connecting);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(conn) => {
                let mut state = self.lock();
                state.conn = Some(conn.clone());
                state.retry_at = None;
                state.backoff.reset();
                if state.health != Health::Up {
                    tracing::info!(op = self.op, "redis connection established");
                    state.health = Health::Up;
                }
                Some(conn)
            }
            Err(err) => {
                self.record_failure(&err);
                None
            }
        }
    }

    /// Forget the connection and back off. Called for any failed round trip:
    /// a broken or timed-out connection is cheaper to replace than to diagnose.
    pub(crate) fn record_failure(&self, err: &dyn std::fmt::Display) {
        telemetry::count_error(self.op);
        let mut state = self.lock();
        state.conn = None;
        let delay = state.backoff.next_delay();
        state.retry_at = Some(Instant::now() + delay);
        if state.health != Health::Down {
            tracing::warn!(op = self.op, error = %err, "redis unavailable; falling back until it returns");
            state.health = Health::Down;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct ConnectingGuard<'a>(&'a AtomicBool);

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
