//! The changelog: every commit, in sequence order, with full old and new documents.
//!
//! ## Contract
//! * Sequence numbers start at 1 and have no gaps; record `n` is written in
//!   the same atomic batch as the data of commit `n`.
//! * [`Changelog::read_from`]`(after, max)` returns up to `max` records with
//!   `seq > after`, in order. If `after + 1` is older than the oldest retained
//!   record it returns [`ChangelogError::TooOld`] instead of silently skipping.
//! * [`Changelog::subscribe`]`(after)` yields every commit with `seq > after`
//!   exactly once, in order: first from disk, then live from a broadcast
//!   channel. A subscriber that lags behind the broadcast falls back to disk
//!   and catches up again; one whose position is pruned meanwhile gets
//!   `TooOld` and the stream ends.
//! * `head()` is the last applied sequence number, `oldest()` the first
//!   retained one (`head() + 1` when retention removed everything). Both are
//!   kept in meta keys, so numbering resumes after a restart.
//! * Records are published to live subscribers after the flush that makes
//!   them durable (strict mode); a subscriber catching up from disk may see a
//!   record a moment before its writer is acknowledged.

use std::collections::VecDeque;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;

use crate::codec;
use crate::keys;
use crate::{ChangelogError, CommitRecord, Shared};

/// Records read from disk per step while catching up.
const CATCH_UP_CHUNK: usize = 256;

/// A handle on the changelog; cheap to clone.
#[derive(Clone)]
pub struct Changelog {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("head", &self.head())
            .field("oldest", &self.oldest())
            .finish()
    }
}

impl Changelog {
    pub fn head(&self) -> u64 {
        self.shared.head.load(AtomicOrdering::SeqCst)
    }

    pub fn oldest(&self) -> u64 {
        self.shared.oldest.load(AtomicOrdering::SeqCst)
    }

    /// Up to `max` commits with `seq > after_seq`, in order.
    pub fn read_from(
        &self,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<Arc<CommitRecord>>, ChangelogError> {
        let oldest = self.oldest();
        let first = after_seq.saturating_add(1);
        if first < oldest {
            return Err(ChangelogError::TooOld { oldest });
        }
        let head = self.head();
        if max == 0 || first > head {
            return Ok(vec![]);
        }
        let mut out = Vec::with_capacity(max.min(CATCH_UP_CHUNK));
        for entry in self.shared.engine.scan(
            Bound::Included(keys::log_key(first)),
            Bound::Excluded(vec![keys::LOG + 1]),
            false,
        ) {
            let (_, value) = entry.map_err(|e| ChangelogError::Store(e.to_string()))?;
            let record =
                codec::decode_record(&value).map_err(|e| ChangelogError::Store(e.to_string()))?;
            out.push(Arc::new(record));
            if out.len() >= max {
                break;
            }
        }
        // Pruning may have run between the check and the scan: never return a gap.
        if out.first().is_some_and(|r| r.seq != first)
            || (out.is_empty() && first <= head && first < self.oldest())
        {
            return Err(ChangelogError::TooOld {
                oldest: self.oldest(),
            });
        }
        Ok(out)
    }

    /// Every commit after `after_seq`, exactly once and in order: disk, then live.
    pub fn subscribe(&self, after_seq: u64) -> ChangeStream {
        // Subscribe to the broadcast before the first disk read, so nothing
        // published in between is missed.
        let state = SubState {
            changelog: self.clone(),
            next: after_seq.saturating_add(1),
            buffer: VecDeque::new(),
            rx: self.shared.live.subscribe(),
            live: false,
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(r) = st.buffer.pop_front() {
                    if r.seq < st.next {
                        continue;
                    }
                    st.next = r.seq + 1;
                    return Some((Ok(r), st));
                }
                if !st.live {
                    match st.changelog.read_from(st.next - 1, CATCH_UP_CHUNK) {
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                        Ok(records) if !records.is_empty() => st.buffer.extend(records),
                        Ok(_) => st.live = true,
                    }
                    continue;
                }
                match st.rx.recv().await {
                    Ok(r) if r.seq < st.next => continue,
                    Ok(r) if r.seq == st.next => {
                        st.next += 1;
                        return Some((Ok(r), st));
                    }
                    // A gap (should not happen) or lag: catch up from disk.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => st.live = false,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The store is gone: deliver what is on disk, then end.
                        match st.changelog.read_from(st.next - 1, CATCH_UP_CHUNK) {
                            Ok(records) if !records.is_empty() => st.buffer.extend(records),
                            _ => st.done = true,
                        }
                    }
                }
            }
        });
        ChangeStream {
            inner: Box::pin(stream),
        }
    }
}

struct SubState {
    changelog: Changelog,
    next: u64,
    buffer: VecDeque<Arc<CommitRecord>>,
    rx: broadcast::Receiver<Arc<CommitRecord>>,
    live: bool,
    done: bool,
}

type BoxedChanges = Pin<Box<dyn Stream<Item = Result<Arc<CommitRecord>, ChangelogError>> + Send>>;

/// The stream returned by [`Changelog::subscribe`].
pub struct ChangeStream {
    inner: BoxedChanges,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeStream")
    }
}

impl Stream for ChangeStream {
    type Item = Result<Arc<CommitRecord>, ChangelogError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
