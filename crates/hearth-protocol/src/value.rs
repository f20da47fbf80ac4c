//! Document values and their JSON encoding.
//!
//! Hearth values are a superset of JSON: 64-bit integers and doubles are kept
//! distinct, and there are bytes and timestamps. The JSON encoding is chosen so
//! that plain JSON means what a newcomer expects and every value round-trips
//! exactly:
//!
//! | value            | JSON                                             |
//! |------------------|--------------------------------------------------|
//! | null, bool       | `null`, `true`                                   |
//! | integer          | a number with no `.`/exponent: `42`              |
//! | double           | a number with `.` or exponent: `42.0`, `1e300`   |
//! | NaN / ±Infinity  | `{"$double": "NaN"}`, `{"$double": "Infinity"}`, `{"$double": "-Infinity"}` |
//! | string           | `"text"`                                         |
//! | bytes            | `{"$bytes": "<standard base64>"}`                |
//! | timestamp        | `{"$timestamp": "2024-05-01T12:00:00.123456789Z"}` (RFC 3339, UTC) |
//! | array            | `[...]`                                          |
//! | map              | `{...}`                                          |
//!
//! A JSON object with exactly one key that starts with `$` is a typed value.
//! A *map* whose only key starts with `$` is written `{"$map": {...}}`; the
//! encoder does this itself so that any value round-trips.
//!
//! ## Total order
//! Values of different types sort by type, in this order:
//! `null < false < true < NaN < numbers < timestamps < strings < bytes < arrays < maps`.
//! Integers and doubles compare numerically with each other (`1 == 1.0`),
//! `-0.0 == 0.0`, NaN equals NaN and sorts before every other number.
//! Strings compare by UTF-8 bytes, bytes lexicographically, arrays element by
//! element (a prefix sorts first), maps by their sorted (key, value) pairs.
//! This order is what queries, cursors and indexes use.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The fields of a document, or the entries of a map value.
pub type Map = BTreeMap<String, Value>;

/// A point in time with nanosecond precision, stored as nanoseconds since the
/// Unix epoch (covers the years 1677 to 2262).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let now = time::OffsetDateTime::now_utc();
        Timestamp(
            now.unix_timestamp_nanos()
                .clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        )
    }

    pub fn from_nanos(nanos: i64) -> Timestamp {
        Timestamp(nanos)
    }

    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis.saturating_mul(1_000_000))
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    pub fn millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// RFC 3339 in UTC with nine fractional digits.
    pub fn to_rfc3339(self) -> String {
        let dt = time::OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
        );
        dt.format(&fmt).unwrap_or_default()
    }

    /// Parses any RFC 3339 timestamp (with any offset) into UTC nanoseconds.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, ValueError> {
        let dt = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| ValueError::new(format!("invalid RFC 3339 timestamp {text:?}: {e}")))?;
        let nanos = dt.unix_timestamp_nanos();
        i64::try_from(nanos)
            .map(Timestamp)
            .map_err(|_| ValueError::new(format!("timestamp {text:?} is outside 1677..2262")))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(de::Error::custom)
    }
}

/// A value that failed to decode, with a message that says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValueError {
    pub message: String,
}

impl ValueError {
    pub fn new(message: impl Into<String>) -> Self {
        ValueError {
            message: message.into(),
        }
    }
}

/// A document value. See the module docs for the encoding and the total order.
///
/// `PartialEq`/`Ord` follow the query order, so `Integer(1) == Double(1.0)`;
/// use [`Value::is_identical`] to tell them apart.
#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Integer(i64),
    Double(f64),
    Timestamp(Timestamp),
    String(String),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Map(Map),
}

/// The rank of each type in the total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeRank {
    Null = 0,
    Bool = 1,
    Number = 2,
    Timestamp = 3,
    String = 4,
    Bytes = 5,
    Array = 6,
    Map = 7,
}

