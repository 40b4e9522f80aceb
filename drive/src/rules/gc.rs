//! What garbage collection may remove, and how a sweep and a writer of the same block stay out
//! of each other's way: the decisions of the GC engine (issue 17), free of I/O so that every
//! case is tested here and both metadata stores follow the same table.
//!
//! Nothing live is ever deleted. The rules err towards keeping: a deleted node no retention
//! class covers is never purged, a snapshot either rule keeps is kept, and a block is swept
//! only when it is unreferenced, older than the grace period and claimed by a pass whose
//! lease still has time left.
//!
//! # The block claim protocol
//!
//! A block record is `created` (registered, its upload maybe in flight), `available` (a
//! commit referenced it) or `sweeping` (claimed by a GC pass, its object being deleted).
//!
//! - A writer that registers a hash decides by [`on_register`]: it skips the upload only for
//!   an `available` block, and registering touches the record, so a block a writer is about
//!   to reference is younger than the grace period and cannot be claimed before its commit.
//! - A pass claims a candidate in one transaction that re-checks it ([`may_claim`]): still
//!   unreferenced by any version of any block map, not touched since the cutoff, not already
//!   claimed. Mark only proposes; the claim decides.
//! - The pass deletes the object only while its lease has at least the fencing margin left
//!   ([`may_delete_object`]), then forgets the record if it is still its claim.
//! - A writer that meets a claimed block waits for the sweep to finish, unless the pass's lease
//!   ran out: then it takes the record over and uploads again. The dead pass cannot delete
//!   after that, since its lease has expired and it checks before every delete.

use std::time::Duration;

use crate::model::{Timestamp, WorkspaceKind};

/// Where a block record stands, as a writer or a pass reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPhase {
    /// Registered; an upload may be in flight, or failed.
    Created,
    /// Durable and referenced by a commit (or was).
    Available,
    /// Claimed by a GC pass, whose lease has or has not run out.
    Sweeping { lease_expired: bool },
}

/// What a writer registering a block does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRegister {
    /// The object is durable: reference it without uploading.
    Deduplicate,
    /// Upload the object (objects are content-addressed: uploading twice is harmless).
    Upload,
    /// A pass is deleting the object: register again once it is done.
    WaitForSweep,
}

/// A writer's decision on registering a hash whose record is `phase` (`None`: no record).
pub fn on_register(phase: Option<BlockPhase>) -> OnRegister {
    match phase {
        Some(BlockPhase::Available) => OnRegister::Deduplicate,
        None | Some(BlockPhase::Created) => OnRegister::Upload,
        Some(BlockPhase::Sweeping { lease_expired: true }) => OnRegister::Upload,
        Some(BlockPhase::Sweeping { lease_expired: false }) => OnRegister::WaitForSweep,
    }
}

/// Whether a pass may claim a block: unreferenced by every block-map version (live and
/// snapshot rows alike), last touched before `cutoff` (now minus the grace period), and not
/// claimed already.
pub fn may_claim(phase: BlockPhase, referenced: bool, touched_at: Timestamp, cutoff: Timestamp) -> bool {
    !referenced && touched_at < cutoff && matches!(phase, BlockPhase::Created | BlockPhase::Available)
}

/// Whether a pass may still delete objects: its lease must outlast `margin` (longer than one
/// delete request with its retries may take), so a pass that stalled past its lease never
/// deletes an object a writer has since taken over.
pub fn may_delete_object(lease_expires_at: Timestamp, now: Timestamp, margin_ns: i64) -> bool {
    now.0.saturating_add(margin_ns) < lease_expires_at.0
}

/// One retention class of a policy: deleted data of the workspaces and paths it selects is
/// kept `keep` before it is purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionClass {
    /// Workspace kinds it applies to; all when empty.
    pub kinds: Vec<WorkspaceKind>,
    /// Folder it applies to, with everything below it (`/` or `None`: the whole workspace).
    pub path_prefix: Option<String>,
    pub keep: Duration,
}

impl RetentionClass {
    /// A class of `days` days for every kind and path.
    pub fn days(days: u32) -> RetentionClass {
        RetentionClass {
            kinds: Vec::new(),
            path_prefix: None,
            keep: days_to_duration(days),
        }
    }
}

