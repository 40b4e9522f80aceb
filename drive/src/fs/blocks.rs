//! The port through which the file system stores and fetches block content.
//!
//! The file system speaks whole blocks: `put_block` makes a block durable (object stored and
//! its record `Available` in the metadata store) and returns its content address, which is
//! what `MetaStore::commit_content` may then reference; `get_block` returns a block's
//! plaintext, verified. Caching, single-flight, encryption and the object store live behind
//! this trait (see `drive::data` and `drive::cache`).

use std::future::Future;

use bytes::Bytes;

/// A block store failure, with its cause kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("block store: {message}")]
pub struct BlockIoError {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BlockIoError {
    /// An error with a message and a cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BlockIoError {
        BlockIoError {
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
}
