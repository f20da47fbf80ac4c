//! Rules-bypass attack tests against the real `hearth serve` binary.
//!
//! Two real users sign up through `/v1/auth/signup`; the server runs with a
//! rules file where notes are owner-only and project tasks are readable by
//! the project's members (a rule with `get()`). User B then tries every door
//! into A's data: REST reads, writes, listings and queries, a batch with one
//! allowed and one forbidden write, a REST transaction, WebSocket
//! subscriptions (document and query), WebSocket writes, batches and
//! transactions, and forged, tampered, signed-out and missing tokens. Each
//! attempt must be refused, and each assertion also checks the effect: the
//! forbidden data is not in the answer and the forbidden write is not in the
//! store (read back with the admin key). The same operations by A succeed,
//! so a denial is the rules' doing and not a broken path.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hearth_testkit::jwt::{claims, unsigned, with_payload};
use hearth_testkit::ws::WsClient;
use hearth_testkit::{Client, TestServer, TestServerOptions, TestUser};
use serde_json::{json, Value};

const RULES: &str = r#"
rules_version = '2';
service cloud.firestore {
  match /databases/{database}/documents {
    function signedIn() {
      return request.auth != null;
    }

    // Owner-only documents.
    match /notes/{uid}/items/{id} {
      allow read, write: if signedIn() && request.auth.uid == uid;
    }

    // Projects are set up by the admin; members read them.
    match /projects/{pid} {
      allow read: if signedIn() && request.auth.uid in resource.data.members;
    }

    // Tasks: readable and writable by the members of their project (one get()).
    match /projects/{pid}/tasks/{tid} {
      allow read, write: if signedIn()
        && request.auth.uid in get(/databases/$(database)/documents/projects/$(pid)).data.members;
    }

    // Shared documents: readable by the uids in `readers`, writable by their owner.
    match /shared/{id} {
      allow read: if signedIn() && request.auth.uid in resource.data.readers;
      allow create: if signedIn() && request.resource.data.owner == request.auth.uid;
      allow update, delete: if signedIn() && resource.data.owner == request.auth.uid;
    }
  }
}
"#;

const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "A's secret text";

/// The server, the two users and their clients, with A's data seeded.
struct World {
    server: TestServer,
    _rules_dir: tempfile::TempDir,
    a: TestUser,
    b: TestUser,
    admin: Client,
    as_a: Client,
    as_b: Client,
}

impl World {
    async fn start() -> World {
        World::start_with(TestServerOptions::default()).await
    }

    /// Like [`World::start`], with other server options (e.g. a config file).
    async fn start_with(options: TestServerOptions) -> World {
        let rules_dir = tempfile::tempdir().unwrap();
        let rules_path = rules_dir.path().join("hearth.rules");
        std::fs::write(&rules_path, RULES).unwrap();
        let server = TestServer::start(
            options
                .binary(env!("CARGO_BIN_EXE_hearth"))
                .arg("--rules")
                .arg(rules_path.to_string_lossy().to_string()),
        )
        .await
        .unwrap();
        let a = server.sign_up("alice@example.test", PASSWORD).await;
        let b = server.sign_up("bob@example.test", PASSWORD).await;
        assert_ne!(a.uid, b.uid);
        let admin = server.client();
        let as_a = server.user_client(&a);
        let as_b = server.user_client(&b);
        let world = World {
            server,
            _rules_dir: rules_dir,
            a,
            b,
            admin,
            as_a,
            as_b,
        };
        let seeded = world
            .admin
            .batch(json!([
                {"op": "set", "path": world.a_note("n1"), "data": {"text": SECRET, "n": 1}},
                {"op": "set", "path": world.a_note("n2"), "data": {"text": SECRET, "n": 2}},
                {"op": "set", "path": world.b_note("m1"), "data": {"text": "B's own", "n": 1}},
                {"op": "set", "path": "projects/pa", "data": {"members": [world.a.uid.clone()]}},
                {"op": "set", "path": "projects/pa/tasks/t1", "data": {"title": SECRET}},
            ]))
            .await;
        assert_eq!(seeded.status, 200, "{}", seeded.text);
        world
    }

