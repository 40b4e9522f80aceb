//! The `rename(2)` decision table, with the Linux `renameat2` flags.
//!
//! A store looks up the source and target entries, asks [`plan`], runs the plan's checks in
//! order (they need the tree: "is the moved folder above the target folder", "is the replaced
//! folder empty"), reports the first that fails, and otherwise carries out the step or
//! returns its error. The order is the one POSIX callers can observe: moving a folder into
//! itself is EINVAL whatever the flags; a kind mismatch (EISDIR, ENOTDIR) comes before
//! "not empty", which comes before the write-once guard the store applies to a replaced file.

use crate::error::MetaError;
use crate::model::{Name, NodeId, NodeKind, RenameMode};

/// What the rule needs to know of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    pub ino: NodeId,
    pub kind: NodeKind,
}

impl EntryFacts {
    fn is_dir(self) -> bool {
        self.kind == NodeKind::Directory
    }
}

/// A fact about the tree the store must check before the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameCheck {
    /// Folder `moved` is not `target_parent` nor above it (else InvalidArgument).
    NotAbove { moved: NodeId, target_parent: NodeId },
    /// Folder `dir` (the one replaced) has no entries (else NotEmpty).
    Empty(NodeId),
}

/// What the rename does once the checks passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameStep {
    /// Nothing changes: the same entry, or two names of one node (POSIX: do nothing).
    Nothing,
    /// Swap the two entries (`RENAME_EXCHANGE`).
    Exchange { target: EntryFacts },
    /// Move the source to the new name, removing the entry it replaces, if any (the store
    /// applies the write-once guard to a replaced node).
    Move { replaces: Option<EntryFacts> },
}

/// The checks to run, in order, and then the outcome.
#[derive(Debug)]
pub struct RenamePlan {
    pub checks: Vec<RenameCheck>,
    pub outcome: Result<RenameStep, MetaError>,
}

/// Decides a rename of `src` (named `name` in `parent`) to `new_name` in `new_parent`, where
/// `dst` is the entry already there, if any.
pub fn plan(
    mode: RenameMode,
    (parent, name): (NodeId, &Name),
    (new_parent, new_name): (NodeId, &Name),
    src: EntryFacts,
    dst: Option<EntryFacts>,
) -> RenamePlan {
    let same_dir = parent == new_parent;
    let mut checks = Vec::new();
    if same_dir && name == new_name {
        return RenamePlan {
            checks,
            outcome: Ok(RenameStep::Nothing),
        };
    }
    if src.is_dir() && !same_dir {
        checks.push(RenameCheck::NotAbove {
            moved: src.ino,
            target_parent: new_parent,
        });
    }
    let outcome = match (mode, dst) {
        (RenameMode::NoReplace, Some(_)) => Err(MetaError::Exists(new_name.to_string_lossy())),
        (RenameMode::Exchange, None) => Err(MetaError::NotFound(new_name.to_string_lossy())),
        (_, Some(dst)) if dst.ino == src.ino => Ok(RenameStep::Nothing),
        (RenameMode::Exchange, Some(dst)) => {
            if dst.is_dir() && !same_dir {
                checks.push(RenameCheck::NotAbove {
                    moved: dst.ino,
                    target_parent: parent,
                });
            }
            Ok(RenameStep::Exchange { target: dst })
        }
        (_, None) => Ok(RenameStep::Move { replaces: None }),
        (_, Some(dst)) => match (src.is_dir(), dst.is_dir()) {
            (true, false) => Err(MetaError::NotADirectory(new_name.to_string_lossy())),
            (false, true) => Err(MetaError::IsADirectory(new_name.to_string_lossy())),
            (both_dirs, _) => {
                if both_dirs {
                    checks.push(RenameCheck::Empty(dst.ino));
                }
                Ok(RenameStep::Move { replaces: Some(dst) })
            }
        },
    };
    RenamePlan { checks, outcome }
}

/// The error a failed check reports.
pub fn check_failure(check: RenameCheck, new_name: &Name) -> MetaError {
    match check {
        RenameCheck::NotAbove { .. } => {
            MetaError::InvalidArgument("cannot move a directory into itself or its own subtree".into())
        }
        RenameCheck::Empty(_) => MetaError::NotEmpty(new_name.to_string_lossy()),
    }
}

