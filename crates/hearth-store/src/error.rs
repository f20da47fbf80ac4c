//! The store's errors. Each variant maps to exactly one canonical
//! [`ErrorCode`]; messages tell the caller what to do.

use hearth_protocol::{DocPath, ErrorCode, WriteError};

use crate::config::CompositeIndex;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("document {0} does not exist")]
    NotFound(DocPath),
    #[error("document {0} already exists")]
    AlreadyExists(DocPath),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    /// No index serves the query; `message` includes the TOML to declare `index`.
    #[error("{message}")]
    MissingIndex {
        index: CompositeIndex,
        message: String,
    },
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            StoreError::Aborted(_) => ErrorCode::Aborted,
            StoreError::MissingIndex { .. } => ErrorCode::FailedPrecondition,
            StoreError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn missing_index(index: CompositeIndex, why: &str) -> StoreError {
        let message = format!(
            "{why}; declare this index in the config file and restart (it is built in the background):\n{index}"
        );
        StoreError::MissingIndex { index, message }
    }
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::InvalidArgument(m) => StoreError::InvalidArgument(m),
            WriteError::NotFound(p) => StoreError::NotFound(p),
            WriteError::AlreadyExists(p) => StoreError::AlreadyExists(p),
            WriteError::FailedPrecondition(m) => StoreError::FailedPrecondition(m),
        }
    }
}

impl From<crate::engine::EngineError> for StoreError {
    fn from(e: crate::engine::EngineError) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl From<crate::codec::CorruptData> for StoreError {
    fn from(e: crate::codec::CorruptData) -> Self {
        StoreError::Internal(e.to_string())
    }
}

/// Why the changelog could not serve a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangelogError {
    /// The position was pruned by retention; re-read the data, then resume from a newer seq.
    #[error("changelog position is older than the oldest retained commit ({oldest}); re-read and resume from a newer position")]
    TooOld { oldest: u64 },
    #[error("changelog read failed: {0}")]
    Store(String),
}

impl ChangelogError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChangelogError::TooOld { .. } => ErrorCode::FailedPrecondition,
            ChangelogError::Store(_) => ErrorCode::Internal,
        }
    }
}
