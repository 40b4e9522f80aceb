//! Pure rules of the namespace, shared by every metadata store: values in, decisions out, no
//! I/O and no clock. The stores gather the facts a rule needs, ask it, and carry out what it
//! decides, so the PostgreSQL store and the in-memory one cannot drift apart on a rule.
//!
//! - [`blocks`]: which blocks a byte range covers, what a shrink keeps;
//! - [`rename`]: the POSIX `rename(2)` / `renameat2` decision table;
//! - [`write_once`]: what a project (write-once) workspace refuses.

use crate::error::MetaError;
use crate::model::{NewNode, NodeKind};

pub mod blocks;
pub mod rename;
pub mod write_once;

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
            include_str!("rename.rs"),
            include_str!("write_once.rs"),
        ];
        crate::model::assert_imports_pure("rules", &sources);
    }
}
