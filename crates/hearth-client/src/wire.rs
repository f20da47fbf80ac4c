//! Encoding and decoding of protocol frames (JSON text frames, subprotocol
//! `hearth.v1`), isolated here so the rest of the SDK works with plain Rust
//! values. The shapes are those of `sdk-spec/PROTOCOL.md`.
//!
//! Decoding is lenient about fields it does not use (newer servers may add
//! fields; see the protocol's compatibility policy) and strict about the ones
//! it does.

use hearth_protocol::{CommitResult, Document, ErrorCode, Query, Write};
use serde_json::{json, Value as Json};

pub const SUBPROTOCOL: &str = "hearth.v1";
pub const PROTOCOL_VERSION: u64 = 1;

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Doc(hearth_protocol::DocPath),
    Query(Query),
}

impl Target {
    pub fn to_json(&self) -> Json {
        match self {
            Target::Doc(path) => json!({ "doc": path.as_string() }),
            Target::Query(q) => json!({ "query": q }),
        }
    }
}

/// Frames the client sends.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    Hello {
        client_name: &'a str,
        client_version: &'a str,
        token: Option<&'a str>,
    },
    Auth {
        id: u64,
        token: &'a str,
    },
    Subscribe {
        id: u64,
        sub: &'a str,
        target: &'a Target,
        resume: Option<&'a str>,
    },
    Unsubscribe {
        id: u64,
        sub: &'a str,
    },
    Write {
        id: u64,
        mutation_id: &'a str,
        writes: &'a [Write],
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
}

impl ClientFrame<'_> {
    pub fn to_json(&self) -> Json {
        match self {
            ClientFrame::Hello {
                client_name,
                client_version,
                token,
            } => {
                let mut hello = json!({
                    "type": "hello",
                    "protocol": PROTOCOL_VERSION,
                    "client": {"name": client_name, "version": client_version},
                });
                if let Some(token) = token {
                    hello["token"] = json!(token);
                }
                hello
            }
            ClientFrame::Auth { id, token } => json!({"type": "auth", "id": id, "token": token}),
            ClientFrame::Subscribe {
                id,
                sub,
                target,
                resume,
            } => {
                let mut frame = json!({
                    "type": "subscribe", "id": id, "sub": sub, "target": target.to_json(),
                });
                if let Some(resume) = resume {
                    frame["resume"] = json!(resume);
                }
                frame
            }
            ClientFrame::Unsubscribe { id, sub } => {
                json!({"type": "unsubscribe", "id": id, "sub": sub})
            }
            ClientFrame::Write {
                id,
                mutation_id,
                writes,
            } => json!({"type": "write", "id": id, "mutation_id": mutation_id, "writes": writes}),
            ClientFrame::Ping { id } => json!({"type": "ping", "id": id}),
            ClientFrame::Pong { id } => json!({"type": "pong", "id": id}),
        }
    }

    pub fn encode(&self) -> String {
        self.to_json().to_string()
    }
}

/// The limits announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub max_subscriptions: Option<u64>,
    pub max_frame_bytes: Option<u64>,
    pub max_inflight_writes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    Added,
    Modified,
    Removed,
}

/// One entry of a `changes` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct WireChange {
    pub kind: ChangeKind,
    pub doc: Document,
    pub old_index: Option<usize>,
    pub new_index: Option<usize>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Welcome {
        session_id: String,
        heartbeat_ms: Option<u64>,
        idle_timeout_ms: Option<u64>,
        limits: Limits,
    },
    AuthOk {
        id: Option<u64>,
    },
    Snapshot {
        sub: String,
        resume: Option<String>,
        reset: bool,
        docs: Vec<Document>,
    },
    Changes {
        sub: String,
        resume: Option<String>,
        changes: Vec<WireChange>,
    },
    Unsubscribed {
        id: Option<u64>,
        sub: Option<String>,
    },
    WriteOk {
        id: Option<u64>,
        mutation_id: String,
        result: CommitResult,
    },
    Error {
        id: Option<u64>,
        sub: Option<String>,
        code: ErrorCode,
        message: String,
    },
    Ping {
        id: Option<u64>,
    },
    Pong,
    /// A frame type this client does not know (ignored, for forward compatibility).
    Unknown(String),
}

fn field<'a>(frame: &'a Json, name: &str) -> Result<&'a Json, String> {
    frame
        .get(name)
        .ok_or_else(|| format!("frame is missing \"{name}\""))
}

