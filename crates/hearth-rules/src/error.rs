//! The crate's error types: [`RulesError`] for rules and test files that
//! cannot be loaded, [`AccessError`] for a denied access.

use hearth_protocol::ErrorCode;

/// A rules file or a rule-test file that could not be read or parsed.
///
/// `Syntax` displays as `file:line:column: message`, the shape editors and
/// CI logs link to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file name, or `rules` / `tests` for text without a file.
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    #[error("{file}: {message}")]
    Io { file: String, message: String },
}

impl RulesError {
    pub(crate) fn syntax(line: u32, column: u32, message: impl Into<String>) -> RulesError {
        RulesError::Syntax {
            file: "rules".into(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Replaces the file name shown in the message.
    pub fn with_file(self, name: impl Into<String>) -> RulesError {
        match self {
            RulesError::Syntax {
                line,
                column,
                message,
                ..
            } => RulesError::Syntax {
                file: name.into(),
                line,
                column,
                message,
            },
            RulesError::Io { message, .. } => RulesError::Io {
                file: name.into(),
                message,
            },
        }
    }

    /// The 1-based line of a syntax error.
    pub fn line(&self) -> Option<u32> {
        match self {
            RulesError::Syntax { line, .. } => Some(*line),
            RulesError::Io { .. } => None,
        }
    }

    /// The 1-based column (in characters) of a syntax error.
    pub fn column(&self) -> Option<u32> {
        match self {
            RulesError::Syntax { column, .. } => Some(*column),
            RulesError::Io { .. } => None,
        }
    }

    /// The message without the location prefix.
    pub fn message(&self) -> &str {
        match self {
            RulesError::Syntax { message, .. } | RulesError::Io { message, .. } => message,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            RulesError::Syntax { .. } => ErrorCode::InvalidArgument,
            RulesError::Io { .. } => ErrorCode::FailedPrecondition,
        }
    }
}

/// A denied access. The message names the operation and the path, never a
/// document's content or a token.
///
/// Rules denials are always [`AccessError::PermissionDenied`], for an
/// unauthenticated caller too, as in Firestore: whether a rule failed because
/// the caller is anonymous is the rule's business, and answering differently
/// would tell an attacker which rules depend on sign-in. `Unauthenticated` is
/// for callers (the server, the gateway) that reject a request before any rule
/// runs, for example on an invalid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
}

impl AccessError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AccessError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            AccessError::Unauthenticated(_) => ErrorCode::Unauthenticated,
        }
    }
}

/// Why [`crate::AccessControl::authorize_writes`] refused a commit's writes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteRefusal {
    /// The rules deny one of the writes.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The rules allow it, but the write cannot apply (a precondition,
    /// create over an existing document, update of a missing one, a bad
    /// transform). Only reported to callers the rules let write there.
    #[error(transparent)]
    Write(#[from] hearth_protocol::WriteError),
    /// Loading a document's current state failed (a storage error).
    #[error("cannot read the current state of {path}: {message}")]
    Load { path: String, message: String },
}

impl WriteRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            WriteRefusal::Access(e) => e.code(),
            WriteRefusal::Write(e) => e.code(),
            WriteRefusal::Load { .. } => ErrorCode::Internal,
        }
    }
}
