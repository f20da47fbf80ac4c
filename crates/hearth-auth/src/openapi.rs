//! The OpenAPI description of the auth routes (`/v1/auth/*`,
//! `/v1/admin/users/*`, `/v1/admin/outbox`, `/v1/admin/keys/rotate`,
//! `/.well-known/jwks.json`), generated from the handlers' `#[utoipa::path]`
//! annotations in [`crate::http`].
//!
//! This crate does not serve it: the server merges it into its own document
//! (`hearth_server::openapi`), which is served at `/v1/openapi.json` and
//! committed as `sdk-spec/openapi.json`. Request and response bodies use the
//! real types where they are ours ([`crate::TokenResponse`],
//! [`crate::UserView`], ...); the types below exist only to describe JSON
//! that is built ad hoc (the JWKS, small wrapper objects) and the shared
//! error envelope (named like the server's, which takes precedence when the
//! documents are merged).
#![allow(dead_code)]

use utoipa::ToSchema;

/// One public key of the JWKS (RFC 7517/8037): an Ed25519 key for EdDSA.
#[derive(ToSchema)]
#[schema(as = Jwk)]
pub struct JwkSchema {
    #[schema(example = "OKP")]
    kty: String,
    #[schema(example = "Ed25519")]
    crv: String,
    /// The public key, base64url without padding.
    x: String,
    /// The key id; access tokens name it in their header.
    kid: String,
    #[schema(example = "EdDSA")]
    alg: String,
    #[schema(example = "sig")]
    r#use: String,
}

/// The keys that verify access tokens: the current signing key and the
/// retired ones whose tokens may still be valid.
#[derive(ToSchema)]
#[schema(as = Jwks)]
pub struct JwksSchema {
    keys: Vec<JwkSchema>,
}

/// `GET /v1/admin/outbox`: the development outbox, newest first.
#[derive(ToSchema)]
#[schema(as = OutboxResponse)]
pub struct OutboxSchema {
    mails: Vec<crate::service::OutboxMail>,
}

/// `POST /v1/admin/keys/rotate`: the id of the new signing key.
#[derive(ToSchema)]
#[schema(as = RotateKeysResponse)]
pub struct RotateKeysSchema {
    kid: String,
}

#[derive(ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorBodySchema {
    /// One of: invalid-argument, not-found, already-exists,
    /// failed-precondition, aborted, permission-denied, unauthenticated,
    /// resource-exhausted, payload-too-large, deadline-exceeded,
    /// unimplemented, unavailable, internal.
    code: String,
    message: String,
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(ToSchema)]
#[schema(as = ErrorEnvelope)]
pub struct ErrorEnvelopeSchema {
    error: ErrorBodySchema,
}
