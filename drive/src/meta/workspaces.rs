//! Workspaces: create, get, list, update, soft delete, usage.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::error::MetaError;
use crate::meta::rows::{execute, from_system_time, query, query_opt, record_event};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{
    Actor, Epoch, NodeId, NodeKind, ObjectStoreLocation, Usage, View, Workspace, WorkspaceId, WorkspaceKind,
    WorkspaceSpec,
};

const WORKSPACE_COLUMNS: &str = "id, name, kind, block_size, root_ino, epoch, wrapped_key, quota_bytes, owners, \
     created_at, store_bucket, store_prefix, store_endpoint, store_region";

fn workspace_from_row(row: &Row) -> Result<Workspace, MetaError> {
    let kind: String = row.get(2);
    let owners: serde_json::Value = row.get(8);
    let wrapped_key: Option<Vec<u8>> = row.get(6);
    Ok(Workspace {
        id: WorkspaceId(row.get(0)),
        name: row.get(1),
        kind: WorkspaceKind::parse(&kind)
            .ok_or_else(|| MetaError::Internal(format!("workspace kind {kind}")))?,
        block_size: row.get::<_, i64>(3) as u32,
        root: NodeId(row.get::<_, i64>(4) as u64),
        epoch: Epoch(row.get(5)),
        encrypted: wrapped_key.is_some(),
        wrapped_key,
        quota_bytes: row.get::<_, Option<i64>>(7).map(|q| q as u64),
        owners: serde_json::from_value(owners).unwrap_or_default(),
        created_at: from_system_time(row.get::<_, SystemTime>(9)),
        object_store: row
            .get::<_, Option<String>>(10)
            .map(|bucket| ObjectStoreLocation {
                bucket,
                prefix: row.get::<_, Option<String>>(11).unwrap_or_default(),
                endpoint: row.get(12),
                region: row.get(13),
            }),
    })
}

/// Changes to a workspace's mutable fields; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceUpdate {
    /// `Some(None)` removes the quota.
    pub quota_bytes: Option<Option<u64>>,
    pub owners: Option<Vec<String>>,
}

impl PgMetaStore {
    /// Creates a workspace with an empty root folder. Fails with `Exists` when a live
    /// workspace has that name.
    pub async fn create_workspace(
        &self,
        actor: &Actor,
        spec: &WorkspaceSpec,
    ) -> Result<Workspace, MetaError> {
        crate::rules::check_workspace_spec(spec)?;
        let id = WorkspaceId(uuid::Uuid::new_v4());
        let now = self.clock.now();
        let owners = serde_json::to_value(&spec.owners).map_err(|e| MetaError::Internal(e.to_string()))?;
        let store = spec.object_store.as_ref();
        in_txn!(self, |tx| {
            async {
                if query_opt(tx, "SELECT 1 FROM workspaces WHERE name = $1 AND deleted_at IS NULL", &[&spec.name])
                    .await?
                    .is_some()
                {
                    return Err(MetaError::Exists(format!("workspace {}", spec.name)));
                }
                let root = query_opt(tx, "SELECT nextval('node_ids')", &[]).await?.map(|r| r.get::<_, i64>(0));
                let root = root.ok_or_else(|| MetaError::Internal("nextval".into()))?;
                execute(
                    tx,
                    "INSERT INTO workspaces (id, name, kind, block_size, root_ino, wrapped_key, quota_bytes, owners, \
                     store_bucket, store_prefix, store_endpoint, store_region) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    &[
                        &id.0,
                        &spec.name,
                        &spec.kind.as_str(),
                        &i64::from(spec.block_size),
                        &root,
                        &spec.wrapped_key,
                        &spec.quota_bytes.map(|q| q as i64),
                        &owners,
                        &store.map(|s| &s.bucket),
                        &store.map(|s| &s.prefix),
                        &store.and_then(|s| s.endpoint.as_ref()),
                        &store.and_then(|s| s.region.as_ref()),
                    ],
                )
                .await?;
                execute(
                    tx,
                    "INSERT INTO inodes (ino, valid_from, workspace_id, kind, mode, uid, gid, nlink, atime_ns, \
                     mtime_ns, ctime_ns, crtime_ns) VALUES ($1, 1, $2, $3, 493, 0, 0, 2, $4, $4, $4, $4)",
                    &[&root, &id.0, &NodeKind::Directory.code(), &now.0],
                )
                .await?;
                record_event(tx, id, actor, "workspace.create", Some(NodeId(root as u64)), None, None).await?;
                let row = query_opt(tx, &format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1"), &[&id.0])
                    .await?
                    .ok_or_else(|| MetaError::Internal("workspace vanished".into()))?;
                workspace_from_row(&row)
            }
            .await
        })
    }

