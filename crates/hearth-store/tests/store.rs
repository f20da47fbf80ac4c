//! End-to-end behaviour of writes, transactions, durability, export/import and backup.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hearth_protocol::{ErrorCode, Precondition, Transform, Value, Write};
use hearth_store::{Store, StoreConfig, StoreError};
use serde_json::json;

#[tokio::test]
async fn set_get_and_version_is_the_commit_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = store
        .commit(vec![set("rooms/r1", json!({"name": "Lobby"}))])
        .await
        .unwrap();
    assert_eq!(r.seq, 1);
    let doc = store.get(&path("rooms/r1")).unwrap().unwrap();
    assert_eq!(doc.version, 1);
    assert_eq!(doc.fields, map(json!({"name": "Lobby"})));
    let r2 = store
        .commit(vec![set("rooms/r1", json!({"name": "Hall"}))])
        .await
        .unwrap();
    let doc2 = store.get(&path("rooms/r1")).unwrap().unwrap();
    assert_eq!(doc2.version, r2.seq);
    assert_eq!(
        doc2.create_time, doc.create_time,
        "create_time survives updates"
    );
    assert!(doc2.update_time > doc.update_time);
    assert_eq!(store.head_seq(), 2);
}

#[tokio::test]
async fn each_write_kind_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // create
    store
        .commit(vec![Write::create(path("a/1"), map(json!({"x": 1})))])
        .await
        .unwrap();
    let e = store
        .commit(vec![Write::create(path("a/1"), map(json!({"x": 2})))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    // update merges and fails when missing
    store
        .commit(vec![update("a/1", &[("y.z", json!(true))])])
        .await
        .unwrap();
    assert_eq!(
        store.get(&path("a/1")).unwrap().unwrap().fields,
        map(json!({"x": 1, "y": {"z": true}}))
    );
    let e = store
        .commit(vec![update("a/2", &[("y", json!(1))])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    // merge upserts
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(field("k"), Value::from("v"));
    store
        .commit(vec![Write::merge(path("a/2"), fields)])
        .await
        .unwrap();
    assert_eq!(
        store.get(&path("a/2")).unwrap().unwrap().fields,
        map(json!({"k": "v"}))
    );
    // set replaces
    store
        .commit(vec![set("a/1", json!({"only": 1}))])
        .await
        .unwrap();
    assert_eq!(
        store.get(&path("a/1")).unwrap().unwrap().fields,
        map(json!({"only": 1}))
    );
    // delete, also of a missing doc
    store
        .commit(vec![Write::delete(path("a/1"))])
        .await
        .unwrap();
    assert!(store.get(&path("a/1")).unwrap().is_none());
    store
        .commit(vec![Write::delete(path("a/1"))])
        .await
        .unwrap();
}

#[tokio::test]
async fn transforms_apply_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .commit(vec![set(
            "c/1",
            json!({"n": 1, "tags": ["a", "b"], "gone": 1}),
        )])
        .await
        .unwrap();
    let w = update("c/1", &[("other", json!(0))])
        .with_transform(
            field("n"),
            Transform::Increment {
                value: Value::Integer(2),
            },
        )
        .with_transform(field("t"), Transform::ServerTimestamp)
        .with_transform(
            field("tags"),
            Transform::ArrayUnion {
                values: vec!["c".into(), "a".into()],
            },
        )
        .with_transform(field("gone"), Transform::Delete);
    let r = store.commit(vec![w]).await.unwrap();
    let d = store.get(&path("c/1")).unwrap().unwrap();
    assert_eq!(d.fields.get("n"), Some(&Value::Integer(3)));
    assert_eq!(d.fields.get("t"), Some(&Value::Timestamp(r.commit_time)));
    assert_eq!(d.fields.get("tags"), Some(&val(json!(["a", "b", "c"]))));
    assert!(!d.fields.contains_key("gone"));
    let w = update("c/1", &[("other", json!(1))]).with_transform(
        field("tags"),
        Transform::ArrayRemove {
            values: vec!["a".into()],
        },
    );
    store.commit(vec![w]).await.unwrap();
    assert_eq!(
        store.get(&path("c/1")).unwrap().unwrap().fields.get("tags"),
        Some(&val(json!(["b", "c"])))
    );
}

#[tokio::test]
async fn preconditions_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = store
        .commit(vec![
            set("p/1", json!({})).with_precondition(Precondition::Exists(true))
        ])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    let r = store
        .commit(vec![
            set("p/1", json!({})).with_precondition(Precondition::Exists(false))
        ])
        .await
        .unwrap();
    let e = store
        .commit(vec![
            set("p/1", json!({})).with_precondition(Precondition::Exists(false))
        ])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    let e = store
        .commit(vec![
            set("p/1", json!({"a": 1})).with_precondition(Precondition::Version(r.seq + 5))
        ])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    store
        .commit(vec![
            set("p/1", json!({"a": 1})).with_precondition(Precondition::Version(r.seq))
        ])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_write_fails_the_whole_batch_and_consumes_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.commit(vec![set("b/0", json!({}))]).await.unwrap();
    let e = store
        .commit(vec![
            set("b/1", json!({"x": 1})),
            update("b/missing", &[("x", json!(1))]),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(
        store.get(&path("b/1")).unwrap().is_none(),
        "no partial batch"
    );
    let r = store.commit(vec![set("b/2", json!({}))]).await.unwrap();
    assert_eq!(r.seq, 2, "failed commit consumed no seq");
    let records = store.changelog().read_from(0, 10).unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test]
async fn commit_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = store.commit(vec![]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    // 500 client writes plus one bookkeeping record fit; one more does not.
    let most: Vec<Write> = (0..501)
        .map(|i| set(&format!("m/{i}"), json!({})))
        .collect();
    store.commit(most).await.unwrap();
    let many: Vec<Write> = (0..502)
        .map(|i| set(&format!("m/{i}"), json!({})))
        .collect();
    assert_eq!(
        store.commit(many).await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let twice = vec![set("m/1", json!({})), set("m/1", json!({"a": 1}))];
    assert_eq!(
        store.commit(twice).await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let big = "x".repeat(1024 * 1024);
    let e = store
        .commit(vec![set("m/big", json!({ "b": big }))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let ok: Vec<Write> = (0..500)
        .map(|i| set(&format!("m/{i}"), json!({"i": i})))
        .collect();
    store.commit(ok).await.unwrap();
}

#[tokio::test]
async fn concurrent_commits_get_gap_free_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for j in 0..10 {
                // every third commit fails validation
                let w = if j % 3 == 0 {
                    update(&format!("none/{i}-{j}"), &[("x", json!(1))])
                } else {
                    set(&format!("w/{i}-{j}"), json!({"i": i}))
                };
                if let Ok(r) = s.commit(vec![w]).await {
                    seqs.push(r.seq);
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected);
    assert_eq!(store.head_seq(), all.len() as u64);
}

#[tokio::test]
async fn transaction_conflict_aborts_and_clean_transaction_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .commit(vec![set("rooms/r1", json!({"n": 1}))])
        .await
        .unwrap();
    let tx = store.transaction();
    let d = tx.get(&path("rooms/r1")).unwrap().unwrap();
    store
        .commit(vec![set("rooms/r1", json!({"n": 5}))])
        .await
        .unwrap();
    let e = tx
        .commit(vec![set(
            "rooms/r1",
            json!({"n": d.fields["n"].as_i64().unwrap() + 1}),
        )])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Aborted);
    assert_eq!(
        e.to_string(),
        "transaction conflict: rooms/r1 changed since it was read; retry"
    );
    // missing doc read, then created by someone else
    let tx = store.transaction();
    assert!(tx.get(&path("rooms/r2")).unwrap().is_none());
    store
        .commit(vec![set("rooms/r2", json!({}))])
        .await
        .unwrap();
    assert_eq!(
        tx.commit(vec![set("rooms/r3", json!({}))])
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Aborted
    );
    // a clean one
    let tx = store.transaction();
    let d = tx.get(&path("rooms/r1")).unwrap().unwrap();
    tx.commit(vec![set(
        "rooms/r1",
        json!({"n": d.fields["n"].as_i64().unwrap() + 1}),
    )])
    .await
    .unwrap();
    assert_eq!(
        store.get(&path("rooms/r1")).unwrap().unwrap().fields["n"],
        Value::Integer(6)
    );
}

#[tokio::test]
async fn transaction_query_conflict_when_a_new_document_matches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .commit(vec![set("q/1", json!({"open": true}))])
        .await
        .unwrap();
    let q =
        hearth_protocol::Query::collection(coll("q")).filter("open", hearth_protocol::Op::Eq, true);
    let tx = store.transaction();
    assert_eq!(tx.query(&q).unwrap().documents.len(), 1);
    store
        .commit(vec![set("q/2", json!({"open": true}))])
        .await
        .unwrap();
    let e = tx.commit(vec![set("q/3", json!({}))]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Aborted);
    assert!(e.to_string().contains("q/2"), "{e}");
    // unrelated change does not conflict
    let tx = store.transaction();
    tx.query(&q).unwrap();
    store
        .commit(vec![set("q/9", json!({"open": false}))])
        .await
        .unwrap();
    tx.commit(vec![set("q/3", json!({}))]).await.unwrap();
}

#[tokio::test]
async fn reopen_after_drop_without_shutdown_keeps_data_changelog_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..50 {
            store
                .commit(vec![set(
                    &format!("k/{i:02}"),
                    json!({"n": i, "tags": [i % 3]}),
                )])
                .await
                .unwrap();
        }
        store
            .commit(vec![Write::delete(path("k/07"))])
            .await
            .unwrap();
        // dropped here without shutdown
    }
    let store = open(dir.path());
    assert_eq!(store.head_seq(), 51);
    assert!(store.get(&path("k/07")).unwrap().is_none());
    let q = hearth_protocol::Query::collection(coll("k"))
        .order("n", hearth_protocol::Direction::Desc)
        .limit(3);
    assert_eq!(ids(&store.query(&q).unwrap().documents), ["49", "48", "47"]);
    let q = hearth_protocol::Query::collection(coll("k")).filter(
        "tags",
        hearth_protocol::Op::ArrayContains,
        1,
    );
    assert_eq!(store.query(&q).unwrap().documents.len(), 16); // 1,4,..,49 minus 7
    let log = store.changelog().read_from(0, 1000).unwrap();
    assert_eq!(log.len(), 51);
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let r = store.commit(vec![set("k/new", json!({}))]).await.unwrap();
    assert_eq!(r.seq, 52, "numbering resumes after restart");
    let report = store.check_consistency().unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.documents, 50);
}

#[tokio::test]
async fn shutdown_refuses_new_commits_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.commit(vec![set("s/1", json!({}))]).await.unwrap();
    store.shutdown().await.unwrap();
    let e = store.commit(vec![set("s/2", json!({}))]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(store.get(&path("s/1")).unwrap().is_some());
}

#[tokio::test]
async fn export_import_round_trip_keeps_documents_and_create_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .commit(vec![
            set("a/1", json!({"x": 1})),
            set("a/1/sub/s", json!({"y": [1, {"z": 2}]})),
            set("__users__/u1", json!({"email": "a@b"})),
        ])
        .await
        .unwrap();
    store
        .commit(vec![set(
            "a/0",
            json!({"t": {"$timestamp": "2024-01-01T00:00:00Z"}}),
        )])
        .await
        .unwrap();
    let exported: Vec<_> = store.export().collect::<Result<_, _>>().unwrap();
    assert_eq!(exported.len(), 4);
    let mut sorted = exported.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(sorted, exported, "export is in path order");
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    assert_eq!(other.import(exported.clone()).await.unwrap(), 4);
    let again: Vec<_> = other.export().collect::<Result<_, _>>().unwrap();
    for (a, b) in exported.iter().zip(&again) {
        assert_eq!(a.path, b.path);
        assert_eq!(a.fields, b.fields);
        assert_eq!(a.create_time, b.create_time);
    }
    // imported documents are indexed and in the changelog
    let q = hearth_protocol::Query::collection(coll("a")).filter("x", hearth_protocol::Op::Eq, 1);
    assert_eq!(other.query(&q).unwrap().documents.len(), 1);
    assert_eq!(
        other.changelog().read_from(0, 10).unwrap()[0].changes.len(),
        4
    );
}