    fn a_note(&self, id: &str) -> String {
        format!("notes/{}/items/{id}", self.a.uid)
    }
    fn a_notes(&self) -> String {
        format!("notes/{}/items", self.a.uid)
    }
    fn b_note(&self, id: &str) -> String {
        format!("notes/{}/items/{id}", self.b.uid)
    }

    /// The document as the admin sees it (`Null` when missing).
    async fn stored(&self, path: &str) -> Value {
        let r = self.admin.get(&format!("/v1/db/{path}")).await;
        match r.status {
            200 => r.body["fields"].clone(),
            404 => Value::Null,
            other => panic!("admin read of {path}: {other} {}", r.text),
        }
    }

    async fn ws(&self, user: Option<&TestUser>) -> WsClient {
        let token = user.map(|u| u.access_token.as_str());
        match WsClient::connect(&self.server.ws_url(), token).await {
            Ok(c) => c,
            Err(closed) => panic!("hello refused: {closed:?}"),
        }
    }
}

/// Runs a test body with a time limit (server start included).
async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test timed out");
}

fn assert_denied(reply: &hearth_testkit::Reply, what: &str) {
    assert_eq!(
        (reply.status, reply.error_code()),
        (403, Some("permission-denied")),
        "{what}: {}",
        reply.text
    );
    assert!(
        !reply.text.contains(SECRET),
        "{what} leaked data: {}",
        reply.text
    );
}

fn assert_ws_denied(frame: &Value, what: &str) {
    assert_eq!(frame["type"], "error", "{what}: {frame}");
    assert_eq!(frame["code"], "permission-denied", "{what}: {frame}");
    assert!(
        !frame.to_string().contains(SECRET),
        "{what} leaked data: {frame}"
    );
}

