//! One live subscription: its target, its view, and how it is (re)built.
//!
//! A subscription's state is guarded by one small mutex shared by the
//! fan-out engine (which moves the view commit by commit) and the
//! connection task (which builds it: initial snapshot, resume, coalescing).
//!
//! ## Building a view without missing a commit
//! A subscription is registered in the fan-out index *dirty* before its
//! first query runs. While dirty, the engine does not touch its view but
//! records in `skipped_max` the newest commit it skipped for it. The builder
//! runs the query (result at position `R`), then takes the lock: if the
//! engine skipped a commit newer than `R` it runs the query again, otherwise
//! it installs the view at `R` and clears `dirty`. From then on the engine
//! applies every commit newer than `seq` and ignores older ones. So each
//! commit is reflected exactly once, and the engine never waits for a query.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use compact_str::CompactString;
use hearth_protocol::{DocPath, Document, ErrorBody};
use hearth_rules::Principal;
use parking_lot::Mutex;

use crate::backend;
use crate::conn::ConnShared;
use crate::encode::FrameCache;
use crate::view::{diff, Target, View};
use crate::Inner;

pub(crate) struct SubState {
    /// The view at `seq` (what the client holds, or will hold once the
    /// queued frames are read — unless `sent` says otherwise).
    pub view: View,
    /// While coalescing: the view the client holds. The engine keeps moving
    /// `view` without queueing frames; the writer sends one frame from
    /// `sent` to `view` once the queue has drained (see `flush_coalesced`).
    pub sent: Option<View>,
    /// The changelog position `view` reflects.
    pub seq: u64,
    /// The view must be rebuilt by the connection task (new, or the engine
    /// lagged past the changelog's retention).
    pub dirty: bool,
    /// Newest commit the engine skipped because the subscription was dirty.
    pub skipped_max: u64,
    /// Unsubscribed: deliver nothing more.
    pub closed: bool,
    /// Limited queries: the last document of the unfiltered window when the
    /// window is full (a change ranking after it cannot enter the window).
    pub edge: Option<Arc<Document>>,
    /// Subscriptions with the same share key see the same view at the same
    /// position (same target, same principal); the engine moves such views
    /// once per commit and shares the result (see [`share_key`]).
    pub share: ShareKey,
}

pub(crate) struct Subscription {
    /// Gateway-wide unique id (index key).
    pub uid: u64,
    /// The client's name for it; kept inline (names are short), so the
    /// engine compares it without a trip to another allocation.
    pub name: CompactString,
    /// Shared by every subscription of the same target (see [`Targets`]).
    pub target: Arc<Target>,
    pub conn: Weak<ConnShared>,
    pub state: Mutex<SubState>,
}

impl Subscription {
    pub(crate) fn new(
        uid: u64,
        name: &str,
        target: Arc<Target>,
        conn: &Arc<ConnShared>,
    ) -> Subscription {
        let share = share_key(&conn.principal(), &target);
        Subscription {
            uid,
            name: name.into(),
            target,
            conn: Arc::downgrade(conn),
            state: Mutex::new(SubState {
                view: empty_view(),
                sent: None,
                seq: 0,
                dirty: true,
                skipped_max: 0,
                closed: false,
                edge: None,
                share,
            }),
        }
    }
}

/// One shared empty view (most new and idle subscriptions hold it).
pub(crate) fn empty_view() -> View {
    static EMPTY: std::sync::OnceLock<View> = std::sync::OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::new(Vec::new())))
}

/// A 128-bit digest (two words, so that `SubState` keeps an 8-byte alignment).
pub(crate) type ShareKey = [u64; 2];

fn digest(parts: &[&[u8]]) -> ShareKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    [word(0), word(1)]
}

/// The identity of a target (two targets with the same digest select the
/// same documents in the same order).
pub(crate) fn target_digest(target: &Target) -> ShareKey {
    match target {
        Target::Doc(p) => digest(&[b"doc", p.as_string().as_bytes()]),
        Target::Query { query, .. } => {
            digest(&[b"query", &serde_json::to_vec(query).unwrap_or_default()])
        }
    }
}

