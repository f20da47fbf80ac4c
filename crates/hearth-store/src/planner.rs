//! The query planner and executor.
//!
//! A query's filter is put in disjunctive normal form (`in` becomes one `==`
//! branch per value, `array-contains-any` one `array-contains` branch per
//! value, `or` one branch per alternative). Each branch is served by one
//! index range scan whose key order is the query's normalized order (or its
//! exact reverse):
//!
//! * no equality and no order field: the collection's membership keys (`__name__` order);
//! * one order field (from `order_by` or an inequality): that field's automatic single-field index;
//! * one `==` or `array-contains` and no other order: that field's single-field index, at the value;
//! * anything else: a declared composite index whose fields are the equality
//!   fields (any order) followed by the order fields with matching (or all
//!   reversed) directions. There is no index intersection (zig-zag join):
//!   several equality fields need a composite index, and the error names it.
//!
//! Range filters on the first order field, `__name__` filters and cursors
//! become key-range bounds; every fetched document is then checked with
//! [`Query::matches`], so the reference semantics decide membership and
//! the index only decides order and how much is read. Branches are merged in
//! order and de-duplicated; the limit stops every scan early, so a query
//! reads O(limit × branches) index entries when its filters are all served by
//! the index. Collection-group queries need a declared `collection_group`
//! scoped index unless they have no filters and no order.

use std::cmp::Ordering;
use std::ops::Bound;

use hearth_protocol::query::compare_in_order;
use hearth_protocol::{
    CollectionPath, Direction, DocPath, Document, FieldFilter, FieldPath, Filter, Op, Order, Query,
    QuerySource, Value,
};

use crate::codec;
use crate::config::{CompositeIndex, IndexExemption, IndexField, IndexMode, IndexScope};
use crate::engine::Engine;
use crate::index::{single_field_prefix, IndexDef, IndexState};
use crate::keys;
use crate::StoreError;

/// Upper bound on DNF branches of one query.
pub const MAX_BRANCHES: usize = 256;

pub(crate) struct Ctx<'a> {
    pub engine: &'a dyn Engine,
    pub indexes: &'a [IndexDef],
    pub exemptions: &'a [IndexExemption],
    pub allow_scans: bool,
}

/// One component of an index key after its fixed prefix.
#[derive(Debug, Clone)]
enum Component {
    Field {
        field: FieldPath,
        inverted: bool,
    },
    /// The document: its id within `collection`, or its full path (group scope).
    Name {
        collection: Option<CollectionPath>,
        inverted: bool,
    },
}

impl Component {
    fn encode(&self, value: &Value, query: &Query, cursor: bool) -> Option<Vec<u8>> {
        match self {
            Component::Field { inverted, .. } => {
                let mut k = codec::value_key(value);
                if *inverted {
                    codec::invert(&mut k);
                }
                Some(k)
            }
            Component::Name {
                collection,
                inverted,
            } => {
                // Cursors may give a bare id; filters on __name__ take full paths.
                let path = if cursor {
                    query.resolve_name(value)?
                } else {
                    DocPath::parse(value.as_str()?).ok()?
                };
                let mut k = Vec::new();
                match collection {
                    Some(c) => {
                        if !c.contains(&path) {
                            return None;
                        }
                        codec::encode_escaped(&mut k, path.id().as_bytes());
                    }
                    None => codec::encode_doc_path(&mut k, &path),
                }
                if *inverted {
                    codec::invert(&mut k);
                }
                Some(k)
            }
        }
    }

    fn is(&self, field: &FieldPath) -> bool {
        match self {
            Component::Field { field: f, .. } => f == field,
            Component::Name { .. } => field.is_document_id(),
        }
    }
}

/// A planned range scan over one index.
#[derive(Debug, Clone)]
struct ScanSpec {
    lower: Vec<u8>,
    upper: Option<Vec<u8>>,
    /// Key order is the reverse of the query's normalized order.
    key_desc: bool,
}

