//! The file-system layer's typed error and its closed classification, which the FUSE adapter
//! maps to errno in exactly one function.

use crate::error::{ErrorKind, MetaError};
use crate::fs::blocks::{BlockErrorKind, BlockIoError};

/// What went wrong, as a closed set an adapter maps (FUSE: errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsErrorKind {
    NotFound,
    Exists,
    NotEmpty,
    NotADirectory,
    IsADirectory,
    InvalidArgument,
    NameTooLong,
    ReadOnly,
    /// Not allowed by ownership or the workspace kind (EPERM).
    NotPermitted,
    /// Mode bits refuse the access (EACCES).
    AccessDenied,
    /// The attribute does not exist (ENODATA).
    NoAttribute,
    /// The operation is not supported on this node or namespace (ENOTSUP).
    NotSupported,
    /// The file handle is unknown or not open for this operation (EBADF).
    BadHandle,
    /// The file would exceed the largest supported size (EFBIG).
    TooBig,
    /// Storage (metadata or object store, or local staging) failed (EIO).
    Io,
    /// The object store or the local staging disk is full (ENOSPC).
    NoSpace,
    /// The workspace's quota refuses the change (EDQUOT).
    QuotaExceeded,
    /// A transient conflict that a retry may resolve (EAGAIN).
    Busy,
    /// The node a kernel name or handle refers to is gone (ESTALE): the kernel then looks
    /// the name up again instead of trusting a cached entry.
    Stale,
}

impl FsErrorKind {
    /// A stable snake_case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            FsErrorKind::NotFound => "not_found",
            FsErrorKind::Exists => "exists",
            FsErrorKind::NotEmpty => "not_empty",
            FsErrorKind::NotADirectory => "not_a_directory",
            FsErrorKind::IsADirectory => "is_a_directory",
            FsErrorKind::InvalidArgument => "invalid_argument",
            FsErrorKind::NameTooLong => "name_too_long",
            FsErrorKind::ReadOnly => "read_only",
            FsErrorKind::NotPermitted => "not_permitted",
            FsErrorKind::AccessDenied => "access_denied",
            FsErrorKind::NoAttribute => "no_attribute",
            FsErrorKind::NotSupported => "not_supported",
            FsErrorKind::BadHandle => "bad_handle",
            FsErrorKind::TooBig => "too_big",
            FsErrorKind::Io => "io",
            FsErrorKind::NoSpace => "no_space",
            FsErrorKind::QuotaExceeded => "quota_exceeded",
            FsErrorKind::Busy => "busy",
            FsErrorKind::Stale => "stale",
        }
    }
}

/// Errors of file-system operations.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Blocks(#[from] BlockIoError),
    #[error("local staging: {context}")]
    Staging {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind:?}: {message}")]
    Plain { kind: FsErrorKind, message: String },
}

impl FsError {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> FsError {
        FsError::Plain {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn staging(context: impl Into<String>, source: std::io::Error) -> FsError {
        FsError::Staging {
            context: context.into(),
            source,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> FsErrorKind {
        match self {
            FsError::Meta(e) => match e.kind() {
                ErrorKind::NotFound => FsErrorKind::NotFound,
                ErrorKind::Exists => FsErrorKind::Exists,
                ErrorKind::NotEmpty => FsErrorKind::NotEmpty,
                ErrorKind::NotADirectory => FsErrorKind::NotADirectory,
                ErrorKind::IsADirectory => FsErrorKind::IsADirectory,
                ErrorKind::InvalidName | ErrorKind::InvalidArgument => FsErrorKind::InvalidArgument,
                ErrorKind::NameTooLong => FsErrorKind::NameTooLong,
                ErrorKind::ReadOnly => FsErrorKind::ReadOnly,
                ErrorKind::PermissionDenied => FsErrorKind::NotPermitted,
                ErrorKind::QuotaExceeded => FsErrorKind::QuotaExceeded,
                ErrorKind::Conflict => FsErrorKind::Busy,
                ErrorKind::Unavailable | ErrorKind::Internal => FsErrorKind::Io,
            },
            FsError::Blocks(e) if e.kind == BlockErrorKind::NoSpace => FsErrorKind::NoSpace,
            FsError::Staging { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                FsErrorKind::NoSpace
            }
            FsError::Blocks(_) | FsError::Staging { .. } => FsErrorKind::Io,
            FsError::Plain { kind, .. } => *kind,
        }
    }
}

pub(crate) fn read_only() -> FsError {
    FsError::new(FsErrorKind::ReadOnly, "this mount is read-only")
}
