//! The two encodings of `hearth.v1`: JSON text frames (subprotocol
//! `hearth.v1`) and MessagePack binary frames (`hearth.v1.msgpack`).
//!
//! Both carry the same messages with the same field names, so the server
//! has one encoder: every frame is produced as JSON (and shared between
//! subscribers, see `encode`), and a MessagePack connection gets it
//! transcoded — once per frame per commit in the fan-out engine, not once
//! per subscriber. Client frames in MessagePack are read into a JSON value
//! first, so both encodings accept exactly the same messages.

use bytes::Bytes;
use hearth_protocol::ws::{
    from_msgpack, is_valid_request_id, ClientMessage, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};

use crate::socket::{Opcode, OutFrame};

/// A connection's encoding, chosen by the subprotocol at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Json,
    MsgPack,
}

/// Why a client frame could not be read, and what could still be read
/// from it for the error frame.
pub(crate) struct Undecodable {
    pub salvaged: Salvaged,
    /// What is wrong (the decoder's message).
    pub reason: String,
}

impl Undecodable {
    /// The message of the `error` frame that answers the frame.
    pub(crate) fn message(&self) -> String {
        format!("bad frame: {}", self.reason)
    }
}

/// What an `error` frame answering an undecodable frame may echo.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Salvaged {
    /// The request id, if the frame has one in the protocol's range (an id
    /// outside it is never echoed: the error frame must stay valid).
    pub id: Option<u64>,
    /// The `sub` of a `subscribe`/`unsubscribe` frame, if it is a valid
    /// name and `id` was read too (an error with only `sub` would tell the
    /// client that a live subscription of that name ended).
    pub sub: Option<String>,
    /// The frame says it is a `hello`.
    pub hello: bool,
}

/// Reads what [`Salvaged`] describes from a frame's JSON value.
pub(crate) fn salvage(value: &serde_json::Value) -> Salvaged {
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .filter(|&id| is_valid_request_id(id));
    let kind = value.get("type").and_then(serde_json::Value::as_str);
    let sub = match (id, kind) {
        (Some(_), Some("subscribe" | "unsubscribe")) => value
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|s| crate::session::valid_sub_name(s))
            .map(str::to_string),
        _ => None,
    };
    Salvaged {
        id,
        sub,
        hello: kind == Some("hello"),
    }
}

impl Codec {
    /// The codec for a subprotocol name.
    pub(crate) fn for_subprotocol(name: &str) -> Option<Codec> {
        match name {
            SUBPROTOCOL_JSON => Some(Codec::Json),
            SUBPROTOCOL_MSGPACK => Some(Codec::MsgPack),
            _ => None,
        }
    }

    pub(crate) fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => SUBPROTOCOL_JSON,
            Codec::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// The frame opcode of this encoding.
    pub(crate) fn opcode(self) -> Opcode {
        match self {
            Codec::Json => Opcode::Text,
            Codec::MsgPack => Opcode::Binary,
        }
    }

    /// A server message's JSON encoding, in this encoding.
    pub(crate) fn encode(self, json: Bytes) -> Bytes {
        match self {
            Codec::Json => json,
            Codec::MsgPack => to_msgpack(&json),
        }
    }

    /// A server message (given as JSON) as a frame of this encoding.
    pub(crate) fn frame(self, json: Bytes) -> OutFrame {
        self.wrap(self.encode(json))
    }

    /// A payload already in this encoding, as a frame.
    pub(crate) fn wrap(self, payload: Bytes) -> OutFrame {
        OutFrame {
            opcode: self.opcode(),
            payload,
        }
    }

    /// Reads a client message from a frame payload of this encoding.
    pub(crate) fn decode(self, payload: &[u8]) -> Result<ClientMessage, Undecodable> {
        let value: serde_json::Value = match self {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            Codec::MsgPack => from_msgpack(payload),
        }
        .map_err(|reason| Undecodable {
            salvaged: Salvaged::default(),
            reason,
        })?;
        let salvaged = salvage(&value);
        serde_json::from_value(value).map_err(|e| Undecodable {
            salvaged,
            reason: e.to_string(),
        })
    }
}

