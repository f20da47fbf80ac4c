//! [`AuthService`]: every auth operation, independent of HTTP.
//!
//! The router in [`crate::http`] only translates requests into these calls.
//! The server and the gateway use two things from here:
//! [`AuthService::verify_access_token`] (sync, no I/O: a signature check plus
//! two in-memory set lookups) and [`AuthService::subscribe_revocations`].
//!
//! ## Sessions and refresh tokens
//! Each sign-in creates a session (`sid`), the *family* of the refresh tokens
//! that descend from it. A refresh marks the presented token used and issues a
//! new one, in one commit guarded by a version precondition, so of two
//! concurrent uses of one token at most one succeeds. Presenting a token that
//! was already used (a stolen copy, or a replay) revokes the whole session:
//! its current refresh token stops working and its access tokens are refused
//! from that moment.
//!
//! ## Revocation
//! Revoked sessions and disabled users are kept in memory (loaded from the
//! store at start, updated on every change) so that verifying an access token
//! never touches the store. Each revocation is also broadcast; the gateway
//! closes the matching sockets.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use hearth_protocol::{Document, FieldPath, Map, Precondition, Query, Timestamp, Value, Write};
use hearth_rules::Principal;
use hearth_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::AuthConfig;
use crate::email::{normalize_email, EmailPurpose};
use crate::error::AuthError;
use crate::jwt::{AccessClaims, KeyRing, SigningKey, RESERVED_CLAIMS};
use crate::mail::{Mail, Mailer};
use crate::password::PasswordHasher;
use crate::ratelimit::{Action, RateLimiter};
use crate::records::{
    self, collection_path, doc_path, email_key, fields, get_bool, get_str, get_ts, opt_string,
    Provider, UserRecord, UserView, EMAIL_TOKENS, KEYS, OUTBOX_MAIL, REFRESH_TOKENS, SESSIONS,
    USERS, USERS_BY_EMAIL,
};
use crate::tokens::{ct_eq, hash_token, looks_like_token, new_token, random_id};

/// Maximum serialized size of a user's custom claims (as Firebase).
pub const MAX_CUSTOM_CLAIMS_BYTES: usize = 1000;

/// What a successful sign-in, sign-up or refresh returns (OAuth 2 field names).
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub uid: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("uid", &self.uid)
            .finish()
    }
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub uid: String,
    pub session_id: String,
    /// Unix seconds at which the token expires (the gateway asks for a
    /// refreshed token before then).
    pub expires_at: i64,
    pub claims: AccessClaims,
}

impl VerifiedToken {
    /// The principal rules see: `request.auth.uid` and every claim as
    /// `request.auth.token`.
    pub fn principal(&self) -> Principal {
        let claims: BTreeMap<String, Value> = serde_json::to_value(&self.claims)
            .ok()
            .and_then(|json| hearth_protocol::value::map_from_json(&json).ok())
            .unwrap_or_default();
        Principal::User {
            uid: self.uid.clone(),
            claims,
        }
    }

    /// True if the token carries the custom claim `admin: true`.
    pub fn is_admin(&self) -> bool {
        self.claims.custom.get("admin") == Some(&serde_json::Value::Bool(true))
    }
}

/// A revoked session, or (with `session_id: None`) every session of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub uid: String,
    pub session_id: Option<String>,
    pub reason: RevocationReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    SignOut,
    SignOutEverywhere,
    RefreshTokenReuse,
    PasswordReset,
    AdminRevoke,
    UserDisabled,
    UserDeleted,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::SignOut => "sign-out",
            RevocationReason::SignOutEverywhere => "sign-out-everywhere",
            RevocationReason::RefreshTokenReuse => "refresh-token-reuse",
            RevocationReason::PasswordReset => "password-reset",
            RevocationReason::AdminRevoke => "admin-revoke",
            RevocationReason::UserDisabled => "user-disabled",
            RevocationReason::UserDeleted => "user-deleted",
        }
    }
}

/// Who sent a request, for rate limiting.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: String,
}

impl ClientInfo {
    pub fn new(ip: impl Into<String>) -> ClientInfo {
        ClientInfo { ip: ip.into() }
    }
}

/// Fields an administrator may set when creating a user.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: Option<String>,
    pub password: Option<RedactedString>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub custom_claims: Option<serde_json::Value>,
}

/// Fields an administrator may change; absent fields are left alone.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub disabled: Option<bool>,
    pub email_verified: Option<bool>,
    /// Replaces all custom claims (`{}` clears them). Takes effect in tokens
    /// issued after the change (at the next refresh).
    #[schema(value_type = Option<Object>)]
    pub custom_claims: Option<serde_json::Value>,
    pub password: Option<RedactedString>,
}

/// A string from a request body that must never be logged (passwords).
#[derive(Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct RedactedString(pub String);

impl std::fmt::Debug for RedactedString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One page of users.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub users: Vec<UserView>,
    pub next_page_token: Option<String>,
}

/// A mail in the development outbox.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutboxMail {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub created_at: String,
}

/// The auth service. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("keys", &self.inner.keys)
            .field("mailer", &self.inner.mailer)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: AuthConfig,
    store: Store,
    hasher: PasswordHasher,
    keys: KeyRing,
    limiter: RateLimiter,
    mailer: Mailer,
    /// Revoked session id → Unix second after which no access token of it can
    /// be valid any more (then the entry is dropped).
    revoked_sessions: DashMap<String, i64>,
    disabled_uids: DashSet<String>,
    revocations: broadcast::Sender<Revocation>,
    rotation: tokio::sync::Mutex<()>,
}

fn now_secs() -> i64 {
    Timestamp::now().seconds()
}

fn ts_after(d: Duration) -> Timestamp {
    Timestamp(
        Timestamp::now()
            .nanos()
            .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
    )
}

fn store_err(e: StoreError) -> AuthError {
    match e {
        StoreError::Aborted(_) => AuthError::Conflict,
        StoreError::ResourceExhausted(m) | StoreError::Unavailable(m) => {
            AuthError::Internal(format!("store unavailable: {m}"))
        }
        other => AuthError::Internal(other.to_string()),
    }
}

/// True if a commit failed because a precondition (exists / version) did not hold.
fn is_conflict(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::AlreadyExists(_)
            | StoreError::NotFound(_)
            | StoreError::FailedPrecondition(_)
            | StoreError::Aborted(_)
    )
}

