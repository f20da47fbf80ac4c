//! A WebSocket proxy between the client under test and the server.
//!
//! The client checks need to see what a client sends and to break its
//! network on cue, which neither the client nor the server can do for
//! them. The proxy accepts the client's WebSocket on loopback, opens one to
//! the server with the same subprotocol, and forwards frames both ways
//! while it:
//! - logs and schema-checks every frame (both directions, decoded from
//!   JSON text or MessagePack binary);
//! - drops every live connection on demand (both TCP connections closed
//!   without a close frame: a network failure as the client sees it);
//! - refuses new connections on demand (TCP accepted, then closed before
//!   the upgrade), recording each attempt's time;
//! - holds the server's frames back and releases them in order (a slow
//!   network), and injects its own `ping` frames, swallowing their `pong`s;
//! - loses the answer to a write: it forwards a `write`/`transaction`
//!   with a mutation id it has not seen before, swallows the server's
//!   answer to it and drops the connection, so the client must retry a
//!   mutation the server has already applied;
//! - goes silent: it stops forwarding on the live connections in both
//!   directions but keeps their sockets open (a half-open connection, as
//!   after a phone changes networks: no error, just nothing);
//! - closes the client's connections itself with a given close code;
//! - rewrites `welcome`'s `heartbeat_ms` and `idle_timeout_ms`, so a
//!   client's liveness timers can be checked in seconds, not minutes, and
//!   its `limits.max_inflight_writes`, so a client's pacing of its writes
//!   can be checked with a handful of them;
//! - counts, per connection, the `write`/`transaction` frames the client
//!   sent whose answer it has not been forwarded yet, and records the most
//!   there ever were at once.
//!
//! WebSocket-level pings are answered by each side's own library and not
//! forwarded.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::schema::SchemaSet;

/// Ids of the proxy's own `ping` frames start here, far above what a server
/// sends, so their `pong`s can be told apart.
const INJECTED_PING_BASE: u64 = 9_000_000_000;

/// One frame that passed the proxy.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    /// 1 for the first proxied connection, 2 for the next, …
    pub conn: usize,
    pub from_client: bool,
    pub frame: Json,
    pub at: Instant,
}

struct Live {
    conn: usize,
    task: AbortHandle,
    inject: mpsc::UnboundedSender<Message>,
    /// The connection speaks `hearth.v1.msgpack`.
    msgpack: bool,
}

#[derive(Default)]
struct State {
    refusing: bool,
    /// Every TCP connection the client opened (refused ones included).
    attempts: Vec<Instant>,
    connections: usize,
    frames: Vec<Logged>,
    violations: Vec<String>,
    frames_validated: usize,
    lose_answers: bool,
    /// Drop each connection right after forwarding its `welcome`.
    drop_after_welcome: bool,
    /// Answer this many of the client's next `write` frames with
    /// `unavailable` instead of forwarding them.
    refuse_writes: usize,
    seen_mutations: HashSet<String>,
    /// Live connections: their task (aborting it drops both sockets) and a
    /// way to send the client frames of the proxy's own.
    live: Vec<Live>,
    next_ping: u64,
    /// `pong`s that answered injected pings: (connection, id, when).
    pongs: Vec<(usize, u64, Instant)>,
    /// When each connection ended (dropped or closed).
    ended: Vec<(usize, Instant)>,
    /// Connections that forward nothing any more (but stay open).
    silenced: HashSet<usize>,
    /// `(heartbeat_ms, idle_timeout_ms)` to put in every `welcome`.
    welcome_timers: Option<(u64, u64)>,
    /// `limits.max_inflight_writes` to put in every `welcome`.
    welcome_max_inflight: Option<u64>,
    /// The most `write`/`transaction` frames each connection had
    /// unanswered at once: connection → count.
    unanswered_peaks: BTreeMap<usize, usize>,
    /// The subprotocol each proxied connection selected.
    subprotocols: Vec<(usize, Option<String>)>,
}

struct Shared {
    upstream: String,
    schemas: Option<Arc<SchemaSet>>,
    state: Mutex<State>,
    held: watch::Sender<Hold>,
}