impl ScanSpec {
    fn new(prefix: Vec<u8>, key_desc: bool) -> ScanSpec {
        ScanSpec {
            upper: codec::prefix_end(&prefix),
            lower: prefix,
            key_desc,
        }
    }
    fn raise_lower(&mut self, key: Vec<u8>) {
        if key > self.lower {
            self.lower = key;
        }
    }
    fn cut_upper(&mut self, key: Option<Vec<u8>>) {
        let Some(key) = key else { return };
        match &self.upper {
            Some(u) if *u <= key => {}
            _ => self.upper = Some(key),
        }
    }
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(message.into())
}

/// Expands a filter into OR-of-AND branches (see the module docs).
fn dnf(filter: Option<&Filter>) -> Result<Vec<Vec<FieldFilter>>, StoreError> {
    let Some(filter) = filter else {
        return Ok(vec![vec![]]);
    };
    let out = match filter {
        Filter::Field(ff) => match ff.op {
            Op::In | Op::ArrayContainsAny => {
                let op = if ff.op == Op::In {
                    Op::Eq
                } else {
                    Op::ArrayContains
                };
                ff.value
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|v| {
                                vec![FieldFilter {
                                    field: ff.field.clone(),
                                    op,
                                    value: v.clone(),
                                }]
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => vec![vec![ff.clone()]],
        },
        Filter::Or(children) => {
            let mut out = Vec::new();
            for c in children {
                out.extend(dnf(Some(c))?);
                if out.len() > MAX_BRANCHES {
                    return Err(too_many_branches());
                }
            }
            out
        }
        Filter::And(children) => {
            let mut acc: Vec<Vec<FieldFilter>> = vec![vec![]];
            for c in children {
                let child = dnf(Some(c))?;
                if acc.len().saturating_mul(child.len()) > MAX_BRANCHES {
                    return Err(too_many_branches());
                }
                let mut next = Vec::with_capacity(acc.len() * child.len());
                for a in &acc {
                    for b in &child {
                        let mut x = a.clone();
                        x.extend(b.iter().cloned());
                        next.push(x);
                    }
                }
                acc = next;
            }
            acc
        }
    };
    if out.len() > MAX_BRANCHES {
        return Err(too_many_branches());
    }
    Ok(out)
}

fn too_many_branches() -> StoreError {
    invalid(format!(
        "the query's filters expand to more than {MAX_BRANCHES} alternatives (in / or / array-contains-any multiply); simplify it"
    ))
}

/// Plans one conjunctive branch.
fn plan_branch(
    ctx: &Ctx<'_>,
    query: &Query,
    order: &[Order],
    filters: &[FieldFilter],
) -> Result<ScanSpec, StoreError> {
    let name_desc = order.last().is_some_and(|o| o.direction == Direction::Desc);
    let mut eq: Vec<(FieldPath, Value)> = Vec::new();
    let mut ac: Option<(FieldPath, Value)> = None;
    for f in filters {
        if f.field.is_document_id() {
            continue;
        }
        match f.op {
            Op::Eq if !eq.iter().any(|(x, _)| *x == f.field) => {
                eq.push((f.field.clone(), f.value.clone()))
            }
            Op::ArrayContains if ac.is_none() => ac = Some((f.field.clone(), f.value.clone())),
            _ => {}
        }
    }
    let rest: Vec<Order> = order[..order.len().saturating_sub(1)]
        .iter()
        .filter(|o| !eq.iter().any(|(f, _)| *f == o.field))
        .cloned()
        .collect();

    let (mut spec, components) = match &query.source {
        QuerySource::Collection(c) => {
            let name = |inverted| Component::Name {
                collection: Some(c.clone()),
                inverted,
            };
            if eq.is_empty() && ac.is_none() && rest.is_empty() {
                (
                    ScanSpec::new(keys::members_prefix(c), name_desc),
                    vec![name(false)],
                )
            } else if eq.is_empty()
                && ac.is_none()
                && rest.len() == 1
                && (rest[0].direction == Direction::Desc) == name_desc
                && !exempt(ctx, c.id(), &rest[0].field)
            {
                (
                    ScanSpec::new(single_field_prefix(c, &rest[0].field, false), name_desc),
                    vec![
                        Component::Field {
                            field: rest[0].field.clone(),
                            inverted: false,
                        },
                        name(false),
                    ],
                )
            } else if let Some((field, value, array)) = single_equality(&eq, &ac)
                .filter(|(f, _, _)| rest.is_empty() && !exempt(ctx, c.id(), f))
            {
                let mut prefix = single_field_prefix(c, field, array);
                codec::encode_value_key(&mut prefix, value);
                (ScanSpec::new(prefix, name_desc), vec![name(false)])
            } else {
                plan_composite(
                    ctx,
                    query,
                    IndexScope::Collection,
                    c.id(),
                    Some(c),
                    &eq,
                    &ac,
                    &rest,
                    name_desc,
                )?
            }
        }
        QuerySource::CollectionGroup(group) => {
            if eq.is_empty() && ac.is_none() && rest.is_empty() {
                (
                    ScanSpec::new(keys::group_prefix(group), name_desc),
                    vec![Component::Name {
                        collection: None,
                        inverted: false,
                    }],
                )
            } else {
                plan_composite(
                    ctx,
                    query,
                    IndexScope::CollectionGroup,
                    group,
                    None,
                    &eq,
                    &ac,
                    &rest,
                    name_desc,
                )?
            }
        }
    };

    let base = spec.lower.clone();
    apply_ranges(&mut spec, &base, &components, filters, query);
    if let Some(start) = &query.start_at {
        apply_cursor(
            &mut spec,
            &base,
            &components,
            order,
            &eq,
            start,
            true,
            query,
        );
    }
    if let Some(end) = &query.end_at {
        apply_cursor(&mut spec, &base, &components, order, &eq, end, false, query);
    }
    Ok(spec)
}

fn single_equality<'a>(
    eq: &'a [(FieldPath, Value)],
    ac: &'a Option<(FieldPath, Value)>,
) -> Option<(&'a FieldPath, &'a Value, bool)> {
    match (eq, ac) {
        ([(f, v)], None) => Some((f, v, false)),
        ([], Some((f, v))) => Some((f, v, true)),
        _ => None,
    }
}

/// Exempted fields (and the unindexed fields of system collections) have no
/// single-field entries, so they need a declared index.
fn exempt(ctx: &Ctx<'_>, collection_id: &str, field: &FieldPath) -> bool {
    crate::system::field_is_unindexed(collection_id, field.segments())
        || ctx.exemptions.iter().any(|e| {
            e.collection_group == collection_id && field.segments().starts_with(e.field.segments())
        })
}

#[allow(clippy::too_many_arguments)]
fn plan_composite(
    ctx: &Ctx<'_>,
    _query: &Query,
    scope: IndexScope,
    collection_id: &str,
    collection: Option<&CollectionPath>,
    eq: &[(FieldPath, Value)],
    ac: &Option<(FieldPath, Value)>,
    rest: &[Order],
    name_desc: bool,
) -> Result<(ScanSpec, Vec<Component>), StoreError> {
    let n_eq = eq.len() + usize::from(ac.is_some());
    let mut building: Option<&IndexDef> = None;
    for def in ctx.indexes {
        if def.index.scope != scope || def.index.collection_group != collection_id {
            continue;
        }
        let fields = &def.index.fields;
        if fields.len() != n_eq + rest.len() {
            continue;
        }
        let head_ok = fields[..n_eq].iter().all(|hf| match hf.mode {
            IndexMode::ArrayContains => ac.as_ref().is_some_and(|(f, _)| *f == hf.field),
            _ => eq.iter().any(|(f, _)| *f == hf.field),
        });
        if !head_ok {
            continue;
        }
        let mut flip: Option<bool> = None;
        let mut tail_ok = true;
        for (tf, o) in fields[n_eq..].iter().zip(rest) {
            if tf.field != o.field || tf.mode == IndexMode::ArrayContains {
                tail_ok = false;
                break;
            }
            let f = (tf.mode == IndexMode::Desc) != (o.direction == Direction::Desc);
            if flip.is_some_and(|x| x != f) {
                tail_ok = false;
                break;
            }
            flip = Some(f);
        }
        let name_flip = def.name_desc() != name_desc;
        if !tail_ok || flip.is_some_and(|f| f != name_flip) {
            continue;
        }
        if def.state != IndexState::Ready {
            building = Some(def);
            continue;
        }
        let mut prefix = keys::composite_prefix(&def.id, collection);
        for hf in &fields[..n_eq] {
            let value = match hf.mode {
                IndexMode::ArrayContains => ac.as_ref().map(|(_, v)| v),
                _ => eq.iter().find(|(f, _)| *f == hf.field).map(|(_, v)| v),
            };
            let Some(value) = value else {
                return Err(StoreError::Internal("planner: head field".into()));
            };
            let mut k = codec::value_key(value);
            if hf.mode == IndexMode::Desc {
                codec::invert(&mut k);
            }
            prefix.extend_from_slice(&k);
        }
        let mut components: Vec<Component> = fields[n_eq..]
            .iter()
            .map(|tf| Component::Field {
                field: tf.field.clone(),
                inverted: tf.mode == IndexMode::Desc,
            })
            .collect();
        components.push(Component::Name {
            collection: collection.cloned(),
            inverted: def.name_desc(),
        });
        return Ok((ScanSpec::new(prefix, name_flip), components));
    }
    let mut fields: Vec<IndexField> = eq
        .iter()
        .map(|(f, _)| IndexField {
            field: f.clone(),
            mode: IndexMode::Asc,
        })
        .collect();
    if let Some((f, _)) = ac {
        fields.push(IndexField {
            field: f.clone(),
            mode: IndexMode::ArrayContains,
        });
    }
    fields.extend(rest.iter().map(|o| IndexField {
        field: o.field.clone(),
        mode: if o.direction == Direction::Desc {
            IndexMode::Desc
        } else {
            IndexMode::Asc
        },
    }));
    let index = CompositeIndex {
        collection_group: collection_id.to_string(),
        scope,
        fields,
    };
    if let Some(def) = building {
        let progress = match &def.state {
            IndexState::Building { done, total } => format!("{done} of about {total} documents"),
            IndexState::Failed(e) => format!("the build failed: {e}"),
            IndexState::Ready => String::new(),
        };
        return Err(StoreError::MissingIndex {
            message: format!(
                "the index this query needs is declared but not ready yet ({progress}); retry when it is built:\n{}",
                def.index
            ),
            index: def.index.clone(),
        });
    }
    let why = match scope {
        IndexScope::Collection => "this query needs a composite index",
        IndexScope::CollectionGroup => {
            "collection-group queries need a declared collection_group index"
        }
    };
    Err(StoreError::missing_index(index, why))
}

/// Range filters on the first key component become key bounds.
fn apply_ranges(
    spec: &mut ScanSpec,
    base: &[u8],
    components: &[Component],
    filters: &[FieldFilter],
    query: &Query,
) {
    let Some(first) = components.first() else {
        return;
    };
    let inverted = match first {
        Component::Field { inverted, .. } | Component::Name { inverted, .. } => *inverted,
    };
    let is_name = matches!(first, Component::Name { .. });
    for f in filters {
        if !first.is(&f.field) {
            continue;
        }
        let bounded =
            matches!(f.op, Op::Lt | Op::Le | Op::Gt | Op::Ge) || (is_name && f.op == Op::Eq);
        if !bounded {
            continue;
        }
        let Some(vk) = first.encode(&f.value, query, false) else {
            continue;
        };
        let mut at = base.to_vec();
        at.extend_from_slice(&vk);
        let past = codec::prefix_end(&at);
        // In key terms: "from" = keys >= at, "after" = keys past every key with prefix `at`.
        let (lower_incl, upper_incl) = (at.clone(), past.clone());
        let op = if inverted {
            match f.op {
                Op::Lt => Op::Gt,
                Op::Le => Op::Ge,
                Op::Gt => Op::Lt,
                Op::Ge => Op::Le,
                other => other,
            }
        } else {
            f.op
        };
        match op {
            Op::Eq => {
                spec.raise_lower(lower_incl);
                spec.cut_upper(upper_incl);
            }
            Op::Gt => {
                if let Some(p) = past {
                    spec.raise_lower(p)
                }
            }
            Op::Ge => spec.raise_lower(lower_incl),
            Op::Lt => spec.cut_upper(Some(at)),
            Op::Le => spec.cut_upper(upper_incl),
            _ => {}
        }
        if !is_name && f.op != Op::Eq {
            // Range operators only match values of the operand's type.
            let (ts, te) = (codec::type_start(&f.value), codec::type_end(&f.value));
            let (lo, hi) = if inverted {
                (!(te - 1), !ts + 1)
            } else {
                (ts, te)
            };
            let mut l = base.to_vec();
            l.push(lo);
            spec.raise_lower(l);
            let mut h = base.to_vec();
            h.push(hi);
            spec.cut_upper(Some(h));
        }
    }
}

/// A cursor becomes a bound on the key range (see the module docs).
#[allow(clippy::too_many_arguments)]
fn apply_cursor(
    spec: &mut ScanSpec,
    base: &[u8],
    components: &[Component],
    order: &[Order],
    eq: &[(FieldPath, Value)],
    cursor: &hearth_protocol::Cursor,
    is_start: bool,
    query: &Query,
) {
    let mut key = base.to_vec();
    let mut ci = 0;
    let mut complete = true;
    for (o, value) in order.iter().zip(&cursor.values) {
        if let Some((_, v)) = eq.iter().find(|(f, _)| *f == o.field) {
            if v == value {
                continue;
            }
            complete = false;
            break;
        }
        match components.get(ci) {
            Some(c) if c.is(&o.field) => match c.encode(value, query, true) {
                Some(k) => {
                    key.extend_from_slice(&k);
                    ci += 1;
                }
                None => {
                    complete = false;
                    break;
                }
            },
            _ => {
                complete = false;
                break;
            }
        }
    }
    if ci == 0 {
        return;
    }
    let inclusive = cursor.inclusive || !complete;
    // Whether this cursor bounds the low end of the key range.
    let bounds_lower = is_start != spec.key_desc;
    if bounds_lower {
        if inclusive {
            spec.raise_lower(key);
        } else if let Some(p) = codec::prefix_end(&key) {
            spec.raise_lower(p);
        }
    } else if inclusive {
        spec.cut_upper(codec::prefix_end(&key));
    } else {
        spec.cut_upper(Some(key));
    }
}

type DocIter<'a> = Box<dyn Iterator<Item = Result<Document, StoreError>> + 'a>;

/// Fetches the documents an index range points at, keeping those that match.
fn scan_docs<'a>(
    ctx: &'a Ctx<'a>,
    spec: ScanSpec,
    reverse: bool,
    query: &'a Query,
    order: &'a [Order],
) -> DocIter<'a> {
    let upper = match spec.upper {
        Some(u) => Bound::Excluded(u),
        None => Bound::Unbounded,
    };
    let iter = ctx
        .engine
        .scan(Bound::Included(spec.lower), upper, reverse)
        .filter_map(move |entry| {
            let (_, value) = match entry {
                Ok(kv) => kv,
                Err(e) => return Some(Err(StoreError::from(e))),
            };
            let Some(path) = codec::decode_doc_path(&value) else {
                return Some(Err(StoreError::Internal("corrupt index entry".into())));
            };
            match load(ctx.engine, &path) {
                Ok(Some(doc)) if query.matches_with_order(&doc, order) => Some(Ok(doc)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
    Box::new(iter)
}

pub(crate) fn load(engine: &dyn Engine, path: &DocPath) -> Result<Option<Document>, StoreError> {
    match engine.get(&keys::doc_key(path))? {
        Some(bytes) => Ok(Some(codec::decode_document(path.clone(), &bytes)?)),
        None => Ok(None),
    }
}

/// Runs a query (no locking; the caller provides a consistent view).
pub(crate) fn execute(ctx: &Ctx<'_>, query: &Query) -> Result<Vec<Document>, StoreError> {
    query.validate().map_err(|e| invalid(e.message))?;
    // `full_order` decides membership (a document needs every ordered field);
    // keys only follow the order up to `__name__`, which is unique.
    let full_order = query.normalized_order();
    let mut order = full_order.clone();
    if let Some(pos) = order.iter().position(|o| o.field.is_document_id()) {
        order.truncate(pos + 1);
    }
    let limit = query.limit.map(|l| l as usize);
    if limit == Some(0) {
        return Ok(vec![]);
    }
    let branches = dnf(query.filter.as_ref())?;
    let mut specs = Vec::with_capacity(branches.len());
    for b in &branches {
        match plan_branch(ctx, query, &order, b) {
            Ok(spec) => specs.push(spec),
            Err(StoreError::MissingIndex { .. }) if ctx.allow_scans => {
                return full_scan(ctx, query);
            }
            Err(e) => return Err(e),
        }
    }
    let backwards = query.limit_to_last;
    let mut iters: Vec<(Option<Document>, DocIter<'_>)> = Vec::with_capacity(specs.len());
    for spec in specs {
        let reverse = spec.key_desc != backwards;
        let mut it = scan_docs(ctx, spec, reverse, query, &full_order);
        let head = it.next().transpose()?;
        iters.push((head, it));
    }
    let cmp = |a: &Document, b: &Document| {
        let o = compare_in_order(&order, a, b);
        if backwards {
            o.reverse()
        } else {
            o
        }
    };
    let mut out: Vec<Document> = Vec::new();
    loop {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let mut best: Option<usize> = None;
        for (i, (head, _)) in iters.iter().enumerate() {
            if let Some(d) = head {
                let better = match best {
                    None => true,
                    Some(b) => iters[b]
                        .0
                        .as_ref()
                        .is_some_and(|bd| cmp(d, bd) == Ordering::Less),
                };
                if better {
                    best = Some(i);
                }
            }
        }
        let Some(b) = best else { break };
        let next = iters[b].1.next().transpose()?;
        let Some(doc) = std::mem::replace(&mut iters[b].0, next) else {
            break;
        };
        if out.last().is_some_and(|l: &Document| l.path == doc.path) {
            continue;
        }
        out.push(doc);
    }
    if backwards {
        out.reverse();
    }
    Ok(out)
}

/// The development fallback: read the whole collection and use the reference executor.
fn full_scan(ctx: &Ctx<'_>, query: &Query) -> Result<Vec<Document>, StoreError> {
    let prefix = match &query.source {
        QuerySource::Collection(c) => keys::members_prefix(c),
        QuerySource::CollectionGroup(g) => keys::group_prefix(g),
    };
    let upper = match codec::prefix_end(&prefix) {
        Some(u) => Bound::Excluded(u),
        None => Bound::Unbounded,
    };
    let mut docs = Vec::new();
    for entry in ctx.engine.scan(Bound::Included(prefix), upper, false) {
        let (_, value) = entry?;
        let path = codec::decode_doc_path(&value)
            .ok_or_else(|| StoreError::Internal("corrupt membership entry".into()))?;
        if let Some(doc) = load(ctx.engine, &path)? {
            docs.push(doc);
        }
    }
    Ok(query.run_over(docs.iter()))
}
