//! A write-ahead log in front of the engine, so that a durable commit costs
//! one `fdatasync` of an append-only file instead of a full engine flush.
//!
//! Why: sled's `flush()` writes out its page buffers and syncs several files;
//! measured on this machine class it costs milliseconds where a raw
//! `fdatasync` of an appended record costs a fraction of one. Group commit
//! already shares one flush among concurrent writers; this makes the flush
//! itself cheap.
//!
//! How: [`WalEngine`] wraps any [`Engine`]. `apply(batch)` appends the batch
//! as one checksummed record to the current segment file and then applies it
//! to the inner engine (so reads see it at once); `flush()` syncs only the
//! segment. When a segment grows past [`SEGMENT_BYTES`] or ages past
//! [`SEGMENT_AGE`], a new segment is started and a background checkpoint
//! flushes the inner engine, after which the older segments are deleted.
//!
//! Recovery (at open): every remaining segment is replayed, in order, into
//! the inner engine. Replaying a suffix of batches the engine already holds
//! is harmless: every op is a whole-value put or delete, so applying
//! `b_k..b_n` in order over any state that already reflects `b_1..b_j`
//! (`j ≥ k-1`) ends in the state of `b_1..b_n`. A record cut short by a crash
//! at the end of the newest segment was never acknowledged (its sync never
//! returned) and is truncated; a bad record anywhere else is corruption and
//! refuses to open.
//!
//! Record format (little endian): `u32 payload length`, `u32 crc32(payload)`,
//! payload = `u32 op count`, then per op `u8 tag (1 put, 0 delete)`,
//! `u32 key length`, key, and for puts `u32 value length`, value.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::{Engine, EngineError, KvIter, WriteBatch};

/// A segment larger than this is closed and checkpointed.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A segment older than this (and not empty) is closed and checkpointed, so
/// that recovery after a crash replays little.
pub const SEGMENT_AGE: Duration = Duration::from_secs(30);
/// Largest record accepted when reading (a 500-write batch of 1 MiB documents
/// with its index entries and changelog record stays well below).
const MAX_RECORD_BYTES: u32 = 1024 * 1024 * 1024;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> EngineError {
    EngineError(format!("write-ahead log: {what} {}: {e}", path.display()))
}

struct Segment {
    number: u64,
    file: File,
    bytes: u64,
    opened: Instant,
}

struct WalState {
    segment: Segment,
    /// A checkpoint running in the background (at most one at a time).
    checkpoint: Option<std::thread::JoinHandle<()>>,
}

/// An [`Engine`] whose durability comes from its own write-ahead log.
pub struct WalEngine {
    inner: Arc<dyn Engine>,
    dir: PathBuf,
    state: Mutex<WalState>,
}

/// What recovery found, for the startup log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalRecovery {
    pub segments: usize,
    pub batches: u64,
    pub truncated_bytes: u64,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, EngineError> {
    let mut numbers = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(n) = stem.parse::<u64>() {
                numbers.push(n);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

fn encode(batch: &WriteBatch) -> Vec<u8> {
    let body: usize = batch
        .ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut payload = Vec::with_capacity(4 + body);
    payload.extend_from_slice(&(batch.ops.len() as u32).to_le_bytes());
    for (key, value) in &batch.ops {
        payload.push(u8::from(value.is_some()));
        payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
        payload.extend_from_slice(key);
        if let Some(value) = value {
            payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
            payload.extend_from_slice(value);
        }
    }
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    take(input, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn decode_payload(mut payload: &[u8]) -> Option<WriteBatch> {
    let count = take_u32(&mut payload)?;
    let mut batch = WriteBatch::default();
    for _ in 0..count {
        let tag = take(&mut payload, 1)?[0];
        let key_len = take_u32(&mut payload)? as usize;
        let key = take(&mut payload, key_len)?.to_vec();
        match tag {
            1 => {
                let value_len = take_u32(&mut payload)? as usize;
                let value = take(&mut payload, value_len)?.to_vec();
                batch.put(key, value);
            }
            0 => batch.delete(key),
            _ => return None,
        }
    }
    payload.is_empty().then_some(batch)
}

/// Reads the records of one segment: the batches and the byte length of the
/// valid prefix (shorter than the file when its tail is torn or corrupt).
fn read_segment(path: &Path) -> Result<(Vec<WriteBatch>, u64, u64), EngineError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err("cannot read", path, e))?;
    let total = bytes.len() as u64;
    let mut batches = Vec::new();
    let mut input = bytes.as_slice();
    let mut valid = 0u64;
    while !input.is_empty() {
        let mut cursor = input;
        let record = (|| {
            let len = take_u32(&mut cursor)?;
            let crc = take_u32(&mut cursor)?;
            if len > MAX_RECORD_BYTES {
                return None;
            }
            let payload = take(&mut cursor, len as usize)?;
            if crc32fast::hash(payload) != crc {
                return None;
            }
            decode_payload(payload)
        })();
        match record {
            Some(batch) => {
                valid += (input.len() - cursor.len()) as u64;
                input = cursor;
                batches.push(batch);
            }
            None => break,
        }
    }
    Ok((batches, valid, total))
}

fn open_segment(dir: &Path, number: u64) -> Result<Segment, EngineError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err("cannot create", &path, e))?;
    sync_dir(dir)?;
    Ok(Segment {
        number,
        file,
        bytes: 0,
        opened: Instant::now(),
    })
}

