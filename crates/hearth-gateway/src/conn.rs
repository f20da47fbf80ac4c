//! The part of a connection that other tasks touch: its outbound queue, its
//! principal, its subscriptions and the signal that closes it.
//!
//! The connection task (`session`) owns the socket; the fan-out engine,
//! write tasks, revocation and shutdown only ever push frames into the
//! [`Outbox`] or ask for a close. The outbox is the flow-control point:
//! - below the *soft* limit (`max_pending_events` frames) every change frame
//!   is queued;
//! - at or above it the engine stops queueing change frames for that
//!   connection and marks the affected subscriptions *dirty*; once the
//!   writer has drained the queue it sends each dirty subscription one
//!   coalesced frame (its newest state as a diff) — so a slow reader costs
//!   at most one view per subscription, not one frame per commit;
//! - past the *hard* limit (`max_queued_bytes`) the connection is closed
//!   with 4008. Only replies can get there (a client that keeps sending
//!   requests without reading), or a single huge snapshot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use hearth_protocol::ws::close_code;
use hearth_protocol::Timestamp;
use hearth_rules::Principal;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::subscription::Subscription;

#[derive(Default)]
pub(crate) struct Outbox {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
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
    /// Milliseconds (on the gateway's clock) of the last frame received.
    last_recv_ms: AtomicU64,
    /// Milliseconds of the last ping sent (or of the connection's start).
    last_ping_ms: AtomicU64,
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
    ) -> ConnShared {
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
            last_recv_ms: AtomicU64::new(0),
            last_ping_ms: AtomicU64::new(0),
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
    pub(crate) fn push(&self, frame: Utf8Bytes) -> bool {
        {
            let mut ob = self.outbox.lock();
            if ob.bytes + frame.len() > self.hard_limit && !ob.frames.is_empty() {
                drop(ob);
                self.close(CloseReason {
                    code: close_code::SLOW_CONSUMER,
                    reason: "slow consumer: outbound queue limit exceeded",
                });
                return false;
            }
            ob.bytes += frame.len();
            ob.frames.push_back(frame);
        }
        self.wake.notify_one();
        true
    }

    /// Whether the engine should stop queueing change frames (soft limit).
    pub(crate) fn congested(&self) -> bool {
        self.outbox.lock().frames.len() >= self.soft_limit
    }

    pub(crate) fn pop(&self) -> Option<Utf8Bytes> {
        let mut ob = self.outbox.lock();
        let f = ob.frames.pop_front()?;
        ob.bytes -= f.len();
        Some(f)
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
#[derive(Debug)]
pub(crate) struct Clock(std::time::Instant);

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock(std::time::Instant::now())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}
