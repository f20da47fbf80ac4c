//! [`Store`]: the public handle, and optimistic [`Transaction`]s.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use hearth_protocol::query::Aggregator;
use hearth_protocol::write::MAX_WRITES_PER_COMMIT;
use hearth_protocol::{
    AggregateQuery, CollectionPath, CommitResult, DocPath, Document, Query, Write,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::codec;
pub use crate::committer::OnDurable;
use crate::committer::{Committer, Op, Request, TxReads};
use crate::engine::{Engine, SledEngine, WriteBatch};
use crate::index::{IndexDef, IndexSet, IndexState, IndexStatus};
use crate::keys;
use crate::planner;
use crate::wal::WalEngine;
use crate::{
    AggregateResult, BackupInfo, Changelog, Page, QueryResult, Shared, StoreConfig, StoreError,
};

/// Capacity of the live changelog broadcast; slower subscribers fall back to disk.
const LIVE_CAPACITY: usize = 4096;
/// Documents per commit when importing.
const IMPORT_CHUNK: usize = 500;
/// Largest page `list` returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most writes one commit takes: a client's [`MAX_WRITES_PER_COMMIT`] plus
/// one bookkeeping record a service commits with them (the gateway's
/// mutation record), so that a socket `write` holds as many writes as a
/// REST batch. Services check the client's share themselves.
pub const MAX_OPS_PER_COMMIT: usize = MAX_WRITES_PER_COMMIT + 1;

/// A handle on an open store; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.shared.config.data_dir)
            .field("head_seq", &self.head_seq())
            .finish()
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Request>>>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel makes the committer finish its group, flush and exit;
        // joining releases the engine's file lock before `open` can run again.
        self.tx.lock().take();
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }
}

fn read_meta_u64(engine: &dyn Engine, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(engine.get(key)?.as_deref().and_then(keys::read_u64))
}

