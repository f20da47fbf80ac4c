//! The JSON Schemas in sdk-spec/schema/ accept a sample of every frame type
//! as the Rust types encode it, and reject malformed ones. (The end-to-end
//! tests also validate every frame the server actually sends.)

mod common;

use common::*;
use hearth_protocol::ws::{
    ChangeKind, ClientInfo, ClientMessage, DocChange, Limits, ServerMessage, SubscribeTarget,
    TransactionRead,
};
use hearth_protocol::{
    CollectionPath, CommitResult, DocPath, Document, ErrorBody, ErrorCode, Map, Op, Query,
    Timestamp, Transform, Value, Write, WriteResult,
};
use serde_json::json;

fn doc(path: &str) -> Document {
    let mut fields = Map::new();
    fields.insert("n".into(), Value::from(1));
    fields.insert("t".into(), Value::Timestamp(Timestamp(5)));
    Document {
        path: DocPath::parse(path).expect("path"),
        fields,
        create_time: Timestamp(1),
        update_time: Timestamp(2),
        version: 3,
    }
}

fn check(validator: &jsonschema::Validator, frame: &serde_json::Value) {
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{frame}: {errors:?}");
}

#[test]
fn every_server_frame_type_validates_against_its_schema() {
    let union = validator_for("server-message.json");
    let samples = vec![
        ServerMessage::Welcome {
            session_id: "s".into(),
            server_time: Timestamp::now(),
            protocol: 1,
            heartbeat_ms: 1,
            idle_timeout_ms: 2,
            limits: Limits {
                max_subscriptions: 1,
                max_frame_bytes: 2,
                max_inflight_writes: 3,
                max_pending_events: 4,
                max_queued_bytes: 5,
            },
            uid: Some("u".into()),
            admin: false,
            expires_at: Some(Timestamp::now()),
        },
        ServerMessage::AuthOk {
            id: 1,
            uid: None,
            admin: true,
            expires_at: None,
        },
        ServerMessage::Snapshot {
            sub: "s".into(),
            resume: "p1".into(),
            reset: true,
            docs: vec![doc("a/b"), doc("a/b/c/d")],
        },
        ServerMessage::Changes {
            sub: "s".into(),
            resume: "p2".into(),
            changes: vec![
                DocChange {
                    kind: ChangeKind::Removed,
                    doc: doc("a/x"),
                    old_index: Some(0),
                    new_index: None,
                },
                DocChange {
                    kind: ChangeKind::Added,
                    doc: doc("a/y"),
                    old_index: None,
                    new_index: Some(0),
                },
                DocChange {
                    kind: ChangeKind::Modified,
                    doc: doc("a/z"),
                    old_index: Some(1),
                    new_index: Some(1),
                },
            ],
        },
        ServerMessage::Unsubscribed {
            id: 2,
            sub: "s".into(),
        },
        ServerMessage::WriteOk {
            id: 3,
            mutation_id: "m".into(),
            result: CommitResult {
                seq: 4,
                commit_time: Timestamp(4),
                results: vec![
                    WriteResult {
                        path: DocPath::parse("a/b").expect("p"),
                        version: Some(4),
                        update_time: Timestamp(4),
                    },
                    WriteResult {
                        path: DocPath::parse("a/c").expect("p"),
                        version: None,
                        update_time: Timestamp(4),
                    },
                ],
            },
            duplicate: false,
        },
        ServerMessage::error(
            Some(5),
            Some("s".into()),
            ErrorBody::new(ErrorCode::PermissionDenied, "no"),
        ),
        ServerMessage::error(
            None,
            None,
            ErrorBody::new(ErrorCode::FailedPrecondition, "v")
                .with_details(json!({"supported": [1]})),
        ),
        ServerMessage::error(
            Some(8),
            Some("q".into()),
            ErrorBody::new(ErrorCode::FailedPrecondition, "declare this index").with_details(
                json!({"missing_index": "[[store.indexes.composite]]\ncollection_group = \"c\""}),
            ),
        ),
        ServerMessage::Ping { id: 6 },
        ServerMessage::Pong { id: 7 },
    ];
    for msg in samples {
        let frame = serde_json::to_value(&msg).expect("encodes");
        let name = frame["type"].as_str().expect("type").to_string();
        check(&union, &frame);
        check(&validator_for(&format!("{name}.json")), &frame);
    }
}

