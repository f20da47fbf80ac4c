//! The fan-out engine at work: selectivity of the subscription index, shared
//! frame encoding, the write rotation, connection limits, and resume under
//! churn.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hearth_gateway::GatewayConfig;
use hearth_protocol::{DocPath, Map, Value as HValue, Write};
use serde_json::{json, Value};

fn room_doc(path: &str, room: i64, n: i64) -> Write {
    let mut m = Map::new();
    m.insert("room".into(), HValue::from(room));
    m.insert("n".into(), HValue::from(n));
    Write::set(DocPath::parse(path).expect("path"), m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equality_subscriptions_are_found_by_lookup_not_by_scan() {
    let server = start(Options::default()).await;
    let mut clients = Vec::new();
    for k in 0..50 {
        let mut c = Client::connect(server.addr, Some(&format!("user:u{k}"))).await;
        let target = json!({"query": {"collection": "msgs", "where": {"field": "room", "op": "==", "value": k}}});
        assert_eq!(c.subscribe("s", target, None).await["type"], "snapshot");
        clients.push(c);
    }
    let before = server.gateway.stats().candidates_evaluated;
    let seq = server
        .store
        .commit(vec![room_doc("msgs/m1", 7, 1)])
        .await
        .expect("commit")
        .seq;
    let f = clients[7].recv().await;
    assert_eq!(f["resume"], format!("p{seq}"));
    assert_eq!(f["changes"][0]["kind"], "added");
    // Moving the message to room 9: both rooms' subscriptions are candidates.
    server
        .store
        .commit(vec![room_doc("msgs/m1", 9, 1)])
        .await
        .expect("commit");
    assert_eq!(clients[7].recv().await["changes"][0]["kind"], "removed");
    assert_eq!(clients[9].recv().await["changes"][0]["kind"], "added");
    let evaluated = server.gateway.stats().candidates_evaluated - before;
    assert_eq!(
        evaluated, 3,
        "1 candidate for the first commit, 2 for the move; not 50 per commit"
    );
    // A float value equal to an integer key finds the same subscriptions (the value order says 9 == 9.0).
    let mut m = Map::new();
    m.insert("room".into(), HValue::Double(9.0));
    server
        .store
        .commit(vec![Write::set(DocPath::parse("msgs/m2").expect("p"), m)])
        .await
        .expect("commit");
    assert_eq!(
        clients[9].recv().await["changes"][0]["doc"]["path"],
        "msgs/m2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_frames_are_encoded_once_for_all_subscribers() {
    let server = start(Options::default()).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = Client::connect(server.addr, Some(&format!("user:u{i}"))).await;
        c.subscribe("feed", json!({"query": {"collection": "news"}}), None)
            .await;
        clients.push(c);
    }
    let before = server.gateway.stats();
    server
        .store
        .commit(vec![room_doc("news/a", 1, 1)])
        .await
        .expect("commit");
    let mut frames = Vec::new();
    for c in &mut clients {
        frames.push(c.recv().await);
    }
    assert!(frames.windows(2).all(|w| w[0] == w[1]));
    let after = server.gateway.stats();
    assert_eq!(after.frames_encoded - before.frames_encoded, 1);
    assert_eq!(after.frames_shared - before.frames_shared, 9);
}

/// Subscribers of one query for one principal share one view (moved once
/// per commit); another principal's subscription of the same query is its
/// own group and sees only what its rules let it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_view_is_shared_only_by_the_same_principal() {
    let rules = r#"
rules_version = '2';
service cloud.firestore {
  match /databases/{database}/documents {
    match /notes/{id} {
      allow read: if resource.data.owner == request.auth.uid;
      allow write: if request.auth != null;
    }
  }
}"#;
    let access =
        hearth_rules::AccessControl::new(hearth_rules::Ruleset::parse(rules).expect("rules parse"));
    let server = start(Options {
        access,
        ..Options::default()
    })
    .await;
    let target = json!({"query": {"collection": "notes"}});
    let mut a1 = Client::connect(server.addr, Some("user:a")).await;
    let mut a2 = Client::connect(server.addr, Some("user:a")).await;
    let mut b = Client::connect(server.addr, Some("user:b")).await;
    for c in [&mut a1, &mut a2, &mut b] {
        assert_eq!(
            c.subscribe("s", target.clone(), None).await["docs"],
            json!([])
        );
    }
    let note = |owner: &str, n: i64| {
        let mut m = Map::new();
        m.insert("owner".into(), HValue::from(owner));
        m.insert("n".into(), HValue::from(n));
        m
    };
    let mut views = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..5 {
        let before = server.gateway.stats();
        server
            .store
            .commit(vec![
                Write::set(
                    DocPath::parse(&format!("notes/a{i}")).expect("p"),
                    note("a", i),
                ),
                Write::set(
                    DocPath::parse(&format!("notes/b{i}")).expect("p"),
                    note("b", i),
                ),
            ])
            .await
            .expect("commit");
        let fa1 = a1.recv().await;
        let fa2 = a2.recv().await;
        let fb = b.recv().await;
        assert_eq!(fa1, fa2, "one principal, one frame");
        apply(&mut views[0], &fa1);
        apply(&mut views[1], &fa2);
        apply(&mut views[2], &fb);
        let after = server.gateway.stats();
        assert_eq!(
            (
                after.frames_encoded - before.frames_encoded,
                after.frames_shared - before.frames_shared
            ),
            (2, 1),
            "a's group encodes once and shares once; b's group encodes its own"
        );
        assert_eq!(
            (
                after.candidates_evaluated - before.candidates_evaluated,
                after.views_moved - before.views_moved
            ),
            (3, 2),
            "three subscriptions, two share groups: two view updates"
        );
    }
    let expect = |who: &str| -> Vec<String> { (0..5).map(|i| format!("notes/{who}{i}")).collect() };
    assert_eq!(view_paths(&views[0]), expect("a"));
    assert_eq!(view_paths(&views[1]), expect("a"));
    assert_eq!(view_paths(&views[2]), expect("b"), "b never sees a's notes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_with_4029() {
    let config = GatewayConfig {
        max_connections: 2,
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    let _a = Client::connect(server.addr, None).await;
    let _b = Client::connect(server.addr, None).await;
    let mut c = Client::raw(connect_raw(server.addr).await);
    assert_eq!(c.closed().await.0, 4029);
}

/// Applies a frame, checking that it is consistent with the view it is
/// applied to: removed/modified documents are where `old_index` says, added
/// ones are not already there (no duplicate delivery).
fn apply_strict(view: &mut Vec<Value>, frame: &Value) {
    if frame["type"] == "changes" {
        for c in frame["changes"].as_array().expect("changes") {
            let path = &c["doc"]["path"];
            match c["old_index"].as_u64() {
                Some(i) => assert_eq!(
                    &view[i as usize]["path"], path,
                    "old_index points at the document: {frame}"
                ),
                None => assert!(
                    view.iter().all(|d| &d["path"] != path),
                    "added twice: {path} in {frame}"
                ),
            }
            if c["kind"] == "modified" {
                let i = c["old_index"].as_u64().expect("index") as usize;
                assert!(
                    view[i]["version"].as_u64() < c["doc"]["version"].as_u64(),
                    "stale or repeated modification"
                );
            }
        }
    }
    apply(view, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_100_disconnects_loses_and_repeats_nothing() {
    let server = start(Options::default()).await;
    let target = json!({"query": {"collection": "churn", "where": {"field": "n", "op": ">=", "value": 0},
                                  "order_by": [{"field": "n", "direction": "desc"}]}});
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = server.store.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = (i * 7919) % 40;
                let path = format!("churn/d{k}");
                let w = match i % 5 {
                    0 => Write::delete(DocPath::parse(&path).expect("p")),
                    // Negative n leaves the query without being deleted.
                    1 => room_doc(&path, 0, -i),
                    _ => room_doc(&path, 0, i),
                };
                let other = room_doc(&format!("churn/e{}", i % 10), 0, i);
                store.commit(vec![w, other]).await.expect("commit");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut view: Vec<Value> = Vec::new();
    let mut token: Option<String> = None;
    for round in 0..100u64 {
        let mut c = Client::connect(server.addr, Some("user:u")).await;
        let first = c.subscribe("s", target.clone(), token.as_deref()).await;
        assert!(
            first["type"] == "snapshot" || first["type"] == "changes",
            "{first}"
        );
        if token.is_some() {
            assert_eq!(
                first["type"], "changes",
                "a resume within retention is a diff"
            );
        }
        apply_strict(&mut view, &first);
        token = Some(first["resume"].as_str().expect("token").to_string());
        for _ in 0..(round % 4) {
            let f = c.recv().await;
            apply_strict(&mut view, &f);
            token = Some(f["resume"].as_str().expect("token").to_string());
        }
        drop(c);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let mut c = Client::connect(server.addr, Some("user:u")).await;
    let f = c.subscribe("s", target.clone(), token.as_deref()).await;
    apply_strict(&mut view, &f);
    let query = serde_json::from_value(target["query"].clone()).expect("query");
    let expected = server.store.query(&query).expect("query runs");
    assert_eq!(f["resume"], format!("p{}", expected.read_seq));
    let expected: Vec<Value> = expected
        .documents
        .iter()
        .map(|d| serde_json::to_value(d).expect("doc"))
        .collect();
    assert_eq!(
        view, expected,
        "the client's view equals the query re-run at its position"
    );
}

/// More subscribers than one slice of the engine's write rotation (256), and
/// commits that arrive back to back while a rotation is in progress: every
/// subscriber still gets every change, in commit order, and ends with the
/// whole collection (nothing left queued, nothing delivered twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_arriving_mid_rotation_reach_every_subscriber_in_order() {
    const SUBSCRIBERS: usize = 400;
    const COMMITS: i64 = 30;
    let server = start(Options::default()).await;
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut c = Client::connect(server.addr, None).await;
        let snap = c
            .subscribe("feed", json!({"query": {"collection": "feed"}}), None)
            .await;
        assert_eq!(snap["type"], "snapshot");
        clients.push(c);
    }
    let mut last = 0;
    for n in 0..COMMITS {
        last = server
            .store
            .commit(vec![room_doc(&format!("feed/m{n:02}"), 1, n)])
            .await
            .expect("commit")
            .seq;
    }
    let expected: Vec<String> = (0..COMMITS).map(|n| format!("feed/m{n:02}")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut view = Vec::new();
        let mut seen = 0u64;
        while seen < last {
            let f = c.recv().await;
            assert_eq!(f["type"], "changes", "subscriber {i}: {f}");
            let seq: u64 = f["resume"]
                .as_str()
                .and_then(|r| r.strip_prefix('p'))
                .and_then(|r| r.parse().ok())
                .expect("resume token p<seq>");
            assert!(seq > seen, "subscriber {i}: position {seq} after {seen}");
            seen = seq;
            apply(&mut view, &f);
        }
        assert_eq!(view_paths(&view), expected, "subscriber {i}");
    }
}
