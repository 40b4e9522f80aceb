//! The inode-level file system over the metadata store and the block store, with no FUSE
//! types in it: the FUSE adapter in `drive-csi` converts its requests and replies, and tests
//! call it directly.
//!
//! - Inode numbers: the mount's root node is reported as inode 1 (what FUSE expects) and the
//!   node that really has id 1, if any, takes the root's id: a swap, so the mapping is a
//!   bijection whatever the ids are.
//! - Writes go through per-inode write sessions ([`write`]); `flush`, `fsync` and `release`
//!   commit them, so a close that returns 0 means data and metadata are durable.
//! - Reads use a per-handle [`read::Reader`] with sequential prefetch, or the write session
//!   when this mount has uncommitted bytes for the file.
//! - A snapshot view is read-only: every mutation fails with `ReadOnly` (EROFS).
//!
//! Split by path: `namespace` (lookup, attributes, directory operations), `io` (open, read,
//! write, flush, release), `xattr`, `write` (the write pipeline), `read` (read path and
//! prefetch).

mod access;
pub mod blocks;
mod cache;
mod error;
mod io;
mod locks;
mod namespace;
mod ranges;
mod read;
mod removals;
mod write;
mod xattr;

pub use blocks::{BlockErrorKind, BlockIo, BlockIoError};
pub use cache::MetaCacheStats;
pub use error::{FsError, FsErrorKind};
pub use namespace::{DirItem, USAGE_TTL};
pub use write::MAX_FILE_SIZE;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::meta::PgMetaStore;
use crate::model::{Actor, Attr, Event, Name, NodeId, View, Workspace, WorkspaceUsage};
use crate::ports::{Clock, MetaStore, SystemClock};
use crate::rules::access::MountAccess;
use crate::sync::lock;

use self::cache::MetaCache;
use self::read::{ReadBuffers, Reader};
use self::removals::Removals;
use self::write::{SessionEnv, WriteSession};

/// The inode number FUSE uses for the root of a mount.
pub const ROOT_INO: u64 = 1;

/// Settings of one mounted file system.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Live tree or a snapshot (read-only).
    pub view: View,
    /// The node the mount shows as its root.
    pub root: NodeId,
    /// Refuse every mutation even on the live tree.
    pub read_only: bool,
    /// Where write sessions stage bytes.
    pub staging_dir: PathBuf,
    /// Block uploads in flight across the mount (each holds one block in memory).
    pub max_uploads: usize,
    /// Largest sequential prefetch window of one open file, in bytes.
    pub readahead_bytes: u64,
    /// Block bytes open files hold at once across the mount: blocks fetched ahead of readers
    /// and not yet read, and the block each open file is reading. Each file read sequentially
    /// fetches ahead at most its even share of it, less the block it reads. With many files
    /// open, prefetch stops at this bound and a file beyond it keeps no block between reads
    /// (it reads again through the memory cache), instead of memory growing with the number
    /// of open files. Reads themselves are never refused.
    pub read_buffer_bytes: u64,
    /// Block bytes write sessions fill in memory at once across the mount: blocks written in
    /// order from their start are built and uploaded from memory while this budget has room
    /// (each block holds its share until its upload ends); others are staged on local disk.
    pub write_buffer_bytes: u64,
    /// How long this mount's file locks outlive its last lease renewal (a killed mount's
    /// locks are free again after this).
    pub lock_lease: Duration,
    /// Names this mount in the change feed, so it can tell its own events apart.
    pub mount_id: String,
    /// Who this mount acts for beyond the local uid (for a CSI mount, its pod), recorded
    /// in every event it causes.
    pub actor: Option<String>,
    /// What stamps the times this mount sets (mtime of writes, `utimensat(UTIME_NOW)`).
    pub clock: Arc<dyn Clock>,
    /// Entries and attributes kept in the mount's metadata cache (each); 0 turns it off.
    pub meta_cache_entries: usize,
    /// How long after the change feed was last read to its end the metadata cache may still
    /// answer (the bound on how stale another mount's change can look here).
    pub meta_cache_staleness: Duration,
    /// An open records the file's last access at most once per this interval (see
    /// `access`; expiry and tiering read it).
    pub access_interval: Duration,
    /// How often noted accesses are written (`DriveFs::run_access_recorder`).
    pub access_flush: Duration,
    /// Hashes computed while a file is written in order from its start and kept for its
    /// `user.studiodrive.*` attributes (others are computed on demand, by a read). xxHash64
    /// by default: at several GB/s it costs a writer nothing it would notice; MD5, SHA-1
    /// and SHA-256 run at hundreds of MB/s and are left to be asked for.
    pub hash_on_write: Vec<crate::mhl::HashAlgo>,
}

