//! Where blobs live, as one URL an operator can pass on the command line.
//!
//! - `file:///abs/dir`: a [`LocalBlobStore`](crate::LocalBlobStore) rooted at
//!   that directory.
//! - `s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1`: an
//!   [`S3BlobStore`](crate::S3BlobStore). Without `endpoint` it is AWS itself
//!   (virtual-hosted addressing); with one, any S3-compatible server
//!   (path-style addressing, which MinIO and friends expect).
//!
//! Credentials never come from the URL: URLs end up in logs, process lists and
//! shell history, so a URL carrying `user:password@` is refused and the keys
//! come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (see
//! [`S3Credentials::from_env`]). Every parse error names what is wrong and
//! never echoes a secret.

use std::fmt;
use std::path::PathBuf;
use url::Url;
use videogen_core::blob::BlobError;

/// Region used when the URL names none (what S3-compatible servers expect).
pub const DEFAULT_REGION: &str = "us-east-1";
/// Query parameters an `s3://` URL may carry.
const S3_PARAMS: &[&str] = &["endpoint", "region"];

/// A parsed blob store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobUrl {
    /// A directory on this machine (absolute from [`BlobUrl::parse`]; relative allowed by `FromStr`).
    Local(PathBuf),
    S3(S3Location),
}

/// An S3 bucket and how to reach it (no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub region: String,
    /// `scheme://host[:port]` of an S3-compatible server; `None` is AWS.
    pub endpoint: Option<String>,
}

impl S3Location {
    /// Path-style requests (`endpoint/bucket/key`) when an endpoint is given:
    /// self-hosted servers rarely have wildcard DNS for `bucket.host`.
    pub fn path_style(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Plain HTTP is allowed only when the operator asked for it explicitly.
    pub fn allow_http(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
    }
}

fn config_err(message: impl Into<String>) -> BlobError {
    BlobError::Config(message.into())
}

/// At most 64 characters of untrusted text, for messages.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

impl BlobUrl {
    /// Parses `file:///abs/dir` or `s3://bucket?endpoint=...&region=...`.
    pub fn parse(raw: &str) -> Result<Self, BlobError> {
        let url = Url::parse(raw.trim()).map_err(|e| {
            config_err(format!(
                "blob URL is not a URL ({e}); expected file:///absolute/dir or s3://bucket?endpoint=...&region=..."
            ))
        })?;
        if url.fragment().is_some() {
            return Err(config_err("blob URL must not have a '#fragment'"));
        }
        match url.scheme() {
            "file" => parse_file(&url).map(BlobUrl::Local),
            "s3" => parse_s3(&url).map(BlobUrl::S3),
            other => Err(config_err(format!(
                "unknown blob URL scheme '{}' (expected 'file' or 's3')",
                shown(other)
            ))),
        }
    }
}

/// What the command line and the config file accept: [`BlobUrl::parse`],
/// and also a relative `file://DIR` (`file://./data/blobs`, the default under
/// `--data-dir`), taken as the path written after `file://`.
impl std::str::FromStr for BlobUrl {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self, BlobError> {
        match s.strip_prefix("file://") {
            Some("") => Err(config_err(
                "file blob URL names no directory: use file:///abs/dir or file://rel/dir",
            )),
            Some(dir) if !dir.starts_with('/') => Ok(BlobUrl::Local(PathBuf::from(dir))),
            _ => Self::parse(s),
        }
    }
}

/// As [`fmt::Display`] shows it (no credentials are ever kept).
impl serde::Serialize for BlobUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_file(url: &Url) -> Result<PathBuf, BlobError> {
    if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
        return Err(config_err(
            "file blob URL must not name a host: use file:///absolute/dir (three slashes)",
        ));
    }
    if let Some((k, _)) = url.query_pairs().next() {
        return Err(config_err(format!(
            "unknown query parameter '{}' in file blob URL (it takes none)",
            shown(&k)
        )));
    }
    let path = url
        .to_file_path()
        .map_err(|()| config_err("file blob URL has no usable absolute path (expected file:///absolute/dir)"))?;
    if path.parent().is_none() {
        return Err(config_err("file blob URL names the filesystem root; give a directory"));
    }
    Ok(path)
}

fn parse_s3(url: &Url) -> Result<S3Location, BlobError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_err(
            "s3 blob URL must not carry credentials (user:password@): set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY in the environment instead",
        ));
    }
    let bucket = url.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(config_err(
            "s3 blob URL is missing the bucket: s3://BUCKET?endpoint=...",
        ));
    }
    validate_bucket(bucket)?;
    if url.port().is_some() {
        return Err(config_err(
            "s3 blob URL has a port after the bucket: put the server in endpoint=http://host:port",
        ));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(config_err(format!(
            "s3 blob URL has a path '{}': key prefixes are not supported, use a bucket of its own",
            shown(url.path())
        )));
    }
    let (endpoint, region) = s3_params(url)?;
    Ok(S3Location {
        bucket: bucket.to_owned(),
        region: region.unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        endpoint,
    })
}

