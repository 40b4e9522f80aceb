//! Pure rules of the namespace, shared by every metadata store: values in, decisions out, no
//! I/O and no clock. The stores gather the facts a rule needs, ask it, and carry out what it
//! decides, so the PostgreSQL store and the in-memory one cannot drift apart on a rule.
//!
//! - [`access`]: who may mount which path of a workspace;
//! - [`blocks`]: which blocks a byte range covers, what a shrink keeps;
//! - [`gc`]: what garbage collection may remove, the block claim protocol;
//! - [`quota`]: what a node charges its workspace's usage counters, what a quota refuses;
//! - [`rename`]: the POSIX `rename(2)` / `renameat2` decision table;
//! - [`write_once`]: what a project (write-once) workspace refuses.

use crate::error::MetaError;
use crate::model::{
    Attr, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, NewNode, NodeKind, ObjectStoreLocation, Timestamp, WorkspaceSpec,
    valid_bucket_name, validate_workspace_name,
};

pub mod access;
pub mod blocks;
pub mod gc;
pub mod quota;
pub mod rename;
pub mod write_once;

/// Refuses a workspace spec with a bad name, a block size out of range or an unusable object
/// store location.
pub fn check_workspace_spec(spec: &WorkspaceSpec) -> Result<(), MetaError> {
    validate_workspace_name(&spec.name)?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&spec.block_size) {
        return Err(MetaError::InvalidArgument(format!(
            "block size {} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE} bytes",
            spec.block_size
        )));
    }
    if let Some(location) = &spec.object_store {
        check_object_store(location)?;
    }
    Ok(())
}

/// Longest object-store prefix a workspace may record.
const MAX_STORE_PREFIX: usize = 512;

fn check_object_store(location: &ObjectStoreLocation) -> Result<(), MetaError> {
    let invalid = |what: String| Err(MetaError::InvalidArgument(format!("object store: {what}")));
    if !valid_bucket_name(&location.bucket) {
        return invalid(format!(
            "bucket {:?} is not 3-63 characters of a-z, 0-9, '-' and '.'",
            location.bucket
        ));
    }
    let prefix = &location.prefix;
    if prefix.len() > MAX_STORE_PREFIX
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.split('/').any(|part| part == "." || part == "..")
        || prefix.contains('\0')
    {
        return invalid(format!(
            "prefix {prefix:?} must be at most {MAX_STORE_PREFIX} bytes, without leading or trailing '/', '.' or '..' parts"
        ));
    }
    if let Some(endpoint) = &location.endpoint
        && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        return invalid(format!("endpoint {endpoint:?} is not an http(s) URL"));
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
            include_str!("access.rs"),
            include_str!("blocks.rs"),
            include_str!("gc.rs"),
            include_str!("quota.rs"),
            include_str!("rename.rs"),
            include_str!("write_once.rs"),
        ];
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/rules"))
            .expect("list src/rules")
            .count();
        assert_eq!(
            files,
            sources.len(),
            "a new file in src/rules belongs in this list"
        );
        crate::model::assert_imports_pure("rules", &sources);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkspaceKind;

    fn with_store(bucket: &str, prefix: &str, endpoint: Option<&str>) -> WorkspaceSpec {
        let mut spec = WorkspaceSpec::new("ws", WorkspaceKind::User);
        spec.object_store = Some(ObjectStoreLocation {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: endpoint.map(Into::into),
            region: None,
        });
        spec
    }

    #[test]
    fn object_store_locations_are_checked() {
        for ok in [
            with_store("tenant-a", "", None),
            with_store("tenant-a", "studio/shot010", Some("https://s3.example.com")),
            with_store("a.b-c", "x", Some("http://127.0.0.1:9000")),
        ] {
            assert!(check_workspace_spec(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            with_store("UPPER", "", None),
            with_store("ab", "", None),
            with_store("tenant-a", "/lead", None),
            with_store("tenant-a", "trail/", None),
            with_store("tenant-a", "a/../b", None),
            with_store("tenant-a", &"p".repeat(513), None),
            with_store("tenant-a", "", Some("ftp://host")),
        ] {
            let err = check_workspace_spec(&bad).expect_err("refused");
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
