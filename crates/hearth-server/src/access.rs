//! Who is calling, and may they do this: the HTTP side of the one access check.
//!
//! [`Access::principal_from_headers`] is the only place that reads
//! credentials: `Authorization: Bearer <admin key>` makes the admin principal
//! (compared in constant time); any other bearer token is an access token for
//! the auth service's verifier; no header is the unauthenticated principal
//! (or, with `hearth serve --dev`, the admin: development only).
//!
//! Every REST data path then asks one of the `check_*` methods, once per
//! document operation (each write inside a batch or transaction included).
//! The admin principal passes everything. Others are decided by the rules
//! engine (`hearth-rules::AccessControl`); until that crate is wired in, a
//! non-admin principal is refused, and system collections (`__name__` ids) are
//! admin-only in every case.

use axum::http::{header, HeaderMap};
use hearth_protocol::{CollectionPath, DocPath, Document, ErrorCode, Query, QuerySource, Write};

use crate::admin_key::AdminKey;
use crate::error::ApiError;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// The admin key (or `--dev` without credentials): bypasses rules.
    Admin,
    /// A signed-in user, from a verified access token.
    User {
        uid: String,
        claims: serde_json::Map<String, serde_json::Value>,
    },
    /// No credentials.
    Unauthenticated,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// A stable name for ownership checks (transactions) and logs; never a secret.
    pub fn owner_key(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::User { uid, .. } => format!("user:{uid}"),
            Principal::Unauthenticated => "anonymous".into(),
        }
    }
}

/// The access policy of one server.
#[derive(Debug, Clone)]
pub struct Access {
    admin_key: AdminKey,
    dev_mode: bool,
}

impl Access {
    pub fn new(admin_key: AdminKey, dev_mode: bool) -> Access {
        Access {
            admin_key,
            dev_mode,
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Turns the request's credentials into a principal. A credential that is
    /// present but invalid is an error (`unauthenticated`), never a silent
    /// downgrade to anonymous.
    pub fn principal_from_headers(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(if self.dev_mode {
                Principal::Admin
            } else {
                Principal::Unauthenticated
            });
        };
        let text = value
            .to_str()
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("expected `Authorization: Bearer <admin key or access token>`")
            })?;
        if self.admin_key.matches(token) {
            return Ok(Principal::Admin);
        }
        Err(ApiError::unauthenticated(
            "the bearer credential is not the admin key (user access tokens are not enabled on this server)",
        ))
    }

    fn non_admin(&self, principal: &Principal, system: bool) -> Result<(), ApiError> {
        if system {
            return Err(ApiError::permission_denied(
                "system collections (__name__) are reserved for the admin key",
            ));
        }
        match principal {
            Principal::Admin => Ok(()),
            Principal::Unauthenticated => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this request needs credentials: send `Authorization: Bearer <admin key>`",
            )),
            Principal::User { .. } => Err(ApiError::permission_denied(
                "no security rules allow this request",
            )),
        }
    }

    /// May `principal` read the document at `path` (currently `doc`)?
    pub fn check_get(
        &self,
        principal: &Principal,
        path: &DocPath,
        _doc: Option<&Document>,
    ) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        self.non_admin(principal, path.is_system())
    }

    /// May `principal` list the collection?
    pub fn check_list(
        &self,
        principal: &Principal,
        collection: &CollectionPath,
    ) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        self.non_admin(principal, collection.is_system())
    }

    /// May `principal` run this query? (Checked before it runs.)
    pub fn check_query(&self, principal: &Principal, query: &Query) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        let system = match &query.source {
            QuerySource::Collection(c) => c.is_system(),
            QuerySource::CollectionGroup(id) => hearth_protocol::path::is_reserved_id(id),
        };
        self.non_admin(principal, system)
    }

    /// Keeps the documents of a result that `principal` may read.
    pub fn filter_readable(&self, principal: &Principal, docs: Vec<Document>) -> Vec<Document> {
        if principal.is_admin() {
            return docs;
        }
        docs.into_iter()
            .filter(|d| self.check_get(principal, &d.path, Some(d)).is_ok())
            .collect()
    }

    /// Does this principal need the current documents to decide on writes?
    /// (The admin never does, which keeps the admin write path read-free.)
    pub fn needs_current_for_writes(&self, principal: &Principal) -> bool {
        !principal.is_admin()
    }

    /// May `principal` perform `write` on a document currently `current`?
    pub fn check_write(
        &self,
        principal: &Principal,
        write: &Write,
        _current: Option<&Document>,
    ) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        self.non_admin(principal, write.path.is_system())
    }

    /// Admin-only endpoints (changelog, backup, export).
    pub fn require_admin(&self, principal: &Principal) -> Result<(), ApiError> {
        match principal {
            Principal::Admin => Ok(()),
            Principal::Unauthenticated => Err(ApiError::unauthenticated(
                "this endpoint needs `Authorization: Bearer <admin key>`",
            )),
            Principal::User { .. } => Err(ApiError::permission_denied(
                "this endpoint is reserved for the admin key",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn access(dev: bool) -> Access {
        Access::new(AdminKey::new("k".repeat(32)).unwrap(), dev)
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn admin_key_makes_the_admin_and_anything_else_is_refused() {
        let a = access(false);
        let key = format!("Bearer {}", "k".repeat(32));
        assert_eq!(a.principal_from_headers(&headers(&key)).unwrap(), Principal::Admin);
        let wrong = a.principal_from_headers(&headers("Bearer nope")).unwrap_err();
        assert_eq!(wrong.code(), ErrorCode::Unauthenticated);
        let basic = a.principal_from_headers(&headers("Basic abc")).unwrap_err();
        assert_eq!(basic.code(), ErrorCode::Unauthenticated);
        assert_eq!(
            a.principal_from_headers(&HeaderMap::new()).unwrap(),
            Principal::Unauthenticated
        );
    }

    #[test]
    fn dev_mode_treats_anonymous_requests_as_admin_but_still_checks_bad_keys() {
        let a = access(true);
        assert_eq!(a.principal_from_headers(&HeaderMap::new()).unwrap(), Principal::Admin);
        assert!(a.principal_from_headers(&headers("Bearer nope")).is_err());
    }

    #[test]
    fn anonymous_callers_are_refused_and_system_paths_are_admin_only() {
        let a = access(false);
        let doc = DocPath::parse("rooms/r1").unwrap();
        let err = a.check_get(&Principal::Unauthenticated, &doc, None).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthenticated);
        let system = DocPath::parse("__users__/u1").unwrap();
        let err = a.check_get(&Principal::Unauthenticated, &system, None).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert!(a.check_get(&Principal::Admin, &system, None).is_ok());
    }
}