/// Learns of a mount's content commits. Called on the closing process's path: it must only
/// note the commit and return (work goes to a background task).
pub trait CommitObserver: Send + Sync + std::fmt::Debug + 'static {
    /// `attr` is the file's attributes after the commit; `created` its folder and name when
    /// the commit created it (a rewrite of an existing file does not carry them).
    fn committed(&self, attr: &Attr, created: Option<(NodeId, &Name)>);
}

impl FsConfig {
    /// Defaults for a mount of `root` in `view`: 12 uploads, 64 MiB readahead per file,
    /// 64 MiB of read buffers and 32 MiB of write buffers across the mount, a metadata
    /// cache of 200,000 entries that answers up to 1 s after the feed was last read, last
    /// access recorded at most hourly per file, written every 30 s, and xxHash64 computed
    /// while files are written in order.
    pub fn new(view: View, root: NodeId, staging_dir: PathBuf) -> FsConfig {
        FsConfig {
            view,
            root,
            read_only: view.is_read_only(),
            staging_dir,
            max_uploads: 12,
            readahead_bytes: 64 << 20,
            read_buffer_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            lock_lease: Duration::from_secs(15),
            mount_id: uuid::Uuid::new_v4().simple().to_string(),
            actor: None,
            clock: Arc::new(SystemClock),
            meta_cache_entries: 200_000,
            meta_cache_staleness: Duration::from_secs(1),
            access_interval: Duration::from_secs(3600),
            access_flush: Duration::from_secs(30),
            hash_on_write: vec![crate::mhl::HashAlgo::Xxh64],
        }
    }
}

/// Who performs an operation: the caller's uid and gid (and pid for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Open flags the file system acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
}

impl OpenFlags {
    /// From `open(2)` flags.
    pub fn from_libc(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// Reply of `open`/`create`: the handle and whether the kernel may keep its page cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub attr: Attr,
    /// The content version is the one this mount saw at its previous open.
    pub keep_cache: bool,
}

/// What the kernel must forget after other writers' changes, or after a commit of this
/// mount failed: inodes (attributes and page cache) and directory entries (parent inode,
/// name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidations {
    pub inodes: Vec<u64>,
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// This mount's local changes that are not in the metadata store yet, which an operation's
/// answer may depend on. The ordering guarantee: an operation that reaches the store through
/// [`DriveFs::settled`] sees every change this mount acknowledged before it, as if nothing
/// were deferred; the deferral is invisible to the callers of the file system.
///
/// - Deferred creates: a file created for writing is created in the store at its first
///   commit, with its content (`write::DeferredCreate`); until then only this mount knows it.
/// - Queued removals: `unlink` of a known file is write-behind (`removals`), committed in
///   batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Queued removals only: reads of a name or a node (a lookup of a name this mount
    /// unlinked must not find it), and operations that settled the creates themselves.
    Removals,
    /// Deferred creates and queued removals: every mutation and every listing.
    All,
}

/// The metadata store after this mount's pending changes were committed (the only value
/// [`DriveFs::settled`] hands out; it derefs to the store).
pub(crate) struct Settled<'a, M>(&'a M);

impl<M> std::ops::Deref for Settled<'_, M> {
    type Target = M;

    fn deref(&self) -> &M {
        self.0
    }
}

/// File-system statistics (statfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// One open file handle.
struct Handle<B: BlockIo, M: MetaStore> {
    ino: NodeId,
    flags: OpenFlags,
    reader: tokio::sync::Mutex<Option<Reader<B, M>>>,
    session: Option<Arc<WriteSession<B, M>>>,
    /// The session's failed commits when this handle joined it: a later failure dropped
    /// writes this handle may have made (see `DriveFs::lost_writes`).
    failures_seen: u64,
}

