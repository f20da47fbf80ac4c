//! The connection driver: one task per [`crate::Client`] that owns the socket
//! and every piece of mutable state (subscriptions, the pending-write queue,
//! outstanding requests). The public API talks to it over a channel, so no
//! lock is shared with application code.
//!
//! Life cycle: connect → `hello` → `welcome` → resubscribe every subscription
//! with its last resume token and resend every unacknowledged write with its
//! original mutation id → serve frames until the socket breaks → wait a
//! backoff delay (full jitter) → connect again. Writes and subscriptions
//! made while offline are queued and shown locally (latency compensation).
//!
//! An acknowledged write stays in a subscription's local overlay until that
//! subscription's server position has reached the write's commit, so a
//! document never flickers back to its old state between `write_ok` and the
//! `changes` frame that carries the write (they may arrive in either order).
//!
//! With an offline read cache ([`crate::view_cache`]), a new subscription
//! starts from the cached view and token (shown `from_cache`, resumed from
//! that token), and a server view that changed is saved at most
//! [`VIEW_SAVE_INTERVAL`] later, and when its subscription ends, the
//! connection breaks or the client shuts down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hearth_protocol::{CommitResult, ErrorCode, Timestamp, Write};
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::persist::{self, Journal, StoredWrite, RESEND_HORIZON};
use crate::view::{diff, local_view, QuerySnapshot, ServerView, SnapshotDoc};
use crate::view_cache::ViewCache;
use hearth_protocol::ws::{ClientInfo, ClientMessage, ServerMessage, TransactionRead};

use crate::wire::{self, Encoding, Limits, Target};
use crate::{ClientConfig, ClientError, ConnectionState};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type SnapshotSender = mpsc::UnboundedSender<Result<QuerySnapshot, ClientError>>;
pub(crate) type WriteReply = oneshot::Sender<Result<CommitResult, ClientError>>;

/// Requests from the API to the driver.
pub(crate) enum Command {
    Subscribe {
        sub: String,
        target: Target,
        tx: SnapshotSender,
        /// Snapshots show the server's state only, without pending writes
        /// (a transaction's reads).
        server_only: bool,
    },
    Unsubscribe {
        sub: String,
    },
    Write {
        mutation_id: String,
        writes: Vec<Write>,
        /// `Some` for a transaction: the versions its writes depend on.
        reads: Option<Vec<TransactionRead>>,
        reply: WriteReply,
    },
    SetToken {
        token: Option<String>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// The newest view of a target this client knows, without the server
    /// ([`crate::Client::get_from_cache`]).
    ReadCache {
        target: Target,
        reply: oneshot::Sender<Option<QuerySnapshot>>,
    },
    DebugDisconnect,
    Shutdown,
}

/// Counters the API exposes (see [`crate::ClientStats`]).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub sessions: AtomicU64,
    pub pending_writes: AtomicU64,
    pub expired_writes: AtomicU64,
}

/// How long an acknowledged write may stay in the overlay waiting for its
/// subscription to catch up, before it is dropped anyway.
const ACK_GRACE: Duration = Duration::from_secs(5);
/// A session this long (or one that got any frame after `welcome`) resets
/// the reconnect backoff; a shorter, silent one counts as a failed attempt.
const STABLE_SESSION: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
const DEFAULT_MAX_INFLIGHT: usize = 64;
/// How long a changed server view may wait before it is saved to the view
/// cache (frames arriving meanwhile cost one save).
const VIEW_SAVE_INTERVAL: Duration = Duration::from_millis(500);
/// Most writes stored with one journal sync.
const MAX_GATHERED_WRITES: usize = 256;

struct SubEntry {
    target: Target,
    server: ServerView,
    /// Received a snapshot at least once (until then nothing is emitted).
    has_server_data: bool,
    /// Received its snapshot (or resume confirmation) in this connection.
    synced: bool,
    resume: Option<String>,
    /// The changelog position of `resume`, when the token shows it.
    position: Option<u64>,
    emitted: Vec<SnapshotDoc>,
    emitted_once: bool,
    /// While a write in doubt (see [`PendingWrite::in_doubt`]) touches this
    /// subscription: the server view and position as they were when its
    /// connection broke, which cannot include that write's commit (its
    /// `write_ok` would have come first). Local views are built on this
    /// instead of the live server view until the retry is answered, so the
    /// write is applied exactly once, and new local writes still show.
    frozen: Option<(Vec<hearth_protocol::Document>, Option<u64>)>,
    /// A `reset` snapshot arrived while the view was frozen; the first
    /// snapshot after it carries the flag.
    held_reset: bool,
    /// No pending writes in its snapshots (see [`Command::Subscribe`]).
    server_only: bool,
    /// The server view changed since it was last saved to the view cache.
    unsaved: bool,
    tx: SnapshotSender,
}

struct PendingWrite {
    mutation_id: String,
    writes: Vec<Write>,
    /// A transaction's reads (`None` for a plain write). A transaction may
    /// abort, so it is never shown in local views.
    reads: Option<Vec<TransactionRead>>,
    reply: Option<WriteReply>,
    /// The request id while it is in flight on the current connection.
    in_flight: Option<u64>,
    /// Commit sequence and time of the acknowledgement.
    acked: Option<(u64, Instant)>,
    /// Sent on a connection that broke before its answer: the server may
    /// have applied it, so a resumed subscription may already carry its
    /// commit while it still looks unanswered. Views it touches are held
    /// back until the retry is answered, so it is never counted twice.
    in_doubt: bool,
    /// Answered `unavailable` this many times in a row: the server could
    /// not take it (shutting down, or its storage failed and it refuses
    /// writes until a restart). It stays queued and is resent with the
    /// same mutation id after a backoff, like a write cut off by the network.
    unavailable: u32,
    /// Not sent again before this.
    retry_at: Option<Instant>,
    /// When it first went on the wire (ms since the epoch): one first sent
    /// longer than [`RESEND_HORIZON`] ago is not sent again.
    first_sent_ms: Option<u64>,
}