#[tokio::test]
async fn backup_while_running_restores_by_opening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..20 {
        store
            .commit(vec![set(&format!("b/{i}"), json!({"i": i}))])
            .await
            .unwrap();
    }
    let backup = tempfile::tempdir().unwrap();
    let target = backup.path().join("snap");
    let info = store.backup_to(&target).unwrap();
    assert_eq!(info.seq, 20);
    assert_eq!(info.documents, 20);
    store.commit(vec![set("b/after", json!({}))]).await.unwrap();
    let restored = Store::open(StoreConfig::new(&target)).unwrap();
    assert_eq!(restored.head_seq(), 20);
    assert!(restored.get(&path("b/after")).unwrap().is_none());
    let q = hearth_protocol::Query::collection(coll("b")).filter("i", hearth_protocol::Op::Ge, 15);
    assert_eq!(restored.query(&q).unwrap().documents.len(), 5);
    assert_eq!(restored.changelog().read_from(0, 100).unwrap().len(), 20);
    assert!(matches!(
        store.backup_to(&target),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn list_pages_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let writes: Vec<Write> = (0..25)
        .map(|i| set(&format!("l/{i:02}"), json!({})))
        .collect();
    store.commit(writes).await.unwrap();
    store
        .commit(vec![set("l/05/sub/x", json!({}))])
        .await
        .unwrap();
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let page = store.list(&coll("l"), 10, token.as_deref()).unwrap();
        seen.extend(ids(&page.documents));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).map(|i| format!("{i:02}")).collect::<Vec<_>>());
    assert_eq!(
        store.list(&coll("l"), 0, None).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn relaxed_durability_commits_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_with(dir.path(), |c| {
            c.durability = hearth_store::Durability::Relaxed {
                flush_interval: std::time::Duration::from_millis(20),
            }
        });
        for i in 0..10 {
            store
                .commit(vec![set(&format!("r/{i}"), json!({}))])
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let store = open(dir.path());
    assert_eq!(store.head_seq(), 10);
}

#[tokio::test]
async fn consistency_check_passes_after_a_mixed_workload_with_composite_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(
        "w",
        hearth_store::IndexScope::Collection,
        &[
            ("a", hearth_store::IndexMode::Asc),
            ("tags", hearth_store::IndexMode::ArrayContains),
        ],
    );
    let store = open_with(dir.path(), |c| c.indexes.composite = vec![idx]);
    wait_ready(&store).await;
    for i in 0..60 {
        let p = format!("w/{}", i % 13);
        let w = match i % 4 {
            0 => set(
                &p,
                json!({"a": i, "tags": [i % 3, "x"], "m": {"k": [1, 2]}}),
            ),
            1 => Write::delete(path(&p)),
            2 => set(&p, json!({"a": "s", "tags": []})),
            _ => set(&p, json!({"b": null})),
        };
        store.commit(vec![w]).await.unwrap();
    }
    let report = store.check_consistency().unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.head, 60);
}