impl Value {
    pub fn type_rank(&self) -> TypeRank {
        match self {
            Value::Null => TypeRank::Null,
            Value::Bool(_) => TypeRank::Bool,
            Value::Integer(_) | Value::Double(_) => TypeRank::Number,
            Value::Timestamp(_) => TypeRank::Timestamp,
            Value::String(_) => TypeRank::String,
            Value::Bytes(_) => TypeRank::Bytes,
            Value::Array(_) => TypeRank::Array,
            Value::Map(_) => TypeRank::Map,
        }
    }

    /// The type's name as the rules language and error messages spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Integer(_) => "int",
            Value::Double(_) => "float",
            Value::Timestamp(_) => "timestamp",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// Strict equality: same type and same bits (NaN is identical to NaN).
    pub fn is_identical(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => {
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
            }
            (Value::Integer(_), Value::Double(_)) | (Value::Double(_), Value::Integer(_)) => false,
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.is_identical(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.is_identical(vb))
            }
            _ => self == other,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// Any number as a double.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_nan(&self) -> bool {
        matches!(self, Value::Double(d) if d.is_nan())
    }

    /// An estimate of the stored size in bytes, following Firestore's rules
    /// of thumb (strings count their UTF-8 bytes plus one, numbers 8, ...).
    /// Used for the document size limit.
    pub fn estimated_size(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Integer(_) | Value::Double(_) => 8,
            Value::Timestamp(_) => 8,
            Value::String(s) => s.len() + 1,
            Value::Bytes(b) => b.len(),
            Value::Array(a) => a.iter().map(Value::estimated_size).sum(),
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| k.len() + 1 + v.estimated_size())
                .sum(),
        }
    }

    /// Converts from `serde_json::Value` using the typed encoding.
    pub fn from_json(json: &serde_json::Value) -> Result<Value, ValueError> {
        from_json_at(json, 0)
    }

    /// Converts to `serde_json::Value` using the typed encoding.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Double(d) => match serde_json::Number::from_f64(*d) {
                Some(n) => serde_json::Value::Number(n),
                None => single(
                    "$double",
                    serde_json::Value::String(nonfinite_name(*d).into()),
                ),
            },
            Value::Timestamp(t) => single("$timestamp", serde_json::Value::String(t.to_rfc3339())),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Bytes(b) => single(
                "$bytes",
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                let inner: serde_json::Map<String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
                if needs_map_escape(m) {
                    single("$map", serde_json::Value::Object(inner))
                } else {
                    serde_json::Value::Object(inner)
                }
            }
        }
    }
}

/// Maximum nesting of arrays and maps accepted by the decoder (Firestore allows 20).
pub const MAX_NESTING: usize = 20;

fn single(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(key.to_string(), value);
    serde_json::Value::Object(m)
}

pub(crate) fn nonfinite_name(d: f64) -> &'static str {
    if d.is_nan() {
        "NaN"
    } else if d > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn needs_map_escape(m: &Map) -> bool {
    m.len() == 1 && m.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn parse_nonfinite(text: &str) -> Result<f64, ValueError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        other => other.parse::<f64>().map_err(|_| {
            ValueError::new(format!(
                "$double must be \"NaN\", \"Infinity\", \"-Infinity\" or a number, got {other:?}"
            ))
        }),
    }
}

fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value, ValueError> {
    if depth > MAX_NESTING {
        return Err(ValueError::new(format!(
            "value nested deeper than {MAX_NESTING} levels"
        )));
    }
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => number_from_json(n)?,
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| from_json_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => {
            if o.len() == 1 {
                let (key, inner) = o.iter().next().expect("len checked");
                if key.starts_with('$') {
                    return typed_from_json(key, inner, depth);
                }
            }
            let mut map = Map::new();
            for (k, v) in o {
                map.insert(k.clone(), from_json_at(v, depth + 1)?);
            }
            Value::Map(map)
        }
    })
}

fn number_from_json(n: &serde_json::Number) -> Result<Value, ValueError> {
    if let Some(i) = n.as_i64() {
        // serde_json reports "1.0" as f64, never as i64, so this is an integer literal.
        return Ok(Value::Integer(i));
    }
    if n.is_u64() {
        return Err(ValueError::new(format!(
            "integer {n} does not fit in 64 signed bits; write it as a double ({n}.0) or a string"
        )));
    }
    n.as_f64()
        .map(Value::Double)
        .ok_or_else(|| ValueError::new(format!("number {n} cannot be represented")))
}

