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
    /// Mapped onto `hearth_auth::AuthConfig`.
    pub auth: AuthSection,
    /// Mapped onto `hearth_gateway::GatewayConfig`.
    pub gateway: GatewaySection,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub request_timeout_secs: u64,
    pub max_body_bytes: usize,
    pub transaction_ttl_secs: u64,
    pub max_open_transactions: usize,
    pub shutdown_grace_secs: u64,
    /// Cross-origin access for browser apps (`[http.cors]`).
    pub cors: CorsConfig,
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
            cors: CorsConfig::default(),
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

/// `[http.cors]`: which browser origins may call the REST and auth API.
///
/// Empty (the default) sends no CORS headers, so browsers allow only
/// same-origin pages. `["*"]` allows every origin: safe for Hearth because
/// credentials travel in the `Authorization` header (a bearer token), never
/// in cookies, so a foreign page cannot borrow a visitor's session.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`), or the single entry `"*"`.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(3600),
        }
    }
}

impl CorsConfig {
    /// The origins, validated: `None` for "any origin" (`"*"`), otherwise
    /// the exact list. Errors name the offending entry.
    pub fn origins(&self) -> Result<Option<Vec<String>>, String> {
        if self.allowed_origins.iter().any(|o| o == "*") {
            if self.allowed_origins.len() > 1 {
                return Err(
                    "[http.cors] allowed_origins: \"*\" allows every origin; list it alone".into(),
                );
            }
            return Ok(None);
        }
        for origin in &self.allowed_origins {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let valid = match rest {
                Some(host) => {
                    !host.is_empty()
                        && !host.contains('/')
                        && host.chars().all(|c| c.is_ascii_graphic())
                }
                None => false,
            };
            if !valid {
                return Err(format!(
                    "[http.cors] allowed_origins: {origin:?} is not an origin; \
                     write scheme://host[:port] without a path, e.g. \"http://127.0.0.1:8000\""
                ));
            }
        }
        Ok(Some(self.allowed_origins.clone()))
    }
}

/// Deserializes a duration written as `"500ms"`, `"30s"`, `"15m"`, `"12h"`,
/// `"7d"` or an integer number of seconds (the store's parser, so every
/// duration in the file reads the same).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match DurationText::deserialize(d)? {
        DurationText::Secs(n) => Ok(Duration::from_secs(n)),
        DurationText::Text(t) => {
            hearth_store::config::parse_duration(&t).map_err(serde::de::Error::custom)
        }
    }
}

/// Like [`duration`], and `"off"` (or `"none"`, `"never"`) for `None`.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match DurationText::deserialize(d)? {
        DurationText::Secs(n) => Ok(Some(Duration::from_secs(n))),
        DurationText::Text(t) if is_off(&t) => Ok(None),
        DurationText::Text(t) => hearth_store::config::parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Secs(u64),
    Text(String),
}

fn is_off(text: &str) -> bool {
    matches!(text.trim(), "off" | "none" | "never")
}

/// `[auth]`: the TOML face of `hearth_auth::AuthConfig`. Defaults come from
/// `AuthConfig::default()`, so they live in one place.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub issuer: String,
    pub audience: String,
    #[serde(deserialize_with = "duration")]
    pub access_token_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub refresh_token_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub clock_skew: Duration,
    #[serde(deserialize_with = "optional_duration")]
    pub key_rotation_interval: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub email_token_ttl: Duration,
    pub mail_from: String,
    pub public_url: String,
    pub trust_forwarded_for: bool,
    pub password: PasswordSection,
    pub rate_limits: RateLimitSection,
    /// Absent: mails go to the development outbox (admin API and log).
    pub smtp: Option<SmtpSection>,
}

impl Default for AuthSection {
    fn default() -> Self {
        let d = hearth_auth::AuthConfig::default();
        AuthSection {
            issuer: d.issuer,
            audience: d.audience,
            access_token_ttl: d.access_token_ttl,
            refresh_token_ttl: d.refresh_token_ttl,
            clock_skew: d.clock_skew,
            key_rotation_interval: d.key_rotation_interval,
            email_token_ttl: d.email_token_ttl,
            mail_from: d.mail_from,
            public_url: d.public_url,
            trust_forwarded_for: d.trust_forwarded_for,
            password: PasswordSection::default(),
            rate_limits: RateLimitSection::default(),
            smtp: None,
        }
    }
}

