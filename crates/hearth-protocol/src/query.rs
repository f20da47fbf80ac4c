//! The query language and its reference semantics.
//!
//! The store executes queries through indexes; this module says what a query
//! *means*, as pure functions over documents. The store's tests compare its
//! indexed executor against [`Query::run_over`], the gateway uses
//! [`Query::matches`] and [`Query::compare`] to maintain live results, and the
//! client SDK uses them for latency compensation.
//!
//! JSON shape:
//! ```json
//! {"collection": "rooms/r1/messages",            // or "collection_group": "messages"
//!  "where": {"and": [{"field": "room", "op": "==", "value": "lobby"},
//!                    {"or": [{"field": "n", "op": ">", "value": 3},
//!                            {"field": "tags", "op": "array-contains", "value": "x"}]}]},
//!  "order_by": [{"field": "n", "direction": "desc"}],
//!  "limit": 20, "limit_to_last": false,
//!  "start_at": {"values": [5, "rooms/r1/messages/m9"], "inclusive": false},
//!  "end_at":   {"values": [1], "inclusive": true}}
//! ```
//!
//! Semantics, as in Firestore: a document matches a field filter only if it
//! has the field; range operators (`<`, `<=`, `>`, `>=`) only match values of
//! the same type as the operand; `!=` and `not-in` exclude documents missing
//! the field. Every query is ordered by its *normalized order*: the explicit
//! `order_by`, then any inequality field not yet ordered on (ascending, by
//! field path), then `__name__` (the document path, compared segment by
//! segment) in the direction of the last explicit order. A document without a
//! value for an ordered field is not in the result.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::document::Document;
use crate::path::{CollectionPath, DocPath, FieldPath};
use crate::value::{TypeRank, Value};

/// Maximum number of values in an `in`, `not-in` or `array-contains-any` list.
pub const MAX_DISJUNCTION_VALUES: usize = 30;
/// Maximum depth of nested `and`/`or` filters.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Maximum number of field filters in one query.
pub const MAX_FILTERS: usize = 100;

/// A query that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
}

fn qerr<T>(message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError {
        message: message.into(),
    })
}

/// Where a query looks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuerySource {
    /// The documents directly inside one collection.
    Collection(CollectionPath),
    /// Every collection with this id, at any depth.
    CollectionGroup(String),
}

impl QuerySource {
    pub fn contains(&self, doc: &DocPath) -> bool {
        match self {
            QuerySource::Collection(c) => c.contains(doc),
            QuerySource::CollectionGroup(id) => doc.collection_id() == id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "in")]
    In,
    #[serde(rename = "not-in")]
    NotIn,
    #[serde(rename = "array-contains")]
    ArrayContains,
    #[serde(rename = "array-contains-any")]
    ArrayContainsAny,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
            Op::NotIn => "not-in",
            Op::ArrayContains => "array-contains",
            Op::ArrayContainsAny => "array-contains-any",
        }
    }

    pub fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "not-in" => Op::NotIn,
            "array-contains" => Op::ArrayContains,
            "array-contains-any" => Op::ArrayContainsAny,
            _ => return None,
        })
    }

    /// Inequalities force an order on their field.
    pub fn is_inequality(self) -> bool {
        matches!(self, Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::NotIn)
    }
}

/// A filter tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Field(FieldFilter),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    pub field: FieldPath,
    pub op: Op,
    pub value: Value,
}

impl FieldFilter {
    pub fn matches(&self, doc: &Document) -> bool {
        let Some(actual) = doc.get(&self.field) else {
            return false;
        };
        if self.field.is_document_id() {
            return self.matches_name(&doc.path);
        }
        matches_value(&actual, self.op, &self.value)
    }

