//! [`RemoteControl`]: the [`ControlPlane`] over the server's internal worker
//! API, for `videogen worker` processes. They hold a worker token and a URL,
//! never database or bucket credentials: every byte goes through the server,
//! which checks the fencing token before it writes anything.
//!
//! The paths and bodies are `videogen_protocol::wire`, shared with the
//! server's routes.

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use videogen_core::{CheckpointRef, JobError, Lease, Progress};
use videogen_protocol::wire::{
    AcquireRequest, CRC32_HEADER, CompleteRequest, EventRequest, MAX_ACQUIRE_WAIT, ReleaseRequest, RetryRequest,
    RetryResponse, paths,
};
use videogen_protocol::{
    AssetKind, Assignment, ControlError, ControlPlane, FleetInfo, HeartbeatReply, ReleaseCause, RetryOutcome, Upload,
    WorkerInfo,
};

/// Tries per call when the server cannot be reached or answers 5xx.
const TRIES: u32 = 3;
/// Bound on any call other than a long poll (uploads of checkpoints and videos included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The error body the server sends (OpenAI's envelope).
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

pub struct RemoteControl {
    http: reqwest::Client,
    /// Every server this worker may talk to; `current` indexes the one in use.
    bases: Vec<String>,
    current: AtomicUsize,
    token: String,
}

impl RemoteControl {
    /// `base`: the server's URL, e.g. `http://10.0.0.5:8080`, or several,
    /// comma-separated: the worker moves on to the next when one is down or
    /// is not the scheduler leader (any node serves every other call, so a
    /// running job's calls follow the same server).
    pub fn new(base: &str, token: &str) -> Result<Self, ControlError> {
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ControlError::Rejected("no server URL given".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ControlError::Unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            bases,
            current: AtomicUsize::new(0),
            token: token.to_owned(),
        })
    }

    fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// After `failed` (an index read before the call) proved unusable, moves
    /// on to the next server, unless another call already did.
    fn rotate(&self, failed: usize) {
        if self.bases.len() > 1 {
            let next = (failed + 1) % self.bases.len();
            if self
                .current
                .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(server = %self.bases[next], "switching server");
            }
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT)
    }

    /// Sends (retrying transport errors and 5xx), maps error statuses.
    async fn send(&self, lease: Option<&Lease>, build: impl Fn() -> RequestBuilder) -> Result<Response, ControlError> {
        let mut last = None;
        for i in 0..TRIES {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200 << i)).await;
            }
            let server = self.current.load(Ordering::Relaxed) % self.bases.len();
            match build().send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => match error_of(lease, resp).await {
                    e @ ControlError::Unavailable(_) => last = Some(e),
                    e => return Err(e),
                },
                Err(e) => last = Some(ControlError::Unavailable(e.to_string())),
            }
            self.rotate(server);
        }
        Err(last.unwrap_or_else(|| ControlError::Unavailable("no attempt made".into())))
    }

    async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, ControlError> {
        resp.json()
            .await
            .map_err(|e| ControlError::Unavailable(format!("reading the server's answer: {e}")))
    }

    async fn post_json<B: Serialize + ?Sized>(
        &self,
        lease: &Lease,
        tail: &str,
        body: &B,
    ) -> Result<Response, ControlError> {
        let path = paths::attempt(lease, tail);
        self.send(Some(lease), || self.request(Method::POST, &path).json(body))
            .await
    }

    /// PUTs an upload. The body is sent whole so that a retry (another
    /// server, a 503) can send it again: a worker holds its outputs in memory
    /// anyway, and the server streams what it receives to the bucket.
    async fn put_bytes(&self, lease: &Lease, tail: &str, crc32: u32, body: Upload) -> Result<Response, ControlError> {
        let bytes = body
            .into_bytes()
            .await
            .map_err(|e| ControlError::Unavailable(format!("reading the upload for {tail}: {e}")))?;
        let path = paths::attempt(lease, tail);
        self.send(Some(lease), || {
            self.request(Method::PUT, &path)
                .header(CRC32_HEADER, crc32.to_string())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.clone())
        })
        .await
    }
}

