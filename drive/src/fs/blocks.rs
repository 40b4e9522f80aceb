//! The port through which the file system stores and fetches block content.
//!
//! The file system speaks blocks: `put_block` makes a block durable (object stored and its
//! record `Available` in the metadata store) and returns its content address, which is what
//! `MetaStore::commit_content` may then reference; `get_block` returns a block's plaintext,
//! verified, and `get_block_range` a verified part of it (for a random read). Caching,
//! single-flight, encryption and the object store live behind this trait (see `drive::data`
//! and `drive::cache`).

use std::future::Future;

use bytes::Bytes;

/// What kind of block failure: the file-system layer maps it to an errno (ENOSPC for
/// `NoSpace`, EIO for the rest) in `FsError::kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockErrorKind {
    /// The object store (or the node's disk under it) has no room.
    NoSpace,
    /// The object store or the metadata store could not be reached, or kept failing or
    /// throttling after retries: a later try may succeed.
    Unavailable,
    /// The stored object is missing, or failed verification (a damaged or foreign object).
    Corrupt,
    /// The store refused the request (permissions, a missing bucket, a key it rejects).
    Refused,
    /// The block is in an archive storage class and must be restored before it can be read.
    NeedsRestore,
    /// A failure of this process (a crashed codec task).
    Internal,
}

/// A block store failure, with its kind and its cause kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("block store: {message}")]
pub struct BlockIoError {
    pub kind: BlockErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BlockIoError {
    /// An error of `kind` with a message and a cause.
    pub fn new(
        kind: BlockErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BlockIoError {
        BlockIoError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Stores and fetches whole blocks of file content.
pub trait BlockIo: Send + Sync + 'static {
    /// Stores `data` (at most one block of plaintext) durably and returns its content hash.
    fn put_block(&self, data: Bytes) -> impl Future<Output = Result<[u8; 32], BlockIoError>> + Send;

    /// Fetches the plaintext of block `hash`, whose valid length is `len`.
    fn get_block(&self, hash: [u8; 32], len: u64)
    -> impl Future<Output = Result<Bytes, BlockIoError>> + Send;

    /// Renews the records of blocks stored by `put_block` and not committed yet, so that GC
    /// leaves them while a write session holds them; returns those it could not renew (their
    /// objects may be gone).
    fn renew_blocks(
        &self,
        hashes: &[[u8; 32]],
    ) -> impl Future<Output = Result<Vec<[u8; 32]>, BlockIoError>> + Send;

    /// Fetches plaintext `range` of block `hash` (whose valid length is `len`), verified,
    /// without fetching the whole block when the store can serve part of it.
    fn get_block_range(
        &self,
        hash: [u8; 32],
        len: u64,
        range: std::ops::Range<u64>,
    ) -> impl Future<Output = Result<Bytes, BlockIoError>> + Send;
}
