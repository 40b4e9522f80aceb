//! Purge (issue 17, migration 11): soft-deleted entries past their retention, history rows
//! no retained snapshot shows, the nodes that lost their last name with them, and
//! soft-deleted workspaces. What is due is decided by `rules::gc`; what a retained snapshot
//! still shows is never removed.
//!
//! Every phase works in bounded batches, one transaction each, so a purge never holds a long
//! transaction against the online database. Removing an entry queues its node in
//! `purge_queue` in the same transaction; draining the queue removes a node only once no
//! entry of any version names it, and queues its children the same way, so a purge
//! interrupted at any point resumes where it stopped and never leaves a node behind.

use std::time::{Duration, SystemTime};

use crate::error::MetaError;
use crate::meta::rows::{INODE_COLUMNS, execute, from_system_time, inode_from_row, query};
use crate::meta::usage::record_usage;
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Name, NodeId, Timestamp, WorkspaceId, WorkspaceKind};
use crate::rules::gc::{RetentionClass, purge_due, retention};
use crate::rules::quota::{self, UsageChange};

/// Rows one purge transaction removes at most.
const BATCH: i64 = 2_000;

/// The longest rest between two purge transactions.
const MAX_REST: Duration = Duration::from_secs(5);

/// How a purge yields to the online workload: after each transaction it rests `ratio` times
/// as long as the transaction took (at most [`MAX_REST`]), so at 1.0 it keeps the database
/// busy at most half of the time it runs. 0 rests never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PurgePace {
    pub ratio: f64,
}

impl PurgePace {
    /// As fast as the database goes.
    pub const FULL_SPEED: PurgePace = PurgePace { ratio: 0.0 };

    async fn rest_after(&self, started: std::time::Instant) {
        let rest = started.elapsed().mul_f64(self.ratio.max(0.0)).min(MAX_REST);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
}

impl Default for PurgePace {
    /// Half the time, at most: what the studio's online database can spare.
    fn default() -> PurgePace {
        PurgePace { ratio: 1.0 }
    }
}

/// Whether no retained snapshot of the row's workspace shows the row `[valid_from, valid_to)`
/// (SQL over a row aliased `r` and a workspace id expression).
fn unseen_by_snapshots(ws: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.workspace_id = {ws} AND s.deleted_at IS NULL \
         AND s.epoch >= r.valid_from AND s.epoch < r.valid_to)"
    )
}

/// A soft-deleted entry the trash shows and the purge judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedEntry {
    pub id: i64,
    pub parent: NodeId,
    pub name: Name,
    pub ino: NodeId,
    pub deleted_at: Timestamp,
}

impl PgMetaStore {
    /// Removes the history rows of `ws` no retained snapshot shows: closed entries that are
    /// not in the trash, and old versions of inodes and block maps. Returns how many.
    pub async fn purge_history(
        &self,
        ws: WorkspaceId,
        dry_run: bool,
        pace: PurgePace,
    ) -> Result<u64, MetaError> {
        let unseen = unseen_by_snapshots("$1");
        let entries = format!(
            "SELECT r.id FROM entries r WHERE r.workspace_id = $1 AND r.valid_to IS NOT NULL \
             AND r.deleted_at IS NULL AND {unseen}"
        );
        let inodes = format!(
            "SELECT r.ino, r.valid_from FROM inodes r WHERE r.workspace_id = $1 AND r.valid_to IS NOT NULL \
             AND {unseen}"
        );
        // Block maps carry no workspace: the node's live inode row names it.
        let blocks = format!(
            "SELECT r.ino, r.idx, r.valid_from FROM file_blocks r \
             JOIN inodes i ON i.ino = r.ino AND i.valid_to IS NULL \
             WHERE r.valid_to IS NOT NULL AND i.workspace_id = $1 AND {unseen}"
        );
        if dry_run {
            let client = self.client().await?;
            let mut total = 0u64;
            for select in [&entries, &inodes, &blocks] {
                let row = query(
                    &client,
                    &format!("SELECT count(*) FROM ({select}) AS t"),
                    &[&ws.0],
                )
                .await?;
                total += row.first().map_or(0, |r| r.get::<_, i64>(0)) as u64;
            }
            return Ok(total);
        }
        let mut total = 0u64;
        loop {
            let started = std::time::Instant::now();
            let removed = in_txn!(self, |tx| {
                async {
                    let gone = query(
                        tx,
                        &format!("DELETE FROM entries WHERE id IN ({entries} LIMIT {BATCH}) RETURNING ino"),
                        &[&ws.0],
                    )
                    .await?;
                    let inos: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
                    queue_nodes(tx, &inos).await?;
                    let versions = execute(
                        tx,
                        &format!("DELETE FROM inodes WHERE (ino, valid_from) IN ({inodes} LIMIT {BATCH})"),
                        &[&ws.0],
                    )
                    .await?;
                    let maps = execute(
                        tx,
                        &format!(
                            "DELETE FROM file_blocks WHERE (ino, idx, valid_from) IN ({blocks} LIMIT {BATCH})"
                        ),
                        &[&ws.0],
                    )
                    .await?;
                    Ok([gone.len() as u64, versions, maps])
                }
                .await
            })?;
            total += removed.iter().sum::<u64>();
            if removed.iter().all(|n| (*n as i64) < BATCH) {
                return Ok(total);
            }
            pace.rest_after(started).await;
        }
    }

