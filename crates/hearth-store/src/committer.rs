//! The committer: the one thread that mutates the store.
//!
//! It owns sequence assignment. Each round it drains every pending request
//! (up to [`MAX_GROUP`]), validates each in order against the current state
//! plus an in-group overlay (so later commits in the group see earlier ones),
//! applies the writes with `hearth_protocol::apply_write`, and stages the
//! documents, membership keys, index entry differences and the changelog
//! record of every successful commit into ONE engine batch together with the
//! new head sequence. The batch is applied atomically, flushed once (strict
//! durability), the records are published on the live broadcast, and only
//! then is each request acknowledged.
//!
//! Sequence numbers are gap-free: a commit that fails validation gets an
//! error and consumes no number; if the engine rejects the batch, every
//! request of the group gets `Internal` and the sequence rolls back.
//!
//! A failed flush stops the store (fail-stop): the writers of that group
//! get `Internal`, their on-durable hooks do not run, and every later commit
//! is refused with `Unavailable` until a restart, because after a failed
//! fsync no later flush proves the earlier data durable (see the crate docs).
//! Background work that writes (index builds, pruning) stops with it.
//!
//! Between groups the committer also runs the background work that must be
//! serialized with commits: composite index builds (in chunks, so commits
//! interleave), changelog retention pruning and, in relaxed mode, the
//! periodic flush.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use hearth_protocol::document::validate_fields;
use hearth_protocol::{
    apply_write, CommitResult, DocPath, Document, Query, Timestamp, Write, WriteResult,
};
use tokio::sync::oneshot;

use crate::codec;
use crate::config::Durability;
use crate::engine::{EngineError, WriteBatch};
use crate::index::IndexState;
use crate::keys;
use crate::planner;
use crate::{Change, ChangeKind, CommitRecord, Shared, StoreError};

/// Most requests folded into one group (one batch, one flush).
pub const MAX_GROUP: usize = 1024;
/// Documents indexed per background build step.
const BUILD_CHUNK: usize = 500;
/// Changelog records deleted per pruning step.
const PRUNE_CHUNK: u64 = 10_000;
const PRUNE_EVERY: Duration = Duration::from_millis(200);

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What a transaction read, validated at commit.
#[derive(Debug, Default, Clone)]
pub(crate) struct TxReads {
    pub docs: Vec<(DocPath, Option<u64>)>,
    pub queries: Vec<(Query, Vec<(DocPath, u64)>)>,
}

/// A document's (path, state before, state after) within one commit.
type DocChange = (DocPath, Option<Document>, Option<Document>);

pub(crate) enum Op {
    Write(Write),
    /// Import: store this document as is (create and update time kept).
    Put(Document),
}

impl Op {
    fn path(&self) -> &DocPath {
        match self {
            Op::Write(w) => &w.path,
            Op::Put(d) => &d.path,
        }
    }
}

/// Called on the committer's thread once a commit is durable and before
/// the changelog's live subscribers can see it (see `Store::commit_with`).
pub type OnDurable = Box<dyn FnOnce(&CommitResult) + Send>;