#[tokio::test]
async fn engine_failure_fails_the_whole_group_with_internal_and_rolls_back_the_seq() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(hearth_store::FaultyEngine::new(std::sync::Arc::new(
        hearth_store::SledEngine::open(dir.path(), 1 << 24).unwrap(),
    )));
    let store = Store::open_with_engine(StoreConfig::new(dir.path()), engine.clone()).unwrap();
    store.commit(vec![set("f/1", json!({}))]).await.unwrap();
    engine.fail_writes(true);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![set(&format!("f/x{i}"), json!({}))]).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().code(), ErrorCode::Internal);
    }
    assert_eq!(store.head_seq(), 1);
    engine.fail_writes(false);
    let r = store.commit(vec![set("f/2", json!({}))]).await.unwrap();
    assert_eq!(r.seq, 2, "no gap after a failed group");
    assert!(store.get(&path("f/x0")).unwrap().is_none());
    let log = store.changelog().read_from(0, 10).unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(store.check_consistency().unwrap().is_consistent());
}

/// The default engine stack (write-ahead log over sled, as `Store::open`
/// builds it in `dir`) behind a [`hearth_store::FaultyEngine`].
fn faulty_default_stack(dir: &std::path::Path) -> std::sync::Arc<hearth_store::FaultyEngine> {
    let sled = hearth_store::SledEngine::open(dir, 1 << 24).unwrap();
    let (wal, _) =
        hearth_store::WalEngine::open(&dir.join("wal"), std::sync::Arc::new(sled)).unwrap();
    std::sync::Arc::new(hearth_store::FaultyEngine::new(std::sync::Arc::new(wal)))
}

