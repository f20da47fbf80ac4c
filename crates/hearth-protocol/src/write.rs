//! Write operations and their pure application to a document.
//!
//! The same [`apply_write`] runs in the store's commit path and in the client
//! SDK's latency compensation, so a pending local write shows exactly what the
//! server will make of it (server timestamps aside, which the client estimates).
//!
//! JSON shapes (the REST batch body and the WebSocket `write` frame use them):
//! ```json
//! {"op": "set",    "path": "rooms/r1", "data": {"name": "Lobby"}}
//! {"op": "create", "path": "rooms/r1", "data": {"name": "Lobby"}}
//! {"op": "update", "path": "rooms/r1", "fields": {"topic.text": "hi"}}
//! {"op": "merge",  "path": "rooms/r1", "fields": {"topic.text": "hi"}}
//! {"op": "delete", "path": "rooms/r1"}
//! ```
//! each with optional `"precondition": {"exists": bool} | {"version": n}` and
//! `"transforms": [{"field": "count", "transform": "increment", "value": 1}, ...]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::document::{remove_field, set_field, validate_fields, Document};
use crate::error::ErrorCode;
use crate::path::{DocPath, FieldPath};
use crate::value::{Map, Timestamp, Value};

/// Maximum number of writes in one batch or transaction.
pub const MAX_WRITES_PER_COMMIT: usize = 500;

/// One write to one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub path: DocPath,
    #[serde(flatten)]
    pub kind: WriteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<Precondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<FieldTransform>,
}

/// What a write does to its document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteKind {
    /// Replace the document's fields, creating it if missing.
    Set { data: Map },
    /// Like `set`, but fails with `already-exists` if the document exists.
    Create { data: Map },
    /// Merge the given field paths into an existing document; `not-found` if missing.
    /// `fields` may be left out when the write only has transforms.
    Update {
        #[serde(default)]
        fields: BTreeMap<FieldPath, Value>,
    },
    /// Merge the given field paths, creating the document if missing (upsert).
    /// `fields` may be left out when the write only has transforms.
    Merge {
        #[serde(default)]
        fields: BTreeMap<FieldPath, Value>,
    },
    /// Remove the document (succeeds if already missing, unless a precondition says otherwise).
    Delete,
}

/// A condition checked against the document's current state at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precondition {
    /// The document must (or must not) exist.
    Exists(bool),
    /// The document must exist with exactly this version (optimistic concurrency).
    Version(u64),
}

/// A server-side change to one field, applied after the write's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldTransform {
    pub field: FieldPath,
    #[serde(flatten)]
    pub transform: Transform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transform", rename_all = "snake_case")]
pub enum Transform {
    /// Set the field to the commit time.
    ServerTimestamp,
    /// Add a number; a missing or non-numeric field is set to the value.
    /// Integer + integer saturates at the i64 bounds; anything else is a double.
    Increment { value: Value },
    /// Append each element not already present.
    ArrayUnion { values: Vec<Value> },
    /// Remove every element equal to one of these.
    ArrayRemove { values: Vec<Value> },
    /// Remove the field.
    Delete,
}

impl Write {
    pub fn set(path: DocPath, data: Map) -> Write {
        Write {
            path,
            kind: WriteKind::Set { data },
            precondition: None,
            transforms: vec![],
        }
    }
    pub fn create(path: DocPath, data: Map) -> Write {
        Write {
            path,
            kind: WriteKind::Create { data },
            precondition: None,
            transforms: vec![],
        }
    }
    pub fn update(path: DocPath, fields: BTreeMap<FieldPath, Value>) -> Write {
        Write {
            path,
            kind: WriteKind::Update { fields },
            precondition: None,
            transforms: vec![],
        }
    }
    pub fn merge(path: DocPath, fields: BTreeMap<FieldPath, Value>) -> Write {
        Write {
            path,
            kind: WriteKind::Merge { fields },
            precondition: None,
            transforms: vec![],
        }
    }
    pub fn delete(path: DocPath) -> Write {
        Write {
            path,
            kind: WriteKind::Delete,
            precondition: None,
            transforms: vec![],
        }
    }
    pub fn with_precondition(mut self, precondition: Precondition) -> Write {
        self.precondition = Some(precondition);
        self
    }
    pub fn with_transform(mut self, field: FieldPath, transform: Transform) -> Write {
        self.transforms.push(FieldTransform { field, transform });
        self
    }

