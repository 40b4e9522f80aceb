//! Nodes and entries: lookup, getattr, readdir, create, link, unlink, rmdir, rename, setattr,
//! path resolution and O(1) subtree delete.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::content::{InitialContent, claim_blocks, insert_blocks};
use crate::meta::rows::{
    EntryRow, InodeRow, WsCtx, checked_live_inode, close_entries, close_entry, first_failure,
    guard_write_once, inode_from_row, inode_in_view, insert_entry, insert_new_inode, live_dir,
    live_entries_and_inodes, live_entry, live_entry_and_inode, live_inode, new_inode_attr, next_node_id,
    prefixed_inode_columns, query, query_opt, record_event, record_move_event, record_removal_events, settle,
    settle_all, settle3, write_inode, ws_and_dir, ws_and_inode, ws_ctx,
};
use crate::meta::sequences::{frame_added, frame_removed};
use crate::meta::usage::{charge, record_usage};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{
    Actor, Attr, DirEntry, DirEntryPlus, Epoch, Name, NewNode, NodeId, NodeKind, RenameMode, SetAttr,
    Timestamp, View, WorkspaceId,
};
use crate::rules::quota::{self, UsageChange};
use crate::rules::rename::{self, EntryFacts, RenameCheck, RenameStep};
use crate::rules::write_once;

/// Deepest folder nesting the cycle check walks; deeper trees are refused as corrupt.
const MAX_DEPTH: i32 = 4096;

impl PgMetaStore {
    /// Attributes of a node in `view`.
    pub async fn getattr(&self, view: View, ino: NodeId) -> Result<Attr, MetaError> {
        let client = self.client().await?;
        inode_in_view(&client, view, ino)
            .await?
            .map(|r| r.attr)
            .ok_or_else(|| MetaError::NotFound(format!("node {ino}")))
    }

    /// Looks `name` up in directory `parent` and returns the child's attributes.
    pub async fn lookup(&self, view: View, parent: NodeId, name: &Name) -> Result<Attr, MetaError> {
        let client = self.client().await?;
        let row = match view {
            View::Live => {
                query_opt(
                    &client,
                    &format!(
                        "SELECT {} FROM entries e JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL \
                         WHERE e.parent = $1 AND e.name = $2 AND e.valid_to IS NULL",
                        prefixed_inode_columns()
                    ),
                    &[&(parent.0 as i64), &name.as_bytes()],
                )
                .await?
            }
            View::At(Epoch(e)) => {
                query_opt(
                    &client,
                    &format!(
                        "SELECT {} FROM entries e JOIN inodes i ON i.ino = e.ino \
                         AND i.valid_from <= $3 AND (i.valid_to IS NULL OR i.valid_to > $3) \
                         WHERE e.parent = $1 AND e.name = $2 \
                         AND e.valid_from <= $3 AND (e.valid_to IS NULL OR e.valid_to > $3)",
                        prefixed_inode_columns()
                    ),
                    &[&(parent.0 as i64), &name.as_bytes(), &e],
                )
                .await?
            }
        };
        match row {
            Some(row) => Ok(inode_from_row(&row, 0)?.attr),
            None => {
                // Distinguish "no such name" from "parent is not a directory" (ENOTDIR).
                let parent_attr = inode_in_view(&client, view, parent)
                    .await?
                    .ok_or_else(|| MetaError::NotFound(format!("node {parent}")))?;
                if parent_attr.attr.kind != NodeKind::Directory {
                    return Err(MetaError::NotADirectory(format!("node {parent}")));
                }
                Err(MetaError::NotFound(name.to_string_lossy()))
            }
        }
    }