/// Which of the server's frames the proxy keeps back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Nothing,
    Everything,
    /// Only `write_ok` frames: the answers to writes come late, everything
    /// else passes (and overtakes them).
    WriteAnswers,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for live in self.shared.state().live.drain(..) {
            live.task.abort();
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (the
    /// server's `ws://…/v1/ws`).
    pub async fn start(upstream: &str, schemas: Option<Arc<SchemaSet>>) -> Result<Proxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("proxy: bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (held, _) = watch::channel(Hold::Nothing);
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            schemas,
            state: Mutex::new(State::default()),
            held,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }

    /// The URL the client under test connects to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Drops every live connection (no close frame on either side).
    pub fn drop_all(&self) {
        for live in self.shared.state().live.drain(..) {
            live.task.abort();
        }
    }

    /// While on, new connections are closed right after TCP accept.
    pub fn refuse(&self, on: bool) {
        self.shared.state().refusing = on;
    }

    /// While on, the server's frames are kept back; turning it off sends
    /// them on, in order.
    pub fn hold(&self, on: bool) {
        self.shared
            .held
            .send_replace(if on { Hold::Everything } else { Hold::Nothing });
    }

    /// While on, the server's `write_ok` frames are kept back and every
    /// other frame passes, overtaking them; turning it off sends them on.
    pub fn hold_write_answers(&self, on: bool) {
        self.shared.held.send_replace(if on {
            Hold::WriteAnswers
        } else {
            Hold::Nothing
        });
    }

    /// While on, every connection is dropped right after its `welcome`
    /// reaches the client (a server that fails at once, again and again).
    pub fn drop_after_welcome(&self, on: bool) {
        self.shared.state().drop_after_welcome = on;
    }

    /// Answers the client's next `n` `write` frames itself, with an `error`
    /// `unavailable` (a server that cannot take writes for now), instead
    /// of forwarding them.
    pub fn refuse_writes(&self, n: usize) {
        self.shared.state().refuse_writes = n;
    }

    /// While on, the answer to each new mutation is lost with its connection.
    pub fn lose_answers(&self, on: bool) {
        self.shared.state().lose_answers = on;
    }

    /// Stops forwarding anything on every live connection, both ways,
    /// without closing it; new connections are not affected.
    pub fn go_silent(&self) {
        let mut state = self.shared.state();
        let live: Vec<usize> = state.live.iter().map(|l| l.conn).collect();
        state.silenced.extend(live);
    }

    /// Closes every live connection: a close frame with `code` and
    /// `reason` to the client, a normal close to the server.
    pub fn close_all_with(&self, code: u16, reason: &str) {
        for live in self.shared.state().live.iter() {
            let _ = live.inject.send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.to_string().into(),
            })));
        }
    }

    /// Every later `welcome` tells the client these timers instead of the
    /// server's.
    pub fn rewrite_welcome_timers(&self, heartbeat_ms: u64, idle_timeout_ms: u64) {
        self.shared.state().welcome_timers = Some((heartbeat_ms, idle_timeout_ms));
    }

    /// Every later `welcome` tells the client this `limits.max_inflight_writes`
    /// instead of the server's (which still enforces its own).
    pub fn rewrite_welcome_max_inflight(&self, max_inflight_writes: u64) {
        self.shared.state().welcome_max_inflight = Some(max_inflight_writes);
    }

    /// The most `write`/`transaction` frames the client had unanswered at
    /// once on each connection (sent through the proxy, their answer not
    /// yet forwarded to the client): `(connection, count)`.
    pub fn unanswered_peaks(&self) -> Vec<(usize, usize)> {
        self.shared
            .state()
            .unanswered_peaks
            .iter()
            .map(|(conn, peak)| (*conn, *peak))
            .collect()
    }

    /// Sends a `ping` of the proxy's own to the client on the newest live
    /// connection; returns `(connection, id)`.
    pub fn inject_ping(&self) -> Option<(usize, u64)> {
        let mut state = self.shared.state();
        state.next_ping += 1;
        let id = INJECTED_PING_BASE + state.next_ping;
        let live = state.live.last()?;
        let frame = json!({"type": "ping", "id": id});
        live.inject.send(encode(&frame, live.msgpack)?).ok()?;
        Some((live.conn, id))
    }

    /// The answers to injected pings so far: `(connection, id, when)`.
    pub fn injected_pongs(&self) -> Vec<(usize, u64, Instant)> {
        self.shared.state().pongs.clone()
    }

    /// When connection `conn` ended, if it has.
    pub fn ended(&self, conn: usize) -> Option<Instant> {
        let state = self.shared.state();
        state
            .ended
            .iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, at)| *at)
    }

    /// The subprotocol each proxied connection selected: `(connection, name)`.
    pub fn subprotocols(&self) -> Vec<(usize, Option<String>)> {
        self.shared.state().subprotocols.clone()
    }

    pub fn attempts(&self) -> Vec<Instant> {
        self.shared.state().attempts.clone()
    }

    /// Connections that reached the server (refused attempts not counted).
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    pub fn frames(&self) -> Vec<Logged> {
        self.shared.state().frames.clone()
    }

    /// Frames the client sent, in order.
    pub fn client_frames(&self) -> Vec<Logged> {
        self.frames()
            .into_iter()
            .filter(|f| f.from_client)
            .collect()
    }

    /// Schema violations and undecodable frames seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.shared.state().violations.clone()
    }

    pub fn frames_validated(&self) -> usize {
        self.shared.state().frames_validated
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let refusing = {
            let mut state = shared.state();
            state.attempts.push(Instant::now());
            state.refusing
        };
        if refusing {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            // Registers itself in `live` once both sides are up.
            let _ = proxy_connection(stream, shared).await;
        });
    }
}