fn assert_refused_until_restart(e: StoreError) {
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("failed to sync") && m.contains("restart"),
        "the message says what happened and what to do: {m}"
    );
}

#[tokio::test]
async fn a_failed_flush_fails_its_commit_and_stops_every_later_write_until_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let engine = faulty_default_stack(dir.path());
    let store = Store::open_with_engine(StoreConfig::new(dir.path()), engine.clone()).unwrap();
    store
        .commit(vec![set("f/1", json!({"n": 1}))])
        .await
        .unwrap();
    assert_eq!(store.storage_failure(), None);

    engine.fail_flushes(true);
    let announced = std::sync::Arc::new(AtomicBool::new(false));
    let a = std::sync::Arc::clone(&announced);
    let e = store
        .commit_with(
            vec![set("f/2", json!({"n": 2}))],
            Box::new(move |_| a.store(true, Ordering::SeqCst)),
        )
        .await
        .expect_err("a commit whose flush failed is never acknowledged");
    assert_eq!(e.code(), ErrorCode::Internal, "{e}");
    assert!(!announced.load(Ordering::SeqCst), "no on-durable hook ran");
    let failure = store.storage_failure().expect("the store is failed");
    assert!(failure.contains("restart"), "{failure}");
    let failed_head = store.head_seq();
    assert_eq!(
        failed_head, 2,
        "the commit was applied (visible, not durable)"
    );

    // The disk is fine again, but nothing proves the lost flush's data durable:
    // every kind of write stays refused.
    engine.fail_flushes(false);
    assert_refused_until_restart(store.commit(vec![set("f/3", json!({}))]).await.unwrap_err());
    let hook: hearth_store::OnDurable = Box::new(|_| panic!("a refused commit announced"));
    assert_refused_until_restart(
        store
            .commit_with(vec![set("f/3", json!({}))], hook)
            .await
            .unwrap_err(),
    );
    let tx = store.transaction();
    assert!(tx.get(&path("f/1")).unwrap().is_some(), "reads continue");
    assert_refused_until_restart(tx.commit(vec![set("f/3", json!({}))]).await.unwrap_err());
    let batch: Vec<Write> = (0..10)
        .map(|i| set(&format!("f/b{i}"), json!({})))
        .collect();
    assert_refused_until_restart(store.commit(batch).await.unwrap_err());
    assert_refused_until_restart(
        store
            .commit(vec![set("__users__/u1", json!({"email": "a@b"}))])
            .await
            .unwrap_err(),
    );
    let imported = hearth_protocol::Document {
        path: path("f/imported"),
        fields: map(json!({})),
        create_time: hearth_protocol::Timestamp(1),
        update_time: hearth_protocol::Timestamp(1),
        version: 0,
    };
    assert_refused_until_restart(store.import(vec![imported]).await.unwrap_err());
    assert_eq!(store.head_seq(), failed_head, "nothing was applied");
    assert_eq!(
        store.get(&path("f/2")).unwrap().unwrap().fields,
        map(json!({"n": 2}))
    );

    // A restart: the same directory opened again by the default stack.
    drop(store);
    drop(engine);
    let store = open(dir.path());
    assert_eq!(store.storage_failure(), None);
    assert!(store.check_consistency().unwrap().is_consistent());
    assert_eq!(store.head_seq(), failed_head);
    assert!(store.get(&path("f/3")).unwrap().is_none());
    assert!(store.get(&path("__users__/u1")).unwrap().is_none());
    let r = store.commit(vec![set("f/3", json!({}))]).await.unwrap();
    assert_eq!(
        r.seq,
        failed_head + 1,
        "accepting commits again, with no gap"
    );
    let log = store.changelog().read_from(0, 10).unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(store.check_consistency().unwrap().is_consistent());
}

