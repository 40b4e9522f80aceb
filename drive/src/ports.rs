//! The engine's ports: what the file-system layer and the block data path need from the
//! metadata store, stated once as a trait.
//!
//! Two implementations keep the same contract: [`crate::meta::PgMetaStore`] (PostgreSQL, what
//! mounts run on) and [`crate::meta::MemMetaStore`] (in memory, for tests of the layers above
//! without a server). The same reference-model suite runs against both
//! (`drive/tests/fs_model.rs`), so a rule one of them breaks shows as a difference.
//!
//! The contract, per call: a mutation is atomic (all of it or nothing, with its change-feed
//! event); bad input (names, ranges) is refused before anything changes; errors are
//! [`MetaError`]s classified by [`crate::ErrorKind`] identically in both implementations.
//! The object store is the other port ([`crate::data::ChunkStore`]).

use std::future::Future;
use std::time::Duration;

use crate::error::MetaError;
use crate::meta::xattrs::XattrMode;
use crate::meta::{BlockChange, FileBlock, FileLock, InitialContent, QueuedUnlink};
use crate::model::{
    Actor, Attr, DirEntryPlus, FrameSequence, Name, NewNode, NodeId, RenameMode, SetAttr, Snapshot,
    Timestamp, View, Workspace, WorkspaceId, WorkspaceSpec, WorkspaceUsage,
};

