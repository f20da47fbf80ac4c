//! A subscription's view and the pure functions that move it forward.
//!
//! A view is what the client holds for one subscription: the documents of
//! its target, sorted in the query's normalized order, as of one changelog
//! position. The gateway keeps a copy of it (documents shared as
//! `Arc<Document>` between all subscriptions that hold the same version) so
//! that it can compute positions, keep limit windows and send diffs when it
//! coalesces or resumes.
//!
//! Two ways to move a view:
//! - [`apply_incremental`]: the changes of one commit to an unlimited query
//!   or a document target, in O(k log n) for k changes;
//! - [`diff`]: any old view against any new view (limit windows, coalesced
//!   subscriptions, resume), in O(n).
//!
//! Both produce [`ChangeOut`]s with *absolute* indexes: `old_index` in the
//! view before, `new_index` in the view after (see PROTOCOL.md, "Applying a
//! changes frame").

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use hearth_protocol::query::compare_in_order;
use hearth_protocol::ws::ChangeKind;
use hearth_protocol::{DocPath, Document, Order, Query};

/// A view, shared: subscriptions of the same target for the same principal
/// hold the same list (see `fanout`), and a coalescing subscription keeps
/// the list its client holds next to the current one.
pub(crate) type View = Arc<Vec<Arc<Document>>>;

/// What a subscription watches, with what is needed to evaluate it fast.
#[derive(Debug)]
pub(crate) enum Target {
    Doc(DocPath),
    Query {
        query: Query,
        /// `query.normalized_order()`, computed once.
        order: Vec<Order>,
    },
}

impl Target {
    pub(crate) fn query(query: Query) -> Target {
        let order = query.normalized_order();
        Target::Query { query, order }
    }

    /// Whether the document belongs to the target (ignoring any limit).
    pub(crate) fn matches(&self, doc: &Document) -> bool {
        match self {
            Target::Doc(path) => &doc.path == path,
            Target::Query { query, order } => query.matches_with_order(doc, order),
        }
    }

    /// Whether a change at this path could concern the target at all.
    pub(crate) fn covers_path(&self, path: &DocPath) -> bool {
        match self {
            Target::Doc(p) => p == path,
            Target::Query { query, .. } => query.source.contains(path),
        }
    }

    pub(crate) fn cmp(&self, a: &Document, b: &Document) -> Ordering {
        match self {
            Target::Doc(_) => a.path.cmp(&b.path),
            Target::Query { order, .. } => compare_in_order(order, a, b),
        }
    }

    /// The limit of a limited query (`None` for documents and unlimited queries).
    pub(crate) fn limit(&self) -> Option<(u32, bool)> {
        match self {
            Target::Query { query, .. } => query.limit.map(|n| (n, query.limit_to_last)),
            Target::Doc(_) => None,
        }
    }
}

/// One change to deliver, before encoding.
#[derive(Debug, Clone)]
pub(crate) struct ChangeOut {
    pub kind: ChangeKind,
    pub doc: Arc<Document>,
    pub old_index: Option<u32>,
    pub new_index: Option<u32>,
}

/// The position of `doc` (by path) in `view`, using `key` (a version of the
/// same document, normally the one the view holds) for a binary search and
/// falling back to a scan only when `key` matches the target (so the view
/// should hold it) but is not where it would sort.
pub(crate) fn position(
    view: &[Arc<Document>],
    target: &Target,
    key: Option<&Document>,
    path: &DocPath,
) -> Option<usize> {
    if let Some(key) = key {
        let i = view.partition_point(|d| target.cmp(d, key) == Ordering::Less);
        if i < view.len() && &view[i].path == path {
            return Some(i);
        }
        if !target.matches(key) {
            // A version that does not match the target is not in the view
            // (views hold matching documents only): no scan.
            return None;
        }
    }
    view.iter().position(|d| &d.path == path)
}

