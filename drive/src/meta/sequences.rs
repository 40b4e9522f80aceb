//! Frame sequences, kept incrementally.
//!
//! Entry changes (create, link, unlink, rename, copy) only append a row to `sequence_changes`
//! in their own transaction: no reads, so concurrent creators in one folder, or in folders
//! whose rows share index pages, never conflict over sequences. Reading a folder's summary
//! folds its pending changes into `sequence_runs` (one row per run) in one transaction and
//! removes them, so each change is folded exactly once and a summary reads one row per run
//! plus the changes since the previous read, never one row per frame.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::rows::{execute, query};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{FrameName, FrameRange, FrameSequence, Name, NodeId, NodeKind, SequenceKey};

/// Records that a file named `name` now exists in `parent`.
pub(crate) async fn frame_added<C: GenericClient>(
    c: &C,
    parent: NodeId,
    name: &Name,
    kind: NodeKind,
) -> Result<(), MetaError> {
    record_change(c, parent, name, kind, true).await
}

/// Records that the file named `name` no longer exists in `parent`.
pub(crate) async fn frame_removed<C: GenericClient>(
    c: &C,
    parent: NodeId,
    name: &Name,
    kind: NodeKind,
) -> Result<(), MetaError> {
    record_change(c, parent, name, kind, false).await
}

async fn record_change<C: GenericClient>(
    c: &C,
    parent: NodeId,
    name: &Name,
    kind: NodeKind,
    added: bool,
) -> Result<(), MetaError> {
    if kind != NodeKind::File {
        return Ok(());
    }
    let Some(f) = FrameName::parse(name.as_bytes()) else {
        return Ok(());
    };
    execute(
        c,
        "INSERT INTO sequence_changes (parent, prefix, padding, suffix, frame, added) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&(parent.0 as i64), &f.key.prefix, &(f.key.padding as i32), &f.key.suffix, &f.frame, &added],
    )
    .await?;
    Ok(())
}

impl PgMetaStore {
    /// The frame sequences of a live folder, ordered by pattern.
    pub async fn sequences(&self, dir: NodeId) -> Result<Vec<FrameSequence>, MetaError> {
        let d = dir.0 as i64;
        in_txn!(self, |tx| {
            async {
                let mut seqs: BTreeMap<SequenceKey, FrameSequence> = BTreeMap::new();
                let runs = query(
                    tx,
                    "SELECT prefix, padding, suffix, first_frame, last_frame FROM sequence_runs WHERE parent = $1 \
                     ORDER BY prefix, padding, suffix, first_frame",
                    &[&d],
                )
                .await?;
                for row in &runs {
                    let key = SequenceKey { prefix: row.get(0), padding: row.get::<_, i32>(1) as u32, suffix: row.get(2) };
                    let range = FrameRange { first: row.get(3), last: row.get(4) };
                    seqs.entry(key.clone()).or_insert_with(|| FrameSequence { key, ranges: Vec::new() }).ranges.push(range);
                }
                let changes = query(
                    tx,
                    "SELECT id, prefix, padding, suffix, frame, added FROM sequence_changes WHERE parent = $1 ORDER BY id",
                    &[&d],
                )
                .await?;
                if changes.is_empty() {
                    return Ok(seqs.into_values().filter(|s| !s.ranges.is_empty()).collect());
                }
                let mut touched: Vec<SequenceKey> = Vec::new();
                let mut ids: Vec<i64> = Vec::with_capacity(changes.len());
                for row in &changes {
                    ids.push(row.get(0));
                    let key = SequenceKey { prefix: row.get(1), padding: row.get::<_, i32>(2) as u32, suffix: row.get(3) };
                    let seq = seqs.entry(key.clone()).or_insert_with(|| FrameSequence { key: key.clone(), ranges: Vec::new() });
                    if row.get::<_, bool>(5) {
                        seq.add_frame(row.get(4));
                    } else {
                        seq.remove_frame(row.get(4));
                    }
                    if touched.last() != Some(&key) && !touched.contains(&key) {
                        touched.push(key);
                    }
                }
                for key in &touched {
                    let pad = key.padding as i32;
                    execute(
                        tx,
                        "DELETE FROM sequence_runs WHERE parent = $1 AND prefix = $2 AND padding = $3 AND suffix = $4",
                        &[&d, &key.prefix, &pad, &key.suffix],
                    )
                    .await?;
                    for r in &seqs[key].ranges {
                        execute(
                            tx,
                            "INSERT INTO sequence_runs (parent, prefix, padding, suffix, first_frame, last_frame) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[&d, &key.prefix, &pad, &key.suffix, &r.first, &r.last],
                        )
                        .await?;
                    }
                }
                execute(tx, "DELETE FROM sequence_changes WHERE id = ANY($1)", &[&ids]).await?;
                Ok(seqs.into_values().filter(|s| !s.ranges.is_empty()).collect())
            }
            .await
        })
    }
}