#[tokio::test]
async fn a_failed_periodic_flush_in_relaxed_mode_stops_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = faulty_default_stack(dir.path());
    let mut config = StoreConfig::new(dir.path());
    config.durability = hearth_store::Durability::Relaxed {
        flush_interval: std::time::Duration::from_millis(20),
    };
    let store = Store::open_with_engine(config, engine.clone()).unwrap();
    engine.fail_flushes(true);
    // Relaxed mode acknowledges before the flush.
    store.commit(vec![set("r/1", json!({}))]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.storage_failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic flush never failed the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    engine.fail_flushes(false);
    assert_refused_until_restart(store.commit(vec![set("r/2", json!({}))]).await.unwrap_err());
    assert!(store.get(&path("r/1")).unwrap().is_some(), "reads continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_with_announces_once_durable_before_the_live_changelog_sees_it() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let announced = Arc::new(AtomicU64::new(0));
    // A live reader notes, for each record, what had been announced when
    // it arrived: always that record's commit at least. (A stream reads
    // the disk until it has caught up and then the live broadcast; only the
    // live part is ordered after the hook, so the reader first catches up
    // on a warm-up commit and gets time to switch to live.)
    let mut live = store.changelog().subscribe(store.head_seq());
    let warm = store.commit(vec![set("rooms/w", json!({}))]).await.unwrap();
    let seen = Arc::clone(&announced);
    let (ready, caught_up) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let rec = live.next().await.expect("stream").expect("record");
        assert_eq!(rec.seq, warm.seq);
        let _ = ready.send(());
        let mut at_receipt = Vec::new();
        while at_receipt.len() < 20 {
            let rec = live.next().await.expect("stream").expect("record");
            at_receipt.push((rec.seq, seen.load(Ordering::SeqCst)));
        }
        at_receipt
    });
    caught_up.await.expect("the reader caught up");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 1..=20u64 {
        let a = Arc::clone(&announced);
        let hook: hearth_store::OnDurable = Box::new(move |r| a.store(r.seq, Ordering::SeqCst));
        let write = vec![set("rooms/r1", json!({"i": i}))];
        let r = if i % 2 == 0 {
            store.commit_with(write, hook).await.unwrap()
        } else {
            store.transaction().commit_with(write, hook).await.unwrap()
        };
        assert_eq!(announced.load(Ordering::SeqCst), r.seq);
    }
    for (seq, announced_then) in reader.await.expect("reader") {
        assert!(
            announced_then >= seq,
            "commit {seq} reached the live changelog before its hook ran"
        );
    }
    // A failed commit announces nothing.
    let a = Arc::clone(&announced);
    let before = announced.load(Ordering::SeqCst);
    let e = store
        .commit_with(
            vec![Write::create(path("rooms/r1"), map(json!({})))],
            Box::new(move |r| a.store(r.seq, Ordering::SeqCst)),
        )
        .await;
    assert!(e.is_err());
    assert_eq!(announced.load(Ordering::SeqCst), before);
    // A panicking hook does not take the committer down.
    let r = store
        .commit_with(
            vec![set("rooms/r2", json!({}))],
            Box::new(|_| panic!("a buggy hook")),
        )
        .await
        .expect("the commit itself succeeds");
    let next = store
        .commit(vec![set("rooms/r3", json!({}))])
        .await
        .expect("the committer still runs");
    assert_eq!(next.seq, r.seq + 1);
}
