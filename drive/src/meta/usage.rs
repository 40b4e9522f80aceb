//! Usage counters per workspace (migration 6): what the live tree uses, kept incrementally by
//! the mutations that change it, and the quota check of the changes that grow it.
//!
//! Each mutation appends its signed change ([`UsageChange`], from [`crate::rules::quota`])
//! to `usage_changes` in its own transaction and reads nothing there, so concurrent creators
//! and writers never conflict over the counters (one counter row updated in place would make
//! every pair of concurrent writers of a workspace abort one of them under SERIALIZABLE).
//! The totals are the sum of a workspace's rows; a reader that finds many folds them into
//! one. A change that adds bytes to a workspace with a quota reads the sum in its
//! transaction: two such changes read each other's writes, so SERIALIZABLE aborts one and
//! its retry sees the other's row: they cannot both slip under the quota. Those commits, and
//! only those, serialise per workspace.

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::rows::{WsCtx, execute, query_opt};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{WorkspaceId, WorkspaceUsage};
use crate::rules::quota::{self, UsageChange};

/// Rows of one workspace a reader folds into one.
const FOLD_AT: i64 = 64;

/// Appends `change` to the counters of `ws` (nothing when it changes nothing).
pub(crate) async fn record_usage<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    change: UsageChange,
) -> Result<(), MetaError> {
    if change.is_zero() {
        return Ok(());
    }
    execute(
        c,
        "INSERT INTO usage_changes (workspace_id, bytes, nodes) VALUES ($1, $2, $3)",
        &[&ws.0, &change.bytes, &change.nodes],
    )
    .await?;
    Ok(())
}

/// Charges `change` to `ws`: refused with `QuotaExceeded` when it adds bytes past the
/// workspace's quota (read in this transaction), appended otherwise.
pub(crate) async fn charge<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    change: UsageChange,
) -> Result<(), MetaError> {
    if change.bytes <= 0 || ws.quota_bytes.is_none() {
        return record_usage(c, ws.id, change).await;
    }
    let (used, rows) = counters(c, ws.id).await?;
    quota::check(ws.quota_bytes, used.bytes.max(0) as u64, change)?;
    if rows >= FOLD_AT {
        // This transaction read every row already: replace them with their sum.
        execute(
            c,
            "DELETE FROM usage_changes WHERE workspace_id = $1",
            &[&ws.id.0],
        )
        .await?;
        return record_usage(c, ws.id, used + change).await;
    }
    record_usage(c, ws.id, change).await
}

/// The summed counters of `ws` and the number of rows they came from.
async fn counters<C: GenericClient>(c: &C, ws: WorkspaceId) -> Result<(UsageChange, i64), MetaError> {
    let row = query_opt(
        c,
        "SELECT COALESCE(sum(bytes), 0)::INT8, COALESCE(sum(nodes), 0)::INT8, count(*) \
         FROM usage_changes WHERE workspace_id = $1",
        &[&ws.0],
    )
    .await?
    .ok_or_else(|| MetaError::Internal("usage sum returned nothing".into()))?;
    Ok((
        UsageChange {
            bytes: row.get(0),
            nodes: row.get(1),
        },
        row.get(2),
    ))
}

impl PgMetaStore {
    /// The usage counters and quota of live workspace `ws`: one indexed read, no walk of the
    /// tree. Many change rows are folded into one afterwards (best effort: a failed fold
    /// only leaves the rows for the next reader).
    pub async fn workspace_usage(&self, ws: WorkspaceId) -> Result<WorkspaceUsage, MetaError> {
        let row = {
            let client = self.client().await?;
            query_opt(
                &client,
                "SELECT w.quota_bytes, COALESCE(sum(u.bytes), 0)::INT8, COALESCE(sum(u.nodes), 0)::INT8, \
                 count(u.workspace_id) FROM workspaces w \
                 LEFT JOIN usage_changes u ON u.workspace_id = w.id \
                 WHERE w.id = $1 AND w.deleted_at IS NULL GROUP BY w.id, w.quota_bytes",
                &[&ws.0],
            )
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("workspace {ws}")))?
        };
        if row.get::<_, i64>(3) >= FOLD_AT
            && let Err(e) = self.fold_usage(ws).await
        {
            tracing::debug!(%ws, error = %e, "usage rows not folded");
        }
        Ok(WorkspaceUsage {
            quota_bytes: row.get::<_, Option<i64>>(0).map(|q| q as u64),
            bytes: row.get::<_, i64>(1).max(0) as u64,
            nodes: row.get::<_, i64>(2).max(0) as u64,
        })
    }

    /// Replaces the change rows of `ws` with one row of their sum.
    async fn fold_usage(&self, ws: WorkspaceId) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let (total, rows) = counters(tx, ws).await?;
                if rows > 1 {
                    execute(tx, "DELETE FROM usage_changes WHERE workspace_id = $1", &[&ws.0]).await?;
                    record_usage(tx, ws, total).await?;
                }
                Ok(())
            }
            .await
        })
    }
}
