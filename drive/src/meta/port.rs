//! [`PgMetaStore`] as the engine's metadata port: each method of [`MetaStore`] is the store's
//! own method of the same name (documented there).

use std::future::Future;
use std::time::Duration;

use crate::error::MetaError;
use crate::meta::xattrs::XattrMode;
use crate::meta::{BlockChange, FileBlock, FileLock, InitialContent, PgMetaStore, QueuedUnlink};
use crate::model::{
    Actor, Attr, DirEntryPlus, FrameSequence, Name, NewNode, NodeId, RenameMode, SetAttr, Snapshot,
    Timestamp, View, Workspace, WorkspaceId, WorkspaceSpec, WorkspaceUsage,
};
use crate::ports::MetaStore;

/// Implements each listed port method by calling the inherent method of the same name.
macro_rules! inherent {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = Result<$ret, MetaError>> + Send {
                PgMetaStore::$name(self $(, $arg)*)
            }
        )*
    };
}

impl MetaStore for PgMetaStore {
    inherent! {
        fn create_workspace(&self, actor: &Actor, spec: &WorkspaceSpec) -> Workspace;
        fn get_workspace(&self, name: &str) -> Workspace;
        fn create_snapshot(&self, actor: &Actor, ws: WorkspaceId, name: &str, path: &str) -> Snapshot;
        fn get_snapshot(&self, ws: WorkspaceId, name: &str) -> Snapshot;
        fn workspace_usage(&self, ws: WorkspaceId) -> WorkspaceUsage;
        fn resolve(&self, ws: WorkspaceId, path: &str) -> Attr;
        fn reserve_node_id(&self) -> NodeId;
        fn getattr(&self, view: View, ino: NodeId) -> Attr;
        fn lookup(&self, view: View, parent: NodeId, name: &Name) -> Attr;
        fn readlink(&self, view: View, ino: NodeId) -> Vec<u8>;
        fn readdir_plus(&self, view: View, dir: NodeId, after: Option<&Name>, limit: usize) -> Vec<DirEntryPlus>;
        fn sequences(&self, dir: NodeId) -> Vec<FrameSequence>;
        fn create_in(&self, actor: &Actor, ws: WorkspaceId, parent: NodeId, name: &Name, node: &NewNode)
            -> (Attr, Attr);
        fn create_file(
            &self,
            actor: &Actor,
            ws: WorkspaceId,
            parent: NodeId,
            name: &Name,
            node: &NewNode,
            ino: NodeId,
            content: Option<&InitialContent<'_>>,
        ) -> (Attr, Attr);
        fn link(&self, actor: &Actor, ws: WorkspaceId, ino: NodeId, new_parent: NodeId, new_name: &Name) -> Attr;
        fn unlink(&self, actor: &Actor, ws: WorkspaceId, parent: NodeId, name: &Name) -> Attr;
        fn rmdir(&self, actor: &Actor, ws: WorkspaceId, parent: NodeId, name: &Name) -> Attr;
        fn unlink_many(&self, ws: WorkspaceId, items: &[QueuedUnlink]) -> Vec<Result<Attr, MetaError>>;
        fn rename(
            &self,
            actor: &Actor,
            ws: WorkspaceId,
            parent: NodeId,
            name: &Name,
            new_parent: NodeId,
            new_name: &Name,
            mode: RenameMode,
        ) -> ();
        fn setattr(&self, actor: &Actor, ws: WorkspaceId, ino: NodeId, change: &SetAttr) -> Attr;
        fn block_map(&self, view: View, ino: NodeId, first: u64, count: u64) -> Vec<FileBlock>;
        fn commit_content(
            &self,
            actor: &Actor,
            ws: WorkspaceId,
            ino: NodeId,
            base_version: u64,
            changes: &[BlockChange],
            new_size: u64,
            mtime: Timestamp,
        ) -> Attr;
        fn register_block(&self, hash: &[u8; 32], size: u64, stored_size: u64) -> bool;
        fn renew_blocks(&self, hashes: &[[u8; 32]]) -> Vec<[u8; 32]>;
        fn get_xattr(&self, ino: NodeId, name: &[u8]) -> Option<Vec<u8>>;
        fn list_xattrs(&self, ino: NodeId) -> Vec<Vec<u8>>;
        fn set_xattr(
            &self,
            actor: &Actor,
            ws: WorkspaceId,
            ino: NodeId,
            name: &[u8],
            value: &[u8],
            mode: XattrMode,
        ) -> ();
        fn remove_xattr(&self, actor: &Actor, ws: WorkspaceId, ino: NodeId, name: &[u8]) -> ();
        fn set_lock(&self, lock: &FileLock, lease: Duration) -> Option<FileLock>;
        fn test_lock(&self, lock: &FileLock) -> Option<FileLock>;
        fn release_locks(&self, ino: NodeId, mount: &str, owner: u64) -> ();
        fn renew_mount_lease(&self, mount: &str, lease: Duration) -> ();
        fn record_access(&self, ws: WorkspaceId, accesses: &[(NodeId, Timestamp)]) -> ();
        fn drop_mount_lease(&self, mount: &str) -> ();
    }
}
