//! # hearth-client
//!
//! The Rust SDK for Hearth's realtime protocol (`sdk-spec/PROTOCOL.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth_client::ClientError> {
//! use futures::StreamExt;
//! use hearth_client::{Client, ClientConfig};
//! use hearth_protocol::{CollectionPath, Direction, Query};
//!
//! let client = Client::connect(
//!     ClientConfig::new("ws://127.0.0.1:8080/v1/ws").token("<access token or admin key>"),
//! )
//! .await?;
//! let query = Query::collection(CollectionPath::parse("rooms/lobby/messages").unwrap())
//!     .order("sent_at", Direction::Asc);
//! let mut messages = client.subscribe_query(query);
//! while let Some(snapshot) = messages.next().await {
//!     for change in snapshot?.changes {
//!         println!("{:?} {}", change.kind, change.doc.path);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What the client does for the application:
//! - **reconnects** with exponential backoff and full jitter ([`Backoff`]);
//! - **resumes** every subscription with its last resume token, so after a
//!   reconnect the stream continues with exactly the changes it missed;
//! - keeps a **queue of pending writes**, each with a mutation id, resent
//!   after a reconnect until acknowledged (the server applies a mutation id
//!   once and answers a retry with the original result);
//! - **latency compensation**: snapshots show the client's own unconfirmed
//!   writes at once, applied with the same `apply_write` the server runs, and
//!   flagged (`has_pending_writes`, per document `pending`);
//! - optionally **persists** that queue in a directory
//!   ([`ClientConfig::persistence`]), so writes made offline survive the
//!   application being killed and are resent, applied once, on the next start;
//!   the same directory keeps an **offline read cache** of subscription views,
//!   so a subscription made after a restart shows what was last seen at once
//!   and downloads only what changed since;
//! - one-shot reads ([`Client::get`]) and **transactions**
//!   ([`Client::run_transaction`]): read, decide, write; retried from the
//!   reads when another writer got there first.
//!
//! Invariant: this crate depends on `hearth-protocol` and generic async/network
//! crates only, never on the server's crates.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backoff;
mod driver;
mod error;
mod persist;
mod transaction;
mod view;
mod view_cache;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hearth_protocol::ws::TransactionRead;
use hearth_protocol::{CollectionPath, CommitResult, DocPath, FieldPath, Map, Query, Value, Write};
use tokio::sync::{mpsc, oneshot, watch};

pub use backoff::Backoff;
pub use error::ClientError;
pub use transaction::{Transaction, MAX_TRANSACTION_ATTEMPTS};
pub use view::{DocChange, DocChangeKind, QuerySnapshot, SnapshotDoc};
pub use wire::{Encoding, Target};

use driver::{Command, Driver, Stats};

/// Largest number of writes in one batch (the protocol's limit).
pub const MAX_BATCH_WRITES: usize = 500;

/// How to reach and identify to a server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The WebSocket endpoint, e.g. `ws://127.0.0.1:8080/v1/ws`. An
    /// `http://host:port` base URL is accepted and turned into that.
    pub ws_url: String,
    /// An access token (JWT from `/v1/auth/*`) or the admin key.
    pub token: Option<String>,
    pub client_name: String,
    pub client_version: String,
    pub backoff: Backoff,
    /// Bound on one connection attempt (TCP, upgrade, hello/welcome).
    pub connect_timeout: Duration,
    /// JSON text frames (default) or MessagePack binary frames.
    pub encoding: Encoding,
    /// A directory where the queue of pending writes is kept across
    /// restarts (`None`: in memory only).
    pub persistence: Option<PathBuf>,
    /// With [`ClientConfig::persistence`]: also keep subscription views
    /// there as an offline read cache (default `true`).
    pub cache_views: bool,
}