pub(crate) enum Request {
    Commit {
        ops: Vec<Op>,
        reads: Option<TxReads>,
        reply: Reply<CommitResult>,
        on_durable: Option<OnDurable>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

struct Pending {
    reply: Reply<CommitResult>,
    on_durable: Option<OnDurable>,
    result: CommitResult,
    record: Arc<CommitRecord>,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    seq: u64,
    last_time: Timestamp,
    group_time: Option<Timestamp>,
    batch: WriteBatch,
    overlay: HashMap<DocPath, Option<Document>>,
    pending: Vec<Pending>,
    dirty: bool,
    last_flush: Instant,
    last_prune: Instant,
}

impl Committer {
    pub fn new(shared: Arc<Shared>, rx: Receiver<Request>) -> Committer {
        let seq = shared.head.load(AtomicOrdering::SeqCst);
        Committer {
            shared,
            rx,
            seq,
            last_time: Timestamp(0),
            group_time: None,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            pending: Vec::new(),
            dirty: false,
            last_flush: Instant::now(),
            last_prune: Instant::now() - PRUNE_EVERY,
        }
    }

    fn strict(&self) -> bool {
        self.shared.config.durability == Durability::Strict
    }

    pub fn run(mut self) {
        loop {
            let building = self.build_pending();
            let tick = if building {
                Duration::from_millis(0)
            } else {
                match self.shared.config.durability {
                    Durability::Strict => PRUNE_EVERY,
                    Durability::Relaxed { flush_interval } => flush_interval.min(PRUNE_EVERY),
                }
            };
            match self.rx.recv_timeout(tick) {
                Ok(first) => {
                    let mut requests = vec![first];
                    while requests.len() < MAX_GROUP {
                        match self.rx.try_recv() {
                            Ok(r) => requests.push(r),
                            Err(_) => break,
                        }
                    }
                    let mut shutdown = None;
                    for r in requests {
                        match r {
                            Request::Commit { reply, .. } if shutdown.is_some() => {
                                let _ = reply.send(Err(StoreError::Unavailable(
                                    "the store is shutting down".into(),
                                )));
                            }
                            Request::Commit {
                                ops,
                                reads,
                                reply,
                                on_durable,
                            } => self.handle(ops, reads, reply, on_durable),
                            Request::Shutdown { reply } => shutdown = Some(reply),
                        }
                    }
                    self.finish_group();
                    if let Some(reply) = shutdown {
                        while let Ok(r) = self.rx.try_recv() {
                            if let Request::Commit { reply, .. } = r {
                                let _ = reply.send(Err(StoreError::Unavailable(
                                    "the store is shutting down".into(),
                                )));
                            }
                        }
                        self.final_flush();
                        let _ = reply.send(());
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish_group();
                    self.final_flush();
                    return;
                }
            }
            self.maintenance();
        }
    }

    /// The store's fail-stop: records why every later commit is refused,
    /// and says so once in the log.
    fn fail_stop(&self, after: &str, e: &EngineError) {
        let message = format!(
            "storage failed to sync ({after}: {e}); the store refuses every write until \
             the server is restarted (the next start recovers the data from the write-ahead log)"
        );
        if self.shared.storage_failure.set(message).is_ok() {
            tracing::error!(
                error = %e,
                head = self.seq,
                "storage failed to sync; refusing every write until the server is restarted"
            );
        }
    }

    fn failed(&self) -> Option<&String> {
        self.shared.storage_failure.get()
    }

    fn final_flush(&mut self) {
        if let Err(e) = self.shared.engine.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        self.dirty = false;
    }

    fn current(&self, path: &DocPath) -> Result<Option<Document>, StoreError> {
        match self.overlay.get(path) {
            Some(d) => Ok(d.clone()),
            None => planner::load(self.shared.engine.as_ref(), path),
        }
    }

    fn handle(
        &mut self,
        ops: Vec<Op>,
        reads: Option<TxReads>,
        reply: Reply<CommitResult>,
        on_durable: Option<OnDurable>,
    ) {
        // Query reads are re-run against the engine, so the group so far must be applied first.
        if reads.as_ref().is_some_and(|r| !r.queries.is_empty()) && !self.pending.is_empty() {
            self.finish_group();
        }
        if let Some(failure) = self.failed() {
            let _ = reply.send(Err(StoreError::Unavailable(failure.clone())));
            return;
        }
        let commit_time = match self.group_time {
            Some(t) => t,
            None => {
                let now = Timestamp::now();
                let t = if now.0 > self.last_time.0 {
                    now
                } else {
                    Timestamp(self.last_time.0 + 1)
                };
                self.last_time = t;
                self.group_time = Some(t);
                t
            }
        };
        match self.prepare(&ops, reads.as_ref(), commit_time) {
            Ok(states) => self.stage(states, commit_time, reply, on_durable),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn validate_reads(&self, reads: &TxReads) -> Result<(), StoreError> {
        for (path, seen) in &reads.docs {
            let now = self.current(path)?.map(|d| d.version);
            if now != *seen {
                return Err(conflict(path));
            }
        }
        if reads.queries.is_empty() {
            return Ok(());
        }
        let indexes = self.shared.indexes.read();
        let ctx = planner::Ctx {
            engine: self.shared.engine.as_ref(),
            indexes: &indexes.composites,
            exemptions: &indexes.exemptions,
            allow_scans: self.shared.config.indexes.allow_scans,
        };
        for (query, seen) in &reads.queries {
            let now: Vec<(DocPath, u64)> = planner::execute(&ctx, query)?
                .into_iter()
                .map(|d| (d.path, d.version))
                .collect();
            if now != *seen {
                let changed = now
                    .iter()
                    .zip(seen.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, _)| a.0.clone())
                    .or_else(|| {
                        if now.len() > seen.len() {
                            now.get(seen.len()).map(|x| x.0.clone())
                        } else {
                            seen.get(now.len()).map(|x| x.0.clone())
                        }
                    });
                return Err(match changed {
                    Some(p) => conflict(&p),
                    None => StoreError::Aborted(
                        "transaction conflict: a query's results changed since it was read; retry"
                            .into(),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Validates one commit and computes the (path, old, new) states.
    fn prepare(
        &self,
        ops: &[Op],
        reads: Option<&TxReads>,
        commit_time: Timestamp,
    ) -> Result<Vec<DocChange>, StoreError> {
        if let Some(reads) = reads {
            self.validate_reads(reads)?;
        }
        let seq = self.seq + 1;
        let mut states = Vec::with_capacity(ops.len());
        for op in ops {
            let old = self.current(op.path())?;
            let new = match op {
                Op::Write(w) => apply_write(old.as_ref(), w, commit_time)?.map(|fields| Document {
                    path: w.path.clone(),
                    fields,
                    create_time: old.as_ref().map(|d| d.create_time).unwrap_or(commit_time),
                    update_time: commit_time,
                    version: seq,
                }),
                Op::Put(doc) => {
                    validate_fields(&doc.path, &doc.fields).map_err(StoreError::InvalidArgument)?;
                    Some(Document {
                        version: seq,
                        ..doc.clone()
                    })
                }
            };
            states.push((op.path().clone(), old, new));
        }
        Ok(states)
    }

    fn stage(
        &mut self,
        states: Vec<DocChange>,
        commit_time: Timestamp,
        reply: Reply<CommitResult>,
        on_durable: Option<OnDurable>,
    ) {
        let seq = self.seq + 1;
        let indexes = self.shared.indexes.read();
        let mut changes = Vec::with_capacity(states.len());
        let mut results = Vec::with_capacity(states.len());
        for (path, old, new) in states {
            results.push(WriteResult {
                path: path.clone(),
                version: new.as_ref().map(|d| d.version),
                update_time: commit_time,
            });
            let doc_key = keys::doc_key(&path);
            match &new {
                Some(doc) => self.batch.put(doc_key, codec::encode_document(doc)),
                None if old.is_some() => self.batch.delete(doc_key),
                None => {}
            }
            match (&old, &new) {
                (None, Some(_)) => {
                    let pv = keys::path_value(&path);
                    self.batch.put(keys::member_key(&path), pv.clone());
                    self.batch.put(keys::group_key(&path), pv);
                }
                (Some(_), None) => {
                    self.batch.delete(keys::member_key(&path));
                    self.batch.delete(keys::group_key(&path));
                }
                _ => {}
            }
            let old_entries = old.as_ref().map(|d| indexes.entries(d)).unwrap_or_default();
            let new_entries: BTreeSet<Vec<u8>> =
                new.as_ref().map(|d| indexes.entries(d)).unwrap_or_default();
            for k in old_entries.difference(&new_entries) {
                self.batch.delete(k.clone());
            }
            if !new_entries.is_empty() {
                let pv = keys::path_value(&path);
                for k in new_entries.difference(&old_entries) {
                    self.batch.put(k.clone(), pv.clone());
                }
            }
            let kind = match (&old, &new) {
                (None, Some(_)) => Some(ChangeKind::Created),
                (Some(_), Some(_)) => Some(ChangeKind::Updated),
                (Some(_), None) => Some(ChangeKind::Deleted),
                (None, None) => None,
            };
            self.overlay.insert(path.clone(), new.clone());
            if let Some(kind) = kind {
                changes.push(Change {
                    path,
                    kind,
                    old,
                    new,
                });
            }
        }
        drop(indexes);
        let record = CommitRecord {
            seq,
            commit_time,
            changes,
        };
        self.batch
            .put(keys::log_key(seq), codec::encode_record(&record));
        self.seq = seq;
        self.pending.push(Pending {
            reply,
            on_durable,
            result: CommitResult {
                seq,
                commit_time,
                results,
            },
            record: Arc::new(record),
        });
    }

    /// Applies the staged group atomically, flushes (strict), publishes, acknowledges.
    fn finish_group(&mut self) {
        self.group_time = None;
        if self.pending.is_empty() {
            self.batch = WriteBatch::default();
            self.overlay.clear();
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.put(keys::META_HEAD.to_vec(), keys::u64_value(self.seq));
        self.overlay.clear();
        let applied = {
            let _guard = self.shared.apply_lock.write();
            let r = self.shared.engine.apply(batch);
            if r.is_ok() {
                self.shared.head.store(self.seq, AtomicOrdering::SeqCst);
            }
            r
        };
        if let Err(e) = applied {
            tracing::error!(error = %e, "commit group failed to apply; rolling back its sequence numbers");
            self.seq = self.shared.head.load(AtomicOrdering::SeqCst);
            for p in self.pending.drain(..) {
                let _ = p
                    .reply
                    .send(Err(StoreError::Internal(format!("commit failed: {e}"))));
            }
            return;
        }
        let mut flush_error = None;
        if self.strict() {
            if let Err(e) = self.shared.engine.flush() {
                self.fail_stop(&format!("the flush of commit {}", self.seq), &e);
                flush_error = Some(e);
            }
            self.last_flush = Instant::now();
        } else {
            self.dirty = true;
        }
        for p in self.pending.drain(..) {
            if flush_error.is_none() {
                if let Some(announce) = p.on_durable {
                    // A caller's hook must not take the committer down.
                    let result = &p.result;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| announce(result)))
                        .is_err()
                    {
                        tracing::error!(seq = result.seq, "an on-durable hook panicked");
                    }
                }
            }
            let _ = self.shared.live.send(p.record);
            let _ = p.reply.send(match &flush_error {
                None => Ok(p.result),
                // Applied and visible, but not known to be durable: never Ok.
                Some(e) => Err(StoreError::Internal(format!(
                    "commit {} applied but the flush failed: {e}; it is not known to be \
                     durable, and the store refuses writes until the server is restarted",
                    p.result.seq
                ))),
            });
        }
    }

    fn maintenance(&mut self) {
        if self.failed().is_some() {
            // Fail-stop: nothing more is written until a restart.
            return;
        }
        if let Durability::Relaxed { flush_interval } = self.shared.config.durability {
            if self.dirty && self.last_flush.elapsed() >= flush_interval {
                if let Err(e) = self.shared.engine.flush() {
                    self.fail_stop(&format!("the periodic flush up to commit {}", self.seq), &e);
                }
                self.dirty = false;
                self.last_flush = Instant::now();
            }
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            if let Err(e) = self.prune() {
                tracing::warn!(error = %e, "changelog pruning failed");
            }
        }
        self.build_step();
    }

    fn build_pending(&self) -> bool {
        // A failed store builds nothing (and must not spin waiting to).
        self.failed().is_none()
            && self
                .shared
                .indexes
                .read()
                .composites
                .iter()
                .any(|d| matches!(d.state, IndexState::Building { .. }))
    }

    /// Indexes the next chunk of documents for the first index being built.
    fn build_step(&mut self) {
        let def = {
            let set = self.shared.indexes.read();
            match set
                .composites
                .iter()
                .position(|d| matches!(d.state, IndexState::Building { .. }))
            {
                Some(i) => (i, set.composites[i].clone()),
                None => return,
            }
        };
        let (i, mut def) = def;
        let result = (|| -> Result<(), StoreError> {
            let prefix = keys::group_prefix(&def.index.collection_group);
            let upper = match codec::prefix_end(&prefix) {
                Some(u) => Bound::Excluded(u),
                None => Bound::Unbounded,
            };
            let (mut done, mut total) = match def.state {
                IndexState::Building { done, total } => (done, total),
                _ => (0, 0),
            };
            if def.resume_after.is_none() && done == 0 {
                total = 0;
                for e in
                    self.shared
                        .engine
                        .scan(Bound::Included(prefix.clone()), upper.clone(), false)
                {
                    e?;
                    total += 1;
                }
            }
            let lower = match &def.resume_after {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Included(prefix.clone()),
            };
            let mut batch = WriteBatch::default();
            let mut last = None;
            let mut n = 0;
            for e in self
                .shared
                .engine
                .scan(lower, upper, false)
                .take(BUILD_CHUNK)
            {
                let (k, v) = e?;
                n += 1;
                if let Some(path) = codec::decode_doc_path(&v) {
                    if let Some(doc) = planner::load(self.shared.engine.as_ref(), &path)? {
                        let mut entries = BTreeSet::new();
                        def.entries(&doc, &mut entries);
                        let pv = keys::path_value(&path);
                        for key in entries {
                            batch.put(key, pv.clone());
                        }
                    }
                }
                last = Some(k);
            }
            done += n as u64;
            let finished = n < BUILD_CHUNK;
            let mut state_value = Vec::new();
            if finished {
                state_value.push(b'r');
                def.state = IndexState::Ready;
            } else {
                state_value.push(b'b');
                state_value.extend_from_slice(&done.to_be_bytes());
                state_value.extend_from_slice(&total.max(done).to_be_bytes());
                if let Some(k) = &last {
                    state_value.extend_from_slice(k);
                }
                def.state = IndexState::Building {
                    done,
                    total: total.max(done),
                };
                def.resume_after = last;
            }
            batch.put(keys::index_state_key(&def.id), state_value);
            {
                let _guard = self.shared.apply_lock.write();
                self.shared.engine.apply(batch)?;
            }
            if finished {
                tracing::info!(index = %def.index.canonical(), documents = done, "composite index ready");
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(index = %def.index.canonical(), error = %e, "index build failed");
            def.state = IndexState::Failed(e.to_string());
        }
        let mut set = self.shared.indexes.write();
        if let Some(slot) = set.composites.get_mut(i) {
            *slot = def;
        }
    }

    /// Drops changelog records beyond the retention limits.
    fn prune(&mut self) -> Result<(), StoreError> {
        let retention = &self.shared.config.retention;
        let head = self.seq;
        let oldest = self.shared.oldest.load(AtomicOrdering::SeqCst);
        let mut target = oldest;
        if let Some(max) = retention.max_commits.filter(|m| *m > 0) {
            if head >= max {
                target = target.max(head - max + 1);
            }
        }
        target = target.min(oldest + PRUNE_CHUNK).min(head + 1);
        if let Some(max_age) = retention.max_age {
            let cutoff = Timestamp::now()
                .0
                .saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
            let limit = (oldest + PRUNE_CHUNK).min(head + 1);
            if target < limit {
                for e in self.shared.engine.scan(
                    Bound::Included(keys::log_key(target)),
                    Bound::Excluded(keys::log_key(limit)),
                    false,
                ) {
                    let (k, v) = e?;
                    let seq = keys::read_u64(&k[1..]).unwrap_or(0);
                    let time = v
                        .get(8..16)
                        .and_then(keys::read_u64)
                        .map(|t| t as i64)
                        .unwrap_or(i64::MAX);
                    if time < cutoff {
                        target = seq + 1;
                    } else {
                        break;
                    }
                }
            }
        }
        if target <= oldest {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for seq in oldest..target {
            batch.delete(keys::log_key(seq));
        }
        batch.put(keys::META_OLDEST.to_vec(), keys::u64_value(target));
        {
            let _guard = self.shared.apply_lock.write();
            self.shared.engine.apply(batch)?;
            self.shared.oldest.store(target, AtomicOrdering::SeqCst);
        }
        tracing::debug!(oldest = target, "changelog pruned");
        Ok(())
    }
}

fn conflict(path: &DocPath) -> StoreError {
    StoreError::Aborted(format!(
        "transaction conflict: {path} changed since it was read; retry"
    ))
}
