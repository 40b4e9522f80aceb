//! File locks across mounts: byte-range locks (fcntl) and whole-file locks (flock) kept in
//! the metadata store, so that two mounts of a workspace exclude each other as two processes
//! on one local file system do.
//!
//! A lock belongs to (mount, owner): the owner is the kernel's lock owner of the request.
//! A mount's locks count only while its lease (`mount_leases`) is live; taking a lock renews
//! it, and a mount holding locks renews it in the background ([`PgMetaStore::renew_mount_lease`]).
//! A mount whose lease expired (killed, partitioned, frozen) loses its locks: others may take
//! them, and when it comes back its old rows are deleted before it may lock again.
//! Every change is one SERIALIZABLE transaction, so two mounts racing for one range cannot
//! both win.

use std::time::Duration;

use crate::error::MetaError;
use crate::meta::rows::{execute, query, query_opt};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::NodeId;

/// Shared, exclusive, or a release of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
    Unlock,
}

/// A lock (or a release) of bytes `start..=end` of file `ino` by `owner` of mount `mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLock {
    pub ino: NodeId,
    pub mount: String,
    pub owner: u64,
    pub start: u64,
    /// Inclusive; `i64::MAX` means "to the end of the file, however it grows".
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

/// The furthest offset a lock can name (`OFFSET_MAX`).
const LAST: u64 = i64::MAX as u64;

fn off(x: u64) -> i64 {
    x.min(LAST) as i64
}

impl PgMetaStore {
    /// Takes, changes or releases `lock`. Returns the conflicting lock of another owner (live
    /// mounts only) instead, and changes nothing, when one holds an overlapping range in a
    /// mode that excludes this one. The owner's own locks in the range are replaced (split
    /// where they reach beyond it), as POSIX record locks are.
    pub async fn set_lock(&self, lock: &FileLock, lease: Duration) -> Result<Option<FileLock>, MetaError> {
        if lock.start > lock.end {
            return Err(MetaError::InvalidArgument(format!(
                "lock range {}..={} is empty",
                lock.start, lock.end
            )));
        }
        let (ino, owner, start, end) = (
            lock.ino.0 as i64,
            lock.owner as i64,
            off(lock.start),
            off(lock.end),
        );
        in_txn!(self, |tx| {
            async {
                renew_lease(tx, &lock.mount, lease).await?;
                if lock.kind != LockKind::Unlock
                    && let Some(other) = conflicting(tx, lock).await?
                {
                    return Ok(Some(other));
                }
                let mine = query(
                    tx,
                    "DELETE FROM file_locks WHERE ino = $1 AND mount_id = $2 AND owner = $3 \
                     AND start_off <= $5 AND end_off >= $4 \
                     RETURNING start_off, end_off, exclusive, pid",
                    &[&ino, &lock.mount, &owner, &start, &end],
                )
                .await?;
                let mut keep: Vec<(i64, i64, bool, i64)> = Vec::new();
                for r in &mine {
                    let (s, e, x, pid): (i64, i64, bool, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
                    if s < start {
                        keep.push((s, start - 1, x, pid));
                    }
                    if e > end {
                        keep.push((end + 1, e, x, pid));
                    }
                }
                if lock.kind != LockKind::Unlock {
                    keep.push((start, end, lock.kind == LockKind::Exclusive, i64::from(lock.pid)));
                }
                for (s, e, x, pid) in keep {
                    execute(
                        tx,
                        "INSERT INTO file_locks (ino, mount_id, owner, start_off, end_off, exclusive, pid) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&ino, &lock.mount, &owner, &s, &e, &x, &pid],
                    )
                    .await?;
                }
                Ok(None)
            }
            .await
        })
    }

    /// The lock of another owner (on a live mount) that would refuse `lock` (F_GETLK).
    pub async fn test_lock(&self, lock: &FileLock) -> Result<Option<FileLock>, MetaError> {
        if lock.kind == LockKind::Unlock {
            return Ok(None);
        }
        let client = self.client().await?;
        conflicting(&client, lock).await
    }

    /// Releases every lock `owner` of `mount` holds on `ino` (its last close, or the close
    /// of any descriptor by that owner for record locks).
    pub async fn release_locks(&self, ino: NodeId, mount: &str, owner: u64) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM file_locks WHERE ino = $1 AND mount_id = $2 AND owner = $3",
            &[&(ino.0 as i64), &mount, &(owner as i64)],
        )
        .await?;
        Ok(())
    }

    /// Keeps `mount`'s locks for another `lease`. A lease that had expired is not revived:
    /// the locks it covered are deleted first (others may have taken their ranges since).
    pub async fn renew_mount_lease(&self, mount: &str, lease: Duration) -> Result<(), MetaError> {
        in_txn!(self, |tx| { renew_lease(tx, mount, lease).await })
    }

    /// Gives up `mount`'s lease and every lock it holds (a clean unmount).
    pub async fn drop_mount_lease(&self, mount: &str) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                execute(tx, "DELETE FROM file_locks WHERE mount_id = $1", &[&mount]).await?;
                execute(tx, "DELETE FROM mount_leases WHERE mount_id = $1", &[&mount]).await?;
                Ok(())
            }
            .await
        })
    }
}

async fn renew_lease<C: deadpool_postgres::GenericClient>(
    c: &C,
    mount: &str,
    lease: Duration,
) -> Result<(), MetaError> {
    let live = query_opt(
        c,
        "SELECT expires_at > now() FROM mount_leases WHERE mount_id = $1",
        &[&mount],
    )
    .await?;
    if live.is_some_and(|r| !r.get::<_, bool>(0)) {
        tracing::warn!(mount, "this mount's lock lease had expired: its locks were lost");
        execute(c, "DELETE FROM file_locks WHERE mount_id = $1", &[&mount]).await?;
    }
    let ms = lease.as_millis().clamp(1, i64::MAX as u128) as i64;
    execute(
        c,
        "INSERT INTO mount_leases (mount_id, expires_at) \
         VALUES ($1, now() + $2::INT8 * INTERVAL '1 millisecond') \
         ON CONFLICT (mount_id) DO UPDATE SET expires_at = excluded.expires_at",
        &[&mount, &ms],
    )
    .await?;
    Ok(())
}

/// A lock of another owner on a live mount that overlaps `lock` and excludes it.
async fn conflicting<C: deadpool_postgres::GenericClient>(
    c: &C,
    lock: &FileLock,
) -> Result<Option<FileLock>, MetaError> {
    let row = query_opt(
        c,
        "SELECT l.mount_id, l.owner, l.start_off, l.end_off, l.exclusive, l.pid FROM file_locks l \
         JOIN mount_leases m ON m.mount_id = l.mount_id AND m.expires_at > now() \
         WHERE l.ino = $1 AND NOT (l.mount_id = $2 AND l.owner = $3) \
         AND l.start_off <= $5 AND l.end_off >= $4 AND (l.exclusive OR $6) \
         ORDER BY l.start_off LIMIT 1",
        &[
            &(lock.ino.0 as i64),
            &lock.mount,
            &(lock.owner as i64),
            &off(lock.start),
            &off(lock.end),
            &(lock.kind == LockKind::Exclusive),
        ],
    )
    .await?;
    Ok(row.map(|r| FileLock {
        ino: lock.ino,
        mount: r.get(0),
        owner: r.get::<_, i64>(1) as u64,
        start: r.get::<_, i64>(2) as u64,
        end: r.get::<_, i64>(3) as u64,
        kind: if r.get(4) {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        },
        pid: r.get::<_, i64>(5) as u32,
    }))
}
