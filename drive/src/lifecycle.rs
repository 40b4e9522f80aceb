//! One lifecycle pass of a policy (issue 17): the namespace phases (expiry, purge of
//! soft-deleted data, snapshot retention, tiering, event-feed retention) on the workspaces the
//! policy selects, then the block pass of [`crate::gc`] that frees what they released. The
//! decisions are `rules::gc`'s; this module only orders the phases and gathers one report,
//! stored with the pass (`gc_passes.report`) for the operator's status.

use std::time::Duration;

use crate::data::ChunkStore;
use crate::gc::{BlockPassOptions, GcError, PassReport};
use crate::meta::PgMetaStore;
use crate::meta::{PurgePace, before};
use crate::model::{Actor, Timestamp, WorkspaceKind};
use crate::rules::gc::{
    RetentionClass, SnapshotRetention, days_to_duration, purge_due, retention, snapshots_to_release,
};

/// Which workspaces the namespace phases touch (the block pass is storage-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceScope {
    /// Store names of the workspaces; every workspace when `None`.
    pub names: Option<Vec<String>>,
    /// Workspace kinds; every kind when empty.
    pub kinds: Vec<WorkspaceKind>,
}

/// Soft-delete paths under `paths` not accessed for `not_accessed_for_days`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireRule {
    pub paths: Vec<String>,
    pub not_accessed_for_days: u32,
}

/// Move blocks not read for `after_days` to `storage_class`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRule {
    pub storage_class: String,
    pub after_days: u32,
}

/// What one lifecycle pass does.
#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    /// Pass id, grace, dry run and throttle (shared by every phase).
    pub blocks: BlockPassOptions,
    pub scope: WorkspaceScope,
    /// Purge soft-deleted data older than the retention that applies to it; nothing is purged
    /// when empty.
    pub retention: Vec<RetentionClass>,
    pub snapshots: SnapshotRetention,
    pub expire: Option<ExpireRule>,
    pub transition: Option<TransitionRule>,
    /// Purge change-feed events older than this (events a live cursor has not read are kept).
    pub event_retention: Option<Duration>,
    /// How the purge phases yield to the online workload.
    pub purge_pace: PurgePace,
}

impl LifecycleOptions {
    /// A pass that only sweeps blocks.
    pub fn blocks_only(blocks: BlockPassOptions) -> LifecycleOptions {
        LifecycleOptions {
            blocks,
            scope: WorkspaceScope::default(),
            retention: Vec::new(),
            snapshots: SnapshotRetention::default(),
            expire: None,
            transition: None,
            event_retention: None,
            purge_pace: PurgePace::default(),
        }
    }
}

/// What a lifecycle pass found and did: the report stored with the pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LifecycleReport {
    pub pass_id: String,
    pub dry_run: bool,
    /// Paths soft-deleted by expiry.
    pub expired: u64,
    /// Soft-deleted entries purged for good.
    pub purged_entries: u64,
    /// Old versions (entries, inodes, block maps) no retained snapshot showed, purged.
    pub purged_history_rows: u64,
    /// Nodes (files, folders) whose rows were purged (not counted by a dry run).
    pub purged_nodes: u64,
    /// Soft-deleted workspaces purged.
    pub purged_workspaces: u64,
    pub snapshots_released: u64,
    /// Blocks moved to a colder class, and their bytes.
    pub transitioned: u64,
    pub transitioned_bytes: u64,
    pub events_purged: u64,
    /// The block pass.
    pub blocks: PassReport,
    pub duration_ms: u64,
}

