//! The key layout. Every key starts with a one-byte key space:
//!
//! | space | key | value |
//! |---|---|---|
//! | `d` documents | `d` + path | stored document (see `codec`) |
//! | `n` collection membership | `n` + collection path + escaped id | doc path |
//! | `g` collection-group membership | `g` + escaped collection id + doc path | doc path |
//! | `s` single-field index | `s` + collection path + field path + mode (`v` value / `a` array element) + value key + escaped id | doc path |
//! | `x` composite index | `x` + 8-byte index id + [collection path, collection scope] + per field value key (NOT-ed for desc) + id or doc path (NOT-ed when the last field is desc) | doc path |
//! | `l` changelog | `l` + seq (big-endian u64) | commit record |
//! | `m` meta | `m` + name | head seq, oldest seq, index build state |
//!
//! Paths are encoded with [`codec::encode_segments`], values with
//! [`codec::encode_value_key`]; both preserve order, so a collection's
//! documents ordered by a field are one contiguous key range.

use hearth_protocol::{CollectionPath, DocPath};

use crate::codec;

pub const DOCS: u8 = b'd';
pub const MEMBERS: u8 = b'n';
pub const GROUP_MEMBERS: u8 = b'g';
pub const SINGLE: u8 = b's';
pub const COMPOSITE: u8 = b'x';
pub const LOG: u8 = b'l';
pub const META: u8 = b'm';

pub const MODE_VALUE: u8 = b'v';
pub const MODE_ARRAY: u8 = b'a';

pub const META_HEAD: &[u8] = b"mhead";
pub const META_OLDEST: &[u8] = b"moldest";

pub fn doc_key(path: &DocPath) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.push(DOCS);
    codec::encode_doc_path(&mut k, path);
    k
}

pub fn docs_prefix() -> Vec<u8> {
    vec![DOCS]
}

pub fn path_value(path: &DocPath) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    codec::encode_doc_path(&mut v, path);
    v
}

pub fn members_prefix(collection: &CollectionPath) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.push(MEMBERS);
    codec::encode_collection_path(&mut k, collection);
    k
}

pub fn member_key(path: &DocPath) -> Vec<u8> {
    let mut k = members_prefix(&path.parent());
    codec::encode_escaped(&mut k, path.id().as_bytes());
    k
}

pub fn group_prefix(collection_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.push(GROUP_MEMBERS);
    codec::encode_escaped(&mut k, collection_id.as_bytes());
    k
}

pub fn group_key(path: &DocPath) -> Vec<u8> {
    let mut k = group_prefix(path.collection_id());
    codec::encode_doc_path(&mut k, path);
    k
}

/// `s` + collection + field segments + mode.
pub fn single_prefix(collection: &CollectionPath, field: &[String], mode: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.push(SINGLE);
    codec::encode_collection_path(&mut k, collection);
    codec::encode_segments(&mut k, field);
    k.push(mode);
    k
}

pub fn composite_prefix(index_id: &[u8; 8], collection: Option<&CollectionPath>) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.push(COMPOSITE);
    k.extend_from_slice(index_id);
    if let Some(c) = collection {
        codec::encode_collection_path(&mut k, c);
    }
    k
}

pub fn log_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOG);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn index_state_key(index_id: &[u8; 8]) -> Vec<u8> {
    let mut k = b"mindex/".to_vec();
    k.extend_from_slice(index_id);
    k
}

/// FNV-1a over the index's canonical text: a stable 8-byte id.
pub fn index_id(canonical: &str) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes()
}

pub fn u64_value(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    let a: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}
