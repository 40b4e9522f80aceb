//! Validated directory-entry names.

use std::fmt;

/// Longest name in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Longest path in bytes (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// A directory-entry name: 1-255 bytes, not "." or "..", no "/" and no NUL. Any other bytes
/// are allowed (Linux names need not be UTF-8).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Vec<u8>);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid name: empty")]
    Empty,
    #[error("invalid name: \".\" and \"..\" are reserved")]
    Dot,
    #[error("invalid name: contains '/'")]
    Slash,
    #[error("invalid name: contains NUL")]
    Nul,
    #[error("invalid name: {0} bytes is longer than 255")]
    TooLong(usize),
    #[error("invalid path: {0} bytes is longer than 4096")]
    PathTooLong(usize),
    #[error("invalid name: must be lowercase letters, digits, '-' and '.', starting and ending alphanumeric")]
    NotDnsName,
}

impl Name {
    /// Validates `bytes` as a name.
    pub fn parse(bytes: impl AsRef<[u8]>) -> Result<Name, NameError> {
        let b = bytes.as_ref();
        if b.is_empty() {
            return Err(NameError::Empty);
        }
        if b.len() > NAME_MAX {
            return Err(NameError::TooLong(b.len()));
        }
        if b == b"." || b == b".." {
            return Err(NameError::Dot);
        }
        if b.contains(&b'/') {
            return Err(NameError::Slash);
        }
        if b.contains(&0) {
            return Err(NameError::Nul);
        }
        Ok(Name(b.to_vec()))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as text, with invalid UTF-8 replaced (for display and logs).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Builds a name from bytes already validated (read back from the store).
    pub(crate) fn from_stored(bytes: Vec<u8>) -> Name {
        Name(bytes)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Name, NameError> {
        Name::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse("."), Err(NameError::Dot));
        assert_eq!(Name::parse(".."), Err(NameError::Dot));
        assert_eq!(Name::parse("a/b"), Err(NameError::Slash));
        assert_eq!(Name::parse(b"a\0b"), Err(NameError::Nul));
        assert_eq!(Name::parse("x".repeat(256)), Err(NameError::TooLong(256)));
    }

    #[test]
    fn ordinary_names_are_accepted() {
        assert!(Name::parse("x".repeat(255)).is_ok());
        assert!(Name::parse("...").is_ok());
        assert!(Name::parse(".hidden").is_ok());
        assert!(Name::parse(b"\xff\xfe").is_ok());
        assert_eq!(
            Name::parse("shot010.1001.exr").unwrap().as_bytes(),
            b"shot010.1001.exr"
        );
    }
}

/// A path inside a workspace, from its root: names separated by '/'. Empty parts are
/// ignored ("//shots/sh010/" is "/shots/sh010") and a leading '/' is optional (a path is
/// always from the workspace root); every part is a valid [`Name`] (so no "." or ".."), and
/// the whole is at most [`PATH_MAX`] bytes. The one path parser of the engine, the operator
/// and the CSI driver; shown in its canonical form, "/shots/sh010" ("/" for the root).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct WorkspacePath(Vec<Name>);

impl WorkspacePath {
    pub fn parse(path: &str) -> Result<WorkspacePath, NameError> {
        if path.len() > PATH_MAX {
            return Err(NameError::PathTooLong(path.len()));
        }
        path.split('/')
            .filter(|part| !part.is_empty())
            .map(Name::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(WorkspacePath)
    }

    /// The names from the root down.
    pub fn names(&self) -> &[Name] {
        &self.0
    }

    pub fn into_names(self) -> Vec<Name> {
        self.0
    }

    /// Whether this is the root ("/").
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path relative to `base`, if it lies inside it ("/a/b" within "/a" is "/b", "/a"
    /// within "/a" is "/"; "/ab" is not within "/a").
    pub fn relative_to(&self, base: &WorkspacePath) -> Option<WorkspacePath> {
        self.0
            .strip_prefix(base.0.as_slice())
            .map(|rest| WorkspacePath(rest.to_vec()))
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for name in &self.0 {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn workspace_paths_parse_to_names_and_print_canonically() {
        let shown = |p: &str| WorkspacePath::parse(p).map(|p| p.to_string());
        assert_eq!(shown("/").as_deref(), Ok("/"));
        assert_eq!(shown("").as_deref(), Ok("/"));
        assert_eq!(shown("//shots///sh010/").as_deref(), Ok("/shots/sh010"));
        assert_eq!(shown("shots/sh010").as_deref(), Ok("/shots/sh010"));
        let names = WorkspacePath::parse("/a/b c").unwrap().into_names();
        assert_eq!(
            names,
            vec![Name::parse("a").unwrap(), Name::parse("b c").unwrap()]
        );
        assert_eq!(WorkspacePath::parse("/a/../b"), Err(NameError::Dot));
        assert_eq!(WorkspacePath::parse("/a/./b"), Err(NameError::Dot));
        assert_eq!(WorkspacePath::parse("/a/\0b"), Err(NameError::Nul));
        assert_eq!(
            WorkspacePath::parse(&format!("/{}", "x".repeat(256))),
            Err(NameError::TooLong(256))
        );
        let long = "/abc".repeat(1025);
        assert_eq!(
            WorkspacePath::parse(&long),
            Err(NameError::PathTooLong(long.len()))
        );
    }

    #[test]
    fn paths_relative_to_a_folder() {
        let p = |s: &str| WorkspacePath::parse(s).unwrap();
        let within = |path: &str, base: &str| p(path).relative_to(&p(base)).map(|r| r.to_string());
        assert_eq!(within("/shots/010", "/").as_deref(), Some("/shots/010"));
        assert_eq!(within("/volumes/pvc-1", "/volumes/pvc-1/").as_deref(), Some("/"));
        assert_eq!(
            within("/volumes/pvc-1/renders", "/volumes/pvc-1").as_deref(),
            Some("/renders")
        );
        assert_eq!(within("/volumes/pvc-10", "/volumes/pvc-1"), None);
        assert_eq!(within("/other", "/volumes/pvc-1"), None);
        assert_eq!(within("/", "/volumes"), None);
        assert!(p("//").is_root() && !p("/a").is_root());
    }
}
