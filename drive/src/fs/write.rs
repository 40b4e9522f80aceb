//! Write sessions: the staged, not yet committed content of one file on this mount.
//!
//! All write handles of an inode share one session. A block written in order from its start
//! (a new file, appends, a sequential overwrite) is filled in memory and uploaded from that
//! buffer as soon as it is full: one copy per byte, no local file (the common case of
//! renders and transcodes). The mount's write-buffer budget bounds those buffers; a block
//! written out of order, or while the budget is spent, lands in a local staging file instead
//! (unlinked at creation, so a crash leaves nothing behind), one block-sized slot per dirty
//! block, and is uploaded once all its bytes are written. A mount-wide semaphore bounds
//! uploads in flight (and so memory: one block buffer per permit); a writer that outruns the
//! object store waits for a permit (back-pressure).
//! Partly written blocks are completed from the old block only when needed (read-modify-write
//! at commit or on read), so sequential overwrites never read old content. A block uploaded
//! from memory keeps no local copy: writing it again fetches it back, and the mount renews
//! its record every [`RENEW_EVERY`] (`DriveFs::run_block_renewal`) so that no GC pass whose
//! grace period is longer takes it before the commit.
//!
//! `commit` uploads what is left and calls `MetaStore::commit_content` once: until it
//! succeeds the previous content stays the visible one. A commit that fails drops what it
//! could not commit (as a local file system drops dirty pages after a writeback error):
//! the file reads as its committed content again, and the session counts the failure so that
//! every descriptor that was open across it reports the loss (see `DriveFs::lost_writes`)
//! instead of a later commit storing bytes their writer was told were lost.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{ErrorKind, MetaError};
use crate::fs::blocks::BlockIo;
use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::lock;
use crate::fs::ranges::Ranges;
use crate::meta::{BlockChange, FileBlock, InitialContent};
use crate::mhl::{HashAlgo, Hasher};
use crate::model::{Actor, Attr, NAME_MAX, Name, NewNode, NodeId, Timestamp, View, WorkspaceId};
use crate::ports::{Clock, MetaStore};
use crate::rules::blocks::{Shrink, shrink, spans};

/// The largest file size accepted (the block map indexes are i64 in SQL).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// The end of `len` bytes at `offset`, refused (EFBIG) past [`MAX_FILE_SIZE`]; `op` names the
/// operation in the error.
pub(crate) fn range_end(offset: u64, len: u64, op: &str) -> Result<u64, FsError> {
    offset
        .checked_add(len)
        .filter(|&end| end <= MAX_FILE_SIZE)
        .ok_or_else(|| FsError::new(FsErrorKind::TooBig, format!("{op} past the largest file size")))
}

/// How often a mount renews the records of the blocks its write sessions uploaded from memory
/// (and so cannot store again), keeping them younger than a GC pass's grace period until the
/// commit references them. The GC job refuses a grace period under ten times this.
pub(crate) const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What the session knows about one dirty block. A staged block keeps its slot through its
/// upload, so it can be re-opened for writing without fetching it back; a block uploaded from
/// memory has no slot and is fetched back if written again.
enum Dirty {
    /// Written in order from the block's start into memory; `budget` is its share of the
    /// mount's write buffers. `base` is the committed block under it (clipped as for
    /// `Staged`), whose bytes past `buf` are the block's until written over: merged into
    /// `buf` only when needed (a read, or a commit of a block not written to its end).
    Buffered {
        buf: Vec<u8>,
        budget: OwnedSemaphorePermit,
        base: Option<FileBlock>,
    },
    /// Being written; `base` is the committed block whose bytes fill the unwritten gaps (its
    /// length already clipped to what survives truncations).
    Staged {
        slot: u64,
        written: Ranges,
        base: Option<FileBlock>,
    },
    /// Upload in flight; the staged bytes (if `slot`) stay untouched until it finishes.
    Uploading {
        slot: Option<u64>,
        len: u64,
        task: JoinHandle<Result<[u8; 32], FsError>>,
    },
    /// Uploaded and durable, waiting for the commit.
    Uploaded {
        slot: Option<u64>,
        len: u64,
        hash: [u8; 32],
    },
    /// The upload of a block held only in memory failed, or a GC pass took it: its bytes are
    /// gone, so the session's next commit fails (and drops its changes).
    Lost(Loss),
}

/// Why a block's bytes are gone, kept to answer every later access with.
struct Loss {
    kind: FsErrorKind,
    message: String,
}

impl Dirty {
    /// A block whose bytes `e` lost.
    fn lost(e: &FsError) -> Dirty {
        Dirty::Lost(Loss {
            kind: e.kind(),
            message: e.to_string(),
        })
    }
}

impl Loss {
    /// The error a lost block answers with.
    fn error(&self) -> FsError {
        FsError::new(self.kind, self.message.clone())
    }
}

struct Inner {
    /// Committed size the session's view of the block map is based on.
    base_size: u64,
    /// Committed mtime, shown again when uncommitted changes are dropped.
    base_mtime: Timestamp,
    /// The smallest size the file had since the last commit: committed bytes at or past it
    /// were truncated away and must not show through again.
    min_size: u64,
    blocks: BTreeMap<u64, Dirty>,
    next_slot: u64,
    changed: bool,
    /// Hashes of the content written so far, while it is written in order from byte 0
    /// ([`SessionEnv::hash_on_write`]); dropped at the first write elsewhere.
    stream_hash: Option<StreamHash>,
}