fn typed_from_json(
    key: &str,
    inner: &serde_json::Value,
    depth: usize,
) -> Result<Value, ValueError> {
    let text = || {
        inner
            .as_str()
            .ok_or_else(|| ValueError::new(format!("{key} expects a string")))
    };
    match key {
        "$bytes" => base64::engine::general_purpose::STANDARD
            .decode(text()?)
            .map(Value::Bytes)
            .map_err(|e| ValueError::new(format!("$bytes is not valid standard base64: {e}"))),
        "$timestamp" => Timestamp::parse_rfc3339(text()?).map(Value::Timestamp),
        "$double" => match inner {
            serde_json::Value::Number(n) => n
                .as_f64()
                .map(Value::Double)
                .ok_or_else(|| ValueError::new("$double is not a number")),
            _ => parse_nonfinite(text()?).map(Value::Double),
        },
        "$map" => match inner {
            serde_json::Value::Object(o) => {
                let mut map = Map::new();
                for (k, v) in o {
                    map.insert(k.clone(), from_json_at(v, depth + 1)?);
                }
                Ok(Value::Map(map))
            }
            _ => Err(ValueError::new("$map expects an object")),
        },
        other => Err(ValueError::new(format!(
            "unknown typed value {other:?}: use $bytes, $timestamp, $double or $map \
             (to store a map whose only key starts with '$', wrap it in {{\"$map\": ...}})"
        ))),
    }
}

// ---- ordering -------------------------------------------------------------

/// Compares two numbers exactly, even integers beyond 2^53.
fn cmp_numbers(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Double(x), Value::Double(y)) => cmp_doubles(*x, *y),
        (Value::Integer(x), Value::Double(y)) => cmp_int_double(*x, *y),
        (Value::Double(x), Value::Integer(y)) => cmp_int_double(*y, *x).reverse(),
        _ => Ordering::Equal,
    }
}

fn cmp_doubles(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // total_cmp would order -0.0 before 0.0; partial_cmp treats them as equal.
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn cmp_int_double(i: i64, d: f64) -> Ordering {
    if d.is_nan() {
        return Ordering::Greater;
    }
    // Every i64 lies in [-2^63, 2^63); doubles outside that are beyond every integer.
    if d >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if d < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let truncated = d.trunc() as i64; // exact: |d| < 2^63
    match i.cmp(&truncated) {
        Ordering::Equal => {
            let frac = d - d.trunc();
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        other => other,
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Value) -> Ordering {
        let rank = self.type_rank().cmp(&other.type_rank());
        if rank != Ordering::Equal {
            return rank;
        }
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.iter().cmp(b.iter()),
            (Value::Map(a), Value::Map(b)) => a.iter().cmp(b.iter()),
            _ => cmp_numbers(self, other),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

// ---- conversions ------------------------------------------------------------

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v as i64)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Integer(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}
impl From<Timestamp> for Value {
    fn from(v: Timestamp) -> Self {
        Value::Timestamp(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<Map> for Value {
    fn from(v: Map) -> Self {
        Value::Map(v)
    }
}

// ---- serde ----------------------------------------------------------------
// Serialize/Deserialize speak the typed encoding directly, so any serde format
// (JSON, MessagePack) carries the same shapes.

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Double(d) if d.is_finite() => s.serialize_f64(*d),
            Value::Double(d) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$double", nonfinite_name(*d))?;
                m.end()
            }
            Value::Timestamp(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$timestamp", &t.to_rfc3339())?;
                m.end()
            }
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "$bytes",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
                m.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                if needs_map_escape(map) {
                    let mut m = s.serialize_map(Some(1))?;
                    m.serialize_entry("$map", &PlainMap(map))?;
                    m.end()
                } else {
                    PlainMap(map).serialize(s)
                }
            }
        }
    }
}

struct PlainMap<'a>(&'a Map);

