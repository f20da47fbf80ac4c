//! A ready-made case for benchmarking rules evaluation ("a typical rule with
//! one `get()`", issue 5's benchmark), so that the benchmark crate does not
//! have to know the rules language:
//!
//! ```
//! let case = hearth_rules::bench_support::TypicalGetRule::new();
//! assert!(case.check_once()); // time this in a loop
//! ```
//!
//! The case is the example chat rules (`examples/chat.rules`): a member
//! reading a message of her room, which costs one `get()` of the room
//! document (from an in-memory lookup, so the number is the rules' own cost).

use hearth_protocol::{DocPath, Document, Timestamp, Value};

use crate::{AccessControl, MemoryLookup, Principal, Ruleset};

/// The example chat rules, also shipped as `examples/chat.rules`.
pub const CHAT_RULES: &str = include_str!("../examples/chat.rules");

/// A member of `rooms/r1` reading `rooms/r1/messages/m1`.
#[derive(Debug)]
pub struct TypicalGetRule {
    pub access: AccessControl,
    pub principal: Principal,
    pub message: Document,
    pub lookup: MemoryLookup,
}

fn doc(path: &str, fields: serde_json::Value) -> Document {
    let fields = match Value::from_json(&fields) {
        Ok(Value::Map(m)) => m,
        _ => Default::default(),
    };
    Document {
        path: DocPath::parse(path).unwrap_or_else(|_| unreachable!("constant path")),
        fields,
        create_time: Timestamp(0),
        update_time: Timestamp(0),
        version: 1,
    }
}

impl TypicalGetRule {
    pub fn new() -> TypicalGetRule {
        let rules =
            Ruleset::parse(CHAT_RULES).unwrap_or_else(|e| unreachable!("example rules parse: {e}"));
        let mut lookup = MemoryLookup::new();
        lookup.insert(doc(
            "rooms/r1",
            serde_json::json!({"name": "general", "members": ["alice", "bob", "carol"]}),
        ));
        let message = doc(
            "rooms/r1/messages/m1",
            serde_json::json!({"author": "bob", "text": "hello", "sent_at": {"$timestamp": "2024-05-01T12:00:00Z"}}),
        );
        TypicalGetRule {
            access: AccessControl::new(rules),
            principal: Principal::user("alice"),
            message,
            lookup,
        }
    }

    /// One `check_get`; true when allowed (it always is).
    pub fn check_once(&self) -> bool {
        self.access
            .check_get(
                &self.principal,
                &self.message.path,
                Some(&self.message),
                &self.lookup,
            )
            .is_ok()
    }
}

impl Default for TypicalGetRule {
    fn default() -> Self {
        Self::new()
    }
}