impl WalEngine {
    /// Opens the log in `dir` over `inner`, replaying what the inner engine
    /// may not have made durable. After this returns, `inner` holds every
    /// batch that was ever synced to the log.
    pub fn open(
        dir: &Path,
        inner: Arc<dyn Engine>,
    ) -> Result<(WalEngine, WalRecovery), EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let numbers = list_segments(dir)?;
        let mut recovery = WalRecovery {
            segments: numbers.len(),
            ..WalRecovery::default()
        };
        for (i, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            let (batches, valid, total) = read_segment(&path)?;
            if valid < total {
                if i + 1 != numbers.len() {
                    return Err(EngineError(format!(
                        "write-ahead log segment {} is corrupt at byte {valid} (it is not the newest segment, so this is not a torn write)",
                        path.display()
                    )));
                }
                recovery.truncated_bytes = total - valid;
                tracing::warn!(
                    segment = %path.display(),
                    valid,
                    dropped = total - valid,
                    "write-ahead log ends in an incomplete record (a write cut short by a crash, never acknowledged); truncating it"
                );
            }
            for batch in batches {
                inner.apply(batch)?;
                recovery.batches += 1;
            }
        }
        if !numbers.is_empty() {
            inner.flush()?;
            for &number in &numbers {
                let path = segment_path(dir, number);
                std::fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
            }
        }
        let next = numbers.last().map_or(1, |n| n + 1);
        let segment = open_segment(dir, next)?;
        Ok((
            WalEngine {
                inner,
                dir: dir.to_path_buf(),
                state: Mutex::new(WalState {
                    segment,
                    checkpoint: None,
                }),
            },
            recovery,
        ))
    }

    /// Starts a new segment and, in the background, flushes the inner engine
    /// and deletes the older segments. Called with the current segment synced.
    fn rotate(&self, state: &mut WalState) -> Result<(), EngineError> {
        if let Some(handle) = &state.checkpoint {
            if !handle.is_finished() {
                return Ok(()); // keep appending; rotate once the last checkpoint is done
            }
        }
        if let Some(handle) = state.checkpoint.take() {
            let _ = handle.join();
        }
        let old = state.segment.number;
        state.segment = open_segment(&self.dir, old + 1)?;
        let inner = self.inner.clone();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("hearth-wal-checkpoint".into())
            .spawn(move || {
                // Everything in segments <= old was applied before the
                // rotation, so this flush covers it.
                if let Err(e) = inner.flush() {
                    tracing::error!(error = %e, "checkpoint flush failed; keeping the log segments");
                    return;
                }
                match list_segments(&dir) {
                    Ok(numbers) => {
                        for n in numbers.into_iter().filter(|&n| n <= old) {
                            let path = segment_path(&dir, n);
                            if let Err(e) = std::fs::remove_file(&path) {
                                tracing::warn!(segment = %path.display(), error = %e, "cannot remove a checkpointed log segment");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list log segments"),
                }
            })
            .map_err(|e| EngineError(format!("cannot start the checkpoint thread: {e}")))?;
        state.checkpoint = Some(spawned);
        Ok(())
    }

    /// Flushes the inner engine and waits for any running checkpoint (used by
    /// tests and at shutdown; the log stays valid either way).
    pub fn checkpoint_now(&self) -> Result<(), EngineError> {
        let mut state = self.state.lock();
        state
            .segment
            .file
            .sync_data()
            .map_err(|e| io_err("cannot sync", &self.dir, e))?;
        if let Some(handle) = state.checkpoint.take() {
            let _ = handle.join();
        }
        self.rotate(&mut state)?;
        if let Some(handle) = state.checkpoint.take() {
            let _ = handle.join();
        }
        Ok(())
    }
}

impl Engine for WalEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        start: std::ops::Bound<Vec<u8>>,
        end: std::ops::Bound<Vec<u8>>,
        reverse: bool,
    ) -> KvIter<'_> {
        self.inner.scan(start, end, reverse)
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let record = encode(&batch);
        {
            let mut state = self.state.lock();
            let segment = &mut state.segment;
            if let Err(e) = segment.file.write_all(&record) {
                // A partly written record must not stay in front of later
                // ones (recovery stops at the first bad record): cut it off.
                if let Err(cut) = segment.file.set_len(segment.bytes) {
                    tracing::error!(error = %cut, "cannot cut a failed log append; the log is unusable until restart");
                    return Err(EngineError(format!(
                        "write-ahead log: append failed ({e}) and could not be undone ({cut})"
                    )));
                }
                return Err(io_err("cannot append to", &self.dir, e));
            }
            segment.bytes += record.len() as u64;
        }
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), EngineError> {
        let mut state = self.state.lock();
        state
            .segment
            .file
            .sync_data()
            .map_err(|e| io_err("cannot sync", &self.dir, e))?;
        let segment = &state.segment;
        if segment.bytes >= SEGMENT_BYTES
            || (segment.bytes > 0 && segment.opened.elapsed() >= SEGMENT_AGE)
        {
            self.rotate(&mut state)?;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        let log = list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| std::fs::metadata(segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum::<u64>();
        self.inner.size_on_disk() + log
    }
}

impl Drop for WalEngine {
    /// A clean shutdown ends with a checkpoint: the inner engine is flushed
    /// (so it drops with no I/O pending and releases its files at once, and
    /// the next start replays nothing) and the log segments are removed.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Some(handle) = state.checkpoint.take() {
            let _ = handle.join();
        }
        if let Err(e) = state.segment.file.sync_data() {
            tracing::error!(error = %e, "write-ahead log: final sync failed");
            return;
        }
        if let Err(e) = self.inner.flush() {
            tracing::error!(error = %e, "final checkpoint failed; the log will be replayed at the next start");
            return;
        }
        for n in list_segments(&self.dir).unwrap_or_default() {
            let path = segment_path(&self.dir, n);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot remove a checkpointed log segment");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ops::Bound;

    /// An engine that keeps what was applied in memory and what was flushed
    /// separately, so a "crash" (dropping it) loses exactly the unflushed part.
    #[derive(Default)]
    struct MemEngine {
        applied: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        flushed: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    }

    impl MemEngine {
        fn after_crash(&self) -> MemEngine {
            let flushed = self.flushed.lock().clone();
            MemEngine {
                applied: Mutex::new(flushed.clone()),
                flushed: Mutex::new(flushed),
            }
        }
    }

    impl Engine for MemEngine {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
            Ok(self.applied.lock().get(key).cloned())
        }
        fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, _reverse: bool) -> KvIter<'_> {
            let items: Vec<_> = self
                .applied
                .lock()
                .range((start, end))
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect();
            Box::new(items.into_iter())
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
            let mut map = self.applied.lock();
            for (k, v) in batch.ops {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), EngineError> {
            *self.flushed.lock() = self.applied.lock().clone();
            Ok(())
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    fn batch(ops: &[(&str, Option<&str>)]) -> WriteBatch {
        WriteBatch {
            ops: ops
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn value(engine: &dyn Engine, key: &str) -> Option<String> {
        engine
            .get(key.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn records_round_trip_through_the_encoding() {
        let b = batch(&[("a", Some("1")), ("b", None), ("", Some(""))]);
        let record = encode(&b);
        let decoded = decode_payload(&record[8..]).unwrap();
        assert_eq!(decoded.ops, b.ops);
    }

    #[test]
    fn synced_batches_survive_a_crash_that_loses_the_engines_unflushed_state() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemEngine::default());
        let (wal, _) = WalEngine::open(dir.path(), mem.clone()).unwrap();
        wal.apply(batch(&[("a", Some("1")), ("b", Some("2"))]))
            .unwrap();
        wal.apply(batch(&[("a", None), ("c", Some("3"))])).unwrap();
        wal.flush().unwrap();
        assert!(
            mem.flushed.lock().is_empty(),
            "the engine itself never flushed"
        );
        std::mem::forget(wal); // a crash: no clean shutdown

        let crashed = Arc::new(mem.after_crash());
        let (wal, recovery) = WalEngine::open(dir.path(), crashed.clone()).unwrap();
        assert_eq!(recovery.batches, 2);
        assert_eq!(value(&wal, "a"), None);
        assert_eq!(value(&wal, "b").as_deref(), Some("2"));
        assert_eq!(value(&wal, "c").as_deref(), Some("3"));
        // Recovery flushed the engine and dropped the replayed segments.
        assert_eq!(crashed.flushed.lock().len(), 2);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_everything_before_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemEngine::default());
        let (wal, _) = WalEngine::open(dir.path(), mem.clone()).unwrap();
        wal.apply(batch(&[("kept", Some("yes"))])).unwrap();
        wal.flush().unwrap();
        let number = wal.state.lock().segment.number;
        std::mem::forget(wal); // a crash: no clean shutdown
                               // A second record cut short by the crash.
        let torn = encode(&batch(&[("lost", Some("never acknowledged"))]));
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), number))
            .unwrap();
        f.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(f);

        let (wal, recovery) = WalEngine::open(dir.path(), Arc::new(mem.after_crash())).unwrap();
        assert_eq!(recovery.batches, 1);
        assert_eq!(recovery.truncated_bytes, (torn.len() - 3) as u64);
        assert_eq!(value(&wal, "kept").as_deref(), Some("yes"));
        assert_eq!(value(&wal, "lost"), None);
    }

    #[test]
    fn a_clean_shutdown_checkpoints_so_the_next_start_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemEngine::default());
        let (wal, _) = WalEngine::open(dir.path(), mem.clone()).unwrap();
        wal.apply(batch(&[("a", Some("1"))])).unwrap();
        wal.flush().unwrap();
        drop(wal);
        assert_eq!(mem.flushed.lock().len(), 1);
        assert!(list_segments(dir.path()).unwrap().is_empty());
        let (wal, recovery) = WalEngine::open(dir.path(), Arc::new(mem.after_crash())).unwrap();
        assert_eq!(recovery.batches, 0);
        assert_eq!(value(&wal, "a").as_deref(), Some("1"));
    }

    #[test]
    fn corruption_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 1), b"garbage!garbage!").unwrap();
        std::fs::write(segment_path(dir.path(), 2), encode(&batch(&[("a", None)]))).unwrap();
        let err = WalEngine::open(dir.path(), Arc::new(MemEngine::default()))
            .err()
            .unwrap();
        assert!(err.0.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_checkpoint_flushes_the_engine_and_removes_older_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemEngine::default());
        let (wal, _) = WalEngine::open(dir.path(), mem.clone()).unwrap();
        wal.apply(batch(&[("a", Some("1"))])).unwrap();
        wal.checkpoint_now().unwrap();
        assert_eq!(mem.flushed.lock().len(), 1);
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(segments.len(), 1, "{segments:?}");
        // Writes after the checkpoint still land in the (new) log.
        wal.apply(batch(&[("b", Some("2"))])).unwrap();
        wal.flush().unwrap();
        std::mem::forget(wal); // a crash: no clean shutdown
        let (wal, recovery) = WalEngine::open(dir.path(), Arc::new(mem.after_crash())).unwrap();
        assert_eq!(recovery.batches, 1);
        assert_eq!(value(&wal, "a").as_deref(), Some("1"));
        assert_eq!(value(&wal, "b").as_deref(), Some("2"));
    }
}
