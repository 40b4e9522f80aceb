//! Block maps: which block holds each block-sized range of a file, epoch-versioned like
//! inodes, plus the block records (size, tier, transfer state) that GC and tiering act on.
//!
//! A content commit (new block map entries, size, mtime, content version) is ONE transaction,
//! so readers see either the old content or the new, never a mix.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::error::MetaError;
use crate::meta::rows::{
    WsCtx, block_is_referenced, execute, execute_in_order, first_failure, query, query_opt, record_event,
    settle, write_inode, ws_and_inode,
};
use crate::meta::usage::charge;
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Actor, Attr, Epoch, NodeId, NodeKind, Timestamp, View, WorkspaceId};
use crate::rules::blocks::{Shrink, shrink};
use crate::rules::gc::{BlockPhase, OnRegister, on_register};
use crate::rules::quota;
use crate::rules::write_once;

/// One entry of a file's block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlock {
    /// Block index: the block covers `[idx * block_size, (idx + 1) * block_size)`.
    pub idx: u64,
    /// Content address of the block object.
    pub hash: [u8; 32],
    /// Valid bytes at the start of the block; the rest reads as zeros.
    pub len: u64,
}

/// A change to one block-map entry: `None` makes the range a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockChange {
    pub idx: u64,
    pub block: Option<([u8; 32], u64)>,
}

/// The first content of a file created with [`PgMetaStore::create_file`]: its blocks as
/// `(index, hash, valid length)` (missing indexes are holes), size and mtime.
#[derive(Debug, Clone, Copy)]
pub struct InitialContent<'a> {
    pub blocks: &'a [(u64, [u8; 32], u64)],
    pub size: u64,
    pub mtime: Timestamp,
}

/// Upload state of a block record, shared by every writer of the same content.
///
/// The one transition is `Created -> Available`, made by a content commit. No upload ever
/// writes a state: several writers may upload one block at once (objects are
/// content-addressed, so their uploads are idempotent), and a writer that saw its own upload
/// succeed must not be failed by another's failure. So a failed upload changes nothing
/// shared and leaves the record `created`; GC (not built yet) sweeps `created` records no
/// block map references once they are older than its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Recorded (or renewed) before an upload starts; not known to be stored. The content
    /// commit that first references the block (the writer's word that its own upload
    /// finished) makes it `Available`.
    Created,
    /// Durable in the object store and referenced by a committed block map (or was): a
    /// writer may skip uploading it.
    Available,
}

/// A block record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub hash: [u8; 32],
    pub size: u64,
    pub stored_size: u64,
    pub tier: String,
    pub state: BlockState,
}

impl PgMetaStore {
    /// The block-map entries of `ino` with index in `[first, first + count)`, as seen in `view`.
    /// Missing indexes are holes.
    pub async fn block_map(
        &self,
        view: View,
        ino: NodeId,
        first: u64,
        count: u64,
    ) -> Result<Vec<FileBlock>, MetaError> {
        let client = self.client().await?;
        let (lo, hi) = (
            first as i64,
            first.saturating_add(count).min(i64::MAX as u64) as i64,
        );
        let rows = match view {
            View::Live => {
                query(
                    &client,
                    "SELECT idx, hash, len FROM file_blocks WHERE ino = $1 AND valid_to IS NULL \
                     AND idx >= $2 AND idx < $3 ORDER BY idx",
                    &[&(ino.0 as i64), &lo, &hi],
                )
                .await?
            }
            View::At(Epoch(e)) => {
                query(
                    &client,
                    "SELECT idx, hash, len FROM file_blocks WHERE ino = $1 AND idx >= $2 AND idx < $3 \
                     AND valid_from <= $4 AND (valid_to IS NULL OR valid_to > $4) ORDER BY idx",
                    &[&(ino.0 as i64), &lo, &hi, &e],
                )
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(FileBlock {
                    idx: r.get::<_, i64>(0) as u64,
                    hash: to_hash(r.get::<_, Vec<u8>>(1))?,
                    len: r.get::<_, i64>(2) as u64,
                })
            })
            .collect()
    }

