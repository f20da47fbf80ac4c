//! End-to-end tests of the gateway: a real store, the real router on a
//! loopback port, a raw WebSocket client speaking hearth.v1. Every frame
//! the client receives is validated against sdk-spec/schema/.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hearth_gateway::GatewayConfig;
use hearth_protocol::{DocPath, Map, Value as HValue, Write};
use hearth_store::Retention;
use serde_json::json;

fn q(collection: &str) -> serde_json::Value {
    json!({"query": {"collection": collection}})
}

async fn commit(server: &Server, writes: Vec<Write>) -> u64 {
    server.store.commit(writes).await.expect("commit").seq
}

fn wset(path: &str, n: i64) -> Write {
    let mut m = Map::new();
    m.insert("n".into(), HValue::from(n));
    Write::set(DocPath::parse(path).expect("path"), m)
}

fn wdel(path: &str) -> Write {
    Write::delete(DocPath::parse(path).expect("path"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_welcomes_with_identity_and_limits() {
    let server = start(Options::default()).await;
    let c = Client::connect(server.addr, Some("user:alice")).await;
    assert_eq!(c.welcome["uid"], "alice");
    assert_eq!(c.welcome["admin"], false);
    assert_eq!(c.welcome["protocol"], 1);
    assert_eq!(c.welcome["limits"]["max_subscriptions"], 100);
    let admin = Client::connect(server.addr, Some("admin")).await;
    assert_eq!(admin.welcome["admin"], true);
    let anon = Client::connect(server.addr, None).await;
    assert!(anon.welcome["uid"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_close_with_documented_codes() {
    let server = start(Options::default()).await;
    // Not hello first.
    let mut c = Client::raw(connect_raw(server.addr).await);
    c.send(json!({"type": "ping", "id": 1})).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4000);
    assert_eq!(frames[0]["code"], "invalid-argument");
    // Unsupported version.
    let mut c = Client::raw(connect_raw(server.addr).await);
    c.send(json!({"type": "hello", "protocol": 2, "client": {"name": "t", "version": "0"}}))
        .await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4000);
    assert_eq!(frames[0]["code"], "failed-precondition");
    assert_eq!(frames[0]["details"]["supported"], json!([1]));
    // Bad token.
    let mut c = Client::hello(server.addr, Some("garbage")).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4001);
    assert_eq!(frames[0]["code"], "unauthenticated");
    // Already expired token.
    let mut c = Client::hello(server.addr, Some(&expiring_token("u", -1000))).await;
    assert_eq!(c.closed().await.0, 4001);
    // A hello that does not decode is told what is wrong with it.
    let mut c = Client::raw(connect_raw(server.addr).await);
    c.send(json!({"type": "hello", "protocol": 1})).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4000);
    assert_eq!(frames[0]["code"], "invalid-argument");
    assert_eq!(frames[0]["message"], "hello: missing field `client`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_echo_only_valid_ids_and_sub_names() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    // Sub names outside 1..=128 bytes are refused and not echoed
    // (`recv` validates every frame against the schemas).
    for bad in [String::new(), "s".repeat(129)] {
        c.send(json!({"type": "subscribe", "id": 1, "sub": bad, "target": {"doc": "c/x"}}))
            .await;
        let e = c.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("invalid-argument"), Some(1))
        );
        assert!(e.get("sub").is_none(), "{e}");
        c.send(json!({"type": "unsubscribe", "id": 2, "sub": bad}))
            .await;
        let e = c.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("invalid-argument"), Some(2))
        );
        assert!(e.get("sub").is_none(), "{e}");
    }
    // Ids beyond 2^53 - 1 are refused without an id, whatever the frame.
    let too_big = 9_007_199_254_740_992u64;
    for frame in [
        json!({"type": "ping", "id": too_big}),
        json!({"type": "ping", "id": u64::MAX}),
        json!({"type": "subscribe", "id": too_big, "sub": "s", "target": {"doc": "c/x"}}),
        json!({"type": "subscribe", "id": too_big, "sub": "s", "target": {"doc": "c"}}),
        json!({"type": "write", "id": too_big, "mutation_id": "m", "writes": [set("c/x", json!({}))]}),
        json!({"type": "unsubscribe", "id": too_big, "sub": "s"}),
    ] {
        c.send(frame.clone()).await;
        let e = c.recv().await;
        assert_eq!(e["code"], "invalid-argument", "{frame} -> {e}");
        assert!(
            e.get("id").is_none() && e.get("sub").is_none(),
            "{frame} -> {e}"
        );
    }
    // The largest allowed id is answered as usual.
    c.send(json!({"type": "ping", "id": 9_007_199_254_740_991u64}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "pong", "id": 9_007_199_254_740_991u64})
    );
    // Nothing was subscribed or written by the refused frames.
    assert_eq!(
        c.subscribe("s", json!({"doc": "c/x"}), None).await["docs"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_that_does_not_decode_is_answered_with_its_id_and_sub() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    for (id, target) in [
        (1, json!({"doc": "col"})),
        (
            2,
            json!({"query": {"collection": "col", "limit_to_last": true}}),
        ),
        (3, json!({"query": {"collection": "col", "bogus": 1}})),
        (4, json!({"doc": "col/x", "query": {"collection": "col"}})),
    ] {
        c.send(json!({"type": "subscribe", "id": id, "sub": "a", "target": target}))
            .await;
        let e = c.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64(), e["sub"].as_str()),
            (Some("invalid-argument"), Some(id), Some("a")),
            "{e}"
        );
    }
    c.send(json!({"type": "unsubscribe", "id": 5, "sub": "a", "extra": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["sub"].as_str()),
        (Some("not-found"), Some("a"))
    );
    // The name was never taken.
    assert_eq!(
        c.subscribe("a", json!({"doc": "col/x"}), None).await["type"],
        "snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_id_reused_for_different_writes_is_refused() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let (ok, _) = c.write("m1", json!([set("c/a", json!({"n": 1}))])).await;
    assert_eq!(ok["duplicate"], false, "{ok}");
    let (again, _) = c.write("m1", json!([set("c/a", json!({"n": 1}))])).await;
    assert_eq!(
        (again["duplicate"].as_bool(), &again["result"]),
        (Some(true), &ok["result"])
    );
    let (e, _) = c.write("m1", json!([set("c/b", json!({"n": 2}))])).await;
    assert_eq!(e["code"], "invalid-argument", "{e}");
    assert!(server
        .store
        .get(&DocPath::parse("c/b").expect("path"))
        .expect("get")
        .is_none());
}

/// A client's writes apply in the order it sent them, however many are in
/// flight (PROTOCOL.md §7): an `update` pipelined right behind the `create`
/// of the same document never finds it missing, and a `delete` behind a
/// `set` always wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_on_one_connection_apply_in_the_order_sent() {
    let server = start(Options::default()).await;
    for (token, who) in [("user:u", "user"), ("admin", "admin")] {
        let mut c = Client::connect(server.addr, Some(token)).await;
        let mut sent = 0;
        for i in 0..10 {
            let path = format!("ordered_{who}/d{i}");
            for (step, write) in [
                json!({"op": "create", "path": path, "data": {"count": 1}}),
                json!({"op": "update", "path": path, "fields": {"count": 2}}),
                json!({"op": "update", "path": path, "fields": {"count": 3}}),
            ]
            .into_iter()
            .enumerate()
            {
                let id = c.id();
                c.send(json!({"type": "write", "id": id,
                    "mutation_id": format!("{who}-{i}-{step}"), "writes": [write]}))
                    .await;
                sent += 1;
            }
        }
        let mut answered = 0;
        while answered < sent {
            let frame = c.recv().await;
            match frame["type"].as_str() {
                Some("write_ok") => answered += 1,
                Some("error") => panic!("a pipelined write failed: {frame}"),
                _ => {}
            }
        }
        for i in 0..10 {
            let path = format!("ordered_{who}/d{i}");
            assert_eq!(count_of(&server, &path), Some(HValue::Integer(3)), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_frame_holds_500_writes_like_a_rest_batch() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let writes = |n: usize| {
        json!((0..n)
            .map(|i| set(&format!("c/d{i}"), json!({})))
            .collect::<Vec<_>>())
    };
    let (ok, _) = c.write("m500", writes(500)).await;
    assert_eq!(ok["type"], "write_ok", "{ok}");
    assert_eq!(ok["result"]["results"].as_array().map(Vec::len), Some(500));
    let (e, _) = c.write("m501", writes(501)).await;
    assert_eq!(e["code"], "invalid-argument", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_with_only_transforms_needs_no_fields() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let inc = json!([{"op": "merge", "path": "c/n", "transforms": [{"field": "n", "transform": "increment", "value": 2}]}]);
    let (ok, _) = c.write("m1", inc).await;
    assert_eq!(ok["type"], "write_ok", "{ok}");
    let doc = server
        .store
        .get(&DocPath::parse("c/n").expect("path"))
        .expect("get")
        .expect("exists");
    assert_eq!(doc.fields.get("n"), Some(&HValue::from(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_subscription_gets_a_snapshot_then_each_change_kind() {
    let server = start(Options::default()).await;
    commit(&server, vec![wset("items/a", 1), wset("items/b", 2)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let target = json!({"query": {"collection": "items", "where": {"field": "n", "op": "<", "value": 10},
                                  "order_by": [{"field": "n"}]}});
    let snap = c.subscribe("s", target, None).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["reset"], false);
    assert_eq!(paths(&snap["docs"]), ["items/a", "items/b"]);
    let mut view = vec![];
    apply(&mut view, &snap);

    commit(&server, vec![wset("items/c", 0)]).await;
    let f = c.recv().await;
    assert_eq!(f["changes"][0]["kind"], "added");
    assert_eq!(f["changes"][0]["new_index"], 0);
    apply(&mut view, &f);

    commit(&server, vec![wset("items/a", 5)]).await;
    let f = c.recv().await;
    let ch = &f["changes"][0];
    assert_eq!(
        (
            ch["kind"].as_str(),
            ch["old_index"].as_u64(),
            ch["new_index"].as_u64()
        ),
        (Some("modified"), Some(1), Some(2))
    );
    apply(&mut view, &f);

    // Leaves the query by no longer matching, then by deletion.
    commit(&server, vec![wset("items/b", 50)]).await;
    let f = c.recv().await;
    assert_eq!(f["changes"][0]["kind"], "removed");
    assert_eq!(
        f["changes"][0]["doc"]["fields"]["n"], 2,
        "removed carries the last version the client had"
    );
    apply(&mut view, &f);
    commit(&server, vec![wdel("items/c")]).await;
    let f = c.recv().await;
    assert_eq!(f["changes"][0]["kind"], "removed");
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["items/a"]);
    // Unrelated collections produce nothing: the next frame is our pong.
    commit(&server, vec![wset("other/x", 1)]).await;
    c.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_subscription_follows_one_document() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let snap = c.subscribe("d", json!({"doc": "rooms/r1"}), None).await;
    assert_eq!(snap["docs"], json!([]));
    commit(&server, vec![wset("rooms/r1", 1), wset("rooms/r2", 1)]).await;
    let f = c.recv().await;
    assert_eq!(f["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(f["changes"][0]["kind"], "added");
    commit(&server, vec![wset("rooms/r1", 2)]).await;
    assert_eq!(c.recv().await["changes"][0]["kind"], "modified");
    commit(&server, vec![wdel("rooms/r1")]).await;
    assert_eq!(c.recv().await["changes"][0]["kind"], "removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_query_keeps_its_window() {
    let server = start(Options::default()).await;
    commit(
        &server,
        (1..=5).map(|i| wset(&format!("s/d{i}"), i * 10)).collect(),
    )
    .await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let target = json!({"query": {"collection": "s", "order_by": [{"field": "n", "direction": "desc"}], "limit": 2}});
    let snap = c.subscribe("top", target.clone(), None).await;
    assert_eq!(paths(&snap["docs"]), ["s/d5", "s/d4"]);
    let mut view = vec![];
    apply(&mut view, &snap);
    // d5 drops out: d3 enters in the same frame.
    commit(&server, vec![wset("s/d5", 1)]).await;
    let f = c.recv().await;
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["s/d4", "s/d3"]);
    let kinds: Vec<&str> = f["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["removed", "added"]);
    // A write below the window changes nothing; one above it enters.
    commit(&server, vec![wset("s/d1", 11)]).await;
    commit(&server, vec![wset("s/new", 100)]).await;
    let f = c.recv().await;
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["s/new", "s/d4"]);
    // Deleting inside the window pulls the next one in.
    commit(&server, vec![wdel("s/new")]).await;
    let f = c.recv().await;
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["s/d4", "s/d3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_touching_several_documents_arrives_as_one_frame() {
    let server = start(Options::default()).await;
    commit(&server, vec![wset("m/a", 1), wset("m/b", 2)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let snap = c.subscribe("s", q("m"), None).await;
    let mut view = vec![];
    apply(&mut view, &snap);
    let mut writer = Client::connect(server.addr, Some("user:w")).await;
    let (ok, _) = writer
        .write("batch-1", json!([set("m/c", json!({"n": 3})), {"op": "delete", "path": "m/a"}, set("m/b", json!({"n": 9}))]))
        .await;
    assert_eq!(ok["type"], "write_ok");
    let f = c.recv().await;
    assert_eq!(f["changes"].as_array().map(Vec::len), Some(3), "{f}");
    assert_eq!(f["resume"], format!("p{}", ok["result"]["seq"]));
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["m/b", "m/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_delivers_exactly_the_missed_changes() {
    let server = start(Options::default()).await;
    commit(
        &server,
        vec![wset("r/a", 1), wset("r/b", 2), wset("r/c", 3)],
    )
    .await;
    let target =
        json!({"query": {"collection": "r", "where": {"field": "n", "op": "<", "value": 100}}});
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let snap = c.subscribe("s", target.clone(), None).await;
    let mut view = vec![];
    apply(&mut view, &snap);
    let token = snap["resume"].as_str().expect("token").to_string();
    drop(c);
    // While away: one added, one modified, one removed by deletion, one
    // removed by no longer matching, one added then deleted (never seen),
    // and one modified twice.
    commit(&server, vec![wset("r/d", 4)]).await;
    commit(&server, vec![wset("r/a", 10)]).await;
    commit(&server, vec![wdel("r/b")]).await;
    commit(&server, vec![wset("r/c", 1000)]).await;
    commit(&server, vec![wset("r/tmp", 1)]).await;
    commit(&server, vec![wdel("r/tmp")]).await;
    commit(&server, vec![wset("r/a", 11)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let f = c.subscribe("s", target.clone(), Some(&token)).await;
    assert_eq!(f["type"], "changes", "{f}");
    apply(&mut view, &f);
    assert_eq!(
        view_paths(&view),
        ["r/d", "r/a"],
        "ordered by n (inequality field), then name"
    );
    assert_eq!(view[1]["fields"]["n"], 11);
    let kinds: Vec<&str> = f["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds.len(),
        4,
        "one change per document, no duplicates: {f}"
    );
    // Resuming at the newest token yields an empty changes frame.
    let token = f["resume"].as_str().expect("token").to_string();
    let mut c2 = Client::connect(server.addr, Some("user:u")).await;
    let f = c2.subscribe("s", target, Some(&token)).await;
    assert_eq!(f["changes"], json!([]));
    // And live changes continue after a resume.
    commit(&server, vec![wset("r/e", 5)]).await;
    let f = c.recv().await;
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["r/d", "r/e", "r/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_a_limit_query_replaces_the_view() {
    let server = start(Options::default()).await;
    commit(
        &server,
        (1..=4).map(|i| wset(&format!("l/d{i}"), i)).collect(),
    )
    .await;
    let target = json!({"query": {"collection": "l", "order_by": [{"field": "n"}], "limit": 2}});
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let snap = c.subscribe("s", target.clone(), None).await;
    let token = snap["resume"].as_str().expect("token").to_string();
    drop(c);
    commit(&server, vec![wdel("l/d1")]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let f = c.subscribe("s", target, Some(&token)).await;
    assert_eq!(f["type"], "snapshot");
    assert_eq!(f["reset"], false);
    assert_eq!(paths(&f["docs"]), ["l/d2", "l/d3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_yields_a_reset_snapshot() {
    let retention = Retention {
        max_age: None,
        max_commits: Some(3),
    };
    let server = start(Options {
        retention: Some(retention),
        ..Options::default()
    })
    .await;
    commit(&server, vec![wset("o/a", 1)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let snap = c.subscribe("s", q("o"), None).await;
    let token = snap["resume"].as_str().expect("token").to_string();
    let seq: u64 = token[1..].parse().expect("seq");
    drop(c);
    for i in 0..10 {
        commit(&server, vec![wset(&format!("o/x{i}"), i)]).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.store.changelog().oldest() <= seq + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let f = c.subscribe("s", q("o"), Some(&token)).await;
    assert_eq!(f["type"], "snapshot");
    assert_eq!(f["reset"], true);
    assert_eq!(f["docs"].as_array().map(Vec::len), Some(11));
    // Garbage tokens are refused.
    let f = c.subscribe("t", q("o"), Some("not-a-token")).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str(), f["sub"].as_str()),
        (Some("error"), Some("invalid-argument"), Some("t"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_even_across_reconnect_and_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_path_buf();
    let server = start_in(dir, Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let writes = json!([{"op": "merge", "path": "w/a", "fields": {"by": "x"}, "transforms": [{"field": "count", "transform": "increment", "value": 1}]}]);
    let (first, _) = c.write("mut-1", writes.clone()).await;
    assert_eq!(first["type"], "write_ok", "{first}");
    assert_eq!(first["duplicate"], false);
    let (again, _) = c.write("mut-1", writes.clone()).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["result"], first["result"]);
    drop(c);
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let (third, _) = c.write("mut-1", writes.clone()).await;
    assert_eq!(third["duplicate"], true);
    assert_eq!(third["result"], first["result"]);
    // Another user's identical id is a different mutation.
    let mut other = Client::connect(server.addr, Some("user:v")).await;
    let (theirs, _) = other.write("mut-1", writes.clone()).await;
    assert_eq!(theirs["duplicate"], false);
    drop((c, other));
    // Restart the store and the gateway on the same data.
    server.gateway.shutdown();
    server.store.shutdown().await.expect("store shuts down");
    server.task.abort();
    let Server {
        dir,
        store,
        gateway,
        ..
    } = server;
    drop((store, gateway));
    assert!(path.exists());
    let server = start_in(dir, Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let (after_restart, _) = c.write("mut-1", writes).await;
    assert_eq!(after_restart["duplicate"], true);
    assert_eq!(after_restart["result"], first["result"]);
    let doc = server
        .store
        .get(&DocPath::parse("w/a").expect("path"))
        .expect("get")
        .expect("exists");
    assert_eq!(
        doc.fields.get("count"),
        Some(&HValue::from(2)),
        "applied once by u and once by v"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_aborts_when_a_read_changed() {
    let server = start(Options::default()).await;
    let seq = commit(&server, vec![wset("t/a", 1)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let id = c.id();
    c.send(
        json!({"type": "transaction", "id": id, "mutation_id": "tx-1",
                  "reads": [{"path": "t/a", "version": seq}, {"path": "t/none", "version": null}],
                  "writes": [set("t/b", json!({"n": 2}))]}),
    )
    .await;
    let ok = c.recv().await;
    assert_eq!(ok["type"], "write_ok", "{ok}");
    let id = c.id();
    c.send(
        json!({"type": "transaction", "id": id, "mutation_id": "tx-2",
                  "reads": [{"path": "t/a", "version": seq - 1}],
                  "writes": [set("t/c", json!({"n": 3}))]}),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("aborted"), Some(id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_limits_answer_with_error_frames() {
    let config = GatewayConfig {
        max_subscriptions: 2,
        max_frame_bytes: 4096,
        max_inflight_writes: 1,
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    // Malformed frames keep the connection.
    c.send_text("{not json".into()).await;
    assert_eq!(c.recv().await["code"], "invalid-argument");
    c.send(json!({"type": "teleport", "id": 3})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("invalid-argument"), Some(3))
    );
    c.send(json!({"type": "subscribe", "id": 4, "sub": "x", "target": {"query": {"collection": "a/b"}}})).await;
    assert_eq!(c.recv().await["code"], "invalid-argument");
    // Unknown subscription.
    c.send(json!({"type": "unsubscribe", "id": 5, "sub": "nope"}))
        .await;
    assert_eq!(c.recv().await["code"], "not-found");
    // Subscription limit, duplicate names, unsubscribe frees a slot.
    assert_eq!(c.subscribe("a", q("c"), None).await["type"], "snapshot");
    assert_eq!(
        c.subscribe("a", q("c"), None).await["code"],
        "invalid-argument"
    );
    assert_eq!(c.subscribe("b", q("c"), None).await["type"], "snapshot");
    let e = c.subscribe("c", q("c"), None).await;
    assert_eq!(
        (e["code"].as_str(), e["sub"].as_str()),
        (Some("resource-exhausted"), Some("c"))
    );
    c.send(json!({"type": "unsubscribe", "id": 6, "sub": "a"}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "unsubscribed", "id": 6, "sub": "a"})
    );
    assert_eq!(c.subscribe("c", q("c"), None).await["type"], "snapshot");
    // System collections are refused.
    c.send(json!({"type": "unsubscribe", "id": 7, "sub": "c"}))
        .await;
    c.recv().await;
    let e = c.subscribe("sys", q("__mutations__"), None).await;
    assert_eq!(e["code"], "permission-denied");
    // Payload too large (soft): answered, connection stays.
    let big = "x".repeat(5000);
    c.send(json!({"type": "write", "id": 8, "mutation_id": "big", "writes": [set("c/big", json!({"s": big}))]})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("payload-too-large"), Some(8))
    );
    // In-flight write limit: two writes back to back, the second may be refused.
    c.send(json!({"type": "write", "id": 9, "mutation_id": "m9", "writes": [set("c/a", json!({"n": 1}))]})).await;
    c.send(json!({"type": "write", "id": 10, "mutation_id": "m10", "writes": [set("c/b", json!({"n": 1}))]})).await;
    let mut answers = vec![];
    while answers.len() < 2 {
        let f = c.recv().await;
        if f["id"] == 9 || f["id"] == 10 {
            answers.push(f);
        }
    }
    let refused: Vec<_> = answers.iter().filter(|f| f["type"] == "error").collect();
    assert!(
        refused
            .iter()
            .all(|f| f["code"] == "resource-exhausted" && f["id"] == 10),
        "{answers:?}"
    );
    // Writes that fail validation or preconditions.
    let (e, _) = c
        .write(
            "m11",
            json!([{"op": "update", "path": "c/missing", "fields": {"n": 1}}]),
        )
        .await;
    assert_eq!(e["code"], "not-found");
    let (e, _) = c.write("", json!([set("c/a", json!({}))])).await;
    assert_eq!(e["code"], "invalid-argument");
    // Frame too large (hard): closed with 4009.
    let huge = "y".repeat(9000);
    c.send(json!({"type": "ping", "id": 1, "pad": huge})).await;
    let (code, _) = c.closed().await;
    assert_eq!(code, 4009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_4001_unless_refreshed() {
    let server = start(Options::default()).await;
    // Refreshed in time: the session survives past the first expiry.
    let mut c = Client::connect(server.addr, Some(&expiring_token("u", 600))).await;
    assert!(c.welcome["expires_at"].is_string());
    let id = c.id();
    c.send(json!({"type": "auth", "id": id, "token": expiring_token("u", 60_000)}))
        .await;
    let ok = c.recv().await;
    assert_eq!(
        (ok["type"].as_str(), ok["uid"].as_str()),
        (Some("auth_ok"), Some("u"))
    );
    // A token for someone else is refused, the current one stays.
    c.send(json!({"type": "auth", "id": 2, "token": "user:mallory"}))
        .await;
    assert_eq!(c.recv().await["code"], "invalid-argument");
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.send(json!({"type": "ping", "id": 3})).await;
    assert_eq!(c.recv().await["type"], "pong");
    // Not refreshed: error unauthenticated, then close 4001.
    let mut c = Client::connect(server.addr, Some(&expiring_token("u", 300))).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, 4001);
    assert_eq!(
        frames.last().map(|f| f["code"].clone()),
        Some(json!("unauthenticated"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_closes_their_sockets_with_4003() {
    let server = start(Options::default()).await;
    let mut alice = Client::connect(server.addr, Some("user:alice")).await;
    let mut bob = Client::connect(server.addr, Some("user:bob")).await;
    assert_eq!(server.gateway.revoke_user("alice"), 1);
    assert_eq!(alice.closed().await.0, 4003);
    bob.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(bob.recv().await["type"], "pong");
    // Revoking one session closes only the sockets of that session.
    let mut s1 = Client::connect(server.addr, Some("session:carol:s1")).await;
    let mut s2 = Client::connect(server.addr, Some("session:carol:s2")).await;
    assert_eq!(server.gateway.revoke_session("carol", "s1"), 1);
    assert_eq!(s1.closed().await.0, 4003);
    s2.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(s2.recv().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_socket_with_1001() {
    let server = start(Options::default()).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    server.gateway.shutdown();
    assert_eq!(c.closed().await.0, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_idle_timeout() {
    let config = GatewayConfig {
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    // A client that neither reads nor sends is pinged, then closed with 4010.
    let mut idle = Client::connect(server.addr, Some("user:v")).await;
    let (code, frames) = idle.closed().await;
    assert_eq!(code, 4010);
    assert!(frames.iter().any(|f| f["type"] == "ping"));
    // A client that answers pings (Client::recv does) stays well past the timeout.
    let mut live = Client::connect(server.addr, Some("user:u")).await;
    for i in 0..12 {
        live.send(json!({"type": "ping", "id": i})).await;
        assert_eq!(live.recv().await, json!({"type": "pong", "id": i}));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_becomes_unreadable_arrives_as_removed() {
    let rules = r#"
rules_version = '2';
service cloud.firestore {
  match /databases/{database}/documents {
    match /notes/{id} {
      allow read: if resource.data.public == true;
      allow write: if request.auth != null;
    }
  }
}"#;
    let server = start(Options {
        access: rules_access(rules),
        ..Options::default()
    })
    .await;
    let public = |p: bool| json!({"public": p});
    let mut w = Client::connect(server.addr, Some("user:w")).await;
    w.write(
        "n1",
        json!([set("notes/a", public(true)), set("notes/b", public(false))]),
    )
    .await;
    let mut c = Client::connect(server.addr, Some("user:r")).await;
    let snap = c.subscribe("s", q("notes"), None).await;
    assert_eq!(
        paths(&snap["docs"]),
        ["notes/a"],
        "hidden documents are filtered"
    );
    w.write("n2", json!([set("notes/a", public(false))])).await;
    let f = c.recv().await;
    assert_eq!(f["changes"][0]["kind"], "removed");
    assert_eq!(
        f["changes"][0]["doc"]["fields"]["public"], true,
        "no data of the hidden version leaks"
    );
    w.write("n3", json!([set("notes/b", public(true))])).await;
    let f = c.recv().await;
    assert_eq!(
        (
            f["changes"][0]["kind"].as_str(),
            f["changes"][0]["doc"]["path"].as_str()
        ),
        (Some("added"), Some("notes/b"))
    );
    // Anonymous writes are denied by the rules.
    let mut anon = Client::connect(server.addr, None).await;
    let (e, _) = anon
        .write("n4", json!([set("notes/c", public(true))]))
        .await;
    assert_eq!(e["code"], "permission-denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_with_other_claims_rechecks_live_subscriptions() {
    // Readable only with the session claim `sid == "a"`.
    let rules = r#"
match /notes/{id} {
  allow read: if request.auth.token.sid == "a";
  allow write: if request.auth != null;
}"#;
    let server = start(Options {
        access: rules_access(rules),
        ..Options::default()
    })
    .await;
    let mut w = Client::connect(server.addr, Some("user:w")).await;
    w.write("n1", json!([set("notes/x", json!({"n": 1}))]))
        .await;
    let doc = json!({"doc": "notes/x"});
    let mut c = Client::connect(server.addr, Some("session:u:a")).await;
    let snap = c.subscribe("s", doc, None).await;
    assert_eq!(paths(&snap["docs"]), ["notes/x"]);
    // Same user, other claim: the document is no longer readable.
    let mut kinds = Vec::new();
    for token in ["session:u:b", "session:u:a"] {
        let id = c.id();
        c.send(json!({"type": "auth", "id": id, "token": token}))
            .await;
        assert_eq!(c.recv().await["type"], "auth_ok");
        let f = c.recv().await;
        assert_eq!(
            (f["type"].as_str(), f["sub"].as_str()),
            (Some("changes"), Some("s")),
            "{f}"
        );
        kinds.push(f["changes"][0]["kind"].as_str().map(str::to_string));
    }
    assert_eq!(kinds, [Some("removed".into()), Some("added".into())]);
    // The subscription lives on: the next change arrives.
    w.write("n2", json!([set("notes/x", json!({"n": 2}))]))
        .await;
    let f = c.recv().await;
    assert_eq!(f["changes"][0]["kind"], "modified", "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_rebuild_fails_ends_and_frees_its_name() {
    // Readable with any session claim; a new claim makes the gateway
    // rebuild the subscription, and the store fails the rebuild's read.
    let rules = r#"
match /notes/{id} {
  allow read: if request.auth.token.sid != null;
  allow write: if request.auth != null;
}"#;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = faulty_engine(dir.path());
    let server = start_in(
        dir,
        Options {
            access: rules_access(rules),
            engine: Some(Arc::clone(&engine)),
            ..Options::default()
        },
    )
    .await;
    let mut w = Client::connect(server.addr, Some("user:w")).await;
    w.write("n1", json!([set("notes/x", json!({"n": 1}))]))
        .await;
    let doc = json!({"doc": "notes/x"});
    let mut c = Client::connect(server.addr, Some("session:u:a")).await;
    let snap = c.subscribe("s", doc.clone(), None).await;
    assert_eq!(paths(&snap["docs"]), ["notes/x"]);
    engine.fail_reads(true);
    let id = c.id();
    c.send(json!({"type": "auth", "id": id, "token": "session:u:b"}))
        .await;
    assert_eq!(c.recv().await["type"], "auth_ok");
    let ended = c.recv().await;
    assert_eq!(
        (
            ended["type"].as_str(),
            ended["sub"].as_str(),
            ended.get("id").is_none()
        ),
        (Some("error"), Some("s"), true),
        "{ended}"
    );
    engine.fail_reads(false);
    // Ended: a change to the document reaches no one, and the name is free.
    w.write("n2", json!([set("notes/x", json!({"n": 2}))]))
        .await;
    let again = c.subscribe("s", doc, None).await;
    assert_eq!(
        (again["type"].as_str(), again["sub"].as_str()),
        (Some("snapshot"), Some("s")),
        "the name is free again and no frame of the ended subscription came first: {again}"
    );
    assert_eq!(again["docs"][0]["fields"]["n"], 2);
}

/// A gateway over a store whose engine fails reads or writes on demand.
async fn start_faulty(config: GatewayConfig) -> (Server, Arc<hearth_store::FaultyEngine>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = faulty_engine(dir.path());
    let server = start_in(
        dir,
        Options {
            config,
            engine: Some(Arc::clone(&engine)),
            ..Options::default()
        },
    )
    .await;
    (server, engine)
}

/// Asserts that `f` is the `internal` error answering request `id`, with no
/// `sub` (a failed write has no subscription).
fn assert_internal_error_for(f: &serde_json::Value, id: &serde_json::Value) {
    assert_eq!(
        (
            f["type"].as_str(),
            f["code"].as_str(),
            &f["id"],
            f.get("sub")
        ),
        (Some("error"), Some("internal"), id, None),
        "{f}"
    );
}

fn count_of(server: &Server, path: &str) -> Option<HValue> {
    server
        .store
        .get(&DocPath::parse(path).expect("path"))
        .expect("get")
        .and_then(|d| d.fields.get("count").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_write_whose_commit_fails_is_an_error_and_its_retry_applies_once() {
    // Admin writes commit directly, user writes through a rules-checked
    // store transaction: both paths.
    for token in ["user:u", "admin"] {
        let (server, engine) = start_faulty(GatewayConfig {
            max_inflight_writes: 2,
            ..GatewayConfig::default()
        })
        .await;
        let mut c = Client::connect(server.addr, Some(token)).await;
        let snap = c.subscribe("a", json!({"doc": "w/a"}), None).await;
        assert_eq!(snap["docs"], json!([]), "{snap}");
        let writes = json!([{"op": "merge", "path": "w/a",
            "transforms": [{"field": "count", "transform": "increment", "value": 1}]}]);
        engine.fail_writes(true);
        // Twice the in-flight limit, one after the other: a failed commit
        // must free its slot, or the third would be `resource-exhausted`.
        // The same mutation id each time: a failed commit is not recorded,
        // so each retry is evaluated (and fails) again.
        for _ in 0..4 {
            let id = json!(c.id() + 1);
            let (e, other) = c.write("m-1", writes.clone()).await;
            assert_internal_error_for(&e, &id);
            assert!(other.is_empty(), "{token}: {other:?}");
        }
        // As many as the limit at once: both answered, neither refused.
        let ids = [c.id(), c.id()];
        for id in ids {
            c.send(json!({"type": "write", "id": id, "mutation_id": format!("p-{id}"), "writes": writes}))
                .await;
        }
        for _ in ids {
            let e = c.recv().await;
            assert!(ids.iter().any(|&id| e["id"] == json!(id)), "{e}");
            assert_internal_error_for(&e, &e["id"]);
        }
        // The session is open and nothing else was sent.
        assert_eq!(c.until_pong().await, Vec::<serde_json::Value>::new());
        assert_eq!(count_of(&server, "w/a"), None, "{token}: nothing applied");

        engine.fail_writes(false);
        let (ok, early) = c.write("m-1", writes.clone()).await;
        assert_eq!(
            (ok["type"].as_str(), ok["duplicate"].as_bool()),
            (Some("write_ok"), Some(false)),
            "{token}: the retry is applied, not answered from a record: {ok}"
        );
        assert!(early.is_empty(), "write_ok comes first: {early:?}");
        let changed = c.recv().await;
        assert_eq!(
            (
                changed["sub"].as_str(),
                &changed["changes"][0]["doc"]["fields"]["count"]
            ),
            (Some("a"), &json!(1)),
            "{changed}"
        );
        // Applied once: another retry is the duplicate, with the same result.
        let (again, other) = c.write("m-1", writes.clone()).await;
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["result"], ok["result"]);
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(c.until_pong().await, Vec::<serde_json::Value>::new());
        assert_eq!(count_of(&server, "w/a"), Some(HValue::from(1)), "{token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_write_whose_flush_fails_is_never_acknowledged_not_even_on_retry() {
    // The commit is applied (its mutation record readable) but its fsync
    // failed: neither the write nor a retry of it may get `write_ok`.
    // Admin writes commit directly, user writes through a rules-checked
    // store transaction: both paths.
    for token in ["user:u", "admin"] {
        let (server, engine) = start_faulty(GatewayConfig::default()).await;
        let mut c = Client::connect(server.addr, Some(token)).await;
        let writes = json!([set("w/a", json!({"n": 1}))]);
        engine.fail_flushes(true);
        let id = json!(c.id() + 1);
        let (e, other) = c.write("m-1", writes.clone()).await;
        assert_internal_error_for(&e, &id);
        assert!(other.is_empty(), "{token}: {other:?}");
        assert!(
            server
                .store
                .get(&DocPath::parse("w/a").expect("path"))
                .expect("get")
                .is_some(),
            "{token}: applied, only its durability is unknown"
        );
        // A healthy disk again proves nothing about the lost flush.
        engine.fail_flushes(false);
        for mutation_id in ["m-1", "m-1", "m-2"] {
            let id = json!(c.id() + 1);
            let (e, _) = c.write(mutation_id, writes.clone()).await;
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str(), &e["id"]),
                (Some("error"), Some("unavailable"), &id),
                "{token}: {mutation_id}: {e}"
            );
            let message = e["message"].as_str().unwrap_or_default();
            assert!(message.contains("restart"), "{token}: {message}");
        }
        assert!(server.store.storage_failure().is_some(), "{token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_transaction_whose_commit_fails_is_an_error_and_its_retry_applies_once() {
    let (server, engine) = start_faulty(GatewayConfig {
        max_inflight_writes: 1,
        ..GatewayConfig::default()
    })
    .await;
    let seq = commit(&server, vec![wset("t/a", 1)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let reads = json!([{"path": "t/a", "version": seq}, {"path": "t/none", "version": null}]);
    let writes = json!([{"op": "merge", "path": "t/counter",
        "transforms": [{"field": "count", "transform": "increment", "value": 1}]}]);
    engine.fail_writes(true);
    for _ in 0..3 {
        let id = json!(c.id() + 1);
        let (e, other) = c.transaction("tx-1", reads.clone(), writes.clone()).await;
        assert_internal_error_for(&e, &id);
        assert!(other.is_empty(), "{other:?}");
    }
    assert_eq!(c.until_pong().await, Vec::<serde_json::Value>::new());
    engine.fail_writes(false);
    let (ok, _) = c.transaction("tx-1", reads.clone(), writes.clone()).await;
    assert_eq!(
        (ok["type"].as_str(), ok["duplicate"].as_bool()),
        (Some("write_ok"), Some(false)),
        "{ok}"
    );
    let (again, _) = c.transaction("tx-1", reads, writes).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["result"], ok["result"]);
    assert_eq!(count_of(&server, "t/counter"), Some(HValue::from(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_window_whose_reread_fails_ends_only_that_subscription() {
    let (server, engine) = start_faulty(GatewayConfig::default()).await;
    commit(
        &server,
        (1..=5).map(|i| wset(&format!("s/d{i}"), i * 10)).collect(),
    )
    .await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let top = json!({"query": {"collection": "s", "order_by": [{"field": "n", "direction": "desc"}], "limit": 2}});
    let snap = c.subscribe("top", top.clone(), None).await;
    assert_eq!(paths(&snap["docs"]), ["s/d5", "s/d4"]);
    let snap = c.subscribe("other", q("o"), None).await;
    assert_eq!(snap["docs"], json!([]));
    // Once the fan-out delivers live, a commit reaches it straight from
    // the committer, after the on-durable hook below.
    commit(&server, vec![wset("o/x", 1)]).await;
    assert_eq!(c.recv().await["sub"], "other");

    // d5 leaves the window: the engine must re-read it to let d3 in, and
    // reads fail from the moment the commit is durable.
    let failing = Arc::clone(&engine);
    server
        .store
        .commit_with(
            vec![wset("s/d5", 1), wset("o/x", 2)],
            Box::new(move |_| failing.fail_reads(true)),
        )
        .await
        .expect("commit");
    let mut frames = [c.recv().await, c.recv().await];
    frames.sort_by_key(|f| f["sub"].as_str().map(str::to_string));
    let (other, ended) = (&frames[0], &frames[1]);
    assert_eq!(
        (
            ended["type"].as_str(),
            ended["sub"].as_str(),
            ended["code"].as_str(),
            ended.get("id")
        ),
        (Some("error"), Some("top"), Some("internal"), None),
        "{ended}"
    );
    // The other subscription got the same commit.
    assert_eq!(
        (
            other["type"].as_str(),
            other["sub"].as_str(),
            &other["changes"][0]["doc"]["fields"]["n"]
        ),
        (Some("changes"), Some("other"), &json!(2)),
        "{other}"
    );
    engine.fail_reads(false);

    // Ended: a commit that would move the window sends nothing for "top";
    // the other subscription keeps going. Frames of one connection are
    // queued in order, so anything for "top" from the first commit would
    // arrive before "other"'s frame of the second.
    commit(&server, vec![wset("s/d4", 0), wset("o/y", 3)]).await;
    commit(&server, vec![wset("o/z", 4)]).await;
    let mut seen = Vec::new();
    loop {
        let f = c.recv().await;
        assert_eq!(f["sub"], "other", "nothing for the ended subscription: {f}");
        let done = f["changes"][0]["doc"]["path"] == "o/z";
        seen.push(f);
        if done {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Disposing of the ended subscription needs no special case: its
    // unsubscribe is answered `unsubscribed` (PROTOCOL.md §3).
    c.send(json!({"type": "unsubscribe", "id": 900, "sub": "top"}))
        .await;
    let gone = c.recv().await;
    assert_eq!(
        (
            gone["type"].as_str(),
            gone["id"].as_u64(),
            gone["sub"].as_str()
        ),
        (Some("unsubscribed"), Some(900), Some("top")),
        "{gone}"
    );

    // The name is free, and the new subscription sees the current window.
    let again = c.subscribe("top", top, None).await;
    assert_eq!(
        (again["type"].as_str(), again["sub"].as_str()),
        (Some("snapshot"), Some("top")),
        "{again}"
    );
    assert_eq!(paths(&again["docs"]), ["s/d3", "s/d2"]);
    let mut view = vec![];
    apply(&mut view, &again);
    // And it keeps its window again.
    commit(&server, vec![wset("s/d3", 5)]).await;
    let f = c.recv().await;
    assert_eq!(f["sub"], "top", "{f}");
    apply(&mut view, &f);
    assert_eq!(view_paths(&view), ["s/d2", "s/d1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_whose_first_read_fails_is_refused_and_registers_nothing() {
    let (server, engine) = start_faulty(GatewayConfig {
        max_subscriptions: 2,
        ..GatewayConfig::default()
    })
    .await;
    commit(&server, vec![wset("c/a", 1)]).await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let keep = c.subscribe("keep", q("c"), None).await;
    assert_eq!(paths(&keep["docs"]), ["c/a"]);
    let ordered = json!({"query": {"collection": "c", "order_by": [{"field": "n", "direction": "asc"}], "limit": 5}});
    engine.fail_reads(true);
    // More failures than free slots: a refused subscribe holds none.
    for (sub, target) in [
        ("q", ordered.clone()),
        ("q", ordered.clone()),
        ("d", json!({"doc": "c/a"})),
        ("u", q("c")),
    ] {
        let id = json!(c.id() + 1);
        let e = c.subscribe(sub, target, None).await;
        assert_eq!(
            (
                e["type"].as_str(),
                e["code"].as_str(),
                &e["id"],
                e["sub"].as_str()
            ),
            (Some("error"), Some("internal"), &id, Some(sub)),
            "{e}"
        );
    }
    assert_eq!(c.until_pong().await, Vec::<serde_json::Value>::new());
    // Not registered: unsubscribe does not know them.
    for sub in ["u", "d", "q"] {
        let id = c.id();
        c.send(json!({"type": "unsubscribe", "id": id, "sub": sub}))
            .await;
        let e = c.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64(), e["sub"].as_str()),
            (Some("not-found"), Some(id), Some(sub)),
            "{e}"
        );
    }
    engine.fail_reads(false);
    let snap = c.subscribe("q", ordered, None).await;
    assert_eq!(
        (snap["type"].as_str(), snap["sub"].as_str()),
        (Some("snapshot"), Some("q")),
        "{snap}"
    );
    assert_eq!(paths(&snap["docs"]), ["c/a"]);
    // Both live subscriptions get the next change, once each.
    commit(&server, vec![wset("c/b", 2)]).await;
    let mut subs = vec![c.recv().await, c.recv().await]
        .into_iter()
        .map(|f| {
            assert_eq!(f["changes"][0]["doc"]["path"], "c/b", "{f}");
            f["sub"].as_str().unwrap_or("").to_string()
        })
        .collect::<Vec<_>>();
    subs.sort();
    assert_eq!(subs, ["keep", "q"]);
    assert_eq!(c.until_pong().await, Vec::<serde_json::Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_ok_precedes_the_changes_that_carry_the_commit_on_the_same_socket() {
    // Latency compensation depends on it: a client that saw its own
    // increment in a `changes` frame before `write_ok` would count it twice.
    for token in ["admin", "user:w"] {
        let server = start(Options::default()).await;
        let mut c = Client::connect(server.addr, Some(token)).await;
        let snap = c.subscribe("d", json!({"doc": "counters/c"}), None).await;
        assert_eq!(snap["type"], "snapshot");
        let mut order = Vec::new();
        for i in 0..100 {
            let id = c.id();
            c.send(
                json!({"type": "write", "id": id, "mutation_id": format!("m{i}"),
                "writes": [{"op": "merge", "path": "counters/c",
                    "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]}),
            )
            .await;
            // Both frames of this write, in the order they arrive.
            let (mut ok_at, mut change_seq) = (None, None);
            let mut k = 0;
            while ok_at.is_none() || change_seq.is_none() {
                let f = c.recv().await;
                match f["type"].as_str() {
                    Some("write_ok") => {
                        assert_eq!(f["id"], json!(id), "{f}");
                        ok_at = Some((k, f["result"]["seq"].as_u64().expect("seq")));
                    }
                    Some("changes") => {
                        let token = f["resume"].as_str().expect("resume");
                        change_seq = Some((k, token[1..].parse::<u64>().expect("p<seq>")));
                    }
                    _ => panic!("unexpected {f}"),
                }
                k += 1;
            }
            let ((ok_k, seq), (change_k, change)) = (ok_at.unwrap(), change_seq.unwrap());
            assert_eq!(seq, change, "one commit per write");
            order.push(ok_k < change_k);
        }
        assert!(
            order.iter().all(|first| *first),
            "{token}: write_ok came after its changes in {} of 100 writes",
            order.iter().filter(|first| !**first).count()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_delay_others_and_stays_bounded() {
    let config = GatewayConfig {
        max_pending_events: 16,
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    let target = json!({"query": {"collection": "feed"}});
    // The stalled client subscribes, then never reads again.
    let mut stalled = Client::connect(server.addr, Some("user:slow")).await;
    stalled.subscribe("s", target.clone(), None).await;
    let mut others = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(server.addr, Some(&format!("user:o{i}"))).await;
        c.subscribe("s", target.clone(), None).await;
        others.push((c, Vec::new()));
    }
    // Large documents fill the stalled socket's kernel buffers quickly.
    let pad = "p".repeat(64 * 1024);
    let total = 300;
    for i in 0..total {
        let mut m = Map::new();
        m.insert("pad".into(), HValue::from(pad.as_str()));
        m.insert("i".into(), HValue::from(i));
        let seq = commit(
            &server,
            vec![Write::set(
                DocPath::parse(&format!("feed/d{i:04}")).expect("path"),
                m,
            )],
        )
        .await;
        // Every other subscriber receives each commit before the next one is written.
        for (c, view) in &mut others {
            let f = c.recv().await;
            assert_eq!(f["resume"], format!("p{seq}"));
            apply(view, &f);
        }
        let stats = server.gateway.stats();
        assert!(
            stats.max_queued_frames <= 16 + 2,
            "stalled queue grew to {} frames",
            stats.max_queued_frames
        );
        assert!(
            stats.max_queued_bytes <= (16 + 2) * (pad.len() + 1024),
            "stalled queue holds {} bytes",
            stats.max_queued_bytes
        );
    }
    for (_, view) in &others {
        assert_eq!(view.len(), total as usize);
    }
    let stats = server.gateway.stats();
    assert!(
        stats.coalesced > 0,
        "the stalled subscription was coalesced: {stats:?}"
    );
    assert_eq!(
        stats.connections, 4,
        "the stalled client is still connected (coalesced, not dropped)"
    );
    // When the stalled client finally reads, it converges to the full view.
    let mut view = Vec::new();
    let snap_frames_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while view.len() < total as usize {
        assert!(
            tokio::time::Instant::now() < snap_frames_deadline,
            "stalled client never converged"
        );
        let f = stalled.recv().await;
        apply(&mut view, &f);
    }
    assert_eq!(view.len(), total as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_requests_without_reading_is_closed_with_4008() {
    let config = GatewayConfig {
        max_queued_bytes: 64 * 1024,
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let mut fast = Client::connect(server.addr, Some("user:f")).await;
    // Each ping is answered by a pong the client never reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    while server.gateway.stats().slow_consumer_closes == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed: {:?}",
            server.gateway.stats()
        );
        for _ in 0..1000 {
            i += 1;
            let _ = futures::SinkExt::send(
                &mut c.ws,
                tokio_tungstenite::tungstenite::Message::text(
                    json!({"type": "ping", "id": i, "pad": "z".repeat(200)}).to_string(),
                ),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.gateway.stats().slow_consumer_closes, 1);
    fast.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(fast.recv().await["type"], "pong");
}
