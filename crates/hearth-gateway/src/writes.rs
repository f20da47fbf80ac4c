//! Writes over the socket, applied at most once per mutation id.
//!
//! A `write` or `transaction` frame carries a client-chosen `mutation_id`.
//! The gateway commits, in the *same* store commit as the client's writes, a
//! system document `__mutations__/<sha256(principal key, mutation id)>` with
//! a must-not-exist precondition. The record is therefore durable exactly
//! when the writes are, survives reconnects and restarts, and a retry either
//! finds it (answered with the original result, `duplicate: true`) or fails
//! its precondition in the commit (then we read it and answer the same way).
//! The original [`CommitResult`] is rebuilt from the record: its commit seq
//! is the record's `version`, its commit time the record's `update_time`,
//! and the record lists the written paths and which were deletes.
//!
//! The record also holds a digest of the request (its reads and writes), so
//! that reusing a mutation id for *different* writes is refused
//! (`invalid-argument`) instead of answered with the first result while the
//! new writes are silently dropped. Records written before the digest
//! existed have none and match any retry.
//!
//! A record proves a write durable only while the store is healthy. After a
//! failed flush the commit that failed stays applied (and its record
//! readable) without being known durable, so a storage failure is never
//! answered from a record: the failed commit's own error stands, and while
//! the store is failed every write, a retry included, is `unavailable`
//! (see `Store::storage_failure`).
//!
//! Every write is checked by `AccessControl::authorize_writes` (the check
//! REST uses too) against the state it will be applied to (earlier writes of
//! the same batch included), inside a store transaction so a concurrent
//! change between check and commit aborts and retries instead of slipping
//! past the rules. A transaction's reads are `get`-checked before their
//! versions are compared, so an `aborted` answer never reveals the version
//! of a document the caller may not read.

use hearth_protocol::write::MAX_WRITES_PER_COMMIT;
use hearth_protocol::ws::TransactionRead;
use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::query::Op;
use hearth_protocol::{
    CollectionPath, CommitResult, DocPath, Document, ErrorBody, ErrorCode, Map, Query, Timestamp,
    Value, Write, WriteKind, WriteResult,
};
use hearth_rules::{AccessControl, Principal};
use hearth_store::{OnDurable, Store, StoreError};
use sha2::{Digest, Sha256};

use crate::backend::{access_error, store_error, StoreLookup};

/// The system collection holding mutation records.
pub const MUTATIONS_COLLECTION: &str = "__mutations__";
/// Longest accepted mutation id, in bytes.
pub const MAX_MUTATION_ID_BYTES: usize = 128;
/// Writes per frame: as many as a REST batch (the store takes the mutation
/// record beside them, see `hearth_store::MAX_OPS_PER_COMMIT`).
pub const MAX_WRITES_PER_FRAME: usize = MAX_WRITES_PER_COMMIT;
/// Attempts of the check-then-commit transaction before answering `aborted`
/// (concurrent writes to the same document conflict; each retry waits a
/// little longer, with jitter, so that contenders spread out).
const MAX_ATTEMPTS: u32 = 12;

/// Where the record of `mutation_id` for `p` lives.
pub fn mutation_record_path(p: &Principal, mutation_id: &str) -> DocPath {
    let mut h = Sha256::new();
    h.update(p.stable_key().as_bytes());
    h.update([0u8]);
    h.update(mutation_id.as_bytes());
    let id = hex::encode(h.finalize());
    CollectionPath::parse(MUTATIONS_COLLECTION)
        .and_then(|c| c.doc(&id))
        .expect("a hex id in a fixed collection is a valid path")
}

/// The digest of a request (hex SHA-256 of the JSON of its reads and
/// writes; maps serialize in key order, so equal requests digest equally).
fn request_digest(reads: &[TransactionRead], writes: &[Write]) -> String {
    let mut h = Sha256::new();
    // Serializing plain data to a Vec cannot fail; an empty digest would
    // only make every retry match, as for records without one.
    h.update(serde_json::to_vec(&(reads, writes)).unwrap_or_default());
    hex::encode(h.finalize())
}

