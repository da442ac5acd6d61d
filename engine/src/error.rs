//! The engine's public error type.
//!
//! Module-level errors ([`crate::data::DataError`], [`crate::layout::FormatError`])
//! say *what* is wrong with some bytes; [`Error`] adds *where*: the file.

use std::path::PathBuf;

use crate::data::DataError;
use crate::layout::FormatError;

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the engine returns. Each variant names the file involved, so
/// a message printed to a user says which file to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A vector or ground-truth file whose contents are not what they claim.
    #[error("{}: {source}", path.display())]
    Data {
        path: PathBuf,
        #[source]
        source: DataError,
    },
    /// An index file that is not a valid shardann index.
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// A query or data set whose dimension differs from the index's.
    #[error(
        "dimension mismatch: {what} has dimension {got}, but the index has dimension {expected}"
    )]
    DimensionMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A query or data set whose element type differs from the index's.
    #[error("element type mismatch: {what} holds {got} values, but the index holds {expected}")]
    ElementMismatch {
        what: String,
        expected: &'static str,
        got: &'static str,
    },
    /// A parameter outside the range the engine supports.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A segment or shard directory whose manifest, pointer or files do not
    /// agree (see `format-spec/segment-v1.md`).
    #[error("{}: {reason}", path.display())]
    Segment { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, source: DataError) -> Self {
        Error::Data {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, source: FormatError) -> Self {
        Error::Format {
            path: path.into(),
            source,
        }
    }
}
