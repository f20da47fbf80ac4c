//! `ClientConfig::persistence` against a real `hearth serve`: writes made
//! while the server is unreachable survive the client being shut down, and
//! the next client started on the same directory sends them, each applied
//! once, and hands their answers to the application; a second client
//! cannot open a directory in use. A view seen online is shown from the
//! offline read cache after a restart with no server, and resumed from its
//! token once the server is back. The client checks
//! `client-21-restart-with-pending-writes` and
//! `client-24-restart-shows-cached-view` cover a client process killed with
//! `SIGKILL`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use hearth_client::{
    Backoff, Client, ClientConfig, ClientError, DocChangeKind, QuerySnapshot, Subscription, Target,
};
use hearth_protocol::{
    CollectionPath, Direction, DocPath, FieldPath, FieldTransform, Map, Query, Transform, Value,
    Write,
};
use hearth_testkit::{free_port, TestServer, TestServerOptions};
use serde_json::json;

fn config(url: &str, token: &str, dir: &std::path::Path) -> ClientConfig {
    ClientConfig::new(url)
        .token(token)
        .client_name("persistence-test")
        .persistence(dir)
        .backoff(Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(40),
            multiplier: 2.0,
        })
}

fn increment(path: &DocPath) -> Write {
    let mut write = Write::merge(path.clone(), BTreeMap::new());
    write.transforms = vec![FieldTransform {
        field: FieldPath::parse("n").unwrap(),
        transform: Transform::Increment {
            value: Value::Integer(1),
        },
    }];
    write
}

/// Runs `body` with a fresh `hearth serve` and an empty persistence
/// directory, within 90 s.
async fn with_server<F, Fut>(body: F)
where
    F: FnOnce(TestServer, tempfile::TempDir) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .expect("hearth serve starts");
        body(server, tempfile::tempdir().unwrap()).await
    })
    .await;
    assert!(outcome.is_ok(), "the test did not finish in time");
}

async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_survive_a_restart_and_are_applied_once() {
    with_server(|server, dir| async move {
        let rest = server.client();
        let counter = DocPath::parse("persisted/counter").unwrap();

        // An application with no server to talk to (nothing listens on
        // this port) writes three times, sees its writes, and quits.
        let offline = format!("ws://127.0.0.1:{}/v1/ws", free_port());
        let first = Client::start(config(&offline, server.admin_key(), dir.path())).unwrap();
        for i in 0..2 {
            let mut data = Map::new();
            data.insert("i".into(), Value::Integer(i));
            drop(first.set(DocPath::parse(&format!("persisted/m{i}")).unwrap(), data));
        }
        drop(first.write(increment(&counter)));
        wait_for(|| first.stats().pending_writes == 3, "3 queued writes").await;

        // One directory, one client.
        match Client::start(config(&offline, server.admin_key(), dir.path())) {
            Err(e @ ClientError::StoreLocked(_)) => {
                assert_eq!(e.code(), hearth_protocol::ErrorCode::FailedPrecondition)
            }
            Err(other) => panic!("expected StoreLocked, got {other}"),
            Ok(_) => panic!("a second client opened a directory in use"),
        }
        first.shutdown().await;
        drop(first);

        // The next start, now with a server: the queue goes out.
        let second = Client::start(config(&server.ws_url(), server.admin_key(), dir.path()))
            .expect("the directory is free again once the first client is gone");
        let restored = second.take_restored_writes();
        assert_eq!(restored.len(), 3, "the queue was restored: {restored:?}");
        assert!(second.take_restored_writes().is_empty(), "handed over once");
        assert_eq!(restored[2].writes, vec![increment(&counter)], "in order");
        for write in restored {
            let result = write.result.await.expect("a restored write is answered ok");
            assert_eq!(result.results.len(), 1, "one document per restored write");
        }
        // The count is updated just after the answers are handed over.
        wait_for(|| second.stats().pending_writes == 0, "no pending writes").await;
        for i in 0..2 {
            let doc = rest.get(&format!("/v1/db/persisted/m{i}")).await;
            assert_eq!(doc.status, 200, "m{i} was lost: {}", doc.text);
            assert_eq!(doc.body["fields"], json!({ "i": i }));
        }
        assert_eq!(
            rest.get("/v1/db/persisted/counter").await.body["fields"],
            json!({"n": 1})
        );
        second.shutdown().await;
        drop(second);

        // Answered writes are gone from the journal: a third start sends
        // nothing, and the counter stays at 1.
        let third = Client::connect(config(&server.ws_url(), server.admin_key(), dir.path()))
            .await
            .unwrap();
        assert_eq!(third.stats().pending_writes, 0);
        assert!(third.take_restored_writes().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            rest.get("/v1/db/persisted/counter").await.body["fields"],
            json!({"n": 1})
        );
        third.shutdown().await;
    })
    .await;
}

async fn next_snapshot(sub: &mut Subscription) -> QuerySnapshot {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a snapshot in time")
        .expect("the subscription is open")
        .expect("a snapshot, not an error")
}

fn contents(snapshot: &QuerySnapshot) -> Vec<(String, Map)> {
    snapshot
        .documents()
        .map(|d| (d.path.as_string(), d.fields.clone()))
        .collect()
}

