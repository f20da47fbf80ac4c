//! The WebSocket protocol `hearth.v1`: every frame a client or the server may
//! send, as serde types.
//!
//! This module is the executable half of `sdk-spec/PROTOCOL.md` (the prose
//! half, with the state machine, resume semantics and examples) and of the
//! JSON Schemas in `sdk-spec/schema/`. The gateway and the Rust client both
//! encode and decode with these types, so they cannot drift apart.
//!
//! Every frame is a JSON object whose `"type"` names the message in
//! snake_case. Client requests carry a client-chosen `id` (an unsigned
//! integer) that the server echoes in its reply or in an `error` frame.
//!
//! ```json
//! {"type": "hello", "protocol": 1, "client": {"name": "hearth-rust", "version": "0.1.0"}, "token": "eyJ..."}
//! {"type": "subscribe", "id": 1, "sub": "s1", "target": {"query": {"collection": "rooms"}}}
//! {"type": "changes", "sub": "s1", "resume": "p42", "changes": [{"kind": "added", "doc": {...}, "old_index": null, "new_index": 0}]}
//! ```
//!
//! Compatibility: unknown fields in received frames are ignored (both sides),
//! so fields may be added within protocol version 1; a frame with an unknown
//! `type` is a protocol error for the server and must be ignored by clients.

use serde::{Deserialize, Serialize};

use crate::document::Document;
use crate::error::{ErrorBody, ErrorCode};
use crate::path::DocPath;
use crate::query::Query;
use crate::value::Timestamp;
use crate::write::{CommitResult, Write};

/// The protocol version this module describes (sent in `hello` and `welcome`).
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket subprotocol for JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "hearth.v1";
/// The WebSocket subprotocol for the same messages as MessagePack binary
/// frames (maps with string keys; see PROTOCOL.md §1).
pub const SUBPROTOCOL_MSGPACK: &str = "hearth.v1.msgpack";

/// The MessagePack encoding of `hearth.v1.msgpack` (PROTOCOL.md §1): a
/// message's JSON value as a MessagePack map with string keys. Server,
/// SDK and conformance runner all convert through these two functions, so
/// the encodings carry exactly the same messages.
pub fn to_msgpack(value: &serde_json::Value) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

/// Reads a MessagePack frame into the JSON value of its message.
///
/// A float64 NaN or ±Infinity becomes the typed value JSON uses for it,
/// `{"$double": "NaN" | "Infinity" | "-Infinity"}` (a `serde_json::Value`
/// cannot hold one, and would silently turn it into `null`).
pub fn from_msgpack(bytes: &[u8]) -> Result<serde_json::Value, String> {
    rmp_serde::from_slice::<WireValue>(bytes)
        .map(|v| v.0)
        .map_err(|e| format!("not a MessagePack value: {e}"))
}

/// A JSON value read from MessagePack (see [`from_msgpack`]).
struct WireValue(serde_json::Value);

impl<'de> Deserialize<'de> for WireValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WireVisitor).map(WireValue)
    }
}

struct WireVisitor;

