//! Adapters that plug the services into each other: the auth service's token
//! check into the REST layer and the gateway, revocations into the gateway;
//! and the HTTP layers the binary adds around the app (CORS).

use std::sync::Arc;

use hearth_auth::AuthService;
use hearth_gateway::{Authenticated, Authenticator};
use hearth_protocol::{ErrorBody, ErrorCode, Timestamp};
use hearth_rules::Principal;
use hearth_server::{AdminKey, ApiError, TokenVerifier};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// REST: bearer tokens that are not the admin key are access JWTs.
pub struct RestTokens(pub AuthService);

impl TokenVerifier for RestTokens {
    fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.0
            .verify_access_token(token)
            .map_err(|e| ApiError::new(e.code(), e.to_string()))
    }
}

/// WebSocket: the admin key, an access JWT, or (only with `--dev`) nothing.
pub struct SocketAuth {
    pub admin_key: AdminKey,
    pub auth: AuthService,
    pub dev: bool,
}

impl Authenticator for SocketAuth {
    fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, ErrorBody> {
        match token {
            None if self.dev => Ok(Authenticated {
                principal: Principal::Admin,
                expires_at: None,
            }),
            None => Ok(Authenticated {
                principal: Principal::Unauthenticated,
                expires_at: None,
            }),
            Some(t) if self.admin_key.matches(t) => Ok(Authenticated {
                principal: Principal::Admin,
                expires_at: None,
            }),
            Some(t) => {
                let verified = self
                    .auth
                    .verify(t)
                    .map_err(|e| ErrorBody::new(ErrorCode::Unauthenticated, e.to_string()))?;
                Ok(Authenticated {
                    principal: verified.principal(),
                    expires_at: Some(Timestamp::from_millis(
                        verified.expires_at.saturating_mul(1000),
                    )),
                })
            }
        }
    }
}

/// Closes the sockets of users whose sessions were revoked or who were disabled.
pub fn forward_revocations(auth: &AuthService, gateway: hearth_gateway::Gateway) {
    let mut revocations = auth.subscribe_revocations();
    tokio::spawn(async move {
        loop {
            match revocations.recv().await {
                Ok(r) => {
                    // One signed-out session closes only its sockets; a disabled
                    // or deleted user (no session id) loses all of them.
                    let closed = match &r.session_id {
                        Some(sid) => gateway.revoke_session(&r.uid, sid),
                        None => gateway.revoke_user(&r.uid),
                    };
                    tracing::info!(closed, "closed sockets of a revoked user");
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "revocation stream lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// The admin-key check the auth router uses for `/v1/admin/users/*`.
pub fn admin_key_checker(key: AdminKey) -> hearth_auth::AdminKeyChecker {
    Arc::new(move |presented: &str| key.matches(presented))
}

/// The CORS layer for `[http.cors]`, or `None` when no origin is allowed
/// (then no CORS header is ever sent). It answers preflight `OPTIONS`
/// requests itself and applies to every route: REST, auth and the
/// WebSocket upgrade (browsers do not apply CORS to WebSockets; the header
/// is harmless there).
pub fn cors_layer(config: &crate::config::CorsConfig) -> Result<Option<CorsLayer>, String> {
    use axum::http::{header, HeaderValue, Method};
    let origin = match config.origins()? {
        _ if config.allowed_origins.is_empty() => return Ok(None),
        None => AllowOrigin::any(),
        Some(list) => {
            let values = list
                .iter()
                .map(|o| {
                    HeaderValue::from_str(o)
                        .map_err(|e| format!("[http.cors] allowed_origins: {o:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(values)
        }
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            // Bearer tokens travel in Authorization; no cookies, so no
            // allow-credentials (which would forbid "*").
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(config.max_age),
    ))
}
