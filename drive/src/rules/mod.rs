//! Pure rules of the namespace, shared by every metadata store: values in, decisions out, no
//! I/O and no clock. The stores gather the facts a rule needs, ask it, and carry out what it
//! decides, so the PostgreSQL store and the in-memory one cannot drift apart on a rule.
//!
//! - [`blocks`]: which blocks a byte range covers, what a shrink keeps;
//! - [`quota`]: what a node charges its workspace's usage counters, what a quota refuses;
//! - [`rename`]: the POSIX `rename(2)` / `renameat2` decision table;
//! - [`write_once`]: what a project (write-once) workspace refuses.

use crate::error::MetaError;
use crate::model::{
    Attr, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, NewNode, NodeKind, Timestamp, WorkspaceSpec,
    validate_workspace_name,
};

pub mod blocks;
pub mod quota;
pub mod rename;
pub mod write_once;

/// Refuses a workspace spec with a bad name or a block size out of range.
pub fn check_workspace_spec(spec: &WorkspaceSpec) -> Result<(), MetaError> {
    validate_workspace_name(&spec.name)?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&spec.block_size) {
        return Err(MetaError::InvalidArgument(format!(
            "block size {} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE} bytes",
            spec.block_size
        )));
    }
    Ok(())
}

/// A directory's attributes after an entry was added to or removed from it: its times move,
/// and its link count follows the subfolders added (positive) or removed (negative).
pub fn touch_dir(dir: &mut Attr, now: Timestamp, subdirs_delta: i64) {
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink = (i64::from(dir.nlink) + subdirs_delta).max(0) as u32;
}

/// A node's attributes after one of its names is removed: a folder has no other name, a
/// file loses one link.
pub fn drop_link(node: &mut Attr, now: Timestamp) {
    node.nlink = if node.kind == NodeKind::Directory {
        0
    } else {
        node.nlink.saturating_sub(1)
    };
    node.ctime = now;
}

/// Refuses a node that cannot be created whatever the tree holds (a symlink needs a target).
pub fn check_new_node(node: &NewNode) -> Result<(), MetaError> {
    if node.kind == NodeKind::Symlink && node.symlink_target.as_ref().is_none_or(Vec::is_empty) {
        return Err(MetaError::InvalidArgument(
            "a symlink needs a non-empty target".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod purity {
    /// Rules are the pure core: no I/O, async or store imports.
    #[test]
    fn rules_import_no_io() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("blocks.rs"),
            include_str!("quota.rs"),
            include_str!("rename.rs"),
            include_str!("write_once.rs"),
        ];
        crate::model::assert_imports_pure("rules", &sources);
    }
}