async fn error_of(lease: Option<&Lease>, resp: Response) -> ControlError {
    let status = resp.status();
    let message = match resp.json::<ErrorBody>().await {
        Ok(b) => b.error.message,
        Err(_) => status.to_string(),
    };
    match (status, lease) {
        (StatusCode::CONFLICT, Some(l)) => ControlError::Stale {
            job: l.job_id.clone(),
            attempt: l.attempt,
        },
        (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            ControlError::Unavailable(format!("{status}: {message}"))
        }
        _ => ControlError::Rejected(format!("{status}: {message}")),
    }
}

#[async_trait]
impl ControlPlane for RemoteControl {
    async fn acquire(&self, worker: &WorkerInfo, wait: Duration) -> Result<Option<Assignment>, ControlError> {
        let wait = wait.min(MAX_ACQUIRE_WAIT);
        let body = AcquireRequest {
            worker: worker.clone(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        // One try: the caller loops anyway, and a long poll is not retried
        // blindly. A server that is down, or is not the scheduler leader,
        // sends the next try to the next server.
        let server = self.current.load(Ordering::Relaxed) % self.bases.len();
        let resp = match self
            .request(Method::POST, paths::ACQUIRE)
            .timeout(wait + Duration::from_secs(10))
            .json(&body)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                self.rotate(server);
                return Err(ControlError::Unavailable(e.to_string()));
            }
        };
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => Self::json(resp).await.map(Some),
            _ => {
                let e = error_of(None, resp).await;
                if matches!(e, ControlError::Unavailable(_)) {
                    self.rotate(server);
                }
                Err(e)
            }
        }
    }

    async fn heartbeat(&self, lease: &Lease, progress: &Progress) -> Result<HeartbeatReply, ControlError> {
        Self::json(self.post_json(lease, "heartbeat", progress).await?).await
    }

    async fn read_blob(&self, lease: &Lease, key: &str) -> Result<Bytes, ControlError> {
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base(), paths::attempt(lease, "blob")))
            .map_err(|e| ControlError::Rejected(format!("bad server URL: {e}")))?;
        url.query_pairs_mut().append_pair("key", key);
        let resp = self
            .send(Some(lease), || {
                self.http
                    .get(url.clone())
                    .bearer_auth(&self.token)
                    .timeout(CALL_TIMEOUT)
            })
            .await?;
        resp.bytes()
            .await
            .map_err(|e| ControlError::Unavailable(format!("reading blob {key}: {e}")))
    }

    async fn write_checkpoint(
        &self,
        lease: &Lease,
        step: u32,
        crc32: u32,
        body: Upload,
    ) -> Result<CheckpointRef, ControlError> {
        let resp = self
            .put_bytes(lease, &format!("checkpoints/{step}"), crc32, body)
            .await?;
        Self::json(resp).await
    }

    async fn event(&self, lease: &Lease, event: &EventRequest) -> Result<(), ControlError> {
        self.post_json(lease, "events", event).await.map(drop)
    }

    async fn put_asset(&self, lease: &Lease, kind: AssetKind, crc32: u32, body: Upload) -> Result<(), ControlError> {
        self.put_bytes(lease, &format!("assets/{}", kind.as_str()), crc32, body)
            .await
            .map(drop)
    }

    async fn complete(&self, lease: &Lease, video_bytes: u64) -> Result<(), ControlError> {
        self.post_json(lease, "complete", &CompleteRequest { video_bytes })
            .await
            .map(drop)
    }

    async fn fail(&self, lease: &Lease, error: &JobError) -> Result<(), ControlError> {
        self.post_json(lease, "fail", error).await.map(drop)
    }

    async fn release(&self, lease: &Lease, cause: ReleaseCause) -> Result<(), ControlError> {
        self.post_json(lease, "release", &ReleaseRequest { cause })
            .await
            .map(drop)
    }

    async fn retry(&self, lease: &Lease, message: &str) -> Result<RetryOutcome, ControlError> {
        let body = RetryRequest {
            message: message.to_owned(),
        };
        let r: RetryResponse = Self::json(self.post_json(lease, "retry", &body).await?).await?;
        Ok(r.outcome)
    }

    async fn fleet(&self) -> Result<FleetInfo, ControlError> {
        let resp = self.send(None, || self.request(Method::GET, paths::FLEET)).await?;
        Self::json(resp).await
    }
}
