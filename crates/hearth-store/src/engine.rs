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

/// How long opening waits for sled's directory lock (see [`SledEngine::open`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl SledEngine {
    /// Opens (or creates) the database in `dir`.
    ///
    /// sled releases its directory lock only when the last of its background
    /// threads lets go of a closed database, which can trail the drop by a
    /// moment (sled's own test suite blocks on the lock for this reason). So
    /// while the lock is held, opening retries for up to [`LOCK_WAIT`]: a
    /// backup can be opened right after it was written, and a store reopened
    /// in the same process. A directory that another live process holds
    /// still fails, after that wait, with sled's "could not acquire lock".
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<SledEngine, EngineError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes)
            // The committer flushes explicitly (strict) or on its own timer (relaxed).
            .flush_every_ms(None);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match config.open() {
                Ok(db) => return Ok(SledEngine { db }),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(EngineError(format!("cannot open {}: {e}", dir.display()))),
            }
        }
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

/// An engine whose reads, writes and flushes fail on demand: the errors a
/// healthy disk never produces, for tests of every layer above the engine
/// (the committer's rollback, its fail-stop after a failed fsync, a
/// subscription whose re-read fails). Wraps any engine; faults are off until
/// switched on.
pub struct FaultyEngine {
    inner: std::sync::Arc<dyn Engine>,
    fail_reads: std::sync::atomic::AtomicBool,
    fail_writes: std::sync::atomic::AtomicBool,
    fail_flushes: std::sync::atomic::AtomicBool,
}

impl FaultyEngine {
    pub fn new(inner: std::sync::Arc<dyn Engine>) -> FaultyEngine {
        FaultyEngine {
            inner,
            fail_reads: Default::default(),
            fail_writes: Default::default(),
            fail_flushes: Default::default(),
        }
    }

    /// While on, `get` and `scan` fail.
    pub fn fail_reads(&self, on: bool) {
        self.fail_reads
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// While on, `apply` fails (nothing of the batch is applied).
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// While on, `flush` fails without calling the inner engine's (what an
    /// fsync that reports an I/O error looks like to the store: the batch
    /// was applied, its durability is unknown).
    pub fn fail_flushes(&self, on: bool) {
        self.fail_flushes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn fault(flag: &std::sync::atomic::AtomicBool) -> Result<(), EngineError> {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EngineError("injected failure".into()));
        }
        Ok(())
    }
}

impl Engine for FaultyEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Self::fault(&self.fail_reads)?;
        self.inner.get(key)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> KvIter<'_> {
        match Self::fault(&self.fail_reads) {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(()) => self.inner.scan(start, end, reverse),
        }
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
        Self::fault(&self.fail_writes)?;
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), EngineError> {
        Self::fault(&self.fail_flushes)?;
        self.inner.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_waits_for_a_lock_that_is_being_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SledEngine::open(dir.path(), 1 << 20).expect("open");
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledEngine::open(dir.path(), 1 << 20);
        assert!(second.is_ok(), "{:?}", second.err().map(|e| e.0));
        let _ = holder.join();
    }

    #[test]
    fn a_lock_that_stays_held_fails_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = SledEngine::open(dir.path(), 1 << 20).expect("open");
        let started = std::time::Instant::now();
        let second = SledEngine::open(dir.path(), 1 << 20);
        let Err(e) = second else {
            panic!("a held directory opened twice");
        };
        assert!(e.0.contains("could not acquire lock"), "{}", e.0);
        assert!(started.elapsed() >= LOCK_WAIT);
    }
}