fn record_fields(p: &Principal, mutation_id: &str, digest: &str, writes: &[Write]) -> Map {
    let mut m = Map::new();
    m.insert("principal".into(), Value::from(p.stable_key()));
    m.insert("mutation_id".into(), Value::from(mutation_id));
    m.insert("digest".into(), Value::from(digest));
    // Indexed (a system field the services query), for pruning by age.
    m.insert("created_at".into(), Value::Timestamp(Timestamp::now()));
    m.insert(
        "paths".into(),
        Value::Array(
            writes
                .iter()
                .map(|w| Value::from(w.path.as_string()))
                .collect(),
        ),
    );
    m.insert(
        "deletes".into(),
        Value::Array(
            writes
                .iter()
                .map(|w| Value::Bool(matches!(w.kind, WriteKind::Delete)))
                .collect(),
        ),
    );
    m
}

/// The answer to a retry that found the mutation's record: the original
/// result, unless the record was made for a different request.
fn duplicate_of(
    record: &Document,
    mutation_id: &str,
    digest: &str,
) -> Result<(CommitResult, bool), ErrorBody> {
    match record.fields.get("digest").and_then(Value::as_str) {
        Some(stored) if stored != digest => Err(ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!(
                "mutation_id {mutation_id:?} was already used for different writes; \
                 use a new mutation_id for a new mutation"
            ),
        )),
        // Same request, or a record from before digests: the original result.
        _ => Ok((result_from_record(record)?, true)),
    }
}

/// Rebuilds the original result from a mutation record.
fn result_from_record(record: &Document) -> Result<CommitResult, ErrorBody> {
    let bad = || {
        ErrorBody::new(
            ErrorCode::Internal,
            format!("malformed mutation record {}", record.path),
        )
    };
    let paths = record
        .fields
        .get("paths")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let deletes = record
        .fields
        .get("deletes")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let mut results = Vec::with_capacity(paths.len());
    for (p, d) in paths.iter().zip(deletes) {
        let path = p
            .as_str()
            .and_then(|s| DocPath::parse(s).ok())
            .ok_or_else(bad)?;
        let deleted = d.as_bool().ok_or_else(bad)?;
        results.push(WriteResult {
            path,
            version: if deleted { None } else { Some(record.version) },
            update_time: record.update_time,
        });
    }
    Ok(CommitResult {
        seq: record.version,
        commit_time: record.update_time,
        results,
    })
}

/// Validates the frame's shape before any store work.
pub(crate) fn validate(mutation_id: &str, writes: &[Write]) -> Result<(), ErrorBody> {
    if mutation_id.is_empty() || mutation_id.len() > MAX_MUTATION_ID_BYTES {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!("mutation_id must be 1 to {MAX_MUTATION_ID_BYTES} bytes"),
        ));
    }
    if writes.is_empty() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgument,
            "writes must not be empty",
        ));
    }
    if writes.len() > MAX_WRITES_PER_FRAME {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!(
                "at most {MAX_WRITES_PER_FRAME} writes per frame, got {}",
                writes.len()
            ),
        ));
    }
    for w in writes {
        w.validate()
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()))?;
    }
    Ok(())
}

/// Answers the writer with a new commit's (client-visible) result, from the
/// committer's thread, before the commit reaches the fan-out (see
/// `Store::commit_with`): so `write_ok` leaves before the `changes` frames
/// that carry the commit, on the writer's own connection too.
pub(crate) type Announce = Arc<dyn Fn(CommitResult) + Send + Sync>;

