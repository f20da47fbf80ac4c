//! [`AccessControl`]: the one access check every path into the data calls.
//!
//! REST reads, writes and queries, WebSocket subscriptions and every change
//! delivered on them, WebSocket writes, each operation inside a batch or a
//! transaction, and (later) functions acting for a user all ask this type.
//! It holds the current [`Ruleset`] behind a lock that is only held long
//! enough to clone an `Arc`, so a hot reload swaps the rules atomically: an
//! in-flight check finishes with the rules it started with.
//!
//! Order of the checks, for every method:
//! 1. A path with a system segment (`__users__`, any `__x__`) is denied to
//!    everyone but [`Principal::Admin`], whatever the rules say.
//! 2. The admin principal is allowed.
//! 3. The rules decide; no matching `allow` means deny.
//!
//! ## How queries are checked
//! Queries are **filtered per document** (as PocketBase does), not proven
//! safe from their constraints (as Firestore does): proving needs a solver
//! over filters and rule conditions, and a check that is hard to reason
//! about is a security risk of its own. Two steps:
//! - [`AccessControl::check_list`], before running the query, evaluates the
//!   `list` rules that match the collection with the document unknown
//!   (`resource` and the document-id variable are "unknown": anything that
//!   touches them is undecided). It refuses the query with
//!   `permission-denied` when no `allow list` matches the collection, or
//!   when every matching rule is false whatever the document (for example
//!   `request.auth != null` for an anonymous caller). Collection-group
//!   queries skip this step (their paths are not known before the
//!   documents are), except that a system collection id is refused.
//! - [`AccessControl::filter_list`], after running it, keeps only the
//!   documents whose `list` rule is true for that document. A query
//!   therefore never returns a document its caller may not list; it may
//!   return fewer documents than its `limit` when some were filtered out, so
//!   callers that page should say so (Firestore would have refused the query
//!   instead). Live queries use [`AccessControl::can_read_doc`] per
//!   delivered change with the same `list` semantics: a document that
//!   becomes unreadable is delivered as removed.
//!
//! Single-document reads and single-document listeners use `get` rules
//! ([`AccessControl::check_get`]).
//!
//! ## Errors
//! Every denial is [`AccessError::PermissionDenied`], for an anonymous
//! caller too (as in Firestore); see [`AccessError`].

use std::sync::Arc;

use std::collections::HashMap;

use hearth_protocol::{
    apply_write, path::is_reserved_id, DocPath, Document, Map, Query, QuerySource, Timestamp,
    Write, WriteKind,
};
use parking_lot::RwLock;

use crate::ast::Method;
use crate::error::{AccessError, WriteRefusal};
use crate::ruleset::{ListPrecheck, Principal, RuleRequest, Ruleset};
use crate::DocumentLookup;

/// The access check. Clone it freely: clones share the same rules, so a
/// reload through one (or through [`crate::RulesFile::watch`]) is seen by all.
#[derive(Debug, Clone)]
pub struct AccessControl {
    current: Arc<RwLock<Arc<Ruleset>>>,
}

impl AccessControl {
    pub fn new(ruleset: Ruleset) -> AccessControl {
        AccessControl {
            current: Arc::new(RwLock::new(Arc::new(ruleset))),
        }
    }

    /// Secure default (no rules file): only the admin gets through.
    pub fn deny_all() -> AccessControl {
        AccessControl::new(Ruleset::deny_all())
    }

    /// Explicit development mode: every non-system document is open to
    /// everyone. Never the default.
    pub fn allow_all() -> AccessControl {
        AccessControl::new(Ruleset::allow_all())
    }

    /// Swaps in new rules atomically.
    pub fn replace(&self, ruleset: Ruleset) {
        *self.current.write() = Arc::new(ruleset);
    }

    /// The rules in force now.
    pub fn ruleset(&self) -> Arc<Ruleset> {
        Arc::clone(&self.current.read())
    }

    /// A single-document read (`get` rules). `existing` is the stored
    /// document, `None` when it does not exist (the rule sees `resource == null`).
    pub fn check_get(
        &self,
        p: &Principal,
        doc_path: &DocPath,
        existing: Option<&Document>,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        self.check(p, Method::Get, doc_path, existing, None, lookup)
    }