    fn matches_name(&self, path: &DocPath) -> bool {
        let cmp = |v: &Value| name_cmp(path, v);
        match self.op {
            Op::Eq => cmp(&self.value) == Some(Ordering::Equal),
            Op::Ne => cmp(&self.value) != Some(Ordering::Equal),
            Op::Lt => cmp(&self.value) == Some(Ordering::Less),
            Op::Le => matches!(cmp(&self.value), Some(Ordering::Less | Ordering::Equal)),
            Op::Gt => cmp(&self.value) == Some(Ordering::Greater),
            Op::Ge => matches!(cmp(&self.value), Some(Ordering::Greater | Ordering::Equal)),
            Op::In => list(&self.value)
                .iter()
                .any(|v| cmp(v) == Some(Ordering::Equal)),
            Op::NotIn => !list(&self.value)
                .iter()
                .any(|v| cmp(v) == Some(Ordering::Equal)),
            Op::ArrayContains | Op::ArrayContainsAny => false,
        }
    }
}

fn name_cmp(path: &DocPath, value: &Value) -> Option<Ordering> {
    let text = value.as_str()?;
    let other = DocPath::parse(text).ok()?;
    Some(path.cmp(&other))
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The operator semantics on one field value.
pub fn matches_value(actual: &Value, op: Op, operand: &Value) -> bool {
    let same_type = actual.type_rank() == operand.type_rank();
    match op {
        Op::Eq => actual == operand,
        Op::Ne => actual != operand,
        Op::Lt => same_type && !actual.is_nan() && !operand.is_nan() && actual < operand,
        Op::Le => same_type && !actual.is_nan() && !operand.is_nan() && actual <= operand,
        Op::Gt => same_type && !actual.is_nan() && !operand.is_nan() && actual > operand,
        Op::Ge => same_type && !actual.is_nan() && !operand.is_nan() && actual >= operand,
        Op::In => list(operand).contains(actual),
        Op::NotIn => !list(operand).contains(actual),
        Op::ArrayContains => actual
            .as_array()
            .is_some_and(|items| items.contains(operand)),
        Op::ArrayContainsAny => actual
            .as_array()
            .is_some_and(|items| list(operand).iter().any(|v| items.contains(v))),
    }
}

impl Filter {
    pub fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::Field(f) => f.matches(doc),
            Filter::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(doc)),
        }
    }

    /// Every field filter in the tree, depth first.
    pub fn field_filters(&self) -> Vec<&FieldFilter> {
        let mut out = Vec::new();
        fn walk<'a>(f: &'a Filter, out: &mut Vec<&'a FieldFilter>) {
            match f {
                Filter::Field(ff) => out.push(ff),
                Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| walk(f, out)),
            }
        }
        walk(self, &mut out);
        out
    }

    fn validate(&self, depth: usize) -> Result<(), QueryError> {
        if depth > MAX_FILTER_DEPTH {
            return qerr(format!(
                "filters nested deeper than {MAX_FILTER_DEPTH} levels"
            ));
        }
        match self {
            Filter::Field(f) => {
                if matches!(f.op, Op::In | Op::NotIn | Op::ArrayContainsAny) {
                    let Some(items) = f.value.as_array() else {
                        return qerr(format!(
                            "'{}' on {} needs an array of values",
                            f.op.as_str(),
                            f.field
                        ));
                    };
                    if items.is_empty() || items.len() > MAX_DISJUNCTION_VALUES {
                        return qerr(format!(
                            "'{}' on {} takes 1 to {MAX_DISJUNCTION_VALUES} values, got {}",
                            f.op.as_str(),
                            f.field,
                            items.len()
                        ));
                    }
                }
                if f.field.is_document_id() {
                    let check = |v: &Value| -> Result<(), QueryError> {
                        match v.as_str().map(DocPath::parse) {
                            Some(Ok(_)) => Ok(()),
                            _ => qerr("filters on __name__ take document paths as strings"),
                        }
                    };
                    match f.op {
                        Op::ArrayContains | Op::ArrayContainsAny => {
                            return qerr("__name__ is not an array")
                        }
                        Op::In | Op::NotIn => list(&f.value).iter().try_for_each(check)?,
                        _ => check(&f.value)?,
                    }
                }
                Ok(())
            }
            Filter::And(fs) | Filter::Or(fs) => {
                if fs.is_empty() {
                    return qerr("'and'/'or' need at least one filter");
                }
                fs.iter().try_for_each(|f| f.validate(depth + 1))
            }
        }
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(d)?;
        Filter::from_json(&json, 0).map_err(serde::de::Error::custom)
    }
}

