//! Identifiers. Video ids are `video_` + 32 lowercase hex digits of a UUIDv7,
//! so they sort by creation time (cursor pagination relies on this) and can be
//! validated before touching the database.

use serde::{Deserialize, Serialize};
use std::fmt;

const VIDEO_PREFIX: &str = "video_";
const VIDEO_HEX_LEN: usize = 32;
/// Longest tenant name accepted anywhere.
pub const TENANT_MAX_LEN: usize = 64;

/// A video (job) id, e.g. `video_0192f3c4a1b27c3e8d5f6a7b8c9d0e1f`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VideoId(String);

impl VideoId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(format!("{VIDEO_PREFIX}{}", uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id from untrusted input; `None` if it is not of our form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(VIDEO_PREFIX)?;
        let ok = hex.len() == VIDEO_HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of videos and API keys. Names are `[A-Za-z0-9_.-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= TENANT_MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        ok.then(|| Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker identity: `{node}/{name}`. In-process workers of a server node
/// share the node prefix so that node can reclaim their leases on restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    pub fn new(node: &str, name: &str) -> Self {
        Self(format!("{node}/{name}"))
    }
    pub fn from_raw(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The node part (before the first `/`).
    pub fn node(&self) -> &str {
        self.0.split('/').next().unwrap_or("")
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_video_ids_parse_and_sort_by_time() {
        // `Uuid::now_v7` orders the ids of one process by creation, within
        // a millisecond too (a counter), so no pause is needed between them.
        let ids: Vec<VideoId> = (0..1000).map(|_| VideoId::generate()).collect();
        for id in &ids {
            assert_eq!(VideoId::parse(id.as_str()).as_ref(), Some(id));
        }
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} should sort before {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn malformed_video_ids_are_rejected() {
        for bad in [
            "",
            "video_",
            "video_0192F3C4A1B27C3E8D5F6A7B8C9D0E1F",
            "video_0192f3c4a1b27c3e8d5f6a7b8c9d0e1",
            "video_0192f3c4a1b27c3e8d5f6a7b8c9d0e1ff",
            "vid_0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
            "video_0192f3c4a1b27c3e8d5f6a7b8c9d0e1g",
            "video_../../../../etc/passwd0000000",
        ] {
            assert!(VideoId::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_names_are_bounded_and_plain() {
        assert!(TenantId::parse("acme-corp_1.eu").is_some());
        assert!(TenantId::parse("").is_none());
        assert!(TenantId::parse("a b").is_none());
        assert!(TenantId::parse(&"x".repeat(65)).is_none());
    }

    #[test]
    fn worker_node_is_the_prefix() {
        assert_eq!(WorkerId::new("node-1", "w0").node(), "node-1");
    }
}
