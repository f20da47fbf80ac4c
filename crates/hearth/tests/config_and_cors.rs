//! End-to-end tests of `hearth serve --config`: the `[auth]`, `[gateway]`
//! and `[http.cors]` sections reach the running services, and a bad file
//! stops the server before it serves anything. Each test starts the real
//! binary through hearth-testkit.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hearth_testkit::{TestServer, TestServerOptions, TestkitError};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn options() -> TestServerOptions {
    TestServerOptions::default().binary(env!("CARGO_BIN_EXE_hearth"))
}

async fn within<F: Future<Output = ()>>(secs: u64, test: F) {
    if tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .is_err()
    {
        panic!("test did not finish within {secs} s");
    }
}

/// Starts a server that must refuse to start; returns its log.
async fn refused(config: &str) -> String {
    match TestServer::start(options().config(config)).await {
        Ok(_) => panic!("the server started with a bad config:\n{config}"),
        Err(TestkitError::Exited { status, log }) => {
            assert!(!status.success(), "exit status {status}");
            log
        }
        Err(other) => panic!("unexpected failure: {other}"),
    }
}

#[tokio::test]
async fn serve_exits_non_zero_naming_an_unknown_key_in_a_section() {
    within(60, async {
        for (config, key) in [
            ("[auth]\nacess_token_ttl = \"1h\"\n", "acess_token_ttl"),
            ("[auth.smtp]\nhost = \"m\"\npasswd = \"x\"\n", "passwd"),
            ("[gateway]\nheartbeat_ms = 300\n", "heartbeat_ms"),
            ("[http.cors]\norigins = [\"*\"]\n", "origins"),
        ] {
            let log = refused(config).await;
            assert!(log.contains(key), "{config}: {log}");
        }
    })
    .await;
}

#[tokio::test]
async fn serve_refuses_contradictory_values() {
    within(60, async {
        let log = refused("[gateway]\nheartbeat = \"5s\"\nidle_timeout = \"2s\"\n").await;
        assert!(log.contains("idle_timeout"), "{log}");
        let log = refused("[http.cors]\nallowed_origins = [\"127.0.0.1:8000\"]\n").await;
        assert!(log.contains("127.0.0.1:8000"), "{log}");
    })
    .await;
}

