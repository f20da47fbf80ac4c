//! The `hearth serve` configuration: a TOML file (every key documented in
//! `hearth.example.toml` at the repository root), overridden by `HEARTH_*`
//! environment variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The config file's shape. Unknown keys are an error, so a typo is caught
/// at start instead of being silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_key: Option<String>,
    pub dev: Option<bool>,
    pub log_format: Option<String>,
    /// Security rules file, hot-reloaded on change.
    pub rules: Option<PathBuf>,
    pub http: HttpConfig,
    /// Passed to `hearth_store::StoreConfig` (its `data_dir` is `data`).
    pub store: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub request_timeout_secs: u64,
    pub max_body_bytes: usize,
    pub transaction_ttl_secs: u64,
    pub max_open_transactions: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let defaults = hearth_server::ServerOptions::default();
        HttpConfig {
            request_timeout_secs: defaults.request_timeout.as_secs(),
            max_body_bytes: defaults.max_body_bytes,
            transaction_ttl_secs: defaults.transaction_ttl.as_secs(),
            max_open_transactions: defaults.max_open_transactions,
            shutdown_grace_secs: 10,
        }
    }
}

impl HttpConfig {
    pub fn server_options(&self) -> hearth_server::ServerOptions {
        hearth_server::ServerOptions {
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            max_body_bytes: self.max_body_bytes,
            transaction_ttl: Duration::from_secs(self.transaction_ttl_secs.max(1)),
            max_open_transactions: self.max_open_transactions.max(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The store configuration: the `[store]` table with `data_dir` set.
pub fn store_config(
    file: &FileConfig,
    data_dir: &Path,
) -> Result<hearth_store::StoreConfig, String> {
    let mut config: hearth_store::StoreConfig = match &file.store {
        Some(table) => table
            .clone()
            .try_into()
            .map_err(|e| format!("invalid [store] section: {e}"))?,
        None => hearth_store::StoreConfig::default(),
    };
    config.data_dir = data_dir.to_path_buf();
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hearth.example.toml");
        let config = load(Some(&path)).unwrap();
        store_config(&config, Path::new("/tmp/x")).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        assert!(matches!(load(Some(&path)), Err(ConfigError::Parse { .. })));
    }
}