/// Transcodes one of our own JSON frames to MessagePack (maps keep their
/// string keys and their order).
pub(crate) fn to_msgpack(json: &[u8]) -> Bytes {
    let encoded = serde_json::from_slice::<serde_json::Value>(json)
        .map_err(|e| e.to_string())
        .and_then(|v| hearth_protocol::ws::to_msgpack(&v));
    match encoded {
        Ok(bytes) => Bytes::from(bytes),
        // Our own frames are valid JSON; answer something well-formed
        // rather than panic if that ever fails.
        Err(e) => Bytes::from(
            hearth_protocol::ws::to_msgpack(&serde_json::json!({
                "type": "error", "code": "internal", "message": e,
            }))
            .unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_the_same_in_both_encodings() {
        let json = br#"{"type":"subscribe","id":7,"sub":"s","target":{"query":{"collection":"rooms","where":{"field":"n","op":">=","value":1.5}}}}"#;
        let from_json = Codec::Json.decode(json).ok().expect("json decodes");
        let packed = to_msgpack(json);
        let from_msgpack = Codec::MsgPack
            .decode(&packed)
            .ok()
            .expect("msgpack decodes");
        assert_eq!(
            serde_json::to_value(&from_json).expect("json"),
            serde_json::to_value(&from_msgpack).expect("json")
        );
    }

    #[test]
    fn undecodable_frames_keep_their_request_id_when_they_have_one() {
        let packed = to_msgpack(br#"{"type":"subscribe","id":9}"#);
        let e = Codec::MsgPack.decode(&packed).expect_err("missing fields");
        assert_eq!(e.salvaged.id, Some(9));
        let e = Codec::MsgPack
            .decode(b"\xc1garbage")
            .expect_err("not msgpack");
        assert_eq!(e.salvaged, Salvaged::default());
        assert!(e.message().contains("bad frame"), "{}", e.message());
    }

    #[test]
    fn undecodable_subscribe_frames_keep_a_valid_sub_with_their_id() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let decode = |json: &str| {
                let payload = codec.encode(Bytes::from(json.to_string()));
                codec.decode(&payload).expect_err("does not decode")
            };
            let e = decode(r#"{"type":"subscribe","id":1,"sub":"a","target":{"doc":"col"}}"#);
            assert_eq!(
                (e.salvaged.id, e.salvaged.sub.as_deref()),
                (Some(1), Some("a"))
            );
            let e = decode(r#"{"type":"unsubscribe","id":2,"sub":7}"#);
            assert_eq!((e.salvaged.id, e.salvaged.sub), (Some(2), None));
            // An invalid name, or no usable id: no sub.
            let e = decode(r#"{"type":"subscribe","id":3,"sub":"","target":{"doc":"col"}}"#);
            assert_eq!((e.salvaged.id, e.salvaged.sub), (Some(3), None));
            let long = "s".repeat(129);
            let e = decode(&format!(
                r#"{{"type":"subscribe","id":4,"sub":"{long}","target":{{"doc":"col"}}}}"#
            ));
            assert_eq!((e.salvaged.id, e.salvaged.sub), (Some(4), None));
            let e = decode(
                r#"{"type":"subscribe","id":9007199254740992,"sub":"a","target":{"doc":"col"}}"#,
            );
            assert_eq!((e.salvaged.id, e.salvaged.sub), (None, None));
            // Other frame types have no sub to echo.
            let e = decode(r#"{"type":"write","id":5,"sub":"a"}"#);
            assert_eq!((e.salvaged.id, e.salvaged.sub), (Some(5), None));
            let e = decode(r#"{"type":"hello","protocol":1}"#);
            assert!(e.salvaged.hello);
            assert!(e.reason.contains("missing field `client`"), "{}", e.reason);
        }
    }

    #[test]
    fn transcoded_server_frames_decode_to_the_same_json() {
        let json = br#"{"type":"changes","sub":"s","resume":"p5","changes":[{"kind":"added","doc":{"path":"a/b","fields":{"n":1,"x":2.5,"s":"t","l":[true,null]}},"old_index":null,"new_index":0}]}"#;
        let back = from_msgpack(&to_msgpack(json)).expect("valid msgpack");
        let want: serde_json::Value = serde_json::from_slice(json).expect("json");
        assert_eq!(back, want);
    }
}
