//! Byte encodings: the order-preserving key encoding of values and paths, and
//! the compact storage encoding of documents and commit records.
//!
//! ## Ordered key encoding (`encode_value_key`)
//! Equal values (in [`Value`]'s total order, so `1 == 1.0` and `-0.0 == 0.0`)
//! encode to identical bytes, and `a < b` iff `enc(a) < enc(b)` bytewise. The
//! encoding is prefix-free (self-delimiting), so values can be concatenated in
//! a key and a whole encoding can be inverted (every byte NOT-ed) to get the
//! descending order. It is not meant to be decoded (it forgets int vs double);
//! documents are stored with the storage encoding below.
//!
//! | type      | bytes |
//! |-----------|-------|
//! | null      | `05` |
//! | bool      | `10` / `11` |
//! | NaN       | `20` |
//! | number    | `21` class (`01` -inf, `02` negative, `03` zero, `04` positive, `05` +inf), then for finite non-zero numbers a 2-byte biased binary exponent and an 8-byte normalized mantissa (both NOT-ed for negatives); exact for every i64 and f64 |
//! | timestamp | `30` + nanos as big-endian i64 with the sign bit flipped |
//! | string    | `40` + escaped UTF-8 (`00` → `00 FF`) + `00 01` |
//! | bytes     | `50` + escaped bytes + `00 01` |
//! | array     | `60` + elements + `00` |
//! | map       | `70` + (`01` + escaped key + `00 01` + value)* + `00` |
//!
//! Paths are encoded segment by segment (escaped, each closed by `00 01`) and
//! the whole path closed by `00 02`; this sorts exactly like the derived `Ord`
//! of `DocPath`/`CollectionPath` and keeps `rooms` from being a key prefix of
//! `rooms/r1/messages`.

use hearth_protocol::{CollectionPath, DocPath, Document, Map, Timestamp, Value};

// ---- ordered encoding --------------------------------------------------------

pub const TAG_NULL: u8 = 0x05;
pub const TAG_FALSE: u8 = 0x10;
pub const TAG_TRUE: u8 = 0x11;
pub const TAG_NAN: u8 = 0x20;
pub const TAG_NUMBER: u8 = 0x21;
pub const TAG_TIMESTAMP: u8 = 0x30;
pub const TAG_STRING: u8 = 0x40;
pub const TAG_BYTES: u8 = 0x50;
pub const TAG_ARRAY: u8 = 0x60;
pub const TAG_MAP: u8 = 0x70;

