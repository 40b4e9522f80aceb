//! Namespace operations: lookup, attributes, node creation, links, removal, rename, directory
//! listing, statfs and access checks. Each maps to one metadata-store call (one transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ErrorKind;
use crate::fs::Pending;
use crate::fs::blocks::BlockIo;
use crate::fs::cache::Cached;
use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::{Caller, DriveFs, ROOT_INO, StatFs, lock};
use crate::meta::QueuedUnlink;
use crate::model::{
    Attr, DirEntryPlus, Name, NewNode, NodeId, NodeKind, RenameMode, SetAttr, View, WorkspaceKind,
    WorkspaceUsage,
};
use crate::ports::MetaStore;
use crate::rules::write_once;

/// Entries fetched from the store per directory page.
const DIR_PAGE: usize = 1000;
/// Entries an open directory keeps: the page the kernel reads now and the one before it (a
/// request repeated at the same offset, a short seek back). A 5M-entry frame folder costs a
/// handle this much, not the whole listing.
const DIR_WINDOW: usize = 2 * DIR_PAGE;

/// One item of a directory listing; `offset` is the cookie of the item after it.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub offset: u64,
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// An open directory: a window of the entries listed so far. Pages are fetched by name
/// (keyset), so an entry that exists for the whole listing appears exactly once, whatever is
/// added meanwhile. An offset before the window (rewinddir, a seekdir back) lists again from
/// the start.
#[derive(Default)]
pub(crate) struct DirHandle {
    /// Entries `base..base + entries.len()` of the listing, at most [`DIR_WINDOW`].
    entries: std::collections::VecDeque<DirEntryPlus>,
    base: usize,
    /// The last name read from the store: the keyset cursor of the next page.
    last: Option<Name>,
    done: bool,
}

