//! Document paths, collection paths and field paths.
//!
//! A path is a slash-separated list of segments: `rooms/r1/messages/m1`.
//! An odd number of segments names a collection, an even number a document;
//! subcollections are simply deeper paths. Segment ids whose name both starts
//! and ends with `__` (such as `__users__`) are reserved for Hearth's system
//! collections, which only the server itself (or the admin key) may touch.
//!
//! Field paths address a value inside a document: `address.city`. A segment
//! that is not a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`) is quoted with
//! backticks: `` tags.`a.b` ``; a backtick or backslash inside is escaped with
//! a backslash.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maximum number of segments in a path (Firestore allows 100).
pub const MAX_PATH_SEGMENTS: usize = 100;
/// Maximum bytes in one path segment or field name.
pub const MAX_SEGMENT_BYTES: usize = 1500;
/// Maximum number of segments in a field path.
pub const MAX_FIELD_DEPTH: usize = 20;

/// A path that failed validation, with a message saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PathError {
    pub message: String,
}

fn err<T>(message: impl Into<String>) -> Result<T, PathError> {
    Err(PathError {
        message: message.into(),
    })
}

/// True for ids reserved for system collections: `__name__`.
pub fn is_reserved_id(segment: &str) -> bool {
    segment.len() >= 4 && segment.starts_with("__") && segment.ends_with("__")
}

fn validate_segment(segment: &str, whole: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return err(format!("path {whole:?} has an empty segment"));
    }
    if segment == "." || segment == ".." {
        return err(format!(
            "path {whole:?} has a segment {segment:?}, which is not allowed"
        ));
    }
    if segment.len() > MAX_SEGMENT_BYTES {
        return err(format!(
            "a segment of path {:?}… is longer than {MAX_SEGMENT_BYTES} bytes",
            &whole[..whole.len().min(40)]
        ));
    }
    if segment.chars().any(|c| c.is_control()) {
        return err(format!("path {whole:?} contains a control character"));
    }
    Ok(())
}

fn split_path(text: &str) -> Result<Vec<String>, PathError> {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return err("path is empty");
    }
    // Sized exactly: a path lives as long as the document, view or
    // subscription that holds it, and `collect` would reserve room for four.
    let mut segments = Vec::with_capacity(trimmed.split('/').count());
    segments.extend(trimmed.split('/').map(str::to_string));
    if segments.len() > MAX_PATH_SEGMENTS {
        return err(format!(
            "path has {} segments; at most {MAX_PATH_SEGMENTS} are allowed",
            segments.len()
        ));
    }
    for s in &segments {
        validate_segment(s, trimmed)?;
    }
    Ok(segments)
}

/// Either kind of path, as parsed from a URL before we know which it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyPath {
    Document(DocPath),
    Collection(CollectionPath),
}

impl AnyPath {
    pub fn parse(text: &str) -> Result<AnyPath, PathError> {
        let segments = split_path(text)?;
        Ok(if segments.len() % 2 == 0 {
            AnyPath::Document(DocPath { segments })
        } else {
            AnyPath::Collection(CollectionPath { segments })
        })
    }
}

/// The path of a document: an even, non-zero number of segments.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocPath {
    segments: Vec<String>,
}

