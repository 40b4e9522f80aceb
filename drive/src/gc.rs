//! Garbage-collection passes over blocks (issue 17): mark, claim and sweep unreferenced
//! blocks, and sweep orphan objects (uploaded, never registered). The decisions are
//! `rules::gc`'s; the bookkeeping is `PgMetaStore`'s (`meta/gc.rs`).
//!
//! A pass is idempotent and resumable by its id: re-running it finishes the claims it holds
//! and the candidates it marked. Mark fails closed: an error before mark completes aborts the
//! pass before anything is deleted. Objects are deleted only while the pass's lease outlasts
//! the fencing margin, and each after its record was claimed in a transaction that re-checked
//! it, so a writer that deduplicates against a block meanwhile never loses it.

use std::time::{Duration, Instant};

use crate::data::{BlockHash, ChunkStore, StoreError, block_key};
use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::rules::gc::may_delete_object;

/// The lease scope of block passes: one at a time per metadata store.
pub const BLOCK_SCOPE: &str = "blocks";

/// How a block pass runs.
#[derive(Debug, Clone)]
pub struct BlockPassOptions {
    /// Re-running an id resumes that pass.
    pub pass_id: String,
    /// Blocks touched more recently than this are left alone (longer than any upload and any
    /// write session: default one hour).
    pub grace: Duration,
    /// Count what a pass would delete, change nothing.
    pub dry_run: bool,
    /// Object deletions per second at most.
    pub deletes_per_second: u32,
    /// How long the pass's lease lasts between renewals.
    pub lease: Duration,
    /// Deletes stop unless the lease outlasts this (longer than one delete with retries).
    pub fence: Duration,
}

impl BlockPassOptions {
    /// A pass with the defaults: grace one hour, 500 deletes/s, a 60 s lease fenced at 20 s.
    pub fn new(pass_id: impl Into<String>) -> BlockPassOptions {
        BlockPassOptions {
            pass_id: pass_id.into(),
            grace: Duration::from_secs(3600),
            dry_run: false,
            deletes_per_second: 500,
            lease: Duration::from_secs(60),
            fence: Duration::from_secs(20),
        }
    }
}

/// What a pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassReport {
    pub pass_id: String,
    pub dry_run: bool,
    /// Unreferenced blocks older than the grace period when mark ran.
    pub candidates: u64,
    pub candidate_bytes: u64,
    /// Candidates a writer referenced or touched before they could be claimed.
    pub kept: u64,
    /// Block objects deleted (with their records).
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Objects without a block record seen in the store.
    pub orphans_seen: u64,
    /// Orphans first seen before the grace period, deleted.
    pub orphans_deleted: u64,
    pub duration_ms: u64,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("the pass's lease ran out: it stopped deleting; run it again to resume")]
    LeaseLost,
}

/// Spaces deletes out to at most `per_second`.
struct Throttle {
    every: Duration,
    next: Instant,
}

impl Throttle {
    fn new(per_second: u32) -> Throttle {
        Throttle {
            every: Duration::from_secs(1) / per_second.max(1),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(now) + self.every;
    }
}

/// The pass's lease: renewed as it goes, checked before every delete.
struct Lease<'a> {
    meta: &'a PgMetaStore,
    opts: &'a BlockPassOptions,
    expires: crate::model::Timestamp,
    renewed: Instant,
}

impl<'a> Lease<'a> {
    async fn take(meta: &'a PgMetaStore, opts: &'a BlockPassOptions) -> Result<Lease<'a>, GcError> {
        let expires = meta.gc_lease(BLOCK_SCOPE, &opts.pass_id, opts.lease).await?;
        Ok(Lease {
            meta,
            opts,
            expires,
            renewed: Instant::now(),
        })
    }

    /// Renews the lease when a third of it has gone, then fails unless it outlasts the
    /// fence on the database's clock.
    async fn fence(&mut self) -> Result<(), GcError> {
        if self.renewed.elapsed() > self.opts.lease / 3 {
            self.expires = self
                .meta
                .gc_lease(BLOCK_SCOPE, &self.opts.pass_id, self.opts.lease)
                .await?;
            self.renewed = Instant::now();
        }
        let now = self.meta.gc_now().await?;
        let expires = self.expires;
        let margin = i64::try_from(self.opts.fence.as_nanos()).unwrap_or(i64::MAX);
        if may_delete_object(expires, now, margin) {
            Ok(())
        } else {
            Err(GcError::LeaseLost)
        }
    }
}

/// Runs (or resumes) one block pass against `store`, the object store the blocks live in.
pub async fn run_block_pass(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    opts: &BlockPassOptions,
) -> Result<PassReport, GcError> {
    let started = Instant::now();
    let mut lease = Lease::take(meta, opts).await?;
    let result = pass(meta, store, opts, &mut lease).await;
    if let Err(e) = meta.gc_release(BLOCK_SCOPE, &opts.pass_id).await {
        tracing::warn!(error = %e, "GC lease not released; it expires on its own");
    }
    let mut report = result?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    let json = serde_json::to_value(&report).unwrap_or_default();
    meta.gc_finish(&opts.pass_id, &json).await?;
    Ok(report)
}

