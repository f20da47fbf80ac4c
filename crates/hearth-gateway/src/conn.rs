//! The part of a connection that other tasks touch: its outbound queue, its
//! principal, its subscriptions and the signal that closes it.
//!
//! The connection task (`session`) owns the socket; the fan-out engine,
//! write tasks, revocation and shutdown only ever push frames into the
//! [`Outbox`] or ask for a close. The outbox is the flow-control point:
//! - below the *soft* limit (`max_pending_events` frames) every change frame
//!   is queued;
//! - at or above it the engine stops queueing change frames for that
//!   connection: each affected subscription keeps the view its client holds
//!   (`sent`) while its current view keeps moving; once the writer has
//!   drained the queue it sends each such subscription one coalesced frame
//!   (the diff from `sent` to now) — so a slow reader costs at most two
//!   views per subscription, not one frame per commit;
//! - past the *hard* limit (`max_queued_bytes`) the connection is closed
//!   with 4008. Only replies can get there (a client that keeps sending
//!   requests without reading), or a single huge snapshot.
//!
//! Frames are queued already encoded ([`OutFrame`]: a shared `Bytes`), and
//! the writer takes them in batches ([`ConnShared::take_batch`]) so that one
//! system call sends many frames.
//!
//! ## Writing without waking the writer
//! Most frames find the connection with nothing queued and nothing being
//! written. Then whoever queues the frame (the fan-out engine, usually)
//! offers it to the socket directly, without waiting ([`SharedSink::try_write`]);
//! only what the socket does not take is queued for the writer task. A
//! commit delivered to a thousand idle subscribers is then a thousand
//! system calls from one thread, not a thousand task wake-ups. Under a burst
//! the direct path stays out of the way: a connection written less than
//! `MIN_WRITE_GAP` ago queues instead, so that its frames leave in batches.
//!
//! ## Liveness (idle timeout)
//! A connection is idle when nothing was received from it for
//! `idle_timeout` *and* the server is not busy sending to it: while frames
//! are waiting or being written and the socket keeps accepting bytes
//! (write progress within `idle_timeout`), the client is reading — its
//! `pong` may simply be queued behind our backlog — so it is not idle. A
//! peer that stops reading stops our write progress too, so it is still
//! closed (see [`ConnShared::idle`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use hearth_protocol::ws::close_code;
use hearth_protocol::Timestamp;
use hearth_rules::Principal;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::codec::Codec;
use crate::socket::{frame_header, OutFrame, SharedSink};
use crate::subscription::Subscription;
use crate::Counters;

/// A connection is written at most once per this interval while frames keep
/// coming (they are batched meanwhile; see `session::writer`).
pub(crate) const MIN_WRITE_GAP_MS: u64 = 4;
/// At most this many frames per direct write (the writer takes the rest).
const DIRECT_MAX_FRAMES: usize = 64;
/// At most this many bytes are copied for one direct write; a first frame
/// larger than this is left to the writer task.
const DIRECT_COPY_MAX_BYTES: usize = 64 * 1024;

thread_local! {
    /// The buffer a direct write copies its frames into (one per thread:
    /// the fan-out engine's, and each runtime worker's).
    static DIRECT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Default)]
pub(crate) struct Outbox {
    frames: VecDeque<OutFrame>,
    bytes: usize,
}

impl Outbox {
    /// Whether the queue is empty; if so, frees its buffer (most
    /// connections are idle most of the time).
    fn release_if_empty(&mut self) -> bool {
        if !self.frames.is_empty() {
            return false;
        }
        if self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
        true
    }
}

