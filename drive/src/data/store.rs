//! The object-store port: where encoded blocks are kept.
//!
//! Keys are relative ("blocks/ab/ab12..."); a backend maps them onto its own namespace (a
//! directory, or a bucket and prefix). Objects are immutable once written: a key is always
//! written with the same bytes, so a retried or repeated `put` is harmless.

use std::ops::Range;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    /// Stored bytes.
    pub size: u64,
}

/// The cause of a store failure, kept as the error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed object-store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound { key: String },
    /// The store could not be reached or kept failing transiently (after retries): retry later.
    #[error("object store unavailable during {op} {key}: {message}")]
    Unavailable {
        op: &'static str,
        key: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The store has no room for the object (a full disk or quota; MinIO's 507): not
    /// transient in the sense of a retry moments later, and reported as ENOSPC.
    #[error("object store full during {op} {key}: {message}")]
    NoSpace {
        op: &'static str,
        key: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The object is in an archive storage class (S3 GLACIER or DEEP_ARCHIVE: the GET answers
    /// InvalidObjectState) and cannot be read until it is restored (S3 RestoreObject).
    #[error("object {key} is in archive storage class {storage_class}: restore it before reading it")]
    NeedsRestore {
        key: String,
        storage_class: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The store refused the request (permissions, missing bucket, bad request).
    #[error("object store {op} {key} failed: {message}")]
    Failed {
        op: &'static str,
        key: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// An object store holding encoded blocks.
///
/// Methods return boxed futures so that a mount can choose its backend at run time
/// (`Arc<dyn ChunkStore>`).
pub trait ChunkStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `data` under `key`, durably once the future resolves `Ok`.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The whole object under `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>>;

    /// Bytes `range` of the object under `key` (fewer when the object ends first): a random
    /// read fetches the frames of a block it needs, not the block.
    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, StoreError>>;

    /// Removes `key`; removing a missing object succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Keys under `prefix`, in no particular order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Whether objects here have storage classes (S3); local and memory stores ignore tiers.
    fn has_storage_classes(&self) -> bool {
        false
    }

    /// Moves the object under `key` to storage class `class` (an S3 class such as
    /// "STANDARD_IA" or "GLACIER_IR"), keeping its bytes and metadata. Stores without
    /// storage classes leave it as it is.
    fn set_storage_class<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (key, class);
        Box::pin(async { Ok(()) })
    }

    /// Removes `keys` (a missing object counts as removed) in as few requests as the store
    /// allows, and returns the keys it could not remove with why. `Err` when the request as a
    /// whole failed (nothing may have been removed). This default removes them one by one.
    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, StoreError)>, StoreError>> {
        async move {
            let mut failed = Vec::new();
            for key in keys {
                if let Err(e) = self.delete(key).await {
                    failed.push((key.clone(), e));
                }
            }
            Ok(failed)
        }
        .boxed()
    }

    /// Up to `limit` objects under `prefix` whose keys sort after `after` (from the first
    /// when `None`), in key order, with their sizes: a listing read page by page holds one
    /// page at a time, however many objects the store has.
    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedObject>, StoreError>>;

    /// Whether objects live on this node's disk (a `file://` store): a node cache in front
    /// of it would only hold a second copy of what it already holds locally.
    fn is_local(&self) -> bool {
        false
    }

    /// A short description for logs ("file:///var/lib/blocks", "s3://bucket/prefix").
    fn describe(&self) -> String;
}
