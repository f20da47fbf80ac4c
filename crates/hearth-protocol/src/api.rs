//! REST request and response bodies (`/v1/...`).
//!
//! The server (`hearth-server`) decodes and encodes exactly these types, and
//! clients and tests use them so that both sides agree on one definition.
//! Documents, writes, queries and commit results are the shared types from the
//! rest of this crate; this module only adds the envelopes around them.
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `GET /v1/db/{doc}` | — | [`Document`] |
//! | `PUT /v1/db/{doc}` | fields object | [`Document`] |
//! | `PATCH /v1/db/{doc}` | [`PatchRequest`] or a plain object of field paths | [`Document`] |
//! | `DELETE /v1/db/{doc}` | — | [`DeleteResponse`] |
//! | `POST /v1/db/{collection}` | fields object | `201` [`Document`] |
//! | `GET /v1/db/{collection}` | `?page_size=&page_token=` | [`ListResponse`] |
//! | `POST /v1/query` | [`QueryRequest`] | [`QueryResponse`] or [`AggregateResponse`] |
//! | `POST /v1/batch` | [`BatchRequest`] | [`CommitResult`] |
//! | `POST /v1/transactions` | — | [`BeginTransactionResponse`] |
//! | `POST /v1/transactions/{id}/get` | [`TransactionGetRequest`] | [`TransactionGetResponse`] |
//! | `POST /v1/transactions/{id}/query` | [`Query`] | [`QueryResponse`] |
//! | `POST /v1/transactions/{id}/commit` | [`BatchRequest`] | [`CommitResult`] |
//! | `GET /v1/changelog?after=&limit=` | — | [`ChangelogResponse`] |
//! | `POST /v1/admin/backup` | [`BackupRequest`] | [`BackupResponse`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::document::Document;
use crate::path::{DocPath, FieldPath};
use crate::query::{AggregateQuery, Aggregation, Query};
use crate::value::{Map, Timestamp, Value};
use crate::write::{FieldTransform, Write};

/// `PATCH /v1/db/{doc}`: merge field paths (dotted, backtick-quoted) and apply
/// transforms. With `upsert: false` (the default) a missing document is
/// `not-found`; with `upsert: true` it is created.
///
/// A body that is an object *without* a `fields` key is read as a plain map
/// of field paths to values (`{"a.b": 1}`), i.e. `{"fields": {"a.b": 1}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    pub fields: BTreeMap<FieldPath, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<FieldTransform>,
    #[serde(default)]
    pub upsert: bool,
}

impl PatchRequest {
    /// Decodes either accepted shape of a PATCH body.
    pub fn from_json(json: serde_json::Value) -> Result<PatchRequest, String> {
        let serde_json::Value::Object(object) = json else {
            return Err("a PATCH body must be a JSON object".into());
        };
        if object.contains_key("fields") {
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| e.to_string())
        } else {
            let mut fields = BTreeMap::new();
            for (key, value) in &object {
                let path = FieldPath::parse(key).map_err(|e| e.to_string())?;
                let value = Value::from_json(value).map_err(|e| format!("field {key}: {e}"))?;
                fields.insert(path, value);
            }
            Ok(PatchRequest {
                fields,
                transforms: vec![],
                upsert: false,
            })
        }
    }
}

/// `DELETE /v1/db/{doc}`: the commit that removed the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub path: DocPath,
    /// The changelog sequence number of the delete's commit.
    pub seq: u64,
    pub commit_time: Timestamp,
}

/// `GET /v1/db/{collection}`: one page of a collection in document id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    pub documents: Vec<Document>,
    /// Pass as `page_token` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `POST /v1/query`: either a plain [`Query`] (returns documents) or
/// `{"query": ..., "aggregations": [...]}` (returns aggregate values).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryRequest {
    Documents(Query),
    Aggregate(AggregateQuery),
}

impl QueryRequest {
    /// Decodes either shape; the presence of `aggregations` decides.
    pub fn from_json(json: serde_json::Value) -> Result<QueryRequest, String> {
        let is_aggregate = json
            .as_object()
            .is_some_and(|o| o.contains_key("aggregations"));
        if is_aggregate {
            serde_json::from_value::<AggregateQuery>(json)
                .map(QueryRequest::Aggregate)
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_value::<Query>(json)
                .map(QueryRequest::Documents)
                .map_err(|e| e.to_string())
        }
    }

