//! [`RemoteOpenAiConfig`]: where the upstream is and how patient to be.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::RemoteError;

/// Default [`RemoteOpenAiConfig::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`RemoteOpenAiConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`RemoteOpenAiConfig::overall_timeout`].
pub const DEFAULT_OVERALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default [`RemoteOpenAiConfig::max_download_bytes`]: 2 GiB.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 2 << 30;
/// Default [`RemoteOpenAiConfig::max_decoded_bytes`]: 4 GiB of RGB frames.
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 4 << 30;

/// How `POST /v1/videos` bodies are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestEncoding {
    /// `application/json`, or `multipart/form-data` when the request has a
    /// first frame (it travels as the `input_reference` file). SGLang,
    /// OpenAI and videogen take both.
    #[default]
    Json,
    /// Always `multipart/form-data`, every field a text part: what
    /// vLLM-Omni's `/v1/videos` requires.
    Multipart,
}

/// One upstream engine serving OpenAI's `/v1/videos`.
#[derive(Clone)]
pub struct RemoteOpenAiConfig {
    /// Where the engine listens, e.g. `http://sglang:30000`. `/v1/videos` is
    /// appended; a URL that already ends in `/v1` gets `/videos` only (the
    /// OpenAI SDKs' convention). `http` or `https`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// The `model` field of every create request: the upstream's name for
    /// the model (e.g. `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`), not videogen's.
    pub upstream_model: String,
    /// Wait between status polls when the upstream sends no
    /// `openai-poll-after-ms` header (one it sends wins, within 10 ms..=60 s).
    pub poll_interval: Duration,
    /// Limit on each request (create, poll, cancel) and on each gap between
    /// chunks of a download; also the connect timeout.
    pub request_timeout: Duration,
    /// Longest a generation may take from create to completed; past it the
    /// attempt fails (retryable) and the upstream job is cancelled. A
    /// download gets this long again.
    pub overall_timeout: Duration,
    /// Largest MP4 accepted from `/content`.
    pub max_download_bytes: u64,
    /// Most RGB bytes the decoded clip may take at the request's size
    /// (`frames * width * height * 3`).
    pub max_decoded_bytes: u64,
    /// JSON or multipart create bodies.
    pub encoding: RequestEncoding,
    /// Send the extension fields (`seed`, `num_inference_steps`, `fps`,
    /// `negative_prompt`, `guidance_scale`). On by default; off for
    /// OpenAI itself, which rejects unknown parameters.
    pub extension_fields: bool,
    /// Also send `num_frames` (SGLang and vLLM-Omni extension), so the
    /// upstream makes exactly the request's frame count rather than
    /// `seconds * fps`. Off by default: OpenAI and videogen reject it.
    pub send_num_frames: bool,
    /// `DELETE` the upstream job once its video is downloaded (it is in
    /// videogen's storage from then on). On by default.
    pub delete_after_download: bool,
    /// The model card's style presets, name to prompt suffix: a request's
    /// `style` is appended to the prompt as `", <suffix>"` (nothing for an
    /// empty suffix), and a style without a preset as `", <style> style"`,
    /// as a hosted model does (`ModelCard::style_suffix`). The presets'
    /// negative prompts are already in the request.
    pub style_suffixes: BTreeMap<String, String>,
}

impl RemoteOpenAiConfig {
    /// A config with the defaults for everything but where and what.
    pub fn new(base_url: impl Into<String>, upstream_model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            upstream_model: upstream_model.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            overall_timeout: DEFAULT_OVERALL_TIMEOUT,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            encoding: RequestEncoding::Json,
            extension_fields: true,
            send_num_frames: false,
            delete_after_download: true,
            style_suffixes: BTreeMap::new(),
        }
    }

    /// Checks the config; returns the URL of the `/v1/videos` collection.
    pub fn videos_url(&self) -> Result<Url, RemoteError> {
        let bad = |m: String| RemoteError::Config(m);
        let mut url =
            Url::parse(self.base_url.trim()).map_err(|e| bad(format!("base_url {:?}: {e}", self.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
            return Err(bad(format!("base_url {:?} must be an http(s) URL", self.base_url)));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(format!(
                "base_url {:?} must not have a query or fragment",
                self.base_url
            )));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let path = if path.ends_with("/v1") {
            format!("{path}/videos")
        } else {
            format!("{path}/v1/videos")
        };
        url.set_path(&path);
        if self.upstream_model.trim().is_empty() {
            return Err(bad("upstream_model must not be empty".into()));
        }
        if self
            .api_key
            .as_deref()
            .is_some_and(|k| k.is_empty() || k.bytes().any(|b| b.is_ascii_control() || b == b' ') || !k.is_ascii())
        {
            return Err(bad("api_key must be non-empty printable ASCII without spaces".into()));
        }
        let positive = [
            ("poll_interval", self.poll_interval),
            ("request_timeout", self.request_timeout),
            ("overall_timeout", self.overall_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(bad(format!("{name} must be positive")));
            }
        }
        if self.max_download_bytes == 0 || self.max_decoded_bytes == 0 {
            return Err(bad("max_download_bytes and max_decoded_bytes must be positive".into()));
        }
        Ok(url)
    }
}

impl fmt::Debug for RemoteOpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("upstream_model", &self.upstream_model)
            .field("poll_interval", &self.poll_interval)
            .field("request_timeout", &self.request_timeout)
            .field("overall_timeout", &self.overall_timeout)
            .field("max_download_bytes", &self.max_download_bytes)
            .field("max_decoded_bytes", &self.max_decoded_bytes)
            .field("encoding", &self.encoding)
            .field("extension_fields", &self.extension_fields)
            .field("send_num_frames", &self.send_num_frames)
            .field("delete_after_download", &self.delete_after_download)
            .field("style_suffixes", &self.style_suffixes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_url_appends_v1_videos_once() {
        for (base, want) in [
            ("http://h:30000", "http://h:30000/v1/videos"),
            ("http://h:30000/", "http://h:30000/v1/videos"),
            ("https://api.example.com/v1", "https://api.example.com/v1/videos"),
            ("https://api.example.com/v1/", "https://api.example.com/v1/videos"),
            ("http://gw/sglang", "http://gw/sglang/v1/videos"),
        ] {
            let c = RemoteOpenAiConfig::new(base, "m");
            assert_eq!(c.videos_url().unwrap().as_str(), want, "{base}");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases: Vec<(RemoteOpenAiConfig, &str)> = vec![
            (RemoteOpenAiConfig::new("ftp://h", "m"), "http"),
            (RemoteOpenAiConfig::new("not a url", "m"), "base_url"),
            (RemoteOpenAiConfig::new("http://h?x=1", "m"), "query"),
            (RemoteOpenAiConfig::new("http://h", " "), "upstream_model"),
            (
                RemoteOpenAiConfig {
                    api_key: Some("a b".into()),
                    ..RemoteOpenAiConfig::new("http://h", "m")
                },
                "api_key",
            ),
            (
                RemoteOpenAiConfig {
                    poll_interval: Duration::ZERO,
                    ..RemoteOpenAiConfig::new("http://h", "m")
                },
                "poll_interval",
            ),
            (
                RemoteOpenAiConfig {
                    max_download_bytes: 0,
                    ..RemoteOpenAiConfig::new("http://h", "m")
                },
                "max_download_bytes",
            ),
        ];
        for (c, needle) in cases {
            let err = c.videos_url().unwrap_err();
            assert!(matches!(err, RemoteError::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = RemoteOpenAiConfig {
            api_key: Some("sk-very-secret".into()),
            ..RemoteOpenAiConfig::new("http://h", "m")
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
