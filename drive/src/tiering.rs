//! Tiering (issue 17, item 6): blocks of files nobody used for a while move to a colder
//! storage class of the object store.
//!
//! A block moves only when no live file referencing it was used (opened, written or created,
//! see `meta::access`) since the cutoff: a block shared by one recently used file stays. The
//! move is a copy of the object onto itself with the new class; `blocks.tier` records it
//! after the copy, so a pass that stops between the two copies again next time (harmless).
//! Stores without storage classes (local, memory) move nothing and report 0. Reads of a
//! block in a class that needs a restore fail with `StoreError::NeedsRestore` (EIO, logged
//! with the class).

use std::time::SystemTime;

use crate::data::{ChunkStore, StoreError, block_key};
use crate::gc::GcError;
use crate::meta::PgMetaStore;

/// Candidate blocks read per statement.
const SCAN_PAGE: i64 = 500;

/// What a transition found (or, in a dry run, would have moved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransitionCounts {
    /// Blocks moved to the class (in a dry run: that would be moved).
    pub transitioned: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Candidates whose object was gone (deleted by a block sweep meanwhile).
    pub missing: u64,
}

/// Moves up to `limit` blocks not used since `not_read_since` to `storage_class` (see the
/// module's doc). A dry run copies and records nothing and reports what a real pass would
/// move. A store without storage classes moves nothing and reports 0.
pub async fn transition_blocks(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    storage_class: &str,
    not_read_since: SystemTime,
    limit: Option<u64>,
    dry_run: bool,
) -> Result<TransitionCounts, GcError> {
    let mut counts = TransitionCounts::default();
    if !store.has_storage_classes() {
        return Ok(counts);
    }
    let mut after: Vec<u8> = Vec::new();
    let limit = limit.unwrap_or(u64::MAX);
    'pages: loop {
        let page = meta
            .tier_candidates(storage_class, not_read_since, &after, SCAN_PAGE)
            .await?;
        let full = page.len() as i64 == SCAN_PAGE;
        for (hash, stored_size) in page {
            if counts.transitioned >= limit {
                break 'pages;
            }
            after = hash.to_vec();
            if !dry_run {
                match store.set_storage_class(&block_key(&hash), storage_class).await {
                    Ok(()) => meta.set_block_tier(&hash, storage_class).await?,
                    Err(StoreError::NotFound { .. }) => {
                        counts.missing += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            counts.transitioned += 1;
            counts.bytes += stored_size;
        }
        if !full {
            break;
        }
    }
    Ok(counts)
}