/// A reason to close, with the close code sent to the client.
#[derive(Debug, Clone)]
pub(crate) struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub(crate) struct ConnShared {
    pub id: u64,
    outbox: Mutex<Outbox>,
    /// Wakes the writer: a frame was queued or a subscription became dirty.
    pub wake: Notify,
    /// Wakes the connection task to close (see `close`).
    pub kill: Notify,
    close: Mutex<Option<CloseReason>>,
    principal: RwLock<Arc<Principal>>,
    /// Live subscriptions (a short list: at most `max_subscriptions`).
    pub subs: Mutex<Vec<Arc<Subscription>>>,
    /// Some subscription is dirty: the writer resyncs once the queue is empty.
    pub has_dirty: AtomicBool,
    pub inflight_writes: AtomicU32,
    /// Resolves (its sender dropped) once the last write this connection
    /// received has been committed or refused: the next write waits for it,
    /// so a connection's writes are applied in the order they arrived
    /// (PROTOCOL.md §7), however many are pipelined.
    pub last_write: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Milliseconds (on the gateway's clock) of the last frame received.
    last_recv_ms: AtomicU64,
    /// Milliseconds of the last ping sent (or of the connection's start).
    last_ping_ms: AtomicU64,
    /// Milliseconds of the last time the socket accepted bytes we wrote.
    last_progress_ms: AtomicU64,
    /// The writer holds frames it has taken but not yet fully written.
    writing: AtomicBool,
    /// In the fan-out engine's rotation (set and cleared only by the
    /// engine's thread; see `fanout::Rotation`).
    in_rotation: AtomicBool,
    /// Milliseconds of the last write to the socket (direct or by the writer).
    last_write_ms: AtomicU64,
    /// The socket's write half (`None` in unit tests: nothing is written).
    sink: Option<SharedSink>,
    stats: Arc<Counters>,
    /// The connection's encoding (JSON text or MessagePack binary frames).
    codec: Codec,
    clock: Clock,
    /// Credential expiry in Unix nanoseconds; `i64::MAX`: never.
    expires_at: AtomicI64,
    soft_limit: usize,
    hard_limit: usize,
}

impl ConnShared {
    pub(crate) fn new(
        id: u64,
        principal: Principal,
        soft_limit: usize,
        hard_limit: usize,
        clock: Clock,
        codec: Codec,
        sink: Option<(SharedSink, Arc<Counters>)>,
    ) -> ConnShared {
        let (sink, stats) = match sink {
            Some((sink, stats)) => (Some(sink), stats),
            None => (None, Arc::default()),
        };
        ConnShared {
            id,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            kill: Notify::new(),
            close: Mutex::new(None),
            principal: RwLock::new(Arc::new(principal)),
            subs: Mutex::new(Vec::new()),
            has_dirty: AtomicBool::new(false),
            inflight_writes: AtomicU32::new(0),
            last_write: Mutex::new(None),
            last_recv_ms: AtomicU64::new(0),
            last_ping_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            in_rotation: AtomicBool::new(false),
            last_write_ms: AtomicU64::new(0),
            sink,
            stats,
            codec,
            clock,
            expires_at: AtomicI64::new(i64::MAX),
            soft_limit,
            hard_limit,
        }
    }

    pub(crate) fn principal(&self) -> Arc<Principal> {
        Arc::clone(&self.principal.read())
    }

    pub(crate) fn set_principal(&self, p: Principal) {
        *self.principal.write() = Arc::new(p);
    }

    pub(crate) fn uid(&self) -> Option<String> {
        match &**self.principal.read() {
            Principal::User { uid, .. } => Some(uid.clone()),
            _ => None,
        }
    }

    /// Queues a frame (a reply or a change). Past the hard limit the
    /// connection is closed as a slow consumer instead.
    /// `json` is the message's JSON encoding; a MessagePack connection gets
    /// it transcoded.
    pub(crate) fn push(&self, json: bytes::Bytes) -> bool {
        self.push_frame(self.codec.frame(json))
    }

    pub(crate) fn codec(&self) -> Codec {
        self.codec
    }

    /// Queues any frame (text or control); see [`ConnShared::push`]. With
    /// nothing else queued and nothing being written, the frame is offered
    /// to the socket at once (see the module docs); otherwise, or for what
    /// the socket does not take, the writer is woken.
    pub(crate) fn push_frame(&self, frame: OutFrame) -> bool {
        let mut ob = self.outbox.lock();
        if !self.enqueue(&mut ob, frame) {
            return false;
        }
        if !self.try_flush(&mut ob) {
            drop(ob);
            self.wake.notify_one();
        }
        true
    }

    /// Queues a frame without writing it or waking the writer: the fan-out
    /// engine queues a batch of commits this way and calls
    /// [`ConnShared::flush`] when the connection's turn in its rotation
    /// comes, so that the frames of several commits leave in one system
    /// call.
    /// `payload` is already in the connection's encoding (see `codec`).
    pub(crate) fn queue(&self, payload: bytes::Bytes) -> bool {
        let mut ob = self.outbox.lock();
        self.enqueue(&mut ob, self.codec.wrap(payload))
    }

    /// Marks the connection as in the engine's rotation; false if it
    /// already was.
    pub(crate) fn enter_rotation(&self) -> bool {
        !self.in_rotation.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn leave_rotation(&self) {
        self.in_rotation.store(false, Ordering::Relaxed);
    }

    /// Writes what is queued now if the socket takes it, else wakes the
    /// writer (see [`ConnShared::queue`]).
    pub(crate) fn flush(&self) {
        let mut ob = self.outbox.lock();
        if ob.frames.is_empty() || self.try_flush(&mut ob) {
            return;
        }
        drop(ob);
        self.wake.notify_one();
    }

    /// Appends a frame; past the hard limit closes the connection as a slow
    /// consumer instead (a single frame larger than the limit still goes).
    fn enqueue(&self, ob: &mut Outbox, frame: OutFrame) -> bool {
        if ob.bytes + frame.len() > self.hard_limit && !ob.frames.is_empty() {
            self.close(CloseReason {
                code: close_code::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue limit exceeded",
            });
            return false;
        }
        ob.bytes += frame.len();
        ob.frames.push_back(frame);
        true
    }

    /// Offers the queued frames to the socket without waiting, when the
    /// writer holds none (so the queue's head is next on the wire) and the
    /// last write is at least `MIN_WRITE_GAP_MS` old. Returns whether the
    /// queue is empty afterwards.
    fn try_flush(&self, ob: &mut Outbox) -> bool {
        let Some(sink) = &self.sink else {
            return false;
        };
        if self.writing.load(Ordering::Acquire) {
            return false;
        }
        let now = self.clock.now_ms();
        if now.saturating_sub(self.last_write_ms.load(Ordering::Relaxed)) < MIN_WRITE_GAP_MS {
            return false;
        }
        // The frames (headers and shared payloads) are copied into one
        // buffer so the kernel gets one plain `send`, cheaper than a
        // vectored write; a first frame too large for that is left to the
        // writer task, which writes vectored.
        let first_too_large = ob
            .frames
            .front()
            .is_some_and(|f| f.len() > DIRECT_COPY_MAX_BYTES);
        if first_too_large {
            return false;
        }
        let written = DIRECT_BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            for f in ob.frames.iter().take(DIRECT_MAX_FRAMES) {
                if !buffer.is_empty() && buffer.len() + f.len() > DIRECT_COPY_MAX_BYTES {
                    break;
                }
                let (head, n) = frame_header(f.opcode, f.len());
                buffer.extend_from_slice(&head[..n]);
                buffer.extend_from_slice(&f.payload);
            }
            let result = sink.try_write(buffer);
            if buffer.capacity() > 4 * DIRECT_COPY_MAX_BYTES {
                *buffer = Vec::new();
            }
            result
        });
        let written = match written {
            // Would block, or a socket error: the writer deals with it.
            None | Some(Err(_)) | Some(Ok(0)) => return false,
            Some(Ok(n)) => n,
        };
        self.last_write_ms.store(now, Ordering::Relaxed);
        self.last_progress_ms.store(now, Ordering::Relaxed);
        let mut left = written;
        let mut sent = 0u64;
        while let Some(front) = ob.frames.front_mut() {
            let whole = frame_header(front.opcode, front.len()).1 + front.len();
            if left >= whole {
                left -= whole;
                ob.bytes -= front.len();
                ob.frames.pop_front();
                sent += 1;
                continue;
            }
            if left > 0 {
                if let Some(rest) = front.rest_after(left) {
                    ob.bytes = ob.bytes - front.len() + rest.len();
                    *front = rest;
                }
            }
            break;
        }
        self.stats.frames_direct.fetch_add(sent, Ordering::Relaxed);
        ob.release_if_empty()
    }

    /// The socket, for the connection's own writer.
    pub(crate) fn sink(&self) -> Option<&SharedSink> {
        self.sink.as_ref()
    }

    /// Records a write by the writer task (for `MIN_WRITE_GAP_MS`).
    pub(crate) fn wrote(&self) {
        self.last_write_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last write to the socket.
    pub(crate) fn since_last_write_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(self.last_write_ms.load(Ordering::Relaxed))
    }

    /// Whether the engine should stop queueing change frames (soft limit).
    pub(crate) fn congested(&self) -> bool {
        self.outbox.lock().frames.len() >= self.soft_limit
    }

    /// Moves queued frames into `out` (at most `max_frames`, and at most
    /// `max_bytes` unless the first frame alone is larger). Marks the
    /// connection as writing when it took any.
    pub(crate) fn take_batch(&self, out: &mut Vec<OutFrame>, max_frames: usize, max_bytes: usize) {
        let mut ob = self.outbox.lock();
        let mut bytes = 0;
        while out.len() < max_frames {
            let Some(next) = ob.frames.front() else {
                break;
            };
            if !out.is_empty() && bytes + next.len() > max_bytes {
                break;
            }
            bytes += next.len();
            if let Some(f) = ob.frames.pop_front() {
                out.push(f);
            }
        }
        ob.bytes -= bytes;
        ob.release_if_empty();
        if !out.is_empty() {
            self.writing.store(true, Ordering::Release);
        }
    }

    /// Records that the socket accepted bytes; `done`: the writer holds
    /// nothing more.
    pub(crate) fn progress(&self, clock: &Clock, done: bool) {
        self.last_progress_ms
            .store(clock.now_ms(), Ordering::Relaxed);
        if done {
            self.writing.store(false, Ordering::Release);
        }
    }

    /// Whether the connection counts as idle at `now_ms` (see the module
    /// docs): nothing received for `idle_ms`, and no backlog that the
    /// socket is still accepting.
    pub(crate) fn idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        if now_ms.saturating_sub(self.last_recv_ms()) < idle_ms {
            return false;
        }
        let backlog = self.writing.load(Ordering::Acquire) || !self.outbox.lock().frames.is_empty();
        let progressing =
            now_ms.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)) < idle_ms;
        !(backlog && progressing)
    }

    /// (frames, bytes) queued now.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let ob = self.outbox.lock();
        (ob.frames.len(), ob.bytes)
    }

    /// Records that a frame arrived (for the idle timeout).
    pub(crate) fn touch(&self, clock: &Clock) {
        self.last_recv_ms.store(clock.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn last_recv_ms(&self) -> u64 {
        self.last_recv_ms.load(Ordering::Relaxed)
    }

    /// Whether a heartbeat ping is due; if so, records it as sent.
    pub(crate) fn ping_due(&self, now_ms: u64, heartbeat_ms: u64) -> bool {
        let last = self.last_ping_ms.load(Ordering::Relaxed);
        if last == 0 {
            self.last_ping_ms.store(now_ms, Ordering::Relaxed);
            return false;
        }
        if now_ms.saturating_sub(last) >= heartbeat_ms {
            self.last_ping_ms.store(now_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(crate) fn set_expiry(&self, at: Option<Timestamp>) {
        self.expires_at
            .store(at.map_or(i64::MAX, |t| t.0), Ordering::Relaxed);
    }

    pub(crate) fn expiry(&self) -> Option<Timestamp> {
        let ns = self.expires_at.load(Ordering::Relaxed);
        (ns != i64::MAX).then_some(Timestamp(ns))
    }

    /// Removes and returns the subscription named `name`.
    pub(crate) fn take_sub(&self, name: &str) -> Option<Arc<Subscription>> {
        let mut subs = self.subs.lock();
        let i = subs.iter().position(|s| &*s.name == name)?;
        Some(subs.swap_remove(i))
    }

    pub(crate) fn mark_dirty(&self) {
        self.has_dirty.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Asks the connection task to close with this reason (the first reason wins).
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut c = self.close.lock();
            if c.is_none() {
                *c = Some(reason);
            }
        }
        self.kill.notify_one();
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close.lock().clone()
    }
}

/// A monotonic millisecond clock shared by the gateway (starts at 1 so that
/// 0 can mean "never").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(std::time::Instant);

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock(std::time::Instant::now())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

/// A connection without a socket (frames stay queued), for unit tests.
#[cfg(test)]
pub(crate) fn test_conn(id: u64) -> ConnShared {
    ConnShared::new(
        id,
        Principal::Admin,
        128,
        1 << 20,
        Clock::new(),
        Codec::Json,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnShared {
        test_conn(1)
    }

    const IDLE: u64 = 1_000;

    #[test]
    fn a_silent_connection_with_nothing_to_send_is_idle() {
        let c = conn();
        c.last_recv_ms.store(10, Ordering::Relaxed);
        assert!(!c.idle(10 + IDLE - 1, IDLE));
        assert!(c.idle(10 + IDLE, IDLE));
    }

    #[test]
    fn a_reader_behind_a_backlog_that_the_socket_accepts_is_not_idle() {
        let c = conn();
        c.last_recv_ms.store(10, Ordering::Relaxed);
        // Frames queued and the writer busy with a batch: its pong is behind them.
        for _ in 0..3 {
            c.push(bytes::Bytes::from_static(b"{}"));
        }
        let mut batch = Vec::new();
        c.take_batch(&mut batch, 1, usize::MAX);
        assert_eq!(batch.len(), 1);
        // The socket accepted bytes recently: alive, however long ago the
        // client last sent anything.
        c.last_progress_ms.store(5_000, Ordering::Relaxed);
        assert!(!c.idle(5_000 + IDLE - 1, IDLE));
        // Even with the queue empty, a batch still being written counts.
        c.take_batch(&mut batch, usize::MAX, usize::MAX);
        assert_eq!(c.queued(), (0, 0));
        assert!(!c.idle(5_000 + IDLE - 1, IDLE));
    }

    #[test]
    fn a_backlog_that_the_socket_stopped_accepting_is_idle() {
        let c = conn();
        c.last_recv_ms.store(10, Ordering::Relaxed);
        c.push(bytes::Bytes::from_static(b"{}"));
        c.last_progress_ms.store(500, Ordering::Relaxed);
        // A dead peer: frames queued, no write progress for the timeout.
        assert!(c.idle(500 + IDLE, IDLE));
    }

    #[test]
    fn once_the_writer_has_drained_the_idle_clock_runs_again() {
        let c = conn();
        c.last_recv_ms.store(10, Ordering::Relaxed);
        c.push(bytes::Bytes::from_static(b"{}"));
        let mut batch = Vec::new();
        c.take_batch(&mut batch, usize::MAX, usize::MAX);
        c.last_progress_ms.store(5_000, Ordering::Relaxed);
        c.writing.store(false, Ordering::Release);
        assert!(
            c.idle(5_000, IDLE),
            "nothing left to send and silent since 10 ms"
        );
    }
}