fn paths(docs: &Value) -> Vec<String> {
    docs.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["path"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn rest_reads_writes_listings_and_queries_of_another_users_documents_are_denied() {
    within(async {
        let w = World::start().await;
        let n1 = w.a_note("n1");

        // Reads: document, listing, query (the query names A's collection).
        assert_denied(&w.as_b.get(&format!("/v1/db/{n1}")).await, "B get");
        assert_denied(
            &w.as_b.get(&format!("/v1/db/{}", w.a_notes())).await,
            "B list",
        );
        assert_denied(
            &w.as_b.query(&json!({"collection": w.a_notes()})).await,
            "B query",
        );
        assert_denied(
            &w.as_b
                .query(&json!({"query": {"collection": w.a_notes()},
                    "aggregations": [{"alias": "n", "op": "count"}]}))
                .await,
            "B count",
        );
        // A collection-group query runs, but returns none of A's notes.
        let group = w.as_b.query(&json!({"collection_group": "items"})).await;
        assert!(
            !group.text.contains(SECRET),
            "collection group leaked: {}",
            group.text
        );
        if group.status == 200 {
            assert_eq!(paths(&group.body["documents"]), [w.b_note("m1")]);
        }

        // Writes: put, patch, delete, post into A's collection.
        assert_denied(
            &w.as_b
                .put(&format!("/v1/db/{n1}"), &json!({"text": "B was here"}))
                .await,
            "B put",
        );
        assert_denied(
            &w.as_b
                .patch(&format!("/v1/db/{n1}"), &json!({"text": "B was here"}))
                .await,
            "B patch",
        );
        assert_denied(&w.as_b.delete(&format!("/v1/db/{n1}")).await, "B delete");
        assert_denied(
            &w.as_b
                .post(&format!("/v1/db/{}", w.a_notes()), &json!({"text": "spam"}))
                .await,
            "B post",
        );
        assert_eq!(w.stored(&n1).await, json!({"text": SECRET, "n": 1}));
        let listed = w.admin.get(&format!("/v1/db/{}", w.a_notes())).await;
        assert_eq!(
            paths(&listed.body["documents"]),
            [w.a_note("n1"), w.a_note("n2")],
            "nothing was added to A's collection"
        );

        // The same operations by A work.
        let got = w.as_a.get(&format!("/v1/db/{n1}")).await;
        assert_eq!(
            (got.status, &got.body["fields"]["text"]),
            (200, &json!(SECRET))
        );
        let listed = w.as_a.get(&format!("/v1/db/{}", w.a_notes())).await;
        assert_eq!(listed.status, 200, "{}", listed.text);
        assert_eq!(listed.body["documents"].as_array().map(Vec::len), Some(2));
        let queried = w.as_a.query(&json!({"collection": w.a_notes()})).await;
        assert_eq!(queried.status, 200, "{}", queried.text);
        assert_eq!(queried.body["documents"].as_array().map(Vec::len), Some(2));
        let patched = w
            .as_a
            .patch(&format!("/v1/db/{n1}"), &json!({"text": "edited"}))
            .await;
        assert_eq!(patched.status, 200, "{}", patched.text);
        let put = w
            .as_a
            .put(
                &format!("/v1/db/{}", w.a_note("n3")),
                &json!({"text": "new"}),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text);
        let deleted = w.as_a.delete(&format!("/v1/db/{}", w.a_note("n3"))).await;
        assert_eq!(deleted.status, 200, "{}", deleted.text);
        assert_eq!(w.stored(&n1).await, json!({"text": "edited", "n": 1}));
    })
    .await;
}

#[tokio::test]
async fn a_batch_with_one_forbidden_write_is_refused_whole_and_applies_nothing() {
    within(async {
        let w = World::start().await;
        let mixed = json!([
            {"op": "set", "path": w.b_note("m2"), "data": {"text": "allowed on its own"}},
            {"op": "update", "path": w.a_note("n1"), "fields": {"text": "B was here"}},
        ]);
        assert_denied(&w.as_b.batch(mixed.clone()).await, "B batch");
        assert_eq!(
            w.stored(&w.b_note("m2")).await,
            Value::Null,
            "the allowed half was not applied"
        );
        assert_eq!(w.stored(&w.a_note("n1")).await["text"], SECRET);

        // Order does not matter: forbidden first.
        let reversed = json!([mixed[1].clone(), mixed[0].clone()]);
        assert_denied(&w.as_b.batch(reversed).await, "B batch reversed");
        assert_eq!(w.stored(&w.b_note("m2")).await, Value::Null);

        // A delete of A's document hidden among B's own writes.
        let sneaky = json!([
            {"op": "set", "path": w.b_note("m3"), "data": {"n": 3}},
            {"op": "delete", "path": w.a_note("n2")},
        ]);
        assert_denied(&w.as_b.batch(sneaky).await, "B batch with delete");
        assert_eq!(w.stored(&w.a_note("n2")).await["text"], SECRET);
        assert_eq!(w.stored(&w.b_note("m3")).await, Value::Null);

        // B's own writes alone are fine; A's batch over A's documents is fine.
        let own = w.as_b.batch(json!([mixed[0].clone()])).await;
        assert_eq!(own.status, 200, "{}", own.text);
        assert_eq!(
            w.stored(&w.b_note("m2")).await["text"],
            "allowed on its own"
        );
        let a_batch = w
            .as_a
            .batch(json!([
                {"op": "update", "path": w.a_note("n1"), "fields": {"text": "A edits"}},
                {"op": "delete", "path": w.a_note("n2")},
            ]))
            .await;
        assert_eq!(a_batch.status, 200, "{}", a_batch.text);
        assert_eq!(w.stored(&w.a_note("n1")).await["text"], "A edits");
        assert_eq!(w.stored(&w.a_note("n2")).await, Value::Null);
    })
    .await;
}

#[tokio::test]
async fn a_rest_transaction_cannot_read_or_commit_another_users_document() {
    within(async {
        let w = World::start().await;
        let n1 = w.a_note("n1");

        let begun = w.as_b.post("/v1/transactions", &json!({})).await;
        assert_eq!(begun.status, 200, "{}", begun.text);
        let tx = begun.body["transaction"].as_str().unwrap().to_string();
        assert_denied(
            &w.as_b
                .post(&format!("/v1/transactions/{tx}/get"), &json!({"path": n1}))
                .await,
            "B transaction get",
        );
        assert_denied(
            &w.as_b
                .post(
                    &format!("/v1/transactions/{tx}/query"),
                    &json!({"collection": w.a_notes()}),
                )
                .await,
            "B transaction query",
        );
        let begun = w.as_b.post("/v1/transactions", &json!({})).await;
        let tx = begun.body["transaction"].as_str().unwrap().to_string();
        assert_denied(
            &w.as_b
                .post(
                    &format!("/v1/transactions/{tx}/commit"),
                    &json!({"writes": [
                        {"op": "set", "path": w.b_note("m2"), "data": {"n": 2}},
                        {"op": "update", "path": n1, "fields": {"text": "B was here"}},
                    ]}),
                )
                .await,
            "B transaction commit",
        );
        assert_eq!(w.stored(&n1).await["text"], SECRET);
        assert_eq!(w.stored(&w.b_note("m2")).await, Value::Null);

        // B cannot use A's transaction either (its id is not a capability).
        let a_tx = w.as_a.post("/v1/transactions", &json!({})).await;
        let a_tx = a_tx.body["transaction"].as_str().unwrap().to_string();
        let hijack = w
            .as_b
            .post(
                &format!("/v1/transactions/{a_tx}/get"),
                &json!({"path": n1}),
            )
            .await;
        assert!(
            hijack.status >= 400 && !hijack.text.contains(SECRET),
            "B used A's transaction: {} {}",
            hijack.status,
            hijack.text
        );

        // A's transaction reads and commits A's document.
        let read = w
            .as_a
            .post(
                &format!("/v1/transactions/{a_tx}/get"),
                &json!({"path": n1}),
            )
            .await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.body["document"]["fields"]["text"], SECRET);
        let commit = w
            .as_a
            .post(
                &format!("/v1/transactions/{a_tx}/commit"),
                &json!({"writes": [{"op": "update", "path": n1, "fields": {"text": "A commits"}}]}),
            )
            .await;
        assert_eq!(commit.status, 200, "{}", commit.text);
        assert_eq!(w.stored(&n1).await["text"], "A commits");
    })
    .await;
}

#[tokio::test]
async fn websocket_subscriptions_to_another_users_document_or_collection_are_refused() {
    within(async {
        let w = World::start().await;
        let mut b = w.ws(Some(&w.b)).await;
        assert_eq!(b.welcome["uid"], json!(w.b.uid));

        let doc = b.subscribe("doc", json!({"doc": w.a_note("n1")})).await;
        assert_ws_denied(&doc, "B doc subscription");
        assert_eq!(doc["sub"], "doc");
        let query = b
            .subscribe("query", json!({"query": {"collection": w.a_notes()}}))
            .await;
        assert_ws_denied(&query, "B query subscription");
        let task = b
            .subscribe("task", json!({"doc": "projects/pa/tasks/t1"}))
            .await;
        assert_ws_denied(&task, "B task subscription (get() rule)");

        // The refused subscriptions deliver nothing when A's documents change.
        let changed = w
            .as_a
            .patch(&format!("/v1/db/{}", w.a_note("n1")), &json!({"n": 10}))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.text);
        let later = b.frames_within(Duration::from_millis(500)).await;
        assert!(
            later.iter().all(|f| !f.to_string().contains(&w.a.uid)),
            "frames about A's notes reached B: {later:?}"
        );

        // A may subscribe to both.
        let mut a = w.ws(Some(&w.a)).await;
        let doc = a.subscribe("doc", json!({"doc": w.a_note("n1")})).await;
        assert_eq!(doc["type"], "snapshot", "{doc}");
        assert_eq!(doc["docs"][0]["fields"]["text"], SECRET);
        let query = a
            .subscribe("query", json!({"query": {"collection": w.a_notes()}}))
            .await;
        assert_eq!(query["type"], "snapshot", "{query}");
        assert_eq!(paths(&query["docs"]), [w.a_note("n1"), w.a_note("n2")]);
        let task = a
            .subscribe("task", json!({"doc": "projects/pa/tasks/t1"}))
            .await;
        assert_eq!(task["type"], "snapshot", "{task}");
    })
    .await;
}