    /// Before running a query: refuses it when no document could be listed
    /// (see the module docs). Results must still go through [`Self::filter_list`].
    pub fn check_list(
        &self,
        p: &Principal,
        query: &Query,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        let collection = match &query.source {
            QuerySource::Collection(c) => {
                if c.is_system() && !p.is_admin() {
                    return Err(system_denied(&c.as_string()));
                }
                c
            }
            QuerySource::CollectionGroup(id) => {
                if is_reserved_id(id) && !p.is_admin() {
                    return Err(system_denied(id));
                }
                return Ok(());
            }
        };
        if p.is_admin() {
            return Ok(());
        }
        match self
            .ruleset()
            .list_precheck(p, collection, Timestamp::now(), lookup)
        {
            ListPrecheck::Allowed | ListPrecheck::PerDocument => Ok(()),
            ListPrecheck::NoRule => Err(AccessError::PermissionDenied(format!(
                "no rule allows list on {collection}"
            ))),
            ListPrecheck::Denied => Err(AccessError::PermissionDenied(format!(
                "the rules do not allow list on {collection}"
            ))),
        }
    }

    /// After running a query: keeps the documents the caller may list.
    pub fn filter_list(
        &self,
        p: &Principal,
        docs: Vec<Document>,
        lookup: &dyn DocumentLookup,
    ) -> Vec<Document> {
        if p.is_admin() {
            return docs;
        }
        let rules = self.ruleset();
        let now = Timestamp::now();
        docs.into_iter()
            .filter(|doc| list_allowed(&rules, p, doc, now, lookup))
            .collect()
    }

    /// Whether a live query may deliver `doc` to `p` (`list` semantics, as
    /// [`Self::filter_list`]). When a change makes this false for a document
    /// the subscriber had, deliver it as removed.
    pub fn can_read_doc(&self, p: &Principal, doc: &Document, lookup: &dyn DocumentLookup) -> bool {
        if p.is_admin() {
            return true;
        }
        list_allowed(&self.ruleset(), p, doc, Timestamp::now(), lookup)
    }

    /// A write. `existing` is the stored document (`None` if missing);
    /// `new_fields` the fields after the write as `apply_write` computed them
    /// (`None` for a delete). `Set` and `Merge` are `update` when the
    /// document exists and `create` otherwise; `Create` is `create`,
    /// `Update` is `update`, `Delete` is `delete`.
    pub fn check_write(
        &self,
        p: &Principal,
        write: &Write,
        existing: Option<&Document>,
        new_fields: Option<&Map>,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        self.check_write_at(p, write, existing, new_fields, Timestamp::now(), lookup)
    }

    /// [`Self::check_write`] with an explicit `request.time`. Pass the same
    /// time given to `apply_write` to compute `new_fields`, so that a rule
    /// such as `request.resource.data.sent_at == request.time` accepts a
    /// server-timestamp transform, as in Firestore.
    pub fn check_write_at(
        &self,
        p: &Principal,
        write: &Write,
        existing: Option<&Document>,
        new_fields: Option<&Map>,
        time: Timestamp,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        let method = match (&write.kind, existing) {
            (WriteKind::Delete, _) => Method::Delete,
            (WriteKind::Create { .. }, _) => Method::Create,
            (WriteKind::Update { .. }, _) => Method::Update,
            (WriteKind::Set { .. } | WriteKind::Merge { .. }, Some(_)) => Method::Update,
            (WriteKind::Set { .. } | WriteKind::Merge { .. }, None) => Method::Create,
        };
        let new_fields = if method == Method::Delete {
            None
        } else {
            new_fields
        };
        self.check_at(p, method, &write.path, existing, new_fields, time, lookup)
    }

