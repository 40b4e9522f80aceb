//! An in-memory metadata store with the contract of [`PgMetaStore`](super::PgMetaStore), for
//! tests of the layers above (the file system, the data path) without a server, and for
//! failure injection around them.
//!
//! It keeps the same invariants and answers with the same error kinds, taking its decisions
//! from the same pure rules ([`crate::rules`]); the reference-model suite
//! (`drive/tests/fs_model.rs`) runs against both stores to hold them to it. What differs on
//! purpose: one mutex makes every call atomic (no serialization failures to retry), a
//! snapshot copies the workspace's tree (O(n), not O(1)), usage is recomputed by walking the
//! live tree instead of kept in counters (same figures, O(n)), and no change feed is recorded.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::MetaError;
use crate::meta::content::{BlockChange, BlockState, FileBlock, InitialContent};
use crate::meta::locks::{FileLock, LockKind};
use crate::meta::new_inode_attr;
use crate::meta::tree::{QueuedUnlink, parse_path};
use crate::meta::xattrs::{XattrMode, check_xattr, xattr_label};
use crate::model::{
    Actor, Attr, DirEntry, DirEntryPlus, Epoch, FrameSequence, Name, NewNode, NodeId, NodeKind, RenameMode,
    SetAttr, Snapshot, SnapshotId, Timestamp, View, Workspace, WorkspaceId, WorkspaceSpec, WorkspaceUsage,
    summarize, validate_workspace_name,
};
use crate::ports::{Clock, MetaStore, SystemClock};
use crate::rules::blocks::shrink;
use crate::rules::quota::{self, UsageChange};
use crate::rules::rename::{self, EntryFacts, RenameCheck, RenameStep};
use crate::rules::write_once;
use crate::rules::{check_workspace_spec, drop_link, touch_dir};
use crate::sync::lock;

/// The in-memory metadata store. Clones share one state.
#[derive(Clone, Default)]
pub struct MemMetaStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemMetaStore").finish_non_exhaustive()
    }
}

impl MemMetaStore {
    /// An empty store.
    pub fn new() -> MemMetaStore {
        MemMetaStore::default()
    }

    /// Stamps times from `clock` instead of the wall clock.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> MemMetaStore {
        lock(&self.state).clock = StoreClock(clock);
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, MetaError>) -> Result<T, MetaError> {
        f(&mut lock(&self.state))
    }

    /// Runs `f` on the state as one atomic step, as a ready future.
    fn run<T: Send>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, MetaError>,
    ) -> impl Future<Output = Result<T, MetaError>> + Send {
        std::future::ready(self.with(f))
    }
}

#[derive(Debug, Clone)]
struct Inode {
    attr: Attr,
    symlink_target: Option<Vec<u8>>,
}

/// One workspace's tree: the live one, or a snapshot's copy.
#[derive(Debug, Clone, Default)]
struct Tree {
    inodes: HashMap<NodeId, Inode>,
    /// (parent, name) -> child, ordered so a folder's entries are a range in name order.
    entries: BTreeMap<(NodeId, Name), NodeId>,
    /// Block maps: file -> block index -> (hash, valid length).
    content: HashMap<NodeId, BTreeMap<u64, ([u8; 32], u64)>>,
}

