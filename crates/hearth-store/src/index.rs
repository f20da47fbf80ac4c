//! Index entries: which keys a document contributes to the automatic
//! single-field indexes and to the declared composite indexes.
//!
//! The committer computes the entries of a document's old and new state and
//! writes the difference in the same batch as the document, so indexes never
//! disagree with the data (also across a crash).

use std::collections::BTreeSet;

use hearth_protocol::{Document, FieldPath, Map, Value};

use crate::codec;
use crate::config::{CompositeIndex, IndexExemption, IndexMode, IndexScope};
use crate::keys;

/// Build state of a composite index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    /// Being built over existing documents: `done` of about `total` scanned.
    Building {
        done: u64,
        total: u64,
    },
    Ready,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStatus {
    pub index: CompositeIndex,
    pub state: IndexState,
}

/// A configured composite index at run time.
#[derive(Debug, Clone)]
pub(crate) struct IndexDef {
    pub index: CompositeIndex,
    pub id: [u8; 8],
    pub state: IndexState,
    /// The last document key the background build has covered.
    pub resume_after: Option<Vec<u8>>,
}

impl IndexDef {
    pub fn new(index: CompositeIndex) -> IndexDef {
        let id = keys::index_id(&index.canonical());
        IndexDef {
            index,
            id,
            state: IndexState::Building { done: 0, total: 0 },
            resume_after: None,
        }
    }

    /// Whether `__name__` is stored descending (it follows the last asc/desc field).
    pub fn name_desc(&self) -> bool {
        self.index
            .fields
            .iter()
            .rev()
            .find(|f| f.mode != IndexMode::ArrayContains)
            .is_some_and(|f| f.mode == IndexMode::Desc)
    }

    pub fn applies_to(&self, doc: &Document) -> bool {
        doc.path.collection_id() == self.index.collection_group
    }

    /// The key prefix of this index for `doc`'s collection (or group).
    pub fn prefix_for(&self, doc: &Document) -> Vec<u8> {
        match self.index.scope {
            IndexScope::Collection => keys::composite_prefix(&self.id, Some(&doc.path.parent())),
            IndexScope::CollectionGroup => keys::composite_prefix(&self.id, None),
        }
    }

    /// Appends the entries of `doc` (keys only; every value is the doc path).
    pub fn entries(&self, doc: &Document, out: &mut BTreeSet<Vec<u8>>) {
        if !self.applies_to(doc) {
            return;
        }
        let mut parts: Vec<Vec<Vec<u8>>> = Vec::with_capacity(self.index.fields.len());
        for f in &self.index.fields {
            let Some(value) = doc.get(&f.field) else {
                return;
            };
            match f.mode {
                IndexMode::Asc => parts.push(vec![codec::value_key(&value)]),
                IndexMode::Desc => {
                    let mut k = codec::value_key(&value);
                    codec::invert(&mut k);
                    parts.push(vec![k]);
                }
                IndexMode::ArrayContains => {
                    let Value::Array(items) = value else {
                        return;
                    };
                    let distinct: BTreeSet<Vec<u8>> = items.iter().map(codec::value_key).collect();
                    if distinct.is_empty() {
                        return;
                    }
                    parts.push(distinct.into_iter().collect());
                }
            }
        }
        let mut suffix = match self.index.scope {
            IndexScope::Collection => {
                let mut s = Vec::new();
                codec::encode_escaped(&mut s, doc.path.id().as_bytes());
                s
            }
            IndexScope::CollectionGroup => keys::path_value(&doc.path),
        };
        if self.name_desc() {
            codec::invert(&mut suffix);
        }
        let prefix = self.prefix_for(doc);
        let mut keys_so_far = vec![prefix];
        for alternatives in parts {
            let mut next = Vec::with_capacity(keys_so_far.len() * alternatives.len());
            for k in &keys_so_far {
                for a in &alternatives {
                    let mut nk = k.clone();
                    nk.extend_from_slice(a);
                    next.push(nk);
                }
            }
            keys_so_far = next;
        }
        for mut k in keys_so_far {
            k.extend_from_slice(&suffix);
            out.insert(k);
        }
    }
}

/// Everything the committer needs to compute a document's index entries.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexSet {
    pub composites: Vec<IndexDef>,
    pub exemptions: Vec<IndexExemption>,
}

impl IndexSet {
    fn exempt(&self, collection_id: &str, segments: &[String]) -> bool {
        crate::system::field_is_unindexed(collection_id, segments)
            || self.exemptions.iter().any(|e| {
                e.collection_group == collection_id && segments.starts_with(e.field.segments())
            })
    }

    /// All index keys of `doc`: single-field entries for every (nested) field
    /// not exempted, and entries of every composite index that is building or ready.
    pub fn entries(&self, doc: &Document) -> BTreeSet<Vec<u8>> {
        let mut out = BTreeSet::new();
        let collection = doc.path.parent();
        let mut id = Vec::with_capacity(doc.path.id().len() + 2);
        codec::encode_escaped(&mut id, doc.path.id().as_bytes());
        let mut segments = Vec::new();
        self.walk(doc, &collection, &id, &doc.fields, &mut segments, &mut out);
        for def in &self.composites {
            if !matches!(def.state, IndexState::Failed(_)) {
                def.entries(doc, &mut out);
            }
        }
        out
    }

    fn walk(
        &self,
        doc: &Document,
        collection: &hearth_protocol::CollectionPath,
        id: &[u8],
        map: &Map,
        segments: &mut Vec<String>,
        out: &mut BTreeSet<Vec<u8>>,
    ) {
        for (name, value) in map {
            segments.push(name.clone());
            if !self.exempt(doc.path.collection_id(), segments) {
                let mut k = keys::single_prefix(collection, segments, keys::MODE_VALUE);
                codec::encode_value_key(&mut k, value);
                k.extend_from_slice(id);
                out.insert(k);
                match value {
                    Value::Array(items) => {
                        let base = keys::single_prefix(collection, segments, keys::MODE_ARRAY);
                        for item in items {
                            let mut k = base.clone();
                            codec::encode_value_key(&mut k, item);
                            k.extend_from_slice(id);
                            out.insert(k);
                        }
                    }
                    Value::Map(inner) => self.walk(doc, collection, id, inner, segments, out),
                    _ => {}
                }
            }
            segments.pop();
        }
    }
}

/// The single-field index prefix of a field in a collection.
pub(crate) fn single_field_prefix(
    collection: &hearth_protocol::CollectionPath,
    field: &FieldPath,
    array: bool,
) -> Vec<u8> {
    keys::single_prefix(
        collection,
        field.segments(),
        if array {
            keys::MODE_ARRAY
        } else {
            keys::MODE_VALUE
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn system_documents_contribute_no_index_keys_for_secret_fields() {
        let secret = "refresh-hash-0123456789abcdef";
        let mut fields = Map::new();
        fields.insert("uid".into(), Value::String("u1".into()));
        fields.insert("refresh_hash".into(), Value::String(secret.into()));
        let doc = Document {
            path: hearth_protocol::DocPath::parse("__sessions__/s1").unwrap(),
            fields,
            create_time: hearth_protocol::Timestamp(0),
            update_time: hearth_protocol::Timestamp(0),
            version: 1,
        };
        let entries = IndexSet::default().entries(&doc);
        assert_eq!(entries.len(), 1, "only uid is indexed");
        let contains = |needle: &[u8]| {
            entries
                .iter()
                .any(|k| k.windows(needle.len()).any(|w| w == needle))
        };
        assert!(!contains(secret.as_bytes()));
        assert!(!contains(b"refresh_hash"));
        assert!(contains(b"u1"));
    }
}