/// Hashes over the bytes `[0, next)`, written in order.
struct StreamHash {
    next: u64,
    hashers: Vec<(HashAlgo, Hasher)>,
}

impl StreamHash {
    /// A hash of empty content when the session's content is empty and hashes are wanted.
    fn start(algos: &[HashAlgo], size: u64) -> Option<StreamHash> {
        (size == 0 && !algos.is_empty()).then(|| StreamHash {
            next: 0,
            hashers: algos.iter().map(|a| (*a, a.hasher())).collect(),
        })
    }
}

/// A file this mount created and has not committed yet. Its create goes into the same
/// transaction as its first content commit (a small file costs one transaction, not two),
/// or is committed on its own before any other metadata access of the mount
/// (`DriveFs::settle_local`). Until then other mounts do not see the file.
#[derive(Debug, Clone)]
pub(crate) struct DeferredCreate {
    pub parent: NodeId,
    pub name: Name,
    pub node: NewNode,
    pub actor: Actor,
    pub attr: Attr,
}

/// What a commit changed in the store.
pub(crate) struct Committed {
    /// The file's new attributes.
    pub attr: Attr,
    /// Set when this commit also created the file: its entry and the directory's new
    /// attributes.
    pub created: Option<(NodeId, Name, Attr)>,
    /// The name a new file was created for and could not take, because another mount
    /// created it first: the file was stored under [`conflict_name`] instead.
    pub conflict: Option<Name>,
    /// Hashes of the committed content computed while it was written (possibly none).
    pub hashes: Vec<(HashAlgo, String)>,
}

/// The name a new file gets when another mount took its name before its first close:
/// `<name>.conflict-<node>`, the original cut to fit `NAME_MAX`.
pub(crate) fn conflict_name(name: &Name, ino: NodeId) -> Result<Name, FsError> {
    let suffix = format!(".conflict-{ino}");
    let mut keep = name.as_bytes().len().min(NAME_MAX - suffix.len());
    // Cut at a character boundary when the name is UTF-8, so it stays readable.
    let utf8 = std::str::from_utf8(name.as_bytes()).is_ok();
    while utf8 && keep > 0 && std::str::from_utf8(&name.as_bytes()[..keep]).is_err() {
        keep -= 1;
    }
    let mut bytes = name.as_bytes()[..keep].to_vec();
    bytes.extend_from_slice(suffix.as_bytes());
    Name::parse(&bytes).map_err(|e| FsError::Meta(e.into()))
}

/// Everything a session needs from its mount.
pub(crate) struct SessionEnv<B: BlockIo, M: MetaStore> {
    pub meta: M,
    pub blocks: Arc<B>,
    pub ws: WorkspaceId,
    pub block_size: u64,
    pub uploads: Arc<Semaphore>,
    /// Blocks write sessions may fill in memory at once across the mount (one permit each).
    pub write_buffers: Arc<Semaphore>,
    pub clock: Arc<dyn Clock>,
    /// Hashes computed as a file is written in order from its start (so they cost no read
    /// later); other writes leave them to be computed on demand.
    pub hash_on_write: Vec<HashAlgo>,
}

/// The staged content of one file.
pub(crate) struct WriteSession<B: BlockIo, M: MetaStore> {
    env: Arc<SessionEnv<B, M>>,
    ino: NodeId,
    /// The content version the session started from (write-once rules check it).
    base_version: u64,
    staging: Arc<std::fs::File>,
    inner: Mutex<Inner>,
    /// Logical size and mtime, readable without the lock so getattr never waits on uploads.
    size: AtomicU64,
    mtime: AtomicI64,
    /// Uncommitted changes exist: only then do size and mtime differ from the store's.
    dirty: std::sync::atomic::AtomicBool,
    /// The file's create, while it is not committed. Changed only with `inner` locked, so
    /// a commit and a settle never both create the file.
    deferred: std::sync::Mutex<Option<DeferredCreate>>,
    /// Commits that failed and dropped their changes.
    failures: AtomicU64,
    /// The create a failed commit gave up, for the mount to release its name.
    abandoned: std::sync::Mutex<Option<DeferredCreate>>,
}

