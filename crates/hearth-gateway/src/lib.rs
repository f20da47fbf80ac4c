//! # hearth-gateway
//!
//! The WebSocket sync gateway: `GET /v1/ws`, protocol `hearth.v1` (specified
//! in `sdk-spec/PROTOCOL.md`; messages in [`hearth_protocol::ws`]), as JSON
//! text frames or, with subprotocol `hearth.v1.msgpack`, MessagePack binary
//! frames ([`codec`]).
//!
//! - [`session`]: one task per connection — handshake, requests, heartbeats,
//!   token expiry, and the writer that drains the connection's outbox;
//! - [`fanout`]: one engine, on a thread of its own, reads the store's
//!   changelog and moves the views of the affected subscriptions, found
//!   through an index (reverse query matching), once per group of
//!   subscriptions that share a view, encoding each distinct frame once and
//!   writing it to idle sockets itself, connection after connection in a
//!   rotation that newer commits join;
//! - [`subscription`] and [`view`]: what a client holds per subscription and
//!   how it is built (snapshot, resume, coalescing) and moved;
//! - [`writes`]: writes and transactions applied once per mutation id.
//!
//! The upgrade is done by the gateway itself ([`socket`]): tungstenite parses
//! what clients send; the server's frames, encoded once and shared between
//! subscribers, are written directly by whoever produced them when the
//! connection has nothing queued, else by the session's writer in batches
//! with one vectored write each (no per-connection write buffer).
//!
//! Mounting: `hearth_gateway::router(Gateway::new(config, store, access, authenticator))`
//! gives a `Router` serving `/v1/ws` with its state applied; merge it into
//! the app. `Gateway::new` must be called inside a Tokio runtime (it spawns
//! the fan-out and sweeper tasks). Call [`Gateway::shutdown`] on graceful
//! shutdown, [`Gateway::revoke_user`] when a user is disabled, deleted or
//! signed out everywhere, and [`Gateway::revoke_session`] when one session
//! is revoked (its tokens carry the claim `sid`).

mod backend;
mod codec;
mod conn;
mod encode;
mod fanout;
mod session;
mod socket;
mod subscription;
mod view;
pub mod writes;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use hearth_protocol::ws::{close_code, Limits};
use hearth_protocol::{ErrorBody, ErrorCode, Timestamp};
use hearth_rules::{AccessControl, Principal};
use hearth_store::Store;
use tokio::sync::Notify;

use crate::conn::{CloseReason, ConnShared};
use crate::fanout::SubIndex;

/// Verifies credentials for the gateway. The server implements it with the
/// admin key and `hearth-auth`'s token verification.
pub trait Authenticator: Send + Sync + 'static {
    /// `token` is what the client sent in `hello` or `auth` (an access JWT
    /// or the admin key), `None` when `hello` had none. Return the principal
    /// and when the credential expires (`None`: never), or an error body
    /// (normally `unauthenticated`) to refuse it.
    fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, ErrorBody>;
}

/// A verified credential.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub expires_at: Option<Timestamp>,
}

/// Limits and timings. Defaults suit a server with many small clients.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How often the server sends `ping`.
    pub heartbeat: Duration,
    /// A connection that sends nothing (not even `pong`) for this long is
    /// closed with 4010 — unless the server is still sending it a backlog
    /// that the socket keeps accepting (the client is reading; its `pong`
    /// is behind our frames).
    pub idle_timeout: Duration,
    /// Time allowed between the upgrade and `hello`.
    pub hello_timeout: Duration,
    /// Connections beyond this are closed with 4029 right after the upgrade.
    pub max_connections: usize,
    pub max_subscriptions: u32,
    /// Frames larger than this are answered with `payload-too-large`; frames
    /// larger than twice this close the connection with 4009.
    pub max_frame_bytes: u32,
    pub max_inflight_writes: u32,
    /// Soft limit on queued outbound frames: beyond it subscriptions are coalesced.
    pub max_pending_events: u32,
    /// Hard limit on queued outbound bytes: beyond it the connection is closed with 4008.
    pub max_queued_bytes: u64,
    /// A resume that spans more commits than this gets a snapshot instead of a diff.
    pub resume_max_commits: usize,
    /// tungstenite's read buffer per connection. It grows to hold a larger
    /// frame and keeps that size, so a small start costs an idle
    /// subscriber little (it stays at about twice this) while a busy writer
    /// still reads its frames whole after the first large one.
    pub read_buffer_bytes: usize,
    /// Unused since the gateway writes frames itself (no write buffer);
    /// kept so that existing configurations still compile.
    pub write_buffer_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_subscriptions: 100,
            max_frame_bytes: 2 * 1024 * 1024,
            max_inflight_writes: 32,
            max_pending_events: 128,
            max_queued_bytes: 16 * 1024 * 1024,
            resume_max_commits: 10_000,
            read_buffer_bytes: 128,
            write_buffer_bytes: 0,
        }
    }
}

