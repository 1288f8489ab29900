//! The Redis URL an operator configures, checked when it is read.

use std::fmt;
use std::str::FromStr;
use videogen_core::secret_url::SecretUrl;

/// `redis://[:PASSWORD@]HOST[:PORT][/DB]`, checked by the redis crate's own
/// parser; shown with the password masked. `rediss://` (TLS) is refused with
/// a clear message: this build links the redis crate without TLS, so such a
/// URL could never connect.
#[derive(Clone)]
pub struct RedisUrl(SecretUrl);

impl RedisUrl {
    /// The URL with its password: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = SecretUrl::new(s);
        if s.starts_with("rediss://") {
            return Err(format!(
                "{:?}: rediss:// (TLS) is not supported by this build; use redis:// (on a private network or \
                 through a TLS tunnel such as stunnel)",
                url.masked()
            ));
        }
        if !s.starts_with("redis://") {
            return Err(format!(
                "{:?} is not a Redis URL: use redis://[:PASSWORD@]HOST[:PORT][/DB]",
                url.masked()
            ));
        }
        let host = s
            .split_once("://")
            .map(|(_, r)| r.rsplit('@').next().unwrap_or(r))
            .unwrap_or_default();
        if host.is_empty() || host.starts_with(['/', ':', '?']) {
            return Err(format!("{:?} names no host", url.masked()));
        }
        match redis::Client::open(s) {
            Ok(_) => Ok(Self(url)),
            Err(e) => Err(format!("{:?} is not a valid Redis URL ({e})", url.masked())),
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl serde::Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::RedisUrl;

    #[test]
    fn redis_urls_parse_or_say_why_without_the_password() {
        let u: Result<RedisUrl, _> = "redis://:hunter2@cache:6380/0".parse();
        assert_eq!(u.map(|u| u.to_string()).as_deref(), Ok("redis://:****@cache:6380/0"));
        let tls = "rediss://:hunter2@cache:6380/0"
            .parse::<RedisUrl>()
            .err()
            .unwrap_or_default();
        assert!(
            tls.contains("not supported by this build") && !tls.contains("hunter2"),
            "{tls}"
        );
        for bad in ["http://x", "redis://", "redis://:hunter2@", "redis://h:port"] {
            let e = bad.parse::<RedisUrl>().err().unwrap_or_default();
            assert!(!e.is_empty() && !e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
