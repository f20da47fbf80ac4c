//! Encoding outgoing frames once and sharing the bytes.
//!
//! The fan-out engine may deliver the same commit to thousands of
//! subscriptions. Serializing documents is the expensive part, so within one
//! commit a [`FrameCache`] encodes each document once, each distinct list of
//! changes (same kinds, same document versions, same indexes) once, and each
//! distinct whole frame (same `sub` name, same changes, same resume token)
//! once. Subscribers that receive an identical frame share one
//! reference-counted [`Bytes`] buffer all the way to the socket (the writer
//! hands it to the kernel without copying, see `socket`); subscribers whose
//! frames differ only by their `sub` name share the encoded changes and pay
//! for one memcpy. Cache lookups do not allocate.
//!
//! The hand-written encoders produce exactly the JSON of
//! [`hearth_protocol::ws::ServerMessage`] (a test decodes them with serde).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use hearth_protocol::ws::{resume_token, ChangeKind, ServerMessage};
use hearth_protocol::Document;

use crate::view::ChangeOut;

/// Serializes a server message with serde (replies, errors, control frames).
pub(crate) fn message(msg: &ServerMessage) -> Bytes {
    match serde_json::to_vec(msg) {
        Ok(text) => Bytes::from(text),
        // Serializing our own types cannot fail (no non-string map keys);
        // answer something well-formed rather than panic.
        Err(e) => Bytes::from(format!(
            r#"{{"type":"error","code":"internal","message":{}}}"#,
            json_string(&e.to_string())
        )),
    }
}

pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn doc_json(doc: &Document) -> String {
    serde_json::to_string(doc).unwrap_or_else(|_| "null".into())
}

fn kind_str(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Removed => "removed",
    }
}

fn opt_index(out: &mut String, i: Option<u32>) {
    match i {
        Some(i) => {
            let _ = write!(out, "{i}");
        }
        None => out.push_str("null"),
    }
}

type BodyKey = Vec<(ChangeKind, usize, Option<u32>, Option<u32>)>;
/// The frames built from one body at one position, by `sub` name.
type NamedFrames = Vec<(Box<str>, Bytes)>;

/// Per-commit caches of encoded documents, change lists and frames.
#[derive(Default)]
pub(crate) struct FrameCache {
    docs: HashMap<usize, Arc<str>>,
    /// Encoded change lists by (kind, document pointer, indexes) of each change.
    bodies: HashMap<BodyKey, Arc<str>>,
    /// Whole frames by (body pointer, seq), then by `sub` name (usually one).
    frames: HashMap<(usize, u64), NamedFrames>,
    /// Scratch key, reused so that a lookup does not allocate.
    key: BodyKey,
    /// Frames produced and frames handed out from the cache (for stats).
    pub encoded: u64,
    pub shared: u64,
}

impl FrameCache {
    fn doc(&mut self, doc: &Arc<Document>) -> Arc<str> {
        let key = Arc::as_ptr(doc) as usize;
        Arc::clone(
            self.docs
                .entry(key)
                .or_insert_with(|| Arc::from(doc_json(doc))),
        )
    }

