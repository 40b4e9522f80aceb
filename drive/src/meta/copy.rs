//! Copy of a subtree that shares content: new nodes, the same blocks (no data copied).
//!
//! Conflicts are decided per path by [`MergeMode`]: folders always merge; a file (or any
//! non-folder) that exists at the destination makes the whole copy fail, is replaced, or is
//! skipped. The copy is one transaction: with `Fail`, a conflict anywhere writes nothing.

use std::collections::BTreeSet;

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::rows::{
    WsCtx, close_entry, guard_write_once, inode_in_view, insert_entry, insert_inode, live_dir, live_entry,
    live_inode, query, record_event, write_inode, ws_ctx,
};
use crate::meta::sequences::{frame_added, frame_removed};
use crate::meta::usage::charge;
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{
    Actor, Attr, Epoch, MergeMode, Name, NewNode, NodeId, NodeKind, Timestamp, View, WorkspaceId,
};
use crate::rules::quota::{self, UsageChange};

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The node at the destination path.
    pub root: Option<NodeId>,
    /// Nodes created.
    pub copied: u64,
    /// Existing files replaced (`Overwrite`).
    pub replaced: u64,
    /// Source files left out because the destination existed (`Skip`).
    pub skipped: u64,
}

impl PgMetaStore {
    /// Copies the node `src` as seen in `src_view` (the live tree, or a snapshot: a restore) to
    /// `dst_parent/dst_name` in the live tree of `ws`. The copies are charged to the
    /// workspace's usage (they share blocks, but each is a file of its own): a copy that
    /// would take the workspace above its quota fails with `QuotaExceeded`.
    #[allow(clippy::too_many_arguments)]
    pub async fn copy(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        src_view: View,
        src: NodeId,
        dst_parent: NodeId,
        dst_name: &Name,
        merge: MergeMode,
    ) -> Result<CopyReport, MetaError> {
        let now = self.clock.now();
        in_txn!(self, |tx| {
            async {
                copy_in(
                    tx,
                    actor,
                    ws,
                    src_view,
                    src,
                    dst_parent,
                    dst_name,
                    merge,
                    now,
                    Some("copy"),
                )
                .await
            }
            .await
        })
    }
}

/// [`PgMetaStore::copy`] in the caller's transaction, recorded as event `op` (no event for
/// `None`: the caller records the one event of a larger operation, e.g. a publish).
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_in<C: GenericClient>(
    tx: &C,
    actor: &Actor,
    ws: WorkspaceId,
    src_view: View,
    src: NodeId,
    dst_parent: NodeId,
    dst_name: &Name,
    merge: MergeMode,
    now: Timestamp,
    op: Option<&str>,
) -> Result<CopyReport, MetaError> {
    let ctx = ws_ctx(tx, ws).await?;
    live_dir(tx, &ctx, dst_parent).await?;
    let root = inode_in_view(tx, src_view, src)
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("node {src}")))?;
    if root.workspace != ctx.id {
        return Err(MetaError::NotFound(format!("node {src}")));
    }
    if root.attr.kind == NodeKind::Directory && src_view == View::Live {
        super::tree::ensure_not_ancestor(tx, src, dst_parent).await?;
    }
    let mut report = CopyReport::default();
    let mut usage = UsageChange::default();
    let mut touched = BTreeSet::new();
    let mut stack = vec![(src, dst_parent, dst_name.clone())];
    while let Some((from, parent, name)) = stack.pop() {
        let node = inode_in_view(tx, src_view, from)
            .await?
            .ok_or_else(|| MetaError::Internal(format!("node {from} vanished during copy")))?;
        let existing = live_entry(tx, parent, &name).await?;
        let target = match &existing {
            Some(e) if e.kind == NodeKind::Directory && node.attr.kind == NodeKind::Directory => e.ino,
            Some(e) => match merge {
                MergeMode::Fail => return Err(MetaError::Exists(name.to_string_lossy())),
                MergeMode::Skip => {
                    report.skipped += 1;
                    continue;
                }
                MergeMode::Overwrite => {
                    let mut old = live_inode(tx, &ctx, e.ino).await?;
                    guard_write_once(&ctx, &old.attr, "overwrite")?;
                    let replaces_folder = old.attr.kind == NodeKind::Directory;
                    if replaces_folder {
                        super::tree::guard_write_once_folder(tx, &ctx, e.ino).await?;
                    }
                    let before = old.attr.clone();
                    close_entry(tx, &ctx, e.id, true).await?;
                    if replaces_folder {
                        // The folder's ".." link to its parent goes with it.
                        let mut p = live_inode(tx, &ctx, parent).await?;
                        p.attr.nlink = p.attr.nlink.saturating_sub(1);
                        write_inode(tx, &ctx, &p).await?;
                    }
                    old.attr.nlink = if replaces_folder {
                        0
                    } else {
                        old.attr.nlink.saturating_sub(1)
                    };
                    old.attr.ctime = now;
                    usage += quota::change(&before, &old.attr);
                    write_inode(tx, &ctx, &old).await?;
                    frame_removed(tx, parent, &name, e.kind).await?;
                    report.replaced += 1;
                    let copied = copy_node(tx, &ctx, src_view, &node, parent, &name, now).await?;
                    usage += quota::charge(&copied);
                    copied.ino
                }
            },
            None => {
                let copied = copy_node(tx, &ctx, src_view, &node, parent, &name, now).await?;
                usage += quota::charge(&copied);
                copied.ino
            }
        };
        if !matches!(&existing, Some(e) if e.kind == NodeKind::Directory) {
            report.copied += 1;
            touched.insert(parent);
        }
        if report.root.is_none() {
            report.root = Some(target);
        }
        if node.attr.kind == NodeKind::Directory {
            for (child, _) in children(tx, src_view, from).await? {
                stack.push((child.1, target, child.0));
            }
        }
    }
    for dir in touched {
        let mut d = live_inode(tx, &ctx, dir).await?;
        d.attr.mtime = now;
        d.attr.ctime = now;
        write_inode(tx, &ctx, &d).await?;
    }
    charge(tx, &ctx, usage).await?;
    if let Some(op) = op {
        record_event(
            tx,
            ctx.id,
            actor,
            op,
            report.root,
            Some(dst_parent),
            Some(dst_name),
        )
        .await?;
    }
    Ok(report)
}

