//! `Client::run_transaction` against a real `hearth serve`: read-modify-write
//! transactions from two clients on one counter, while one client's
//! connection keeps dying, add up exactly (every conflict is retried on
//! fresh reads, every commit whose answer was lost is applied once). The
//! client check `client-20-transaction` covers the rest (the frames, and
//! reads that ignore the client's own pending writes).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_client::{Backoff, Client, ClientConfig, ClientError};
use hearth_protocol::{DocPath, FieldPath, Value, Write};
use hearth_testkit::{TestServer, TestServerOptions};
use serde_json::json;

async fn connect(server: &TestServer) -> Client {
    Client::connect(
        ClientConfig::new(&server.ws_url())
            .token(server.admin_key())
            .client_name("transaction-test")
            .backoff(Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(40),
                multiplier: 2.0,
            }),
    )
    .await
    .expect("client connects")
}

/// Reads `n` of `path` in a transaction and writes `n + 1`; returns it.
async fn increment(client: &Client, path: &DocPath) -> Result<i64, ClientError> {
    client
        .run_transaction(|tx| {
            let path = path.clone();
            async move {
                let n = match tx.get(&path).await?.map(|d| d.fields.get("n").cloned()) {
                    Some(Some(Value::Integer(n))) => n,
                    _ => 0,
                };
                let mut fields = BTreeMap::new();
                fields.insert(FieldPath::parse("n").unwrap(), Value::Integer(n + 1));
                tx.write(Write::merge(path, fields));
                Ok(n + 1)
            }
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_add_up_while_a_connection_keeps_dying() {
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .expect("hearth serve starts");
        let (a, b) = (connect(&server).await, connect(&server).await);
        let counter = DocPath::parse("counters/tx").unwrap();
        const EACH: usize = 15;
        let killer = {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    a.debug_disconnect();
                }
            })
        };
        let run = |client: Client, counter: DocPath| async move {
            let mut seen = Vec::new();
            for _ in 0..EACH {
                // Both clients collide often; a transaction may give up after
                // MAX_TRANSACTION_ATTEMPTS conflicts, which is an honest
                // `aborted` and is simply run again here.
                loop {
                    match increment(&client, &counter).await {
                        Ok(n) => break seen.push(n),
                        Err(e) if e.code() == hearth_protocol::ErrorCode::Aborted => continue,
                        Err(e) => panic!("transaction failed: {e}"),
                    }
                }
            }
            seen
        };
        let (ra, rb) = tokio::join!(run(a.clone(), counter.clone()), run(b, counter.clone()));
        killer.await.unwrap();
        let mut all: Vec<i64> = ra.into_iter().chain(rb).collect();
        all.sort_unstable();
        let expected: Vec<i64> = (1..=(2 * EACH) as i64).collect();
        assert_eq!(
            all, expected,
            "every committed attempt saw a distinct value: no lost update"
        );
        let reply = server.client().get("/v1/db/counters/tx").await;
        assert_eq!(reply.body["fields"]["n"], json!(2 * EACH), "{}", reply.text);
        assert!(a.stats().sessions > 1, "the connection was killed");
    })
    .await;
    assert!(outcome.is_ok(), "the test must finish within 90 s");
}
