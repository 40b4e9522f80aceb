//! Frame-sequence runs, maintained in the same transaction as every entry change.
//!
//! A folder's sequences are stored as runs `[first_frame, last_frame]` per
//! (prefix, padding, suffix). Adding frame f merges with the runs ending at f-1 and starting at
//! f+1; removing it splits its run. Each change touches at most three rows, and a summary
//! reads one row per run, never one per frame.

use deadpool_postgres::GenericClient;

use crate::error::MetaError;
use crate::meta::MetaStore;
use crate::meta::rows::{execute, query, query_opt};
use crate::model::{FrameName, FrameRange, FrameSequence, Name, NodeId, NodeKind, SequenceKey};

/// Records that a file named `name` now exists in `parent`.
pub(crate) async fn frame_added<C: GenericClient>(c: &C, parent: NodeId, name: &Name, kind: NodeKind) -> Result<(), MetaError> {
    let Some(f) = frame_of(name, kind) else { return Ok(()) };
    let p = parent.0 as i64;
    let key = &f.key;
    let padding = key.padding as i32;
    let left = query_opt(
        c,
        "SELECT first_frame FROM sequence_runs WHERE parent = $1 AND prefix = $2 AND padding = $3 \
         AND suffix = $4 AND last_frame = $5",
        &[&p, &key.prefix, &padding, &key.suffix, &(f.frame - 1)],
    )
    .await?
    .map(|r| r.get::<_, i64>(0));
    let right = query_opt(
        c,
        "SELECT last_frame FROM sequence_runs WHERE parent = $1 AND prefix = $2 AND padding = $3 \
         AND suffix = $4 AND first_frame = $5",
        &[&p, &key.prefix, &padding, &key.suffix, &(f.frame + 1)],
    )
    .await?
    .map(|r| r.get::<_, i64>(0));
    if right.is_some() {
        delete_run(c, p, key, f.frame + 1).await?;
    }
    match left {
        Some(first) => {
            execute(
                c,
                "UPDATE sequence_runs SET last_frame = $6 WHERE parent = $1 AND prefix = $2 AND padding = $3 \
                 AND suffix = $4 AND first_frame = $5",
                &[&p, &key.prefix, &padding, &key.suffix, &first, &right.unwrap_or(f.frame)],
            )
            .await?;
        }
        None => insert_run(c, p, key, f.frame, right.unwrap_or(f.frame)).await?,
    }
    Ok(())
}

/// Records that the file named `name` no longer exists in `parent`.
pub(crate) async fn frame_removed<C: GenericClient>(c: &C, parent: NodeId, name: &Name, kind: NodeKind) -> Result<(), MetaError> {
    let Some(f) = frame_of(name, kind) else { return Ok(()) };
    let p = parent.0 as i64;
    let key = &f.key;
    let run = query_opt(
        c,
        "SELECT first_frame, last_frame FROM sequence_runs WHERE parent = $1 AND prefix = $2 AND padding = $3 \
         AND suffix = $4 AND first_frame <= $5 ORDER BY first_frame DESC LIMIT 1",
        &[&p, &key.prefix, &(key.padding as i32), &key.suffix, &f.frame],
    )
    .await?;
    let Some(run) = run else { return Ok(()) };
    let (first, last): (i64, i64) = (run.get(0), run.get(1));
    if f.frame > last {
        return Ok(());
    }
    delete_run(c, p, key, first).await?;
    if first < f.frame {
        insert_run(c, p, key, first, f.frame - 1).await?;
    }
    if f.frame < last {
        insert_run(c, p, key, f.frame + 1, last).await?;
    }
    Ok(())
}

fn frame_of(name: &Name, kind: NodeKind) -> Option<FrameName> {
    if kind != NodeKind::File {
        return None;
    }
    FrameName::parse(name.as_bytes())
}

async fn delete_run<C: GenericClient>(c: &C, parent: i64, key: &SequenceKey, first: i64) -> Result<(), MetaError> {
    execute(
        c,
        "DELETE FROM sequence_runs WHERE parent = $1 AND prefix = $2 AND padding = $3 AND suffix = $4 \
         AND first_frame = $5",
        &[&parent, &key.prefix, &(key.padding as i32), &key.suffix, &first],
    )
    .await?;
    Ok(())
}

async fn insert_run<C: GenericClient>(c: &C, parent: i64, key: &SequenceKey, first: i64, last: i64) -> Result<(), MetaError> {
    execute(
        c,
        "INSERT INTO sequence_runs (parent, prefix, padding, suffix, first_frame, last_frame) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&parent, &key.prefix, &(key.padding as i32), &key.suffix, &first, &last],
    )
    .await?;
    Ok(())
}

impl MetaStore {
    /// The frame sequences of a live folder, ordered by pattern, reading one row per run.
    pub async fn sequences(&self, dir: NodeId) -> Result<Vec<FrameSequence>, MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT prefix, padding, suffix, first_frame, last_frame FROM sequence_runs WHERE parent = $1 \
             ORDER BY prefix, padding, suffix, first_frame",
            &[&(dir.0 as i64)],
        )
        .await?;
        let mut out: Vec<FrameSequence> = Vec::new();
        for row in rows {
            let key = SequenceKey { prefix: row.get(0), padding: row.get::<_, i32>(1) as u32, suffix: row.get(2) };
            let range = FrameRange { first: row.get(3), last: row.get(4) };
            match out.last_mut() {
                Some(seq) if seq.key == key => seq.ranges.push(range),
                _ => out.push(FrameSequence { key, ranges: vec![range] }),
            }
        }
        Ok(out)
    }
}