#[tokio::test]
async fn websocket_writes_batches_and_transactions_on_another_users_document_are_denied() {
    within(async {
        let w = World::start().await;
        let n1 = w.a_note("n1");
        let mut b = w.ws(Some(&w.b)).await;

        let single = b
            .write(json!([{"op": "update", "path": n1, "fields": {"text": "B was here"}}]))
            .await;
        assert_ws_denied(&single, "B ws write");
        let batch = b
            .write(json!([
                {"op": "set", "path": w.b_note("m2"), "data": {"n": 2}},
                {"op": "delete", "path": n1},
            ]))
            .await;
        assert_ws_denied(&batch, "B ws batch");
        let tx = b
            .transaction(
                json!([{"path": w.b_note("m2"), "version": null}]),
                json!([
                    {"op": "set", "path": w.b_note("m2"), "data": {"n": 2}},
                    {"op": "set", "path": n1, "data": {"text": "B was here"}},
                ]),
            )
            .await;
        assert_ws_denied(&tx, "B ws transaction");
        let task = b
            .write(json!([{"op": "set", "path": "projects/pa/tasks/t2", "data": {"title": "x"}}]))
            .await;
        assert_ws_denied(&task, "B ws write under a get() rule");
        assert_eq!(w.stored(&n1).await, json!({"text": SECRET, "n": 1}));
        assert_eq!(w.stored(&w.b_note("m2")).await, Value::Null);
        assert_eq!(w.stored("projects/pa/tasks/t2").await, Value::Null);

        // A's socket does the same writes.
        let mut a = w.ws(Some(&w.a)).await;
        let ok = a
            .write(json!([{"op": "update", "path": n1, "fields": {"text": "A writes"}}]))
            .await;
        assert_eq!(ok["type"], "write_ok", "{ok}");
        let version = ok["result"]["seq"].clone();
        let ok = a
            .transaction(
                json!([{"path": n1, "version": version}]),
                json!([
                    {"op": "update", "path": n1, "fields": {"n": 5}},
                    {"op": "set", "path": "projects/pa/tasks/t2", "data": {"title": "by A"}},
                ]),
            )
            .await;
        assert_eq!(ok["type"], "write_ok", "{ok}");
        assert_eq!(w.stored(&n1).await, json!({"text": "A writes", "n": 5}));
        assert_eq!(w.stored("projects/pa/tasks/t2").await["title"], "by A");
    })
    .await;
}