impl GatewayConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_subscriptions: self.max_subscriptions,
            max_frame_bytes: self.max_frame_bytes,
            max_inflight_writes: self.max_inflight_writes,
            max_pending_events: self.max_pending_events,
            max_queued_bytes: self.max_queued_bytes,
        }
    }
}

/// Counters for tests, metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub head: AtomicU64,
    pub builds: AtomicU64,
    pub coalesced: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub frames_shared: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub candidates: AtomicU64,
    pub views_moved: AtomicU64,
    pub frames_direct: AtomicU64,
    pub frames_by_writer: AtomicU64,
}

/// A snapshot of the gateway's state (see [`Gateway::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStats {
    pub connections: usize,
    pub subscriptions: usize,
    /// Newest changelog position the fan-out engine has processed.
    pub engine_seq: u64,
    /// Views built or rebuilt by a query (snapshots, resumes, new claims, lag).
    pub builds: u64,
    /// Change frames not queued because the connection was congested.
    pub coalesced: u64,
    pub frames_encoded: u64,
    /// Change frames handed to a subscriber from the per-commit cache.
    pub frames_shared: u64,
    pub slow_consumer_closes: u64,
    /// Subscriptions the fan-out engine evaluated (candidates from the index).
    pub candidates_evaluated: u64,
    /// View updates the engine computed: one per share group (same target,
    /// same principal, same position) per commit, however many subscribers
    /// the group has.
    pub views_moved: u64,
    /// Frames handed to the socket by whoever produced them (no writer
    /// wake-up), and frames the connection's writer task wrote.
    pub frames_direct: u64,
    pub frames_by_writer: u64,
    /// The largest outbound queue of any connection, in frames and bytes.
    pub max_queued_frames: usize,
    pub max_queued_bytes: usize,
}

pub(crate) struct Inner {
    pub config: GatewayConfig,
    pub store: Store,
    pub access: AccessControl,
    pub auth: Arc<dyn Authenticator>,
    pub index: SubIndex,
    pub targets: subscription::Targets,
    pub conns: DashMap<u64, Arc<ConnShared>>,
    pub next_id: AtomicU64,
    pub stats: Arc<Counters>,
    pub shutdown: Notify,
    pub shutting_down: AtomicBool,
    pub clock: conn::Clock,
}

