//! The fan-out engine: one task reads the changelog and moves every
//! affected subscription's view forward.
//!
//! ## Finding candidates without scanning (reverse query matching)
//! Subscriptions are indexed by their source: a document path, a collection
//! path or a collection-group id. Within a source, a query whose filter has a
//! top-level equality conjunct (`room == "k"`, alone or inside an `and`) is
//! filed under that (field, value); other queries are in the source's `all`
//! set. For a change to `rooms/r1/messages/m1` the engine looks at three
//! buckets (the document, its collection, its collection id) and, in each,
//! at `all` plus one map lookup per indexed field with the field's old and
//! new values. Values are compared with the total order of values, so
//! `room == 1` finds a document whose `room` is `1.0`, as the query would.
//! Only those candidates are evaluated (`Query::matches_with_order` with the
//! precomputed order, then the access check).
//!
//! ## Per commit
//! Candidates are collected for the whole commit, so a subscription touched
//! by several documents of one commit gets one frame. Documents are wrapped
//! in `Arc` once per commit and frames are encoded once per distinct content
//! (see `encode`). Limited queries whose window may change are re-run against
//! the store, once per distinct query per commit.
//!
//! ## Writing: the rotation
//! Frames are queued per connection and written by the engine itself, one
//! system call per connection, in the order connections got their first
//! frame ([`Rotation`]). New commits are taken between slices of that
//! rotation, so under load a commit waits at most one rotation, and a
//! subscriber's frames of several commits share a system call.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use futures::{FutureExt, StreamExt};
use hearth_protocol::ws::ServerMessage;
use hearth_protocol::{
    DocPath, Document, ErrorBody, FieldPath, Filter, Op, Query, QuerySource, Value,
};
use hearth_store::{ChangelogError, CommitRecord};
use rustc_hash::FxHashMap;

use crate::backend;
use crate::codec::Codec;
use crate::conn::ConnShared;
use crate::encode::{self, FrameCache};
use crate::subscription::{empty_view, window_edge, ShareKey, SubState, Subscription};
use crate::view::{apply_incremental, diff, ChangeOut, Step, Target, View};
use crate::Inner;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SourceKey {
    Doc(DocPath),
    Collection(String),
    Group(String),
}

/// Subscriptions are kept in plain vectors: iteration is the hot path, and a
/// vector costs one pointer per subscription (a hash set would cost several).
type SubList = Vec<Arc<Subscription>>;

fn remove_from(list: &mut SubList, uid: u64) {
    if let Some(i) = list.iter().position(|s| s.uid == uid) {
        list.swap_remove(i);
    }
}

#[derive(Default)]
struct Bucket {
    all: SubList,
    by_eq: BTreeMap<FieldPath, BTreeMap<Value, SubList>>,
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_eq.is_empty()
    }
}

/// The subscription index (see the module docs).
#[derive(Default)]
pub(crate) struct SubIndex {
    buckets: DashMap<SourceKey, Bucket>,
}

fn source_key(target: &Target) -> SourceKey {
    match target {
        Target::Doc(p) => SourceKey::Doc(p.clone()),
        Target::Query { query, .. } => match &query.source {
            QuerySource::Collection(c) => SourceKey::Collection(c.as_string()),
            QuerySource::CollectionGroup(id) => SourceKey::Group(id.clone()),
        },
    }
}

/// The equality conjunct a query is filed under, if any.
fn eq_key(query: &Query) -> Option<(FieldPath, Value)> {
    let usable = |f: &Filter| match f {
        Filter::Field(ff)
            if ff.op == Op::Eq && !ff.field.is_document_id() && !ff.value.is_nan() =>
        {
            Some((ff.field.clone(), ff.value.clone()))
        }
        _ => None,
    };
    match query.filter.as_ref()? {
        Filter::And(parts) => parts.iter().find_map(usable),
        other => usable(other),
    }
}

impl SubIndex {
    pub(crate) fn insert(&self, sub: &Arc<Subscription>) {
        let mut bucket = self.buckets.entry(source_key(&sub.target)).or_default();
        let eq = match &*sub.target {
            Target::Query { query, .. } => eq_key(query),
            Target::Doc(_) => None,
        };
        match eq {
            Some((field, value)) => {
                bucket
                    .by_eq
                    .entry(field)
                    .or_default()
                    .entry(value)
                    .or_default()
                    .push(Arc::clone(sub));
            }
            None => {
                bucket.all.push(Arc::clone(sub));
            }
        }
    }