fn field(name: &str) -> FieldPath {
    FieldPath::single(name).unwrap_or_else(|_| unreachable!("constant field names are valid"))
}

fn update(path: hearth_protocol::DocPath, pairs: Vec<(&str, Value)>) -> Write {
    Write::update(
        path,
        pairs.into_iter().map(|(k, v)| (field(k), v)).collect(),
    )
}

fn query(json: serde_json::Value) -> Result<Query, AuthError> {
    serde_json::from_value(json)
        .map_err(|e| AuthError::Internal(format!("bad internal query: {e}")))
}

/// Validates custom claims set by an administrator.
fn validate_custom_claims(json: &serde_json::Value) -> Result<Map, AuthError> {
    let obj = json
        .as_object()
        .ok_or_else(|| AuthError::InvalidArgument("custom_claims must be a JSON object".into()))?;
    for key in obj.keys() {
        if RESERVED_CLAIMS.contains(&key.as_str()) {
            return Err(AuthError::InvalidArgument(format!(
                "custom claim {key:?} is reserved"
            )));
        }
        if key.is_empty() || hearth_protocol::path::is_reserved_id(key) || key.starts_with('$') {
            return Err(AuthError::InvalidArgument(format!(
                "custom claim name {key:?} is not allowed"
            )));
        }
    }
    let size = json.to_string().len();
    if size > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(AuthError::InvalidArgument(format!(
            "custom claims are {size} bytes; at most {MAX_CUSTOM_CLAIMS_BYTES} are allowed"
        )));
    }
    hearth_protocol::value::map_from_json(json)
        .map_err(|e| AuthError::InvalidArgument(format!("custom_claims: {e}")))
}

fn validate_uid(uid: &str) -> Result<(), AuthError> {
    if uid.is_empty()
        || uid.len() > 128
        || !uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AuthError::UserNotFound(uid.chars().take(128).collect()));
    }
    Ok(())
}