#[test]
fn every_client_frame_type_validates_against_its_schema() {
    let union = client_validator();
    let query = Query::collection(CollectionPath::parse("rooms").expect("p"))
        .filter("room", Op::Eq, "k")
        .limit(5);
    let samples = vec![
        ClientMessage::Hello {
            protocol: 1,
            client: ClientInfo {
                name: "n".into(),
                version: "1".into(),
            },
            token: Some("t".into()),
        },
        ClientMessage::Auth {
            id: 1,
            token: "t".into(),
        },
        ClientMessage::Subscribe {
            id: 2,
            sub: "s".into(),
            target: SubscribeTarget::Query(query),
            resume: Some("p3".into()),
        },
        ClientMessage::Subscribe {
            id: 3,
            sub: "d".into(),
            target: SubscribeTarget::Doc(DocPath::parse("rooms/r").expect("p")),
            resume: None,
        },
        ClientMessage::Unsubscribe {
            id: 4,
            sub: "s".into(),
        },
        ClientMessage::Write {
            id: 5,
            mutation_id: "m".into(),
            writes: vec![
                Write::set(DocPath::parse("a/b").expect("p"), Map::new()),
                Write::delete(DocPath::parse("a/c").expect("p")),
            ],
        },
        ClientMessage::Transaction {
            id: 6,
            mutation_id: "m2".into(),
            reads: vec![TransactionRead {
                path: DocPath::parse("a/b").expect("p"),
                version: None,
            }],
            writes: vec![Write::create(DocPath::parse("a/d").expect("p"), Map::new())],
        },
        ClientMessage::Ping { id: 7 },
        ClientMessage::Pong { id: 8 },
        // An update or merge with transforms only needs no fields.
        ClientMessage::Write {
            id: 9,
            mutation_id: "m3".into(),
            writes: vec![
                Write::merge(DocPath::parse("a/e").expect("p"), Default::default()).with_transform(
                    "n".parse().expect("field"),
                    Transform::Increment {
                        value: Value::from(1),
                    },
                ),
                Write::update(DocPath::parse("a/f").expect("p"), Default::default())
                    .with_transform("t".parse().expect("field"), Transform::ServerTimestamp),
            ],
        },
    ];
    // The transforms-only merge as PROTOCOL.md section 2 writes it (no `fields` key).
    let transforms_only = json!({"type": "write", "id": 10, "mutation_id": "m4", "writes": [
        {"op": "merge", "path": "counters/c", "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]});
    check(union, &transforms_only);
    check(&validator_for("write.json"), &transforms_only);
    for msg in samples {
        let frame = serde_json::to_value(&msg).expect("encodes");
        let name = frame["type"].as_str().expect("type").to_string();
        check(union, &frame);
        check(&validator_for(&format!("{name}.json")), &frame);
    }
}

#[test]
fn the_schemas_reject_malformed_frames() {
    let server = validator_for("server-message.json");
    for bad in [
        json!({"type": "changes", "sub": "s", "resume": "p1", "changes": [{"kind": "added", "doc": {"path": "a/b"}, "old_index": null, "new_index": 0}]}),
        json!({"type": "changes", "sub": "s", "resume": "p1", "changes": [{"kind": "added", "doc": serde_json::to_value(doc("a/b")).expect("doc"), "old_index": 1, "new_index": 0}]}),
        json!({"type": "error", "code": "teapot", "message": "x"}),
        json!({"type": "error", "code": "internal", "message": "x", "details": []}),
        json!({"type": "error", "code": "failed-precondition", "message": "x", "details": {"missing_index": {"fields": []}}}),
        json!({"type": "error", "code": "failed-precondition", "message": "x", "details": {"supported": ["1"]}}),
        json!({"type": "error", "id": 9007199254740992u64, "code": "internal", "message": "x"}),
        json!({"type": "error", "sub": "", "code": "internal", "message": "x"}),
        json!({"type": "pong", "id": 9007199254740992u64}),
        json!({"type": "welcome"}),
        json!({"type": "nonsense"}),
    ] {
        assert!(!server.is_valid(&bad), "accepted {bad}");
    }
    let client = client_validator();
    for bad in [
        // update/merge need a field or a transform, as the server's validation does.
        json!({"type": "write", "id": 1, "mutation_id": "m", "writes": [{"op": "update", "path": "a/b"}]}),
        json!({"type": "write", "id": 1, "mutation_id": "m", "writes": [{"op": "merge", "path": "a/b", "fields": {}, "transforms": []}]}),
        json!({"type": "write", "id": 1, "mutation_id": "m", "writes": [{"op": "set", "path": "a/b", "transforms": [{"field": "n", "transform": "server_timestamp"}]}]}),
        json!({"type": "subscribe", "id": 1, "sub": "", "target": {"doc": "a/b"}}),
        json!({"type": "subscribe", "id": 1, "sub": "s", "target": {"doc": "a"}}),
        json!({"type": "write", "id": 1, "mutation_id": "m", "writes": []}),
        json!({"type": "hello", "client": {"name": "x", "version": "1"}}),
    ] {
        assert!(!client.is_valid(&bad), "accepted {bad}");
    }
}