/// The gateway service. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Gateway {
    /// Creates the gateway and starts its fan-out task (needs a Tokio runtime).
    pub fn new(
        config: GatewayConfig,
        store: Store,
        access: AccessControl,
        auth: Arc<dyn Authenticator>,
    ) -> Gateway {
        let inner = Arc::new(Inner {
            config,
            store,
            access,
            auth,
            index: SubIndex::default(),
            targets: subscription::Targets::default(),
            conns: DashMap::new(),
            next_id: AtomicU64::new(1),
            stats: Arc::default(),
            shutdown: Notify::new(),
            shutting_down: AtomicBool::new(false),
            clock: conn::Clock::new(),
        });
        fanout::start(Arc::clone(&inner));
        tokio::spawn(session::sweep(Arc::clone(&inner)));
        Gateway { inner }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Closes every connection with 1001 (going away) and stops the fan-out
    /// task. New upgrades are refused with 1001 too.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.notify_waiters();
        self.inner.shutdown.notify_one();
        for c in self.inner.conns.iter() {
            c.close(CloseReason {
                code: close_code::GOING_AWAY,
                reason: "server shutting down",
            });
        }
    }

    /// Closes every connection of this user with 4003 (access revoked).
    /// Returns how many were closed.
    pub fn revoke_user(&self, uid: &str) -> usize {
        let mut n = 0;
        for c in self.inner.conns.iter() {
            if c.uid().as_deref() == Some(uid) {
                c.close(CloseReason {
                    code: close_code::REVOKED,
                    reason: "access revoked",
                });
                n += 1;
            }
        }
        n
    }

    /// Closes (4003) the connections authenticated with one session's
    /// tokens: those of `uid` whose token claim `sid` equals `session_id`.
    /// Returns how many were closed.
    pub fn revoke_session(&self, uid: &str, session_id: &str) -> usize {
        let mut n = 0;
        for c in self.inner.conns.iter() {
            let p = c.principal();
            if let Principal::User { uid: u, claims } = &*p {
                let sid = claims.get("sid").and_then(|v| v.as_str());
                if u == uid && sid == Some(session_id) {
                    c.close(CloseReason {
                        code: close_code::REVOKED,
                        reason: "session revoked",
                    });
                    n += 1;
                }
            }
        }
        n
    }

    /// (connections and subscriptions opened since the start, connections
    /// open now): cheap, for watching churn (the stats below visit every
    /// connection).
    pub fn connection_counts(&self) -> (u64, usize) {
        (
            self.inner.next_id.load(Ordering::Relaxed),
            self.inner.conns.len(),
        )
    }

    pub fn stats(&self) -> GatewayStats {
        let s = &self.inner.stats;
        let mut subscriptions = 0;
        let mut max_queued_frames = 0;
        let mut max_queued_bytes = 0;
        for c in self.inner.conns.iter() {
            subscriptions += c.subs.lock().len();
            let (frames, bytes) = c.queued();
            max_queued_frames = max_queued_frames.max(frames);
            max_queued_bytes = max_queued_bytes.max(bytes);
        }
        GatewayStats {
            connections: self.inner.conns.len(),
            subscriptions,
            engine_seq: s.head.load(Ordering::Relaxed),
            builds: s.builds.load(Ordering::Relaxed),
            coalesced: s.coalesced.load(Ordering::Relaxed),
            frames_encoded: s.frames_encoded.load(Ordering::Relaxed),
            frames_shared: s.frames_shared.load(Ordering::Relaxed),
            slow_consumer_closes: s.slow_consumer_closes.load(Ordering::Relaxed),
            candidates_evaluated: s.candidates.load(Ordering::Relaxed),
            views_moved: s.views_moved.load(Ordering::Relaxed),
            frames_direct: s.frames_direct.load(Ordering::Relaxed),
            frames_by_writer: s.frames_by_writer.load(Ordering::Relaxed),
            max_queued_frames,
            max_queued_bytes,
        }
    }
}

impl Gateway {
    /// Publishes [`Gateway::stats`] through the `metrics` facade (called by
    /// the server before each `/metrics` render): `hearth_ws_*` gauges for
    /// what is live now, counters for what happened since the start.
    pub fn publish_metrics(&self) {
        let s = self.stats();
        metrics::gauge!("hearth_ws_connections").set(s.connections as f64);
        metrics::gauge!("hearth_ws_subscriptions").set(s.subscriptions as f64);
        metrics::gauge!("hearth_ws_engine_seq").set(s.engine_seq as f64);
        metrics::gauge!("hearth_ws_max_queued_frames").set(s.max_queued_frames as f64);
        metrics::gauge!("hearth_ws_max_queued_bytes").set(s.max_queued_bytes as f64);
        let counters = [
            ("hearth_ws_view_builds_total", s.builds),
            ("hearth_ws_changes_coalesced_total", s.coalesced),
            ("hearth_ws_frames_encoded_total", s.frames_encoded),
            ("hearth_ws_frames_shared_total", s.frames_shared),
            ("hearth_ws_frames_direct_total", s.frames_direct),
            ("hearth_ws_frames_by_writer_total", s.frames_by_writer),
            (
                "hearth_ws_slow_consumer_closes_total",
                s.slow_consumer_closes,
            ),
            (
                "hearth_ws_candidates_evaluated_total",
                s.candidates_evaluated,
            ),
            ("hearth_ws_views_moved_total", s.views_moved),
        ];
        for (name, value) in counters {
            metrics::counter!(name).absolute(value);
        }
    }
}

/// The router serving `GET /v1/ws`, state applied.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/v1/ws", get(socket::upgrade))
        .with_state(gateway)
}

/// The error code used when a frame is not understood.
pub(crate) fn bad_frame(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidArgument, message)
}
