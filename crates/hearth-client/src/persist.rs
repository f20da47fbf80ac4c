//! The pending-write queue on disk ([`crate::ClientConfig::persistence`]),
//! so that a write the application made offline survives the application
//! being killed (PROTOCOL.md §13, "Surviving a restart").
//!
//! ## Why a journal
//! The queue changes at three moments per write: it is queued, it first
//! goes on the wire, it is answered. Each is one appended JSON line, so a
//! change costs one small `write` (and, where it must be durable, one
//! `fdatasync`), never a rewrite of the queue. The file is rewritten
//! (compacted) when it is opened and when dead lines outnumber live ones.
//!
//! ## What must be durable, and when
//! - `queued`: before the write shows in a view or goes out (synced).
//! - `sent`: before the write first goes on the wire (synced): from then on
//!   the server may have applied it, so after a restart it is resent as a
//!   write *in doubt*, and one first sent more than 23 hours ago is dropped
//!   instead (the server forgets mutation ids after 24 hours).
//! - `done`: not synced. Losing it only means one resend after a crash,
//!   which the server answers `duplicate: true`.
//!
//! A crash can leave a torn last line; it is ignored when the file is read.
//! One client instance uses a directory at a time (an exclusive lock on
//! `LOCK`, released by the OS when the process dies).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_protocol::Write;
use serde::{Deserialize, Serialize};

use crate::ClientError;

const JOURNAL: &str = "pending-writes.jsonl";
const LOCK: &str = "LOCK";

/// A write first sent longer ago than this is not sent again: the server
/// keeps mutation records for 24 hours (PROTOCOL.md §7), and an hour of
/// margin covers clock skew between client and server.
pub(crate) const RESEND_HORIZON: Duration = Duration::from_secs(23 * 3600);

/// Dead lines tolerated before the journal is compacted (beyond one per
/// live write).
const COMPACT_SLACK: usize = 256;

/// A write as stored: enough to resend it as the same frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredWrite {
    pub mutation_id: String,
    pub writes: Vec<Write>,
    /// When it was first put on the wire (milliseconds since the epoch).
    pub first_sent_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Queued {
        mutation_id: String,
        writes: Vec<Write>,
    },
    Sent {
        mutation_id: String,
        at_ms: u64,
    },
    Done {
        mutation_id: String,
    },
}

/// What [`Journal::open`] found.
pub(crate) struct Restored {
    /// Writes to resend, in the order they were made.
    pub writes: Vec<StoredWrite>,
    /// Writes dropped because they were first sent beyond [`RESEND_HORIZON`].
    pub expired: Vec<StoredWrite>,
}

pub(crate) struct Journal {
    dir: PathBuf,
    file: File,
    /// Held for the journal's lifetime: the lock on `LOCK`.
    _lock: File,
    live: usize,
    lines: usize,
}

pub(crate) fn storage_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Storage(format!("{what} {}: {e}", path.display()))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Replays journal lines into the queue, oldest first. A line that does not
/// parse is skipped (a torn tail after a crash; anything else is logged).
fn replay(lines: impl Iterator<Item = String>) -> Vec<StoredWrite> {
    let mut queue: Vec<Option<StoredWrite>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut pending_line: Option<String> = None;
    for line in lines {
        if let Some(bad) = pending_line.take() {
            tracing::warn!(line = %bad, "skipping an unreadable line in the write journal");
        }
        let record = match serde_json::from_str::<Record>(&line) {
            Ok(record) => record,
            Err(_) => {
                pending_line = Some(line);
                continue;
            }
        };
        match record {
            Record::Queued {
                mutation_id,
                writes,
            } => {
                index.insert(mutation_id.clone(), queue.len());
                queue.push(Some(StoredWrite {
                    mutation_id,
                    writes,
                    first_sent_ms: None,
                }));
            }
            Record::Sent { mutation_id, at_ms } => {
                if let Some(w) = index
                    .get(&mutation_id)
                    .and_then(|&i| queue[i].as_mut())
                    .filter(|w| w.first_sent_ms.is_none())
                {
                    w.first_sent_ms = Some(at_ms);
                }
            }
            Record::Done { mutation_id } => {
                if let Some(i) = index.remove(&mutation_id) {
                    queue[i] = None;
                }
            }
        }
    }
    // A last line that does not parse is the torn tail of a crash: dropped
    // silently (its write was never acknowledged as stored).
    queue.into_iter().flatten().collect()
}

