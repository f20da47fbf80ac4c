//! The HTTP face of the auth service: `/v1/auth/*`, `/v1/admin/users/*`,
//! `/v1/admin/outbox`, `/v1/admin/keys/rotate` and `/.well-known/jwks.json`.
//!
//! Handlers only translate: parse the body, find the caller, call
//! [`AuthService`], map errors to the shared envelope
//! `{"error": {"code", "message"}}` with the status of the code (and
//! `Retry-After` on 429).
//!
//! ## Who is calling
//! [`router`] takes an `is_admin_key` check. For each request:
//! 1. a [`Principal`] already in the request extensions (put there by the
//!    server's middleware) is used as is for the admin API;
//! 2. otherwise `Authorization: Bearer <t>`: if `is_admin_key(t)` the caller
//!    is [`Principal::Admin`], else `t` must be a valid access token.
//!
//! The admin API accepts the admin principal or a user whose token has the
//! custom claim `admin: true`. Endpoints that act on "my" account (`/me`,
//! `/logout`, `/link`, `/verify-email/send`, `/email-change/send`) need an
//! access token (the admin key has no account).
//!
//! ## Client IP
//! Rate limits per IP read `axum::extract::ConnectInfo<SocketAddr>`, so serve
//! with `into_make_service_with_connect_info::<SocketAddr>()`; behind a
//! trusted proxy set `trust_forwarded_for`. Without either, every request
//! shares the IP key `"unknown"`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_protocol::ErrorEnvelope;
use hearth_rules::Principal;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{retry_after_secs, AuthError};
use crate::service::{AuthService, ClientInfo, NewUser, RedactedString, UserPatch, VerifiedToken};

/// Decides whether a bearer token is the server's admin key (compare in
/// constant time, e.g. with [`crate::tokens::ct_eq`]).
pub type AdminKeyChecker = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
struct AppState {
    auth: AuthService,
    is_admin_key: AdminKeyChecker,
}

/// The auth router with its state applied. Paths are absolute (`/v1/...`,
/// `/.well-known/...`): the server should `merge` it, not `nest` it.
pub fn router(auth: AuthService, is_admin_key: AdminKeyChecker) -> Router {
    let state = AppState { auth, is_admin_key };
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/anonymous", post(anonymous))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/link", post(link))
        .route("/v1/auth/me", get(me))
        .route("/v1/auth/verify-email/send", post(verify_email_send))
        .route("/v1/auth/verify-email/confirm", post(verify_email_confirm))
        .route("/v1/auth/password-reset/send", post(password_reset_send))
        .route(
            "/v1/auth/password-reset/confirm",
            post(password_reset_confirm),
        )
        .route("/v1/auth/email-change/send", post(email_change_send))
        .route("/v1/auth/email-change/confirm", post(email_change_confirm))
        .route(
            "/v1/admin/users",
            get(admin_list_users).post(admin_create_user),
        )
        .route(
            "/v1/admin/users/{uid}",
            get(admin_get_user)
                .patch(admin_update_user)
                .delete(admin_delete_user),
        )
        .route("/v1/admin/users/{uid}/revoke", post(admin_revoke_user))
        .route("/v1/admin/outbox", get(admin_outbox))
        .route("/v1/admin/keys/rotate", post(admin_rotate_keys))
        .with_state(state)
}

/// An [`AuthError`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub AuthError);

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let AuthError::Internal(detail) = &self.0 {
            tracing::error!(error = %detail, "auth request failed");
        }
        let body = self.0.to_body();
        let status = StatusCode::from_u16(body.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorEnvelope { error: body })).into_response();
        if let AuthError::RateLimited { retry_after } = &self.0 {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        if matches!(self.0.code(), hearth_protocol::ErrorCode::Unauthenticated) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body; an empty body counts as `{}`.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, AuthError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::InvalidArgument(format!("invalid request body: {e}")))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn client_info(
    state: &AppState,
    headers: &HeaderMap,
    connect: Option<&ConnectInfo<SocketAddr>>,
) -> ClientInfo {
    if state.auth.config().trust_forwarded_for {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            return ClientInfo::new(ip);
        }
    }
    match connect {
        Some(ConnectInfo(addr)) => ClientInfo::new(addr.ip().to_string()),
        None => ClientInfo::new("unknown"),
    }
}

/// Extracts everything a handler may need about the caller.
struct Caller {
    headers: HeaderMap,
    principal_ext: Option<Principal>,
    connect: Option<ConnectInfo<SocketAddr>>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            headers: parts.headers.clone(),
            principal_ext: parts.extensions.get::<Principal>().cloned(),
            connect: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
        })
    }
}

