//! The storage engine: an ordered byte key-value store with atomic multi-key
//! batches and a durable flush. The query engine, the committer and the
//! changelog only see [`Engine`], so another engine (PostgreSQL) can follow
//! without touching them.
//!
//! The sled engine keeps everything in sled's default tree; key spaces are
//! separated by a one-byte prefix (see the crate docs), so one `sled::Batch`
//! covers data, index entries, the changelog record and the head sequence.

use std::ops::Bound;
use std::path::Path;

#[derive(Debug, Clone, thiserror::Error)]
#[error("storage engine error: {0}")]
pub struct EngineError(pub String);

/// A set of puts and deletes applied atomically.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub type KvIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), EngineError>> + Send + 'a>;

/// An ordered byte key-value store.
pub trait Engine: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Keys in `[start, end)` bound semantics, ascending or (with `reverse`) descending.
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_>;
    /// Applies every op of the batch or none (also across a crash).
    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError>;
    /// Makes everything applied so far durable (fsync).
    fn flush(&self) -> Result<(), EngineError>;
    /// Approximate bytes on disk.
    fn size_on_disk(&self) -> u64;
}

pub struct SledEngine {
    db: sled::Db,
}

impl SledEngine {
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<SledEngine, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes)
            // The committer flushes explicitly (strict) or on its own timer (relaxed).
            .flush_every_ms(None)
            .open()
            .map_err(|e| EngineError(format!("cannot open {}: {e}", dir.display())))?;
        Ok(SledEngine { db })
    }
}

fn err(e: sled::Error) -> EngineError {
    EngineError(e.to_string())
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        // sled panics on an empty/inverted range; guard it.
        let empty = match (&start, &end) {
            (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
                s > e
                    || (s == e
                        && !(matches!(start, Bound::Included(_))
                            && matches!(end, Bound::Included(_))))
            }
            _ => false,
        };
        if empty {
            return Box::new(std::iter::empty());
        }
        let iter = self.db.range::<Vec<u8>, _>((start, end));
        let map = |r: Result<(sled::IVec, sled::IVec), sled::Error>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)
        };
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(err)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush().map(|_| ()).map_err(err)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