impl Tree {
    fn inode(&self, ino: NodeId) -> Result<&Inode, MetaError> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| MetaError::NotFound(format!("node {ino}")))
    }

    fn attr_mut(&mut self, ino: NodeId) -> Result<&mut Attr, MetaError> {
        self.inodes
            .get_mut(&ino)
            .map(|i| &mut i.attr)
            .ok_or_else(|| MetaError::NotFound(format!("node {ino}")))
    }

    /// A live directory still linked into the tree (NotFound / NotADirectory otherwise).
    fn dir(&self, ino: NodeId) -> Result<&Attr, MetaError> {
        let attr = &self.inode(ino)?.attr;
        if attr.kind != NodeKind::Directory {
            return Err(MetaError::NotADirectory(format!("node {ino}")));
        }
        if attr.nlink == 0 {
            return Err(MetaError::NotFound(format!("directory {ino} was removed")));
        }
        Ok(attr)
    }

    fn entry(&self, parent: NodeId, name: &Name) -> Option<EntryFacts> {
        let ino = *self.entries.get(&(parent, name.clone()))?;
        Some(EntryFacts {
            ino,
            kind: self.inodes.get(&ino)?.attr.kind,
        })
    }

    /// The entries of `dir` after `after`, in name order.
    fn children(&self, dir: NodeId, after: Option<&Name>) -> impl Iterator<Item = (&Name, NodeId)> {
        let start = match after {
            Some(name) => Bound::Excluded((dir, name.clone())),
            None => Bound::Included((dir, Name::from_stored(Vec::new()))),
        };
        self.entries
            .range((start, Bound::Unbounded))
            .take_while(move |((parent, _), _)| *parent == dir)
            .map(|((_, name), ino)| (name, *ino))
    }

    fn has_entries(&self, dir: NodeId) -> bool {
        self.children(dir, None).next().is_some()
    }

    /// Whether folder `moved` is `target` or above it.
    fn is_above(&self, moved: NodeId, target: NodeId) -> bool {
        let parents: HashMap<NodeId, NodeId> = self
            .entries
            .iter()
            .filter(|(_, ino)| {
                self.inodes
                    .get(ino)
                    .is_some_and(|i| i.attr.kind == NodeKind::Directory)
            })
            .map(|((parent, _), ino)| (*ino, *parent))
            .collect();
        let mut at = Some(target);
        while let Some(node) = at {
            if node == moved {
                return true;
            }
            at = parents.get(&node).copied();
        }
        false
    }

    /// What the nodes other than `root` charge: the usage counters of the PostgreSQL store,
    /// recomputed (this store sums the tree instead of keeping them).
    fn usage(&self, root: NodeId) -> UsageChange {
        self.inodes
            .iter()
            .filter(|(ino, _)| **ino != root)
            .fold(UsageChange::default(), |sum, (_, node)| {
                sum + quota::charge(&node.attr)
            })
    }

    /// Refuses `change` when it takes workspace `ws` (whose live tree this is) past its quota.
    fn check_quota(&self, ws: &Workspace, change: UsageChange) -> Result<(), MetaError> {
        if change.bytes <= 0 || ws.quota_bytes.is_none() {
            return Ok(());
        }
        let used = self.usage(ws.root).bytes.max(0) as u64;
        quota::check(ws.quota_bytes, used, change)
    }

    /// Cuts the block map for a size change (see `content::resize_blocks`).
    fn resize(&mut self, ino: NodeId, block_size: u64, old_size: u64, new_size: u64) {
        if new_size >= old_size {
            return;
        }
        let Some(map) = self.content.get_mut(&ino) else {
            return;
        };
        let cut = shrink(new_size, block_size);
        map.retain(|idx, _| *idx < cut.keep);
        if let Some((idx, tail)) = cut.tail
            && let Some((_, len)) = map.get_mut(&idx)
        {
            *len = (*len).min(tail);
        }
    }
}

/// The store's clock; the wall clock unless a test sets another.
#[derive(Debug, Clone)]
struct StoreClock(Arc<dyn Clock>);

impl Default for StoreClock {
    fn default() -> StoreClock {
        StoreClock(Arc::new(SystemClock))
    }
}

impl StoreClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

#[derive(Debug, Default)]
struct State {
    clock: StoreClock,
    last_id: u64,
    workspaces: HashMap<WorkspaceId, Workspace>,
    live: HashMap<WorkspaceId, Tree>,
    /// Snapshot copies by (workspace, epoch).
    frozen: HashMap<(WorkspaceId, Epoch), Tree>,
    node_ws: HashMap<NodeId, WorkspaceId>,
    snapshots: Vec<Snapshot>,
    blocks: HashMap<[u8; 32], BlockState>,
    xattrs: HashMap<NodeId, BTreeMap<Vec<u8>, Vec<u8>>>,
    locks: Vec<FileLock>,
    leases: HashMap<String, Instant>,
    /// Last recorded access per node (see `MetaStore::record_access`).
    accesses: HashMap<NodeId, Timestamp>,
}

fn overlaps(a: &FileLock, start: u64, end: u64) -> bool {
    a.start <= end && a.end >= start
}

/// The furthest offset a lock can name (`OFFSET_MAX`), as the PostgreSQL store keeps it.
const LAST: u64 = i64::MAX as u64;

impl State {
    fn next_id(&mut self) -> NodeId {
        self.last_id += 1;
        NodeId(self.last_id)
    }

    fn workspace(&self, ws: WorkspaceId) -> Result<&Workspace, MetaError> {
        self.workspaces
            .get(&ws)
            .ok_or_else(|| MetaError::NotFound(format!("workspace {ws}")))
    }

    /// The live tree of `ws` for a mutation of node `ino` (which must be live in `ws`).
    fn tree_of(&mut self, ws: WorkspaceId, ino: NodeId) -> Result<(Workspace, &mut Tree), MetaError> {
        let workspace = self.workspace(ws)?.clone();
        let tree = self.live.get_mut(&ws).expect("every workspace has a live tree");
        if !tree.inodes.contains_key(&ino) {
            return Err(MetaError::NotFound(format!("node {ino}")));
        }
        Ok((workspace, tree))
    }

