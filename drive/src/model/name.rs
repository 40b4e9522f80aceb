//! Validated directory-entry names.

use std::fmt;

/// Longest name in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

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
