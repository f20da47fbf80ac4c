//! The documents the auth service keeps in the store's system collections,
//! and their conversion to and from document fields.
//!
//! | collection | id | fields |
//! |---|---|---|
//! | `__users__` | uid | `uid`, `email`, `password_hash` (PHC), `provider`, `email_verified`, `disabled`, `custom_claims`, `created_at`, `last_sign_in_at` |
//! | `__users_by_email__` | hex SHA-256 of the normalized email | `uid`, `email` — created with a must-not-exist precondition in the same commit as the user, so an email has at most one account |
//! | `__sessions__` | session id (`sid`) | `uid`, `provider`, `created_at`, `refreshed_at`, `refresh_hash`, `revoked`, `revoked_at`, `revoked_reason` |
//! | `__refresh_tokens__` | hex SHA-256 of the token | `sid`, `uid`, `created_at`, `expires_at`, `used` — a used token is kept until it expires so that its reuse is detected |
//! | `__email_tokens__` | hex SHA-256 of the token | `purpose`, `uid`, `email`, `created_at`, `expires_at` — deleted (with a version precondition) in the commit that applies it, so it works once |
//! | `__keys__` | kid | `alg`, `pkcs8`, `public`, `created_at`, `retired_at` |
//! | `__outbox_mail__` | random | `to`, `subject`, `text`, `created_at` (dev outbox only) |
//!
//! Nothing here is ever written outside `Store::commit`, so export and
//! backup carry all of it.

use std::fmt;

use hearth_protocol::{CollectionPath, DocPath, Document, Map, Timestamp, Value};
use serde::Serialize;

use crate::error::AuthError;
use crate::jwt::SigningKey;

pub const USERS: &str = "__users__";
pub const USERS_BY_EMAIL: &str = "__users_by_email__";
pub const SESSIONS: &str = "__sessions__";
pub const REFRESH_TOKENS: &str = "__refresh_tokens__";
pub const EMAIL_TOKENS: &str = "__email_tokens__";
pub const KEYS: &str = "__keys__";
pub const OUTBOX_MAIL: &str = "__outbox_mail__";

/// `collection/id` as a document path. Ids we generate are hex or validated
/// uids, so this only fails on a malformed uid from a client.
pub fn doc_path(collection: &str, id: &str) -> Result<DocPath, AuthError> {
    if id.is_empty() || id.contains('/') || id.len() > 128 {
        return Err(AuthError::InvalidArgument(format!("invalid id {id:?}")));
    }
    DocPath::parse(&format!("{collection}/{id}"))
        .map_err(|e| AuthError::InvalidArgument(e.to_string()))
}

pub fn collection_path(collection: &str) -> CollectionPath {
    CollectionPath::parse(collection)
        .unwrap_or_else(|_| unreachable!("constant collection ids are valid"))
}

/// Document id of the email index entry.
pub fn email_key(normalized_email: &str) -> String {
    crate::tokens::hash_token(normalized_email)
}

/// How the user signed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Password,
    Anonymous,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Password => "password",
            Provider::Anonymous => "anonymous",
        }
    }
    fn parse(s: &str) -> Provider {
        if s == "anonymous" {
            Provider::Anonymous
        } else {
            Provider::Password
        }
    }
}

