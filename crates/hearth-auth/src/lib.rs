//! # hearth-auth
//!
//! Users, passwords, sessions and tokens for Hearth.
//!
//! * [`AuthService`] does the work: sign-up and sign-in (argon2id on a
//!   bounded blocking pool), anonymous users and linking, EdDSA access JWTs
//!   with rotating keys and a JWKS, rotating refresh tokens with reuse
//!   detection, email flows (SMTP or a dev outbox), rate limits, and the
//!   admin operations. All state lives in the store's system collections
//!   (see [`records`]), written only through `Store::commit`.
//! * [`router`] is its HTTP face (see [`http`] for how the caller is found);
//!   [`openapi()`] describes it, for the server to merge into the OpenAPI
//!   document it serves.
//! * The server and the gateway verify tokens with
//!   [`AuthService::verify_access_token`] (sync, no I/O) and learn about
//!   revoked sessions from [`AuthService::subscribe_revocations`].
//!
//! Token handling for SDK authors is specified in `sdk-spec/AUTH.md`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod email;
pub mod error;
pub mod http;
pub mod jwt;
pub mod mail;
pub mod openapi;
pub mod password;
pub mod ratelimit;
pub mod records;
pub mod service;
pub mod tokens;

pub use config::{AuthConfig, PasswordConfig, Rate, RateLimitConfig, Secret, SmtpConfig, SmtpTls};
pub use error::AuthError;
pub use http::{openapi, router, AdminKeyChecker};
pub use jwt::AccessClaims;
pub use records::{Provider, UserView};
pub use service::{
    AuthService, ClientInfo, NewUser, Revocation, RevocationReason, TokenResponse, UserPage,
    UserPatch, VerifiedToken,
};
