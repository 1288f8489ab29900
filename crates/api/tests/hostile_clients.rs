//! Hostile clients against the accept loop and the event streams the binary
//! runs (`videogen_api::serve_counted`, `videogen_api::router`): connections
//! that never finish a request, idle kept-alive connections, more
//! connections than the cap, a reconnecting EventSource on a finished video,
//! and one tenant opening every event stream. Each waits on what the server
//! exposes (its connection counters, the end of a stream), never on a sleep,
//! and asserts no duration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::ADMIN_KEY;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use videogen_api::layers::ServerLimits;
use videogen_api::listener::ConnStats;
use videogen_api::state::{AppState, Limits};
use videogen_core::TenantId;
use videogen_core::store::{ListQuery, Order};

/// Longer than any test could need to finish: a stream still open after it
/// is a failure (the defect is a stream that never ends), not a timing claim.
const HANG: Duration = Duration::from_secs(60);

struct Server {
    addr: String,
    stats: Arc<ConnStats>,
    state: AppState,
    stop: CancellationToken,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(server: ServerLimits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let state = common::state(
        dir.path(),
        Limits {
            server,
            ..Limits::default()
        },
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stats, stop) = (Arc::new(ConnStats::default()), CancellationToken::new());
    let serving = videogen_api::serve_counted(listener, state.clone(), stats.clone(), stop.clone().cancelled_owned());
    tokio::spawn(serving);
    Server {
        addr,
        stats,
        state,
        stop,
        _dir: dir,
    }
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut buf))
        .await
        .expect("the server never closed the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

/// One `GET /healthz` on a kept-alive connection; its status line.
async fn healthz(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: videogen\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"{\"status\":\"ok\"}") {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn limits(connections_max: usize, header_read_timeout: Duration) -> ServerLimits {
    ServerLimits {
        connections_max,
        header_read_timeout,
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_request_never_finished_is_cut_off_and_its_connection_freed() {
    let server = start(limits(16, Duration::from_secs(1))).await;
    let mut slow = TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    let sent = until_closed(&mut slow).await;
    assert!(!sent.contains("200 OK"), "a half request was answered: {sent}");
    server.stats.until(|s| s.open() == 0).await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(limits(16, Duration::from_secs(1))).await;
    let mut idle = TcpStream::connect(&server.addr).await.unwrap();
    assert_eq!(healthz(&mut idle).await, "HTTP/1.1 200 OK");
    assert_eq!(
        healthz(&mut idle).await,
        "HTTP/1.1 200 OK",
        "kept alive between requests"
    );
    assert_eq!(until_closed(&mut idle).await, "", "closed without another byte");
    server.stats.until(|s| s.open() == 0).await;
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_one_closing_makes_room() {
    let server = start(limits(3, Duration::from_secs(300))).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(&server.addr).await.unwrap();
        assert_eq!(healthz(&mut c).await, "HTTP/1.1 200 OK");
        held.push(c);
    }
    server.stats.until(|s| s.open() == 3).await;

    let mut over = TcpStream::connect(&server.addr).await.unwrap();
    let refusal = until_closed(&mut over).await;
    let (head, body) = refusal.split_once("\r\n\r\n").expect("a whole HTTP response");
    assert!(head.starts_with("HTTP/1.1 503 "), "{refusal}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{refusal}");
    let declared: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    assert_eq!(declared, body.len(), "{refusal}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(server.stats.refused(), 1);

    drop(held.pop());
    server.stats.until(|s| s.open() == 2).await;
    let mut again = TcpStream::connect(&server.addr).await.unwrap();
    assert_eq!(healthz(&mut again).await, "HTTP/1.1 200 OK");
    for c in &mut held {
        assert_eq!(healthz(c).await, "HTTP/1.1 200 OK", "the held connections still work");
    }
}

async fn events(router: &axum::Router, id: &str, last_event_id: Option<&str>) -> axum::response::Response {
    let mut req =
        Request::get(format!("/v1/videos/{id}/events")).header("authorization", format!("Bearer {ADMIN_KEY}"));
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last);
    }
    router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
}

/// The whole body of an event stream, which must end by itself.
async fn whole_stream(resp: axum::response::Response) -> String {
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(HANG, axum::body::to_bytes(resp.into_body(), usize::MAX))
        .await
        .expect("the event stream of a finished video never ended")
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_stream_of_a_finished_video_ends_when_nothing_is_left_after_last_event_id() {
    let server = start(ServerLimits::default()).await;
    let id = common::completed_video(&server.state).await;
    let router = videogen_api::router(server.state.clone());
    let all = whole_stream(events(&router, &id, None).await).await;
    assert!(all.contains("event: completed"), "{all}");
    let last = all
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("events carry ids")
        .to_owned();
    // A reconnecting EventSource sends the last id it saw: nothing is left.
    for after in [last.as_str(), "999999"] {
        let rest = whole_stream(events(&router, &id, Some(after)).await).await;
        assert!(!rest.contains("event:"), "after {after}: {rest}");
    }
    // From an earlier id it sends what follows, then ends.
    let first = all.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
    let rest = whole_stream(events(&router, &id, Some(first)).await).await;
    assert!(
        rest.contains("event: completed") && !rest.contains(&format!("id: {first}\n")),
        "{rest}"
    );
}

#[tokio::test]
async fn one_tenant_cannot_hold_more_event_streams_than_its_share() {
    let server = start(ServerLimits {
        sse_streams_per_tenant_max: 2,
        ..ServerLimits::default()
    })
    .await;
    let id = common::queued_video(&server.state, "a queue that never moves").await;
    let (id, router) = (id.to_string(), videogen_api::router(server.state.clone()));
    let open = [events(&router, &id, None).await, events(&router, &id, None).await];
    assert!(open.iter().all(|r| r.status() == StatusCode::OK));
    let third = events(&router, &id, None).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(third.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(open);
    assert_eq!(
        events(&router, &id, None).await.status(),
        StatusCode::OK,
        "a closed stream gives its place back"
    );
}

async fn create_with_image(state: &AppState, png: &[u8]) -> (StatusCode, Option<String>, Value) {
    use base64::Engine as _;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    let body = serde_json::json!({ "prompt": "from a picture", "input_reference": { "image_url": url } });
    let req = Request::post("/v1/videos")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = videogen_api::router(state.clone()).oneshot(req).await.unwrap();
    let (status, retry) = (
        resp.status(),
        resp.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, retry, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn image_decodes_past_the_nodes_memory_budget_get_503_until_memory_is_free() {
    let server = start(ServerLimits::default()).await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(64, 64)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let budget = &server.state.limits.decode;
    // Another request's decode holds the whole budget.
    let held = budget.reserve(u32::MAX, u32::MAX).unwrap();
    assert_eq!(budget.available_mib(), 0);
    let (status, retry, body) = create_with_image(&server.state, png.get_ref()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "decode_capacity", "{body}");
    let q = ListQuery {
        after: None,
        limit: 10,
        order: Order::Desc,
    };
    let listed = server
        .state
        .store
        .list_jobs(&TenantId::parse("admin").unwrap(), &q)
        .await
        .unwrap();
    assert!(listed.is_empty(), "a refused create leaves no job");
    drop(held);
    let (status, _, body) = create_with_image(&server.state, png.get_ref()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(budget.available_mib() > 0, "the decode gave its memory back");
}