/// `[auth.password]`: argon2id parameters and the password policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordSection {
    pub min_length: usize,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub max_concurrent_hashes: usize,
}

impl Default for PasswordSection {
    fn default() -> Self {
        let d = hearth_auth::PasswordConfig::default();
        PasswordSection {
            min_length: d.min_length,
            memory_kib: d.memory_kib,
            iterations: d.iterations,
            parallelism: d.parallelism,
            max_concurrent_hashes: d.max_concurrent_hashes,
        }
    }
}

/// `[auth.rate_limits]`: each limit is `"<burst>/<period>"` (e.g. `"10/1m"`:
/// 10 at once, refilled at 10 per minute) or `"off"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSection {
    #[serde(deserialize_with = "rate")]
    pub signup_per_ip: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub login_per_ip: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub login_per_account: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub reset_per_ip: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub reset_per_account: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub refresh_per_ip: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub refresh_per_account: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub anonymous_per_ip: Option<hearth_auth::Rate>,
    #[serde(deserialize_with = "rate")]
    pub email_per_account: Option<hearth_auth::Rate>,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        let d = hearth_auth::RateLimitConfig::default();
        RateLimitSection {
            signup_per_ip: d.signup_per_ip,
            login_per_ip: d.login_per_ip,
            login_per_account: d.login_per_account,
            reset_per_ip: d.reset_per_ip,
            reset_per_account: d.reset_per_account,
            refresh_per_ip: d.refresh_per_ip,
            refresh_per_account: d.refresh_per_account,
            anonymous_per_ip: d.anonymous_per_ip,
            email_per_account: d.email_per_account,
        }
    }
}

/// Parses `"<burst>/<period>"` or `"off"`.
pub fn parse_rate(text: &str) -> Result<Option<hearth_auth::Rate>, String> {
    if is_off(text) {
        return Ok(None);
    }
    let usage =
        || format!("invalid rate {text:?}: write \"<burst>/<period>\" like \"10/1m\", or \"off\"");
    let (burst, period) = text.split_once('/').ok_or_else(usage)?;
    let burst: u32 = burst.trim().parse().map_err(|_| usage())?;
    let period =
        hearth_store::config::parse_duration(period).map_err(|e| format!("{}: {e}", usage()))?;
    if burst == 0 || period.is_zero() {
        return Err(format!("{}; use \"off\" to disable a limit", usage()));
    }
    Ok(Some(hearth_auth::Rate::new(burst, period)))
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<hearth_auth::Rate>, D::Error> {
    parse_rate(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// `[auth.smtp]`: where auth mails (verification, reset, email change) go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    #[serde(default = "SmtpSection::default_port")]
    pub port: u16,
    /// `"none"` (plain, loopback relays only), `"starttls"` or `"tls"`.
    #[serde(default)]
    pub tls: hearth_auth::SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    /// Redacted in `Debug`; `HEARTH_SMTP_PASSWORD` overrides it.
    #[serde(default)]
    pub password: Option<hearth_auth::Secret>,
    #[serde(
        default = "SmtpSection::default_timeout",
        deserialize_with = "duration"
    )]
    pub timeout: Duration,
}

