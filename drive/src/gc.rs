//! Garbage-collection passes over blocks (issue 17): mark, claim and sweep unreferenced
//! blocks, and sweep orphan objects (uploaded, never registered). The decisions are
//! `rules::gc`'s; the bookkeeping is `PgMetaStore`'s (`meta/gc.rs`).
//!
//! A pass is idempotent and resumable by its id: re-running it finishes the claims it holds
//! and the candidates it marked, and goes on from where mark and the orphan listing got to;
//! the report is saved with every batch, so a resumed pass ends with the totals of an
//! uninterrupted one. Mark fails closed: an error before mark completes aborts the pass before
//! anything is deleted. Objects are deleted only while the pass's lease outlasts the fencing
//! margin, and each after its record was claimed in a transaction that re-checked it, so a
//! writer that deduplicates against a block meanwhile never loses it.
//!
//! Memory is bounded by the batch sizes: mark scans the blocks in hash order a batch per short
//! transaction, sweep claims and deletes a batch at a time (one S3 DeleteObjects request), and
//! the orphan sweep reads the store's listing a page at a time.
//!
//! Load: deletes go through one token bucket per pass, and every metadata transaction is
//! timed: while one takes longer than `backoff_latency`, the pass pauses (doubling up to
//! [`MAX_BACKOFF`]) so that clean-up never adds to the load of a struggling database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::data::{BlockHash, ChunkStore, ListedObject, StoreError, block_key};
use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::meta::{Claim, MarkBatch, OrphanSpan, PassRecord};
use crate::rules::gc::may_delete_object;

/// The lease scope of block passes: one at a time per metadata store (per shard when sharded).
pub const BLOCK_SCOPE: &str = "blocks";

/// The longest pause of a pass waiting for the database to answer quickly again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    /// Object deletions per second at most, for all shards of the pass together: each of `N`
    /// shards deletes at most `deletes_per_second / N`. Bursts are at most one second's worth.
    pub deletes_per_second: u32,
    /// How long the pass's lease lasts between renewals.
    pub lease: Duration,
    /// Deletes stop unless the lease outlasts this (longer than one batch delete with retries).
    pub fence: Duration,
    /// The pass pauses while a metadata transaction of it takes longer than this (zero: never).
    pub backoff_latency: Duration,
    /// Candidates claimed and deleted together (one delete request of at most 1,000 keys), and
    /// the page size of the orphan listing. At most one second's worth of deletes.
    pub batch: usize,
    /// Blocks mark scans in one transaction.
    pub mark_batch: usize,
    /// `(index, count)`: this pass is shard `index` (from 0) of `count`, and sweeps only the
    /// hashes of its range (see [`shard_range`]); the shards of one pass run side by side.
    pub shard: Option<(u32, u32)>,
}

impl BlockPassOptions {
    /// A pass with the defaults: grace one hour, 500 deletes/s, a 60 s lease fenced at 20 s,
    /// backing off while transactions take over 250 ms, batches of 1,000 (10,000 for mark).
    pub fn new(pass_id: impl Into<String>) -> BlockPassOptions {
        BlockPassOptions {
            pass_id: pass_id.into(),
            grace: Duration::from_secs(3600),
            dry_run: false,
            deletes_per_second: 500,
            lease: Duration::from_secs(60),
            fence: Duration::from_secs(20),
            backoff_latency: Duration::from_millis(250),
            batch: 1000,
            mark_batch: 10_000,
            shard: None,
        }
    }
}

/// What a pass found and did, per phase: mark (candidates), sweep (claimed candidates
/// deleted) and orphans (objects without a record). A resumed pass reports its totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PassReport {
    pub pass_id: String,
    /// `"3-of-8"` for shard 3 (from 0) of 8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    pub dry_run: bool,
    /// Unreferenced blocks older than the grace period when mark ran.
    pub candidates: u64,
    pub candidate_bytes: u64,
    /// Candidates a writer referenced or touched before they could be claimed.
    pub kept: u64,
    /// Block objects deleted (with their records).
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Claimed blocks whose object could not be deleted: they stay claimed, and a rerun of the
    /// pass finishes them.
    pub errors: u64,
    /// Objects without a block record seen in the store.
    pub orphans_seen: u64,
    /// Orphans first seen before the grace period, deleted.
    pub orphans_deleted: u64,
    pub orphan_bytes: u64,
    /// Orphans claimed whose object could not be deleted.
    pub orphan_errors: u64,
    /// Times the pass waited for the delete rate.
    pub throttle_waits: u64,
    /// Pauses while the database answered slowly, and their total length.
    pub backoff_pauses: u64,
    pub backoff_ms: u64,
    pub mark_ms: u64,
    pub sweep_ms: u64,
    pub orphan_ms: u64,
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
    #[error("invalid pass options: {0}")]
    InvalidOptions(&'static str),
}

