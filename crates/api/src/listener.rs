//! The accept loop. `axum::serve` sets no header-read timeout and no cap on
//! connections, so a client that opens connections and never finishes a
//! request holds a file descriptor each until the process runs out of them
//! and stops accepting anyone (issue 11). This loop serves each connection
//! with hyper-util's builder (HTTP/1.1 and HTTP/2 over cleartext) with:
//!
//! - a **header-read timeout**, which hyper also applies to the idle time
//!   between requests on a kept-alive HTTP/1 connection;
//! - HTTP/2 **keep-alive pings**, answered within the same time, and a cap on
//!   concurrent streams per connection;
//! - a **connection cap**: a connection beyond it gets one canned `503` with
//!   `Retry-After` and is closed, so a flood costs a file descriptor for the
//!   time of one `write`, and clients are told why;
//! - accept errors (out of file descriptors) logged, counted and waited out
//!   briefly instead of spinning.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// What a connection may hold and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once; one beyond it is answered 503 and closed.
    pub connections_max: usize,
    /// Longest a client may take to send a request's headers, and to start
    /// the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_streams_max: u32,
}

/// The accept loop's counters, for `/readyz`, metrics and tests.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicUsize,
    refused: AtomicUsize,
    changed: Notify,
}

impl ConnStats {
    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Acquire)
    }

    /// Waits until `cond` holds for these counters (checked after each change).
    pub async fn until(&self, cond: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            if cond(self) {
                return;
            }
            changed.await;
        }
    }

    fn update(&self, counter: &AtomicUsize, up: bool) {
        if up {
            counter.fetch_add(1, Ordering::AcqRel);
        } else {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
        metrics::gauge!("videogen_http_connections_open").set(self.open() as f64);
        self.changed.notify_waiters();
    }
}

/// What a connection over the cap is told before it is closed: OpenAI's
/// error envelope, small enough for one `write` into an empty socket buffer.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":{"message":"Too many open connections; retry shortly.","type":"server_error","param":null,"code":"overloaded"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// How long to stop accepting after an accept error such as EMFILE, so the
/// loop does not spin while connections close and free descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// connections finish their requests (idle ones are closed at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(limits.http2_streams_max);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                metrics::counter!("videogen_http_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "accept failed; pausing before the next accept");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // One non-blocking write: the buffer of a new socket is empty.
            let _ = stream.try_write(&REFUSAL);
            metrics::counter!("videogen_http_connections_refused_total").increment(1);
            stats.update(&stats.refused, true);
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.update(&stats.open, true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let stats = stats.clone();
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad framing).
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
            stats.update(&stats.open, false);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