impl SmtpSection {
    fn default_port() -> u16 {
        587
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

impl AuthSection {
    /// The auth service's configuration. `smtp_password_env` (the value of
    /// `HEARTH_SMTP_PASSWORD`, if set) replaces the file's SMTP password.
    pub fn auth_config(
        &self,
        smtp_password_env: Option<String>,
    ) -> Result<hearth_auth::AuthConfig, String> {
        let p = &self.password;
        if p.min_length == 0 {
            return Err("[auth.password] min_length must be at least 1".into());
        }
        if p.memory_kib < 8 * p.parallelism.max(1) || p.iterations == 0 || p.parallelism == 0 {
            return Err(
                "[auth.password] argon2 needs iterations >= 1, parallelism >= 1 and memory_kib >= 8 x parallelism"
                    .into(),
            );
        }
        if p.max_concurrent_hashes == 0 {
            return Err("[auth.password] max_concurrent_hashes must be at least 1".into());
        }
        if self.access_token_ttl.is_zero() || self.refresh_token_ttl.is_zero() {
            return Err("[auth] token lifetimes must be longer than zero".into());
        }
        if self.key_rotation_interval.is_some_and(|i| i.is_zero()) {
            return Err("[auth] key_rotation_interval must be longer than zero, or \"off\"".into());
        }
        let smtp = match &self.smtp {
            None => None,
            Some(s) => {
                if s.host.trim().is_empty() {
                    return Err("[auth.smtp] host must not be empty".into());
                }
                let password = smtp_password_env
                    .map(hearth_auth::Secret::new)
                    .or_else(|| s.password.clone());
                if password.is_some() && s.username.is_none() {
                    return Err("[auth.smtp] a password needs a username".into());
                }
                Some(hearth_auth::SmtpConfig {
                    host: s.host.clone(),
                    port: s.port,
                    username: s.username.clone(),
                    password,
                    tls: s.tls,
                    timeout: s.timeout,
                })
            }
        };
        let r = &self.rate_limits;
        // Struct update from the defaults even where every field is listed
        // today: a field hearth-auth adds later keeps its default until the
        // file learns it, instead of breaking this build.
        #[allow(clippy::needless_update)]
        let config = hearth_auth::AuthConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
            clock_skew: self.clock_skew,
            key_rotation_interval: self.key_rotation_interval,
            email_token_ttl: self.email_token_ttl,
            mail_from: self.mail_from.clone(),
            public_url: self.public_url.clone(),
            trust_forwarded_for: self.trust_forwarded_for,
            password: hearth_auth::PasswordConfig {
                min_length: p.min_length,
                memory_kib: p.memory_kib,
                iterations: p.iterations,
                parallelism: p.parallelism,
                max_concurrent_hashes: p.max_concurrent_hashes,
                ..hearth_auth::PasswordConfig::default()
            },
            rate_limits: hearth_auth::RateLimitConfig {
                signup_per_ip: r.signup_per_ip,
                login_per_ip: r.login_per_ip,
                login_per_account: r.login_per_account,
                reset_per_ip: r.reset_per_ip,
                reset_per_account: r.reset_per_account,
                refresh_per_ip: r.refresh_per_ip,
                refresh_per_account: r.refresh_per_account,
                anonymous_per_ip: r.anonymous_per_ip,
                email_per_account: r.email_per_account,
                ..hearth_auth::RateLimitConfig::default()
            },
            smtp,
            ..hearth_auth::AuthConfig::default()
        };
        Ok(config)
    }
}

/// `[gateway]`: the TOML face of `hearth_gateway::GatewayConfig` (defaults
/// from `GatewayConfig::default()`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub hello_timeout: Duration,
    pub max_connections: usize,
    pub max_subscriptions: u32,
    pub max_frame_bytes: u32,
    pub max_inflight_writes: u32,
    pub max_pending_events: u32,
    pub max_queued_bytes: u64,
    pub resume_max_commits: usize,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let d = hearth_gateway::GatewayConfig::default();
        GatewaySection {
            heartbeat: d.heartbeat,
            idle_timeout: d.idle_timeout,
            hello_timeout: d.hello_timeout,
            max_connections: d.max_connections,
            max_subscriptions: d.max_subscriptions,
            max_frame_bytes: d.max_frame_bytes,
            max_inflight_writes: d.max_inflight_writes,
            max_pending_events: d.max_pending_events,
            max_queued_bytes: d.max_queued_bytes,
            resume_max_commits: d.resume_max_commits,
        }
    }
}