    /// Reads a symlink's target.
    pub async fn readlink(&self, view: View, ino: NodeId) -> Result<Vec<u8>, MetaError> {
        let client = self.client().await?;
        let row = inode_in_view(&client, view, ino)
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("node {ino}")))?;
        match (row.attr.kind, row.symlink_target) {
            (NodeKind::Symlink, Some(target)) => Ok(target),
            _ => Err(MetaError::InvalidArgument(format!("node {ino} is not a symlink"))),
        }
    }

    /// The folder and name of a live entry naming node `ino` (the oldest, when hard links give
    /// it several); `None` when no live entry names it.
    pub async fn live_entry_of(&self, ino: NodeId) -> Result<Option<(NodeId, Name)>, MetaError> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT parent, name FROM entries WHERE ino = $1 AND valid_to IS NULL ORDER BY id LIMIT 1",
            &[&(ino.0 as i64)],
        )
        .await?
        .map(|r| (NodeId(r.get::<_, i64>(0) as u64), Name::from_stored(r.get(1)))))
    }

    /// Up to `limit` entries of directory `dir` whose names sort after `after`, in byte order.
    /// Keyset pagination: a page never repeats or skips an entry that exists across the calls,
    /// whatever is inserted or removed meanwhile.
    pub async fn readdir(
        &self,
        view: View,
        dir: NodeId,
        after: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<DirEntry>, MetaError> {
        Ok(self
            .readdir_plus(view, dir, after, limit)
            .await?
            .into_iter()
            .map(|e| e.entry)
            .collect())
    }

    /// Like [`PgMetaStore::readdir`], with each entry's attributes (readdirplus).
    pub async fn readdir_plus(
        &self,
        view: View,
        dir: NodeId,
        after: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<DirEntryPlus>, MetaError> {
        let client = self.client().await?;
        let after: &[u8] = after.map_or(&[], Name::as_bytes);
        let limit = limit.min(100_000) as i64;
        let rows = match view {
            View::Live => query(
                &client,
                &format!(
                    "SELECT e.name, {} FROM entries e JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL \
                         WHERE e.parent = $1 AND e.valid_to IS NULL AND e.name > $2 ORDER BY e.name LIMIT $3",
                    prefixed_inode_columns()
                ),
                &[&(dir.0 as i64), &after, &limit],
            )
            .await?,
            View::At(Epoch(e)) => {
                query(
                    &client,
                    &format!(
                        "SELECT e.name, {} FROM entries e JOIN inodes i ON i.ino = e.ino \
                         AND i.valid_from <= $4 AND (i.valid_to IS NULL OR i.valid_to > $4) \
                         WHERE e.parent = $1 AND e.name > $2 \
                         AND e.valid_from <= $4 AND (e.valid_to IS NULL OR e.valid_to > $4) \
                         ORDER BY e.name LIMIT $3",
                        prefixed_inode_columns()
                    ),
                    &[&(dir.0 as i64), &after, &limit, &e],
                )
                .await?
            }
        };
        if rows.is_empty() {
            let attr = inode_in_view(&client, view, dir)
                .await?
                .ok_or_else(|| MetaError::NotFound(format!("node {dir}")))?;
            if attr.attr.kind != NodeKind::Directory {
                return Err(MetaError::NotADirectory(format!("node {dir}")));
            }
        }
        rows.iter()
            .map(|row| {
                let attr = inode_from_row(row, 1)?.attr;
                let name = Name::from_stored(row.get(0));
                Ok(DirEntryPlus {
                    entry: DirEntry {
                        name,
                        ino: attr.ino,
                        kind: attr.kind,
                    },
                    attr,
                })
            })
            .collect()
    }

    /// Resolves a slash-separated path ("/shots/010/comp") from `root` in `view`. Empty
    /// components are ignored; "." and ".." are refused as invalid names.
    pub async fn resolve_from(&self, view: View, root: NodeId, path: &str) -> Result<Attr, MetaError> {
        let names = parse_path(path)?;
        let mut attr = self.getattr(view, root).await?;
        for name in &names {
            attr = self.lookup(view, attr.ino, name).await?;
        }
        Ok(attr)
    }

    /// Resolves a path in a workspace's live tree.
    pub async fn resolve(&self, ws: WorkspaceId, path: &str) -> Result<Attr, MetaError> {
        let names = parse_path(path)?;
        let root = {
            let client = self.client().await?;
            ws_ctx(&client, ws).await?.root
        };
        let mut attr = self.getattr(View::Live, root).await?;
        for name in &names {
            attr = self.lookup(View::Live, attr.ino, name).await?;
        }
        Ok(attr)
    }

    /// Creates a node named `name` in directory `parent`.
    pub async fn create(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
    ) -> Result<Attr, MetaError> {
        Ok(self.create_in(actor, ws, parent, name, node).await?.0)
    }

    /// Like [`PgMetaStore::create`], also returning the directory's new attributes (for a
    /// client's cache).
    pub async fn create_in(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
    ) -> Result<(Attr, Attr), MetaError> {
        self.create_node(actor, ws, parent, (name, node), None, None)
            .await
    }

    /// Creates regular file `name` in `parent` as node `ino` (from
    /// [`PgMetaStore::reserve_node_id`]), with `content` as its first content when given, in
    /// one transaction: a mount that creates a file and writes it before the first close
    /// commits both at that close. Returns the file's and the directory's attributes.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_file(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        node: &NewNode,
        ino: NodeId,
        content: Option<&InitialContent<'_>>,
    ) -> Result<(Attr, Attr), MetaError> {
        if node.kind != NodeKind::File {
            return Err(MetaError::InvalidArgument(
                "create_file creates regular files".into(),
            ));
        }
        self.create_node(actor, ws, parent, (name, node), Some(ino), content)
            .await
    }

    async fn create_node(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        (name, node): (&Name, &NewNode),
        reserved: Option<NodeId>,
        content: Option<&InitialContent<'_>>,
    ) -> Result<(Attr, Attr), MetaError> {
        crate::rules::check_new_node(node)?;
        let now = self.clock.now();
        let hashes: Vec<&[u8]> = content
            .map(|c| c.blocks.iter().map(|(_, h, _)| h.as_slice()).collect())
            .unwrap_or_default();
        in_txn!(self, |tx| {
            async {
                let ino = async {
                    match reserved {
                        Some(ino) => Ok(ino),
                        None => next_node_id(tx).await,
                    }
                };
                let (ws_dir, ino, claimed) =
                    tokio::join!(ws_and_dir(tx, ws, parent), ino, claim_blocks(tx, &hashes));
                let ((ws, mut dir), ino, ()) = settle3(ws_dir, ino, claimed)?;
                let mut attr = new_inode_attr(ino, node, now);
                if let Some(content) = content {
                    attr.size = content.size;
                    attr.mtime = content.mtime;
                    attr.content_version = 1;
                }
                touch_dir(
                    &mut dir,
                    now,
                    if node.kind == NodeKind::Directory { 1 } else { 0 },
                );
                // No read of (parent, name) first: the unique index answers "exists", and
                // skipping the read keeps concurrent creators from conflicting on it. The
                // writes go out together (see rows::first_failure).
                let written = async {
                    match content {
                        Some(content) => {
                            let (blocks, event) = tokio::join!(
                                insert_blocks(tx, &ws, attr.ino, content.blocks),
                                record_event(tx, ws.id, actor, "write", Some(attr.ino), None, None),
                            );
                            first_failure([blocks, event])
                        }
                        None => Ok(()),
                    }
                };
                // The charge goes last: a taken name is reported as such before the quota.
                let (inode, entry, dir_written, frames, event, content_written, charged) = tokio::join!(
                    insert_new_inode(tx, &ws, node, &attr),
                    insert_entry(tx, &ws, parent, name, attr.ino, attr.kind),
                    write_inode(tx, &ws, &dir),
                    frame_added(tx, parent, name, attr.kind),
                    record_event(
                        tx,
                        ws.id,
                        actor,
                        "create",
                        Some(attr.ino),
                        Some(parent),
                        Some(name)
                    ),
                    written,
                    charge(tx, &ws, quota::charge(&attr)),
                );
                first_failure([inode, entry, dir_written, frames, event, content_written, charged])?;
                Ok((attr, dir.attr))
            }
            .await
        })
    }

    /// Adds a hard link `new_parent/new_name` to the existing non-directory node `ino`.
    pub async fn link(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        new_parent: NodeId,
        new_name: &Name,
    ) -> Result<Attr, MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                let (ws, mut node) = ws_and_inode(tx, ws, ino).await?;
                if node.attr.kind == NodeKind::Directory {
                    return Err(MetaError::PermissionDenied(
                        "hard links to directories are not allowed".into(),
                    ));
                }
                if node.attr.nlink == 0 {
                    return Err(MetaError::NotFound(format!("node {ino} was removed")));
                }
                let mut dir = live_dir(tx, &ws, new_parent).await?;
                if live_entry(tx, new_parent, new_name).await?.is_some() {
                    return Err(MetaError::Exists(new_name.to_string_lossy()));
                }
                insert_entry(tx, &ws, new_parent, new_name, ino, node.attr.kind).await?;
                node.attr.nlink += 1;
                node.attr.ctime = now;
                write_inode(tx, &ws, &node).await?;
                touch_dir(&mut dir, now, 0);
                write_inode(tx, &ws, &dir).await?;
                frame_added(tx, new_parent, new_name, node.attr.kind).await?;
                record_event(
                    tx,
                    ws.id,
                    actor,
                    "link",
                    Some(ino),
                    Some(new_parent),
                    Some(new_name),
                )
                .await?;
                Ok(node.attr)
            }
            .await
        })
    }

    /// Removes the non-directory entry `parent/name` (a soft delete). The node itself lives on
    /// while other names or open handles refer to it. Returns the directory's new attributes.
    pub async fn unlink(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> Result<Attr, MetaError> {
        self.remove_entry(actor, ws, parent, name, Removal::Unlink).await
    }

    /// Removes the empty directory `parent/name` (a soft delete). Returns the directory's new
    /// attributes.
    pub async fn rmdir(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
    ) -> Result<Attr, MetaError> {
        self.remove_entry(actor, ws, parent, name, Removal::Rmdir).await
    }

    /// Deletes the node at `path` with everything below it in O(1): only the subtree's root
    /// entry is marked deleted; the lifecycle purge reclaims the rest.
    pub async fn delete_path(&self, actor: &Actor, ws: WorkspaceId, path: &str) -> Result<(), MetaError> {
        let mut names = parse_path(path)?;
        let name = names
            .pop()
            .ok_or_else(|| MetaError::InvalidArgument("cannot delete the workspace root".into()))?;
        let parent_path: Vec<String> = names.iter().map(Name::to_string_lossy).collect();
        let parent = self.resolve(ws, &parent_path.join("/")).await?;
        self.remove_entry(actor, ws, parent.ino, &name, Removal::Subtree)
            .await?;
        Ok(())
    }

    pub(super) async fn remove_entry(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        removal: Removal,
    ) -> Result<Attr, MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                // Pipelined reads, first failure first (see rows::ws_and_dir).
                let (ws_dir, found) =
                    tokio::join!(ws_and_dir(tx, ws, parent), live_entry_and_inode(tx, parent, name));
                let ((ws, mut dir), found) = settle(ws_dir, found)?;
                let (entry, node) = found.ok_or_else(|| MetaError::NotFound(name.to_string_lossy()))?;
                let mut node = checked_live_inode(&ws, entry.ino, node)?;
                let is_dir = node.attr.kind == NodeKind::Directory;
                match removal {
                    Removal::Unlink if is_dir => return Err(MetaError::IsADirectory(name.to_string_lossy())),
                    Removal::Rmdir if !is_dir => {
                        return Err(MetaError::NotADirectory(name.to_string_lossy()));
                    }
                    Removal::Rmdir => ensure_empty(tx, entry.ino, name).await?,
                    // The name holds another node than the one found expired.
                    Removal::Expired(ino) if entry.ino != ino => {
                        return Err(MetaError::NotFound(name.to_string_lossy()));
                    }
                    Removal::Subtree | Removal::Expired(_) if is_dir => {
                        guard_write_once_folder(tx, &ws, entry.ino).await?;
                    }
                    _ => {}
                }
                guard_write_once(&ws, &node.attr, "delete")?;
                // A folder deleted whole gives back its own charge only: what is below it keeps
                // its links (and rows) until the lifecycle purge, and stays charged until then.
                let before = node.attr.clone();
                drop_link(&mut node, now);
                let usage = quota::change(&before, &node.attr);
                touch_dir(&mut dir, now, if is_dir { -1 } else { 0 });
                let op = match removal {
                    Removal::Unlink => "unlink",
                    Removal::Rmdir => "rmdir",
                    Removal::Subtree | Removal::Expired(_) => "delete",
                };
                let (closed, node_written, dir_written, frames, event, counted) = tokio::join!(
                    close_entry(tx, &ws, entry.id, true),
                    write_inode(tx, &ws, &node),
                    write_inode(tx, &ws, &dir),
                    frame_removed(tx, parent, name, entry.kind),
                    record_event(tx, ws.id, actor, op, Some(entry.ino), Some(parent), Some(name)),
                    record_usage(tx, ws.id, usage),
                );
                first_failure([closed, node_written, dir_written, frames, event, counted])?;
                Ok(dir.attr)
            }
            .await
        })
    }

    /// Removes many non-directory entries in one transaction (a mount's queued removals).
    /// Each item names the node its entry is expected to hold; an item whose entry is gone,
    /// names another node, is a directory, or is protected (write-once) is skipped with its
    /// reason and does not stop the others. Returns one outcome per item (`Ok` with the
    /// directory's new attributes when removed).
    pub async fn unlink_many(
        &self,
        ws: WorkspaceId,
        items: &[QueuedUnlink],
    ) -> Result<Vec<Result<Attr, MetaError>>, MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                let mut parents: Vec<NodeId> = items.iter().map(|i| i.parent).collect();
                parents.sort_unstable();
                parents.dedup();
                let keys: Vec<(NodeId, &Name)> = items.iter().map(|i| (i.parent, &i.name)).collect();
                let (ctx, found, dirs) = tokio::join!(
                    ws_ctx(tx, ws),
                    live_entries_and_inodes(tx, &keys),
                    futures::future::join_all(parents.iter().map(|p| inode_in_view(tx, View::Live, *p))),
                );
                let (ws, mut found, dirs) = settle3(ctx, found, settle_all(dirs))?;
                let mut dir_rows = HashMap::new();
                for (parent, row) in parents.iter().zip(dirs) {
                    if let Some(row) = row {
                        dir_rows.insert(*parent, row);
                    }
                }
                let mut nodes: HashMap<NodeId, InodeRow> = HashMap::new();
                // What each node charged before this batch took names from it.
                let mut charged_before: HashMap<NodeId, UsageChange> = HashMap::new();
                let mut removed = Vec::new();
                let mut outcomes: Vec<Result<(), MetaError>> = Vec::with_capacity(items.len());
                for item in items {
                    let what = || item.name.to_string_lossy();
                    // An entry leaves `found` only when this item removes it: a later item
                    // naming the same (parent, name) is judged on its own.
                    let key = (item.parent, item.name.clone());
                    let outcome = match found.get(&key) {
                        None => Err(MetaError::NotFound(what())),
                        Some((entry, _)) if entry.ino != item.ino => {
                            Err(MetaError::Conflict(format!("{} names another node now", what())))
                        }
                        Some(_) if !dir_rows.contains_key(&item.parent) => Err(MetaError::NotFound(what())),
                        Some((entry, node)) => {
                            // A node named twice in the batch (hard links) keeps one row.
                            let row = match nodes.entry(entry.ino) {
                                Entry::Occupied(o) => Ok(o.into_mut()),
                                Entry::Vacant(v) => {
                                    checked_live_inode(&ws, entry.ino, node.clone()).map(|r| {
                                        charged_before.insert(entry.ino, quota::charge(&r.attr));
                                        v.insert(r)
                                    })
                                }
                            };
                            row.and_then(|row| {
                                if row.attr.kind == NodeKind::Directory {
                                    return Err(MetaError::IsADirectory(what()));
                                }
                                guard_write_once(&ws, &row.attr, "delete")?;
                                drop_link(row, now);
                                Ok(())
                            })
                            .map(|()| {
                                let (entry, _) = found.remove(&key).expect("the entry was just found");
                                removed.push((item, entry));
                            })
                        }
                    };
                    outcomes.push(outcome);
                }
                // Hard links: every removed name of a node dropped one link from the same row.
                let touched_nodes: Vec<&InodeRow> = {
                    let mut ids: Vec<NodeId> = removed.iter().map(|(_, e)| e.ino).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids.iter().filter_map(|id| nodes.get(id)).collect()
                };
                let usage = touched_nodes.iter().fold(UsageChange::default(), |sum, row| {
                    sum + quota::charge(&row.attr) - charged_before[&row.attr.ino]
                });
                let mut touched_dirs: Vec<NodeId> = removed.iter().map(|(i, _)| i.parent).collect();
                touched_dirs.sort_unstable();
                touched_dirs.dedup();
                for dir in &touched_dirs {
                    if let Some(row) = dir_rows.get_mut(dir) {
                        touch_dir(row, now, 0);
                    }
                }
                let entry_ids: Vec<i64> = removed.iter().map(|(_, e)| e.id).collect();
                let events: Vec<(&Actor, NodeId, NodeId, &Name)> = removed
                    .iter()
                    .map(|(item, entry)| (&item.actor, entry.ino, item.parent, &item.name))
                    .collect();
                let writes = [
                    boxed(close_entries(tx, &ws, &entry_ids)),
                    boxed(record_removal_events(tx, ws.id, "unlink", &events)),
                    boxed(record_usage(tx, ws.id, usage)),
                ]
                .into_iter()
                .chain(
                    removed
                        .iter()
                        .map(|(item, entry)| boxed(frame_removed(tx, item.parent, &item.name, entry.kind))),
                )
                .chain(touched_nodes.iter().map(|row| boxed(write_inode(tx, &ws, row))))
                .chain(
                    touched_dirs
                        .iter()
                        .filter_map(|d| dir_rows.get(d))
                        .map(|row| boxed(write_inode(tx, &ws, row))),
                );
                first_failure(futures::future::join_all(writes).await)?;
                Ok(items
                    .iter()
                    .zip(outcomes)
                    .map(|(item, outcome)| {
                        outcome.and_then(|()| {
                            dir_rows
                                .get(&item.parent)
                                .map(|row| row.attr.clone())
                                .ok_or_else(|| MetaError::NotFound(format!("directory {}", item.parent)))
                        })
                    })
                    .collect())
            }
            .await
        })
    }

    /// Renames `parent/name` to `new_parent/new_name` with POSIX `rename(2)` rules and the
    /// Linux `renameat2` flags. Moving a folder changes one entry, whatever its size.
    #[allow(clippy::too_many_arguments)]
    pub async fn rename(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        parent: NodeId,
        name: &Name,
        new_parent: NodeId,
        new_name: &Name,
        mode: RenameMode,
    ) -> Result<(), MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                let (ws_dir, src) = tokio::join!(ws_and_dir(tx, ws, parent), live_entry(tx, parent, name));
                let ((ws, mut src_dir), src) = settle(ws_dir, src)?;
                let src = src.ok_or_else(|| MetaError::NotFound(name.to_string_lossy()))?;
                let same_dir = parent == new_parent;
                let mut dst_dir = if same_dir {
                    src_dir.clone()
                } else {
                    live_dir(tx, &ws, new_parent).await?
                };
                let dst = live_entry(tx, new_parent, new_name).await?;
                let facts = |e: &EntryRow| EntryFacts {
                    ino: e.ino,
                    kind: e.kind,
                };
                let plan = rename::plan(
                    mode,
                    (parent, name),
                    (new_parent, new_name),
                    facts(&src),
                    dst.as_ref().map(facts),
                );
                for check in plan.checks {
                    let passed = match check {
                        RenameCheck::NotAbove { moved, target_parent } => {
                            !is_above(tx, moved, target_parent).await?
                        }
                        RenameCheck::Empty(dir) => !has_entries(tx, dir).await?,
                    };
                    if !passed {
                        return Err(rename::check_failure(check, new_name));
                    }
                }
                let step = plan.outcome?;
                let (src_delta, dst_delta) = rename::folder_link_deltas(step, facts(&src));
                let (op, moved) = match (step, &dst) {
                    (RenameStep::Nothing, _) => return Ok(()),
                    (RenameStep::Exchange { .. }, Some(dst)) => {
                        let (a, b) = tokio::join!(live_inode(tx, &ws, src.ino), live_inode(tx, &ws, dst.ino));
                        let (a, b) = settle(a, b)?;
                        write_once::exchange(ws.kind, &a.attr, &b.attr)?;
                        close_entry(tx, &ws, src.id, false).await?;
                        close_entry(tx, &ws, dst.id, false).await?;
                        insert_entry(tx, &ws, parent, name, dst.ino, dst.kind).await?;
                        insert_entry(tx, &ws, new_parent, new_name, src.ino, src.kind).await?;
                        frame_removed(tx, parent, name, src.kind).await?;
                        frame_removed(tx, new_parent, new_name, dst.kind).await?;
                        frame_added(tx, parent, name, dst.kind).await?;
                        frame_added(tx, new_parent, new_name, src.kind).await?;
                        ("exchange", vec![src.ino, dst.ino])
                    }
                    (RenameStep::Exchange { .. }, None) => {
                        return Err(MetaError::Internal("exchange without a target".into()));
                    }
                    (RenameStep::Move { replaces }, _) => {
                        if let (Some(_), Some(dst)) = (replaces, &dst) {
                            let mut target = live_inode(tx, &ws, dst.ino).await?;
                            guard_write_once(&ws, &target.attr, "replace")?;
                            let before = target.attr.clone();
                            detach(tx, &ws, dst, &mut target, now).await?;
                            record_usage(tx, ws.id, quota::change(&before, &target.attr)).await?;
                            frame_removed(tx, new_parent, new_name, dst.kind).await?;
                        }
                        close_entry(tx, &ws, src.id, false).await?;
                        insert_entry(tx, &ws, new_parent, new_name, src.ino, src.kind).await?;
                        frame_removed(tx, parent, name, src.kind).await?;
                        frame_added(tx, new_parent, new_name, src.kind).await?;
                        ("rename", vec![src.ino])
                    }
                };
                for ino in moved {
                    let mut node = live_inode(tx, &ws, ino).await?;
                    node.attr.ctime = now;
                    write_inode(tx, &ws, &node).await?;
                }
                finish_dirs(
                    tx,
                    &ws,
                    &mut src_dir,
                    &mut dst_dir,
                    same_dir,
                    src_delta,
                    dst_delta,
                    now,
                )
                .await?;
                record_move_event(
                    tx,
                    ws.id,
                    actor,
                    op,
                    src.ino,
                    (parent, name),
                    (new_parent, new_name),
                )
                .await?;
                Ok(())
            }
            .await
        })
    }

    /// Changes attributes. A size change here only adjusts metadata (block map trimming and
    /// the valid length of the last block); file content goes through the content path.
    pub async fn setattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        change: &SetAttr,
    ) -> Result<Attr, MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                let (ws, mut node) = ws_and_inode(tx, ws, ino).await?;
                let before = node.attr.clone();
                if let Some(size) = change.size {
                    match node.attr.kind {
                        NodeKind::Directory => return Err(MetaError::IsADirectory(format!("node {ino}"))),
                        NodeKind::File => {}
                        _ => {
                            return Err(MetaError::InvalidArgument(format!(
                                "node {ino} has no content to resize"
                            )));
                        }
                    }
                    write_once::resize(ws.kind, &node.attr, size)?;
                    if size != node.attr.size {
                        super::content::resize_blocks(tx, &ws, ino, node.attr.size, size).await?;
                        node.attr.size = size;
                        node.attr.mtime = now;
                        node.attr.content_version += 1;
                    }
                }
                if let Some(mode) = change.mode {
                    node.attr.mode = mode & 0o7777;
                }
                if let Some(uid) = change.uid {
                    node.attr.uid = uid;
                }
                if let Some(gid) = change.gid {
                    node.attr.gid = gid;
                }
                if let Some(t) = change.atime {
                    node.attr.atime = t;
                }
                if let Some(t) = change.mtime {
                    node.attr.mtime = t;
                }
                node.attr.ctime = now;
                charge(tx, &ws, quota::change(&before, &node.attr)).await?;
                write_inode(tx, &ws, &node).await?;
                record_event(tx, ws.id, actor, "setattr", Some(ino), None, None).await?;
                Ok(node.attr)
            }
            .await
        })
    }
}

