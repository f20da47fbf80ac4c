//! Test harness: a real store in a temp dir, the gateway's router served by
//! axum on 127.0.0.1:0, and a raw tokio-tungstenite client that validates
//! every frame it receives against the JSON Schemas in sdk-spec/schema/.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hearth_gateway::{router, Authenticated, Authenticator, Gateway, GatewayConfig};
use hearth_protocol::{ErrorBody, ErrorCode, Timestamp};
use hearth_rules::{AccessControl, Principal};
use hearth_store::{Engine, FaultyEngine, Retention, SledEngine, Store, StoreConfig};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// Tokens understood by the test authenticator: `admin`, `user:<uid>`,
/// `user:<uid>:<expiry unix millis>`; anything else is rejected.
pub struct TestAuth;

impl Authenticator for TestAuth {
    fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, ErrorBody> {
        let Some(token) = token else {
            return Ok(Authenticated {
                principal: Principal::Unauthenticated,
                expires_at: None,
            });
        };
        if token == "admin" {
            return Ok(Authenticated {
                principal: Principal::Admin,
                expires_at: None,
            });
        }
        let parts: Vec<&str> = token.split(':').collect();
        match parts.as_slice() {
            ["session", uid, sid] => {
                let mut claims = std::collections::BTreeMap::new();
                claims.insert("sid".to_string(), hearth_protocol::Value::from(*sid));
                Ok(Authenticated {
                    principal: Principal::User {
                        uid: uid.to_string(),
                        claims,
                    },
                    expires_at: None,
                })
            }
            ["user", uid] => Ok(Authenticated {
                principal: Principal::user(*uid),
                expires_at: None,
            }),
            ["user", uid, ms] => {
                let ms: i64 = ms
                    .parse()
                    .map_err(|_| ErrorBody::new(ErrorCode::Unauthenticated, "bad token"))?;
                Ok(Authenticated {
                    principal: Principal::user(*uid),
                    expires_at: Some(Timestamp::from_millis(ms)),
                })
            }
            _ => Err(ErrorBody::new(ErrorCode::Unauthenticated, "invalid token")),
        }
    }
}

pub fn expiring_token(uid: &str, in_ms: i64) -> String {
    format!("user:{uid}:{}", Timestamp::now().millis() + in_ms)
}

pub struct Server {
    pub task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub store: Store,
    pub dir: tempfile::TempDir,
}

pub struct Options {
    pub config: GatewayConfig,
    pub access: AccessControl,
    pub retention: Option<Retention>,
    /// Serve the store over this engine (to inject faults); `None`: sled
    /// with the write-ahead log, as `hearth serve` runs it.
    pub engine: Option<Arc<FaultyEngine>>,
}

/// Access control from a rules file's text (panics on a parse error).
pub fn rules_access(rules: &str) -> AccessControl {
    AccessControl::new(hearth_rules::Ruleset::parse(rules).expect("rules parse"))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: GatewayConfig::default(),
            access: AccessControl::allow_all(),
            retention: None,
            engine: None,
        }
    }
}

pub async fn start(opts: Options) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    start_in(dir, opts).await
}

/// A fault-injecting engine over sled in `dir` (for [`Options::engine`]).
pub fn faulty_engine(dir: &std::path::Path) -> Arc<FaultyEngine> {
    let sled = SledEngine::open(dir, 1 << 24).expect("sled opens");
    Arc::new(FaultyEngine::new(Arc::new(sled)))
}

pub async fn start_in(dir: tempfile::TempDir, opts: Options) -> Server {
    let mut sc = StoreConfig::new(dir.path());
    sc.indexes.allow_scans = true;
    if let Some(r) = opts.retention {
        sc.retention = r;
    }
    // A previous store on the same directory may still be releasing its lock.
    let mut tries = 0;
    let open = |sc: StoreConfig| match &opts.engine {
        None => Store::open(sc),
        Some(engine) => Store::open_with_engine(sc, Arc::clone(engine) as Arc<dyn Engine>),
    };
    let store = loop {
        match open(sc.clone()) {
            Ok(s) => break s,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store does not open: {e}"),
        }
    };
    let gateway = Gateway::new(opts.config, store.clone(), opts.access, Arc::new(TestAuth));
    let app = router(gateway.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        task,
        addr,
        gateway,
        store,
        dir,
    }
}