    /// The tree `view` shows node `ino` in.
    fn view_of(&self, view: View, ino: NodeId) -> Option<&Tree> {
        let ws = self.node_ws.get(&ino)?;
        match view {
            View::Live => self.live.get(ws),
            View::At(epoch) => self.frozen.get(&(*ws, epoch)).or_else(|| {
                // The current epoch has no copy yet: it is the live tree.
                (self.workspaces.get(ws)?.epoch == epoch).then(|| self.live.get(ws))?
            }),
        }
    }

    fn read(&self, view: View, ino: NodeId) -> Result<(&Tree, &Inode), MetaError> {
        let tree = self
            .view_of(view, ino)
            .ok_or_else(|| MetaError::NotFound(format!("node {ino}")))?;
        Ok((tree, tree.inode(ino)?))
    }

    /// Checks every block of a commit is registered, and marks them available.
    fn claim_blocks<'a>(&mut self, hashes: impl Iterator<Item = &'a [u8; 32]>) -> Result<(), MetaError> {
        let hashes: Vec<&[u8; 32]> = hashes.collect();
        let gone: Vec<[u8; 32]> = hashes
            .iter()
            .filter(|h| !self.blocks.contains_key(**h))
            .map(|h| **h)
            .collect();
        if !gone.is_empty() {
            return Err(MetaError::BlocksGone(gone));
        }
        for h in hashes {
            self.blocks.insert(*h, BlockState::Available);
        }
        Ok(())
    }

    fn create_node(
        &mut self,
        ws: WorkspaceId,
        (parent, name): (NodeId, &Name),
        node: &NewNode,
        reserved: Option<NodeId>,
        content: Option<&InitialContent<'_>>,
    ) -> Result<(Attr, Attr), MetaError> {
        crate::rules::check_new_node(node)?;
        let now = self.clock.now();
        self.tree_of(ws, parent)?.1.dir(parent)?;
        if let Some(content) = content {
            self.claim_blocks(content.blocks.iter().map(|(_, h, _)| h))?;
        }
        let ino = match reserved {
            Some(ino) => ino,
            None => self.next_id(),
        };
        let workspace = self.workspace(ws)?.clone();
        let tree = self.live.get_mut(&ws).expect("checked above");
        if tree.entries.contains_key(&(parent, name.clone())) {
            return Err(MetaError::Exists(name.to_string_lossy()));
        }
        let mut attr = new_inode_attr(ino, node, now);
        if let Some(content) = content {
            attr.size = content.size;
            attr.mtime = content.mtime;
            attr.content_version = 1;
            tree.check_quota(&workspace, quota::charge(&attr))?;
            let map = content.blocks.iter().map(|(idx, h, len)| (*idx, (*h, *len)));
            tree.content.insert(ino, map.collect());
        }
        tree.inodes.insert(
            ino,
            Inode {
                attr: attr.clone(),
                symlink_target: node
                    .symlink_target
                    .clone()
                    .filter(|_| node.kind == NodeKind::Symlink),
            },
        );
        tree.entries.insert((parent, name.clone()), ino);
        let dir = tree.attr_mut(parent)?;
        touch_dir(dir, now, i64::from(node.kind == NodeKind::Directory));
        let dir = dir.clone();
        self.node_ws.insert(ino, ws);
        Ok((attr, dir))
    }

    fn remove_entry(
        &mut self,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        rmdir: bool,
    ) -> Result<Attr, MetaError> {
        let now = self.clock.now();
        let (workspace, tree) = self.tree_of(ws, parent)?;
        tree.dir(parent)?;
        let entry = tree
            .entry(parent, name)
            .ok_or_else(|| MetaError::NotFound(name.to_string_lossy()))?;
        let is_dir = entry.kind == NodeKind::Directory;
        match (rmdir, is_dir) {
            (false, true) => return Err(MetaError::IsADirectory(name.to_string_lossy())),
            (true, false) => return Err(MetaError::NotADirectory(name.to_string_lossy())),
            (true, true) if tree.has_entries(entry.ino) => {
                return Err(MetaError::NotEmpty(name.to_string_lossy()));
            }
            _ => {}
        }
        write_once::guard(workspace.kind, &tree.inode(entry.ino)?.attr, "delete")?;
        drop_link(tree.attr_mut(entry.ino)?, now);
        tree.entries.remove(&(parent, name.clone()));
        let dir = tree.attr_mut(parent)?;
        touch_dir(dir, now, if is_dir { -1 } else { 0 });
        Ok(dir.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn rename(
        &mut self,
        ws: WorkspaceId,
        (parent, name): (NodeId, &Name),
        (new_parent, new_name): (NodeId, &Name),
        mode: RenameMode,
    ) -> Result<(), MetaError> {
        let now = self.clock.now();
        let (workspace, tree) = self.tree_of(ws, parent)?;
        tree.dir(parent)?;
        let src = tree
            .entry(parent, name)
            .ok_or_else(|| MetaError::NotFound(name.to_string_lossy()))?;
        if parent != new_parent {
            if !tree.inodes.contains_key(&new_parent) {
                return Err(MetaError::NotFound(format!("node {new_parent}")));
            }
            tree.dir(new_parent)?;
        }
        let dst = tree.entry(new_parent, new_name);
        let plan = rename::plan(mode, (parent, name), (new_parent, new_name), src, dst);
        for check in plan.checks {
            let failed = match check {
                RenameCheck::NotAbove { moved, target_parent } => tree.is_above(moved, target_parent),
                RenameCheck::Empty(dir) => tree.has_entries(dir),
            };
            if failed {
                return Err(rename::check_failure(check, new_name));
            }
        }
        let step = plan.outcome?;
        let (src_delta, dst_delta) = rename::folder_link_deltas(step, src);
        let old_key = (parent, name.clone());
        let new_key = (new_parent, new_name.clone());
        let moved = match step {
            RenameStep::Nothing => return Ok(()),
            RenameStep::Exchange { target } => {
                write_once::exchange(
                    workspace.kind,
                    &tree.inode(src.ino)?.attr,
                    &tree.inode(target.ino)?.attr,
                )?;
                tree.entries.insert(old_key, target.ino);
                tree.entries.insert(new_key, src.ino);
                vec![src.ino, target.ino]
            }
            RenameStep::Move { replaces } => {
                if let Some(target) = replaces {
                    write_once::guard(workspace.kind, &tree.inode(target.ino)?.attr, "replace")?;
                    drop_link(tree.attr_mut(target.ino)?, now);
                }
                tree.entries.remove(&old_key);
                tree.entries.insert(new_key, src.ino);
                vec![src.ino]
            }
        };
        for ino in moved {
            tree.attr_mut(ino)?.ctime = now;
        }
        if parent == new_parent {
            touch_dir(tree.attr_mut(parent)?, now, src_delta + dst_delta);
        } else {
            touch_dir(tree.attr_mut(parent)?, now, src_delta);
            touch_dir(tree.attr_mut(new_parent)?, now, dst_delta);
        }
        Ok(())
    }

    fn conflicting(&self, req: &FileLock) -> Option<FileLock> {
        let now = Instant::now();
        let (start, end) = (req.start.min(LAST), req.end.min(LAST));
        self.locks
            .iter()
            .filter(|l| l.ino == req.ino && !(l.mount == req.mount && l.owner == req.owner))
            .filter(|l| self.leases.get(&l.mount).is_some_and(|t| *t > now))
            .filter(|l| overlaps(l, start, end))
            .filter(|l| l.kind == LockKind::Exclusive || req.kind == LockKind::Exclusive)
            .min_by_key(|l| l.start)
            .cloned()
    }

    fn renew_lease(&mut self, mount: &str, lease: Duration) {
        let now = Instant::now();
        if self.leases.get(mount).is_some_and(|t| *t <= now) {
            self.locks.retain(|l| l.mount != mount);
        }
        self.leases
            .insert(mount.to_owned(), now + lease.max(Duration::from_millis(1)));
    }
}

impl MetaStore for MemMetaStore {
    fn create_workspace(
        &self,
        _actor: &Actor,
        spec: &WorkspaceSpec,
    ) -> impl Future<Output = Result<Workspace, MetaError>> + Send {
        self.run(move |s| {
            check_workspace_spec(spec)?;
            if s.workspaces.values().any(|w| w.name == spec.name) {
                return Err(MetaError::Exists(format!("workspace {}", spec.name)));
            }
            let now = s.clock.now();
            let root = s.next_id();
            let ws = Workspace {
                id: WorkspaceId(uuid::Uuid::new_v4()),
                name: spec.name.clone(),
                kind: spec.kind,
                block_size: spec.block_size,
                root,
                epoch: Epoch(1),
                encrypted: spec.wrapped_key.is_some(),
                wrapped_key: spec.wrapped_key.clone(),
                quota_bytes: spec.quota_bytes,
                owners: spec.owners.clone(),
                object_store: spec.object_store.clone(),
                created_at: now,
            };
            let mut tree = Tree::default();
            let attr = new_inode_attr(root, &NewNode::new(NodeKind::Directory, 0o755), now);
            tree.inodes.insert(
                root,
                Inode {
                    attr,
                    symlink_target: None,
                },
            );
            s.live.insert(ws.id, tree);
            s.node_ws.insert(root, ws.id);
            s.workspaces.insert(ws.id, ws.clone());
            Ok(ws)
        })
    }

    fn get_workspace(&self, name: &str) -> impl Future<Output = Result<Workspace, MetaError>> + Send {
        self.run(move |s| {
            s.workspaces
                .values()
                .find(|w| w.name == name)
                .cloned()
                .ok_or_else(|| MetaError::NotFound(format!("workspace {name}")))
        })
    }

    fn create_snapshot(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        name: &str,
        path: &str,
    ) -> impl Future<Output = Result<Snapshot, MetaError>> + Send {
        self.run(move |s| {
            validate_workspace_name(name)?;
            let path = crate::model::WorkspacePath::parse(path)?;
            let canonical = path.to_string();
            let names = path.into_names();
            let workspace = s.workspace(ws)?.clone();
            if s.snapshots.iter().any(|x| x.workspace == ws && x.name == name) {
                return Err(MetaError::Exists(format!("snapshot {name}")));
            }
            let tree = &s.live[&ws];
            let mut root = workspace.root;
            for n in &names {
                let entry = tree
                    .entry(root, n)
                    .ok_or_else(|| MetaError::NotFound(format!("path {canonical}")))?;
                root = entry.ino;
                if entry.kind != NodeKind::Directory {
                    return Err(MetaError::NotADirectory(canonical.clone()));
                }
            }
            let snapshot = Snapshot {
                id: SnapshotId(uuid::Uuid::new_v4()),
                workspace: ws,
                name: name.to_owned(),
                epoch: workspace.epoch,
                root,
                path: canonical,
                created_at: s.clock.now(),
            };
            let copy = tree.clone();
            s.frozen.insert((ws, workspace.epoch), copy);
            s.workspaces.get_mut(&ws).expect("read above").epoch.0 += 1;
            s.snapshots.push(snapshot.clone());
            Ok(snapshot)
        })
    }

    fn get_snapshot(
        &self,
        ws: WorkspaceId,
        name: &str,
    ) -> impl Future<Output = Result<Snapshot, MetaError>> + Send {
        self.run(move |s| {
            s.snapshots
                .iter()
                .find(|x| x.workspace == ws && x.name == name)
                .cloned()
                .ok_or_else(|| MetaError::NotFound(format!("snapshot {name}")))
        })
    }

    fn workspace_usage(
        &self,
        ws: WorkspaceId,
    ) -> impl Future<Output = Result<WorkspaceUsage, MetaError>> + Send {
        self.run(move |s| {
            let workspace = s.workspace(ws)?;
            let used = s.live[&ws].usage(workspace.root);
            Ok(WorkspaceUsage {
                bytes: used.bytes.max(0) as u64,
                nodes: used.nodes.max(0) as u64,
                quota_bytes: workspace.quota_bytes,
            })
        })
    }

    fn resolve(&self, ws: WorkspaceId, path: &str) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| {
            let names = parse_path(path)?;
            let root = s.workspace(ws)?.root;
            let tree = &s.live[&ws];
            let mut attr = tree.inode(root)?.attr.clone();
            for name in &names {
                attr = lookup_in(tree, attr.ino, name)?;
            }
            Ok(attr)
        })
    }

    fn reserve_node_id(&self) -> impl Future<Output = Result<NodeId, MetaError>> + Send {
        self.run(move |s| Ok(s.next_id()))
    }

    fn getattr(&self, view: View, ino: NodeId) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| Ok(s.read(view, ino)?.1.attr.clone()))
    }

    fn lookup(
        &self,
        view: View,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| lookup_in(s.read(view, parent)?.0, parent, name))
    }

    fn readlink(&self, view: View, ino: NodeId) -> impl Future<Output = Result<Vec<u8>, MetaError>> + Send {
        self.run(move |s| {
            let node = s.read(view, ino)?.1;
            match (node.attr.kind, &node.symlink_target) {
                (NodeKind::Symlink, Some(target)) => Ok(target.clone()),
                _ => Err(MetaError::InvalidArgument(format!("node {ino} is not a symlink"))),
            }
        })
    }

    fn readdir_plus(
        &self,
        view: View,
        dir: NodeId,
        after: Option<&Name>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DirEntryPlus>, MetaError>> + Send {
        self.run(move |s| {
            let (tree, node) = s.read(view, dir)?;
            if node.attr.kind != NodeKind::Directory {
                return Err(MetaError::NotADirectory(format!("node {dir}")));
            }
            tree.children(dir, after)
                .take(limit.min(100_000))
                .map(|(name, ino)| {
                    let attr = tree.inode(ino)?.attr.clone();
                    Ok(DirEntryPlus {
                        entry: DirEntry {
                            name: name.clone(),
                            ino,
                            kind: attr.kind,
                        },
                        attr,
                    })
                })
                .collect()
        })
    }

    fn sequences(&self, dir: NodeId) -> impl Future<Output = Result<Vec<FrameSequence>, MetaError>> + Send {
        self.run(move |s| {
            let Some(tree) = s.view_of(View::Live, dir) else {
                return Ok(Vec::new());
            };
            let files = tree
                .children(dir, None)
                .filter(|(_, ino)| {
                    tree.inodes
                        .get(ino)
                        .is_some_and(|i| i.attr.kind == NodeKind::File)
                })
                .map(|(name, _)| name.as_bytes());
            Ok(summarize(files))
        })
    }

    fn create_in(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
    ) -> impl Future<Output = Result<(Attr, Attr), MetaError>> + Send {
        self.run(move |s| s.create_node(ws, (parent, name), node, None, None))
    }

    fn create_file(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
        ino: NodeId,
        content: Option<&InitialContent<'_>>,
    ) -> impl Future<Output = Result<(Attr, Attr), MetaError>> + Send {
        self.run(move |s| {
            if node.kind != NodeKind::File {
                return Err(MetaError::InvalidArgument(
                    "create_file creates regular files".into(),
                ));
            }
            s.create_node(ws, (parent, name), node, Some(ino), content)
        })
    }

    fn link(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        new_parent: NodeId,
        new_name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| {
            let now = s.clock.now();
            let (_, tree) = s.tree_of(ws, ino)?;
            let node = tree.inode(ino)?.attr.clone();
            if node.kind == NodeKind::Directory {
                return Err(MetaError::PermissionDenied(
                    "hard links to directories are not allowed".into(),
                ));
            }
            if node.nlink == 0 {
                return Err(MetaError::NotFound(format!("node {ino} was removed")));
            }
            if !tree.inodes.contains_key(&new_parent) {
                return Err(MetaError::NotFound(format!("node {new_parent}")));
            }
            tree.dir(new_parent)?;
            if tree.entries.contains_key(&(new_parent, new_name.clone())) {
                return Err(MetaError::Exists(new_name.to_string_lossy()));
            }
            tree.entries.insert((new_parent, new_name.clone()), ino);
            let attr = tree.attr_mut(ino)?;
            attr.nlink += 1;
            attr.ctime = now;
            let attr = attr.clone();
            touch_dir(tree.attr_mut(new_parent)?, now, 0);
            Ok(attr)
        })
    }

    fn unlink(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| s.remove_entry(ws, parent, name, false))
    }

    fn rmdir(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| s.remove_entry(ws, parent, name, true))
    }

    fn unlink_many(
        &self,
        ws: WorkspaceId,
        items: &[QueuedUnlink],
    ) -> impl Future<Output = Result<Vec<Result<Attr, MetaError>>, MetaError>> + Send {
        self.run(move |s| {
            let now = s.clock.now();
            let kind = s.workspace(ws)?.kind;
            let tree = s.live.get_mut(&ws).expect("every workspace has a live tree");
            let mut outcomes = Vec::with_capacity(items.len());
            let mut touched = Vec::new();
            for item in items {
                let what = || item.name.to_string_lossy();
                let outcome = match tree.entry(item.parent, &item.name) {
                    None => Err(MetaError::NotFound(what())),
                    Some(e) if e.ino != item.ino => {
                        Err(MetaError::Conflict(format!("{} names another node now", what())))
                    }
                    Some(_) if !tree.inodes.contains_key(&item.parent) => Err(MetaError::NotFound(what())),
                    Some(e) if e.kind == NodeKind::Directory => Err(MetaError::IsADirectory(what())),
                    Some(e) => write_once::guard(kind, &tree.inode(e.ino)?.attr, "delete").map(|()| {
                        if let Ok(attr) = tree.attr_mut(e.ino) {
                            drop_link(attr, now);
                        }
                        tree.entries.remove(&(item.parent, item.name.clone()));
                        touched.push(item.parent);
                    }),
                };
                outcomes.push(outcome);
            }
            touched.sort_unstable();
            touched.dedup();
            for dir in touched {
                touch_dir(tree.attr_mut(dir)?, now, 0);
            }
            Ok(items
                .iter()
                .zip(outcomes)
                .map(|(item, outcome)| outcome.and_then(|()| Ok(tree.inode(item.parent)?.attr.clone())))
                .collect())
        })
    }

    fn rename(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        new_parent: NodeId,
        new_name: &Name,
        mode: RenameMode,
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| s.rename(ws, (parent, name), (new_parent, new_name), mode))
    }

    fn setattr(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        change: &SetAttr,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| {
            let now = s.clock.now();
            let (workspace, tree) = s.tree_of(ws, ino)?;
            let mut attr = tree.inode(ino)?.attr.clone();
            if let Some(size) = change.size {
                match attr.kind {
                    NodeKind::Directory => return Err(MetaError::IsADirectory(format!("node {ino}"))),
                    NodeKind::File => {}
                    _ => {
                        return Err(MetaError::InvalidArgument(format!(
                            "node {ino} has no content to resize"
                        )));
                    }
                }
                write_once::resize(workspace.kind, &attr, size)?;
                if size != attr.size {
                    let resized = Attr { size, ..attr.clone() };
                    tree.check_quota(&workspace, quota::change(&attr, &resized))?;
                    tree.resize(ino, u64::from(workspace.block_size), attr.size, size);
                    attr.size = size;
                    attr.mtime = now;
                    attr.content_version += 1;
                }
            }
            if let Some(mode) = change.mode {
                attr.mode = mode & 0o7777;
            }
            attr.uid = change.uid.unwrap_or(attr.uid);
            attr.gid = change.gid.unwrap_or(attr.gid);
            attr.atime = change.atime.unwrap_or(attr.atime);
            attr.mtime = change.mtime.unwrap_or(attr.mtime);
            attr.ctime = now;
            *tree.attr_mut(ino)? = attr.clone();
            Ok(attr)
        })
    }

    fn block_map(
        &self,
        view: View,
        ino: NodeId,
        first: u64,
        count: u64,
    ) -> impl Future<Output = Result<Vec<FileBlock>, MetaError>> + Send {
        self.run(move |s| {
            let map = s.view_of(view, ino).and_then(|t| t.content.get(&ino));
            Ok(map
                .into_iter()
                .flat_map(|m| m.range(first..first.saturating_add(count)))
                .map(|(idx, (hash, len))| FileBlock {
                    idx: *idx,
                    hash: *hash,
                    len: *len,
                })
                .collect())
        })
    }

    fn commit_content(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        base_version: u64,
        changes: &[BlockChange],
        new_size: u64,
        mtime: Timestamp,
    ) -> impl Future<Output = Result<Attr, MetaError>> + Send {
        self.run(move |s| {
            let now = s.clock.now();
            s.tree_of(ws, ino)?;
            s.claim_blocks(changes.iter().filter_map(|c| c.block.as_ref().map(|(h, _)| h)))?;
            let (workspace, tree) = s.tree_of(ws, ino)?;
            let mut attr = tree.inode(ino)?.attr.clone();
            if attr.kind != NodeKind::File {
                return Err(MetaError::InvalidArgument(format!(
                    "node {ino} is not a regular file"
                )));
            }
            write_once::commit(workspace.kind, &attr, base_version)?;
            let resized = Attr {
                size: new_size,
                ..attr.clone()
            };
            tree.check_quota(&workspace, quota::change(&attr, &resized))?;
            tree.resize(ino, u64::from(workspace.block_size), attr.size, new_size);
            let map = tree.content.entry(ino).or_default();
            for change in changes {
                match change.block {
                    Some(block) => map.insert(change.idx, block),
                    None => map.remove(&change.idx),
                };
            }
            attr.size = new_size;
            attr.mtime = mtime;
            attr.ctime = now;
            attr.content_version += 1;
            *tree.attr_mut(ino)? = attr.clone();
            Ok(attr)
        })
    }

    fn register_block(
        &self,
        hash: &[u8; 32],
        _size: u64,
        _stored_size: u64,
    ) -> impl Future<Output = Result<bool, MetaError>> + Send {
        self.run(move |s| {
            if s.blocks.get(hash) == Some(&BlockState::Available) {
                return Ok(true);
            }
            s.blocks.insert(*hash, BlockState::Created);
            Ok(false)
        })
    }

    fn renew_blocks(
        &self,
        hashes: &[[u8; 32]],
    ) -> impl Future<Output = Result<Vec<[u8; 32]>, MetaError>> + Send {
        // This store has no GC: a record is renewable while it exists.
        self.run(move |s| {
            Ok(hashes
                .iter()
                .filter(|h| !s.blocks.contains_key(*h))
                .copied()
                .collect())
        })
    }

    fn get_xattr(
        &self,
        ino: NodeId,
        name: &[u8],
    ) -> impl Future<Output = Result<Option<Vec<u8>>, MetaError>> + Send {
        self.run(move |s| Ok(s.xattrs.get(&ino).and_then(|x| x.get(name)).cloned()))
    }

    fn list_xattrs(&self, ino: NodeId) -> impl Future<Output = Result<Vec<Vec<u8>>, MetaError>> + Send {
        self.run(move |s| {
            Ok(s.xattrs
                .get(&ino)
                .map(|x| x.keys().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn set_xattr(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            check_xattr(name, value)?;
            s.tree_of(ws, ino)?;
            let attrs = s.xattrs.entry(ino).or_default();
            match (mode, attrs.contains_key(name)) {
                (XattrMode::Create, true) => return Err(MetaError::Exists(xattr_label(name))),
                (XattrMode::Replace, false) => return Err(MetaError::NotFound(xattr_label(name))),
                _ => {}
            }
            attrs.insert(name.to_vec(), value.to_vec());
            Ok(())
        })
    }

    fn remove_xattr(
        &self,
        _actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            s.tree_of(ws, ino)?;
            match s.xattrs.get_mut(&ino).and_then(|x| x.remove(name)) {
                Some(_) => Ok(()),
                None => Err(MetaError::NotFound(xattr_label(name))),
            }
        })
    }

    fn set_lock(
        &self,
        req: &FileLock,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<FileLock>, MetaError>> + Send {
        self.run(move |s| {
            if req.start > req.end {
                return Err(MetaError::InvalidArgument(format!(
                    "lock range {}..={} is empty",
                    req.start, req.end
                )));
            }
            s.renew_lease(&req.mount, lease);
            if req.kind != LockKind::Unlock
                && let Some(other) = s.conflicting(req)
            {
                return Ok(Some(other));
            }
            let (start, end) = (req.start.min(LAST), req.end.min(LAST));
            let mine = |l: &FileLock| l.ino == req.ino && l.mount == req.mount && l.owner == req.owner;
            let (split, kept): (Vec<FileLock>, Vec<FileLock>) = std::mem::take(&mut s.locks)
                .into_iter()
                .partition(|l| mine(l) && overlaps(l, start, end));
            s.locks = kept;
            for old in split {
                if old.start < start {
                    s.locks.push(FileLock {
                        end: start - 1,
                        ..old.clone()
                    });
                }
                if old.end > end {
                    s.locks.push(FileLock {
                        start: end + 1,
                        ..old
                    });
                }
            }
            if req.kind != LockKind::Unlock {
                s.locks.push(FileLock {
                    start,
                    end,
                    ..req.clone()
                });
            }
            Ok(None)
        })
    }

    fn test_lock(&self, req: &FileLock) -> impl Future<Output = Result<Option<FileLock>, MetaError>> + Send {
        self.run(move |s| {
            Ok(if req.kind == LockKind::Unlock {
                None
            } else {
                s.conflicting(req)
            })
        })
    }

    fn release_locks(
        &self,
        ino: NodeId,
        mount: &str,
        owner: u64,
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            s.locks
                .retain(|l| !(l.ino == ino && l.mount == mount && l.owner == owner));
            Ok(())
        })
    }

    fn renew_mount_lease(
        &self,
        mount: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            s.renew_lease(mount, lease);
            Ok(())
        })
    }

    fn record_access(
        &self,
        _ws: WorkspaceId,
        accesses: &[(NodeId, Timestamp)],
    ) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            for (node, at) in accesses {
                let recorded = s.accesses.entry(*node).or_insert(*at);
                *recorded = (*recorded).max(*at);
            }
            Ok(())
        })
    }

    fn drop_mount_lease(&self, mount: &str) -> impl Future<Output = Result<(), MetaError>> + Send {
        self.run(move |s| {
            s.locks.retain(|l| l.mount != mount);
            s.leases.remove(mount);
            Ok(())
        })
    }
}

/// Looks `name` up in `parent` of `tree` (NotADirectory when `parent` is not a folder).
fn lookup_in(tree: &Tree, parent: NodeId, name: &Name) -> Result<Attr, MetaError> {
    if let Some(ino) = tree.entries.get(&(parent, name.clone())) {
        return Ok(tree.inode(*ino)?.attr.clone());
    }
    if tree.inode(parent)?.attr.kind != NodeKind::Directory {
        return Err(MetaError::NotADirectory(format!("node {parent}")));
    }
    Err(MetaError::NotFound(name.to_string_lossy()))
}
