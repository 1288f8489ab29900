//! [`S3BlobStore`] against a real S3-compatible server that checks SigV4
//! signatures and upload checksums: `s3s-fs`, installed by
//! `scripts/s3-server.sh` (CI's `.ci/run` runs it) and started per test on a
//! free loopback port over a temporary directory.
//!
//! The tests fail, never skip, when the server is missing: a skipped test
//! would let a broken S3 backend through CI unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpService, ReqwestConnector,
};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use videogen_blob::{BlobError, BlobStore, MULTIPART_PART_SIZE, S3BlobStore, S3Credentials, S3Location};

use videogen_testkit::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

/// What these tests need beyond the server itself.
trait StoreOf {
    fn location(&self) -> S3Location;
    fn store(&self) -> S3BlobStore;
    fn store_as(&self, access_key: &str, secret_key: &str) -> S3BlobStore;
    fn store_via(&self, wire: &Arc<Wire>) -> S3BlobStore;
}

impl StoreOf for S3Server {
    fn location(&self) -> S3Location {
        S3Location {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
        }
    }

    fn store(&self) -> S3BlobStore {
        self.store_as(ACCESS_KEY, SECRET_KEY)
    }

    fn store_as(&self, access_key: &str, secret_key: &str) -> S3BlobStore {
        S3BlobStore::new(&self.location(), &S3Credentials::new(access_key, secret_key)).unwrap()
    }

    /// A store whose requests pass through `wire`, with unsigned payloads so
    /// that the SigV4 signature does not cover the body: only the checksum
    /// stands between a corrupted body and the bucket.
    fn store_via(&self, wire: &Arc<Wire>) -> S3BlobStore {
        let builder = S3BlobStore::builder(&self.location(), &S3Credentials::new(ACCESS_KEY, SECRET_KEY))
            .with_unsigned_payload(true)
            .with_http_connector(WireConnector(wire.clone()));
        S3BlobStore::from_builder(builder).unwrap()
    }
}

/// Which request the wire corrupts (one byte of its body flipped).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tamper {
    Nothing,
    SinglePut,
    Part(u32),
}

/// Records every request line and corrupts the chosen one in flight.
#[derive(Debug)]
struct Wire {
    tamper: Tamper,
    log: Mutex<Vec<String>>,
}

impl Wire {
    fn new(tamper: Tamper) -> Arc<Self> {
        Arc::new(Self {
            tamper,
            log: Mutex::default(),
        })
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn hits(&self, method: &str, query: &str) -> bool {
        if method != "PUT" {
            return false;
        }
        match self.tamper {
            Tamper::Nothing => false,
            Tamper::SinglePut => !query.contains("uploadId="),
            Tamper::Part(n) => query.contains(&format!("partNumber={n}&")),
        }
    }
}

#[derive(Debug)]
struct WireConnector(Arc<Wire>);

impl HttpConnector for WireConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(WireService {
            wire: self.0.clone(),
            inner,
        }))
    }
}

#[derive(Debug)]
struct WireService {
    wire: Arc<Wire>,
    inner: HttpClient,
}

#[async_trait]
impl HttpService for WireService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        self.wire.log.lock().unwrap().push(format!("{} ?{query}", parts.method));
        let body = match self.wire.hits(parts.method.as_str(), &query) {
            true => flip_a_byte(body).await?,
            false => body,
        };
        self.inner.execute(HttpRequest::from_parts(parts, body)).await
    }
}

async fn flip_a_byte(body: HttpRequestBody) -> Result<HttpRequestBody, HttpError> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?
        .to_bytes();
    let mut v = bytes.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0xff;
    Ok(v.into())
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<_>>().into()
}

fn not_found<T: std::fmt::Debug>(r: Result<T, BlobError>) -> bool {
    matches!(r, Err(BlobError::NotFound(_)))
}