impl<'de> serde::de::Visitor<'de> for WireVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a MessagePack value without bin or extension types")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(match serde_json::Number::from_f64(v) {
            Some(n) => serde_json::Value::Number(n),
            None => serde_json::json!({ "$double": crate::value::nonfinite_name(v) }),
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(WireVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(WireValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, WireValue(value))) = map.next_entry::<String, WireValue>()? {
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// Close codes the server uses (RFC 6455 §7.4 plus the 4000-4999 private range).
pub mod close_code {
    /// The client asked to close, or the session ended normally.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect (with backoff) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// A malformed frame, a first frame that is not `hello`, an unsupported protocol version.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// No valid credential: the token was rejected or has expired without a refresh.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// The credential was revoked (user disabled, signed out everywhere): do not reconnect with it.
    pub const REVOKED: u16 = 4003;
    /// The client read too slowly and its outbound queue passed the hard limit.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// A received frame was larger than `limits.max_frame_bytes`.
    pub const FRAME_TOO_LARGE: u16 = 4009;
    /// No frame (not even a pong) arrived within `idle_timeout_ms`.
    pub const IDLE_TIMEOUT: u16 = 4010;
    /// The server has too many connections: retry later with backoff.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

/// The largest request id (2^53 − 1): ids must fit in a JavaScript number
/// exactly (PROTOCOL.md §2, `RequestId` in the JSON Schemas). The server
/// answers a frame whose id is larger with `invalid-argument` and never
/// echoes such an id.
pub const MAX_REQUEST_ID: u64 = (1 << 53) - 1;

/// Whether `id` is a request id the protocol allows (`0..=MAX_REQUEST_ID`).
pub fn is_valid_request_id(id: u64) -> bool {
    id <= MAX_REQUEST_ID
}

/// Encodes a changelog position as a resume token: `"p"` followed by the
/// decimal sequence number. The format is stable within protocol version 1
/// (PROTOCOL.md §6), so clients may compare a frame's position with
/// `write_ok.result.seq` and REST `read_seq`.
pub fn resume_token(seq: u64) -> String {
    format!("p{seq}")
}

/// Decodes a resume token made by [`resume_token`]; `None` if it is not one.
pub fn parse_resume_token(token: &str) -> Option<u64> {
    let digits = token.strip_prefix('p')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Who is connecting (for logs and metrics; never used for authorization).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub name: String,
    pub version: String,
}

/// What a subscription watches: one document or a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeTarget {
    /// `{"doc": "rooms/r1"}`: the view holds zero or one document.
    Doc(DocPath),
    /// `{"query": {...}}`: the same query JSON as REST `POST /v1/query`.
    Query(Query),
}

/// A read a transaction depends on: the version the client saw, or `null` if
/// it saw no document. The transaction aborts if the document differs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRead {
    pub path: DocPath,
    #[serde(default)]
    pub version: Option<u64>,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first frame. `token` is an access JWT or the admin key;
    /// without it the session is anonymous (the rules decide what it may do).
    Hello {
        protocol: u32,
        client: ClientInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Replaces the session's credential without reconnecting (answered by `auth_ok`).
    Auth { id: u64, token: String },
    /// Starts a subscription named `sub` (unique among the connection's live
    /// subscriptions). With `resume`, the server sends only what changed since.
    Subscribe {
        id: u64,
        sub: String,
        target: SubscribeTarget,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// Ends a subscription (answered by `unsubscribed`).
    Unsubscribe { id: u64, sub: String },
    /// An atomic batch of writes, applied at most once per `mutation_id`.
    Write {
        id: u64,
        mutation_id: String,
        writes: Vec<Write>,
    },
    /// An optimistic transaction: `writes` commit atomically only if every
    /// document in `reads` still has the version given; else `aborted`.
    Transaction {
        id: u64,
        mutation_id: String,
        #[serde(default)]
        reads: Vec<TransactionRead>,
        writes: Vec<Write>,
    },
    /// Liveness check; the server answers `pong` with the same id.
    Ping { id: u64 },
    /// The answer to a server `ping`.
    Pong { id: u64 },
}

impl ClientMessage {
    /// The request id, if this frame carries one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientMessage::Hello { .. } => None,
            ClientMessage::Auth { id, .. }
            | ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Write { id, .. }
            | ClientMessage::Transaction { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::Pong { id } => Some(*id),
        }
    }
}

/// The server's limits, announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Live subscriptions per connection; one more is `resource-exhausted`.
    pub max_subscriptions: u32,
    /// Largest frame the server accepts; a larger one closes with 4009.
    pub max_frame_bytes: u32,
    /// Writes/transactions awaiting their answer; one more is `resource-exhausted`.
    pub max_inflight_writes: u32,
    /// Outbound frames queued for a connection before its subscriptions are
    /// coalesced (soft limit); past `max_queued_bytes` the server closes with 4008.
    pub max_pending_events: u32,
    /// Hard limit on queued outbound bytes (close 4008 when exceeded).
    pub max_queued_bytes: u64,
}

/// The kind of one document change in a `changes` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The document entered the view (`old_index` is null).
    Added,
    /// The document stayed in the view with new contents (both indexes set).
    Modified,
    /// The document left the view (`new_index` is null); `doc` is the state
    /// the client last received.
    Removed,
}