#[tokio::test]
async fn a_live_subscriber_receives_a_document_that_becomes_unreadable_as_removed() {
    within(async {
        let w = World::start().await;
        let readers = |uids: &[&str]| json!(uids);
        let created = w
            .as_a
            .put(
                "/v1/db/shared/s1",
                &json!({"owner": w.a.uid, "readers": readers(&[&w.a.uid, &w.b.uid]), "text": "v1"}),
            )
            .await;
        assert_eq!(created.status, 200, "{}", created.text);
        let mut b = w.ws(Some(&w.b)).await;
        let doc = b.subscribe("doc", json!({"doc": "shared/s1"})).await;
        assert_eq!(doc["type"], "snapshot", "{doc}");
        assert_eq!(doc["docs"][0]["fields"]["text"], "v1");
        let query = b
            .subscribe("q", json!({"query": {"collection": "shared"}}))
            .await;
        assert_eq!(query["type"], "snapshot", "{query}");
        assert_eq!(paths(&query["docs"]), ["shared/s1"]);

        // A takes B off the readers and changes the text in the same write.
        let revoked = w
            .as_a
            .put(
                "/v1/db/shared/s1",
                &json!({"owner": w.a.uid, "readers": readers(&[&w.a.uid]), "text": "v2 secret"}),
            )
            .await;
        assert_eq!(revoked.status, 200, "{}", revoked.text);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let frame = b.recv().await;
            assert!(
                !frame.to_string().contains("v2 secret"),
                "the unreadable version leaked: {frame}"
            );
            seen.push(frame);
        }
        for sub in ["doc", "q"] {
            let frame = seen
                .iter()
                .find(|f| f["sub"] == sub)
                .unwrap_or_else(|| panic!("no frame for {sub}: {seen:?}"));
            assert_eq!(frame["type"], "changes", "{frame}");
            assert_eq!(frame["changes"][0]["kind"], "removed", "{frame}");
            assert_eq!(
                frame["changes"][0]["doc"]["fields"]["text"], "v1",
                "{frame}"
            );
        }
        // Later changes of the hidden document are not delivered either.
        let again = w
            .as_a
            .patch("/v1/db/shared/s1", &json!({"text": "v3 secret"}))
            .await;
        assert_eq!(again.status, 200, "{}", again.text);
        let later = b.frames_within(Duration::from_millis(500)).await;
        assert!(later.is_empty(), "B received {later:?}");
    })
    .await;
}