    pub(crate) fn remove(&self, sub: &Subscription) {
        let key = source_key(&sub.target);
        let empty = {
            let Some(mut bucket) = self.buckets.get_mut(&key) else {
                return;
            };
            let eq = match &*sub.target {
                Target::Query { query, .. } => eq_key(query),
                Target::Doc(_) => None,
            };
            match eq {
                Some((field, value)) => {
                    if let Some(values) = bucket.by_eq.get_mut(&field) {
                        if let Some(set) = values.get_mut(&value) {
                            remove_from(set, sub.uid);
                            if set.is_empty() {
                                values.remove(&value);
                            }
                        }
                        if values.is_empty() {
                            bucket.by_eq.remove(&field);
                        }
                    }
                }
                None => {
                    remove_from(&mut bucket.all, sub.uid);
                }
            }
            bucket.is_empty()
        };
        if empty {
            self.buckets.remove_if(&key, |_, b| b.is_empty());
        }
    }

    /// Calls `f` for every subscription that may be affected by a change of
    /// the document at `path` from `old` to `new`.
    fn candidates(
        &self,
        path: &DocPath,
        old: Option<&Document>,
        new: Option<&Document>,
        mut f: impl FnMut(&Arc<Subscription>),
    ) {
        let keys = [
            SourceKey::Doc(path.clone()),
            SourceKey::Collection(path.parent().as_string()),
            SourceKey::Group(path.collection_id().to_string()),
        ];
        for key in &keys {
            let Some(bucket) = self.buckets.get(key) else {
                continue;
            };
            bucket.all.iter().for_each(&mut f);
            for (field, values) in &bucket.by_eq {
                let vo = old.and_then(|d| d.get(field));
                let vn = new.and_then(|d| d.get(field));
                if let Some(v) = &vo {
                    if let Some(set) = values.get(v) {
                        set.iter().for_each(&mut f);
                    }
                }
                if let Some(v) = &vn {
                    if vo.as_ref() != Some(v) {
                        if let Some(set) = values.get(v) {
                            set.iter().for_each(&mut f);
                        }
                    }
                }
            }
        }
    }

    /// Every subscription (engine restart after a changelog gap).
    fn all(&self) -> Vec<Arc<Subscription>> {
        let mut out = Vec::new();
        for b in self.buckets.iter() {
            out.extend(b.all.iter().cloned());
            for values in b.by_eq.values() {
                for set in values.values() {
                    out.extend(set.iter().cloned());
                }
            }
        }
        out
    }
}

/// At most this many commits are delivered before the engine writes to
/// the sockets, and at most this many join one rotation (see [`run`]).
const BATCH_COMMITS: usize = 64;

/// How a batch of commits ended.
enum BatchEnd {
    /// Nothing more is ready now.
    Drained,
    /// The engine fell behind the changelog's retention.
    Lagged(u64),
    Failed(ChangelogError),
    /// The changelog ended (the store is closing).
    Closed,
}

/// The connections with frames queued by the engine and not yet written, in
/// the order they got their first one: the engine's *rotation*.
///
/// The engine writes them a slice at a time and between slices takes the
/// commits that arrived meanwhile, so a connection still waiting in the
/// rotation gets the newer frames in the same system call as the older
/// ones, and a connection already written joins the back again. Under
/// saturation a commit therefore reaches everyone within one rotation,
/// instead of waiting for a whole sweep to end and then for its own.
/// Membership is a flag on the connection (set and cleared only by the
/// engine's thread), so adding is one atomic swap, not a hash lookup.
#[derive(Default)]
pub(crate) struct Rotation {
    conns: std::collections::VecDeque<Arc<ConnShared>>,
}

impl Rotation {
    fn add(&mut self, conn: &Arc<ConnShared>) {
        if conn.enter_rotation() {
            self.conns.push_back(Arc::clone(conn));
        }
    }

    fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Writes the next `max` connections of the rotation.
    fn flush_some(&mut self, max: usize) {
        for _ in 0..max {
            let Some(conn) = self.conns.pop_front() else {
                return;
            };
            conn.leave_rotation();
            conn.flush();
        }
    }

    fn flush_all(&mut self) {
        self.flush_some(usize::MAX);
    }
}

/// Connections written per slice of the rotation (see [`Rotation`]): a few
/// milliseconds of system calls, after which newly arrived commits join.
const FLUSH_SLICE: usize = 256;

/// Starts the engine on a thread of its own (with its own single-threaded
/// runtime), so that a sweep over thousands of sockets never holds up the
/// runtime that reads clients' writes and commits them: on a busy core the
/// operating system interleaves the two, and the next commit no longer
/// waits for the previous one's fan-out to finish. The engine stops on
/// shutdown, or when the runtime that started it goes away (a guard task
/// there holds the other end of a channel). If the thread cannot be
/// started, the engine runs as a task of the current runtime instead.
///
/// Either way it runs outside Tokio's cooperative budget: the engine hands
/// frames to sockets directly (see `conn`), a thousand per commit when a
/// thousand subscribers are idle, and a socket poll past the budget would
/// report "not ready" and push them all to the writers.
pub(crate) fn start(inner: Arc<Inner>) {
    let (guard, runtime_gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });
    let engine = Arc::clone(&inner);
    let spawned = std::thread::Builder::new()
        .name("hearth-fanout".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(tokio::task::unconstrained(run(engine, Some(runtime_gone)))),
                Err(e) => tracing::error!(error = %e, "cannot start the fan-out engine's runtime"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for the fan-out engine; running it as a task");
        tokio::spawn(tokio::task::unconstrained(run(inner, None)));
    }
}