impl Caller {
    fn client(&self, state: &AppState) -> ClientInfo {
        client_info(state, &self.headers, self.connect.as_ref())
    }

    /// The caller's verified access token (account endpoints).
    fn user(&self, state: &AppState) -> Result<VerifiedToken, AuthError> {
        let token = bearer(&self.headers).ok_or_else(|| {
            AuthError::InvalidToken(
                "sign in first: send Authorization: Bearer <access token>".into(),
            )
        })?;
        state.auth.verify(token)
    }

    /// Requires the admin principal or a user with `admin: true`.
    fn admin(&self, state: &AppState) -> Result<(), AuthError> {
        let principal = match &self.principal_ext {
            Some(p) => p.clone(),
            None => match bearer(&self.headers) {
                None => Principal::Unauthenticated,
                Some(t) if (state.is_admin_key)(t) => Principal::Admin,
                Some(t) => state.auth.verify_access_token(t)?,
            },
        };
        match principal {
            Principal::Admin => Ok(()),
            Principal::User { claims, .. }
                if claims.get("admin") == Some(&hearth_protocol::Value::Bool(true)) =>
            {
                Ok(())
            }
            Principal::User { .. } => Err(AuthError::PermissionDenied(
                "the admin API needs the admin key or a user with the admin claim".into(),
            )),
            Principal::Unauthenticated => Err(AuthError::InvalidToken(
                "the admin API needs Authorization: Bearer <admin key or admin user's token>"
                    .into(),
            )),
        }
    }
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The public keys that verify access tokens (cacheable for 5 minutes).", body = crate::openapi::JwksSchema)))]
async fn jwks(State(s): State<AppState>) -> Response {
    let mut response = Json(s.auth.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: RedactedString,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth",
    request_body = Credentials,
    responses((status = 200, description = "Signed up and signed in.", body = crate::service::TokenResponse),
              (status = 400, description = "Invalid email, or the password breaks the policy.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 409, description = "An account with this email exists.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn signup(State(s): State<AppState>, caller: Caller, raw: Bytes) -> ApiResult<Response> {
    let c: Credentials = body(&raw)?;
    let tokens = s
        .auth
        .sign_up(&c.email, &c.password.0, &caller.client(&s))
        .await?;
    Ok((StatusCode::OK, Json(tokens)).into_response())
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth",
    request_body = Credentials,
    responses((status = 200, description = "Signed in.", body = crate::service::TokenResponse),
              (status = 401, description = "The email or password is incorrect (the same answer for an unknown email), or the account is disabled.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn login(State(s): State<AppState>, caller: Caller, raw: Bytes) -> ApiResult<Response> {
    let c: Credentials = body(&raw)?;
    let tokens = s
        .auth
        .sign_in(&c.email, &c.password.0, &caller.client(&s))
        .await?;
    Ok(Json(tokens).into_response())
}

#[utoipa::path(post, path = "/v1/auth/anonymous", tag = "auth",
    responses((status = 200, description = "A new anonymous user, signed in.", body = crate::service::TokenResponse),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn anonymous(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let tokens = s.auth.sign_in_anonymously(&caller.client(&s)).await?;
    Ok(Json(tokens).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: RedactedString,
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth",
    request_body = RefreshBody,
    responses((status = 200, description = "New tokens; the presented refresh token is used up (reusing it revokes the session).", body = crate::service::TokenResponse),
              (status = 401, description = "The refresh token is invalid, expired, used or revoked; sign in again.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn refresh(State(s): State<AppState>, caller: Caller, raw: Bytes) -> ApiResult<Response> {
    let b: RefreshBody = body(&raw)?;
    let tokens = s
        .auth
        .refresh(&b.refresh_token.0, &caller.client(&s))
        .await?;
    Ok(Json(tokens).into_response())
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    #[serde(default)]
    everywhere: bool,
    refresh_token: Option<RedactedString>,
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    request_body(content = Option<LogoutBody>, description = "Optional. `everywhere: true` ends all of the user's sessions; without an access token, `refresh_token` names the session to end."),
    responses((status = 204, description = "Signed out; the session's tokens stop working and its sockets close (4003)."),
              (status = 401, description = "No valid access token (and no refresh token).", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = []), ()))]
async fn logout(State(s): State<AppState>, caller: Caller, raw: Bytes) -> ApiResult<Response> {
    let b: LogoutBody = body(&raw)?;
    match (caller.user(&s), &b.refresh_token) {
        (Ok(user), _) => s.auth.sign_out(&user, b.everywhere).await?,
        (Err(_), Some(token)) if !b.everywhere => {
            s.auth.sign_out_with_refresh_token(&token.0).await?
        }
        (Err(e), _) => return Err(e.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/auth/link", tag = "auth",
    request_body = Credentials,
    responses((status = 200, description = "The anonymous user now signs in with email and password; same uid.", body = crate::service::TokenResponse),
              (status = 401, description = "No valid access token.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 409, description = "An account with this email exists.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 412, description = "The signed-in account is not anonymous.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn link(State(s): State<AppState>, caller: Caller, raw: Bytes) -> ApiResult<Response> {
    let user = caller.user(&s)?;
    let c: Credentials = body(&raw)?;
    let tokens = s
        .auth
        .link_email_password(&user, &c.email, &c.password.0)
        .await?;
    Ok(Json(tokens).into_response())
}

#[utoipa::path(get, path = "/v1/auth/me", tag = "auth",
    responses((status = 200, description = "The signed-in user.", body = crate::records::UserView),
              (status = 401, description = "No valid access token.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn me(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let user = caller.user(&s)?;
    Ok(Json(s.auth.me(&user)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: RedactedString,
}

#[utoipa::path(post, path = "/v1/auth/verify-email/send", tag = "auth",
    responses((status = 202, description = "A verification mail is on its way (SMTP or the development outbox)."),
              (status = 401, description = "No valid access token.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn verify_email_send(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let user = caller.user(&s)?;
    s.auth.send_email_verification(&user).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[utoipa::path(post, path = "/v1/auth/verify-email/confirm", tag = "auth",
    request_body = TokenBody,
    responses((status = 200, description = "The email is verified (new access tokens carry email_verified: true).", body = crate::records::UserView),
              (status = 412, description = "The link is invalid, already used or expired.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn verify_email_confirm(State(s): State<AppState>, raw: Bytes) -> ApiResult<Response> {
    let b: TokenBody = body(&raw)?;
    Ok(Json(s.auth.confirm_email_verification(&b.token.0).await?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: String,
}

#[utoipa::path(post, path = "/v1/auth/password-reset/send", tag = "auth",
    request_body = EmailBody,
    responses((status = 202, description = "Accepted, whether or not the email belongs to an account (no enumeration)."),
              (status = 429, description = "Rate limited; see Retry-After.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn password_reset_send(
    State(s): State<AppState>,
    caller: Caller,
    raw: Bytes,
) -> ApiResult<Response> {
    let b: EmailBody = body(&raw)?;
    s.auth
        .send_password_reset(&b.email, &caller.client(&s))
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetConfirmBody {
    token: RedactedString,
    password: RedactedString,
}

#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", tag = "auth",
    request_body = ResetConfirmBody,
    responses((status = 204, description = "The password is changed and every session of the user is revoked."),
              (status = 400, description = "The new password breaks the policy.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 412, description = "The link is invalid, already used or expired.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn password_reset_confirm(State(s): State<AppState>, raw: Bytes) -> ApiResult<Response> {
    let b: ResetConfirmBody = body(&raw)?;
    s.auth
        .confirm_password_reset(&b.token.0, &b.password.0)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EmailChangeBody {
    new_email: String,
}

#[utoipa::path(post, path = "/v1/auth/email-change/send", tag = "auth",
    request_body = EmailChangeBody,
    responses((status = 202, description = "A confirmation mail is on its way to the new address."),
              (status = 401, description = "No valid access token.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 409, description = "An account with this email exists.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn email_change_send(
    State(s): State<AppState>,
    caller: Caller,
    raw: Bytes,
) -> ApiResult<Response> {
    let user = caller.user(&s)?;
    let b: EmailChangeBody = body(&raw)?;
    s.auth.send_email_change(&user, &b.new_email).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[utoipa::path(post, path = "/v1/auth/email-change/confirm", tag = "auth",
    request_body = TokenBody,
    responses((status = 200, description = "The email is changed (and verified).", body = crate::records::UserView),
              (status = 412, description = "The link is invalid, already used or expired.", body = crate::openapi::ErrorEnvelopeSchema)))]
async fn email_change_confirm(State(s): State<AppState>, raw: Bytes) -> ApiResult<Response> {
    let b: TokenBody = body(&raw)?;
    Ok(Json(s.auth.confirm_email_change(&b.token.0).await?).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    page_size: Option<usize>,
    page_token: Option<String>,
    q: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/users", tag = "users",
    params(("page_size" = Option<usize>, Query, description = "Users per page, 1..=1000 (default 100)."),
           ("page_token" = Option<String>, Query, description = "The previous page's next_page_token."),
           ("q" = Option<String>, Query, description = "Search: users whose email starts with this (case-insensitive), ordered by email; without it, all users by uid.")),
    responses((status = 200, description = "A page of users.", body = crate::service::UserPage),
              (status = 401, description = "No credentials.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 403, description = "Not the admin key nor a user with the admin claim.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_list_users(
    State(s): State<AppState>,
    caller: Caller,
    p: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    let Query(p) = p.map_err(|e| AuthError::InvalidArgument(e.body_text()))?;
    let page = s.auth.list_users(
        p.page_size.unwrap_or(100),
        p.page_token.as_deref().filter(|t| !t.is_empty()),
        p.q.as_deref(),
    )?;
    Ok(Json(page).into_response())
}

#[utoipa::path(post, path = "/v1/admin/users", tag = "users",
    request_body = crate::service::NewUser,
    responses((status = 201, description = "Created.", body = crate::records::UserView),
              (status = 400, description = "Invalid email or password.", body = crate::openapi::ErrorEnvelopeSchema),
              (status = 409, description = "An account with this email exists.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_create_user(
    State(s): State<AppState>,
    caller: Caller,
    raw: Bytes,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    let new: NewUser = body(&raw)?;
    Ok((StatusCode::CREATED, Json(s.auth.create_user(new).await?)).into_response())
}

#[utoipa::path(get, path = "/v1/admin/users/{uid}", tag = "users",
    params(("uid" = String, Path, description = "The user id.")),
    responses((status = 200, description = "The user.", body = crate::records::UserView),
              (status = 404, description = "No such user.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_get_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    Ok(Json(s.auth.get_user(&uid)?).into_response())
}

#[utoipa::path(patch, path = "/v1/admin/users/{uid}", tag = "users",
    params(("uid" = String, Path, description = "The user id.")),
    request_body = crate::service::UserPatch,
    responses((status = 200, description = "The updated user. Disabling revokes every session and closes the user's sockets.", body = crate::records::UserView),
              (status = 404, description = "No such user.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_update_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    raw: Bytes,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    let patch: UserPatch = body(&raw)?;
    Ok(Json(s.auth.update_user(&uid, patch).await?).into_response())
}

#[utoipa::path(delete, path = "/v1/admin/users/{uid}", tag = "users",
    params(("uid" = String, Path, description = "The user id.")),
    responses((status = 204, description = "Deleted with all sessions (the user's documents are left to the application)."),
              (status = 404, description = "No such user.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_delete_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    s.auth.delete_user(&uid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/admin/users/{uid}/revoke", tag = "users",
    params(("uid" = String, Path, description = "The user id.")),
    responses((status = 204, description = "Every session of the user is revoked; access tokens stop working at once."),
              (status = 404, description = "No such user.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
async fn admin_revoke_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    s.auth.get_user(&uid)?;
    s.auth
        .revoke_user_sessions(&uid, crate::service::RevocationReason::AdminRevoke)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct OutboxParams {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/admin/outbox", tag = "users",
    params(("limit" = Option<usize>, Query, description = "Most recent mails to list (default 100).")),
    responses((status = 200, description = "Mails of the development outbox (used when no SMTP server is configured).", body = crate::openapi::OutboxSchema)),
    security(("bearer" = [])))]
async fn admin_outbox(
    State(s): State<AppState>,
    caller: Caller,
    p: Result<Query<OutboxParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.admin(&s)?;
    let Query(p) = p.map_err(|e| AuthError::InvalidArgument(e.body_text()))?;
    let mails = s.auth.outbox(p.limit.unwrap_or(100))?;
    Ok(Json(serde_json::json!({ "mails": mails })).into_response())
}

#[utoipa::path(post, path = "/v1/admin/keys/rotate", tag = "users",
    responses((status = 200, description = "A new signing key; older keys keep verifying until their tokens expire.", body = crate::openapi::RotateKeysSchema)),
    security(("bearer" = [])))]
async fn admin_rotate_keys(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.admin(&s)?;
    let kid = s.auth.rotate_keys().await?;
    Ok(Json(serde_json::json!({ "kid": kid })).into_response())
}

/// The OpenAPI description of these routes (see [`crate::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        jwks, signup, login, anonymous, refresh, logout, link, me,
        verify_email_send, verify_email_confirm, password_reset_send, password_reset_confirm,
        email_change_send, email_change_confirm,
        admin_list_users, admin_create_user, admin_get_user, admin_update_user, admin_delete_user,
        admin_revoke_user, admin_outbox, admin_rotate_keys,
    ),
    tags(
        (name = "auth", description = "Sign-up, sign-in, tokens and the signed-in user's account. Token handling for SDKs: sdk-spec/AUTH.md."),
        (name = "users", description = "User administration, the development outbox and key rotation: the admin key, or a user whose token has the custom claim `admin: true`."),
    )
)]
struct AuthApiDoc;

/// The auth routes' OpenAPI document, for the server to merge into its own.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <AuthApiDoc as utoipa::OpenApi>::openapi()
}