fn schema_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| validator_for("server-message.json"))
}

pub fn client_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| validator_for("client-message.json"))
}

pub fn schema_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/schema")
}

pub fn load_schema(name: &str) -> Value {
    let text = std::fs::read_to_string(schema_dir().join(name)).expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

/// A validator for one schema file, with every other schema file registered
/// under its `$id` so that relative `$ref`s resolve offline.
pub fn validator_for(name: &str) -> jsonschema::Validator {
    let mut registry = jsonschema::Registry::new();
    for entry in std::fs::read_dir(schema_dir()).expect("schema dir") {
        let path = entry.expect("entry").path();
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let id = doc["$id"].as_str().expect("$id").to_string();
        registry = registry.add(id, doc).expect("schema registers");
    }
    // Tests only: the registry lives as long as the process.
    let registry: &'static jsonschema::Registry<'static> =
        Box::leak(Box::new(registry.prepare().expect("registry prepares")));
    jsonschema::options()
        .with_registry(registry)
        .build(&load_schema(name))
        .expect("schema compiles")
}

pub fn assert_valid_server_frame(frame: &Value) {
    let v = schema_validator();
    let errors: Vec<String> = v.iter_errors(frame).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "frame does not match the schema: {errors:?}\n{frame}"
    );
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
    /// Speaks `hearth.v1.msgpack` (binary MessagePack frames) instead of JSON.
    pub msgpack: bool,
}

pub async fn connect_raw(addr: SocketAddr) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    connect_raw_with(addr, "hearth.v1").await
}

/// Opens a socket offering `subprotocol` and checks that the server selected it.
pub async fn connect_raw_with(
    addr: SocketAddr,
    subprotocol: &str,
) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        subprotocol.parse().expect("header"),
    );
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("connects");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(subprotocol)
    );
    ws
}

