//! Validation of every frame the server sends against the protocol's JSON
//! Schemas (`sdk-spec/schema/*.json`).
//!
//! Each schema file that pins `properties.type.const` (or a one-value
//! `enum`) validates the frames of that type. A file named like
//! `server-message.json` / `server_message.json` (a `oneOf` over all server
//! frames) is used for types no dedicated file covers. `$ref`s between files
//! resolve relative to the file (`file://` URIs), read from the schema folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value as Json;

/// Loaded validators, by frame type.
pub struct SchemaSet {
    by_type: BTreeMap<String, Arc<Validator>>,
    fallback: Option<Arc<Validator>>,
    pub files: usize,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaSet")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

/// Resolves references by file name from the schema folder: the schemas
/// carry `$id`s on a placeholder host (`https://hearth.invalid/...`), and a
/// `$ref` like `common.json#/$defs/X` resolves against that base, so the
/// last path segment of the URI names the file to read. Nothing is fetched
/// over the network.
struct FolderRetriever {
    root: PathBuf,
}

impl Retrieve for FolderRetriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Json, Box<dyn std::error::Error + Send + Sync>> {
        let text = uri.as_str();
        let without_fragment = text.split('#').next().unwrap_or(text);
        let file = without_fragment.rsplit('/').next().unwrap_or_default();
        if file.is_empty() || file.contains("..") {
            return Err(format!("cannot resolve {text} in the schema folder").into());
        }
        let mut found = None;
        let mut files = Vec::new();
        collect(&self.root, &mut files)?;
        for path in files {
            if path.file_name().and_then(|n| n.to_str()) == Some(file) {
                found = Some(path);
                break;
            }
        }
        let path = found.ok_or_else(|| format!("{text}: no {file} in the schema folder"))?;
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

fn pinned_type(schema: &Json) -> Option<String> {
    let t = schema.get("properties")?.get("type")?;
    if let Some(c) = t.get("const").and_then(Json::as_str) {
        return Some(c.to_string());
    }
    match t.get("enum").and_then(Json::as_array) {
        Some(values) if values.len() == 1 => values[0].as_str().map(str::to_string),
        _ => None,
    }
}

impl SchemaSet {
    /// Loads every `*.json` in `dir` (and its subfolders). Returns `Ok(None)`
    /// when the folder does not exist.
    pub fn load(dir: &Path) -> Result<Option<SchemaSet>, String> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let root = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut files = Vec::new();
        collect(&root, &mut files)?;
        let mut set = SchemaSet {
            by_type: BTreeMap::new(),
            fallback: None,
            files: files.len(),
        };
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let schema: Json = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            let name = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_ascii_lowercase()
                .replace('_', "-");
            let pinned = pinned_type(&schema);
            let is_fallback = name == "server-message" || name == "server-messages";
            if pinned.is_none() && !is_fallback {
                continue;
            }
            let validator = jsonschema::options()
                .with_base_uri(format!("file://{}", file.display()))
                .with_retriever(FolderRetriever { root: root.clone() })
                .build(&schema)
                .map_err(|e| format!("{}: invalid schema: {e}", file.display()))?;
            let validator = Arc::new(validator);
            if let Some(kind) = pinned {
                // Client frames share type names with server frames only for
                // ping/pong, whose shapes agree; the first file wins.
                set.by_type.entry(kind).or_insert(validator);
            } else {
                set.fallback = Some(validator);
            }
        }
        Ok(Some(set))
    }

    /// Checks one server frame; `Err` lists the violations.
    pub fn validate(&self, frame: &Json) -> Result<(), String> {
        let kind = frame.get("type").and_then(Json::as_str).unwrap_or_default();
        let validator = match self.by_type.get(kind).or(self.fallback.as_ref()) {
            Some(v) => v,
            None => return Err(format!("no schema describes frames of type {kind:?}")),
        };
        let errors: Vec<String> = validator
            .iter_errors(frame)
            .take(5)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("frame violates its schema: {}", errors.join("; ")))
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_validated_by_the_schema_pinned_to_their_type() {
        let dir = std::env::temp_dir().join(format!("hearth-schema-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("defs.json"),
            json!({"$defs": {"id": {"type": "integer", "minimum": 0}}}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("pong.json"),
            json!({
                "$id": "https://schemas.invalid/v1/pong.json",
                "type": "object",
                "required": ["type", "id"],
                "properties": {"type": {"const": "pong"}, "id": {"$ref": "defs.json#/$defs/id"}}
            })
            .to_string(),
        )
        .unwrap();
        let set = SchemaSet::load(&dir).unwrap().unwrap();
        assert!(set.validate(&json!({"type": "pong", "id": 3})).is_ok());
        assert!(set.validate(&json!({"type": "pong", "id": -1})).is_err());
        assert!(set.validate(&json!({"type": "pong"})).is_err());
        assert!(set.validate(&json!({"type": "welcome"})).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
