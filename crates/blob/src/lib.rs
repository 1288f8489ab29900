//! Blob storage for videogen over the [`object_store`] crate.
//!
//! Video bytes, thumbnails, spritesheets, input references and checkpoints
//! live here; the database only holds their keys (see
//! [`videogen_core::blob::keys`]).
//!
//! # Layout
//! - [`ObjectBlobStore`]: implements [`BlobStore`] over any
//!   `Arc<dyn ObjectStore>`. GCS or Azure plug in later by handing it a
//!   different store; callers see no API change.
//! - [`LocalBlobStore`]: an [`ObjectBlobStore`] over
//!   [`LocalFileSystem`] rooted at a directory, for single-node deployments
//!   and tests.
//! - [`S3BlobStore`]: an [`ObjectBlobStore`] over an S3 bucket, with
//!   checksummed uploads and pre-signed download URLs.
//! - [`open_url`] / [`BlobUrl`]: picks and configures one of them from a
//!   `file://` or `s3://` URL.
//! - [`validate_key`] / [`validate_prefix`]: the key rules every backend
//!   enforces, so a key that works locally also works on S3 and a key can
//!   never escape the store's root.
//!
//! # Atomicity
//! [`LocalFileSystem`] writes a put into a staging file next to the target
//! (`<key>#<n>`) and then `rename(2)`s it over the target, so a concurrent
//! reader sees the old or the new bytes, never a mix. Staging names contain
//! `#`, which [`validate_key`] rejects, so a staging file can never collide
//! with a real key; `object_store` also hides such files from listings.
//! Object stores such as S3 give the same guarantee for single `PUT`s.
//!
//! Objects over [`MULTIPART_THRESHOLD`] go by multipart upload: parts travel
//! in parallel and are retried one by one, and the object appears only when
//! the upload completes. Any failure aborts the upload, so it never leaves a
//! visible object (and no parts to pay for). An upload whose task is dropped
//! mid-way cannot abort; S3 buckets should carry the usual lifecycle rule that
//! reaps incomplete multipart uploads.

mod config;
mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use videogen_core::blob::{BlobError, BlobMeta, BlobStore, ByteStream};

pub use config::{BlobUrl, DEFAULT_REGION, S3Credentials, S3Location, describe_masked};
pub use s3::{S3BlobStore, SIGNED_URL_TTL_MAX};

/// Objects larger than this many bytes go by multipart upload.
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;
/// Size of every multipart part but the last (S3 needs at least 5 MiB).
pub const MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once: enough to fill a link, few enough
/// not to starve other requests.
const MULTIPART_CONCURRENCY: usize = 4;

/// Opens the store a blob URL names (see [`BlobUrl`]): `file:///abs/dir` or
/// `s3://bucket?endpoint=...&region=...`, with S3 credentials from
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub fn open_url(url: &str) -> Result<Arc<dyn BlobStore>, BlobError> {
    BlobUrl::parse(url)?.open()
}

impl BlobUrl {
    /// Opens the store this URL names (a relative directory is fine here).
    pub fn open(&self) -> Result<Arc<dyn BlobStore>, BlobError> {
        match self {
            BlobUrl::Local(root) => Ok(Arc::new(LocalBlobStore::new(root)?)),
            BlobUrl::S3(location) => Ok(Arc::new(S3BlobStore::new(location, &S3Credentials::from_env()?)?)),
        }
    }
}

/// Longest accepted key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest accepted key segment, in bytes (the usual file-name limit).
pub const MAX_SEGMENT_LEN: usize = 255;

/// Where `s3s-fs`, the S3-compatible server the tests and `videogen bench
/// checkpoint-storm` start on loopback, is installed: `$VIDEOGEN_S3_SERVER`,
/// else `s3s-fs` on `PATH` or in `$CARGO_HOME/bin` (`~/.cargo/bin`), where
/// `scripts/s3-server.sh` puts it. `None` when it is nowhere.
pub fn s3s_fs_binary() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("VIDEOGEN_S3_SERVER") {
        return Some(p.into());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin/s3s-fs")))
        .find(|p| p.is_file())
}

