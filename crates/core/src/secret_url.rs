//! URLs of services that may carry credentials (`postgres://user:pass@host`,
//! `redis://:pass@host`, `?password=`): kept as a secret, shown masked.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// What a masked credential is shown as.
pub const MASK: &str = "****";

/// A URL that may hold credentials: `Debug`, `Display` and `Serialize` mask
/// them, so it can be logged and printed; only [`SecretUrl::expose`] gives
/// the URL to connect with.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with its credentials: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with any password masked.
    pub fn masked(&self) -> String {
        mask_url(self.expose())
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks the password of a URL's user info and the values of query
/// parameters that look secret (`password`, `token`, `secret`, `key`).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@').map(|(u, h)| (u.split_once(':'), h)) {
        Some((Some((user, _)), host)) => format!("{user}:{MASK}@{host}"),
        _ => authority.to_owned(),
    };
    let Some((path, query)) = tail.split_once('?') else {
        return format!("{scheme}://{authority}{tail}");
    };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["password", "passwd", "secret", "token", "key", "credential"]
            .iter()
            .any(|s| name.contains(s))
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(name) => format!("{name}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    format!("{scheme}://{authority}{path}?{}{fragment}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_url_hides_passwords_only() {
        assert_eq!(mask_url("postgres://u:p@h:5432/db"), "postgres://u:****@h:5432/db");
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url("redis://:p@h"), "redis://:****@h");
        assert_eq!(
            mask_url("postgres://u:p:q@x@h/db?sslmode=require&password=z#f"),
            "postgres://u:****@h/db?sslmode=require&password=****#f"
        );
        assert_eq!(mask_url("s3://b?region=r"), "s3://b?region=r");
        assert_eq!(mask_url("sqlite://./data/videogen.db"), "sqlite://./data/videogen.db");
    }

    #[test]
    fn debug_display_and_serialize_mask() {
        let u = SecretUrl::new("postgres://u:hunter2@h/db");
        for shown in [
            format!("{u:?}"),
            u.to_string(),
            serde_json::to_string(&u).unwrap_or_default(),
        ] {
            assert!(!shown.contains("hunter2") && shown.contains(MASK), "{shown}");
        }
        assert_eq!(u.expose(), "postgres://u:hunter2@h/db");
    }
}