impl PendingWrite {
    fn new(mutation_id: String, writes: Vec<Write>, reads: Option<Vec<TransactionRead>>) -> Self {
        PendingWrite {
            mutation_id,
            writes,
            reads,
            reply: None,
            in_flight: None,
            acked: None,
            in_doubt: false,
            unavailable: 0,
            retry_at: None,
            first_sent_ms: None,
        }
    }

    /// Kept in the journal: a plain write (transactions are not persisted)
    /// not yet answered.
    fn is_stored(&self) -> bool {
        self.reads.is_none() && self.acked.is_none()
    }

    /// Sent on a broken connection and not answered since (see `in_doubt`).
    fn is_in_doubt(&self) -> bool {
        self.in_doubt && self.acked.is_none()
    }

    /// Whether a view at changelog `position` still needs this write on
    /// top: unanswered, or acknowledged at a commit the view has not
    /// reached yet.
    fn shows_over(&self, position: Option<u64>) -> bool {
        match self.acked {
            None => true,
            Some((seq, _)) => position.is_some_and(|p| p < seq),
        }
    }
}

enum Request {
    Subscribe(String),
    Unsubscribe,
    Write(String),
    Auth,
    Ping,
}

enum Disconnect {
    Shutdown,
    AuthFailed(String),
    Retry(String),
}

pub(crate) struct Driver {
    config: ClientConfig,
    token: Option<String>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    state_tx: watch::Sender<ConnectionState>,
    stats: Arc<Stats>,
    subs: BTreeMap<String, SubEntry>,
    writes: VecDeque<PendingWrite>,
    requests: HashMap<u64, Request>,
    token_waiters: Vec<oneshot::Sender<Result<(), ClientError>>>,
    next_id: u64,
    limits: Option<Limits>,
    connected: bool,
    outbox: Vec<String>,
    /// Frames received in the current session after `welcome`.
    frames_in_session: u64,
    rng: rand::rngs::StdRng,
    /// The on-disk queue ([`crate::ClientConfig::persistence`]).
    journal: Option<Journal>,
    /// The offline read cache ([`crate::ClientConfig::cache_views`]).
    views: Option<ViewCache>,
    /// When unsaved views are next written to `views`.
    next_view_save: Instant,
    /// Writes to be stored in the journal, gathered from a burst of
    /// commands ([`Driver::handle_command`]); not yet shown or sent.
    incoming: Vec<PendingWrite>,
}