/// One removal of a batch for [`PgMetaStore::unlink_many`].
#[derive(Debug, Clone)]
pub struct QueuedUnlink {
    pub parent: NodeId,
    pub name: Name,
    /// The node the entry is expected to name (the remover's view).
    pub ino: NodeId,
    pub actor: Actor,
}

type WriteFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), MetaError>> + Send + 'a>>;

fn boxed<'a>(f: impl std::future::Future<Output = Result<(), MetaError>> + Send + 'a) -> WriteFuture<'a> {
    Box::pin(f)
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Removal {
    Unlink,
    Rmdir,
    Subtree,
    /// A subtree delete of the node expiry found under the name (`meta::access`).
    Expired(NodeId),
}

/// Splits a path into validated names (see [`WorkspacePath`]).
pub(crate) fn parse_path(path: &str) -> Result<Vec<Name>, MetaError> {
    Ok(crate::model::WorkspacePath::parse(path)?.into_names())
}

/// Updates a directory row's times and link count (see [`crate::rules::touch_dir`]).
fn touch_dir(dir: &mut InodeRow, now: Timestamp, subdirs_delta: i64) {
    crate::rules::touch_dir(&mut dir.attr, now, subdirs_delta);
}

#[allow(clippy::too_many_arguments)]
async fn finish_dirs<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    src_dir: &mut InodeRow,
    dst_dir: &mut InodeRow,
    same_dir: bool,
    src_delta: i64,
    dst_delta: i64,
    now: Timestamp,
) -> Result<(), MetaError> {
    if same_dir {
        touch_dir(src_dir, now, src_delta + dst_delta);
        return write_inode(c, ws, src_dir).await;
    }
    touch_dir(src_dir, now, src_delta);
    write_inode(c, ws, src_dir).await?;
    touch_dir(dst_dir, now, dst_delta);
    write_inode(c, ws, dst_dir).await
}

