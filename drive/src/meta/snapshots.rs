//! Snapshots: O(1) to take (one row and an epoch bump, no rows copied), read through
//! `View::At(epoch)`, soft-deleted on delete (GC reclaims the versions only they kept).

use std::time::SystemTime;

use tokio_postgres::Row;

use crate::error::MetaError;
use crate::meta::rows::{execute, from_system_time, query, query_opt, record_event, ws_ctx};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{
    Actor, Epoch, NodeId, NodeKind, Snapshot, SnapshotId, Usage, View, WorkspaceId, validate_workspace_name,
};

pub(super) const SNAPSHOT_COLUMNS: &str = "id, workspace_id, name, epoch, root_ino, path, created_at";

pub(super) fn snapshot_from_row(row: &Row) -> Snapshot {
    Snapshot {
        id: SnapshotId(row.get(0)),
        workspace: WorkspaceId(row.get(1)),
        name: row.get(2),
        epoch: Epoch(row.get(3)),
        root: NodeId(row.get::<_, i64>(4) as u64),
        path: row.get(5),
        created_at: from_system_time(row.get::<_, SystemTime>(6)),
    }
}

impl PgMetaStore {
    /// Takes a snapshot named `name` of the folder at `path` ("/" for the whole workspace).
    /// Constant time whatever the size of the tree.
    pub async fn create_snapshot(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        name: &str,
        path: &str,
    ) -> Result<Snapshot, MetaError> {
        validate_workspace_name(name)?;
        let path = crate::model::WorkspacePath::parse(path)?;
        let canonical = path.to_string();
        let names = path.into_names();
        let id = SnapshotId(uuid::Uuid::new_v4());
        in_txn!(self, |tx| {
            async {
                // Exclusive before the shared read of ws_ctx: waits for the mutations in flight
                // (see WsCtx), and two snapshots never both hold it shared and then deadlock
                // upgrading it.
                execute(tx, "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", &[&ws.0]).await?;
                let ctx = ws_ctx(tx, ws).await?;
                if query_opt(
                    tx,
                    "SELECT 1 FROM snapshots WHERE workspace_id = $1 AND name = $2 AND deleted_at IS NULL",
                    &[&ws.0, &name],
                )
                .await?
                .is_some()
                {
                    return Err(MetaError::Exists(format!("snapshot {name}")));
                }
                // Resolve inside the transaction so the root is the one at the snapshot epoch.
                let mut root = ctx.root;
                for n in &names {
                    let entry = super::rows::live_entry(tx, root, n)
                        .await?
                        .ok_or_else(|| MetaError::NotFound(format!("path {canonical}")))?;
                    root = entry.ino;
                    if entry.kind != NodeKind::Directory {
                        return Err(MetaError::NotADirectory(canonical.clone()));
                    }
                }
                execute(
                    tx,
                    "INSERT INTO snapshots (id, workspace_id, name, epoch, root_ino, path) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&id.0, &ws.0, &name, &ctx.epoch, &(root.0 as i64), &canonical],
                )
                .await?;
                execute(tx, "UPDATE workspaces SET epoch = epoch + 1 WHERE id = $1", &[&ws.0]).await?;
                record_event(tx, ws, actor, "snapshot.create", Some(root), None, None).await?;
                let row = query_opt(tx, &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1"), &[&id.0])
                    .await?
                    .ok_or_else(|| MetaError::Internal("snapshot vanished".into()))?;
                Ok(snapshot_from_row(&row))
            }
            .await
        })
    }

    /// The live snapshot `name` of a workspace.
    pub async fn get_snapshot(&self, ws: WorkspaceId, name: &str) -> Result<Snapshot, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE workspace_id = $1 AND name = $2 AND deleted_at IS NULL"),
            &[&ws.0, &name],
        )
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("snapshot {name}")))?;
        Ok(snapshot_from_row(&row))
    }

    /// A live snapshot by id.
    pub async fn get_snapshot_by_id(&self, id: SnapshotId) -> Result<Snapshot, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1 AND deleted_at IS NULL"),
            &[&id.0],
        )
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("snapshot {}", id.0)))?;
        Ok(snapshot_from_row(&row))
    }

    /// Live snapshots of a workspace, oldest first.
    pub async fn list_snapshots(&self, ws: WorkspaceId) -> Result<Vec<Snapshot>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            &format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE workspace_id = $1 AND deleted_at IS NULL ORDER BY epoch, name"
            ),
            &[&ws.0],
        )
        .await?;
        Ok(rows.iter().map(snapshot_from_row).collect())
    }

    /// Live snapshots of every workspace, by workspace and name (for CSI listings).
    pub async fn list_all_snapshots(&self) -> Result<Vec<Snapshot>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE deleted_at IS NULL ORDER BY workspace_id, name"),
            &[],
        )
        .await?;
        Ok(rows.iter().map(snapshot_from_row).collect())
    }

    /// Deletes (soft) a snapshot; the versions only it kept become garbage for GC.
    pub async fn delete_snapshot(&self, actor: &Actor, ws: WorkspaceId, name: &str) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let n = execute(
                    tx,
                    "UPDATE snapshots SET deleted_at = now() WHERE workspace_id = $1 AND name = $2 AND deleted_at IS NULL",
                    &[&ws.0, &name],
                )
                .await?;
                if n == 0 {
                    return Err(MetaError::NotFound(format!("snapshot {name}")));
                }
                record_event(tx, ws, actor, "snapshot.delete", None, None, None).await?;
                Ok(())
            }
            .await
        })
    }

    /// Files and bytes in a snapshot's tree.
    pub async fn snapshot_usage(&self, snapshot: &Snapshot) -> Result<Usage, MetaError> {
        self.usage(View::At(snapshot.epoch), snapshot.root).await
    }
}