/// The subprotocols the proxy speaks for: the first of these the client
/// offers is selected on both legs.
const SUBPROTOCOLS: [&str; 2] = ["hearth.v1", "hearth.v1.msgpack"];

/// The client's first offered subprotocol that the proxy knows.
fn chosen_subprotocol(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| SUBPROTOCOLS.contains(p))
        .map(str::to_string)
}

async fn proxy_connection(stream: TcpStream, shared: Arc<Shared>) -> Result<(), String> {
    // The proxy selects the client's first known subprotocol and then offers
    // exactly that one to the server (which speaks both).
    let chosen = Arc::new(Mutex::new(None::<String>));
    let chosen_in_callback = chosen.clone();
    // The error type is tungstenite's (an HTTP response), fixed by its trait.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, mut response: Response| {
        let subprotocol = chosen_subprotocol(request);
        if let Some(value) = subprotocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        *chosen_in_callback.lock().unwrap_or_else(|e| e.into_inner()) = subprotocol;
        Ok(response)
    };
    let client = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = shared
        .upstream
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let subprotocol = chosen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(value) = subprotocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let (server, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    let (inject_tx, inject_rx) = mpsc::unbounded_channel();
    let conn = {
        let mut state = shared.state();
        state.connections += 1;
        state.connections
    };
    let msgpack = subprotocol.as_deref() == Some("hearth.v1.msgpack");
    shared
        .state()
        .subprotocols
        .push((conn, subprotocol.clone()));
    let task = tokio::spawn(forward(
        conn,
        client,
        server,
        inject_tx.clone(),
        inject_rx,
        shared.clone(),
    ));
    shared.state().live.push(Live {
        conn,
        task: task.abort_handle(),
        inject: inject_tx,
        msgpack,
    });
    let _ = task.await;
    let mut state = shared.state();
    state.live.retain(|live| live.conn != conn);
    state.ended.push((conn, Instant::now()));
    Ok(())
}

/// Decodes a data frame (JSON text or MessagePack binary); `None` for
/// control frames.
fn decode(message: &Message) -> Option<Result<Json, String>> {
    match message {
        Message::Text(text) => Some(serde_json::from_str(text.as_str()).map_err(|e| e.to_string())),
        Message::Binary(bytes) => {
            Some(hearth_protocol::ws::from_msgpack(bytes).map_err(|e| e.to_string()))
        }
        _ => None,
    }
}

