//! Store configuration, deserializable from the server's TOML file.
//!
//! ```toml
//! [store]
//! durability = "strict"                     # or { mode = "relaxed", flush_interval = "100ms" }
//! cache_capacity_bytes = 268435456
//! [store.retention]
//! max_age = "7d"                            # "500ms", "30s", "15m", "12h", "7d", integer seconds, or "off"
//! max_commits = 1000000                     # 0 = no limit
//! [store.indexes]
//! allow_scans = false                       # development only: serve un-indexed queries by scanning
//! [[store.indexes.composite]]
//! collection_group = "messages"
//! scope = "collection"                      # or "collection_group"
//! fields = [{ field = "room", mode = "asc" }, { field = "sent", mode = "desc" }]
//! [[store.indexes.exemptions]]
//! collection_group = "messages"
//! field = "body"                            # no automatic single-field index on messages.body
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hearth_protocol::FieldPath;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub retention: Retention,
    pub indexes: IndexConfig,
    pub cache_capacity_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("hearth_data"),
            durability: Durability::Strict,
            retention: Retention::default(),
            indexes: IndexConfig::default(),
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            ..StoreConfig::default()
        }
    }
}

/// When a commit is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the fsync that covers the commit (group commit shares it).
    #[default]
    Strict,
    /// Acknowledge once applied; flush every `flush_interval`. A crash may lose
    /// the commits of the last interval (never a partial commit).
    Relaxed { flush_interval: Duration },
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Name(String),
            Table {
                mode: String,
                #[serde(default, deserialize_with = "opt_duration")]
                flush_interval: Option<Duration>,
            },
        }
        let (mode, interval) = match Wire::deserialize(d)? {
            Wire::Name(n) => (n, None),
            Wire::Table {
                mode,
                flush_interval,
            } => (mode, flush_interval),
        };
        match mode.as_str() {
            "strict" => Ok(Durability::Strict),
            "relaxed" => Ok(Durability::Relaxed {
                flush_interval: interval.unwrap_or(Duration::from_millis(100)),
            }),
            other => Err(serde::de::Error::custom(format!(
                "durability must be \"strict\" or \"relaxed\", got {other:?}"
            ))),
        }
    }
}

/// How long the changelog keeps commits (whichever limit is hit first).
/// `None` disables a limit; in TOML write `max_age = "off"` / `max_commits = 0`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    #[serde(deserialize_with = "opt_duration")]
    pub max_age: Option<Duration>,
    #[serde(deserialize_with = "opt_count")]
    pub max_commits: Option<u64>,
}

fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.filter(|n| *n > 0))
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_commits: Some(1_000_000),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    pub composite: Vec<CompositeIndex>,
    pub exemptions: Vec<IndexExemption>,
    /// Serve queries no index covers by scanning the collection (development only).
    pub allow_scans: bool,
}

/// A declared index over several fields (or over one field for collection-group queries).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeIndex {
    /// The collection id (`messages` for `rooms/r1/messages`).
    pub collection_group: String,
    #[serde(default)]
    pub scope: IndexScope,
    pub fields: Vec<IndexField>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexScope {
    /// Serves queries on one collection (any collection with this id).
    #[default]
    Collection,
    /// Serves collection-group queries across every collection with this id.
    CollectionGroup,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexField {
    #[serde(serialize_with = "ser_field", deserialize_with = "de_field")]
    pub field: FieldPath,
    #[serde(default)]
    pub mode: IndexMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    #[default]
    Asc,
    Desc,
    ArrayContains,
}

impl IndexMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexMode::Asc => "asc",
            IndexMode::Desc => "desc",
            IndexMode::ArrayContains => "array_contains",
        }
    }
}

/// Opts a field (and the fields nested in it) out of automatic single-field indexing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexExemption {
    pub collection_group: String,
    #[serde(serialize_with = "ser_field", deserialize_with = "de_field")]
    pub field: FieldPath,
}

fn ser_field<S: Serializer>(f: &FieldPath, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&f.canonical())
}

fn de_field<'de, D: Deserializer<'de>>(d: D) -> Result<FieldPath, D::Error> {
    let text = String::deserialize(d)?;
    FieldPath::parse(&text).map_err(serde::de::Error::custom)
}

