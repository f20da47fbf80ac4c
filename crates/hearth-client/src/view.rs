//! Subscription views: the server-confirmed result of a subscription, the
//! local view (that result with the client's pending writes applied, for
//! latency compensation), and the diff between two successive local views
//! that becomes a snapshot's `changes`.
//!
//! The server view is maintained exactly as the protocol says: a `snapshot`
//! frame replaces it, a `changes` frame is applied entry by entry (remove at
//! `old_index`, insert at `new_index`, each index relative to the list as
//! left by the entries before it). If an index does not agree with the view
//! (which would be a server bug), the entry is applied by path and the view
//! re-sorted by the query's reference order, so the view stays correct.

use std::collections::BTreeMap;

use hearth_protocol::{apply_write, DocPath, Document, Timestamp, Write, WriteKind};

use crate::wire::{ChangeKind, Target, WireChange};

/// One document of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotDoc {
    pub doc: Document,
    /// True when the document shows a local write the server has not
    /// confirmed yet (its `version` is then the last confirmed one).
    pub pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocChangeKind {
    Added,
    Modified,
    Removed,
}

/// How one document changed between two successive snapshots of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct DocChange {
    pub kind: DocChangeKind,
    /// The document after the change (before it, for `Removed`).
    pub doc: Document,
    /// Position in the previous snapshot's `docs` (`None` for `Added`).
    pub old_index: Option<usize>,
    /// Position in this snapshot's `docs` (`None` for `Removed`).
    pub new_index: Option<usize>,
    /// True when the new state includes unconfirmed local writes.
    pub pending: bool,
}

/// One state of a subscription's result, as a `Stream` item.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySnapshot {
    /// The documents in query order (0 or 1 for a document subscription).
    pub docs: Vec<SnapshotDoc>,
    /// What changed since the previous snapshot of this subscription (for
    /// the first snapshot: every document, as added).
    pub changes: Vec<DocChange>,
    /// True when the server has not confirmed this state in the current
    /// connection (offline, or reconnected and not yet resynchronised).
    pub from_cache: bool,
    /// True when some document shows an unconfirmed local write.
    pub has_pending_writes: bool,
    /// True when the server could not resume from the client's token (it was
    /// older than the changelog's retention) and sent a fresh result instead.
    pub reset: bool,
    /// The resume token of the server state this snapshot is built on.
    pub resume: Option<String>,
}

impl QuerySnapshot {
    /// The documents without their flags.
    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.docs.iter().map(|d| &d.doc)
    }
}

/// Why a `changes` frame could not be applied by index (the view was then
/// repaired by path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexMismatch(pub String);

/// The server-confirmed result of one subscription.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerView {
    pub docs: Vec<Document>,
}

impl ServerView {
    pub fn replace(&mut self, docs: Vec<Document>) {
        self.docs = docs;
    }

    /// Applies one `changes` frame. Returns `Err` (after repairing the view)
    /// when the server's indices disagreed with the view.
    pub fn apply(&mut self, target: &Target, changes: &[WireChange]) -> Result<(), IndexMismatch> {
        let before = self.docs.clone();
        match self.apply_by_index(changes) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.docs = before;
                self.apply_by_path(target, changes);
                Err(IndexMismatch(why))
            }
        }
    }

    /// Indices are absolute (protocol): `old_index` is the position in the
    /// view before the frame, `new_index` the position after it.
    fn apply_by_index(&mut self, changes: &[WireChange]) -> Result<(), String> {
        let mut leaving = vec![false; self.docs.len()];
        for c in changes {
            match (c.kind, c.old_index, c.new_index) {
                (ChangeKind::Added, None, Some(_))
                | (ChangeKind::Modified, Some(_), Some(_))
                | (ChangeKind::Removed, Some(_), None) => {}
                _ => return Err(format!("{:?} {} has the wrong indices", c.kind, c.doc.path)),
            }
            if let Some(i) = c.old_index {
                let i = i as usize;
                match self.docs.get(i) {
                    Some(d) if d.path == c.doc.path && !leaving[i] => leaving[i] = true,
                    _ => return Err(format!("{} is not at old_index {i}", c.doc.path)),
                }
            } else if self.docs.iter().any(|d| d.path == c.doc.path) {
                return Err(format!("{} added but already in the view", c.doc.path));
            }
        }
        let mut kept: Vec<Document> = std::mem::take(&mut self.docs)
            .into_iter()
            .zip(leaving)
            .filter(|(_, leaving)| !leaving)
            .map(|(d, _)| d)
            .collect();
        let mut entering: Vec<(usize, &Document)> = changes
            .iter()
            .filter_map(|c| c.new_index.map(|i| (i as usize, &c.doc)))
            .collect();
        entering.sort_by_key(|(i, _)| *i);
        for (i, doc) in entering {
            if i > kept.len() {
                return Err(format!("new_index {i} is past the end"));
            }
            kept.insert(i, doc.clone());
        }
        self.docs = kept;
        Ok(())
    }

    fn apply_by_path(&mut self, target: &Target, changes: &[WireChange]) {
        for c in changes {
            self.docs.retain(|d| d.path != c.doc.path);
            if c.kind != ChangeKind::Removed {
                self.docs.push(c.doc.clone());
            }
        }
        if let Target::Query(q) = target {
            let order = q.normalized_order();
            self.docs
                .sort_by(|a, b| hearth_protocol::query::compare_in_order(&order, a, b));
        }
    }
}