/// The studio's default retention classes: 7, 15, 30, 60 and 180 days.
pub const STUDIO_RETENTION_DAYS: [u32; 5] = [7, 15, 30, 60, 180];

/// `days` whole days.
pub fn days_to_duration(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 86_400)
}

/// How long deleted data at `path` of a `kind` workspace is kept: the longest of the classes
/// that apply (no class may see its data purged early because another applies too). `path`
/// is `None` when the folder it was deleted from is gone: then every class of the kind
/// applies, whatever its prefix, so the answer errs towards keeping. `None` when no class
/// applies: such data is never purged.
pub fn retention(classes: &[RetentionClass], kind: WorkspaceKind, path: Option<&str>) -> Option<Duration> {
    classes
        .iter()
        .filter(|c| c.kinds.is_empty() || c.kinds.contains(&kind))
        .filter(|c| match (c.path_prefix.as_deref(), path) {
            (None, _) | (Some(_), None) => true,
            (Some(prefix), Some(path)) => super::access::covers(prefix, path),
        })
        .map(|c| c.keep)
        .max()
}

/// Whether data deleted at `deleted_at` and kept for `keep` may be purged at `now`.
pub fn purge_due(deleted_at: Timestamp, keep: Duration, now: Timestamp) -> bool {
    let keep_ns = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
    now.0.saturating_sub(deleted_at.0) >= keep_ns
}

/// Which snapshots a policy keeps: the `keep_last` newest and those younger than `max_age`.
/// A snapshot is released only when no rule given keeps it; with no rule, all are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotRetention {
    pub keep_last: Option<u32>,
    pub max_age: Option<Duration>,
}

