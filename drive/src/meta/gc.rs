//! The metadata side of garbage collection (migrations 8 and 9): pass leases, marked candidates,
//! block claims, orphan tracking and pass reports. The decisions are `rules::gc`'s; the
//! engine that runs a pass is [`crate::gc`].

use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::gc::HashRange;
use crate::meta::rows::{block_is_referenced, execute, from_system_time, query, query_opt};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::Timestamp;
use crate::rules::gc::{BlockPhase, may_claim};

/// A pass as recorded: when it started, what it counts as old, whether mark has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassRecord {
    pub id: String,
    pub cutoff: SystemTime,
    pub dry_run: bool,
    pub marked: bool,
    pub finished: bool,
    /// The last hash an interrupted mark scanned.
    pub mark_after: Option<[u8; 32]>,
    /// The last key an interrupted orphan sweep covered.
    pub orphans_after: Option<String>,
    /// Whether the orphan sweep went through the whole listing.
    pub orphans_swept: bool,
    /// The report saved as the pass went (a resumed pass adds to it).
    pub progress: Option<serde_json::Value>,
}

/// One batch of mark: how many blocks it scanned and the last, the candidates it found and
/// their stored bytes, and whether it was the last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkBatch {
    pub scanned: u64,
    pub last: Option<[u8; 32]>,
    pub candidates: u64,
    pub bytes: u64,
    pub done: bool,
}

/// A block's hash and stored size.
pub type SizedBlock = ([u8; 32], u64);

/// A block a pass claimed and has not forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub hash: [u8; 32],
    pub size: u64,
    /// Its record is an orphan's placeholder.
    pub orphan: bool,
}

/// The keys one page of an orphan sweep covered: after `after` (from the start when `None`)
/// up to `last` (inclusive; `None`: to the end), within `range` (first key inclusive, end
/// key exclusive; `None`: unbounded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanSpan {
    pub after: Option<String>,
    pub last: Option<String>,
    pub range: (Option<String>, Option<String>),
}

/// Blocks of a range in hash order after a cursor: $1 range start (inclusive), $2 the cursor
/// (exclusive; empty: none), $3 range end (exclusive; NULL: none), $4 the limit.
const SCAN_BLOCKS: &str = "SELECT hash, stored_size, updated_at, claimed_by FROM blocks \
     WHERE hash >= $1 AND hash > $2 AND ($3::BYTEA IS NULL OR hash < $3) ORDER BY hash LIMIT $4";

/// Which scanned blocks `s` are candidates at cutoff $5.
const UNREFERENCED: &str = concat!(
    "s.updated_at < $5 AND s.claimed_by IS NULL AND NOT ",
    block_is_referenced!("s.hash")
);

fn range_params(range: HashRange, after: Option<[u8; 32]>) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    (
        range.start.to_vec(),
        after.map(|h| h.to_vec()).unwrap_or_default(),
        range.end.map(|h| h.to_vec()),
    )
}

fn mark_batch_of(row: &tokio_postgres::Row, limit: usize) -> Result<MarkBatch, MetaError> {
    let scanned = row.get::<_, i64>(0) as u64;
    Ok(MarkBatch {
        scanned,
        last: row.get::<_, Option<Vec<u8>>>(1).map(hash_of).transpose()?,
        candidates: row.get::<_, i64>(2) as u64,
        bytes: row.get::<_, i64>(3) as u64,
        done: scanned < limit as u64,
    })
}

async fn save_progress<C: GenericClient>(
    tx: &C,
    id: &str,
    progress: &serde_json::Value,
) -> Result<(), MetaError> {
    execute(
        tx,
        "UPDATE gc_passes SET report = $2 WHERE id = $1",
        &[&id, progress],
    )
    .await?;
    Ok(())
}

fn hash_of(bytes: Vec<u8>) -> Result<[u8; 32], MetaError> {
    bytes
        .try_into()
        .map_err(|_| MetaError::Internal("block hash is not 32 bytes".into()))
}