/// The local view: the server view with `pending` writes (oldest first)
/// applied on top with the same [`apply_write`] the server runs.
///
/// Only documents the view knows can be updated locally: an `update` or a
/// `merge` of a document outside a query's result is left to the server
/// (the document may exist with fields the client has never seen, so the
/// merged fields alone would be a state that never exists). With a
/// `limit`, a local delete can leave the window one short until the server
/// answers.
pub fn local_view<'a>(
    target: &Target,
    server: &[Document],
    pending: impl IntoIterator<Item = &'a [Write]>,
    now: Timestamp,
) -> Vec<SnapshotDoc> {
    let relevant: Vec<&Write> = pending
        .into_iter()
        .flatten()
        .filter(|w| touches(target, &w.path))
        .collect();
    if relevant.is_empty() {
        return server
            .iter()
            .map(|d| SnapshotDoc {
                doc: d.clone(),
                pending: false,
            })
            .collect();
    }
    let mut docs: BTreeMap<DocPath, SnapshotDoc> = server
        .iter()
        .map(|d| {
            (
                d.path.clone(),
                SnapshotDoc {
                    doc: d.clone(),
                    pending: false,
                },
            )
        })
        .collect();
    for w in relevant {
        let current = docs.get(&w.path).map(|d| &d.doc);
        let unknown_base = current.is_none() && matches!(target, Target::Query(_));
        if unknown_base && matches!(w.kind, WriteKind::Merge { .. }) {
            continue;
        }
        match apply_write(current, w, now) {
            Ok(Some(fields)) => {
                let doc = Document {
                    path: w.path.clone(),
                    fields,
                    create_time: current.map(|d| d.create_time).unwrap_or(now),
                    update_time: now,
                    version: current.map(|d| d.version).unwrap_or(0),
                };
                docs.insert(w.path.clone(), SnapshotDoc { doc, pending: true });
            }
            Ok(None) => {
                docs.remove(&w.path);
            }
            // The server will reject it too; nothing to show.
            Err(_) => {}
        }
    }
    match target {
        Target::Doc(path) => docs.remove(path).into_iter().collect(),
        Target::Query(q) => {
            let order = q.normalized_order();
            let mut list: Vec<SnapshotDoc> = docs
                .into_values()
                .filter(|d| q.matches_with_order(&d.doc, &order))
                .collect();
            list.sort_by(|a, b| hearth_protocol::query::compare_in_order(&order, &a.doc, &b.doc));
            if let Some(limit) = q.limit {
                let limit = limit as usize;
                if q.limit_to_last {
                    let skip = list.len().saturating_sub(limit);
                    list.drain(..skip);
                } else {
                    list.truncate(limit);
                }
            }
            list
        }
    }
}

/// Whether a write to `path` can affect the target's result.
fn touches(target: &Target, path: &DocPath) -> bool {
    match target {
        Target::Doc(p) => p == path,
        Target::Query(q) => q.source.contains(path),
    }
}

