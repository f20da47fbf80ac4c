//! One connection: handshake, the request loop, heartbeats, token expiry,
//! and the writer that drains the connection's outbox.
//!
//! The socket is split in two halves driven by two futures inside the same
//! task (no second task per connection): the *reader* handles client frames
//! and timers and queues every reply in the outbox; the *writer* sends what
//! is queued and, once the queue is empty, flushes coalesced
//! subscriptions. A third branch waits for a close request (slow consumer,
//! revocation, shutdown, expiry, protocol error). Whatever ends first, the
//! connection then flushes what it can (briefly), sends its close frame and
//! unregisters its subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::ws::{
    close_code, is_valid_request_id, parse_resume_token, ClientMessage, ServerMessage,
    SubscribeTarget, MAX_REQUEST_ID, PROTOCOL_VERSION,
};
use hearth_protocol::{ErrorBody, ErrorCode, Timestamp};
use rand::RngCore;
use serde::Deserialize;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::codec::{salvage, Codec, Salvaged};
use crate::conn::{CloseReason, ConnShared, MIN_WRITE_GAP_MS};
use crate::encode;
use crate::socket::{
    self, write_frames, write_frames_with, Opcode, OutFrame, ReadSocket, SharedSink,
};
use crate::subscription::{build, flush_coalesced, share_key, Build, Subscription};
use crate::view::Target;
use crate::{backend, bad_frame, writes, Authenticated, Inner};

/// Longest `sub` name accepted.
pub const MAX_SUB_NAME_BYTES: usize = 128;

/// Whether `name` is an acceptable `sub` (1 to [`MAX_SUB_NAME_BYTES`]
/// bytes). An invalid name is never echoed in an error frame.
pub(crate) fn valid_sub_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_SUB_NAME_BYTES
}
/// How long a closing connection may spend flushing queued frames.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);
/// After its close frame, how long the server keeps reading (and
/// discarding) for the client's close reply before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// After a 4009 close, how long the server keeps discarding the rest of
/// the oversized frame while bytes keep arriving.
const OVERSIZE_DRAIN_IDLE: Duration = Duration::from_secs(2);
/// The writer takes at most this many frames / bytes per system call.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: usize = 256 * 1024;

async fn send_now(w: &SharedSink, frames: &[OutFrame]) {
    let _ = timeout(CLOSE_FLUSH, write_frames(w, frames)).await;
}

async fn close_now(w: &SharedSink, code: u16, reason: &'static str) {
    send_now(w, &[OutFrame::close(code, reason)]).await;
}

fn error_frame(id: Option<u64>, sub: Option<&str>, body: ErrorBody) -> Bytes {
    encode::message(&ServerMessage::error(id, sub.map(str::to_string), body))
}

/// Reads the request id of an oversized frame, if it has one in the
/// protocol's range (without building the frame's JSON value).
fn salvage_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|x| x.id)
        .filter(|&id| is_valid_request_id(id))
}

/// What the error frame answering an undecodable text frame may echo.
fn salvage_text(text: &str) -> Salvaged {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| salvage(&v))
        .unwrap_or_default()
}

/// How the reader ended.
enum ReadEnd {
    /// The client closed, the socket failed, or another branch ended first.
    Done,
    /// A frame exceeded the hard limit; the rest of it is still in flight.
    Oversize,
}

