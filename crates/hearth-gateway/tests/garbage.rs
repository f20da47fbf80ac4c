//! Property test: mutated and malformed frames against a live session.
//!
//! Each case opens a session (JSON or MessagePack) and sends a few frames made from valid ones
//! by random mutations: a field dropped, a value replaced with any JSON
//! value (huge and negative numbers, floats, empty and long strings, nested
//! containers), an unknown field added, the `type` changed, the text cut
//! short, or bytes that are not JSON at all. Then it sends a ping and reads
//! until the matching pong. Whatever was sent:
//! - every frame the server answers with matches the JSON Schemas in
//!   `sdk-spec/schema/` (so no answer echoes an id or `sub` the schema
//!   forbids);
//! - the session still answers the ping, or it was closed with a close code
//!   that PROTOCOL.md documents;
//! - nothing hangs: each case has a deadline.
//!
//! The cases are generated and shrunk by proptest; a failure prints the
//! smallest frame list that still fails.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use hearth_protocol::ws::close_code;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long one case (its frames, the ping and the pong) may take.
const CASE_DEADLINE: Duration = Duration::from_secs(10);
/// The id of the ping that ends each case (outside the generated ids'
/// usual range, so that a mutated frame is unlikely to collide with it).
const FINAL_PING: u64 = 7_777_777;

/// One valid frame of every kind a client sends after its hello.
fn templates() -> Vec<Value> {
    vec![
        json!({"type": "subscribe", "id": 1, "sub": "d", "target": {"doc": "rooms/r1"}}),
        json!({"type": "subscribe", "id": 2, "sub": "q", "target": {"query": {
            "collection": "rooms", "where": {"field": "n", "op": ">=", "value": 1},
            "order_by": [{"field": "n", "direction": "desc"}], "limit": 3}},
            "resume": "p0"}),
        json!({"type": "unsubscribe", "id": 3, "sub": "d"}),
        json!({"type": "write", "id": 4, "mutation_id": "m1", "writes": [
            {"op": "set", "path": "rooms/r1", "data": {"n": 1, "s": "x"}},
            {"op": "update", "path": "rooms/r2", "fields": {"a.b": true},
             "transforms": [{"field": "n", "transform": "increment", "value": 2}],
             "precondition": {"exists": true}},
            {"op": "delete", "path": "rooms/r3", "precondition": {"version": 3}}]}),
        json!({"type": "transaction", "id": 5, "mutation_id": "m2",
            "reads": [{"path": "rooms/r1", "version": 1}],
            "writes": [{"op": "merge", "path": "rooms/r1", "fields": {"t": {"$timestamp": "2026-01-01T00:00:00Z"}}}]}),
        json!({"type": "auth", "id": 6, "token": "user:fuzz"}),
        json!({"type": "ping", "id": 7}),
        json!({"type": "pong", "id": 8}),
    ]
}