impl Driver {
    pub(crate) fn new(
        config: ClientConfig,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        state_tx: watch::Sender<ConnectionState>,
        stats: Arc<Stats>,
        journal: Option<(Journal, Vec<(StoredWrite, WriteReply)>)>,
        views: Option<ViewCache>,
    ) -> Driver {
        let (journal, restored) = match journal {
            Some((journal, restored)) => (Some(journal), restored),
            None => (None, Vec::new()),
        };
        // Restored writes are resent as they were; one that was sent before
        // the restart may have been applied, so it is in doubt.
        let writes = restored
            .into_iter()
            .map(|(stored, reply)| {
                let mut w = PendingWrite::new(stored.mutation_id, stored.writes, None);
                w.in_doubt = stored.first_sent_ms.is_some();
                w.first_sent_ms = stored.first_sent_ms;
                w.reply = Some(reply);
                w
            })
            .collect::<VecDeque<_>>();
        stats
            .pending_writes
            .store(writes.len() as u64, Ordering::Relaxed);
        Driver {
            token: config.token.clone(),
            config,
            cmd_rx,
            state_tx,
            stats,
            subs: BTreeMap::new(),
            writes,
            requests: HashMap::new(),
            token_waiters: Vec::new(),
            next_id: 1,
            limits: None,
            connected: false,
            outbox: Vec::new(),
            frames_in_session: 0,
            rng: rand::rngs::StdRng::from_entropy(),
            journal,
            views,
            next_view_save: Instant::now(),
            incoming: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut auth_failed = false;
        loop {
            if auth_failed {
                // Wait for a new credential (or shutdown) before trying again.
                match self.cmd_rx.recv().await {
                    None | Some(Command::Shutdown) => return self.close_all(),
                    Some(Command::SetToken { token, reply }) => {
                        self.token = token;
                        self.token_waiters.push(reply);
                        auth_failed = false;
                    }
                    Some(cmd) => self.handle_command(cmd),
                }
                continue;
            }
            self.state_tx
                .send_replace(ConnectionState::Connecting { attempt });
            let hello = wire::encode(&ClientMessage::Hello {
                protocol: wire::PROTOCOL_VERSION,
                client: ClientInfo {
                    name: self.config.client_name.clone(),
                    version: self.config.client_version.clone(),
                },
                token: self.token.clone(),
            });
            let connect = handshake(
                self.config.ws_url.clone(),
                hello,
                self.config.connect_timeout,
                self.config.encoding,
            );
            tokio::pin!(connect);
            let outcome = loop {
                tokio::select! {
                    result = &mut connect => break Some(result),
                    cmd = self.cmd_rx.recv() => match cmd {
                        None | Some(Command::Shutdown) => break None,
                        Some(Command::DebugDisconnect) => {}
                        Some(cmd) => self.handle_command(cmd),
                    },
                }
            };
            let reason = match outcome {
                None => return self.close_all(),
                Some(Ok((socket, welcome))) => {
                    // A session that dies right after `welcome` (a server
                    // that closes at once, a proxy in trouble) counts as a
                    // failed attempt, or the client would reconnect every
                    // `backoff.initial` forever.
                    let started = Instant::now();
                    self.frames_in_session = 0;
                    let ended = self.session(socket, welcome).await;
                    if started.elapsed() >= STABLE_SESSION || self.frames_in_session > 0 {
                        attempt = 0;
                    } else {
                        attempt = attempt.saturating_add(1);
                    }
                    match ended {
                        Disconnect::Shutdown => return self.close_all(),
                        Disconnect::AuthFailed(message) => {
                            self.auth_failure(message);
                            auth_failed = true;
                            continue;
                        }
                        Disconnect::Retry(reason) => reason,
                    }
                }
                Some(Err(HandshakeError::Auth(message))) => {
                    self.auth_failure(message);
                    auth_failed = true;
                    continue;
                }
                Some(Err(HandshakeError::Other(reason))) => {
                    attempt = attempt.saturating_add(1);
                    reason
                }
            };
            let delay = self.config.backoff.delay(attempt, &mut self.rng);
            tracing::debug!(%reason, ?delay, "hearth connection lost; reconnecting");
            self.state_tx.send_replace(ConnectionState::Offline {
                reason,
                retry_in: delay,
            });
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = self.cmd_rx.recv() => match cmd {
                        None | Some(Command::Shutdown) => return self.close_all(),
                        Some(Command::DebugDisconnect) => {}
                        Some(cmd) => self.handle_command(cmd),
                    },
                }
            }
        }
    }

    fn auth_failure(&mut self, message: String) {
        tracing::warn!(%message, "hearth credential rejected; waiting for set_token");
        for waiter in self.token_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Unauthenticated(message.clone())));
        }
        self.state_tx
            .send_replace(ConnectionState::AuthFailed { message });
    }

    /// Ends every stream and fails every waiting write. Unanswered writes
    /// stay in the journal, whose lock is released before `Closed` is
    /// announced: once [`crate::Client::shutdown`] returns, another client
    /// may open the directory.
    fn close_all(mut self) {
        // Gathered writes are stored, like every unanswered write, for the
        // next start.
        self.store_incoming();
        self.save_views();
        drop(self.views.take());
        drop(self.journal.take());
        self.state_tx.send_replace(ConnectionState::Closed);
        for w in self.writes.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(ClientError::Closed));
            }
        }
        for waiter in self.token_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Closed));
        }
        self.stats.pending_writes.store(0, Ordering::Relaxed);
    }

    async fn session(&mut self, mut socket: Socket, welcome: Welcome) -> Disconnect {
        self.connected = true;
        self.limits = Some(welcome.limits);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.state_tx.send_replace(ConnectionState::Connected {
            session_id: welcome.session_id,
            uid: welcome.uid,
            admin: welcome.admin,
        });
        for waiter in self.token_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
        let heartbeat = non_zero(welcome.heartbeat).unwrap_or(DEFAULT_HEARTBEAT);
        let idle_timeout = non_zero(welcome.idle_timeout).unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let subs: Vec<String> = self.subs.keys().cloned().collect();
        for sub in subs {
            self.send_subscribe(&sub);
        }
        self.send_writes();
        let mut last_received = Instant::now();
        let mut last_sent = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        let result = loop {
            if !self.outbox.is_empty() {
                last_sent = Instant::now();
                if let Err(e) = flush(&mut socket, &mut self.outbox, self.config.encoding).await {
                    break Disconnect::Retry(format!("send failed: {e}"));
                }
            }
            tokio::select! {
                message = socket.next() => {
                    last_received = Instant::now();
                    match message {
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                            match self.config.encoding.text_of(&m) {
                                Some(Ok(text)) => {
                                    if let Err(d) = self.on_frame(&text) {
                                        break d;
                                    }
                                }
                                Some(Err(e)) => break Disconnect::Retry(format!("bad frame: {e}")),
                                None => {}
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            break close_to_disconnect(code, reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Disconnect::Retry(format!("socket error: {e}")),
                        None => break Disconnect::Retry("connection closed".into()),
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => {
                        let _ = socket.close(None).await;
                        break Disconnect::Shutdown;
                    }
                    // Drop the socket without a close frame, as a network failure would.
                    Some(Command::DebugDisconnect) => {
                        break Disconnect::Retry("debug_disconnect".into());
                    }
                    Some(cmd) => self.handle_command(cmd),
                },
                _ = tick.tick() => {
                    if last_received.elapsed() > idle_timeout {
                        break Disconnect::Retry("no frame from the server within the idle timeout".into());
                    }
                    if last_sent.elapsed() > heartbeat {
                        let id = self.request(Request::Ping);
                        self.outbox.push(wire::encode(&ClientMessage::Ping { id }));
                    }
                    self.prune_acked();
                    self.send_writes();
                    if Instant::now() >= self.next_view_save {
                        self.save_views();
                        self.next_view_save = Instant::now() + VIEW_SAVE_INTERVAL;
                    }
                }
            }
        };
        drop(socket);
        self.save_views();
        self.connected = false;
        self.outbox.clear();
        self.requests.clear();
        for w in &mut self.writes {
            if w.in_flight.take().is_some() && w.acked.is_none() {
                w.in_doubt = true;
            }
        }
        for entry in self.subs.values_mut() {
            let touched = self
                .writes
                .iter()
                .any(|w| w.is_in_doubt() && entry.overlay_applies(w));
            if touched && entry.frozen.is_none() && entry.has_server_data {
                entry.frozen = Some((entry.server.docs.clone(), entry.position));
            }
        }
        for entry in self.subs.values_mut() {
            entry.synced = false;
        }
        result
    }

    fn request(&mut self, request: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.requests.insert(id, request);
        id
    }

    fn send_subscribe(&mut self, sub: &str) {
        if !self.connected {
            return;
        }
        let id = self.request(Request::Subscribe(sub.to_string()));
        if let Some(entry) = self.subs.get(sub) {
            self.outbox.push(wire::encode(&ClientMessage::Subscribe {
                id,
                sub: sub.to_string(),
                target: entry.target.clone(),
                resume: entry.resume.clone(),
            }));
        }
    }

    /// Sends queued writes, oldest first, up to the server's in-flight limit.
    fn send_writes(&mut self) {
        if !self.connected {
            return;
        }
        self.drop_expired_writes();
        let limit = self
            .limits
            .map(|l| l.max_inflight_writes.max(1) as usize)
            .unwrap_or(DEFAULT_MAX_INFLIGHT);
        let in_flight = self
            .writes
            .iter()
            .filter(|w| w.in_flight.is_some() && w.acked.is_none())
            .count();
        let now = Instant::now();
        // In queue order, stopping at a write that waits to be resent: the
        // server applies a connection's writes in the order they arrive
        // (PROTOCOL.md §7), so none may overtake it.
        let to_send: Vec<usize> = (0..self.writes.len())
            .filter(|&i| {
                let w = &self.writes[i];
                w.in_flight.is_none() && w.acked.is_none()
            })
            .take_while(|&i| self.writes[i].retry_at.is_none_or(|at| at <= now))
            .take(limit.saturating_sub(in_flight))
            .collect();
        if to_send.is_empty() {
            return;
        }
        // A write's first trip on the wire is recorded before it happens:
        // from then on the server may have applied it.
        let now_ms = persist::now_ms();
        let first_trips: Vec<String> = to_send
            .iter()
            .map(|&i| &self.writes[i])
            .filter(|w| w.first_sent_ms.is_none() && w.is_stored())
            .map(|w| w.mutation_id.clone())
            .collect();
        if let Some(journal) = self.journal.as_mut() {
            if let Err(e) = journal.sent(&first_trips, now_ms) {
                tracing::error!(error = %e, "cannot record writes as sent; holding them back");
                let retry_at = now + self.config.backoff.initial.max(Duration::from_millis(100));
                for &i in &to_send {
                    self.writes[i].retry_at = Some(retry_at);
                }
                return;
            }
        }
        for i in to_send {
            let id = self.next_id;
            self.next_id += 1;
            let w = &mut self.writes[i];
            w.first_sent_ms.get_or_insert(now_ms);
            w.in_flight = Some(id);
            let mutation_id = w.mutation_id.clone();
            let writes = w.writes.clone();
            let frame = wire::encode(&match &w.reads {
                None => ClientMessage::Write {
                    id,
                    mutation_id: mutation_id.clone(),
                    writes,
                },
                Some(reads) => ClientMessage::Transaction {
                    id,
                    mutation_id: mutation_id.clone(),
                    reads: reads.clone(),
                    writes,
                },
            });
            self.requests.insert(id, Request::Write(mutation_id));
            self.outbox.push(frame);
        }
    }

    /// Fails every unanswered write first sent longer than
    /// [`RESEND_HORIZON`] ago instead of sending it again: the server keeps
    /// a mutation id for 24 hours, so a resend could apply it twice.
    fn drop_expired_writes(&mut self) {
        let now_ms = persist::now_ms();
        let horizon = RESEND_HORIZON.as_millis() as u64;
        let expired: Vec<String> = self
            .writes
            .iter()
            .filter(|w| {
                w.acked.is_none()
                    && w.in_flight.is_none()
                    && w.first_sent_ms
                        .is_some_and(|at| now_ms.saturating_sub(at) > horizon)
            })
            .map(|w| w.mutation_id.clone())
            .collect();
        for mutation_id in expired {
            self.stats.expired_writes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                mutation_id,
                "dropping a write first sent more than 23 hours ago and never answered"
            );
            self.remove_write(
                &mutation_id,
                Err(ClientError::WriteExpired(format!(
                    "write {mutation_id} was first sent more than 23 hours ago; the server may \
                     have forgotten it, so it was not sent again"
                ))),
            );
        }
    }

    /// Handles one command from the API. Plain writes to be stored in the
    /// journal are gathered while more commands wait in the channel, and
    /// stored with one sync before any other command is handled (so a write
    /// is shown before anything that follows it) or once the channel is
    /// empty.
    fn handle_command(&mut self, cmd: Command) {
        let gathered = self.journal.is_some()
            && matches!(&cmd, Command::Write { reads: None, .. })
            && self.incoming.len() < MAX_GATHERED_WRITES;
        if !gathered {
            self.store_incoming();
        }
        self.apply_command(cmd);
        if self.cmd_rx.is_empty() {
            self.store_incoming();
        }
    }

    /// Stores the gathered writes (one append, one sync) and queues them:
    /// from now on they show in views and go out.
    fn store_incoming(&mut self) {
        if self.incoming.is_empty() {
            return;
        }
        let incoming = std::mem::take(&mut self.incoming);
        let stored = match self.journal.as_mut() {
            Some(journal) => journal.queued_all(
                incoming
                    .iter()
                    .map(|w| (w.mutation_id.as_str(), w.writes.as_slice())),
            ),
            None => Ok(()),
        };
        match stored {
            Ok(()) => self.writes.extend(incoming),
            Err(e) => {
                for w in incoming {
                    if let Some(reply) = w.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                return;
            }
        }
        self.update_pending_count();
        self.send_writes();
        self.emit_all();
    }

    fn apply_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe {
                sub,
                target,
                tx,
                server_only,
            } => {
                // One-shot and transaction reads (`server_only`) must see
                // the server's document: they neither use nor fill the cache.
                let cached = match &self.views {
                    Some(views) if !server_only => views.load(&target),
                    _ => None,
                };
                let mut entry = SubEntry {
                    target,
                    server: ServerView::default(),
                    has_server_data: false,
                    synced: false,
                    resume: None,
                    position: None,
                    emitted: Vec::new(),
                    emitted_once: false,
                    frozen: None,
                    held_reset: false,
                    server_only,
                    unsaved: false,
                    tx,
                };
                // Start from the cached view: shown at once (not synced, so
                // `from_cache`), and resumed from its token.
                let from_cache = cached.is_some();
                if let Some(cached) = cached {
                    entry.server.replace(cached.docs);
                    entry.has_server_data = true;
                    entry.set_resume(cached.resume);
                }
                self.subs.insert(sub.clone(), entry);
                if from_cache {
                    self.emit(&sub, true, false);
                }
                self.send_subscribe(&sub);
            }
            Command::Unsubscribe { sub } => {
                if let Some(mut entry) = self.subs.remove(&sub) {
                    entry.save_to(self.views.as_ref());
                    if self.connected {
                        let id = self.request(Request::Unsubscribe);
                        self.outbox
                            .push(wire::encode(&ClientMessage::Unsubscribe { id, sub }));
                    }
                }
            }
            Command::Write {
                mutation_id,
                writes,
                reads,
                reply,
            } => {
                let stored = self.journal.is_some() && reads.is_none();
                let mut w = PendingWrite::new(mutation_id, writes, reads);
                w.reply = Some(reply);
                if stored {
                    // Stored (by `store_incoming`) before it shows anywhere
                    // or goes out.
                    self.incoming.push(w);
                    return;
                }
                self.writes.push_back(w);
                self.update_pending_count();
                self.send_writes();
                self.emit_all();
            }
            Command::SetToken { token, reply } => {
                self.token = token.clone();
                match (&token, self.connected) {
                    (Some(token), true) => {
                        let id = self.request(Request::Auth);
                        self.outbox.push(wire::encode(&ClientMessage::Auth {
                            id,
                            token: token.clone(),
                        }));
                        self.token_waiters.push(reply);
                    }
                    // Used by the next hello.
                    _ => self.token_waiters.push(reply),
                }
            }
            Command::ReadCache { target, reply } => {
                let _ = reply.send(self.read_cache(&target));
            }
            Command::DebugDisconnect | Command::Shutdown => {}
        }
    }

    fn on_frame(&mut self, text: &str) -> Result<(), Disconnect> {
        self.frames_in_session += 1;
        let frame = match wire::decode(text) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from the server; reconnecting");
                return Err(Disconnect::Retry(format!("bad frame: {e}")));
            }
        };
        match frame {
            ServerMessage::Snapshot {
                sub,
                resume,
                reset,
                docs,
            } => {
                if let Some(entry) = self.subs.get_mut(&sub) {
                    entry.server.replace(docs);
                    entry.unsaved = true;
                    entry.has_server_data = true;
                    entry.synced = true;
                    entry.set_resume(resume);
                    // The overlay already skips writes this position covers;
                    // pruning afterwards only tidies the queue.
                    self.emit(&sub, true, reset);
                    self.prune_acked();
                }
            }
            ServerMessage::Changes {
                sub,
                resume,
                changes,
            } => {
                if let Some(entry) = self.subs.get_mut(&sub) {
                    if let Err(mismatch) = entry.server.apply(&entry.target, &changes) {
                        tracing::warn!(
                            sub,
                            why = mismatch.0,
                            "server change indices disagree with the view; repaired by path"
                        );
                    }
                    entry.unsaved = true;
                    entry.has_server_data = true;
                    entry.synced = true;
                    entry.set_resume(resume);
                    self.emit(&sub, true, false);
                    self.prune_acked();
                }
            }
            ServerMessage::WriteOk {
                id,
                mutation_id,
                result,
                ..
            } => {
                self.requests.remove(&id);
                if let Some(w) = self
                    .writes
                    .iter_mut()
                    .find(|w| w.mutation_id == mutation_id && w.acked.is_none())
                {
                    let stored = w.is_stored();
                    w.acked = Some((result.seq, Instant::now()));
                    if let Some(reply) = w.reply.take() {
                        let _ = reply.send(Ok(result));
                    }
                    if stored {
                        self.forget_stored(&mutation_id);
                    }
                }
                self.prune_acked();
                self.update_pending_count();
                self.send_writes();
                self.emit_all();
            }
            ServerMessage::Error {
                id,
                sub,
                code,
                message,
                ..
            } => {
                let request = id.and_then(|id| self.requests.remove(&id));
                let sub = sub.or(match &request {
                    Some(Request::Subscribe(sub)) => Some(sub.clone()),
                    _ => None,
                });
                match (request, sub) {
                    // Nothing was applied: `unavailable` (the server cannot
                    // take writes now) or `resource-exhausted` (more writes in
                    // flight than `max_inflight_writes`, PROTOCOL.md §7).
                    (Some(Request::Write(mutation_id)), _)
                        if matches!(
                            code,
                            ErrorCode::Unavailable | ErrorCode::ResourceExhausted
                        ) =>
                    {
                        self.retry_later(&mutation_id, message)
                    }
                    (Some(Request::Write(mutation_id)), _) => {
                        self.fail_write(&mutation_id, code, message)
                    }
                    (Some(Request::Auth), _) => {
                        let error = ClientError::server(code, message);
                        for waiter in self.token_waiters.drain(..) {
                            let _ = waiter.send(Err(error.clone()));
                        }
                    }
                    (_, Some(sub)) => {
                        if let Some(entry) = self.subs.remove(&sub) {
                            // What it may no longer read is not shown again.
                            if let Some(views) = &self.views {
                                views.remove(&entry.target);
                            }
                            let _ = entry.tx.send(Err(ClientError::server(code, message)));
                        }
                    }
                    _ => tracing::warn!(%code, %message, "error from the server"),
                }
            }
            ServerMessage::AuthOk { id, .. } => {
                self.requests.remove(&id);
                for waiter in self.token_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
            ServerMessage::Unsubscribed { id, .. } => {
                self.requests.remove(&id);
            }
            ServerMessage::Ping { id } => {
                self.outbox.push(wire::encode(&ClientMessage::Pong { id }));
            }
            ServerMessage::Pong { id } => {
                self.requests.remove(&id);
            }
            ServerMessage::Welcome { .. } => {
                return Err(Disconnect::Retry("unexpected second welcome".into()))
            }
        }
        Ok(())
    }

    /// A write answered `unavailable` (nothing durable happened for it, or
    /// the server stopped taking writes until a restart): keep it queued,
    /// with its mutation id, and resend it after a backoff.
    fn retry_later(&mut self, mutation_id: &str, message: String) {
        if let Some(w) = self
            .writes
            .iter_mut()
            .find(|w| w.mutation_id == mutation_id && w.acked.is_none())
        {
            w.in_flight = None;
            w.unavailable = w.unavailable.saturating_add(1);
            let delay = self
                .config
                .backoff
                .delay(w.unavailable, &mut self.rng)
                .max(self.config.backoff.initial / 2);
            w.retry_at = Some(Instant::now() + delay);
            tracing::debug!(mutation_id, %message, ?delay, "write unavailable; retrying later");
        }
    }

    fn fail_write(&mut self, mutation_id: &str, code: ErrorCode, message: String) {
        self.remove_write(mutation_id, Err(ClientError::server(code, message)));
    }

    /// Takes an unanswered write out of the queue (and the journal) and
    /// answers its caller with `outcome`.
    fn remove_write(&mut self, mutation_id: &str, outcome: Result<CommitResult, ClientError>) {
        if let Some(i) = self
            .writes
            .iter()
            .position(|w| w.mutation_id == mutation_id && w.acked.is_none())
        {
            if let Some(w) = self.writes.remove(i) {
                if w.is_stored() {
                    self.forget_stored(mutation_id);
                }
                if let Some(reply) = w.reply {
                    let _ = reply.send(outcome);
                }
            }
        }
        self.update_pending_count();
        self.send_writes();
        self.emit_all();
    }

    /// Records in the journal that a stored write was answered.
    fn forget_stored(&mut self, mutation_id: &str) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let writes = &self.writes;
        let queue = || {
            writes
                .iter()
                .filter(|w| w.is_stored())
                .map(|w| StoredWrite {
                    mutation_id: w.mutation_id.clone(),
                    writes: w.writes.clone(),
                    first_sent_ms: w.first_sent_ms,
                })
                .collect()
        };
        if let Err(e) = journal.done(mutation_id, queue) {
            tracing::warn!(error = %e, mutation_id, "cannot record an answered write in the journal");
        }
    }

    /// Drops acknowledged writes every subscription has caught up with (or
    /// that waited longer than [`ACK_GRACE`]).
    fn prune_acked(&mut self) {
        let before = self.writes.len();
        let subs = &self.subs;
        self.writes.retain(|w| match w.acked {
            None => true,
            Some((seq, at)) => {
                at.elapsed() < ACK_GRACE
                    && subs
                        .values()
                        .any(|s| s.position.is_some_and(|p| p < seq) && s.overlay_applies(w))
            }
        });
        if self.writes.len() != before {
            self.emit_all();
        }
    }

    /// The newest server view of `target` this client has (a live
    /// subscription's, else the view cache's) with the pending writes on
    /// top; `None` when it has none, or when a write in doubt touches it
    /// (the server view may or may not already hold that write).
    fn read_cache(&self, target: &Target) -> Option<QuerySnapshot> {
        let live = self
            .subs
            .values()
            .find(|e| e.target == *target && e.has_server_data && !e.server_only);
        let (server, resume, synced) = match live {
            Some(entry) => (
                entry.server.docs.clone(),
                entry.resume.clone(),
                entry.synced,
            ),
            None => {
                let cached = self.views.as_ref()?.load(target)?;
                (cached.docs, Some(cached.resume), false)
            }
        };
        let touches = |w: &&PendingWrite| w.reads.is_none() && touches_target(target, w);
        if self.writes.iter().filter(touches).any(|w| w.is_in_doubt()) {
            return None;
        }
        let position = resume.as_deref().and_then(wire::parse_resume_token);
        let overlay = self
            .writes
            .iter()
            .filter(touches)
            .filter(|w| w.shows_over(position));
        let docs = local_view(
            target,
            &server,
            overlay.map(|w| w.writes.as_slice()),
            Timestamp::now(),
        );
        Some(QuerySnapshot {
            changes: diff(&[], &docs),
            has_pending_writes: docs.iter().any(|d| d.pending),
            docs,
            from_cache: !synced,
            reset: false,
            resume,
        })
    }

    /// Writes every changed server view to the view cache.
    fn save_views(&mut self) {
        for entry in self.subs.values_mut() {
            entry.save_to(self.views.as_ref());
        }
    }

    fn update_pending_count(&self) {
        let n = self.writes.iter().filter(|w| w.acked.is_none()).count();
        self.stats.pending_writes.store(n as u64, Ordering::Relaxed);
    }

    fn emit_all(&mut self) {
        let subs: Vec<String> = self.subs.keys().cloned().collect();
        for sub in subs {
            self.emit(&sub, false, false);
        }
    }

    /// Recomputes a subscription's local view and sends a snapshot if it
    /// changed (or `force`, for every server frame).
    fn emit(&mut self, sub: &str, force: bool, reset: bool) {
        let Some(entry) = self.subs.get_mut(sub) else {
            return;
        };
        if !entry.has_server_data {
            return;
        }
        let held = self
            .writes
            .iter()
            .any(|w| w.is_in_doubt() && entry.overlay_applies(w));
        if held && reset {
            entry.held_reset = true;
        }
        if held && entry.frozen.is_none() {
            // A write in doubt touches this view and there is no state from
            // before it was sent (a subscription made after the break, or
            // after a restart): the server's view may already contain the
            // write, so nothing is shown until the retry is answered.
            return;
        }
        let entry = &*entry;
        let (base, position) = match (&entry.frozen, held) {
            (Some((docs, position)), true) => (docs.as_slice(), *position),
            _ => (entry.server.docs.as_slice(), entry.position),
        };
        let thawed = entry.frozen.is_some() && !held;
        let force = force || thawed;
        let reset_now = !held && (reset || entry.held_reset);
        let overlay = self
            .writes
            .iter()
            .filter(|w| entry.overlay_applies(w) && w.shows_over(position));
        let local = local_view(
            &entry.target,
            base,
            overlay.map(|w| w.writes.as_slice()),
            Timestamp::now(),
        );
        let changes = diff(&entry.emitted, &local);
        let has_pending = local.iter().any(|d| d.pending);
        let had_pending = entry.emitted.iter().any(|d| d.pending);
        if !force && entry.emitted_once && changes.is_empty() && has_pending == had_pending {
            return;
        }
        let reset = reset_now;
        let snapshot = QuerySnapshot {
            docs: local.clone(),
            changes,
            from_cache: !entry.synced,
            has_pending_writes: has_pending,
            reset,
            resume: entry.resume.clone(),
        };
        let delivered = entry.tx.send(Ok(snapshot)).is_ok();
        if let Some(entry) = self.subs.get_mut(sub) {
            entry.emitted = local;
            entry.emitted_once = true;
            if !held {
                entry.held_reset = false;
                entry.frozen = None;
            }
        }
        if !delivered {
            if let Some(mut entry) = self.subs.remove(sub) {
                entry.save_to(self.views.as_ref());
            }
        }
    }
}

