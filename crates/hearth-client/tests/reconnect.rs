//! The SDK's done-when test (issue 4): the client's connection is killed 100
//! times while a steady stream of writes goes on; at the end the client's
//! view equals the server's query result and no change was lost or
//! delivered twice. A second test checks the pending-write queue: writes
//! made through the client while its connection keeps dying are applied
//! exactly once.
//!
//! Both run against a real `hearth serve` started by hearth-testkit.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use hearth_client::{Backoff, Client, ClientConfig, DocChangeKind, Encoding, QuerySnapshot};
use hearth_protocol::{
    CollectionPath, DocPath, Document, FieldPath, Map, Query, Transform, Value, Write,
};
use hearth_testkit::{TestServer, TestServerOptions};
use serde_json::json;

const KILLS: u64 = 100;

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(40),
        multiplier: 2.0,
    }
}

async fn connect(server: &TestServer) -> Client {
    connect_with(server, Encoding::Json).await
}

async fn connect_with(server: &TestServer, encoding: Encoding) -> Client {
    Client::connect(
        ClientConfig::new(&server.ws_url())
            .token(server.admin_key())
            .client_name("reconnect-test")
            .backoff(fast_backoff())
            .encoding(encoding),
    )
    .await
    .expect("client connects")
}

/// Kills the client's connection `kills` times, each time after it has
/// reconnected and a random 0–40 ms have passed (so some kills land while
/// resubscribing), then returns.
async fn kill_repeatedly(client: Client, kills: u64) {
    for k in 0..kills {
        let want = k + 1;
        while client.stats().sessions < want {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let pause = rand_ms(40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        client.debug_disconnect();
    }
    while client.stats().sessions < kills + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn rand_ms(max: u64) -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % (max + 1)
}

fn key(doc: &Document) -> (String, u64) {
    (doc.path.as_string(), doc.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connection_100_times_during_writes_loses_and_duplicates_nothing() {
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .expect("hearth serve starts");
        let rest = server.client();
        let client = connect(&server).await;
        let collection = "stream";
        let query = Query::collection(CollectionPath::parse(collection).unwrap())
            .order("n", hearth_protocol::Direction::Asc);
        let mut subscription = client.subscribe_query(query);

        // Writer: a steady stream of REST writes (creates, and updates of
        // earlier documents), recording every version the server assigned.
        let writer_rest = rest.clone();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(async move {
            let mut written: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut i: u64 = 0;
            while !*stop_rx.borrow_and_update() {
                let reply = if i % 5 == 4 {
                    let target = format!("{collection}/d{:05}", i - 4);
                    writer_rest
                        .patch(&format!("/v1/db/{target}"), &json!({ "touched": i }))
                        .await
                } else {
                    writer_rest
                        .put(&format!("/v1/db/{collection}/d{i:05}"), &json!({ "n": i }))
                        .await
                };
                assert_eq!(reply.status, 200, "write {i}: {}", reply.text);
                let doc: Document = serde_json::from_value(reply.body).unwrap();
                written
                    .entry(doc.path.as_string())
                    .or_default()
                    .push(doc.version);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written
        });

        // Consumer: every change event the application sees; the newest
        // view is published for the final comparison.
        let (view_tx, mut view_rx) = tokio::sync::watch::channel(Vec::<(String, u64)>::new());
        let consumer = tokio::spawn(async move {
            let mut events: Vec<(DocChangeKind, String, u64)> = Vec::new();
            let mut last: Option<QuerySnapshot> = None;
            while let Some(item) = subscription.next().await {
                let snapshot = item.expect("the subscription never fails");
                for change in &snapshot.changes {
                    events.push((change.kind, change.doc.path.as_string(), change.doc.version));
                }
                view_tx.send_replace(snapshot.documents().map(key).collect());
                last = Some(snapshot);
            }
            (events, last)
        });

        kill_repeatedly(client.clone(), KILLS).await;
        stop_tx.send(true).unwrap();
        let written = writer.await.unwrap();
        assert!(client.stats().sessions > KILLS, "{:?}", client.stats());

        // The server's answer to the same query, after the last write.
        let reply = rest
            .query(&json!({"collection": collection, "order_by": [{"field": "n"}]}))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let expected: Vec<Document> =
            serde_json::from_value(reply.body["documents"].clone()).unwrap();

        // Wait until the client's view has caught up with that state, then
        // end the stream by shutting the client down.
        let expected_keys: Vec<(String, u64)> = expected.iter().map(key).collect();
        let caught_up = tokio::time::timeout(
            Duration::from_secs(15),
            view_rx.wait_for(|view| *view == expected_keys),
        )
        .await;
        assert!(
            caught_up.is_ok(),
            "the view never reached the server's result"
        );
        client.shutdown().await;
        drop(client);
        let (events, last) = consumer.await.unwrap();
        let last = last.expect("at least one snapshot");
        let view_keys: Vec<(String, u64)> = last.documents().map(key).collect();
        assert_eq!(view_keys.len(), expected_keys.len(), "view size");
        assert_eq!(
            view_keys, expected_keys,
            "the client's view equals the server's result"
        );
        for (mine, theirs) in last.documents().zip(&expected) {
            assert_eq!(mine, theirs);
        }
        assert!(!last.has_pending_writes);

        // Zero lost, zero duplicated: per document, the versions the events
        // carried are strictly increasing (no duplicate, no going back), are
        // versions the server really wrote, end at the final version, and the
        // document was added exactly once.
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut adds: BTreeMap<String, u32> = BTreeMap::new();
        for (kind, path, version) in &events {
            assert_ne!(
                *kind,
                DocChangeKind::Removed,
                "nothing is ever removed: {path}"
            );
            if *kind == DocChangeKind::Added {
                *adds.entry(path.clone()).or_default() += 1;
            }
            seen.entry(path.clone()).or_default().push(*version);
        }
        let mut coalesced = 0usize;
        for (path, versions) in &written {
            let got = seen
                .get(path)
                .unwrap_or_else(|| panic!("lost every change of {path}"));
            assert_eq!(adds.get(path), Some(&1), "{path} added exactly once");
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{path}: duplicated or reordered versions {got:?}"
            );
            let real: BTreeSet<u64> = versions.iter().copied().collect();
            assert!(
                got.iter().all(|v| real.contains(v)),
                "{path}: phantom version in {got:?}"
            );
            assert_eq!(got.last(), versions.last(), "{path}: final version");
            coalesced += versions.len() - got.len();
        }
        let extra: Vec<&String> = seen.keys().filter(|p| !written.contains_key(*p)).collect();
        assert!(
            extra.is_empty(),
            "events for documents never written: {extra:?}"
        );
        let total_writes: usize = written.values().map(Vec::len).sum();
        println!(
            "{KILLS} kills, {} sessions, {total_writes} writes to {} documents, {} change events; \
             {coalesced} versions folded into a later one by a resume frame; 0 lost, 0 duplicated",
            KILLS + 1,
            written.len(),
            events.len()
        );
    })
    .await;
    assert!(outcome.is_ok(), "the test must finish within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_while_the_connection_keeps_dying_apply_exactly_once() {
    queued_writes_apply_exactly_once(Encoding::Json).await;
}

/// The same over `hearth.v1.msgpack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_msgpack_queued_writes_apply_exactly_once() {
    queued_writes_apply_exactly_once(Encoding::MsgPack).await;
}

async fn queued_writes_apply_exactly_once(encoding: Encoding) {
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .expect("hearth serve starts");
        let client = connect_with(&server, encoding).await;
        let counter = DocPath::parse("counters/c").unwrap();
        let increments = 200u64;
        let killer = tokio::spawn(kill_repeatedly(client.clone(), 30));
        let mut acks = Vec::new();
        for i in 0..increments {
            let write = Write::merge(counter.clone(), BTreeMap::new()).with_transform(
                FieldPath::parse("n").unwrap(),
                Transform::Increment {
                    value: Value::Integer(1),
                },
            );
            acks.push(client.write(write));
            let mut data = Map::new();
            data.insert("i".into(), Value::Integer(i as i64));
            acks.push(client.set(DocPath::parse(&format!("log/e{i:04}")).unwrap(), data));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let mut seqs = BTreeSet::new();
        for ack in acks {
            let result = ack.await.expect("every write is acknowledged");
            assert!(
                seqs.insert(result.seq),
                "two writes share commit {}",
                result.seq
            );
        }
        killer.await.unwrap();
        let reply = server.client().get("/v1/db/counters/c").await;
        assert_eq!(
            reply.body["fields"]["n"],
            json!(increments),
            "{}",
            reply.text
        );
        assert_eq!(client.stats().pending_writes, 0);
    })
    .await;
    assert!(outcome.is_ok(), "the test must finish within 60 s");
}