/// The engine: consumes the changelog until the gateway shuts down (or
/// `runtime_gone` fires).
///
/// Commits are taken in batches: every commit already readable (up to
/// [`BATCH_COMMITS`]) is delivered with its frames only queued, then the
/// engine writes one slice of the connections that have frames (see
/// [`Rotation`]) and looks for new commits again. At a steady pace a batch is
/// one commit and its frames leave at once; when commits come faster than
/// the sockets take them, a subscriber's frames of several commits share
/// one system call instead of the engine falling further behind, and a new
/// commit joins the rotation in progress instead of waiting for it to end.
async fn run(inner: Arc<Inner>, runtime_gone: Option<tokio::sync::oneshot::Receiver<()>>) {
    let mut runtime_gone = runtime_gone;
    let changelog = inner.store.changelog();
    let mut after = changelog.head();
    let mut rotation = Rotation::default();
    // Commits delivered since the rotation began: at most BATCH_COMMITS
    // join one rotation, so a connection late in it holds no more frames
    // than one batch (under a burst the rest wait for the next rotation).
    let mut joined = 0;
    loop {
        let mut stream = Box::pin(changelog.subscribe(after));
        loop {
            if rotation.is_empty() {
                joined = 0;
            }
            // Wait for a commit only when nothing is left to write.
            let mut next = if joined >= BATCH_COMMITS {
                None
            } else if rotation.is_empty() {
                let gone = async {
                    match runtime_gone.as_mut() {
                        Some(rx) => {
                            let _ = rx.await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    item = stream.next() => Some(item),
                    _ = inner.shutdown.notified() => return,
                    _ = gone => return,
                }
            } else {
                stream.next().now_or_never()
            };
            if inner.shutting_down.load(AtomicOrdering::Relaxed) {
                return;
            }
            let mut end = BatchEnd::Drained;
            while let Some(item) = next.take() {
                match item {
                    Some(Ok(rec)) => {
                        after = rec.seq;
                        inner.stats.head.store(rec.seq, AtomicOrdering::Relaxed);
                        process_commit(&inner, &rec, &mut rotation);
                    }
                    Some(Err(ChangelogError::TooOld { oldest })) => {
                        end = BatchEnd::Lagged(oldest);
                        break;
                    }
                    Some(Err(e)) => {
                        end = BatchEnd::Failed(e);
                        break;
                    }
                    None => {
                        end = BatchEnd::Closed;
                        break;
                    }
                }
                joined += 1;
                if joined < BATCH_COMMITS {
                    next = stream.next().now_or_never();
                }
            }
            match end {
                BatchEnd::Drained => rotation.flush_some(FLUSH_SLICE),
                BatchEnd::Lagged(oldest) => {
                    rotation.flush_all();
                    // We fell behind retention: every view may be stale.
                    // Rebuild them all from the store and carry on from now.
                    tracing::warn!(after, oldest, "fan-out engine lagged past changelog retention; rebuilding every subscription");
                    for sub in inner.index.all() {
                        let mut st = sub.state.lock();
                        st.dirty = true;
                        st.skipped_max = u64::MAX;
                        if let Some(conn) = sub.conn.upgrade() {
                            conn.mark_dirty();
                        }
                    }
                    after = changelog.head();
                    break;
                }
                BatchEnd::Failed(e) => {
                    rotation.flush_all();
                    tracing::error!(error = %e, "changelog read failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    break;
                }
                BatchEnd::Closed => {
                    rotation.flush_all();
                    return;
                }
            }
        }
    }
}

/// Delivers one commit to every affected subscription.
///
/// Views are moved once per *share group* (same target, same principal,
/// same position: see `subscription::share_key`) and the result — the new
/// view, the changes and their encoded frames — is handed to every other
/// member of the group. So a thousand subscribers of one query cost one view
/// update and one encoding, plus a few uncontended locks and a frame push
/// each. The engine never holds a store lock while delivering: unlimited
/// views move from the changelog record alone; only limit windows re-run
/// their query (once per distinct query per commit).
pub(crate) fn process_commit(inner: &Inner, rec: &CommitRecord, rotation: &mut Rotation) {
    // (subscription, change index) for every candidate, grouped by
    // subscription below (a commit touching several documents of a view
    // gives one frame).
    let mut cands: Vec<(Arc<Subscription>, usize)> = Vec::new();
    for (i, ch) in rec.changes.iter().enumerate() {
        inner
            .index
            .candidates(&ch.path, ch.old.as_ref(), ch.new.as_ref(), |s| {
                cands.push((Arc::clone(s), i));
            });
    }
    if cands.is_empty() {
        return;
    }
    if rec.changes.len() > 1 {
        cands.sort_by_key(|(s, i)| (s.uid, *i));
    }
    let mut commit = CommitWork {
        rec,
        // Each new document version is shared by every view that takes it.
        new_docs: rec
            .changes
            .iter()
            .map(|ch| ch.new.clone().map(Arc::new))
            .collect(),
        cache: FrameCache::default(),
        requeries: HashMap::new(),
        moves: Vec::new(),
        move_index: FxHashMap::default(),
        last_move: None,
    };
    let mut idxs: Vec<usize> = Vec::new();
    let mut evaluated = 0u64;
    let mut rest = &cands[..];
    while let Some((first, _)) = rest.first() {
        let n = rest.iter().take_while(|(s, _)| s.uid == first.uid).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        idxs.clear();
        idxs.extend(group.iter().map(|(_, i)| *i));
        evaluated += 1;
        deliver(inner, &mut commit, first, &idxs, rotation);
    }
    let stats = &inner.stats;
    stats
        .candidates
        .fetch_add(evaluated, AtomicOrdering::Relaxed);
    stats
        .views_moved
        .fetch_add(commit.moves.len() as u64, AtomicOrdering::Relaxed);
    stats
        .frames_encoded
        .fetch_add(commit.cache.encoded, AtomicOrdering::Relaxed);
    stats
        .frames_shared
        .fetch_add(commit.cache.shared, AtomicOrdering::Relaxed);
}

/// What one commit's delivery shares between subscriptions.
struct CommitWork<'a> {
    rec: &'a CommitRecord,
    new_docs: Vec<Option<Arc<Document>>>,
    cache: FrameCache,
    /// Limit windows re-run, by query.
    requeries: HashMap<String, Result<backend::Snapshot, ErrorBody>>,
    /// Views moved, each under its (share key, position before) in
    /// `move_index`; `last_move` short-cuts the usual run of subscribers of
    /// one share group.
    moves: Vec<Move>,
    move_index: FxHashMap<(ShareKey, u64), usize>,
    last_move: Option<((ShareKey, u64), usize)>,
}

/// One share group's view moved by a commit.
struct Move {
    view: View,
    seq: u64,
    edge: Option<Arc<Document>>,
    changes: Vec<ChangeOut>,
    /// The changes frame, by `sub` name (members usually share one name)
    /// and encoding.
    frames: Vec<(Box<str>, Codec, Bytes)>,
    /// The window could not be re-run: every member ends with this error.
    error: Option<ErrorBody>,
}

impl Move {
    fn unchanged(st: &SubState, seq: u64) -> Move {
        Move {
            view: Arc::clone(&st.view),
            seq,
            edge: st.edge.clone(),
            changes: Vec::new(),
            frames: Vec::new(),
            error: None,
        }
    }

    /// The changes frame for `sub` name `name` in `codec`, encoded (and
    /// transcoded) once per commit, whatever the number of subscribers.
    fn frame(&mut self, name: &str, codec: Codec, cache: &mut FrameCache) -> Bytes {
        let find = |frames: &[(Box<str>, Codec, Bytes)], c: Codec| {
            frames
                .iter()
                .find(|(n, fc, _)| &**n == name && *fc == c)
                .map(|(_, _, f)| f.clone())
        };
        if let Some(f) = find(&self.frames, codec) {
            cache.shared += 1;
            return f;
        }
        let json = match find(&self.frames, Codec::Json) {
            Some(json) => json,
            None => {
                let json = cache.changes(name, self.seq, &self.changes);
                self.frames
                    .push((Box::from(name), Codec::Json, json.clone()));
                json
            }
        };
        if codec == Codec::Json {
            return json;
        }
        let f = codec.encode(json);
        self.frames.push((Box::from(name), codec, f.clone()));
        f
    }
}

/// Moves one subscription's view by the changes `idxs` of the commit.
fn deliver(
    inner: &Inner,
    commit: &mut CommitWork<'_>,
    sub: &Arc<Subscription>,
    idxs: &[usize],
    rotation: &mut Rotation,
) {
    let Some(conn) = sub.conn.upgrade() else {
        return;
    };
    let rec = commit.rec;
    let mut st = sub.state.lock();
    if st.closed || st.seq >= rec.seq {
        return;
    }
    if st.dirty {
        st.skipped_max = st.skipped_max.max(rec.seq);
        return;
    }
    // A subscription that is coalescing (or whose connection is congested)
    // gets no frame: the view keeps moving and `sent` keeps what the client
    // holds; the writer sends one frame from `sent` to the newest view once
    // the queue has drained.
    let coalescing = st.sent.is_some() || conn.congested();
    if coalescing && st.sent.is_none() {
        st.sent = Some(Arc::clone(&st.view));
    }
    let key = (st.share, st.seq);
    let slot = match commit.last_move {
        Some((last, slot)) if last == key => slot,
        _ => {
            let slot = match commit.move_index.get(&key) {
                Some(&slot) => slot,
                None => {
                    let moved = move_view(inner, commit, &conn, sub, &mut st, idxs);
                    commit.moves.push(moved);
                    commit.move_index.insert(key, commit.moves.len() - 1);
                    commit.moves.len() - 1
                }
            };
            commit.last_move = Some((key, slot));
            slot
        }
    };
    let Some(moved) = commit.moves.get_mut(slot) else {
        return;
    };
    st.view = Arc::clone(&moved.view);
    st.seq = moved.seq;
    st.edge = moved.edge.clone();
    if let Some(e) = &moved.error {
        st.closed = true;
        let frame = encode::message(&ServerMessage::error(
            None,
            Some(sub.name.to_string()),
            e.clone(),
        ));
        if conn.queue(conn.codec().encode(frame)) {
            rotation.add(&conn);
        }
        return;
    }
    if moved.changes.is_empty() {
        if st.sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, &st.view)) {
            st.sent = None;
        }
        return;
    }
    if coalescing {
        inner.stats.coalesced.fetch_add(1, AtomicOrdering::Relaxed);
        conn.mark_dirty();
        return;
    }
    if conn.queue(moved.frame(&sub.name, conn.codec(), &mut commit.cache)) {
        rotation.add(&conn);
    }
}

