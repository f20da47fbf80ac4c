//! Documents and the limits that apply to them.

use serde::{Deserialize, Serialize};

use crate::path::{DocPath, FieldPath, MAX_SEGMENT_BYTES};
use crate::value::{Map, Timestamp, Value};

/// Maximum size of a document (its path plus its estimated field sizes).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A stored document with its metadata.
///
/// `version` is the changelog sequence number of the commit that last wrote
/// it: strictly increasing per document, and usable for optimistic
/// concurrency (`Precondition::Version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub path: DocPath,
    pub fields: Map,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub version: u64,
}

impl Document {
    /// Reads the value at a field path; `__name__` yields the path as a string.
    pub fn get(&self, field: &FieldPath) -> Option<Value> {
        if field.is_document_id() {
            return Some(Value::String(self.path.as_string()));
        }
        get_field(&self.fields, field).cloned()
    }

    pub fn estimated_size(&self) -> usize {
        document_size(&self.path, &self.fields)
    }
}

/// Looks up a (possibly nested) field in a map.
pub fn get_field<'a>(fields: &'a Map, field: &FieldPath) -> Option<&'a Value> {
    let mut segments = field.segments().iter();
    let first = segments.next()?;
    let mut current = fields.get(first)?;
    for segment in segments {
        current = current.as_map()?.get(segment)?;
    }
    Some(current)
}

/// Sets a nested field, creating intermediate maps (and replacing non-map
/// intermediates, as Firestore does).
pub fn set_field(fields: &mut Map, field: &FieldPath, value: Value) {
    let segments = field.segments();
    let mut current = fields;
    for segment in &segments[..segments.len() - 1] {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Map(Map::new()));
        if !matches!(entry, Value::Map(_)) {
            *entry = Value::Map(Map::new());
        }
        current = match entry {
            Value::Map(m) => m,
            _ => unreachable!("just made a map"),
        };
    }
    current.insert(segments[segments.len() - 1].clone(), value);
}

/// Removes a nested field; returns whether anything was removed.
pub fn remove_field(fields: &mut Map, field: &FieldPath) -> bool {
    let segments = field.segments();
    let mut current = fields;
    for segment in &segments[..segments.len() - 1] {
        match current.get_mut(segment) {
            Some(Value::Map(m)) => current = m,
            _ => return false,
        }
    }
    current.remove(&segments[segments.len() - 1]).is_some()
}

/// The size that counts against [`MAX_DOCUMENT_BYTES`]: the path, a fixed
/// overhead, and every field name and value.
pub fn document_size(path: &DocPath, fields: &Map) -> usize {
    path.as_string().len()
        + 16
        + fields
            .iter()
            .map(|(k, v)| k.len() + 1 + v.estimated_size())
            .sum::<usize>()
}

/// Checks field names and the document size limit; returns a user-facing
/// message on failure.
pub fn validate_fields(path: &DocPath, fields: &Map) -> Result<(), String> {
    fn check_names(map: &Map) -> Result<(), String> {
        for (k, v) in map {
            if k.is_empty() {
                return Err("field names must not be empty".into());
            }
            if k.len() > MAX_SEGMENT_BYTES {
                return Err(format!("field name longer than {MAX_SEGMENT_BYTES} bytes"));
            }
            if crate::path::is_reserved_id(k) {
                return Err(format!(
                    "field name {k:?} is reserved (names like __x__ are)"
                ));
            }
            if let Value::Map(inner) = v {
                check_names(inner)?;
            }
            if let Value::Array(items) = v {
                for item in items {
                    if let Value::Map(inner) = item {
                        check_names(inner)?;
                    }
                }
            }
        }
        Ok(())
    }
    check_names(fields)?;
    let size = document_size(path, fields);
    if size > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "document {path} is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)"
        ));
    }
    Ok(())
}