/// The changes from `old` to `new`: removals (by old position), then
/// additions and modifications in the new order.
pub fn diff(old: &[SnapshotDoc], new: &[SnapshotDoc]) -> Vec<DocChange> {
    let old_pos: BTreeMap<&DocPath, usize> = old
        .iter()
        .enumerate()
        .map(|(i, d)| (&d.doc.path, i))
        .collect();
    let new_paths: std::collections::BTreeSet<&DocPath> = new.iter().map(|d| &d.doc.path).collect();
    let mut changes = Vec::new();
    for (i, d) in old.iter().enumerate() {
        if !new_paths.contains(&d.doc.path) {
            changes.push(DocChange {
                kind: DocChangeKind::Removed,
                doc: d.doc.clone(),
                old_index: Some(i),
                new_index: None,
                pending: false,
            });
        }
    }
    for (i, d) in new.iter().enumerate() {
        match old_pos.get(&d.doc.path) {
            None => changes.push(DocChange {
                kind: DocChangeKind::Added,
                doc: d.doc.clone(),
                old_index: None,
                new_index: Some(i),
                pending: d.pending,
            }),
            Some(&j) => {
                let before = &old[j];
                let same = before.pending == d.pending
                    && before.doc.version == d.doc.version
                    && before.doc.update_time == d.doc.update_time
                    && identical_fields(&before.doc, &d.doc);
                if !same {
                    changes.push(DocChange {
                        kind: DocChangeKind::Modified,
                        doc: d.doc.clone(),
                        old_index: Some(j),
                        new_index: Some(i),
                        pending: d.pending,
                    });
                }
            }
        }
    }
    changes
}

