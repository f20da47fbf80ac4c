//! Plays one scenario file against a live server: opens the named
//! WebSocket connections, sends frames, checks the frames that come back
//! (each one also validated against the JSON Schemas), and performs REST
//! side effects. The step vocabulary is specified in
//! `sdk-spec/conformance/README.md`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::matcher::{matches, substitute, Vars};
use crate::schema::SchemaSet;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const TRANSCRIPT_TAIL: usize = 12;

/// A named connection of a scenario.
struct Conn {
    socket: Option<Socket>,
    /// The server selected `hearth.v1.msgpack`: frames are MessagePack.
    msgpack: bool,
    /// The close code once the server closed the connection (1006: no close frame).
    closed: Option<u16>,
}

pub(crate) struct Runner<'a> {
    pub ws_url: String,
    pub http_url: String,
    pub http: reqwest::Client,
    pub schemas: Option<&'a SchemaSet>,
    pub vars: Vars,
    conns: BTreeMap<String, Conn>,
    current: Option<String>,
    transcript: VecDeque<String>,
    pub frames_validated: usize,
    /// Request `hearth.v1.msgpack` by default (see `RunOptions::msgpack`).
    msgpack: bool,
}

fn note(transcript: &mut VecDeque<String>, line: String) {
    if transcript.len() == TRANSCRIPT_TAIL {
        transcript.pop_front();
    }
    let line = if line.len() > 400 {
        format!("{}…", line.chars().take(400).collect::<String>())
    } else {
        line
    };
    transcript.push_back(line);
}

/// A frame as MessagePack (maps with string keys, as the protocol says).
fn to_msgpack(v: &Json) -> Vec<u8> {
    hearth_protocol::ws::to_msgpack(v).unwrap_or_default()
}

fn timeout_of(step: &Json) -> Duration {
    step.get("timeout_ms")
        .and_then(Json::as_u64)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
}