/// One connection, from its first frame to its close.
///
/// Memory per idle connection is dominated by this future, so it is kept
/// small: a plain function returning an `async move` block (an `async fn`
/// would store its arguments twice, rust-lang/rust#62958), and every step
/// that runs once (refusals, handshake, close) is boxed rather than sized
/// into the state that lives as long as the connection.
// Deliberately not an `async fn`: see the doc comment (the argument would be
// stored twice in the connection's long-lived future).
#[allow(clippy::manual_async_fn)]
pub(crate) fn run(
    inner: Arc<Inner>,
    mut stream: ReadSocket,
    sink: SharedSink,
    codec: Codec,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let refused = if inner.shutting_down.load(Ordering::SeqCst) {
            Some((close_code::GOING_AWAY, "server shutting down"))
        } else if inner.conns.len() >= inner.config.max_connections {
            Some((close_code::TOO_MANY_CONNECTIONS, "too many connections"))
        } else {
            None
        };
        if let Some((code, reason)) = refused {
            Box::pin(close_now(&sink, code, reason)).await;
            return;
        }
        // The handshake's result is scoped to this block, so it is not kept
        // in the connection's long-lived future.
        let conn = {
            let Some((auth, hello_ok)) =
                Box::pin(handshake(&inner, &sink, &mut stream, codec)).await
            else {
                return;
            };
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let conn = Arc::new(ConnShared::new(
                id,
                auth.principal,
                inner.config.max_pending_events as usize,
                inner.config.max_queued_bytes as usize,
                inner.clock,
                codec,
                Some((sink, Arc::clone(&inner.stats))),
            ));
            inner.conns.insert(id, Arc::clone(&conn));
            conn.push(hello_ok);
            conn.set_expiry(auth.expires_at);
            conn.touch(&inner.clock);
            conn
        };
        let mut reader = Reader {
            inner: &inner,
            conn: &conn,
        };
        let mut end = ReadEnd::Done;
        tokio::select! {
            e = reader.run(&mut stream) => { end = e; }
            _ = writer(&inner, &conn) => {}
            _ = conn.kill.notified() => {}
        }
        Box::pin(finish(&inner, &conn, stream, end)).await;
    }
}

