//! `ClientConfig::persistence` against a real `hearth serve`: writes made
//! while the server is unreachable survive the client being shut down, and
//! the next client started on the same directory sends them, each applied
//! once, and hands their answers to the application; a second client
//! cannot open a directory in use. The client check
//! `client-21-restart-with-pending-writes` covers a client process killed
//! with `SIGKILL` while a write is in doubt.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_client::{Backoff, Client, ClientConfig, ClientError};
use hearth_protocol::{DocPath, FieldPath, FieldTransform, Map, Transform, Value, Write};
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

async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_survive_a_restart_and_are_applied_once() {
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .expect("hearth serve starts");
        let rest = server.client();
        let dir = tempfile::tempdir().unwrap();
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
    assert!(outcome.is_ok(), "the test did not finish in time");
}