/// A span of block hashes: from `start` (inclusive) to `end` (exclusive; `None`: the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub start: BlockHash,
    pub end: Option<BlockHash>,
}

impl HashRange {
    /// Every hash.
    pub const ALL: HashRange = HashRange {
        start: [0; 32],
        end: None,
    };

    pub fn contains(&self, hash: &BlockHash) -> bool {
        *hash >= self.start && self.end.is_none_or(|end| *hash < end)
    }
}

/// The hashes of shard `index` (from 0) of `count`: the shards split the values of the
/// hashes' first two bytes into `count` ranges of (nearly) equal size. `None` unless
/// `index < count <= 65,536`.
pub fn shard_range(index: u32, count: u32) -> Option<HashRange> {
    if index >= count || count > 1 << 16 {
        return None;
    }
    let bound = |i: u32| {
        let prefix = (u64::from(i) << 16) / u64::from(count);
        let mut hash = [0; 32];
        hash[..2].copy_from_slice(&(prefix as u16).to_be_bytes());
        hash
    };
    Some(HashRange {
        start: bound(index),
        end: (index + 1 < count).then(|| bound(index + 1)),
    })
}

/// A shard argument that is not `I/N` with `I < N <= 65,536`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a shard such as 0/4 (I/N with I < N <= 65536)")]
pub struct InvalidShard(pub String);

/// Parses `I/N`, shard I (from 0) of N, as the command lines of a sharded pass give it.
pub fn parse_shard(text: &str) -> Result<(u32, u32), InvalidShard> {
    let bad = || InvalidShard(text.to_string());
    let (index, count) = text.split_once('/').ok_or_else(bad)?;
    let (index, count): (u32, u32) = (
        index.parse().map_err(|_| bad())?,
        count.parse().map_err(|_| bad())?,
    );
    shard_range(index, count).ok_or_else(bad)?;
    Ok((index, count))
}

/// A token bucket: `per_second` tokens a second, at most one second's worth held, empty at
/// first (a pass does not start with a burst).
struct TokenBucket {
    per_second: f64,
    tokens: f64,
    refilled: tokio::time::Instant,
    waits: u64,
}

impl TokenBucket {
    fn new(per_second: f64) -> TokenBucket {
        TokenBucket {
            per_second,
            tokens: 0.0,
            refilled: tokio::time::Instant::now(),
            waits: 0,
        }
    }

    /// Waits until `n` tokens are there and takes them.
    async fn take(&mut self, n: usize) {
        let now = tokio::time::Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.per_second) - n as f64;
        self.refilled = now;
        if self.tokens < 0.0 {
            // The debt is earned back while sleeping; the next take counts from `refilled`.
            self.waits += 1;
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.per_second)).await;
        }
    }
}

/// Pauses a pass while its metadata transactions are slower than `limit`: first for `limit`,
/// doubling with each slow transaction in a row up to [`MAX_BACKOFF`].
struct Backoff {
    limit: Duration,
    next: Duration,
    pauses: u64,
    paused: Duration,
}

impl Backoff {
    fn new(limit: Duration) -> Backoff {
        Backoff {
            limit,
            next: limit,
            pauses: 0,
            paused: Duration::ZERO,
        }
    }

    /// Called after each metadata transaction with how long it took.
    async fn after(&mut self, took: Duration) {
        if self.limit.is_zero() || took <= self.limit {
            self.next = self.limit;
            return;
        }
        tracing::info!(
            took_ms = took.as_millis() as u64,
            pause_ms = self.next.as_millis() as u64,
            "GC pass pausing: the metadata store answers slowly"
        );
        tokio::time::sleep(self.next).await;
        self.pauses += 1;
        self.paused += self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
    }
}

/// The pass's lease: renewed as it goes, checked before every delete.
struct Lease<'a> {
    meta: &'a PgMetaStore,
    scope: String,
    id: String,
    opts: &'a BlockPassOptions,
    expires: crate::model::Timestamp,
    renewed: Instant,
}

