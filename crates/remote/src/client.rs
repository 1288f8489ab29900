//! The HTTP side: one reqwest client on a small private tokio runtime, and
//! the five calls the adapter makes (create, retrieve, delete, download,
//! probe), each with its status codes read into a [`RemoteError`].
//!
//! Why a private runtime: the `Model` seam is synchronous and is called from
//! `spawn_blocking` threads, while `Drop` (which cancels) may run anywhere,
//! an async task included. Every call is spawned onto the private runtime and
//! awaited through a channel, which works from any thread and can never
//! deadlock a caller's runtime; `Drop` only spawns.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use url::Url;

use crate::wire::{self, POLL_AFTER_HEADER, UpstreamVideo};
use crate::{RemoteError, RemoteOpenAiConfig};

/// Largest JSON reply read (a Video object is a few hundred bytes).
const JSON_MAX_BYTES: usize = 1 << 20;
/// Redirects a download follows (to signed storage URLs, say).
const MAX_REDIRECTS: u32 = 5;

/// Owns the runtime; shuts it down without blocking, so the last owner may
/// drop it anywhere (an async context included).
struct RuntimeOwner(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The upstream, as the adapter talks to it.
pub(crate) struct Upstream {
    handle: tokio::runtime::Handle,
    _runtime: RuntimeOwner,
    pub http: Http,
    videos: Url,
}

/// What every request needs; cheap to clone into a spawned task.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    api_key: Option<String>,
    pub timeout: Duration,
}

impl Upstream {
    pub fn new(config: &RemoteOpenAiConfig) -> Result<Self, RemoteError> {
        let videos = config.videos_url()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("videogen-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot start the I/O runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("videogen-remote/", env!("CARGO_PKG_VERSION")))
            // Redirects would carry the bearer key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            handle: runtime.handle().clone(),
            _runtime: RuntimeOwner(Some(runtime)),
            http: Http {
                client,
                api_key: config.api_key.clone(),
                timeout: config.request_timeout,
            },
            videos,
        })
    }

    /// Runs `fut` on the private runtime and waits for it (blocking the
    /// calling thread, which must not be one of that runtime's).
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output, RemoteError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| RemoteError::RuntimeGone)
    }

    /// Runs `fut` in the background (best effort: lost if the runtime stops).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    pub fn videos_url(&self) -> Url {
        self.videos.clone()
    }

    /// `/v1/videos/{id}` (the id percent-encoded as one path segment).
    pub fn job_url(&self, id: &str) -> Result<Url, RemoteError> {
        let mut url = self.videos.clone();
        url.path_segments_mut()
            .map_err(|()| RemoteError::Config("base_url cannot take a path".into()))?
            .pop_if_empty()
            .push(id);
        Ok(url)
    }

    /// `/v1/videos/{id}/content`.
    pub fn content_url(&self, id: &str) -> Result<Url, RemoteError> {
        let mut url = self.job_url(id)?;
        url.path_segments_mut()
            .map_err(|()| RemoteError::Config("base_url cannot take a path".into()))?
            .push("content");
        Ok(url)
    }

    /// `/v1/models`, next to `/v1/videos`: what a health probe asks for.
    pub fn models_url(&self) -> Result<Url, RemoteError> {
        let mut url = self.videos.clone();
        url.path_segments_mut()
            .map_err(|()| RemoteError::Config("base_url cannot take a path".into()))?
            .pop()
            .push("models");
        Ok(url)
    }
}

/// A reqwest error as a [`RemoteError`].
fn transport(what: &str, url: &Url, timeout: Duration, e: &reqwest::Error) -> RemoteError {
    if e.is_connect() {
        RemoteError::Connect {
            url: url.to_string(),
            message: error_chain(e),
        }
    } else if e.is_timeout() {
        RemoteError::Timeout {
            what: what.to_owned(),
            after: timeout,
        }
    } else {
        RemoteError::Transport {
            what: what.to_owned(),
            message: error_chain(e),
        }
    }
}

