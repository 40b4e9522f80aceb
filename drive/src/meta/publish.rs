//! Publish and revert (issue 19 item 3): Netflix Drive's explicit publish beside auto-sync,
//! and restoring a folder to a snapshot or an earlier epoch without copying its tree.
//!
//! Both are one SERIALIZABLE transaction that first locks the workspace row `FOR UPDATE`, as
//! a snapshot does: every mutation holds that row `FOR SHARE` (see `rows::WsCtx`), so a
//! publish or revert waits for the mutations in flight and the ones that start later wait for
//! it. The published snapshot is therefore a consistent cut of the source (each concurrent
//! write is wholly in it or wholly after it), and no reader ever sees a half-published or
//! half-reverted folder.
//!
//! Each records exactly one event (`published` / `reverted`) that names the folder and the
//! snapshot and epoch (`events.snapshot`, `events.epoch`, migration 14); the moves, copies
//! and node changes inside record no events of their own. Mounts forget their whole cache on
//! either (a subtree changed under one event).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::content::set_block;
use crate::meta::copy::{CopyReport, copy_in};
use crate::meta::rows::{
    InodeRow, WsCtx, close_entry, execute, guard_write_once, inode_in_view, insert_entry, live_dir,
    live_entry, live_inode, query, query_opt, record_snapshot_event, write_inode, ws_ctx,
};
use crate::meta::sequences::{frame_added, frame_removed};
use crate::meta::snapshots::{SNAPSHOT_COLUMNS, snapshot_from_row};
use crate::meta::usage::charge;
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{
    Actor, Epoch, MergeMode, Name, NodeId, NodeKind, Snapshot, SnapshotId, View, WorkspaceId, WorkspacePath,
    validate_workspace_name,
};
use crate::rules::quota::{self, UsageChange};

/// Deepest folder nesting a walk up the tree follows; deeper is refused as corrupt.
const MAX_DEPTH: usize = 4096;

/// How a publish puts the finished folder in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// Rename the source folder to the destination (one entry changed, node numbers kept:
    /// open files and writers keep working, now under the destination). When the destination
    /// exists and the merge mode allows it, the source is copied into it (sharing blocks) and
    /// then deleted (to the trash).
    #[default]
    Move,
    /// Copy the source folder to the destination, sharing blocks (no data copied); the
    /// source stays as it is.
    Copy,
}

/// What [`PgMetaStore::publish`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    pub mode: PublishMode,
    /// Name of the snapshot the publish takes of the destination (a workspace name: DNS
    /// label rules).
    pub snapshot: String,
    /// What to do when the destination exists. `Fail` refuses (nothing is written);
    /// `Overwrite` and `Skip` merge the source into the destination folder with the merge
    /// modes of copy (a destination that is not a folder is replaced by `Overwrite` and
    /// refused by `Skip`).
    pub merge: MergeMode,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// The snapshot taken of the destination, in the same transaction.
    pub snapshot: Snapshot,
    /// The published folder (the snapshot's root).
    pub root: NodeId,
    /// Whether the source was renamed into place (`Move` onto a free destination).
    pub renamed: bool,
    /// What the copy did, when the publish copied (`Copy`, or `Move` onto an existing
    /// destination).
    pub copy: Option<CopyReport>,
}

/// What a revert restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertTarget<'a> {
    /// The tree of a live snapshot of the workspace that contains the folder.
    Snapshot(&'a str),
    /// The tree as of an earlier epoch. History that no retained snapshot shows is removed
    /// by the lifecycle purge, so an epoch no snapshot holds may no longer be complete:
    /// prefer a snapshot.
    Epoch(Epoch),
}

/// What a revert did. `rows_written` counts the namespace rows the revert wrote (entry and
/// inode versions closed, inserted or updated, block-map rows changed) besides the event and
/// usage rows: proportional to what changed since the target, not to the folder's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertReport {
    /// The reverted folder.
    pub root: NodeId,
    /// The epoch restored.
    pub epoch: Epoch,
    /// The snapshot restored, when reverting to one.
    pub snapshot: Option<String>,
    /// Names removed from the folder because their node did not exist there at the target
    /// (they go to the trash when that was the node's last name).
    pub removed: u64,
    /// Names of nodes that were in the folder at the target but under another name or
    /// folder now, taken away from there (the node gets its old name back).
    pub moved_back: u64,
    /// Names given back to nodes that lost them since the target.
    pub restored: u64,
    /// Nodes moved out of the folder since the target, restored as block-sharing copies of
    /// their state at the target (the moved node stays where it is now).
    pub copied: u64,
    /// Nodes whose attributes or content were set back to the target's.
    pub updated: u64,
    /// `Skip`: names of nodes created (or moved in) since the target that were kept.
    pub kept: u64,
    /// `Skip`: names of the target that were not restored because a kept node holds them.
    pub skipped: u64,
    /// Namespace rows written (see the type's doc).
    pub rows_written: u64,
}

