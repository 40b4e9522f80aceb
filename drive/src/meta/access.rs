//! Last-access times and expiry (issue 17, item 5).
//!
//! A node's last use is the latest of its recorded access (`node_access`, written by mounts at
//! most once per node per interval, see `drive::fs`), its content's mtime and its creation
//! time: a file written or created recently is in use even if nobody opened it since. A
//! folder's last use is the latest of its own creation and everything below it. The table is
//! not epoch-versioned: recording an access creates no inode version and no snapshot shows it.
//!
//! Expiry walks the folders it is given, one page of entries per statement, and soft-deletes
//! each largest unit (a file, or a folder nothing below which was used since the cutoff) in
//! its own transaction, through the ordinary subtree delete: it lands in the trash and the
//! lifecycle purge reclaims it later.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::error::{ErrorKind, MetaError};
use crate::meta::PgMetaStore;
use crate::meta::rows::{execute, from_system_time, inode_from_row, prefixed_inode_columns, query, ws_ctx};
use crate::meta::tree::Removal;
use crate::model::{Actor, Attr, Name, NodeId, NodeKind, Timestamp, WorkspaceId, WorkspaceKind};
use crate::rules::write_once;

/// Entries read per statement by the expiry walk.
const WALK_PAGE: i64 = 1_000;

/// What an expiry found (or, in a dry run, would have done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpireCounts {
    /// Files and folders soft-deleted, each folder counted once for everything below it.
    pub expired: u64,
    /// Expired files left in place because their workspace is write-once (project).
    pub skipped_write_once: u64,
    /// Entries looked at.
    pub scanned: u64,
}

impl PgMetaStore {
    /// Records that the nodes were accessed at the given times (later times only: an access
    /// older than the one recorded changes nothing). One statement for the whole batch.
    pub async fn record_access(
        &self,
        ws: WorkspaceId,
        accesses: &[(NodeId, Timestamp)],
    ) -> Result<(), MetaError> {
        if accesses.is_empty() {
            return Ok(());
        }
        let inos: Vec<i64> = accesses.iter().map(|(n, _)| n.0 as i64).collect();
        let times: Vec<SystemTime> = accesses
            .iter()
            .map(|(_, t)| crate::meta::rows::to_system_time(*t))
            .collect();
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO node_access (ino, workspace_id, accessed_at) \
             SELECT a.ino, $1, a.at FROM unnest($2::INT8[], $3::TIMESTAMPTZ[]) AS a(ino, at) \
             ON CONFLICT (ino) DO UPDATE SET accessed_at = excluded.accessed_at \
             WHERE node_access.accessed_at < excluded.accessed_at",
            &[&ws.0, &inos, &times],
        )
        .await?;
        Ok(())
    }

    /// The recorded last access of `ino`, if any was recorded.
    pub async fn last_access(&self, ino: NodeId) -> Result<Option<SystemTime>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT accessed_at FROM node_access WHERE ino = $1",
            &[&(ino.0 as i64)],
        )
        .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Soft-deletes every file or folder below the folders at `paths` (the folders themselves
    /// stay) whose last use is older than `not_accessed_since`; a folder goes as a whole only
    /// when nothing below it was used since. Each deletion is its own transaction with the
    /// normal `delete` event by `actor` (the lifecycle uses "lifecycle:<pass id>").
    ///
    /// Write-once (project) workspaces: folders are never deleted whole, and an expired file
    /// whose content is committed is left in place and counted as skipped, as every delete
    /// there is refused. A path that does not exist is skipped. A dry run deletes nothing and
    /// reports the same counts. A name that holds another node by the time of its delete is
    /// left alone; an access recorded between the walk and the delete is not seen: the node
    /// goes to the trash, from where it can be restored.
    pub async fn expire_unaccessed(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        paths: &[String],
        not_accessed_since: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireCounts, MetaError> {
        let kind = {
            let client = self.client().await?;
            ws_ctx(&client, ws).await?.kind
        };
        let walk = ExpiryWalk {
            store: self,
            actor,
            ws,
            kind,
            cutoff: from_system_time(not_accessed_since),
            dry_run,
        };
        let mut counts = ExpireCounts::default();
        for path in paths {
            let top = match self.resolve(ws, path).await {
                Ok(attr) if attr.kind == NodeKind::Directory => attr,
                Ok(_) => {
                    return Err(MetaError::NotADirectory(format!("expiry path {path}")));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::debug!(path, "expiry path does not exist");
                    continue;
                }
                Err(e) => return Err(e),
            };
            walk.children(top.ino, false, &mut counts).await?;
        }
        Ok(counts)
    }
}

/// One expiry over one workspace.
struct ExpiryWalk<'a> {
    store: &'a PgMetaStore,
    actor: &'a Actor,
    ws: WorkspaceId,
    kind: WorkspaceKind,
    cutoff: Timestamp,
    dry_run: bool,
}

type WalkFuture<'f> = Pin<Box<dyn Future<Output = Result<bool, MetaError>> + Send + 'f>>;

