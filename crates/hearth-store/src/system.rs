//! System collections: where Hearth's own services keep their state.
//!
//! Users, sessions, refresh tokens, signing keys, devices, the push outbox,
//! function cursors and idempotent-mutation records are ordinary documents in
//! collections whose ids look like `__name__`. They go through the same commit
//! path and changelog as user data, so export, backup and a future engine
//! cover them. Only the admin principal may reach them from outside (the
//! rules crate enforces that); this module only names them.

use hearth_protocol::{CollectionPath, DocPath, PathError};

pub const USERS: &str = "__users__";
pub const SESSIONS: &str = "__sessions__";
pub const REFRESH_TOKENS: &str = "__refresh_tokens__";
pub const EMAIL_TOKENS: &str = "__email_tokens__";
pub const KEYS: &str = "__keys__";
pub const DEVICES: &str = "__devices__";
pub const OUTBOX: &str = "__outbox__";
pub const CURSORS: &str = "__cursors__";
pub const MUTATIONS: &str = "__mutations__";

/// Every system collection id.
pub const ALL: [&str; 9] = [
    USERS,
    SESSIONS,
    REFRESH_TOKENS,
    EMAIL_TOKENS,
    KEYS,
    DEVICES,
    OUTBOX,
    CURSORS,
    MUTATIONS,
];

/// The top-level system collection `id` (e.g. [`USERS`]).
pub fn collection(id: &str) -> Result<CollectionPath, PathError> {
    CollectionPath::parse(id)
}

/// The document `doc_id` in the top-level system collection `id`.
pub fn doc(id: &str, doc_id: &str) -> Result<DocPath, PathError> {
    CollectionPath::parse(id)?.doc(doc_id)
}

/// True for a path inside any system collection (at any depth).
pub fn is_system(path: &DocPath) -> bool {
    path.is_system()
}

/// The only top-level fields of documents in system collections (collection
/// id `__name__`) that get automatic single-field indexes: the fields
/// Hearth's services query on (sessions and refresh tokens by `uid`, users
/// by `email` and `disabled`, revoked sessions, expiry sweeps, the outbox by
/// time). Every other field of a system document — password hashes,
/// refresh-token hashes, private keys, mail bodies — is kept out of the
/// indexes, so no secret is copied into index keys. A query on another
/// field of a system collection needs a declared composite index, as for an
/// exempted field.
pub const INDEXED_FIELDS: [&str; 6] = [
    "uid",
    "email",
    "disabled",
    "revoked",
    "expires_at",
    "created_at",
];

/// True when the field (its path segments) of a document in the collection
/// `collection_id` has no automatic single-field index because it is a
/// system collection's field outside [`INDEXED_FIELDS`]. The committer and
/// the query planner both ask this, so they agree.
pub fn field_is_unindexed(collection_id: &str, segments: &[String]) -> bool {
    hearth_protocol::path::is_reserved_id(collection_id)
        && !segments
            .first()
            .is_some_and(|top| INDEXED_FIELDS.contains(&top.as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_queried_fields_of_system_collections_are_indexed() {
        let f = |s: &str| vec![s.to_string()];
        assert!(field_is_unindexed(USERS, &f("password_hash")));
        assert!(field_is_unindexed(SESSIONS, &f("refresh_hash")));
        assert!(field_is_unindexed(KEYS, &f("pkcs8")));
        assert!(!field_is_unindexed(USERS, &f("email")));
        assert!(!field_is_unindexed(SESSIONS, &f("uid")));
        assert!(!field_is_unindexed("rooms", &f("password_hash")));
    }

    #[test]
    fn system_paths_are_reserved_ids() {
        for id in ALL {
            let d = doc(id, "x").unwrap();
            assert!(is_system(&d), "{id}");
            assert_eq!(collection(id).unwrap().id(), id);
        }
    }
}
