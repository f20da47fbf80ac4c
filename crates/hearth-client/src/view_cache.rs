//! The offline read cache: each subscription's server view kept on disk
//! with the resume token it is at ([`crate::ClientConfig::persistence`],
//! PROTOCOL.md §13, "An offline read cache").
//!
//! ## Why one record per target, renamed into place
//! A subscription made after a restart shows the cached documents at once
//! and resumes from the cached token, so the server sends only what changed
//! since. That is correct only if the documents are exactly the view at
//! that token: a record is therefore the whole view and its token, written
//! to a temporary file and renamed over the old one, so a reader sees one
//! whole record or the previous one, never a mix. Records are not synced:
//! after a crash an older record (or none) is still a correct pair, and a
//! torn one fails to parse and is ignored.
//!
//! A record is found by a hash of the target's canonical JSON (object keys
//! sorted: `serde_json`'s map is ordered) and holds the target itself,
//! which is compared on load, so a hash collision or a foreign file can
//! never serve another query's documents.
//!
//! At most [`MAX_RECORDS`] records are kept; the least recently saved go
//! first.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hearth_protocol::Document;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::persist::{now_ms, storage_error};
use crate::wire::Target;
use crate::ClientError;

/// The subdirectory of the persistence directory that holds the records.
pub(crate) const VIEWS_DIR: &str = "views";

/// How many views are kept.
pub(crate) const MAX_RECORDS: usize = 100;

#[derive(Serialize, Deserialize)]
struct Record {
    target: Target,
    resume: String,
    saved_ms: u64,
    docs: Vec<Document>,
}

/// A cached view: the server's documents at `resume`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachedView {
    pub docs: Vec<Document>,
    pub resume: String,
}

pub(crate) struct ViewCache {
    dir: PathBuf,
    max_records: usize,
}

