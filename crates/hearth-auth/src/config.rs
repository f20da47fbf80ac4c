//! Configuration of the auth service. Every field has a safe default so that
//! `AuthConfig::default()` runs a development server; the `hearth` binary maps
//! its TOML file and `HEARTH_*` variables onto this struct.
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` prints `<redacted>`, so
//! that logging a config never leaks an SMTP password.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret value; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `iss` of issued tokens; verification requires exactly this value.
    pub issuer: String,
    /// `aud` of issued tokens; verification requires exactly this value.
    pub audience: String,
    /// Lifetime of access tokens (default 1 h).
    pub access_token_ttl: Duration,
    /// Idle lifetime of a session: each refresh token expires this long after
    /// it was issued, and every refresh issues a new one (default 30 days).
    pub refresh_token_ttl: Duration,
    /// Tolerated clock skew when checking `exp`/`iat` (default 30 s).
    pub clock_skew: Duration,
    /// Generate a new signing key this often; `None` rotates only via the admin endpoint.
    pub key_rotation_interval: Option<Duration>,
    pub password: PasswordConfig,
    pub rate_limits: RateLimitConfig,
    /// Lifetime of verification, reset and email-change tokens (default 1 h).
    pub email_token_ttl: Duration,
    /// `None`: mails go to the dev outbox (`__outbox_mail__`) and the log.
    pub smtp: Option<SmtpConfig>,
    /// Sender address of auth mails.
    pub mail_from: String,
    /// Base URL put in front of links in mails, e.g. `https://app.example.com`.
    /// The link is `{base}/auth/action?mode=verify-email&token=...`.
    pub public_url: String,
    /// Use the first `X-Forwarded-For` address as the client IP for rate
    /// limiting. Enable only behind a trusted reverse proxy.
    pub trust_forwarded_for: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "hearth".into(),
            audience: "hearth".into(),
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            clock_skew: Duration::from_secs(30),
            key_rotation_interval: None,
            password: PasswordConfig::default(),
            rate_limits: RateLimitConfig::default(),
            email_token_ttl: Duration::from_secs(3600),
            smtp: None,
            mail_from: "Hearth <no-reply@localhost>".into(),
            public_url: "http://127.0.0.1:8080".into(),
            trust_forwarded_for: false,
        }
    }
}

/// argon2id parameters and the password policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordConfig {
    /// Memory cost in KiB (default 19456 = 19 MiB, OWASP's minimum).
    pub memory_kib: u32,
    /// Iterations (default 2).
    pub iterations: u32,
    /// Lanes (default 1).
    pub parallelism: u32,
    /// Concurrent hashes allowed on the blocking pool (default 1). Bounds the
    /// CPU and memory a storm of sign-ins can take from the realtime path.
    pub max_concurrent_hashes: usize,
    /// Minimum password length in characters (default 8).
    pub min_length: usize,
}

/// Maximum password length in bytes: longer inputs are refused before hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
            max_concurrent_hashes: 1,
            min_length: 8,
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `burst` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub period: Duration,
}

impl Rate {
    pub const fn new(burst: u32, period: Duration) -> Rate {
        Rate { burst, period }
    }
}

/// Limits per client IP and per account (normalized email or uid). `None`
/// disables a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub signup_per_ip: Option<Rate>,
    pub login_per_ip: Option<Rate>,
    pub login_per_account: Option<Rate>,
    pub reset_per_ip: Option<Rate>,
    pub reset_per_account: Option<Rate>,
    pub refresh_per_ip: Option<Rate>,
    pub refresh_per_account: Option<Rate>,
    pub anonymous_per_ip: Option<Rate>,
    /// Other mail-sending endpoints (verification, email change), per account.
    pub email_per_account: Option<Rate>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        RateLimitConfig {
            signup_per_ip: Some(Rate::new(20, hour)),
            login_per_ip: Some(Rate::new(60, minute)),
            login_per_account: Some(Rate::new(10, minute)),
            reset_per_ip: Some(Rate::new(10, hour)),
            reset_per_account: Some(Rate::new(3, hour)),
            refresh_per_ip: Some(Rate::new(300, minute)),
            refresh_per_account: Some(Rate::new(30, minute)),
            anonymous_per_ip: Some(Rate::new(30, hour)),
            email_per_account: Some(Rate::new(5, hour)),
        }
    }
}

impl RateLimitConfig {
    /// No limits at all (tests and benchmarks).
    pub fn disabled() -> Self {
        RateLimitConfig {
            signup_per_ip: None,
            login_per_ip: None,
            login_per_account: None,
            reset_per_ip: None,
            reset_per_account: None,
            refresh_per_ip: None,
            refresh_per_account: None,
            anonymous_per_ip: None,
            email_per_account: None,
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text. Only for a relay on loopback or a trusted network.
    #[default]
    None,
    /// STARTTLS upgrade (usually port 587), rustls with the webpki roots.
    Starttls,
    /// Implicit TLS (usually port 465), rustls with the webpki roots.
    Tls,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: SmtpTls,
    /// Connection and command timeout.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let smtp = SmtpConfig {
            host: "mail".into(),
            port: 25,
            username: Some("u".into()),
            password: Some(Secret::new("hunter2")),
            tls: SmtpTls::None,
            timeout: Duration::from_secs(1),
        };
        let text = format!("{smtp:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn default_argon2_parameters_meet_owasp_minimum() {
        let p = PasswordConfig::default();
        assert!(p.memory_kib >= 19456 && p.iterations >= 2 && p.parallelism >= 1);
    }
}