    /// Soft-deleted entries of `ws` deleted before `before`, oldest id first after `after`.
    pub async fn deleted_entries(
        &self,
        ws: WorkspaceId,
        before: SystemTime,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeletedEntry>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT id, parent, name, ino, deleted_at FROM entries \
             WHERE workspace_id = $1 AND deleted_at IS NOT NULL AND deleted_at < $2 AND id > $3 \
             ORDER BY id LIMIT $4",
            &[&ws.0, &before, &after.unwrap_or(i64::MIN), &limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| DeletedEntry {
                id: r.get(0),
                parent: NodeId(r.get::<_, i64>(1) as u64),
                name: Name::from_stored(r.get(2)),
                ino: NodeId(r.get::<_, i64>(3) as u64),
                deleted_at: from_system_time(r.get::<_, SystemTime>(4)),
            })
            .collect())
    }

    /// The path an entry had in `ws` (its folder's path as the newest entry naming each
    /// ancestor gives it, and its name); `None` when an ancestor has no entry left.
    pub async fn entry_path(
        &self,
        root: NodeId,
        parent: NodeId,
        name: &Name,
    ) -> Result<Option<String>, MetaError> {
        let client = self.client().await?;
        let mut names = vec![name.to_string_lossy()];
        let mut at = parent;
        // Deeper than any tree the mount accepts (PATH_MAX / 2).
        for _ in 0..2048 {
            if at == root {
                names.reverse();
                return Ok(Some(format!("/{}", names.join("/"))));
            }
            let row = query(
                &client,
                "SELECT parent, name FROM entries WHERE ino = $1 \
                 ORDER BY (valid_to IS NULL) DESC, valid_from DESC, id DESC LIMIT 1",
                &[&(at.0 as i64)],
            )
            .await?;
            let Some(row) = row.first() else { return Ok(None) };
            names.push(Name::from_stored(row.get(1)).to_string_lossy());
            at = NodeId(row.get::<_, i64>(0) as u64);
        }
        Ok(None)
    }

    /// Purges the soft-deleted entries of `ws` (a `kind` workspace) whose retention under
    /// `classes` has passed at `now` and which were deleted before `not_after` (the grace
    /// period: an unlinked file may still be open), unless a retained snapshot shows them.
    /// Their nodes are queued for [`Self::purge_queued_nodes`]. Returns how many.
    #[allow(clippy::too_many_arguments)]
    pub async fn purge_trash(
        &self,
        ws: WorkspaceId,
        root: NodeId,
        kind: WorkspaceKind,
        classes: &[RetentionClass],
        now: Timestamp,
        not_after: SystemTime,
        dry_run: bool,
        pace: PurgePace,
    ) -> Result<u64, MetaError> {
        let Some(shortest) = classes
            .iter()
            .filter(|c| c.kinds.is_empty() || c.kinds.contains(&kind))
            .map(|c| c.keep)
            .min()
        else {
            return Ok(0);
        };
        let before = before(now, shortest).min(not_after);
        let mut after = None;
        let mut total = 0u64;
        loop {
            let batch = self.deleted_entries(ws, before, after, 500).await?;
            let Some(last) = batch.last() else {
                return Ok(total);
            };
            after = Some(last.id);
            let mut due = Vec::new();
            // Paths cost a walk up the tree each: only per-folder classes need them.
            let by_path = classes
                .iter()
                .any(|c| c.path_prefix.as_deref().is_some_and(|p| p != "/"));
            for entry in &batch {
                let path = match by_path {
                    true => self.entry_path(root, entry.parent, &entry.name).await?,
                    false => Some("/".to_string()),
                };
                let keep = retention(classes, kind, path.as_deref());
                if keep.is_some_and(|keep| purge_due(entry.deleted_at, keep, now)) {
                    due.push(entry.id);
                }
            }
            let unseen = unseen_by_snapshots("r.workspace_id");
            let select = format!(
                "SELECT r.id FROM entries r WHERE r.id = ANY($1) AND r.deleted_at IS NOT NULL AND {unseen}"
            );
            if dry_run {
                let client = self.client().await?;
                total += query(&client, &select, &[&due]).await?.len() as u64;
                continue;
            }
            let started = std::time::Instant::now();
            total += in_txn!(self, |tx| {
                async {
                    let gone = query(
                        tx,
                        &format!("DELETE FROM entries WHERE id IN ({select}) RETURNING ino"),
                        &[&due],
                    )
                    .await?;
                    let inos: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
                    queue_nodes(tx, &inos).await?;
                    Ok(gone.len() as u64)
                }
                .await
            })?;
            pace.rest_after(started).await;
        }
    }

    /// Drains `purge_queue`: each queued node that no entry of any version names (and that
    /// is no workspace's or retained snapshot's root) is removed with all its rows, its usage
    /// given back, and its children's entries removed and queued in turn. Returns how many
    /// nodes were removed.
    pub async fn purge_queued_nodes(&self, pace: PurgePace) -> Result<u64, MetaError> {
        let mut total = 0u64;
        loop {
            let started = std::time::Instant::now();
            let (removed, more) = in_txn!(self, |tx| {
                async {
                    let queued: Vec<i64> = query(tx, "SELECT ino FROM purge_queue ORDER BY ino LIMIT 500", &[])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    if queued.is_empty() {
                        return Ok((0, false));
                    }
                    let nameless: Vec<i64> = query(
                        tx,
                        "SELECT q.ino FROM unnest($1::INT8[]) AS q(ino) \
                         WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.ino = q.ino AND e.valid_to IS NULL) \
                         AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.ino = q.ino AND e.valid_to IS NOT NULL) \
                         AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.root_ino = q.ino) \
                         AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.root_ino = q.ino AND s.deleted_at IS NULL)",
                        &[&queued],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                    remove_nodes(tx, &nameless).await?;
                    execute(tx, "DELETE FROM purge_queue WHERE ino = ANY($1)", &[&queued]).await?;
                    Ok((nameless.len() as u64, true))
                }
                .await
            })?;
            total += removed;
            if !more {
                return Ok(total);
            }
            pace.rest_after(started).await;
        }
    }

    /// Soft-deleted workspaces deleted before `before`: (id, kind, deleted_at, root).
    pub async fn deleted_workspaces(
        &self,
        before: SystemTime,
    ) -> Result<Vec<(WorkspaceId, WorkspaceKind, Timestamp, NodeId)>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT id, kind, deleted_at, root_ino FROM workspaces \
             WHERE deleted_at IS NOT NULL AND deleted_at < $1 ORDER BY deleted_at",
            &[&before],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.get(1);
                Ok((
                    WorkspaceId(r.get(0)),
                    WorkspaceKind::parse(&kind)
                        .ok_or_else(|| MetaError::Internal(format!("workspace kind {kind}")))?,
                    from_system_time(r.get::<_, SystemTime>(2)),
                    NodeId(r.get::<_, i64>(3) as u64),
                ))
            })
            .collect()
    }

    /// Removes a soft-deleted workspace for good: its snapshots, shares, counters and record
    /// at once, then (by queueing its root) every node of its tree, level by level.
    pub async fn purge_workspace(
        &self,
        ws: WorkspaceId,
        root: NodeId,
        pace: PurgePace,
    ) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let gone = execute(
                    tx,
                    "DELETE FROM workspaces WHERE id = $1 AND deleted_at IS NOT NULL",
                    &[&ws.0],
                )
                .await?;
                if gone == 0 {
                    return Err(MetaError::NotFound(format!("deleted workspace {ws}")));
                }
                for table in ["snapshots", "shares", "usage_changes"] {
                    execute(
                        tx,
                        &format!("DELETE FROM {table} WHERE workspace_id = $1"),
                        &[&ws.0],
                    )
                    .await?;
                }
                execute(
                    tx,
                    "DELETE FROM volumes WHERE workspace_id = $1 AND deleted_at IS NOT NULL",
                    &[&ws.0],
                )
                .await?;
                queue_nodes(tx, &[root.0 as i64]).await
            }
            .await
        })?;
        self.purge_queued_nodes(pace).await?;
        Ok(())
    }
}