/// Any JSON value, biased towards the ones that break parsers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(9_007_199_254_740_991u64),
            Just(9_007_199_254_740_992u64),
            Just(u64::MAX)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from("x".repeat(300))),
        Just(Value::from("__mutations__/x")),
        Just(Value::from("p18446744073709551615")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Removes the n-th key found walking the frame (objects only).
    Drop(usize),
    /// Replaces the n-th value found walking the frame.
    Replace(usize, Value),
    /// Sets a top-level protocol field (present or not) to any value.
    Set(&'static str, Value),
    /// Adds a key to the top-level object.
    Add(String, Value),
    /// Changes the frame's `type`.
    Retype(String),
}

/// The top-level fields of client frames.
const FIELDS: &[&str] = &[
    "id",
    "sub",
    "target",
    "resume",
    "mutation_id",
    "writes",
    "reads",
    "token",
];

/// Edge values for the two fields an error frame echoes.
fn echoed_field() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(9_007_199_254_740_991u64),
            json!(9_007_199_254_740_992u64),
            json!(u64::MAX),
            json!(-1),
            json!(1.5),
            json!("7"),
            Value::Null,
        ])
        .prop_map(|v| ("id", v)),
        prop::sample::select(vec![
            json!(""),
            json!("s".repeat(128)),
            json!("s".repeat(129)),
            json!(7),
            Value::Null,
        ])
        .prop_map(|v| ("sub", v)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => echoed_field().prop_map(|(k, v)| Mutation::Set(k, v)),
        3 => (prop::sample::select(FIELDS), any_json()).prop_map(|(k, v)| Mutation::Set(k, v)),
        1 => any::<usize>().prop_map(Mutation::Drop),
        2 => (any::<usize>(), any_json()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        1 => ("[a-z_]{1,10}", any_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        1 => prop_oneof![
            Just("hello".to_string()),
            Just("welcome".to_string()),
            Just("error".to_string()),
            ".{0,10}"
        ]
        .prop_map(Mutation::Retype),
    ]
}

/// What one case sends: a frame's text, or raw bytes in a text frame.
#[derive(Debug, Clone)]
enum Sent {
    Frame(String),
    /// A frame's text cut after this many characters.
    Cut(String),
    NotJson(String),
}

/// A valid frame's text after zero to two mutations.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..templates().len(),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(t, ms)| {
            let mut frame = templates()[t].clone();
            for m in ms {
                apply(&mut frame, m);
            }
            frame.to_string()
        })
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        6 => mutated().prop_map(Sent::Frame),
        1 => (mutated(), any::<prop::sample::Index>()).prop_map(|(text, at)| {
            let chars: Vec<char> = text.chars().collect();
            let n = at.index(chars.len().max(1));
            Sent::Cut(chars[..n].iter().collect())
        }),
        1 => ".{0,40}".prop_map(Sent::NotJson),
    ]
}

/// How many values a frame holds, itself included.
fn count_values(v: &Value) -> usize {
    1 + match v {
        Value::Object(m) => m.values().map(count_values).sum(),
        Value::Array(a) => a.iter().map(count_values).sum(),
        _ => 0,
    }
}

fn apply(frame: &mut Value, m: Mutation) {
    match m {
        Mutation::Drop(n) => {
            // Keys of every object in the frame, in walking order.
            let mut keys: Vec<(Vec<String>, String)> = Vec::new();
            collect_keys(frame, &mut Vec::new(), &mut keys);
            if keys.is_empty() {
                return;
            }
            let (path, key) = &keys[n % keys.len()];
            if let Some(Value::Object(obj)) = pointer_mut(frame, path) {
                obj.remove(key);
            }
        }
        Mutation::Replace(n, value) => {
            let n = n % count_values(frame);
            replace_nth(frame, n, value);
        }
        Mutation::Set(key, value) => {
            if let Value::Object(obj) = frame {
                obj.insert(key.into(), value);
            }
        }
        Mutation::Add(key, value) => {
            if let Value::Object(obj) = frame {
                obj.insert(key, value);
            }
        }
        Mutation::Retype(t) => {
            if let Value::Object(obj) = frame {
                obj.insert("type".into(), Value::from(t));
            }
        }
    }
}

