//! Who is calling, and may they do this: the HTTP side of the one access check.
//!
//! [`Access::principal_from_headers`] is the only place that reads
//! credentials: `Authorization: Bearer <admin key>` makes the admin principal
//! (compared in constant time); any other bearer token goes to the
//! [`TokenVerifier`] (the auth service's access-token check) when one is
//! installed; no header is [`Principal::Unauthenticated`] (or, with
//! `hearth serve --dev`, the admin: development only). A credential that is
//! present but invalid is `unauthenticated`, never a silent downgrade.
//!
//! Every REST data path then asks one of the `check_*` methods, once per
//! document operation (each write inside a batch or transaction included),
//! and these call `hearth_rules::AccessControl`: system collections are
//! admin-only, the admin passes, the rules decide the rest (no match means
//! deny). Queries follow the rules crate's policy: refused up front when no
//! `list` rule can allow them, then filtered per document.
//!
//! Without a rules file the server denies every non-admin request; an
//! anonymous caller is then told `unauthenticated` (it should send the admin
//! key) rather than `permission-denied`.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use hearth_protocol::{CollectionPath, DocPath, Document, ErrorCode, Query, Timestamp, Write};
use hearth_rules::{AccessControl, AccessError, DocumentLookup};

pub use hearth_rules::Principal;

use crate::admin_key::AdminKey;
use crate::error::ApiError;

/// Verifies a user access token (implemented by the auth service).
pub trait TokenVerifier: Send + Sync {
    fn verify(&self, token: &str) -> Result<Principal, ApiError>;
}

/// Reads documents for rules' `get()`/`exists()`.
pub type Lookup = Arc<dyn DocumentLookup + Send + Sync>;

/// The access policy of one server.
#[derive(Clone)]
pub struct Access {
    admin_key: AdminKey,
    dev_mode: bool,
    rules: Option<AccessControl>,
    lookup: Option<Lookup>,
    verifier: Option<Arc<dyn TokenVerifier>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("dev_mode", &self.dev_mode)
            .field("rules", &self.rules.is_some())
            .field("verifier", &self.verifier.is_some())
            .finish()
    }
}

fn access_error(e: AccessError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

impl Access {
    /// Admin key only: every non-admin request is refused.
    pub fn new(admin_key: AdminKey, dev_mode: bool) -> Access {
        Access {
            admin_key,
            dev_mode,
            rules: None,
            lookup: None,
            verifier: None,
        }
    }

    /// Let security rules decide for non-admin callers.
    pub fn with_rules(mut self, rules: AccessControl, lookup: Lookup) -> Access {
        self.rules = Some(rules);
        self.lookup = Some(lookup);
        self
    }

    /// Accept user access tokens checked by `verifier`.
    pub fn with_token_verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Access {
        self.verifier = Some(verifier);
        self
    }

    /// The rules in force, if a rules file is loaded (shared with the gateway).
    pub fn rules_control(&self) -> Option<AccessControl> {
        self.rules.clone()
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Turns the request's credentials into a principal.
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
                ApiError::unauthenticated(
                    "expected `Authorization: Bearer <admin key or access token>`",
                )
            })?;
        if self.admin_key.matches(token) {
            return Ok(Principal::Admin);
        }
        match &self.verifier {
            Some(verifier) => verifier.verify(token),
            None => Err(ApiError::unauthenticated(
                "the bearer credential is not the admin key (user access tokens are not enabled on this server)",
            )),
        }
    }

    /// The rules and lookup, or the refusal used when no rules are loaded.
    fn rules(
        &self,
        principal: &Principal,
    ) -> Result<(&AccessControl, &(dyn DocumentLookup + Send + Sync)), ApiError> {
        match (&self.rules, &self.lookup) {
            (Some(rules), Some(lookup)) => Ok((rules, lookup.as_ref())),
            _ => Err(match principal {
                Principal::Unauthenticated => ApiError::new(
                    ErrorCode::Unauthenticated,
                    "this request needs credentials: send `Authorization: Bearer <admin key>`",
                ),
                _ => ApiError::permission_denied(
                    "no security rules are loaded on this server; only the admin key has access",
                ),
            }),
        }
    }

    /// May `principal` read the document at `path` (currently `doc`)?
    pub fn check_get(
        &self,
        principal: &Principal,
        path: &DocPath,
        doc: Option<&Document>,
    ) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        if path.is_system() {
            return Err(system_denied());
        }
        let (rules, lookup) = self.rules(principal)?;
        rules
            .check_get(principal, path, doc, lookup)
            .map_err(access_error)
    }

    /// May `principal` list the collection? (Then filter with [`Self::filter_readable`].)
    pub fn check_list(
        &self,
        principal: &Principal,
        collection: &CollectionPath,
    ) -> Result<(), ApiError> {
        self.check_query(principal, &Query::collection(collection.clone()))
    }

    /// May `principal` run this query? (Checked before it runs.)
    pub fn check_query(&self, principal: &Principal, query: &Query) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        let system = match &query.source {
            hearth_protocol::QuerySource::Collection(c) => c.is_system(),
            hearth_protocol::QuerySource::CollectionGroup(id) => {
                hearth_protocol::path::is_reserved_id(id)
            }
        };
        if system {
            return Err(system_denied());
        }
        let (rules, lookup) = self.rules(principal)?;
        rules
            .check_list(principal, query, lookup)
            .map_err(access_error)
    }

    /// Keeps the documents of a result that `principal` may list.
    pub fn filter_readable(&self, principal: &Principal, docs: Vec<Document>) -> Vec<Document> {
        if principal.is_admin() {
            return docs;
        }
        match (&self.rules, &self.lookup) {
            (Some(rules), Some(lookup)) => rules.filter_list(principal, docs, lookup.as_ref()),
            _ => Vec::new(),
        }
    }

    /// Does this principal need the current documents to decide on writes?
    /// (The admin never does, which keeps the admin write path read-free.)
    /// May `principal` commit `writes` (one write, a batch or a
    /// transaction's writes)? `load` reads a document's stored state. The
    /// rules see each document as the earlier writes of the commit leave it
    /// and as the write would leave it (`request.resource.data`), and they
    /// decide before the write's own errors (see
    /// `hearth_rules::AccessControl::authorize_writes`), so `already-exists`
    /// or `not-found` never reveal documents the caller may not write.
    pub fn check_writes(
        &self,
        principal: &Principal,
        writes: &[Write],
        load: &mut dyn FnMut(&DocPath) -> Result<Option<Document>, String>,
    ) -> Result<(), ApiError> {
        if principal.is_admin() {
            return Ok(());
        }
        let (rules, lookup) = self.rules(principal)?;
        rules
            .authorize_writes(principal, writes, Timestamp::now(), load, lookup)
            .map_err(|e| ApiError::new(e.code(), e.to_string()))
    }

    /// Admin-only endpoints (changelog, backup, export, indexes).
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

