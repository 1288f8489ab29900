//! [`S3BlobStore`]: blobs in an S3 bucket (AWS or any S3-compatible server).
//!
//! Every upload carries `x-amz-checksum-sha256` (single puts and each
//! multipart part), so the server rejects bytes that were corrupted on the
//! way instead of storing them; objects over
//! [`MULTIPART_THRESHOLD`](crate::MULTIPART_THRESHOLD) go by multipart upload
//! (see [`ObjectBlobStore`]). Downloads can bypass the API with SigV4
//! pre-signed URLs ([`BlobStore::signed_url`]), minted offline.

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::signer::{Method, Signer};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use videogen_core::blob::{BlobError, BlobStore};

use crate::config::{S3Credentials, S3Location};
use crate::{ObjectBlobStore, to_path};

/// The longest validity SigV4 allows for a pre-signed URL.
pub const SIGNED_URL_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// A [`BlobStore`] over an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    s3: Arc<AmazonS3>,
    store: ObjectBlobStore,
}

impl S3BlobStore {
    /// Connects lazily: nothing is sent until the first request.
    pub fn new(location: &S3Location, credentials: &S3Credentials) -> Result<Self, BlobError> {
        Self::from_builder(Self::builder(location, credentials))
    }

    /// The builder [`new`](Self::new) uses, for callers that must adjust it
    /// (tests swap the HTTP connector to corrupt bytes in flight).
    pub fn builder(location: &S3Location, credentials: &S3Credentials) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(credentials.secret_access_key())
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .with_virtual_hosted_style_request(!location.path_style())
            .with_allow_http(location.allow_http());
        if let Some(token) = credentials.session_token() {
            b = b.with_token(token);
        }
        if let Some(endpoint) = &location.endpoint {
            b = b.with_endpoint(endpoint);
        }
        b
    }

    pub fn from_builder(builder: AmazonS3Builder) -> Result<Self, BlobError> {
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| BlobError::Config(format!("s3 blob store: {e}")))?,
        );
        let store = ObjectBlobStore::new(s3.clone());
        Ok(Self { s3, store })
    }

    /// The generic store this wraps.
    pub fn as_object_store(&self) -> &ObjectBlobStore {
        &self.store
    }
}

crate::delegate_blob_store!(S3BlobStore {
    /// A SigV4 pre-signed `GET` URL: the bucket checks signature and expiry,
    /// so the API never sees the download's bytes.
    async fn signed_url(&self, key: &str, ttl: Duration) -> Result<Option<String>, BlobError> {
        let path = to_path(key)?;
        if ttl.is_zero() || ttl > SIGNED_URL_TTL_MAX {
            return Err(BlobError::Config(format!(
                "signed URL lifetime must be 1 s to {} s, got {} s",
                SIGNED_URL_TTL_MAX.as_secs(),
                ttl.as_secs()
            )));
        }
        let url = self
            .s3
            .signed_url(Method::GET, &path, ttl)
            .await
            .map_err(|e| BlobError::fault(key, e))?;
        Ok(Some(url.to_string()))
    }
});