impl Filter {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Filter::Field(f) => serde_json::json!({
                "field": f.field.canonical(), "op": f.op.as_str(), "value": f.value.to_json()
            }),
            Filter::And(fs) => {
                serde_json::json!({"and": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
            Filter::Or(fs) => {
                serde_json::json!({"or": fs.iter().map(Filter::to_json).collect::<Vec<_>>()})
            }
        }
    }

    /// Parses the JSON shape with messages that point at what is wrong.
    pub fn from_json(json: &serde_json::Value, depth: usize) -> Result<Filter, QueryError> {
        if depth > MAX_FILTER_DEPTH {
            return qerr(format!(
                "filters nested deeper than {MAX_FILTER_DEPTH} levels"
            ));
        }
        let Some(obj) = json.as_object() else {
            return qerr("a filter must be an object: {\"field\",\"op\",\"value\"}, {\"and\": [...]} or {\"or\": [...]}");
        };
        for key in ["and", "or"] {
            if let Some(children) = obj.get(key) {
                if obj.len() != 1 {
                    return qerr(format!("a '{key}' filter must have no other keys"));
                }
                let Some(items) = children.as_array() else {
                    return qerr(format!("'{key}' takes an array of filters"));
                };
                let parsed = items
                    .iter()
                    .map(|c| Filter::from_json(c, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(if key == "and" {
                    Filter::And(parsed)
                } else {
                    Filter::Or(parsed)
                });
            }
        }
        let field = match obj.get("field").and_then(|v| v.as_str()) {
            Some(text) => FieldPath::parse(text).map_err(|e| QueryError { message: e.message })?,
            None => return qerr("a field filter needs \"field\" (a string)"),
        };
        let op = match obj.get("op").and_then(|v| v.as_str()) {
            Some(text) => Op::parse(text).ok_or_else(|| QueryError {
                message: format!(
                    "unknown operator {text:?}; use one of ==, !=, <, <=, >, >=, in, not-in, array-contains, array-contains-any"
                ),
            })?,
            None => return qerr("a field filter needs \"op\" (a string)"),
        };
        let Some(raw) = obj.get("value") else {
            return qerr("a field filter needs \"value\"");
        };
        let value = Value::from_json(raw).map_err(|e| QueryError { message: e.message })?;
        if let Some(extra) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "field" | "op" | "value"))
        {
            return qerr(format!("unknown key {extra:?} in field filter"));
        }
        Ok(Filter::Field(FieldFilter { field, op, value }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub field: FieldPath,
    #[serde(default)]
    pub direction: Direction,
}

/// A position in a query's normalized order. `values` follow the normalized
/// order from its start and may stop early; a value for `__name__` is the
/// document path as a string (or, for a collection query, just the id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub values: Vec<Value>,
    /// `true`: start-at / end-at (the position itself is included);
    /// `false`: start-after / end-before.
    #[serde(default = "default_true")]
    pub inclusive: bool,
}

fn default_true() -> bool {
    true
}

/// A structured query. Build it from JSON or with the constructors.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub source: QuerySource,
    pub filter: Option<Filter>,
    pub order_by: Vec<Order>,
    pub limit: Option<u32>,
    /// When set, `limit` keeps the *last* documents of the order (still returned in order).
    pub limit_to_last: bool,
    pub start_at: Option<Cursor>,
    pub end_at: Option<Cursor>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collection_group: Option<String>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    order_by: Vec<Order>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    limit_to_last: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_at: Option<Cursor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_at: Option<Cursor>,
}

impl Serialize for Query {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (collection, collection_group) = match &self.source {
            QuerySource::Collection(c) => (Some(c.as_string()), None),
            QuerySource::CollectionGroup(id) => (None, Some(id.clone())),
        };
        QueryJson {
            collection,
            collection_group,
            filter: self.filter.clone(),
            order_by: self.order_by.clone(),
            limit: self.limit,
            limit_to_last: self.limit_to_last,
            start_at: self.start_at.clone(),
            end_at: self.end_at.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = QueryJson::deserialize(d)?;
        let source = match (wire.collection, wire.collection_group) {
            (Some(c), None) => QuerySource::Collection(
                CollectionPath::parse(&c).map_err(serde::de::Error::custom)?,
            ),
            (None, Some(id)) => {
                if id.is_empty() || id.contains('/') {
                    return Err(serde::de::Error::custom(
                        "collection_group takes a collection id (no slashes)",
                    ));
                }
                QuerySource::CollectionGroup(id)
            }
            _ => {
                return Err(serde::de::Error::custom(
                    "a query needs exactly one of \"collection\" or \"collection_group\"",
                ))
            }
        };
        let query = Query {
            source,
            filter: wire.filter,
            order_by: wire.order_by,
            limit: wire.limit,
            limit_to_last: wire.limit_to_last,
            start_at: wire.start_at,
            end_at: wire.end_at,
        };
        query.validate().map_err(serde::de::Error::custom)?;
        Ok(query)
    }
}

impl Query {
    pub fn collection(path: CollectionPath) -> Query {
        Query {
            source: QuerySource::Collection(path),
            filter: None,
            order_by: vec![],
            limit: None,
            limit_to_last: false,
            start_at: None,
            end_at: None,
        }
    }

    pub fn collection_group(id: &str) -> Query {
        Query {
            source: QuerySource::CollectionGroup(id.to_string()),
            ..Query::collection(CollectionPath::parse("x").expect("static path"))
        }
    }

    /// Adds a field filter, AND-ed with any existing filter.
    pub fn filter(mut self, field: &str, op: Op, value: impl Into<Value>) -> Query {
        let f = Filter::Field(FieldFilter {
            field: FieldPath::parse(field).unwrap_or_else(|_| FieldPath::document_id()),
            op,
            value: value.into(),
        });
        self.filter = Some(match self.filter.take() {
            None => f,
            Some(Filter::And(mut fs)) => {
                fs.push(f);
                Filter::And(fs)
            }
            Some(other) => Filter::And(vec![other, f]),
        });
        self
    }

    pub fn order(mut self, field: &str, direction: Direction) -> Query {
        if let Ok(field) = FieldPath::parse(field) {
            self.order_by.push(Order { field, direction });
        }
        self
    }

    pub fn limit(mut self, n: u32) -> Query {
        self.limit = Some(n);
        self
    }

    /// Checks everything that does not need an index.
    pub fn validate(&self) -> Result<(), QueryError> {
        if let Some(f) = &self.filter {
            f.validate(0)?;
            let count = f.field_filters().len();
            if count > MAX_FILTERS {
                return qerr(format!(
                    "a query may have at most {MAX_FILTERS} field filters, got {count}"
                ));
            }
            let not_ins = f
                .field_filters()
                .iter()
                .filter(|ff| ff.op == Op::NotIn)
                .count();
            if not_ins > 1 {
                return qerr("a query may have at most one not-in filter");
            }
        }
        if self.limit_to_last && self.limit.is_none() {
            return qerr("limit_to_last needs a limit");
        }
        let order = self.normalized_order();
        for (name, cursor) in [("start_at", &self.start_at), ("end_at", &self.end_at)] {
            if let Some(c) = cursor {
                if c.values.len() > order.len() {
                    return qerr(format!(
                        "{name} has {} values but the query orders on only {} fields ({})",
                        c.values.len(),
                        order.len(),
                        order
                            .iter()
                            .map(|o| o.field.canonical())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if c.values.is_empty() {
                    return qerr(format!("{name} needs at least one value"));
                }
            }
        }
        let mut seen = Vec::new();
        for o in &self.order_by {
            if seen.contains(&&o.field) {
                return qerr(format!("order_by names {} twice", o.field));
            }
            seen.push(&o.field);
        }
        Ok(())
    }

    /// The full order the results follow (see the module docs).
    pub fn normalized_order(&self) -> Vec<Order> {
        let mut order = self.order_by.clone();
        let mut inequality_fields: Vec<FieldPath> = self
            .filter
            .iter()
            .flat_map(|f| f.field_filters())
            .filter(|f| f.op.is_inequality() && !f.field.is_document_id())
            .map(|f| f.field.clone())
            .collect();
        inequality_fields.sort();
        inequality_fields.dedup();
        for field in inequality_fields {
            if !order.iter().any(|o| o.field == field) {
                order.push(Order {
                    field,
                    direction: Direction::Asc,
                });
            }
        }
        if !order.iter().any(|o| o.field.is_document_id()) {
            let direction = order.last().map(|o| o.direction).unwrap_or_default();
            order.push(Order {
                field: FieldPath::document_id(),
                direction,
            });
        }
        // Kept for the life of a live query: no spare slots.
        order.shrink_to_fit();
        order
    }

    /// True if the document belongs to the query's result set, ignoring
    /// `limit` (cursors and the need for ordered fields included).
    pub fn matches(&self, doc: &Document) -> bool {
        self.matches_with_order(doc, &self.normalized_order())
    }

    /// [`Query::matches`] with a precomputed normalized order (hot paths).
    pub fn matches_with_order(&self, doc: &Document, order: &[Order]) -> bool {
        if !self.source.contains(&doc.path) {
            return false;
        }
        if let Some(f) = &self.filter {
            if !f.matches(doc) {
                return false;
            }
        }
        if order
            .iter()
            .any(|o| !o.field.is_document_id() && doc.get(&o.field).is_none())
        {
            return false;
        }
        if let Some(start) = &self.start_at {
            match self.cmp_to_cursor(doc, order, start) {
                Ordering::Less => return false,
                Ordering::Equal if !start.inclusive => return false,
                _ => {}
            }
        }
        if let Some(end) = &self.end_at {
            match self.cmp_to_cursor(doc, order, end) {
                Ordering::Greater => return false,
                Ordering::Equal if !end.inclusive => return false,
                _ => {}
            }
        }
        true
    }

    /// Compares two documents in the normalized order.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        compare_in_order(&self.normalized_order(), a, b)
    }

    /// Where a document stands relative to a cursor, in the query's direction.
    fn cmp_to_cursor(&self, doc: &Document, order: &[Order], cursor: &Cursor) -> Ordering {
        for (o, cursor_value) in order.iter().zip(&cursor.values) {
            let ord = if o.field.is_document_id() {
                let target = self.resolve_name(cursor_value);
                match target {
                    Some(p) => doc.path.cmp(&p),
                    None => Ordering::Equal,
                }
            } else {
                match doc.get(&o.field) {
                    Some(v) => v.cmp(cursor_value),
                    None => Ordering::Less,
                }
            };
            let ord = if o.direction == Direction::Desc {
                ord.reverse()
            } else {
                ord
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }

    /// A `__name__` cursor value: a full path, or a bare id for a collection query.
    pub fn resolve_name(&self, value: &Value) -> Option<DocPath> {
        let text = value.as_str()?;
        if !text.contains('/') {
            if let QuerySource::Collection(c) = &self.source {
                return c.doc(text).ok();
            }
        }
        DocPath::parse(text).ok()
    }

    /// The reference executor: filters, sorts, applies cursors and limits.
    pub fn run_over<'a>(&self, docs: impl IntoIterator<Item = &'a Document>) -> Vec<Document> {
        let order = self.normalized_order();
        let mut hits: Vec<Document> = docs
            .into_iter()
            .filter(|d| self.matches_with_order(d, &order))
            .cloned()
            .collect();
        hits.sort_by(|a, b| compare_in_order(&order, a, b));
        if let Some(limit) = self.limit {
            let limit = limit as usize;
            if self.limit_to_last {
                let skip = hits.len().saturating_sub(limit);
                hits.drain(..skip);
            } else {
                hits.truncate(limit);
            }
        }
        hits
    }

    /// Every field path the query reads (filters and orders), without `__name__`.
    pub fn referenced_fields(&self) -> Vec<FieldPath> {
        let mut fields: Vec<FieldPath> = self
            .filter
            .iter()
            .flat_map(|f| f.field_filters())
            .map(|f| f.field.clone())
            .chain(self.order_by.iter().map(|o| o.field.clone()))
            .filter(|f| !f.is_document_id())
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }
}

/// Compares two documents by a normalized order.
pub fn compare_in_order(order: &[Order], a: &Document, b: &Document) -> Ordering {
    for o in order {
        let ord = if o.field.is_document_id() {
            a.path.cmp(&b.path)
        } else {
            match (a.get(&o.field), b.get(&o.field)) {
                (Some(x), Some(y)) => x.cmp(&y),
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        };
        let ord = if o.direction == Direction::Desc {
            ord.reverse()
        } else {
            ord
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// An aggregation over a query's matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// No `deny_unknown_fields` here: serde cannot combine it with `flatten`
// (every aggregation would be rejected with "unknown field `op`").
pub struct Aggregation {
    pub alias: String,
    #[serde(flatten)]
    pub op: AggregateOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AggregateOp {
    /// Number of matching documents.
    Count,
    /// Sum of the numeric values of `field` (non-numbers are skipped): an
    /// integer while every value is an integer and it does not overflow, else a double.
    Sum { field: FieldPath },
    /// Average of the numeric values of `field`; null when there are none.
    Avg { field: FieldPath },
}

/// `{"query": {...}, "aggregations": [{"alias": "n", "op": "count"}, ...]}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    pub query: Query,
    pub aggregations: Vec<Aggregation>,
}

/// Folds documents into aggregation results (used by the store and tests).
#[derive(Debug, Clone)]
pub struct Aggregator {
    specs: Vec<Aggregation>,
    count: u64,
    int_sums: Vec<Option<i64>>,
    float_sums: Vec<f64>,
    numeric_counts: Vec<u64>,
}

impl Aggregator {
    pub fn new(specs: &[Aggregation]) -> Aggregator {
        Aggregator {
            specs: specs.to_vec(),
            count: 0,
            int_sums: vec![Some(0); specs.len()],
            float_sums: vec![0.0; specs.len()],
            numeric_counts: vec![0; specs.len()],
        }
    }

    pub fn add(&mut self, doc: &Document) {
        self.count += 1;
        for (i, spec) in self.specs.iter().enumerate() {
            let field = match &spec.op {
                AggregateOp::Count => continue,
                AggregateOp::Sum { field } | AggregateOp::Avg { field } => field,
            };
            match doc.get(field) {
                Some(Value::Integer(n)) => {
                    self.int_sums[i] = self.int_sums[i].and_then(|s| s.checked_add(n));
                    self.float_sums[i] += n as f64;
                    self.numeric_counts[i] += 1;
                }
                Some(Value::Double(d)) => {
                    self.int_sums[i] = None;
                    self.float_sums[i] += d;
                    self.numeric_counts[i] += 1;
                }
                _ => {}
            }
        }
    }

    pub fn finish(self) -> BTreeMap<String, Value> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let value = match spec.op {
                    AggregateOp::Count => Value::Integer(self.count as i64),
                    AggregateOp::Sum { .. } => match self.int_sums[i] {
                        Some(n) => Value::Integer(n),
                        None => Value::Double(self.float_sums[i]),
                    },
                    AggregateOp::Avg { .. } => {
                        if self.numeric_counts[i] == 0 {
                            Value::Null
                        } else {
                            Value::Double(self.float_sums[i] / self.numeric_counts[i] as f64)
                        }
                    }
                };
                (spec.alias.clone(), value)
            })
            .collect()
    }
}

/// Same type rank: range filters only match values of the operand's type.
pub fn same_type(a: &Value, b: &Value) -> bool {
    a.type_rank() == b.type_rank() && a.type_rank() != TypeRank::Null
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{map_from_json, Timestamp};

    fn doc(path: &str, json: serde_json::Value) -> Document {
        Document {
            path: DocPath::parse(path).unwrap(),
            fields: map_from_json(&json).unwrap(),
            create_time: Timestamp(0),
            update_time: Timestamp(0),
            version: 1,
        }
    }

    fn q(json: serde_json::Value) -> Query {
        serde_json::from_value(json).unwrap()
    }

    fn ids(docs: &[Document]) -> Vec<&str> {
        docs.iter().map(|d| d.path.id()).collect()
    }

    fn sample() -> Vec<Document> {
        vec![
            doc(
                "c/a",
                serde_json::json!({"n": 1, "tags": ["x", "y"], "s": "b"}),
            ),
            doc(
                "c/b",
                serde_json::json!({"n": 2.5, "tags": ["y"], "s": "a"}),
            ),
            doc("c/c", serde_json::json!({"n": "three", "s": "c"})),
            doc("c/d", serde_json::json!({"n": 2, "tags": []})),
            doc("c/e", serde_json::json!({"m": 1})),
            doc("other/x", serde_json::json!({"n": 1})),
        ]
    }

    #[test]
    fn each_operator_follows_firestore_semantics() {
        let docs = sample();
        let run = |filter: serde_json::Value| {
            let query = q(serde_json::json!({"collection": "c", "where": filter}));
            let mut out: Vec<String> = query
                .run_over(&docs)
                .iter()
                .map(|d| d.path.id().to_string())
                .collect();
            out.sort();
            out
        };
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "==", "value": 1.0})),
            ["a"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "!=", "value": 1})),
            ["b", "c", "d"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": ">", "value": 1})),
            ["b", "d"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": ">=", "value": 2})),
            ["b", "d"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "<", "value": 2})),
            ["a"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "<=", "value": 2})),
            ["a", "d"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "in", "value": [2, "three"]})),
            ["c", "d"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "n", "op": "not-in", "value": [2, "three"]})),
            ["a", "b"]
        );
        assert_eq!(
            run(serde_json::json!({"field": "tags", "op": "array-contains", "value": "y"})),
            ["a", "b"]
        );
        assert_eq!(
            run(
                serde_json::json!({"field": "tags", "op": "array-contains-any", "value": ["x", "z"]})
            ),
            ["a"]
        );
        assert_eq!(
            run(
                serde_json::json!({"or": [{"field": "s", "op": "==", "value": "a"}, {"field": "m", "op": "==", "value": 1}]})
            ),
            ["b", "e"]
        );
        assert_eq!(
            run(
                serde_json::json!({"and": [{"field": "n", "op": ">", "value": 0}, {"field": "s", "op": "==", "value": "b"}]})
            ),
            ["a"]
        );
    }

    #[test]
    fn a_normalized_order_keeps_no_spare_slots() {
        let query = q(serde_json::json!({"collection": "c",
            "where": {"field": "room", "op": "==", "value": 1}}));
        let order = query.normalized_order();
        assert_eq!((order.len(), order.capacity()), (1, 1));
    }

    #[test]
    fn normalized_order_adds_inequality_fields_and_name() {
        let query = q(serde_json::json!({"collection": "c",
            "where": {"field": "n", "op": ">", "value": 0}, "order_by": [{"field": "s", "direction": "desc"}]}));
        let order: Vec<String> = query
            .normalized_order()
            .iter()
            .map(|o| o.field.canonical())
            .collect();
        assert_eq!(order, ["s", "n", "__name__"]);
        assert_eq!(query.normalized_order()[2].direction, Direction::Asc);
    }

    #[test]
    fn cursors_paginate_across_ties() {
        let docs: Vec<Document> = (0..10)
            .map(|i| doc(&format!("c/d{i}"), serde_json::json!({"k": i / 4})))
            .collect();
        let base = serde_json::json!({"collection": "c", "order_by": [{"field": "k"}], "limit": 3});
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        for _ in 0..10 {
            let mut query = q(base.clone());
            query.start_at = cursor.clone();
            let page = query.run_over(&docs);
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            cursor = Some(Cursor {
                values: vec![
                    last.fields["k"].clone(),
                    Value::String(last.path.as_string()),
                ],
                inclusive: false,
            });
            seen.extend(page.iter().map(|d| d.path.id().to_string()));
        }
        let expected: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn limit_to_last_keeps_the_tail_in_order() {
        let docs = sample();
        let query = q(
            serde_json::json!({"collection": "c", "order_by": [{"field": "s"}], "limit": 2, "limit_to_last": true}),
        );
        assert_eq!(ids(&query.run_over(&docs)), ["a", "c"]);
    }

    #[test]
    fn collection_group_matches_any_depth() {
        let docs = vec![
            doc("a/1/m/x", serde_json::json!({})),
            doc("m/y", serde_json::json!({})),
            doc("a/1/n/z", serde_json::json!({})),
        ];
        let query = q(serde_json::json!({"collection_group": "m"}));
        assert_eq!(query.run_over(&docs).len(), 2);
    }

    #[test]
    fn bad_queries_get_clear_errors() {
        for bad in [
            serde_json::json!({"collection": "c", "where": {"field": "n", "op": "~", "value": 1}}),
            serde_json::json!({"collection": "c", "where": {"field": "n", "op": "in", "value": 1}}),
            serde_json::json!({"collection": "c", "where": {"and": []}}),
            serde_json::json!({"collection": "c/d"}),
            serde_json::json!({"collection": "c", "collection_group": "c"}),
            serde_json::json!({"collection": "c", "limit_to_last": true}),
            serde_json::json!({"collection": "c", "start_at": {"values": [1, 2]}}),
            serde_json::json!({"collection": "c", "bogus": 1}),
        ] {
            assert!(
                serde_json::from_value::<Query>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn aggregations_count_sum_and_average() {
        let docs = sample();
        let mut agg = Aggregator::new(&[
            Aggregation {
                alias: "n".into(),
                op: AggregateOp::Count,
            },
            Aggregation {
                alias: "s".into(),
                op: AggregateOp::Sum {
                    field: FieldPath::parse("n").unwrap(),
                },
            },
            Aggregation {
                alias: "a".into(),
                op: AggregateOp::Avg {
                    field: FieldPath::parse("n").unwrap(),
                },
            },
        ]);
        for d in docs.iter().filter(|d| d.path.parent().as_string() == "c") {
            agg.add(d);
        }
        let out = agg.finish();
        assert_eq!(out["n"], Value::Integer(5));
        assert!(out["s"].is_identical(&Value::Double(5.5)));
        assert_eq!(out["a"], Value::Double(5.5 / 3.0));
    }

    proptest::proptest! {
        #[test]
        fn query_parser_never_panics(text in ".{0,80}") {
            let _ = serde_json::from_str::<Query>(&text);
        }
    }
}
