//! The MessagePack encoding (`hearth.v1.msgpack`): the same protocol in
//! binary frames. Every frame the client receives is decoded and validated
//! against the same JSON Schemas as the JSON encoding.

mod common;

use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msgpack_client_subscribes_writes_and_receives_changes_in_binary_frames() {
    let server = start(Options::default()).await;
    let mut packed = Client::connect_msgpack(server.addr, Some("user:p")).await;
    assert_eq!(packed.welcome["protocol"], 1);
    // A JSON subscriber of the same query next to it: both see the same changes.
    let mut plain = Client::connect(server.addr, Some("user:j")).await;
    let target = json!({"query": {"collection": "notes", "order_by": [{"field": "n"}]}});
    assert_eq!(
        packed.subscribe("s", target.clone(), None).await["type"],
        "snapshot"
    );
    assert_eq!(plain.subscribe("s", target, None).await["type"], "snapshot");
    let writes = json!([set(
        "notes/a",
        json!({"n": 1.5, "tags": ["x"], "big": 1u64 << 40})
    )]);
    let (ok, early) = packed.write("m1", writes.clone()).await;
    assert_eq!(ok["type"], "write_ok", "{ok}");
    // The change may arrive before or after the acknowledgement.
    let from_packed = match early.into_iter().find(|f| f["type"] == "changes") {
        Some(f) => f,
        None => packed.recv().await,
    };
    let from_plain = plain.recv().await;
    assert_eq!(from_packed, from_plain, "the same frame in both encodings");
    assert_eq!(from_packed["changes"][0]["kind"], "added");
    assert_eq!(from_packed["changes"][0]["doc"]["fields"]["n"], 1.5);
    assert_eq!(
        from_packed["changes"][0]["doc"]["fields"]["big"],
        1u64 << 40
    );
    // A retried mutation is answered as a duplicate, as over JSON.
    let (again, _) = packed.write("m1", writes).await;
    assert_eq!(again["duplicate"], true, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_msgpack_frames_and_text_frames_get_error_frames_in_msgpack() {
    let server = start(Options::default()).await;
    let mut c = Client::connect_msgpack(server.addr, Some("user:p")).await;
    // Not MessagePack at all.
    c.ws.send(Message::binary(vec![0xc1, 0x00, 0x01]))
        .await
        .expect("send");
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid-argument")),
        "{e}"
    );
    // A MessagePack map that is not a valid message keeps its request id.
    c.send(json!({"type": "subscribe", "id": 41})).await;
    let e = c.recv().await;
    assert_eq!(e["id"], 41, "{e}");
    assert_eq!(e["code"], "invalid-argument");
    // A subscribe whose target does not decode keeps its id and its sub.
    c.send(json!({"type": "subscribe", "id": 42, "sub": "s", "target": {"doc": "col"}}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["id"].as_u64(), e["sub"].as_str()),
        (Some(42), Some("s")),
        "{e}"
    );
    // An id beyond 2^53 - 1 is refused and not echoed.
    c.send(json!({"type": "ping", "id": 9_007_199_254_740_993u64}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["code"], "invalid-argument", "{e}");
    assert!(e.get("id").is_none(), "{e}");
    c.send(json!({"type": "subscribe", "id": 9_007_199_254_740_992u64, "sub": "s", "target": {"doc": "col"}}))
        .await;
    let e = c.recv().await;
    assert!(e.get("id").is_none() && e.get("sub").is_none(), "{e}");
    // A JSON text frame on a MessagePack connection is refused, in MessagePack.
    c.ws.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .expect("send");
    let e = c.recv().await;
    assert_eq!(e["code"], "invalid-argument", "{e}");
    // The connection is still usable.
    c.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_hello_on_a_msgpack_connection_is_refused() {
    let server = start(Options::default()).await;
    let mut c = Client::raw(connect_raw_with(server.addr, "hearth.v1.msgpack").await);
    c.send_text(r#"{"type":"hello","protocol":1,"client":{"name":"t","version":"0"}}"#.into())
        .await;
    let (code, _) = c.closed().await;
    assert_eq!(code, 4000, "the first frame must be a MessagePack hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_msgpack_hello_is_told_what_is_wrong() {
    let server = start(Options::default()).await;
    let mut c = Client::raw(connect_raw_with(server.addr, "hearth.v1.msgpack").await);
    c.msgpack = true;
    c.send(json!({"type": "hello", "protocol": 1})).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4000);
    assert_eq!(frames[0]["code"], "invalid-argument");
    assert_eq!(frames[0]["message"], "hello: missing field `client`");
}