impl<'a> Lease<'a> {
    async fn take(
        meta: &'a PgMetaStore,
        scope: String,
        id: String,
        opts: &'a BlockPassOptions,
    ) -> Result<Lease<'a>, GcError> {
        let expires = meta.gc_lease(&scope, &id, opts.lease).await?;
        Ok(Lease {
            meta,
            scope,
            id,
            opts,
            expires,
            renewed: Instant::now(),
        })
    }

    /// Renews the lease when a third of it has gone, then fails unless it outlasts the
    /// fence on the database's clock.
    async fn fence(&mut self) -> Result<(), GcError> {
        if self.renewed.elapsed() > self.opts.lease / 3 {
            self.expires = self.meta.gc_lease(&self.scope, &self.id, self.opts.lease).await?;
            self.renewed = Instant::now();
        }
        let now = self.meta.gc_now().await?;
        let margin = i64::try_from(self.opts.fence.as_nanos()).unwrap_or(i64::MAX);
        if may_delete_object(self.expires, now, margin) {
            Ok(())
        } else {
            Err(GcError::LeaseLost)
        }
    }
}

/// Runs (or resumes) one block pass against `store`, the object store the blocks live in.
/// A sharded pass keeps its state under the pass id with the shard as a suffix
/// (`P/3-of-8`) and takes the lease of its shard's scope (`blocks/3-of-8`).
pub async fn run_block_pass(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    opts: &BlockPassOptions,
) -> Result<PassReport, GcError> {
    let started = Instant::now();
    if opts.batch == 0 || opts.mark_batch == 0 {
        return Err(GcError::InvalidOptions("GC batches must hold at least one block"));
    }
    let (range, shard, rate) = match opts.shard {
        None => (HashRange::ALL, None, f64::from(opts.deletes_per_second.max(1))),
        Some((index, count)) => {
            let range = shard_range(index, count)
                .ok_or(GcError::InvalidOptions("a shard is I/N with I < N <= 65536"))?;
            let rate = f64::from(opts.deletes_per_second.max(1)) / f64::from(count);
            (range, Some(format!("{index}-of-{count}")), rate)
        }
    };
    let id = pass_row_id(opts);
    let scope = match &shard {
        None => BLOCK_SCOPE.to_string(),
        Some(s) => format!("{BLOCK_SCOPE}/{s}"),
    };
    let lease = Lease::take(meta, scope.clone(), id.clone(), opts).await?;
    let mut pass = Pass {
        meta,
        store,
        opts,
        id,
        range,
        // A batch is at most one second's worth of deletes, so the bucket can hold it.
        batch: opts.batch.min(rate.ceil() as usize).max(1),
        lease,
        throttle: TokenBucket::new(rate),
        backoff: Backoff::new(opts.backoff_latency),
        report: PassReport::default(),
    };
    let result = pass.run(&scope, shard).await;
    if let Err(e) = meta.gc_release(&scope, &pass.id).await {
        tracing::warn!(error = %e, "GC lease not released; it expires on its own");
    }
    result?;
    pass.tally();
    pass.report.duration_ms += started.elapsed().as_millis() as u64;
    meta.gc_finish(&pass.id, &to_json(&pass.report)).await?;
    Ok(pass.report)
}

/// The pass row of a block pass: its id, with the shard's suffix (`P/3-of-8`) when sharded.
pub fn pass_row_id(opts: &BlockPassOptions) -> String {
    match opts.shard {
        None => opts.pass_id.clone(),
        Some((index, count)) => shard_row_id(&opts.pass_id, index, count),
    }
}

/// The pass row of shard `index` of `count` of pass `pass_id`.
pub fn shard_row_id(pass_id: &str, index: u32, count: u32) -> String {
    format!("{pass_id}/{index}-of-{count}")
}

impl PassReport {
    /// Adds the report of another shard of the same pass: counts add up; the shards ran side
    /// by side, so the pass took as long as its slowest shard.
    pub fn add_shard(&mut self, other: &PassReport) {
        self.shard = None;
        self.dry_run |= other.dry_run;
        for (total, part) in [
            (&mut self.candidates, other.candidates),
            (&mut self.candidate_bytes, other.candidate_bytes),
            (&mut self.kept, other.kept),
            (&mut self.deleted, other.deleted),
            (&mut self.deleted_bytes, other.deleted_bytes),
            (&mut self.errors, other.errors),
            (&mut self.orphans_seen, other.orphans_seen),
            (&mut self.orphans_deleted, other.orphans_deleted),
            (&mut self.orphan_bytes, other.orphan_bytes),
            (&mut self.orphan_errors, other.orphan_errors),
            (&mut self.throttle_waits, other.throttle_waits),
            (&mut self.backoff_pauses, other.backoff_pauses),
            (&mut self.backoff_ms, other.backoff_ms),
        ] {
            *total += part;
        }
        for (longest, part) in [
            (&mut self.mark_ms, other.mark_ms),
            (&mut self.sweep_ms, other.sweep_ms),
            (&mut self.orphan_ms, other.orphan_ms),
            (&mut self.duration_ms, other.duration_ms),
        ] {
            *longest = (*longest).max(part);
        }
    }
}

