//! Shares: permissions on workspace paths granted to subjects, recorded by the operator and
//! read by the CSI driver's authoriser.

use std::time::SystemTime;

use crate::error::MetaError;
use crate::meta::rows::{execute, from_system_time, query, record_event, to_system_time};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Actor, Permission, Share, WorkspaceId};
use crate::rules::access::{WorkspaceFacts, home_namespace};

impl PgMetaStore {
    /// Creates or replaces the share `share.name` of its workspace.
    pub async fn put_share(&self, actor: &Actor, share: &Share) -> Result<(), MetaError> {
        super::tree::parse_path(&share.path)?;
        if share.subjects.is_empty() {
            return Err(MetaError::InvalidArgument(
                "a share needs at least one subject".into(),
            ));
        }
        let subjects =
            serde_json::to_value(&share.subjects).map_err(|e| MetaError::Internal(e.to_string()))?;
        let expires = share.expires_at.map(to_system_time);
        in_txn!(self, |tx| {
            async {
                super::rows::ws_ctx(tx, share.workspace).await?;
                execute(
                    tx,
                    "INSERT INTO shares (workspace_id, name, path, subjects, permission, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (workspace_id, name) DO UPDATE SET path = excluded.path, \
                     subjects = excluded.subjects, permission = excluded.permission, expires_at = excluded.expires_at",
                    &[&share.workspace.0, &share.name, &share.path, &subjects, &share.permission.as_str(), &expires],
                )
                .await?;
                record_event(tx, share.workspace, actor, "share.put", None, None, None).await?;
                Ok(())
            }
            .await
        })
    }

    /// Removes a share; removing a missing share succeeds (idempotent).
    pub async fn delete_share(&self, actor: &Actor, ws: WorkspaceId, name: &str) -> Result<bool, MetaError> {
        in_txn!(self, |tx| {
            async {
                let n = execute(
                    tx,
                    "DELETE FROM shares WHERE workspace_id = $1 AND name = $2",
                    &[&ws.0, &name],
                )
                .await?;
                if n > 0 {
                    record_event(tx, ws, actor, "share.delete", None, None, None).await?;
                }
                Ok(n > 0)
            }
            .await
        })
    }

    /// All shares of a workspace, by name.
    pub async fn list_shares(&self, ws: WorkspaceId) -> Result<Vec<Share>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT name, path, subjects, permission, expires_at FROM shares WHERE workspace_id = $1 ORDER BY name",
            &[&ws.0],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let permission: String = r.get(3);
                Ok(Share {
                    workspace: ws,
                    name: r.get(0),
                    path: r.get(1),
                    subjects: serde_json::from_value(r.get(2)).unwrap_or_default(),
                    permission: Permission::parse(&permission)
                        .ok_or_else(|| MetaError::Internal(format!("permission {permission}")))?,
                    expires_at: r.get::<_, Option<SystemTime>>(4).map(from_system_time),
                })
            })
            .collect()
    }

    /// What the access rule needs to know about workspace `name`: its home namespace, owners
    /// and Shares; `None` when no live workspace has that name.
    pub async fn access_facts(&self, name: &str) -> Result<Option<WorkspaceFacts>, MetaError> {
        let ws = match self.get_workspace(name).await {
            Ok(ws) => ws,
            Err(MetaError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let shares = self.list_shares(ws.id).await?;
        Ok(Some(WorkspaceFacts::of_workspace(
            home_namespace(&ws.name),
            &ws.owners,
            &shares,
        )))
    }
}
