//! The auth crate's error type and its mapping onto the shared error codes.
//!
//! Messages are written for the end user and never contain a secret. Errors
//! that must not reveal whether an account exists (wrong password, unknown
//! email) share one variant and one message: [`AuthError::InvalidCredentials`].

use std::time::Duration;

use hearth_protocol::{ErrorBody, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request body or a field in it is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The password does not satisfy the configured policy.
    #[error("{0}")]
    WeakPassword(String),
    /// Wrong email or password. One message for both, on purpose.
    #[error("the email or password is incorrect")]
    InvalidCredentials,
    /// Missing, malformed, expired or revoked access token.
    #[error("{0}")]
    InvalidToken(String),
    /// The refresh token is unknown, expired, revoked or was already used.
    #[error("the refresh token is invalid or expired; sign in again")]
    InvalidRefreshToken,
    /// An email token (verification, reset, email change) is invalid, used or expired.
    #[error("the link is invalid, already used or expired; request a new one")]
    InvalidEmailToken,
    /// The account is disabled by an administrator.
    #[error("this account is disabled")]
    UserDisabled,
    /// An account with this email already exists.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The user does not exist.
    #[error("user {0:?} not found")]
    UserNotFound(String),
    /// Authenticated but not allowed (e.g. a non-admin on the admin API).
    #[error("{0}")]
    PermissionDenied(String),
    /// The operation does not apply to this account's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A rate limit was hit; retry after the given delay.
    #[error("too many requests; retry in {} s", retry_after_secs(.retry_after))]
    RateLimited { retry_after: Duration },
    /// A concurrent update won; the caller may retry.
    #[error("a concurrent update changed this account; retry")]
    Conflict,
    /// The store or the hashing pool failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(d: &Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::InvalidArgument(_) | AuthError::WeakPassword(_) => {
                ErrorCode::InvalidArgument
            }
            AuthError::InvalidCredentials
            | AuthError::InvalidToken(_)
            | AuthError::InvalidRefreshToken
            | AuthError::UserDisabled => ErrorCode::Unauthenticated,
            AuthError::InvalidEmailToken | AuthError::FailedPrecondition(_) => {
                ErrorCode::FailedPrecondition
            }
            AuthError::EmailTaken => ErrorCode::AlreadyExists,
            AuthError::UserNotFound(_) => ErrorCode::NotFound,
            AuthError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            AuthError::RateLimited { .. } => ErrorCode::ResourceExhausted,
            AuthError::Conflict => ErrorCode::Aborted,
            AuthError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The wire form. Internal details are logged by the caller, not sent.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            AuthError::Internal(_) => ErrorBody::new(ErrorCode::Internal, "internal error"),
            other => ErrorBody::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(&Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(&Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(&Duration::from_secs(3)), 3);
    }

    #[test]
    fn internal_errors_do_not_leak_details_on_the_wire() {
        let body = AuthError::Internal("sled: /secret/path".into()).to_body();
        assert_eq!(body.message, "internal error");
        assert_eq!(body.code, ErrorCode::Internal);
    }
}