/// Queues nodes whose last name may just have gone.
async fn queue_nodes<C: deadpool_postgres::GenericClient>(c: &C, inos: &[i64]) -> Result<(), MetaError> {
    if inos.is_empty() {
        return Ok(());
    }
    execute(
        c,
        "INSERT INTO purge_queue (ino) SELECT DISTINCT q.ino FROM unnest($1::INT8[]) AS q(ino) \
         ON CONFLICT (ino) DO NOTHING",
        &[&inos],
    )
    .await?;
    Ok(())
}

/// Removes nodes nothing names any more with all their rows; their children's entries go
/// too, and the children are queued. What the live versions still charged is given back.
async fn remove_nodes<C: deadpool_postgres::GenericClient>(c: &C, inos: &[i64]) -> Result<(), MetaError> {
    if inos.is_empty() {
        return Ok(());
    }
    let live = query(
        c,
        &format!("SELECT {INODE_COLUMNS} FROM inodes WHERE ino = ANY($1) AND valid_to IS NULL"),
        &[&inos],
    )
    .await?;
    let mut given_back: std::collections::BTreeMap<uuid::Uuid, UsageChange> = Default::default();
    for row in &live {
        let node = inode_from_row(row, 0)?;
        *given_back.entry(node.workspace.0).or_default() +=
            UsageChange::default() - quota::charge(&node.attr);
    }
    for (ws, change) in given_back {
        record_usage(c, WorkspaceId(ws), change).await?;
    }
    let children: Vec<i64> = query(
        c,
        "DELETE FROM entries WHERE parent = ANY($1) RETURNING ino",
        &[&inos],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    queue_nodes(c, &children).await?;
    crate::meta::media::purge_node_documents(c, inos).await?;
    for statement in [
        "DELETE FROM file_blocks WHERE ino = ANY($1)",
        "DELETE FROM xattrs WHERE ino = ANY($1)",
        "DELETE FROM node_access WHERE ino = ANY($1)",
        "DELETE FROM file_locks WHERE ino = ANY($1)",
        "DELETE FROM sequence_changes WHERE parent = ANY($1)",
        "DELETE FROM sequence_runs WHERE parent = ANY($1)",
        "DELETE FROM inodes WHERE ino = ANY($1)",
    ] {
        execute(c, statement, &[&inos]).await?;
    }
    Ok(())
}

/// `d` ago from `now`, for SQL comparisons.
pub(crate) fn before(now: Timestamp, d: Duration) -> SystemTime {
    crate::meta::rows::to_system_time(now)
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