/// The wait before retry `attempt` (1, 2, …) of a commit that lost an
/// optimistic-concurrency race: about `attempt` milliseconds plus up to one
/// millisecond of jitter, so that contenders spread out.
pub async fn contention_backoff(attempt: u32) {
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    ) % 1000;
    let micros = u64::from(attempt) * 1000 + jitter;
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir` and starts its committer.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        for idx in &config.indexes.composite {
            idx.validate().map_err(StoreError::InvalidArgument)?;
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::Internal(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let sled: Arc<dyn Engine> = Arc::new(SledEngine::open(
            &config.data_dir,
            config.cache_capacity_bytes,
        )?);
        let (wal, recovery) = WalEngine::open(&config.data_dir.join("wal"), sled)?;
        if recovery.batches > 0 {
            tracing::info!(
                segments = recovery.segments,
                batches = recovery.batches,
                truncated_bytes = recovery.truncated_bytes,
                "replayed the write-ahead log"
            );
        }
        Store::open_with_engine(config, Arc::new(wal))
    }

    /// Opens the store over any [`Engine`] (`config.data_dir` is then unused
    /// except for logging). This is how another engine plugs in.
    pub fn open_with_engine(
        config: StoreConfig,
        engine: Arc<dyn Engine>,
    ) -> Result<Store, StoreError> {
        for idx in &config.indexes.composite {
            idx.validate().map_err(StoreError::InvalidArgument)?;
        }
        let head = read_meta_u64(engine.as_ref(), keys::META_HEAD)?.unwrap_or(0);
        let oldest = read_meta_u64(engine.as_ref(), keys::META_OLDEST)?.unwrap_or(1);
        let mut composites = Vec::new();
        let mut seen = HashSet::new();
        for idx in &config.indexes.composite {
            if !seen.insert(idx.canonical()) {
                continue;
            }
            let mut def = IndexDef::new(idx.clone());
            if let Some(state) = engine.get(&keys::index_state_key(&def.id))? {
                match state.first() {
                    Some(b'r') => def.state = IndexState::Ready,
                    Some(b'b') if state.len() >= 17 => {
                        let done = keys::read_u64(&state[1..9]).unwrap_or(0);
                        let total = keys::read_u64(&state[9..17]).unwrap_or(0);
                        def.state = IndexState::Building { done, total };
                        def.resume_after = Some(state[17..].to_vec()).filter(|k| !k.is_empty());
                    }
                    _ => {}
                }
            }
            composites.push(def);
        }
        let (live, _) = tokio::sync::broadcast::channel(LIVE_CAPACITY);
        let shared = Arc::new(Shared {
            engine,
            apply_lock: RwLock::new(()),
            head: AtomicU64::new(head),
            oldest: AtomicU64::new(oldest),
            live,
            indexes: RwLock::new(IndexSet {
                composites,
                exemptions: config.indexes.exemptions.clone(),
            }),
            config,
            storage_failure: std::sync::OnceLock::new(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let committer = Committer::new(shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("hearth-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| StoreError::Internal(format!("cannot start the committer: {e}")))?;
        tracing::info!(head, oldest, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx: Mutex::new(Some(tx)),
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub fn config(&self) -> &StoreConfig {
        &self.shared().config
    }

    /// The last committed sequence number.
    pub fn head_seq(&self) -> u64 {
        self.shared().head.load(AtomicOrdering::SeqCst)
    }

    /// Why the store refuses every commit, once a flush (fsync) failed:
    /// the message of the `Unavailable` error those commits get. `None`
    /// while the store is healthy. Only a restart clears it (see the crate
    /// docs, "Fail-stop after a failed flush").
    pub fn storage_failure(&self) -> Option<String> {
        self.shared().storage_failure.get().cloned()
    }

    fn check_writes(writes: &[Write], allow_empty: bool) -> Result<(), StoreError> {
        if (writes.is_empty() && !allow_empty) || writes.len() > MAX_OPS_PER_COMMIT {
            return Err(StoreError::InvalidArgument(format!(
                "a commit takes 1 to {MAX_WRITES_PER_COMMIT} writes (plus one bookkeeping \
                 record), got {}",
                writes.len()
            )));
        }
        let mut paths = HashSet::with_capacity(writes.len());
        for w in writes {
            if !paths.insert(&w.path) {
                return Err(StoreError::InvalidArgument(format!(
                    "document {} is written more than once in one commit",
                    w.path
                )));
            }
            w.validate()?;
        }
        Ok(())
    }

    async fn submit(
        &self,
        ops: Vec<Op>,
        reads: Option<TxReads>,
        on_durable: Option<OnDurable>,
    ) -> Result<CommitResult, StoreError> {
        if self.inner.closed.load(AtomicOrdering::SeqCst) {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        }
        // The committer refuses too (it owns the decision); this spares the trip.
        if let Some(failure) = self.storage_failure() {
            return Err(StoreError::Unavailable(failure));
        }
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.inner.tx.lock();
            let Some(tx) = guard.as_ref() else {
                return Err(StoreError::Unavailable("the store is shut down".into()));
            };
            tx.send(Request::Commit {
                ops,
                reads,
                reply,
                on_durable,
            })
            .map_err(|_| StoreError::Unavailable("the store is shut down".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the committer stopped".into()))?
    }

    /// Commits 1..=[`MAX_OPS_PER_COMMIT`] writes atomically (each path at most once).
    pub async fn commit(&self, writes: Vec<Write>) -> Result<CommitResult, StoreError> {
        Self::check_writes(&writes, false)?;
        self.submit(writes.into_iter().map(Op::Write).collect(), None, None)
            .await
    }

    /// [`Store::commit`], calling `on_durable` with the result once the
    /// commit is durable and *before* it is published to the changelog's
    /// live subscribers (on the committer's thread: it must be quick and
    /// must not block). A service that answers the writer from the hook
    /// answers it before anyone watching the changelog live sees the
    /// commit. Not called when the commit fails.
    pub async fn commit_with(
        &self,
        writes: Vec<Write>,
        on_durable: OnDurable,
    ) -> Result<CommitResult, StoreError> {
        Self::check_writes(&writes, false)?;
        self.submit(
            writes.into_iter().map(Op::Write).collect(),
            None,
            Some(on_durable),
        )
        .await
    }

    pub fn get(&self, path: &DocPath) -> Result<Option<Document>, StoreError> {
        planner::load(self.shared().engine.as_ref(), path)
    }

    pub fn get_many(&self, paths: &[DocPath]) -> Result<Vec<Option<Document>>, StoreError> {
        let _read = self.shared().apply_lock.read();
        paths
            .iter()
            .map(|p| planner::load(self.shared().engine.as_ref(), p))
            .collect()
    }

    fn run_query(&self, query: &Query) -> Result<QueryResult, StoreError> {
        let shared = self.shared();
        let _read = shared.apply_lock.read();
        let read_seq = shared.head.load(AtomicOrdering::SeqCst);
        let indexes = shared.indexes.read();
        let ctx = planner::Ctx {
            engine: shared.engine.as_ref(),
            indexes: &indexes.composites,
            exemptions: &indexes.exemptions,
            allow_scans: shared.config.indexes.allow_scans,
        };
        let documents = planner::execute(&ctx, query)?;
        Ok(QueryResult {
            documents,
            read_seq,
        })
    }

    /// Runs a query through the indexes (see the planner docs for what needs a declared index).
    pub fn query(&self, query: &Query) -> Result<QueryResult, StoreError> {
        self.run_query(query)
    }

    pub fn aggregate(&self, q: &AggregateQuery) -> Result<AggregateResult, StoreError> {
        if q.aggregations.is_empty() {
            return Err(StoreError::InvalidArgument(
                "an aggregation query needs at least one aggregation".into(),
            ));
        }
        let result = self.run_query(&q.query)?;
        let mut agg = Aggregator::new(&q.aggregations);
        for d in &result.documents {
            agg.add(d);
        }
        Ok(AggregateResult {
            values: agg.finish(),
            read_seq: result.read_seq,
        })
    }

    /// A page of a collection's documents ordered by id.
    pub fn list(
        &self,
        collection: &CollectionPath,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, StoreError> {
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(StoreError::InvalidArgument(format!(
                "page_size must be 1 to {MAX_PAGE_SIZE}"
            )));
        }
        let prefix = keys::members_prefix(collection);
        let lower = match page_token {
            Some(token) => {
                let id = hex::decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| StoreError::InvalidArgument("invalid page_token".into()))?;
                let mut k = prefix.clone();
                codec::encode_escaped(&mut k, id.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(prefix.clone()),
        };
        let upper = match codec::prefix_end(&prefix) {
            Some(u) => Bound::Excluded(u),
            None => Bound::Unbounded,
        };
        let shared = self.shared();
        let _read = shared.apply_lock.read();
        let mut documents = Vec::with_capacity(page_size);
        let mut more = false;
        for entry in shared.engine.scan(lower, upper, false) {
            let (_, value) = entry?;
            if documents.len() == page_size {
                more = true;
                break;
            }
            let path = codec::decode_doc_path(&value)
                .ok_or_else(|| StoreError::Internal("corrupt membership entry".into()))?;
            if let Some(doc) = planner::load(shared.engine.as_ref(), &path)? {
                documents.push(doc);
            }
        }
        let next_page_token = if more {
            documents.last().map(|d| hex::encode(d.path.id()))
        } else {
            None
        };
        Ok(Page {
            documents,
            next_page_token,
        })
    }

    /// Starts an optimistic transaction.
    pub fn transaction(&self) -> Transaction {
        Transaction {
            store: self.clone(),
            reads: Mutex::new(TxReads::default()),
        }
    }

    pub fn changelog(&self) -> Changelog {
        Changelog {
            shared: self.inner.shared.clone(),
        }
    }

    pub fn index_status(&self) -> Vec<IndexStatus> {
        self.shared()
            .indexes
            .read()
            .composites
            .iter()
            .map(|d| IndexStatus {
                index: d.index.clone(),
                state: d.state.clone(),
            })
            .collect()
    }

    /// Every document, system collections included, in path order.
    pub fn export(&self) -> impl Iterator<Item = Result<Document, StoreError>> + '_ {
        let prefix = keys::docs_prefix();
        let upper = codec::prefix_end(&prefix)
            .map(Bound::Excluded)
            .unwrap_or(Bound::Unbounded);
        self.shared()
            .engine
            .scan(Bound::Included(prefix), upper, false)
            .map(|entry| {
                let (k, v) = entry?;
                let path = codec::decode_doc_path(&k[1..])
                    .ok_or_else(|| StoreError::Internal("corrupt document key".into()))?;
                Ok(codec::decode_document(path, &v)?)
            })
    }

    /// Imports documents through the normal commit path (in chunks of 500),
    /// keeping their create and update times; returns how many were written.
    pub async fn import(&self, docs: Vec<Document>) -> Result<u64, StoreError> {
        let mut written = 0u64;
        let mut chunk: Vec<Op> = Vec::with_capacity(IMPORT_CHUNK);
        let mut paths = HashSet::new();
        for doc in docs {
            if !paths.insert(doc.path.clone()) || chunk.len() == IMPORT_CHUNK {
                let n = chunk.len() as u64;
                if n > 0 {
                    self.submit(std::mem::take(&mut chunk), None, None).await?;
                    written += n;
                }
                paths.clear();
                paths.insert(doc.path.clone());
            }
            chunk.push(Op::Put(doc));
        }
        if !chunk.is_empty() {
            let n = chunk.len() as u64;
            self.submit(chunk, None, None).await?;
            written += n;
        }
        Ok(written)
    }

    /// Writes a consistent copy of the whole store into `dir` (a new data dir).
    pub fn backup_to(&self, dir: &Path) -> Result<BackupInfo, StoreError> {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(StoreError::InvalidArgument(format!(
                "backup directory {} must not exist or be empty",
                dir.display()
            )));
        }
        let target = SledEngine::open(dir, 64 * 1024 * 1024)?;
        let shared = self.shared();
        let _read = shared.apply_lock.read();
        let seq = shared.head.load(AtomicOrdering::SeqCst);
        let mut batch = WriteBatch::default();
        let (mut documents, mut count) = (0u64, 0u64);
        for entry in shared
            .engine
            .scan(Bound::Unbounded, Bound::Unbounded, false)
        {
            let (k, v) = entry?;
            if k.first() == Some(&keys::DOCS) {
                documents += 1;
            }
            count += 1;
            batch.put(k, v);
            if batch.len() >= 10_000 {
                target.apply(std::mem::take(&mut batch))?;
            }
        }
        target.apply(batch)?;
        target.flush()?;
        tracing::info!(seq, documents, dir = %dir.display(), "backup written");
        Ok(BackupInfo {
            seq,
            documents,
            keys: count,
        })
    }

    /// Verifies that every index entry and membership key agrees with the
    /// documents, and that the changelog has no gap between `oldest` and
    /// `head`. Reads the whole store (commits pause meanwhile): meant for
    /// tests (the crash test) and operators, not for hot paths.
    pub fn check_consistency(&self) -> Result<ConsistencyReport, StoreError> {
        let shared = self.shared();
        let _read = shared.apply_lock.read();
        let indexes = shared.indexes.read();
        // Composite indexes still building are legitimately incomplete.
        let checked = IndexSet {
            composites: indexes
                .composites
                .iter()
                .filter(|d| d.state == IndexState::Ready)
                .cloned()
                .collect(),
            exemptions: indexes.exemptions.clone(),
        };
        let skipped: Vec<[u8; 8]> = indexes
            .composites
            .iter()
            .filter(|d| d.state != IndexState::Ready)
            .map(|d| d.id)
            .collect();
        drop(indexes);
        let mut expected = std::collections::BTreeSet::new();
        let mut documents = 0u64;
        for doc in self.export() {
            let doc = doc?;
            documents += 1;
            expected.insert(keys::member_key(&doc.path));
            expected.insert(keys::group_key(&doc.path));
            expected.extend(checked.entries(&doc));
        }
        let mut actual = std::collections::BTreeSet::new();
        for space in [
            keys::MEMBERS,
            keys::GROUP_MEMBERS,
            keys::SINGLE,
            keys::COMPOSITE,
        ] {
            for entry in shared.engine.scan(
                Bound::Included(vec![space]),
                Bound::Excluded(vec![space + 1]),
                false,
            ) {
                let (k, _) = entry?;
                if space == keys::COMPOSITE
                    && k.len() >= 9
                    && skipped.iter().any(|id| k[1..9] == id[..])
                {
                    continue;
                }
                actual.insert(k);
            }
        }
        let missing: Vec<String> = expected
            .difference(&actual)
            .take(10)
            .map(hex::encode)
            .collect();
        let extra: Vec<String> = actual
            .difference(&expected)
            .take(10)
            .map(hex::encode)
            .collect();
        let missing_count = expected.difference(&actual).count() as u64;
        let extra_count = actual.difference(&expected).count() as u64;
        let head = shared.head.load(AtomicOrdering::SeqCst);
        let oldest = shared.oldest.load(AtomicOrdering::SeqCst);
        let mut changelog_gaps = Vec::new();
        let mut next = oldest;
        for entry in shared.engine.scan(
            Bound::Included(keys::log_key(oldest)),
            Bound::Excluded(vec![keys::LOG + 1]),
            false,
        ) {
            let (k, _) = entry?;
            let seq = keys::read_u64(&k[1..]).unwrap_or(0);
            if seq != next && changelog_gaps.len() < 10 {
                changelog_gaps.push((next, seq));
            }
            next = seq + 1;
        }
        if next != head + 1 && changelog_gaps.len() < 10 {
            changelog_gaps.push((next, head + 1));
        }
        let stored_head = read_meta_u64(shared.engine.as_ref(), keys::META_HEAD)?.unwrap_or(0);
        Ok(ConsistencyReport {
            documents,
            index_keys: actual.len() as u64,
            head,
            oldest,
            missing_index_keys: missing_count,
            extra_index_keys: extra_count,
            sample_missing: missing,
            sample_extra: extra,
            changelog_gaps,
            head_matches_meta: stored_head == head,
        })
    }

    /// Stops accepting commits (`Unavailable`), drains the committer and flushes.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, AtomicOrdering::SeqCst) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let sent = {
            let guard = self.inner.tx.lock();
            guard
                .as_ref()
                .map(|tx| tx.send(Request::Shutdown { reply }).is_ok())
                .unwrap_or(false)
        };
        if sent {
            let _ = rx.await;
        }
        self.shared().engine.flush()?;
        tracing::info!(head = self.head_seq(), "store shut down");
        Ok(())
    }
}

/// The outcome of [`Store::check_consistency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyReport {
    pub documents: u64,
    pub index_keys: u64,
    pub head: u64,
    pub oldest: u64,
    /// Index/membership keys the documents imply but the store lacks.
    pub missing_index_keys: u64,
    /// Index/membership keys no document implies.
    pub extra_index_keys: u64,
    pub sample_missing: Vec<String>,
    pub sample_extra: Vec<String>,
    /// `(expected seq, found seq)` pairs where the changelog skips.
    pub changelog_gaps: Vec<(u64, u64)>,
    pub head_matches_meta: bool,
}