/// The `endpoint` and `region` query parameters; anything else is an error.
fn s3_params(url: &Url) -> Result<(Option<String>, Option<String>), BlobError> {
    let (mut endpoint, mut region) = (None, None);
    for (k, v) in url.query_pairs() {
        let slot = match k.as_ref() {
            "endpoint" => &mut endpoint,
            "region" => &mut region,
            other => {
                return Err(config_err(format!(
                    "unknown query parameter '{}' in s3 blob URL (known: {})",
                    shown(other),
                    S3_PARAMS.join(", ")
                )));
            }
        };
        if slot.is_some() {
            return Err(config_err(format!("query parameter '{k}' given twice in s3 blob URL")));
        }
        *slot = Some(match k.as_ref() {
            "endpoint" => parse_endpoint(&v)?,
            _ => parse_region(&v)?,
        });
    }
    Ok((endpoint, region))
}

/// S3's bucket naming rules, so a typo fails here and not on the first put.
fn validate_bucket(bucket: &str) -> Result<(), BlobError> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if (3..=63).contains(&bucket.len()) && ok_chars && ok_ends && !bucket.contains("..") {
        return Ok(());
    }
    Err(config_err(format!(
        "bad bucket name '{}': 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit",
        shown(bucket)
    )))
}

/// `http(s)://host[:port]`, returned in canonical form.
fn parse_endpoint(raw: &str) -> Result<String, BlobError> {
    let bad = |why: &str| config_err(format!("bad endpoint '{}': {why}", describe_masked(raw)));
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not carry credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("missing host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("only scheme://host[:port] is allowed (no path, query or fragment)"));
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_region(raw: &str) -> Result<String, BlobError> {
    let ok = !raw.is_empty() && raw.len() <= 64 && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(config_err(format!(
            "bad region '{}': letters, digits and '-' only (e.g. us-east-1)",
            shown(raw)
        )))
    }
}

/// Canonical form; safe to log, as a parsed URL never holds a secret.
impl fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobUrl::Local(path) => match Url::from_file_path(path) {
                Ok(url) => write!(f, "{url}"),
                Err(()) => write!(f, "file://{}", path.display()),
            },
            BlobUrl::S3(loc) => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                if let Some(e) = &loc.endpoint {
                    q.append_pair("endpoint", e);
                }
                q.append_pair("region", &loc.region);
                write!(f, "s3://{}?{}", loc.bucket, q.finish())
            }
        }
    }
}

/// `raw` with any `user:password@` (also inside query values such as
/// `endpoint=`) replaced by `***`, so even a URL that [`BlobUrl::parse`]
/// refuses can be printed in an error or a log line.
pub fn describe_masked(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw.trim()) else {
        return "<not a URL>".to_owned();
    };
    if !mask_userinfo(&mut url) {
        return "<URL with credentials>".to_owned();
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), mask_value(&v)))
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Replaces userinfo by `***`; `false` if the URL cannot hold a replacement.
fn mask_userinfo(url: &mut Url) -> bool {
    if !url.username().is_empty() && url.set_username("***").is_err() {
        return false;
    }
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return false;
    }
    true
}

fn mask_value(v: &str) -> String {
    match Url::parse(v) {
        Ok(inner) if !inner.username().is_empty() || inner.password().is_some() => describe_masked(v),
        _ => v.to_owned(),
    }
}