impl Serialize for PlainMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Going through serde_json::Value keeps one decoder (and its depth
        // limit) for every format; the cost is one intermediate tree.
        let json = serde_json::Value::deserialize(d)?;
        Value::from_json(&json).map_err(de::Error::custom)
    }
}

/// Deserializes a JSON object into a [`Map`] of values with the typed encoding.
pub fn map_from_json(json: &serde_json::Value) -> Result<Map, ValueError> {
    match json {
        serde_json::Value::Object(o) => {
            let mut map = Map::new();
            for (k, v) in o {
                map.insert(k.clone(), Value::from_json(v)?);
            }
            Ok(map)
        }
        other => Err(ValueError::new(format!(
            "expected a JSON object of fields, got {}",
            json_kind(other)
        ))),
    }
}

pub fn map_to_json(map: &Map) -> serde_json::Value {
    serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(v: &Value) -> Value {
        let text = serde_json::to_string(v).expect("serialize");
        serde_json::from_str(&text).expect("deserialize")
    }

    #[test]
    fn integers_and_doubles_stay_distinct_through_json() {
        assert!(roundtrip(&Value::Integer(1)).is_identical(&Value::Integer(1)));
        assert!(roundtrip(&Value::Double(1.0)).is_identical(&Value::Double(1.0)));
        assert_eq!(serde_json::to_string(&Value::Double(1.0)).unwrap(), "1.0");
    }

    #[test]
    fn nonfinite_doubles_bytes_and_timestamps_round_trip() {
        for v in [
            Value::Double(f64::NAN),
            Value::Double(f64::INFINITY),
            Value::Double(f64::NEG_INFINITY),
            Value::Bytes(vec![0, 1, 255]),
            Value::Timestamp(Timestamp(1_700_000_000_123_456_789)),
            Value::Timestamp(Timestamp(-5)),
        ] {
            assert!(roundtrip(&v).is_identical(&v), "{v:?}");
        }
    }

    #[test]
    fn a_map_whose_only_key_starts_with_dollar_is_escaped() {
        let mut m = Map::new();
        m.insert("$bytes".into(), Value::String("not bytes".into()));
        let v = Value::Map(m);
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.starts_with("{\"$map\""), "{text}");
        assert!(roundtrip(&v).is_identical(&v));
    }

    #[test]
    fn unknown_typed_keys_and_huge_integers_are_rejected() {
        assert!(serde_json::from_str::<Value>(r#"{"$nope": 1}"#).is_err());
        assert!(serde_json::from_str::<Value>("18446744073709551615").is_err());
        assert!(serde_json::from_str::<Value>(r#"{"$bytes": "!!"}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let text = "[".repeat(30) + &"]".repeat(30);
        assert!(serde_json::from_str::<Value>(&text).is_err());
    }

    #[test]
    fn cross_type_order_is_documented_order() {
        let ordered = vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Double(f64::NAN),
            Value::Double(f64::NEG_INFINITY),
            Value::Integer(-1),
            Value::Double(0.5),
            Value::Integer(1),
            Value::Timestamp(Timestamp(0)),
            Value::String("a".into()),
            Value::Bytes(vec![0]),
            Value::Array(vec![]),
            Value::Map(Map::new()),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        assert_eq!(Value::Integer(1), Value::Double(1.0));
        assert_eq!(Value::Double(-0.0), Value::Double(0.0));
    }

    #[test]
    fn big_integers_compare_exactly_against_doubles() {
        let big = i64::MAX;
        assert!(Value::Integer(big) < Value::Double(9.3e18));
        assert!(Value::Integer((1 << 53) + 1) > Value::Double((1u64 << 53) as f64));
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Double),
            any::<i64>().prop_map(|n| Value::Timestamp(Timestamp(n))),
            ".{0,8}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[$a-z]{0,4}", inner, 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_value_round_trips_exactly(v in arb_value()) {
            prop_assert!(roundtrip(&v).is_identical(&v));
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_json(text in ".{0,64}") {
            let _ = serde_json::from_str::<Value>(&text);
        }

        #[test]
        fn order_is_total_and_antisymmetric(a in arb_value(), b in arb_value()) {
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        }
    }
}