    pub fn aggregate(query: Query, aggregations: Vec<Aggregation>) -> QueryRequest {
        QueryRequest::Aggregate(AggregateQuery {
            query,
            aggregations,
        })
    }
}

impl Serialize for QueryRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            QueryRequest::Documents(q) => q.serialize(s),
            QueryRequest::Aggregate(a) => a.serialize(s),
        }
    }
}

/// Documents matching a query, read at changelog position `read_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    pub documents: Vec<Document>,
    pub read_seq: u64,
}

/// Aggregate values by alias, read at changelog position `read_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateResponse {
    pub values: BTreeMap<String, Value>,
    pub read_seq: u64,
}

/// `POST /v1/batch` and `POST /v1/transactions/{id}/commit`: up to 500 writes
/// committed atomically (all or none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub writes: Vec<Write>,
}

/// `POST /v1/transactions`: a server-side transaction that records its reads;
/// it expires after `expires_in_ms` without a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeginTransactionResponse {
    pub transaction: String,
    pub expires_in_ms: u64,
}

/// `POST /v1/transactions/{id}/get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionGetRequest {
    pub path: DocPath,
}

/// The document as the transaction read it; `null` when missing (the absence
/// is recorded too: a concurrent create aborts the commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionGetResponse {
    pub document: Option<Document>,
}

/// The kind of change a commit made to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// One document's change inside a changelog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEntry {
    pub path: DocPath,
    pub kind: ChangeKind,
    #[serde(default)]
    pub old: Option<Document>,
    #[serde(default)]
    pub new: Option<Document>,
}

/// One commit as recorded in the changelog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    pub seq: u64,
    pub commit_time: Timestamp,
    pub changes: Vec<ChangeEntry>,
}

/// `GET /v1/changelog?after=N&limit=M` (admin only): commits with
/// `seq > after`, in order, at most `limit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangelogResponse {
    pub commits: Vec<ChangelogEntry>,
    /// The newest sequence number at the time of the read.
    pub head: u64,
}

/// `POST /v1/admin/backup` (admin only): write a consistent snapshot of the
/// whole store into `dir`, a directory on the *server's* filesystem that must
/// be missing or empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupResponse {
    pub dir: String,
    /// Every commit up to and including this sequence number is in the backup.
    pub seq: u64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
}

/// A document's fields as a JSON object (the body of `PUT` and `POST /v1/db`).
pub fn fields_from_json(json: &serde_json::Value) -> Result<Map, String> {
    match Value::from_json(json) {
        Ok(Value::Map(map)) => Ok(map),
        Ok(other) => Err(format!(
            "a document body must be a JSON object of fields, got {}",
            other.type_name()
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_accepts_structured_and_plain_bodies() {
        let structured = PatchRequest::from_json(json!({
            "fields": {"a.b": 1},
            "transforms": [{"field": "n", "transform": "increment", "value": 2}],
            "upsert": true
        }))
        .unwrap();
        assert!(structured.upsert);
        assert_eq!(structured.transforms.len(), 1);
        let plain = PatchRequest::from_json(json!({"a.b": 1, "c": "x"})).unwrap();
        assert!(!plain.upsert);
        assert_eq!(plain.fields.len(), 2);
        assert_eq!(
            plain.fields.get(&FieldPath::parse("a.b").unwrap()),
            Some(&Value::Integer(1))
        );
    }

    #[test]
    fn patch_rejects_non_objects_and_bad_field_paths() {
        assert!(PatchRequest::from_json(json!([1])).is_err());
        assert!(PatchRequest::from_json(json!({"a..b": 1})).is_err());
        assert!(PatchRequest::from_json(json!({"fields": {}, "bogus": 1})).is_err());
    }

    #[test]
    fn query_request_distinguishes_aggregations() {
        let q = QueryRequest::from_json(json!({"collection": "rooms"})).unwrap();
        assert!(matches!(q, QueryRequest::Documents(_)));
        let a = QueryRequest::from_json(json!({
            "query": {"collection": "rooms"},
            "aggregations": [{"alias": "n", "op": "count"}]
        }))
        .unwrap();
        assert!(matches!(a, QueryRequest::Aggregate(_)));
        assert!(QueryRequest::from_json(json!({"collection": "a/b"})).is_err());
    }

    #[test]
    fn fields_must_be_an_object() {
        assert!(fields_from_json(&json!({"a": 1})).is_ok());
        assert!(fields_from_json(&json!([1])).is_err());
        assert!(fields_from_json(&json!("x")).is_err());
    }
}
