//! Helpers shared by the store's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use hearth_protocol::{CollectionPath, DocPath, FieldPath, Map, Value, Write};
use hearth_store::{CompositeIndex, IndexField, IndexMode, IndexScope, Store, StoreConfig};

pub fn path(s: &str) -> DocPath {
    DocPath::parse(s).unwrap()
}

pub fn coll(s: &str) -> CollectionPath {
    CollectionPath::parse(s).unwrap()
}

pub fn field(s: &str) -> FieldPath {
    FieldPath::parse(s).unwrap()
}

pub fn map(json: serde_json::Value) -> Map {
    match Value::from_json(&json).unwrap() {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

pub fn val(json: serde_json::Value) -> Value {
    Value::from_json(&json).unwrap()
}

pub fn set(p: &str, json: serde_json::Value) -> Write {
    Write::set(path(p), map(json))
}

pub fn update(p: &str, pairs: &[(&str, serde_json::Value)]) -> Write {
    let fields: BTreeMap<FieldPath, Value> = pairs
        .iter()
        .map(|(k, v)| (field(k), val(v.clone())))
        .collect();
    Write::update(path(p), fields)
}

pub fn index(group: &str, scope: IndexScope, fields: &[(&str, IndexMode)]) -> CompositeIndex {
    CompositeIndex {
        collection_group: group.into(),
        scope,
        fields: fields
            .iter()
            .map(|(f, m)| IndexField {
                field: field(f),
                mode: *m,
            })
            .collect(),
    }
}

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig::new(dir)).unwrap()
}

pub fn open_with(dir: &std::path::Path, f: impl FnOnce(&mut StoreConfig)) -> Store {
    let mut c = StoreConfig::new(dir);
    f(&mut c);
    Store::open(c).unwrap()
}

/// Waits (bounded) until every declared index is ready.
pub async fn wait_ready(store: &Store) {
    for _ in 0..500 {
        if store
            .index_status()
            .iter()
            .all(|s| s.state == hearth_store::IndexState::Ready)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("indexes not ready: {:?}", store.index_status());
}

pub fn ids(docs: &[hearth_protocol::Document]) -> Vec<String> {
    docs.iter().map(|d| d.path.id().to_string()).collect()
}