async fn pass(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    opts: &BlockPassOptions,
    lease: &mut Lease<'_>,
) -> Result<PassReport, GcError> {
    let record = meta
        .gc_begin(&opts.pass_id, BLOCK_SCOPE, opts.grace, opts.dry_run)
        .await?;
    let mut report = PassReport {
        pass_id: opts.pass_id.clone(),
        dry_run: record.dry_run,
        ..PassReport::default()
    };
    if record.dry_run {
        let (count, bytes) = meta.gc_count_candidates(record.cutoff).await?;
        report.candidates = count;
        report.candidate_bytes = bytes;
        report.orphans_seen = orphan_keys(meta, store).await?.len() as u64;
        return Ok(report);
    }
    if !record.marked {
        let (count, bytes) = meta.gc_mark(&opts.pass_id, record.cutoff).await?;
        report.candidates = count;
        report.candidate_bytes = bytes;
    }
    let mut throttle = Throttle::new(opts.deletes_per_second);
    // Claims an earlier run of this pass made and did not finish.
    for (hash, size) in meta.gc_claims(&opts.pass_id).await? {
        sweep(meta, store, opts, lease, &mut throttle, &hash).await?;
        report.deleted += 1;
        report.deleted_bytes += size;
    }
    let mut after = None;
    loop {
        let batch = meta.gc_candidates(&opts.pass_id, after, 500).await?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(*last);
        for (hash, size) in batch {
            if meta.gc_claim(&opts.pass_id, &hash, record.cutoff).await? {
                sweep(meta, store, opts, lease, &mut throttle, &hash).await?;
                report.deleted += 1;
                report.deleted_bytes += size;
            } else {
                report.kept += 1;
            }
        }
    }
    // Orphans: objects no record names, first seen before the grace period.
    let seen = orphan_keys(meta, store).await?;
    report.orphans_seen = seen.len() as u64;
    for key in meta.gc_orphans(&seen, record.cutoff).await? {
        let Some(hash) = hash_of_key(&key) else { continue };
        if !meta.gc_claim_orphan(&opts.pass_id, &hash).await? {
            continue;
        }
        sweep(meta, store, opts, lease, &mut throttle, &hash).await?;
        meta.gc_orphan_done(&key).await?;
        report.orphans_deleted += 1;
    }
    Ok(report)
}

/// Deletes the object of a block this pass claimed, then its record.
async fn sweep(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    opts: &BlockPassOptions,
    lease: &mut Lease<'_>,
    throttle: &mut Throttle,
    hash: &BlockHash,
) -> Result<(), GcError> {
    throttle.wait().await;
    lease.fence().await?;
    store.delete(&block_key(hash)).await?;
    meta.gc_forget(&opts.pass_id, hash).await?;
    Ok(())
}

/// Keys of block objects in `store` that no block record names.
async fn orphan_keys(meta: &PgMetaStore, store: &dyn ChunkStore) -> Result<Vec<String>, GcError> {
    let keys = store.list("blocks/").await?;
    let mut orphans = Vec::new();
    for chunk in keys.chunks(1000) {
        let hashes: Vec<(String, BlockHash)> = chunk
            .iter()
            .filter_map(|k| Some((k.clone(), hash_of_key(k)?)))
            .collect();
        let only: Vec<BlockHash> = hashes.iter().map(|(_, h)| *h).collect();
        let recorded: std::collections::HashSet<BlockHash> =
            meta.gc_recorded(&only).await?.into_iter().collect();
        orphans.extend(
            hashes
                .into_iter()
                .filter(|(_, h)| !recorded.contains(h))
                .map(|(k, _)| k),
        );
    }
    Ok(orphans)
}

/// The block a key names ("blocks/ab/<64 hex digits>"), if it is one.
fn hash_of_key(key: &str) -> Option<BlockHash> {
    let hex = key.strip_prefix("blocks/")?.split_once('/')?.1;
    let hash = blake3::Hash::from_hex(hex).ok()?;
    (block_key(hash.as_bytes()) == key).then_some(*hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_parse_back_and_nothing_else_does() {
        let hash = *blake3::hash(b"frame").as_bytes();
        assert_eq!(hash_of_key(&block_key(&hash)), Some(hash));
        let key = block_key(&hash);
        for bad in [
            "blocks/".to_string(),
            "other/ab/cd".to_string(),
            key.replacen("blocks/", "blocks/zz", 1),
            format!("{key}x"),
            key.to_uppercase(),
        ] {
            assert_eq!(hash_of_key(&bad), None, "{bad}");
        }
    }
}
