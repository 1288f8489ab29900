//! What wraps the routes: bounds on concurrency and time, the cap on open
//! event streams, and the access log.
//!
//! - Tenant routes and the internal worker API each get a global
//!   concurrency limit that sheds load at once (503 `overloaded` with
//!   `Retry-After`) instead of queueing without bound, and a deadline on the
//!   handler (504 `request_timeout`). The worker API's deadline is longer:
//!   acquire long-polls for up to `MAX_ACQUIRE_WAIT` and uploads stream whole
//!   checkpoints. A deadline covers the handler up to its response head, so
//!   a download or an event stream is not cut off by it.
//! - Open event streams hold a permit each ([`StreamSlots`]) for as long as
//!   the client reads; past the node's cap a new stream gets 503
//!   `too_many_streams`, past its tenant's 429 `too_many_streams`.
//! - [`access_log`] writes one line per request: method, route template,
//!   status, latency and who called (tenant or worker), which the
//!   authenticating extractors record in [`Principal`].

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::layer::util::{Identity, Stack};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};

use crate::error::ApiError;

/// Bounds on the server as a whole (per node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests handled at once on each of the two route groups (tenant and
    /// worker); more are refused with 503 at once.
    pub concurrent_requests_max: usize,
    /// Deadline of a tenant request's handler.
    pub request_timeout: Duration,
    /// Deadline of an internal worker API handler (must exceed the longest
    /// acquire long poll).
    pub worker_request_timeout: Duration,
    /// Event streams open at once.
    pub sse_streams_max: usize,
    /// Event streams one tenant may have open at once.
    pub sse_streams_per_tenant_max: usize,
    /// TCP connections open at once; more are answered 503 and closed.
    pub connections_max: usize,
    /// Longest a client may take to send a request's headers, and to start
    /// its next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_streams_max: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            concurrent_requests_max: 1024,
            request_timeout: Duration::from_secs(30),
            worker_request_timeout: Duration::from_secs(120),
            sse_streams_max: 1024,
            sse_streams_per_tenant_max: 64,
            connections_max: 32_768,
            header_read_timeout: Duration::from_secs(10),
            http2_streams_max: 256,
        }
    }
}

/// What [`bounded`] builds.
pub type Bounded = ServiceBuilder<
    Stack<
        TimeoutLayer,
        Stack<GlobalConcurrencyLimitLayer, Stack<LoadShedLayer, Stack<HandleErrorLayer<BoundErrorFn, ()>, Identity>>>,
    >,
>;
type BoundErrorFn = fn(BoxError) -> std::future::Ready<Response>;

/// A shed-at-capacity concurrency limit (shared by every route it wraps)
/// and a handler deadline, with their errors in the API's envelope.
pub fn bounded(concurrency: usize, timeout: Duration) -> Bounded {
    let on_error: BoundErrorFn = |e| std::future::ready(bound_error(e));
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(on_error))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(concurrency))
        .layer(TimeoutLayer::new(timeout))
}

fn bound_error(e: BoxError) -> Response {
    if e.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("videogen_http_shed_total", "reason" => "overloaded").increment(1);
        ApiError::overloaded("overloaded", "The server is at capacity; retry shortly.").into_response()
    } else if e.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("videogen_http_shed_total", "reason" => "timeout").increment(1);
        ApiError::timeout().into_response()
    } else {
        tracing::error!(error = %e, "request failed in a middleware");
        ApiError::internal().into_response()
    }
}

/// Permits for open event streams: a cap for the node and one per tenant,
/// so one tenant's watchers cannot take every stream.
#[derive(Clone)]
pub struct StreamSlots {
    node: Arc<Semaphore>,
    per_tenant_max: usize,
    tenants: Arc<Mutex<HashMap<String, usize>>>,
}

/// A stream's place, given back when the stream ends.
pub struct StreamSlot {
    _node: OwnedSemaphorePermit,
    tenant: String,
    tenants: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }
}

impl StreamSlots {
    pub fn new(max: usize, per_tenant_max: usize) -> Self {
        Self {
            node: Arc::new(Semaphore::new(max)),
            per_tenant_max,
            tenants: Arc::default(),
        }
    }