impl<B: BlockIo, M: MetaStore> WriteSession<B, M> {
    /// Starts a session for `attr` with its staging file in `dir`.
    pub(crate) fn new(
        env: Arc<SessionEnv<B, M>>,
        attr: &Attr,
        dir: &Path,
        deferred: Option<DeferredCreate>,
    ) -> Result<Self, FsError> {
        let path = dir.join(format!("stage-{}-{}", attr.ino, uuid::Uuid::new_v4()));
        let file = crate::private_files::create_new(&path)
            .map_err(|e| FsError::staging(format!("create {}", path.display()), e))?;
        // Unlinked at once: the open descriptor keeps it, a crash leaves nothing behind.
        std::fs::remove_file(&path).map_err(|e| FsError::staging("unlink staging file", e))?;
        let stream_hash = StreamHash::start(&env.hash_on_write, attr.size);
        Ok(WriteSession {
            env,
            ino: attr.ino,
            base_version: attr.content_version,
            staging: Arc::new(file),
            inner: Mutex::new(Inner {
                base_size: attr.size,
                base_mtime: attr.mtime,
                min_size: attr.size,
                blocks: BTreeMap::new(),
                next_slot: 0,
                changed: false,
                stream_hash,
            }),
            size: AtomicU64::new(attr.size),
            mtime: AtomicI64::new(attr.mtime.0),
            dirty: std::sync::atomic::AtomicBool::new(false),
            deferred: std::sync::Mutex::new(deferred),
            failures: AtomicU64::new(0),
            abandoned: std::sync::Mutex::new(None),
        })
    }

    /// How many commits of this session failed (each dropped the changes it held).
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// The create this session still has to commit, if any.
    pub(crate) fn deferred_create(&self) -> Option<DeferredCreate> {
        lock(&self.deferred).clone()
    }

    fn set_deferred(&self, value: Option<DeferredCreate>) {
        *lock(&self.deferred) = value;
    }

    /// Commits the file's deferred create on its own (staged content stays staged).
    pub(crate) async fn commit_create(&self) -> Result<Option<Committed>, FsError> {
        let _inner = self.inner.lock().await;
        let Some(create) = self.deferred_create() else {
            return Ok(None);
        };
        self.create_with(&create, None).await.map(Some)
    }