/// Static S3 keys. `Debug` shows only the access key id.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl S3Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// Temporary credentials (STS) also need their session token.
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN`. Both keys are required: falling back to instance
    /// metadata would turn a forgotten variable into a slow timeout against
    /// a self-hosted server.
    pub fn from_env() -> Result<Self, BlobError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) else {
            return Err(config_err(
                "s3 blob store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        };
        let creds = Self::new(id, secret);
        Ok(match var("AWS_SESSION_TOKEN") {
            Some(token) => creds.with_session_token(token),
            None => creds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, region: &str, endpoint: Option<&str>) -> BlobUrl {
        BlobUrl::S3(S3Location {
            bucket: bucket.into(),
            region: region.into(),
            endpoint: endpoint.map(Into::into),
        })
    }

    #[test]
    fn parses_good_urls() {
        assert_eq!(
            BlobUrl::parse("file:///var/lib/videogen/blobs").unwrap(),
            BlobUrl::Local("/var/lib/videogen/blobs".into())
        );
        assert_eq!(
            BlobUrl::parse("file:///tmp/with%20space").unwrap(),
            BlobUrl::Local("/tmp/with space".into())
        );
        assert_eq!(
            BlobUrl::parse("s3://videos?endpoint=http://127.0.0.1:9000&region=eu-west-1").unwrap(),
            s3("videos", "eu-west-1", Some("http://127.0.0.1:9000"))
        );
        assert_eq!(
            BlobUrl::parse("s3://my.videos-1/").unwrap(),
            s3("my.videos-1", DEFAULT_REGION, None)
        );
        // The endpoint is canonicalised: default port and trailing slash go.
        assert_eq!(
            BlobUrl::parse("s3://vid?endpoint=https%3A%2F%2Fs3.example.com%3A443%2F").unwrap(),
            s3("vid", DEFAULT_REGION, Some("https://s3.example.com"))
        );
    }

    #[test]
    fn addressing_and_http_follow_the_endpoint() {
        let BlobUrl::S3(local) = BlobUrl::parse("s3://b12?endpoint=http://127.0.0.1:9000").unwrap() else {
            panic!()
        };
        assert!(local.path_style() && local.allow_http());
        let BlobUrl::S3(aws) = BlobUrl::parse("s3://b12?region=us-west-2").unwrap() else {
            panic!()
        };
        assert!(!aws.path_style() && !aws.allow_http());
        let BlobUrl::S3(tls) = BlobUrl::parse("s3://b12?endpoint=https://minio.internal").unwrap() else {
            panic!()
        };
        assert!(tls.path_style() && !tls.allow_http());
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let cases = [
            ("/var/blobs", "not a URL"),
            ("ftp://host/dir", "unknown blob URL scheme 'ftp'"),
            ("gs://bucket", "unknown blob URL scheme 'gs'"),
            ("file://server/share", "must not name a host"),
            ("file:///tmp/x?mode=1", "unknown query parameter 'mode'"),
            ("file:///", "filesystem root"),
            ("s3://", "missing the bucket"),
            ("s3:///path", "missing the bucket"),
            ("s3://Videos", "bad bucket name 'Videos'"),
            ("s3://ab", "bad bucket name"),
            ("s3://-bucket", "bad bucket name"),
            ("s3://bucket:9000", "port"),
            ("s3://bucket/prefix/", "key prefixes are not supported"),
            ("s3://bucket#frag", "fragment"),
            ("s3://bucket?endpont=http://x", "unknown query parameter 'endpont'"),
            ("s3://bucket?region=a&region=b", "'region' given twice"),
            ("s3://bucket?region=", "bad region"),
            ("s3://bucket?region=us_east", "bad region"),
            ("s3://bucket?endpoint=localhost:9000", "bad endpoint"),
            ("s3://bucket?endpoint=ftp://host", "scheme must be http or https"),
            ("s3://bucket?endpoint=http://host/sub", "no path"),
            ("s3://bucket?endpoint=not%20a%20url", "bad endpoint"),
        ];
        for (raw, want) in cases {
            match BlobUrl::parse(raw) {
                Err(BlobError::Config(msg)) => assert!(msg.contains(want), "{raw}: {msg}"),
                other => panic!("{raw}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn credentials_in_urls_are_refused_and_never_echoed() {
        for raw in [
            "s3://AKIAEXAMPLE:s3cr3t@bucket?endpoint=http://127.0.0.1:9000",
            "s3://AKIAEXAMPLE@bucket",
            "s3://bucket?endpoint=http://AKIAEXAMPLE:s3cr3t@127.0.0.1:9000",
        ] {
            let msg = BlobUrl::parse(raw).unwrap_err().to_string();
            assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{raw}: {msg}");
            assert!(!msg.contains("s3cr3t") && !msg.contains("AKIAEXAMPLE"), "{raw}: {msg}");
            let masked = describe_masked(raw);
            assert!(
                !masked.contains("s3cr3t") && !masked.contains("AKIAEXAMPLE"),
                "{masked}"
            );
            assert!(masked.contains("***"), "{masked}");
        }
        assert_eq!(
            describe_masked("s3://bucket?endpoint=http://127.0.0.1:9000"),
            "s3://bucket?endpoint=http%3A%2F%2F127.0.0.1%3A9000"
        );
        assert_eq!(describe_masked("no url here"), "<not a URL>");
    }

    #[test]
    fn display_round_trips() {
        for raw in [
            "file:///var/lib/videogen/blobs",
            "s3://videos?endpoint=http://127.0.0.1:9000&region=eu-west-1",
            "s3://videos",
        ] {
            let parsed = BlobUrl::parse(raw).unwrap();
            assert_eq!(BlobUrl::parse(&parsed.to_string()).unwrap(), parsed, "{raw}");
        }
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = S3Credentials::new("AKIAEXAMPLE", "s3cr3t").with_session_token("tok3n");
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIAEXAMPLE"));
        assert!(!shown.contains("s3cr3t") && !shown.contains("tok3n"), "{shown}");
    }
}
