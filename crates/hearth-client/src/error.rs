//! The SDK's error type. Every variant maps to one canonical
//! [`ErrorCode`], so application code can branch on codes the same way for
//! REST, the socket and local failures.

use hearth_protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request (the code and message come from the server).
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The configuration or an argument is unusable (bad URL, bad path, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server could not be reached or the connection broke during a call
    /// that cannot be retried transparently.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The server rejected the credential; the client stops reconnecting until
    /// [`crate::Client::set_token`] gives it a new one.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A call did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was shut down (or dropped) before the call completed.
    #[error("the client is closed")]
    Closed,
    /// The persistence directory could not be read or written
    /// ([`crate::ClientConfig::persistence`]).
    #[error("local storage failed: {0}")]
    Storage(String),
    /// Another client instance holds the persistence directory.
    #[error("failed precondition: {0}")]
    StoreLocked(String),
    /// A queued write was first sent more than 23 hours ago and not
    /// answered: the server may have forgotten its mutation id, so it is
    /// dropped instead of being sent again (PROTOCOL.md §13).
    #[error("deadline exceeded: {0}")]
    WriteExpired(String),
}

impl ClientError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Server { code, .. } => *code,
            ClientError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ClientError::Connection(_) => ErrorCode::Unavailable,
            ClientError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ClientError::Timeout(_) => ErrorCode::DeadlineExceeded,
            ClientError::Protocol(_) => ErrorCode::Internal,
            ClientError::Closed => ErrorCode::Unavailable,
            ClientError::Storage(_) => ErrorCode::Internal,
            ClientError::StoreLocked(_) => ErrorCode::FailedPrecondition,
            ClientError::WriteExpired(_) => ErrorCode::DeadlineExceeded,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Server {
            code,
            message: message.into(),
        }
    }
}