/// An error and its sources, which is where reqwest says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Reads a body of at most `max` bytes, each chunk within `idle`, all of it
/// by `deadline`. `Err(Ok(len))` when it is larger than `max`.
async fn read_body(
    resp: &mut reqwest::Response,
    max: u64,
    idle: Duration,
    deadline: Instant,
    what: &str,
    url: &Url,
) -> Result<Result<Vec<u8>, u64>, RemoteError> {
    let declared = resp.content_length();
    if let Some(len) = declared
        && len > max
    {
        return Ok(Err(len));
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |l| l.min(max).min(64 << 20) as usize));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = idle.min(left);
        let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
            Err(_) => {
                return Err(RemoteError::Timeout {
                    what: what.to_owned(),
                    after: wait,
                });
            }
            Ok(Err(e)) => return Err(transport(what, url, idle, &e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if body.len() as u64 + chunk.len() as u64 > max {
            return Ok(Err(body.len() as u64 + chunk.len() as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

impl Http {
    fn request(&self, method: Method, url: Url, auth: bool) -> reqwest::RequestBuilder {
        let mut b = self.client.request(method, url);
        if auth && let Some(key) = &self.api_key {
            b = b.bearer_auth(key);
        }
        b
    }

    /// Sends a request whose reply is JSON; returns status, hint and body.
    async fn json_call(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<(StatusCode, Option<Duration>, Vec<u8>), RemoteError> {
        let deadline = Instant::now() + self.timeout;
        let mut resp = builder
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(what, url, self.timeout, &e))?;
        let status = resp.status();
        let hint = wire::poll_hint(resp.headers().get(POLL_AFTER_HEADER).and_then(|v| v.to_str().ok()));
        let body = match read_body(&mut resp, JSON_MAX_BYTES as u64, self.timeout, deadline, what, url).await? {
            Ok(b) => b,
            Err(len) => {
                return Err(RemoteError::Protocol(format!(
                    "the reply to {what} is {len} bytes, more than {JSON_MAX_BYTES} for a JSON object"
                )));
            }
        };
        Ok((status, hint, body))
    }

    /// `POST /v1/videos`.
    pub async fn create(
        self,
        url: Url,
        content_type: String,
        body: Vec<u8>,
    ) -> Result<(UpstreamVideo, Option<Duration>), RemoteError> {
        let what = "create (POST /v1/videos)";
        let b = self
            .request(Method::POST, url.clone(), true)
            .header(header::CONTENT_TYPE, content_type)
            .body(body);
        let (status, hint, body) = self.json_call(what, b, &url).await?;
        if status.is_success() {
            let video = wire::parse_video(&body).map_err(RemoteError::Protocol)?;
            return Ok((video, hint));
        }
        let (code, message) = wire::error_body(&body);
        let s = status.as_u16();
        Err(match s {
            401 | 403 => RemoteError::Unauthorized {
                what: what.into(),
                status: s,
                message,
            },
            404 | 405 => RemoteError::Misconfigured {
                what: what.into(),
                status: s,
                message,
            },
            408 | 409 | 429 => RemoteError::Status {
                what: what.into(),
                status: s,
                message,
            },
            400..=499 => RemoteError::Rejected {
                status: s,
                code,
                message,
            },
            _ => RemoteError::Status {
                what: what.into(),
                status: s,
                message,
            },
        })
    }

    /// `GET /v1/videos/{id}`.
    pub async fn retrieve(self, url: Url) -> Result<(UpstreamVideo, Option<Duration>), RemoteError> {
        let what = "poll (GET /v1/videos/{id})";
        let b = self.request(Method::GET, url.clone(), true);
        let (status, hint, body) = self.json_call(what, b, &url).await?;
        if status.is_success() {
            let video = wire::parse_video(&body).map_err(RemoteError::Protocol)?;
            return Ok((video, hint));
        }
        let (_, message) = wire::error_body(&body);
        let s = status.as_u16();
        Err(match s {
            401 | 403 => RemoteError::Unauthorized {
                what: what.into(),
                status: s,
                message,
            },
            _ => RemoteError::Status {
                what: what.into(),
                status: s,
                message,
            },
        })
    }

    /// `DELETE /v1/videos/{id}`: cancels (videogen, OpenAI) or forgets
    /// (SGLang, which keeps generating) the job. Best effort: the outcome is
    /// only logged.
    pub async fn delete(self, url: Url) {
        let what = "cancel (DELETE /v1/videos/{id})";
        let b = self.request(Method::DELETE, url.clone(), true);
        match self.json_call(what, b, &url).await {
            Ok((status, _, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                tracing::debug!(%url, %status, "upstream job deleted");
            }
            Ok((status, _, body)) => {
                let (_, message) = wire::error_body(&body);
                tracing::warn!(%url, %status, "upstream refused to delete the job: {message}");
            }
            Err(e) => tracing::warn!(%url, "could not delete the upstream job: {e}"),
        }
    }

    /// `GET` of a video: at most `max` bytes, each chunk within the request
    /// timeout, all of it by `deadline`, following up to five redirects
    /// (videogen's `--download-redirect`, CDN-backed engines). The key is
    /// sent only when `auth` and only to `url`'s origin. Returns the bytes
    /// and the declared content type.
    pub async fn download(
        self,
        url: Url,
        auth: bool,
        max: u64,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Option<String>), RemoteError> {
        let what = "download (GET /v1/videos/{id}/content)";
        let origin = url.origin();
        let mut url = url;
        let mut hops = 0;
        let mut resp = loop {
            let first_byte = self.timeout.min(deadline.saturating_duration_since(Instant::now()));
            // The key goes only to the upstream's own origin, never to
            // the storage a redirect points at.
            let send = self
                .request(Method::GET, url.clone(), auth && url.origin() == origin)
                .send();
            let resp = match tokio::time::timeout(first_byte, send).await {
                Err(_) => {
                    return Err(RemoteError::Timeout {
                        what: what.into(),
                        after: first_byte,
                    });
                }
                Ok(r) => r.map_err(|e| transport(what, &url, self.timeout, &e))?,
            };
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|l| matches!(l.scheme(), "http" | "https"));
            match location {
                Some(next) if resp.status().is_redirection() && hops < MAX_REDIRECTS => {
                    tracing::debug!(from = %url, to = %next, "following the upstream's redirect");
                    hops += 1;
                    url = next;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !status.is_success() {
            let body = match read_body(&mut resp, JSON_MAX_BYTES as u64, self.timeout, deadline, what, &url).await {
                Ok(Ok(b)) => b,
                _ => Vec::new(),
            };
            let (_, message) = wire::error_body(&body);
            let s = status.as_u16();
            return Err(match s {
                401 | 403 => RemoteError::Unauthorized {
                    what: what.into(),
                    status: s,
                    message,
                },
                _ => RemoteError::Status {
                    what: what.into(),
                    status: s,
                    message,
                },
            });
        }
        match read_body(&mut resp, max, self.timeout, deadline, what, &url).await? {
            Ok(bytes) => Ok((bytes, content_type)),
            Err(len) => Err(RemoteError::TooLarge {
                id: url.to_string(),
                detail: format!("{len} bytes or more, at most {max} accepted (max_download_bytes)"),
            }),
        }
    }

    /// A health probe: any HTTP answer but 401/403 means the upstream is
    /// there (not every engine serves `/v1/models`).
    pub async fn probe(self, url: Url) -> Result<(), RemoteError> {
        let what = "health probe (GET /v1/models)";
        let b = self.request(Method::GET, url.clone(), true);
        let (status, _, body) = self.json_call(what, b, &url).await?;
        match status.as_u16() {
            401 | 403 => Err(RemoteError::Unauthorized {
                what: what.into(),
                status: status.as_u16(),
                message: wire::error_body(&body).1,
            }),
            _ => Ok(()),
        }
    }
}