    /// Records a block about to be uploaded. Returns `true` when an available object with this
    /// hash already exists, so the upload can be skipped (identical blocks are stored once).
    /// A `created` record (another writer's upload in flight, or one that failed) is no
    /// reason to skip: the caller uploads itself.
    pub async fn register_block(
        &self,
        hash: &[u8; 32],
        size: u64,
        stored_size: u64,
    ) -> Result<bool, MetaError> {
        // A GC pass deleting this block's object finishes within moments; a pass that
        // stalls past its lease is taken over (rules::gc::on_register).
        let deadline = std::time::Instant::now() + CLAIM_WAIT;
        loop {
            let decided = in_txn!(self, |tx| {
                async {
                    let row = query_opt(
                        tx,
                        "SELECT b.state, b.claimed_by IS NOT NULL, \
                         COALESCE((SELECT l.expires_at < now() FROM gc_leases l WHERE l.pass_id = b.claimed_by), true) \
                         FROM blocks b WHERE b.hash = $1 FOR UPDATE",
                        &[&hash.as_slice()],
                    )
                    .await?;
                    let phase = row.map(|r| match (r.get::<_, bool>(1), r.get::<_, String>(0).as_str()) {
                        (true, _) => BlockPhase::Sweeping {
                            lease_expired: r.get(2),
                        },
                        (false, "available") => BlockPhase::Available,
                        (false, _) => BlockPhase::Created,
                    });
                    match on_register(phase) {
                        OnRegister::Deduplicate => {
                            // Touched (at most once a minute) so that a pass's cutoff passes it
                            // by until the commit that will reference it.
                            execute(
                                tx,
                                "UPDATE blocks SET updated_at = now() WHERE hash = $1 \
                                 AND updated_at < now() - INTERVAL '1 minute'",
                                &[&hash.as_slice()],
                            )
                            .await?;
                            Ok(Some(true))
                        }
                        OnRegister::Upload => {
                            // A new record, or a created one renewed (its grace restarts), or
                            // a claim whose pass died taken over.
                            execute(
                                tx,
                                "INSERT INTO blocks (hash, size, stored_size, state) VALUES ($1, $2, $3, 'created') \
                                 ON CONFLICT (hash) DO UPDATE SET state = 'created', claimed_by = NULL, \
                                 size = excluded.size, stored_size = excluded.stored_size, updated_at = now()",
                                &[&hash.as_slice(), &(size as i64), &(stored_size as i64)],
                            )
                            .await?;
                            Ok(Some(false))
                        }
                        OnRegister::WaitForSweep => Ok(None),
                    }
                }
                .await
            })?;
            match decided {
                Some(deduplicated) => return Ok(deduplicated),
                None if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                None => {
                    return Err(MetaError::Unavailable {
                        message: "the block is being deleted by a GC pass that has not finished".into(),
                        source: None,
                    });
                }
            }
        }
    }

    /// Renews the records of blocks uploaded and not committed yet (their grace restarts), so a
    /// write session that keeps no copy of them can hold them past a GC pass's grace period.
    /// A claimed record is left to its pass: the hashes returned (claimed, or with no record)
    /// may have lost their objects.
    pub async fn renew_blocks(&self, hashes: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, MetaError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let keys: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
        let renewed = query(
            &client,
            "UPDATE blocks SET updated_at = now() WHERE hash = ANY($1) AND claimed_by IS NULL RETURNING hash",
            &[&keys],
        )
        .await?
        .into_iter()
        .map(|r| to_hash(r.get(0)))
        .collect::<Result<std::collections::HashSet<[u8; 32]>, MetaError>>()?;
        Ok(hashes.iter().filter(|h| !renewed.contains(*h)).copied().collect())
    }

    /// A block record, if any.
    pub async fn block(&self, hash: &[u8; 32]) -> Result<Option<BlockRecord>, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT hash, size, stored_size, tier, state FROM blocks WHERE hash = $1",
            &[&hash.as_slice()],
        )
        .await?;
        row.map(|r| {
            let state: String = r.get(4);
            Ok(BlockRecord {
                hash: to_hash(r.get(0))?,
                size: r.get::<_, i64>(1) as u64,
                stored_size: r.get::<_, i64>(2) as u64,
                tier: r.get(3),
                // `failed` (written by older versions) means what `created` does: not known
                // to be stored.
                state: match state.as_str() {
                    "available" => BlockState::Available,
                    _ => BlockState::Created,
                },
            })
        })
        .transpose()
    }

    /// Commits new content for file `ino` in one transaction: block-map changes, size and
    /// mtime, and a new content version. Every referenced block must be registered; the commit
    /// is the writer's word that it saw its own uploads of the `Created` ones succeed (or found
    /// them `Available` when it registered them), so it makes them `Available` in the same
    /// transaction (no separate state update per block).
    ///
    /// `base_version` is the content version the writer started from: in project workspaces a
    /// write session may only commit when the file had no committed content when it began and
    /// nobody committed it since (see [`write_once::commit`]).
    ///
    /// A commit that grows the file past the workspace's quota fails with `QuotaExceeded`
    /// and changes nothing (see `meta/usage.rs`).
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_content(
        &self,
        actor: &Actor,
        ws: WorkspaceId,
        ino: NodeId,
        base_version: u64,
        changes: &[BlockChange],
        new_size: u64,
        mtime: Timestamp,
    ) -> Result<Attr, MetaError> {
        let now = self.clock.now();
        let hashes: Vec<&[u8]> = changes
            .iter()
            .filter_map(|c| c.block.as_ref().map(|(h, _)| h.as_slice()))
            .collect();
        in_txn!(self, |tx| {
            async {
                let (found, claimed) = tokio::join!(ws_and_inode(tx, ws, ino), claim_blocks(tx, &hashes));
                let ((ws, mut node), ()) = settle(found, claimed)?;
                if node.attr.kind != NodeKind::File {
                    return Err(MetaError::InvalidArgument(format!(
                        "node {ino} is not a regular file"
                    )));
                }
                write_once::commit(ws.kind, &node.attr, base_version)?;
                let before = node.attr.clone();
                let old_size = node.attr.size;
                node.attr.size = new_size;
                node.attr.mtime = mtime;
                node.attr.ctime = now;
                node.attr.content_version += 1;
                let block_map = async {
                    if new_size < old_size {
                        resize_blocks(tx, &ws, ino, old_size, new_size).await?;
                    }
                    // Independent rows: every change goes out at once.
                    let set = changes
                        .iter()
                        .map(|change| set_block(tx, &ws, ino, change.idx, change.block.as_ref()));
                    first_failure(futures::future::join_all(set).await)
                };
                let (charged, mapped, written, event) = tokio::join!(
                    charge(tx, &ws, quota::change(&before, &node.attr)),
                    block_map,
                    write_inode(tx, &ws, &node),
                    record_event(tx, ws.id, actor, "write", Some(ino), None, None),
                );
                first_failure([charged, mapped, written, event])?;
                Ok(node.attr)
            }
            .await
        })
    }
}