impl SubEntry {
    /// Writes the server view, with the token it is at, to the view cache
    /// if it changed since it was last saved.
    fn save_to(&mut self, views: Option<&ViewCache>) {
        let (Some(views), Some(resume), true, false) =
            (views, &self.resume, self.unsaved, self.server_only)
        else {
            return;
        };
        match views.save(&self.target, &self.server.docs, resume) {
            Ok(()) => self.unsaved = false,
            Err(e) => tracing::warn!(error = %e, "cannot save a view to the offline cache"),
        }
    }

    fn set_resume(&mut self, token: String) {
        self.position = wire::parse_resume_token(&token);
        self.resume = Some(token);
    }

    /// Whether `w` shows in this subscription's local view: a plain write
    /// that touches its target (a transaction may abort, and a server-only
    /// subscription shows no pending write).
    fn overlay_applies(&self, w: &PendingWrite) -> bool {
        !self.server_only && w.reads.is_none() && touches_target(&self.target, w)
    }
}

/// Whether one of `w`'s writes is to a document `target` covers.
fn touches_target(target: &Target, w: &PendingWrite) -> bool {
    w.writes.iter().any(|write| match target {
        Target::Doc(p) => *p == write.path,
        Target::Query(q) => q.source.contains(&write.path),
    })
}

