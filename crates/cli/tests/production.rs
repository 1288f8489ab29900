//! The production configuration end to end, with real servers on loopback:
//! PostgreSQL for the store, `s3s-fs` (checks SigV4 and checksums) for blobs,
//! and `--download-redirect`. Checkpoints, outputs and the input reference
//! go to the bucket; `/content` answers 302 to a pre-signed URL that works
//! until it expires and not after, nor when tampered with.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;
use videogen_testkit::pg;
use videogen_testkit::s3 as s3_server;

use common::{ADMIN_KEY, Server, body};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_s3_with_presigned_downloads() {
    let s3 = s3_server::S3Server::start();
    let db = pg::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let blob_url = format!("s3://{}?endpoint={}&region=us-east-1", s3_server::BUCKET, s3.endpoint());
    let db_url = db.url();
    let server = Server::start_with_env(
        dir.path(),
        &[
            "--database-url",
            &db_url,
            "--blob-url",
            &blob_url,
            "--download-redirect",
            "--signed-url-ttl-secs",
            "2",
            "--workers",
            "1",
            "--steps",
            "8",
            "--step-ms",
            "20",
            "--checkpoint-every-steps",
            "2",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY),
        ],
    );
    let (status, v) = server.submit(ADMIN_KEY, body("a paper boat on a canal", 5)).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let done = server.wait_done(ADMIN_KEY, &id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    // Nothing of this job on the local disk: the bytes are in the bucket.
    assert!(!dir.path().join("blobs").exists());
    let bucket = s3.data_dir().join(s3_server::BUCKET);
    assert!(bucket.join("outputs").is_dir(), "no outputs in the bucket");
    let events = server.event_data(ADMIN_KEY, &id).await;
    assert!(events.iter().any(|e| e["type"] == "checkpoint"), "{events:?}");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(server.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s3.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");

    // The signed URL needs no API key; the bytes are an MP4.
    let got = no_redirects.get(&location).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let mp4 = got.bytes().await.unwrap();
    assert_eq!(&mp4[4..8], b"ftyp");
    // Tampered: one hex digit of the signature changed.
    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &location[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &location[..at], &location[at + 1..]);
    assert_eq!(no_redirects.get(&tampered).send().await.unwrap().status(), 403);
    // Expired: the bucket's own clock decides, so ask until it refuses
    // (bounded) rather than sleeping past the TTL and hoping.
    assert!(location.contains("X-Amz-Expires=2&"), "{location}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let status = no_redirects.get(&location).send().await.unwrap().status();
        if status != 200 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signed URL still served after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused, 403);
    // The SDK-style client following redirects gets the same bytes.
    let (status, followed) = server.content(ADMIN_KEY, &id, "video").await;
    assert_eq!(status, 200);
    assert_eq!(followed, mp4.to_vec());
}
