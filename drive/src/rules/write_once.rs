//! Project workspaces are write-once: a file with committed content cannot be overwritten,
//! truncated, replaced or deleted, and only empty folders can be removed.

use crate::error::MetaError;
use crate::model::{Attr, NodeKind, WorkspaceKind};

/// Refuses `what` ("delete", "overwrite", "truncate", "replace") on `attr` when the workspace
/// is write-once and the file has committed content.
pub fn guard(kind: WorkspaceKind, attr: &Attr, what: &str) -> Result<(), MetaError> {
    if kind == WorkspaceKind::Project
        && attr.kind == NodeKind::File
        && (attr.size > 0 || attr.content_version > 0)
    {
        return Err(MetaError::PermissionDenied(format!(
            "{what}: project workspaces are write-once and file {} has committed content",
            attr.ino
        )));
    }
    Ok(())
}

/// What removing a whole folder that is not empty is refused with in a write-once workspace
/// (a folder's files may hold committed content).
pub fn full_folder_refusal() -> MetaError {
    MetaError::PermissionDenied("project workspaces are write-once: only empty folders can be deleted".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::model::test_attr;

    #[test]
    fn only_project_files_with_content_are_protected() {
        let empty = test_attr(5, NodeKind::File, 0o644, 0, 0, 0);
        let mut written = empty.clone();
        written.content_version = 1;
        let mut sized = empty.clone();
        sized.size = 3;
        let dir = test_attr(6, NodeKind::Directory, 0o755, 0, 0, 0);
        assert!(guard(WorkspaceKind::Project, &empty, "delete").is_ok());
        assert!(guard(WorkspaceKind::Project, &dir, "delete").is_ok());
        for attr in [&written, &sized] {
            let e = guard(WorkspaceKind::Project, attr, "delete").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("delete"), "{e}");
            assert!(guard(WorkspaceKind::User, attr, "delete").is_ok());
            assert!(guard(WorkspaceKind::Team, attr, "delete").is_ok());
        }
    }
}
