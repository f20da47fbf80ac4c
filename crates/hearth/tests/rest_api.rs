//! End-to-end tests of the REST API against a real `hearth serve` process.

#![allow(clippy::unwrap_used)]

use hearth_testkit::{TestServer, TestServerOptions};
use serde_json::{json, Value};

async fn server() -> TestServer {
    TestServer::start(TestServerOptions::default().binary(env!("CARGO_BIN_EXE_hearth")))
        .await
        .expect("server starts")
}

#[tokio::test]
async fn document_crud_round_trip_with_preconditions_and_transforms() {
    let server = server().await;
    let c = server.client();

    let put = c
        .put(
            "/v1/db/rooms/r1",
            &json!({"name": "Lobby", "n": 1, "f": 1.0}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["path"], "rooms/r1");
    assert_eq!(put.body["fields"]["n"], json!(1));
    let version = put.body["version"].as_u64().unwrap();

    let get = c.get("/v1/db/rooms/r1").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body["fields"]["name"], "Lobby");
    assert!(
        get.text.contains("1.0"),
        "doubles keep their form: {}",
        get.text
    );

    // PATCH with a dotted path and a transform, guarded by the version.
    let patch = c
        .patch(
            &format!("/v1/db/rooms/r1?version={version}"),
            &json!({"fields": {"topic.text": "hi"},
                    "transforms": [{"field": "n", "transform": "increment", "value": 2}]}),
        )
        .await;
    assert_eq!(patch.status, 200, "{}", patch.text);
    assert_eq!(patch.body["fields"]["topic"]["text"], "hi");
    assert_eq!(patch.body["fields"]["n"], json!(3));

    // The same version again is stale now.
    let stale = c
        .patch(
            &format!("/v1/db/rooms/r1?version={version}"),
            &json!({"x": 1}),
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), Some("failed-precondition"));

    // Plain-object PATCH; PATCH of a missing document is not-found unless upsert.
    let plain = c.patch("/v1/db/rooms/r1", &json!({"a.b": true})).await;
    assert_eq!(plain.body["fields"]["a"]["b"], json!(true));
    let missing = c.patch("/v1/db/rooms/nope", &json!({"a": 1})).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), Some("not-found"));
    let upsert = c
        .patch(
            "/v1/db/rooms/new",
            &json!({"fields": {"a": 1}, "upsert": true}),
        )
        .await;
    assert_eq!(upsert.status, 200, "{}", upsert.text);

    // exists=false on an existing document.
    let exists = c
        .put("/v1/db/rooms/r1?exists=false", &json!({"x": 1}))
        .await;
    assert_eq!(exists.status, 409);
    assert_eq!(exists.error_code(), Some("already-exists"));

    let del = c.delete("/v1/db/rooms/r1").await;
    assert_eq!(del.status, 200, "{}", del.text);
    assert!(del.body["seq"].as_u64().unwrap() > version);
    assert_eq!(c.get("/v1/db/rooms/r1").await.status, 404);
    let del_missing = c.delete("/v1/db/rooms/r1?exists=true").await;
    assert_eq!(del_missing.status, 404);
}