/// Checks `key` names a single object: 1..=[`MAX_KEY_LEN`] bytes of
/// `[A-Za-z0-9._-]` segments joined by `/`, no leading or trailing `/`, no
/// empty, `.` or `..` segments, each segment at most [`MAX_SEGMENT_LEN`] bytes.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let invalid = |why: &str| {
        Err(BlobError::InvalidKey {
            key: truncate_for_message(key).to_owned(),
            reason: why.to_owned(),
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid(&format!("longer than {MAX_KEY_LEN} bytes"));
    }
    if key.starts_with('/') {
        return invalid("leading '/'");
    }
    if key.ends_with('/') {
        return invalid("trailing '/' (that is a prefix, not a key)");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return invalid("empty segment ('//')");
        }
        if segment == "." || segment == ".." {
            return invalid("'.' or '..' segment");
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return invalid(&format!("segment longer than {MAX_SEGMENT_LEN} bytes"));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return invalid(&format!("character {c:?} not allowed (only A-Z a-z 0-9 . _ - and '/')"));
        }
    }
    Ok(())
}

/// Checks `prefix` for [`BlobStore::delete_prefix`]: a valid key followed by
/// an optional trailing `/`. The empty prefix (the whole store) is refused.
pub fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() || prefix == "/" {
        return Err(BlobError::InvalidKey {
            key: prefix.to_owned(),
            reason: "refusing to delete the whole store".into(),
        });
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

fn truncate_for_message(key: &str) -> &str {
    match key.char_indices().nth(80) {
        Some((i, _)) => &key[..i],
        None => key,
    }
}

pub(crate) fn to_path(key: &str) -> Result<StorePath, BlobError> {
    validate_key(key)?;
    StorePath::parse(key).map_err(|e| BlobError::InvalidKey {
        key: truncate_for_message(key).to_owned(),
        reason: e.to_string(),
    })
}

/// `object_store`'s error as a [`BlobError`], keeping it as the source. What
/// a retry cannot fix is a fault; everything else (I/O, including a full
/// disk, timeouts, throttling and 5xx answers, which the client reports as
/// `Generic`) is the store being unavailable for now.
fn map_err(key: &str, err: object_store::Error) -> BlobError {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => BlobError::NotFound(key.to_string()),
        E::InvalidPath { source } => BlobError::InvalidKey {
            key: truncate_for_message(key).to_owned(),
            reason: source.to_string(),
        },
        e @ (E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::Precondition { .. }
        | E::AlreadyExists { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }) => BlobError::fault(key, e),
        e => BlobError::unavailable(key, e),
    }
}

/// A [`BlobStore`] over any [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
}

impl ObjectBlobStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// The wrapped store, e.g. for listing in admin tools.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    async fn put_multipart(&self, path: &StorePath, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let mut upload = self.inner.put_multipart(path).await.map_err(|e| map_err(key, e))?;
        let parts: Vec<_> = split_parts(bytes)
            .map(|part| upload.put_part(PutPayload::from_bytes(part)))
            .collect();
        let sent = futures::stream::iter(parts)
            .buffer_unordered(MULTIPART_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await;
        let done = match sent {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(abort_upload(upload, key, e).await),
        }
    }
}

/// `bytes` cut into [`MULTIPART_PART_SIZE`] slices (no copies).
fn split_parts(bytes: Bytes) -> impl Iterator<Item = Bytes> {
    let len = bytes.len();
    (0..len)
        .step_by(MULTIPART_PART_SIZE)
        .map(move |start| bytes.slice(start..len.min(start + MULTIPART_PART_SIZE)))
}

