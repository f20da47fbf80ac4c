//! Process-level behaviour: graceful shutdown, crash durability under load,
//! export → import and backup → restore round trips, all against real
//! `hearth` processes.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hearth_testkit::{Client, TestServer, TestServerOptions};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn options() -> TestServerOptions {
    TestServerOptions::default().binary(BIN)
}

/// Every document of a collection, by listing (a scan of the collection).
async fn list_all(c: &Client, collection: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(t) => format!("/v1/db/{collection}?page_size=1000&page_token={t}"),
            None => format!("/v1/db/{collection}?page_size=1000"),
        };
        let page = c.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for d in page.body["documents"].as_array().unwrap() {
            out.insert(d["path"].as_str().unwrap().to_string(), d["fields"].clone());
        }
        match page.body["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

/// Checks that the changelog is 1..=head with no gap.
async fn assert_changelog_gap_free(c: &Client) -> u64 {
    let mut after = 0u64;
    let mut head = 0;
    loop {
        let page = c
            .get(&format!("/v1/changelog?after={after}&limit=1000"))
            .await;
        assert_eq!(page.status, 200, "{}", page.text);
        head = page.body["head"].as_u64().unwrap().max(head);
        let commits = page.body["commits"].as_array().unwrap();
        if commits.is_empty() {
            break;
        }
        for commit in commits {
            let seq = commit["seq"].as_u64().unwrap();
            assert_eq!(seq, after + 1, "changelog gap after {after}");
            after = seq;
        }
    }
    assert_eq!(after, head, "changelog ends at its head");
    head
}

fn run_cli(args: &[&str], key: &str) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env("HEARTH_ADMIN_KEY", key)
        .output()
        .expect("hearth runs");
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn seed(c: &Client, n: usize) -> BTreeMap<String, Value> {
    for i in 0..n {
        let r = c
            .put(
                &format!("/v1/db/things/t{i:03}"),
                &json!({"i": i, "d": 1.5, "b": {"$bytes": "AAE="}, "nested": {"k": [1, "x"]}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    list_all(c, "things").await
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_with_exit_0_and_data_flushed() {
    let mut server = TestServer::start(options()).await.unwrap();
    let c = server.client();
    // Writes in flight while the signal arrives: every acknowledged one must survive.
    let acked = Arc::new(parking_lot_free::Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for w in 0..4 {
        let c = c.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/v1/db/graceful/w{w}-{i}");
                let r = c
                    .http()
                    .put(c.url(&path))
                    .bearer_auth(hearth_testkit::DEFAULT_ADMIN_KEY)
                    .json(&json!({"i": i}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked.push(format!("graceful/w{w}-{i}")),
                    _ => break,
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.terminate().await.expect("was running");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(server.log().contains("store flushed"), "{}", server.log());
    server.restart().await.unwrap();
    let present = list_all(&server.client(), "graceful").await;
    let acked = acked.take();
    assert!(!acked.is_empty());
    for path in acked {
        assert!(present.contains_key(&path), "acknowledged {path} lost");
    }
}

/// A tiny mutex-protected list without extra dependencies.
mod parking_lot_free {
    #[derive(Default)]
    pub struct Acked(std::sync::Mutex<Vec<String>>);
    impl Acked {
        pub fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

#[tokio::test]
async fn sigkill_under_concurrent_writes_loses_no_acknowledged_write() {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 5;
    let mut server = TestServer::start(options()).await.unwrap();
    let c = server.client();
    for w in 0..WRITERS {
        let r = c
            .put(&format!("/v1/db/counters/w{w}"), &json!({"n": 0}))
            .await;
        assert_eq!(r.status, 200);
    }
    // Per writer: acknowledged creates and acknowledged increments so far.
    let mut acked_items: Vec<BTreeSet<String>> = vec![BTreeSet::new(); WRITERS];
    let mut acked_incs = [0i64; WRITERS];
    for round in 0..ROUNDS {
        let c = server.client();
        let mut tasks = vec![];
        for w in 0..WRITERS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut items = vec![];
                let mut incs = 0i64;
                let mut in_flight_inc = false;
                for i in 0.. {
                    let create = c.http().post(c.url("/v1/db/items"))
                        .bearer_auth(hearth_testkit::DEFAULT_ADMIN_KEY)
                        .json(&json!({"writer": w, "round": round, "i": i}))
                        .send().await;
                    let Ok(r) = create else { break };
                    if r.status() != 201 { break }
                    let Ok(body) = r.json::<Value>().await else { break };
                    items.push(body["path"].as_str().unwrap_or_default().to_string());
                    in_flight_inc = true;
                    let inc = c.http().patch(c.url(&format!("/v1/db/counters/w{w}")))
                        .bearer_auth(hearth_testkit::DEFAULT_ADMIN_KEY)
                        .json(&json!({"fields": {}, "transforms": [{"field": "n", "transform": "increment", "value": 1}]}))
                        .send().await;
                    let Ok(r) = inc else { break };
                    if !r.status().is_success() || r.bytes().await.is_err() {
                        break;
                    }
                    incs += 1;
                    in_flight_inc = false;
                }
                (items, incs, in_flight_inc)
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.kill_9();
        let mut in_flight = [false; WRITERS];
        for (w, t) in tasks.into_iter().enumerate() {
            let (items, incs, pending) = t.await.unwrap();
            acked_items[w].extend(items);
            acked_incs[w] += incs;
            in_flight[w] = pending;
        }
        server.restart().await.unwrap();
        let c = server.client();

        let head = assert_changelog_gap_free(&c).await;
        let scanned = list_all(&c, "items").await;
        for w in 0..WRITERS {
            for path in &acked_items[w] {
                assert!(
                    scanned.contains_key(path),
                    "round {round}: acknowledged create {path} lost"
                );
            }
            let counter = c.get(&format!("/v1/db/counters/w{w}")).await;
            let n = counter.body["fields"]["n"].as_i64().unwrap();
            // An increment in flight at the kill may or may not have committed.
            let max = acked_incs[w] + i64::from(in_flight[w]);
            assert!(
                n >= acked_incs[w] && n <= max,
                "round {round}: counter w{w} = {n}, acknowledged {}",
                acked_incs[w]
            );
            acked_incs[w] = n;
            // The index agrees with the data: an indexed equality query equals the scan.
            let q = c.query(&json!({"collection": "items", "where": {"field": "writer", "op": "==", "value": w}})).await;
            assert_eq!(q.status, 200, "{}", q.text);
            let by_index: BTreeSet<String> = q.body["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["path"].as_str().unwrap().to_string())
                .collect();
            let by_scan: BTreeSet<String> = scanned
                .iter()
                .filter(|(_, f)| f["writer"] == json!(w))
                .map(|(p, _)| p.clone())
                .collect();
            assert_eq!(
                by_index, by_scan,
                "round {round}: index and data disagree for writer {w}"
            );
        }
        let total: usize = acked_items.iter().map(|s| s.len()).sum();
        eprintln!("round {round}: head {head}, {total} acknowledged creates, all present");
        assert!(total > 0);
    }
}

#[tokio::test]
async fn export_then_import_round_trips_every_document() {
    let server = TestServer::start(options()).await.unwrap();
    let before = seed(&server.client(), 30).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("export.jsonl");
    // Exported while the server runs: goes through its admin API.
    run_cli(
        &[
            "export",
            "--data",
            server.data_dir().to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ],
        server.admin_key(),
    );
    let lines = std::fs::read_to_string(&file).unwrap();
    // The export also carries system documents (the auth signing keys), so that
    // a restore from it is complete; count the user documents.
    let user_docs = lines
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            !v["path"].as_str().unwrap_or_default().starts_with("__")
        })
        .count();
    assert_eq!(user_docs, 30);
    let target = scratch.path().join("imported");
    run_cli(
        &[
            "import",
            "--data",
            target.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        server.admin_key(),
    );
    let copy = TestServer::start(TestServerOptions {
        data_dir: Some(target.clone()),
        ..options()
    })
    .await
    .unwrap();
    assert_eq!(list_all(&copy.client(), "things").await, before);
}

#[tokio::test]
async fn backup_while_serving_then_restore_round_trips() {
    let server = TestServer::start(options()).await.unwrap();
    let before = seed(&server.client(), 25).await;
    let scratch = tempfile::tempdir().unwrap();
    let backup = scratch.path().join("backup");
    run_cli(
        &[
            "backup",
            "--data",
            server.data_dir().to_str().unwrap(),
            "--out",
            backup.to_str().unwrap(),
        ],
        server.admin_key(),
    );
    // The server kept serving.
    assert_eq!(
        server
            .client()
            .put("/v1/db/things/after", &json!({}))
            .await
            .status,
        200
    );

    let restored = scratch.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::write(restored.join("keep"), "x").unwrap();
    let refused = Command::new(BIN)
        .args([
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data",
            restored.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "restore into a non-empty dir without --force is refused"
    );
    run_cli(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data",
            restored.to_str().unwrap(),
            "--force",
        ],
        server.admin_key(),
    );
    assert!(!Path::new(&restored.join("keep")).exists());
    let copy = TestServer::start(TestServerOptions {
        data_dir: Some(restored),
        ..options()
    })
    .await
    .unwrap();
    assert_eq!(list_all(&copy.client(), "things").await, before);
    assert_changelog_gap_free(&copy.client()).await;
}