impl ExpiryWalk<'_> {
    /// Walks the folder `dir`; true when everything below it is expired and it may go as a
    /// whole (`deferred`: the caller deletes it then; otherwise its expired units are deleted
    /// here). Never true in a write-once workspace.
    fn children<'f>(&'f self, dir: NodeId, deferred: bool, counts: &'f mut ExpireCounts) -> WalkFuture<'f> {
        Box::pin(async move {
            let mut units: Vec<(Name, Attr)> = Vec::new();
            let mut all_expired = true;
            let mut after: Vec<u8> = Vec::new();
            loop {
                let page = self.page(dir, &after).await?;
                let full = page.len() as i64 == WALK_PAGE;
                for (name, attr, accessed) in page {
                    after = name.as_bytes().to_vec();
                    counts.scanned += 1;
                    let own_expired = last_use(&attr, accessed) < self.cutoff;
                    let expired = if attr.kind == NodeKind::Directory {
                        // The folder is walked even when it was used itself: what is below
                        // it may have expired.
                        let below = self.children(attr.ino, own_expired, counts).await?;
                        own_expired && below
                    } else {
                        own_expired
                    };
                    if expired {
                        units.push((name, attr));
                    } else {
                        all_expired = false;
                    }
                }
                if !full {
                    break;
                }
            }
            if self.kind == WorkspaceKind::Project {
                all_expired = false;
            }
            if deferred && all_expired {
                return Ok(true);
            }
            for (name, attr) in units {
                self.delete(dir, &name, &attr, counts).await?;
            }
            Ok(false)
        })
    }

    /// Up to [`WALK_PAGE`] live entries of `dir` after `after`, with attributes and the
    /// recorded last access.
    async fn page(
        &self,
        dir: NodeId,
        after: &[u8],
    ) -> Result<Vec<(Name, Attr, Option<SystemTime>)>, MetaError> {
        let client = self.store.client().await?;
        let rows = query(
            &client,
            &format!(
                "SELECT e.name, {}, a.accessed_at FROM entries e \
                 JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL \
                 LEFT JOIN node_access a ON a.ino = e.ino \
                 WHERE e.parent = $1 AND e.valid_to IS NULL AND e.name > $2 ORDER BY e.name LIMIT $3",
                prefixed_inode_columns()
            ),
            &[&(dir.0 as i64), &after, &WALK_PAGE],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let attr = inode_from_row(r, 1)?.attr;
                Ok((Name::from_stored(r.get(0)), attr, r.get(17)))
            })
            .collect()
    }

    /// Soft-deletes one expired unit (or counts it in a dry run).
    async fn delete(
        &self,
        dir: NodeId,
        name: &Name,
        attr: &Attr,
        counts: &mut ExpireCounts,
    ) -> Result<(), MetaError> {
        if write_once::guard(self.kind, attr, "expire").is_err() {
            counts.skipped_write_once += 1;
            return Ok(());
        }
        if self.dry_run {
            counts.expired += 1;
            return Ok(());
        }
        let removed = self
            .store
            .remove_entry(self.actor, self.ws, dir, name, Removal::Expired(attr.ino))
            .await;
        match removed {
            Ok(_) => counts.expired += 1,
            // Removed or replaced meanwhile: nothing to expire any more.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Committed meanwhile in a write-once workspace.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => counts.skipped_write_once += 1,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// When a node was last used: its recorded access, content change or creation, whichever is
/// latest.
fn last_use(attr: &Attr, accessed: Option<SystemTime>) -> Timestamp {
    let accessed = accessed.map_or(Timestamp(i64::MIN), from_system_time);
    attr.mtime.max(attr.crtime).max(accessed)
}

impl PgMetaStore {
    /// Up to `limit` blocks after `after` (by hash) not yet in `storage_class` that a tiering
    /// pass may move: available, not claimed by a block sweep, referenced by some file row,
    /// and by no live file used (opened, written or created) since `not_used_since`. With
    /// their stored sizes.
    pub async fn tier_candidates(
        &self,
        storage_class: &str,
        not_used_since: SystemTime,
        after: &[u8],
        limit: i64,
    ) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let cutoff_ns = from_system_time(not_used_since).0;
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT b.hash, b.stored_size FROM blocks b \
             WHERE b.hash > $1 AND b.tier <> $2 AND b.state = 'available' AND b.claimed_by IS NULL \
               AND EXISTS (SELECT 1 FROM file_blocks f WHERE f.hash = b.hash) \
               AND NOT EXISTS ( \
                   SELECT 1 FROM file_blocks f \
                   JOIN inodes i ON i.ino = f.ino AND i.valid_to IS NULL \
                   LEFT JOIN node_access a ON a.ino = f.ino \
                   WHERE f.hash = b.hash AND f.valid_to IS NULL \
                     AND (i.mtime_ns >= $3 OR i.crtime_ns >= $3 OR a.accessed_at >= $4)) \
             ORDER BY b.hash LIMIT $5",
            &[&after, &storage_class, &cutoff_ns, &not_used_since, &limit],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = r.get(0);
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| MetaError::Internal("a block hash is not 32 bytes".into()))?;
                Ok((hash, r.get::<_, i64>(1) as u64))
            })
            .collect()
    }

    /// Records that block `hash` is stored in `storage_class` now.
    pub async fn set_block_tier(&self, hash: &[u8; 32], storage_class: &str) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE blocks SET tier = $2, updated_at = now() WHERE hash = $1",
            &[&hash.as_slice(), &storage_class],
        )
        .await?;
        Ok(())
    }
}
