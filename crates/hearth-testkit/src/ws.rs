//! A raw `hearth.v1` WebSocket client for end-to-end tests: frames are plain
//! JSON values, exactly as `sdk-spec/PROTOCOL.md` writes them, so a test
//! sees what a third-party SDK would see (no client library in between).
//!
//! ```no_run
//! # async fn demo(server: &hearth_testkit::TestServer) {
//! use hearth_testkit::ws::WsClient;
//! let mut ws = WsClient::connect(&server.ws_url(), Some(server.admin_key())).await.unwrap();
//! assert_eq!(ws.welcome["admin"], true);
//! let reply = ws.request(serde_json::json!({"type": "ping"})).await;
//! assert_eq!(reply["type"], "pong");
//! # }
//! ```
//!
//! Every wait has a time limit ([`WAIT`]); a missing frame fails the test
//! instead of hanging it. Server pings are answered transparently.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait for a frame may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// What ended a connection, as seen by [`WsClient::closed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// The close code (1005 when the frame had none, 1006 on a dropped TCP connection).
    pub code: u16,
    /// Frames that arrived before the close.
    pub frames: Vec<Value>,
}

/// One WebSocket session speaking `hearth.v1`.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` frame (or `Null` for [`WsClient::connect_without_hello`]).
    pub welcome: Value,
    next_id: u64,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("welcome", &self.welcome)
            .finish()
    }
}

impl WsClient {
    /// Opens the socket with the `hearth.v1` subprotocol, without a hello.
    pub async fn connect_without_hello(url: &str) -> Result<WsClient, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "hearth.v1".parse().map_err(|_| "bad header".to_string())?,
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| format!("connecting to {url} timed out"))?
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        Ok(WsClient {
            ws,
            welcome: Value::Null,
            next_id: 0,
        })
    }

    /// Connects and says hello with `token` (an access token, the admin key,
    /// or none for an anonymous session). `Ok` only when the server answered
    /// `welcome`; `Err` carries the frames and close code otherwise.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<WsClient, Closed> {
        let mut client = WsClient::connect_without_hello(url)
            .await
            .map_err(|_| Closed {
                code: 1006,
                frames: vec![],
            })?;
        let mut hello = json!({"type": "hello", "protocol": 1, "client": {"name": "hearth-testkit", "version": "0"}});
        if let Some(token) = token {
            hello["token"] = json!(token);
        }
        client.send(&hello).await;
        match client.next_frame().await {
            Some(frame) if frame["type"] == "welcome" => {
                client.welcome = frame;
                Ok(client)
            }
            Some(frame) => {
                let mut closed = client.closed().await;
                closed.frames.insert(0, frame);
                Err(closed)
            }
            None => Err(client.closed().await),
        }
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends one frame. Panics if the socket is gone (the test fails loudly).
    pub async fn send(&mut self, frame: &Value) {
        if let Err(e) = self.ws.send(Message::text(frame.to_string())).await {
            panic!("sending {frame}: {e}");
        }
    }

    /// The next text frame (server pings answered and skipped), or `None`
    /// when the socket closed. Panics after [`WAIT`] without a frame.
    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let message = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => return None,
                Err(_) => panic!("no frame within {WAIT:?}"),
            };
            match message {
                Message::Text(text) => {
                    let frame: Value = match serde_json::from_str(&text) {
                        Ok(v) => v,
                        Err(e) => panic!("server frame is not JSON ({e}): {text}"),
                    };
                    if frame["type"] == "ping" {
                        let pong = json!({"type": "pong", "id": frame["id"]});
                        self.send(&pong).await;
                        continue;
                    }
                    return Some(frame);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame; panics if the socket closes or nothing arrives in time.
    pub async fn recv(&mut self) -> Value {
        match self.next_frame().await {
            Some(frame) => frame,
            None => panic!("the socket closed while a frame was expected"),
        }
    }

    /// Skips frames until one satisfies `pred` and returns it.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.recv().await;
            if pred(&frame) {
                return frame;
            }
        }
    }

    /// Every frame that arrives within `window` (none expected, typically).
    pub async fn frames_within(&mut self, window: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(text) = message {
                if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                    if frame["type"] != "ping" {
                        frames.push(frame);
                    }
                }
            }
        }
        frames
    }

    /// Sends `frame` with a fresh `id` and returns the reply that carries
    /// that id (`error`, `write_ok`, `pong`, `auth_ok`, ...); subscription
    /// frames in between are skipped.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id();
        frame["id"] = json!(id);
        self.send(&frame).await;
        self.recv_until(|f| f["id"] == json!(id)).await
    }

    /// Subscribes and returns the first answer for `sub`: its `snapshot` or
    /// `changes` frame, or the `error` that refused it.
    pub async fn subscribe(&mut self, sub: &str, target: Value) -> Value {
        let id = self.next_id();
        self.send(&json!({"type": "subscribe", "id": id, "sub": sub, "target": target}))
            .await;
        self.recv_until(|f| f["sub"] == sub || f["id"] == json!(id))
            .await
    }

    /// `write` with these writes and a random mutation id; the reply.
    pub async fn write(&mut self, writes: Value) -> Value {
        let mutation_id = format!("m-{:016x}", rand_u64());
        self.request(json!({"type": "write", "mutation_id": mutation_id, "writes": writes}))
            .await
    }

    /// `transaction` with these reads and writes; the reply.
    pub async fn transaction(&mut self, reads: Value, writes: Value) -> Value {
        let mutation_id = format!("t-{:016x}", rand_u64());
        self.request(json!({"type": "transaction", "mutation_id": mutation_id,
            "reads": reads, "writes": writes}))
            .await
    }

    /// Waits for the close (frames before it are collected).
    pub async fn closed(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("the socket did not close within {WAIT:?}"),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Closed {
                        code: u16::from(f.code),
                        frames,
                    }
                }
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) => {
                    return Closed { code: 1005, frames }
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                        frames.push(frame);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) => return Closed { code: 1006, frames },
            }
        }
    }
}

/// A process-unique pseudo-random number (mutation ids only; not a secret).
fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(40) ^ u64::from(std::process::id())
}
