//! Block data: object stores, the block format, encryption, and the data path that ties them
//! to the metadata store and the node-local cache.
//!
//! - [`store::ChunkStore`]: the object-store port, with [`local::LocalChunkStore`] (a
//!   directory, the embedded default) and [`s3::S3ChunkStore`] (S3 and compatible stores);
//!   [`memory`] has an in-memory store and a failure-injecting wrapper for tests.
//! - [`format::BlockCodec`]: the stored form of a block (versioned header, optional
//!   AES-256-GCM) and its content address (BLAKE3, keyed per workspace when encrypted).
//! - [`keys`]: workspace data keys wrapped by a key-encryption key.
//! - [`blocks::BlockStore`]: the data path of one workspace, implementing
//!   [`crate::fs::BlockIo`] for the file system.

mod aead;
pub mod blocks;
pub mod format;
pub mod keys;
pub mod local;
pub mod memory;
mod pool;
pub mod s3;
pub mod store;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use blocks::{BlockStore, DataError, DataStats, block_key};
pub use format::{BlockCodec, BlockHash, FormatError};
pub use keys::{DataKey, Kek, KeyError, MAX_SEALED_SECRET};
pub use local::LocalChunkStore;
pub use memory::{FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp};
pub use s3::{S3ChunkStore, S3Config, S3Credentials};
pub use store::{ChunkStore, ListedObject, StoreError};

use crate::model::Workspace;

/// Where blocks are stored, as given by a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `file:///absolute/dir`
    Local(PathBuf),
    /// `s3://bucket/optional/prefix`
    S3 { bucket: String, prefix: String },
}

/// A store URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid store URL {url:?}: {reason}")]
pub struct StoreUrlError {
    pub url: String,
    pub reason: &'static str,
}

impl FromStr for StoreLocation {
    type Err = StoreUrlError;

    fn from_str(url: &str) -> Result<StoreLocation, StoreUrlError> {
        let err = |reason| StoreUrlError {
            url: url.to_string(),
            reason,
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(err("file:// needs an absolute path (file:///dir)"));
            }
            return Ok(StoreLocation::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !crate::model::valid_bucket_name(bucket) {
                return Err(err("bucket names are 3-63 characters of a-z, 0-9, '-' and '.'"));
            }
            return Ok(StoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(err("use file:///dir or s3://bucket/prefix"))
    }
}

impl StoreLocation {
    /// Opens the store; `s3` supplies endpoint, credentials and tuning for `s3://` locations
    /// (its bucket and prefix are replaced by the URL's).
    /// The S3 settings of this location with `endpoint` and `region` (`None` for a local
    /// store), for [`StoreLocation::open`].
    pub fn s3_config(&self, endpoint: Option<&str>, region: Option<&str>) -> Option<S3Config> {
        match self {
            StoreLocation::Local(_) => None,
            StoreLocation::S3 { bucket, .. } => {
                let mut cfg = S3Config::new(bucket.clone());
                if let Some(endpoint) = endpoint {
                    cfg = cfg.with_endpoint(endpoint.to_string());
                }
                cfg.region = region.map(ToString::to_string);
                Some(cfg)
            }
        }
    }

    pub async fn open(&self, s3: Option<S3Config>) -> Result<Arc<dyn ChunkStore>, StoreError> {
        match self {
            StoreLocation::Local(dir) => LocalChunkStore::open(dir)
                .map(|s| Arc::new(s) as Arc<dyn ChunkStore>)
                .map_err(|e| StoreError::Failed {
                    op: "open",
                    key: dir.display().to_string(),
                    message: e.to_string(),
                    source: Some(e.into()),
                }),
            StoreLocation::S3 { bucket, prefix } => {
                let mut cfg = s3.unwrap_or_else(|| S3Config::new(bucket.clone()));
                cfg.bucket.clone_from(bucket);
                cfg.prefix.clone_from(prefix);
                Ok(Arc::new(S3ChunkStore::connect(&cfg).await))
            }
        }
    }
}

/// The codec for `ws`: encrypted when the workspace has a wrapped data key, which `kek` must
/// unwrap.
pub fn codec_for(ws: &Workspace, kek: Option<&Kek>) -> Result<BlockCodec, KeyError> {
    match (&ws.wrapped_key, kek) {
        // Encrypted addresses are keyed by the workspace's own data key already.
        (None, _) => Ok(match &ws.object_store {
            Some(store) => BlockCodec::plaintext_in(&store.identity()),
            None => BlockCodec::plaintext(),
        }),
        (Some(_), None) => Err(KeyError::KekRequired(ws.name.clone())),
        (Some(wrapped), Some(kek)) => Ok(BlockCodec::encrypted(&DataKey::unwrap(wrapped, kek)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            "file:///var/blocks".parse::<StoreLocation>().unwrap(),
            StoreLocation::Local("/var/blocks".into())
        );
        assert_eq!(
            "s3://studio-media/prod/blocks/".parse::<StoreLocation>().unwrap(),
            StoreLocation::S3 {
                bucket: "studio-media".into(),
                prefix: "prod/blocks".into()
            }
        );
        for bad in [
            "file://relative",
            "s3://",
            "s3://UPPER",
            "s3://a",
            "http://x",
            "/dir",
            "",
        ] {
            assert!(bad.parse::<StoreLocation>().is_err(), "{bad} accepted");
        }
    }
}