/// Flushes what may be flushed, sends the close frame, lingers briefly for
/// the client's reply (so that it reads our close rather than a reset), and
/// unregisters the connection.
async fn finish(inner: &Inner, conn: &ConnShared, mut stream: ReadSocket, end: ReadEnd) {
    let reason = conn.close_reason().unwrap_or(CloseReason {
        code: close_code::NORMAL,
        reason: "",
    });
    let mut rest = Vec::new();
    conn.take_batch(&mut rest, usize::MAX, usize::MAX);
    if reason.code == close_code::SLOW_CONSUMER {
        inner
            .stats
            .slow_consumer_closes
            .fetch_add(1, Ordering::Relaxed);
        // Drop the backlog, but finish a frame the socket has begun.
        rest.truncate(usize::from(
            rest.first().is_some_and(|f| f.opcode == Opcode::Rest),
        ));
    }
    if let Some(sink) = conn.sink() {
        // Flush what is queued (an error frame explaining the close, say).
        send_now(sink, &rest).await;
        close_now(sink, reason.code, reason.reason).await;
    }
    // Unregister before lingering: nothing more is delivered.
    let subs: Vec<Arc<Subscription>> = std::mem::take(&mut *conn.subs.lock());
    for s in subs {
        s.state.lock().closed = true;
        inner.index.remove(&s);
    }
    inner.conns.remove(&conn.id);
    match end {
        ReadEnd::Oversize => {
            // The client is still sending the frame we refused: read and
            // discard it (bounded), or closing now would reset the
            // connection before the client reads our 4009.
            let limit = (inner.config.max_frame_bytes as u64)
                .saturating_mul(8)
                .max(16 << 20);
            socket::drain(&mut stream, limit, OVERSIZE_DRAIN_IDLE).await;
        }
        ReadEnd::Done if reason.code != close_code::SLOW_CONSUMER => {
            // Wait briefly for the client's close reply (or its end).
            let _ = timeout(CLOSE_LINGER, async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        ReadEnd::Done => {}
    }
    tracing::debug!(conn = conn.id, code = reason.code, "connection closed");
}

/// Waits for `hello`, authenticates, and returns the welcome frame to send.
async fn handshake(
    inner: &Inner,
    sink: &SharedSink,
    stream: &mut ReadSocket,
    codec: Codec,
) -> Option<(Authenticated, Bytes)> {
    let first = timeout(inner.config.hello_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => return Some((Codec::Json, Bytes::from(t))),
                Some(Ok(Message::Binary(b))) => return Some((Codec::MsgPack, b)),
                Some(Ok(Message::Ping(p))) => {
                    send_now(sink, &[OutFrame::pong(p)]).await;
                    continue;
                }
                Some(Ok(Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let (kind, payload) = match first {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(_) => {
            close_now(sink, close_code::PROTOCOL_ERROR, "no hello in time").await;
            return None;
        }
    };
    // A frame of the other encoding than the subprotocol's is not a hello.
    let hello = (kind == codec).then(|| codec.decode(&payload));
    let (protocol, token) = match hello {
        Some(Ok(ClientMessage::Hello {
            protocol, token, ..
        })) => (protocol, token),
        refused => {
            // A hello that does not decode is told what is wrong with it.
            let (message, reason) = match refused {
                Some(Err(e)) if e.salvaged.hello => {
                    (format!("hello: {}", e.reason), "malformed hello")
                }
                _ => (
                    "the first frame must be hello".to_string(),
                    "the first frame must be hello",
                ),
            };
            let body = bad_frame(message);
            send_now(sink, &[codec.frame(error_frame(None, None, body))]).await;
            close_now(sink, close_code::PROTOCOL_ERROR, reason).await;
            return None;
        }
    };
    if protocol != PROTOCOL_VERSION {
        let body = ErrorBody::new(
            ErrorCode::FailedPrecondition,
            format!("protocol {protocol} is not supported; this server speaks {PROTOCOL_VERSION}"),
        )
        .with_details(serde_json::json!({ "supported": [PROTOCOL_VERSION] }));
        send_now(sink, &[codec.frame(error_frame(None, None, body))]).await;
        close_now(
            sink,
            close_code::PROTOCOL_ERROR,
            "unsupported protocol version",
        )
        .await;
        return None;
    }
    let auth = match inner.auth.authenticate(token.as_deref()) {
        Ok(a) if a.expires_at.is_some_and(|t| t <= Timestamp::now()) => {
            let body = ErrorBody::new(ErrorCode::Unauthenticated, "the token has expired");
            send_now(sink, &[codec.frame(error_frame(None, None, body))]).await;
            close_now(sink, close_code::UNAUTHENTICATED, "token expired").await;
            return None;
        }
        Ok(a) => a,
        Err(body) => {
            send_now(sink, &[codec.frame(error_frame(None, None, body))]).await;
            close_now(sink, close_code::UNAUTHENTICATED, "unauthenticated").await;
            return None;
        }
    };
    let mut session_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut session_id);
    let (uid, admin) = principal_fields(&auth.principal);
    let welcome = encode::message(&ServerMessage::Welcome {
        session_id: hex::encode(session_id),
        server_time: Timestamp::now(),
        protocol: PROTOCOL_VERSION,
        heartbeat_ms: inner.config.heartbeat.as_millis() as u64,
        idle_timeout_ms: inner.config.idle_timeout.as_millis() as u64,
        limits: inner.config.limits(),
        uid,
        admin,
        expires_at: auth.expires_at,
    });
    Some((auth, welcome))
}

fn principal_fields(p: &hearth_rules::Principal) -> (Option<String>, bool) {
    match p {
        hearth_rules::Principal::Admin => (None, true),
        hearth_rules::Principal::User { uid, .. } => (Some(uid.clone()), false),
        hearth_rules::Principal::Unauthenticated => (None, false),
    }
}

/// Sends queued frames in batches (one vectored write each); once the queue
/// is empty, sends each coalesced subscription's held-back changes as one
/// frame and rebuilds subscriptions marked dirty.
async fn writer(inner: &Arc<Inner>, conn: &Arc<ConnShared>) {
    let Some(sink) = conn.sink() else {
        return;
    };
    let mut batch: Vec<OutFrame> = Vec::new();
    loop {
        let since = conn.since_last_write_ms();
        if since < MIN_WRITE_GAP_MS && conn.queued().0 > 0 {
            // Frames arrive faster than one write per MIN_WRITE_GAP_MS (a
            // burst): let them gather, so that one system call carries
            // several. A connection that gets a frame now and then is never
            // delayed (and usually written directly, see `conn`).
            // (Boxed, like the write below: an idle connection's task keeps
            // no room for a timer or a write in progress.)
            Box::pin(tokio::time::sleep(Duration::from_millis(
                MIN_WRITE_GAP_MS - since,
            )))
            .await;
        }
        conn.take_batch(&mut batch, BATCH_FRAMES, BATCH_BYTES);
        if !batch.is_empty() {
            conn.wrote();
            let wrote = Box::pin(write_frames_with(sink, &batch, || {
                conn.progress(&inner.clock, false)
            }));
            if wrote.await.is_err() {
                return;
            }
            inner
                .stats
                .frames_by_writer
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            conn.progress(&inner.clock, true);
            if batch.capacity() > 64 {
                // Do not keep a burst's worth of capacity on an idle connection.
                batch = Vec::new();
            }
            continue;
        }
        if conn.has_dirty.swap(false, Ordering::AcqRel) {
            let subs: Vec<Arc<Subscription>> = conn.subs.lock().clone();
            for s in subs {
                let dirty = s.state.lock().dirty;
                if dirty {
                    if let Err(e) = build(inner, conn, &s, Build::Rebuild) {
                        // The server ends the subscription (an error with
                        // only `sub`): nothing more is delivered for it, and
                        // its name is free for the next `subscribe`.
                        s.state.lock().closed = true;
                        conn.push(error_frame(None, Some(&s.name), e));
                    }
                } else {
                    flush_coalesced(conn, &s);
                }
            }
            continue;
        }
        conn.wake.notified().await;
    }
}

struct Reader<'a> {
    inner: &'a Arc<Inner>,
    conn: &'a Arc<ConnShared>,
}

impl Reader<'_> {
    /// Handles client frames until the socket ends. Heartbeats, the idle
    /// timeout and token expiry are the sweeper's job (see `sweep`), so a
    /// connection holds no timer of its own.
    async fn run(&mut self, stream: &mut ReadSocket) -> ReadEnd {
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(WsError::Capacity(e)) => {
                    tracing::debug!(conn = self.conn.id, error = %e, "frame too large");
                    self.conn.close(CloseReason {
                        code: close_code::FRAME_TOO_LARGE,
                        reason: "frame too large",
                    });
                    return match e {
                        CapacityError::MessageTooLong { .. } => ReadEnd::Oversize,
                        _ => ReadEnd::Done,
                    };
                }
                Err(_) => return ReadEnd::Done,
            };
            self.conn.touch(&self.inner.clock);
            match msg {
                Message::Text(t) if self.conn.codec() == Codec::Json => {
                    self.handle_text(t.as_str());
                }
                Message::Binary(b) if self.conn.codec() == Codec::MsgPack => {
                    self.handle_msgpack(&b);
                }
                Message::Text(_) | Message::Binary(_) => {
                    let hint = match self.conn.codec() {
                        Codec::Json => "binary frames are not part of hearth.v1; send JSON text frames",
                        Codec::MsgPack => "this connection speaks hearth.v1.msgpack; send MessagePack binary frames",
                    };
                    self.conn.push(error_frame(None, None, bad_frame(hint)));
                }
                Message::Close(_) => return ReadEnd::Done,
                Message::Ping(p) => {
                    self.conn.push_frame(OutFrame::pong(p));
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        ReadEnd::Done
    }

    /// Handles one text frame; returns whether the frame was understood.
    fn handle_text(&mut self, text: &str) -> bool {
        if self.refuse_oversized(text.len(), || salvage_id(text)) {
            return false;
        }
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let s = salvage_text(text);
                self.conn.push(error_frame(
                    s.id,
                    s.sub.as_deref(),
                    bad_frame(format!("bad frame: {e}")),
                ));
                return false;
            }
        };
        self.dispatch(msg);
        true
    }

    /// Handles one MessagePack frame (subprotocol `hearth.v1.msgpack`);
    /// returns whether the frame was understood.
    fn handle_msgpack(&mut self, payload: &[u8]) -> bool {
        if self.refuse_oversized(payload.len(), || None) {
            return false;
        }
        match self.conn.codec().decode(payload) {
            Ok(msg) => {
                self.dispatch(msg);
                true
            }
            Err(e) => {
                self.conn.push(error_frame(
                    e.salvaged.id,
                    e.salvaged.sub.as_deref(),
                    bad_frame(e.message()),
                ));
                false
            }
        }
    }

    /// Answers `payload-too-large` for a frame of `len` bytes above
    /// `max_frame_bytes` (with the request id `id` finds, if any); returns
    /// whether it did.
    fn refuse_oversized(&self, len: usize, id: impl FnOnce() -> Option<u64>) -> bool {
        let max = self.inner.config.max_frame_bytes as usize;
        if len <= max {
            return false;
        }
        self.conn.push(error_frame(
            id(),
            None,
            ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!("frame of {len} bytes exceeds max_frame_bytes ({max})"),
            ),
        ));
        true
    }

    /// Acts on one client message (whatever its encoding).
    fn dispatch(&mut self, msg: ClientMessage) {
        if let Some(id) = msg.id().filter(|&id| !is_valid_request_id(id)) {
            // Not echoed: the answer would break the 53-bit contract.
            self.conn.push(error_frame(
                None,
                None,
                bad_frame(format!(
                    "request id {id} is out of range; ids are 0 to {MAX_REQUEST_ID}"
                )),
            ));
            return;
        }
        match msg {
            ClientMessage::Hello { .. } => {
                self.conn.push(error_frame(
                    None,
                    None,
                    bad_frame("hello was already received"),
                ));
            }
            ClientMessage::Auth { id, token } => {
                self.refresh(id, &token);
            }
            ClientMessage::Subscribe {
                id,
                sub,
                target,
                resume,
            } => {
                if let Err(e) = self.subscribe(&sub, target, resume.as_deref()) {
                    // An invalid name is not echoed (it is not a `sub`).
                    let echo = valid_sub_name(&sub).then_some(sub.as_str());
                    self.conn.push(error_frame(Some(id), echo, e));
                }
            }
            ClientMessage::Unsubscribe { id, sub } if !valid_sub_name(&sub) => {
                self.conn.push(error_frame(
                    Some(id),
                    None,
                    bad_frame(format!("sub must be 1 to {MAX_SUB_NAME_BYTES} bytes")),
                ));
            }
            ClientMessage::Unsubscribe { id, sub } => {
                let removed = self.conn.take_sub(&sub);
                match removed {
                    Some(s) => {
                        s.state.lock().closed = true;
                        self.inner.index.remove(&s);
                        self.conn
                            .push(encode::message(&ServerMessage::Unsubscribed { id, sub }));
                    }
                    None => {
                        self.conn.push(error_frame(
                            Some(id),
                            Some(&sub),
                            ErrorBody::new(
                                ErrorCode::NotFound,
                                format!("no subscription named {sub:?}"),
                            ),
                        ));
                    }
                }
            }
            ClientMessage::Write {
                id,
                mutation_id,
                writes,
            } => {
                self.write(id, mutation_id, vec![], writes);
            }
            ClientMessage::Transaction {
                id,
                mutation_id,
                reads,
                writes,
            } => {
                self.write(id, mutation_id, reads, writes);
            }
            ClientMessage::Ping { id } => {
                self.conn.push(encode::message(&ServerMessage::Pong { id }));
            }
            ClientMessage::Pong { .. } => {}
        }
    }

    fn refresh(&mut self, id: u64, token: &str) -> bool {
        match self.inner.auth.authenticate(Some(token)) {
            Ok(a) => {
                let current = self.conn.principal();
                let same = match (&*current, &a.principal) {
                    (
                        hearth_rules::Principal::User { uid: x, .. },
                        hearth_rules::Principal::User { uid: y, .. },
                    ) => x == y,
                    (hearth_rules::Principal::Unauthenticated, _) => true,
                    (c, n) => std::mem::discriminant(c) == std::mem::discriminant(n),
                };
                if !same {
                    return self.conn.push(error_frame(
                        Some(id),
                        None,
                        ErrorBody::new(
                            ErrorCode::InvalidArgument,
                            "auth must keep the same user; reconnect to switch users",
                        ),
                    ));
                }
                if a.expires_at.is_some_and(|t| t <= Timestamp::now()) {
                    return self.conn.push(error_frame(
                        Some(id),
                        None,
                        ErrorBody::new(ErrorCode::Unauthenticated, "the token has expired"),
                    ));
                }
                let (uid, admin) = principal_fields(&a.principal);
                self.conn.set_principal(a.principal);
                self.conn.set_expiry(a.expires_at);
                self.reshare();
                self.conn.push(encode::message(&ServerMessage::AuthOk {
                    id,
                    uid,
                    admin,
                    expires_at: a.expires_at,
                }))
            }
            // The current credential stays in force until it expires.
            Err(body) => self.conn.push(error_frame(Some(id), None, body)),
        }
    }

    /// After the principal changed (new claims): subscriptions whose share
    /// key changed were computed for the old claims, which the rules may
    /// read; they are rebuilt (the client gets the difference, if any).
    fn reshare(&self) {
        let principal = self.conn.principal();
        let mut changed = false;
        for s in self.conn.subs.lock().iter() {
            let key = share_key(&principal, &s.target);
            let mut st = s.state.lock();
            if st.share != key {
                st.share = key;
                st.dirty = true;
                changed = true;
            }
        }
        if changed {
            self.conn.mark_dirty();
        }
    }

    fn subscribe(
        &mut self,
        name: &str,
        target: SubscribeTarget,
        resume: Option<&str>,
    ) -> Result<(), ErrorBody> {
        if !valid_sub_name(name) {
            return Err(bad_frame(format!(
                "sub must be 1 to {MAX_SUB_NAME_BYTES} bytes"
            )));
        }
        let how = match resume {
            None => Build::Initial,
            Some(token) => Build::Resume(
                parse_resume_token(token)
                    .ok_or_else(|| bad_frame(format!("{token:?} is not a resume token")))?,
            ),
        };
        // Subscriptions the server ended (an `error` with only `sub`) free
        // their names here.
        let ended: Vec<Arc<Subscription>> = {
            let mut subs = self.conn.subs.lock();
            let (ended, live): (Vec<_>, Vec<_>) =
                subs.drain(..).partition(|s| s.state.lock().closed);
            *subs = live;
            ended
        };
        for s in &ended {
            self.inner.index.remove(s);
        }
        {
            let subs = self.conn.subs.lock();
            if subs.iter().any(|s| &*s.name == name) {
                return Err(bad_frame(format!(
                    "a subscription named {name:?} is already live"
                )));
            }
            if subs.len() >= self.inner.config.max_subscriptions as usize {
                return Err(ErrorBody::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "at most {} subscriptions per connection",
                        self.inner.config.max_subscriptions
                    ),
                ));
            }
        }
        let target = match target {
            SubscribeTarget::Doc(p) => Target::Doc(p),
            SubscribeTarget::Query(q) => Target::query(q),
        };
        let principal = self.conn.principal();
        backend::check_subscribe(&self.inner.store, &self.inner.access, &principal, &target)?;
        let uid = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let target = self.inner.targets.intern(target);
        let sub = Arc::new(Subscription::new(uid, name, target, self.conn));
        self.conn.subs.lock().push(Arc::clone(&sub));
        self.inner.index.insert(&sub);
        if let Err(e) = build(self.inner, self.conn, &sub, how) {
            self.conn.take_sub(name);
            sub.state.lock().closed = true;
            self.inner.index.remove(&sub);
            return Err(e);
        }
        Ok(())
    }

    fn write(
        &mut self,
        id: u64,
        mutation_id: String,
        reads: Vec<hearth_protocol::ws::TransactionRead>,
        batch: Vec<hearth_protocol::Write>,
    ) -> bool {
        let max = self.inner.config.max_inflight_writes;
        if self.conn.inflight_writes.fetch_add(1, Ordering::AcqRel) >= max {
            self.conn.inflight_writes.fetch_sub(1, Ordering::AcqRel);
            return self.conn.push(error_frame(
                Some(id),
                None,
                ErrorBody::new(
                    ErrorCode::ResourceExhausted,
                    format!("at most {max} writes in flight per connection; wait for write_ok"),
                ),
            ));
        }
        let inner = Arc::clone(self.inner);
        let conn = Arc::clone(self.conn);
        let principal = conn.principal();
        // A new commit is answered from the committer's thread, before the
        // fan-out sees it: `write_ok` then precedes the `changes` frames that
        // carry the commit on this connection too, so a client's latency
        // compensation never applies its own write twice (PROTOCOL.md §7).
        let answered = Arc::new(AtomicBool::new(false));
        let announce: writes::Announce = {
            let (conn, answered, mutation_id) = (
                Arc::clone(&conn),
                Arc::clone(&answered),
                mutation_id.clone(),
            );
            Arc::new(move |result| {
                if !answered.swap(true, Ordering::AcqRel) {
                    // Whoever answers frees the in-flight slot first, so a
                    // client that sends its next write on `write_ok` finds it.
                    conn.inflight_writes.fetch_sub(1, Ordering::AcqRel);
                    conn.push(encode::message(&ServerMessage::WriteOk {
                        id,
                        mutation_id: mutation_id.clone(),
                        result,
                        duplicate: false,
                    }));
                }
            })
        };
        // Writes on one connection apply in the order they arrived: each
        // starts (reads, rules, commit) once the one before it is committed
        // or refused, so a `set` and a pipelined `update` of the same
        // document never swap (PROTOCOL.md §7). Commits of different
        // connections still share group commits.
        let (this_write_done, this_write) = tokio::sync::oneshot::channel::<()>();
        let previous_write = conn.last_write.lock().replace(this_write);
        tokio::spawn(async move {
            if let Some(previous_write) = previous_write {
                // An error only means the previous task is gone: done either way.
                let _ = previous_write.await;
            }
            let result = writes::apply_once(
                &inner.store,
                &inner.access,
                &principal,
                &mutation_id,
                &reads,
                batch,
                Some(announce),
            )
            .await;
            drop(this_write_done);
            if answered.swap(true, Ordering::AcqRel) {
                return;
            }
            conn.inflight_writes.fetch_sub(1, Ordering::AcqRel);
            let frame = match result {
                Ok((result, duplicate)) => encode::message(&ServerMessage::WriteOk {
                    id,
                    mutation_id,
                    result,
                    duplicate,
                }),
                Err(e) => error_frame(Some(id), None, e),
            };
            conn.push(frame);
        });
        true
    }
}