impl Client {
    /// Wraps a socket that has not said hello.
    pub fn raw(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            welcome: Value::Null,
            next_id: 100,
            msgpack: false,
        }
    }

    pub async fn hello(addr: SocketAddr, token: Option<&str>) -> Client {
        let mut c = Client::raw(connect_raw(addr).await);
        let mut hello =
            json!({"type": "hello", "protocol": 1, "client": {"name": "test", "version": "0"}});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        c.send(hello).await;
        c
    }

    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Client {
        Client::connect_with(addr, token, false).await
    }

    /// [`Client::connect`] over `hearth.v1.msgpack`.
    pub async fn connect_msgpack(addr: SocketAddr, token: Option<&str>) -> Client {
        Client::connect_with(addr, token, true).await
    }

    async fn connect_with(addr: SocketAddr, token: Option<&str>, msgpack: bool) -> Client {
        let subprotocol = if msgpack {
            "hearth.v1.msgpack"
        } else {
            "hearth.v1"
        };
        let ws = connect_raw_with(addr, subprotocol).await;
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 100,
            msgpack,
        };
        let mut hello =
            json!({"type": "hello", "protocol": 1, "client": {"name": "test", "version": "0"}});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        c.send(hello).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn send(&mut self, v: Value) {
        let msg = if self.msgpack {
            Message::binary(hearth_protocol::ws::to_msgpack(&v).expect("msgpack"))
        } else {
            Message::text(v.to_string())
        };
        self.ws.send(msg).await.expect("send");
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws.send(Message::text(t)).await.expect("send");
    }

    /// The next frame that is not a server ping (pings are answered).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("frame ok");
            let v: Value = match msg {
                Message::Text(t) => {
                    assert!(
                        !self.msgpack,
                        "a text frame on a MessagePack connection: {t}"
                    );
                    serde_json::from_str(&t).expect("frame is JSON")
                }
                Message::Binary(b) => {
                    assert!(self.msgpack, "a binary frame on a JSON connection");
                    hearth_protocol::ws::from_msgpack(&b).expect("frame is MessagePack")
                }
                Message::Close(f) => panic!("unexpected close {f:?}"),
                _ => continue,
            };
            assert_valid_server_frame(&v);
            if v["type"] == "ping" {
                let id = v["id"].clone();
                self.send(json!({"type": "pong", "id": id})).await;
                continue;
            }
            return v;
        }
    }

    /// Waits for the close frame (skipping other frames) and returns its code.
    pub async fn closed(&mut self) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), before),
                Some(Ok(Message::Close(None))) | None => return (1005, before),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    assert_valid_server_frame(&v);
                    before.push(v);
                }
                Some(Ok(Message::Binary(b))) if self.msgpack => {
                    let v = hearth_protocol::ws::from_msgpack(&b).expect("msgpack");
                    assert_valid_server_frame(&v);
                    before.push(v);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => return (1006, before),
            }
        }
    }

    pub async fn subscribe(&mut self, sub: &str, target: Value, resume: Option<&str>) -> Value {
        let id = self.id();
        let mut f = json!({"type": "subscribe", "id": id, "sub": sub, "target": target});
        if let Some(r) = resume {
            f["resume"] = json!(r);
        }
        self.send(f).await;
        self.recv().await
    }

    /// Sends a write frame and returns the write_ok/error, skipping (and
    /// returning) subscription frames that arrive meanwhile.
    pub async fn write(&mut self, mutation_id: &str, writes: Value) -> (Value, Vec<Value>) {
        let id = self.id();
        self.send(json!({"type": "write", "id": id, "mutation_id": mutation_id, "writes": writes}))
            .await;
        let mut other = Vec::new();
        loop {
            let f = self.recv().await;
            if f["id"] == json!(id) {
                return (f, other);
            }
            other.push(f);
        }
    }

    /// [`Client::write`] for a `transaction` frame.
    pub async fn transaction(
        &mut self,
        mutation_id: &str,
        reads: Value,
        writes: Value,
    ) -> (Value, Vec<Value>) {
        let id = self.id();
        self.send(
            json!({"type": "transaction", "id": id, "mutation_id": mutation_id,
                         "reads": reads, "writes": writes}),
        )
        .await;
        let mut other = Vec::new();
        loop {
            let f = self.recv().await;
            if f["id"] == json!(id) {
                return (f, other);
            }
            other.push(f);
        }
    }

    /// Sends a ping and returns the frames that arrived before its pong:
    /// the session is alive, and every answer queued before the server
    /// read the ping has arrived.
    pub async fn until_pong(&mut self) -> Vec<Value> {
        let id = self.id();
        self.send(json!({"type": "ping", "id": id})).await;
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f["type"] == "pong" && f["id"] == json!(id) {
                return before;
            }
            before.push(f);
        }
    }
}

pub fn set(path: &str, data: Value) -> Value {
    json!({"op": "set", "path": path, "data": data})
}

pub fn paths(docs: &Value) -> Vec<String> {
    docs.as_array()
        .expect("array")
        .iter()
        .map(|d| d["path"].as_str().expect("path").to_string())
        .collect()
}

/// Applies a frame to a client view as PROTOCOL.md says.
pub fn apply(view: &mut Vec<Value>, frame: &Value) {
    match frame["type"].as_str() {
        Some("snapshot") => *view = frame["docs"].as_array().expect("docs").clone(),
        Some("changes") => {
            let changes = frame["changes"].as_array().expect("changes");
            let drop: Vec<usize> = changes
                .iter()
                .filter_map(|c| c["old_index"].as_u64())
                .map(|i| i as usize)
                .collect();
            let mut next: Vec<Value> = view
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, d)| d.clone())
                .collect();
            let mut ins: Vec<&Value> = changes.iter().filter(|c| c["new_index"].is_u64()).collect();
            ins.sort_by_key(|c| c["new_index"].as_u64());
            for c in ins {
                let j = c["new_index"].as_u64().expect("index") as usize;
                assert!(j <= next.len(), "new_index {j} out of range in {frame}");
                next.insert(j, c["doc"].clone());
            }
            *view = next;
        }
        other => panic!("not a subscription frame: {other:?}"),
    }
}

pub fn view_paths(view: &[Value]) -> Vec<String> {
    view.iter()
        .map(|d| d["path"].as_str().expect("path").to_string())
        .collect()
}