/// The position of exactly this version of a document in `view` (binary
/// search only).
fn find_exact(view: &[Arc<Document>], target: &Target, doc: &Document) -> Option<usize> {
    let i = view.partition_point(|d| target.cmp(d, doc) == Ordering::Less);
    (i < view.len() && view[i].path == doc.path).then_some(i)
}

fn insertion_point(view: &[Arc<Document>], target: &Target, doc: &Document) -> usize {
    view.partition_point(|d| target.cmp(d, doc) == Ordering::Less)
}

/// One document's change in a commit, as the view sees it: the version
/// before (to find it), and the version after *if* it belongs to the view
/// (matches and is readable), else `None`.
pub(crate) struct Step<'a> {
    pub path: &'a DocPath,
    pub old: Option<&'a Document>,
    pub new_visible: Option<Arc<Document>>,
}

/// Applies one commit's changes to an unlimited view, in place. Returns the
/// changes (removed first by old index, then added/modified by new index).
/// Changes whose version the view already holds are skipped, so applying a
/// commit twice is harmless. Cost: O(k log n) comparisons plus pointer moves
/// for k changes — no per-document work for the documents that stay.
pub(crate) fn apply_incremental(
    view: &mut Vec<Arc<Document>>,
    target: &Target,
    steps: Vec<Step<'_>>,
) -> Vec<ChangeOut> {
    let mut gone: Vec<usize> = Vec::new();
    let mut removed: Vec<usize> = Vec::new();
    let mut inserts: Vec<(Arc<Document>, Option<usize>)> = Vec::new();
    for step in steps {
        let pos = match step.old {
            Some(old) => position(view, target, Some(old), step.path),
            // The document did not exist before this commit, so the view
            // cannot hold it — unless this commit was applied already, in
            // which case it holds exactly the new version. No scan.
            None => step
                .new_visible
                .as_deref()
                .and_then(|n| find_exact(view, target, n)),
        };
        match (pos, step.new_visible) {
            (None, None) => {}
            (Some(i), None) => {
                gone.push(i);
                removed.push(i);
            }
            (None, Some(new)) => inserts.push((new, None)),
            (Some(i), Some(new)) => {
                if view[i].version >= new.version {
                    continue;
                }
                gone.push(i);
                inserts.push((new, Some(i)));
            }
        }
    }
    if gone.is_empty() && inserts.is_empty() {
        return Vec::new();
    }
    removed.sort_unstable();
    let mut out: Vec<ChangeOut> = removed
        .iter()
        .map(|&i| ChangeOut {
            kind: ChangeKind::Removed,
            doc: Arc::clone(&view[i]),
            old_index: Some(i as u32),
            new_index: None,
        })
        .collect();
    gone.sort_unstable_by(|a, b| b.cmp(a));
    for i in gone {
        view.remove(i);
    }
    for (doc, _) in &inserts {
        let at = insertion_point(view, target, doc);
        view.insert(at, Arc::clone(doc));
    }
    let mut upserts: Vec<ChangeOut> = inserts
        .into_iter()
        .map(|(doc, old)| {
            let new_index = find_exact(view, target, &doc).map(|j| j as u32);
            ChangeOut {
                kind: if old.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                },
                doc,
                old_index: old.map(|i| i as u32),
                new_index,
            }
        })
        .collect();
    upserts.sort_by_key(|c| c.new_index);
    out.extend(upserts);
    out
}