    /// A place the stream keeps until it ends: 429 when the tenant has its
    /// most open, 503 when the node has.
    pub fn take(&self, tenant: &str) -> Result<StreamSlot, ApiError> {
        let mut tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = tenants.get(tenant).copied().unwrap_or(0);
        if open >= self.per_tenant_max {
            metrics::counter!("videogen_http_shed_total", "reason" => "tenant_streams").increment(1);
            return Err(ApiError::too_many_streams(self.per_tenant_max));
        }
        let node = self.node.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("videogen_http_shed_total", "reason" => "streams").increment(1);
            ApiError::overloaded(
                "too_many_streams",
                "Too many event streams are open on this server; retry shortly or poll the video instead.",
            )
        })?;
        tenants.insert(tenant.to_owned(), open + 1);
        Ok(StreamSlot {
            _node: node,
            tenant: tenant.to_owned(),
            tenants: self.tenants.clone(),
        })
    }
}

/// Who made a request, filled in by the authenticating extractor (the
/// access log reads it after the handler).
#[derive(Clone, Default)]
pub struct Principal(Arc<OnceLock<String>>);

impl Principal {
    pub fn set(&self, who: String) {
        let _ = self.0.set(who);
    }
}

/// Records the principal of `parts`' request, if the access log runs.
pub fn record_principal(extensions: &axum::http::Extensions, who: impl FnOnce() -> String) {
    if let Some(p) = extensions.get::<Principal>() {
        p.set(who());
    }
}

/// One log line per request. The internal worker API's successful calls are
/// machine traffic (heartbeats, long polls) and log at debug.
pub async fn access_log(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let principal = Principal::default();
    req.extensions_mut().insert(principal.clone());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let who = principal.0.get().map_or("-", String::as_str);
    let internal = route.starts_with("/internal/");
    if internal && status < 400 {
        tracing::debug!(target: "videogen::access", %method, %route, status, latency_ms, who, "request");
    } else {
        tracing::info!(target: "videogen::access", %method, %route, status, latency_ms, who, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tokio::sync::{Notify, oneshot};
    use tower::ServiceExt;

    fn req(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn past_the_concurrency_limit_requests_are_shed_with_retry_after() {
        let release = Arc::new(Notify::new());
        let (entered_tx, entered_rx) = oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let r = release.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    let (r, entered) = (r.clone(), entered.clone());
                    async move {
                        if let Some(tx) = entered.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                        r.notified().await;
                        "done"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast" }))
            .layer(bounded(1, Duration::from_secs(3600)));
        let first = tokio::spawn(app.clone().oneshot(req("/slow")));
        entered_rx.await.unwrap();
        // The one permit is held (by a different route: the limit is global).
        let shed = app.clone().oneshot(req("/fast")).await.unwrap();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(shed.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        assert_eq!(app.oneshot(req("/fast")).await.unwrap().status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_its_deadline_gets_504_in_the_envelope() {
        let app = Router::new()
            .route("/stuck", get(std::future::pending::<&'static str>))
            .layer(bounded(8, Duration::from_secs(30)));
        let resp = app.oneshot(req("/stuck")).await.unwrap();
        assert_eq!(resp.status(), 504);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
    }

    #[test]
    fn stream_slots_are_given_back_when_a_stream_ends() {
        let slots = StreamSlots::new(2, 1);
        let held = slots.take("acme").map_err(|e| e.code).unwrap();
        let refused = slots.take("acme").map(|_| ()).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (429, "too_many_streams"),
            "the tenant's share"
        );
        let other = slots.take("globex").map_err(|e| e.code).unwrap();
        let refused = slots.take("initech").map(|_| ()).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (503, "too_many_streams"),
            "the node's cap"
        );
        drop(held);
        assert!(slots.take("acme").is_ok());
        drop(other);
        assert!(
            slots.tenants.lock().map(|t| t.len()).unwrap_or(9) <= 1,
            "tenants without streams are forgotten"
        );
    }
}