impl PgMetaStore {
    /// Blocks no block map of any version references and that are older than `grace` (so an
    /// upload in flight, recorded but not yet committed, is never picked): the sweep set of
    /// a mark-and-sweep GC. Snapshots keep blocks alive through their versioned rows.
    ///
    /// `created` records whose uploads failed or were never committed land here once their
    /// grace has passed (no upload marks a record failed, see [`BlockState`]). Note for the
    /// GC of issue 17: a writer that finds an `available` record skips its upload and commits
    /// a reference to the existing object (registration does not renew an available record),
    /// and a writer that registers the hash again uploads it again; deleting an object must be
    /// ordered against both (e.g. forget the record first, then delete the object only if no
    /// newer registration of the hash exists).
    pub async fn unreferenced_blocks(
        &self,
        grace: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<[u8; 32]>, MetaError> {
        let client = self.client().await?;
        let cutoff = std::time::SystemTime::now() - grace;
        let rows = query(
            &client,
            concat!(
                "SELECT b.hash FROM blocks b WHERE b.updated_at < $1 AND NOT ",
                block_is_referenced!("b.hash"),
                " ORDER BY b.hash LIMIT $2"
            ),
            &[&cutoff, &(limit.min(100_000) as i64)],
        )
        .await?;
        rows.iter().map(|r| to_hash(r.get(0))).collect()
    }

    /// Removes the record of a block whose object was deleted, unless a commit referenced it
    /// meanwhile (then it returns `false` and the object must be kept or re-uploaded).
    pub async fn forget_block(&self, hash: &[u8; 32]) -> Result<bool, MetaError> {
        in_txn!(self, |tx| {
            async {
                let n = execute(
                    tx,
                    concat!(
                        "DELETE FROM blocks WHERE hash = $1 AND NOT ",
                        block_is_referenced!("$1")
                    ),
                    &[&hash.as_slice()],
                )
                .await?;
                Ok(n > 0)
            }
            .await
        })
    }
}

fn to_hash(bytes: Vec<u8>) -> Result<[u8; 32], MetaError> {
    bytes
        .try_into()
        .map_err(|_| MetaError::Internal("block hash is not 32 bytes".into()))
}

/// How long a writer waits for a GC pass to finish deleting a block it wants to store: longer
/// than a pass's lease (60 s by default), after which the writer takes the block over.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Checks that every block in `hashes` is registered (a `failed` record left by an older
/// version is refused, though a writer renews it when it registers), and makes the `Created`
/// ones `Available` (see [`PgMetaStore::commit_content`]). Both statements go out together.
pub(crate) async fn claim_blocks<C: GenericClient>(c: &C, hashes: &[&[u8]]) -> Result<(), MetaError> {
    if hashes.is_empty() {
        return Ok(());
    }
    let params: [&(dyn ToSql + Sync); 1] = [&hashes];
    let (usable, marked) = tokio::join!(
        query(
            c,
            "SELECT DISTINCT hash FROM blocks WHERE hash = ANY($1) AND state IN ('created', 'available') \
             AND claimed_by IS NULL",
            &params,
        ),
        execute(
            c,
            "UPDATE blocks SET state = 'available', updated_at = now() WHERE hash = ANY($1) AND state = 'created'",
            &params,
        ),
    );
    let (usable, _) = settle(usable, marked)?;
    let usable: std::collections::HashSet<Vec<u8>> = usable.iter().map(|r| r.get(0)).collect();
    let mut gone: Vec<[u8; 32]> = hashes
        .iter()
        .filter(|h| !usable.contains(**h))
        .filter_map(|h| <[u8; 32]>::try_from(*h).ok())
        .collect();
    gone.sort_unstable();
    gone.dedup();
    if !gone.is_empty() {
        return Err(MetaError::BlocksGone(gone));
    }
    Ok(())
}

/// Sets or clears block `idx` of `ino` as a new live version, in two statements sent
/// together (no read first): the first closes a live row born in an earlier epoch (snapshots
/// keep it); the second then writes the current epoch's row in place, or removes it for a hole.
/// Rows born in this epoch are invisible to every snapshot, so changing them in place is safe.
pub(crate) async fn set_block<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    ino: NodeId,
    idx: u64,
    block: Option<&([u8; 32], u64)>,
) -> Result<(), MetaError> {
    let (i, x) = (ino.0 as i64, idx as i64);
    let key: [&(dyn ToSql + Sync); 3] = [&i, &x, &ws.epoch];
    let close = (
        "UPDATE file_blocks SET valid_to = $3 WHERE ino = $1 AND idx = $2 AND valid_to IS NULL \
         AND valid_from < $3",
        &key[..],
    );
    match block {
        Some((hash, len)) => {
            let (hash, len) = (hash.as_slice(), *len as i64);
            let row: [&(dyn ToSql + Sync); 5] = [&i, &x, &ws.epoch, &hash, &len];
            let write = (
                "INSERT INTO file_blocks (ino, idx, valid_from, hash, len) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (ino, idx) WHERE valid_to IS NULL \
                 DO UPDATE SET hash = excluded.hash, len = excluded.len",
                &row[..],
            );
            execute_in_order(c, &[close, write]).await
        }
        None => {
            let remove = (
                "DELETE FROM file_blocks WHERE ino = $1 AND idx = $2 AND valid_to IS NULL AND valid_from = $3",
                &key[..],
            );
            execute_in_order(c, &[close, remove]).await
        }
    }
}

