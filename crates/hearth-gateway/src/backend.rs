//! The gateway's calls into the store and the rules, in one place.
//!
//! Everything the gateway needs from `hearth-store` and `hearth-rules` goes
//! through these few functions, so the rest of the crate reads as protocol
//! logic and the contract with the other crates is visible at a glance.

use std::sync::Arc;

use hearth_protocol::{DocPath, Document, ErrorBody, Query};
use hearth_rules::{AccessControl, AccessError, DocumentLookup, Principal};
use hearth_store::{ChangelogError, CommitRecord, Store, StoreError};

use crate::view::Target;

/// Rules read other documents (`get()`, `exists()`) through the store.
pub(crate) struct StoreLookup<'a>(pub &'a Store);

impl DocumentLookup for StoreLookup<'_> {
    fn get(&self, path: &DocPath) -> Option<Document> {
        self.0.get(path).ok().flatten()
    }
}

pub(crate) fn store_error(e: StoreError) -> ErrorBody {
    let code = e.code();
    let body = ErrorBody::new(code, e.to_string());
    match e {
        StoreError::MissingIndex { index, .. } => {
            body.with_details(serde_json::json!({ "missing_index": index.to_string() }))
        }
        _ => body,
    }
}

pub(crate) fn access_error(e: AccessError) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string())
}

pub(crate) fn changelog_error(e: ChangelogError) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string())
}

/// Whether `p` may receive `doc` on a subscription to `target`.
pub(crate) fn readable(
    store: &Store,
    access: &AccessControl,
    p: &Principal,
    target: &Target,
    doc: &Document,
) -> bool {
    if p.is_admin() {
        return true;
    }
    let lookup = StoreLookup(store);
    match target {
        Target::Doc(path) => access.check_get(p, path, Some(doc), &lookup).is_ok(),
        Target::Query { .. } => access.can_read_doc(p, doc, &lookup),
    }
}

/// Checks that `p` may subscribe to `target` at all (before any data is read).
pub(crate) fn check_subscribe(
    store: &Store,
    access: &AccessControl,
    p: &Principal,
    target: &Target,
) -> Result<(), ErrorBody> {
    let lookup = StoreLookup(store);
    match target {
        Target::Doc(path) => {
            let existing = store.get(path).map_err(store_error)?;
            access
                .check_get(p, path, existing.as_ref(), &lookup)
                .map_err(access_error)
        }
        Target::Query { query, .. } => access.check_list(p, query, &lookup).map_err(access_error),
    }
}

/// A target's result: the changelog position it reflects and the documents.
pub(crate) type Snapshot = (u64, Vec<Arc<Document>>);

/// The target's full result now, unfiltered by access, with the changelog
/// position it reflects.
pub(crate) fn run_target(store: &Store, target: &Target) -> Result<Snapshot, ErrorBody> {
    match target {
        Target::Query { query, .. } => run_query(store, query),
        Target::Doc(path) => {
            // A point read does not report its position: read the head around
            // it and retry until it did not move. `get_many` reads under the
            // store's read lock, so it sees whole commits.
            let changelog = store.changelog();
            let mut last = None;
            for _ in 0..8 {
                let before = changelog.head();
                let doc = store
                    .get_many(std::slice::from_ref(path))
                    .map_err(store_error)?
                    .pop()
                    .flatten();
                let after = changelog.head();
                last = Some((after, doc));
                if before == after {
                    break;
                }
            }
            let (seq, doc) = last.unwrap_or((0, None));
            Ok((seq, doc.map(Arc::new).into_iter().collect()))
        }
    }
}

pub(crate) fn run_query(store: &Store, query: &Query) -> Result<Snapshot, ErrorBody> {
    let result = store.query(query).map_err(store_error)?;
    Ok((
        result.read_seq,
        result.documents.into_iter().map(Arc::new).collect(),
    ))
}

/// Commits in (after, upto], at most `max` of them; `Ok(None)` when there
/// are more than `max`.
pub(crate) fn commits_between(
    store: &Store,
    after: u64,
    upto: u64,
    max: usize,
) -> Result<Option<Vec<Arc<CommitRecord>>>, ChangelogError> {
    let changelog = store.changelog();
    let mut out: Vec<Arc<CommitRecord>> = Vec::new();
    let mut pos = after;
    while pos < upto {
        let batch = changelog.read_from(pos, 256)?;
        if batch.is_empty() {
            break;
        }
        for rec in batch {
            if rec.seq > upto {
                return Ok(Some(out));
            }
            pos = rec.seq;
            out.push(rec);
            if out.len() > max {
                return Ok(None);
            }
        }
    }
    Ok(Some(out))
}