impl AuthService {
    /// Loads (or creates) the signing keys and the revocation sets from the
    /// store and starts the background tasks (key rotation if configured,
    /// pruning of rate-limit state, expired tokens and sessions). Needs a
    /// tokio runtime.
    pub async fn start(config: AuthConfig, store: Store) -> Result<AuthService, AuthError> {
        let password_config = config.password.clone();
        let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(&password_config))
            .await
            .map_err(|e| AuthError::Internal(format!("hasher init: {e}")))??;
        let mailer = Mailer::new(config.smtp.as_ref(), &config.mail_from)?;
        let keys = load_keys(&store, &config).await?;
        let (revocations, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            limiter: RateLimiter::new(&config.rate_limits),
            config,
            store,
            hasher,
            keys,
            mailer,
            revoked_sessions: DashMap::new(),
            disabled_uids: DashSet::new(),
            revocations,
            rotation: tokio::sync::Mutex::new(()),
        });
        let service = AuthService { inner };
        service.load_revocations()?;
        service.spawn_background_tasks();
        tracing::info!(
            kid = %service.inner.keys.signer_kid(),
            revoked_sessions = service.inner.revoked_sessions.len(),
            disabled_users = service.inner.disabled_uids.len(),
            outbox = service.inner.mailer.is_outbox(),
            "auth service started"
        );
        Ok(service)
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    // ----- verification (server and gateway) -----

    /// Verifies an access token and returns the caller as rules see it.
    /// Sync and store-free: signature (cached key by `kid`), `exp`, `iss`,
    /// `aud`, then the in-memory revoked-session and disabled-user sets.
    pub fn verify_access_token(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token).map(|v| v.principal())
    }

    /// Like [`Self::verify_access_token`], with the token's details.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let claims = self.inner.keys.verify(token)?;
        if self.inner.revoked_sessions.contains_key(&claims.sid) {
            return Err(AuthError::InvalidToken(
                "this session was signed out or revoked; sign in again".into(),
            ));
        }
        if self.inner.disabled_uids.contains(&claims.sub) {
            return Err(AuthError::UserDisabled);
        }
        Ok(VerifiedToken {
            uid: claims.sub.clone(),
            session_id: claims.sid.clone(),
            expires_at: claims.exp,
            claims,
        })
    }

    /// A receiver of every revocation from now on (sign-out, reuse
    /// detection, disable, delete, admin revoke). `session_id: None` means
    /// every session of `uid`.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Revocation> {
        self.inner.revocations.subscribe()
    }

    /// The JWKS document (public keys that currently verify).
    pub fn jwks(&self) -> serde_json::Value {
        self.inner.keys.jwks()
    }

    // ----- sign up / sign in -----

    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        self.inner.limiter.check_ip(Action::Signup, &client.ip)?;
        let email = normalize_email(email)?;
        self.inner.hasher.check_policy(password)?;
        let hash = self.inner.hasher.hash(password).await?;
        let now = Timestamp::now();
        let user = UserRecord {
            uid: random_id(14),
            email: Some(email.clone()),
            password_hash: Some(hash),
            provider: Provider::Password,
            email_verified: false,
            disabled: false,
            custom_claims: Map::new(),
            created_at: now,
            last_sign_in_at: Some(now),
            version: 0,
        };
        let mut writes = vec![
            Write::create(doc_path(USERS, &user.uid)?, user.to_fields()),
            email_index_create(&email, &user.uid)?,
        ];
        let (session_writes, response) = self.new_session(&user)?;
        writes.extend(session_writes);
        match self.inner.store.commit(writes).await {
            Ok(_) => {
                tracing::info!(uid = %user.uid, "user signed up");
                Ok(response)
            }
            Err(StoreError::AlreadyExists(p)) if p.collection_id() == USERS_BY_EMAIL => {
                Err(AuthError::EmailTaken)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Email + password sign-in. An unknown email and a wrong password give
    /// the same error after the same amount of hashing work.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        self.inner.limiter.check_ip(Action::Login, &client.ip)?;
        let email = normalize_email(email).map_err(|_| AuthError::InvalidCredentials)?;
        self.inner.limiter.check_account(Action::Login, &email)?;
        let user = match self.user_by_email(&email)? {
            Some(user) if user.password_hash.is_some() => user,
            _ => {
                self.inner.hasher.verify_dummy().await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        let phc = user.password_hash.clone().unwrap_or_default();
        if !self.inner.hasher.verify(password, &phc).await? {
            return Err(AuthError::InvalidCredentials);
        }
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        let path = doc_path(USERS, &user.uid)?;
        if self.inner.hasher.needs_rehash(&phc) {
            // Best effort: a concurrent change (version precondition) wins.
            let new_hash = self.inner.hasher.hash(password).await?;
            let w = update(
                path.clone(),
                vec![("password_hash", Value::String(new_hash))],
            )
            .with_precondition(Precondition::Version(user.version));
            match self.inner.store.commit(vec![w]).await {
                Ok(_) => {
                    tracing::info!(uid = %user.uid, "password rehashed with current parameters")
                }
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        let (mut writes, response) = self.new_session(&user)?;
        writes.push(update(
            path,
            vec![("last_sign_in_at", Value::Timestamp(Timestamp::now()))],
        ));
        self.inner.store.commit(writes).await.map_err(store_err)?;
        Ok(response)
    }

    pub async fn sign_in_anonymously(
        &self,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        self.inner.limiter.check_ip(Action::Anonymous, &client.ip)?;
        let now = Timestamp::now();
        let user = UserRecord {
            uid: random_id(14),
            email: None,
            password_hash: None,
            provider: Provider::Anonymous,
            email_verified: false,
            disabled: false,
            custom_claims: Map::new(),
            created_at: now,
            last_sign_in_at: Some(now),
            version: 0,
        };
        let mut writes = vec![Write::create(doc_path(USERS, &user.uid)?, user.to_fields())];
        let (session_writes, response) = self.new_session(&user)?;
        writes.extend(session_writes);
        self.inner.store.commit(writes).await.map_err(store_err)?;
        Ok(response)
    }

    /// Turns the caller's anonymous account into an email+password account:
    /// same uid, same data. Returns tokens of a new session carrying the new
    /// provider and email.
    pub async fn link_email_password(
        &self,
        caller: &VerifiedToken,
        email: &str,
        password: &str,
    ) -> Result<TokenResponse, AuthError> {
        let email = normalize_email(email)?;
        self.inner.hasher.check_policy(password)?;
        let user = self.require_user(&caller.uid)?;
        if user.provider != Provider::Anonymous || user.email.is_some() {
            return Err(AuthError::FailedPrecondition(
                "only an anonymous account can be linked to an email and password".into(),
            ));
        }
        let hash = self.inner.hasher.hash(password).await?;
        let mut linked = user.clone();
        linked.email = Some(email.clone());
        linked.password_hash = Some(hash.clone());
        linked.provider = Provider::Password;
        let mut writes = vec![
            email_index_create(&email, &user.uid)?,
            update(
                doc_path(USERS, &user.uid)?,
                vec![
                    ("email", Value::String(email.clone())),
                    ("password_hash", Value::String(hash)),
                    (
                        "provider",
                        Value::String(Provider::Password.as_str().into()),
                    ),
                ],
            )
            .with_precondition(Precondition::Version(user.version)),
        ];
        let (session_writes, response) = self.new_session(&linked)?;
        writes.extend(session_writes);
        match self.inner.store.commit(writes).await {
            Ok(_) => {
                tracing::info!(uid = %user.uid, "anonymous user linked to email and password");
                Ok(response)
            }
            Err(StoreError::AlreadyExists(p)) if p.collection_id() == USERS_BY_EMAIL => {
                Err(AuthError::EmailTaken)
            }
            Err(e) if is_conflict(&e) => Err(AuthError::Conflict),
            Err(e) => Err(store_err(e)),
        }
    }

    // ----- sessions -----

    /// The writes that create a session and its first refresh token, and the
    /// token response (valid once the writes are committed).
    fn new_session(&self, user: &UserRecord) -> Result<(Vec<Write>, TokenResponse), AuthError> {
        let sid = random_id(16);
        let refresh = new_token();
        let refresh_hash = hash_token(&refresh);
        let now = Timestamp::now();
        let session = fields([
            ("uid", Value::String(user.uid.clone())),
            ("provider", Value::String(user.provider.as_str().into())),
            ("created_at", Value::Timestamp(now)),
            ("refreshed_at", Value::Timestamp(now)),
            ("refresh_hash", Value::String(refresh_hash.clone())),
            ("revoked", Value::Bool(false)),
            ("revoked_at", Value::Null),
            ("revoked_reason", Value::Null),
        ]);
        let writes = vec![
            Write::create(doc_path(SESSIONS, &sid)?, session),
            self.refresh_token_create(&refresh_hash, &sid, &user.uid)?,
        ];
        let response = self.token_response(user, &sid, refresh)?;
        Ok((writes, response))
    }

    fn refresh_token_create(&self, hash: &str, sid: &str, uid: &str) -> Result<Write, AuthError> {
        Ok(Write::create(
            doc_path(REFRESH_TOKENS, hash)?,
            fields([
                ("sid", Value::String(sid.to_owned())),
                ("uid", Value::String(uid.to_owned())),
                ("created_at", Value::Timestamp(Timestamp::now())),
                (
                    "expires_at",
                    Value::Timestamp(ts_after(self.inner.config.refresh_token_ttl)),
                ),
                ("used", Value::Bool(false)),
            ]),
        ))
    }

    fn token_response(
        &self,
        user: &UserRecord,
        sid: &str,
        refresh_token: String,
    ) -> Result<TokenResponse, AuthError> {
        let ttl = self.inner.config.access_token_ttl.as_secs();
        let access_token = self.issue_access_token(user, sid)?;
        Ok(TokenResponse {
            access_token,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            uid: user.uid.clone(),
        })
    }

    /// Signs an access token for a user and session.
    pub fn issue_access_token(&self, user: &UserRecord, sid: &str) -> Result<String, AuthError> {
        let now = now_secs();
        let ttl = i64::try_from(self.inner.config.access_token_ttl.as_secs()).unwrap_or(3600);
        let custom = match hearth_protocol::value::map_to_json(&user.custom_claims) {
            serde_json::Value::Object(m) => m
                .into_iter()
                .filter(|(k, _)| !RESERVED_CLAIMS.contains(&k.as_str()))
                .collect(),
            _ => serde_json::Map::new(),
        };
        let claims = AccessClaims {
            sub: user.uid.clone(),
            iat: now,
            exp: now + ttl,
            iss: self.inner.config.issuer.clone(),
            aud: self.inner.config.audience.clone(),
            sid: sid.to_owned(),
            sign_in_provider: user.provider.as_str().into(),
            email: user.email.clone(),
            email_verified: user.email_verified,
            custom,
        };
        self.inner.keys.sign(&claims)
    }

    /// Exchanges a refresh token for a new access token and a new refresh
    /// token. Reusing a token that was already exchanged revokes its session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<TokenResponse, AuthError> {
        self.inner.limiter.check_ip(Action::Refresh, &client.ip)?;
        if !looks_like_token(refresh_token) {
            return Err(AuthError::InvalidRefreshToken);
        }
        let hash = hash_token(refresh_token);
        let token_path = doc_path(REFRESH_TOKENS, &hash)?;
        let Some(token_doc) = self.inner.store.get(&token_path).map_err(store_err)? else {
            return Err(AuthError::InvalidRefreshToken);
        };
        let sid = get_str(&token_doc, "sid").unwrap_or_default();
        let uid = get_str(&token_doc, "uid").unwrap_or_default();
        self.inner.limiter.check_account(Action::Refresh, &uid)?;
        if get_bool(&token_doc, "used") {
            tracing::warn!(%uid, %sid, "refresh token reused: revoking the session");
            self.revoke_session(&sid, RevocationReason::RefreshTokenReuse)
                .await?;
            return Err(AuthError::InvalidRefreshToken);
        }
        if get_ts(&token_doc, "expires_at").is_some_and(|t| t < Timestamp::now()) {
            return Err(AuthError::InvalidRefreshToken);
        }
        let session_path = doc_path(SESSIONS, &sid)?;
        let Some(session) = self.inner.store.get(&session_path).map_err(store_err)? else {
            return Err(AuthError::InvalidRefreshToken);
        };
        let current = get_str(&session, "refresh_hash").unwrap_or_default();
        if get_bool(&session, "revoked") || !ct_eq(current.as_bytes(), hash.as_bytes()) {
            return Err(AuthError::InvalidRefreshToken);
        }
        let user = match self.user(&uid)? {
            Some(u) if u.disabled => return Err(AuthError::UserDisabled),
            Some(u) => u,
            None => return Err(AuthError::InvalidRefreshToken),
        };
        let next = new_token();
        let next_hash = hash_token(&next);
        let writes = vec![
            update(
                token_path,
                vec![
                    ("used", Value::Bool(true)),
                    ("used_at", Value::Timestamp(Timestamp::now())),
                ],
            )
            .with_precondition(Precondition::Version(token_doc.version)),
            self.refresh_token_create(&next_hash, &sid, &uid)?,
            update(
                session_path,
                vec![
                    ("refresh_hash", Value::String(next_hash)),
                    ("refreshed_at", Value::Timestamp(Timestamp::now())),
                ],
            )
            .with_precondition(Precondition::Version(session.version)),
        ];
        match self.inner.store.commit(writes).await {
            Ok(_) => self.token_response(&user, &sid, next),
            Err(e) if is_conflict(&e) => {
                // Another request exchanged this token (or changed the
                // session) first: treat like reuse.
                tracing::warn!(%uid, %sid, "concurrent use of one refresh token: revoking the session");
                self.revoke_session(&sid, RevocationReason::RefreshTokenReuse)
                    .await?;
                Err(AuthError::InvalidRefreshToken)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Signs out the caller's session, or all of the user's sessions.
    pub async fn sign_out(
        &self,
        caller: &VerifiedToken,
        everywhere: bool,
    ) -> Result<(), AuthError> {
        if everywhere {
            self.revoke_user_sessions(&caller.uid, RevocationReason::SignOutEverywhere)
                .await
        } else {
            self.revoke_session(&caller.session_id, RevocationReason::SignOut)
                .await
        }
    }

    /// Signs out the session a refresh token belongs to (for clients whose
    /// access token already expired). Unknown tokens succeed silently.
    pub async fn sign_out_with_refresh_token(&self, refresh_token: &str) -> Result<(), AuthError> {
        if !looks_like_token(refresh_token) {
            return Ok(());
        }
        let path = doc_path(REFRESH_TOKENS, &hash_token(refresh_token))?;
        if let Some(doc) = self.inner.store.get(&path).map_err(store_err)? {
            if let Some(sid) = get_str(&doc, "sid") {
                self.revoke_session(&sid, RevocationReason::SignOut).await?;
            }
        }
        Ok(())
    }

    fn mark_revoked(&self, sid: &str) {
        let until = now_secs()
            + i64::try_from(
                (self.inner.config.access_token_ttl + self.inner.config.clock_skew).as_secs(),
            )
            .unwrap_or(i64::MAX / 2);
        self.inner.revoked_sessions.insert(sid.to_owned(), until);
    }

    /// Revokes one session: its refresh token stops working and its access
    /// tokens are refused from now on.
    pub async fn revoke_session(
        &self,
        sid: &str,
        reason: RevocationReason,
    ) -> Result<(), AuthError> {
        let path = doc_path(SESSIONS, sid)?;
        let Some(session) = self.inner.store.get(&path).map_err(store_err)? else {
            return Ok(());
        };
        let uid = get_str(&session, "uid").unwrap_or_default();
        self.mark_revoked(sid);
        if !get_bool(&session, "revoked") {
            self.inner
                .store
                .commit(vec![revoke_write(path, reason)])
                .await
                .map_err(store_err)?;
        }
        let _ = self.inner.revocations.send(Revocation {
            uid,
            session_id: Some(sid.to_owned()),
            reason,
        });
        Ok(())
    }

    /// Revokes every session of a user.
    pub async fn revoke_user_sessions(
        &self,
        uid: &str,
        reason: RevocationReason,
    ) -> Result<(), AuthError> {
        validate_uid(uid)?;
        let sessions = self.sessions_of(uid)?;
        let mut writes = Vec::new();
        for s in sessions {
            self.mark_revoked(s.path.id());
            if !get_bool(&s, "revoked") {
                writes.push(revoke_write(s.path.clone(), reason));
            }
        }
        for chunk in writes.chunks(hearth_protocol::write::MAX_WRITES_PER_COMMIT) {
            self.inner
                .store
                .commit(chunk.to_vec())
                .await
                .map_err(store_err)?;
        }
        let _ = self.inner.revocations.send(Revocation {
            uid: uid.to_owned(),
            session_id: None,
            reason,
        });
        tracing::info!(%uid, reason = reason.as_str(), "all sessions revoked");
        Ok(())
    }

    fn sessions_of(&self, uid: &str) -> Result<Vec<Document>, AuthError> {
        let q = query(serde_json::json!({
            "collection": SESSIONS,
            "where": {"field": "uid", "op": "==", "value": uid},
        }))?;
        Ok(self.inner.store.query(&q).map_err(store_err)?.documents)
    }

    // ----- users -----

    fn user(&self, uid: &str) -> Result<Option<UserRecord>, AuthError> {
        validate_uid(uid)?;
        Ok(self
            .inner
            .store
            .get(&doc_path(USERS, uid)?)
            .map_err(store_err)?
            .map(|d| UserRecord::from_doc(&d)))
    }

    fn require_user(&self, uid: &str) -> Result<UserRecord, AuthError> {
        self.user(uid)?
            .ok_or_else(|| AuthError::UserNotFound(uid.to_owned()))
    }

    fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, AuthError> {
        let index = self
            .inner
            .store
            .get(&doc_path(USERS_BY_EMAIL, &email_key(email))?)
            .map_err(store_err)?;
        let Some(uid) = index.as_ref().and_then(|d| get_str(d, "uid")) else {
            return Ok(None);
        };
        Ok(self
            .user(&uid)?
            .filter(|u| u.email.as_deref() == Some(email)))
    }

    /// The caller's own account.
    pub fn me(&self, caller: &VerifiedToken) -> Result<UserView, AuthError> {
        Ok(self.require_user(&caller.uid)?.view())
    }

    // ----- email flows -----

    async fn create_email_token(
        &self,
        purpose: EmailPurpose,
        uid: &str,
        email: &str,
    ) -> Result<(), AuthError> {
        let token = new_token();
        let w = Write::create(
            doc_path(EMAIL_TOKENS, &hash_token(&token))?,
            fields([
                ("purpose", Value::String(purpose.as_str().into())),
                ("uid", Value::String(uid.to_owned())),
                ("email", Value::String(email.to_owned())),
                ("created_at", Value::Timestamp(Timestamp::now())),
                (
                    "expires_at",
                    Value::Timestamp(ts_after(self.inner.config.email_token_ttl)),
                ),
            ]),
        );
        self.inner.store.commit(vec![w]).await.map_err(store_err)?;
        let (subject, text) = purpose.compose(
            &self.inner.config.public_url,
            &token,
            self.inner.config.email_token_ttl.as_secs() / 60,
        );
        self.deliver(Mail {
            to: email.to_owned(),
            subject,
            text,
        })
        .await
    }

    async fn deliver(&self, mail: Mail) -> Result<(), AuthError> {
        if self.inner.mailer.is_outbox() {
            let w = Write::create(
                doc_path(OUTBOX_MAIL, &random_id(12))?,
                fields([
                    ("to", Value::String(mail.to.clone())),
                    ("subject", Value::String(mail.subject.clone())),
                    ("text", Value::String(mail.text.clone())),
                    ("created_at", Value::Timestamp(Timestamp::now())),
                ]),
            );
            self.inner.store.commit(vec![w]).await.map_err(store_err)?;
            // Dev outbox mode only: the text carries the link a developer follows.
            tracing::info!(to = %mail.to, subject = %mail.subject, text = %mail.text, "dev outbox mail (no SMTP configured)");
            Ok(())
        } else {
            let result = self.inner.mailer.send_smtp(&mail).await;
            match &result {
                Ok(()) => tracing::info!(to = %mail.to, subject = %mail.subject, "mail sent"),
                Err(e) => tracing::error!(to = %mail.to, error = %e, "mail not sent"),
            }
            result
        }
    }

    /// Runs a mail-sending job in the background so that the response (and
    /// its timing) never depends on the account or on the relay.
    fn spawn_job<F>(&self, what: &'static str, job: F)
    where
        F: std::future::Future<Output = Result<(), AuthError>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = job.await {
                tracing::error!(error = %e, "{what} failed");
            }
        });
    }

    /// Sends a verification mail to the caller's address.
    pub async fn send_email_verification(&self, caller: &VerifiedToken) -> Result<(), AuthError> {
        self.inner
            .limiter
            .check_account(Action::Email, &caller.uid)?;
        let user = self.require_user(&caller.uid)?;
        let Some(email) = user.email.clone() else {
            return Err(AuthError::FailedPrecondition(
                "this account has no email address".into(),
            ));
        };
        if user.email_verified {
            return Err(AuthError::FailedPrecondition(
                "the email address is already verified".into(),
            ));
        }
        let this = self.clone();
        self.spawn_job("sending a verification mail", async move {
            this.create_email_token(EmailPurpose::VerifyEmail, &user.uid, &email)
                .await
        });
        Ok(())
    }

    /// Loads a valid email token of the given purpose.
    fn email_token(
        &self,
        token: &str,
        purpose: EmailPurpose,
    ) -> Result<(Document, String, String), AuthError> {
        if !looks_like_token(token) {
            return Err(AuthError::InvalidEmailToken);
        }
        let path = doc_path(EMAIL_TOKENS, &hash_token(token))?;
        let doc = self
            .inner
            .store
            .get(&path)
            .map_err(store_err)?
            .ok_or(AuthError::InvalidEmailToken)?;
        let ok_purpose =
            get_str(&doc, "purpose").and_then(|p| EmailPurpose::parse(&p)) == Some(purpose);
        let expired = get_ts(&doc, "expires_at").is_none_or(|t| t < Timestamp::now());
        if !ok_purpose || expired {
            return Err(AuthError::InvalidEmailToken);
        }
        let uid = get_str(&doc, "uid").ok_or(AuthError::InvalidEmailToken)?;
        let email = get_str(&doc, "email").ok_or(AuthError::InvalidEmailToken)?;
        Ok((doc, uid, email))
    }

    /// Consumes a verification token: the address is verified.
    pub async fn confirm_email_verification(&self, token: &str) -> Result<UserView, AuthError> {
        let (doc, uid, email) = self.email_token(token, EmailPurpose::VerifyEmail)?;
        let mut user = self.user(&uid)?.ok_or(AuthError::InvalidEmailToken)?;
        if user.email.as_deref() != Some(email.as_str()) {
            return Err(AuthError::InvalidEmailToken);
        }
        let writes = vec![
            Write::delete(doc.path.clone()).with_precondition(Precondition::Version(doc.version)),
            update(
                doc_path(USERS, &uid)?,
                vec![("email_verified", Value::Bool(true))],
            )
            .with_precondition(Precondition::Version(user.version)),
        ];
        self.commit_consuming(writes).await?;
        user.email_verified = true;
        Ok(user.view())
    }

    /// Commits writes that consume an email token; a lost race means the
    /// token was already used.
    async fn commit_consuming(&self, writes: Vec<Write>) -> Result<(), AuthError> {
        match self.inner.store.commit(writes).await {
            Ok(_) => Ok(()),
            Err(StoreError::AlreadyExists(p)) if p.collection_id() == USERS_BY_EMAIL => {
                Err(AuthError::EmailTaken)
            }
            Err(e) if is_conflict(&e) => Err(AuthError::InvalidEmailToken),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Sends a password-reset mail if the address has an account. Answers
    /// the same either way, immediately: the lookup and the mail happen in
    /// the background.
    pub async fn send_password_reset(
        &self,
        email: &str,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        self.inner.limiter.check_ip(Action::Reset, &client.ip)?;
        let email = normalize_email(email)?;
        self.inner.limiter.check_account(Action::Reset, &email)?;
        let this = self.clone();
        self.spawn_job("sending a password reset mail", async move {
            match this.user_by_email(&email)? {
                Some(user) if !user.disabled => {
                    this.create_email_token(EmailPurpose::PasswordReset, &user.uid, &email)
                        .await
                }
                _ => Ok(()),
            }
        });
        Ok(())
    }

    /// Consumes a reset token and sets a new password. Every session of the
    /// user is revoked; the address counts as verified.
    pub async fn confirm_password_reset(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        self.inner.hasher.check_policy(new_password)?;
        let (doc, uid, email) = self.email_token(token, EmailPurpose::PasswordReset)?;
        let user = self.user(&uid)?.ok_or(AuthError::InvalidEmailToken)?;
        if user.email.as_deref() != Some(email.as_str()) {
            return Err(AuthError::InvalidEmailToken);
        }
        let hash = self.inner.hasher.hash(new_password).await?;
        let writes = vec![
            Write::delete(doc.path.clone()).with_precondition(Precondition::Version(doc.version)),
            update(
                doc_path(USERS, &uid)?,
                vec![
                    ("password_hash", Value::String(hash)),
                    ("email_verified", Value::Bool(true)),
                ],
            ),
        ];
        self.commit_consuming(writes).await?;
        tracing::info!(%uid, "password reset");
        self.revoke_user_sessions(&uid, RevocationReason::PasswordReset)
            .await
    }

    /// Sends a confirmation mail to the new address of the caller.
    pub async fn send_email_change(
        &self,
        caller: &VerifiedToken,
        new_email: &str,
    ) -> Result<(), AuthError> {
        let new_email = normalize_email(new_email)?;
        self.inner
            .limiter
            .check_account(Action::Email, &caller.uid)?;
        let user = self.require_user(&caller.uid)?;
        if user.provider != Provider::Password {
            return Err(AuthError::FailedPrecondition(
                "link the anonymous account to an email and password first".into(),
            ));
        }
        if user.email.as_deref() == Some(new_email.as_str()) {
            return Err(AuthError::FailedPrecondition(
                "this is already the account's email address".into(),
            ));
        }
        if self.user_by_email(&new_email)?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let this = self.clone();
        self.spawn_job("sending an email change mail", async move {
            this.create_email_token(EmailPurpose::EmailChange, &user.uid, &new_email)
                .await
        });
        Ok(())
    }

    /// Consumes an email-change token: the account's address becomes the new
    /// one (verified).
    pub async fn confirm_email_change(&self, token: &str) -> Result<UserView, AuthError> {
        let (doc, uid, new_email) = self.email_token(token, EmailPurpose::EmailChange)?;
        let mut user = self.user(&uid)?.ok_or(AuthError::InvalidEmailToken)?;
        let mut writes = vec![
            Write::delete(doc.path.clone()).with_precondition(Precondition::Version(doc.version)),
            email_index_create(&new_email, &uid)?,
            update(
                doc_path(USERS, &uid)?,
                vec![
                    ("email", Value::String(new_email.clone())),
                    ("email_verified", Value::Bool(true)),
                ],
            )
            .with_precondition(Precondition::Version(user.version)),
        ];
        if let Some(old) = &user.email {
            writes.push(Write::delete(doc_path(USERS_BY_EMAIL, &email_key(old))?));
        }
        self.commit_consuming(writes).await?;
        tracing::info!(%uid, "email changed");
        user.email = Some(new_email);
        user.email_verified = true;
        Ok(user.view())
    }

    // ----- admin -----

    /// Lists users ordered by uid, or (with `q`) those whose email starts
    /// with `q`, ordered by email.
    pub fn list_users(
        &self,
        page_size: usize,
        page_token: Option<&str>,
        q: Option<&str>,
    ) -> Result<UserPage, AuthError> {
        let page_size = page_size.clamp(1, 1000);
        let q = q.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        let Some(prefix) = q else {
            let page = self
                .inner
                .store
                .list(&collection_path(USERS), page_size, page_token)
                .map_err(|e| match e {
                    StoreError::InvalidArgument(m) => AuthError::InvalidArgument(m),
                    other => store_err(other),
                })?;
            return Ok(UserPage {
                users: page
                    .documents
                    .iter()
                    .map(|d| UserRecord::from_doc(d).view())
                    .collect(),
                next_page_token: page.next_page_token,
            });
        };
        let mut filters = vec![
            serde_json::json!({"field": "email", "op": ">=", "value": prefix}),
            serde_json::json!({"field": "email", "op": "<", "value": format!("{prefix}\u{10FFFF}")}),
        ];
        if let Some(token) = page_token {
            let after = hex::decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| AuthError::InvalidArgument("invalid page_token".into()))?;
            filters.push(serde_json::json!({"field": "email", "op": ">", "value": after}));
        }
        let q = query(serde_json::json!({
            "collection": USERS,
            "where": {"and": filters},
            "order_by": [{"field": "email"}],
            "limit": page_size + 1,
        }))?;
        let mut docs = self.inner.store.query(&q).map_err(store_err)?.documents;
        let more = docs.len() > page_size;
        docs.truncate(page_size);
        let users: Vec<UserView> = docs
            .iter()
            .map(|d| UserRecord::from_doc(d).view())
            .collect();
        let next_page_token = if more {
            users.last().and_then(|u| u.email.as_ref()).map(hex::encode)
        } else {
            None
        };
        Ok(UserPage {
            users,
            next_page_token,
        })
    }

    pub fn get_user(&self, uid: &str) -> Result<UserView, AuthError> {
        Ok(self.require_user(uid)?.view())
    }

    /// Creates a user (with an email and password, or anonymous when both are absent).
    pub async fn create_user(&self, new: NewUser) -> Result<UserView, AuthError> {
        let custom_claims = match &new.custom_claims {
            Some(json) => validate_custom_claims(json)?,
            None => Map::new(),
        };
        let (email, hash, provider) = match (&new.email, &new.password) {
            (Some(email), Some(password)) => {
                let email = normalize_email(email)?;
                self.inner.hasher.check_policy(&password.0)?;
                (
                    Some(email),
                    Some(self.inner.hasher.hash(&password.0).await?),
                    Provider::Password,
                )
            }
            (None, None) => (None, None, Provider::Anonymous),
            _ => {
                return Err(AuthError::InvalidArgument(
                    "give both email and password, or neither for an anonymous user".into(),
                ))
            }
        };
        let user = UserRecord {
            uid: random_id(14),
            email: email.clone(),
            password_hash: hash,
            provider,
            email_verified: new.email_verified,
            disabled: new.disabled,
            custom_claims,
            created_at: Timestamp::now(),
            last_sign_in_at: None,
            version: 0,
        };
        let mut writes = vec![Write::create(doc_path(USERS, &user.uid)?, user.to_fields())];
        if let Some(email) = &email {
            writes.push(email_index_create(email, &user.uid)?);
        }
        match self.inner.store.commit(writes).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists(p)) if p.collection_id() == USERS_BY_EMAIL => {
                return Err(AuthError::EmailTaken)
            }
            Err(e) => return Err(store_err(e)),
        }
        if user.disabled {
            self.inner.disabled_uids.insert(user.uid.clone());
        }
        tracing::info!(uid = %user.uid, "user created by an administrator");
        Ok(user.view())
    }

    /// Applies an administrator's changes. Disabling revokes every session
    /// (and closes sockets through the revocation broadcast).
    pub async fn update_user(&self, uid: &str, patch: UserPatch) -> Result<UserView, AuthError> {
        let user = self.require_user(uid)?;
        let mut changes: Vec<(&str, Value)> = Vec::new();
        let mut updated = user.clone();
        if let Some(disabled) = patch.disabled {
            changes.push(("disabled", Value::Bool(disabled)));
            updated.disabled = disabled;
        }
        if let Some(verified) = patch.email_verified {
            changes.push(("email_verified", Value::Bool(verified)));
            updated.email_verified = verified;
        }
        if let Some(json) = &patch.custom_claims {
            let claims = validate_custom_claims(json)?;
            changes.push(("custom_claims", Value::Map(claims.clone())));
            updated.custom_claims = claims;
        }
        if let Some(password) = &patch.password {
            if user.email.is_none() {
                return Err(AuthError::FailedPrecondition(
                    "an anonymous user has no password; link an email first".into(),
                ));
            }
            self.inner.hasher.check_policy(&password.0)?;
            let hash = self.inner.hasher.hash(&password.0).await?;
            changes.push(("password_hash", Value::String(hash.clone())));
            updated.password_hash = Some(hash);
        }
        if changes.is_empty() {
            return Ok(user.view());
        }
        let w = update(doc_path(USERS, uid)?, changes)
            .with_precondition(Precondition::Version(user.version));
        match self.inner.store.commit(vec![w]).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Err(AuthError::Conflict),
            Err(e) => return Err(store_err(e)),
        }
        match patch.disabled {
            Some(true) if !user.disabled => {
                self.inner.disabled_uids.insert(uid.to_owned());
                self.revoke_user_sessions(uid, RevocationReason::UserDisabled)
                    .await?;
                tracing::info!(%uid, "user disabled");
            }
            Some(false) => {
                self.inner.disabled_uids.remove(uid);
            }
            _ => {}
        }
        Ok(updated.view())
    }

    /// Deletes a user, its email index entry, and revokes and removes its
    /// sessions' refresh tokens. The user's documents outside the system
    /// collections are the application's to clean up.
    pub async fn delete_user(&self, uid: &str) -> Result<(), AuthError> {
        let user = self.require_user(uid)?;
        self.inner.disabled_uids.insert(uid.to_owned());
        self.revoke_user_sessions(uid, RevocationReason::UserDeleted)
            .await?;
        let q = query(serde_json::json!({
            "collection": REFRESH_TOKENS,
            "where": {"field": "uid", "op": "==", "value": uid},
        }))?;
        let tokens = self.inner.store.query(&q).map_err(store_err)?.documents;
        let mut writes: Vec<Write> = tokens
            .iter()
            .map(|d| Write::delete(d.path.clone()))
            .collect();
        writes.push(Write::delete(doc_path(USERS, uid)?));
        if let Some(email) = &user.email {
            writes.push(Write::delete(doc_path(USERS_BY_EMAIL, &email_key(email))?));
        }
        // The user document goes last, in the final chunk, so a failure
        // midway leaves the user present and the delete can be retried.
        let chunks: Vec<Vec<Write>> = writes
            .chunks(hearth_protocol::write::MAX_WRITES_PER_COMMIT)
            .map(<[Write]>::to_vec)
            .collect();
        for chunk in chunks {
            self.inner.store.commit(chunk).await.map_err(store_err)?;
        }
        tracing::info!(%uid, "user deleted");
        Ok(())
    }

    /// The dev outbox, newest last (ids are random, so ordered by time here).
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxMail>, AuthError> {
        let q = query(serde_json::json!({
            "collection": OUTBOX_MAIL,
            "order_by": [{"field": "created_at", "direction": "desc"}],
            "limit": limit.clamp(1, 1000),
        }))?;
        let mut mails: Vec<OutboxMail> = self
            .inner
            .store
            .query(&q)
            .map_err(store_err)?
            .documents
            .iter()
            .map(|d| OutboxMail {
                id: d.path.id().to_owned(),
                to: get_str(d, "to").unwrap_or_default(),
                subject: get_str(d, "subject").unwrap_or_default(),
                text: get_str(d, "text").unwrap_or_default(),
                created_at: get_ts(d, "created_at")
                    .unwrap_or(d.create_time)
                    .to_rfc3339(),
            })
            .collect();
        mails.reverse();
        Ok(mails)
    }

    /// Makes a new key the signer; the previous one keeps verifying until
    /// its tokens have expired. Returns the new `kid`.
    pub async fn rotate_keys(&self) -> Result<String, AuthError> {
        let _guard = self.inner.rotation.lock().await;
        let now = now_secs();
        let new = SigningKey::generate(now)?;
        let old_kid = self.inner.keys.signer_kid();
        let mut writes = vec![Write::create(
            doc_path(KEYS, &new.kid)?,
            records::key_to_fields(&new),
        )];
        writes.push(update(
            doc_path(KEYS, &old_kid)?,
            vec![("retired_at", Value::Integer(now))],
        ));
        self.inner.store.commit(writes).await.map_err(store_err)?;
        self.inner.keys.rotate(new.clone(), now)?;
        tracing::info!(new_kid = %new.kid, %old_kid, "signing key rotated");
        self.prune_keys().await?;
        Ok(new.kid)
    }

    async fn prune_keys(&self) -> Result<(), AuthError> {
        let keep = self.inner.config.access_token_ttl + self.inner.config.clock_skew;
        let cutoff = now_secs() - i64::try_from(keep.as_secs()).unwrap_or(i64::MAX / 2);
        let dropped = self.inner.keys.prune(cutoff);
        if !dropped.is_empty() {
            let writes = dropped
                .iter()
                .map(|kid| doc_path(KEYS, kid).map(Write::delete))
                .collect::<Result<Vec<_>, _>>()?;
            self.inner.store.commit(writes).await.map_err(store_err)?;
            tracing::info!(kids = ?dropped, "expired signing keys removed");
        }
        Ok(())
    }

    // ----- start-up and housekeeping -----

    fn load_revocations(&self) -> Result<(), AuthError> {
        let revoked = query(serde_json::json!({
            "collection": SESSIONS,
            "where": {"field": "revoked", "op": "==", "value": true},
        }))?;
        let keep = i64::try_from(
            (self.inner.config.access_token_ttl + self.inner.config.clock_skew).as_secs(),
        )
        .unwrap_or(i64::MAX / 2);
        for doc in self
            .inner
            .store
            .query(&revoked)
            .map_err(store_err)?
            .documents
        {
            let at = get_ts(&doc, "revoked_at").map_or(now_secs(), Timestamp::seconds);
            if at + keep > now_secs() {
                self.inner
                    .revoked_sessions
                    .insert(doc.path.id().to_owned(), at + keep);
            }
        }
        let disabled = query(serde_json::json!({
            "collection": USERS,
            "where": {"field": "disabled", "op": "==", "value": true},
        }))?;
        for doc in self
            .inner
            .store
            .query(&disabled)
            .map_err(store_err)?
            .documents
        {
            self.inner.disabled_uids.insert(doc.path.id().to_owned());
        }
        Ok(())
    }

    fn spawn_background_tasks(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let rotation = self.inner.config.key_rotation_interval;
        tokio::spawn(async move {
            let mut housekeeping = tokio::time::interval(Duration::from_secs(300));
            housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let period = rotation.unwrap_or(Duration::from_secs(365 * 24 * 3600));
            let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                let do_rotate = tokio::select! {
                    _ = housekeeping.tick() => false,
                    _ = rotate.tick() => rotation.is_some(),
                };
                let Some(inner) = weak.upgrade() else { break };
                let service = AuthService { inner };
                if do_rotate {
                    if let Err(e) = service.rotate_keys().await {
                        tracing::error!(error = %e, "scheduled key rotation failed");
                    }
                } else if let Err(e) = service.housekeeping().await {
                    tracing::warn!(error = %e, "auth housekeeping failed");
                }
            }
        });
    }

    /// Drops expired in-memory state and deletes expired refresh and email
    /// tokens from the store.
    pub async fn housekeeping(&self) -> Result<(), AuthError> {
        let now = now_secs();
        self.inner.revoked_sessions.retain(|_, until| *until > now);
        self.inner.limiter.retain_recent();
        self.prune_keys().await?;
        let now_ts = Value::Timestamp(Timestamp::now());
        for collection in [REFRESH_TOKENS, EMAIL_TOKENS] {
            let q = query(serde_json::json!({
                "collection": collection,
                "where": {"field": "expires_at", "op": "<", "value": now_ts.to_json()},
                "limit": 500,
            }))?;
            let expired = self.inner.store.query(&q).map_err(store_err)?.documents;
            if !expired.is_empty() {
                let writes = expired
                    .iter()
                    .map(|d| {
                        Write::delete(d.path.clone())
                            .with_precondition(Precondition::Version(d.version))
                    })
                    .collect();
                match self.inner.store.commit(writes).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok(())
    }
}

fn revoke_write(path: hearth_protocol::DocPath, reason: RevocationReason) -> Write {
    update(
        path,
        vec![
            ("revoked", Value::Bool(true)),
            ("revoked_at", Value::Timestamp(Timestamp::now())),
            ("revoked_reason", Value::String(reason.as_str().into())),
        ],
    )
}

fn email_index_create(email: &str, uid: &str) -> Result<Write, AuthError> {
    Ok(Write::create(
        doc_path(USERS_BY_EMAIL, &email_key(email))?,
        fields([
            ("uid", Value::String(uid.to_owned())),
            ("email", opt_string(Some(&email.to_owned()))),
        ]),
    )
    .with_precondition(Precondition::Exists(false)))
}

/// Loads the signing keys, creating the first one on a fresh store.
async fn load_keys(store: &Store, config: &AuthConfig) -> Result<KeyRing, AuthError> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list(&collection_path(KEYS), 1000, token.as_deref())
            .map_err(store_err)?;
        keys.extend(page.documents.iter().filter_map(records::key_from_doc));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    if !keys.iter().any(|k| k.retired_at.is_none()) {
        let key = SigningKey::generate(now_secs())?;
        let w = Write::create(doc_path(KEYS, &key.kid)?, records::key_to_fields(&key))
            .with_precondition(Precondition::Exists(false));
        store.commit(vec![w]).await.map_err(store_err)?;
        tracing::info!(kid = %key.kid, "created the first signing key");
        keys.push(key);
    }
    KeyRing::new(
        keys,
        &config.issuer,
        &config.audience,
        config.clock_skew.as_secs(),
    )
}