/// The changes that turn `old` into `new` (both sorted views of `target`).
/// A document present in both with a different version is `modified`; one
/// with the same version is unchanged (even if it moved because others came
/// or went).
///
/// Both views are walked in step, in the target's order. Views that descend
/// from one another share their unchanged documents (the same `Arc`), so for
/// those the walk costs a pointer comparison each; only the documents that
/// differ are compared by order and then paired up by path. O(n + k log k)
/// for k differing documents.
pub(crate) fn diff(
    target: &Target,
    old: &[Arc<Document>],
    new: &[Arc<Document>],
) -> Vec<ChangeOut> {
    let unchanged = |a: &Arc<Document>, b: &Arc<Document>| {
        Arc::ptr_eq(a, b) || (a.path == b.path && a.version == b.version && a.fields == b.fields)
    };
    let (mut i, mut j) = (0, 0);
    let mut gone: Vec<usize> = Vec::new();
    let mut came: Vec<usize> = Vec::new();
    while i < old.len() && j < new.len() {
        if unchanged(&old[i], &new[j]) {
            i += 1;
            j += 1;
            continue;
        }
        match target.cmp(&old[i], &new[j]) {
            Ordering::Less => {
                gone.push(i);
                i += 1;
            }
            Ordering::Greater => {
                came.push(j);
                j += 1;
            }
            Ordering::Equal => {
                gone.push(i);
                came.push(j);
                i += 1;
                j += 1;
            }
        }
    }
    gone.extend(i..old.len());
    came.extend(j..new.len());
    if gone.is_empty() && came.is_empty() {
        return Vec::new();
    }
    let gone_at: HashMap<&DocPath, usize> = gone.iter().map(|&i| (&old[i].path, i)).collect();
    let came_paths: std::collections::HashSet<&DocPath> =
        came.iter().map(|&j| &new[j].path).collect();
    let mut out: Vec<ChangeOut> = gone
        .iter()
        .filter(|&&i| !came_paths.contains(&old[i].path))
        .map(|&i| ChangeOut {
            kind: ChangeKind::Removed,
            doc: Arc::clone(&old[i]),
            old_index: Some(i as u32),
            new_index: None,
        })
        .collect();
    for &j in &came {
        let d = &new[j];
        match gone_at.get(&d.path) {
            None => out.push(ChangeOut {
                kind: ChangeKind::Added,
                doc: Arc::clone(d),
                old_index: None,
                new_index: Some(j as u32),
            }),
            Some(&i) if !unchanged(&old[i], d) => out.push(ChangeOut {
                kind: ChangeKind::Modified,
                doc: Arc::clone(d),
                old_index: Some(i as u32),
                new_index: Some(j as u32),
            }),
            Some(_) => {}
        }
    }
    out
}