/// Appends `bytes` escaped (`00` → `00 FF`) and terminated by `00 01`.
pub fn encode_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads one escaped segment from the start of `input`; returns it and the
/// number of bytes consumed.
pub fn decode_escaped(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == 0 {
            match input.get(i + 1)? {
                0xFF => {
                    out.push(0);
                    i += 2;
                }
                0x01 => return Some((out, i + 2)),
                _ => return None,
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// Appends the ordered encoding of `value`.
pub fn encode_value_key(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Double(d) if d.is_nan() => out.push(TAG_NAN),
        Value::Integer(i) => {
            out.push(TAG_NUMBER);
            let negative = *i < 0;
            let magnitude = i.unsigned_abs();
            encode_finite(out, negative, magnitude, 0);
        }
        Value::Double(d) => {
            out.push(TAG_NUMBER);
            if d.is_infinite() {
                out.push(if *d > 0.0 { 0x05 } else { 0x01 });
                return;
            }
            let bits = d.to_bits();
            let negative = bits >> 63 == 1;
            let raw_exp = ((bits >> 52) & 0x7FF) as i32;
            let fraction = bits & ((1u64 << 52) - 1);
            let (mantissa, shift) = if raw_exp == 0 {
                (fraction, -1074)
            } else {
                (fraction | (1u64 << 52), raw_exp - 1075)
            };
            encode_finite(out, negative, mantissa, shift);
        }
        Value::Timestamp(t) => {
            out.push(TAG_TIMESTAMP);
            out.extend_from_slice(&((t.0 as u64) ^ (1u64 << 63)).to_be_bytes());
        }
        Value::String(s) => {
            out.push(TAG_STRING);
            encode_escaped(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(TAG_BYTES);
            encode_escaped(out, b);
        }
        Value::Array(items) => {
            out.push(TAG_ARRAY);
            for item in items {
                encode_value_key(out, item);
            }
            out.push(0x00);
        }
        Value::Map(map) => {
            out.push(TAG_MAP);
            for (k, v) in map {
                out.push(0x01);
                encode_escaped(out, k.as_bytes());
                encode_value_key(out, v);
            }
            out.push(0x00);
        }
    }
}

/// Encodes `±magnitude · 2^shift` (magnitude may be zero).
fn encode_finite(out: &mut Vec<u8>, negative: bool, magnitude: u64, shift: i32) {
    if magnitude == 0 {
        out.push(0x03);
        return;
    }
    let lz = magnitude.leading_zeros() as i32;
    let mantissa = magnitude << lz;
    // value = mantissa · 2^(exponent - 63)
    let exponent = (63 - lz + shift + 0x8000) as u16;
    if negative {
        out.push(0x02);
        out.extend_from_slice(&(!exponent).to_be_bytes());
        out.extend_from_slice(&(!mantissa).to_be_bytes());
    } else {
        out.push(0x04);
        out.extend_from_slice(&exponent.to_be_bytes());
        out.extend_from_slice(&mantissa.to_be_bytes());
    }
}

pub fn value_key(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode_value_key(&mut out, value);
    out
}

/// The first tag byte of `value`'s type (range filters only match one type).
pub fn type_start(value: &Value) -> u8 {
    match value {
        Value::Null => TAG_NULL,
        Value::Bool(_) => TAG_FALSE,
        Value::Double(d) if d.is_nan() => TAG_NAN,
        Value::Integer(_) | Value::Double(_) => TAG_NUMBER,
        Value::Timestamp(_) => TAG_TIMESTAMP,
        Value::String(_) => TAG_STRING,
        Value::Bytes(_) => TAG_BYTES,
        Value::Array(_) => TAG_ARRAY,
        Value::Map(_) => TAG_MAP,
    }
}

/// One past the last tag byte of `value`'s type (for non-NaN range bounds).
pub fn type_end(value: &Value) -> u8 {
    match value {
        Value::Null => TAG_NULL + 1,
        Value::Bool(_) => TAG_TRUE + 1,
        Value::Double(d) if d.is_nan() => TAG_NAN + 1,
        Value::Integer(_) | Value::Double(_) => TAG_NUMBER + 1,
        Value::Timestamp(_) => TAG_TIMESTAMP + 1,
        Value::String(_) => TAG_STRING + 1,
        Value::Bytes(_) => TAG_BYTES + 1,
        Value::Array(_) => TAG_ARRAY + 1,
        Value::Map(_) => TAG_MAP + 1,
    }
}

/// NOT-s every byte (descending order for a prefix-free encoding).
pub fn invert(bytes: &mut [u8]) {
    for b in bytes {
        *b = !*b;
    }
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` if there is none (all `FF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// ---- paths -------------------------------------------------------------------

/// Appends the segments of a path, closed by `00 02`.
pub fn encode_segments(out: &mut Vec<u8>, segments: &[String]) {
    for s in segments {
        encode_escaped(out, s.as_bytes());
    }
    out.extend_from_slice(&[0x00, 0x02]);
}

/// Decodes segments written by [`encode_segments`]; returns them and the bytes used.
pub fn decode_segments(input: &[u8]) -> Option<(Vec<String>, usize)> {
    let mut segments = Vec::new();
    let mut i = 0;
    loop {
        if input.get(i) == Some(&0x00) && input.get(i + 1) == Some(&0x02) {
            return Some((segments, i + 2));
        }
        let (seg, used) = decode_escaped(input.get(i..)?)?;
        segments.push(String::from_utf8(seg).ok()?);
        i += used;
    }
}

pub fn encode_doc_path(out: &mut Vec<u8>, path: &DocPath) {
    encode_segments(out, path.segments());
}

pub fn encode_collection_path(out: &mut Vec<u8>, path: &CollectionPath) {
    encode_segments(out, path.segments());
}

pub fn decode_doc_path(input: &[u8]) -> Option<DocPath> {
    let (segments, _) = decode_segments(input)?;
    DocPath::parse(&segments.join("/")).ok()
}

// ---- storage encoding ----------------------------------------------------------

/// A decoding failure of stored bytes (corruption or a bug, never client input).
#[derive(Debug, Clone, thiserror::Error)]
#[error("corrupt stored data: {0}")]
pub struct CorruptData(pub &'static str);

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn byte(&mut self) -> Result<u8, CorruptData> {
        let b = *self.buf.get(self.pos).ok_or(CorruptData("truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptData> {
        let end = self.pos.checked_add(n).ok_or(CorruptData("length"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(CorruptData("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, CorruptData> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn varint(&mut self) -> Result<u64, CorruptData> {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift > 63 {
                return Err(CorruptData("varint"));
            }
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
            shift += 7;
        }
    }
    fn string(&mut self) -> Result<String, CorruptData> {
        let len = self.varint()? as usize;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| CorruptData("utf-8"))
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Integer(i) => {
            out.push(3);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Double(d) => {
            out.push(4);
            out.extend_from_slice(&d.to_bits().to_be_bytes());
        }
        Value::Timestamp(t) => {
            out.push(5);
            out.extend_from_slice(&t.0.to_be_bytes());
        }
        Value::String(s) => {
            out.push(6);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(7);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            out.push(8);
            put_varint(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Map(map) => {
            out.push(9);
            put_map(out, map);
        }
    }
}

fn put_map(out: &mut Vec<u8>, map: &Map) {
    put_varint(out, map.len() as u64);
    for (k, v) in map {
        put_varint(out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        put_value(out, v);
    }
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, CorruptData> {
    if depth > 64 {
        return Err(CorruptData("nesting"));
    }
    Ok(match r.byte()? {
        0 => Value::Null,
        1 => Value::Bool(false),
        2 => Value::Bool(true),
        3 => Value::Integer(r.u64()? as i64),
        4 => Value::Double(f64::from_bits(r.u64()?)),
        5 => Value::Timestamp(Timestamp(r.u64()? as i64)),
        6 => Value::String(r.string()?),
        7 => {
            let len = r.varint()? as usize;
            Value::Bytes(r.take(len)?.to_vec())
        }
        8 => {
            let len = r.varint()? as usize;
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_value(r, depth + 1)?);
            }
            Value::Array(items)
        }
        9 => Value::Map(read_map(r, depth + 1)?),
        _ => return Err(CorruptData("value tag")),
    })
}

fn read_map(r: &mut Reader<'_>, depth: usize) -> Result<Map, CorruptData> {
    let len = r.varint()? as usize;
    let mut map = Map::new();
    for _ in 0..len {
        let k = r.string()?;
        let v = read_value(r, depth)?;
        map.insert(k, v);
    }
    Ok(map)
}

fn put_doc_body(out: &mut Vec<u8>, doc: &Document) {
    out.extend_from_slice(&doc.version.to_be_bytes());
    out.extend_from_slice(&doc.create_time.0.to_be_bytes());
    out.extend_from_slice(&doc.update_time.0.to_be_bytes());
    put_map(out, &doc.fields);
}

fn read_doc_body(r: &mut Reader<'_>, path: DocPath) -> Result<Document, CorruptData> {
    let version = r.u64()?;
    let create_time = Timestamp(r.u64()? as i64);
    let update_time = Timestamp(r.u64()? as i64);
    let fields = read_map(r, 0)?;
    Ok(Document {
        path,
        fields,
        create_time,
        update_time,
        version,
    })
}

/// The stored bytes of a document (its path lives in the key).
pub fn encode_document(doc: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + doc.fields.len() * 16);
    put_doc_body(&mut out, doc);
    out
}

pub fn decode_document(path: DocPath, bytes: &[u8]) -> Result<Document, CorruptData> {
    read_doc_body(&mut Reader::new(bytes), path)
}

/// The stored bytes of a changelog record.
pub fn encode_record(record: &crate::CommitRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&record.seq.to_be_bytes());
    out.extend_from_slice(&record.commit_time.0.to_be_bytes());
    put_varint(&mut out, record.changes.len() as u64);
    for change in &record.changes {
        let path = change.path.as_string();
        put_varint(&mut out, path.len() as u64);
        out.extend_from_slice(path.as_bytes());
        out.push(match change.kind {
            crate::ChangeKind::Created => 0,
            crate::ChangeKind::Updated => 1,
            crate::ChangeKind::Deleted => 2,
        });
        for doc in [&change.old, &change.new] {
            match doc {
                None => out.push(0),
                Some(d) => {
                    out.push(1);
                    put_doc_body(&mut out, d);
                }
            }
        }
    }
    out
}

pub fn decode_record(bytes: &[u8]) -> Result<crate::CommitRecord, CorruptData> {
    let mut r = Reader::new(bytes);
    let seq = r.u64()?;
    let commit_time = Timestamp(r.u64()? as i64);
    let n = r.varint()? as usize;
    let mut changes = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let path = DocPath::parse(&r.string()?).map_err(|_| CorruptData("path"))?;
        let kind = match r.byte()? {
            0 => crate::ChangeKind::Created,
            1 => crate::ChangeKind::Updated,
            2 => crate::ChangeKind::Deleted,
            _ => return Err(CorruptData("change kind")),
        };
        let mut docs = [None, None];
        for slot in &mut docs {
            if r.byte()? == 1 {
                *slot = Some(read_doc_body(&mut r, path.clone())?);
            }
        }
        let [old, new] = docs;
        changes.push(crate::Change {
            path,
            kind,
            old,
            new,
        });
    }
    Ok(crate::CommitRecord {
        seq,
        commit_time,
        changes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            prop_oneof![
                Just(i64::MAX),
                Just(i64::MIN),
                Just(1i64 << 53),
                Just((1i64 << 53) + 1),
                -5i64..5
            ]
            .prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Double),
            prop_oneof![
                Just(f64::NAN),
                Just(0.0),
                Just(-0.0),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(9_223_372_036_854_775_808.0),
                Just(-9_223_372_036_854_775_808.0),
                Just(9_007_199_254_740_992.0),
                Just(f64::MIN_POSITIVE / 4.0),
                -5.0f64..5.0
            ]
            .prop_map(Value::Double),
            any::<i64>().prop_map(|n| Value::Timestamp(Timestamp(n))),
            "[a-c\\x00]{0,4}".prop_map(Value::String),
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()],
                0..4
            )
            .prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c\\x00]{0,3}", inner, 0..4)
                    .prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn key_encoding_order_equals_value_order(a in arb_value(), b in arb_value()) {
            let (ka, kb) = (value_key(&a), value_key(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b), "{:?} vs {:?}", a, b);
            let (mut ia, mut ib) = (ka.clone(), kb.clone());
            invert(&mut ia);
            invert(&mut ib);
            prop_assert_eq!(ia.cmp(&ib), b.cmp(&a));
        }

        #[test]
        fn key_encoding_is_prefix_free_when_concatenated(a in arb_value(), b in arb_value(), c in arb_value(), d in arb_value()) {
            let mut x = value_key(&a); x.extend(value_key(&b));
            let mut y = value_key(&c); y.extend(value_key(&d));
            prop_assert_eq!(x.cmp(&y), (a, b).cmp(&(c, d)));
        }

        #[test]
        fn storage_encoding_round_trips_exactly(v in arb_value()) {
            let mut out = Vec::new();
            put_value(&mut out, &v);
            let back = read_value(&mut Reader::new(&out), 0).unwrap();
            prop_assert!(back.is_identical(&v), "{:?} vs {:?}", back, v);
        }

        #[test]
        fn path_encoding_order_equals_docpath_order(
            a in proptest::collection::vec("[ab\\x00]{1,3}", 1..3),
            b in proptest::collection::vec("[ab\\x00]{1,3}", 1..3),
        ) {
            let pa = DocPath::parse(&a.iter().flat_map(|s| [s.clone(), "d".to_string()]).collect::<Vec<_>>().join("/"));
            let pb = DocPath::parse(&b.iter().flat_map(|s| [s.clone(), "d".to_string()]).collect::<Vec<_>>().join("/"));
            if let (Ok(pa), Ok(pb)) = (pa, pb) {
                let (mut ka, mut kb) = (Vec::new(), Vec::new());
                encode_doc_path(&mut ka, &pa);
                encode_doc_path(&mut kb, &pb);
                prop_assert_eq!(ka.cmp(&kb), pa.cmp(&pb));
                prop_assert_eq!(decode_doc_path(&ka), Some(pa));
            }
        }
    }

    #[test]
    fn integers_past_two_to_the_53_stay_distinct_and_equal_doubles_share_a_key() {
        let a = Value::Integer((1 << 53) + 1);
        let b = Value::Double((1u64 << 53) as f64);
        assert!(value_key(&a) > value_key(&b));
        assert_eq!(
            value_key(&Value::Integer(1)),
            value_key(&Value::Double(1.0))
        );
        assert_eq!(
            value_key(&Value::Double(-0.0)),
            value_key(&Value::Integer(0))
        );
    }
}