/// One document change. Indexes are absolute: `old_index` is the position in
/// the view *before* the frame, `new_index` the position *after* it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocChange {
    pub kind: ChangeKind,
    pub doc: Document,
    #[serde(default)]
    pub old_index: Option<u32>,
    #[serde(default)]
    pub new_index: Option<u32>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to `hello`: the session is open.
    Welcome {
        session_id: String,
        server_time: Timestamp,
        protocol: u32,
        heartbeat_ms: u64,
        idle_timeout_ms: u64,
        limits: Limits,
        /// The authenticated user id; `null` when anonymous or for the admin key (then `admin` is true).
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        admin: bool,
        /// When the credential expires (`null`: never). Send `auth` before then.
        #[serde(default)]
        expires_at: Option<Timestamp>,
    },
    /// The answer to `auth`: the new credential is in force.
    AuthOk {
        id: u64,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        admin: bool,
        #[serde(default)]
        expires_at: Option<Timestamp>,
    },
    /// The complete view of a subscription, in query order. It *replaces*
    /// whatever the client holds for `sub`. `reset` is true when the resume
    /// token given was older than the server's retention (changes in between
    /// cannot be listed one by one).
    Snapshot {
        sub: String,
        resume: String,
        reset: bool,
        docs: Vec<Document>,
    },
    /// The changes of one commit (or of a coalesced range of commits) to a
    /// subscription's view, applied atomically.
    Changes {
        sub: String,
        resume: String,
        changes: Vec<DocChange>,
    },
    /// The answer to `unsubscribe`.
    Unsubscribed { id: u64, sub: String },
    /// The answer to `write` and `transaction`: committed durably.
    /// `duplicate` is true when this mutation id had already been applied and
    /// `result` is the original one.
    WriteOk {
        id: u64,
        mutation_id: String,
        result: CommitResult,
        duplicate: bool,
    },
    /// A request failed, or a subscription ended (`sub` set), or the
    /// connection is about to close (neither set).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<serde_json::Value>,
    },
    /// Heartbeat: the client must answer `pong` with the same id.
    Ping { id: u64 },
    /// The answer to a client `ping`.
    Pong { id: u64 },
}