async fn flush(
    socket: &mut Socket,
    outbox: &mut Vec<String>,
    encoding: Encoding,
) -> Result<(), String> {
    for text in outbox.drain(..) {
        socket
            .feed(encoding.frame(text))
            .await
            .map_err(|e| e.to_string())?;
    }
    socket.flush().await.map_err(|e| e.to_string())
}

fn close_to_disconnect(code: u16, reason: String) -> Disconnect {
    match code {
        4001 | 4003 => Disconnect::AuthFailed(format!("closed with {code}: {reason}")),
        _ => Disconnect::Retry(format!("closed by the server with {code}: {reason}")),
    }
}

struct Welcome {
    session_id: String,
    uid: Option<String>,
    admin: bool,
    heartbeat: Duration,
    idle_timeout: Duration,
    limits: Limits,
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

enum HandshakeError {
    Auth(String),
    Other(String),
}

/// Opens the socket, sends `hello` and waits for `welcome`, within `timeout`.
async fn handshake(
    url: String,
    hello: String,
    timeout: Duration,
    encoding: Encoding,
) -> Result<(Socket, Welcome), HandshakeError> {
    let attempt = async {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| HandshakeError::Other(format!("bad url {url}: {e}")))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(encoding.subprotocol()),
        );
        let (mut socket, _response) =
            tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(response)
                        if response.status().as_u16() == 401 =>
                    {
                        HandshakeError::Auth("the server answered 401".into())
                    }
                    e => HandshakeError::Other(format!("connect to {url}: {e}")),
                })?;
        socket
            .send(encoding.frame(hello))
            .await
            .map_err(|e| HandshakeError::Other(format!("send hello: {e}")))?;
        loop {
            match socket.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => match encoding
                    .text_of(&m)
                    .unwrap_or_else(|| Err("no data".into()))
                    .and_then(|text| wire::decode(&text))
                {
                    Ok(Some(ServerMessage::Welcome {
                        session_id,
                        heartbeat_ms,
                        idle_timeout_ms,
                        limits,
                        uid,
                        admin,
                        ..
                    })) => {
                        return Ok((
                            socket,
                            Welcome {
                                session_id,
                                uid,
                                admin,
                                heartbeat: Duration::from_millis(heartbeat_ms),
                                idle_timeout: Duration::from_millis(idle_timeout_ms),
                                limits,
                            },
                        ))
                    }
                    Ok(Some(ServerMessage::Error { code, message, .. })) => {
                        return Err(match code {
                            ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => {
                                HandshakeError::Auth(message)
                            }
                            _ => HandshakeError::Other(format!("{code}: {message}")),
                        })
                    }
                    Ok(_) => {}
                    Err(e) => return Err(HandshakeError::Other(format!("bad frame: {e}"))),
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(match close_to_disconnect(code, reason) {
                        Disconnect::AuthFailed(m) => HandshakeError::Auth(m),
                        Disconnect::Retry(m) => HandshakeError::Other(m),
                        Disconnect::Shutdown => HandshakeError::Other("closed".into()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(HandshakeError::Other(format!("socket error: {e}"))),
                None => return Err(HandshakeError::Other("closed before welcome".into())),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Other(format!(
            "no welcome within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{DocPath, Map};

    fn driver() -> Driver {
        let (driver, _commands) = driver_with(None);
        driver
    }

    /// A connected driver (with `journal`, if given) and the sending end of
    /// its command channel.
    fn driver_with(journal: Option<Journal>) -> (Driver, mpsc::UnboundedSender<Command>) {
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, _state) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let mut driver = Driver::new(
            ClientConfig::new("ws://127.0.0.1:1/v1/ws"),
            cmd_rx,
            state_tx,
            Arc::new(Stats::default()),
            journal.map(|j| (j, Vec::new())),
            None,
        );
        driver.connected = true;
        (driver, commands)
    }

    fn queued(driver: &mut Driver, id: &str, first_sent_ms: Option<u64>) -> WriteReplyRx {
        let (reply, rx) = oneshot::channel();
        let path = DocPath::parse("c/a").unwrap();
        let mut w = PendingWrite::new(id.into(), vec![Write::set(path, Map::new())], None);
        w.reply = Some(reply);
        w.first_sent_ms = first_sent_ms;
        driver.writes.push_back(w);
        rx
    }

    type WriteReplyRx = oneshot::Receiver<Result<CommitResult, ClientError>>;

    /// A `set` of `c/<id>` to no fields, under mutation id `id`.
    fn write_command(id: &str) -> (Command, WriteReplyRx) {
        let (reply, rx) = oneshot::channel();
        let path = DocPath::parse(&format!("c/{id}")).unwrap();
        let command = Command::Write {
            mutation_id: id.into(),
            writes: vec![Write::set(path, Map::new())],
            reads: None,
            reply,
        };
        (command, rx)
    }

    #[test]
    fn no_write_overtakes_one_waiting_to_be_resent() {
        let mut driver = driver();
        let _first = queued(&mut driver, "first", None);
        let _second = queued(&mut driver, "second", None);
        driver.writes[0].retry_at = Some(Instant::now() + Duration::from_secs(60));
        driver.send_writes();
        assert!(driver.outbox.is_empty(), "{:?}", driver.outbox);
        driver.writes[0].retry_at = Some(Instant::now());
        driver.send_writes();
        assert_eq!(driver.outbox.len(), 2);
        assert!(driver.outbox[0].contains("\"first\""), "oldest first");
        assert!(driver.outbox[1].contains("\"second\""));
    }

    #[test]
    fn a_cache_read_is_the_newest_server_view_with_pending_writes_and_nothing_while_in_doubt() {
        let (mut driver, _commands) = driver_with(None);
        let a = Target::Doc(DocPath::parse("c/a").unwrap());
        let (tx, _snapshots) = mpsc::unbounded_channel();
        driver.handle_command(Command::Subscribe {
            sub: "s".into(),
            target: a.clone(),
            tx,
            server_only: false,
        });
        assert_eq!(
            driver.read_cache(&a),
            None,
            "no server data yet, and no cache"
        );
        driver
            .on_frame(
                r#"{"type":"snapshot","sub":"s","resume":"p5","reset":false,"docs":[{"path":"c/a",
                "fields":{"n":1},"create_time":"2026-01-01T00:00:00Z",
                "update_time":"2026-01-01T00:00:00Z","version":5}]}"#,
            )
            .unwrap_or_else(|_| panic!("the snapshot frame is accepted"));
        let read = driver.read_cache(&a).unwrap();
        assert!(
            !read.from_cache,
            "a live, synced subscription has the server's view"
        );
        assert_eq!(read.resume.as_deref(), Some("p5"));
        assert!(!read.has_pending_writes);
        // A pending write shows on top of it.
        let (command, _rx) = write_command("a");
        driver.handle_command(command);
        let read = driver.read_cache(&a).unwrap();
        assert!(read.has_pending_writes && read.docs[0].pending);
        assert_eq!(
            read.docs[0].doc.fields,
            Map::new(),
            "the pending set replaced the fields"
        );
        assert_eq!(read.changes.len(), 1, "every document, as added");
        // Sent, then the connection broke before its answer: in doubt.
        driver.send_writes();
        driver.writes[0].in_doubt = true;
        assert_eq!(driver.read_cache(&a), None);
        let other = Target::Doc(DocPath::parse("c/b").unwrap());
        assert_eq!(driver.read_cache(&other), None, "no view of another target");
    }

    #[test]
    fn a_burst_of_writes_is_stored_with_one_sync_in_order_before_the_next_command() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), persist::now_ms()).unwrap();
        let (mut driver, commands) = driver_with(Some(journal));
        // Three writes and a subscription wait in the channel, as when the
        // application makes them faster than the driver runs.
        let mut replies = Vec::new();
        for id in ["w1", "w2", "w3"] {
            let (command, rx) = write_command(id);
            commands.send(command).unwrap();
            replies.push(rx);
        }
        let (tx, mut snapshots) = mpsc::unbounded_channel();
        commands
            .send(Command::Subscribe {
                sub: "s".into(),
                target: Target::Doc(DocPath::parse("c/w1").unwrap()),
                tx,
                server_only: false,
            })
            .unwrap();
        let journal_lines = || {
            std::fs::read_to_string(dir.path().join("pending-writes.jsonl"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("{\"queued\""))
                .count()
        };
        for _ in 0..2 {
            let cmd = driver.cmd_rx.try_recv().unwrap();
            driver.handle_command(cmd);
        }
        assert!(
            driver.writes.is_empty(),
            "gathered, not yet shown or queued"
        );
        assert_eq!(journal_lines(), 0, "nothing stored yet");
        let cmd = driver.cmd_rx.try_recv().unwrap();
        driver.handle_command(cmd);
        assert!(
            driver.writes.is_empty(),
            "a subscription still waits in the channel"
        );
        // The subscription is not a write: the writes before it are stored
        // (one append, one sync) and queued first, in order.
        let cmd = driver.cmd_rx.try_recv().unwrap();
        driver.handle_command(cmd);
        let queued: Vec<&str> = driver
            .writes
            .iter()
            .map(|w| w.mutation_id.as_str())
            .collect();
        assert_eq!(queued, ["w1", "w2", "w3"]);
        assert_eq!(journal_lines(), 3);
        assert_eq!(driver.stats.pending_writes.load(Ordering::Relaxed), 3);
        assert!(
            replies.iter_mut().all(|rx| rx.try_recv().is_err()),
            "unanswered"
        );
        assert!(snapshots.try_recv().is_err(), "no server data yet");
        // A lone write is stored at once: the channel is empty.
        let (command, _rx) = write_command("w4");
        driver.handle_command(command);
        assert_eq!(driver.writes.len(), 4);
        assert_eq!(journal_lines(), 4);
    }

    #[test]
    fn a_write_first_sent_beyond_the_horizon_is_failed_instead_of_resent() {
        let mut driver = driver();
        let day_ago = persist::now_ms() - 24 * 3600 * 1000;
        let hour_ago = persist::now_ms() - 3600 * 1000;
        let mut stale = queued(&mut driver, "stale", Some(day_ago));
        let _recent = queued(&mut driver, "recent", Some(hour_ago));
        let _never_sent = queued(&mut driver, "new", None);
        driver.send_writes();
        match stale.try_recv() {
            Ok(Err(e @ ClientError::WriteExpired(_))) => {
                assert_eq!(e.code(), ErrorCode::DeadlineExceeded)
            }
            other => panic!("expected WriteExpired, got {other:?}"),
        }
        assert_eq!(driver.stats.expired_writes.load(Ordering::Relaxed), 1);
        let sent: Vec<&str> = driver
            .writes
            .iter()
            .filter(|w| w.in_flight.is_some())
            .map(|w| w.mutation_id.as_str())
            .collect();
        assert_eq!(sent, ["recent", "new"]);
        assert!(driver.outbox.iter().all(|f| !f.contains("\"stale\"")));
        // The first trip on the wire is stamped; an earlier one is kept.
        assert_eq!(driver.writes[0].first_sent_ms, Some(hour_ago));
        assert!(driver.writes[1].first_sent_ms.is_some());
    }
}
