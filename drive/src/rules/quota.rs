//! Usage counters and quotas: what a node charges its workspace, whether a change fits the
//! quota, and when a write may be refused before its commit.
//!
//! A node charges its workspace while it has a link (`nlink > 0`): one node, plus its logical
//! size when it is a regular file. Hard links are one inode, charged once; a file unlinked
//! while open is charged no more. A folder deleted whole in O(1) (`delete_path`, or replaced
//! by a copy) gives back its own charge only: the nodes below it keep their links and rows
//! until the lifecycle purge, and their charge with them. Snapshots charge nothing: their
//! rows are kept by the epoch mechanism, not by links.

use crate::error::MetaError;
use crate::model::{Attr, NodeKind};

/// A signed change of a workspace's usage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageChange {
    pub bytes: i64,
    pub nodes: i64,
}

impl UsageChange {
    /// Whether the change leaves the counters as they are.
    pub fn is_zero(self) -> bool {
        self == UsageChange::default()
    }
}

impl std::ops::Add for UsageChange {
    type Output = UsageChange;

    fn add(self, other: UsageChange) -> UsageChange {
        UsageChange {
            bytes: self.bytes + other.bytes,
            nodes: self.nodes + other.nodes,
        }
    }
}

impl std::ops::AddAssign for UsageChange {
    fn add_assign(&mut self, other: UsageChange) {
        *self = *self + other;
    }
}

impl std::ops::Sub for UsageChange {
    type Output = UsageChange;

    fn sub(self, other: UsageChange) -> UsageChange {
        UsageChange {
            bytes: self.bytes - other.bytes,
            nodes: self.nodes - other.nodes,
        }
    }
}

/// What node `attr` charges: its size (regular files only) and one node while it has a link;
/// nothing once its last name is gone (an open-but-unlinked file is not charged).
pub fn charge(attr: &Attr) -> UsageChange {
    if attr.nlink == 0 {
        return UsageChange::default();
    }
    let bytes = match attr.kind {
        NodeKind::File => i64::try_from(attr.size).unwrap_or(i64::MAX),
        _ => 0,
    };
    UsageChange { bytes, nodes: 1 }
}

/// How the counters move when a node changes from `before` to `after`.
pub fn change(before: &Attr, after: &Attr) -> UsageChange {
    charge(after) - charge(before)
}

/// Refuses `change` when it adds bytes and would take `used` above `quota`. Changes that do
/// not add bytes always pass, so a workspace above a lowered quota can still shrink.
pub fn check(quota: Option<u64>, used: u64, change: UsageChange) -> Result<(), MetaError> {
    let Some(quota) = quota else { return Ok(()) };
    if change.bytes <= 0 {
        return Ok(());
    }
    let after = used.saturating_add(change.bytes as u64);
    if after > quota {
        return Err(MetaError::QuotaExceeded(format!(
            "{after} bytes would exceed the workspace quota of {quota} bytes ({used} in use)"
        )));
    }
    Ok(())
}

/// Bytes left under `quota` with `used` in use (`None`: no quota).
pub fn headroom(quota: Option<u64>, used: u64) -> Option<u64> {
    quota.map(|q| q.saturating_sub(used))
}

/// Whether a write ending at `end` to a file of `current_size` (this session's view) whose
/// committed size is `committed_size` should fail at once: it extends the file, and the
/// file's growth over what is committed exceeds `headroom` as last read. Overwrites inside
/// the file never fail here; the commit's check is the authority.
pub fn write_exceeds(headroom: Option<u64>, committed_size: u64, current_size: u64, end: u64) -> bool {
    match headroom {
        Some(room) => end > current_size && end.saturating_sub(committed_size) > room,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_attr;

    fn attr(kind: NodeKind, size: u64, nlink: u32) -> Attr {
        Attr {
            nlink,
            ..test_attr(7, kind, 0o644, 0, 0, size)
        }
    }

    #[test]
    fn files_charge_their_size_once_and_other_nodes_only_themselves() {
        assert_eq!(
            charge(&attr(NodeKind::File, 10, 3)),
            UsageChange { bytes: 10, nodes: 1 }
        );
        assert_eq!(
            charge(&attr(NodeKind::Symlink, 6, 1)),
            UsageChange { bytes: 0, nodes: 1 }
        );
        assert_eq!(
            charge(&attr(NodeKind::Directory, 0, 2)),
            UsageChange { bytes: 0, nodes: 1 }
        );
        assert!(charge(&attr(NodeKind::File, 10, 0)).is_zero());
    }

    #[test]
    fn the_last_unlink_gives_back_the_whole_charge() {
        let linked = attr(NodeKind::File, 100, 2);
        let one_left = attr(NodeKind::File, 100, 1);
        let gone = attr(NodeKind::File, 100, 0);
        assert!(change(&linked, &one_left).is_zero());
        assert_eq!(
            change(&one_left, &gone),
            UsageChange {
                bytes: -100,
                nodes: -1
            }
        );
        assert_eq!(
            change(&one_left, &attr(NodeKind::File, 40, 1)),
            UsageChange { bytes: -60, nodes: 0 }
        );
    }

    #[test]
    fn only_growth_past_the_quota_is_refused() {
        let grow = |bytes| UsageChange { bytes, nodes: 0 };
        assert!(check(Some(100), 90, grow(10)).is_ok());
        let refused = check(Some(100), 90, grow(11)).unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::QuotaExceeded);
        assert_eq!(refused.kind().errno(), libc::EDQUOT);
        assert!(
            check(Some(100), 150, grow(-10)).is_ok(),
            "shrinking above a lowered quota"
        );
        assert!(check(Some(100), 150, UsageChange { bytes: 0, nodes: 1 }).is_ok());
        assert!(check(None, u64::MAX, grow(i64::MAX)).is_ok());
    }

    #[test]
    fn writes_fail_early_only_when_they_extend_the_file_past_the_headroom() {
        assert!(!write_exceeds(None, 0, 0, u64::MAX));
        // 10 bytes left: the file may grow by 10 over its committed size.
        assert!(!write_exceeds(Some(10), 100, 105, 110));
        assert!(write_exceeds(Some(10), 100, 105, 111));
        // Overwrites inside the file pass whatever the headroom.
        assert!(!write_exceeds(Some(0), 100, 200, 150));
        assert_eq!(headroom(Some(100), 150), Some(0));
        assert_eq!(headroom(None, 150), None);
    }
}