    async fn create_with(
        &self,
        create: &DeferredCreate,
        content: Option<&InitialContent<'_>>,
    ) -> Result<Committed, FsError> {
        let create_as = |name: Name| async move {
            self.env
                .meta
                .create_file(
                    &create.actor,
                    self.env.ws,
                    create.parent,
                    &name,
                    &create.node,
                    self.ino,
                    content,
                )
                .await
                .map(|(attr, dir)| (attr, dir, name))
        };
        let mut lost_name = None;
        let (attr, dir, name) = match create_as(create.name.clone()).await {
            // Another mount created the name since: keep these bytes under a name of their
            // own rather than drop them; the close still fails (see `Committed::conflict`).
            Err(e) if e.kind() == ErrorKind::Exists => {
                lost_name = Some(create.name.clone());
                create_as(conflict_name(&create.name, self.ino)?).await?
            }
            // Unlike a committed file removed meanwhile (nothing to commit to, and nobody
            // expects its bytes), a file whose folder went away is the writer's to know about.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(FsError::new(
                    FsErrorKind::NotFound,
                    format!(
                        "the folder of new file {} was removed before the file was first closed: {e}",
                        create.name.to_string_lossy()
                    ),
                ));
            }
            other => other?,
        };
        self.set_deferred(None);
        Ok(Committed {
            attr,
            created: Some((create.parent, name, dir)),
            conflict: lost_name,
            hashes: Vec::new(),
        })
    }

    /// The file's node.
    pub(crate) fn node(&self) -> NodeId {
        self.ino
    }

    /// The current logical size.
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Overlays the session's size and mtime on committed attributes.
    pub(crate) fn overlay(&self, attr: &mut Attr) {
        if !self.dirty.load(Ordering::Acquire) {
            return;
        }
        attr.size = self.size();
        attr.mtime = Timestamp(self.mtime.load(Ordering::Acquire));
    }

    /// Records an explicit mtime (utimens) so a later commit does not overwrite it.
    pub(crate) fn set_mtime(&self, t: Timestamp) {
        self.mtime.store(t.0, Ordering::Release);
    }

    /// Writes `data` at `offset`; returns the offset actually used (the end for `append`).
    /// A write that would grow the file by more than `headroom` over its committed size (the
    /// workspace's quota headroom as last read; `None`: no quota) fails at once with
    /// `QuotaExceeded`, before anything is staged.
    pub(crate) async fn write(
        &self,
        offset: u64,
        data: &[u8],
        append: bool,
        headroom: Option<u64>,
    ) -> Result<u64, FsError> {
        let mut inner = self.inner.lock().await;
        let offset = if append { self.size() } else { offset };
        let end = range_end(offset, data.len() as u64, "write")?;
        if crate::rules::quota::write_exceeds(headroom, inner.base_size, self.size(), end) {
            return Err(FsError::new(
                FsErrorKind::QuotaExceeded,
                "the write would take the workspace above its quota",
            ));
        }
        match &mut inner.stream_hash {
            Some(h) if h.next == offset => {
                h.hashers.iter_mut().for_each(|(_, hasher)| hasher.update(data));
                h.next = end;
            }
            Some(_) => inner.stream_hash = None,
            None => {}
        }
        let bs = self.env.block_size;
        for span in spans(offset, end, bs) {
            let (idx, in_block, n) = (span.idx, span.in_block, span.len);
            let piece = &data[span.in_buffer()];
            if self.buffer(&mut inner, idx, in_block, piece).await? {
                let full = matches!(inner.blocks.get(&idx), Some(Dirty::Buffered { buf, .. }) if buf.len() as u64 == bs);
                if full {
                    self.start_upload(&mut inner, idx, bs).await?;
                }
                continue;
            }
            let slot = self.stage(&mut inner, idx).await?;
            self.staging
                .write_at(piece, slot * bs + in_block)
                .map_err(|e| FsError::staging("write staging file", e))?;
            let full = match inner.blocks.get_mut(&idx) {
                Some(Dirty::Staged { written, .. }) => {
                    written.insert(in_block, in_block + n);
                    written.covers(bs)
                }
                _ => false,
            };
            if full {
                self.start_upload(&mut inner, idx, bs).await?;
            }
        }
        inner.changed = true;
        self.dirty.store(true, Ordering::Release);
        if end > self.size() {
            self.size.store(end, Ordering::Release);
        }
        self.mtime.store(self.env.clock.now().0, Ordering::Release);
        Ok(offset)
    }

    /// Writes `piece` at `in_block` of block `idx` in memory, when it continues the block's
    /// in-order write from its start, or starts one at the block's start (over the committed
    /// block, if any, which stays its base) while the mount's write-buffer budget has room.
    /// `false`: the piece must be staged.
    async fn buffer(
        &self,
        inner: &mut Inner,
        idx: u64,
        in_block: u64,
        piece: &[u8],
    ) -> Result<bool, FsError> {
        match inner.blocks.get_mut(&idx) {
            Some(Dirty::Buffered { buf, .. }) if in_block as usize <= buf.len() => {
                let at = in_block as usize;
                let overlap = (buf.len() - at).min(piece.len());
                buf[at..at + overlap].copy_from_slice(&piece[..overlap]);
                buf.extend_from_slice(&piece[overlap..]);
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                if in_block != 0 {
                    return Ok(false);
                }
                let Ok(budget) = self.env.write_buffers.clone().try_acquire_owned() else {
                    return Ok(false);
                };
                let base = self.base_block(inner, idx).await?;
                let mut buf = Vec::with_capacity(self.env.block_size as usize);
                buf.extend_from_slice(piece);
                inner.blocks.insert(idx, Dirty::Buffered { buf, budget, base });
                Ok(true)
            }
        }
    }

    /// Renews the records of the blocks uploaded from memory (see [`RENEW_EVERY`]). A block a
    /// GC pass took meanwhile is lost, and with it the session's changes: the commit will fail.
    pub(crate) async fn renew_unkept(&self) -> Result<(), FsError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        // Uploads that finished without anyone waiting for them registered their blocks as
        // long ago as they started: they are renewed too.
        let finished: Vec<u64> = inner
            .blocks
            .iter()
            .filter(|(_, d)| matches!(d, Dirty::Uploading { slot: None, task, .. } if task.is_finished()))
            .map(|(idx, _)| *idx)
            .collect();
        for idx in finished {
            // A failure is recorded as `Lost`, which the commit reports.
            let _ = self.finish_upload(inner, idx).await;
        }
        let unkept: Vec<[u8; 32]> = inner
            .blocks
            .values()
            .filter_map(|d| match d {
                Dirty::Uploaded { slot: None, hash, .. } => Some(*hash),
                _ => None,
            })
            .collect();
        if unkept.is_empty() {
            return Ok(());
        }
        let gone = self.env.blocks.renew_blocks(&unkept).await?;
        if gone.is_empty() {
            return Ok(());
        }
        let e = FsError::new(
            FsErrorKind::Io,
            format!(
                "a GC pass reclaimed {} block(s) this open file wrote before its close committed them",
                gone.len()
            ),
        );
        for dirty in inner.blocks.values_mut() {
            if matches!(dirty, Dirty::Uploaded { slot: None, hash, .. } if gone.contains(hash)) {
                *dirty = Dirty::lost(&e);
            }
        }
        Err(e)
    }

    /// Waits for block `idx`'s upload, if one is in flight, and records how it ended: uploaded,
    /// or failed, when the block is staged again if its bytes are kept and lost if not.
    async fn finish_upload(&self, inner: &mut Inner, idx: u64) -> Result<(), FsError> {
        if !matches!(inner.blocks.get(&idx), Some(Dirty::Uploading { .. })) {
            return Ok(());
        }
        let Some(Dirty::Uploading { slot, len, task }) = inner.blocks.remove(&idx) else {
            return Ok(());
        };
        match join(task).await {
            Ok(hash) => {
                inner.blocks.insert(idx, Dirty::Uploaded { slot, len, hash });
                Ok(())
            }
            Err(e) => {
                let kept = match slot {
                    Some(slot) => staged_full(slot, len),
                    None => Dirty::lost(&e),
                };
                inner.blocks.insert(idx, kept);
                Err(e)
            }
        }
    }

    /// Makes block `idx` writable in staging and returns its slot.
    async fn stage(&self, inner: &mut Inner, idx: u64) -> Result<u64, FsError> {
        if matches!(inner.blocks.get(&idx), Some(Dirty::Uploading { slot: None, .. })) {
            self.finish_upload(inner, idx).await?;
        }
        match inner.blocks.remove(&idx) {
            Some(Dirty::Staged { slot, written, base }) => {
                inner.blocks.insert(idx, Dirty::Staged { slot, written, base });
                Ok(slot)
            }
            Some(Dirty::Buffered { buf, budget, base }) => {
                // Written out of order: the bytes move to a staging slot, over the same base.
                let slot = inner.next_slot;
                let bs = self.env.block_size;
                if let Err(e) = self.staging.write_at(&buf, slot * bs) {
                    inner.blocks.insert(idx, Dirty::Buffered { buf, budget, base });
                    return Err(FsError::staging("write staging file", e));
                }
                inner.next_slot += 1;
                let written = Ranges::of(0, buf.len() as u64);
                inner.blocks.insert(idx, Dirty::Staged { slot, written, base });
                Ok(slot)
            }
            Some(Dirty::Uploading {
                slot: Some(slot),
                len,
                task,
            }) => {
                // The upload reads the slot: let it finish before the bytes change.
                let _ = join(task).await;
                inner.blocks.insert(idx, staged_full(slot, len));
                Ok(slot)
            }
            Some(Dirty::Uploaded {
                slot: Some(slot),
                len,
                ..
            }) => {
                inner.blocks.insert(idx, staged_full(slot, len));
                Ok(slot)
            }
            Some(Dirty::Uploaded {
                slot: None,
                len,
                hash,
            }) => {
                // Uploaded from memory: its stored copy is the base of the rewrite.
                let base = Some(FileBlock { idx, hash, len });
                Ok(self.new_slot(inner, idx, base))
            }
            Some(Dirty::Lost(loss)) => {
                let e = loss.error();
                inner.blocks.insert(idx, Dirty::Lost(loss));
                Err(e)
            }
            // Settled above; an upload cannot be in flight without a slot here.
            Some(Dirty::Uploading { slot: None, .. }) => unreachable_slot(),
            None => {
                let base = self.base_block(inner, idx).await?;
                Ok(self.new_slot(inner, idx, base))
            }
        }
    }

    /// Stages block `idx` in a new slot, nothing written yet over `base`.
    fn new_slot(&self, inner: &mut Inner, idx: u64, base: Option<FileBlock>) -> u64 {
        let slot = inner.next_slot;
        inner.next_slot += 1;
        inner.blocks.insert(
            idx,
            Dirty::Staged {
                slot,
                written: Ranges::default(),
                base,
            },
        );
        slot
    }

    /// The committed block `idx`, clipped to the bytes that survived truncation.
    async fn base_block(&self, inner: &Inner, idx: u64) -> Result<Option<FileBlock>, FsError> {
        let bs = self.env.block_size;
        let valid_end = inner.committed_end();
        if idx * bs >= valid_end {
            return Ok(None);
        }
        let found = self.env.meta.block_map(View::Live, self.ino, idx, 1).await?;
        Ok(found.into_iter().next().map(|mut b| {
            b.len = b.len.min(valid_end - idx * bs);
            b
        }))
    }

    /// Uploads block `idx` (its first `len` bytes), staged or in memory, in the background,
    /// waiting for an upload permit first.
    async fn start_upload(&self, inner: &mut Inner, idx: u64, len: u64) -> Result<(), FsError> {
        let slot = match inner.blocks.get(&idx) {
            Some(Dirty::Staged { slot, .. }) => Some(*slot),
            // Uploading it would store zeros where committed bytes belong.
            Some(Dirty::Buffered {
                buf, base: Some(b), ..
            }) if (buf.len() as u64) < b.len.min(len) => {
                return Err(FsError::new(
                    FsErrorKind::Io,
                    "a block's committed bytes were not merged before its upload",
                ));
            }
            Some(Dirty::Buffered { .. }) => None,
            _ => return Ok(()),
        };
        let permit = self
            .env
            .uploads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FsError::new(FsErrorKind::Io, "the mount is shutting down"))?;
        let (staging, blocks, bs) = (self.staging.clone(), self.env.blocks.clone(), self.env.block_size);
        let task = match (slot, inner.blocks.remove(&idx)) {
            (Some(slot), _) => tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; len as usize];
                // The last slot may end before `len` (a write inside a block that a truncate
                // grew): the missing tail is a hole and reads as zeros, as on a read.
                read_fully(&staging, &mut buf, slot * bs)?;
                Ok(blocks.put_block(Bytes::from(buf)).await?)
            }),
            (None, Some(Dirty::Buffered { mut buf, budget, .. })) => {
                // Bytes past what was written (a block a truncate grew) are a hole: zeros.
                buf.resize(len as usize, 0);
                tokio::spawn(async move {
                    let (_permit, _budget) = (permit, budget);
                    Ok(blocks.put_block(Bytes::from(buf)).await?)
                })
            }
            (None, _) => return unreachable_slot().map(drop),
        };
        inner.blocks.insert(idx, Dirty::Uploading { slot, len, task });
        Ok(())
    }

    /// Fills the unwritten parts of dirty block `idx` (staged, or in memory) from its
    /// committed block.
    async fn materialize(&self, inner: &mut Inner, idx: u64) -> Result<(), FsError> {
        if let Some(Dirty::Buffered { buf, base, .. }) = inner.blocks.get_mut(&idx) {
            let Some(b) = base.take() else {
                return Ok(());
            };
            if (buf.len() as u64) < b.len {
                let old = match self.env.blocks.get_block(b.hash, b.len).await {
                    Ok(old) => old,
                    Err(e) => {
                        *base = Some(b);
                        return Err(e.into());
                    }
                };
                let from = buf.len();
                buf.resize(b.len as usize, 0);
                // Bytes past the stored block's end (a block a truncate grew) stay zeros.
                copy_block(&old, b.len, from as u64, &mut buf[from..]);
            }
            return Ok(());
        }
        let Some(Dirty::Staged { slot, written, base }) = inner.blocks.get_mut(&idx) else {
            return Ok(());
        };
        let Some(b) = base.take() else {
            return Ok(());
        };
        let gaps = written.gaps(b.len);
        if !gaps.is_empty() {
            let old = self.env.blocks.get_block(b.hash, b.len).await;
            let old = match old {
                Ok(old) => old,
                Err(e) => {
                    // Keep the base so a later attempt can fill the gaps.
                    *base = Some(b);
                    return Err(e.into());
                }
            };
            let bs = self.env.block_size;
            for (a, z) in gaps {
                let z = z.min(old.len() as u64);
                if a < z {
                    self.staging
                        .write_at(&old[a as usize..z as usize], *slot * bs + a)
                        .map_err(|e| FsError::staging("write staging file", e))?;
                }
            }
        }
        written.insert(0, b.len);
        Ok(())
    }

    /// Whether block `idx` has staged content (reads must come from the session).
    pub(crate) async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
        let mut inner = self.inner.lock().await;
        let size = self.size();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bs = self.env.block_size;
        let mut out = vec![0u8; (end - offset) as usize];
        for span in spans(offset, end, bs) {
            let (idx, in_block) = (span.idx, span.in_block);
            let dst = &mut out[span.in_buffer()];
            if matches!(inner.blocks.get(&idx), Some(Dirty::Uploading { slot: None, .. })) {
                self.finish_upload(&mut inner, idx).await?;
            }
            if matches!(
                inner.blocks.get(&idx),
                Some(Dirty::Buffered { base: Some(_), .. })
            ) {
                self.materialize(&mut inner, idx).await?;
            }
            match inner.blocks.get(&idx) {
                None => {
                    if let Some(b) = self.base_block(&inner, idx).await? {
                        let block = self.env.blocks.get_block(b.hash, b.len).await?;
                        copy_block(&block, b.len, in_block, dst);
                    }
                }
                Some(Dirty::Buffered { buf, .. }) => copy_block(buf, buf.len() as u64, in_block, dst),
                Some(&Dirty::Uploaded {
                    slot: None,
                    len,
                    hash,
                }) => {
                    let block = self.env.blocks.get_block(hash, len).await?;
                    copy_block(&block, len, in_block, dst);
                }
                Some(Dirty::Lost(loss)) => return Err(loss.error()),
                Some(_) => {
                    self.materialize(&mut inner, idx).await?;
                    let slot = match inner.blocks.get(&idx) {
                        Some(Dirty::Staged { slot, .. })
                        | Some(Dirty::Uploading { slot: Some(slot), .. })
                        | Some(Dirty::Uploaded { slot: Some(slot), .. }) => *slot,
                        _ => unreachable_slot()?,
                    };
                    // Bytes never written in the slot read back as zeros (sparse file).
                    read_fully(&self.staging, dst, slot * bs + in_block)?;
                }
            }
        }
        Ok(out)
    }

    /// Changes the logical size (ftruncate / O_TRUNC / truncate on an open file).
    pub(crate) async fn truncate(&self, new_size: u64) -> Result<(), FsError> {
        if new_size > MAX_FILE_SIZE {
            return Err(FsError::new(
                FsErrorKind::TooBig,
                "size past the largest file size",
            ));
        }
        let mut inner = self.inner.lock().await;
        let bs = self.env.block_size;
        let Shrink { keep, tail } = shrink(new_size, bs);
        let doomed: Vec<u64> = inner.blocks.range(keep..).map(|(k, _)| *k).collect();
        for idx in doomed {
            if let Some(Dirty::Uploading { task, .. }) = inner.blocks.remove(&idx) {
                task.abort();
            }
        }
        if let Some((idx, tail)) = tail.filter(|_| new_size < self.size()) {
            // The boundary block keeps its head; its tail must read as zeros from now on.
            let slot = self.stage(&mut inner, idx).await?;
            self.materialize(&mut inner, idx).await?;
            let zeros = vec![0u8; (bs - tail) as usize];
            self.staging
                .write_at(&zeros, slot * bs + tail)
                .map_err(|e| FsError::staging("write staging file", e))?;
            if let Some(Dirty::Staged { written, .. }) = inner.blocks.get_mut(&idx) {
                written.insert(0, tail);
                written.cut(tail);
                // Zeros past the tail are part of the block now, so nothing is fetched there.
                written.insert(tail, bs);
            }
        }
        inner.min_size = inner.min_size.min(new_size);
        // Emptied: hashing in order can start over; cut elsewhere, the hashes are stale.
        inner.stream_hash = match inner.stream_hash.take() {
            _ if new_size == 0 => StreamHash::start(&self.env.hash_on_write, 0),
            Some(h) if h.next == new_size => Some(h),
            _ => None,
        };
        inner.changed = true;
        self.dirty.store(true, Ordering::Release);
        self.size.store(new_size, Ordering::Release);
        self.mtime.store(self.env.clock.now().0, Ordering::Release);
        Ok(())
    }

    /// Uploads everything staged and commits the new content in one transaction. Returns the
    /// new attributes, or `None` when there was nothing to commit.
    /// On failure the uncommitted changes are dropped, in the same critical section, so no
    /// write lands between the failure and the drop (see the module comment).
    pub(crate) async fn commit(&self, actor: &Actor) -> Result<Option<Committed>, FsError> {
        let mut inner = self.inner.lock().await;
        let result = self.commit_locked(&mut inner, actor).await;
        if result.is_err() {
            self.drop_changes(&mut inner);
        }
        result
    }

    /// The create the last failed commit gave up, once.
    pub(crate) fn take_abandoned_create(&self) -> Option<DeferredCreate> {
        lock(&self.abandoned).take()
    }

    /// Forgets every uncommitted change: the session shows the committed content again. A new
    /// file is not created at all (its content is what failed): the create is abandoned.
    fn drop_changes(&self, inner: &mut Inner) {
        if let Some(create) = lock(&self.deferred).take() {
            *lock(&self.abandoned) = Some(create);
        }
        self.size.store(inner.base_size, Ordering::Release);
        self.mtime.store(inner.base_mtime.0, Ordering::Release);
        self.failures.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.clear_staged(inner) {
            // The space comes back when the session ends; the content is already forgotten.
            tracing::warn!(error = %e, "could not reset the staging file of a failed commit");
        }
    }

    /// Ends the staged state after a commit, committed or dropped: no dirty block (an upload
    /// still running is aborted), nothing truncated past the base, and the staging space
    /// given back.
    fn clear_staged(&self, inner: &mut Inner) -> Result<(), FsError> {
        for dirty in std::mem::take(&mut inner.blocks).into_values() {
            if let Dirty::Uploading { task, .. } = dirty {
                task.abort();
            }
        }
        inner.next_slot = 0;
        inner.min_size = inner.base_size;
        inner.changed = false;
        inner.stream_hash = StreamHash::start(&self.env.hash_on_write, inner.base_size);
        self.dirty.store(false, Ordering::Release);
        self.staging
            .set_len(0)
            .map_err(|e| FsError::staging("reset staging file", e))
    }

    async fn commit_locked(&self, inner: &mut Inner, actor: &Actor) -> Result<Option<Committed>, FsError> {
        let deferred = self.deferred_create();
        if !inner.changed {
            return match deferred {
                Some(create) => self.create_with(&create, None).await.map(Some),
                None => Ok(None),
            };
        }
        let bs = self.env.block_size;
        let size = self.size();
        let pending: Vec<u64> = inner
            .blocks
            .iter()
            .filter(|(_, d)| matches!(d, Dirty::Staged { .. } | Dirty::Buffered { .. }))
            .map(|(k, _)| *k)
            .collect();
        for idx in pending {
            self.materialize(inner, idx).await?;
            let len = bs.min(size.saturating_sub(idx * bs));
            self.start_upload(inner, idx, len).await?;
        }
        let mut changes = Vec::new();
        let mut failure = None;
        let indexes: Vec<u64> = inner.blocks.keys().copied().collect();
        for idx in indexes {
            if let Err(e) = self.finish_upload(inner, idx).await {
                failure.get_or_insert(e);
            }
            match inner.blocks.get(&idx) {
                Some(Dirty::Uploaded { len, hash, .. }) => {
                    let valid = bs.min(size.saturating_sub(idx * bs));
                    changes.push(BlockChange {
                        idx,
                        block: Some((*hash, (*len).min(valid))),
                    });
                }
                Some(Dirty::Lost(loss)) => {
                    failure.get_or_insert(loss.error());
                }
                _ => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        changes.extend(self.truncated_holes(inner, size).await?);
        let hashes = match inner.stream_hash.take() {
            Some(h) if h.next == size => h.hashers.into_iter().map(|(a, h)| (a, h.finish())).collect(),
            _ => Vec::new(),
        };
        let mtime = Timestamp(self.mtime.load(Ordering::Acquire));
        let mut committed = match self
            .commit_changes(deferred.as_ref(), &changes, size, mtime, actor)
            .await
        {
            // A GC pass reclaimed blocks this session uploaded (or deduplicated against) longer
            // ago than its grace period: the bytes are still staged, so store them again and
            // commit once more, rather than fail a close after hours of writing.
            Err(FsError::Meta(MetaError::BlocksGone(gone))) => {
                self.store_again(inner, &gone).await?;
                self.commit_changes(deferred.as_ref(), &changes, size, mtime, actor)
                    .await?
            }
            other => other?,
        };
        inner.base_size = size;
        inner.base_mtime = committed.attr.mtime;
        committed.hashes = hashes;
        self.clear_staged(inner)?;
        Ok(Some(committed))
    }

    /// Commits `changes` (the block map of a new file, or changes to a committed one).
    async fn commit_changes(
        &self,
        deferred: Option<&DeferredCreate>,
        changes: &[BlockChange],
        size: u64,
        mtime: Timestamp,
        actor: &Actor,
    ) -> Result<Committed, FsError> {
        match deferred {
            Some(create) => {
                // A new file: no earlier block map, so every change is a block (holes are
                // simply absent).
                let blocks: Vec<(u64, [u8; 32], u64)> = changes
                    .iter()
                    .filter_map(|c| c.block.map(|(hash, len)| (c.idx, hash, len)))
                    .collect();
                let content = InitialContent {
                    blocks: &blocks,
                    size,
                    mtime,
                };
                self.create_with(create, Some(&content)).await
            }
            None => Ok(Committed {
                attr: self
                    .env
                    .meta
                    .commit_content(
                        actor,
                        self.env.ws,
                        self.ino,
                        self.base_version,
                        changes,
                        size,
                        mtime,
                    )
                    .await?,
                created: None,
                conflict: None,
                hashes: Vec::new(),
            }),
        }
    }

    /// Stores again, from their staging slots, the uploaded blocks whose hashes are in `gone`.
    async fn store_again(&self, inner: &Inner, gone: &[[u8; 32]]) -> Result<(), FsError> {
        let bs = self.env.block_size;
        for dirty in inner.blocks.values() {
            let Dirty::Uploaded { slot, len, hash } = dirty else {
                continue;
            };
            if !gone.contains(hash) {
                continue;
            }
            let Some(slot) = slot else {
                // Renewed every RENEW_EVERY while the session wrote: only a grace period
                // shorter than that, or a session idle for longer than the grace, gets here.
                return Err(FsError::new(
                    FsErrorKind::Io,
                    "a GC pass reclaimed a block this open file wrote from memory before its close committed it",
                ));
            };
            let mut buf = vec![0u8; *len as usize];
            read_fully(&self.staging, &mut buf, slot * bs)?;
            let stored = self.env.blocks.put_block(Bytes::from(buf)).await?;
            if stored != *hash {
                return Err(FsError::new(
                    FsErrorKind::Io,
                    "a staged block changed while its commit was retried",
                ));
            }
            tracing::info!(block = %blake3::Hash::from_bytes(*hash).to_hex(), "stored a block again that a GC pass reclaimed during the write session");
        }
        Ok(())
    }

    /// Committed blocks that a truncation cut away and that the session did not rewrite: they
    /// become holes explicitly, because growing again must not bring their bytes back.
    async fn truncated_holes(&self, inner: &Inner, size: u64) -> Result<Vec<BlockChange>, FsError> {
        let bs = self.env.block_size;
        let first = inner.min_size.div_ceil(bs);
        let end = size.min(inner.base_size).div_ceil(bs);
        if first >= end {
            return Ok(Vec::new());
        }
        let old = self
            .env
            .meta
            .block_map(View::Live, self.ino, first, end - first)
            .await?;
        Ok(old
            .into_iter()
            .filter(|b| !inner.blocks.contains_key(&b.idx))
            .map(|b| BlockChange {
                idx: b.idx,
                block: None,
            })
            .collect())
    }
}

impl<B: BlockIo, M: MetaStore> Drop for WriteSession<B, M> {
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.try_lock() {
            for dirty in inner.blocks.values() {
                if let Dirty::Uploading { task, .. } = dirty {
                    task.abort();
                }
            }
        }
    }
}