/// Files under `dir` whose name does not start with `.` (s3s-fs keeps its
/// metadata, staging files and upload parts in dot-files).
fn visible_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            out.extend(visible_files(&entry.path()).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn put_get_range_size_delete_roundtrip() {
    let server = S3Server::start();
    let s = server.store();
    s.put("a/b/c.bin", Bytes::from_static(b"hello world")).await.unwrap();
    assert_eq!(s.get("a/b/c.bin").await.unwrap(), &b"hello world"[..]);
    assert_eq!(s.size("a/b/c.bin").await.unwrap(), 11);
    assert_eq!(s.get_range("a/b/c.bin", 6..11).await.unwrap(), &b"world"[..]);
    assert!(s.get_range("a/b/c.bin", 3..3).await.unwrap().is_empty());
    // The bytes really are in the server's bucket.
    assert_eq!(
        std::fs::read(server.data_dir().join(BUCKET).join("a/b/c.bin")).unwrap(),
        b"hello world"
    );
    s.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(s.size("empty").await.unwrap(), 0);
    s.put("a/b/c.bin", Bytes::from_static(b"short")).await.unwrap();
    assert_eq!(s.get("a/b/c.bin").await.unwrap(), &b"short"[..]);

    assert!(not_found(s.get("no/such").await));
    assert!(not_found(s.size("no/such").await));
    assert!(not_found(s.get_range("no/such", 0..4).await));
    s.delete("a/b/c.bin").await.unwrap();
    assert!(not_found(s.get("a/b/c.bin").await));
    s.delete("a/b/c.bin").await.unwrap();
}

#[tokio::test]
async fn delete_prefix_removes_only_that_prefix() {
    let server = S3Server::start();
    let s = server.store();
    for k in ["p/1", "p/2/a", "p/2/b", "pq/1", "other/p/1"] {
        s.put(k, Bytes::from_static(b"v")).await.unwrap();
    }
    s.delete_prefix("p/").await.unwrap();
    for k in ["p/1", "p/2/a", "p/2/b"] {
        assert!(not_found(s.get(k).await), "{k}");
    }
    for k in ["pq/1", "other/p/1"] {
        assert_eq!(s.get(k).await.unwrap(), &b"v"[..], "{k}");
    }
    s.delete_prefix("p/").await.unwrap();
    s.delete_prefix("nothing/here/").await.unwrap();
    assert!(matches!(s.delete_prefix("").await, Err(BlobError::InvalidKey { .. })));
}

/// 20 MiB goes up in three checksummed parts and reads back identical.
#[tokio::test]
async fn large_objects_go_multipart_and_read_back_identical() {
    let server = S3Server::start();
    let wire = Wire::new(Tamper::Nothing);
    let s = server.store_via(&wire);
    let big = pattern(20 << 20, 7);
    s.put("outputs/ab/video_x/1/video.mp4", big.clone()).await.unwrap();

    let parts = wire.log().iter().filter(|l| l.contains("partNumber=")).count();
    assert_eq!(parts, (20usize << 20).div_ceil(MULTIPART_PART_SIZE), "{:?}", wire.log());
    let got = server.store().get("outputs/ab/video_x/1/video.mp4").await.unwrap();
    assert!(got == big, "multipart object differs from what was put");
    let tail = s
        .get_range("outputs/ab/video_x/1/video.mp4", (19 << 20)..(20 << 20))
        .await
        .unwrap();
    assert_eq!(tail, big.slice((19 << 20)..));
}

/// The server recomputes `x-amz-checksum-sha256` and refuses a body that
/// changed on the way; the refused object never becomes visible.
#[tokio::test]
async fn corrupted_single_put_is_rejected_and_leaves_no_object() {
    let server = S3Server::start();
    // Control: the same unsigned-payload path succeeds when nothing is corrupted.
    server
        .store_via(&Wire::new(Tamper::Nothing))
        .put("ok", pattern(1000, 1))
        .await
        .unwrap();

    let wire = Wire::new(Tamper::SinglePut);
    let err = server
        .store_via(&wire)
        .put("bad/obj", pattern(1000, 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BadDigest"), "{err}");
    assert!(not_found(server.store().get("bad/obj").await));
    assert_eq!(visible_files(&server.data_dir().join(BUCKET)), ["ok"]);
}

/// A corrupted part fails the upload, which is then aborted: no object and
/// no stored parts remain.
#[tokio::test]
async fn corrupted_multipart_upload_is_aborted_and_leaves_no_object() {
    let server = S3Server::start();
    let wire = Wire::new(Tamper::Part(2));
    let err = server
        .store_via(&wire)
        .put("big/obj", pattern(20 << 20, 3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BadDigest"), "{err}");
    let log = wire.log();
    assert!(
        log.iter().any(|l| l.starts_with("DELETE ?uploadId=")),
        "upload not aborted: {log:?}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("POST ?uploadId=")),
        "completed: {log:?}"
    );
    assert!(not_found(server.store().get("big/obj").await));
    assert!(visible_files(&server.data_dir().join(BUCKET)).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".upload"))
        .collect();
    assert!(leftovers.is_empty(), "parts left behind: {leftovers:?}");
}

#[tokio::test]
async fn wrong_credentials_are_rejected() {
    let server = S3Server::start();
    server.store().put("k", Bytes::from_static(b"v")).await.unwrap();
    for (who, s) in [
        ("wrong secret", server.store_as(ACCESS_KEY, "not-the-secret")),
        ("unknown access key", server.store_as("someone-else", SECRET_KEY)),
    ] {
        let put = s.put("intruder", Bytes::from_static(b"x")).await.unwrap_err();
        assert!(put.to_string().contains("403"), "{who}: {put}");
        let got = s.get("k").await;
        assert!(
            matches!(&got, Err(e @ BlobError::Fault { .. }) if !e.is_retryable()),
            "{who}: refused credentials are a fault, not retryable: {got:?}"
        );
    }
    assert!(not_found(server.store().get("intruder").await));
}

async fn http_get(url: &str, range: Option<&str>) -> (u16, Bytes) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap())
}

#[tokio::test]
async fn presigned_urls_work_until_they_expire() {
    let server = S3Server::start();
    let s = server.store();
    let body = pattern(100_000, 9);
    s.put("outputs/ab/v/1/video.mp4", body.clone()).await.unwrap();
    let url = s
        .signed_url("outputs/ab/v/1/video.mp4", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 signs URLs");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(!url.contains(SECRET_KEY));

    let (status, got) = http_get(&url, None).await;
    assert_eq!((status, got), (200, body.clone()));
    let (status, got) = http_get(&url, Some("bytes=10-19")).await;
    assert_eq!((status, got), (206, body.slice(10..20)));

    // Expiry is the server's decision on its own clock, which no test can
    // move: a one-second URL says so in its signed parameters, and the server
    // starts refusing it once that second is over (whatever the machine's
    // load, so no check that it is still served first).
    let short = s
        .signed_url("outputs/ab/v/1/video.mp4", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        short.contains("X-Amz-Expires=1&") || short.ends_with("X-Amz-Expires=1"),
        "{short}"
    );
    assert!(url.contains("X-Amz-Expires=60"), "{url}");
    assert_eq!(until_refused(&short).await, 403, "expired URL still served");
    // The long one is still good.
    assert_eq!(http_get(&url, None).await.0, 200);
}

/// GETs `url` until the server stops serving it (bounded); the refusal status.
async fn until_refused(url: &str) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = http_get(url, None).await;
        if status != 200 {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "still served after 30 s: {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tampered_presigned_urls_are_rejected() {
    let server = S3Server::start();
    let s = server.store();
    s.put("outputs/ab/v/1/video.mp4", Bytes::from_static(b"mine"))
        .await
        .unwrap();
    s.put("outputs/ab/v/1/other.mp4", Bytes::from_static(b"other"))
        .await
        .unwrap();
    let url = s
        .signed_url("outputs/ab/v/1/video.mp4", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    let last = url.chars().last().unwrap();
    let flipped = format!("{}{}", &url[..url.len() - 1], if last == '0' { '1' } else { '0' });
    assert_eq!(http_get(&flipped, None).await.0, 403, "tampered signature");
    let other_key = url.replace("video.mp4?", "other.mp4?");
    assert_eq!(
        http_get(&other_key, None).await.0,
        403,
        "signature reused for another key"
    );
    let longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
    assert_eq!(http_get(&longer, None).await.0, 403, "extended expiry");
    let forged = server
        .store_as(ACCESS_KEY, "not-the-secret")
        .signed_url("outputs/ab/v/1/video.mp4", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(http_get(&forged, None).await.0, 403, "signed with the wrong secret");
}

#[tokio::test]
async fn signed_url_rejects_bad_keys_and_lifetimes() {
    let server = S3Server::start();
    let s = server.store();
    assert!(matches!(
        s.signed_url("../etc", Duration::from_secs(60)).await,
        Err(BlobError::InvalidKey { .. })
    ));
    for ttl in [Duration::ZERO, Duration::from_secs(8 * 24 * 3600)] {
        assert!(
            matches!(s.signed_url("k", ttl).await, Err(BlobError::Config(_))),
            "{ttl:?}"
        );
    }
}
