//! # hearth-store
//!
//! Hearth's document store: documents at slash paths, automatic single-field
//! and declared composite indexes, a query planner, optimistic transactions,
//! and the **changelog** every other service consumes. It knows nothing of
//! HTTP, auth or rules.
//!
//! ## Layers
//! * [`engine`]: the [`Engine`] trait (ordered byte KV, atomic batches, durable
//!   flush) and its sled implementation. Nothing above it knows about sled.
//! * [`WalEngine`]: a write-ahead log in front of the engine (in
//!   `<data>/wal/`): a durable commit costs one `fdatasync` of an appended
//!   record; the engine itself is flushed by background checkpoints and the
//!   log is replayed at open.
//! * [`keys`] / [`codec`]: the key layout and the order-preserving encodings
//!   (see those modules for the exact bytes).
//! * `committer`: the single thread that assigns sequence numbers and writes
//!   data, index entries and the changelog record of each commit in one
//!   atomic batch (group commit: one batch and one flush per round).
//! * `planner`: turns a [`Query`] into index range scans.
//! * [`changelog`]: read and subscribe to commits.
//! * [`system`]: ids of the system collections (`__users__`, …), which are
//!   ordinary documents going through the same commit path.
//!
//! ## Consistency
//! Readers (`query`, `get_many`, `list`, `backup_to`) hold a shared lock that
//! the committer takes exclusively only while it applies a batch in memory
//! (never across the fsync), so a read sees whole commits and reports the
//! `read_seq` it reflects. In strict mode a commit can become visible to
//! readers a moment before its fsync completes and it is acknowledged.
//!
//! ## Fail-stop after a failed flush
//! When the engine's flush (the fsync) fails, the store cannot tell what
//! reached the disk: Linux may already have dropped the dirty pages and
//! report the next fsync as a success ("fsyncgate", which made PostgreSQL
//! panic on a failed fsync). So the committer never retries its way past
//! one: the writers of that group get an error, and from then on the store
//! is *failed* ([`Store::storage_failure`]): every commit is refused with
//! `Unavailable` until the process restarts and recovers from what is on
//! disk (the write-ahead log). Reads continue. Relaxed mode's periodic
//! flush fails the store the same way.
//!
//! ## Operations
//! [`Store::check_consistency`] re-derives every index and membership key
//! from the documents and checks the changelog for gaps (used by crash tests);
//! [`Store::open_with_engine`] runs the store over any [`Engine`].
//!
//! ## Backup and restore
//! [`Store::backup_to`] copies every key into a fresh sled database in `dir`
//! while commits are paused (reads continue), then flushes it. The result is
//! a complete data directory: restore by opening it (or a copy of it) with
//! `StoreConfig::new(dir)`. Backing up a large store pauses writes for the
//! duration of the copy.

pub mod changelog;
pub mod codec;
mod committer;
pub mod config;
pub mod engine;
mod error;
pub mod index;
pub mod keys;
mod planner;
mod store;
pub mod system;
pub mod wal;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hearth_protocol::{DocPath, Document, Query, Timestamp, Value};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use changelog::{ChangeStream, Changelog};
pub use config::{
    CompositeIndex, Durability, IndexConfig, IndexExemption, IndexField, IndexMode, IndexScope,
    Retention, StoreConfig,
};
pub use engine::{Engine, EngineError, FaultyEngine, SledEngine};
pub use error::{ChangelogError, StoreError};
pub use index::{IndexState, IndexStatus};
pub use planner::MAX_BRANCHES;
pub use store::{
    contention_backoff, ConsistencyReport, OnDurable, Store, Transaction, MAX_OPS_PER_COMMIT,
    MAX_PAGE_SIZE,
};
pub use wal::{WalEngine, WalRecovery};

/// One committed commit: what the changelog stores and subscribers receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub seq: u64,
    pub commit_time: Timestamp,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: DocPath,
    pub kind: ChangeKind,
    pub old: Option<Document>,
    pub new: Option<Document>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub documents: Vec<Document>,
    /// The changelog position the result reflects: resume a subscription after it.
    pub read_seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregateResult {
    pub values: BTreeMap<String, Value>,
    pub read_seq: u64,
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub documents: Vec<Document>,
    /// Pass it back to get the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The changelog head the snapshot reflects.
    pub seq: u64,
    pub documents: u64,
    pub keys: u64,
}

/// State shared by the store handles, the committer and changelog readers.
pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    pub apply_lock: RwLock<()>,
    pub head: AtomicU64,
    pub oldest: AtomicU64,
    pub live: tokio::sync::broadcast::Sender<Arc<CommitRecord>>,
    pub indexes: RwLock<index::IndexSet>,
    pub config: StoreConfig,
    /// Set once, by the committer, when a flush fails: from then on every
    /// commit is refused (see `Store::storage_failure`).
    pub storage_failure: std::sync::OnceLock<String>,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync + Clone>() {}
    is::<Store>();
    is::<Changelog>();
    fn stream<T: futures::Stream + Unpin + Send>() {}
    stream::<ChangeStream>();
    let _ = std::mem::size_of::<Query>();
}