/// How many subfolders the source and target folders gain (negative: lose) by a step: their
/// link counts change by as much.
pub fn folder_link_deltas(step: RenameStep, src: EntryFacts) -> (i64, i64) {
    let moved = i64::from(src.is_dir());
    match step {
        RenameStep::Nothing => (0, 0),
        RenameStep::Exchange { target } => {
            let delta = moved - i64::from(target.is_dir());
            (-delta, delta)
        }
        RenameStep::Move { replaces } => (
            -moved,
            moved - i64::from(replaces.is_some_and(EntryFacts::is_dir)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn n(s: &str) -> Name {
        Name::parse(s.as_bytes()).unwrap()
    }
    const FILE: NodeKind = NodeKind::File;
    const DIR: NodeKind = NodeKind::Directory;
    fn e(ino: u64, kind: NodeKind) -> EntryFacts {
        EntryFacts {
            ino: NodeId(ino),
            kind,
        }
    }
    fn decide(mode: RenameMode, same_dir: bool, src: EntryFacts, dst: Option<EntryFacts>) -> RenamePlan {
        let (a, b) = (n("a"), n("b"));
        plan(
            mode,
            (NodeId(1), &a),
            (NodeId(if same_dir { 1 } else { 2 }), &b),
            src,
            dst,
        )
    }
    fn kind(p: &RenamePlan) -> Option<ErrorKind> {
        p.outcome.as_ref().err().map(MetaError::kind)
    }

    #[test]
    fn the_decision_table() {
        use RenameMode::*;
        // (mode, same dir, src, dst) -> (checks, outcome kind)
        let none = None;
        let exists = Some(ErrorKind::Exists);
        type Case = (
            RenameMode,
            bool,
            EntryFacts,
            Option<EntryFacts>,
            usize,
            Option<ErrorKind>,
        );
        let cases: Vec<Case> = vec![
            (Replace, true, e(3, FILE), None, 0, none),
            (Replace, false, e(3, DIR), None, 1, none),
            (NoReplace, true, e(3, FILE), Some(e(4, FILE)), 0, exists),
            // Moving a folder into itself is checked before the NOREPLACE refusal.
            (NoReplace, false, e(3, DIR), Some(e(4, FILE)), 1, exists),
            (Exchange, true, e(3, FILE), None, 0, Some(ErrorKind::NotFound)),
            (Exchange, false, e(3, DIR), Some(e(4, DIR)), 2, none),
            (Exchange, true, e(3, DIR), Some(e(4, DIR)), 0, none),
            (
                Replace,
                true,
                e(3, DIR),
                Some(e(4, FILE)),
                0,
                Some(ErrorKind::NotADirectory),
            ),
            (
                Replace,
                true,
                e(3, FILE),
                Some(e(4, DIR)),
                0,
                Some(ErrorKind::IsADirectory),
            ),
            (Replace, true, e(3, DIR), Some(e(4, DIR)), 1, none),
            (Replace, true, e(3, FILE), Some(e(4, FILE)), 0, none),
            (Replace, true, e(3, FILE), Some(e(3, FILE)), 0, none),
        ];
        for (mode, same_dir, src, dst, checks, outcome) in cases {
            let p = decide(mode, same_dir, src, dst);
            assert_eq!(
                p.checks.len(),
                checks,
                "{mode:?} {same_dir} {src:?} {dst:?}: {p:?}"
            );
            assert_eq!(kind(&p), outcome, "{mode:?} {same_dir} {src:?} {dst:?}: {p:?}");
        }
    }

    #[test]
    fn same_entry_and_hard_links_change_nothing() {
        let a = n("a");
        let p = plan(
            RenameMode::Replace,
            (NodeId(1), &a),
            (NodeId(1), &a),
            e(3, DIR),
            None,
        );
        assert!(p.checks.is_empty());
        assert_eq!(p.outcome.unwrap(), RenameStep::Nothing);
        let p = decide(RenameMode::Replace, false, e(3, FILE), Some(e(3, FILE)));
        assert_eq!(p.outcome.unwrap(), RenameStep::Nothing);
    }

    #[test]
    fn folder_link_counts_follow_the_folders_moved() {
        let moved_dir = RenameStep::Move { replaces: None };
        assert_eq!(folder_link_deltas(moved_dir, e(3, DIR)), (-1, 1));
        let over_dir = RenameStep::Move {
            replaces: Some(e(4, DIR)),
        };
        assert_eq!(folder_link_deltas(over_dir, e(3, DIR)), (-1, 0));
        assert_eq!(folder_link_deltas(moved_dir, e(3, FILE)), (0, 0));
        let swap = RenameStep::Exchange { target: e(4, FILE) };
        assert_eq!(folder_link_deltas(swap, e(3, DIR)), (-1, 1));
        let swap_dirs = RenameStep::Exchange { target: e(4, DIR) };
        assert_eq!(folder_link_deltas(swap_dirs, e(3, DIR)), (0, 0));
    }
}