    /// The live workspace named `name`.
    pub async fn get_workspace(&self, name: &str) -> Result<Workspace, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE name = $1 AND deleted_at IS NULL"),
            &[&name],
        )
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("workspace {name}")))?;
        workspace_from_row(&row)
    }

    /// The live workspace with id `id`.
    pub async fn get_workspace_by_id(&self, id: WorkspaceId) -> Result<Workspace, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1 AND deleted_at IS NULL"),
            &[&id.0],
        )
        .await?
        .ok_or_else(|| MetaError::NotFound(format!("workspace {id}")))?;
        workspace_from_row(&row)
    }

    /// All live workspaces, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            &format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE deleted_at IS NULL ORDER BY name"),
            &[],
        )
        .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    /// Changes a workspace's mutable fields.
    pub async fn update_workspace(
        &self,
        actor: &Actor,
        name: &str,
        update: &WorkspaceUpdate,
    ) -> Result<Workspace, MetaError> {
        let owners = update
            .owners
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| MetaError::Internal(e.to_string()))?;
        in_txn!(self, |tx| {
            async {
                let row = query_opt(
                    tx,
                    &format!(
                        "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE name = $1 AND deleted_at IS NULL"
                    ),
                    &[&name],
                )
                .await?
                .ok_or_else(|| MetaError::NotFound(format!("workspace {name}")))?;
                let mut ws = workspace_from_row(&row)?;
                if let Some(quota) = update.quota_bytes {
                    ws.quota_bytes = quota;
                }
                if let Some(owners) = &update.owners {
                    ws.owners.clone_from(owners);
                }
                let owners_json = owners.clone().unwrap_or_else(|| serde_json::json!(ws.owners));
                execute(
                    tx,
                    "UPDATE workspaces SET quota_bytes = $2, owners = $3 WHERE id = $1",
                    &[&ws.id.0, &ws.quota_bytes.map(|q| q as i64), &owners_json],
                )
                .await?;
                record_event(tx, ws.id, actor, "workspace.update", None, None, None).await?;
                Ok(ws)
            }
            .await
        })
    }

    /// Soft-deletes a workspace: it disappears from lookups by name at once; its rows stay
    /// until the lifecycle purge. The name can be reused.
    pub async fn delete_workspace(&self, actor: &Actor, name: &str) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let row = query_opt(
                    tx,
                    "SELECT id FROM workspaces WHERE name = $1 AND deleted_at IS NULL",
                    &[&name],
                )
                .await?
                .ok_or_else(|| MetaError::NotFound(format!("workspace {name}")))?;
                let id = WorkspaceId(row.get(0));
                execute(
                    tx,
                    "UPDATE workspaces SET deleted_at = now() WHERE id = $1",
                    &[&id.0],
                )
                .await?;
                record_event(tx, id, actor, "workspace.delete", None, None, None).await?;
                Ok(())
            }
            .await
        })
    }

    /// Files, folders and bytes reachable from `root` in `view` (a recursive walk in SQL).
    pub async fn usage(&self, view: View, root: NodeId) -> Result<Usage, MetaError> {
        let client = self.client().await?;
        tree_usage(&client, view, root).await
    }
}

pub(crate) async fn tree_usage<C: GenericClient>(
    c: &C,
    view: View,
    root: NodeId,
) -> Result<Usage, MetaError> {
    let e = match view {
        View::Live => i64::MAX,
        View::At(Epoch(e)) => e,
    };
    // With e = i64::MAX the visibility test selects exactly the live rows.
    let row = query_opt(
        c,
        "WITH RECURSIVE tree (ino, kind) AS ( \
             SELECT $1::INT8, 2::INT2 \
             UNION ALL \
             SELECT e.ino, e.kind FROM entries e JOIN tree t ON e.parent = t.ino \
             WHERE t.kind = 2 AND e.valid_from <= $2 AND (e.valid_to IS NULL OR e.valid_to > $2) \
         ) \
         SELECT count(*) FILTER (WHERE t.kind = 1), count(*) FILTER (WHERE t.kind = 2) - 1, \
                COALESCE(sum(i.size) FILTER (WHERE t.kind = 1), 0)::INT8 \
         FROM tree t JOIN inodes i ON i.ino = t.ino \
         AND i.valid_from <= $2 AND (i.valid_to IS NULL OR i.valid_to > $2)",
        &[&(root.0 as i64), &e],
    )
    .await?
    .ok_or_else(|| MetaError::Internal("usage query returned nothing".into()))?;
    Ok(Usage {
        files: row.get::<_, i64>(0) as u64,
        directories: row.get::<_, i64>(1).max(0) as u64,
        bytes: row.get::<_, i64>(2) as u64,
    })
}