    /// Every write of one commit (a single write, a batch, a transaction's
    /// writes), in order, each against the state the earlier writes of the
    /// same commit leave: the one write check REST, the WebSocket gateway and
    /// (later) functions share. `load` reads a document's stored state (the
    /// transaction's snapshot, for transactions).
    ///
    /// **The rules decide before the write's own semantics.** A write that
    /// cannot apply (create over an existing document, update of a missing
    /// one, a failed precondition) is first checked as if it had no
    /// existence conditions (`create` as `set`, `update` as `merge`, no
    /// precondition); only when the rules allow that is its real error
    /// returned. So `already-exists`, `not-found` and `failed-precondition`
    /// never tell a caller anything about documents it may not write.
    pub fn authorize_writes(
        &self,
        p: &Principal,
        writes: &[Write],
        time: Timestamp,
        load: &mut dyn FnMut(&DocPath) -> Result<Option<Document>, String>,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), WriteRefusal> {
        if matches!(p, Principal::Admin) {
            return Ok(());
        }
        let mut staged: HashMap<&DocPath, Option<Document>> = HashMap::new();
        for write in writes {
            let existing = match staged.get(&write.path) {
                Some(doc) => doc.clone(),
                None => load(&write.path).map_err(|message| WriteRefusal::Load {
                    path: write.path.to_string(),
                    message,
                })?,
            };
            let new_fields = match apply_write(existing.as_ref(), write, time) {
                Ok(fields) => fields,
                Err(error) => {
                    let relaxed = without_existence_conditions(write);
                    if let Ok(fields) = apply_write(existing.as_ref(), &relaxed, time) {
                        self.check_write_at(
                            p,
                            &relaxed,
                            existing.as_ref(),
                            fields.as_ref(),
                            time,
                            lookup,
                        )?;
                    }
                    // Otherwise the write is invalid whatever is stored: its
                    // error reveals nothing about the document.
                    return Err(error.into());
                }
            };
            self.check_write_at(
                p,
                write,
                existing.as_ref(),
                new_fields.as_ref(),
                time,
                lookup,
            )?;
            let next = new_fields.map(|fields| Document {
                path: write.path.clone(),
                fields,
                create_time: existing.as_ref().map_or(time, |d| d.create_time),
                update_time: time,
                version: existing.as_ref().map_or(1, |d| d.version + 1),
            });
            staged.insert(&write.path, next);
        }
        Ok(())
    }

    /// The general form of the checks above, for callers that already know
    /// the method (the rules test runner, functions).
    pub fn check(
        &self,
        p: &Principal,
        method: Method,
        path: &DocPath,
        existing: Option<&Document>,
        new_fields: Option<&Map>,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        self.check_at(
            p,
            method,
            path,
            existing,
            new_fields,
            Timestamp::now(),
            lookup,
        )
    }

    /// [`Self::check`] with an explicit `request.time`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_at(
        &self,
        p: &Principal,
        method: Method,
        path: &DocPath,
        existing: Option<&Document>,
        new_fields: Option<&Map>,
        time: Timestamp,
        lookup: &dyn DocumentLookup,
    ) -> Result<(), AccessError> {
        if path.is_system() && !p.is_admin() {
            return Err(system_denied(&path.as_string()));
        }
        if p.is_admin() {
            return Ok(());
        }
        let req = RuleRequest {
            principal: p,
            method,
            path,
            resource: existing,
            new_data: new_fields,
            time,
        };
        let eval = self.ruleset().evaluate(&req, lookup);
        if eval.allowed {
            Ok(())
        } else {
            if !eval.errors.is_empty() {
                tracing::debug!(%method, %path, errors = ?eval.errors, "rule conditions failed with errors");
            }
            Err(AccessError::PermissionDenied(format!(
                "missing or insufficient permissions for {method} on {path}"
            )))
        }
    }
}

fn system_denied(path: &str) -> AccessError {
    AccessError::PermissionDenied(format!(
        "{path} is a system collection; only the admin can access it"
    ))
}

fn list_allowed(
    rules: &Ruleset,
    p: &Principal,
    doc: &Document,
    now: Timestamp,
    lookup: &dyn DocumentLookup,
) -> bool {
    if doc.path.is_system() {
        return false;
    }
    let req = RuleRequest {
        principal: p,
        method: Method::List,
        path: &doc.path,
        resource: Some(doc),
        new_data: None,
        time: now,
    };
    rules.evaluate(&req, lookup).allowed
}

/// The same write without conditions on the document's existence or
/// version: what the rules judge when the real write cannot apply.
fn without_existence_conditions(write: &Write) -> Write {
    let kind = match &write.kind {
        WriteKind::Create { data } => WriteKind::Set { data: data.clone() },
        WriteKind::Update { fields } => WriteKind::Merge {
            fields: fields.clone(),
        },
        other => other.clone(),
    };
    Write {
        path: write.path.clone(),
        kind,
        precondition: None,
        transforms: write.transforms.clone(),
    }
}