#[tokio::test]
async fn missing_forged_tampered_and_signed_out_tokens_get_no_access() {
    within(async {
        let w = World::start().await;
        let n1 = format!("/v1/db/{}", w.a_note("n1"));
        let a_uid = w.a.uid.clone();
        let as_a_by_b = with_payload(&w.b.access_token, |c| c["sub"] = json!(a_uid));
        let mut none_claims = claims(&w.a.access_token);
        none_claims["exp"] = json!(u64::MAX / 2);
        let forged = [
            ("B's token with A's uid", as_a_by_b),
            ("alg none with A's claims", unsigned(&none_claims)),
            (
                "B's token with a later exp",
                with_payload(&w.b.access_token, |c| c["exp"] = json!(u64::MAX / 2)),
            ),
            ("garbage", "not-a-token".to_string()),
        ];
        for (what, token) in &forged {
            let client = w.as_a.with_bearer(Some(token.clone()));
            let r = client.get(&n1).await;
            assert_eq!(
                (r.status, r.error_code()),
                (401, Some("unauthenticated")),
                "{what}: {}",
                r.text
            );
            assert!(!r.text.contains(SECRET));
            let r = client.put(&n1, &json!({"text": "forged"})).await;
            assert_eq!(r.status, 401, "{what}: {}", r.text);
            match WsClient::connect(&w.server.ws_url(), Some(token)).await {
                Ok(c) => panic!("{what}: hello accepted: {:?}", c.welcome),
                Err(closed) => {
                    assert_eq!(closed.code, 4001, "{what}: {closed:?}");
                    assert_eq!(closed.frames[0]["code"], "unauthenticated", "{what}");
                }
            }
        }

        // No token at all: the rules see request.auth == null.
        let anonymous = w.server.anonymous_client();
        assert_denied(&anonymous.get(&n1).await, "anonymous get");
        assert_denied(
            &anonymous.put(&n1, &json!({"text": "anon"})).await,
            "anonymous put",
        );
        assert_denied(
            &anonymous.query(&json!({"collection": w.a_notes()})).await,
            "anonymous query",
        );
        let mut anon_ws = w.ws(None).await;
        assert_eq!(anon_ws.welcome["uid"], Value::Null);
        assert_ws_denied(
            &anon_ws.subscribe("d", json!({"doc": w.a_note("n1")})).await,
            "anonymous subscription",
        );
        assert_ws_denied(
            &anon_ws
                .write(json!([{"op": "set", "path": w.a_note("n1"), "data": {"x": 1}}]))
                .await,
            "anonymous ws write",
        );
        assert_eq!(
            w.stored(&w.a_note("n1")).await,
            json!({"text": SECRET, "n": 1})
        );

        // A signs out: that access token stops working at once, on REST and
        // on an open socket (closed with 4003).
        let mut a_ws = w.ws(Some(&w.a)).await;
        let ok = w.as_a.get(&n1).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        let out = w.as_a.post("/v1/auth/logout", &json!({})).await;
        assert_eq!(out.status, 204, "{}", out.text);
        let after = w.as_a.get(&n1).await;
        assert_eq!(
            after.status, 401,
            "a signed-out token still reads: {}",
            after.text
        );
        assert!(!after.text.contains(SECRET));
        let closed = a_ws.closed().await;
        assert_eq!(closed.code, 4003, "{closed:?}");
        assert!(
            WsClient::connect(&w.server.ws_url(), Some(&w.a.access_token))
                .await
                .is_err()
        );
    })
    .await;
}