impl<'a> Runner<'a> {
    pub fn new(
        ws_url: String,
        http_url: String,
        http: reqwest::Client,
        schemas: Option<&'a SchemaSet>,
        vars: Vars,
        msgpack: bool,
    ) -> Runner<'a> {
        Runner {
            ws_url,
            http_url,
            http,
            schemas,
            vars,
            conns: BTreeMap::new(),
            current: None,
            transcript: VecDeque::new(),
            frames_validated: 0,
            msgpack,
        }
    }

    /// The last frames sent and received, for failure reports.
    pub fn transcript(&self) -> Vec<String> {
        self.transcript.iter().cloned().collect()
    }

    pub async fn run_steps(&mut self, steps: &[Json]) -> Result<(), String> {
        for (i, step) in steps.iter().enumerate() {
            self.run_step(step)
                .await
                .map_err(|e| format!("step {} {}: {e}", i + 1, describe(step)))?;
        }
        Ok(())
    }

    fn conn_name(&self, step: &Json) -> Result<String, String> {
        match step.get("conn").and_then(Json::as_str) {
            Some(name) => Ok(name.to_string()),
            None => self
                .current
                .clone()
                .ok_or_else(|| "no connection is open".to_string()),
        }
    }

    async fn run_step(&mut self, step: &Json) -> Result<(), String> {
        let Some(object) = step.as_object() else {
            return Err("a step must be an object".into());
        };
        if let Some(name) = object.get("open") {
            let name = name
                .as_str()
                .ok_or("open takes a connection name")?
                .to_string();
            return self.open(&name, step).await;
        }
        if let Some(name) = object.get("handshake") {
            let name = name
                .as_str()
                .ok_or("handshake takes a connection name")?
                .to_string();
            self.open(&name, &json!({})).await?;
            let token = match step.get("token") {
                Some(t) => substitute(t, &self.vars)?,
                None => self.vars.get("admin_key").cloned().unwrap_or(Json::Null),
            };
            let mut hello = json!({
                "type": "hello", "protocol": 1,
                "client": {"name": "hearth-conformance", "version": env!("CARGO_PKG_VERSION")},
            });
            if !token.is_null() {
                hello["token"] = token;
            }
            self.send_text(&name, hello.to_string()).await?;
            let mut captures = Vars::new();
            let welcome = self
                .expect_frame(
                    &name,
                    &json!({"type": "welcome"}),
                    DEFAULT_TIMEOUT,
                    &mut captures,
                )
                .await?;
            self.vars.insert(format!("welcome_{name}"), welcome);
            return Ok(());
        }
        if let Some(frame) = object.get("send") {
            let name = self.conn_name(step)?;
            let frame = substitute(frame, &self.vars)?;
            return self.send_text(&name, frame.to_string()).await;
        }
        if let Some(text) = object.get("send_raw") {
            let name = self.conn_name(step)?;
            let text = match substitute(text, &self.vars)? {
                Json::String(s) => s,
                other => other.to_string(),
            };
            return self.send_text(&name, text).await;
        }
        if let Some(spec) = object.get("send_padded") {
            let name = self.conn_name(step)?;
            let mut frame = substitute(spec.get("frame").unwrap_or(&Json::Null), &self.vars)?;
            let bytes = substitute(spec.get("bytes").unwrap_or(&Json::Null), &self.vars)?
                .as_u64()
                .ok_or("send_padded needs \"bytes\": a number")?;
            // Optional: "times_bytes": k multiplies, "extra_bytes": n adds.
            let times = step.get("times_bytes").and_then(Json::as_u64).unwrap_or(1);
            let extra = step.get("extra_bytes").and_then(Json::as_u64).unwrap_or(0);
            let bytes = bytes.saturating_mul(times).saturating_add(extra);
            let base = frame.to_string().len() as u64;
            let pad = bytes.saturating_sub(base + 12) as usize;
            if let Some(map) = frame.as_object_mut() {
                map.insert("padding".into(), Json::String("x".repeat(pad)));
            }
            return self.send_text(&name, frame.to_string()).await;
        }
        if let Some(expected) = object.get("expect") {
            let name = self.conn_name(step)?;
            let expected = substitute(expected, &self.vars)?;
            let mut captures = Vars::new();
            self.expect_frame(&name, &expected, timeout_of(step), &mut captures)
                .await?;
            self.vars.extend(captures);
            return Ok(());
        }
        if let Some(expected) = object.get("expect_unordered") {
            let name = self.conn_name(step)?;
            let expected = substitute(expected, &self.vars)?;
            let list = expected
                .as_array()
                .ok_or("expect_unordered takes an array of matchers")?;
            return self.expect_unordered(&name, list, timeout_of(step)).await;
        }
        if let Some(count) = object.get("expect_collect") {
            let name = self.conn_name(step)?;
            let count = substitute(count, &self.vars)?
                .as_u64()
                .ok_or("expect_collect takes a number of frames")?;
            let expected = substitute(
                step.get("match").unwrap_or(&json!({"$any": true})),
                &self.vars,
            )?;
            let mut frames = Vec::new();
            for _ in 0..count {
                match self.next_frame(&name, timeout_of(step), false).await {
                    Ok(frame) => frames.push(frame),
                    Err(Next::Timeout) => {
                        return Err(format!("got {} of {count} frames in time", frames.len()))
                    }
                    Err(Next::Closed(code)) => {
                        return Err(format!("the connection closed with {code}"))
                    }
                    Err(Next::Failed(e)) => return Err(e),
                }
            }
            let mut captures = Vars::new();
            matches(
                &expected,
                Some(&Json::Array(frames)),
                &mut captures,
                "frames",
            )?;
            self.vars.extend(captures);
            return Ok(());
        }
        if let Some(ms) = object.get("expect_silence") {
            let name = self.conn_name(step)?;
            let ms = substitute(ms, &self.vars)?
                .as_u64()
                .ok_or("expect_silence takes milliseconds")?;
            return match self
                .next_frame(&name, Duration::from_millis(ms), false)
                .await
            {
                Ok(frame) => Err(format!("expected no frame for {ms} ms, got {frame}")),
                Err(Next::Timeout) => Ok(()),
                Err(Next::Closed(code)) => {
                    Err(format!("expected silence, the connection closed ({code})"))
                }
                Err(Next::Failed(e)) => Err(e),
            };
        }
        if let Some(spec) = object.get("expect_close") {
            let name = self.conn_name(step)?;
            let spec = substitute(spec, &self.vars)?;
            return self.expect_close(&name, &spec, timeout_of(step)).await;
        }
        if let Some(name) = object.get("close") {
            let name = name.as_str().ok_or("close takes a connection name")?;
            if let Some(conn) = self.conns.get_mut(name) {
                if let Some(mut socket) = conn.socket.take() {
                    let _ = socket.close(None).await;
                }
            }
            note(
                &mut self.transcript,
                format!("[{name}] closed by the client"),
            );
            return Ok(());
        }
        if let Some(name) = object.get("drop") {
            let name = name.as_str().ok_or("drop takes a connection name")?;
            if let Some(conn) = self.conns.get_mut(name) {
                conn.socket = None;
            }
            note(
                &mut self.transcript,
                format!("[{name}] dropped (no close frame)"),
            );
            return Ok(());
        }
        if let Some(request) = object.get("rest") {
            return self.rest(request, step).await;
        }
        if let Some(ms) = object.get("sleep_ms") {
            let ms = substitute(ms, &self.vars)?
                .as_u64()
                .ok_or("sleep_ms takes a number")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(());
        }
        if let Some(values) = object.get("set") {
            let values = substitute(values, &self.vars)?;
            let map = values.as_object().ok_or("set takes an object")?;
            for (k, v) in map {
                self.vars.insert(k.clone(), v.clone());
            }
            return Ok(());
        }
        if let Some(spec) = object.get("repeat") {
            let times = substitute(spec.get("times").unwrap_or(&Json::Null), &self.vars)?
                .as_u64()
                .ok_or("repeat needs \"times\": a number")?;
            let var = spec
                .get("var")
                .and_then(Json::as_str)
                .unwrap_or("i")
                .to_string();
            let steps = spec
                .get("steps")
                .and_then(Json::as_array)
                .ok_or("repeat needs \"steps\"")?
                .clone();
            for i in 0..times {
                self.vars.insert(var.clone(), Json::from(i));
                Box::pin(self.run_steps(&steps))
                    .await
                    .map_err(|e| format!("iteration {i}: {e}"))?;
            }
            return Ok(());
        }
        Err(format!(
            "unknown step (keys: {})",
            object.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    }

    async fn open(&mut self, name: &str, step: &Json) -> Result<(), String> {
        let mut request = self
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad url {}: {e}", self.ws_url))?;
        let default_subprotocol = if self.msgpack {
            "hearth.v1.msgpack"
        } else {
            "hearth.v1"
        };
        let subprotocol = match step.get("subprotocol") {
            None => Some(default_subprotocol.to_string()),
            Some(Json::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or("subprotocol must be a string or null")?
                    .to_string(),
            ),
        };
        if let Some(p) = subprotocol {
            let value = HeaderValue::from_str(&p).map_err(|e| e.to_string())?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        let expected_status = step.get("expect_http_status").and_then(Json::as_u64);
        let connect =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(request));
        let result = connect
            .await
            .map_err(|_| format!("connecting to {} timed out", self.ws_url))?;
        match (result, expected_status) {
            (Ok((socket, response)), None) => {
                let selected = response.headers().get("Sec-WebSocket-Protocol");
                if let Some(p) = selected {
                    note(
                        &mut self.transcript,
                        format!("[{name}] open, subprotocol {p:?}"),
                    );
                }
                let msgpack = selected.is_some_and(|p| p == "hearth.v1.msgpack");
                if self.msgpack && step.get("subprotocol").is_none() && !msgpack {
                    return Err(format!(
                        "asked for hearth.v1.msgpack, the server selected {selected:?}"
                    ));
                }
                self.conns.insert(
                    name.to_string(),
                    Conn {
                        socket: Some(socket),
                        closed: None,
                        msgpack,
                    },
                );
                self.current = Some(name.to_string());
                Ok(())
            }
            (Ok(_), Some(status)) => Err(format!(
                "expected the upgrade to be refused with HTTP {status}, it succeeded"
            )),
            (Err(tokio_tungstenite::tungstenite::Error::Http(response)), Some(status)) => {
                if u64::from(response.status().as_u16()) == status {
                    Ok(())
                } else {
                    Err(format!("expected HTTP {status}, got {}", response.status()))
                }
            }
            (Err(e), _) => Err(format!("could not open {}: {e}", self.ws_url)),
        }
    }

    async fn send_text(&mut self, name: &str, text: String) -> Result<(), String> {
        let conn = self
            .conns
            .get_mut(name)
            .ok_or_else(|| format!("no connection named {name}"))?;
        let socket = conn
            .socket
            .as_mut()
            .ok_or_else(|| format!("connection {name} is closed"))?;
        note(&mut self.transcript, format!("[{name}] → {text}"));
        let message = if conn.msgpack {
            // JSON becomes the same message in MessagePack; text that is
            // not JSON (a deliberately broken frame) goes as its raw bytes.
            match serde_json::from_str::<Json>(&text) {
                Ok(v) => Message::Binary(to_msgpack(&v).into()),
                Err(_) => Message::Binary(text.into_bytes().into()),
            }
        } else {
            Message::Text(text.into())
        };
        socket
            .send(message)
            .await
            .map_err(|e| format!("send on {name} failed: {e}"))
    }

    /// The next frame on `name`. Server pings are answered and skipped unless
    /// `want_ping`.
    async fn next_frame(
        &mut self,
        name: &str,
        timeout: Duration,
        want_ping: bool,
    ) -> Result<Json, Next> {
        let deadline = Instant::now() + timeout;
        loop {
            let conn = self
                .conns
                .get_mut(name)
                .ok_or_else(|| Next::Failed(format!("no connection named {name}")))?;
            if let Some(code) = conn.closed {
                return Err(Next::Closed(code));
            }
            let Some(socket) = conn.socket.as_mut() else {
                return Err(Next::Failed(format!(
                    "connection {name} was closed by the scenario"
                )));
            };
            let message = match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_) => return Err(Next::Timeout),
                Ok(m) => m,
            };
            let msgpack = conn.msgpack;
            let text = match message {
                Some(Ok(Message::Text(text))) if !msgpack => text.to_string(),
                Some(Ok(Message::Text(_))) => {
                    return Err(Next::Failed(
                        "unexpected text frame on hearth.v1.msgpack".into(),
                    ))
                }
                Some(Ok(Message::Binary(bytes))) if msgpack => {
                    match hearth_protocol::ws::from_msgpack(&bytes) {
                        Ok(v) => v.to_string(),
                        Err(e) => {
                            return Err(Next::Failed(format!(
                                "server sent a frame that is not MessagePack: {e}"
                            )))
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(Next::Failed("unexpected binary frame on hearth.v1".into()))
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    conn.closed = Some(code);
                    note(&mut self.transcript, format!("[{name}] ← close {code}"));
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    conn.closed = Some(1006);
                    note(&mut self.transcript, format!("[{name}] ← error {e}"));
                    continue;
                }
                None => {
                    conn.closed = Some(1006);
                    continue;
                }
            };
            note(&mut self.transcript, format!("[{name}] ← {text}"));
            let frame: Json = serde_json::from_str(&text)
                .map_err(|e| Next::Failed(format!("server sent a frame that is not JSON: {e}")))?;
            if let Some(schemas) = self.schemas {
                schemas
                    .validate(&frame)
                    .map_err(|e| Next::Failed(format!("{e}: {text}")))?;
                self.frames_validated += 1;
            }
            if frame.get("type") == Some(&json!("ping")) && !want_ping {
                let pong =
                    json!({"type": "pong", "id": frame.get("id").cloned().unwrap_or(json!(0))});
                if let Some(socket) = self.conns.get_mut(name).and_then(|c| c.socket.as_mut()) {
                    let reply = if msgpack {
                        Message::Binary(to_msgpack(&pong).into())
                    } else {
                        Message::Text(pong.to_string().into())
                    };
                    let _ = socket.send(reply).await;
                }
                continue;
            }
            return Ok(frame);
        }
    }

    async fn expect_frame(
        &mut self,
        name: &str,
        expected: &Json,
        timeout: Duration,
        captures: &mut Vars,
    ) -> Result<Json, String> {
        let want_ping = expected.get("type") == Some(&json!("ping"));
        match self.next_frame(name, timeout, want_ping).await {
            Ok(frame) => {
                matches(expected, Some(&frame), captures, "frame")?;
                Ok(frame)
            }
            Err(Next::Timeout) => Err(format!(
                "no frame within {} ms (expected {expected})",
                timeout.as_millis()
            )),
            Err(Next::Closed(code)) => Err(format!(
                "the connection closed with {code} (expected {expected})"
            )),
            Err(Next::Failed(e)) => Err(e),
        }
    }

    async fn expect_unordered(
        &mut self,
        name: &str,
        list: &[Json],
        timeout: Duration,
    ) -> Result<(), String> {
        let mut frames = Vec::new();
        for _ in 0..list.len() {
            match self.next_frame(name, timeout, false).await {
                Ok(frame) => frames.push(frame),
                Err(Next::Timeout) => {
                    return Err(format!(
                        "got {} of {} expected frames within {} ms",
                        frames.len(),
                        list.len(),
                        timeout.as_millis()
                    ))
                }
                Err(Next::Closed(code)) => {
                    return Err(format!("the connection closed with {code}"))
                }
                Err(Next::Failed(e)) => return Err(e),
            }
        }
        let mut captures = Vars::new();
        matches(
            &json!({"$unordered": list}),
            Some(&Json::Array(frames)),
            &mut captures,
            "frames",
        )?;
        self.vars.extend(captures);
        Ok(())
    }

    async fn expect_close(
        &mut self,
        name: &str,
        spec: &Json,
        timeout: Duration,
    ) -> Result<(), String> {
        // Error frames may precede the close; anything else is a failure.
        // With "answer_pings": false, server pings are left unanswered (to
        // let an idle timeout happen).
        let answer_pings = spec
            .get("answer_pings")
            .and_then(Json::as_bool)
            .unwrap_or(true);
        loop {
            match self.next_frame(name, timeout, !answer_pings).await {
                Ok(frame) if frame.get("type") == Some(&json!("ping")) => {}
                Ok(frame) if frame.get("type") == Some(&json!("error")) => {
                    if let Some(expected) = spec.get("error") {
                        let mut captures = Vars::new();
                        matches(expected, Some(&frame), &mut captures, "error frame")?;
                    }
                }
                Ok(frame) => return Err(format!("expected the connection to close, got {frame}")),
                Err(Next::Timeout) => {
                    return Err(format!(
                        "the connection stayed open for {} ms",
                        timeout.as_millis()
                    ))
                }
                Err(Next::Closed(code)) => {
                    let mut captures = Vars::new();
                    if let Some(expected) = spec.get("code") {
                        matches(
                            expected,
                            Some(&Json::from(code)),
                            &mut captures,
                            "close code",
                        )?;
                    }
                    return Ok(());
                }
                Err(Next::Failed(e)) => return Err(e),
            }
        }
    }

    async fn rest(&mut self, request: &Json, step: &Json) -> Result<(), String> {
        let request = substitute(request, &self.vars)?;
        let method = request
            .get("method")
            .and_then(Json::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let path = request
            .get("path")
            .and_then(Json::as_str)
            .ok_or("rest needs a \"path\"")?;
        let url = format!("{}{}", self.http_url, path);
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut builder = self.http.request(method.clone(), &url);
        let auth = match request.get("auth") {
            None => self
                .vars
                .get("admin_key")
                .and_then(Json::as_str)
                .map(str::to_string),
            Some(Json::Null) => None,
            Some(Json::String(s)) if s == "none" => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("auth must be a token string or null, got {other}")),
        };
        if let Some(token) = auth {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = request.get("body") {
            builder = builder.json(body);
        }
        note(
            &mut self.transcript,
            format!(
                "REST {method} {path} {}",
                request
                    .get("body")
                    .map(|b| b.to_string())
                    .unwrap_or_default()
            ),
        );
        let response = builder
            .timeout(DEFAULT_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        note(&mut self.transcript, format!("REST ← {status} {text}"));
        let body: Json = serde_json::from_str(&text).unwrap_or(Json::String(text.clone()));
        let mut captures = Vars::new();
        let expected_status = match step.get("expect_status") {
            Some(s) => substitute(s, &self.vars)?,
            None => json!({"$gte": 200, "$lt": 300}),
        };
        matches(
            &expected_status,
            Some(&Json::from(status)),
            &mut captures,
            "status",
        )
        .map_err(|e| format!("{e} (body {text})"))?;
        if let Some(expected) = step.get("expect_body") {
            let expected = substitute(expected, &self.vars)?;
            matches(&expected, Some(&body), &mut captures, "body")?;
        }
        self.vars.extend(captures);
        Ok(())
    }

    /// Closes every connection (end of scenario).
    pub async fn finish(&mut self) {
        for conn in self.conns.values_mut() {
            if let Some(mut socket) = conn.socket.take() {
                let _ = socket.close(None).await;
            }
        }
    }
}

enum Next {
    Timeout,
    Closed(u16),
    Failed(String),
}

fn describe(step: &Json) -> String {
    let text = step.to_string();
    if text.len() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}