impl PgMetaStore {
    /// Publishes the folder `src` at `dest` and takes snapshot `options.snapshot` of it, in
    /// one transaction that waits for the workspace's mutations in flight and holds off new
    /// ones (see the module doc): the snapshot is a consistent cut of `src`, and readers see
    /// either no `dest` or all of it.
    ///
    /// Records exactly one event, `published`, with `ino` the published folder,
    /// `(parent, name)` its entry, `from` the source's entry for a rename, and the snapshot's
    /// name and epoch in `snapshot` / `epoch`.
    ///
    /// Refused before anything is written: invalid paths or snapshot name (`InvalidName`),
    /// `src` the root, `dest` the root, `dest` inside `src` or `src` inside `dest`
    /// (`InvalidArgument`); a missing `src` or `dest` folder (`NotFound`), `src` not a folder
    /// (`NotADirectory`), a snapshot name in use or an existing `dest` with `MergeMode::Fail`
    /// (`Exists`), a merge that write-once rules refuse (`PermissionDenied`) and a copy over
    /// quota (`QuotaExceeded`).
    pub async fn publish(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        src: &str,
        dest: &str,
        options: &PublishOptions,
    ) -> Result<PublishReport, MetaError> {
        validate_workspace_name(&options.snapshot)?;
        let src_path = WorkspacePath::parse(src)?;
        let dest_path = WorkspacePath::parse(dest)?;
        if src_path.is_root() {
            return Err(MetaError::InvalidArgument(
                "cannot publish the workspace root".into(),
            ));
        }
        if dest_path.is_root() {
            return Err(MetaError::InvalidArgument(
                "cannot publish onto the workspace root".into(),
            ));
        }
        if dest_path.relative_to(&src_path).is_some() {
            return Err(MetaError::InvalidArgument(format!(
                "destination {dest_path} is {src_path} or inside it"
            )));
        }
        if src_path.relative_to(&dest_path).is_some() {
            return Err(MetaError::InvalidArgument(format!(
                "source {src_path} is inside the destination {dest_path}"
            )));
        }
        let dest_canonical = dest_path.to_string();
        let mut src_names = src_path.into_names();
        let src_name = src_names
            .pop()
            .expect("a path that is not the root has a last name");
        let mut dest_names = dest_path.into_names();
        let dest_name = dest_names
            .pop()
            .expect("a path that is not the root has a last name");
        let snapshot_name = options.snapshot.as_str();
        let id = SnapshotId(uuid::Uuid::new_v4());
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                // Exclusive first, as create_snapshot: a consistent cut (module doc).
                execute(tx, "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", &[&ws.0]).await?;
                let ctx = ws_ctx(tx, ws).await?;
                ensure_snapshot_name_free(tx, ws, snapshot_name).await?;
                let src_parent = resolve_dir(tx, &ctx, &src_names, "source folder").await?;
                let src_entry = live_entry(tx, src_parent, &src_name)
                    .await?
                    .ok_or_else(|| MetaError::NotFound(format!("source {src}")))?;
                if src_entry.kind != NodeKind::Directory {
                    return Err(MetaError::NotADirectory(format!("source {src}")));
                }
                let dest_parent = resolve_dir(tx, &ctx, &dest_names, "destination folder").await?;
                let existing = live_entry(tx, dest_parent, &dest_name).await?;
                if existing.is_some() && options.merge == MergeMode::Fail {
                    return Err(MetaError::Exists(format!("destination {dest}")));
                }
                if matches!(&existing, Some(e) if e.kind != NodeKind::Directory)
                    && options.merge == MergeMode::Skip
                {
                    return Err(MetaError::Exists(format!(
                        "destination {dest} is not a folder (skip would publish nothing)"
                    )));
                }
                let (renamed, copy, from) = match (options.mode, &existing) {
                    (PublishMode::Move, None) => {
                        move_entry(tx, &ctx, &src_entry, (src_parent, &src_name), (dest_parent, &dest_name), now)
                            .await?;
                        (true, None, Some((src_parent, &src_name)))
                    }
                    (PublishMode::Move, Some(_)) => {
                        let report = copy_in(
                            tx, actor, ws, View::Live, src_entry.ino, dest_parent, &dest_name, options.merge, now,
                            None,
                        )
                        .await?;
                        delete_folder(tx, &ctx, &src_entry, src_parent, &src_name, now).await?;
                        (false, Some(report), Some((src_parent, &src_name)))
                    }
                    (PublishMode::Copy, _) => {
                        let report = copy_in(
                            tx, actor, ws, View::Live, src_entry.ino, dest_parent, &dest_name, options.merge, now,
                            None,
                        )
                        .await?;
                        (false, Some(report), None)
                    }
                };
                let root = live_entry(tx, dest_parent, &dest_name)
                    .await?
                    .ok_or_else(|| MetaError::Internal("published folder has no entry".into()))?
                    .ino;
                execute(
                    tx,
                    "INSERT INTO snapshots (id, workspace_id, name, epoch, root_ino, path) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&id.0, &ws.0, &snapshot_name, &ctx.epoch, &(root.0 as i64), &dest_canonical],
                )
                .await?;
                execute(tx, "UPDATE workspaces SET epoch = epoch + 1 WHERE id = $1", &[&ws.0]).await?;
                record_snapshot_event(
                    tx,
                    ws,
                    actor,
                    "published",
                    root,
                    Some((dest_parent, &dest_name)),
                    from,
                    (Some(snapshot_name), Epoch(ctx.epoch)),
                )
                .await?;
                let row = query_opt(tx, &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1"), &[&id.0])
                    .await?
                    .ok_or_else(|| MetaError::Internal("snapshot vanished".into()))?;
                Ok(PublishReport {
                    snapshot: snapshot_from_row(&row),
                    root,
                    renamed,
                    copy,
                })
            }
            .await
        })
    }

    /// Reverts the live folder at `path` to its tree at `target`, in one transaction that
    /// writes only what changed since then (see docs/architecture.md, "Revert"): names,
    /// kinds, attributes (mode, owner, size, times but ctime) and content of every node in
    /// the folder become those at the target. Node numbers are kept (a content change gets a
    /// new content version, so caches keyed by version stay right). Snapshots are not
    /// changed: rows of earlier epochs are closed and new versions written, as any mutation
    /// does. Extended attributes are not versioned and are left as they are.
    ///
    /// What happened since the target, and what the revert does with it:
    /// - a node created in (or moved into) the folder: its name is removed (`Overwrite`;
    ///   to the trash when it was the node's last name), kept (`Skip`, unless it holds a
    ///   name the target needs... then the target's name is skipped, see below), or the
    ///   whole revert is refused with `Exists` (`Fail`: nothing is lost unless asked);
    /// - a node of the target renamed or moved within the folder: moved back;
    /// - a node of the target deleted: its name is given back (from the trash);
    /// - a node of the target moved out of the folder: the node stays where it is now and a
    ///   block-sharing copy of its state at the target is put back (the folder gets its
    ///   tree back without changing anything outside it);
    /// - attributes or content changed: set back. A node still named in the folder and also
    ///   hard-linked outside it is restored in place, so the outside name sees it too.
    ///
    /// With `Skip`, a name of the target held by a kept node is not restored (counted in
    /// `skipped`).
    ///
    /// In a project workspace (write-once) a revert that would remove or change a file with
    /// committed content, or remove a non-empty folder, is refused (`PermissionDenied`);
    /// giving back deleted files and names is allowed.
    ///
    /// Other refusals, all before anything is written: an invalid path (`InvalidName`); no
    /// live folder at `path`, an unknown snapshot, or a folder that did not exist at the
    /// target (`NotFound`); a snapshot of another folder that does not contain `path`, or an
    /// epoch that is not earlier than the current one (`InvalidArgument`); a folder at
    /// `path` that is not the one that was there at the target (deleted and made again:
    /// `Conflict`, copy it from the snapshot instead).
    ///
    /// Records exactly one event, `reverted`, with `ino` the folder and the snapshot's name
    /// (if any) and the epoch in `snapshot` / `epoch`.
    pub async fn revert(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        path: &str,
        target: RevertTarget<'_>,
        merge: MergeMode,
    ) -> Result<RevertReport, MetaError> {
        let folder_path = WorkspacePath::parse(path)?;
        let canonical = folder_path.to_string();
        if let RevertTarget::Snapshot(name) = target {
            validate_workspace_name(name)?;
        }
        let names = folder_path.names().to_vec();
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                execute(tx, "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", &[&ws.0]).await?;
                let ctx = ws_ctx(tx, ws).await?;
                let (epoch, snapshot) = match target {
                    RevertTarget::Snapshot(name) => {
                        let row = query_opt(
                            tx,
                            &format!(
                                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots \
                                 WHERE workspace_id = $1 AND name = $2 AND deleted_at IS NULL"
                            ),
                            &[&ws.0, &name],
                        )
                        .await?
                        .ok_or_else(|| MetaError::NotFound(format!("snapshot {name}")))?;
                        let snap = snapshot_from_row(&row);
                        if !crate::rules::access::covers(&snap.path, &canonical) {
                            return Err(MetaError::InvalidArgument(format!(
                                "snapshot {name} is of {} and does not contain {canonical}",
                                snap.path
                            )));
                        }
                        (snap.epoch.0, Some(name.to_string()))
                    }
                    RevertTarget::Epoch(Epoch(e)) => {
                        if e < 1 || e >= ctx.epoch {
                            return Err(MetaError::InvalidArgument(format!(
                                "epoch {e} is not an earlier epoch of the workspace (now {})",
                                ctx.epoch
                            )));
                        }
                        (e, None)
                    }
                };
                let folder = resolve_in(tx, View::Live, ctx.root, &names)
                    .await?
                    .ok_or_else(|| MetaError::NotFound(format!("folder {canonical}")))?;
                let then = resolve_in(tx, View::At(Epoch(epoch)), ctx.root, &names)
                    .await?
                    .ok_or_else(|| MetaError::NotFound(format!("{canonical} at epoch {epoch}")))?;
                if folder != then {
                    return Err(MetaError::Conflict(format!(
                        "{canonical} is another folder than at epoch {epoch} (deleted and made again?); \
                         copy it from the snapshot instead"
                    )));
                }
                live_dir(tx, &ctx, folder).await?;
                let mut report = Revert::new(&ctx, folder, epoch, merge, now)
                    .run(tx, actor)
                    .await?;
                report.snapshot = snapshot.clone();
                record_snapshot_event(
                    tx,
                    ws,
                    actor,
                    "reverted",
                    folder,
                    None,
                    None,
                    (snapshot.as_deref(), Epoch(epoch)),
                )
                .await?;
                Ok(report)
            }
            .await
        })
    }
}