fn string(frame: &Json, name: &str) -> Result<String, String> {
    field(frame, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("\"{name}\" must be a string"))
}

fn opt_string(frame: &Json, name: &str) -> Option<String> {
    frame.get(name).and_then(Json::as_str).map(str::to_string)
}

fn opt_u64(frame: &Json, name: &str) -> Option<u64> {
    frame.get(name).and_then(Json::as_u64)
}

fn decode_docs(value: &Json) -> Result<Vec<Document>, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("bad documents: {e}"))
}

impl ServerFrame {
    pub fn decode(text: &str) -> Result<ServerFrame, String> {
        let frame: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let kind = string(&frame, "type")?;
        Ok(match kind.as_str() {
            "welcome" => {
                let limits = frame.get("limits").cloned().unwrap_or(Json::Null);
                ServerFrame::Welcome {
                    session_id: opt_string(&frame, "session_id").unwrap_or_default(),
                    heartbeat_ms: opt_u64(&frame, "heartbeat_ms"),
                    idle_timeout_ms: opt_u64(&frame, "idle_timeout_ms"),
                    limits: Limits {
                        max_subscriptions: opt_u64(&limits, "max_subscriptions"),
                        max_frame_bytes: opt_u64(&limits, "max_frame_bytes"),
                        max_inflight_writes: opt_u64(&limits, "max_inflight_writes"),
                    },
                }
            }
            "auth_ok" => ServerFrame::AuthOk {
                id: opt_u64(&frame, "id"),
            },
            "snapshot" => ServerFrame::Snapshot {
                sub: string(&frame, "sub")?,
                resume: opt_string(&frame, "resume"),
                reset: frame.get("reset").and_then(Json::as_bool).unwrap_or(false),
                docs: decode_docs(field(&frame, "docs")?)?,
            },
            "changes" => {
                let list = field(&frame, "changes")?
                    .as_array()
                    .ok_or("\"changes\" must be an array")?;
                let mut changes = Vec::with_capacity(list.len());
                for c in list {
                    let kind = match string(c, "kind")?.as_str() {
                        "added" => ChangeKind::Added,
                        "modified" => ChangeKind::Modified,
                        "removed" => ChangeKind::Removed,
                        other => return Err(format!("unknown change kind {other:?}")),
                    };
                    let doc: Document = serde_json::from_value(field(c, "doc")?.clone())
                        .map_err(|e| format!("bad document: {e}"))?;
                    changes.push(WireChange {
                        kind,
                        doc,
                        old_index: opt_u64(c, "old_index").map(|i| i as usize),
                        new_index: opt_u64(c, "new_index").map(|i| i as usize),
                    });
                }
                ServerFrame::Changes {
                    sub: string(&frame, "sub")?,
                    resume: opt_string(&frame, "resume"),
                    changes,
                }
            }
            "unsubscribed" => ServerFrame::Unsubscribed {
                id: opt_u64(&frame, "id"),
                sub: opt_string(&frame, "sub"),
            },
            "write_ok" => ServerFrame::WriteOk {
                id: opt_u64(&frame, "id"),
                mutation_id: string(&frame, "mutation_id")?,
                result: serde_json::from_value(field(&frame, "result")?.clone())
                    .map_err(|e| format!("bad commit result: {e}"))?,
            },
            "error" => {
                // Either flat {code, message} or nested {error: {code, message}}.
                let body = frame.get("error").unwrap_or(&frame);
                let code = body
                    .get("code")
                    .and_then(|c| serde_json::from_value::<ErrorCode>(c.clone()).ok())
                    .unwrap_or(ErrorCode::Internal);
                ServerFrame::Error {
                    id: opt_u64(&frame, "id"),
                    sub: opt_string(&frame, "sub"),
                    code,
                    message: opt_string(body, "message").unwrap_or_default(),
                }
            }
            "ping" => ServerFrame::Ping {
                id: opt_u64(&frame, "id"),
            },
            "pong" => ServerFrame::Pong,
            other => ServerFrame::Unknown(other.to_string()),
        })
    }
}

/// The changelog position a resume token encodes, when it has the documented
/// `p<seq>` form. The SDK uses it only to know when the server has caught up
/// with an acknowledged write; it never builds tokens itself.
pub fn resume_position(token: &str) -> Option<u64> {
    token.strip_prefix('p')?.parse().ok()
}