    /// Checks what can be checked without the current document: transform
    /// arguments, conflicting field paths, field names of `set` data.
    pub fn validate(&self) -> Result<(), WriteError> {
        if let WriteKind::Update { fields } | WriteKind::Merge { fields } = &self.kind {
            if fields.is_empty() && self.transforms.is_empty() {
                return Err(WriteError::invalid(format!(
                    "{}: update needs at least one field",
                    self.path
                )));
            }
            let keys: Vec<&FieldPath> = fields.keys().collect();
            for window in keys.windows(2) {
                if window[0].is_prefix_of(window[1]) {
                    return Err(WriteError::invalid(format!(
                        "{}: field paths {} and {} overlap",
                        self.path, window[0], window[1]
                    )));
                }
            }
        }
        for t in &self.transforms {
            if t.field.is_document_id() {
                return Err(WriteError::invalid("__name__ cannot be transformed"));
            }
            if let Transform::Increment { value } = &t.transform {
                if value.as_f64().is_none() {
                    return Err(WriteError::invalid(format!(
                        "increment of {} needs a number, got {}",
                        t.field,
                        value.type_name()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Why a write could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("document {0} does not exist")]
    NotFound(DocPath),
    #[error("document {0} already exists")]
    AlreadyExists(DocPath),
    #[error("{0}")]
    FailedPrecondition(String),
}

impl WriteError {
    fn invalid(message: impl Into<String>) -> WriteError {
        WriteError::InvalidArgument(message.into())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            WriteError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            WriteError::NotFound(_) => ErrorCode::NotFound,
            WriteError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            WriteError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
        }
    }
}

/// Applies `write` to the document's current state. Returns the new fields,
/// or `None` when the document ends up deleted (or stays missing).
pub fn apply_write(
    current: Option<&Document>,
    write: &Write,
    commit_time: Timestamp,
) -> Result<Option<Map>, WriteError> {
    write.validate()?;
    let path = &write.path;
    match write.precondition {
        Some(Precondition::Exists(true)) if current.is_none() => {
            return Err(WriteError::NotFound(path.clone()))
        }
        Some(Precondition::Exists(false)) if current.is_some() => {
            return Err(WriteError::AlreadyExists(path.clone()))
        }
        Some(Precondition::Version(v)) => match current {
            None => {
                return Err(WriteError::FailedPrecondition(format!(
                    "document {path} does not exist (expected version {v})"
                )))
            }
            Some(doc) if doc.version != v => {
                return Err(WriteError::FailedPrecondition(format!(
                    "document {path} is at version {}, expected {v}",
                    doc.version
                )))
            }
            _ => {}
        },
        _ => {}
    }
    let mut fields = match &write.kind {
        WriteKind::Delete => return Ok(None),
        WriteKind::Set { data } => data.clone(),
        WriteKind::Create { data } => {
            if current.is_some() {
                return Err(WriteError::AlreadyExists(path.clone()));
            }
            data.clone()
        }
        WriteKind::Update { fields } | WriteKind::Merge { fields } => {
            let mut base = match current {
                Some(doc) => doc.fields.clone(),
                None if matches!(write.kind, WriteKind::Update { .. }) => {
                    return Err(WriteError::NotFound(path.clone()))
                }
                None => Map::new(),
            };
            for (field, value) in fields {
                set_field(&mut base, field, value.clone());
            }
            base
        }
    };
    for t in &write.transforms {
        apply_transform(&mut fields, t, commit_time);
    }
    validate_fields(path, &fields).map_err(WriteError::InvalidArgument)?;
    Ok(Some(fields))
}

fn apply_transform(fields: &mut Map, t: &FieldTransform, commit_time: Timestamp) {
    let existing = crate::document::get_field(fields, &t.field).cloned();
    let new_value = match &t.transform {
        Transform::Delete => {
            remove_field(fields, &t.field);
            return;
        }
        Transform::ServerTimestamp => Value::Timestamp(commit_time),
        Transform::Increment { value } => match (existing, value) {
            (Some(Value::Integer(a)), Value::Integer(b)) => Value::Integer(a.saturating_add(*b)),
            (Some(a @ (Value::Integer(_) | Value::Double(_))), b) => {
                Value::Double(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0))
            }
            (_, b) => b.clone(),
        },
        Transform::ArrayUnion { values } => {
            let mut items = match existing {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            for v in values {
                if !items.contains(v) {
                    items.push(v.clone());
                }
            }
            Value::Array(items)
        }
        Transform::ArrayRemove { values } => {
            let items = match existing {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            Value::Array(items.into_iter().filter(|i| !values.contains(i)).collect())
        }
    };
    set_field(fields, &t.field, new_value);
}

/// The outcome of one write inside a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteResult {
    pub path: DocPath,
    /// The document's new version, or `None` if it no longer exists.
    pub version: Option<u64>,
    pub update_time: Timestamp,
}

/// The outcome of a commit (a single write, a batch or a transaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitResult {
    /// The commit's changelog sequence number.
    pub seq: u64,
    pub commit_time: Timestamp,
    pub results: Vec<WriteResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(fields: Map) -> Document {
        Document {
            path: DocPath::parse("c/d").unwrap(),
            fields,
            create_time: Timestamp(1),
            update_time: Timestamp(1),
            version: 7,
        }
    }

    fn map(json: serde_json::Value) -> Map {
        crate::value::map_from_json(&json).unwrap()
    }

    fn path() -> DocPath {
        DocPath::parse("c/d").unwrap()
    }

    #[test]
    fn write_json_shapes_parse() {
        let w: Write = serde_json::from_str(
            r#"{"op":"update","path":"c/d","fields":{"a.b":1},"precondition":{"version":3},
                "transforms":[{"field":"n","transform":"increment","value":2},
                              {"field":"t","transform":"server_timestamp"}]}"#,
        )
        .unwrap();
        assert_eq!(w.precondition, Some(Precondition::Version(3)));
        assert_eq!(w.transforms.len(), 2);
        let text = serde_json::to_string(&w).unwrap();
        let back: Write = serde_json::from_str(&text).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn update_and_merge_with_only_transforms_need_no_fields() {
        for op in ["update", "merge"] {
            let w: Write = serde_json::from_str(&format!(
                r#"{{"op":"{op}","path":"c/d","transforms":[{{"field":"n","transform":"increment","value":1}}]}}"#
            ))
            .unwrap();
            assert!(
                matches!(&w.kind, WriteKind::Update { fields } | WriteKind::Merge { fields } if fields.is_empty())
            );
            assert_eq!(w.validate(), Ok(()));
            // Without transforms the write still needs a field.
            let bare: Write =
                serde_json::from_str(&format!(r#"{{"op":"{op}","path":"c/d"}}"#)).unwrap();
            assert!(matches!(
                bare.validate(),
                Err(WriteError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn update_fails_on_missing_and_merge_upserts() {
        let fields: BTreeMap<FieldPath, Value> =
            [(FieldPath::parse("a.b").unwrap(), Value::Integer(1))].into();
        let update = Write::update(path(), fields.clone());
        assert_eq!(
            apply_write(None, &update, Timestamp(0)),
            Err(WriteError::NotFound(path()))
        );
        let merged = apply_write(None, &Write::merge(path(), fields), Timestamp(0))
            .unwrap()
            .unwrap();
        assert_eq!(merged, map(serde_json::json!({"a": {"b": 1}})));
    }

    #[test]
    fn create_fails_when_present_and_version_precondition_is_checked() {
        let existing = doc(Map::new());
        let create = Write::create(path(), Map::new());
        assert_eq!(
            apply_write(Some(&existing), &create, Timestamp(0)),
            Err(WriteError::AlreadyExists(path()))
        );
        let stale = Write::set(path(), Map::new()).with_precondition(Precondition::Version(6));
        assert!(matches!(
            apply_write(Some(&existing), &stale, Timestamp(0)),
            Err(WriteError::FailedPrecondition(_))
        ));
        let fresh = Write::set(path(), Map::new()).with_precondition(Precondition::Version(7));
        assert!(apply_write(Some(&existing), &fresh, Timestamp(0)).is_ok());
    }

    #[test]
    fn transforms_apply_in_order() {
        let existing = doc(map(
            serde_json::json!({"n": 1, "tags": ["a", "b"], "gone": true}),
        ));
        let f = |s: &str| FieldPath::parse(s).unwrap();
        let w = Write::merge(path(), BTreeMap::new())
            .with_transform(
                f("n"),
                Transform::Increment {
                    value: Value::Integer(2),
                },
            )
            .with_transform(
                f("x"),
                Transform::Increment {
                    value: Value::Double(0.5),
                },
            )
            .with_transform(
                f("tags"),
                Transform::ArrayUnion {
                    values: vec!["b".into(), "c".into()],
                },
            )
            .with_transform(
                f("tags"),
                Transform::ArrayRemove {
                    values: vec!["a".into()],
                },
            )
            .with_transform(f("gone"), Transform::Delete)
            .with_transform(f("at"), Transform::ServerTimestamp);
        let out = apply_write(Some(&existing), &w, Timestamp(99))
            .unwrap()
            .unwrap();
        assert!(out["n"].is_identical(&Value::Integer(3)));
        assert!(out["x"].is_identical(&Value::Double(0.5)));
        assert_eq!(out["tags"], Value::Array(vec!["b".into(), "c".into()]));
        assert!(!out.contains_key("gone"));
        assert_eq!(out["at"], Value::Timestamp(Timestamp(99)));
    }

    #[test]
    fn increment_saturates_and_rejects_non_numbers() {
        let existing = doc(map(serde_json::json!({"n": i64::MAX})));
        let f = FieldPath::parse("n").unwrap();
        let w = Write::merge(path(), BTreeMap::new())
            .with_transform(f.clone(), Transform::Increment { value: 5.into() });
        let out = apply_write(Some(&existing), &w, Timestamp(0))
            .unwrap()
            .unwrap();
        assert!(out["n"].is_identical(&Value::Integer(i64::MAX)));
        let bad = Write::merge(path(), BTreeMap::new())
            .with_transform(f, Transform::Increment { value: "x".into() });
        assert!(matches!(
            bad.validate(),
            Err(WriteError::InvalidArgument(_))
        ));
    }

    #[test]
    fn overlapping_update_paths_and_oversized_documents_are_rejected() {
        let fields: BTreeMap<FieldPath, Value> = [
            (FieldPath::parse("a").unwrap(), Value::Integer(1)),
            (FieldPath::parse("a.b").unwrap(), Value::Integer(1)),
        ]
        .into();
        assert!(Write::merge(path(), fields).validate().is_err());
        let big = map(serde_json::json!({"blob": "x".repeat(1024 * 1024)}));
        assert!(matches!(
            apply_write(None, &Write::set(path(), big), Timestamp(0)),
            Err(WriteError::InvalidArgument(_))
        ));
    }
}