/// Computes how one commit moves a subscription's view (the first member of
/// its share group to be delivered to pays for the whole group).
fn move_view(
    inner: &Inner,
    commit: &mut CommitWork<'_>,
    conn: &ConnShared,
    sub: &Subscription,
    st: &mut SubState,
    idxs: &[usize],
) -> Move {
    let rec = commit.rec;
    let principal = conn.principal();
    let readable =
        |d: &Document| backend::readable(&inner.store, &inner.access, &principal, &sub.target, d);
    let Some((_, to_last)) = sub.target.limit() else {
        let steps: Vec<Step<'_>> = idxs
            .iter()
            .map(|&i| {
                let ch = &rec.changes[i];
                let new_visible = commit.new_docs[i]
                    .as_ref()
                    .filter(|n| sub.target.matches(n) && readable(n))
                    .cloned();
                Step {
                    path: &ch.path,
                    old: ch.old.as_ref(),
                    new_visible,
                }
            })
            .collect();
        // Moves the list in place when no one else holds it (a view of its
        // own); otherwise the group's members keep theirs until they adopt
        // this one.
        let mut view = std::mem::replace(&mut st.view, empty_view());
        let changes = apply_incremental(Arc::make_mut(&mut view), &sub.target, steps);
        st.view = view;
        return Move {
            changes,
            ..Move::unchanged(st, rec.seq)
        };
    };
    let affected = idxs.iter().any(|&i| {
        let ch = &rec.changes[i];
        let was_in = ch.old.as_ref().is_some_and(|o| {
            crate::view::position(&st.view, &sub.target, Some(o), &ch.path).is_some()
                || sub.target.matches(o)
                    && ranks_inside(&sub.target, o, st.edge.as_deref(), to_last)
        });
        let enters = ch.new.as_ref().is_some_and(|n| {
            sub.target.matches(n) && ranks_inside(&sub.target, n, st.edge.as_deref(), to_last)
        });
        was_in || enters
    });
    if !affected {
        return Move::unchanged(st, rec.seq);
    }
    let Target::Query { query, .. } = &*sub.target else {
        return Move::unchanged(st, rec.seq);
    };
    let key = serde_json::to_string(query).unwrap_or_default();
    let result = commit
        .requeries
        .entry(key)
        .or_insert_with(|| backend::run_query(&inner.store, query));
    match result {
        Ok((seq, unfiltered)) => {
            let edge = window_edge(&sub.target, unfiltered);
            let now: Vec<Arc<Document>> =
                unfiltered.iter().filter(|d| readable(d)).cloned().collect();
            let changes = diff(&sub.target, &st.view, &now);
            Move {
                view: Arc::new(now),
                seq: *seq,
                edge,
                changes,
                frames: Vec::new(),
                error: None,
            }
        }
        Err(e) => Move {
            error: Some(e.clone()),
            ..Move::unchanged(st, rec.seq)
        },
    }
}

