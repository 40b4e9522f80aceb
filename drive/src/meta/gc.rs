//! The metadata side of garbage collection (migration 8): pass leases, marked candidates,
//! block claims, orphan tracking and pass reports. The decisions are `rules::gc`'s; the
//! engine that runs a pass is [`crate::gc`].

use std::time::{Duration, SystemTime};

use crate::error::MetaError;
use crate::meta::rows::{execute, from_system_time, query, query_opt};
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
                    "SELECT cutoff, dry_run, marked, finished_at IS NOT NULL FROM gc_passes WHERE id = $1",
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
                })
            }
            .await
        })
    }

    /// Mark: records as candidates of pass `id` every block that no block-map version
    /// references, untouched since `cutoff` and unclaimed. Returns how many and their stored
    /// bytes. Any error leaves the pass unmarked (nothing is swept without a whole mark).
    pub async fn gc_mark(&self, id: &str, cutoff: SystemTime) -> Result<(u64, u64), MetaError> {
        in_txn!(self, |tx| {
            async {
                execute(tx, "DELETE FROM gc_candidates WHERE pass_id = $1", &[&id]).await?;
                execute(
                    tx,
                    "INSERT INTO gc_candidates (pass_id, hash) \
                     SELECT $1, b.hash FROM blocks b WHERE b.updated_at < $2 AND b.claimed_by IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM file_blocks f WHERE f.hash = b.hash)",
                    &[&id, &cutoff],
                )
                .await?;
                execute(tx, "UPDATE gc_passes SET marked = true WHERE id = $1", &[&id]).await?;
                let row = query_opt(
                    tx,
                    "SELECT count(*), COALESCE(sum(b.stored_size), 0)::INT8 FROM gc_candidates c \
                     JOIN blocks b ON b.hash = c.hash WHERE c.pass_id = $1",
                    &[&id],
                )
                .await?
                .ok_or_else(|| MetaError::Internal("candidate count returned nothing".into()))?;
                Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
            }
            .await
        })
    }

    /// What mark would find at `cutoff`, changing nothing (a dry run): count and stored bytes.
    pub async fn gc_count_candidates(&self, cutoff: SystemTime) -> Result<(u64, u64), MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT count(*), COALESCE(sum(b.stored_size), 0)::INT8 FROM blocks b \
             WHERE b.updated_at < $1 AND b.claimed_by IS NULL \
             AND NOT EXISTS (SELECT 1 FROM file_blocks f WHERE f.hash = b.hash)",
            &[&cutoff],
        )
        .await?
        .ok_or_else(|| MetaError::Internal("candidate count returned nothing".into()))?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
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

    /// Claims candidate `hash` for pass `id` if it is still unreferenced, untouched since
    /// `cutoff` and unclaimed ([`may_claim`]), in one transaction with those checks; the
    /// candidate row goes either way. A commit referencing the block at the same time
    /// conflicts with this transaction, and one of the two retries.
    pub async fn gc_claim(&self, id: &str, hash: &[u8; 32], cutoff: SystemTime) -> Result<bool, MetaError> {
        let cutoff = from_system_time(cutoff);
        in_txn!(self, |tx| {
            async {
                let row = query_opt(
                    tx,
                    "SELECT b.state, b.claimed_by IS NOT NULL, b.updated_at, \
                     EXISTS (SELECT 1 FROM file_blocks f WHERE f.hash = b.hash) \
                     FROM blocks b WHERE b.hash = $1 FOR UPDATE",
                    &[&hash.as_slice()],
                )
                .await?;
                let claimed = match row {
                    None => false,
                    Some(r) => {
                        let phase = match (r.get::<_, bool>(1), r.get::<_, String>(0).as_str()) {
                            (true, _) => BlockPhase::Sweeping { lease_expired: false },
                            (false, "available") => BlockPhase::Available,
                            (false, _) => BlockPhase::Created,
                        };
                        let touched = from_system_time(r.get::<_, SystemTime>(2));
                        may_claim(phase, r.get(3), touched, cutoff)
                    }
                };
                if claimed {
                    execute(
                        tx,
                        "UPDATE blocks SET claimed_by = $2 WHERE hash = $1",
                        &[&hash.as_slice(), &id],
                    )
                    .await?;
                }
                execute(
                    tx,
                    "DELETE FROM gc_candidates WHERE pass_id = $1 AND hash = $2",
                    &[&id, &hash.as_slice()],
                )
                .await?;
                Ok(claimed)
            }
            .await
        })
    }

    /// The blocks pass `id` claimed and has not forgotten yet (a resumed pass finishes them).
    pub async fn gc_claims(&self, id: &str) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT hash, stored_size FROM blocks WHERE claimed_by = $1 ORDER BY hash",
            &[&id],
        )
        .await?;
        rows.into_iter()
            .map(|r| Ok((hash_of(r.get(0))?, r.get::<_, i64>(1) as u64)))
            .collect()
    }

    /// Claims an object without a block record for pass `id`: a claimed placeholder record
    /// keeps writers of that hash waiting while its object is deleted. `false` when a record
    /// appeared meanwhile (a writer registered the hash: the object is not an orphan).
    pub async fn gc_claim_orphan(&self, id: &str, hash: &[u8; 32]) -> Result<bool, MetaError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "INSERT INTO blocks (hash, size, stored_size, state, claimed_by) VALUES ($1, 0, 0, 'created', $2) \
             ON CONFLICT (hash) DO NOTHING",
            &[&hash.as_slice(), &id],
        )
        .await?;
        Ok(n == 1)
    }

    /// Forgets block `hash` once pass `id` deleted its object (only while it is still that
    /// pass's claim: a writer that took the record over keeps it).
    pub async fn gc_forget(&self, id: &str, hash: &[u8; 32]) -> Result<bool, MetaError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "DELETE FROM blocks WHERE hash = $1 AND claimed_by = $2",
            &[&hash.as_slice(), &id],
        )
        .await?;
        Ok(n == 1)
    }

    /// Which of `hashes` have a block record.
    pub async fn gc_recorded(&self, hashes: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, MetaError> {
        let client = self.client().await?;
        let keys: Vec<&[u8]> = hashes.iter().map(<[u8; 32]>::as_slice).collect();
        let rows = query(&client, "SELECT hash FROM blocks WHERE hash = ANY($1)", &[&keys]).await?;
        rows.into_iter().map(|r| hash_of(r.get(0))).collect()
    }

    /// Notes object keys seen without a block record (first sighting kept), forgets noted
    /// keys that are no longer orphans, and returns the noted keys first seen before `cutoff`.
    pub async fn gc_orphans(&self, seen: &[String], cutoff: SystemTime) -> Result<Vec<String>, MetaError> {
        in_txn!(self, |tx| {
            async {
                execute(
                    tx,
                    "INSERT INTO gc_orphans (key) SELECT unnest($1::TEXT[]) ON CONFLICT (key) DO NOTHING",
                    &[&seen],
                )
                .await?;
                execute(tx, "DELETE FROM gc_orphans WHERE NOT (key = ANY($1))", &[&seen]).await?;
                let rows = query(
                    tx,
                    "SELECT key FROM gc_orphans WHERE first_seen < $1 ORDER BY key",
                    &[&cutoff],
                )
                .await?;
                Ok(rows.into_iter().map(|r| r.get(0)).collect())
            }
            .await
        })
    }

    /// Forgets an orphan key once its object is gone.
    pub async fn gc_orphan_done(&self, key: &str) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(&client, "DELETE FROM gc_orphans WHERE key = $1", &[&key]).await?;
        Ok(())
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

    /// The report of pass `id` once it finished (`None` while it runs or when unknown).
    pub async fn gc_pass_report(&self, id: &str) -> Result<Option<serde_json::Value>, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT report FROM gc_passes WHERE id = $1 AND finished_at IS NOT NULL",
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