/// The on-durable hook of one commit attempt: the client's share of the
/// result (without the mutation record's) goes to `announce`.
fn announcing(announce: &Option<Announce>, client_writes: usize) -> Option<OnDurable> {
    let announce = announce.clone()?;
    Some(Box::new(move |result: &CommitResult| {
        let mut result = result.clone();
        result.results.truncate(client_writes);
        announce(result);
    }))
}

/// Applies a write or transaction frame once. Returns the result and
/// whether it was a duplicate. A new commit's result is also given to
/// `announce` (if any) as soon as it is durable; duplicates and errors only
/// come back as the return value.
pub(crate) async fn apply_once(
    store: &Store,
    access: &AccessControl,
    p: &Principal,
    mutation_id: &str,
    reads: &[TransactionRead],
    writes: Vec<Write>,
    announce: Option<Announce>,
) -> Result<(CommitResult, bool), ErrorBody> {
    validate(mutation_id, &writes)?;
    let record_path = mutation_record_path(p, mutation_id);
    let digest = request_digest(reads, &writes);
    // A failed store may hold records of commits that were never durable.
    if let Some(failure) = store.storage_failure() {
        return Err(store_error(StoreError::Unavailable(failure)));
    }
    if let Some(record) = store.get(&record_path).map_err(store_error)? {
        return duplicate_of(&record, mutation_id, &digest);
    }
    let mut all = writes.clone();
    all.push(Write::create(
        record_path.clone(),
        record_fields(p, mutation_id, &digest, &writes),
    ));
    if p.is_admin() && reads.is_empty() {
        // Nothing to check against a snapshot: a plain commit, whose
        // must-not-exist record still makes it apply once.
        let committed = match announcing(&announce, writes.len()) {
            Some(hook) => store.commit_with(all, hook).await,
            None => store.commit(all).await,
        };
        return match committed {
            Ok(mut result) => {
                result.results.truncate(writes.len());
                Ok((result, false))
            }
            Err(e) => duplicate_or(store, &record_path, mutation_id, &digest, e).await,
        };
    }
    let mut last_abort = None;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            hearth_store::contention_backoff(attempt).await;
        }
        let tx = store.transaction();
        for r in reads {
            let current = tx.get(&r.path).map_err(store_error)?;
            if !p.is_admin() {
                access
                    .check_get(p, &r.path, current.as_ref(), &StoreLookup(store))
                    .map_err(access_error)?;
            }
            if current.as_ref().map(|d| d.version) != r.version {
                return Err(ErrorBody::new(
                    ErrorCode::Aborted,
                    format!(
                        "transaction read {} at version {:?} but it is now at {:?}; re-read and retry",
                        r.path,
                        r.version,
                        current.map(|d| d.version)
                    ),
                ));
            }
        }
        check_writes(store, access, p, &tx, &writes)?;
        let committed = match announcing(&announce, writes.len()) {
            Some(hook) => tx.commit_with(all.clone(), hook).await,
            None => tx.commit(all.clone()).await,
        };
        match committed {
            Ok(mut result) => {
                // The record's own result is ours, not the client's.
                result.results.truncate(writes.len());
                return Ok((result, false));
            }
            Err(StoreError::Aborted(msg)) => last_abort = Some(msg),
            Err(e) => return duplicate_or(store, &record_path, mutation_id, &digest, e).await,
        }
    }
    Err(ErrorBody::new(
        ErrorCode::Aborted,
        format!(
            "too much contention, retry later ({})",
            last_abort.unwrap_or_default()
        ),
    ))
}

/// How long a mutation record is kept. A retry of the same mutation id
/// within this window is answered with the original result; a client that
/// retries later than this (it has been offline a day with the write
/// queued) has it applied again. Documented in PROTOCOL.md.
pub const MUTATION_RECORD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the pruner looks for expired mutation records.
pub const MUTATION_PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);
const PRUNE_BATCH: u32 = 400;

