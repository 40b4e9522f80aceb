//! Extended attributes: `user.*` attributes stored in the metadata store, plus read-only
//! virtual ones under `user.studiodrive.*` computed on demand:
//! - `checksum`: SHA-256 (hex) of a file's committed content;
//! - `block_size`: the workspace block size in bytes;
//! - `sequences`: the frame sequences of a folder, one per line.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::fs::Pending;
use crate::fs::blocks::BlockIo;
use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::{Caller, DriveFs};
use crate::meta::xattrs::XattrMode;
use crate::model::NodeKind;
use crate::ports::MetaStore;

const USER_PREFIX: &[u8] = b"user.";
const VIRTUAL_PREFIX: &[u8] = b"user.studiodrive.";
const CHECKSUM: &[u8] = b"user.studiodrive.checksum";
const BLOCK_SIZE: &[u8] = b"user.studiodrive.block_size";
const SEQUENCES: &[u8] = b"user.studiodrive.sequences";

/// Bytes read per step while hashing a file.
const HASH_STEP: u64 = 4 << 20;

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// The value of attribute `name`.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let node = self.to_node(ino);
        if name.starts_with(VIRTUAL_PREFIX) {
            // Fresh: the checksum must be of the latest committed content.
            let attr = self.fresh_attr(node).await?;
            return match (name, attr.kind) {
                (CHECKSUM, NodeKind::File) => {
                    let mut reader = self.reader(node, attr.size);
                    let mut hasher = Sha256::new();
                    let mut pos = 0;
                    while pos < reader.size() {
                        let chunk = reader.read(pos, HASH_STEP).await?;
                        if chunk.is_empty() {
                            break;
                        }
                        pos += chunk.len() as u64;
                        hasher.update(&chunk);
                    }
                    Ok(hex(&hasher.finalize()).into_bytes())
                }
                (BLOCK_SIZE, _) => Ok(self.ws.block_size.to_string().into_bytes()),
                (SEQUENCES, NodeKind::Directory) => {
                    // The summary counts files: queued removals first.
                    let mut out = String::new();
                    for seq in self.settled(Pending::All).await?.sequences(node).await? {
                        let _ = writeln!(out, "{seq}");
                    }
                    Ok(out.into_bytes())
                }
                _ => Err(no_attribute()),
            };
        }
        if let Some(none) = self.getxattr_unstored(name) {
            return Err(none);
        }
        self.unsettled()
            .get_xattr(node, name)
            .await?
            .ok_or_else(no_attribute)
    }

    /// `getxattr` of a name that is never stored (security.*, system.*, trusted.*), answered
    /// without I/O: the kernel asks for security.capability on every write, so the FUSE
    /// adapter answers it on its own thread. `None` for `user.*` names.
    pub fn getxattr_unstored(&self, name: &[u8]) -> Option<FsError> {
        (!name.starts_with(USER_PREFIX)).then(no_attribute)
    }

    /// The attribute names of `ino`, virtual ones included.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let node = self.to_node(ino);
        let attr = self.stored_attr(node).await?;
        let mut names = self.unsettled().list_xattrs(node).await?;
        match attr.kind {
            NodeKind::File => names.extend([CHECKSUM.to_vec(), BLOCK_SIZE.to_vec()]),
            NodeKind::Directory => names.extend([BLOCK_SIZE.to_vec(), SEQUENCES.to_vec()]),
            _ => {}
        }
        Ok(names)
    }

    /// Sets attribute `name` (only `user.*`, not the virtual ones).
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        caller: Caller,
    ) -> Result<(), FsError> {
        self.writable()?;
        check_settable(name)?;
        let node = self.to_node(ino);
        let result = self
            .settled(Pending::All)
            .await?
            .set_xattr(&self.actor(caller), self.ws.id, node, name, value, mode)
            .await;
        // The change moved the node's ctime.
        self.touched(&[node]);
        Ok(result?)
    }

    /// Removes attribute `name`.
    pub async fn removexattr(&self, ino: u64, name: &[u8], caller: Caller) -> Result<(), FsError> {
        self.writable()?;
        check_settable(name)?;
        let node = self.to_node(ino);
        let result = self
            .settled(Pending::All)
            .await?
            .remove_xattr(&self.actor(caller), self.ws.id, node, name)
            .await;
        self.touched(&[node]);
        match result {
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Err(no_attribute()),
            other => Ok(other?),
        }
    }
}

fn check_settable(name: &[u8]) -> Result<(), FsError> {
    if name.starts_with(VIRTUAL_PREFIX) {
        return Err(FsError::new(
            FsErrorKind::NotPermitted,
            "user.studiodrive.* attributes are read-only",
        ));
    }
    if !name.starts_with(USER_PREFIX) {
        return Err(FsError::new(
            FsErrorKind::NotSupported,
            "only user.* attributes are stored",
        ));
    }
    Ok(())
}

fn no_attribute() -> FsError {
    FsError::new(FsErrorKind::NoAttribute, "no such attribute")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