/// An open directory's listing, shared by the requests on its handle.
type SharedDirHandle = Arc<tokio::sync::Mutex<namespace::DirHandle>>;
/// A write session and the number of open handles using it.
type SessionUse<B, M> = (Arc<WriteSession<B, M>>, usize);

/// The file system of one mount.
pub struct DriveFs<B: BlockIo, M: MetaStore = PgMetaStore> {
    meta: M,
    blocks: Arc<B>,
    ws: Workspace,
    cfg: FsConfig,
    env: Arc<SessionEnv<B, M>>,
    /// Permits of one block each for blocks held by open files (see
    /// `FsConfig::read_buffer_bytes`).
    read_buffers: Arc<ReadBuffers>,
    cache: MetaCache,
    removals: Removals,
    handles: Mutex<HashMap<u64, Arc<Handle<B, M>>>>,
    /// Open directories: handle -> (inode, listing so far).
    dirs: Mutex<HashMap<u64, (u64, SharedDirHandle)>>,
    /// Write sessions by store node id, with the number of handles using each.
    sessions: Mutex<HashMap<NodeId, SessionUse<B, M>>>,
    /// Names of files created here whose create is deferred (see `write::DeferredCreate`).
    deferred_names: Mutex<HashMap<(NodeId, Name), NodeId>>,
    /// Content version each file had when this mount last opened it (FOPEN_KEEP_CACHE), for
    /// at most `meta_cache_entries` files: a file left out only has its pages dropped at its
    /// next open, so the map is simply emptied when full.
    seen_versions: Mutex<HashMap<NodeId, u64>>,
    /// The hashes of files' content by (file, content version), computed on demand for the
    /// `user.studiodrive.*` hash attributes; emptied when it holds `HASHED_FILES` entries.
    file_hashes: Mutex<HashMap<(NodeId, u64), Arc<xattr::FileHashes>>>,
    /// Told of each content commit ([`DriveFs::observe_commits`]).
    on_commit: std::sync::OnceLock<Arc<dyn CommitObserver>>,
    /// What a failed commit here dropped and the kernel may still cache (the file's pages,
    /// the entry of a new file that is not created), for the invalidator to send.
    dropped: Mutex<Invalidations>,
    /// The workspace's usage counters and quota as last read, and when (see
    /// `DriveFs::workspace_usage`).
    usage: Mutex<Option<(Instant, WorkspaceUsage)>>,
    /// (file, lock owner) pairs this mount took a lock for (see `locks`).
    held_locks: Mutex<std::collections::HashSet<(NodeId, u64)>>,
    /// The lock owners that took a lock through each open file (see `locks`).
    handle_lock_owners: Mutex<HashMap<u64, std::collections::HashSet<u64>>>,
    next_fh: AtomicU64,
    /// What the mount's grant still allows, as a [`MountAccess`] code: an access recheck
    /// lowers it when a Share is deleted or expires, and restores it when access returns.
    access: AtomicU8,
    /// Opens noted for the last-access record (see `access`).
    accesses: access::AccessLog,
}