pub(crate) fn parse_name(name: &[u8]) -> Result<Name, FsError> {
    Name::parse(name).map_err(|e| FsError::Meta(e.into()))
}

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        match self.lookup_cached(parent, name) {
            Some(answer) => answer,
            None => self.lookup_in_store(parent, name).await,
        }
    }

    /// `lookup` answered by the metadata cache alone; `None` when the store must be asked.
    /// Needs no runtime, so the FUSE adapter can answer a hit on its own thread.
    pub fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Result<Attr, FsError>> {
        if let Err(e) = self.readable() {
            return Some(Err(e));
        }
        let name = parse_name(name).ok()?;
        match self.cache.entry(self.to_node(parent), &name) {
            Cached::Found(attr) => Some(Ok(self.outer(attr))),
            Cached::Absent => Some(Err(FsError::new(FsErrorKind::NotFound, name.to_string_lossy()))),
            Cached::Unknown => None,
        }
    }

    /// `lookup` from the store (after [`DriveFs::lookup_cached`] said `None`), filling the cache.
    pub async fn lookup_in_store(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.readable()?;
        let name = parse_name(name)?;
        let parent = self.to_node(parent);
        if let Some(attr) = self.deferred_entry(parent, &name) {
            return Ok(self.outer(attr));
        }
        let meta = self.settled(Pending::Removals).await?;
        let ticket = self.cache.ticket();
        match meta.lookup(self.cfg.view, parent, &name).await {
            Ok(attr) => {
                self.cache.fill_entry(ticket, parent, &name, Some(&attr));
                Ok(self.outer(attr))
            }
            Err(e) => {
                if e.kind() == ErrorKind::NotFound {
                    self.cache.fill_entry(ticket, parent, &name, None);
                }
                Err(e.into())
            }
        }
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let attr = self.stored_attr(self.to_node(ino)).await?;
        Ok(self.outer(attr))
    }

    /// `getattr` answered by the metadata cache alone; `None` when the store must be asked.
    pub fn getattr_cached(&self, ino: u64) -> Option<Attr> {
        self.cache.attr(self.to_node(ino)).map(|a| self.outer(a))
    }

    /// `getattr` from the store (after [`DriveFs::getattr_cached`] said `None`).
    pub async fn getattr_in_store(&self, ino: u64) -> Result<Attr, FsError> {
        let attr = self.fresh_attr(self.to_node(ino)).await?;
        Ok(self.outer(attr))
    }

    /// The store's attributes of `node`, from the cache when it knows them.
    pub(crate) async fn stored_attr(&self, node: NodeId) -> Result<Attr, FsError> {
        if let Some(attr) = self.cache.attr(node) {
            return Ok(attr);
        }
        self.fresh_attr(node).await
    }

    /// The store's attributes of `node`, read from the store (close-to-open: `open` must see
    /// the latest committed version), refreshing the cache.
    pub(crate) async fn fresh_attr(&self, node: NodeId) -> Result<Attr, FsError> {
        if let Some(attr) = self.deferred_attr(node) {
            return Ok(attr);
        }
        let meta = self.settled(Pending::Removals).await?;
        let ticket = self.cache.ticket();
        let attr = meta.getattr(self.cfg.view, node).await?;
        self.cache.fill_attr(ticket, &attr);
        Ok(attr)
    }

    /// Keeps the cache true after a mutation of `nodes`: forgets their attributes (their
    /// ctime, mtime or link count changed), whether it succeeded or not (a failed commit may
    /// still have landed).
    pub(crate) fn touched(&self, nodes: &[NodeId]) {
        for node in nodes {
            self.cache.forget_attr(*node);
        }
    }

    /// Changes attributes (chmod, chown, utimens, truncate).
    pub async fn setattr(&self, ino: u64, change: SetAttr, caller: Caller) -> Result<Attr, FsError> {
        self.writable()?;
        let node = self.to_node(ino);
        let actor = self.actor(caller);
        let mut rest = change;
        if let Some(size) = rest.size
            && self.ws.kind == WorkspaceKind::Project
        {
            // Refused at the call, before an open write session stages the change (its commit
            // would refuse it too, and drop the session's other changes with it).
            write_once::resize(self.ws.kind, &self.fresh_attr(node).await?, size)?;
        }
        if let (Some(t), Some(session)) = (rest.mtime, self.session_of(node)) {
            session.set_mtime(t);
        }
        if let Some(size) = rest.size
            && let Some(session) = self.session_of(node)
        {
            // An open write session owns the content: truncate it there and commit at once so
            // truncate(2) is as durable as it is without open handles.
            session.truncate(size).await?;
            self.commit_session(&session, caller).await?;
            rest.size = None;
        }
        let attr = if rest == SetAttr::default() {
            self.fresh_attr(node).await?
        } else {
            let meta = self.settled(Pending::All).await?;
            let result = meta.setattr(&actor, self.ws.id, node, &rest).await;
            self.touched(&[node]);
            let attr = result?;
            self.cache.set_attr(&attr);
            attr
        };
        Ok(self.outer(attr))
    }

    /// Creates a node (mkdir, mknod, symlink) named `name` in `parent`.
    pub async fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        node: NewNode,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let name = parse_name(name)?;
        let attr = self.create_entry(parent, &name, &node, caller).await?;
        Ok(self.outer(attr))
    }

    /// Creates a directory.
    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> Result<Attr, FsError> {
        let node = NewNode::new(NodeKind::Directory, mode & 0o7777).owned_by(caller.uid, caller.gid);
        self.make_node(parent, name, node, caller).await
    }

    /// Creates a symbolic link to `target`.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, FsError> {
        let mut node = NewNode::new(NodeKind::Symlink, 0o777).owned_by(caller.uid, caller.gid);
        node.symlink_target = Some(target.to_vec());
        self.make_node(parent, name, node, caller).await
    }

    /// The target of a symbolic link.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        // A symlink's target never changes, and a pending removal does not change it either.
        Ok(self
            .unsettled()
            .readlink(self.cfg.view, self.to_node(ino))
            .await?)
    }

    /// Adds the hard link `new_parent/new_name` to `ino`.
    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
        caller: Caller,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        let name = parse_name(new_name)?;
        let (node, parent) = (self.to_node(ino), self.to_node(new_parent));
        let result = self
            .settled(Pending::All)
            .await?
            .link(&self.actor(caller), self.ws.id, node, parent, &name)
            .await;
        self.touched(&[node, parent]);
        match result {
            Ok(attr) => {
                self.cache.set_entry(parent, &name, &attr);
                Ok(self.outer(attr))
            }
            Err(e) => {
                self.cache.forget_entry(parent, &name);
                Err(e.into())
            }
        }
    }

    /// Creates node `node` named `name` in `parent`, keeping the cache true.
    pub(crate) async fn create_entry(
        &self,
        parent: u64,
        name: &Name,
        node: &NewNode,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        let parent = self.to_node(parent);
        let result = self
            .settled(Pending::All)
            .await?
            .create_in(&self.actor(caller), self.ws.id, parent, name, node)
            .await;
        self.touched(&[parent]);
        match result {
            Ok((attr, dir)) => {
                self.cache.set_entry(parent, name, &attr);
                self.cache.set_attr(&dir);
                if attr.kind == NodeKind::Directory {
                    self.cache.set_empty_dir(attr.ino);
                }
                Ok(attr)
            }
            Err(e) => {
                self.cache.forget_entry(parent, name);
                Err(e.into())
            }
        }
    }

    /// Removes a non-directory entry.
    pub async fn unlink(&self, parent: u64, name: &[u8], caller: Caller) -> Result<(), FsError> {
        self.remove(parent, name, false, caller).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &[u8], caller: Caller) -> Result<(), FsError> {
        self.remove(parent, name, true, caller).await
    }

    async fn remove(&self, parent: u64, name: &[u8], dir: bool, caller: Caller) -> Result<(), FsError> {
        self.writable()?;
        let name = parse_name(name)?;
        let (parent, actor) = (self.to_node(parent), self.actor(caller));
        // A deferred create of the name must land first, or the queued removal would find
        // nothing and the file would appear at its close.
        self.settle_creates().await?;
        // Write-behind when the mount alone can decide it (see `removals`).
        if !dir
            && self.ws.kind != WorkspaceKind::Project
            && let Cached::Found(attr) = self.cache.entry(parent, &name)
            && attr.kind != NodeKind::Directory
            && self
                .removals
                .push(QueuedUnlink {
                    parent,
                    name: name.clone(),
                    ino: attr.ino,
                    actor: actor.clone(),
                })
                .await
        {
            self.cache.set_absent(parent, &name);
            self.cache.touch_dir(parent, self.cfg.clock.now());
            return Ok(());
        }
        // Deferred creates were settled above.
        let meta = self.settled(Pending::Removals).await?;
        let result = if dir {
            meta.rmdir(&actor, self.ws.id, parent, &name).await
        } else {
            meta.unlink(&actor, self.ws.id, parent, &name).await
        };
        self.touched(&[parent]);
        match result {
            Ok(dir) => {
                self.cache.set_absent(parent, &name);
                self.cache.set_attr(&dir);
                Ok(())
            }
            Err(e) => {
                self.cache.forget_entry(parent, &name);
                Err(e.into())
            }
        }
    }

    /// Renames with `renameat2` semantics.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
        caller: Caller,
    ) -> Result<(), FsError> {
        self.writable()?;
        let (name, new_name) = (parse_name(name)?, parse_name(new_name)?);
        let (parent, new_parent) = (self.to_node(parent), self.to_node(new_parent));
        let result = self
            .settled(Pending::All)
            .await?
            .rename(
                &self.actor(caller),
                self.ws.id,
                parent,
                &name,
                new_parent,
                &new_name,
                mode,
            )
            .await;
        // Both names and whatever they named changed (or may have, on failure).
        self.cache.forget_entry(parent, &name);
        self.cache.forget_entry(new_parent, &new_name);
        self.touched(&[parent, new_parent]);
        if result.is_ok() && mode != RenameMode::Exchange {
            self.cache.set_absent(parent, &name);
        }
        Ok(result?)
    }

    /// Opens directory `ino` for listing.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        self.readable()?;
        let attr = self.stored_attr(self.to_node(ino)).await?;
        if attr.kind != NodeKind::Directory {
            return Err(FsError::new(FsErrorKind::NotADirectory, format!("inode {ino}")));
        }
        let fh = self.next_fh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = DirHandle::default();
        lock(&self.dirs).insert(fh, (ino, Arc::new(tokio::sync::Mutex::new(dir))));
        Ok(fh)
    }

    /// Items of open directory `fh` from cookie `offset`: "." and ".." first, then entries.
    /// An empty result means the end.
    pub async fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirItem>, FsError> {
        let (ino, dir) = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(FsErrorKind::BadHandle, format!("no open directory {fh}")))?;
        let node = self.to_node(ino);
        let mut items = Vec::new();
        if offset < 2 {
            let attr = self.outer(self.stored_attr(node).await?);
            for (i, name) in [&b"."[..], &b".."[..]]
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                let mut a = attr.clone();
                if i == 1 && ino != ROOT_INO {
                    // The parent's attributes are not needed by the kernel for "..".
                    a.ino = attr.ino;
                }
                items.push(DirItem {
                    offset: i as u64 + 1,
                    name: name.to_vec(),
                    attr: a,
                });
            }
        }
        let mut dir = dir.lock().await;
        let start = offset.saturating_sub(2) as usize;
        if start < dir.base {
            *dir = DirHandle::default();
        }
        // Entries below this index were read from the store by an earlier request: their
        // attributes may predate a change since (a write this mount committed, an unlink), and
        // READDIRPLUS hands them to the kernel as current, so they are looked up again.
        let fetched_now_from = dir.base + dir.entries.len();
        while start >= dir.base + dir.entries.len() && !dir.done {
            let meta = self.settled(Pending::All).await?;
            let ticket = self.cache.ticket();
            let page = meta
                .readdir_plus(self.cfg.view, node, dir.last.as_ref(), DIR_PAGE)
                .await?;
            self.cache.fill_listing(ticket, node, &page);
            dir.done = page.len() < DIR_PAGE;
            if let Some(last) = page.last() {
                dir.last = Some(last.entry.name.clone());
            }
            dir.entries.extend(page);
            let excess = dir.entries.len().saturating_sub(DIR_WINDOW);
            dir.entries.drain(..excess);
            dir.base += excess;
        }
        let skip = start.saturating_sub(dir.base);
        for (i, e) in dir.entries.iter().enumerate().skip(skip).take(DIR_PAGE) {
            let i = dir.base + i;
            let attr = if i >= fetched_now_from {
                e.attr.clone()
            } else {
                match self.stored_attr(e.attr.ino).await {
                    Ok(attr) => attr,
                    // Removed since the page was read: leaving it out is what POSIX allows.
                    Err(err) if err.kind() == FsErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                }
            };
            items.push(DirItem {
                offset: i as u64 + 3,
                name: e.entry.name.as_bytes().to_vec(),
                attr: self.outer(attr),
            });
        }
        Ok(items)
    }

    /// Closes open directory `fh`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// File-system statistics of the workspace (whatever folder the mount shows): its quota
    /// as the capacity and its usage counters as used, read at most once per
    /// [`USAGE_TTL`] (so `df` in a loop does not reach the store each time). Without a
    /// quota, and on snapshot views (which are not charged), the capacity is a large
    /// constant, as network file systems over object stores report; a store that cannot
    /// answer leaves the live figures at "nothing used" rather than failing `df`.
    pub async fn statfs(&self) -> Result<StatFs, FsError> {
        let usage = match self.cfg.view {
            View::Live => self.workspace_usage().await.ok(),
            View::At(_) => None,
        };
        Ok(statfs_figures(usage.as_ref()))
    }

    /// The workspace's usage counters and quota, as read within the last [`USAGE_TTL`].
    pub(crate) async fn workspace_usage(&self) -> Result<WorkspaceUsage, FsError> {
        if let Some((at, usage)) = *lock(&self.usage)
            && at.elapsed() < USAGE_TTL
        {
            return Ok(usage);
        }
        let read_at = Instant::now();
        let usage = self.unsettled().workspace_usage(self.ws.id).await?;
        *lock(&self.usage) = Some((read_at, usage));
        Ok(usage)
    }

    /// Bytes the quota leaves, as last read (`None`: no quota, or no figures to go by; the
    /// commit's check decides then).
    pub(crate) async fn quota_headroom(&self) -> Option<u64> {
        let usage = self.workspace_usage().await.ok()?;
        crate::rules::quota::headroom(usage.quota_bytes, usage.bytes)
    }

    /// Drops the usage figures held, so the next reader asks the store.
    pub(crate) fn forget_usage(&self) {
        lock(&self.usage).take();
    }

    /// `access(2)`: checks `mask` (R_OK=4, W_OK=2, X_OK=1) against the mode bits.
    pub async fn access(&self, ino: u64, mask: i32, caller: Caller) -> Result<(), FsError> {
        let attr = self.stored_attr(self.to_node(ino)).await?;
        if mask & libc::W_OK != 0 {
            self.writable()?;
        }
        if check_access(&attr, mask as u32 & 7, caller) {
            Ok(())
        } else {
            Err(FsError::new(FsErrorKind::AccessDenied, format!("inode {ino}")))
        }
    }
}