fn n(value: i64) -> Map {
    let mut fields = Map::new();
    fields.insert("n".into(), Value::Integer(value));
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_seen_online_is_shown_offline_after_a_restart_and_resumed_from_its_token() {
    with_server(|server, dir| async move {
        let rest = server.client();
        let offline = format!("ws://127.0.0.1:{}/v1/ws", free_port());
        let query =
            Query::collection(CollectionPath::parse("cached").unwrap()).order("n", Direction::Asc);
        let reply = rest
            .batch(json!([
                {"op": "set", "path": "cached/a", "data": {"n": 1}},
                {"op": "set", "path": "cached/b", "data": {"n": 2}},
                {"op": "set", "path": "cached/c", "data": {"n": 3}},
            ]))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let seen = vec![
            ("cached/a".to_string(), n(1)),
            ("cached/b".to_string(), n(2)),
            ("cached/c".to_string(), n(3)),
        ];

        // Online: the view arrives from the server, and is saved on the way out.
        let online = Client::connect(config(&server.ws_url(), server.admin_key(), dir.path()))
            .await
            .unwrap();
        let mut sub = online.subscribe_query(query.clone());
        let first = next_snapshot(&mut sub).await;
        assert!(!first.from_cache);
        assert_eq!(contents(&first), seen);
        let b = DocPath::parse("cached/b").unwrap();
        let mut doc_b = online.subscribe_doc(b.clone());
        assert_eq!(
            contents(&next_snapshot(&mut doc_b).await),
            vec![seen[1].clone()]
        );
        drop((sub, doc_b));
        online.shutdown().await;
        drop(online);

        // Started again with no server: the same query shows what was seen, at once.
        let offline_client =
            Client::start(config(&offline, server.admin_key(), dir.path())).unwrap();
        // A read that never waits for the server answers from the cache...
        let read = offline_client
            .get_from_cache(Target::Query(query.clone()))
            .await
            .unwrap()
            .expect("the cached view");
        assert!(read.from_cache);
        assert_eq!(contents(&read), seen);
        // ...and has nothing for a target it never saw.
        let never_seen = Target::Doc(DocPath::parse("cached/zz").unwrap());
        assert_eq!(
            offline_client.get_from_cache(never_seen).await.unwrap(),
            None
        );
        let mut sub = offline_client.subscribe_query(query.clone());
        let cached = next_snapshot(&mut sub).await;
        assert!(cached.from_cache, "flagged as not confirmed by the server");
        assert_eq!(contents(&cached), seen);
        // Another target has nothing cached: nothing is shown for it.
        let mut other = offline_client.subscribe_doc(DocPath::parse("cached/a").unwrap());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), other.next())
                .await
                .is_err(),
            "a document subscription was served another target's cached view"
        );
        drop((sub, other));
        offline_client.shutdown().await;
        drop(offline_client);

        // The collection changes meanwhile; the next start resumes from the
        // cached token and gets just those changes on top of the cached view.
        rest.batch(json!([{"op": "set", "path": "cached/b", "data": {"n": 20}}]))
            .await;
        rest.batch(json!([{"op": "delete", "path": "cached/a"}]))
            .await;
        let back = Client::start(config(&server.ws_url(), server.admin_key(), dir.path())).unwrap();
        let mut sub = back.subscribe_query(query.clone());
        let cached = next_snapshot(&mut sub).await;
        assert!(cached.from_cache);
        assert_eq!(contents(&cached), seen);
        let current = next_snapshot(&mut sub).await;
        assert!(!current.from_cache && !current.reset);
        assert_eq!(
            contents(&current),
            vec![
                ("cached/c".to_string(), n(3)),
                ("cached/b".to_string(), n(20))
            ]
        );
        let mut kinds: Vec<(DocChangeKind, String)> = current
            .changes
            .iter()
            .map(|c| (c.kind, c.doc.path.as_string()))
            .collect();
        kinds.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            kinds,
            vec![
                (DocChangeKind::Removed, "cached/a".to_string()),
                (DocChangeKind::Modified, "cached/b".to_string()),
            ],
            "the changes since the cached view, not the whole view again"
        );

        // A transaction reads the server's document, never the cached one
        // (`b` was cached at n = 2 and is 20 now): a stale read would abort
        // at every attempt.
        let written = back
            .run_transaction(|tx| {
                let b = b.clone();
                async move {
                    let n = match tx.get(&b).await?.and_then(|d| d.fields.get("n").cloned()) {
                        Some(Value::Integer(n)) => n,
                        _ => -1,
                    };
                    let mut fields = BTreeMap::new();
                    fields.insert(FieldPath::parse("n").unwrap(), Value::Integer(n + 1));
                    tx.write(Write::merge(b, fields));
                    Ok(n + 1)
                }
            })
            .await
            .expect("the transaction commits");
        assert_eq!(written, 21);

        // Sign-out: the store can be cleared only once no client uses it.
        assert!(matches!(
            hearth_client::clear_persistence(dir.path()),
            Err(ClientError::StoreLocked(_))
        ));
        drop(sub);
        back.shutdown().await;
        drop(back);
        hearth_client::clear_persistence(dir.path()).unwrap();
        assert!(!dir.path().exists(), "the store is gone");
        let signed_out = Client::start(config(&offline, server.admin_key(), dir.path())).unwrap();
        let mut sub = signed_out.subscribe_query(query);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .is_err(),
            "a cleared store still served a view"
        );
        drop(sub);
        signed_out.shutdown().await;
    })
    .await;
}