/// Soft-deletes an entry and drops one link from its node.
async fn detach<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    entry: &EntryRow,
    node: &mut InodeRow,
    now: Timestamp,
) -> Result<(), MetaError> {
    close_entry(c, ws, entry.id, true).await?;
    drop_link(node, now);
    write_inode(c, ws, node).await
}

/// A node row after one of its names is removed (see [`crate::rules::drop_link`]).
fn drop_link(node: &mut InodeRow, now: Timestamp) {
    crate::rules::drop_link(&mut node.attr, now);
}

/// Whether the workspace refuses removing this folder with what is in it: a project
/// workspace (write-once) lets only empty folders go, as their files may hold committed
/// content. Every removal of a whole folder (delete, a copy or restore that replaces it)
/// asks this.
pub(super) async fn guard_write_once_folder<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    dir: NodeId,
) -> Result<(), MetaError> {
    if ws.kind == crate::model::WorkspaceKind::Project && has_entries(c, dir).await? {
        return Err(crate::rules::write_once::full_folder_refusal());
    }
    Ok(())
}

async fn ensure_empty<C: GenericClient>(c: &C, dir: NodeId, name: &Name) -> Result<(), MetaError> {
    if has_entries(c, dir).await? {
        return Err(MetaError::NotEmpty(name.to_string_lossy()));
    }
    Ok(())
}

