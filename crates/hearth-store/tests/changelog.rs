//! The changelog contract: order, no gaps, disk → live handoff, lag fallback, TooOld, retention.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use hearth_store::{ChangeKind, ChangelogError, Retention};
use serde_json::json;

async fn next_seq(s: &mut hearth_store::ChangeStream) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stream stalled")
        .expect("stream ended")
        .expect("stream error")
        .seq
}

#[tokio::test]
async fn records_carry_kind_old_and_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .commit(vec![set("c/1", json!({"a": 1}))])
        .await
        .unwrap();
    store
        .commit(vec![set("c/1", json!({"a": 2}))])
        .await
        .unwrap();
    store
        .commit(vec![hearth_protocol::Write::delete(path("c/1"))])
        .await
        .unwrap();
    let log = store.changelog().read_from(0, 10).unwrap();
    let kinds: Vec<_> = log.iter().map(|r| r.changes[0].kind).collect();
    assert_eq!(
        kinds,
        vec![
            ChangeKind::Created,
            ChangeKind::Updated,
            ChangeKind::Deleted
        ]
    );
    assert_eq!(
        log[1].changes[0].old.as_ref().unwrap().fields,
        map(json!({"a": 1}))
    );
    assert_eq!(
        log[1].changes[0].new.as_ref().unwrap().fields,
        map(json!({"a": 2}))
    );
    assert!(log[2].changes[0].new.is_none());
    assert_eq!(store.changelog().read_from(1, 1).unwrap()[0].seq, 2);
    assert!(store.changelog().read_from(3, 10).unwrap().is_empty());
    // serde round trip of a record
    let text = serde_json::to_string(&*log[1]).unwrap();
    let back: hearth_store::CommitRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, *log[1]);
}

#[tokio::test]
async fn subscribe_hands_off_from_disk_to_live_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..300 {
        store
            .commit(vec![set(&format!("d/{i}"), json!({}))])
            .await
            .unwrap();
    }
    let mut stream = store.changelog().subscribe(10);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store
                    .commit(vec![set(&format!("e/{i}"), json!({}))])
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 11..=500 {
        assert_eq!(next_seq(&mut stream).await, expected);
    }
    writer.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err(),
        "nothing extra"
    );
}

#[tokio::test]
async fn lagging_subscriber_falls_back_to_disk_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), |c| {
        c.durability = hearth_store::Durability::Relaxed {
            flush_interval: Duration::from_millis(50),
        }
    });
    let mut stream = store.changelog().subscribe(0);
    // Go live first.
    store.commit(vec![set("x/0", json!({}))]).await.unwrap();
    assert_eq!(next_seq(&mut stream).await, 1);
    // Overflow the live buffer (capacity 4096) while not reading.
    let mut handles = Vec::new();
    for t in 0..8 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..700 {
                s.commit(vec![set(&format!("x/{t}-{i}"), json!({}))])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let head = store.head_seq();
    assert_eq!(head, 5601);
    for expected in 2..=head {
        assert_eq!(next_seq(&mut stream).await, expected);
    }
}

#[tokio::test]
async fn expired_position_is_too_old_and_retention_prunes_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), |c| {
        c.retention = Retention {
            max_age: None,
            max_commits: Some(10),
        }
    });
    for i in 0..30 {
        store
            .commit(vec![set(&format!("r/{i}"), json!({}))])
            .await
            .unwrap();
    }
    let log = store.changelog();
    for _ in 0..100 {
        if log.oldest() == 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.oldest(), 21);
    assert_eq!(
        log.read_from(5, 10),
        Err(ChangelogError::TooOld { oldest: 21 }).map(|_: ()| vec![])
    );
    assert_eq!(log.read_from(20, 100).unwrap().len(), 10);
    let mut s = log.subscribe(3);
    let first = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.unwrap_err(), ChangelogError::TooOld { oldest: 21 });
    assert!(s.next().await.is_none());
    drop(s);
    drop(log);
    drop(store);
    // oldest survives a restart
    let store = open_with(dir.path(), |c| {
        c.retention = Retention {
            max_age: None,
            max_commits: Some(10),
        }
    });
    assert_eq!(store.changelog().oldest(), 21);
    assert_eq!(store.changelog().head(), 30);
}

#[tokio::test]
async fn retention_prunes_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), |c| {
        c.retention = Retention {
            max_age: Some(Duration::from_millis(300)),
            max_commits: None,
        }
    });
    for i in 0..5 {
        store
            .commit(vec![set(&format!("r/{i}"), json!({}))])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.commit(vec![set("r/new", json!({}))]).await.unwrap();
    let log = store.changelog();
    for _ in 0..100 {
        if log.oldest() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.oldest(), 6);
    assert!(matches!(
        log.read_from(0, 10),
        Err(ChangelogError::TooOld { oldest: 6 })
    ));
    assert_eq!(log.read_from(5, 10).unwrap().len(), 1);
}