/// The indexes in `created` (creation times of one workspace's snapshots, any order) of the
/// snapshots `rule` releases at `now`.
pub fn snapshots_to_release(created: &[Timestamp], rule: SnapshotRetention, now: Timestamp) -> Vec<usize> {
    if rule.keep_last.is_none() && rule.max_age.is_none() {
        return Vec::new();
    }
    let mut newest_first: Vec<usize> = (0..created.len()).collect();
    newest_first.sort_by(|&a, &b| created[b].cmp(&created[a]).then(b.cmp(&a)));
    let keep_last = rule.keep_last.map_or(0, |n| n as usize);
    let mut released: Vec<usize> = newest_first
        .into_iter()
        .enumerate()
        .filter(|&(rank, i)| {
            let kept_by_count = rank < keep_last;
            let kept_by_age = rule.max_age.is_some_and(|age| !purge_due(created[i], age, now));
            !kept_by_count && !kept_by_age
        })
        .map(|(_, i)| i)
        .collect();
    released.sort_unstable();
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * 1_000_000_000;

    #[test]
    fn a_writer_skips_its_upload_only_for_an_available_block() {
        use BlockPhase::*;
        assert_eq!(on_register(None), OnRegister::Upload);
        assert_eq!(on_register(Some(Created)), OnRegister::Upload);
        assert_eq!(on_register(Some(Available)), OnRegister::Deduplicate);
        assert_eq!(
            on_register(Some(Sweeping { lease_expired: false })),
            OnRegister::WaitForSweep
        );
        assert_eq!(
            on_register(Some(Sweeping { lease_expired: true })),
            OnRegister::Upload
        );
    }

    #[test]
    fn only_unreferenced_untouched_unclaimed_blocks_are_claimed() {
        use BlockPhase::*;
        let cutoff = Timestamp(100);
        for phase in [
            Created,
            Available,
            Sweeping { lease_expired: false },
            Sweeping { lease_expired: true },
        ] {
            for referenced in [false, true] {
                for touched in [Timestamp(99), Timestamp(100), Timestamp(101)] {
                    let want = !referenced && touched < cutoff && matches!(phase, Created | Available);
                    assert_eq!(
                        may_claim(phase, referenced, touched, cutoff),
                        want,
                        "{phase:?} referenced={referenced} touched={touched:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn deletes_stop_before_the_lease_runs_out() {
        let expires = Timestamp(1_000);
        assert!(may_delete_object(expires, Timestamp(800), 100));
        assert!(!may_delete_object(expires, Timestamp(900), 100));
        assert!(!may_delete_object(expires, Timestamp(950), 100));
        assert!(!may_delete_object(expires, Timestamp(2_000), 0));
        assert!(!may_delete_object(
            Timestamp(i64::MIN),
            Timestamp(i64::MAX),
            i64::MAX
        ));
    }

    #[test]
    fn the_longest_applicable_retention_wins_and_none_means_never() {
        let class = |kinds: Vec<WorkspaceKind>, prefix: Option<&str>, days| RetentionClass {
            kinds,
            path_prefix: prefix.map(Into::into),
            keep: days_to_duration(days),
        };
        let retention_days = |classes: &[RetentionClass], kind, path| {
            retention(classes, kind, path).map(|d| (d.as_secs() / 86_400) as u32)
        };
        let classes = [
            class(vec![], None, 7),
            class(vec![WorkspaceKind::Project], None, 60),
            class(vec![], Some("/finals"), 180),
            class(vec![WorkspaceKind::User], Some("/scratch"), 15),
        ];
        assert_eq!(retention_days(&classes, WorkspaceKind::Team, Some("/a")), Some(7));
        assert_eq!(
            retention_days(&classes, WorkspaceKind::Project, Some("/a")),
            Some(60)
        );
        assert_eq!(
            retention_days(&classes, WorkspaceKind::Team, Some("/finals/x")),
            Some(180)
        );
        assert_eq!(
            retention_days(&classes, WorkspaceKind::Team, Some("/finalsx")),
            Some(7)
        );
        assert_eq!(
            retention_days(&classes, WorkspaceKind::User, Some("/scratch/t")),
            Some(15)
        );
        assert_eq!(
            retention_days(&classes[1..2], WorkspaceKind::Team, Some("/a")),
            None
        );
        assert_eq!(retention_days(&[], WorkspaceKind::Team, Some("/a")), None);
        // The folder it was deleted from is gone: every class of the kind applies.
        assert_eq!(retention_days(&classes, WorkspaceKind::Team, None), Some(180));
        assert_eq!(retention_days(&classes, WorkspaceKind::User, None), Some(180));
        assert_eq!(STUDIO_RETENTION_DAYS, [7, 15, 30, 60, 180]);
    }

    #[test]
    fn purge_is_due_after_whole_days() {
        let deleted = Timestamp(10 * DAY);
        let week = days_to_duration(7);
        assert!(!purge_due(deleted, week, Timestamp(17 * DAY - 1)));
        assert!(purge_due(deleted, week, Timestamp(17 * DAY)));
        assert!(purge_due(deleted, Duration::ZERO, deleted));
        assert!(!purge_due(deleted, Duration::MAX, Timestamp(i64::MAX)));
        assert!(!purge_due(
            deleted,
            days_to_duration(u32::MAX),
            Timestamp(i64::MAX)
        ));
    }

    #[test]
    fn snapshots_are_released_only_when_no_rule_keeps_them() {
        let now = Timestamp(100 * DAY);
        // Ages in days: 1, 5, 10, 40, 90 (given out of order).
        let created: Vec<Timestamp> = [90, 1, 40, 5, 10]
            .iter()
            .map(|d| Timestamp(now.0 - d * DAY))
            .collect();
        let rule = |keep_last, days: Option<u32>| SnapshotRetention {
            keep_last,
            max_age: days.map(days_to_duration),
        };
        assert!(snapshots_to_release(&created, rule(None, None), now).is_empty());
        // Keep the 2 newest (ages 1 and 5): release 10, 40, 90.
        assert_eq!(
            snapshots_to_release(&created, rule(Some(2), None), now),
            vec![0, 2, 4]
        );
        // Keep those younger than 30 days: release 40 and 90.
        assert_eq!(
            snapshots_to_release(&created, rule(None, Some(30)), now),
            vec![0, 2]
        );
        // Both: a snapshot either rule keeps is kept.
        assert_eq!(
            snapshots_to_release(&created, rule(Some(4), Some(7)), now),
            vec![0]
        );
        assert_eq!(
            snapshots_to_release(&created, rule(Some(0), Some(0)), now),
            vec![0, 1, 2, 3, 4]
        );
        assert!(snapshots_to_release(&[], rule(Some(1), Some(1)), now).is_empty());
    }
}