impl ClientConfig {
    pub fn new(url: &str) -> ClientConfig {
        ClientConfig {
            ws_url: normalize_url(url),
            token: None,
            client_name: "hearth-client-rust".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            encoding: Encoding::Json,
            persistence: None,
            cache_views: true,
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(token.into());
        self
    }

    pub fn client_name(mut self, name: impl Into<String>) -> ClientConfig {
        self.client_name = name.into();
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> ClientConfig {
        self.backoff = backoff;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.connect_timeout = timeout;
        self
    }

    /// Speaks `hearth.v1.msgpack` (MessagePack binary frames) instead of JSON.
    pub fn encoding(mut self, encoding: Encoding) -> ClientConfig {
        self.encoding = encoding;
        self
    }

    /// Keeps the queue of pending writes in `dir` (created if missing), so
    /// that a write made offline survives the application being killed:
    /// each write is synced to disk before it shows in a snapshot or goes
    /// out, and the next client started on `dir` resends every write not yet
    /// answered with its original mutation id, so the server applies it once
    /// (PROTOCOL.md §13, "Surviving a restart"). Transactions are not kept.
    /// Stored writes go out under the credential of the client that sends
    /// them (mutation ids are per user on the server), so keep one directory
    /// per signed-in user. One client at a time may use a directory;
    /// [`Client::start`] fails with
    /// [`ClientError::StoreLocked`] while another holds it. Storing costs one
    /// `fdatasync`, done on the client's task, per write or per burst of
    /// writes made together (up to 256 share one).
    ///
    /// The directory also holds an offline read cache (unless
    /// [`ClientConfig::cache_views`] turns it off): each subscription's
    /// server view with its resume token, saved at most about a second
    /// after it changed. A subscription to the same target made later (after
    /// a restart, offline) shows the cached documents at once
    /// (`from_cache: true`) and resumes from the cached token, so the server
    /// sends only what changed since (PROTOCOL.md §13, "An offline read
    /// cache"). Cached documents are stored in plain text; at sign-out,
    /// delete the directory with [`clear_persistence`].
    pub fn persistence(mut self, dir: impl Into<PathBuf>) -> ClientConfig {
        self.persistence = Some(dir.into());
        self
    }

    /// Whether a persistence directory also caches subscription views
    /// (default `true`; without [`ClientConfig::persistence`] nothing is
    /// cached).
    pub fn cache_views(mut self, enabled: bool) -> ClientConfig {
        self.cache_views = enabled;
        self
    }
}

/// Deletes a persistence directory's contents ([`ClientConfig::persistence`]):
/// the queue of pending writes (they will never be sent) and the cached
/// views. Call it when the user signs out, after [`Client::shutdown`]: the
/// store belongs to one signed-in user. Fails with
/// [`ClientError::StoreLocked`] while a client still uses the directory.
pub fn clear_persistence(dir: impl AsRef<std::path::Path>) -> Result<(), ClientError> {
    persist::clear(dir.as_ref())
}

/// `http(s)://host[:port]` → `ws(s)://host[:port]/v1/ws`; a `ws(s)://` URL
/// without a path gets `/v1/ws`; anything else is left alone.
fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => ("ws", rest),
        Some(("https", rest)) => ("wss", rest),
        Some((scheme, rest)) => (scheme, rest),
        None => ("ws", url),
    };
    if rest.contains('/') {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}/v1/ws")
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    Connecting {
        attempt: u32,
    },
    Connected {
        session_id: String,
        /// The signed-in user (`None` for anonymous sessions and the admin key).
        uid: Option<String>,
        /// True when the credential is the admin key.
        admin: bool,
    },
    /// Disconnected; the next attempt starts after `retry_in`.
    Offline {
        reason: String,
        retry_in: Duration,
    },
    /// The server rejected the credential; nothing is retried until
    /// [`Client::set_token`] supplies a new one.
    AuthFailed {
        message: String,
    },
    /// [`Client::shutdown`] was called (or every handle dropped).
    Closed,
}