    fn body(&mut self, changes: &[ChangeOut]) -> Arc<str> {
        self.key.clear();
        self.key.extend(changes.iter().map(|c| {
            (
                c.kind,
                Arc::as_ptr(&c.doc) as usize,
                c.old_index,
                c.new_index,
            )
        }));
        if let Some(b) = self.bodies.get(self.key.as_slice()) {
            return Arc::clone(b);
        }
        let mut out = String::with_capacity(64 * changes.len() + 2);
        out.push('[');
        for (n, c) in changes.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(r#"{"kind":""#);
            out.push_str(kind_str(c.kind));
            out.push_str(r#"","doc":"#);
            out.push_str(&self.doc(&c.doc));
            out.push_str(r#","old_index":"#);
            opt_index(&mut out, c.old_index);
            out.push_str(r#","new_index":"#);
            opt_index(&mut out, c.new_index);
            out.push('}');
        }
        out.push(']');
        let body: Arc<str> = Arc::from(out);
        self.bodies.insert(self.key.clone(), Arc::clone(&body));
        body
    }

    /// A `changes` frame for `sub` at changelog position `seq`.
    pub(crate) fn changes(&mut self, sub: &str, seq: u64, changes: &[ChangeOut]) -> Bytes {
        let body = self.body(changes);
        let key = (Arc::as_ptr(&body) as *const u8 as usize, seq);
        let named = self.frames.entry(key).or_default();
        if let Some((_, f)) = named.iter().find(|(n, _)| &**n == sub) {
            self.shared += 1;
            return f.clone();
        }
        let mut out = String::with_capacity(body.len() + sub.len() + 64);
        out.push_str(r#"{"type":"changes","sub":"#);
        out.push_str(&json_string(sub));
        out.push_str(r#","resume":""#);
        out.push_str(&resume_token(seq));
        out.push_str(r#"","changes":"#);
        out.push_str(&body);
        out.push('}');
        let frame = Bytes::from(out);
        self.encoded += 1;
        named.push((Box::from(sub), frame.clone()));
        frame
    }

    /// A `snapshot` frame: the whole view.
    pub(crate) fn snapshot(
        &mut self,
        sub: &str,
        seq: u64,
        reset: bool,
        docs: &[Arc<Document>],
    ) -> Bytes {
        let mut out = String::with_capacity(64 + 128 * docs.len());
        out.push_str(r#"{"type":"snapshot","sub":"#);
        out.push_str(&json_string(sub));
        out.push_str(r#","resume":""#);
        out.push_str(&resume_token(seq));
        out.push_str(r#"","reset":"#);
        out.push_str(if reset { "true" } else { "false" });
        out.push_str(r#","docs":["#);
        for (n, d) in docs.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&self.doc(d));
        }
        out.push_str("]}");
        self.encoded += 1;
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::ws::DocChange;
    use hearth_protocol::{DocPath, Map, Timestamp, Value};

    fn doc(id: &str) -> Arc<Document> {
        let mut fields = Map::new();
        fields.insert("text".into(), Value::from("he said \"hi\"\n"));
        Arc::new(Document {
            path: DocPath::parse(&format!("rooms/{id}")).expect("path"),
            fields,
            create_time: Timestamp(1),
            update_time: Timestamp(2),
            version: 3,
        })
    }

    #[test]
    fn hand_encoded_frames_decode_as_the_protocol_types() {
        let mut cache = FrameCache::default();
        let a = doc("a");
        let changes = vec![
            ChangeOut {
                kind: ChangeKind::Added,
                doc: Arc::clone(&a),
                old_index: None,
                new_index: Some(0),
            },
            ChangeOut {
                kind: ChangeKind::Removed,
                doc: doc("b"),
                old_index: Some(1),
                new_index: None,
            },
        ];
        let frame = cache.changes("s\"1", 42, &changes);
        let msg: ServerMessage = serde_json::from_slice(&frame).expect("decodes");
        let ServerMessage::Changes {
            sub,
            resume,
            changes: got,
        } = msg
        else {
            panic!("not a changes frame: {frame:?}");
        };
        assert_eq!(sub, "s\"1");
        assert_eq!(resume, "p42");
        assert_eq!(
            got[0],
            DocChange {
                kind: ChangeKind::Added,
                doc: (*a).clone(),
                old_index: None,
                new_index: Some(0)
            }
        );
        let snap = cache.snapshot("s", 7, true, &[a]);
        let msg: ServerMessage = serde_json::from_slice(&snap).expect("decodes");
        assert!(
            matches!(msg, ServerMessage::Snapshot { reset: true, ref docs, .. } if docs.len() == 1)
        );
    }

    #[test]
    fn identical_frames_share_one_buffer() {
        let mut cache = FrameCache::default();
        let a = doc("a");
        let changes = vec![ChangeOut {
            kind: ChangeKind::Added,
            doc: a,
            old_index: None,
            new_index: Some(0),
        }];
        let f1 = cache.changes("s", 1, &changes);
        let f2 = cache.changes("s", 1, &changes);
        assert_eq!(f1.as_ptr(), f2.as_ptr(), "same bytes, not a copy");
        let f3 = cache.changes("other", 1, &changes);
        assert_ne!(f1.as_ptr(), f3.as_ptr());
        assert_eq!((cache.encoded, cache.shared), (2, 1));
    }
}