impl DocPath {
    pub fn parse(text: &str) -> Result<DocPath, PathError> {
        let segments = split_path(text)?;
        if segments.len() % 2 != 0 {
            return err(format!(
                "{text:?} names a collection (odd number of segments), not a document"
            ));
        }
        Ok(DocPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The last segment: the document's id within its collection.
    pub fn id(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// The collection that holds this document.
    pub fn parent(&self) -> CollectionPath {
        CollectionPath {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        }
    }

    /// The id of the collection that holds this document (`messages` for
    /// `rooms/r1/messages/m1`): what collection-group queries match on.
    pub fn collection_id(&self) -> &str {
        &self.segments[self.segments.len() - 2]
    }

    pub fn child(&self, collection_id: &str) -> Result<CollectionPath, PathError> {
        validate_segment(collection_id, collection_id)?;
        let mut segments = self.segments.clone();
        segments.push(collection_id.to_string());
        Ok(CollectionPath { segments })
    }

    /// True when any segment is a reserved `__system__` id.
    pub fn is_system(&self) -> bool {
        self.segments.iter().any(|s| is_reserved_id(s))
    }

    pub fn as_string(&self) -> String {
        self.segments.join("/")
    }
}

/// The path of a collection: an odd number of segments.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionPath {
    segments: Vec<String>,
}

impl CollectionPath {
    pub fn parse(text: &str) -> Result<CollectionPath, PathError> {
        let segments = split_path(text)?;
        if segments.len() % 2 != 1 {
            return err(format!(
                "{text:?} names a document (even number of segments), not a collection"
            ));
        }
        Ok(CollectionPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The last segment: `messages` for `rooms/r1/messages`.
    pub fn id(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// The document this collection hangs under, if it is a subcollection.
    pub fn parent(&self) -> Option<DocPath> {
        (self.segments.len() > 1).then(|| DocPath {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    pub fn doc(&self, id: &str) -> Result<DocPath, PathError> {
        validate_segment(id, id)?;
        if self.segments.len() + 1 > MAX_PATH_SEGMENTS {
            return err(format!("path would exceed {MAX_PATH_SEGMENTS} segments"));
        }
        let mut segments = self.segments.clone();
        segments.push(id.to_string());
        Ok(DocPath { segments })
    }

    /// True if `doc` is directly inside this collection.
    pub fn contains(&self, doc: &DocPath) -> bool {
        doc.segments.len() == self.segments.len() + 1 && doc.segments.starts_with(&self.segments)
    }

    pub fn is_system(&self) -> bool {
        self.segments.iter().any(|s| is_reserved_id(s))
    }

    pub fn as_string(&self) -> String {
        self.segments.join("/")
    }
}

/// A new random document id: 20 characters of `[A-Za-z0-9]` (about 119 bits).
/// The caller supplies the randomness so that this crate stays free of I/O.
pub fn document_id_from_random(random: [u8; 20]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

macro_rules! path_display_serde {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.segments.join("/"))
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.segments.join("/"))
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.segments.join("/"))
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                <$ty>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = PathError;
            fn from_str(s: &str) -> Result<Self, PathError> {
                <$ty>::parse(s)
            }
        }
    };
}

path_display_serde!(DocPath);
path_display_serde!(CollectionPath);

/// A path to a field inside a document: `a.b.c`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath {
    segments: Vec<String>,
}

/// The special field path that orders by document path (`__name__`).
pub const DOCUMENT_ID_FIELD: &str = "__name__";

impl FieldPath {
    pub fn new(segments: Vec<String>) -> Result<FieldPath, PathError> {
        if segments.is_empty() {
            return err("field path is empty");
        }
        if segments.len() > MAX_FIELD_DEPTH {
            return err(format!(
                "field path has more than {MAX_FIELD_DEPTH} segments"
            ));
        }
        for s in &segments {
            if s.is_empty() {
                return err("field path has an empty segment");
            }
            if s.len() > MAX_SEGMENT_BYTES {
                return err(format!("field name longer than {MAX_SEGMENT_BYTES} bytes"));
            }
        }
        Ok(FieldPath { segments })
    }

    /// A single top-level field, taken literally (no dot splitting).
    pub fn single(name: &str) -> Result<FieldPath, PathError> {
        FieldPath::new(vec![name.to_string()])
    }

    /// The `__name__` pseudo-field (the document path).
    pub fn document_id() -> FieldPath {
        FieldPath {
            segments: vec![DOCUMENT_ID_FIELD.to_string()],
        }
    }

    pub fn is_document_id(&self) -> bool {
        self.segments.len() == 1 && self.segments[0] == DOCUMENT_ID_FIELD
    }

    /// Parses dotted notation with backtick quoting.
    pub fn parse(text: &str) -> Result<FieldPath, PathError> {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        let mut quoted_segment = false;
        while let Some(c) = chars.next() {
            match c {
                '`' if current.is_empty() && !quoted_segment => {
                    quoted_segment = true;
                    loop {
                        match chars.next() {
                            Some('`') => break,
                            Some('\\') => match chars.next() {
                                Some(escaped) => current.push(escaped),
                                None => {
                                    return err(format!(
                                        "field path {text:?} ends inside an escape"
                                    ))
                                }
                            },
                            Some(other) => current.push(other),
                            None => {
                                return err(format!("field path {text:?} has an unclosed backtick"))
                            }
                        }
                    }
                    if current.is_empty() {
                        return err(format!("field path {text:?} has an empty quoted segment"));
                    }
                }
                '.' => {
                    if current.is_empty() {
                        return err(format!("field path {text:?} has an empty segment"));
                    }
                    segments.push(std::mem::take(&mut current));
                    quoted_segment = false;
                }
                _ if quoted_segment => {
                    return err(format!(
                        "field path {text:?}: a quoted segment must be followed by '.' or the end"
                    ))
                }
                '`' => {
                    return err(format!(
                        "field path {text:?}: backtick inside an unquoted segment"
                    ))
                }
                other => current.push(other),
            }
        }
        if current.is_empty() {
            return err(format!("field path {text:?} is empty or ends with '.'"));
        }
        segments.push(current);
        // A field path usually outlives its parse (in a query or a
        // subscription): keep one slot per segment, not the four `push` grew.
        segments.shrink_to_fit();
        FieldPath::new(segments)
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// True if `self` is a strict prefix of `other` (`a` of `a.b`).
    pub fn is_prefix_of(&self, other: &FieldPath) -> bool {
        self.segments.len() < other.segments.len() && other.segments.starts_with(&self.segments)
    }

    /// Canonical dotted text, quoting segments that are not plain identifiers.
    pub fn canonical(&self) -> String {
        self.segments
            .iter()
            .map(|s| {
                let plain = s
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    s.clone()
                } else {
                    let escaped = s.replace('\\', "\\\\").replace('`', "\\`");
                    format!("`{escaped}`")
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.canonical())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.canonical())
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        FieldPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for FieldPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        FieldPath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_paths_keep_no_spare_segment_slots() {
        // Paths live as long as documents, views and subscriptions do.
        let doc = DocPath::parse("rooms/r1").unwrap();
        assert_eq!(doc.segments.capacity(), 2);
        let coll = CollectionPath::parse("rooms").unwrap();
        assert_eq!(coll.segments.capacity(), 1);
        let field = FieldPath::parse("room").unwrap();
        assert_eq!(field.segments.capacity(), 1);
        let nested = FieldPath::parse("a.`b.c`.d").unwrap();
        assert_eq!(nested.segments.capacity(), 3);
    }

    #[test]
    fn odd_segments_name_collections_and_even_name_documents() {
        assert!(matches!(
            AnyPath::parse("rooms").unwrap(),
            AnyPath::Collection(_)
        ));
        assert!(matches!(
            AnyPath::parse("rooms/r1").unwrap(),
            AnyPath::Document(_)
        ));
        assert!(DocPath::parse("rooms").is_err());
        assert!(CollectionPath::parse("rooms/r1").is_err());
        let doc = DocPath::parse("rooms/r1/messages/m1").unwrap();
        assert_eq!(doc.parent().as_string(), "rooms/r1/messages");
        assert_eq!(doc.collection_id(), "messages");
        assert_eq!(doc.id(), "m1");
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for bad in ["", "/", "a//b", "a/./b", "a/../b", "a/\u{0}"] {
            assert!(AnyPath::parse(bad).is_err(), "{bad:?}");
        }
        let deep = vec!["x"; MAX_PATH_SEGMENTS + 2].join("/");
        assert!(AnyPath::parse(&deep).is_err());
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(AnyPath::parse(&long).is_err());
    }

    #[test]
    fn reserved_ids_mark_system_paths() {
        assert!(DocPath::parse("__users__/u1").unwrap().is_system());
        assert!(!DocPath::parse("users/u1").unwrap().is_system());
        assert!(!is_reserved_id("__"));
    }

    #[test]
    fn field_paths_parse_dots_and_backticks() {
        let p = FieldPath::parse("a.b.c").unwrap();
        assert_eq!(p.segments(), ["a", "b", "c"]);
        let q = FieldPath::parse("tags.`x.y`.z").unwrap();
        assert_eq!(q.segments(), ["tags", "x.y", "z"]);
        assert_eq!(FieldPath::parse(&q.canonical()).unwrap(), q);
        for bad in ["", ".", "a.", ".a", "a..b", "`a", "a`b`", "`a`b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
