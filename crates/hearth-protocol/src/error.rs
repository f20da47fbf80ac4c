//! Canonical error codes shared by REST, the WebSocket protocol and the SDKs.
//!
//! Every crate maps its typed errors onto exactly one of these codes; the HTTP
//! status of each code is fixed here so that REST and the socket agree.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable, machine-readable error codes (wire spelling in kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request is malformed: bad path, bad value, bad query, bad frame.
    InvalidArgument,
    /// The document, user or resource does not exist.
    NotFound,
    /// A create found the document already there.
    AlreadyExists,
    /// A precondition failed (version mismatch, missing index, wrong state).
    FailedPrecondition,
    /// A transaction conflicted with a concurrent commit: retry it.
    Aborted,
    /// Authenticated, but the rules or the role do not allow this.
    PermissionDenied,
    /// No valid credentials.
    Unauthenticated,
    /// A quota, rate limit or size limit was hit.
    ResourceExhausted,
    /// The request or its payload is too large.
    PayloadTooLarge,
    /// The operation took longer than its deadline.
    DeadlineExceeded,
    /// The feature is not available on this server.
    Unimplemented,
    /// The server is shutting down or overloaded; retry later.
    Unavailable,
    /// A bug or an I/O failure on the server.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that REST uses for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::Aborted => 409,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unimplemented => 501,
            ErrorCode::Unavailable => 503,
            ErrorCode::DeadlineExceeded => 504,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::NotFound => "not-found",
            ErrorCode::AlreadyExists => "already-exists",
            ErrorCode::FailedPrecondition => "failed-precondition",
            ErrorCode::Aborted => "aborted",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::ResourceExhausted => "resource-exhausted",
            ErrorCode::PayloadTooLarge => "payload-too-large",
            ErrorCode::DeadlineExceeded => "deadline-exceeded",
            ErrorCode::Unimplemented => "unimplemented",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition,
        ErrorCode::Aborted,
        ErrorCode::PermissionDenied,
        ErrorCode::Unauthenticated,
        ErrorCode::ResourceExhausted,
        ErrorCode::PayloadTooLarge,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unimplemented,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Optional structured detail, e.g. the index to declare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// The REST error envelope: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_in_kebab_case_and_match_as_str() {
        for code in ErrorCode::ALL {
            let text = serde_json::to_string(&code).unwrap();
            assert_eq!(text, format!("\"{}\"", code.as_str()));
            assert!(code.http_status() >= 400);
        }
    }

    #[test]
    fn client_errors_are_4xx() {
        for code in ErrorCode::ALL {
            let server_side = matches!(
                code,
                ErrorCode::Internal
                    | ErrorCode::Unavailable
                    | ErrorCode::Unimplemented
                    | ErrorCode::DeadlineExceeded
            );
            assert_eq!(code.http_status() >= 500, server_side, "{code}");
        }
    }
}