/// Whether `doc` ranks inside a limit window whose far edge is `edge`
/// (`None`: the window is not full, everything that matches is inside).
fn ranks_inside(target: &Target, doc: &Document, edge: Option<&Document>, to_last: bool) -> bool {
    match edge {
        None => true,
        Some(e) => {
            let ord = target.cmp(doc, e);
            if to_last {
                ord != std::cmp::Ordering::Less
            } else {
                ord != std::cmp::Ordering::Greater
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::test_conn;

    fn order(rotation: &Rotation) -> Vec<u64> {
        rotation.conns.iter().map(|c| c.id).collect()
    }

    #[test]
    fn the_rotation_holds_a_connection_once_and_takes_it_back_after_its_write() {
        let a = Arc::new(test_conn(1));
        let b = Arc::new(test_conn(2));
        let mut rotation = Rotation::default();
        rotation.add(&a);
        rotation.add(&b);
        rotation.add(&a);
        assert_eq!(
            order(&rotation),
            [1, 2],
            "a waiting connection is not queued twice"
        );
        rotation.flush_some(1);
        assert_eq!(order(&rotation), [2]);
        // A newer frame for the connection still waiting rides with its
        // older ones; the one already written joins the back.
        rotation.add(&b);
        rotation.add(&a);
        assert_eq!(order(&rotation), [2, 1]);
        rotation.flush_all();
        assert!(rotation.is_empty());
        rotation.add(&b);
        assert_eq!(order(&rotation), [2]);
    }
}
