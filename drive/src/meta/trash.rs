//! The trash: soft-deleted files, folders and links stay restorable until the lifecycle purge
//! removes them (`meta/purge.rs`). A deleted entry keeps its node and everything below it, so
//! a restore copies that node back into the live tree with the merge modes of copy (sharing
//! blocks, no data copied) and takes the entry out of the trash, in one transaction.

use std::time::SystemTime;

use crate::error::MetaError;
use crate::meta::copy::{CopyReport, copy_in};
use crate::meta::rows::{execute, from_system_time, query, query_opt, ws_ctx};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Actor, MergeMode, Name, NodeId, NodeKind, Timestamp, View, WorkspaceId, WorkspaceKind};

/// One item of a workspace's trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashItem {
    /// What `trash restore` names it by.
    pub id: i64,
    /// Where it was deleted from; `None` when a folder above it is gone for good.
    pub path: Option<String>,
    pub ino: NodeId,
    pub kind: &'static str,
    /// Logical size of a file (0 for folders).
    pub size: u64,
    pub deleted_at: Timestamp,
}

fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Directory => "folder",
        NodeKind::File => "file",
        NodeKind::Symlink => "symlink",
        _ => "special",
    }
}

impl PgMetaStore {
    /// The trash of `ws`, newest first: at most `limit` items, only those deleted at or below
    /// `under` when given.
    pub async fn trash_list(
        &self,
        ws: WorkspaceId,
        under: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TrashItem>, MetaError> {
        let under = under
            .map(crate::model::WorkspacePath::parse)
            .transpose()?
            .map(|p| p.to_string());
        let root = self.get_workspace_by_id(ws).await?.root;
        let client = self.client().await?;
        let mut items = Vec::new();
        let mut older_than: Option<(SystemTime, i64)> = None;
        while items.len() < limit {
            let (at, id) = older_than.unwrap_or((
                SystemTime::now() + std::time::Duration::from_secs(86_400),
                i64::MAX,
            ));
            let rows = query(
                &client,
                "SELECT e.id, e.parent, e.name, e.ino, e.kind, e.deleted_at, i.size FROM entries e \
                 JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL \
                 WHERE e.workspace_id = $1 AND e.deleted_at IS NOT NULL AND (e.deleted_at, e.id) < ($2, $3) \
                 ORDER BY e.deleted_at DESC, e.id DESC LIMIT 200",
                &[&ws.0, &at, &id],
            )
            .await?;
            let Some(last) = rows.last() else { break };
            older_than = Some((last.get(5), last.get(0)));
            for row in &rows {
                let name = Name::from_stored(row.get(2));
                let path = self
                    .entry_path(root, NodeId(row.get::<_, i64>(1) as u64), &name)
                    .await?;
                let shown = match (&under, &path) {
                    (None, _) => true,
                    (Some(prefix), Some(path)) => crate::rules::access::covers(prefix, path),
                    (Some(_), None) => false,
                };
                if !shown {
                    continue;
                }
                let kind: i16 = row.get(4);
                let kind = NodeKind::from_code(kind)
                    .ok_or_else(|| MetaError::Internal(format!("node kind {kind}")))?;
                items.push(TrashItem {
                    id: row.get(0),
                    path,
                    ino: NodeId(row.get::<_, i64>(3) as u64),
                    kind: kind_name(kind),
                    size: if kind == NodeKind::File {
                        row.get::<_, i64>(6) as u64
                    } else {
                        0
                    },
                    deleted_at: from_system_time(row.get::<_, SystemTime>(5)),
                });
                if items.len() == limit {
                    break;
                }
            }
        }
        Ok(items)
    }

    /// Restores trash item `id` of `ws` to the path it was deleted from, or to `to`, with
    /// the merge modes of copy when something is there now. The destination's folder must
    /// exist in the live tree (a folder restored or recreated at the same path counts). The
    /// item leaves the trash; its old rows are purged later like any history no snapshot
    /// shows.
    pub async fn trash_restore(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        id: i64,
        to: Option<&str>,
        merge: MergeMode,
    ) -> Result<CopyReport, MetaError> {
        let now = self.clock.now();
        let gone = || MetaError::NotFound(format!("trash item {id} (restored or purged already?)"));
        let item = self.trash_item(ws, id).await?.ok_or_else(gone)?;
        let dest = match to {
            Some(to) => to.to_string(),
            None => {
                let root = self.get_workspace_by_id(ws).await?.root;
                self.entry_path(root, item.0, &item.1).await?.ok_or_else(|| {
                    MetaError::NotFound(format!(
                        "the folder trash item {id} was deleted from is gone for good: give a destination"
                    ))
                })?
            }
        };
        let names = crate::model::WorkspacePath::parse(&dest)?.into_names();
        let (last, folders) = names
            .split_last()
            .ok_or_else(|| MetaError::InvalidArgument("cannot restore over the workspace root".into()))?;
        in_txn!(self, |tx| {
            async {
                let ctx = ws_ctx(tx, ws).await?;
                // Still in the trash now that the transaction reads it.
                let src = self.trash_item_in(tx, ws, id).await?.ok_or_else(gone)?.2;
                let mut parent = ctx.root;
                for folder in folders {
                    let entry = crate::meta::rows::live_entry(tx, parent, folder)
                        .await?
                        .ok_or_else(|| MetaError::NotFound(format!("folder {dest} to restore into")))?;
                    if entry.kind != NodeKind::Directory {
                        return Err(MetaError::NotADirectory(folder.to_string_lossy()));
                    }
                    parent = entry.ino;
                }
                let report = copy_in(
                    tx,
                    actor,
                    ws,
                    View::Live,
                    src,
                    parent,
                    last,
                    merge,
                    now,
                    Some("restore"),
                )
                .await?;
                execute(tx, "UPDATE entries SET deleted_at = NULL WHERE id = $1", &[&id]).await?;
                Ok(report)
            }
            .await
        })
    }

    /// (folder, name, node) of trash item `id` of `ws`, if it is still in the trash.
    async fn trash_item(
        &self,
        ws: WorkspaceId,
        id: i64,
    ) -> Result<Option<(NodeId, Name, NodeId)>, MetaError> {
        let client = self.client().await?;
        self.trash_item_in(&client, ws, id).await
    }

    async fn trash_item_in<C: deadpool_postgres::GenericClient>(
        &self,
        c: &C,
        ws: WorkspaceId,
        id: i64,
    ) -> Result<Option<(NodeId, Name, NodeId)>, MetaError> {
        let row = query_opt(
            c,
            "SELECT parent, name, ino FROM entries WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NOT NULL",
            &[&id, &ws.0],
        )
        .await?;
        Ok(row.map(|r| {
            (
                NodeId(r.get::<_, i64>(0) as u64),
                Name::from_stored(r.get(1)),
                NodeId(r.get::<_, i64>(2) as u64),
            )
        }))
    }

    /// Soft-deleted workspaces not yet purged, newest first: (id, name, kind, deleted at).
    pub async fn deleted_workspace_list(
        &self,
    ) -> Result<Vec<(WorkspaceId, String, WorkspaceKind, Timestamp)>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT id, name, kind, deleted_at FROM workspaces WHERE deleted_at IS NOT NULL \
             ORDER BY deleted_at DESC",
            &[],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.get(2);
                Ok((
                    WorkspaceId(r.get(0)),
                    r.get(1),
                    WorkspaceKind::parse(&kind)
                        .ok_or_else(|| MetaError::Internal(format!("workspace kind {kind}")))?,
                    from_system_time(r.get::<_, SystemTime>(3)),
                ))
            })
            .collect()
    }

    /// Brings a soft-deleted workspace back, under its own name or `rename` (a live
    /// workspace with that name makes it `Exists`), with everything it held.
    pub async fn restore_workspace(
        &self,
        actor: &Actor,
        id: WorkspaceId,
        rename: Option<&str>,
    ) -> Result<(), MetaError> {
        if let Some(name) = rename {
            crate::model::validate_workspace_name(name)?;
        }
        in_txn!(self, |tx| {
            async {
                let restored = execute(
                    tx,
                    "UPDATE workspaces SET deleted_at = NULL, name = COALESCE($2, name) \
                     WHERE id = $1 AND deleted_at IS NOT NULL",
                    &[&id.0, &rename],
                )
                .await?;
                if restored == 0 {
                    return Err(MetaError::NotFound(format!(
                        "deleted workspace {id} (restored or purged already?)"
                    )));
                }
                crate::meta::rows::record_event(tx, id, actor, "workspace.restore", None, None, None).await
            }
            .await
        })
    }
}