/// The key under which views are shared: a digest of the target and of
/// everything about the principal that the rules can see (uid and every
/// claim). Two subscriptions with the same key hold equal views at equal
/// changelog positions, because a view is the target's result at that
/// position filtered by what this principal may read.
pub(crate) fn share_key(principal: &Principal, target: &Target) -> ShareKey {
    let [t0, t1] = target_digest(target);
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&t0.to_le_bytes());
    t[8..].copy_from_slice(&t1.to_le_bytes());
    match principal {
        Principal::Admin => digest(&[b"admin", &t]),
        Principal::Unauthenticated => digest(&[b"anonymous", &t]),
        Principal::User { uid, claims } => digest(&[
            b"user",
            uid.as_bytes(),
            &serde_json::to_vec(claims).unwrap_or_default(),
            &t,
        ]),
    }
}

/// Identical targets are stored once: a thousand clients subscribed to one
/// room's query hold one parsed query (and its sort order) between them.
#[derive(Default)]
pub(crate) struct Targets(dashmap::DashMap<ShareKey, Weak<Target>>);

impl Targets {
    /// The shared copy of `target`.
    pub(crate) fn intern(&self, target: Target) -> Arc<Target> {
        let mut slot = self.0.entry(target_digest(&target)).or_default();
        if let Some(existing) = slot.upgrade() {
            return existing;
        }
        let shared = Arc::new(target);
        *slot = Arc::downgrade(&shared);
        shared
    }

