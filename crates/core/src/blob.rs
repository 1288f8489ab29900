//! The blob seam: video bytes, images and checkpoints live in object storage;
//! the database only holds their keys.
//!
//! Keys are built here, in one place, so every backend lays objects out the
//! same way. Attempt-scoped keys keep a zombie attempt from overwriting the
//! bytes of the attempt that owns the job now; only the fenced pointer commit
//! in the store makes a key visible.

use crate::ids::VideoId;
use crate::store::BoxError;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    /// Not a valid object key (or prefix): the caller's mistake, which no
    /// retry fixes; nothing was sent to the store.
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The body of a streamed write failed before its end (the sender went
    /// away, or a check on the bytes refused them); nothing was written.
    #[error("reading the bytes for {key}: {source}")]
    Body {
        key: String,
        #[source]
        source: BoxError,
    },
    /// The store cannot do it now (network, throttling, a 5xx, a full disk):
    /// the same call may succeed later. A failed write left nothing visible.
    #[error("blob store unavailable ({key}): {source}")]
    Unavailable {
        key: String,
        #[source]
        source: BoxError,
    },
    /// Failed in a way a retry will not fix (access denied, a rejected
    /// checksum, a precondition).
    #[error("blob store fault ({key}): {source}")]
    Fault {
        key: String,
        #[source]
        source: BoxError,
    },
    /// A blob store URL or its settings are wrong; the message says what.
    #[error("blob store configuration: {0}")]
    Config(String),
}

impl BlobError {
    pub fn unavailable(key: &str, source: impl Into<BoxError>) -> Self {
        BlobError::Unavailable {
            key: key.to_owned(),
            source: source.into(),
        }
    }

    pub fn fault(key: &str, source: impl Into<BoxError>) -> Self {
        BlobError::Fault {
            key: key.to_owned(),
            source: source.into(),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BlobError::Unavailable { .. })
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    /// Last written, in ms since the Unix epoch.
    pub modified_ms: i64,
}

/// The bytes of a streamed write, chunk by chunk.
pub type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, BoxError>> + Send>>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes the whole object atomically: readers see the old or the new bytes, never a mix.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError>;
    /// Writes the object from a stream of chunks, atomically like
    /// [`BlobStore::put`], holding a bounded amount in memory however large
    /// it is; returns its size. An error item in the stream fails the write
    /// (as [`BlobError::Body`]) and leaves nothing visible.
    ///
    /// The default collects the stream and calls `put`: right for stores
    /// whose objects are small; the object-store backends override it.
    async fn put_stream(&self, key: &str, mut body: ByteStream) -> Result<u64, BlobError> {
        use futures::StreamExt;
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| BlobError::Body {
                key: key.to_owned(),
                source,
            })?;
            buf.extend_from_slice(&chunk);
        }
        let size = buf.len() as u64;
        self.put(key, buf.freeze()).await?;
        Ok(size)
    }
    async fn get(&self, key: &str) -> Result<Bytes, BlobError>;
    /// Bytes `range.start..range.end` (end exclusive, clamped by the caller to the size).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError>;
    async fn size(&self, key: &str) -> Result<u64, BlobError>;
    /// Idempotent: deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Deletes every object under `prefix` (which should end in `/`).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError>;
    /// The "directories" one level under `prefix` (which ends in `/`),
    /// each ending in `/`: walks the key tree a level at a time (the
    /// orphan sweep goes shard by shard, job by job).
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    /// Every object under `prefix`, with its size and age.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError>;
    /// A URL anyone may `GET` the object from until `ttl` passes, so clients
    /// download straight from storage instead of through the API.
    ///
    /// `None` when the backend cannot sign URLs itself (a local directory):
    /// the API then signs its own URLs to its `/files` route. The URL is
    /// minted offline; it does not prove the object exists.
    async fn signed_url(&self, _key: &str, _ttl: Duration) -> Result<Option<String>, BlobError> {
        Ok(None)
    }
}

/// First two hex digits of the id's random tail: spreads keys across prefixes,
/// as object stores rate-limit per prefix.
fn shard(id: &VideoId) -> &str {
    let s = id.as_str();
    &s[s.len() - 2..]
}

pub mod keys {
    use super::*;

    /// Everything a job owns lives under these two prefixes.
    pub fn job_prefixes(id: &VideoId) -> [String; 3] {
        [
            format!("outputs/{}/{id}/", shard(id)),
            format!("checkpoints/{}/{id}/", shard(id)),
            format!("inputs/{}/{id}/", shard(id)),
        ]
    }
    pub fn input_reference(id: &VideoId) -> String {
        format!("inputs/{}/{id}/reference.png", shard(id))
    }
    pub fn checkpoint(id: &VideoId, attempt: u32, step: u32) -> String {
        format!("checkpoints/{}/{id}/{attempt}/{step:06}.ckpt", shard(id))
    }
    pub fn video(id: &VideoId, attempt: u32) -> String {
        format!("outputs/{}/{id}/{attempt}/video.mp4", shard(id))
    }
    pub fn thumbnail(id: &VideoId, attempt: u32) -> String {
        format!("outputs/{}/{id}/{attempt}/thumbnail.jpg", shard(id))
    }
    pub fn spritesheet(id: &VideoId, attempt: u32) -> String {
        format!("outputs/{}/{id}/{attempt}/spritesheet.jpg", shard(id))
    }
    /// Where a node proves the store takes writes again (see
    /// `videogen_control::storage_health`); deleted right after.
    pub fn write_probe(node: &str) -> String {
        format!("probes/{node}.probe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_attempt_scoped_and_under_the_job_prefixes() {
        let id = VideoId::generate();
        let [out, ck, input] = keys::job_prefixes(&id);
        assert!(keys::video(&id, 1).starts_with(&out));
        assert_ne!(keys::video(&id, 1), keys::video(&id, 2));
        assert!(keys::checkpoint(&id, 2, 7).starts_with(&ck));
        assert!(keys::input_reference(&id).starts_with(&input));
    }
}