async fn ensure_snapshot_name_free<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    name: &str,
) -> Result<(), MetaError> {
    let taken = query_opt(
        c,
        "SELECT 1 FROM snapshots WHERE workspace_id = $1 AND name = $2 AND deleted_at IS NULL",
        &[&ws.0, &name],
    )
    .await?;
    if taken.is_some() {
        return Err(MetaError::Exists(format!("snapshot {name}")));
    }
    Ok(())
}

/// The live folder at `names` below the workspace root, or NotFound / NotADirectory.
async fn resolve_dir<C: GenericClient>(
    c: &C,
    ctx: &WsCtx,
    names: &[Name],
    what: &str,
) -> Result<NodeId, MetaError> {
    let mut dir = ctx.root;
    for n in names {
        let entry = live_entry(c, dir, n)
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("{what} {}", n.to_string_lossy())))?;
        if entry.kind != NodeKind::Directory {
            return Err(MetaError::NotADirectory(format!(
                "{what} {}",
                n.to_string_lossy()
            )));
        }
        dir = entry.ino;
    }
    live_dir(c, ctx, dir).await?;
    Ok(dir)
}

/// The folder at `names` below `root` in `view`, if there is one.
async fn resolve_in<C: GenericClient>(
    c: &C,
    view: View,
    root: NodeId,
    names: &[Name],
) -> Result<Option<NodeId>, MetaError> {
    let mut dir = root;
    for n in names {
        let row = match view {
            View::Live => {
                query_opt(
                    c,
                    "SELECT ino, kind FROM entries WHERE parent = $1 AND name = $2 AND valid_to IS NULL",
                    &[&(dir.0 as i64), &n.as_bytes()],
                )
                .await?
            }
            View::At(Epoch(e)) => {
                query_opt(
                    c,
                    "SELECT ino, kind FROM entries WHERE parent = $1 AND name = $2 \
                     AND valid_from <= $3 AND (valid_to IS NULL OR valid_to > $3)",
                    &[&(dir.0 as i64), &n.as_bytes(), &e],
                )
                .await?
            }
        };
        match row {
            Some(r) if r.get::<_, i16>(1) == NodeKind::Directory.code() => {
                dir = NodeId(r.get::<_, i64>(0) as u64)
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// Renames folder entry `src` (at `from`) to `to`: one entry closed and one inserted, the
/// link counts and times of both parents, the node's ctime.
async fn move_entry<C: GenericClient>(
    c: &C,
    ctx: &WsCtx,
    src: &crate::meta::rows::EntryRow,
    from: (NodeId, &Name),
    to: (NodeId, &Name),
    now: crate::model::Timestamp,
) -> Result<(), MetaError> {
    close_entry(c, ctx, src.id, false).await?;
    insert_entry(c, ctx, to.0, to.1, src.ino, src.kind).await?;
    let mut node = live_inode(c, ctx, src.ino).await?;
    node.attr.ctime = now;
    write_inode(c, ctx, &node).await?;
    if from.0 == to.0 {
        let mut dir = live_inode(c, ctx, from.0).await?;
        crate::rules::touch_dir(&mut dir.attr, now, 0);
        return write_inode(c, ctx, &dir).await;
    }
    let mut old = live_inode(c, ctx, from.0).await?;
    crate::rules::touch_dir(&mut old.attr, now, -1);
    write_inode(c, ctx, &old).await?;
    let mut new = live_inode(c, ctx, to.0).await?;
    crate::rules::touch_dir(&mut new.attr, now, 1);
    write_inode(c, ctx, &new).await
}

/// Deletes folder `entry` whole (a soft delete to the trash, as `delete_path` does), after
/// its content was copied elsewhere.
async fn delete_folder<C: GenericClient>(
    c: &C,
    ctx: &WsCtx,
    entry: &crate::meta::rows::EntryRow,
    parent: NodeId,
    name: &Name,
    now: crate::model::Timestamp,
) -> Result<(), MetaError> {
    super::tree::guard_write_once_folder(c, ctx, entry.ino).await?;
    close_entry(c, ctx, entry.id, true).await?;
    let mut node = live_inode(c, ctx, entry.ino).await?;
    let before = node.attr.clone();
    crate::rules::drop_link(&mut node.attr, now);
    write_inode(c, ctx, &node).await?;
    let mut dir = live_inode(c, ctx, parent).await?;
    crate::rules::touch_dir(&mut dir.attr, now, -1);
    write_inode(c, ctx, &dir).await?;
    frame_removed(c, parent, name, entry.kind).await?;
    crate::meta::usage::record_usage(c, ctx.id, quota::change(&before, &node.attr)).await
}

/// One entry version, as the revert reads them.
#[derive(Debug, Clone)]
struct EntryVersion {
    id: i64,
    parent: NodeId,
    name: Name,
    ino: NodeId,
    kind: NodeKind,
}

fn entry_version(r: &tokio_postgres::Row) -> Result<EntryVersion, MetaError> {
    let kind: i16 = r.get(4);
    Ok(EntryVersion {
        id: r.get(0),
        parent: NodeId(r.get::<_, i64>(1) as u64),
        name: Name::from_stored(r.get(2)),
        ino: NodeId(r.get::<_, i64>(3) as u64),
        kind: NodeKind::from_code(kind).ok_or_else(|| MetaError::Internal(format!("node kind {kind}")))?,
    })
}

/// The state of one revert: the folder, the target epoch, and what the walks up the tree
/// (at the target and live) found so far, so each folder is looked up once.
struct Revert<'a> {
    ctx: &'a WsCtx,
    folder: NodeId,
    epoch: i64,
    merge: MergeMode,
    now: crate::model::Timestamp,
    /// Parent of a folder at the target (`None`: it had no entry then).
    up_then: HashMap<NodeId, Option<NodeId>>,
    /// Live parent of a folder (`None`: no live entry).
    up_live: HashMap<NodeId, Option<NodeId>>,
    /// Parents of a node's entries at the target.
    parents_then: HashMap<NodeId, Vec<NodeId>>,
    /// Nodes of the target restored as copies (they were moved out of the folder).
    copy_roots: HashSet<NodeId>,
}

impl<'a> Revert<'a> {
    fn new(
        ctx: &'a WsCtx,
        folder: NodeId,
        epoch: i64,
        merge: MergeMode,
        now: crate::model::Timestamp,
    ) -> Self {
        Revert {
            ctx,
            folder,
            epoch,
            merge,
            now,
            up_then: HashMap::new(),
            up_live: HashMap::new(),
            parents_then: HashMap::new(),
            copy_roots: HashSet::new(),
        }
    }

    /// The folders from `dir` up to the reverted folder (both included) in `view`, or `None`
    /// when `dir` is not in the folder's subtree there.
    async fn chain<C: GenericClient>(
        &mut self,
        c: &C,
        live: bool,
        dir: NodeId,
    ) -> Result<Option<Vec<NodeId>>, MetaError> {
        let mut chain = Vec::new();
        let mut cur = dir;
        loop {
            chain.push(cur);
            if cur == self.folder {
                return Ok(Some(chain));
            }
            if chain.len() > MAX_DEPTH {
                return Err(MetaError::Internal(format!(
                    "folder {dir} is nested too deep (a cycle?)"
                )));
            }
            let memo = if live { &self.up_live } else { &self.up_then };
            let up = match memo.get(&cur) {
                Some(up) => *up,
                None => {
                    let up = self.dir_parent(c, live, cur).await?;
                    if live {
                        self.up_live.insert(cur, up);
                    } else {
                        self.up_then.insert(cur, up);
                    }
                    up
                }
            };
            match up {
                Some(p) => cur = p,
                None => return Ok(None),
            }
        }
    }

    /// The parent of folder `dir` live or at the target (a folder has one entry at a time).
    async fn dir_parent<C: GenericClient>(
        &self,
        c: &C,
        live: bool,
        dir: NodeId,
    ) -> Result<Option<NodeId>, MetaError> {
        let d = dir.0 as i64;
        let row = if live {
            query_opt(
                c,
                "SELECT parent FROM entries WHERE ino = $1 AND valid_to IS NULL AND kind = 2 LIMIT 1",
                &[&d],
            )
            .await?
        } else {
            // Two indexed halves (entries_live_by_ino, entries_closed_by_ino).
            query_opt(
                c,
                "SELECT parent FROM entries WHERE ino = $1 AND kind = 2 AND valid_to IS NULL AND valid_from <= $2 \
                 UNION ALL \
                 SELECT parent FROM entries WHERE ino = $1 AND kind = 2 AND valid_to IS NOT NULL \
                 AND valid_to > $2 AND valid_from <= $2 LIMIT 1",
                &[&d, &self.epoch],
            )
            .await?
        };
        Ok(row.map(|r| NodeId(r.get::<_, i64>(0) as u64)))
    }

    /// Parents of node `ino`'s entries at the target.
    async fn parents_then<C: GenericClient>(&mut self, c: &C, ino: NodeId) -> Result<Vec<NodeId>, MetaError> {
        if let Some(p) = self.parents_then.get(&ino) {
            return Ok(p.clone());
        }
        let rows = query(
            c,
            "SELECT parent FROM entries WHERE ino = $1 AND valid_to IS NULL AND valid_from <= $2 \
             UNION ALL \
             SELECT parent FROM entries WHERE ino = $1 AND valid_to IS NOT NULL AND valid_to > $2 AND valid_from <= $2",
            &[&(ino.0 as i64), &self.epoch],
        )
        .await?;
        let parents: Vec<NodeId> = rows.iter().map(|r| NodeId(r.get::<_, i64>(0) as u64)).collect();
        self.parents_then.insert(ino, parents.clone());
        Ok(parents)
    }

    /// Whether node `ino` was in the folder's tree at the target.
    async fn was_in<C: GenericClient>(&mut self, c: &C, ino: NodeId) -> Result<bool, MetaError> {
        if ino == self.folder {
            return Ok(true);
        }
        for p in self.parents_then(c, ino).await? {
            if self.chain(c, false, p).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether folder `dir` of the target is restored in place: in the folder's tree at the
    /// target and not below a node restored as a copy.
    async fn dir_in_place<C: GenericClient>(&mut self, c: &C, dir: NodeId) -> Result<bool, MetaError> {
        Ok(match self.chain(c, false, dir).await? {
            Some(chain) => !chain.iter().any(|d| self.copy_roots.contains(d)),
            None => false,
        })
    }

    /// Whether node `ino` of the target is restored in place (see [`Self::dir_in_place`]).
    async fn node_in_place<C: GenericClient>(&mut self, c: &C, ino: NodeId) -> Result<bool, MetaError> {
        if ino == self.folder {
            return Ok(true);
        }
        if self.copy_roots.contains(&ino) {
            return Ok(false);
        }
        for p in self.parents_then(c, ino).await? {
            if self.dir_in_place(c, p).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn run<C: GenericClient>(mut self, c: &C, actor: &Actor) -> Result<RevertReport, MetaError> {
        let ctx = self.ctx;
        let e = self.epoch;
        let mut report = RevertReport {
            root: self.folder,
            epoch: Epoch(e),
            snapshot: None,
            removed: 0,
            moved_back: 0,
            restored: 0,
            copied: 0,
            updated: 0,
            kept: 0,
            skipped: 0,
            rows_written: 0,
        };
        // The rows that changed after the target, workspace-wide, by the indexes of
        // migration 14: entries visible then and ended since ("gone"), live entries born
        // since ("born"), live inodes written since.
        let gone = query(
            c,
            "SELECT id, parent, name, ino, kind FROM entries WHERE workspace_id = $1 \
             AND valid_to IS NOT NULL AND valid_to > $2 AND valid_from <= $2 ORDER BY id",
            &[&ctx.id.0, &e],
        )
        .await?
        .iter()
        .map(entry_version)
        .collect::<Result<Vec<_>, _>>()?;
        let born = query(
            c,
            "SELECT id, parent, name, ino, kind FROM entries WHERE workspace_id = $1 \
             AND valid_from > $2 AND valid_to IS NULL ORDER BY id",
            &[&ctx.id.0, &e],
        )
        .await?
        .iter()
        .map(entry_version)
        .collect::<Result<Vec<_>, _>>()?;
        let changed_inodes: Vec<NodeId> = query(
            c,
            "SELECT ino FROM inodes WHERE workspace_id = $1 AND valid_from > $2 AND valid_to IS NULL ORDER BY ino",
            &[&ctx.id.0, &e],
        )
        .await?
        .iter()
        .map(|r| NodeId(r.get::<_, i64>(0) as u64))
        .collect();

        // Names of the target in the folder that are gone now.
        let mut to_restore: Vec<EntryVersion> = Vec::new();
        for g in gone {
            if self.chain(c, false, g.parent).await?.is_some() {
                to_restore.push(g);
            }
        }
        // Nodes that lost such a name and live on only outside the folder are restored as
        // copies; what was below them then comes with the copy.
        for g in &to_restore {
            if self.copy_roots.contains(&g.ino) {
                continue;
            }
            let live_parents: Vec<NodeId> = query(
                c,
                "SELECT parent FROM entries WHERE ino = $1 AND valid_to IS NULL",
                &[&(g.ino.0 as i64)],
            )
            .await?
            .iter()
            .map(|r| NodeId(r.get::<_, i64>(0) as u64))
            .collect();
            for p in live_parents {
                let inside =
                    self.chain(c, true, p).await?.is_some() || self.chain(c, false, p).await?.is_some();
                if !inside {
                    self.copy_roots.insert(g.ino);
                    break;
                }
            }
        }
        let mut restore_in_place = Vec::new();
        let mut restore_as_copy = Vec::new();
        for g in to_restore {
            if !self.dir_in_place(c, g.parent).await? {
                continue;
            }
            if self.copy_roots.contains(&g.ino) {
                restore_as_copy.push(g);
            } else {
                restore_in_place.push(g);
            }
        }

        // Names born since the target, in the folder (or in a folder of the target that is
        // coming back).
        let wanted: HashSet<(NodeId, Name, NodeId)> = restore_in_place
            .iter()
            .map(|g| (g.parent, g.name.clone(), g.ino))
            .collect();
        let mut unchanged: HashSet<(NodeId, Name)> = HashSet::new();
        let mut to_close: Vec<(EntryVersion, bool)> = Vec::new();
        let mut kept_names: HashSet<(NodeId, Name)> = HashSet::new();
        let mut subdir_delta: HashMap<NodeId, i64> = HashMap::new();
        let mut conflicts = Vec::new();
        for b in born {
            let parent_back = self.dir_in_place(c, b.parent).await?;
            if !parent_back && self.chain(c, true, b.parent).await?.is_none() {
                continue; // outside the folder
            }
            if wanted.contains(&(b.parent, b.name.clone(), b.ino)) {
                // Removed and given back the same name since: nothing to do.
                unchanged.insert((b.parent, b.name.clone()));
                continue;
            }
            if self.was_in(c, b.ino).await? {
                to_close.push((b, false));
                continue;
            }
            if !parent_back {
                continue; // below a new folder that goes (or stays) as a whole
            }
            match self.merge {
                MergeMode::Fail => conflicts.push(b.name.to_string_lossy()),
                MergeMode::Overwrite => to_close.push((b, true)),
                MergeMode::Skip => {
                    if b.kind == NodeKind::Directory {
                        *subdir_delta.entry(b.parent).or_default() += 1;
                    }
                    kept_names.insert((b.parent, b.name.clone()));
                    report.kept += 1;
                }
            }
        }
        if !conflicts.is_empty() {
            conflicts.sort();
            return Err(MetaError::Exists(format!(
                "created since the target and would be removed (use the overwrite or skip merge mode): {}",
                conflicts.join(", ")
            )));
        }
        restore_in_place.retain(|g| !unchanged.contains(&(g.parent, g.name.clone())));
        restore_in_place.retain(|g| {
            let skip = kept_names.contains(&(g.parent, g.name.clone()));
            if skip {
                report.skipped += 1;
                if g.kind == NodeKind::Directory {
                    *subdir_delta.entry(g.parent).or_default() -= 1;
                }
            }
            !skip
        });
        restore_as_copy.retain(|g| {
            let skip = kept_names.contains(&(g.parent, g.name.clone()));
            if skip {
                report.skipped += 1;
                if g.kind == NodeKind::Directory {
                    *subdir_delta.entry(g.parent).or_default() -= 1;
                }
            }
            !skip
        });

        // Nodes whose attributes and content go back to the target's.
        let mut restore_nodes: Vec<NodeId> = Vec::new();
        let mut seen = HashSet::new();
        let candidates = changed_inodes
            .iter()
            .copied()
            .chain(restore_in_place.iter().map(|g| g.ino))
            .chain(to_close.iter().filter(|(_, leaves)| !leaves).map(|(b, _)| b.ino));
        let candidates: Vec<NodeId> = candidates.collect();
        for ino in candidates {
            if seen.insert(ino) && self.node_in_place(c, ino).await? {
                restore_nodes.push(ino);
            }
        }
        // Nodes that lose a name and were not in the folder at the target.
        let restoring: HashSet<NodeId> = restore_nodes.iter().copied().collect();
        let mut leaving: Vec<NodeId> = to_close
            .iter()
            .filter(|(_, leaves)| *leaves)
            .map(|(b, _)| b.ino)
            .filter(|ino| !restoring.contains(ino))
            .collect();
        leaving.sort_unstable();
        leaving.dedup();

        // Write-once: check everything that would be removed or changed before writing.
        let mut usage = UsageChange::default();
        let mut leaving_rows = Vec::new();
        for ino in &leaving {
            let row = live_inode(c, ctx, *ino).await?;
            if row.attr.kind == NodeKind::Directory {
                super::tree::guard_write_once_folder(c, ctx, *ino).await?;
            }
            guard_write_once(ctx, &row.attr, "revert (remove)")?;
            leaving_rows.push(row);
        }

        // 1. Names that go.
        for (b, leaves) in &to_close {
            close_entry(c, ctx, b.id, *leaves).await?;
            frame_removed(c, b.parent, &b.name, b.kind).await?;
            report.rows_written += 1;
            if *leaves {
                report.removed += 1;
            } else {
                report.moved_back += 1;
            }
        }
        // 2. Names that come back, in place.
        for g in &restore_in_place {
            insert_entry(c, ctx, g.parent, &g.name, g.ino, g.kind).await?;
            frame_added(c, g.parent, &g.name, g.kind).await?;
            report.rows_written += 1;
            report.restored += 1;
        }
        // 3. Attributes and content, now that the names are right.
        let mut final_rows: HashMap<NodeId, InodeRow> = HashMap::new();
        for ino in &restore_nodes {
            let (row, written) = self
                .restore_node(c, *ino, subdir_delta.get(ino).copied().unwrap_or(0))
                .await?;
            usage += row.1;
            report.rows_written += written;
            if written > 0 {
                report.updated += 1;
            }
            final_rows.insert(*ino, row.0);
        }
        for mut row in leaving_rows {
            let before = row.attr.clone();
            row.attr.nlink = if row.attr.kind == NodeKind::Directory {
                0
            } else {
                live_names(c, row.attr.ino).await?
            };
            row.attr.ctime = self.now;
            usage += quota::change(&before, &row.attr);
            write_inode(c, ctx, &row).await?;
            report.rows_written += inode_rows(ctx, &row);
        }
        // 4. Nodes moved out since: block-sharing copies of their state at the target. The
        // copy touches its parent's link count and times; the parent's restored row is
        // written again after it.
        let mut reparents = HashSet::new();
        for g in &restore_as_copy {
            let copied = copy_in(
                c,
                actor,
                ctx.id,
                View::At(Epoch(e)),
                g.ino,
                g.parent,
                &g.name,
                MergeMode::Fail,
                self.now,
                None,
            )
            .await?;
            report.copied += copied.copied;
            report.rows_written += copied.copied;
            reparents.insert(g.parent);
            if let Some(root) = copied.root {
                self.restore_copy_times(c, g.ino, root).await?;
            }
        }
        for dir in reparents {
            match final_rows.get(&dir) {
                Some(row) => {
                    let mut live = live_inode(c, ctx, dir).await?;
                    live.attr = row.attr.clone();
                    write_inode(c, ctx, &live).await?;
                    report.rows_written += 1;
                }
                None => {
                    // Not otherwise changed: back to its row at the target, as it was.
                    let ((_, change), written) = self
                        .restore_node(c, dir, subdir_delta.get(&dir).copied().unwrap_or(0))
                        .await?;
                    usage += change;
                    report.rows_written += written;
                }
            }
        }
        charge(c, ctx, usage).await?;
        Ok(report)
    }

    /// Gives the folders and symlinks of a copy made from the target (`then`, copied to
    /// `copy`) their mtimes at the target (a copy stamps them now; files keep theirs). The
    /// rows are this epoch's, written in place.
    async fn restore_copy_times<C: GenericClient>(
        &mut self,
        c: &C,
        then: NodeId,
        copy: NodeId,
    ) -> Result<(), MetaError> {
        let mut stack = vec![(then, copy)];
        while let Some((from, to)) = stack.pop() {
            let Some(old) = inode_in_view(c, View::At(Epoch(self.epoch)), from).await? else {
                continue;
            };
            if old.attr.kind == NodeKind::File {
                continue;
            }
            let mut row = live_inode(c, self.ctx, to).await?;
            row.attr.mtime = old.attr.mtime;
            write_inode(c, self.ctx, &row).await?;
            if old.attr.kind != NodeKind::Directory {
                continue;
            }
            let children = query(
                c,
                "SELECT name, ino FROM entries WHERE parent = $1 AND kind <> 1 \
                 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)",
                &[&(from.0 as i64), &self.epoch],
            )
            .await?;
            for r in &children {
                let name = Name::from_stored(r.get(0));
                if let Some(e) = live_entry(c, to, &name).await? {
                    stack.push((NodeId(r.get::<_, i64>(1) as u64), e.ino));
                }
            }
        }
        Ok(())
    }

    /// Sets node `ino`'s live row back to its row at the target: attributes but ctime (now)
    /// and the link count (counted now for files; the target's plus `subdir_delta` for
    /// folders), and for a file the block map (a changed content gets a new content
    /// version). Returns the row written with its usage change, and how many rows it wrote.
    async fn restore_node<C: GenericClient>(
        &mut self,
        c: &C,
        ino: NodeId,
        subdir_delta: i64,
    ) -> Result<((InodeRow, UsageChange), u64), MetaError> {
        let ctx = self.ctx;
        let e = self.epoch;
        let then = inode_in_view(c, View::At(Epoch(e)), ino).await?.ok_or_else(|| {
            MetaError::NotFound(format!(
                "node {ino} at epoch {e} (its history was purged; revert to a retained snapshot)"
            ))
        })?;
        let mut row = live_inode(c, ctx, ino).await?;
        let before = row.attr.clone();
        let mut attr = then.attr.clone();
        attr.ctime = self.now;
        attr.content_version = before.content_version;
        attr.nlink = match attr.kind {
            NodeKind::Directory => (i64::from(then.attr.nlink) + subdir_delta).max(2) as u32,
            _ => live_names(c, ino).await?,
        };
        let mut written = 0;
        if attr.kind == NodeKind::File {
            let changes = block_map_changes(c, ino, e).await?;
            if !changes.is_empty() || before.size != then.attr.size {
                guard_write_once(ctx, &before, "revert (overwrite)")?;
                for (idx, block, live_from) in &changes {
                    set_block(c, ctx, ino, *idx, block.as_ref()).await?;
                    // An earlier epoch's row is closed (and a new one written); this
                    // epoch's is changed in place.
                    written += match (live_from, block) {
                        (Some(from), Some(_)) if *from < ctx.epoch => 2,
                        _ => 1,
                    };
                }
                attr.content_version = before.content_version + 1;
            }
        }
        let unchanged = {
            let mut a = attr.clone();
            a.ctime = before.ctime;
            a == before
        };
        if unchanged && written == 0 {
            return Ok(((row, UsageChange::default()), 0));
        }
        row.attr = attr;
        write_inode(c, ctx, &row).await?;
        written += inode_rows(ctx, &row);
        Ok(((row.clone(), quota::change(&before, &row.attr)), written))
    }
}

/// Rows a `write_inode` of `row` writes: one updated in place, or one closed and one inserted.
fn inode_rows(ctx: &WsCtx, row: &InodeRow) -> u64 {
    if row.valid_from == ctx.epoch { 1 } else { 2 }
}

/// How many live names node `ino` has.
async fn live_names<C: GenericClient>(c: &C, ino: NodeId) -> Result<u32, MetaError> {
    let row = query_opt(
        c,
        "SELECT count(*) FROM entries WHERE ino = $1 AND valid_to IS NULL",
        &[&(ino.0 as i64)],
    )
    .await?
    .ok_or_else(|| MetaError::Internal("count returned nothing".into()))?;
    Ok(row.get::<_, i64>(0) as u32)
}

type BlockSlot = Option<([u8; 32], u64)>;

/// A block map by index: (hash, valid length) and the epoch the row was born in.
type BlockRows = HashMap<u64, (([u8; 32], u64), i64)>;

/// The block-map changes that give file `ino` its content at epoch `e` back: every index
/// whose live block differs from the one then (`None`: a hole now), with the epoch the live
/// row of that index was born in, if there is one.
async fn block_map_changes<C: GenericClient>(
    c: &C,
    ino: NodeId,
    e: i64,
) -> Result<Vec<(u64, BlockSlot, Option<i64>)>, MetaError> {
    let i = ino.0 as i64;
    let read = |rows: Vec<tokio_postgres::Row>| -> Result<BlockRows, MetaError> {
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = r.get(1);
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| MetaError::Internal("block hash is not 32 bytes".into()))?;
                Ok((
                    r.get::<_, i64>(0) as u64,
                    ((hash, r.get::<_, i64>(2) as u64), r.get(3)),
                ))
            })
            .collect()
    };
    let then = read(
        query(
            c,
            "SELECT idx, hash, len, valid_from FROM file_blocks WHERE ino = $1 AND valid_from <= $2 \
             AND (valid_to IS NULL OR valid_to > $2)",
            &[&i, &e],
        )
        .await?,
    )?;
    let live = read(
        query(
            c,
            "SELECT idx, hash, len, valid_from FROM file_blocks WHERE ino = $1 AND valid_to IS NULL",
            &[&i],
        )
        .await?,
    )?;
    let mut changes: Vec<(u64, BlockSlot, Option<i64>)> = Vec::new();
    for (idx, (block, _)) in &then {
        let now = live.get(idx);
        if now.map(|n| &n.0) != Some(block) {
            changes.push((*idx, Some(*block), now.map(|n| n.1)));
        }
    }
    for (idx, (_, from)) in &live {
        if !then.contains_key(idx) {
            changes.push((*idx, None, Some(*from)));
        }
    }
    changes.sort_unstable_by_key(|c| c.0);
    Ok(changes)
}