/// Runs (or resumes) one lifecycle pass: per selected workspace, expiry (into the trash),
/// snapshot retention, then the purge of history no retained snapshot shows and of trash past
/// its retention; then the nodes that lost their last name and soft-deleted workspaces past
/// their retention; then the block pass, which frees the blocks the earlier phases released;
/// last, tiering and event-feed retention. Every phase is idempotent, so re-running a pass id
/// after a crash finishes it. A dry run counts and changes nothing (the event purge has no
/// count and is skipped).
pub async fn run_pass(
    meta: &PgMetaStore,
    store: &dyn ChunkStore,
    opts: &LifecycleOptions,
) -> Result<LifecycleReport, GcError> {
    let started = std::time::Instant::now();
    let dry_run = opts.blocks.dry_run;
    let actor = Actor(format!("lifecycle:{}", opts.blocks.pass_id));
    let now = meta.gc_now().await?;
    let grace_cutoff = before(now, opts.blocks.grace);
    let mut report = LifecycleReport {
        pass_id: opts.blocks.pass_id.clone(),
        dry_run,
        ..LifecycleReport::default()
    };
    // The namespace phases are storage-wide, not per hash range: of a sharded pass, shard 0
    // runs them and the others only sweep their range.
    let namespace = opts.blocks.shard.is_none_or(|(index, _)| index == 0);
    if namespace {
        for ws in meta.list_workspaces().await? {
            if !opts.scope.selects(&ws.name, ws.kind) {
                continue;
            }
            // Expired paths go to the trash first: the purge below takes them only once their
            // retention has passed, like anything else deleted.
            if let Some(rule) = &opts.expire {
                let cutoff = before(now, days_to_duration(rule.not_accessed_for_days));
                let expired = meta
                    .expire_unaccessed(&actor, ws.id, &rule.paths, cutoff, dry_run)
                    .await?;
                report.expired += expired.expired;
            }
            let snapshots = meta.list_snapshots(ws.id).await?;
            let created: Vec<Timestamp> = snapshots.iter().map(|s| s.created_at).collect();
            for i in snapshots_to_release(&created, opts.snapshots, now) {
                if !dry_run {
                    meta.delete_snapshot(&actor, ws.id, &snapshots[i].name).await?;
                }
                report.snapshots_released += 1;
            }
            report.purged_history_rows += meta.purge_history(ws.id, dry_run, opts.purge_pace).await?;
            report.purged_entries += meta
                .purge_trash(
                    ws.id,
                    ws.root,
                    ws.kind,
                    &opts.retention,
                    now,
                    grace_cutoff,
                    dry_run,
                    opts.purge_pace,
                )
                .await?;
        }
        if !dry_run {
            report.purged_nodes += meta.purge_queued_nodes(opts.purge_pace).await?;
        }
        // A deleted workspace no longer has a resource a selector could match: only kinds select it.
        for (id, kind, deleted_at, root) in meta.deleted_workspaces(grace_cutoff).await? {
            if !opts.scope.kinds.is_empty() && !opts.scope.kinds.contains(&kind) {
                continue;
            }
            let due = retention(&opts.retention, kind, Some("/"))
                .is_some_and(|keep| purge_due(deleted_at, keep, now));
            if !due {
                continue;
            }
            if !dry_run {
                meta.purge_workspace(id, root, opts.purge_pace).await?;
            }
            report.purged_workspaces += 1;
        }
        if !dry_run {
            report.purged_nodes += meta.purge_queued_nodes(opts.purge_pace).await?;
        }
    }
    report.blocks = crate::gc::run_block_pass(meta, store, &opts.blocks).await?;
    if namespace {
        // After the sweep, so no block about to be deleted is copied to a colder class first.
        if let Some(rule) = &opts.transition {
            let cutoff = before(now, days_to_duration(rule.after_days));
            let moved =
                crate::tiering::transition_blocks(meta, store, &rule.storage_class, cutoff, None, dry_run)
                    .await?;
            report.transitioned = moved.transitioned;
            report.transitioned_bytes = moved.bytes;
        }
        if let Some(keep) = opts.event_retention
            && !dry_run
        {
            report.events_purged = meta.purge_events(before(now, keep)).await?;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    let json = serde_json::to_value(&report).unwrap_or_default();
    meta.gc_finish_lifecycle(&crate::gc::pass_row_id(&opts.blocks), &json)
        .await?;
    Ok(report)
}

impl LifecycleReport {
    /// The report of a pass run as shards, from each shard's report (`None` when one is
    /// missing: a partial sum would under-report the pass). Only shard 0 runs the namespace
    /// phases, so their counts add up without double counting.
    pub fn of_shards(shards: impl IntoIterator<Item = Option<LifecycleReport>>) -> Option<LifecycleReport> {
        let mut total: Option<LifecycleReport> = None;
        for shard in shards {
            let shard = shard?;
            let Some(sum) = total.as_mut() else {
                let mut first = shard;
                first.blocks.shard = None;
                total = Some(first);
                continue;
            };
            sum.dry_run |= shard.dry_run;
            for (total, part) in [
                (&mut sum.expired, shard.expired),
                (&mut sum.purged_entries, shard.purged_entries),
                (&mut sum.purged_history_rows, shard.purged_history_rows),
                (&mut sum.purged_nodes, shard.purged_nodes),
                (&mut sum.purged_workspaces, shard.purged_workspaces),
                (&mut sum.snapshots_released, shard.snapshots_released),
                (&mut sum.transitioned, shard.transitioned),
                (&mut sum.transitioned_bytes, shard.transitioned_bytes),
                (&mut sum.events_purged, shard.events_purged),
            ] {
                *total += part;
            }
            sum.blocks.add_shard(&shard.blocks);
            sum.duration_ms = sum.duration_ms.max(shard.duration_ms);
        }
        total
    }
}

impl WorkspaceScope {
    /// Whether the namespace phases touch workspace `name` of `kind`.
    pub fn selects(&self, name: &str, kind: WorkspaceKind) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self
                .names
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::PassReport;

    fn shard(index: u32, purged_nodes: u64, deleted: u64, duration_ms: u64) -> LifecycleReport {
        LifecycleReport {
            pass_id: "nightly@1".into(),
            purged_nodes,
            blocks: PassReport {
                pass_id: "nightly@1".into(),
                shard: Some(format!("{index}-of-2")),
                candidates: deleted + 1,
                deleted,
                deleted_bytes: deleted * 10,
                sweep_ms: duration_ms / 2,
                duration_ms,
                ..PassReport::default()
            },
            duration_ms: duration_ms + 5,
            ..LifecycleReport::default()
        }
    }

    #[test]
    fn the_report_of_a_sharded_pass_adds_counts_and_takes_the_slowest_shard() {
        let sum = LifecycleReport::of_shards([Some(shard(0, 7, 3, 100)), Some(shard(1, 0, 4, 300))])
            .expect("both shards reported");
        assert_eq!(
            (
                sum.purged_nodes,
                sum.blocks.candidates,
                sum.blocks.deleted,
                sum.blocks.deleted_bytes
            ),
            (7, 9, 7, 70)
        );
        assert_eq!(
            (sum.blocks.sweep_ms, sum.blocks.duration_ms, sum.duration_ms),
            (150, 300, 305)
        );
        assert_eq!((sum.blocks.shard, sum.pass_id.as_str()), (None, "nightly@1"));
        assert_eq!(
            LifecycleReport::of_shards([Some(shard(0, 7, 3, 100)), None]),
            None
        );
        assert_eq!(LifecycleReport::of_shards([]), None);
    }
}
