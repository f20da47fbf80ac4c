//! Shared helpers: start the auth router on 127.0.0.1:0 with a fresh store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_auth::{router, AuthConfig, AuthService, PasswordConfig, RateLimitConfig};
use hearth_store::{Store, StoreConfig};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

pub struct TestServer {
    pub base: String,
    pub auth: AuthService,
    pub store: Store,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Cheap argon2 parameters so tests run fast (the defaults are tested in unit tests).
pub fn test_config() -> AuthConfig {
    AuthConfig {
        password: PasswordConfig {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent_hashes: 2,
            min_length: 8,
        },
        rate_limits: RateLimitConfig::disabled(),
        ..AuthConfig::default()
    }
}

pub async fn start(config: AuthConfig) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(StoreConfig::new(dir.path().join("data"))).expect("open store");
    let auth = AuthService::start(config, store.clone())
        .await
        .expect("start auth");
    let app = router(
        auth.clone(),
        Arc::new(|key: &str| hearth_auth::tokens::ct_eq(key.as_bytes(), ADMIN_KEY.as_bytes())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    TestServer {
        base: format!("http://{addr}"),
        auth,
        store,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        server,
        _dir: dir,
    }
}

/// A response's status, `Retry-After` header and JSON body (Null if empty).
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl TestServer {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            retry_after,
            body,
        }
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, bearer, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(reqwest::Method::GET, path, bearer, None).await
    }

    /// Signs up and returns the token response.
    pub async fn sign_up(&self, email: &str, password: &str) -> Value {
        let r = self
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status, 200, "signup: {}", r.body);
        r.body
    }

    /// `POST /v1/auth/login` with these credentials.
    pub async fn login(&self, email: impl AsRef<str>, password: impl AsRef<str>) -> Reply {
        self.post(
            "/v1/auth/login",
            None,
            json!({"email": email.as_ref(), "password": password.as_ref()}),
        )
        .await
    }

    /// `POST /v1/auth/refresh` with this refresh token.
    pub async fn refresh(&self, refresh_token: impl AsRef<str>) -> Reply {
        self.post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh_token.as_ref()}),
        )
        .await
    }

    pub async fn me(&self, access_token: &str) -> Reply {
        self.get("/v1/auth/me", Some(access_token)).await
    }
}

pub fn token(reply_body: &Value, name: &str) -> String {
    reply_body[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {reply_body}"))
        .to_string()
}

/// Runs a test body with a time limit.
pub async fn within<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

/// Asserts an error reply has the envelope with this code.
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(r.body["error"]["code"], code, "body: {}", r.body);
}