fn system_denied() -> ApiError {
    ApiError::permission_denied("system collections (__name__) are reserved for the admin key")
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
        assert_eq!(
            a.principal_from_headers(&headers(&key)).unwrap(),
            Principal::Admin
        );
        let wrong = a
            .principal_from_headers(&headers("Bearer nope"))
            .unwrap_err();
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
        assert_eq!(
            a.principal_from_headers(&HeaderMap::new()).unwrap(),
            Principal::Admin
        );
        assert!(a.principal_from_headers(&headers("Bearer nope")).is_err());
    }

    #[test]
    fn without_rules_anonymous_is_unauthenticated_and_system_paths_are_admin_only() {
        let a = access(false);
        let doc = DocPath::parse("rooms/r1").unwrap();
        let err = a
            .check_get(&Principal::Unauthenticated, &doc, None)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthenticated);
        let system = DocPath::parse("__users__/u1").unwrap();
        let err = a
            .check_get(&Principal::Unauthenticated, &system, None)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert!(a.check_get(&Principal::Admin, &system, None).is_ok());
    }

    #[test]
    fn rules_decide_for_users_on_reads_queries_and_writes() {
        let rules = hearth_rules::Ruleset::parse(
            "match /rooms/{id} { allow read: if request.auth != null; allow create: if request.resource.data.owner == request.auth.uid; }",
        )
        .unwrap();
        let lookup: Lookup = Arc::new(hearth_rules::NoDocuments);
        let a = access(false).with_rules(AccessControl::new(rules), lookup);
        let user = Principal::User {
            uid: "u1".into(),
            claims: Default::default(),
        };
        let doc = DocPath::parse("rooms/r1").unwrap();
        assert!(a.check_get(&user, &doc, None).is_ok());
        assert_eq!(
            a.check_get(&Principal::Unauthenticated, &doc, None)
                .unwrap_err()
                .code(),
            ErrorCode::PermissionDenied
        );
        let mine = Write::create(doc.clone(), [("owner".to_string(), "u1".into())].into());
        let theirs = Write::create(doc.clone(), [("owner".to_string(), "u2".into())].into());
        let mut nothing_stored = |_: &DocPath| Ok(None);
        assert!(a.check_writes(&user, &[mine], &mut nothing_stored).is_ok());
        assert!(a
            .check_writes(&user, &[theirs], &mut nothing_stored)
            .is_err());
        assert!(a
            .check_writes(&user, &[Write::delete(doc)], &mut nothing_stored)
            .is_err());
        let q = Query::collection(CollectionPath::parse("rooms").unwrap());
        assert!(a.check_query(&user, &q).is_ok());
    }
}