/// Counters for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections that completed the handshake.
    pub sessions: u64,
    /// Writes not yet acknowledged by the server.
    pub pending_writes: u64,
    /// Writes dropped unanswered because they were first sent more than 23
    /// hours ago (a resend could be applied twice; PROTOCOL.md §13).
    pub expired_writes: u64,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    stats: Arc<Stats>,
    /// Makes mutation ids unique across client instances.
    mutation_prefix: String,
    next_mutation: AtomicU64,
    next_sub: AtomicU64,
    /// Until [`Client::take_restored_writes`] takes them.
    restored_writes: Mutex<Vec<RestoredWrite>>,
}

/// A write an earlier run of the application left stored, and its answer
/// (see [`Client::take_restored_writes`]).
pub struct RestoredWrite {
    pub mutation_id: String,
    pub writes: Vec<Write>,
    /// Resolves with the server's answer (`duplicate: true` when the server
    /// had applied it before the restart).
    pub result: WriteFuture,
}

impl std::fmt::Debug for RestoredWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredWrite")
            .field("mutation_id", &self.mutation_id)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

/// The future of a queued write's answer.
fn answer(rx: oneshot::Receiver<Result<CommitResult, ClientError>>) -> WriteFuture {
    Box::pin(async move { rx.await.unwrap_or(Err(ClientError::Closed)) })
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// A connection to a Hearth server. Cheap to clone; the connection closes
/// when the last clone is dropped or [`Client::shutdown`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// The future of a write: resolves once the server has durably committed it.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<CommitResult, ClientError>> + Send>>;

impl Client {
    /// Starts the client and waits until the first connection is up (or
    /// `connect_timeout` passes, or the credential is rejected).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let timeout = config.connect_timeout;
        let client = Client::start(config)?;
        client.wait_connected(timeout).await?;
        Ok(client)
    }

    /// Starts the client without waiting: it connects in the background and
    /// queues subscriptions and writes until then (offline-first). Needs a
    /// Tokio runtime.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        if !(config.ws_url.starts_with("ws://") || config.ws_url.starts_with("wss://")) {
            return Err(ClientError::InvalidArgument(format!(
                "unsupported server URL {}: use ws:// or http://",
                config.ws_url
            )));
        }
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let stats = Arc::new(Stats::default());
        let mut restored_writes = Vec::new();
        let journal = match &config.persistence {
            Some(dir) => {
                let (journal, restored) = persist::Journal::open(dir, persist::now_ms())?;
                let mut queue = Vec::new();
                for stored in restored.writes {
                    let (reply, rx) = oneshot::channel();
                    restored_writes.push(RestoredWrite {
                        mutation_id: stored.mutation_id.clone(),
                        writes: stored.writes.clone(),
                        result: answer(rx),
                    });
                    queue.push((stored, reply));
                }
                stats
                    .expired_writes
                    .fetch_add(restored.expired.len() as u64, Ordering::Relaxed);
                for stored in restored.expired {
                    let error = ClientError::WriteExpired(format!(
                        "write {} was first sent more than 23 hours ago; the server may have \
                         forgotten it, so it was not sent again",
                        stored.mutation_id
                    ));
                    restored_writes.push(RestoredWrite {
                        mutation_id: stored.mutation_id,
                        writes: stored.writes,
                        result: Box::pin(async move { Err(error) }),
                    });
                }
                Some((journal, queue))
            }
            None => None,
        };
        let views = match (&config.persistence, config.cache_views) {
            (Some(dir), true) => Some(view_cache::ViewCache::open(dir)?),
            _ => None,
        };
        let driver = Driver::new(config, cmd_rx, state_tx, stats.clone(), journal, views);
        tokio::spawn(driver.run());
        let mutation_prefix = format!("{:016x}", rand::random::<u64>());
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                state,
                stats,
                mutation_prefix,
                next_mutation: AtomicU64::new(1),
                next_sub: AtomicU64::new(1),
                restored_writes: Mutex::new(restored_writes),
            }),
        })
    }

    /// The writes this client found stored in its persistence directory
    /// when it started ([`ClientConfig::persistence`]): writes an earlier
    /// run made and never saw answered. They are sent, in order and under
    /// their original mutation ids, without the application doing anything;
    /// this hands over their answers, once (later calls return nothing).
    /// A write first sent more than 23 hours ago is not sent again, and its
    /// `result` is [`ClientError::WriteExpired`].
    pub fn take_restored_writes(&self) -> Vec<RestoredWrite> {
        std::mem::take(
            &mut *self
                .inner
                .restored_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Waits until the client is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut state = self.inner.state.clone();
        let wait = async {
            loop {
                match &*state.borrow_and_update() {
                    ConnectionState::Connected { .. } => return Ok(()),
                    ConnectionState::AuthFailed { message } => {
                        return Err(ClientError::Unauthenticated(message.clone()))
                    }
                    ConnectionState::Closed => return Err(ClientError::Closed),
                    _ => {}
                }
                if state.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(format!(
                "not connected after {timeout:?} ({:?})",
                self.state()
            ))),
        }
    }

    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every connection state change.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            sessions: self.inner.stats.sessions.load(Ordering::Relaxed),
            pending_writes: self.inner.stats.pending_writes.load(Ordering::Relaxed),
            expired_writes: self.inner.stats.expired_writes.load(Ordering::Relaxed),
        }
    }

    /// Subscribes to one document: snapshots hold zero or one document.
    pub fn subscribe_doc(&self, path: DocPath) -> Subscription {
        self.subscribe(Target::Doc(path))
    }

    /// Subscribes to a query: snapshots hold its result in query order.
    pub fn subscribe_query(&self, query: Query) -> Subscription {
        self.subscribe(Target::Query(query))
    }

    pub fn subscribe(&self, target: Target) -> Subscription {
        self.open_subscription(target, false)
    }

    /// A read that never waits for the server (Firestore's
    /// `getDocsFromCache`): the newest view of `target` this client has, a
    /// live subscription's or the offline cache's
    /// ([`ClientConfig::persistence`]), with the client's pending writes on
    /// top. `from_cache` is false only when a live subscription has the
    /// server's current view. `None` when the client has no view of exactly
    /// this target, or while a write in doubt touches it (after a lost
    /// connection or a restart, until its retry is answered).
    pub async fn get_from_cache(
        &self,
        target: Target,
    ) -> Result<Option<QuerySnapshot>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::ReadCache { target, reply })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    fn open_subscription(&self, target: Target, server_only: bool) -> Subscription {
        let sub = format!("s{}", self.inner.next_sub.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        if let Target::Query(q) = &target {
            if let Err(e) = q.validate() {
                let _ = tx.send(Err(ClientError::InvalidArgument(e.message)));
                return Subscription::detached(sub, rx);
            }
        }
        let _ = self.inner.commands.send(Command::Subscribe {
            sub: sub.clone(),
            target,
            tx,
            server_only,
        });
        Subscription {
            sub,
            rx,
            commands: Some(self.inner.commands.clone()),
        }
    }

    /// Replaces a document's fields (creating it if missing).
    pub fn set(&self, path: DocPath, data: Map) -> WriteFuture {
        self.write(Write::set(path, data))
    }

    /// Creates a document; fails with `already-exists` if it is there.
    pub fn create(&self, path: DocPath, data: Map) -> WriteFuture {
        self.write(Write::create(path, data))
    }

    /// Creates a document with a generated id in `collection`; returns its path
    /// at once (the document shows locally right away) and the write's future.
    pub fn add(&self, collection: &CollectionPath, data: Map) -> (DocPath, WriteFuture) {
        let id = hearth_protocol::path::document_id_from_random(rand::random());
        match collection.doc(&id) {
            Ok(path) => (path.clone(), self.create(path, data)),
            Err(e) => {
                let fallback = DocPath::parse("invalid/invalid").expect("static path");
                let message = e.to_string();
                (
                    fallback,
                    Box::pin(async move { Err(ClientError::InvalidArgument(message)) }),
                )
            }
        }
    }

    /// Merges field paths into an existing document (`not-found` if missing).
    pub fn update(&self, path: DocPath, fields: BTreeMap<FieldPath, Value>) -> WriteFuture {
        self.write(Write::update(path, fields))
    }

    pub fn delete(&self, path: DocPath) -> WriteFuture {
        self.write(Write::delete(path))
    }

    /// Any single write (with preconditions or transforms).
    pub fn write(&self, write: Write) -> WriteFuture {
        self.batch(vec![write])
    }

    /// An atomic batch: all writes commit together or none does.
    ///
    /// The write is queued at once (even if the future is never polled) and
    /// shown in local snapshots until the server answers; the future resolves
    /// with the server's result once the commit is durable.
    pub fn batch(&self, writes: Vec<Write>) -> WriteFuture {
        self.queue(writes, None)
    }

    /// Queues a write (`reads: None`) or a transaction's commit.
    fn queue(&self, writes: Vec<Write>, reads: Option<Vec<TransactionRead>>) -> WriteFuture {
        if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
            let message = format!(
                "a batch holds 1 to {MAX_BATCH_WRITES} writes, got {}",
                writes.len()
            );
            return Box::pin(async move { Err(ClientError::InvalidArgument(message)) });
        }
        if let Some(e) = writes.iter().find_map(|w| w.validate().err()) {
            return Box::pin(async move { Err(ClientError::InvalidArgument(e.to_string())) });
        }
        let mutation_id = format!(
            "{}-{}",
            self.inner.mutation_prefix,
            self.inner.next_mutation.fetch_add(1, Ordering::Relaxed)
        );
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.commands.send(Command::Write {
            mutation_id,
            writes,
            reads,
            reply,
        });
        if sent.is_err() {
            return Box::pin(async { Err(ClientError::Closed) });
        }
        answer(rx)
    }

    /// Replaces the credential. On a live connection the server is asked to
    /// accept it (the `auth` frame) without reconnecting; otherwise it is used
    /// by the next connection. Resolves when the server has accepted it.
    /// After an authentication failure this also restarts reconnecting.
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::SetToken {
                token: Some(token.into()),
                reply,
            })
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Test hook: drops the socket abruptly (no close frame), as a network
    /// failure would. The client then reconnects and resumes as usual.
    pub fn debug_disconnect(&self) {
        let _ = self.inner.commands.send(Command::DebugDisconnect);
    }

    /// Closes the connection; pending writes fail with [`ClientError::Closed`]
    /// (with [`ClientConfig::persistence`] they stay stored, and the directory
    /// is free for another client once this returns; dropping every handle
    /// without calling it frees it shortly after).
    pub async fn shutdown(&self) {
        let _ = self.inner.commands.send(Command::Shutdown);
        let mut state = self.inner.state.clone();
        while !matches!(*state.borrow_and_update(), ConnectionState::Closed) {
            if state.changed().await.is_err() {
                break;
            }
        }
    }
}

/// A live subscription: a `Stream` of snapshots. Ends after an error (for
/// example `permission-denied`); dropping it unsubscribes.
pub struct Subscription {
    sub: String,
    rx: mpsc::UnboundedReceiver<Result<QuerySnapshot, ClientError>>,
    commands: Option<mpsc::UnboundedSender<Command>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("sub", &self.sub)
            .finish()
    }
}

impl Subscription {
    fn detached(
        sub: String,
        rx: mpsc::UnboundedReceiver<Result<QuerySnapshot, ClientError>>,
    ) -> Self {
        Subscription {
            sub,
            rx,
            commands: None,
        }
    }

    /// The client-chosen subscription id used on the wire.
    pub fn id(&self) -> &str {
        &self.sub
    }
}

impl Stream for Subscription {
    type Item = Result<QuerySnapshot, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Unsubscribe {
                sub: std::mem::take(&mut self.sub),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalized_to_the_socket_endpoint() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(normalize_url("https://h.example/"), "wss://h.example/v1/ws");
        assert_eq!(normalize_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
        assert_eq!(normalize_url("127.0.0.1:9"), "ws://127.0.0.1:9/v1/ws");
    }
}