impl GatewaySection {
    /// The gateway's configuration, with the limits checked for sense.
    pub fn gateway_config(&self) -> Result<hearth_gateway::GatewayConfig, String> {
        if self.heartbeat.is_zero() || self.hello_timeout.is_zero() {
            return Err("[gateway] heartbeat and hello_timeout must be longer than zero".into());
        }
        if self.idle_timeout <= self.heartbeat {
            return Err(format!(
                "[gateway] idle_timeout ({:?}) must be longer than heartbeat ({:?}), \
                 or clients that only answer pings are closed as idle",
                self.idle_timeout, self.heartbeat
            ));
        }
        for (name, value) in [
            ("max_connections", self.max_connections as u64),
            ("max_subscriptions", u64::from(self.max_subscriptions)),
            ("max_frame_bytes", u64::from(self.max_frame_bytes)),
            ("max_inflight_writes", u64::from(self.max_inflight_writes)),
            ("max_pending_events", u64::from(self.max_pending_events)),
            ("max_queued_bytes", self.max_queued_bytes),
            ("resume_max_commits", self.resume_max_commits as u64),
        ] {
            if value == 0 {
                return Err(format!("[gateway] {name} must be at least 1"));
            }
        }
        Ok(hearth_gateway::GatewayConfig {
            heartbeat: self.heartbeat,
            idle_timeout: self.idle_timeout,
            hello_timeout: self.hello_timeout,
            max_connections: self.max_connections,
            max_subscriptions: self.max_subscriptions,
            max_frame_bytes: self.max_frame_bytes,
            max_inflight_writes: self.max_inflight_writes,
            max_pending_events: self.max_pending_events,
            max_queued_bytes: self.max_queued_bytes,
            resume_max_commits: self.resume_max_commits,
            ..hearth_gateway::GatewayConfig::default()
        })
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

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path))
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hearth.example.toml");
        let config = load(Some(&path)).unwrap();
        store_config(&config, Path::new("/tmp/x")).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn the_example_config_states_the_real_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hearth.example.toml");
        let config = load(Some(&path)).unwrap();
        let auth = config.auth.auth_config(None).unwrap();
        let d = hearth_auth::AuthConfig::default();
        assert_eq!(auth.issuer, d.issuer);
        assert_eq!(auth.audience, d.audience);
        assert_eq!(auth.access_token_ttl, d.access_token_ttl);
        assert_eq!(auth.refresh_token_ttl, d.refresh_token_ttl);
        assert_eq!(auth.clock_skew, d.clock_skew);
        assert_eq!(auth.key_rotation_interval, d.key_rotation_interval);
        assert_eq!(auth.email_token_ttl, d.email_token_ttl);
        assert_eq!(auth.mail_from, d.mail_from);
        assert_eq!(auth.public_url, d.public_url);
        assert_eq!(auth.trust_forwarded_for, d.trust_forwarded_for);
        assert_eq!(auth.password, d.password);
        assert_eq!(auth.rate_limits, d.rate_limits);
        assert!(auth.smtp.is_none());

        let gateway = config.gateway.gateway_config().unwrap();
        let g = hearth_gateway::GatewayConfig::default();
        assert_eq!(gateway.heartbeat, g.heartbeat);
        assert_eq!(gateway.idle_timeout, g.idle_timeout);
        assert_eq!(gateway.hello_timeout, g.hello_timeout);
        assert_eq!(gateway.max_connections, g.max_connections);
        assert_eq!(gateway.max_subscriptions, g.max_subscriptions);
        assert_eq!(gateway.max_frame_bytes, g.max_frame_bytes);
        assert_eq!(gateway.max_inflight_writes, g.max_inflight_writes);
        assert_eq!(gateway.max_pending_events, g.max_pending_events);
        assert_eq!(gateway.max_queued_bytes, g.max_queued_bytes);
        assert_eq!(gateway.resume_max_commits, g.resume_max_commits);

        assert_eq!(config.http.cors.origins().unwrap(), Some(vec![]));
        assert_eq!(config.http.cors.max_age, CorsConfig::default().max_age);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(matches!(
            parse("lisen = \"127.0.0.1:1\"\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn an_unknown_key_in_a_section_is_named_in_the_error() {
        for (text, key) in [
            ("[auth]\naccess_ttl = \"1h\"\n", "access_ttl"),
            ("[auth.password]\nminlength = 3\n", "minlength"),
            ("[auth.smtp]\nhost = \"x\"\npasword = \"p\"\n", "pasword"),
            ("[gateway]\nheartbeat_ms = 5\n", "heartbeat_ms"),
            ("[http.cors]\norigins = []\n", "origins"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(key), "{text}: {message}");
        }
    }

    #[test]
    fn auth_section_maps_durations_rates_policy_and_smtp() {
        let config = parse(
            r#"
[auth]
issuer = "https://auth.example.com"
access_token_ttl = "15m"
refresh_token_ttl = "7d"
key_rotation_interval = "30d"
email_token_ttl = 600
[auth.password]
min_length = 12
memory_kib = 65536
[auth.rate_limits]
login_per_ip = "5/30s"
signup_per_ip = "off"
[auth.smtp]
host = "mail.example.com"
port = 465
tls = "tls"
username = "hearth"
password = "hunter2-smtp"
"#,
        )
        .unwrap();
        let auth = config.auth.auth_config(None).unwrap();
        assert_eq!(auth.issuer, "https://auth.example.com");
        assert_eq!(auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(auth.refresh_token_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(
            auth.key_rotation_interval,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(auth.email_token_ttl, Duration::from_secs(600));
        assert_eq!(auth.password.min_length, 12);
        assert_eq!(auth.password.memory_kib, 65536);
        assert_eq!(auth.password.iterations, 2, "unset keys keep their default");
        assert_eq!(
            auth.rate_limits.login_per_ip,
            Some(hearth_auth::Rate::new(5, Duration::from_secs(30)))
        );
        assert_eq!(auth.rate_limits.signup_per_ip, None);
        let smtp = auth.smtp.unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example.com", 465));
        assert_eq!(smtp.tls, hearth_auth::SmtpTls::Tls);
        assert_eq!(smtp.password.unwrap().expose(), "hunter2-smtp");
    }

    #[test]
    fn the_smtp_password_never_shows_in_debug_output() {
        let config =
            parse("[auth.smtp]\nhost = \"m\"\nusername = \"u\"\npassword = \"hunter2-smtp\"\n")
                .unwrap();
        let file_debug = format!("{config:?}");
        let auth_debug = format!("{:?}", config.auth.auth_config(None).unwrap());
        for text in [file_debug, auth_debug] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn the_smtp_password_from_the_environment_wins() {
        let config =
            parse("[auth.smtp]\nhost = \"m\"\nusername = \"u\"\npassword = \"file\"\n").unwrap();
        let auth = config.auth.auth_config(Some("env".into())).unwrap();
        assert_eq!(auth.smtp.unwrap().password.unwrap().expose(), "env");
    }

    #[test]
    fn nonsense_values_are_refused_with_the_key_named() {
        for (text, needle) in [
            ("[auth]\naccess_token_ttl = \"1 fortnight\"\n", "fortnight"),
            ("[auth.rate_limits]\nlogin_per_ip = \"many\"\n", "many"),
            ("[auth.rate_limits]\nlogin_per_ip = \"0/1m\"\n", "off"),
        ] {
            let message = match parse(text) {
                Err(e) => e.to_string(),
                Ok(c) => c.auth.auth_config(None).unwrap_err(),
            };
            assert!(message.contains(needle), "{text}: {message}");
        }
        let weak = parse("[auth.password]\nmin_length = 0\n").unwrap();
        assert!(weak
            .auth
            .auth_config(None)
            .unwrap_err()
            .contains("min_length"));
        let no_user = parse("[auth.smtp]\nhost = \"m\"\npassword = \"p\"\n").unwrap();
        assert!(no_user
            .auth
            .auth_config(None)
            .unwrap_err()
            .contains("username"));
    }

    #[test]
    fn gateway_section_maps_onto_the_gateway_config() {
        let config = parse(
            "[gateway]\nheartbeat = \"300ms\"\nidle_timeout = \"1500ms\"\nmax_subscriptions = 3\nmax_queued_bytes = 1024\n",
        )
        .unwrap();
        let gateway = config.gateway.gateway_config().unwrap();
        assert_eq!(gateway.heartbeat, Duration::from_millis(300));
        assert_eq!(gateway.idle_timeout, Duration::from_millis(1500));
        assert_eq!(gateway.max_subscriptions, 3);
        assert_eq!(gateway.max_queued_bytes, 1024);
        assert_eq!(
            gateway.max_frame_bytes,
            hearth_gateway::GatewayConfig::default().max_frame_bytes
        );
    }

    #[test]
    fn gateway_idle_timeout_must_exceed_the_heartbeat() {
        let config = parse("[gateway]\nheartbeat = \"2s\"\nidle_timeout = \"2s\"\n").unwrap();
        assert!(config
            .gateway
            .gateway_config()
            .unwrap_err()
            .contains("idle_timeout"));
        let zero = parse("[gateway]\nmax_subscriptions = 0\n").unwrap();
        assert!(zero
            .gateway
            .gateway_config()
            .unwrap_err()
            .contains("max_subscriptions"));
    }

    #[test]
    fn cors_origins_are_exact_origins_or_a_lone_star() {
        let cors = |list: &[&str]| CorsConfig {
            allowed_origins: list.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        };
        assert_eq!(cors(&["*"]).origins().unwrap(), None);
        assert_eq!(
            cors(&["http://127.0.0.1:8000", "https://app.example.com"])
                .origins()
                .unwrap()
                .map(|l| l.len()),
            Some(2)
        );
        assert!(cors(&["*", "http://a.example"]).origins().is_err());
        assert!(cors(&["127.0.0.1:8000"]).origins().is_err());
        assert!(cors(&["http://a.example/app"]).origins().is_err());
    }
}