async fn forward<C, S>(
    conn: usize,
    client: tokio_tungstenite::WebSocketStream<C>,
    server: tokio_tungstenite::WebSocketStream<S>,
    answer: mpsc::UnboundedSender<Message>,
    mut inject: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_server, mut from_server) = server.split();
    let mut held_rx = shared.held.subscribe();
    // Each with the request id it answers, if it is a `write_ok` or `error`.
    let mut held_back: Vec<(Message, Option<String>)> = Vec::new();
    // `write_ok` frames kept back by `Hold::WriteAnswers`.
    let mut held_answers: Vec<(Message, Option<String>)> = Vec::new();
    let mut unanswered = Unanswered {
        conn,
        ids: HashSet::new(),
    };
    // The request id whose answer is to be lost, once such a write passed.
    let mut lose_answer_to: Option<Json> = None;
    loop {
        tokio::select! {
            message = from_client.next() => {
                let Some(Ok(message)) = message else { break };
                if is_silenced(&shared, conn) {
                    continue;
                }
                if let Message::Close(_) = message {
                    let _ = to_server.send(message).await;
                    break;
                }
                let Some(decoded) = decode(&message) else { continue };
                let frame = record(&shared, conn, true, decoded);
                if let Some(frame) = &frame {
                    if swallow_pong(&shared, conn, frame) {
                        continue;
                    }
                    if let Some(refusal) = refuse_write(&shared, frame, matches!(message, Message::Binary(_))) {
                        let _ = answer.send(refusal);
                        continue;
                    }
                    if lose_answer_to.is_none() {
                        lose_answer_to = answer_to_lose(&shared, frame);
                    }
                    unanswered.sent(&shared, frame);
                }
                if to_server.send(message).await.is_err() {
                    break;
                }
            }
            message = from_server.next() => {
                let Some(Ok(message)) = message else { break };
                if is_silenced(&shared, conn) {
                    continue;
                }
                if let Message::Close(_) = message {
                    let _ = to_client.send(message).await;
                    break;
                }
                let Some(decoded) = decode(&message) else { continue };
                let frame = record(&shared, conn, false, decoded);
                let (message, frame) = rewrite_welcome(&shared, message, frame);
                let answers_lost_write = match (&frame, &lose_answer_to) {
                    (Some(frame), Some(id)) => {
                        matches!(frame.get("type").and_then(Json::as_str), Some("write_ok" | "error"))
                            && frame.get("id") == Some(id)
                    }
                    _ => false,
                };
                if answers_lost_write {
                    break;
                }
                let is_welcome = frame.as_ref().is_some_and(|f| f.get("type").and_then(Json::as_str) == Some("welcome"));
                // Frames held back go first: a frame can arrive before this
                // loop has seen the hold lift, and must not overtake them.
                let hold = *held_rx.borrow();
                let is_write_ok = frame.as_ref().is_some_and(|f| f.get("type").and_then(Json::as_str) == Some("write_ok"));
                if hold == Hold::WriteAnswers && is_write_ok {
                    held_answers.push((message, answered_request(frame.as_ref())));
                } else {
                    held_back.push((message, answered_request(frame.as_ref())));
                }
                if hold != Hold::Everything && !release(&mut to_client, &mut held_back, &mut unanswered).await {
                    break;
                }
                if is_welcome && shared.state().drop_after_welcome {
                    break;
                }
            }
            changed = held_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let hold = *held_rx.borrow_and_update();
                if hold != Hold::Everything && !release(&mut to_client, &mut held_back, &mut unanswered).await {
                    return;
                }
                if hold == Hold::Nothing && !release(&mut to_client, &mut held_answers, &mut unanswered).await {
                    return;
                }
            }
            Some(message) = inject.recv() => {
                let closing = matches!(message, Message::Close(_));
                if to_client.send(message).await.is_err() || closing {
                    if closing {
                        let _ = to_server.send(Message::Close(None)).await;
                    }
                    break;
                }
            }
        }
    }
}

fn is_silenced(shared: &Shared, conn: usize) -> bool {
    shared.state().silenced.contains(&conn)
}

/// Puts the timers set with [`Proxy::rewrite_welcome_timers`] and the
/// limit set with [`Proxy::rewrite_welcome_max_inflight`] into a `welcome`
/// (re-encoded in the connection's encoding); anything else passes
/// unchanged.
fn rewrite_welcome(
    shared: &Shared,
    message: Message,
    frame: Option<Json>,
) -> (Message, Option<Json>) {
    let (timers, max_inflight) = {
        let state = shared.state();
        (state.welcome_timers, state.welcome_max_inflight)
    };
    let Some(mut welcome) = frame.clone() else {
        return (message, frame);
    };
    if welcome.get("type").and_then(Json::as_str) != Some("welcome")
        || (timers.is_none() && max_inflight.is_none())
    {
        return (message, frame);
    }
    if let Some((heartbeat, idle)) = timers {
        welcome["heartbeat_ms"] = json!(heartbeat);
        welcome["idle_timeout_ms"] = json!(idle);
    }
    if let (Some(max), Some(limits)) = (max_inflight, welcome.get_mut("limits")) {
        limits["max_inflight_writes"] = json!(max);
    }
    match encode(&welcome, matches!(message, Message::Binary(_))) {
        Some(rewritten) => (rewritten, Some(welcome)),
        None => (message, Some(welcome)),
    }
}

