//! Helpers shared by the integration tests: documents from JSON and a
//! standard request context.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::BTreeMap;

use hearth_protocol::{DocPath, Document, Map, Timestamp, Value};
use hearth_rules::{Evaluation, MemoryLookup, Method, Principal, RuleRequest, Ruleset};

pub fn fields(json: serde_json::Value) -> Map {
    match Value::from_json(&json).unwrap() {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

pub fn doc(path: &str, json: serde_json::Value) -> Document {
    Document {
        path: DocPath::parse(path).unwrap(),
        fields: fields(json),
        create_time: Timestamp(0),
        update_time: Timestamp(0),
        version: 1,
    }
}

pub fn alice() -> Principal {
    let mut claims = BTreeMap::new();
    claims.insert("email".to_string(), Value::from("alice@example.com"));
    claims.insert("email_verified".to_string(), Value::Bool(true));
    claims.insert("sign_in_provider".to_string(), Value::from("password"));
    claims.insert("role".to_string(), Value::from("editor"));
    Principal::User {
        uid: "alice".into(),
        claims,
    }
}

pub fn lookup() -> MemoryLookup {
    let mut l = MemoryLookup::new();
    l.insert(doc(
        "others/o1",
        serde_json::json!({"v": 1, "members": ["alice"]}),
    ));
    l.insert(doc("__users__/alice", serde_json::json!({"secret": "x"})));
    for i in 0..30 {
        l.insert(doc(&format!("many/d{i}"), serde_json::json!({"i": i})));
    }
    l
}

pub fn standard_resource() -> Document {
    doc(
        "things/t1",
        serde_json::json!({
            "n": 5, "f": 2.5, "s": "Hello", "tags": ["a", "b"],
            "m": {"x": 1, "y": {"z": 2}}, "ts": {"$timestamp": "2024-05-01T12:00:00Z"},
            "owner": "alice", "ref": "o1", "bad_ref": "o1/x/o2", "nothing": null
        }),
    )
}

/// Evaluates `cond` as the condition of `allow read, write` on
/// `/{coll}/{id}`, for a `get` of `things/t1` by alice.
pub fn eval_as(principal: &Principal, cond: &str) -> Evaluation {
    let rules = Ruleset::parse(&format!(
        "match /{{coll}}/{{id}} {{ allow read, write: if {cond}; }}"
    ))
    .unwrap_or_else(|e| panic!("{cond}: {e}"));
    let resource = standard_resource();
    rules.evaluate(
        &RuleRequest {
            principal,
            method: Method::Get,
            path: &resource.path,
            resource: Some(&resource),
            new_data: None,
            time: Timestamp::parse_rfc3339("2024-06-01T00:00:00Z").unwrap(),
        },
        &lookup(),
    )
}

pub fn eval(cond: &str) -> Evaluation {
    eval_as(&alice(), cond)
}

#[track_caller]
pub fn assert_allows(cond: &str) {
    let e = eval(cond);
    assert!(
        e.allowed,
        "expected {cond} to allow; errors: {:?}",
        e.errors
    );
}

#[track_caller]
pub fn assert_denies(cond: &str) {
    let e = eval(cond);
    assert!(!e.allowed, "expected {cond} to deny");
    assert!(
        e.errors.is_empty(),
        "expected {cond} to be false, not an error: {:?}",
        e.errors
    );
}

/// Denied because evaluating the condition failed.
#[track_caller]
pub fn assert_errors(cond: &str) {
    let e = eval(cond);
    assert!(!e.allowed, "expected {cond} to deny");
    assert!(!e.errors.is_empty(), "expected {cond} to be an error");
}