/// Whether live folder `dir` has any entry.
async fn has_entries<C: GenericClient>(c: &C, dir: NodeId) -> Result<bool, MetaError> {
    let child = query_opt(
        c,
        "SELECT 1 FROM entries WHERE parent = $1 AND valid_to IS NULL LIMIT 1",
        &[&(dir.0 as i64)],
    )
    .await?;
    Ok(child.is_some())
}

/// Refuses moving directory `moved` under `target_parent` when that is `moved` itself or below
/// it (EINVAL).
pub(crate) async fn ensure_not_ancestor<C: GenericClient>(
    c: &C,
    moved: NodeId,
    target_parent: NodeId,
) -> Result<(), MetaError> {
    if is_above(c, moved, target_parent).await? {
        return Err(MetaError::InvalidArgument(
            "cannot move a directory into itself or its own subtree".into(),
        ));
    }
    Ok(())
}

/// Whether folder `moved` is `target_parent` or above it in the live tree. Walks up from
/// `target_parent`; under SERIALIZABLE, two racing moves (a into b, b into a) read each
/// other's entries, so one of them is retried and sees the other's result: no cycle can be
/// committed.
async fn is_above<C: GenericClient>(c: &C, moved: NodeId, target_parent: NodeId) -> Result<bool, MetaError> {
    let hit = query_opt(
        c,
        "WITH RECURSIVE up (ino, depth) AS ( \
             SELECT $2::INT8, 0 \
             UNION ALL \
             SELECT e.parent, up.depth + 1 FROM entries e JOIN up ON e.ino = up.ino \
             WHERE e.valid_to IS NULL AND e.kind = 2 AND up.depth < $3 \
         ) SELECT 1 FROM up WHERE ino = $1 LIMIT 1",
        &[&(moved.0 as i64), &(target_parent.0 as i64), &MAX_DEPTH],
    )
    .await?;
    Ok(hit.is_some())
}