/// Heartbeats, idle timeouts and token expiry for every connection, from one
/// task: each tick it pings connections whose heartbeat is due, closes those
/// silent for longer than the idle timeout (4010) and those whose credential
/// expired (error `unauthenticated`, then 4001).
pub(crate) async fn sweep(inner: Arc<Inner>) {
    let tick = SWEEP_TICK.min(inner.config.heartbeat);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = inner.config.heartbeat.as_millis() as u64;
    let idle = inner.config.idle_timeout.as_millis() as u64;
    let mut ping_id: u64 = 0;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = inner.shutdown.notified() => return,
        }
        if inner.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        ticks += 1;
        if ticks.is_multiple_of(TARGET_PURGE_TICKS) {
            inner.targets.purge();
        }
        let now = inner.clock.now_ms();
        let wall = Timestamp::now();
        for c in inner.conns.iter() {
            if c.idle(now, idle) {
                c.close(CloseReason {
                    code: close_code::IDLE_TIMEOUT,
                    reason: "idle timeout",
                });
                continue;
            }
            if c.expiry().is_some_and(|t| t <= wall) {
                c.set_expiry(None);
                c.push(error_frame(
                    None,
                    None,
                    ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        "the access token expired; send auth with a fresh token before expires_at",
                    ),
                ));
                c.close(CloseReason {
                    code: close_code::UNAUTHENTICATED,
                    reason: "token expired",
                });
                continue;
            }
            if c.ping_due(now, heartbeat) {
                // Server ping ids obey the request id range too.
                ping_id = if ping_id >= MAX_REQUEST_ID {
                    1
                } else {
                    ping_id + 1
                };
                c.push(encode::message(&ServerMessage::Ping { id: ping_id }));
            }
        }
    }
}

/// Every this many sweeps, targets no subscription holds are forgotten.
const TARGET_PURGE_TICKS: u64 = 40;

/// How often the sweeper runs (at most; never less often than the heartbeat).
const SWEEP_TICK: Duration = Duration::from_millis(250);