/// The metadata store as the file system and the data path use it. Cloning is cheap (a
/// handle to shared state).
///
/// Methods return `Send` futures so the layers above can run them on any runtime task.
pub trait MetaStore: Clone + Send + Sync + std::fmt::Debug + 'static {
    // Workspaces and snapshots.

    /// Creates a workspace (with its root folder).
    fn create_workspace(
        &self,
        actor: &Actor,
        spec: &WorkspaceSpec,
    ) -> impl Future<Output = Result<Workspace, MetaError>> + Send;

    /// A live workspace by name.
    fn get_workspace(&self, name: &str) -> impl Future<Output = Result<Workspace, MetaError>> + Send;

    /// Takes a snapshot named `name` of the folder at `path` ("/" for the whole workspace).
    fn create_snapshot(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        name: &str,
        path: &str,
    ) -> impl Future<Output = Result<Snapshot, MetaError>> + Send;

    /// A live snapshot of `ws` by name.
    fn get_snapshot(
        &self,
        ws: WorkspaceId,
        name: &str,
    ) -> impl Future<Output = Result<Snapshot, MetaError>> + Send;

    /// What the live tree of `ws` uses (bytes of its files, each inode once; nodes below the
    /// root) and its quota, from counters kept by the mutations themselves: no walk of the
    /// tree. Snapshots are not charged.
    fn workspace_usage(
        &self,
        ws: WorkspaceId,
    ) -> impl Future<Output = Result<WorkspaceUsage, MetaError>> + Send;

    /// The node at `path` of `ws`'s live tree.
    fn resolve(&self, ws: WorkspaceId, path: &str) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    // Reads of the tree.

    /// A node id no other node has or will get, for a create that commits later.
    fn reserve_node_id(&self) -> impl Future<Output = Result<NodeId, MetaError>> + Send;

    /// Attributes of a node in `view`.
    fn getattr(&self, view: View, ino: NodeId) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// The child `name` of directory `parent` (NotADirectory when `parent` is not one).
    fn lookup(
        &self,
        view: View,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// A symlink's target (InvalidArgument for other kinds).
    fn readlink(&self, view: View, ino: NodeId) -> impl Future<Output = Result<Vec<u8>, MetaError>> + Send;

    /// Up to `limit` entries of `dir` whose names sort after `after`, in byte order, with
    /// their attributes (keyset pagination: no entry that exists across calls is skipped or
    /// repeated).
    fn readdir_plus(
        &self,
        view: View,
        dir: NodeId,
        after: Option<&Name>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DirEntryPlus>, MetaError>> + Send;

    /// The frame sequences of a live folder, ordered by pattern.
    fn sequences(&self, dir: NodeId) -> impl Future<Output = Result<Vec<FrameSequence>, MetaError>> + Send;

    // Changes to the tree.

    /// Creates `parent/name`; returns the node's and the directory's attributes.
    fn create_in(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
    ) -> impl Future<Output = Result<(Attr, Attr), MetaError>> + Send;

    /// Creates regular file `parent/name` as the reserved node `ino`, with its first content
    /// when given, in one transaction.
    #[allow(clippy::too_many_arguments)]
    fn create_file(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
        ino: NodeId,
        content: Option<&InitialContent<'_>>,
    ) -> impl Future<Output = Result<(Attr, Attr), MetaError>> + Send;

    /// Adds the hard link `new_parent/new_name` to non-directory `ino`.
    fn link(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        new_parent: NodeId,
        new_name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// Removes the non-directory entry `parent/name`; returns the directory's attributes.
    fn unlink(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// Removes the empty directory `parent/name`; returns the directory's attributes.
    fn rmdir(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// Removes many non-directory entries in one transaction, each judged on its own (see
    /// [`QueuedUnlink`]); one outcome per item.
    fn unlink_many(
        &self,
        ws: WorkspaceId,
        items: &[QueuedUnlink],
    ) -> impl Future<Output = Result<Vec<Result<Attr, MetaError>>, MetaError>> + Send;

    /// Renames with POSIX `rename(2)` rules and the `renameat2` flags
    /// ([`crate::rules::rename`]).
    #[allow(clippy::too_many_arguments)]
    fn rename(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        new_parent: NodeId,
        new_name: &Name,
        mode: RenameMode,
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    /// Changes attributes; a size change trims the block map (metadata only).
    fn setattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        change: &SetAttr,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    // Content.

    /// Block-map entries of `ino` with index in `[first, first + count)` in `view`; missing
    /// indexes are holes.
    fn block_map(
        &self,
        view: View,
        ino: NodeId,
        first: u64,
        count: u64,
    ) -> impl Future<Output = Result<Vec<FileBlock>, MetaError>> + Send;

    /// Commits new content of file `ino` (block-map changes, size, mtime, a new content
    /// version) in one transaction. `base_version` is the version the writer started from.
    #[allow(clippy::too_many_arguments)]
    fn commit_content(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        base_version: u64,
        changes: &[BlockChange],
        new_size: u64,
        mtime: Timestamp,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send;

    /// Records a block about to be uploaded; `true` when an available copy exists already, so
    /// the upload may be skipped. Otherwise the caller uploads itself. There is no way to
    /// write a block's state: only a content commit changes it (see [`crate::meta::BlockState`]).
    fn register_block(
        &self,
        hash: &[u8; 32],
        size: u64,
        stored_size: u64,
    ) -> impl Future<Output = Result<bool, MetaError>> + Send;

    /// Renews the records of blocks a writer uploaded and has not committed yet, so that their
    /// GC grace period starts again. Returns the hashes that could not be renewed: no record
    /// any more, or claimed by a GC pass (their objects may be gone).
    fn renew_blocks(
        &self,
        hashes: &[[u8; 32]],
    ) -> impl Future<Output = Result<Vec<[u8; 32]>, MetaError>> + Send;

    // Extended attributes (per node, not epoch-versioned).

    /// The value of attribute `name` of `ino`, if set.
    fn get_xattr(
        &self,
        ino: NodeId,
        name: &[u8],
    ) -> impl Future<Output = Result<Option<Vec<u8>>, MetaError>> + Send;

    /// The attribute names of `ino`, in byte order.
    fn list_xattrs(&self, ino: NodeId) -> impl Future<Output = Result<Vec<Vec<u8>>, MetaError>> + Send;

    /// Sets attribute `name` of live node `ino` as `mode` says.
    #[allow(clippy::too_many_arguments)]
    fn set_xattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    /// Removes attribute `name` of `ino` (NotFound when not set).
    fn remove_xattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    // Last access (coarse; for expiry and tiering).

    /// Records that the nodes of `ws` were accessed at the given times; an access older than
    /// the one recorded changes nothing. Not epoch-versioned: no snapshot shows it.
    fn record_access(
        &self,
        ws: WorkspaceId,
        accesses: &[(NodeId, Timestamp)],
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    // File locks across mounts.

    /// Takes, changes or releases `lock`; the conflicting lock of another live owner instead.
    fn set_lock(
        &self,
        lock: &FileLock,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<FileLock>, MetaError>> + Send;

    /// The lock of another live owner that would refuse `lock` (F_GETLK).
    fn test_lock(&self, lock: &FileLock) -> impl Future<Output = Result<Option<FileLock>, MetaError>> + Send;

    /// Releases every lock `owner` of `mount` holds on `ino`.
    fn release_locks(
        &self,
        ino: NodeId,
        mount: &str,
        owner: u64,
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    /// Keeps `mount`'s locks for another `lease` (an expired lease loses its locks first).
    fn renew_mount_lease(
        &self,
        mount: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<(), MetaError>> + Send;

    /// Gives up `mount`'s lease and every lock it holds.
    fn drop_mount_lease(&self, mount: &str) -> impl Future<Output = Result<(), MetaError>> + Send;
}

/// The time the engine stamps on what it changes (mtime, ctime, creation times). Injected so
/// that the core reads no wall clock and tests can set the time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn at(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(at.0)))
    }

    /// Moves the clock (every clone of it) to `at`.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}