/// Probes whose answer would tell B whether A's document exists (or its
/// version) if a write error were reported before the rules' verdict.
#[tokio::test]
async fn error_codes_do_not_reveal_whether_another_users_document_exists() {
    within(async {
        let w = World::start().await;
        let existing = w.a_note("n1");
        let missing = w.a_note("nope");
        for path in [&existing, &missing] {
            for query in ["?exists=true", "?exists=false", "?version=1"] {
                let r = w
                    .as_b
                    .put(&format!("/v1/db/{path}{query}"), &json!({"text": "x"}))
                    .await;
                assert_denied(&r, &format!("B put {path}{query}"));
            }
            for write in [
                json!({"op": "create", "path": path, "data": {"text": "x"}}),
                json!({"op": "update", "path": path, "fields": {"text": "x"}}),
                json!({"op": "delete", "path": path, "precondition": {"exists": true}}),
            ] {
                let r = w.as_b.batch(json!([write.clone()])).await;
                assert_denied(&r, &format!("B batch {write}"));
            }
        }
        let mut b = w.ws(Some(&w.b)).await;
        for path in [&existing, &missing] {
            for write in [
                json!({"op": "create", "path": path, "data": {"text": "x"}}),
                json!({"op": "update", "path": path, "fields": {"text": "x"}}),
                json!({"op": "set", "path": path, "data": {}, "precondition": {"exists": false}}),
            ] {
                let r = b.write(json!([write.clone()])).await;
                assert_ws_denied(&r, &format!("B ws write {write}"));
            }
        }
        assert_eq!(w.stored(&existing).await, json!({"text": SECRET, "n": 1}));
        assert_eq!(w.stored(&missing).await, Value::Null);
    })
    .await;
}

/// A transaction's `reads` are reads: naming a document B may not read must
/// not tell B its version (or whether it exists).
#[tokio::test]
async fn websocket_transaction_reads_of_unreadable_documents_are_denied() {
    within(async {
        let w = World::start().await;
        let mut b = w.ws(Some(&w.b)).await;
        for path in [
            w.a_note("n1"),
            w.a_note("nope"),
            "projects/pa/tasks/t1".to_string(),
            format!("__users__/{}", w.a.uid),
        ] {
            let r = b
                .transaction(
                    json!([{"path": path, "version": null}]),
                    json!([{"op": "set", "path": w.b_note("m2"), "data": {"n": 2}}]),
                )
                .await;
            assert_ws_denied(&r, &format!("B transaction reading {path}"));
        }
        assert_eq!(w.stored(&w.b_note("m2")).await, Value::Null);
    })
    .await;
}

#[tokio::test]
async fn an_expired_access_token_is_refused_on_rest_and_ends_the_socket() {
    within(async {
        let w = World::start_with(
            TestServerOptions::default().config("[auth]\naccess_token_ttl = 3\nclock_skew = 0\n"),
        )
        .await;
        let n1 = format!("/v1/db/{}", w.a_note("n1"));
        let expires = claims(&w.a.access_token)["exp"].as_u64().unwrap();
        let fresh = w.as_a.get(&n1).await;
        assert_eq!(fresh.status, 200, "{}", fresh.text);
        let mut socket = w.ws(Some(&w.a)).await;
        assert!(
            socket.welcome["expires_at"].is_string(),
            "{}",
            socket.welcome
        );
        let sub = socket
            .subscribe("doc", json!({"doc": w.a_note("n1")}))
            .await;
        assert_eq!(sub["type"], "snapshot", "{sub}");

        // Past exp: the socket is told and closed with 4001 ...
        let closed = socket.closed().await;
        assert_eq!(closed.code, 4001, "{closed:?}");
        assert!(
            closed.frames.iter().any(|f| f["code"] == "unauthenticated"),
            "{closed:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now >= expires, "closed before the token expired");
        // `exp` is the last valid second (RFC 7519: "on or after" is refused,
        // jsonwebtoken refuses only after it): step past it.
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            <= expires
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ... and REST and a new hello refuse the token.
        let stale = w.as_a.get(&n1).await;
        assert_eq!(
            (stale.status, stale.error_code()),
            (401, Some("unauthenticated")),
            "{}",
            stale.text
        );
        assert!(!stale.text.contains(SECRET));
        let write = w.as_a.put(&n1, &json!({"text": "late"})).await;
        assert_eq!(write.status, 401, "{}", write.text);
        assert_eq!(w.stored(&w.a_note("n1")).await["text"], SECRET);
        let again = WsClient::connect(&w.server.ws_url(), Some(&w.a.access_token)).await;
        assert_eq!(again.map(|_| ()).unwrap_err().code, 4001);
    })
    .await;
}