fn collect_keys(v: &Value, at: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.push((at.clone(), k.clone()));
                at.push(k.clone());
                collect_keys(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(i.to_string());
                collect_keys(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn pointer_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(step)?,
            Value::Array(a) => a.get_mut(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Replaces the n-th value of a depth-first walk (0 = the frame itself).
fn replace_nth(v: &mut Value, n: usize, value: Value) {
    fn walk(v: &mut Value, n: &mut usize, value: &mut Option<Value>) {
        if value.is_none() {
            return;
        }
        if *n == 0 {
            if let Some(new) = value.take() {
                *v = new;
            }
            return;
        }
        *n -= 1;
        match v {
            Value::Object(m) => {
                for child in m.values_mut() {
                    walk(child, n, value);
                }
            }
            Value::Array(a) => {
                for child in a.iter_mut() {
                    walk(child, n, value);
                }
            }
            _ => {}
        }
    }
    let mut n = n;
    walk(v, &mut n, &mut Some(value));
}

/// Close codes PROTOCOL.md documents.
fn documented_close(code: u16) -> bool {
    [
        close_code::NORMAL,
        close_code::GOING_AWAY,
        close_code::PROTOCOL_ERROR,
        close_code::UNAUTHENTICATED,
        close_code::REVOKED,
        close_code::SLOW_CONSUMER,
        close_code::FRAME_TOO_LARGE,
        close_code::IDLE_TIMEOUT,
        close_code::TOO_MANY_CONNECTIONS,
    ]
    .contains(&code)
}

/// Plays one case over JSON or MessagePack; `Err` describes what went wrong.
async fn play(addr: SocketAddr, frames: &[Sent], msgpack: bool) -> Result<(), String> {
    let mut c = if msgpack {
        Client::connect_msgpack(addr, Some("user:fuzz")).await
    } else {
        Client::connect(addr, Some("user:fuzz")).await
    };
    let encode = |text: &str| -> Message {
        if !msgpack {
            return Message::text(text.to_string());
        }
        // A JSON frame is sent as its MessagePack equivalent; anything
        // else as its raw bytes (not MessagePack either, mostly).
        match serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| hearth_protocol::ws::to_msgpack(&v).ok())
        {
            Some(packed) => Message::binary(packed),
            None => Message::binary(text.as_bytes().to_vec()),
        }
    };
    for f in frames {
        let (Sent::Frame(t) | Sent::Cut(t) | Sent::NotJson(t)) = f;
        if c.ws.send(encode(t)).await.is_err() {
            break; // closed by the server: checked below
        }
    }
    let _ =
        c.ws.send(encode(
            &json!({"type": "ping", "id": FINAL_PING}).to_string(),
        ))
        .await;
    loop {
        let msg = match c.ws.next().await {
            None | Some(Err(_)) => return Err("the socket ended without a close frame".into()),
            Some(Ok(m)) => m,
        };
        let v: Value = match msg {
            Message::Text(t) if !msgpack => {
                serde_json::from_str(&t).map_err(|e| format!("not JSON ({e}): {t}"))?
            }
            Message::Binary(b) if msgpack => hearth_protocol::ws::from_msgpack(&b)
                .map_err(|e| format!("not MessagePack ({e})"))?,
            Message::Text(_) | Message::Binary(_) => {
                return Err("a frame of the other encoding".into())
            }
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return if documented_close(code) {
                    Ok(())
                } else {
                    Err(format!("closed with undocumented code {code}"))
                };
            }
            _ => continue,
        };
        let errors: Vec<String> = common_validator()
            .iter_errors(&v)
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(format!("frame breaks the schema: {errors:?}\n{v}"));
        }
        if v["type"] == "pong" && v["id"] == json!(FINAL_PING) {
            return Ok(());
        }
    }
}

fn common_validator() -> &'static jsonschema::Validator {
    static V: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    V.get_or_init(|| validator_for("server-message.json"))
}

#[test]
fn mutated_frames_get_schema_valid_answers_and_never_break_the_session() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(start(Options::default()));
    let cases = std::env::var("HEARTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = (prop::collection::vec(sent(), 1..6), any::<bool>());
    let result = runner.run(&case, |(frames, msgpack)| {
        let outcome = rt.block_on(async {
            tokio::time::timeout(CASE_DEADLINE, play(server.addr, &frames, msgpack)).await
        });
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(TestCaseError::fail(why)),
            Err(_) => Err(TestCaseError::fail("no pong and no close in time")),
        }
    });
    // The server survived every case: a fresh session still works.
    rt.block_on(async {
        let mut c = Client::connect(server.addr, Some("user:after")).await;
        c.send(json!({"type": "ping", "id": 1})).await;
        assert_eq!(c.recv().await["type"], "pong");
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