/// A user as stored.
#[derive(Clone, PartialEq)]
pub struct UserRecord {
    pub uid: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub provider: Provider,
    pub email_verified: bool,
    pub disabled: bool,
    pub custom_claims: Map,
    pub created_at: Timestamp,
    pub last_sign_in_at: Option<Timestamp>,
    /// The document's version (for optimistic updates); 0 before it is stored.
    pub version: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("uid", &self.uid)
            .field("email", &self.email)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("provider", &self.provider)
            .field("email_verified", &self.email_verified)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

pub fn opt_string(v: Option<&String>) -> Value {
    v.map_or(Value::Null, |s| Value::String(s.clone()))
}

fn opt_ts(v: Option<Timestamp>) -> Value {
    v.map_or(Value::Null, Value::Timestamp)
}

pub fn get_str(doc: &Document, name: &str) -> Option<String> {
    doc.fields
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub fn get_bool(doc: &Document, name: &str) -> bool {
    doc.fields
        .get(name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

pub fn get_ts(doc: &Document, name: &str) -> Option<Timestamp> {
    match doc.fields.get(name) {
        Some(Value::Timestamp(t)) => Some(*t),
        _ => None,
    }
}

impl UserRecord {
    pub fn to_fields(&self) -> Map {
        let mut m = Map::new();
        m.insert("uid".into(), Value::String(self.uid.clone()));
        m.insert("email".into(), opt_string(self.email.as_ref()));
        m.insert(
            "password_hash".into(),
            opt_string(self.password_hash.as_ref()),
        );
        m.insert(
            "provider".into(),
            Value::String(self.provider.as_str().into()),
        );
        m.insert("email_verified".into(), Value::Bool(self.email_verified));
        m.insert("disabled".into(), Value::Bool(self.disabled));
        m.insert(
            "custom_claims".into(),
            Value::Map(self.custom_claims.clone()),
        );
        m.insert("created_at".into(), Value::Timestamp(self.created_at));
        m.insert("last_sign_in_at".into(), opt_ts(self.last_sign_in_at));
        m
    }

    pub fn from_doc(doc: &Document) -> UserRecord {
        UserRecord {
            uid: doc.path.id().to_owned(),
            email: get_str(doc, "email"),
            password_hash: get_str(doc, "password_hash"),
            provider: Provider::parse(&get_str(doc, "provider").unwrap_or_default()),
            email_verified: get_bool(doc, "email_verified"),
            disabled: get_bool(doc, "disabled"),
            custom_claims: doc
                .fields
                .get("custom_claims")
                .and_then(Value::as_map)
                .cloned()
                .unwrap_or_default(),
            created_at: get_ts(doc, "created_at").unwrap_or(doc.create_time),
            last_sign_in_at: get_ts(doc, "last_sign_in_at"),
            version: doc.version,
        }
    }

    /// The public view (no password hash).
    pub fn view(&self) -> UserView {
        UserView {
            uid: self.uid.clone(),
            email: self.email.clone(),
            email_verified: self.email_verified,
            provider: self.provider,
            disabled: self.disabled,
            custom_claims: hearth_protocol::value::map_to_json(&self.custom_claims),
            created_at: self.created_at.to_rfc3339(),
            last_sign_in_at: self.last_sign_in_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub uid: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub provider: Provider,
    pub disabled: bool,
    #[schema(value_type = Object)]
    pub custom_claims: serde_json::Value,
    pub created_at: String,
    pub last_sign_in_at: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Provider {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Provider::parse(&s))
    }
}

pub fn key_to_fields(key: &SigningKey) -> Map {
    let mut m = Map::new();
    m.insert("alg".into(), Value::String("EdDSA".into()));
    m.insert("pkcs8".into(), Value::Bytes(key.pkcs8.clone()));
    m.insert("public".into(), Value::Bytes(key.public.clone()));
    m.insert("created_at".into(), Value::Integer(key.created_at));
    m.insert(
        "retired_at".into(),
        key.retired_at.map_or(Value::Null, Value::Integer),
    );
    m
}

pub fn key_from_doc(doc: &Document) -> Option<SigningKey> {
    let bytes = |name: &str| match doc.fields.get(name) {
        Some(Value::Bytes(b)) => Some(b.clone()),
        _ => None,
    };
    Some(SigningKey {
        kid: doc.path.id().to_owned(),
        pkcs8: bytes("pkcs8")?,
        public: bytes("public")?,
        created_at: doc.fields.get("created_at")?.as_i64()?,
        retired_at: doc.fields.get("retired_at").and_then(Value::as_i64),
    })
}

/// Builds a field map from pairs.
pub fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_round_trips_through_document_fields() {
        let user = UserRecord {
            uid: "u1".into(),
            email: Some("a@b.co".into()),
            password_hash: Some("$argon2id$...".into()),
            provider: Provider::Password,
            email_verified: true,
            disabled: false,
            custom_claims: fields([("admin", Value::Bool(true))]),
            created_at: Timestamp(5),
            last_sign_in_at: None,
            version: 3,
        };
        let doc = Document {
            path: doc_path(USERS, "u1").unwrap(),
            fields: user.to_fields(),
            create_time: Timestamp(5),
            update_time: Timestamp(5),
            version: 3,
        };
        assert_eq!(UserRecord::from_doc(&doc), user);
        assert!(!format!("{user:?}").contains("argon2id"));
        let view = serde_json::to_value(user.view()).unwrap();
        assert!(view.get("password_hash").is_none());
        assert_eq!(view["custom_claims"]["admin"], true);
    }

    #[test]
    fn ids_with_slashes_are_refused() {
        assert!(doc_path(USERS, "a/b").is_err());
        assert!(doc_path(USERS, "").is_err());
    }
}