fn to_json(report: &PassReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or_default()
}

/// One run of a pass.
struct Pass<'a> {
    meta: &'a PgMetaStore,
    store: &'a dyn ChunkStore,
    opts: &'a BlockPassOptions,
    /// The pass's row (the pass id, with the shard's suffix when sharded).
    id: String,
    range: HashRange,
    batch: usize,
    lease: Lease<'a>,
    throttle: TokenBucket,
    backoff: Backoff,
    report: PassReport,
}

impl Pass<'_> {
    async fn run(&mut self, scope: &str, shard: Option<String>) -> Result<(), GcError> {
        let record = self
            .meta
            .gc_begin(&self.id, scope, self.opts.grace, self.opts.dry_run)
            .await?;
        // A resumed pass goes on from the report it saved.
        if let Some(saved) = record.progress.clone().filter(|_| !record.dry_run) {
            self.report = serde_json::from_value(saved)
                .map_err(|e| MetaError::Internal(format!("GC pass report unreadable: {e}")))?;
        }
        self.report.pass_id.clone_from(&self.opts.pass_id);
        self.report.shard = shard;
        self.report.dry_run = record.dry_run;
        if record.dry_run {
            return self.dry_run(&record).await;
        }
        let phase = Instant::now();
        if !record.marked {
            self.mark(&record).await?;
        }
        self.report.mark_ms += phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        self.finish_claims().await?;
        self.sweep(&record).await?;
        self.report.sweep_ms += phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        if !record.orphans_swept {
            self.sweep_orphans(&record).await?;
        }
        self.report.orphan_ms += phase.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Copies the throttle's and the backoff's counts into the report.
    fn tally(&mut self) {
        self.report.throttle_waits += std::mem::take(&mut self.throttle.waits);
        self.report.backoff_pauses += std::mem::take(&mut self.backoff.pauses);
        self.report.backoff_ms += std::mem::take(&mut self.backoff.paused).as_millis() as u64;
    }

    /// The report as it stands, to be saved with a batch's transaction.
    fn progress(&mut self) -> PassReport {
        self.tally();
        self.report.clone()
    }

    async fn dry_run(&mut self, record: &PassRecord) -> Result<(), GcError> {
        let phase = Instant::now();
        let mut after = None;
        loop {
            let started = Instant::now();
            let batch = self
                .meta
                .gc_count_batch(record.cutoff, self.range, after, self.opts.mark_batch)
                .await?;
            self.backoff.after(started.elapsed()).await;
            self.report.candidates += batch.candidates;
            self.report.candidate_bytes += batch.bytes;
            if batch.done {
                break;
            }
            after = batch.last;
        }
        self.report.mark_ms += phase.elapsed().as_millis() as u64;
        let phase = Instant::now();
        let mut after = None;
        loop {
            let page = self.orphan_page(after.as_deref()).await?;
            self.report.orphans_seen += page.orphans.len() as u64;
            if page.last_page {
                break;
            }
            after = page.last;
        }
        self.report.orphan_ms += phase.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Mark, a batch per transaction from where an interrupted run stopped.
    async fn mark(&mut self, record: &PassRecord) -> Result<(), GcError> {
        let mut after = record.mark_after;
        loop {
            let report = self.progress();
            let progress = |b: &MarkBatch| {
                let mut r = report.clone();
                r.candidates += b.candidates;
                r.candidate_bytes += b.bytes;
                to_json(&r)
            };
            let started = Instant::now();
            let batch = self
                .meta
                .gc_mark_batch(
                    &self.id,
                    record.cutoff,
                    self.range,
                    after,
                    self.opts.mark_batch,
                    &progress,
                )
                .await?;
            self.backoff.after(started.elapsed()).await;
            self.report.candidates += batch.candidates;
            self.report.candidate_bytes += batch.bytes;
            if batch.done {
                return Ok(());
            }
            after = batch.last;
        }
    }

    /// Deletes what an earlier run of this pass claimed and did not finish.
    async fn finish_claims(&mut self) -> Result<(), GcError> {
        let claims = self.meta.gc_claims(&self.id).await?;
        for chunk in claims.chunks(self.batch) {
            let (orphans, blocks): (Vec<_>, Vec<_>) = chunk.iter().partition(|c| c.orphan);
            let sized = |cs: Vec<&Claim>| cs.iter().map(|c| (c.hash, c.size)).collect::<Vec<_>>();
            self.delete_claimed(&sized(blocks), false).await?;
            self.delete_claimed(&sized(orphans), true).await?;
        }
        Ok(())
    }

    /// Claims the marked candidates a batch at a time and deletes what it claimed.
    async fn sweep(&mut self, record: &PassRecord) -> Result<(), GcError> {
        let mut after = None;
        loop {
            let batch = self.meta.gc_candidates(&self.id, after, self.batch).await?;
            let Some(&(last, _)) = batch.last() else {
                return Ok(());
            };
            after = Some(last);
            let hashes: Vec<BlockHash> = batch.iter().map(|&(h, _)| h).collect();
            let report = self.progress();
            let progress = |claimed: &[(BlockHash, u64)]| {
                let mut r = report.clone();
                r.kept += (hashes.len() - claimed.len()) as u64;
                to_json(&r)
            };
            let started = Instant::now();
            let claimed = self
                .meta
                .gc_claim_batch(&self.id, &hashes, record.cutoff, &progress)
                .await?;
            self.backoff.after(started.elapsed()).await;
            self.report.kept += (hashes.len() - claimed.len()) as u64;
            self.delete_claimed(&claimed, false).await?;
        }
    }

    /// Deletes the objects of blocks this pass claimed (orphans' placeholders when
    /// `orphans`) in one request, then forgets the records of those deleted with the report in
    /// one transaction. A key that failed stays claimed (a rerun finishes it) and is counted.
    async fn delete_claimed(&mut self, claimed: &[(BlockHash, u64)], orphans: bool) -> Result<(), GcError> {
        if claimed.is_empty() {
            return Ok(());
        }
        self.throttle.take(claimed.len()).await;
        self.lease.fence().await?;
        let keys: Vec<String> = claimed.iter().map(|(h, _)| block_key(h)).collect();
        let failed = self.store.delete_many(&keys).await?;
        for (key, error) in &failed {
            tracing::warn!(%key, %error, "GC delete failed; the claim stays for a rerun of the pass");
        }
        let failed: HashSet<&str> = failed.iter().map(|(k, _)| k.as_str()).collect();
        let mut hashes = Vec::with_capacity(claimed.len());
        let mut done_keys = Vec::new();
        let mut bytes = 0;
        for ((hash, size), key) in claimed.iter().zip(keys) {
            if !failed.contains(key.as_str()) {
                hashes.push(*hash);
                bytes += size;
                if orphans {
                    done_keys.push(key);
                }
            }
        }
        let (deleted, errors) = (hashes.len() as u64, failed.len() as u64);
        if orphans {
            self.report.orphans_deleted += deleted;
            self.report.orphan_bytes += bytes;
            self.report.orphan_errors += errors;
        } else {
            self.report.deleted += deleted;
            self.report.deleted_bytes += bytes;
            self.report.errors += errors;
        }
        let progress = to_json(&self.progress());
        let started = Instant::now();
        self.meta
            .gc_forget(&self.id, &hashes, &done_keys, &progress)
            .await?;
        self.backoff.after(started.elapsed()).await;
        Ok(())
    }

    /// Orphans: objects of the pass's range no record names, deleted once first seen before
    /// the grace period; the listing is read a page at a time from where an interrupted run
    /// stopped.
    async fn sweep_orphans(&mut self, record: &PassRecord) -> Result<(), GcError> {
        let range = self.key_range();
        let mut after = record.orphans_after.clone();
        loop {
            let page = self.orphan_page(after.as_deref()).await?;
            self.report.orphans_seen += page.orphans.len() as u64;
            let keys: Vec<String> = page.orphans.iter().map(|o| o.key.clone()).collect();
            let span = OrphanSpan {
                after: after.clone(),
                last: if page.last_page { None } else { page.last.clone() },
                range: range.clone(),
            };
            let progress = to_json(&self.progress());
            let started = Instant::now();
            let old: HashSet<String> = self
                .meta
                .gc_orphans_page(&self.id, &keys, &span, record.cutoff, &progress)
                .await?
                .into_iter()
                .collect();
            self.backoff.after(started.elapsed()).await;
            let due: Vec<(BlockHash, u64)> = page
                .orphans
                .iter()
                .filter(|o| old.contains(&o.key))
                .filter_map(|o| Some((hash_of_key(&o.key)?, o.size)))
                .collect();
            if !due.is_empty() {
                let claimed = self.meta.gc_claim_orphans(&self.id, &due).await?;
                self.delete_claimed(&claimed, true).await?;
            }
            if page.last_page {
                return Ok(());
            }
            after = page.last;
        }
    }

    /// The keys of the pass's hash range: first (inclusive) and end (exclusive).
    fn key_range(&self) -> (Option<String>, Option<String>) {
        let start = (self.range.start != [0; 32]).then(|| block_key(&self.range.start));
        (start, self.range.end.as_ref().map(block_key))
    }

    /// The next page of the listing within the pass's range after `after`, and the objects
    /// in it that no block record names.
    async fn orphan_page(&mut self, after: Option<&str>) -> Result<OrphanPage, GcError> {
        let (start, end) = self.key_range();
        // The key just before the range's first: the directory of its first byte.
        let from = match (after, &start) {
            (Some(a), _) => Some(a.to_string()),
            (None, Some(_)) => Some(format!("blocks/{:02x}/", self.range.start[0])),
            (None, None) => None,
        };
        let page = self
            .store
            .list_page("blocks/", from.as_deref(), self.batch)
            .await?;
        let full = page.len() == self.batch;
        let last = page.last().map(|o| o.key.clone());
        let in_range: Vec<(BlockHash, ListedObject)> = page
            .into_iter()
            .take_while(|o| end.as_ref().is_none_or(|e| o.key < *e))
            .filter_map(|o| Some((hash_of_key(&o.key)?, o)))
            .filter(|(h, _)| self.range.contains(h))
            .collect();
        let past_end = last
            .as_ref()
            .is_some_and(|l| end.as_ref().is_some_and(|e| l >= e));
        let hashes: Vec<BlockHash> = in_range.iter().map(|(h, _)| *h).collect();
        let started = Instant::now();
        let recorded: HashSet<BlockHash> = self.meta.gc_recorded(&hashes).await?.into_iter().collect();
        self.backoff.after(started.elapsed()).await;
        Ok(OrphanPage {
            orphans: in_range
                .into_iter()
                .filter(|(h, _)| !recorded.contains(h))
                .map(|(_, o)| o)
                .collect(),
            last,
            last_page: !full || past_end,
        })
    }
}

/// A page of the orphan sweep.
struct OrphanPage {
    /// Objects of the pass's range without a block record.
    orphans: Vec<ListedObject>,
    /// The page's last key (where the next page starts after).
    last: Option<String>,
    /// Nothing of the pass's range comes after this page.
    last_page: bool,
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
    fn shards_parse_as_index_of_count() {
        assert_eq!(parse_shard("0/4"), Ok((0, 4)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert_eq!(parse_shard("0/1"), Ok((0, 1)));
        for bad in ["", "4/4", "1/0", "0/65537", "-1/4", "a/4", "1", "1/2/3"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

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

    #[test]
    fn shards_cover_every_hash_once() {
        for count in [1, 2, 3, 7, 8, 256, 1000, 1 << 16] {
            let ranges: Vec<HashRange> = (0..count).map(|i| shard_range(i, count).unwrap()).collect();
            assert_eq!(ranges[0].start, [0; 32]);
            assert_eq!(ranges[count as usize - 1].end, None);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, Some(pair[1].start), "{count} shards: adjacent");
                assert!(pair[0].start < pair[1].start, "{count} shards: not empty");
            }
            for seed in 0..200u32 {
                let hash = *blake3::hash(&seed.to_le_bytes()).as_bytes();
                let owners = ranges.iter().filter(|r| r.contains(&hash)).count();
                assert_eq!(owners, 1, "{count} shards, hash {seed}");
            }
        }
        assert_eq!(shard_range(3, 3), None);
        assert_eq!(shard_range(0, 0), None);
        assert_eq!(shard_range(0, (1 << 16) + 1), None);
    }

    #[tokio::test]
    async fn the_token_bucket_never_runs_ahead_of_its_rate() {
        let mut bucket = TokenBucket::new(2000.0);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            bucket.take(100).await;
        }
        // 1,000 tokens at 2,000/s from an empty bucket: at least half a second.
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        assert!(bucket.waits >= 1);
    }
}