impl ServerMessage {
    /// An `error` frame from an [`ErrorBody`]. An `id` outside the
    /// protocol's range is left out (the frame must stay valid for the
    /// schema; callers should not pass one, see [`MAX_REQUEST_ID`]).
    pub fn error(id: Option<u64>, sub: Option<String>, body: ErrorBody) -> ServerMessage {
        ServerMessage::Error {
            id: id.filter(|&id| is_valid_request_id(id)),
            sub,
            code: body.code,
            message: body.message,
            details: body.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Op;
    use crate::value::Value;
    use crate::write::WriteResult;
    use crate::CollectionPath;

    #[test]
    fn msgpack_non_finite_doubles_keep_their_value() {
        // NaN and ±Infinity as MessagePack float64 (0xcb): before, they were
        // read as `null` and the write silently stored null.
        let mut bytes = vec![0x83];
        for (key, value) in [
            ("x", f64::NAN),
            ("y", f64::INFINITY),
            ("z", f64::NEG_INFINITY),
        ] {
            bytes.push(0xa1);
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(0xcb);
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        assert_eq!(
            from_msgpack(&bytes).expect("decodes"),
            serde_json::json!({
                "x": {"$double": "NaN"}, "y": {"$double": "Infinity"}, "z": {"$double": "-Infinity"}
            })
        );
        let value = Value::from_json(&from_msgpack(&bytes).expect("decodes")).expect("a value");
        let json = value.to_json();
        assert_eq!(
            json["x"],
            serde_json::json!({"$double": "NaN"}),
            "NaN kept: {json}"
        );
        // Finite numbers, nesting and MessagePack's other types are unchanged.
        let value =
            serde_json::json!({"a": [1, -2, 2.5, u64::MAX, null, true, "s"], "b": {"c": {}}});
        let bytes = to_msgpack(&value).expect("encodes");
        assert_eq!(from_msgpack(&bytes).expect("decodes"), value);
        // bin is not part of the protocol.
        assert!(from_msgpack(&[0xc4, 0x01, 0x00]).is_err());
    }

    fn round_trip_client(json: &str) -> ClientMessage {
        let msg: ClientMessage = serde_json::from_str(json).expect("parses");
        let again: ClientMessage =
            serde_json::from_str(&serde_json::to_string(&msg).expect("encodes")).expect("reparses");
        assert_eq!(msg, again);
        msg
    }

    fn round_trip_server(msg: ServerMessage) -> serde_json::Value {
        let text = serde_json::to_string(&msg).expect("encodes");
        let back: ServerMessage = serde_json::from_str(&text).expect("parses");
        assert_eq!(msg, back);
        serde_json::from_str(&text).expect("json")
    }

    fn doc(path: &str, n: i64) -> Document {
        let mut fields = crate::Map::new();
        fields.insert("n".into(), Value::from(n));
        Document {
            path: DocPath::parse(path).expect("path"),
            fields,
            create_time: Timestamp(1_000),
            update_time: Timestamp(2_000),
            version: 7,
        }
    }

    #[test]
    fn every_client_frame_round_trips_from_the_documented_json() {
        let hello = round_trip_client(
            r#"{"type":"hello","protocol":1,"client":{"name":"t","version":"1"},"token":"abc"}"#,
        );
        assert!(matches!(hello, ClientMessage::Hello { token: Some(ref t), .. } if t == "abc"));
        let anon = round_trip_client(
            r#"{"type":"hello","protocol":1,"client":{"name":"t","version":"1"}}"#,
        );
        assert!(matches!(anon, ClientMessage::Hello { token: None, .. }));
        round_trip_client(r#"{"type":"auth","id":3,"token":"t2"}"#);
        let sub = round_trip_client(
            r#"{"type":"subscribe","id":1,"sub":"s1","target":{"query":{"collection":"rooms","where":{"field":"a","op":"==","value":1},"limit":2}},"resume":"p9"}"#,
        );
        match sub {
            ClientMessage::Subscribe {
                target: SubscribeTarget::Query(q),
                resume,
                ..
            } => {
                assert_eq!(q.limit, Some(2));
                assert_eq!(resume.as_deref(), Some("p9"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let doc_sub = round_trip_client(
            r#"{"type":"subscribe","id":2,"sub":"d","target":{"doc":"rooms/r1"}}"#,
        );
        assert!(matches!(
            doc_sub,
            ClientMessage::Subscribe {
                target: SubscribeTarget::Doc(_),
                resume: None,
                ..
            }
        ));
        round_trip_client(r#"{"type":"unsubscribe","id":4,"sub":"s1"}"#);
        let write = round_trip_client(
            r#"{"type":"write","id":5,"mutation_id":"m1","writes":[{"op":"set","path":"rooms/r1","data":{"name":"Lobby"}},{"op":"delete","path":"rooms/r2"}]}"#,
        );
        assert!(matches!(write, ClientMessage::Write { ref writes, .. } if writes.len() == 2));
        let tx = round_trip_client(
            r#"{"type":"transaction","id":6,"mutation_id":"m2","reads":[{"path":"rooms/r1","version":3},{"path":"rooms/r9","version":null}],"writes":[{"op":"update","path":"rooms/r1","fields":{"n":2}}]}"#,
        );
        assert_eq!(tx.id(), Some(6));
        round_trip_client(r#"{"type":"ping","id":7}"#);
        round_trip_client(r#"{"type":"pong","id":8}"#);
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_rejected() {
        let msg: ClientMessage =
            serde_json::from_str(r#"{"type":"ping","id":1,"future_field":true}"#).expect("parses");
        assert_eq!(msg, ClientMessage::Ping { id: 1 });
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"teleport","id":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"id":1}"#).is_err());
    }

    #[test]
    fn invalid_queries_are_rejected_at_decode() {
        let bad =
            r#"{"type":"subscribe","id":1,"sub":"s","target":{"query":{"collection":"a/b"}}}"#;
        assert!(serde_json::from_str::<ClientMessage>(bad).is_err());
    }

    #[test]
    fn every_server_frame_round_trips_with_the_documented_shape() {
        let limits = Limits {
            max_subscriptions: 100,
            max_frame_bytes: 1 << 20,
            max_inflight_writes: 16,
            max_pending_events: 256,
            max_queued_bytes: 8 << 20,
        };
        let welcome = round_trip_server(ServerMessage::Welcome {
            session_id: "abc".into(),
            server_time: Timestamp(5),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: 25_000,
            idle_timeout_ms: 60_000,
            limits,
            uid: Some("u1".into()),
            admin: false,
            expires_at: None,
        });
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["limits"]["max_subscriptions"], 100);
        let ok = round_trip_server(ServerMessage::AuthOk {
            id: 1,
            uid: None,
            admin: true,
            expires_at: Some(Timestamp(10)),
        });
        assert_eq!(ok["type"], "auth_ok");
        let snap = round_trip_server(ServerMessage::Snapshot {
            sub: "s".into(),
            resume: resume_token(3),
            reset: false,
            docs: vec![doc("rooms/a", 1)],
        });
        assert_eq!(snap["docs"][0]["path"], "rooms/a");
        let changes = round_trip_server(ServerMessage::Changes {
            sub: "s".into(),
            resume: resume_token(4),
            changes: vec![
                DocChange {
                    kind: ChangeKind::Added,
                    doc: doc("rooms/b", 2),
                    old_index: None,
                    new_index: Some(1),
                },
                DocChange {
                    kind: ChangeKind::Removed,
                    doc: doc("rooms/a", 1),
                    old_index: Some(0),
                    new_index: None,
                },
            ],
        });
        assert_eq!(changes["changes"][0]["kind"], "added");
        assert!(changes["changes"][0]["old_index"].is_null());
        round_trip_server(ServerMessage::Unsubscribed {
            id: 2,
            sub: "s".into(),
        });
        let write_ok = round_trip_server(ServerMessage::WriteOk {
            id: 3,
            mutation_id: "m".into(),
            result: CommitResult {
                seq: 4,
                commit_time: Timestamp(9),
                results: vec![WriteResult {
                    path: DocPath::parse("rooms/a").expect("path"),
                    version: Some(4),
                    update_time: Timestamp(9),
                }],
            },
            duplicate: true,
        });
        assert_eq!(write_ok["type"], "write_ok");
        let err = round_trip_server(ServerMessage::error(
            Some(5),
            None,
            ErrorBody::new(ErrorCode::ResourceExhausted, "too many subscriptions"),
        ));
        assert_eq!(err["code"], "resource-exhausted");
        assert!(err.get("sub").is_none());
        round_trip_server(ServerMessage::Ping { id: 1 });
        round_trip_server(ServerMessage::Pong { id: 1 });
    }

    #[test]
    fn request_ids_are_limited_to_53_bits_and_never_echoed_beyond() {
        assert_eq!(MAX_REQUEST_ID, 9_007_199_254_740_991);
        assert!(is_valid_request_id(0));
        assert!(is_valid_request_id(MAX_REQUEST_ID));
        assert!(!is_valid_request_id(MAX_REQUEST_ID + 1));
        let body = || ErrorBody::new(ErrorCode::InvalidArgument, "x");
        let e = round_trip_server(ServerMessage::error(Some(MAX_REQUEST_ID + 2), None, body()));
        assert!(e.get("id").is_none(), "{e}");
        let e = round_trip_server(ServerMessage::error(Some(MAX_REQUEST_ID), None, body()));
        assert_eq!(e["id"], MAX_REQUEST_ID);
    }

    #[test]
    fn resume_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_resume_token(&resume_token(0)), Some(0));
        assert_eq!(parse_resume_token(&resume_token(u64::MAX)), Some(u64::MAX));
        for bad in ["", "p", "q1", "p-1", "p1x", "p99999999999999999999999"] {
            assert_eq!(parse_resume_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn subscribe_target_accepts_the_builder_queries() {
        let q = Query::collection(CollectionPath::parse("rooms").expect("path")).filter(
            "room",
            Op::Eq,
            "k",
        );
        let msg = ClientMessage::Subscribe {
            id: 1,
            sub: "s".into(),
            target: SubscribeTarget::Query(q),
            resume: None,
        };
        let text = serde_json::to_string(&msg).expect("encodes");
        assert!(
            text.contains(r#""target":{"query":{"collection":"rooms""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&text).expect("parses"),
            msg
        );
    }
}
