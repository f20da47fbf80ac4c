//! # hearth-rules
//!
//! Security rules for Hearth: a rules language close to Firestore Security
//! Rules (so a Firebase project can bring its `firestore.rules`), the rules
//! file with hot reload, the [`Principal`] making a request, and
//! [`AccessControl`], the one check that every path into the data calls
//! (REST, WebSocket subscriptions and deliveries, writes, batches,
//! transactions, functions).
//!
//! ```text
//! rules_version = '2';                       // optional
//! service cloud.firestore {                  // optional wrapper
//!   match /databases/{database}/documents {  // optional wrapper
//!     function isMember(roomId) {
//!       let room = get(/databases/$(database)/documents/rooms/$(roomId));
//!       return request.auth.uid in room.data.members;
//!     }
//!     match /rooms/{roomId} {
//!       allow read: if isMember(roomId);
//!       match /messages/{messageId} {
//!         allow read: if isMember(roomId);
//!         allow create: if isMember(roomId)
//!                       && request.resource.data.author == request.auth.uid;
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! Module map:
//! - `parser` (with `ast`): text → tree, errors with line and column;
//!   nesting and size are bounded.
//! - `checker`: unknown variables and functions, wrong arities and
//!   recursion are load-time errors with line and column.
//! - `eval`: values, operators, methods and builtins; errors deny;
//!   `get()`/`exists()`, call depth and total work are bounded.
//! - [`Ruleset`]: `match` resolution and the allow/deny decision.
//! - [`AccessControl`]: system collections, admin bypass, the query policy
//!   (filter per document; see the `access` module docs), hot swap.
//! - [`RulesFile`]: loading (missing file → deny all) and hot reload.
//! - [`run_rule_tests`]: the `hearth rules test` runner and its TOML format.
//!
//! Invariant: this crate does no I/O except reading the rules and test
//! files; documents come in through [`DocumentLookup`], which the server
//! implements over the store.

mod access;
mod ast;
mod checker;
mod error;
mod eval;
mod file;
mod parser;
mod ruleset;
mod testing;

pub mod bench_support;

use std::collections::BTreeMap;

use hearth_protocol::{DocPath, Document};

pub use access::AccessControl;
pub use ast::Method;
pub use error::{AccessError, RulesError, WriteRefusal};
pub use eval::{MAX_CALL_DEPTH, MAX_DOC_LOOKUPS, MAX_EVAL_DEPTH, MAX_STEPS};
pub use file::{RulesFile, DEFAULT_POLL_INTERVAL};
pub use parser::{MAX_EXPR_DEPTH, MAX_RULES_BYTES};
pub use ruleset::{Evaluation, Principal, RuleRequest, Ruleset};
pub use testing::{run_rule_test_files, run_rule_tests, TestReport, TestResult};

/// How rules read other documents (`get()`, `exists()`). The server
/// implements it over the store (whose `get` is synchronous); an error
/// reading the store should be answered with `None`, which denies any rule
/// that needed the document.
pub trait DocumentLookup {
    fn get(&self, path: &DocPath) -> Option<Document>;
}

impl<F: Fn(&DocPath) -> Option<Document>> DocumentLookup for F {
    fn get(&self, path: &DocPath) -> Option<Document> {
        self(path)
    }
}

/// A lookup with no documents: every `get()` is null.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDocuments;

impl DocumentLookup for NoDocuments {
    fn get(&self, _path: &DocPath) -> Option<Document> {
        None
    }
}

/// Documents held in memory: the rules test runner's world, and handy in
/// other crates' tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryLookup {
    docs: BTreeMap<DocPath, Document>,
}

impl MemoryLookup {
    pub fn new() -> MemoryLookup {
        MemoryLookup::default()
    }

    pub fn insert(&mut self, doc: Document) {
        self.docs.insert(doc.path.clone(), doc);
    }

    pub fn remove(&mut self, path: &DocPath) -> Option<Document> {
        self.docs.remove(path)
    }
}

impl DocumentLookup for MemoryLookup {
    fn get(&self, path: &DocPath) -> Option<Document> {
        self.docs.get(path).cloned()
    }
}