/// The target as canonical JSON: the key records are found by.
fn canonical(target: &Target) -> String {
    // `serde_json::Value`'s objects are ordered maps, so the keys come out
    // sorted whatever order the target was written in.
    serde_json::to_value(target)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

impl ViewCache {
    /// Uses `<persistence dir>/views`, creating it and removing temporary
    /// files a crash left behind.
    pub(crate) fn open(persistence_dir: &Path) -> Result<ViewCache, ClientError> {
        Self::with_limit(persistence_dir, MAX_RECORDS)
    }

    pub(crate) fn with_limit(
        persistence_dir: &Path,
        max_records: usize,
    ) -> Result<ViewCache, ClientError> {
        let dir = persistence_dir.join(VIEWS_DIR);
        fs::create_dir_all(&dir).map_err(|e| storage_error("cannot create", &dir, e))?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(ViewCache { dir, max_records })
    }

    fn path_of(&self, target: &Target) -> PathBuf {
        let digest = Sha256::digest(canonical(target).as_bytes());
        self.dir
            .join(format!("{}.json", hex::encode(&digest[..16])))
    }

    /// The cached view of `target`, if a whole record for exactly this
    /// target exists.
    pub(crate) fn load(&self, target: &Target) -> Option<CachedView> {
        let path = self.path_of(target);
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<Record>(&bytes) {
            // A token the server would refuse (`invalid-argument`) would end
            // the subscription with an error the application never caused.
            Ok(record)
                if record.target == *target
                    && crate::wire::parse_resume_token(&record.resume).is_some() =>
            {
                Some(CachedView {
                    docs: record.docs,
                    resume: record.resume,
                })
            }
            Ok(_) => {
                tracing::warn!(
                    path = %path.display(),
                    "cached view is for another target or has no valid token; ignored"
                );
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable cached view; ignored");
                None
            }
        }
    }

    /// Stores `docs` at `resume` as `target`'s view, replacing the previous
    /// record in one rename; then drops the oldest records beyond the limit.
    pub(crate) fn save(
        &self,
        target: &Target,
        docs: &[Document],
        resume: &str,
    ) -> Result<(), ClientError> {
        #[derive(Serialize)]
        struct RecordRef<'a> {
            target: &'a Target,
            resume: &'a str,
            saved_ms: u64,
            docs: &'a [Document],
        }
        let path = self.path_of(target);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(&RecordRef {
            target,
            resume,
            saved_ms: now_ms(),
            docs,
        })
        .map_err(|e| storage_error("cannot encode a view for", &path, e))?;
        fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| storage_error("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| storage_error("cannot replace", &path, e))?;
        self.evict();
        Ok(())
    }

    /// Forgets `target`'s view (the server refused the subscription).
    pub(crate) fn remove(&self, target: &Target) {
        let _ = fs::remove_file(self.path_of(target));
    }

    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut records: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if records.len() <= self.max_records {
            return;
        }
        records.sort();
        let excess = records.len() - self.max_records;
        for (_, path) in records.into_iter().take(excess) {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hearth_protocol::{DocPath, Map, Query, Timestamp, Value};

    fn doc(path: &str, n: i64) -> Document {
        let mut fields = Map::new();
        fields.insert("n".into(), Value::Integer(n));
        Document {
            path: DocPath::parse(path).unwrap(),
            fields,
            create_time: Timestamp::now(),
            update_time: Timestamp::now(),
            version: 7,
        }
    }

    fn query(json: &str) -> Target {
        Target::Query(serde_json::from_str::<Query>(json).unwrap())
    }

    #[test]
    fn a_saved_view_loads_for_the_same_target_whatever_its_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewCache::open(dir.path()).unwrap();
        let a = query(r#"{"collection": "c", "order_by": [{"field": "n", "direction": "asc"}]}"#);
        let same =
            query(r#"{"order_by": [{"direction": "asc", "field": "n"}], "collection": "c"}"#);
        let docs = vec![doc("c/a", 1), doc("c/b", 2)];
        cache.save(&a, &docs, "p42").unwrap();
        let reopened = ViewCache::open(dir.path()).unwrap();
        assert_eq!(
            reopened.load(&same),
            Some(CachedView {
                docs,
                resume: "p42".into()
            })
        );
    }

    #[test]
    fn another_target_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewCache::open(dir.path()).unwrap();
        cache
            .save(&query(r#"{"collection": "c"}"#), &[doc("c/a", 1)], "p1")
            .unwrap();
        assert_eq!(cache.load(&query(r#"{"collection": "d"}"#)), None);
        let doc_target = Target::Doc(DocPath::parse("c/a").unwrap());
        assert_eq!(cache.load(&doc_target), None);
    }

    #[test]
    fn a_torn_record_one_for_another_target_or_one_with_a_bad_token_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewCache::open(dir.path()).unwrap();
        let c = query(r#"{"collection": "c"}"#);
        let d = query(r#"{"collection": "d"}"#);
        cache.save(&c, &[doc("c/a", 1)], "p1").unwrap();
        let path = cache.path_of(&c);
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        assert_eq!(cache.load(&c), None, "a torn record");
        // A record for `d` sitting where `c`'s would be (a collision).
        cache.save(&d, &[doc("d/x", 1)], "p2").unwrap();
        fs::copy(cache.path_of(&d), &path).unwrap();
        assert_eq!(cache.load(&c), None, "a record for another target");
        cache.save(&c, &[doc("c/a", 1)], "not-a-token").unwrap();
        assert_eq!(
            cache.load(&c),
            None,
            "a record whose token the server would refuse"
        );
    }

    #[test]
    fn only_the_most_recently_saved_records_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewCache::with_limit(dir.path(), 3).unwrap();
        let targets: Vec<Target> = (0..5)
            .map(|i| query(&format!(r#"{{"collection": "c{i}"}}"#)))
            .collect();
        for (i, t) in targets.iter().enumerate() {
            cache.save(t, &[], &format!("p{i}")).unwrap();
            // Distinct modification times, whatever the file system's resolution.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<bool> = targets.iter().map(|t| cache.load(t).is_some()).collect();
        assert_eq!(kept, [false, false, true, true, true]);
    }

    #[test]
    fn a_removed_view_is_gone_and_leftover_temporary_files_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ViewCache::open(dir.path()).unwrap();
        let c = query(r#"{"collection": "c"}"#);
        cache.save(&c, &[doc("c/a", 1)], "p1").unwrap();
        cache.remove(&c);
        assert_eq!(cache.load(&c), None);
        let stray = dir.path().join(VIEWS_DIR).join("abc.tmp");
        fs::write(&stray, b"half").unwrap();
        ViewCache::open(dir.path()).unwrap();
        assert!(!stray.exists());
    }
}