/// Creates a copy of `node` (attributes, symlink target, block map) at `parent/name`;
/// returns the copy's attributes.
async fn copy_node<C: GenericClient>(
    c: &C,
    ctx: &WsCtx,
    src_view: View,
    node: &super::rows::InodeRow,
    parent: NodeId,
    name: &Name,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let a = &node.attr;
    let spec = NewNode {
        kind: a.kind,
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        symlink_target: node.symlink_target.clone(),
    };
    let mut attr = insert_inode(c, ctx, &spec, now).await?;
    insert_entry(c, ctx, parent, name, attr.ino, attr.kind).await?;
    if a.kind == NodeKind::Directory {
        let mut p = live_inode(c, ctx, parent).await?;
        p.attr.nlink += 1;
        write_inode(c, ctx, &p).await?;
    }
    if a.kind == NodeKind::File {
        let e = match src_view {
            View::Live => i64::MAX,
            View::At(Epoch(e)) => e,
        };
        query(
            c,
            "INSERT INTO file_blocks (ino, idx, valid_from, hash, len) \
             SELECT $1, idx, $2, hash, len FROM file_blocks \
             WHERE ino = $3 AND valid_from <= $4 AND (valid_to IS NULL OR valid_to > $4)",
            &[&(attr.ino.0 as i64), &ctx.epoch, &(a.ino.0 as i64), &e],
        )
        .await?;
        attr.size = a.size;
        attr.mtime = a.mtime;
        attr.content_version = 1;
        let row = super::rows::InodeRow {
            attr: attr.clone(),
            workspace: ctx.id,
            valid_from: ctx.epoch,
            symlink_target: None,
        };
        write_inode(c, ctx, &row).await?;
        frame_added(c, parent, name, attr.kind).await?;
    }
    Ok(attr)
}

/// The (name, node) children of a folder in `view`.
async fn children<C: GenericClient>(
    c: &C,
    view: View,
    dir: NodeId,
) -> Result<Vec<((Name, NodeId), NodeKind)>, MetaError> {
    let e = match view {
        View::Live => i64::MAX,
        View::At(Epoch(e)) => e,
    };
    let rows = query(
        c,
        "SELECT name, ino, kind FROM entries WHERE parent = $1 \
         AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2) ORDER BY name",
        &[&(dir.0 as i64), &e],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let kind: i16 = r.get(2);
            Ok((
                (Name::from_stored(r.get(0)), NodeId(r.get::<_, i64>(1) as u64)),
                NodeKind::from_code(kind).ok_or_else(|| MetaError::Internal(format!("node kind {kind}")))?,
            ))
        })
        .collect()
}
