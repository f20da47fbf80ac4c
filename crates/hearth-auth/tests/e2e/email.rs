//! Email flows against a real SMTP server (Python's aiosmtpd on loopback,
//! writing each received mail to a Maildir), and the dev outbox.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hearth_auth::{SmtpConfig, SmtpTls};
use serde_json::json;

use crate::common::{assert_error, start, test_config, token, within, TestServer, ADMIN_KEY};

/// A running aiosmtpd; killed on drop.
struct SmtpServer {
    port: u16,
    maildir: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts aiosmtpd, or returns None (with a loud message) when python3 is missing.
async fn smtp_server() -> Option<SmtpServer> {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n!!!!!!!!!! SKIPPED SMTP test: python3 is missing !!!!!!!!!!\n");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3 -m aiosmtpd");
    let mut server = SmtpServer {
        port,
        maildir,
        child,
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "aiosmtpd exited with {status}: install it with `python3 -m pip install aiosmtpd`"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("aiosmtpd did not start on port {}", server.port);
}

fn read_mails(maildir: &Path) -> Vec<String> {
    let mut mails = Vec::new();
    if let Ok(entries) = std::fs::read_dir(maildir.join("new")) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            mails.extend(std::fs::read_to_string(p).ok());
        }
    }
    mails
}

/// Waits for the `n`-th mail (1-based) to arrive and returns it.
async fn wait_for_mail(maildir: &Path, n: usize) -> String {
    for _ in 0..200 {
        let mails = read_mails(maildir);
        if mails.len() >= n {
            return mails[n - 1].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no mail #{n} arrived in {}", maildir.display());
}

/// The token on the mail's `Token:` line.
fn token_in(mail: &str) -> String {
    let start = mail.find("Token: ").expect("a Token: line") + "Token: ".len();
    mail[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn with_smtp() -> Option<(SmtpServer, TestServer)> {
    let smtp = smtp_server().await?;
    let mut config = test_config();
    config.smtp = Some(SmtpConfig {
        host: "127.0.0.1".into(),
        port: smtp.port,
        username: None,
        password: None,
        tls: SmtpTls::None,
        timeout: Duration::from_secs(10),
    });
    config.mail_from = "Hearth <auth@hearth.test>".into();
    let s = start(config).await;
    Some((smtp, s))
}

#[tokio::test]
async fn password_reset_over_smtp_sets_a_new_password_and_signs_out_everywhere() {
    within(90, async {
        let Some((smtp, s)) = with_smtp().await else {
            return;
        };
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let r = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "Ada@Example.com"}),
            )
            .await;
        assert_eq!(r.status, 202);
        let mail = wait_for_mail(&smtp.maildir, 1).await;
        assert!(mail.contains("To: ada@example.com"), "{mail}");
        assert!(mail.contains("Subject: Reset your password"), "{mail}");
        let reset = token_in(&mail);
        assert_eq!(reset.len(), 43);

        let weak = s
            .post(
                "/v1/auth/password-reset/confirm",
                None,
                json!({"token": reset, "password": "short"}),
            )
            .await;
        assert_error(&weak, 400, "invalid-argument");
        let ok = s
            .post(
                "/v1/auth/password-reset/confirm",
                None,
                json!({"token": reset, "password": "battery staple"}),
            )
            .await;
        assert_eq!(ok.status, 204, "{}", ok.body);
        // Single use.
        let again = s
            .post(
                "/v1/auth/password-reset/confirm",
                None,
                json!({"token": reset, "password": "another pass"}),
            )
            .await;
        assert_error(&again, 412, "failed-precondition");

        let old = s.login("ada@example.com", "correct horse").await;
        assert_error(&old, 401, "unauthenticated");
        let new = s.login("ada@example.com", "battery staple").await;
        assert_eq!(new.status, 200);
        assert_error(
            &s.me(&token(&t, "access_token")).await,
            401,
            "unauthenticated",
        );
        let refresh = s.refresh(token(&t, "refresh_token")).await;
        assert_error(&refresh, 401, "unauthenticated");
    })
    .await;
}

#[tokio::test]
async fn password_reset_for_an_unknown_email_answers_the_same_and_sends_nothing() {
    within(90, async {
        let Some((smtp, s)) = with_smtp().await else {
            return;
        };
        s.sign_up("ada@example.com", "correct horse").await;
        let known = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "ada@example.com"}),
            )
            .await;
        let unknown = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "nobody@example.com"}),
            )
            .await;
        assert_eq!(known.status, unknown.status);
        assert_eq!(known.body, unknown.body);
        wait_for_mail(&smtp.maildir, 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mails = read_mails(&smtp.maildir);
        assert_eq!(mails.len(), 1, "only the known address got a mail");
        assert!(mails[0].contains("To: ada@example.com"));
    })
    .await;
}

