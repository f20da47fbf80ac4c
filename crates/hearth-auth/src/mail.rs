//! Outgoing auth mail: SMTP through `lettre`, or the development outbox.
//!
//! With SMTP configured, mails go to the relay (plain, STARTTLS or implicit
//! TLS). Without it, each mail is stored in the system collection
//! `__outbox_mail__` (listed by `GET /v1/admin/outbox`) and its text, which
//! contains the link and token, is logged at `info`; only in this mode is a
//! token ever logged, because it is how a developer follows the link.
//!
//! Sending runs in a background task (see `AuthService`), so a slow relay
//! never changes a response or its timing.

use std::fmt;

use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{SmtpConfig, SmtpTls};
use crate::error::AuthError;

/// A mail to send.
#[derive(Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// Plain text body. Contains a secret token: never log it outside dev mode.
    pub text: String,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &"<redacted>")
            .finish()
    }
}

/// Where mails go.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
    /// Development outbox; the service stores the mail itself.
    Outbox,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mailer::Smtp { from, .. } => write!(f, "Mailer::Smtp(from {from})"),
            Mailer::Outbox => f.write_str("Mailer::Outbox"),
        }
    }
}

impl Mailer {
    pub fn new(smtp: Option<&SmtpConfig>, from: &str) -> Result<Mailer, AuthError> {
        let Some(smtp) = smtp else {
            return Ok(Mailer::Outbox);
        };
        let from: Mailbox = from
            .parse()
            .map_err(|e| AuthError::InvalidArgument(format!("invalid mail_from {from:?}: {e}")))?;
        let tls_err = |e: lettre::transport::smtp::Error| {
            AuthError::InvalidArgument(format!("SMTP TLS setup for {:?} failed: {e}", smtp.host))
        };
        let mut builder = match smtp.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host).map_err(tls_err)?
            }
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(tls_err)?
            }
        }
        .port(smtp.port)
        .timeout(Some(smtp.timeout));
        if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Mailer::Smtp {
            transport: Box::new(builder.build()),
            from,
        })
    }

    pub fn is_outbox(&self) -> bool {
        matches!(self, Mailer::Outbox)
    }

    /// Sends over SMTP. (The outbox case is handled by the service.)
    pub async fn send_smtp(&self, mail: &Mail) -> Result<(), AuthError> {
        let Mailer::Smtp { transport, from } = self else {
            return Ok(());
        };
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| AuthError::InvalidArgument(format!("invalid recipient: {e}")))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text.clone())
            .map_err(|e| AuthError::Internal(format!("building mail: {e}")))?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| AuthError::Internal(format!("SMTP send failed: {e}")))
    }
}
