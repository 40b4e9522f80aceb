//! The metadata store's typed error, classified once so that the FUSE adapter (errno), the CSI
//! services (gRPC codes) and the operator (conditions) each map it in one place.

use crate::model::NameError;

/// What went wrong, as a closed set the adapters map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    Exists,
    NotEmpty,
    NotADirectory,
    IsADirectory,
    InvalidName,
    NameTooLong,
    InvalidArgument,
    ReadOnly,
    PermissionDenied,
    /// The change would take the workspace above its quota.
    QuotaExceeded,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The Linux errno for this kind.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Exists => libc::EEXIST,
            ErrorKind::NotEmpty => libc::ENOTEMPTY,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::InvalidName | ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::NameTooLong => libc::ENAMETOOLONG,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::PermissionDenied => libc::EPERM,
            ErrorKind::QuotaExceeded => libc::EDQUOT,
            ErrorKind::Conflict => libc::EAGAIN,
            ErrorKind::Unavailable | ErrorKind::Internal => libc::EIO,
        }
    }

    /// A stable snake_case label for metrics and condition reasons.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Exists => "exists",
            ErrorKind::NotEmpty => "not_empty",
            ErrorKind::NotADirectory => "not_a_directory",
            ErrorKind::IsADirectory => "is_a_directory",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::NameTooLong => "name_too_long",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Errors of the metadata store and the operations built on it.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A commit names blocks whose records are gone or claimed by a GC pass (a write session
    /// held them past the pass's grace period), or that were never registered. The writer
    /// still has their bytes: it uploads them again and retries.
    #[error("commit references {} blocks that were never registered, or that a GC pass reclaimed or is deleting", .0.len())]
    BlocksGone(Vec<[u8; 32]>),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A SERIALIZABLE transaction lost to a concurrent one (SQLSTATE 40001 or 40P01): the
    /// transaction loop retries it, and reports it only once its attempts are used up.
    #[error("conflict: serialization failure; retries exhausted")]
    SerializationFailure(#[source] tokio_postgres::Error),
    #[error("metadata store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A database error no other variant covers, with its SQLSTATE kept.
    #[error("database error (SQLSTATE {}): {message}", code.code())]
    Database {
        code: tokio_postgres::error::SqlState,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A change-feed reader asked for events after `cursor`, but events up to `purged_through`
    /// may have been purged by retention: reading on would skip them silently. Start again
    /// from a position at or above `purged_through` (after a full resynchronisation).
    #[error("change-feed events up to {purged_through} were purged; cursor {cursor} is below that horizon")]
    FeedPurged { cursor: i64, purged_through: i64 },
}

impl MetaError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetaError::NotFound(_) | MetaError::FeedPurged { .. } => ErrorKind::NotFound,
            MetaError::Exists(_) => ErrorKind::Exists,
            MetaError::NotEmpty(_) => ErrorKind::NotEmpty,
            MetaError::NotADirectory(_) => ErrorKind::NotADirectory,
            MetaError::IsADirectory(_) => ErrorKind::IsADirectory,
            MetaError::InvalidName(NameError::TooLong(_) | NameError::PathTooLong(_)) => {
                ErrorKind::NameTooLong
            }
            MetaError::InvalidName(_) => ErrorKind::InvalidName,
            MetaError::InvalidArgument(_) | MetaError::BlocksGone(_) => ErrorKind::InvalidArgument,
            MetaError::ReadOnly(_) => ErrorKind::ReadOnly,
            MetaError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            MetaError::QuotaExceeded(_) => ErrorKind::QuotaExceeded,
            MetaError::Conflict(_) | MetaError::SerializationFailure(_) => ErrorKind::Conflict,
            MetaError::Unavailable { .. } => ErrorKind::Unavailable,
            MetaError::Database { .. } | MetaError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Conflict | ErrorKind::Unavailable)
    }

    /// The SQLSTATE of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            MetaError::Database { code, .. } => Some(code),
            MetaError::SerializationFailure(e) => e.code(),
            MetaError::Unavailable { source: Some(s), .. } => s
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code),
            _ => None,
        }
    }

    pub(crate) fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> MetaError {
        MetaError::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}