/// Writes the block map of the new file `ino` (no earlier rows exist), in one statement.
pub(crate) async fn insert_blocks<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    ino: NodeId,
    blocks: &[(u64, [u8; 32], u64)],
) -> Result<(), MetaError> {
    if blocks.is_empty() {
        return Ok(());
    }
    let idxs: Vec<i64> = blocks.iter().map(|b| b.0 as i64).collect();
    let hashes: Vec<&[u8]> = blocks.iter().map(|b| b.1.as_slice()).collect();
    let lens: Vec<i64> = blocks.iter().map(|b| b.2 as i64).collect();
    execute(
        c,
        "INSERT INTO file_blocks (ino, idx, valid_from, hash, len) \
         SELECT $1, t.idx, $2, t.hash, t.len FROM unnest($3::INT8[], $4::BYTEA[], $5::INT8[]) AS t(idx, hash, len)",
        &[&(ino.0 as i64), &ws.epoch, &idxs, &hashes, &lens],
    )
    .await?;
    Ok(())
}

/// Adjusts the block map of `ino` for a size change: blocks wholly past the new end become
/// holes and the last block's valid length is cut, so bytes past the new end read as zeros if
/// the file grows again. Growing needs no change (holes read as zeros).
pub(crate) async fn resize_blocks<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    ino: NodeId,
    old_size: u64,
    new_size: u64,
) -> Result<(), MetaError> {
    if new_size >= old_size {
        return Ok(());
    }
    let Shrink { keep, tail } = shrink(new_size, ws.block_size);
    let doomed = query(
        c,
        "SELECT idx FROM file_blocks WHERE ino = $1 AND idx >= $2 AND valid_to IS NULL",
        &[&(ino.0 as i64), &(keep as i64)],
    )
    .await?;
    for row in doomed {
        set_block(c, ws, ino, row.get::<_, i64>(0) as u64, None).await?;
    }
    if let Some((idx, tail)) = tail {
        let live = query_opt(
            c,
            "SELECT hash, len FROM file_blocks WHERE ino = $1 AND idx = $2 AND valid_to IS NULL",
            &[&(ino.0 as i64), &(idx as i64)],
        )
        .await?;
        if let Some(row) = live {
            let len = row.get::<_, i64>(1) as u64;
            if len > tail {
                let hash = to_hash(row.get(0))?;
                set_block(c, ws, ino, idx, Some(&(hash, tail))).await?;
            }
        }
    }
    Ok(())
}
