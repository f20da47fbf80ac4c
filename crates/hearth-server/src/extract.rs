//! Request extractors whose rejections come out in the error envelope.
//!
//! axum's own `Json` and `Query` answer bad input in plain text; these
//! wrappers read the same things and fail with an [`ApiError`] instead.
//! [`ApiJson`] accepts a body with `Content-Type: application/json` (or any
//! `+json` type) or with no content type at all (so that `curl -d` with
//! `-H content-type` forgotten still works); any other type is refused.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap};
use hearth_protocol::{ErrorCode, MAX_DOCUMENT_BYTES};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body the REST API accepts (2 MiB: a maximal 1 MiB
/// document plus JSON overhead). Larger bodies get `413 payload-too-large`.
pub const MAX_BODY_BYTES: usize = 2 * MAX_DOCUMENT_BYTES;

/// A JSON request body decoded into `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "unsupported Content-Type {text:?}; send application/json"
        )))
    }
}

/// Reads the whole body within the configured limit.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    check_content_type(req.headers())?;
    Bytes::from_request(req, state).await.map_err(|rejection| {
        let status = rejection.status();
        if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::invalid(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Decodes JSON, turning serde's error into an `invalid-argument` message
/// with its line and column.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("expected a JSON request body"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        decode_json(&bytes).map(ApiJson)
    }
}

/// Query-string parameters decoded into `T`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn content_type_json_or_absent_is_accepted() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/merge-patch+json"),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            check_content_type(&h).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn bad_json_is_invalid_argument_with_position() {
        let err = decode_json::<serde_json::Value>(b"{\"a\": ").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert!(err.0.message.contains("line 1"), "{}", err.0.message);
    }
}
