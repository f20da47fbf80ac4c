//! Every error the HTTP layer answers, and the one function that turns an
//! error into a response.
//!
//! Handlers return [`ApiError`]; anything from another crate converts into it
//! through its `code()`. [`error_response`] is the only place that chooses an
//! HTTP status (from [`ErrorCode::http_status`]) and writes the envelope
//! `{"error": {"code", "message"}}`. Framework-level failures that never reach
//! a handler (unknown routes, wrong methods, timeouts, panics, body limits)
//! are rewritten into the same envelope by [`envelope_fallback`] and the
//! panic handler, so a client never sees axum's plain-text defaults.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use hearth_protocol::{ErrorBody, ErrorCode, ErrorEnvelope, PathError, QueryError, WriteError};

/// An error answered to a REST client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {}", .0.code, .0.message)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(ErrorBody::new(code, message))
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthenticated, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::PermissionDenied, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
}

/// The one mapping from an error to an HTTP response.
pub fn error_response(body: ErrorBody) -> Response<Body> {
    let status =
        StatusCode::from_u16(body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(code = %body.code, message = %body.message, "request failed");
    }
    let json = serde_json::to_vec(&ErrorEnvelope { error: body }).unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"error encoding failed"}}"#.to_vec()
    });
    let mut response = Response::new(Body::from(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response<Body> {
        error_response(self.0)
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        ApiError::invalid(e.message)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        ApiError::invalid(e.message)
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<hearth_store::StoreError> for ApiError {
    fn from(e: hearth_store::StoreError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            s if s.is_server_error() => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        };
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a request body with Content-Type: application/json".to_string()
            }
            _ if code == ErrorCode::PayloadTooLarge => {
                format!("request body too large: {}", rejection.body_text())
            }
            _ => rejection.body_text(),
        };
        ApiError::new(code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

/// Rewrites an error response that was not produced by [`error_response`]
/// (axum's 404/405/413/415 defaults, the timeout layer's bare status) into
/// the envelope. Responses that already carry JSON pass through untouched.
pub async fn envelope_fallback(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response<Body> {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::InvalidArgument,
            "method not allowed on this route".to_string(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "request body too large".to_string(),
        ),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => (
            ErrorCode::DeadlineExceeded,
            "the request took longer than the server's request timeout".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            ErrorCode::InvalidArgument,
            "unsupported content type; send application/json".to_string(),
        ),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthenticated, "unauthenticated".to_string()),
        StatusCode::FORBIDDEN => (ErrorCode::PermissionDenied, "permission denied".to_string()),
        StatusCode::TOO_MANY_REQUESTS => (
            ErrorCode::ResourceExhausted,
            "too many requests".to_string(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "unavailable".to_string()),
        s if s.is_server_error() => (ErrorCode::Internal, "internal error".to_string()),
        _ => (
            ErrorCode::InvalidArgument,
            format!("bad request ({})", status.as_u16()),
        ),
    };
    let mut envelope = error_response(ErrorBody::new(code, message));
    // Keep statuses that say something more precise than the code's default
    // (405 with its Allow header, 415), so HTTP tooling still understands them.
    if matches!(
        status,
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE
    ) {
        *envelope.status_mut() = status;
        if let Some(allow) = response.headers().get(header::ALLOW) {
            envelope.headers_mut().insert(header::ALLOW, allow.clone());
        }
    }
    envelope
}

/// The panic handler for `CatchPanicLayer`: a 500 envelope, the panic logged.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "unknown panic".to_string()
    };
    tracing::error!(panic = %detail, "handler panicked");
    error_response(ErrorBody::new(
        ErrorCode::Internal,
        "internal error (the server caught a panic; see its log)",
    ))
}

/// Answer for routes that do not exist.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("no such route; see /v1/openapi.json")
}