    /// Forgets the targets that no subscription holds any more.
    pub(crate) fn purge(&self) {
        self.0.retain(|_, t| t.strong_count() > 0);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Sends a coalescing subscription's held-back changes as one frame: the
/// diff from the view its client holds to the current one.
pub(crate) fn flush_coalesced(conn: &ConnShared, sub: &Subscription) {
    let mut st = sub.state.lock();
    if st.closed || st.dirty {
        // A rebuild is due: it diffs from `sent` itself.
        return;
    }
    let Some(sent) = st.sent.take() else {
        return;
    };
    let changes = diff(&sub.target, &sent, &st.view);
    if !changes.is_empty() {
        conn.push(FrameCache::default().changes(&sub.name, st.seq, &changes));
    }
}

/// How a (re)build is delivered to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Build {
    /// First frame of a new subscription: `snapshot`, reset false.
    Initial,
    /// Resume from a changelog position: `changes` since then (unlimited
    /// targets) or a replacing `snapshot` (limited queries, too many commits).
    Resume(u64),
    /// Rebuilt after the engine lagged: `changes` from the client's view to now.
    Rebuild,
}

/// The window of a limited query's unfiltered result, for `SubState::edge`.
pub(crate) fn window_edge(target: &Target, unfiltered: &[Arc<Document>]) -> Option<Arc<Document>> {
    let (limit, to_last) = target.limit()?;
    if unfiltered.len() < limit as usize {
        return None;
    }
    if to_last {
        unfiltered.first().cloned()
    } else {
        unfiltered.last().cloned()
    }
}

/// Builds (or rebuilds) a subscription's view and queues its frame.
pub(crate) fn build(
    inner: &Inner,
    conn: &ConnShared,
    sub: &Subscription,
    how: Build,
) -> Result<(), ErrorBody> {
    let principal = conn.principal();
    let store = &inner.store;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (seq, unfiltered) = backend::run_target(store, &sub.target)?;
        let edge = window_edge(&sub.target, &unfiltered);
        let now: Vec<Arc<Document>> = unfiltered
            .into_iter()
            .filter(|d| backend::readable(store, &inner.access, &principal, &sub.target, d))
            .collect();
        // For a resume of an unlimited target: the view at the token.
        let mut frame_plan = match how {
            Build::Initial => Plan::Snapshot { reset: false },
            Build::Rebuild => Plan::DiffFromCurrent,
            Build::Resume(from) => resume_plan(inner, &principal, sub, from, seq, &now)?,
        };
        let mut st = sub.state.lock();
        if st.closed {
            return Ok(());
        }
        if st.skipped_max > seq && attempt < 8 {
            // The engine skipped a commit our result does not include: again.
            continue;
        }
        if st.skipped_max > seq {
            // Persistent races (a very busy store): fall back to a snapshot
            // at our position; the engine's commits after it still apply.
            frame_plan = Plan::Snapshot { reset: false };
        }
        let mut cache = FrameCache::default();
        let frame: Option<Bytes> = match frame_plan {
            Plan::Snapshot { reset } => Some(cache.snapshot(&sub.name, seq, reset, &now)),
            Plan::DiffFromCurrent => {
                // From what the client holds; nothing changed: no frame.
                let client = st.sent.as_ref().unwrap_or(&st.view);
                let changes = diff(&sub.target, client, &now);
                (!changes.is_empty()).then(|| cache.changes(&sub.name, seq, &changes))
            }
            Plan::DiffFrom(then) => {
                Some(cache.changes(&sub.name, seq, &diff(&sub.target, &then, &now)))
            }
        };
        st.view = Arc::new(now);
        st.sent = None;
        st.seq = seq;
        st.edge = edge;
        st.dirty = false;
        st.skipped_max = 0;
        if let Some(frame) = frame {
            conn.push(frame);
        }
        inner
            .stats
            .builds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
}

enum Plan {
    Snapshot { reset: bool },
    DiffFromCurrent,
    DiffFrom(Vec<Arc<Document>>),
}

/// Reconstructs the view at position `from` for an unlimited target: the
/// current view without the documents changed in (from, seq], plus those
/// documents as they were at `from` (the `old` of their first change after
/// it) when they belonged to the target then.
fn resume_plan(
    inner: &Inner,
    principal: &hearth_rules::Principal,
    sub: &Subscription,
    from: u64,
    seq: u64,
    now: &[Arc<Document>],
) -> Result<Plan, ErrorBody> {
    if from > seq {
        // A token from the future (another server, a restored backup).
        return Ok(Plan::Snapshot { reset: true });
    }
    let commits =
        match backend::commits_between(&inner.store, from, seq, inner.config.resume_max_commits) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Plan::Snapshot { reset: false }),
            Err(hearth_store::ChangelogError::TooOld { .. }) => {
                return Ok(Plan::Snapshot { reset: true })
            }
            Err(e) => return Err(backend::changelog_error(e)),
        };
    if sub.target.limit().is_some() {
        // A limit window cannot be rolled back from the changed documents
        // alone; PROTOCOL.md: the client replaces its view.
        return Ok(Plan::Snapshot { reset: false });
    }
    let mut first_old: HashMap<&DocPath, Option<&Document>> = HashMap::new();
    for rec in &commits {
        for ch in &rec.changes {
            if sub.target.covers_path(&ch.path) {
                first_old.entry(&ch.path).or_insert(ch.old.as_ref());
            }
        }
    }
    let mut then: Vec<Arc<Document>> = now
        .iter()
        .filter(|d| !first_old.contains_key(&d.path))
        .cloned()
        .collect();
    for old in first_old.values().flatten() {
        if sub.target.matches(old)
            && backend::readable(&inner.store, &inner.access, principal, &sub.target, old)
        {
            then.push(Arc::new((*old).clone()));
        }
    }
    then.sort_by(|a, b| sub.target.cmp(a, b));
    Ok(Plan::DiffFrom(then))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{CollectionPath, Query};

    fn room(k: i64) -> Target {
        Target::query(
            Query::collection(CollectionPath::parse("msgs").expect("path")).filter(
                "room",
                hearth_protocol::Op::Eq,
                k,
            ),
        )
    }

    #[test]
    fn identical_targets_are_stored_once_and_forgotten_when_unused() {
        let targets = Targets::default();
        let a = targets.intern(room(1));
        let b = targets.intern(room(1));
        let c = targets.intern(room(2));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(targets.len(), 2);
        drop((a, b));
        targets.purge();
        assert_eq!(targets.len(), 1, "room 1 is held by nobody");
    }

    #[test]
    fn share_keys_differ_by_principal_and_by_claims() {
        let t = room(1);
        let mut claims = std::collections::BTreeMap::new();
        claims.insert("role".to_string(), hearth_protocol::Value::from("mod"));
        let keys = [
            share_key(&Principal::Admin, &t),
            share_key(&Principal::Unauthenticated, &t),
            share_key(&Principal::user("u1"), &t),
            share_key(&Principal::user("u2"), &t),
            share_key(
                &Principal::User {
                    uid: "u1".into(),
                    claims,
                },
                &t,
            ),
            share_key(&Principal::user("u1"), &room(2)),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(share_key(&Principal::user("u1"), &room(1)), keys[2]);
    }
}
