//! Extended attributes: `user.*` attributes stored in the metadata store, plus read-only
//! virtual ones under `user.studiodrive.*` computed on demand:
//! - `md5`, `sha1`, `xxh64`, `sha256` (and `checksum`, the same as `sha256`): lowercase hex
//!   hashes of a file's committed content, kept per content version: those the mount
//!   computed while the file was written in order from its start (`FsConfig::hash_on_write`,
//!   xxHash64 by default), else all four from one read;
//!   not listed, so `cp -a`, `rsync -X` and backup tools that copy every listed attribute
//!   never hash whole files by accident;
//! - `block_size`: the workspace block size in bytes;
//! - `sequences`: the frame sequences of a folder, one per line.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::fs::Pending;
use crate::fs::blocks::BlockIo;
use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::{Caller, DriveFs};
use crate::meta::xattrs::XattrMode;
use crate::mhl::{HashAlgo, Hasher};
use crate::model::{Attr, NodeId, NodeKind};
use crate::ports::MetaStore;
use crate::sync::lock;

const USER_PREFIX: &[u8] = b"user.";
const VIRTUAL_PREFIX: &[u8] = b"user.studiodrive.";
const CHECKSUM: &[u8] = b"user.studiodrive.checksum";
const MD5: &[u8] = b"user.studiodrive.md5";
const SHA1: &[u8] = b"user.studiodrive.sha1";
const XXH64: &[u8] = b"user.studiodrive.xxh64";
const SHA256: &[u8] = b"user.studiodrive.sha256";
const BLOCK_SIZE: &[u8] = b"user.studiodrive.block_size";
const SEQUENCES: &[u8] = b"user.studiodrive.sequences";

/// Bytes read per step while hashing a file.
const HASH_STEP: u64 = 4 << 20;

/// Files whose hashes a mount keeps (a few hundred bytes each).
pub(super) const HASHED_FILES: usize = 1024;

/// The hashes of one content version of a file, lowercase hex, in [`HashAlgo::ALL`]'s
/// order; `None` for one not computed yet (hashing while writing computes only some).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHashes([Option<String>; 4]);

impl FileHashes {
    fn slot(algo: HashAlgo) -> usize {
        HashAlgo::ALL.iter().position(|a| *a == algo).unwrap_or(0)
    }

    /// The algorithm attribute `name` names, if it names one.
    fn algo(name: &[u8]) -> Option<HashAlgo> {
        match name {
            MD5 => Some(HashAlgo::Md5),
            SHA1 => Some(HashAlgo::Sha1),
            XXH64 => Some(HashAlgo::Xxh64),
            SHA256 | CHECKSUM => Some(HashAlgo::Sha256),
            _ => None,
        }
    }

    fn get(&self, algo: HashAlgo) -> Option<&str> {
        self.0[FileHashes::slot(algo)].as_deref()
    }
}

/// The four hashes over a stream of chunks, in [`HashAlgo::ALL`]'s order.
struct Hashers([Hasher; 4]);

impl Hashers {
    fn new() -> Hashers {
        Hashers(HashAlgo::ALL.map(HashAlgo::hasher))
    }

    fn update(&mut self, chunk: &[u8]) {
        self.0.iter_mut().for_each(|h| h.update(chunk));
    }

    fn finish(self) -> FileHashes {
        FileHashes(self.0.map(|h| Some(h.finish())))
    }
}

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// The value of attribute `name`.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let node = self.to_node(ino);
        if name.starts_with(VIRTUAL_PREFIX) {
            // Fresh: the checksum must be of the latest committed content.
            let attr = self.fresh_attr(node).await?;
            return match (name, attr.kind) {
                (MD5 | SHA1 | XXH64 | SHA256 | CHECKSUM, NodeKind::File) => {
                    let algo = FileHashes::algo(name).ok_or_else(no_attribute)?;
                    let hash = self.file_hash(node, &attr, algo).await?;
                    Ok(hash.into_bytes())
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

    /// The `algo` hash of `node`'s committed content `attr` describes: from this mount's
    /// hashes of that content version (computed while it was written, or by an earlier
    /// read), else from one read of the whole file that computes all four.
    async fn file_hash(&self, node: NodeId, attr: &Attr, algo: HashAlgo) -> Result<String, FsError> {
        let key = (node, attr.content_version);
        if let Some(hash) = lock(&self.file_hashes)
            .get(&key)
            .and_then(|known| known.get(algo))
        {
            return Ok(hash.to_string());
        }
        let mut reader = self.reader(node, attr.size);
        let mut hashers = Hashers::new();
        let mut pos = 0;
        while pos < reader.size() {
            let chunk = reader.read(pos, HASH_STEP).await?;
            if chunk.is_empty() {
                break;
            }
            pos += chunk.len() as u64;
            hashers.update(&chunk);
        }
        let hashes = hashers.finish();
        let hash = hashes.get(algo).unwrap_or_default().to_string();
        self.keep_hashes(key, hashes);
        Ok(hash)
    }

    /// Keeps hashes a commit computed while the content was written.
    pub(crate) fn remember_hashes(&self, attr: &Attr, hashes: &[(HashAlgo, String)]) {
        let mut known = FileHashes::default();
        for (algo, hash) in hashes {
            known.0[FileHashes::slot(*algo)] = Some(hash.clone());
        }
        self.keep_hashes((attr.ino, attr.content_version), known);
    }

    fn keep_hashes(&self, key: (NodeId, u64), hashes: FileHashes) {
        let mut cache = lock(&self.file_hashes);
        if cache.len() >= HASHED_FILES {
            cache.clear();
        }
        cache.insert(key, Arc::new(hashes));
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
            // The hashes are left out: listing them would make copies hash every file.
            NodeKind::File => names.push(BLOCK_SIZE.to_vec()),
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