/// The classic owner/group/other check; root passes everything but execute on files that no
/// one may execute.
pub(crate) fn check_access(attr: &Attr, want: u32, caller: Caller) -> bool {
    if want == 0 {
        return true;
    }
    if caller.uid == 0 {
        let any_x = attr.mode & 0o111 != 0 || attr.kind == NodeKind::Directory;
        return want & 1 == 0 || any_x;
    }
    let bits = if caller.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if caller.gid == attr.gid {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::check_access;
    use crate::fs::Caller;
    use crate::model::{Attr, NodeKind, test_attr};

    fn attr(mode: u32, uid: u32, gid: u32, kind: NodeKind) -> Attr {
        test_attr(5, kind, mode, uid, gid, 0)
    }

    #[test]
    fn owner_group_other_and_root() {
        let a = attr(0o640, 10, 20, NodeKind::File);
        let who = |uid, gid| Caller { uid, gid, pid: 0 };
        assert!(check_access(&a, 6, who(10, 99)));
        assert!(!check_access(&a, 1, who(10, 99)));
        assert!(check_access(&a, 4, who(11, 20)));
        assert!(!check_access(&a, 2, who(11, 20)));
        assert!(!check_access(&a, 4, who(11, 21)));
        assert!(check_access(&a, 6, who(0, 0)));
        assert!(!check_access(&a, 1, who(0, 0)));
        assert!(check_access(
            &attr(0o600, 1, 1, NodeKind::Directory),
            1,
            who(0, 0)
        ));
    }
}

/// How long a mount answers statfs and the write-time quota check from the usage figures it
/// last read.
pub const USAGE_TTL: Duration = Duration::from_secs(2);

/// Unit of the statfs block counts.
const STATFS_BLOCK: u32 = 4096;

/// statfs figures from a workspace's usage: its quota as the capacity (rounded up to whole
/// units) and its counters as used; without a quota (or figures) 1 PiB and 2^40 inodes.
pub(crate) fn statfs_figures(usage: Option<&WorkspaceUsage>) -> StatFs {
    let unit = u64::from(STATFS_BLOCK);
    let (bytes, nodes) = usage.map_or((0, 0), |u| (u.bytes, u.nodes));
    let capacity = usage.and_then(|u| u.quota_bytes).unwrap_or(1 << 50);
    let blocks = capacity.div_ceil(unit);
    let free = blocks - bytes.div_ceil(unit).min(blocks);
    let files: u64 = 1 << 40;
    StatFs {
        blocks,
        bfree: free,
        bavail: free,
        files,
        ffree: files.saturating_sub(nodes),
        bsize: STATFS_BLOCK,
        namelen: crate::model::NAME_MAX as u32,
        frsize: STATFS_BLOCK,
    }
}

#[cfg(test)]
mod statfs_tests {
    use super::*;

    fn usage(bytes: u64, nodes: u64, quota_bytes: Option<u64>) -> WorkspaceUsage {
        WorkspaceUsage {
            bytes,
            nodes,
            quota_bytes,
        }
    }

    #[test]
    fn the_quota_is_the_capacity_and_the_counters_are_used() {
        let s = statfs_figures(Some(&usage(3 << 20, 5, Some(8 << 20))));
        assert_eq!(s.blocks * u64::from(s.frsize), 8 << 20);
        assert_eq!((s.blocks - s.bfree) * u64::from(s.frsize), 3 << 20);
        assert_eq!(s.bavail, s.bfree);
        assert_eq!(s.files - s.ffree, 5);
    }

    #[test]
    fn usage_above_a_lowered_quota_shows_a_full_file_system() {
        let s = statfs_figures(Some(&usage(9 << 20, 1, Some(8 << 20))));
        assert_eq!(s.bfree, 0);
        assert_eq!(s.blocks * u64::from(s.frsize), 8 << 20);
    }

    #[test]
    fn without_a_quota_the_capacity_is_one_pebibyte() {
        let s = statfs_figures(None);
        assert_eq!(s.blocks * u64::from(s.frsize), 1 << 50);
        assert_eq!(s.bfree, s.blocks);
        assert_eq!(statfs_figures(Some(&usage(4096, 1, None))).bfree, s.blocks - 1);
    }
}