/// Deletes the mutation records older than `ttl` (a few hundred per
/// commit); returns how many it deleted.
pub async fn prune_mutation_records(store: &Store, ttl: Duration) -> Result<usize, StoreError> {
    let ttl_nanos = i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX);
    let cutoff = Timestamp::from_nanos(Timestamp::now().nanos().saturating_sub(ttl_nanos));
    let collection = CollectionPath::parse(MUTATIONS_COLLECTION)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let mut deleted = 0;
    loop {
        let query = Query::collection(collection.clone())
            .filter("created_at", Op::Lt, Value::Timestamp(cutoff))
            .limit(PRUNE_BATCH);
        let expired = store.query(&query)?.documents;
        if expired.is_empty() {
            break;
        }
        let writes: Vec<Write> = expired
            .iter()
            .map(|d| Write::delete(d.path.clone()))
            .collect();
        deleted += writes.len();
        store.commit(writes).await?;
        if expired.len() < PRUNE_BATCH as usize {
            break;
        }
    }
    Ok(deleted)
}

/// Runs [`prune_mutation_records`] every `every` until the store shuts down.
pub fn spawn_mutation_pruner(
    store: Store,
    ttl: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match prune_mutation_records(&store, ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned expired mutation records"),
                Err(StoreError::Unavailable(_)) => break, // the store shut down
                Err(e) => tracing::warn!(error = %e, "pruning mutation records failed"),
            }
        }
    })
}