impl Inner {
    /// Where committed bytes end: bytes at or past it were truncated away (or never existed)
    /// and nothing committed shows through there.
    fn committed_end(&self) -> u64 {
        self.min_size.min(self.base_size)
    }
}

fn staged_full(slot: u64, len: u64) -> Dirty {
    Dirty::Staged {
        slot,
        written: Ranges::of(0, len),
        base: None,
    }
}

async fn join(task: JoinHandle<Result<[u8; 32], FsError>>) -> Result<[u8; 32], FsError> {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(FsError::new(FsErrorKind::Io, format!("upload task ended: {e}"))),
    }
}

fn unreachable_slot() -> Result<u64, FsError> {
    Err(FsError::new(
        FsErrorKind::Io,
        "staged block vanished while locked",
    ))
}

/// Reads `dst.len()` bytes at `at`; bytes past the end of the staging file are zeros.
fn read_fully(file: &std::fs::File, dst: &mut [u8], at: u64) -> Result<(), FsError> {
    let mut done = 0;
    while done < dst.len() {
        let n = file
            .read_at(&mut dst[done..], at + done as u64)
            .map_err(|e| FsError::staging("read staging file", e))?;
        if n == 0 {
            dst[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// Copies block bytes from `in_block` into `dst`; bytes past the block's valid length are zeros.
pub(crate) fn copy_block(block: &[u8], valid: u64, in_block: u64, dst: &mut [u8]) {
    let avail = (valid.min(block.len() as u64)).saturating_sub(in_block) as usize;
    let n = avail.min(dst.len());
    if n > 0 {
        dst[..n].copy_from_slice(&block[in_block as usize..in_block as usize + n]);
    }
    dst[n..].fill(0);
}
