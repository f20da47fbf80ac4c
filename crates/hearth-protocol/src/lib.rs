//! # hearth-protocol
//!
//! The types every Hearth component and every client agree on: document
//! [`Value`]s and their JSON encoding, paths, canonical [`ErrorCode`]s,
//! [`Query`] and [`Write`] with their reference semantics, and (in [`ws`]) the
//! WebSocket protocol's messages.
//!
//! Invariant: this crate does no I/O and depends on serde and small pure
//! crates only, so that the client SDK and future mobile bindings can use it.

pub mod api;
pub mod document;
pub mod error;
pub mod path;
pub mod query;
pub mod value;
pub mod write;
pub mod ws;

pub use document::{Document, MAX_DOCUMENT_BYTES};
pub use error::{ErrorBody, ErrorCode, ErrorEnvelope};
pub use path::{AnyPath, CollectionPath, DocPath, FieldPath, PathError};
pub use query::{
    AggregateOp, AggregateQuery, Aggregation, Cursor, Direction, FieldFilter, Filter, Op, Order,
    Query, QueryError, QuerySource,
};
pub use value::{Map, Timestamp, Value, ValueError};
pub use write::{
    apply_write, CommitResult, FieldTransform, Precondition, Transform, Write, WriteError,
    WriteKind, WriteResult,
};