/// After a failed commit: if the mutation's record exists, a concurrent
/// retry of the same mutation won and its result is ours (a duplicate);
/// otherwise the commit's error stands. A storage failure always stands:
/// the record of a commit whose flush failed is readable but not durable,
/// so answering from it would acknowledge a write that may be lost.
async fn duplicate_or(
    store: &Store,
    record_path: &DocPath,
    mutation_id: &str,
    digest: &str,
    error: StoreError,
) -> Result<(CommitResult, bool), ErrorBody> {
    if matches!(error, StoreError::Internal(_) | StoreError::Unavailable(_)) {
        return Err(store_error(error));
    }
    // A commit refused because the record exists may have lost to a retry
    // committed in the same group, which becomes readable a moment later.
    let lost_to_a_retry = matches!(&error, StoreError::AlreadyExists(p) if p == record_path);
    let tries = if lost_to_a_retry { 200 } else { 1 };
    for _ in 0..tries {
        if let Ok(Some(record)) = store.get(record_path) {
            return duplicate_of(&record, mutation_id, digest);
        }
        if lost_to_a_retry {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Err(store_error(error))
}

/// Access checks for every write, each against the state the earlier writes
/// of the batch leave (the one shared write check of `hearth-rules`).
fn check_writes(
    store: &Store,
    access: &AccessControl,
    p: &Principal,
    tx: &hearth_store::Transaction,
    writes: &[Write],
) -> Result<(), ErrorBody> {
    access
        .authorize_writes(
            p,
            writes,
            Timestamp::now(),
            &mut |path| tx.get(path).map_err(|e| e.to_string()),
            &StoreLookup(store),
        )
        .map_err(|e| ErrorBody::new(e.code(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_mutation_records_are_pruned_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(hearth_store::config::StoreConfig::new(dir.path())).expect("store");
        let access = AccessControl::allow_all();
        let p = Principal::user("u");
        let w = |i: u32| {
            vec![Write::set(
                DocPath::parse(&format!("c/d{i}")).expect("path"),
                Map::new(),
            )]
        };
        for i in 0..3 {
            apply_once(&store, &access, &p, &format!("m{i}"), &[], w(i), None)
                .await
                .expect("applies");
        }
        // Nothing is older than an hour.
        assert_eq!(
            prune_mutation_records(&store, Duration::from_secs(3600))
                .await
                .expect("prunes"),
            0
        );
        // Everything is older than zero seconds.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            prune_mutation_records(&store, Duration::ZERO)
                .await
                .expect("prunes"),
            3
        );
        let left = store
            .query(&Query::collection(
                CollectionPath::parse(MUTATIONS_COLLECTION).expect("path"),
            ))
            .expect("query");
        assert!(left.documents.is_empty());
        // A pruned mutation id is applied again (documented trade-off).
        let (_, duplicate) = apply_once(&store, &access, &p, "m0", &[], w(0), None)
            .await
            .expect("applies");
        assert!(!duplicate);
    }

    #[tokio::test]
    async fn a_reused_mutation_id_with_different_writes_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(hearth_store::config::StoreConfig::new(dir.path())).expect("store");
        let access = AccessControl::allow_all();
        let p = Principal::user("u");
        let w = |path: &str| vec![Write::set(DocPath::parse(path).expect("path"), Map::new())];
        let (first, duplicate) = apply_once(&store, &access, &p, "m", &[], w("c/a"), None)
            .await
            .expect("applies");
        assert!(!duplicate);
        // The same writes: the original result.
        let (again, duplicate) = apply_once(&store, &access, &p, "m", &[], w("c/a"), None)
            .await
            .expect("duplicate");
        assert!(duplicate);
        assert_eq!(again, first);
        // Different writes under the same id: refused, nothing applied.
        let e = apply_once(&store, &access, &p, "m", &[], w("c/b"), None)
            .await
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("different writes"), "{}", e.message);
        assert!(store
            .get(&DocPath::parse("c/b").expect("path"))
            .expect("get")
            .is_none());
        // The same writes as a transaction with reads are a different request.
        let reads = [TransactionRead {
            path: DocPath::parse("c/a").expect("path"),
            version: Some(first.seq),
        }];
        let e = apply_once(&store, &access, &p, "m", &reads, w("c/a"), None)
            .await
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[tokio::test]
    async fn a_record_without_a_digest_matches_any_retry() {
        // Records stored before digests existed answer every retry with
        // the original result, as they always did.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(hearth_store::config::StoreConfig::new(dir.path())).expect("store");
        let access = AccessControl::allow_all();
        let p = Principal::user("u");
        let w = |path: &str| vec![Write::set(DocPath::parse(path).expect("path"), Map::new())];
        let mut old = record_fields(&p, "m", "", &w("c/a"));
        old.remove("digest");
        let mut all = w("c/a");
        all.push(Write::create(mutation_record_path(&p, "m"), old));
        let committed = store.commit(all).await.expect("commits");
        let (result, duplicate) = apply_once(&store, &access, &p, "m", &[], w("c/other"), None)
            .await
            .expect("duplicate");
        assert!(duplicate);
        assert_eq!(result.seq, committed.seq);
    }

    #[test]
    fn record_paths_separate_principals_and_ids() {
        let a = mutation_record_path(&Principal::user("u1"), "m1");
        assert_eq!(a, mutation_record_path(&Principal::user("u1"), "m1"));
        assert_ne!(a, mutation_record_path(&Principal::user("u2"), "m1"));
        assert_ne!(a, mutation_record_path(&Principal::user("u1"), "m2"));
        assert_ne!(a, mutation_record_path(&Principal::Admin, "m1"));
        assert!(a.is_system());
    }

    #[test]
    fn a_record_rebuilds_the_commit_result() {
        let writes = vec![
            Write::set(DocPath::parse("c/a").expect("path"), Map::new()),
            Write::delete(DocPath::parse("c/b").expect("path")),
        ];
        let p = Principal::user("u");
        let record = Document {
            path: mutation_record_path(&p, "m"),
            fields: record_fields(&p, "m", &request_digest(&[], &writes), &writes),
            create_time: Timestamp(5),
            update_time: Timestamp(5),
            version: 12,
        };
        let r = result_from_record(&record).expect("rebuilds");
        assert_eq!(r.seq, 12);
        assert_eq!(r.results[0].version, Some(12));
        assert_eq!(r.results[1].version, None);
        assert_eq!(r.results[1].update_time, Timestamp(5));
    }
}