/// Sends the frames held back, in order; false if the client is gone.
async fn release<K>(
    to_client: &mut K,
    held_back: &mut Vec<(Message, Option<String>)>,
    unanswered: &mut Unanswered,
) -> bool
where
    K: futures::Sink<Message> + Unpin,
{
    for (message, answers) in held_back.drain(..) {
        // Counted as answered before the client can see it, so the client's
        // next frame (read after this send) never finds it still counted.
        if let Some(id) = answers {
            unanswered.ids.remove(&id);
        }
        if to_client.send(message).await.is_err() {
            return false;
        }
    }
    true
}

/// The `write`/`transaction` frames the client sent on one connection whose
/// answer the proxy has not forwarded to it yet (request ids, as JSON text).
struct Unanswered {
    conn: usize,
    ids: HashSet<String>,
}

impl Unanswered {
    /// Counts a frame from the client that goes on to the server, and
    /// records a new peak.
    fn sent(&mut self, shared: &Shared, frame: &Json) {
        if !matches!(
            frame.get("type").and_then(Json::as_str),
            Some("write" | "transaction")
        ) {
            return;
        }
        let Some(id) = frame.get("id") else { return };
        self.ids.insert(id.to_string());
        let mut state = shared.state();
        let peak = state.unanswered_peaks.entry(self.conn).or_default();
        *peak = (*peak).max(self.ids.len());
    }
}

/// The request id a server frame answers, when it is a `write_ok` or an
/// `error` (the answers to `write` and `transaction`).
fn answered_request(frame: Option<&Json>) -> Option<String> {
    let frame = frame?;
    match frame.get("type").and_then(Json::as_str) {
        Some("write_ok" | "error") => frame.get("id").map(Json::to_string),
        _ => None,
    }
}

/// Logs a decoded frame and checks it against the schemas; returns it.
fn record(
    shared: &Shared,
    conn: usize,
    from_client: bool,
    decoded: Result<Json, String>,
) -> Option<Json> {
    let direction = if from_client { "client" } else { "server" };
    let mut state = shared.state();
    match decoded {
        Ok(frame) => {
            if let Some(schemas) = &shared.schemas {
                state.frames_validated += 1;
                if let Err(e) = schemas.validate(&frame) {
                    state.violations.push(format!(
                        "{direction} frame on connection {conn}: {e}: {frame}"
                    ));
                }
            }
            state.frames.push(Logged {
                conn,
                from_client,
                frame: frame.clone(),
                at: Instant::now(),
            });
            Some(frame)
        }
        Err(e) => {
            state.violations.push(format!(
                "undecodable {direction} frame on connection {conn}: {e}"
            ));
            None
        }
    }
}

/// The proxy's own `unavailable` answer to a `write`, while refusing writes.
fn refuse_write(shared: &Shared, frame: &Json, msgpack: bool) -> Option<Message> {
    if frame.get("type").and_then(Json::as_str) != Some("write") {
        return None;
    }
    {
        let mut state = shared.state();
        if state.refuse_writes == 0 {
            return None;
        }
        state.refuse_writes -= 1;
    }
    let error = json!({"type": "error", "id": frame.get("id"), "code": "unavailable",
        "message": "the conformance proxy refuses this write (a server that cannot take writes for now)"});
    encode(&error, msgpack)
}

/// A frame of the proxy's own, in the connection's encoding.
fn encode(frame: &Json, msgpack: bool) -> Option<Message> {
    Some(if msgpack {
        Message::binary(hearth_protocol::ws::to_msgpack(frame).ok()?)
    } else {
        Message::text(frame.to_string())
    })
}

fn swallow_pong(shared: &Shared, conn: usize, frame: &Json) -> bool {
    if frame.get("type").and_then(Json::as_str) != Some("pong") {
        return false;
    }
    match frame.get("id").and_then(Json::as_u64) {
        Some(id) if id > INJECTED_PING_BASE => {
            shared.state().pongs.push((conn, id, Instant::now()));
            true
        }
        _ => false,
    }
}

/// The request id of a write whose answer the proxy should lose: lose mode
/// is on and its mutation id is new.
fn answer_to_lose(shared: &Shared, frame: &Json) -> Option<Json> {
    let kind = frame.get("type").and_then(Json::as_str)?;
    if kind != "write" && kind != "transaction" {
        return None;
    }
    let mutation = frame.get("mutation_id").and_then(Json::as_str)?;
    let mut state = shared.state();
    if !state.lose_answers || !state.seen_mutations.insert(mutation.to_string()) {
        return None;
    }
    frame.get("id").cloned()
}