impl<B: BlockIo, M: MetaStore> std::fmt::Debug for DriveFs<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveFs")
            .field("workspace", &self.ws.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// A file system over workspace `ws`, rooted and viewed as `cfg` says.
    pub fn new(meta: M, blocks: Arc<B>, ws: Workspace, cfg: FsConfig) -> Result<DriveFs<B, M>, FsError> {
        crate::private_files::create_dir_all(&cfg.staging_dir)
            .map_err(|e| FsError::staging(format!("create {}", cfg.staging_dir.display()), e))?;
        let env = Arc::new(SessionEnv {
            meta: meta.clone(),
            blocks: blocks.clone(),
            ws: ws.id,
            block_size: u64::from(ws.block_size),
            uploads: Arc::new(Semaphore::new(cfg.max_uploads.max(1))),
            write_buffers: Arc::new(Semaphore::new(
                (cfg.write_buffer_bytes / u64::from(ws.block_size).max(1)).min(Semaphore::MAX_PERMITS as u64)
                    as usize,
            )),
            clock: cfg.clock.clone(),
            hash_on_write: cfg.hash_on_write.clone(),
        });
        let cache = MetaCache::new(
            cfg.meta_cache_entries,
            cfg.meta_cache_staleness,
            cfg.view.is_read_only(),
        );
        let buffer_blocks = cfg.read_buffer_bytes / u64::from(ws.block_size).max(1);
        Ok(DriveFs {
            read_buffers: Arc::new(ReadBuffers::new(buffer_blocks)),
            cache,
            removals: Removals::default(),
            meta,
            blocks,
            ws,
            cfg,
            env,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            deferred_names: Mutex::new(HashMap::new()),
            seen_versions: Mutex::new(HashMap::new()),
            file_hashes: Mutex::new(HashMap::new()),
            dropped: Mutex::new(Invalidations::default()),
            usage: Mutex::new(None),
            held_locks: Mutex::new(std::collections::HashSet::new()),
            handle_lock_owners: Mutex::new(HashMap::new()),
            access: AtomicU8::new(access_code(MountAccess::ReadWrite)),
            next_fh: AtomicU64::new(1),
            accesses: access::AccessLog::default(),
            on_commit: std::sync::OnceLock::new(),
        })
    }

    /// Tells `observer` of every content this mount commits from now on, once durable (the
    /// technical-metadata extractor). One observer per mount; a second is refused.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> Result<(), Arc<dyn CommitObserver>> {
        self.on_commit.set(observer)
    }

    /// The workspace mounted.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The mount's settings.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// The metadata store (for the change feed).
    pub fn meta(&self) -> &M {
        &self.meta
    }

    /// The store node id behind FUSE inode `ino`.
    pub fn to_node(&self, ino: u64) -> NodeId {
        let root = self.cfg.root.0;
        match ino {
            ROOT_INO => self.cfg.root,
            i if i == root => NodeId(ROOT_INO),
            i => NodeId(i),
        }
    }

    /// The FUSE inode number of store node `id`.
    pub fn to_ino(&self, id: NodeId) -> u64 {
        let root = self.cfg.root.0;
        match id.0 {
            i if i == root => ROOT_INO,
            ROOT_INO => root,
            i => i,
        }
    }

    /// Whether `event` was caused by this mount (its own changes need no invalidation).
    pub fn is_own_event(&self, event: &Event) -> bool {
        event.actor.ends_with(&format!("@{}", self.cfg.mount_id))
    }

    /// Applies change-feed events read by a poll that started at `poll_started` and read the
    /// feed to its end: other writers' changes leave the metadata cache, and the returned
    /// invalidations say what the kernel must drop.
    pub fn apply_feed(&self, events: &[Event], poll_started: Instant) -> Invalidations {
        let mut out = Invalidations::default();
        for ev in events.iter().filter(|e| !self.is_own_event(e)) {
            self.cache.forget_event(ev);
            out.inodes.extend(ev.ino.map(|i| self.to_ino(i)));
            let entries = [
                (ev.parent, ev.name.as_ref()),
                (ev.from.as_ref().map(|f| f.0), ev.from.as_ref().map(|f| &f.1)),
            ];
            for (parent, name) in entries {
                if let (Some(parent), Some(name)) = (parent, name) {
                    out.entries.push((self.to_ino(parent), name.as_bytes().to_vec()));
                    out.inodes.push(self.to_ino(parent));
                }
            }
        }
        out.inodes.sort_unstable();
        out.inodes.dedup();
        self.cache.feed_caught_up(poll_started);
        out
    }

    /// What failed commits of this mount dropped since the last call, for the kernel to
    /// forget (the invalidator sends it with, or without, the feed's changes).
    pub fn take_dropped(&self) -> Invalidations {
        std::mem::take(&mut *lock(&self.dropped))
    }

    /// Records what a failed commit dropped (see [`DriveFs::take_dropped`]).
    fn note_dropped(&self, node: NodeId, entry: Option<(NodeId, &Name)>) {
        let mut dropped = lock(&self.dropped);
        dropped.inodes.push(self.to_ino(node));
        if let Some((parent, name)) = entry {
            dropped
                .entries
                .push((self.to_ino(parent), name.as_bytes().to_vec()));
            dropped.inodes.push(self.to_ino(parent));
        }
    }

    /// Metadata cache counters.
    pub fn meta_cache_stats(&self) -> Arc<MetaCacheStats> {
        self.cache.stats()
    }

    /// The actor recorded for a caller's mutations.
    fn actor(&self, caller: Caller) -> Actor {
        match &self.cfg.actor {
            // The mount id stays last: `is_own_event` recognises it there.
            Some(who) => Actor(format!("{who} uid:{}@{}", caller.uid, self.cfg.mount_id)),
            None => Actor(format!("uid:{}@{}", caller.uid, self.cfg.mount_id)),
        }
    }

    /// Fails with EROFS on read-only mounts, and with EACCES once access was revoked.
    fn writable(&self) -> Result<(), FsError> {
        self.readable()?;
        if self.cfg.read_only || self.cfg.view.is_read_only() || self.mount_access() == MountAccess::ReadOnly
        {
            return Err(error::read_only());
        }
        Ok(())
    }

    /// Fails with EACCES once the mount's access was revoked: lookups and opens are refused,
    /// files already open keep reading until closed.
    fn readable(&self) -> Result<(), FsError> {
        if self.mount_access() == MountAccess::Denied {
            return Err(FsError::new(
                FsErrorKind::AccessDenied,
                "access to this workspace path was revoked",
            ));
        }
        Ok(())
    }

    /// What the mount's grant allows now.
    pub fn mount_access(&self) -> MountAccess {
        match self.access.load(Ordering::Relaxed) {
            2 => MountAccess::ReadWrite,
            1 => MountAccess::ReadOnly,
            _ => MountAccess::Denied,
        }
    }

    /// Lowers (or restores) what the mount allows; a mount opened read-only stays read-only.
    pub fn set_mount_access(&self, access: MountAccess) {
        let before = self.mount_access();
        self.access.store(access_code(access), Ordering::Relaxed);
        if before != access {
            tracing::warn!(workspace = %self.ws.name, ?before, now = ?access, "mount access changed");
        }
    }

    /// Converts a store attribute to mount numbering, with uncommitted size and mtime of this
    /// mount's write session laid over it.
    fn outer(&self, mut attr: Attr) -> Attr {
        if let Some(session) = self.session_of(attr.ino) {
            session.overlay(&mut attr);
        }
        attr.ino = NodeId(self.to_ino(attr.ino));
        attr
    }

    /// A reader of `node`'s committed content up to `size`, prefetching within the mount's
    /// budget.
    fn reader(&self, node: NodeId, size: u64) -> Reader<B, M> {
        Reader::new(
            self.unsettled().clone(),
            self.blocks.clone(),
            self.cfg.view,
            node,
            size,
            u64::from(self.ws.block_size),
            self.cfg.readahead_bytes,
            self.read_buffers.clone(),
        )
    }

    fn session_of(&self, node: NodeId) -> Option<Arc<WriteSession<B, M>>> {
        lock(&self.sessions).get(&node).map(|(s, _)| s.clone())
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle<B, M>>, FsError> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(FsErrorKind::BadHandle, format!("no open handle {fh}")))
    }

    /// Number of open handles (for metrics and shutdown).
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Commits every write session and queued removal (shutdown path); returns the first
    /// error.
    pub async fn flush_all(&self) -> Result<(), FsError> {
        let drained = self.settle_local().await;
        let sessions: Vec<(NodeId, Arc<WriteSession<B, M>>)> = lock(&self.sessions)
            .iter()
            .map(|(k, (s, _))| (*k, s.clone()))
            .collect();
        let mut first = None;
        for (node, session) in sessions {
            match session.commit(&Actor::system("mount")).await {
                Ok(Some(committed)) => {
                    let _ = self.note_committed(&committed);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%node, error = %e, "commit at shutdown failed");
                    first.get_or_insert(e);
                }
            }
        }
        drained.and(first.map_or(Ok(()), Err))
    }

    /// Renews, every [`write::RENEW_EVERY`] until `stop`, the records of the blocks open write
    /// sessions uploaded from memory and keep no copy of, so that no GC pass takes them
    /// before the commit that references them.
    pub async fn run_block_renewal(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(write::RENEW_EVERY) => {}
            }
            if let Err(e) = self.renew_write_sessions().await {
                tracing::warn!(error = %e, "could not renew the blocks of open write sessions");
            }
        }
    }

    /// One round of [`DriveFs::run_block_renewal`]; returns the first failure (a session whose
    /// blocks a pass took fails its next commit, whatever this returns).
    pub async fn renew_write_sessions(&self) -> Result<(), FsError> {
        let sessions: Vec<Arc<WriteSession<B, M>>> =
            lock(&self.sessions).values().map(|(s, _)| s.clone()).collect();
        let mut first = None;
        for session in sessions {
            if let Err(e) = session.renew_unkept().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Commits queued removals (write-behind `unlink`, see `removals`) until `stop`
    /// completes, then what is left. Removals are queued only while this runs.
    pub async fn run_removals(&self, stop: impl std::future::Future<Output = ()>) {
        self.removals.set_running(true);
        tokio::pin!(stop);
        loop {
            // Only the wait is raced against `stop`: a batch taken is always committed (or
            // put back), never dropped with a cancelled transaction.
            let batch = tokio::select! {
                () = &mut stop => break,
                batch = self.removals.next_batch(removals::BATCH) => batch,
            };
            if !self.commit_removals(batch).await {
                tokio::time::sleep(removals::RETRY_PAUSE).await;
            }
        }
        self.removals.set_running(false);
        let mut attempts = 0;
        while !self.removals.is_empty() && attempts < 25 {
            let batch = self.removals.next_batch(removals::BATCH).await;
            if !self.commit_removals(batch).await {
                attempts += 1;
                tokio::time::sleep(removals::RETRY_PAUSE).await;
            }
        }
        if !self.removals.is_empty() {
            tracing::error!("metadata store unreachable at shutdown: queued removals are lost");
        }
    }

    /// Commits one batch of queued removals; `false` when the store was unreachable and the
    /// batch went back to the queue.
    async fn commit_removals(&self, batch: Vec<(u64, crate::meta::QueuedUnlink)>) -> bool {
        let Some(last) = batch.last().map(|(seq, _)| *seq) else {
            return true;
        };
        let items: Vec<_> = batch.iter().map(|(_, item)| item.clone()).collect();
        let started = Instant::now();
        let result = self.meta.unlink_many(self.ws.id, &items).await;
        tracing::debug!(count = items.len(), took = ?started.elapsed(), ok = result.is_ok(), "queued removals committed");
        match result {
            Ok(outcomes) => {
                for (item, outcome) in items.iter().zip(outcomes) {
                    match outcome {
                        Ok(dir) => self.cache.set_attr(&dir),
                        Err(e) => {
                            // Gone already, or the name holds another node now.
                            tracing::debug!(name = %item.name.to_string_lossy(), error = %e, "queued removal skipped");
                            self.unqueued(item);
                        }
                    }
                }
                self.removals.settled(last);
                true
            }
            Err(e) if e.kind() == crate::error::ErrorKind::Unavailable => {
                tracing::warn!(error = %e, queued = items.len(), "queued removals wait for the metadata store");
                self.removals.retry(batch, e.to_string());
                false
            }
            Err(e) => {
                tracing::error!(error = %e, count = items.len(), "queued removals failed; the files stay");
                for item in &items {
                    self.unqueued(item);
                }
                self.removals.settled(last);
                true
            }
        }
    }

    /// A queued removal that did not happen: the cache said the name was absent, so let the
    /// store's answer show again.
    fn unqueued(&self, item: &crate::meta::QueuedUnlink) {
        self.cache.forget_entry(item.parent, &item.name);
        self.cache.forget_attr(item.parent);
    }

    /// The metadata store once the pending local changes `pending` names are committed: the
    /// one way the operations in this module's files reach the store when a pending change
    /// of this mount could change the answer (see [`Pending`]).
    pub(crate) async fn settled(&self, pending: Pending) -> Result<Settled<'_, M>, FsError> {
        match pending {
            Pending::Removals => self.drain_removals().await?,
            Pending::All => self.settle_local().await?,
        }
        Ok(Settled(&self.meta))
    }

    /// The metadata store for calls no pending change of this mount can affect (file locks,
    /// xattr reads, symlink targets, reading committed content), without waiting.
    pub(crate) fn unsettled(&self) -> &M {
        &self.meta
    }

    /// Commits what this mount has deferred, creates of files not closed yet and queued
    /// removals (see [`DriveFs::settled`]).
    async fn settle_local(&self) -> Result<(), FsError> {
        self.settle_creates().await?;
        self.drain_removals().await
    }

    /// Commits the deferred creates of this mount's files that are still open.
    pub(crate) async fn settle_creates(&self) -> Result<(), FsError> {
        let nodes: Vec<NodeId> = lock(&self.deferred_names).values().copied().collect();
        for node in nodes {
            if let Some(session) = self.session_of(node)
                && let Some(committed) = session.commit_create().await?
            {
                // On a conflict the writer still has the file open and finds it under its new
                // name; the warning is all this operation can do about it.
                let _ = self.note_committed(&committed);
            }
        }
        Ok(())
    }

    /// The attributes of `node` while its create is deferred.
    pub(crate) fn deferred_attr(&self, node: NodeId) -> Option<Attr> {
        Some(self.session_of(node)?.deferred_create()?.attr)
    }

    /// The node named `name` in `parent` whose create is deferred, if any.
    pub(crate) fn deferred_entry(&self, parent: NodeId, name: &Name) -> Option<Attr> {
        let node = *lock(&self.deferred_names).get(&(parent, name.clone()))?;
        self.deferred_attr(node)
    }

    /// Keeps the cache true after a commit of a write session. A new file that had to be
    /// stored under a conflict name is logged and comes back as the error for its writer.
    pub(crate) fn note_committed(&self, committed: &write::Committed) -> Result<(), FsError> {
        let attr = &committed.attr;
        self.note_seen(attr.ino, attr.content_version);
        if !committed.hashes.is_empty() {
            self.remember_hashes(attr, &committed.hashes);
        }
        self.cache.set_attr(attr);
        if let Some(observer) = self.on_commit.get() {
            observer.committed(
                attr,
                committed
                    .created
                    .as_ref()
                    .map(|(parent, name, _)| (*parent, name)),
            );
        }
        if let Some((parent, name, dir)) = &committed.created {
            let reserved = committed.conflict.as_ref().unwrap_or(name);
            lock(&self.deferred_names).remove(&(*parent, reserved.clone()));
            self.cache.set_entry(*parent, name, attr);
            self.cache.set_attr(dir);
            if let Some(lost) = &committed.conflict {
                // The name holds another mount's file: let the store answer for it.
                self.cache.forget_entry(*parent, lost);
                let (lost, kept) = (lost.to_string_lossy(), name.to_string_lossy());
                tracing::warn!(%lost, %kept, "another mount created the name first; the new file is kept under another name");
                return Err(FsError::new(
                    FsErrorKind::Exists,
                    format!(
                        "{lost} was created by another mount before this file was closed; its content is kept as {kept}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Waits until this mount's queued removals are committed (see `removals`).
    async fn drain_removals(&self) -> Result<(), FsError> {
        self.removals
            .drain()
            .await
            .map_err(|e| FsError::new(FsErrorKind::Io, format!("queued removals not committed: {e}")))
    }

    /// `fsyncdir`: the directory's queued removals are durable when it returns.
    pub async fn fsyncdir(&self) -> Result<(), FsError> {
        self.settle_local().await
    }

    fn note_seen(&self, node: NodeId, version: u64) -> bool {
        let mut seen = lock(&self.seen_versions);
        if seen.len() >= self.cfg.meta_cache_entries.max(1) && !seen.contains_key(&node) {
            seen.clear();
        }
        seen.insert(node, version) == Some(version)
    }
}

fn access_code(access: MountAccess) -> u8 {
    match access {
        MountAccess::Denied => 0,
        MountAccess::ReadOnly => 1,
        MountAccess::ReadWrite => 2,
    }
}

#[cfg(test)]
mod settle_rule {
    /// The operations reach the metadata store only through `settled` or `unsettled`, so
    /// none can forget to settle this mount's pending changes first (mod.rs owns the field).
    #[test]
    fn operations_reach_the_store_through_the_settle_layer() {
        let sources = [
            ("namespace.rs", include_str!("namespace.rs")),
            ("io.rs", include_str!("io.rs")),
            ("xattr.rs", include_str!("xattr.rs")),
            ("locks.rs", include_str!("locks.rs")),
        ];
        for (file, source) in sources {
            for (n, line) in source.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for bare in ["self.meta.", ".meta\n", "settle_local(", "drain_removals("] {
                    assert!(
                        !code.contains(bare.trim_end()) || code.contains(".meta()"),
                        "{file}:{}: reach the store through `settled`/`unsettled`: {line}",
                        n + 1
                    );
                }
            }
        }
    }
}
