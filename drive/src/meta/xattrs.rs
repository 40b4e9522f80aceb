//! Extended attributes (the `user.*` namespace the file system stores). They are kept per
//! inode and are not epoch-versioned: a snapshot view shows the live attributes.

use crate::error::MetaError;
use crate::meta::rows::{execute, query, query_opt, record_event, ws_and_inode};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Actor, NodeId, WorkspaceId};

/// Largest value accepted, as Linux's XATTR_SIZE_MAX.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Largest name accepted, as Linux's XATTR_NAME_MAX.
pub const XATTR_NAME_MAX: usize = 255;

/// How `set_xattr` treats an existing (or missing) attribute (`setxattr(2)` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Upsert,
    /// Fail with `Exists` if present (XATTR_CREATE).
    Create,
    /// Fail with `NotFound` if absent (XATTR_REPLACE).
    Replace,
}

impl PgMetaStore {
    /// The value of attribute `name` of `ino`, if set.
    pub async fn get_xattr(&self, ino: NodeId, name: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT value FROM xattrs WHERE ino = $1 AND name = $2",
            &[&(ino.0 as i64), &name],
        )
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The names of the attributes of `ino`, in byte order.
    pub async fn list_xattrs(&self, ino: NodeId) -> Result<Vec<Vec<u8>>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT name FROM xattrs WHERE ino = $1 ORDER BY name",
            &[&(ino.0 as i64)],
        )
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Sets attribute `name` of the live node `ino`.
    pub async fn set_xattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<(), MetaError> {
        check_xattr(name, value)?;
        in_txn!(self, |tx| {
            async {
                let (ws, _) = ws_and_inode(tx, ws, ino).await?;
                let i = ino.0 as i64;
                let exists = query_opt(
                    tx,
                    "SELECT 1 FROM xattrs WHERE ino = $1 AND name = $2",
                    &[&i, &name],
                )
                .await?
                .is_some();
                match (mode, exists) {
                    (XattrMode::Create, true) => return Err(MetaError::Exists(xattr_label(name))),
                    (XattrMode::Replace, false) => return Err(MetaError::NotFound(xattr_label(name))),
                    _ => {}
                }
                if exists {
                    execute(
                        tx,
                        "UPDATE xattrs SET value = $3 WHERE ino = $1 AND name = $2",
                        &[&i, &name, &value],
                    )
                    .await?;
                } else {
                    execute(
                        tx,
                        "INSERT INTO xattrs (ino, name, value) VALUES ($1, $2, $3)",
                        &[&i, &name, &value],
                    )
                    .await?;
                }
                record_event(tx, ws.id, actor, "setxattr", Some(ino), None, None).await?;
                Ok(())
            }
            .await
        })
    }

    /// Removes attribute `name` of `ino`; `NotFound` when it was not set.
    pub async fn remove_xattr(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        name: &[u8],
    ) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let (ws, _) = ws_and_inode(tx, ws, ino).await?;
                let gone = execute(
                    tx,
                    "DELETE FROM xattrs WHERE ino = $1 AND name = $2",
                    &[&(ino.0 as i64), &name],
                )
                .await?;
                if gone == 0 {
                    return Err(MetaError::NotFound(xattr_label(name)));
                }
                record_event(tx, ws.id, actor, "removexattr", Some(ino), None, None).await?;
                Ok(())
            }
            .await
        })
    }
}

/// Refuses a bad attribute name (empty, NUL, too long) or a value over the limit.
pub(crate) fn check_xattr(name: &[u8], value: &[u8]) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX || name.contains(&0) {
        return Err(MetaError::InvalidArgument(format!(
            "bad xattr name {}",
            xattr_label(name)
        )));
    }
    if value.len() > XATTR_VALUE_MAX {
        return Err(MetaError::InvalidArgument(format!(
            "xattr value of {} bytes exceeds {XATTR_VALUE_MAX}",
            value.len()
        )));
    }
    Ok(())
}

pub(crate) fn xattr_label(name: &[u8]) -> String {
    format!("xattr {:?}", String::from_utf8_lossy(name))
}