fn identical_fields(a: &Document, b: &Document) -> bool {
    a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|((ka, va), (kb, vb))| ka == kb && va.is_identical(vb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{CollectionPath, Direction, Map, Op, Query, Value};

    fn doc(id: &str, n: i64, version: u64) -> Document {
        let mut fields = Map::new();
        fields.insert("n".into(), Value::Integer(n));
        Document {
            path: DocPath::parse(&format!("items/{id}")).unwrap(),
            fields,
            create_time: Timestamp(1),
            update_time: Timestamp(version as i64),
            version,
        }
    }

    fn query() -> Target {
        Target::Query(
            Query::collection(CollectionPath::parse("items").unwrap()).order("n", Direction::Asc),
        )
    }

    fn change(kind: ChangeKind, d: Document, old: Option<u32>, new: Option<u32>) -> WireChange {
        WireChange {
            kind,
            doc: d,
            old_index: old,
            new_index: new,
        }
    }

    fn ids(view: &ServerView) -> Vec<String> {
        view.docs.iter().map(|d| d.path.id().to_string()).collect()
    }

    #[test]
    fn changes_apply_with_absolute_old_and_new_indices() {
        let mut view = ServerView::default();
        view.replace(vec![doc("a", 1, 1), doc("b", 2, 2), doc("c", 3, 3)]);
        // One commit: b moves to the end, a is removed, d is added first.
        // Indices are absolute: before the frame [a b c], after it [d c b].
        let frame = vec![
            change(ChangeKind::Modified, doc("b", 9, 4), Some(1), Some(2)),
            change(ChangeKind::Removed, doc("a", 1, 1), Some(0), None),
            change(ChangeKind::Added, doc("d", 0, 4), None, Some(0)),
        ];
        view.apply(&query(), &frame).unwrap();
        assert_eq!(ids(&view), ["d", "c", "b"]);
        assert_eq!(view.docs[2].version, 4);
    }

    #[test]
    fn a_limit_window_shift_removes_the_last_and_adds_the_next() {
        let mut view = ServerView::default();
        view.replace(vec![doc("a", 1, 1), doc("b", 2, 2)]);
        let frame = vec![
            change(ChangeKind::Removed, doc("a", 1, 1), Some(0), None),
            change(ChangeKind::Added, doc("c", 3, 3), None, Some(1)),
        ];
        // [a b] → [b c]
        view.apply(&query(), &frame).unwrap();
        assert_eq!(ids(&view), ["b", "c"]);
    }

    #[test]
    fn wrong_indices_are_repaired_by_path_and_reported() {
        let mut view = ServerView::default();
        view.replace(vec![doc("a", 1, 1), doc("b", 2, 2)]);
        let frame = vec![change(
            ChangeKind::Modified,
            doc("a", 5, 3),
            Some(1),
            Some(1),
        )];
        assert!(view.apply(&query(), &frame).is_err());
        assert_eq!(ids(&view), ["b", "a"]);
        assert_eq!(view.docs[1].version, 3);
    }

    #[test]
    fn pending_writes_are_applied_locally_and_flagged() {
        let server = vec![doc("a", 1, 1), doc("b", 2, 2)];
        let mut data = Map::new();
        data.insert("n".into(), Value::Integer(0));
        let writes = vec![
            Write::set(DocPath::parse("items/z").unwrap(), data),
            Write::delete(DocPath::parse("items/b").unwrap()),
            // Outside the collection: ignored by this view.
            Write::delete(DocPath::parse("other/a").unwrap()),
        ];
        let local = local_view(&query(), &server, [writes.as_slice()], Timestamp(50));
        let got: Vec<(&str, bool)> = local.iter().map(|d| (d.doc.path.id(), d.pending)).collect();
        assert_eq!(got, [("z", true), ("a", false)]);
    }

    #[test]
    fn a_pending_write_that_leaves_the_filter_removes_the_document_locally() {
        let target = Target::Query(
            Query::collection(CollectionPath::parse("items").unwrap()).filter("n", Op::Lt, 5),
        );
        let server = vec![doc("a", 1, 1)];
        let mut fields = BTreeMap::new();
        fields.insert(
            hearth_protocol::FieldPath::parse("n").unwrap(),
            Value::Integer(7),
        );
        let writes = vec![Write::update(DocPath::parse("items/a").unwrap(), fields)];
        assert!(local_view(&target, &server, [writes.as_slice()], Timestamp(2)).is_empty());
    }

    fn merge_n(id: &str, n: i64) -> Write {
        let mut fields = BTreeMap::new();
        fields.insert(
            hearth_protocol::FieldPath::parse("n").unwrap(),
            Value::Integer(n),
        );
        Write::merge(DocPath::parse(&format!("items/{id}")).unwrap(), fields)
    }

    #[test]
    fn a_merge_of_a_document_outside_a_query_is_left_to_the_server() {
        // `b` may exist with fields this view has never seen: showing
        // `{n: 0}` alone would show a document that never exists.
        let server = vec![doc("a", 1, 1)];
        let writes = vec![merge_n("b", 0), merge_n("a", 5)];
        let local = local_view(&query(), &server, [writes.as_slice()], Timestamp(2));
        let got: Vec<(&str, i64, bool)> = local
            .iter()
            .map(|d| match d.doc.fields.get("n") {
                Some(Value::Integer(n)) => (d.doc.path.id(), *n, d.pending),
                other => panic!("unexpected n {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [("a", 5, true)],
            "the known document merged, the unknown one not shown"
        );
        // A merge after a pending set of the same document has a known base.
        let mut data = Map::new();
        data.insert("n".into(), Value::Integer(9));
        let created = vec![
            Write::set(DocPath::parse("items/c").unwrap(), data),
            merge_n("c", 3),
        ];
        let local = local_view(&query(), &server, [created.as_slice()], Timestamp(2));
        assert_eq!(local.len(), 2);
        assert_eq!(local[1].doc.fields.get("n"), Some(&Value::Integer(3)));
    }

    #[test]
    fn a_merge_creates_an_absent_document_in_a_document_view() {
        // A document target knows the document is absent: the merge creates it.
        let target = Target::Doc(DocPath::parse("items/b").unwrap());
        let writes = vec![merge_n("b", 4)];
        let local = local_view(&target, &[], [writes.as_slice()], Timestamp(2));
        assert_eq!(local.len(), 1);
        assert!(local[0].pending);
    }

    #[test]
    fn diff_reports_each_kind_with_old_and_new_positions() {
        let plain = |d: Document| SnapshotDoc {
            doc: d,
            pending: false,
        };
        let old = vec![
            plain(doc("a", 1, 1)),
            plain(doc("b", 2, 2)),
            plain(doc("c", 3, 3)),
        ];
        let new = vec![
            plain(doc("c", 3, 3)),
            plain(doc("b", 7, 4)),
            plain(doc("d", 8, 5)),
        ];
        let changes = diff(&old, &new);
        let got: Vec<(DocChangeKind, &str, Option<usize>, Option<usize>)> = changes
            .iter()
            .map(|c| (c.kind, c.doc.path.id(), c.old_index, c.new_index))
            .collect();
        assert_eq!(
            got,
            [
                (DocChangeKind::Removed, "a", Some(0), None),
                (DocChangeKind::Modified, "b", Some(1), Some(1)),
                (DocChangeKind::Added, "d", None, Some(2)),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn confirming_a_pending_write_is_a_modification_of_its_flag() {
        let pending = vec![SnapshotDoc {
            doc: doc("a", 1, 1),
            pending: true,
        }];
        let confirmed = vec![SnapshotDoc {
            doc: doc("a", 1, 1),
            pending: false,
        }];
        let changes = diff(&pending, &confirmed);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, DocChangeKind::Modified);
        assert!(!changes[0].pending);
    }

    #[test]
    fn doc_targets_show_zero_or_one_document() {
        let target = Target::Doc(DocPath::parse("items/a").unwrap());
        let writes = vec![Write::delete(DocPath::parse("items/a").unwrap())];
        assert!(local_view(
            &target,
            &[doc("a", 1, 1)],
            [writes.as_slice()],
            Timestamp(3)
        )
        .is_empty());
        assert_eq!(
            local_view(&target, &[doc("a", 1, 1)], [], Timestamp(3)).len(),
            1
        );
    }
}
