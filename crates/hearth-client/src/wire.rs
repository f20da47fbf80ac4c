//! Encoding and decoding of protocol frames with the shared types of
//! `hearth_protocol::ws`, isolated here so the rest of the SDK works with
//! plain Rust values. Frames are JSON text (subprotocol `hearth.v1`) or, with
//! [`Encoding::MsgPack`], the same messages as MessagePack binary frames
//! (`hearth.v1.msgpack`); the SDK builds and reads JSON and converts at the
//! socket.
//!
//! Following the protocol's compatibility policy, unknown fields are ignored
//! and a frame with an unknown `type` is skipped, not an error.

use hearth_protocol::ws::{ClientMessage, ServerMessage, SUBPROTOCOL_MSGPACK};
use tokio_tungstenite::tungstenite::Message;

pub use hearth_protocol::ws::{
    parse_resume_token, ChangeKind, DocChange as WireChange, Limits, SubscribeTarget as Target,
    PROTOCOL_VERSION, SUBPROTOCOL_JSON as SUBPROTOCOL,
};

/// The types `ServerMessage` knows; any other `type` is from a newer server.
const KNOWN_SERVER_TYPES: [&str; 9] = [
    "welcome",
    "auth_ok",
    "snapshot",
    "changes",
    "unsubscribed",
    "write_ok",
    "error",
    "ping",
    "pong",
];

/// The frame encoding a client speaks (PROTOCOL.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames, subprotocol `hearth.v1`.
    #[default]
    Json,
    /// MessagePack binary frames, subprotocol `hearth.v1.msgpack`.
    MsgPack,
}

impl Encoding {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL,
            Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// A frame carrying `json` (one encoded client message).
    pub(crate) fn frame(self, json: String) -> Message {
        match self {
            Encoding::Json => Message::text(json),
            Encoding::MsgPack => {
                let packed = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| hearth_protocol::ws::to_msgpack(&v).ok())
                    .unwrap_or_default();
                Message::binary(packed)
            }
        }
    }

    /// The JSON text of a received data frame: `None` for a frame that
    /// carries no message (control frames), an error for a data frame of
    /// the other encoding or one that cannot be read.
    pub(crate) fn text_of(self, message: &Message) -> Option<Result<String, String>> {
        match (self, message) {
            (Encoding::Json, Message::Text(t)) => Some(Ok(t.to_string())),
            (Encoding::MsgPack, Message::Binary(b)) => {
                Some(hearth_protocol::ws::from_msgpack(b).map(|v| v.to_string()))
            }
            (_, Message::Text(_) | Message::Binary(_)) => Some(Err(format!(
                "a frame of the wrong kind for {}",
                self.subprotocol()
            ))),
            _ => None,
        }
    }
}

pub fn encode(message: &ClientMessage) -> String {
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_string(message).unwrap_or_default()
}

/// A decoded server frame, or `None` for a frame type this client does not know.
pub fn decode(text: &str) -> Result<Option<ServerMessage>, String> {
    match serde_json::from_str::<ServerMessage>(text) {
        Ok(message) => Ok(Some(message)),
        Err(e) => {
            let kind = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
            match kind {
                Some(kind) if !KNOWN_SERVER_TYPES.contains(&kind.as_str()) => Ok(None),
                _ => Err(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_frames_carry_the_same_messages() {
        let json = encode(&ClientMessage::Ping { id: 7 });
        let frame = Encoding::MsgPack.frame(json.clone());
        assert!(matches!(frame, Message::Binary(_)));
        let back = Encoding::MsgPack
            .text_of(&frame)
            .expect("data")
            .expect("reads");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&back).expect("json"),
            serde_json::from_str::<serde_json::Value>(&json).expect("json")
        );
        assert!(Encoding::Json.text_of(&frame).expect("data").is_err());
        assert!(Encoding::MsgPack
            .text_of(&Message::Ping(vec![].into()))
            .is_none());
    }

    #[test]
    fn unknown_frame_types_are_skipped_but_broken_known_ones_are_errors() {
        assert_eq!(decode(r#"{"type":"teleport","x":1}"#), Ok(None));
        assert!(decode(r#"{"type":"snapshot","sub":"s"}"#).is_err());
        assert!(decode("not json").is_err());
        assert!(matches!(
            decode(r#"{"type":"pong","id":3,"extra":true}"#),
            Ok(Some(ServerMessage::Pong { id: 3 }))
        ));
    }
}