/// Aborts a failed upload so it leaves no object and no stored parts; the
/// error returned is the one that failed the upload.
async fn abort_upload(mut upload: Box<dyn MultipartUpload>, key: &str, err: object_store::Error) -> BlobError {
    match upload.abort().await {
        Ok(()) => map_err(key, err),
        Err(abort) => {
            tracing::warn!(key, error = %abort, "aborting a failed multipart upload failed too; its parts stay until a lifecycle rule reaps them");
            map_err(key, err)
        }
    }
}

/// Aborts a streamed upload that failed, logging if even that fails.
async fn abort_writer(writer: object_store::WriteMultipart, key: &str) {
    if let Err(e) = writer.abort().await {
        tracing::warn!(key, error = %e, "aborting a failed multipart upload failed too; its parts stay until a lifecycle rule reaps them");
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = to_path(key)?;
        if bytes.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(&path, key, bytes).await;
        }
        self.inner
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| map_err(key, e))
    }

    /// Up to [`MULTIPART_THRESHOLD`] bytes: one `PUT` of the collected
    /// chunks. Beyond: a multipart upload of [`MULTIPART_PART_SIZE`] parts,
    /// at most [`MULTIPART_CONCURRENCY`] in flight (the stream waits), so an
    /// upload holds at most about `(MULTIPART_CONCURRENCY + 1) *
    /// MULTIPART_PART_SIZE` bytes whatever its size. Any failure, of the body
    /// or of the store, aborts the upload: nothing becomes visible.
    async fn put_stream(&self, key: &str, mut body: ByteStream) -> Result<u64, BlobError> {
        let path = to_path(key)?;
        let body_error = |source| BlobError::Body {
            key: key.to_owned(),
            source,
        };
        let mut head = bytes::BytesMut::new();
        while head.len() <= MULTIPART_THRESHOLD {
            match body.next().await {
                Some(chunk) => head.extend_from_slice(&chunk.map_err(body_error)?),
                None => {
                    let size = head.len() as u64;
                    self.put(key, head.freeze()).await?;
                    return Ok(size);
                }
            }
        }
        let upload = self.inner.put_multipart(&path).await.map_err(|e| map_err(key, e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
        let mut size = head.len() as u64;
        writer.put(head.freeze());
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(source)) => {
                    abort_writer(writer, key).await;
                    return Err(body_error(source));
                }
            };
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                abort_writer(writer, key).await;
                return Err(map_err(key, e));
            }
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        writer.finish().await.map_err(|e| map_err(key, e))?;
        Ok(size)
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = to_path(key)?;
        let result = self.inner.get(&path).await.map_err(|e| map_err(key, e))?;
        result.bytes().await.map_err(|e| map_err(key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        let path = to_path(key)?;
        if range.start >= range.end {
            // object_store rejects empty ranges; an empty read of an existing
            // object is still well defined.
            self.inner.head(&path).await.map_err(|e| map_err(key, e))?;
            return Ok(Bytes::new());
        }
        self.inner.get_range(&path, range).await.map_err(|e| map_err(key, e))
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        let path = to_path(key)?;
        self.inner
            .head(&path)
            .await
            .map(|meta| meta.size)
            .map_err(|e| map_err(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = to_path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        validate_prefix(prefix)?;
        let path = StorePath::parse(prefix).map_err(|e| BlobError::InvalidKey {
            key: truncate_for_message(prefix).to_owned(),
            reason: e.to_string(),
        })?;
        // object_store matches prefixes on whole segments: `a/b` covers
        // `a/b/c` but not `a/bc`.
        let locations = self.inner.list(Some(&path)).map_ok(|meta| meta.location).boxed();
        self.inner
            .delete_stream(locations)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
            .or_else(|e| match e {
                // Raced with another delete: the goal state holds.
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(map_err(prefix, e)),
            })
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let path = prefix_path(prefix)?;
        match self.inner.list_with_delimiter(Some(&path)).await {
            Ok(listing) => Ok(listing.common_prefixes.into_iter().map(|p| format!("{p}/")).collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(map_err(prefix, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        let path = prefix_path(prefix)?;
        let metas: Vec<object_store::ObjectMeta> = match self.inner.list(Some(&path)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(map_err(prefix, e)),
        };
        Ok(metas
            .into_iter()
            .map(|m| BlobMeta {
                key: m.location.to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
            })
            .collect())
    }
}

/// A listing prefix as a store path (object_store matches whole segments).
fn prefix_path(prefix: &str) -> Result<StorePath, BlobError> {
    validate_prefix(prefix)?;
    StorePath::parse(prefix).map_err(|e| BlobError::InvalidKey {
        key: truncate_for_message(prefix).to_owned(),
        reason: e.to_string(),
    })
}

/// Blobs in a local directory: an [`ObjectBlobStore`] over [`LocalFileSystem`].
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
    store: ObjectBlobStore,
}

impl LocalBlobStore {
    /// Opens (creating if needed) a store rooted at `root`. Deleting the last
    /// object in a directory removes the emptied directories up to `root`.
    pub fn new(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)
            .map_err(|e| BlobError::Config(format!("creating blob root {}: {e}", root.display())))?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| BlobError::Config(format!("opening blob root {}: {e}", root.display())))?
            .with_automatic_cleanup(true);
        Ok(Self {
            root: root.to_path_buf(),
            store: ObjectBlobStore::new(Arc::new(fs)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generic store this wraps.
    pub fn as_object_store(&self) -> &ObjectBlobStore {
        &self.store
    }
}

/// Implements [`BlobStore`] for a wrapper whose field `store` is an
/// [`ObjectBlobStore`], delegating the byte operations and adding `extra`
/// methods (a backend's own, e.g. `signed_url`). A macro, not a default
/// method, because `#[async_trait]` must see the methods it rewrites.
macro_rules! delegate_blob_store {
    ($ty:ty { $($extra:item)* }) => {
        #[async_trait]
        impl BlobStore for $ty {
            async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
                self.store.put(key, bytes).await
            }
            async fn put_stream(&self, key: &str, body: $crate::ByteStream) -> Result<u64, BlobError> {
                self.store.put_stream(key, body).await
            }
            async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
                self.store.get(key).await
            }
            async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
                self.store.get_range(key, range).await
            }
            async fn size(&self, key: &str) -> Result<u64, BlobError> {
                self.store.size(key).await
            }
            async fn delete(&self, key: &str) -> Result<(), BlobError> {
                self.store.delete(key).await
            }
            async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
                self.store.delete_prefix(prefix).await
            }
            async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
                self.store.list_dirs(prefix).await
            }
            async fn list(&self, prefix: &str) -> Result<Vec<$crate::BlobMeta>, BlobError> {
                self.store.list(prefix).await
            }
            $($extra)*
        }
    };
}
pub(crate) use delegate_blob_store;

delegate_blob_store!(LocalBlobStore {});

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use videogen_core::VideoId;
    use videogen_core::blob::keys;

    fn store() -> (tempfile::TempDir, LocalBlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(&dir.path().join("nested/root")).unwrap();
        (dir, store)
    }

    fn chunks(n: usize, size: usize, fail_at: Option<usize>) -> ByteStream {
        let items = (0..n).map(move |i| {
            if Some(i) == fail_at {
                Err("the sender went away".into())
            } else {
                Ok(Bytes::from(vec![(i % 251) as u8; size]))
            }
        });
        Box::pin(futures::stream::iter(
            items.collect::<Vec<Result<Bytes, videogen_core::store::BoxError>>>(),
        ))
    }

    /// Small and multipart-sized streams land whole; a body that fails half
    /// way, before or after the multipart threshold, leaves nothing.
    #[tokio::test]
    async fn streamed_puts_land_whole_or_not_at_all() {
        let (_dir, s) = store();
        let mib = 1024 * 1024;
        for (key, n) in [("s/small", 3), ("s/large", 3 * MULTIPART_PART_SIZE / mib + 1)] {
            let size = s.put_stream(key, chunks(n, mib, None)).await.unwrap();
            assert_eq!(size, (n * mib) as u64, "{key}");
            let got = s.get(key).await.unwrap();
            assert_eq!(got.len(), n * mib, "{key}");
            for i in [0, n / 2, n - 1] {
                assert_eq!(got[i * mib], (i % 251) as u8, "{key} chunk {i}");
            }
        }
        let beyond = MULTIPART_THRESHOLD / mib + 3;
        for (key, n, fail_at) in [("f/small", 4, 2), ("f/large", beyond + 2, beyond)] {
            let r = s.put_stream(key, chunks(n, mib, Some(fail_at))).await;
            assert!(matches!(r, Err(BlobError::Body { .. })), "{key}: {r:?}");
            assert!(
                matches!(s.get(key).await, Err(BlobError::NotFound(_))),
                "{key} is not visible"
            );
        }
        // The failed multipart upload left no staging files behind either.
        let left: Vec<_> = walk(s.root());
        assert!(left.iter().all(|p| !p.contains("f/")), "{left:?}");
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn put_get_size_range_roundtrip() {
        let (_dir, s) = store();
        s.put("a/b/c.bin", Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(s.get("a/b/c.bin").await.unwrap(), &b"hello world"[..]);
        assert_eq!(s.size("a/b/c.bin").await.unwrap(), 11);
        assert_eq!(s.get_range("a/b/c.bin", 6..11).await.unwrap(), &b"world"[..]);
        assert_eq!(s.get_range("a/b/c.bin", 0..1).await.unwrap(), &b"h"[..]);
        assert!(s.get_range("a/b/c.bin", 3..3).await.unwrap().is_empty());
        // The object is a real file under the root.
        assert_eq!(std::fs::read(s.root().join("a/b/c.bin")).unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn empty_object() {
        let (_dir, s) = store();
        s.put("empty", Bytes::new()).await.unwrap();
        assert!(s.get("empty").await.unwrap().is_empty());
        assert_eq!(s.size("empty").await.unwrap(), 0);
        assert!(s.get_range("empty", 0..0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn overwrite_replaces_bytes() {
        let (_dir, s) = store();
        s.put("k", Bytes::from_static(b"a much longer first value"))
            .await
            .unwrap();
        s.put("k", Bytes::from_static(b"short")).await.unwrap();
        assert_eq!(s.get("k").await.unwrap(), &b"short"[..]);
        assert_eq!(s.size("k").await.unwrap(), 5);
    }

    #[tokio::test]
    async fn missing_objects_are_not_found() {
        let (_dir, s) = store();
        let nf = |r: Result<_, BlobError>| matches!(r, Err(BlobError::NotFound(k)) if k == "no/such");
        assert!(nf(s.get("no/such").await.map(|_| ())));
        assert!(nf(s.size("no/such").await.map(|_| ())));
        assert!(nf(s.get_range("no/such", 0..4).await.map(|_| ())));
        assert!(nf(s.get_range("no/such", 0..0).await.map(|_| ())));
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let (_dir, s) = store();
        s.put("x/y", Bytes::from_static(b"1")).await.unwrap();
        s.delete("x/y").await.unwrap();
        assert!(matches!(s.get("x/y").await, Err(BlobError::NotFound(_))));
        s.delete("x/y").await.unwrap();
        s.delete("never/existed").await.unwrap();
        // Emptied directories are cleaned up, the root stays.
        assert!(!s.root().join("x").exists());
        assert!(s.root().exists());
    }

    #[tokio::test]
    async fn delete_prefix_removes_only_that_prefix() {
        let (_dir, s) = store();
        for k in ["p/1", "p/2/a", "p/2/b", "pq/1", "other/p/1"] {
            s.put(k, Bytes::from_static(b"v")).await.unwrap();
        }
        s.delete_prefix("p/").await.unwrap();
        for k in ["p/1", "p/2/a", "p/2/b"] {
            assert!(matches!(s.get(k).await, Err(BlobError::NotFound(_))), "{k}");
        }
        for k in ["pq/1", "other/p/1"] {
            assert_eq!(s.get(k).await.unwrap(), &b"v"[..], "{k}");
        }
        // Idempotent, and fine on a prefix that never existed.
        s.delete_prefix("p/").await.unwrap();
        s.delete_prefix("nothing/here/").await.unwrap();
        // Without the trailing slash it still matches whole segments only.
        s.delete_prefix("pq").await.unwrap();
        assert!(matches!(s.get("pq/1").await, Err(BlobError::NotFound(_))));
        assert_eq!(s.get("other/p/1").await.unwrap(), &b"v"[..]);
    }

    #[tokio::test]
    async fn job_prefixes_cover_job_keys() {
        let (_dir, s) = store();
        let id = VideoId::generate();
        let other = VideoId::generate();
        for k in [
            keys::video(&id, 1),
            keys::thumbnail(&id, 1),
            keys::spritesheet(&id, 2),
            keys::checkpoint(&id, 1, 3),
            keys::input_reference(&id),
            keys::video(&other, 1),
        ] {
            validate_key(&k).unwrap();
            s.put(&k, Bytes::from_static(b"v")).await.unwrap();
        }
        for p in keys::job_prefixes(&id) {
            s.delete_prefix(&p).await.unwrap();
        }
        assert!(matches!(s.get(&keys::video(&id, 1)).await, Err(BlobError::NotFound(_))));
        assert!(matches!(
            s.get(&keys::input_reference(&id)).await,
            Err(BlobError::NotFound(_))
        ));
        assert_eq!(s.get(&keys::video(&other, 1)).await.unwrap(), &b"v"[..]);
    }

    #[tokio::test]
    async fn invalid_keys_are_rejected_everywhere() {
        let (dir, s) = store();
        let long_segment = "a".repeat(MAX_SEGMENT_LEN + 1);
        let long_key = vec!["a"; MAX_KEY_LEN].join("/");
        let bad = [
            "",
            "/abs",
            "trailing/",
            "a//b",
            "../escape",
            "a/../../escape",
            "a/./b",
            "..",
            "with space",
            "hash#1",
            "back\\slash",
            "ctl\u{7}",
            "ünicode",
            long_segment.as_str(),
            long_key.as_str(),
        ];
        for key in bad {
            for r in [
                s.put(key, Bytes::from_static(b"x")).await.err(),
                s.get(key).await.err(),
                s.get_range(key, 0..1).await.err(),
                s.size(key).await.err(),
                s.delete(key).await.err(),
            ] {
                match r {
                    Some(e @ BlobError::InvalidKey { .. }) => {
                        assert!(e.to_string().contains("invalid blob key"), "{key:?}: {e}");
                        assert!(!e.is_retryable());
                    }
                    other => panic!("{key:?}: expected InvalidKey, got {other:?}"),
                }
            }
        }
        for prefix in ["", "/", "../", "a//", "/a/"] {
            assert!(
                matches!(s.delete_prefix(prefix).await, Err(BlobError::InvalidKey { .. })),
                "{prefix:?}"
            );
        }
        // Nothing escaped the root.
        assert!(!dir.path().join("nested/escape").exists());
        assert!(!dir.path().join("escape").exists());
        // Boundaries are inclusive.
        let max_segment = "a".repeat(MAX_SEGMENT_LEN);
        validate_key(&max_segment).unwrap();
        let max_key = vec!["ab"; MAX_KEY_LEN / 3].join("/");
        assert!(max_key.len() <= MAX_KEY_LEN);
        validate_key(&max_key).unwrap();
        validate_key("outputs/ab/video_0123/1/video.mp4").unwrap();
    }

    /// A reader racing a writer only ever sees one complete value: the put
    /// stages into a sibling file and renames it into place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_readers_never_see_partial_puts() {
        let (_dir, s) = store();
        let s = Arc::new(s);
        let a = Bytes::from(vec![0xAA_u8; 3 << 20]);
        let b = Bytes::from(vec![0xBB_u8; 1 << 20]);
        s.put("race/obj", a.clone()).await.unwrap();

        let writer = {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..40 {
                    let v = if i % 2 == 0 { b.clone() } else { a.clone() };
                    s.put("race/obj", v).await.unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads < 10 {
            let got = s.get("race/obj").await.unwrap();
            let ok = match got.first() {
                Some(0xAA) => got.len() == 3 << 20 && got.iter().all(|&x| x == 0xAA),
                Some(0xBB) => got.len() == 1 << 20 && got.iter().all(|&x| x == 0xBB),
                _ => false,
            };
            assert!(ok, "torn read of {} bytes", got.len());
            reads += 1;
        }
        writer.await.unwrap();
        // No staging files are left behind.
        let names: Vec<_> = std::fs::read_dir(s.root().join("race"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["obj"]);
    }

    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    #[test]
    fn parts_cover_the_object_exactly() {
        let sizes = |len| split_parts(pattern(len)).map(|p| p.len()).collect::<Vec<_>>();
        assert_eq!(sizes(MULTIPART_PART_SIZE), [MULTIPART_PART_SIZE]);
        assert_eq!(sizes(MULTIPART_PART_SIZE + 1), [MULTIPART_PART_SIZE, 1]);
        assert_eq!(
            sizes(2 * MULTIPART_PART_SIZE + 7),
            [MULTIPART_PART_SIZE, MULTIPART_PART_SIZE, 7]
        );
        let whole = pattern(MULTIPART_PART_SIZE + 3);
        let joined: Vec<u8> = split_parts(whole.clone()).flat_map(|p| p.to_vec()).collect();
        assert_eq!(joined, whole);
    }

    /// Over the threshold the put goes multipart, locally too: same bytes,
    /// no staging files left.
    #[tokio::test]
    async fn large_objects_go_multipart_and_read_back_identical() {
        let (_dir, s) = store();
        let big = pattern(2 * MULTIPART_THRESHOLD + 12_345);
        s.put("big/obj", big.clone()).await.unwrap();
        assert_eq!(s.get("big/obj").await.unwrap(), big);
        assert_eq!(s.size("big/obj").await.unwrap(), big.len() as u64);
        let names: Vec<_> = std::fs::read_dir(s.root().join("big"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["obj"]);

        let mem = ObjectBlobStore::new(Arc::new(InMemory::new()));
        mem.put("big", big.clone()).await.unwrap();
        assert_eq!(
            mem.get_range("big", 5..MULTIPART_THRESHOLD as u64 + 9).await.unwrap(),
            big.slice(5..MULTIPART_THRESHOLD + 9)
        );
    }

    #[tokio::test]
    async fn local_stores_sign_no_urls() {
        let (_dir, s) = store();
        assert_eq!(
            s.signed_url("a/b", std::time::Duration::from_secs(60)).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn open_url_opens_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/blobs", dir.path().display());
        let s = open_url(&url).unwrap();
        s.put("k/v", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("blobs/k/v")).unwrap(), b"1");
        assert!(matches!(open_url("s3://"), Err(BlobError::Config(_))));
    }

    #[tokio::test]
    async fn generic_store_works_over_any_object_store() {
        let s = ObjectBlobStore::new(Arc::new(InMemory::new()));
        s.put("m/1", Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(s.get("m/1").await.unwrap(), &b"abc"[..]);
        assert_eq!(s.get_range("m/1", 1..3).await.unwrap(), &b"bc"[..]);
        assert_eq!(s.size("m/1").await.unwrap(), 3);
        assert!(matches!(s.get("m/2").await, Err(BlobError::NotFound(_))));
        s.delete("m/2").await.unwrap();
        s.delete_prefix("m/").await.unwrap();
        assert!(matches!(s.get("m/1").await, Err(BlobError::NotFound(_))));
        // Usable as a trait object, as the rest of the system holds it.
        let dynamic: Arc<dyn BlobStore> = Arc::new(s);
        dynamic.put("z", Bytes::from_static(b"1")).await.unwrap();
    }
}
