//! Project workspaces are write-once: a file with committed content cannot be overwritten,
//! truncated, replaced, exchanged or deleted, and only empty folders can be removed.
//!
//! The file system asks these rules at the operation (open, truncate, rename, unlink), so a
//! refused change fails with EPERM at once and nothing is staged; the metadata stores ask
//! them again inside their transactions, the last line of defence against another mount
//! that committed in between.

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

/// Refuses opening a file with committed content for writing or with O_TRUNC: the writes
/// could only fail at close, after the writer was told they succeeded. An empty file (never
/// committed) may be opened for writing; which writer fills it is the commit's to decide (see
/// [`commit`]).
pub fn open(kind: WorkspaceKind, attr: &Attr, write: bool, truncate: bool) -> Result<(), MetaError> {
    match (write, truncate) {
        (_, true) => guard(kind, attr, "truncate"),
        (true, false) => guard(kind, attr, "open for writing"),
        (false, false) => Ok(()),
    }
}

/// Refuses a size change of a file with committed content (`truncate(2)`, a size-changing
/// `setattr`); setting the size it already has changes nothing and is allowed.
pub fn resize(kind: WorkspaceKind, attr: &Attr, new_size: u64) -> Result<(), MetaError> {
    if new_size == attr.size {
        return Ok(());
    }
    guard(kind, attr, "truncate")
}

/// Refuses `RENAME_EXCHANGE` of two nodes when either is a file with committed content: the
/// other node would take its name, which replaces it for every reader of that path.
pub fn exchange(kind: WorkspaceKind, a: &Attr, b: &Attr) -> Result<(), MetaError> {
    guard(kind, a, "exchange")?;
    guard(kind, b, "exchange")
}

/// Decides a content commit of a write session that started from content version
/// `base_version`, against the file's `current` attributes, inside the commit's transaction.
/// In a write-once workspace it succeeds only if nobody committed the file since the session
/// began (`current` is still at the base version) and that base had no committed content: of
/// two sessions that both started on one empty file exactly one commits.
pub fn commit(kind: WorkspaceKind, current: &Attr, base_version: u64) -> Result<(), MetaError> {
    if kind != WorkspaceKind::Project {
        return Ok(());
    }
    if current.content_version != base_version {
        return Err(MetaError::PermissionDenied(format!(
            "overwrite: project workspaces are write-once and file {} was committed by another \
             writer after this one opened it",
            current.ino
        )));
    }
    guard(kind, current, "overwrite")
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

    fn refused(result: Result<(), MetaError>) -> bool {
        match result {
            Ok(()) => false,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
                true
            }
        }
    }

    #[test]
    fn a_committed_file_cannot_be_opened_for_writing_an_empty_one_can() {
        let empty = test_attr(5, NodeKind::File, 0o644, 0, 0, 0);
        let mut committed = test_attr(5, NodeKind::File, 0o644, 0, 0, 4);
        committed.content_version = 1;
        let project = WorkspaceKind::Project;
        // (write, truncate) -> refused on a committed file
        for (write, truncate, want) in [
            (false, false, false),
            (true, false, true),
            (false, true, true),
            (true, true, true),
        ] {
            assert_eq!(
                refused(open(project, &committed, write, truncate)),
                want,
                "write {write} truncate {truncate}"
            );
            assert!(!refused(open(project, &empty, write, truncate)));
            assert!(!refused(open(WorkspaceKind::Team, &committed, write, truncate)));
        }
        let e = open(project, &committed, true, true).unwrap_err();
        assert!(e.to_string().contains("truncate"), "{e}");
    }

    #[test]
    fn only_a_size_change_of_a_committed_file_is_refused() {
        let mut committed = test_attr(5, NodeKind::File, 0o644, 0, 0, 4);
        committed.content_version = 1;
        let empty = test_attr(6, NodeKind::File, 0o644, 0, 0, 0);
        let project = WorkspaceKind::Project;
        assert!(refused(resize(project, &committed, 0)));
        assert!(refused(resize(project, &committed, 9)));
        assert!(!refused(resize(project, &committed, 4)));
        assert!(!refused(resize(project, &empty, 9)));
        assert!(!refused(resize(WorkspaceKind::User, &committed, 0)));
    }

    #[test]
    fn an_exchange_involving_a_committed_file_is_refused() {
        let mut committed = test_attr(5, NodeKind::File, 0o644, 0, 0, 4);
        committed.content_version = 1;
        let empty = test_attr(6, NodeKind::File, 0o644, 0, 0, 0);
        let dir = test_attr(7, NodeKind::Directory, 0o755, 0, 0, 0);
        let project = WorkspaceKind::Project;
        assert!(refused(exchange(project, &committed, &empty)));
        assert!(refused(exchange(project, &empty, &committed)));
        assert!(refused(exchange(project, &dir, &committed)));
        assert!(!refused(exchange(project, &empty, &dir)));
        assert!(!refused(exchange(WorkspaceKind::Team, &committed, &committed)));
    }

    #[test]
    fn only_the_first_commit_from_an_empty_base_succeeds() {
        let project = WorkspaceKind::Project;
        let mut current = test_attr(5, NodeKind::File, 0o644, 0, 0, 0);
        // (current version, current size, base version) -> refused
        for (version, size, base, want) in [
            (0, 0, 0, false), // nobody committed since the session began on an empty file
            (1, 4, 0, true),  // another session committed first
            (1, 0, 0, true),  // another session committed an empty content first
            (1, 4, 1, true),  // the session began on committed content
            (2, 4, 1, true),
            (0, 4, 0, true), // sized without a version (an old row): committed content
        ] {
            current.content_version = version;
            current.size = size;
            assert_eq!(
                refused(commit(project, &current, base)),
                want,
                "version {version} size {size} base {base}"
            );
            assert!(!refused(commit(WorkspaceKind::User, &current, base)));
        }
    }
}