#[tokio::test]
async fn email_verification_over_smtp_marks_the_address_verified() {
    within(90, async {
        let Some((smtp, s)) = with_smtp().await else {
            return;
        };
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let access = token(&t, "access_token");
        let r = s
            .post("/v1/auth/verify-email/send", Some(&access), json!({}))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let mail = wait_for_mail(&smtp.maildir, 1).await;
        let verify = token_in(&mail);
        // A verification token is not a reset token.
        let wrong = s
            .post(
                "/v1/auth/password-reset/confirm",
                None,
                json!({"token": verify, "password": "battery staple"}),
            )
            .await;
        assert_error(&wrong, 412, "failed-precondition");
        let ok = s
            .post(
                "/v1/auth/verify-email/confirm",
                None,
                json!({"token": verify}),
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.body["email_verified"], true);
        // The next access token says so.
        let refreshed = s.refresh(token(&t, "refresh_token")).await;
        let v = s
            .auth
            .verify(&token(&refreshed.body, "access_token"))
            .unwrap();
        assert!(v.claims.email_verified);
        let again = s
            .post(
                "/v1/auth/verify-email/confirm",
                None,
                json!({"token": verify}),
            )
            .await;
        assert_error(&again, 412, "failed-precondition");
    })
    .await;
}

#[tokio::test]
async fn email_change_over_smtp_moves_the_account_to_the_new_address() {
    within(90, async {
        let Some((smtp, s)) = with_smtp().await else {
            return;
        };
        let t = s.sign_up("ada@example.com", "correct horse").await;
        s.sign_up("taken@example.com", "correct horse").await;
        let access = token(&t, "access_token");
        let taken = s
            .post(
                "/v1/auth/email-change/send",
                Some(&access),
                json!({"new_email": "taken@example.com"}),
            )
            .await;
        assert_error(&taken, 409, "already-exists");
        let r = s
            .post(
                "/v1/auth/email-change/send",
                Some(&access),
                json!({"new_email": "Ada.New@Example.com"}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let mail = wait_for_mail(&smtp.maildir, 1).await;
        assert!(mail.contains("To: ada.new@example.com"), "{mail}");
        let ok = s
            .post(
                "/v1/auth/email-change/confirm",
                None,
                json!({"token": token_in(&mail)}),
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.body["email"], "ada.new@example.com");
        assert_eq!(ok.body["email_verified"], true);
        let old = s.login("ada@example.com", "correct horse").await;
        assert_error(&old, 401, "unauthenticated");
        let new = s.login("ada.new@example.com", "correct horse").await;
        assert_eq!(new.body["uid"], t["uid"]);
        // The old address is free again.
        s.sign_up("ada@example.com", "correct horse").await;
    })
    .await;
}

#[tokio::test]
async fn without_smtp_mails_go_to_the_dev_outbox() {
    within(60, async {
        let s = start(test_config()).await;
        s.sign_up("ada@example.com", "correct horse").await;
        let r = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "ada@example.com"}),
            )
            .await;
        assert_eq!(r.status, 202);
        let mut mails = serde_json::Value::Null;
        for _ in 0..100 {
            mails = s.get("/v1/admin/outbox", Some(ADMIN_KEY)).await.body;
            if mails["mails"].as_array().is_some_and(|m| !m.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mail = &mails["mails"][0];
        assert_eq!(mail["to"], "ada@example.com");
        let text = mail["text"].as_str().unwrap();
        let ok = s
            .post(
                "/v1/auth/password-reset/confirm",
                None,
                json!({"token": token_in(text), "password": "battery staple"}),
            )
            .await;
        assert_eq!(ok.status, 204, "{}", ok.body);
        // The outbox is admin-only.
        let t = s.login("ada@example.com", "battery staple").await;
        assert_error(
            &s.get("/v1/admin/outbox", Some(&token(&t.body, "access_token")))
                .await,
            403,
            "permission-denied",
        );
        assert_error(
            &s.get("/v1/admin/outbox", None).await,
            401,
            "unauthenticated",
        );
    })
    .await;
}