#[tokio::test]
async fn create_with_generated_id_and_list_with_paging() {
    let server = server().await;
    let c = server.client();
    let mut ids = vec![];
    for i in 0..5 {
        let created = c.post("/v1/db/rooms/r1/messages", &json!({"i": i})).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let path = created.body["path"].as_str().unwrap().to_string();
        let id = path.rsplit('/').next().unwrap().to_string();
        assert_eq!(id.len(), 20);
        assert!(id.chars().all(|ch| ch.is_ascii_alphanumeric()));
        ids.push(id);
    }
    ids.sort();
    let mut seen = vec![];
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(t) => format!("/v1/db/rooms/r1/messages?page_size=2&page_token={t}"),
            None => "/v1/db/rooms/r1/messages?page_size=2".to_string(),
        };
        let page = c.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for d in page.body["documents"].as_array().unwrap() {
            seen.push(
                d["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        match page.body["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn query_aggregate_and_batch() {
    let server = server().await;
    let c = server.client();
    let writes: Vec<Value> = (0..10)
        .map(|i| json!({"op": "set", "path": format!("items/i{i}"), "data": {"n": i, "even": i % 2 == 0}}))
        .collect();
    let batch = c.batch(json!(writes)).await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(batch.body["results"].as_array().unwrap().len(), 10);

    let q = c
        .query(&json!({"collection": "items",
                       "where": {"field": "n", "op": ">=", "value": 5},
                       "order_by": [{"field": "n", "direction": "desc"}], "limit": 3}))
        .await;
    assert_eq!(q.status, 200, "{}", q.text);
    let ns: Vec<i64> = q.body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["fields"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![9, 8, 7]);
    assert!(q.body["read_seq"].as_u64().unwrap() >= 1);

    let agg = c
        .query(&json!({"query": {"collection": "items", "where": {"field": "even", "op": "==", "value": true}},
                       "aggregations": [{"alias": "count", "op": "count"}, {"alias": "total", "op": "sum", "field": "n"}]}))
        .await;
    assert_eq!(agg.status, 200, "{}", agg.text);
    assert_eq!(agg.body["values"]["count"], json!(5));
    assert_eq!(agg.body["values"]["total"], json!(20));

    // A batch is atomic: one failing write leaves nothing behind.
    let failing = c
        .batch(json!([{"op": "set", "path": "items/new", "data": {}},
                      {"op": "update", "path": "items/missing", "fields": {"a": 1}}]))
        .await;
    assert_eq!(failing.status, 404, "{}", failing.text);
    assert_eq!(c.get("/v1/db/items/new").await.status, 404);
}

#[tokio::test]
async fn transactions_commit_and_abort_on_conflict() {
    let server = server().await;
    let c = server.client();
    c.put("/v1/db/acct/a", &json!({"balance": 10})).await;

    let tx = c.post("/v1/transactions", &json!({})).await;
    assert_eq!(tx.status, 200, "{}", tx.text);
    let id = tx.body["transaction"].as_str().unwrap().to_string();
    let read = c
        .post(
            &format!("/v1/transactions/{id}/get"),
            &json!({"path": "acct/a"}),
        )
        .await;
    assert_eq!(read.body["document"]["fields"]["balance"], json!(10));
    let commit = c
        .post(
            &format!("/v1/transactions/{id}/commit"),
            &json!({"writes": [{"op": "update", "path": "acct/a", "fields": {"balance": 11}}]}),
        )
        .await;
    assert_eq!(commit.status, 200, "{}", commit.text);
    // Committed transactions are gone.
    let again = c
        .post(
            &format!("/v1/transactions/{id}/commit"),
            &json!({"writes": []}),
        )
        .await;
    assert_eq!(again.status, 404);

    // Conflict: a read document changes before the commit.
    let tx = c.post("/v1/transactions", &json!({})).await;
    let id = tx.body["transaction"].as_str().unwrap().to_string();
    c.post(
        &format!("/v1/transactions/{id}/get"),
        &json!({"path": "acct/a"}),
    )
    .await;
    let q = c
        .post(
            &format!("/v1/transactions/{id}/query"),
            &json!({"collection": "acct"}),
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.text);
    c.put("/v1/db/acct/a", &json!({"balance": 99})).await;
    let conflict = c
        .post(
            &format!("/v1/transactions/{id}/commit"),
            &json!({"writes": [{"op": "update", "path": "acct/a", "fields": {"balance": 12}}]}),
        )
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    assert_eq!(conflict.error_code(), Some("aborted"));
    assert_eq!(
        c.get("/v1/db/acct/a").await.body["fields"]["balance"],
        json!(99)
    );

    let tx = c.post("/v1/transactions", &json!({})).await;
    let id = tx.body["transaction"].as_str().unwrap().to_string();
    assert_eq!(
        c.delete(&format!("/v1/transactions/{id}")).await.status,
        204
    );
    assert_eq!(
        c.delete(&format!("/v1/transactions/{id}")).await.status,
        404
    );
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let server = server().await;
    let c = server.client();
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
    c.post("/v1/db/m", &json!({"a": 1})).await;
    let metrics = c.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("hearth_http_requests_total"),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains("hearth_changelog_head"),
        "{}",
        metrics.text
    );
    for name in [
        "hearth_commits_total",
        "hearth_ws_connections",
        "hearth_ws_subscriptions",
        "hearth_ws_frames_direct_total",
        "hearth_ws_views_moved_total",
    ] {
        assert!(metrics.text.contains(name), "{name}: {}", metrics.text);
    }
    let spec = c.get("/v1/openapi.json").await;
    assert_eq!(spec.status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../sdk-spec/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec.body, committed,
        "the served OpenAPI equals sdk-spec/openapi.json"
    );
    let indexes = c.get("/v1/indexes").await;
    assert_eq!(indexes.status, 200, "{}", indexes.text);
    let log = c.get("/v1/changelog?after=0&limit=10").await;
    assert_eq!(log.status, 200, "{}", log.text);
    assert_eq!(log.body["commits"][0]["seq"], json!(1));
    assert_eq!(log.body["commits"][0]["changes"][0]["kind"], "created");
}

#[tokio::test]
async fn bad_input_gets_4xx_with_the_error_envelope() {
    let server = server().await;
    let c = server.client();
    let anon = server.anonymous_client();
    let cases: Vec<(hearth_testkit::Reply, u16, &str)> = vec![
        (anon.get("/v1/db/rooms/r1").await, 401, "unauthenticated"),
        (
            c.with_bearer(Some("wrong-key".into()))
                .get("/v1/db/rooms/r1")
                .await,
            401,
            "unauthenticated",
        ),
        (anon.get("/v1/changelog").await, 401, "unauthenticated"),
        (c.get("/v1/nope").await, 404, "not-found"),
        (c.get("/v1/db/a//b").await, 400, "invalid-argument"),
        (
            c.put("/v1/db/rooms", &json!({"a": 1})).await,
            400,
            "invalid-argument",
        ),
        (
            c.post("/v1/db/rooms/r1", &json!({"a": 1})).await,
            400,
            "invalid-argument",
        ),
        (
            c.put("/v1/db/rooms/r1", &json!([1, 2])).await,
            400,
            "invalid-argument",
        ),
        (
            c.put("/v1/db/rooms/r1", &json!({"__bad__": 1})).await,
            400,
            "invalid-argument",
        ),
        (
            c.put(
                "/v1/db/rooms/r1",
                &json!({"t": {"$timestamp": "yesterday"}}),
            )
            .await,
            400,
            "invalid-argument",
        ),
        (
            c.get("/v1/db/rooms/r1?version=abc").await,
            400,
            "invalid-argument",
        ),
        (
            c.query(
                &json!({"collection": "rooms", "where": {"field": "a", "op": "~", "value": 1}}),
            )
            .await,
            400,
            "invalid-argument",
        ),
        (
            c.query(&json!({"collection": "a/b"})).await,
            400,
            "invalid-argument",
        ),
        (
            c.batch(json!([{"op": "explode", "path": "a/b"}])).await,
            400,
            "invalid-argument",
        ),
        (
            c.batch(json!((0..501)
                .map(|i| json!({"op": "delete", "path": format!("a/{i}")}))
                .collect::<Vec<_>>()))
                .await,
            400,
            "invalid-argument",
        ),
        (
            c.send_raw(
                reqwest::Method::PUT,
                "/v1/db/rooms/r1",
                Some("application/json"),
                b"{\"a\": ".to_vec(),
            )
            .await,
            400,
            "invalid-argument",
        ),
        (
            c.send_raw(
                reqwest::Method::PUT,
                "/v1/db/rooms/r1",
                Some("text/plain"),
                b"{}".to_vec(),
            )
            .await,
            400,
            "invalid-argument",
        ),
        (
            c.post("/v1/transactions/nope/get", &json!({"path": "a/b"}))
                .await,
            404,
            "not-found",
        ),
        (
            c.post("/v1/admin/backup", &json!({"dir": "relative/dir"}))
                .await,
            400,
            "invalid-argument",
        ),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", reply.text);
        assert_eq!(reply.error_code(), Some(*code), "case {i}: {}", reply.text);
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
    }
    // An oversized body: the server answers 413 without reading it all and then
    // closes that connection, so it gets a client (and connection) of its own.
    let oversized = server
        .client()
        .send_raw(
            reqwest::Method::PUT,
            "/v1/db/rooms/r1",
            Some("application/json"),
            vec![b' '; 3 * 1024 * 1024],
        )
        .await;
    assert_eq!(oversized.status, 413, "{}", oversized.text);
    assert_eq!(oversized.error_code(), Some("payload-too-large"));
    // A document over 1 MiB inside the body limit is refused by the document limit.
    let big = "x".repeat(1024 * 1024 + 10);
    let too_big = c.put("/v1/db/rooms/big", &json!({"s": big})).await;
    assert_eq!(
        too_big.status,
        400,
        "{}",
        &too_big.text[..too_big.text.len().min(200)]
    );
    // Wrong method on a known route keeps 405 but speaks the envelope.
    let wrong = c
        .send(reqwest::Method::PUT, "/v1/query", Some(&json!({})))
        .await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.error_code(), Some("invalid-argument"));
}

#[tokio::test]
async fn dev_mode_allows_requests_without_credentials() {
    let server = TestServer::start(
        TestServerOptions::default()
            .binary(env!("CARGO_BIN_EXE_hearth"))
            .dev(),
    )
    .await
    .unwrap();
    let anon = server.anonymous_client();
    assert_eq!(anon.put("/v1/db/a/b", &json!({"x": 1})).await.status, 200);
    assert!(server.log().contains("DEVELOPMENT MODE"));
}
