//! The admin key: a shared secret that makes a request the admin principal.
//!
//! Taken from configuration (`HEARTH_ADMIN_KEY` or the config file) when set;
//! otherwise generated on first start (32 random bytes, hex) and kept in
//! `<data>/admin.key` with mode 0600, so that restarts keep the same key.
//! Comparison is constant-time; the key is never logged (its `Debug` is
//! redacted).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// File name of the generated key inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Minimum length accepted for a configured key.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

#[derive(Clone)]
pub struct AdminKey(String);

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// Where the key in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminKeySource {
    Configured,
    /// Read from an existing `<data>/admin.key`.
    File(PathBuf),
    /// Generated just now and written to this file: print it once.
    Generated(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    #[error("the admin key must be at least {MIN_ADMIN_KEY_LEN} characters")]
    TooShort,
    #[error("could not read or write the admin key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AdminKey {
    pub fn new(key: impl Into<String>) -> Result<AdminKey, AdminKeyError> {
        let key = key.into().trim().to_string();
        if key.len() < MIN_ADMIN_KEY_LEN {
            return Err(AdminKeyError::TooShort);
        }
        Ok(AdminKey(key))
    }

    /// A fresh key: 32 random bytes, hex-encoded.
    pub fn generate() -> AdminKey {
        AdminKey(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// Constant-time comparison with a presented credential.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The secret itself, for printing once at first start or for a client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The configured key if any, else the one in `<data_dir>/admin.key`,
    /// else a new one written there (0600).
    pub fn load_or_create(
        data_dir: &Path,
        configured: Option<&str>,
    ) -> Result<(AdminKey, AdminKeySource), AdminKeyError> {
        if let Some(key) = configured.filter(|k| !k.trim().is_empty()) {
            return Ok((AdminKey::new(key)?, AdminKeySource::Configured));
        }
        let path = data_dir.join(ADMIN_KEY_FILE);
        let io = |source| AdminKeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((AdminKey::new(text)?, AdminKeySource::File(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let key = AdminKey::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io)?;
        file.write_all(key.0.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok((key, AdminKeySource::Generated(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_stored_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, source) = AdminKey::load_or_create(dir.path(), None).unwrap();
        assert!(matches!(source, AdminKeySource::Generated(_)));
        assert_eq!(key.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ADMIN_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = AdminKey::load_or_create(dir.path(), None).unwrap();
        assert!(matches!(source, AdminKeySource::File(_)));
        assert!(again.matches(key.expose()));
    }

    #[test]
    fn configured_key_wins_and_short_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, source) =
            AdminKey::load_or_create(dir.path(), Some("0123456789abcdef-configured")).unwrap();
        assert_eq!(source, AdminKeySource::Configured);
        assert!(key.matches("0123456789abcdef-configured"));
        assert!(!key.matches("0123456789abcdef-configurec"));
        assert!(!key.matches(""));
        assert!(!dir.path().join(ADMIN_KEY_FILE).exists());
        assert!(matches!(
            AdminKey::load_or_create(dir.path(), Some("short")),
            Err(AdminKeyError::TooShort)
        ));
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let key = AdminKey::new("0123456789abcdef-secret").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
    }
}
