//! A `drive::fs::BlockIo` over a local block directory.
//!
//! Interim adapter: the block data path (`drive::data`, `drive::cache`) is being written in
//! parallel; until it lands, the mount stores plaintext blocks content-addressed by BLAKE3 in
//! a directory, crash-safe (temp file, fsync, rename) and verified on every read. Each block is
//! registered in the metadata store before the upload and marked available after it, as
//! `commit_content` requires.

use std::path::PathBuf;

use bytes::Bytes;
use drive::MetaStore;
use drive::fs::{BlockIo, BlockIoError};
use drive::meta::BlockState;

/// Blocks as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalBlocks {
    dir: PathBuf,
    meta: MetaStore,
}

impl LocalBlocks {
    pub fn new(dir: PathBuf, meta: MetaStore) -> std::io::Result<LocalBlocks> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(LocalBlocks { dir, meta })
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        self.dir.join(&hex[..2]).join(hex.as_str())
    }
}

fn io_error(what: &str, e: std::io::Error) -> BlockIoError {
    BlockIoError::new(what.to_string(), e)
}

impl BlockIo for LocalBlocks {
    async fn put_block(&self, data: Bytes) -> Result<[u8; 32], BlockIoError> {
        let hash = *blake3::hash(&data).as_bytes();
        let len = data.len() as u64;
        let known = self
            .meta
            .register_block(&hash, len, len)
            .await
            .map_err(|e| BlockIoError::new("register block", e))?;
        if !known {
            let path = self.path(&hash);
            let tmp = self.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write as _;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            })
            .await
            .map_err(|e| BlockIoError::new("block write task", e))?
            .map_err(|e| io_error("write block", e))?;
            self.meta
                .set_block_state(&hash, BlockState::Available, len)
                .await
                .map_err(|e| BlockIoError::new("mark block available", e))?;
        }
        Ok(hash)
    }

    async fn get_block(&self, hash: [u8; 32], _len: u64) -> Result<Bytes, BlockIoError> {
        let data = tokio::fs::read(self.path(&hash))
            .await
            .map_err(|e| io_error("read block", e))?;
        if blake3::hash(&data).as_bytes() != &hash {
            return Err(BlockIoError {
                message: format!("block {} is corrupt", blake3::Hash::from_bytes(hash).to_hex()),
                source: None,
            });
        }
        Ok(Bytes::from(data))
    }
}
