//! Signed downloads over a real server on loopback: the API's own HMAC-signed
//! `/files` URLs (valid with `Range`, refused once expired or tampered with)
//! and `GET /v1/videos/{id}/content` redirecting to them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use videogen_api::content::{file_url, signed_file_path};
use videogen_api::state::{AppState, Downloads, Limits};
use videogen_control::{Dispatcher, JobBus};
use videogen_core::blob::keys;
use videogen_core::store::{NewJob, Submitted};
use videogen_core::{Clock, ManualClock, Outputs, Seconds, TenantId, Tier, VideoId, VideoSize, VideoSpec, WorkerId};
use videogen_sched::SchedulerConfig;

const SIGNING_KEY: &[u8] = b"test-signing-key-0123456789abcdef";
const START_MS: i64 = 1_700_000_000_000;
const TTL: Duration = Duration::from_secs(600);

struct Server {
    base: String,
    state: AppState,
    clock: ManualClock,
    stop: CancellationToken,
    _blobs: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn downloads(redirect: bool, signing_key: Option<&[u8]>) -> Downloads {
    Downloads {
        redirect,
        ttl: TTL,
        signing_key: signing_key.map(Arc::from),
        public_base_url: None,
    }
}

async fn start(mut downloads: Downloads) -> Server {
    let blobs = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    if downloads.public_base_url.is_none() && downloads.redirect {
        downloads.public_base_url = Some(base.clone());
    }
    let state = AppState {
        store: Arc::new(videogen_store::SqliteStore::open_in_memory().await.unwrap()),
        blob: Arc::new(videogen_blob::LocalBlobStore::new(blobs.path()).unwrap()),
        moderator: Arc::new(videogen_safety::DenylistModerator::new()),
        dispatcher: Arc::new(Dispatcher::new(SchedulerConfig::default(), Arc::new(clock.clone()))),
        bus: JobBus::default(),
        clock: Arc::new(clock.clone()),
        limits: Limits::default(),
        catalog: std::sync::Arc::new(videogen_core::catalog::Catalog::reference(8)),
        fleet: None,
        metrics: None,
        poll_after_ms: 100,
        control: None,
        downloads,
        submit_limit: None,
        readiness: Default::default(),
    };
    let stop = CancellationToken::new();
    tokio::spawn(videogen_api::serve(
        listener,
        state.clone(),
        stop.clone().cancelled_owned(),
    ));
    Server {
        base,
        state,
        clock,
        stop,
        _blobs: blobs,
    }
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

async fn get(url: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<_>>().into()
}

impl Server {
    fn url(&self, key: &str) -> String {
        let path = file_url(&self.state.downloads, key, self.clock.now_ms()).expect("signing key set");
        format!("{}{path}", self.base)
    }

    async fn put(&self, key: &str, bytes: Bytes) {
        self.state.blob.put(key, bytes).await.unwrap();
    }

    /// A completed video of `tenant` whose three assets are in the blob store.
    async fn completed_video(&self, tenant: &str) -> (VideoId, [Bytes; 3]) {
        let id = VideoId::generate();
        let now = self.clock.now_ms();
        let spec = VideoSpec {
            model: "videogen-ref".into(),
            prompt: "a lighthouse at dusk".into(),
            seconds: Seconds::S4,
            size: VideoSize::LANDSCAPE_720,
            seed: 1,
            style: None,
            steps: 8,
            input_reference: None,
            params: Default::default(),
        };
        let new = NewJob {
            id: id.clone(),
            tenant: TenantId::parse(tenant).unwrap(),
            tier: Tier::Paid,
            spec,
            now_ms: now,
        };
        let store = &self.state.store;
        assert!(matches!(store.submit(new, None).await.unwrap(), Submitted::Created(_)));
        let worker = WorkerId::new("test", "w0");
        let lease = store.lease(&id, &worker, now, 60_000).await.unwrap().unwrap();
        let outputs = Outputs {
            video_key: keys::video(&id, lease.attempt),
            thumbnail_key: keys::thumbnail(&id, lease.attempt),
            spritesheet_key: keys::spritesheet(&id, lease.attempt),
            video_bytes: 50_000,
        };
        let assets = [pattern(50_000, 1), pattern(3_000, 2), pattern(7_000, 3)];
        for (key, bytes) in [&outputs.video_key, &outputs.thumbnail_key, &outputs.spritesheet_key]
            .into_iter()
            .zip(&assets)
        {
            self.put(key, bytes.clone()).await;
        }
        store.complete(&lease, &outputs, now, now + 86_400_000).await.unwrap();
        (id, assets)
    }

    async fn api_key(&self, tenant: &str) -> String {
        let secret = videogen_api::auth::generate_secret();
        let rec = videogen_api::auth::key_record(&secret, TenantId::parse(tenant).unwrap(), Tier::Paid, false, 0);
        self.state.store.insert_api_key(&rec).await.unwrap();
        secret
    }

    async fn content(&self, secret: &str, id: &VideoId, query: &str) -> reqwest::Response {
        client()
            .get(format!("{}/v1/videos/{id}/content{query}", self.base))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn signed_file_urls_serve_ranges_until_they_expire() {
    let server = start(downloads(false, Some(SIGNING_KEY))).await;
    let body = pattern(10_000, 5);
    server.put("outputs/ab/v/1/video.mp4", body.clone()).await;
    let url = server.url("outputs/ab/v/1/video.mp4");

    // No API key: the signature is the credential.
    let resp = get(&url, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(resp.bytes().await.unwrap(), body);

    let resp = get(&url, Some("bytes=100-199")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(resp.bytes().await.unwrap(), body.slice(100..200));
    let resp = get(&url, Some("bytes=20000-")).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Valid through its last second, refused after.
    server.clock.advance_ms(TTL.as_millis() as i64);
    assert_eq!(get(&url, None).await.status(), StatusCode::OK);
    server.clock.advance_ms(1_001);
    assert_eq!(
        error_code(get(&url, None).await).await,
        (StatusCode::FORBIDDEN, "url_expired".into())
    );
}

#[tokio::test]
async fn tampered_or_missing_signatures_are_refused() {
    let server = start(downloads(false, Some(SIGNING_KEY))).await;
    server.put("outputs/ab/v/1/video.mp4", pattern(100, 1)).await;
    server.put("outputs/ab/v/1/thumbnail.jpg", pattern(100, 2)).await;
    let url = server.url("outputs/ab/v/1/video.mp4");
    let expires = (START_MS / 1000) as u64 + TTL.as_secs();

    let last = url.chars().last().unwrap();
    let flipped = format!("{}{}", &url[..url.len() - 1], if last == '0' { '1' } else { '0' });
    let other_key = url.replace("video.mp4?", "thumbnail.jpg?");
    let later = url.replace(&format!("expires={expires}"), &format!("expires={}", expires + 3600));
    let foreign = format!(
        "{}{}",
        server.base,
        signed_file_path(b"some-other-key", "outputs/ab/v/1/video.mp4", expires).unwrap()
    );
    let (path, query) = url.split_once('?').unwrap();
    let sig = query.split_once("&sig=").unwrap().1;
    let cases = [
        ("flipped signature", flipped),
        ("signature of another key", other_key),
        ("extended expiry", later),
        ("other signing key", foreign),
        ("no query", path.to_owned()),
        ("no signature", format!("{path}?expires={expires}")),
        ("no expiry", format!("{path}?sig={sig}")),
        ("non-hex signature", format!("{path}?expires={expires}&sig=zz")),
        (
            "short signature",
            format!("{path}?expires={expires}&sig={}", &sig[..32]),
        ),
        ("extra parameter", format!("{url}&x=1")),
        ("duplicate signature", format!("{url}&sig={sig}")),
    ];
    for (what, bad) in cases {
        let (status, code) = error_code(get(&bad, None).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "invalid_signature"),
            "{what}"
        );
    }
    // A tampered URL is refused as such even after it expired.
    server.clock.advance_ms(2 * TTL.as_millis() as i64);
    let (status, code) = error_code(get(&format!("{path}?expires={expires}&sig=00"), None).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "invalid_signature"));
}

#[tokio::test]
async fn files_route_is_off_without_a_signing_key() {
    let server = start(Downloads::default()).await;
    server.put("outputs/ab/v/1/video.mp4", pattern(100, 1)).await;
    let path = signed_file_path(SIGNING_KEY, "outputs/ab/v/1/video.mp4", u64::MAX / 2).unwrap();
    let (status, _) = error_code(get(&format!("{}{path}", server.base), None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn content_redirects_to_a_signed_url_serving_the_same_bytes() {
    let server = start(downloads(true, Some(SIGNING_KEY))).await;
    let secret = server.api_key("acme").await;
    let (id, [video, thumbnail, spritesheet]) = server.completed_video("acme").await;

    for (query, want, content_type) in [
        ("", &video, "video/mp4"),
        ("?variant=video", &video, "video/mp4"),
        ("?variant=thumbnail", &thumbnail, "image/jpeg"),
        ("?variant=spritesheet", &spritesheet, "image/jpeg"),
    ] {
        let resp = server.content(&secret, &id, query).await;
        assert_eq!(resp.status(), StatusCode::FOUND, "{query}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&format!("{}/files/outputs/", server.base)),
            "{location}"
        );
        let got = get(&location, None).await;
        assert_eq!(got.status(), StatusCode::OK, "{query}");
        assert_eq!(got.headers()["content-type"], content_type, "{query}");
        assert_eq!(&got.bytes().await.unwrap(), want, "{query}");
    }
    let location = server.content(&secret, &id, "").await.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let part = get(&location, Some("bytes=-10")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), video.slice(video.len() - 10..));

    // The redirect is still behind the API key and the variant check.
    let other = server.api_key("someone-else").await;
    let (status, code) = error_code(server.content(&other, &id, "").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "video_not_found"));
    let (status, _) = error_code(server.content(&secret, &id, "?variant=poster").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Bytes swept away: expired, not a redirect to nothing.
    server
        .state
        .blob
        .delete_prefix(&keys::job_prefixes(&id)[0])
        .await
        .unwrap();
    let (status, code) = error_code(server.content(&secret, &id, "").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "video_expired"));
}

#[tokio::test]
async fn content_streams_when_redirect_is_off_or_nothing_can_sign() {
    for downloads in [downloads(false, Some(SIGNING_KEY)), downloads(true, None)] {
        let redirect = downloads.redirect;
        let server = start(downloads).await;
        let secret = server.api_key("acme").await;
        let (id, [video, ..]) = server.completed_video("acme").await;
        let resp = server.content(&secret, &id, "").await;
        assert_eq!(resp.status(), StatusCode::OK, "redirect {redirect}");
        assert_eq!(resp.bytes().await.unwrap(), video);
    }
}