fn encode(record: &Record) -> String {
    // A `Record` is plain data: serializing it cannot fail.
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

fn records_of(w: &StoredWrite) -> Vec<Record> {
    let mut records = vec![Record::Queued {
        mutation_id: w.mutation_id.clone(),
        writes: w.writes.clone(),
    }];
    if let Some(at_ms) = w.first_sent_ms {
        records.push(Record::Sent {
            mutation_id: w.mutation_id.clone(),
            at_ms,
        });
    }
    records
}

/// Creates `dir` if needed and takes its exclusive lock (held as long as
/// the returned file is open, released by the OS if the process dies).
fn lock_dir(dir: &Path) -> Result<File, ClientError> {
    fs::create_dir_all(dir).map_err(|e| storage_error("cannot create", dir, e))?;
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| storage_error("cannot open", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(ClientError::StoreLocked(format!(
            "{} is in use by another client instance",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(storage_error("cannot lock", &lock_path, e)),
    }
}

/// Deletes what a client keeps in `dir` (the queue of pending writes and
/// the cached views) and the directory itself if nothing else is in it.
/// Refused with [`ClientError::StoreLocked`] while a client uses `dir`.
pub(crate) fn clear(dir: &Path) -> Result<(), ClientError> {
    if !dir.exists() {
        return Ok(());
    }
    let lock = lock_dir(dir)?;
    for file in [JOURNAL, &format!("{JOURNAL}.tmp")] {
        match fs::remove_file(dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(storage_error("cannot remove", &dir.join(file), e))
            }
            _ => {}
        }
    }
    let views = dir.join(crate::view_cache::VIEWS_DIR);
    match fs::remove_dir_all(&views) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(storage_error("cannot remove", &views, e))
        }
        _ => {}
    }
    drop(lock);
    let _ = fs::remove_file(dir.join(LOCK));
    let _ = fs::remove_dir(dir);
    Ok(())
}

impl Journal {
    /// Locks `dir` (creating it), reads the queue it holds and compacts the
    /// file. `now_ms` decides which sent writes are past [`RESEND_HORIZON`].
    pub(crate) fn open(dir: &Path, now_ms: u64) -> Result<(Journal, Restored), ClientError> {
        let lock = lock_dir(dir)?;
        let path = dir.join(JOURNAL);
        let stored = match File::open(&path) {
            Ok(file) => replay(BufReader::new(file).lines().map_while(Result::ok)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(storage_error("cannot read", &path, e)),
        };
        let horizon = RESEND_HORIZON.as_millis() as u64;
        let (expired, writes): (Vec<_>, Vec<_>) = stored.into_iter().partition(|w| {
            w.first_sent_ms
                .is_some_and(|at| now_ms.saturating_sub(at) > horizon)
        });
        for w in &expired {
            tracing::warn!(
                mutation_id = w.mutation_id,
                "dropping a stored write first sent more than 23 hours ago: the server may have \
                 forgotten it, so a resend could apply it twice"
            );
        }
        let mut journal = Journal {
            file: Self::rewrite(dir, &writes)?,
            dir: dir.to_path_buf(),
            _lock: lock,
            live: writes.len(),
            lines: writes.iter().map(|w| records_of(w).len()).sum(),
        };
        journal.sync()?;
        Ok((journal, Restored { writes, expired }))
    }

    /// Writes a fresh journal holding `writes` next to the old one, syncs
    /// it, and renames it over the old one; returns it open for appending.
    fn rewrite(dir: &Path, writes: &[StoredWrite]) -> Result<File, ClientError> {
        let path = dir.join(JOURNAL);
        let tmp = dir.join(format!("{JOURNAL}.tmp"));
        let text: String = writes
            .iter()
            .flat_map(records_of)
            .map(|r| encode(&r))
            .collect();
        let mut file = File::create(&tmp).map_err(|e| storage_error("cannot create", &tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| storage_error("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| storage_error("cannot replace", &path, e))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| storage_error("cannot sync", dir, e))?;
        OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| storage_error("cannot open", &path, e))
    }

    fn append(&mut self, records: &[Record]) -> Result<(), ClientError> {
        let text: String = records.iter().map(encode).collect();
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| storage_error("cannot append to", &self.dir.join(JOURNAL), e))?;
        self.lines += records.len();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), ClientError> {
        self.file
            .sync_data()
            .map_err(|e| storage_error("cannot sync", &self.dir.join(JOURNAL), e))
    }

    /// Stores a new write durably.
    #[cfg(test)]
    pub(crate) fn queued(
        &mut self,
        mutation_id: &str,
        writes: &[Write],
    ) -> Result<(), ClientError> {
        self.queued_all([(mutation_id, writes)])
    }

    /// Stores new writes durably, in order: one append and one sync for
    /// all of them (a burst of writes costs one `fdatasync`).
    pub(crate) fn queued_all<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (&'a str, &'a [Write])>,
    ) -> Result<(), ClientError> {
        let records: Vec<Record> = writes
            .into_iter()
            .map(|(mutation_id, writes)| Record::Queued {
                mutation_id: mutation_id.to_string(),
                writes: writes.to_vec(),
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.append(&records)?;
        self.live += records.len();
        self.sync()
    }

    /// Records durably that these writes are about to go on the wire for
    /// the first time.
    pub(crate) fn sent(&mut self, mutation_ids: &[String], at_ms: u64) -> Result<(), ClientError> {
        if mutation_ids.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = mutation_ids
            .iter()
            .map(|id| Record::Sent {
                mutation_id: id.clone(),
                at_ms,
            })
            .collect();
        self.append(&records)?;
        self.sync()
    }

    /// Forgets an answered write. `queue` is the live queue, written out
    /// instead when the journal has grown mostly dead.
    pub(crate) fn done(
        &mut self,
        mutation_id: &str,
        queue: impl FnOnce() -> Vec<StoredWrite>,
    ) -> Result<(), ClientError> {
        self.append(&[Record::Done {
            mutation_id: mutation_id.to_string(),
        }])?;
        self.live = self.live.saturating_sub(1);
        if self.lines > 2 * self.live + COMPACT_SLACK {
            let live = queue();
            self.file = Self::rewrite(&self.dir, &live)?;
            self.live = live.len();
            self.lines = live.iter().map(|w| records_of(w).len()).sum();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{DocPath, Map, Value};

    fn write(n: i64) -> Vec<Write> {
        let mut data = Map::new();
        data.insert("n".into(), Value::Integer(n));
        vec![Write::set(DocPath::parse("c/a").expect("path"), data)]
    }

    fn journal_text(dir: &Path) -> String {
        fs::read_to_string(dir.join(JOURNAL)).expect("journal")
    }

    #[test]
    fn a_queue_survives_reopening_in_order_with_sent_marks_and_without_answered_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut j, restored) = Journal::open(dir.path(), 1_000).expect("open");
            assert!(restored.writes.is_empty());
            for (id, n) in [("m1", 1), ("m2", 2), ("m3", 3)] {
                j.queued(id, &write(n)).expect("queued");
            }
            j.sent(&["m1".into(), "m2".into()], 5_000).expect("sent");
            j.done("m2", Vec::new).expect("done");
        }
        let (_j, restored) = Journal::open(dir.path(), 6_000).expect("reopen");
        let got: Vec<(&str, Option<u64>)> = restored
            .writes
            .iter()
            .map(|w| (w.mutation_id.as_str(), w.first_sent_ms))
            .collect();
        assert_eq!(got, vec![("m1", Some(5_000)), ("m3", None)]);
        assert_eq!(restored.writes[1].writes, write(3));
        // Reopening compacted the file to the live writes.
        assert_eq!(journal_text(dir.path()).lines().count(), 3);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut j, _) = Journal::open(dir.path(), 0).expect("open");
            j.queued("m1", &write(1)).expect("queued");
        }
        let mut text = journal_text(dir.path());
        text.push_str("{\"queued\":{\"mutation_id\":\"m2\",\"wri");
        fs::write(dir.path().join(JOURNAL), text).expect("write");
        let (_j, restored) = Journal::open(dir.path(), 0).expect("reopen");
        assert_eq!(restored.writes.len(), 1);
        assert_eq!(restored.writes[0].mutation_id, "m1");
    }

    #[test]
    fn a_write_first_sent_beyond_the_horizon_is_dropped_and_an_unsent_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = 24 * 3600 * 1000;
        {
            let (mut j, _) = Journal::open(dir.path(), 0).expect("open");
            j.queued("old-sent", &write(1)).expect("queued");
            j.queued("old-unsent", &write(2)).expect("queued");
            j.queued("recent", &write(3)).expect("queued");
            j.sent(&["old-sent".into()], 1_000).expect("sent");
            j.sent(&["recent".into()], day).expect("sent");
        }
        let (_j, restored) = Journal::open(dir.path(), day + 2_000).expect("reopen");
        let kept: Vec<&str> = restored
            .writes
            .iter()
            .map(|w| w.mutation_id.as_str())
            .collect();
        assert_eq!(kept, vec!["old-unsent", "recent"]);
        assert_eq!(restored.expired.len(), 1);
        assert_eq!(restored.expired[0].mutation_id, "old-sent");
    }

    #[test]
    fn a_second_instance_is_refused_while_the_first_holds_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, _) = Journal::open(dir.path(), 0).expect("open");
        match Journal::open(dir.path(), 0) {
            Err(ClientError::StoreLocked(_)) => {}
            other => panic!("expected StoreLocked, got {:?}", other.err()),
        }
        drop(first);
        assert!(Journal::open(dir.path(), 0).is_ok());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Queue,
        Sent(usize),
        Done(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            2 => Just(Op::Queue),
            1 => any::<usize>().prop_map(Op::Sent),
            1 => any::<usize>().prop_map(Op::Done),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A crash can cut the journal at any byte. Reopening must give the
        /// queue as it was after the last whole line: every write stored
        /// before the cut, with its sent mark, minus those answered before
        /// it, in order; and the journal must work on from there.
        #[test]
        fn a_crash_at_any_byte_recovers_the_queue_as_of_the_last_whole_line(
            ops in proptest::collection::vec(op(), 1..40),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(JOURNAL);
            // The model after each line: (file length, queue).
            let mut model: Vec<StoredWrite> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            let mut states: Vec<(u64, Vec<StoredWrite>)> = vec![(0, Vec::new())];
            {
                let (mut j, _) = Journal::open(dir.path(), 0).expect("open");
                for (n, op) in ops.iter().enumerate() {
                    match op {
                        Op::Queue => {
                            let id = format!("m{n}");
                            j.queued(&id, &write(n as i64)).expect("queued");
                            model.push(StoredWrite {
                                mutation_id: id.clone(),
                                writes: write(n as i64),
                                first_sent_ms: None,
                            });
                            ids.push(id);
                        }
                        Op::Sent(_) | Op::Done(_) if ids.is_empty() => continue,
                        Op::Sent(i) => {
                            let id = ids[i % ids.len()].clone();
                            j.sent(std::slice::from_ref(&id), n as u64).expect("sent");
                            if let Some(w) = model.iter_mut().find(|w| w.mutation_id == id) {
                                w.first_sent_ms.get_or_insert(n as u64);
                            }
                        }
                        Op::Done(i) => {
                            let id = ids[i % ids.len()].clone();
                            j.done(&id, Vec::new).expect("done");
                            model.retain(|w| w.mutation_id != id);
                        }
                    }
                    let len = fs::metadata(&path).expect("journal").len();
                    states.push((len, model.clone()));
                }
            }
            let full = fs::metadata(&path).expect("journal").len();
            let cut = cut.index(full as usize + 1) as u64;
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(cut))
                .expect("truncate");
            // A line counts once its text is complete, newline or not.
            let expected = states
                .iter()
                .rev()
                .find(|(len, _)| *len == 0 || len - 1 <= cut)
                .map(|(_, queue)| queue.clone())
                .unwrap_or_default();
            let (mut j, restored) = Journal::open(dir.path(), 0).expect("reopen");
            proptest::prop_assert_eq!(&restored.writes, &expected);
            j.queued("after", &write(-1)).expect("queued after recovery");
            drop(j);
            let (_j, again) = Journal::open(dir.path(), 0).expect("reopen again");
            let mut with_new = expected;
            with_new.push(StoredWrite {
                mutation_id: "after".into(),
                writes: write(-1),
                first_sent_ms: None,
            });
            proptest::prop_assert_eq!(again.writes, with_new);
        }
    }

    #[test]
    fn a_journal_mostly_of_dead_lines_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = Journal::open(dir.path(), 0).expect("open");
        j.queued("keep", &write(0)).expect("queued");
        let keep = StoredWrite {
            mutation_id: "keep".into(),
            writes: write(0),
            first_sent_ms: None,
        };
        for i in 0..400 {
            let id = format!("m{i}");
            j.queued(&id, &write(i)).expect("queued");
            j.done(&id, || vec![keep.clone()]).expect("done");
        }
        let lines = journal_text(dir.path()).lines().count();
        assert!(
            lines < 2 * COMPACT_SLACK,
            "journal not compacted: {lines} lines"
        );
        drop(j);
        let (_j, restored) = Journal::open(dir.path(), 0).expect("reopen");
        assert_eq!(restored.writes, vec![keep]);
    }
}