/// Applies changes to a client-side list exactly as PROTOCOL.md tells a
/// client to (used by tests to check that the gateway's indexes are right).
#[cfg(test)]
pub(crate) fn client_apply(view: &[Arc<Document>], changes: &[ChangeOut]) -> Vec<Arc<Document>> {
    let drop: std::collections::HashSet<usize> = changes
        .iter()
        .filter_map(|c| c.old_index.map(|i| i as usize))
        .collect();
    let mut next: Vec<Arc<Document>> = view
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, d)| Arc::clone(d))
        .collect();
    let mut ins: Vec<&ChangeOut> = changes.iter().filter(|c| c.new_index.is_some()).collect();
    ins.sort_by_key(|c| c.new_index);
    for c in ins {
        let j = c.new_index.unwrap_or_default() as usize;
        next.insert(j.min(next.len()), Arc::clone(&c.doc));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{CollectionPath, Direction, Map, Op, Timestamp, Value};

    fn doc(id: &str, n: i64, version: u64) -> Arc<Document> {
        let mut fields = Map::new();
        fields.insert("n".into(), Value::from(n));
        Arc::new(Document {
            path: DocPath::parse(&format!("c/{id}")).expect("path"),
            fields,
            create_time: Timestamp(0),
            update_time: Timestamp(0),
            version,
        })
    }

    fn target() -> Target {
        Target::query(
            Query::collection(CollectionPath::parse("c").expect("path"))
                .filter("n", Op::Ge, 0)
                .order("n", Direction::Asc),
        )
    }

    fn paths(v: &[Arc<Document>]) -> Vec<String> {
        v.iter().map(|d| d.path.id().to_string()).collect()
    }

    #[test]
    fn incremental_changes_reproduce_the_new_view_on_the_client() {
        let t = target();
        let view = vec![
            doc("a", 1, 1),
            doc("b", 2, 1),
            doc("c", 3, 1),
            doc("d", 4, 1),
        ];
        // a moves to the end, d leaves (n < 0), e arrives in the middle.
        let a2 = doc("a", 9, 2);
        let d2 = doc("d", -1, 2);
        let e = doc("e", 2, 2);
        let steps = vec![
            Step {
                path: &a2.path,
                old: Some(&view[0]),
                new_visible: Some(Arc::clone(&a2)),
            },
            Step {
                path: &d2.path,
                old: Some(&view[3]),
                new_visible: None,
            },
            Step {
                path: &e.path,
                old: None,
                new_visible: Some(Arc::clone(&e)),
            },
        ];
        let mut next = view.clone();
        let changes = apply_incremental(&mut next, &t, steps);
        assert_eq!(paths(&next), ["b", "e", "c", "a"]);
        assert_eq!(paths(&client_apply(&view, &changes)), paths(&next));
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChangeKind::Removed, ChangeKind::Added, ChangeKind::Modified]
        );
        assert_eq!(changes[2].old_index, Some(0));
        assert_eq!(changes[2].new_index, Some(3));
    }

    #[test]
    fn applying_a_version_the_view_already_has_is_a_no_op() {
        let t = target();
        let view = vec![doc("a", 1, 5)];
        let again = doc("a", 1, 5);
        let steps = vec![Step {
            path: &again.path,
            old: Some(&view[0]),
            new_visible: Some(again.clone()),
        }];
        let mut next = view.clone();
        let changes = apply_incremental(&mut next, &t, steps);
        assert!(changes.is_empty());
        assert_eq!(paths(&next), ["a"]);
    }

    #[test]
    fn diff_reports_window_moves_with_absolute_indexes() {
        let old = vec![doc("a", 1, 1), doc("b", 2, 1), doc("c", 3, 1)];
        let new = vec![doc("b", 2, 1), doc("c", 3, 2), doc("d", 4, 3)];
        let changes = diff(&target(), &old, &new);
        assert_eq!(paths(&client_apply(&old, &changes)), paths(&new));
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(changes[0].kind, ChangeKind::Removed);
        assert_eq!(changes[1].kind, ChangeKind::Modified);
        assert_eq!(
            (changes[1].old_index, changes[1].new_index),
            (Some(2), Some(1))
        );
        assert_eq!(changes[2].kind, ChangeKind::Added);
    }

    #[test]
    fn diff_of_random_views_rebuilds_the_new_view_on_the_client() {
        use rand::{Rng, SeedableRng};
        let t = target();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..500 {
            // Documents c/0..c/19 at random values; the new view keeps some
            // Arcs, replaces some versions, drops some and adds others.
            let mut old: Vec<Arc<Document>> = Vec::new();
            for i in 0..20 {
                if rng.gen_bool(0.6) {
                    old.push(doc(&format!("{i:02}"), rng.gen_range(0..8), 1));
                }
            }
            old.sort_by(|a, b| t.cmp(a, b));
            let mut new: Vec<Arc<Document>> = Vec::new();
            for i in 0..20 {
                let id = format!("{i:02}");
                let before = old.iter().find(|d| d.path.id() == id);
                match (before, rng.gen_range(0..4)) {
                    (Some(d), 0 | 1) => new.push(Arc::clone(d)),
                    (Some(_), 2) => new.push(doc(&id, rng.gen_range(0..8), 2)),
                    (None, 0) => new.push(doc(&id, rng.gen_range(0..8), 2)),
                    _ => {}
                }
            }
            new.sort_by(|a, b| t.cmp(a, b));
            let changes = diff(&t, &old, &new);
            assert_eq!(
                paths(&client_apply(&old, &changes)),
                paths(&new),
                "case {case}: {changes:?}"
            );
            for c in &changes {
                if let Some(j) = c.new_index {
                    assert!(Arc::ptr_eq(&new[j as usize], &c.doc), "case {case}");
                }
            }
            assert!(
                changes
                    .iter()
                    .all(|c| c.kind != ChangeKind::Modified || c.doc.version == 2),
                "an unchanged document is never reported: case {case}"
            );
        }
    }
}
