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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_are_reserved_ids() {
        for id in ALL {
            let d = doc(id, "x").unwrap();
            assert!(is_system(&d), "{id}");
            assert_eq!(collection(id).unwrap().id(), id);
        }
    }
}