#[tokio::test]
async fn configured_token_lifetime_and_password_policy_apply() {
    within(60, async {
        let server = TestServer::start(
            options()
                .config("[auth]\naccess_token_ttl = \"90s\"\n[auth.password]\nmin_length = 12\n"),
        )
        .await
        .unwrap();
        let c = server.anonymous_client();
        let short = c
            .post(
                "/v1/auth/signup",
                &json!({"email": "ada@example.com", "password": "eleven char"}),
            )
            .await;
        assert_eq!(short.status, 400, "{}", short.text);
        assert_eq!(short.error_code(), Some("invalid-argument"));
        let ok = c
            .post(
                "/v1/auth/signup",
                &json!({"email": "ada@example.com", "password": "twelve chars"}),
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert_eq!(ok.body["expires_in"], json!(90));
    })
    .await;
}

/// A running aiosmtpd writing received mails to a Maildir; killed on drop.
struct SmtpServer {
    port: u16,
    maildir: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn smtp_server() -> Option<SmtpServer> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("\n!!!!!!!!!! SKIPPED: python3 with aiosmtpd is missing (.ci/run installs it) !!!!!!!!!!\n");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let port = hearth_testkit::free_port();
    let child = tokio::process::Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(SmtpServer {
                port,
                maildir,
                _child: child,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("aiosmtpd did not start on port {port}");
}

fn mails(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

#[tokio::test]
async fn auth_mails_go_to_the_smtp_server_named_in_the_config_file() {
    within(90, async {
        let Some(smtp) = smtp_server().await else {
            return;
        };
        let config = format!(
            "[auth]\nmail_from = \"Chat <auth@hearth.test>\"\n\
             [auth.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            smtp.port
        );
        let server = TestServer::start(options().config(config)).await.unwrap();
        let c = server.anonymous_client();
        let signup = c
            .post(
                "/v1/auth/signup",
                &json!({"email": "ada@example.com", "password": "correct horse"}),
            )
            .await;
        assert_eq!(signup.status, 200, "{}", signup.text);
        let reset = c
            .post(
                "/v1/auth/password-reset/send",
                &json!({"email": "ada@example.com"}),
            )
            .await;
        assert_eq!(reset.status, 202, "{}", reset.text);
        let mut received = vec![];
        for _ in 0..200 {
            received = mails(&smtp.maildir);
            if !received.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mail = received.first().expect("a mail reached the SMTP server");
        assert!(mail.contains("To: ada@example.com"), "{mail}");
        assert!(mail.contains("auth@hearth.test"), "{mail}");
        // Nothing went to the development outbox.
        let outbox = server.client().get("/v1/admin/outbox").await;
        assert!(
            !outbox.text.contains("ada@example.com"),
            "outbox: {}",
            outbox.text
        );
    })
    .await;
}

#[tokio::test]
async fn the_smtp_password_never_reaches_the_log() {
    within(60, async {
        // A port nobody listens on: sending fails and is logged, the secret is not.
        let config = format!(
            "[auth.smtp]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"hearth\"\npassword = \"smtp-secret-4711\"\ntimeout = \"2s\"\n",
            hearth_testkit::free_port()
        );
        let mut server = TestServer::start(options().config(config).env("RUST_LOG", "debug"))
            .await
            .unwrap();
        let c = server.anonymous_client();
        c.post(
            "/v1/auth/signup",
            &json!({"email": "ada@example.com", "password": "correct horse"}),
        )
        .await;
        c.post(
            "/v1/auth/password-reset/send",
            &json!({"email": "ada@example.com"}),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        server.terminate().await;
        let log = server.log();
        assert!(log.contains("SMTP"), "the SMTP setup is logged: {log}");
        assert!(!log.contains("smtp-secret-4711"), "{log}");
    })
    .await;
}

async fn welcome(server: &TestServer) -> Value {
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "hearth.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1,
                       "client": {"name": "config-test", "version": "0"},
                       "token": server.admin_key()});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed before welcome: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn gateway_limits_from_the_config_file_reach_the_welcome_frame() {
    within(60, async {
        let server = TestServer::start(options().config(
            "[gateway]\nheartbeat = \"2s\"\nidle_timeout = \"7s\"\nmax_subscriptions = 3\n\
             max_frame_bytes = 65536\nmax_inflight_writes = 4\n",
        ))
        .await
        .unwrap();
        let w = welcome(&server).await;
        assert_eq!(w["type"], "welcome", "{w}");
        assert_eq!(w["heartbeat_ms"], json!(2000), "{w}");
        assert_eq!(w["idle_timeout_ms"], json!(7000), "{w}");
        assert_eq!(w["limits"]["max_subscriptions"], json!(3), "{w}");
        assert_eq!(w["limits"]["max_frame_bytes"], json!(65536), "{w}");
        assert_eq!(w["limits"]["max_inflight_writes"], json!(4), "{w}");
    })
    .await;
}

/// A CORS preflight for a signed-in POST, as a browser sends it.
async fn preflight(server: &TestServer, origin: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}{path}", server.base_url()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

const ALLOWED: &str = "http://127.0.0.1:8000";

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_gets_the_cors_headers() {
    within(60, async {
        let server = TestServer::start(options().config(format!(
            "[http.cors]\nallowed_origins = [\"{ALLOWED}\", \"http://localhost:8000\"]\n"
        )))
        .await
        .unwrap();
        for path in ["/v1/auth/login", "/v1/query", "/v1/db/rooms/r1"] {
            let r = preflight(&server, ALLOWED, path).await;
            assert!(r.status().is_success(), "{path}: {}", r.status());
            assert_eq!(header(&r, "access-control-allow-origin"), Some(ALLOWED));
            let headers = header(&r, "access-control-allow-headers")
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(headers.contains("authorization"), "{headers}");
            assert!(headers.contains("content-type"), "{headers}");
            let methods = header(&r, "access-control-allow-methods").unwrap_or_default();
            assert!(methods.contains("POST"), "{methods}");
            assert!(header(&r, "access-control-allow-credentials").is_none());
        }
        // The actual request carries the header too, and exposes Retry-After.
        let login = reqwest::Client::new()
            .post(format!("{}/v1/auth/signup", server.base_url()))
            .header("origin", ALLOWED)
            .json(&json!({"email": "ada@example.com", "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        assert_eq!(header(&login, "access-control-allow-origin"), Some(ALLOWED));
        let exposed = header(&login, "access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(exposed.contains("retry-after"), "{exposed}");
    })
    .await;
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    within(60, async {
        let server = TestServer::start(
            options().config(format!("[http.cors]\nallowed_origins = [\"{ALLOWED}\"]\n")),
        )
        .await
        .unwrap();
        let r = preflight(&server, "http://evil.example", "/v1/auth/login").await;
        assert!(header(&r, "access-control-allow-origin").is_none());
        let get = reqwest::Client::new()
            .get(format!("{}/healthz", server.base_url()))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert!(header(&get, "access-control-allow-origin").is_none());
    })
    .await;
}

#[tokio::test]
async fn without_cors_config_no_cors_headers_are_sent() {
    within(60, async {
        let server = TestServer::start(options()).await.unwrap();
        let r = preflight(&server, ALLOWED, "/v1/auth/login").await;
        assert!(header(&r, "access-control-allow-origin").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_star_allows_any_origin_without_credentials() {
    within(60, async {
        let server =
            TestServer::start(options().config("[http.cors]\nallowed_origins = [\"*\"]\n"))
                .await
                .unwrap();
        let r = preflight(&server, "http://anywhere.example", "/v1/auth/login").await;
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        assert!(header(&r, "access-control-allow-credentials").is_none());
    })
    .await;
}
