//! The rules file on disk: loading at start and hot reload.
//!
//! At start the server calls [`RulesFile::load`]: a missing file means
//! "deny everything but the admin" (secure by default), a bad file is an
//! error that should stop the server from starting. While it runs,
//! [`RulesFile::watch`] polls the file once a second and swaps in each new
//! version that parses; a version that does not parse is logged (with its
//! line and column) and the old rules stay in force. A deleted file also
//! keeps the old rules: deleting a file is more often an editor's
//! save-by-rename than a wish to lock everyone out.
//!
//! Polling reads the file's content rather than trusting its mtime, whose
//! granularity can hide two saves within the same second; the file is at
//! most 256 KiB, so this costs little.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::access::AccessControl;
use crate::error::RulesError;
use crate::ruleset::Ruleset;

/// A running hot-reload watcher; dropping it (or [`RulesFile::stop`]) stops it.
#[derive(Debug)]
pub struct RulesFile {
    task: tokio::task::JoinHandle<()>,
}

/// How often [`RulesFile::watch`] looks at the file.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

impl RulesFile {
    /// Reads and parses a rules file. A missing file yields
    /// [`Ruleset::deny_all`] with a warning; an unreadable or invalid one an
    /// error naming the file, line and column.
    pub fn load(path: &Path) -> Result<Ruleset, RulesError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ruleset::parse(&text).map_err(|e| e.with_file(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "no rules file: every client request is denied (admin only)");
                Ok(Ruleset::deny_all())
            }
            Err(e) => Err(RulesError::Io {
                file: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Watches `path` and installs each valid new version into `access`.
    /// Must be called inside a tokio runtime.
    pub fn watch(path: impl Into<PathBuf>, access: AccessControl) -> RulesFile {
        RulesFile::watch_every(path, access, DEFAULT_POLL_INTERVAL)
    }

    /// [`RulesFile::watch`] with a chosen polling interval (tests use a short one).
    pub fn watch_every(
        path: impl Into<PathBuf>,
        access: AccessControl,
        interval: Duration,
    ) -> RulesFile {
        let path = path.into();
        // The content the file has now counts as applied (the caller loaded
        // it with `load`); read it before returning, not when the task
        // first runs, so that an edit right after `watch` is not missed.
        let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let bytes = match tokio::fs::read(&path).await {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                if last.as_deref() == Some(&bytes[..]) {
                    continue;
                }
                let parsed = std::str::from_utf8(&bytes)
                    .map_err(|_| RulesError::Io {
                        file: path.display().to_string(),
                        message: "the rules file is not valid UTF-8".into(),
                    })
                    .and_then(|text| {
                        Ruleset::parse(text).map_err(|e| e.with_file(path.display().to_string()))
                    });
                match parsed {
                    Ok(rules) => {
                        access.replace(rules);
                        tracing::info!(path = %path.display(), "rules reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rules file has an error; keeping the previous rules");
                    }
                }
                last = Some(bytes);
            }
        });
        RulesFile { task }
    }

    /// Stops watching.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        self.task.abort();
    }
}
