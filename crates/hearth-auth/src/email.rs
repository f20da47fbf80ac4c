//! Email address normalization and validation, and the texts of auth mails.
//!
//! Normalization is trim + lowercase of the whole address: two spellings of
//! one mailbox must not make two accounts. Validation is deliberately simple
//! (one `@`, a non-empty local part, a dotted domain, no spaces or control
//! characters, RFC 5321 lengths); the mail sent to the address is the real test.

use crate::error::AuthError;

/// Maximum length of an address (RFC 5321 path limit minus the brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// Trims, lowercases and validates an address.
pub fn normalize_email(raw: &str) -> Result<String, AuthError> {
    let email = raw.trim().to_lowercase();
    let invalid =
        || AuthError::InvalidArgument(format!("{:?} is not a valid email address", truncate(raw)));
    if email.is_empty() || email.len() > MAX_EMAIL_BYTES {
        return Err(invalid());
    }
    if email.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '<' | '>' | '"' | ',' | ';' | '\\' | '(' | ')' | '[' | ']'
            )
    }) {
        return Err(invalid());
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if local.is_empty() || local.len() > 64 || local.starts_with('.') || local.ends_with('.') {
        return Err(invalid());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(invalid());
    }
    Ok(email)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What an email token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailPurpose {
    VerifyEmail,
    PasswordReset,
    EmailChange,
}

impl EmailPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailPurpose::VerifyEmail => "verify-email",
            EmailPurpose::PasswordReset => "password-reset",
            EmailPurpose::EmailChange => "email-change",
        }
    }

    pub fn parse(s: &str) -> Option<EmailPurpose> {
        match s {
            "verify-email" => Some(EmailPurpose::VerifyEmail),
            "password-reset" => Some(EmailPurpose::PasswordReset),
            "email-change" => Some(EmailPurpose::EmailChange),
            _ => None,
        }
    }

    /// Subject and body of the mail. The token appears twice: in the link for
    /// people, and alone on a `Token:` line for programs and tests.
    pub fn compose(self, public_url: &str, token: &str, ttl_minutes: u64) -> (String, String) {
        let link = format!(
            "{}/auth/action?mode={}&token={token}",
            public_url.trim_end_matches('/'),
            self.as_str()
        );
        let (subject, intro) = match self {
            EmailPurpose::VerifyEmail => (
                "Verify your email address",
                "Confirm your email address by opening this link:",
            ),
            EmailPurpose::PasswordReset => (
                "Reset your password",
                "Someone asked to reset the password of your account. If it was you, open this link to choose a new password:",
            ),
            EmailPurpose::EmailChange => (
                "Confirm your new email address",
                "Confirm that this is the new email address of your account by opening this link:",
            ),
        };
        let body = format!(
            "{intro}\n\n{link}\n\nToken: {token}\n\nThe link works once and expires in {ttl_minutes} minutes. If you did not ask for this, ignore this mail.\n"
        );
        (subject.to_string(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@exa mple.com",
            "<ada@example.com>",
            "ada@.example.com",
            "ada@example..com",
            ".ada@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn mail_text_carries_link_and_token_line() {
        let (_, body) = EmailPurpose::PasswordReset.compose("http://x/", "TOK", 60);
        assert!(body.contains("http://x/auth/action?mode=password-reset&token=TOK"));
        assert!(body.contains("\nToken: TOK\n"));
    }
}