impl ConsistencyReport {
    /// True when indexes agree with the data and the changelog has no gap.
    pub fn is_consistent(&self) -> bool {
        self.missing_index_keys == 0
            && self.extra_index_keys == 0
            && self.changelog_gaps.is_empty()
            && self.head_matches_meta
    }
}

/// An optimistic transaction: reads are recorded and re-validated by the
/// committer; if any read document (or any query's result) changed since, the
/// commit fails with `Aborted` and the caller retries.
pub struct Transaction {
    store: Store,
    reads: Mutex<TxReads>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transaction")
    }
}

impl Transaction {
    pub fn get(&self, path: &DocPath) -> Result<Option<Document>, StoreError> {
        let doc = self.store.get(path)?;
        let mut reads = self.reads.lock();
        if !reads.docs.iter().any(|(p, _)| p == path) {
            reads
                .docs
                .push((path.clone(), doc.as_ref().map(|d| d.version)));
        }
        Ok(doc)
    }

    pub fn query(&self, query: &Query) -> Result<QueryResult, StoreError> {
        let result = self.store.query(query)?;
        self.reads.lock().queries.push((
            query.clone(),
            result
                .documents
                .iter()
                .map(|d| (d.path.clone(), d.version))
                .collect(),
        ));
        Ok(result)
    }

    /// Validates the reads and commits the writes atomically (1..=[`MAX_OPS_PER_COMMIT`] writes).
    pub async fn commit(self, writes: Vec<Write>) -> Result<CommitResult, StoreError> {
        self.commit_inner(writes, None).await
    }

    /// [`Transaction::commit`] with an on-durable hook, as
    /// [`Store::commit_with`].
    pub async fn commit_with(
        self,
        writes: Vec<Write>,
        on_durable: OnDurable,
    ) -> Result<CommitResult, StoreError> {
        self.commit_inner(writes, Some(on_durable)).await
    }

    async fn commit_inner(
        self,
        writes: Vec<Write>,
        on_durable: Option<OnDurable>,
    ) -> Result<CommitResult, StoreError> {
        Store::check_writes(&writes, false)?;
        let reads = self.reads.into_inner();
        self.store
            .submit(
                writes.into_iter().map(Op::Write).collect(),
                Some(reads),
                on_durable,
            )
            .await
    }
}
