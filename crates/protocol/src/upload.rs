//! Upload bodies (checkpoints and assets) and the checks every one passes.
//!
//! A worker holds its own output in memory and sends it whole
//! ([`Upload::Bytes`], replayable, so the HTTP client may retry it). The
//! server's side of the worker API receives it as a stream of chunks
//! ([`Upload::Stream`]) and passes it to the blob store without ever holding
//! it whole: [`checked`] counts and checksums the chunks on the way and turns
//! an oversized or corrupt body into an error *before* the stream ends, so the
//! store aborts the write and nothing lands.

use bytes::Bytes;
use futures::StreamExt;
use videogen_core::blob::{BlobError, ByteStream};
use videogen_core::store::BoxError;

use crate::control::ControlError;

/// Largest checkpoint or asset the control plane stores.
pub const MAX_UPLOAD_BYTES: u64 = 1024 * 1024 * 1024;

/// A checkpoint or asset on its way to the bucket.
pub enum Upload {
    /// The whole body in memory.
    Bytes(Bytes),
    /// A body arriving in chunks (consumed once, never buffered whole).
    Stream(ByteStream),
}

impl From<Bytes> for Upload {
    fn from(b: Bytes) -> Self {
        Upload::Bytes(b)
    }
}

impl From<Vec<u8>> for Upload {
    fn from(b: Vec<u8>) -> Self {
        Upload::Bytes(Bytes::from(b))
    }
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upload::Bytes(b) => write!(f, "Upload::Bytes({} bytes)", b.len()),
            Upload::Stream(_) => f.write_str("Upload::Stream"),
        }
    }
}

impl Upload {
    /// Collects the body (for callers that need it whole, e.g. a test fake).
    pub async fn into_bytes(self) -> Result<Bytes, BoxError> {
        match self {
            Upload::Bytes(b) => Ok(b),
            Upload::Stream(mut s) => {
                let mut buf = bytes::BytesMut::new();
                while let Some(chunk) = s.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                Ok(buf.freeze())
            }
        }
    }
}

/// Why the control plane refused an upload's body; nothing was stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadRejected {
    #[error("body exceeds {max} bytes")]
    TooLarge { max: u64 },
    #[error("checksum mismatch: body has crc32 {got:08x}, the worker sent {sent:08x}")]
    Checksum { got: u32, sent: u32 },
}

impl From<UploadRejected> for ControlError {
    fn from(e: UploadRejected) -> Self {
        ControlError::Rejected(e.to_string())
    }
}

/// Checks a whole body against `crc32` and `max`.
pub fn check(bytes: &[u8], crc32: u32, max: u64) -> Result<(), UploadRejected> {
    if bytes.len() as u64 > max {
        return Err(UploadRejected::TooLarge { max });
    }
    let got = crc32fast::hash(bytes);
    if got == crc32 {
        Ok(())
    } else {
        Err(UploadRejected::Checksum { got, sent: crc32 })
    }
}

/// `body`, failing with [`UploadRejected`] as soon as it passes `max` bytes,
/// or in place of its end when its CRC-32 is not `crc32`. Errors of `body`
/// itself pass through; after any error the stream ends.
pub fn checked(body: ByteStream, crc32: u32, max: u64) -> ByteStream {
    struct State {
        body: ByteStream,
        hasher: crc32fast::Hasher,
        len: u64,
        done: bool,
    }
    let state = State {
        body,
        hasher: crc32fast::Hasher::new(),
        len: 0,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let fail = |st: State, e: BoxError| {
            let mut st = st;
            st.done = true;
            Some((Err(e), st))
        };
        match st.body.next().await {
            Some(Ok(chunk)) => {
                st.len = st.len.saturating_add(chunk.len() as u64);
                if st.len > max {
                    return fail(st, Box::new(UploadRejected::TooLarge { max }));
                }
                st.hasher.update(&chunk);
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => fail(st, e),
            None => {
                st.done = true;
                let got = st.hasher.clone().finalize();
                if got == crc32 {
                    None
                } else {
                    fail(st, Box::new(UploadRejected::Checksum { got, sent: crc32 }))
                }
            }
        }
    }))
}

/// Maps a blob store's failure to store a [`checked`] stream: a refused body
/// is the worker's mistake, a broken one (the connection dropped) is not.
pub fn upload_error(e: BlobError) -> ControlError {
    match e {
        BlobError::Body { key, source } => match source.downcast::<UploadRejected>() {
            Ok(rejected) => ControlError::Rejected(format!("{key}: {rejected}")),
            Err(source) => ControlError::Unavailable(format!("reading the body of {key}: {source}")),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, BoxError>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn drain(s: ByteStream) -> (Vec<u8>, Option<BoxError>) {
        let mut s = s;
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => {
                    assert!(s.next().await.is_none(), "the stream ends after an error");
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn a_good_body_passes_through_unchanged() {
        let crc = crc32fast::hash(b"hello world");
        let (out, err) = drain(checked(stream(&[b"hello ", b"world"]), crc, 11)).await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn a_corrupt_body_fails_in_place_of_its_end() {
        let crc = crc32fast::hash(b"hello world");
        let (out, err) = drain(checked(stream(&[b"hello ", b"wOrld"]), crc, 1024)).await;
        assert_eq!(out, b"hello wOrld");
        let err = err.and_then(|e| e.downcast::<UploadRejected>().ok());
        assert!(matches!(err.as_deref(), Some(UploadRejected::Checksum { sent, .. }) if *sent == crc));
    }

    #[tokio::test]
    async fn an_oversized_body_fails_before_the_chunk_that_passes_the_bound() {
        let (out, err) = drain(checked(stream(&[b"12345", b"678", b"9"]), 0, 7)).await;
        assert_eq!(out, b"12345");
        let err = err.and_then(|e| e.downcast::<UploadRejected>().ok());
        assert_eq!(err.as_deref(), Some(&UploadRejected::TooLarge { max: 7 }));
    }

    #[test]
    fn refused_bodies_are_rejected_and_broken_ones_unavailable() {
        let refused = BlobError::Body {
            key: "k".into(),
            source: Box::new(UploadRejected::TooLarge { max: 1 }),
        };
        assert!(matches!(upload_error(refused), ControlError::Rejected(m) if m.contains("exceeds")));
        let broken = BlobError::Body {
            key: "k".into(),
            source: "connection reset".into(),
        };
        assert!(matches!(upload_error(broken), ControlError::Unavailable(_)));
        assert_eq!(check(b"ab", crc32fast::hash(b"ab"), 2), Ok(()));
        assert_eq!(check(b"abc", 0, 2), Err(UploadRejected::TooLarge { max: 2 }));
    }
}