impl PgMetaStore {
    /// Takes or renews the lease of `scope` for `pass_id` for `lease` from now, and returns
    /// when it expires. Another pass holding a live lease is a `Conflict`.
    pub async fn gc_lease(
        &self,
        scope: &str,
        pass_id: &str,
        lease: Duration,
    ) -> Result<Timestamp, MetaError> {
        let secs = lease.as_secs_f64();
        in_txn!(self, |tx| {
            async {
                let row = query_opt(
                    tx,
                    "INSERT INTO gc_leases (scope, pass_id, expires_at) \
                     VALUES ($1, $2, now() + $3::FLOAT8 * INTERVAL '1 second') \
                     ON CONFLICT (scope) DO UPDATE SET pass_id = excluded.pass_id, expires_at = excluded.expires_at \
                     WHERE gc_leases.pass_id = excluded.pass_id OR gc_leases.expires_at < now() \
                     RETURNING expires_at",
                    &[&scope, &pass_id, &secs],
                )
                .await?;
                row.map(|r| from_system_time(r.get::<_, SystemTime>(0))).ok_or_else(|| {
                    MetaError::Conflict(format!("another GC pass holds the lease of {scope}"))
                })
            }
            .await
        })
    }

    /// Gives up `pass_id`'s lease of `scope`.
    pub async fn gc_release(&self, scope: &str, pass_id: &str) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM gc_leases WHERE scope = $1 AND pass_id = $2",
            &[&scope, &pass_id],
        )
        .await?;
        Ok(())
    }

    /// Starts pass `id` (its cutoff: now minus `grace`), or finds it to resume it.
    pub async fn gc_begin(
        &self,
        id: &str,
        scope: &str,
        grace: Duration,
        dry_run: bool,
    ) -> Result<PassRecord, MetaError> {
        let secs = grace.as_secs_f64();
        in_txn!(self, |tx| {
            async {
                execute(
                    tx,
                    "INSERT INTO gc_passes (id, scope, cutoff, dry_run) \
                     VALUES ($1, $2, now() - $3::FLOAT8 * INTERVAL '1 second', $4) ON CONFLICT (id) DO NOTHING",
                    &[&id, &scope, &secs, &dry_run],
                )
                .await?;
                let row = query_opt(
                    tx,
                    "SELECT cutoff, dry_run, marked, finished_at IS NOT NULL, mark_after, orphans_after, \
                     orphans_swept, report FROM gc_passes WHERE id = $1",
                    &[&id],
                )
                .await?
                .ok_or_else(|| MetaError::Internal(format!("GC pass {id} vanished")))?;
                Ok(PassRecord {
                    id: id.to_string(),
                    cutoff: row.get(0),
                    dry_run: row.get(1),
                    marked: row.get(2),
                    finished: row.get(3),
                    mark_after: row.get::<_, Option<Vec<u8>>>(4).map(hash_of).transpose()?,
                    orphans_after: row.get(5),
                    orphans_swept: row.get(6),
                    progress: row.get(7),
                })
            }
            .await
        })
    }

    /// One batch of mark: scans up to `limit` blocks of `range` after `after` in hash order
    /// and records as candidates of pass `id` those no block-map version references,
    /// untouched since `cutoff` and unclaimed. In the same transaction it records where mark
    /// got to, the report `progress` makes of this batch, and, after the last batch, that mark
    /// is complete (nothing is swept before that).
    pub async fn gc_mark_batch(
        &self,
        id: &str,
        cutoff: SystemTime,
        range: HashRange,
        after: Option<[u8; 32]>,
        limit: usize,
        progress: &(dyn Fn(&MarkBatch) -> serde_json::Value + Sync),
    ) -> Result<MarkBatch, MetaError> {
        let sql = format!(
            "WITH scanned AS ({SCAN_BLOCKS}), marked AS (\
             INSERT INTO gc_candidates (pass_id, hash) SELECT $6, s.hash FROM scanned s WHERE {UNREFERENCED} \
             ON CONFLICT DO NOTHING RETURNING hash) \
             SELECT (SELECT count(*) FROM scanned), (SELECT hash FROM scanned ORDER BY hash DESC LIMIT 1), (SELECT count(*) FROM marked), \
             (SELECT COALESCE(sum(s.stored_size), 0)::INT8 FROM scanned s WHERE s.hash IN (SELECT hash FROM marked))"
        );
        let (start, after, end) = range_params(range, after);
        in_txn!(self, |tx| {
            async {
                let row = query_opt(tx, &sql, &[&start, &after, &end, &(limit as i64), &cutoff, &id])
                    .await?
                    .ok_or_else(|| MetaError::Internal("mark returned nothing".into()))?;
                let batch = mark_batch_of(&row, limit)?;
                execute(
                    tx,
                    "UPDATE gc_passes SET mark_after = COALESCE($2, mark_after), marked = $3, report = $4 \
                     WHERE id = $1",
                    &[
                        &id,
                        &batch.last.map(|h| h.to_vec()),
                        &batch.done,
                        &progress(&batch),
                    ],
                )
                .await?;
                Ok(batch)
            }
            .await
        })
    }

    /// What one batch of mark would find (a dry run), changing nothing.
    pub async fn gc_count_batch(
        &self,
        cutoff: SystemTime,
        range: HashRange,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<MarkBatch, MetaError> {
        let sql = format!(
            "WITH scanned AS ({SCAN_BLOCKS}) \
             SELECT (SELECT count(*) FROM scanned), (SELECT hash FROM scanned ORDER BY hash DESC LIMIT 1), \
             count(s.hash), COALESCE(sum(s.stored_size), 0)::INT8 FROM scanned s WHERE {UNREFERENCED}"
        );
        let (start, after, end) = range_params(range, after);
        let client = self.client().await?;
        let row = query_opt(&client, &sql, &[&start, &after, &end, &(limit as i64), &cutoff])
            .await?
            .ok_or_else(|| MetaError::Internal("candidate count returned nothing".into()))?;
        mark_batch_of(&row, limit)
    }

    /// Up to `limit` candidates of pass `id` after `after` (by hash), with their stored size.
    pub async fn gc_candidates(
        &self,
        id: &str,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let client = self.client().await?;
        let after = after.map(|h| h.to_vec()).unwrap_or_default();
        let rows = query(
            &client,
            "SELECT c.hash, COALESCE(b.stored_size, 0) FROM gc_candidates c \
             LEFT JOIN blocks b ON b.hash = c.hash WHERE c.pass_id = $1 AND c.hash > $2 \
             ORDER BY c.hash LIMIT $3",
            &[&id, &after, &(limit as i64)],
        )
        .await?;
        rows.into_iter()
            .map(|r| Ok((hash_of(r.get(0))?, r.get::<_, i64>(1) as u64)))
            .collect()
    }

    /// Claims those of `hashes` (candidates of pass `id`) that are still unreferenced,
    /// untouched since `cutoff` and unclaimed ([`may_claim`]), in one transaction with those
    /// checks, and returns them with their stored sizes; the candidate rows go either way, and
    /// the pass's report becomes what `progress` makes of the claims. A commit referencing a
    /// block at the same time conflicts with this transaction, and one of the two retries.
    pub async fn gc_claim_batch(
        &self,
        id: &str,
        hashes: &[[u8; 32]],
        cutoff: SystemTime,
        progress: &(dyn Fn(&[SizedBlock]) -> serde_json::Value + Sync),
    ) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let cutoff = from_system_time(cutoff);
        let keys: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
        in_txn!(self, |tx| {
            async {
                let rows = query(
                    tx,
                    concat!(
                        "SELECT b.hash, b.state, b.claimed_by IS NOT NULL, b.updated_at, ",
                        block_is_referenced!("b.hash"),
                        ", b.stored_size FROM blocks b WHERE b.hash = ANY($1) ORDER BY b.hash FOR UPDATE"
                    ),
                    &[&keys],
                )
                .await?;
                let mut claimed = Vec::new();
                for r in rows {
                    let phase = match (r.get::<_, bool>(2), r.get::<_, String>(1).as_str()) {
                        (true, _) => BlockPhase::Sweeping { lease_expired: false },
                        (false, "available") => BlockPhase::Available,
                        (false, _) => BlockPhase::Created,
                    };
                    let touched = from_system_time(r.get::<_, SystemTime>(3));
                    if may_claim(phase, r.get(4), touched, cutoff) {
                        claimed.push((hash_of(r.get(0))?, r.get::<_, i64>(5) as u64));
                    }
                }
                let claimed_keys: Vec<&[u8]> = claimed.iter().map(|(h, _)| h.as_slice()).collect();
                execute(
                    tx,
                    "UPDATE blocks SET claimed_by = $2 WHERE hash = ANY($1)",
                    &[&claimed_keys, &id],
                )
                .await?;
                execute(
                    tx,
                    "DELETE FROM gc_candidates WHERE pass_id = $1 AND hash = ANY($2)",
                    &[&id, &keys],
                )
                .await?;
                save_progress(tx, id, &progress(&claimed)).await?;
                Ok(claimed)
            }
            .await
        })
    }

    /// The blocks pass `id` claimed and has not forgotten yet (a resumed pass finishes them),
    /// with their stored sizes and whether each is an orphan (a noted key of `gc_orphans`).
    pub async fn gc_claims(&self, id: &str) -> Result<Vec<Claim>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT b.hash, b.stored_size, EXISTS (SELECT 1 FROM gc_orphans o WHERE o.key = \
             'blocks/' || substr(encode(b.hash, 'hex'), 1, 2) || '/' || encode(b.hash, 'hex')) \
             FROM blocks b WHERE b.claimed_by = $1 ORDER BY b.hash",
            &[&id],
        )
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Claim {
                    hash: hash_of(r.get(0))?,
                    size: r.get::<_, i64>(1) as u64,
                    orphan: r.get(2),
                })
            })
            .collect()
    }

    /// Claims objects without a block record for pass `id` (hash and listed size): a claimed
    /// placeholder record keeps writers of that hash waiting while its object is deleted.
    /// Returns those claimed; a hash whose record appeared meanwhile (a writer registered it:
    /// its object is no orphan) is left alone.
    pub async fn gc_claim_orphans(
        &self,
        id: &str,
        orphans: &[([u8; 32], u64)],
    ) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let keys: Vec<&[u8]> = orphans.iter().map(|(h, _)| h.as_slice()).collect();
        let sizes: Vec<i64> = orphans.iter().map(|&(_, s)| s as i64).collect();
        let client = self.client().await?;
        let rows = query(
            &client,
            "INSERT INTO blocks (hash, size, stored_size, state, claimed_by) \
             SELECT h, 0, s, 'created', $3 FROM unnest($1::BYTEA[], $2::INT8[]) AS o (h, s) \
             ON CONFLICT (hash) DO NOTHING RETURNING hash, stored_size",
            &[&keys, &sizes, &id],
        )
        .await?;
        rows.into_iter()
            .map(|r| Ok((hash_of(r.get(0))?, r.get::<_, i64>(1) as u64)))
            .collect()
    }

    /// Forgets the blocks `hashes` once pass `id` deleted their objects (only those still its
    /// claims: a writer that took a record over keeps it), and the noted orphan keys among
    /// them (`orphan_keys`), and saves the pass's report `progress`, in one transaction.
    pub async fn gc_forget(
        &self,
        id: &str,
        hashes: &[[u8; 32]],
        orphan_keys: &[String],
        progress: &serde_json::Value,
    ) -> Result<u64, MetaError> {
        let keys: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
        in_txn!(self, |tx| {
            async {
                let n = execute(
                    tx,
                    "DELETE FROM blocks WHERE hash = ANY($1) AND claimed_by = $2",
                    &[&keys, &id],
                )
                .await?;
                execute(tx, "DELETE FROM gc_orphans WHERE key = ANY($1)", &[&orphan_keys]).await?;
                save_progress(tx, id, progress).await?;
                Ok(n)
            }
            .await
        })
    }

    /// Which of `hashes` have a block record.
    pub async fn gc_recorded(&self, hashes: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, MetaError> {
        let client = self.client().await?;
        let keys: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
        let rows = query(&client, "SELECT hash FROM blocks WHERE hash = ANY($1)", &[&keys]).await?;
        rows.into_iter().map(|r| hash_of(r.get(0))).collect()
    }

    /// One page of the orphan sweep of pass `id`, in one transaction: notes the `orphans`
    /// (keys without a block record) the page showed (first sighting kept), forgets noted keys
    /// of the span the page covered that it no longer shows (gone, or recorded since), records
    /// where the sweep got to and the report `progress`, and returns the page's orphans first
    /// seen before `cutoff`. The span is the keys after `span.after` up to `span.last` (to
    /// the end when `None`) within `span.range`.
    pub async fn gc_orphans_page(
        &self,
        id: &str,
        orphans: &[String],
        span: &OrphanSpan,
        cutoff: SystemTime,
        progress: &serde_json::Value,
    ) -> Result<Vec<String>, MetaError> {
        let swept = span.last.is_none();
        in_txn!(self, |tx| {
            async {
                execute(
                    tx,
                    "INSERT INTO gc_orphans (key) SELECT unnest($1::TEXT[]) ON CONFLICT (key) DO NOTHING",
                    &[&orphans],
                )
                .await?;
                execute(
                    tx,
                    "DELETE FROM gc_orphans WHERE NOT (key = ANY($1)) \
                     AND ($2::TEXT IS NULL OR key > $2) AND ($3::TEXT IS NULL OR key <= $3) \
                     AND ($4::TEXT IS NULL OR key >= $4) AND ($5::TEXT IS NULL OR key < $5)",
                    &[&orphans, &span.after, &span.last, &span.range.0, &span.range.1],
                )
                .await?;
                execute(
                    tx,
                    "UPDATE gc_passes SET orphans_after = COALESCE($2, orphans_after), orphans_swept = $3, \
                     report = $4 WHERE id = $1",
                    &[&id, &span.last, &swept, progress],
                )
                .await?;
                let rows = query(
                    tx,
                    "SELECT key FROM gc_orphans WHERE key = ANY($1) AND first_seen < $2 ORDER BY key",
                    &[&orphans, &cutoff],
                )
                .await?;
                Ok(rows.into_iter().map(|r| r.get(0)).collect())
            }
            .await
        })
    }

    /// Records the report of pass `id` and marks it finished.
    pub async fn gc_finish(&self, id: &str, report: &serde_json::Value) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE gc_passes SET finished_at = now(), report = $2 WHERE id = $1",
            &[&id, report],
        )
        .await?;
        Ok(())
    }

    /// Records the lifecycle report of pass `id` (its block pass finished already).
    pub async fn gc_finish_lifecycle(&self, id: &str, report: &serde_json::Value) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE gc_passes SET lifecycle_report = $2 WHERE id = $1",
            &[&id, report],
        )
        .await?;
        Ok(())
    }

    /// The block-pass report of pass row `id` once it finished (`None` while it runs or when
    /// unknown).
    pub async fn gc_block_report(&self, id: &str) -> Result<Option<serde_json::Value>, MetaError> {
        self.finished_report("report", id).await
    }

    /// The lifecycle report of pass `id` once it finished (`None` while it runs or when
    /// unknown).
    pub async fn gc_pass_report(&self, id: &str) -> Result<Option<serde_json::Value>, MetaError> {
        self.finished_report("lifecycle_report", id).await
    }

    async fn finished_report(&self, column: &str, id: &str) -> Result<Option<serde_json::Value>, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {column} FROM gc_passes WHERE id = $1 AND finished_at IS NOT NULL"),
            &[&id],
        )
        .await?;
        Ok(row.and_then(|r| r.get::<_, Option<serde_json::Value>>(0)))
    }

    /// The database's clock, for lease arithmetic against `gc_leases.expires_at`.
    pub async fn gc_now(&self) -> Result<Timestamp, MetaError> {
        let client = self.client().await?;
        let row = query_opt(&client, "SELECT now()", &[])
            .await?
            .ok_or_else(|| MetaError::Internal("now() returned nothing".into()))?;
        Ok(from_system_time(row.get::<_, SystemTime>(0)))
    }
}
