//! Encoding and decoding of protocol frames (JSON text frames, subprotocol
//! `hearth.v1`) with the shared types of `hearth_protocol::ws`, isolated here
//! so the rest of the SDK works with plain Rust values.
//!
//! Following the protocol's compatibility policy, unknown fields are ignored
//! and a frame with an unknown `type` is skipped, not an error.

use hearth_protocol::ws::{ClientMessage, ServerMessage};

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