impl CompositeIndex {
    /// A canonical one-line identity, used to derive the index's key prefix.
    pub fn canonical(&self) -> String {
        let scope = match self.scope {
            IndexScope::Collection => "collection",
            IndexScope::CollectionGroup => "collection_group",
        };
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("{}:{}", f.field.canonical(), f.mode.as_str()))
            .collect();
        format!("{}|{}|{}", self.collection_group, scope, fields.join(","))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.fields.is_empty() {
            return Err(format!("index on {} has no fields", self.collection_group));
        }
        if self.collection_group.is_empty() || self.collection_group.contains('/') {
            return Err("collection_group takes a collection id (no slashes)".into());
        }
        let arrays = self
            .fields
            .iter()
            .filter(|f| f.mode == IndexMode::ArrayContains)
            .count();
        if arrays > 1 {
            return Err(format!(
                "index {} has more than one array_contains field",
                self.canonical()
            ));
        }
        if self.fields.iter().any(|f| f.field.is_document_id()) {
            return Err("__name__ is implicit in every index; do not list it".into());
        }
        Ok(())
    }
}

/// A TOML snippet declaring this index.
impl fmt::Display for CompositeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            IndexScope::Collection => "collection",
            IndexScope::CollectionGroup => "collection_group",
        };
        writeln!(f, "[[store.indexes.composite]]")?;
        writeln!(f, "collection_group = {:?}", self.collection_group)?;
        writeln!(f, "scope = \"{scope}\"")?;
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|x| {
                format!(
                    "{{ field = {:?}, mode = \"{}\" }}",
                    x.field.canonical(),
                    x.mode.as_str()
                )
            })
            .collect();
        write!(f, "fields = [{}]", fields.join(", "))
    }
}

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"12h"`, `"7d"` or an integer number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use e.g. \"500ms\", \"30s\", \"7d\""))?;
    let secs = |mult: u64| Duration::from_secs(n.saturating_mul(mult));
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        other => Err(format!("unknown duration unit {other:?} in {text:?}")),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Secs(u64),
        Text(String),
    }
    match Option::<Wire>::deserialize(d)? {
        None => Ok(None),
        Some(Wire::Secs(n)) => Ok(Some(Duration::from_secs(n))),
        Some(Wire::Text(t)) if matches!(t.trim(), "off" | "none" | "never") => Ok(None),
        Some(Wire::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_deserializes_from_json_shaped_like_the_toml() {
        let json = serde_json::json!({
            "data_dir": "/tmp/x",
            "durability": {"mode": "relaxed", "flush_interval": "50ms"},
            "retention": {"max_age": "1h", "max_commits": 10},
            "indexes": {"composite": [{"collection_group": "messages", "scope": "collection_group",
                "fields": [{"field": "room"}, {"field": "n", "mode": "desc"}]}],
                "exemptions": [{"collection_group": "messages", "field": "body"}], "allow_scans": true}
        });
        let c: StoreConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            c.durability,
            Durability::Relaxed {
                flush_interval: Duration::from_millis(50)
            }
        );
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.indexes.composite[0].scope, IndexScope::CollectionGroup);
        assert_eq!(c.indexes.composite[0].fields[1].mode, IndexMode::Desc);
        let off: StoreConfig = serde_json::from_value(
            serde_json::json!({"retention": {"max_age": "off", "max_commits": 0}}),
        )
        .unwrap();
        assert_eq!(
            off.retention,
            Retention {
                max_age: None,
                max_commits: None
            }
        );
        let strict: StoreConfig =
            serde_json::from_value(serde_json::json!({"durability": "strict"})).unwrap();
        assert_eq!(strict.durability, Durability::Strict);
    }

    #[test]
    fn index_display_is_a_config_snippet() {
        let idx = CompositeIndex {
            collection_group: "messages".into(),
            scope: IndexScope::Collection,
            fields: vec![
                IndexField {
                    field: FieldPath::parse("room").unwrap(),
                    mode: IndexMode::Asc,
                },
                IndexField {
                    field: FieldPath::parse("n").unwrap(),
                    mode: IndexMode::Desc,
                },
            ],
        };
        let text = idx.to_string();
        assert!(text.contains("collection_group = \"messages\""), "{text}");
        assert!(
            text.contains("{ field = \"n\", mode = \"desc\" }"),
            "{text}"
        );
    }
}
