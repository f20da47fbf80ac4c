//! # hearth-testkit
//!
//! End-to-end tests in every crate talk to a real `hearth serve` process
//! through this crate, never to an in-process fake.
//!
//! ```no_run
//! # async fn demo() {
//! use hearth_testkit::{TestServer, TestServerOptions};
//! let server = TestServer::start(TestServerOptions::default()).await.unwrap();
//! let client = server.client();
//! let created = client.post("/v1/db/rooms", &serde_json::json!({"name": "Lobby"})).await;
//! assert_eq!(created.status, 201);
//! // server.ws_url() is ws://127.0.0.1:<port>/v1/ws
//! # }
//! ```
//!
//! ## Which binary runs
//! [`hearth_binary`] decides, in this order:
//! 1. [`TestServerOptions::binary`] (the `hearth` crate's own tests pass
//!    `env!("CARGO_BIN_EXE_hearth")`, which cargo has just built);
//! 2. the `HEARTH_BIN` environment variable;
//! 3. `<target dir>/<profile>/hearth`, where target dir and profile are those
//!    of the running test executable (`.../target/debug/deps/x-123` →
//!    `.../target/debug/hearth`). Unless `HEARTH_TESTKIT_NO_BUILD=1`, the
//!    testkit first runs `cargo build -p hearth` (with `--release` for a
//!    release test build) once per test process, into that same target dir,
//!    so a test never runs a stale binary. Cargo has released its build lock
//!    by the time tests run, so this nested build works (it is a no-op when
//!    the binary is fresh).
//!
//! Each server gets a free loopback port, a fresh temporary data directory
//! (kept across [`TestServer::restart`], removed on drop), a known admin key
//! ([`DEFAULT_ADMIN_KEY`] unless set), and its stdout/stderr in a log file
//! ([`TestServer::log`]). Dropping a `TestServer` kills the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod jwt;
pub mod ws;

/// The admin key test servers use unless told otherwise.
pub const DEFAULT_ADMIN_KEY: &str = "testkit-admin-key-0123456789abcdef";

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("could not find or build the hearth binary: {0}")]
    Binary(String),
    #[error("could not start hearth: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("hearth did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("hearth exited during startup with {status}; its log:\n{log}")]
    Exited { status: ExitStatus, log: String },
}

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct TestServerOptions {
    /// The binary to run (see the crate docs for the default).
    pub binary: Option<PathBuf>,
    /// The admin key, passed as `HEARTH_ADMIN_KEY`.
    pub admin_key: String,
    /// Start with `--dev` (no credentials needed).
    pub dev: bool,
    /// A TOML config file's contents, passed with `--config`.
    pub config_toml: Option<String>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Extra arguments after `serve`.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
}

impl Default for TestServerOptions {
    fn default() -> Self {
        TestServerOptions {
            binary: None,
            admin_key: DEFAULT_ADMIN_KEY.to_string(),
            dev: false,
            config_toml: None,
            data_dir: None,
            extra_args: vec![],
            env: vec![],
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl TestServerOptions {
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
    pub fn dev(mut self) -> Self {
        self.dev = true;
        self
    }
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config_toml = Some(toml.into());
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running `hearth serve` process.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    data_dir: PathBuf,
    /// Holds the temporary data dir (if we made it) and the log and config files.
    scratch: tempfile::TempDir,
    options: TestServerOptions,
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The `hearth` binary tests should run (see the crate docs).
pub fn hearth_binary() -> Result<PathBuf, TestkitError> {
    if let Some(path) = std::env::var_os("HEARTH_BIN") {
        return Ok(PathBuf::from(path));
    }
    BUILT
        .get_or_init(locate_and_build)
        .clone()
        .map_err(TestkitError::Binary)
}

fn locate_and_build() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // .../<target>/<profile>/deps/<test-exe>  or  .../<target>/<profile>/<exe>
    let mut profile_dir = exe
        .parent()
        .ok_or("test executable has no parent directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir
        .parent()
        .ok_or("no target directory above the profile directory")?
        .to_path_buf();
    let binary = profile_dir.join(format!("hearth{}", std::env::consts::EXE_SUFFIX));
    if std::env::var_os("HEARTH_TESTKIT_NO_BUILD").is_none() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&workspace)
            .args(["build", "--quiet", "-p", "hearth", "--bin", "hearth"])
            .env("CARGO_TARGET_DIR", &target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command
            .status()
            .map_err(|e| format!("running cargo build -p hearth: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p hearth failed with {status}"));
        }
    }
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} does not exist; build it with `cargo build -p hearth` or set HEARTH_BIN",
            binary.display()
        ))
    }
}

/// Node.js on `PATH` at version `min_major` or later, for tests that run
/// JavaScript (the reference client, the chat page); why not otherwise.
pub fn require_node(min_major: u32, why: &str) -> Result<(), String> {
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node is not installed ({e})"))?;
    let text = String::from_utf8_lossy(&version.stdout);
    let major: u32 = text
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("unreadable node version {text:?}"))?;
    if major < min_major {
        return Err(format!(
            "node {} is older than {min_major} ({why})",
            text.trim()
        ));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (free at the time of the call).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl TestServer {
    /// Starts `hearth serve` and waits until `/readyz` answers 200.
    pub async fn start(options: TestServerOptions) -> Result<TestServer, TestkitError> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => hearth_binary()?,
        };
        let scratch = tempfile::Builder::new().prefix("hearth-test-").tempdir()?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| scratch.path().join("data"));
        let mut server = TestServer {
            child: None,
            binary,
            port: 0,
            data_dir,
            scratch,
            options,
        };
        let mut last_error = None;
        for _attempt in 0..3 {
            server.port = free_port();
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e @ TestkitError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Binary("no attempt made".into())))
    }

    fn log_path(&self) -> PathBuf {
        self.scratch.path().join("hearth.log")
    }

    /// Everything the server printed so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env("HEARTH_ADMIN_KEY", &self.options.admin_key)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("HEARTH_DATA")
            .env_remove("HEARTH_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if self.options.dev {
            command.arg("--dev");
        }
        if let Some(toml) = &self.options.config_toml {
            let path = self.scratch.path().join("hearth.toml");
            std::fs::write(&path, toml)?;
            command.arg("--config").arg(path);
        }
        command.args(&self.options.extra_args);
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn()?);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| TestkitError::Binary(e.to_string()))?;
        let url = format!("{}/readyz", self.base_url());
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestkitError::Exited {
                        status,
                        log: self.log(),
                    });
                }
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill_9();
                return Err(TestkitError::NotReady {
                    timeout,
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `ws://127.0.0.1:<port>/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }
    pub fn admin_key(&self) -> &str {
        &self.options.admin_key
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn binary(&self) -> &Path {
        &self.binary
    }
    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// A REST client authenticated with the admin key.
    pub fn client(&self) -> Client {
        Client::new(self.base_url(), Some(self.admin_key().to_string()))
    }
    /// A REST client without credentials.
    pub fn anonymous_client(&self) -> Client {
        Client::new(self.base_url(), None)
    }

    /// SIGKILL: no chance to flush or clean up. Waits for the process to die.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to 30 s, then SIGKILL) and returns the exit status.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same port and data directory (after
    /// [`kill_9`](Self::kill_9) or [`terminate`](Self::terminate); kills a
    /// running one first) and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill_9();
        let mut last = None;
        for _ in 0..3 {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e @ TestkitError::Exited { .. }) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Binary("no attempt made".into())))
    }
}

/// A user signed up through `POST /v1/auth/signup` (see [`TestServer::sign_up`]).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestServer {
    /// Signs a new user up with email and password and returns their tokens.
    /// Panics unless the server answers 200 with a token response.
    pub async fn sign_up(&self, email: &str, password: &str) -> TestUser {
        let reply = self
            .anonymous_client()
            .post(
                "/v1/auth/signup",
                &serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(reply.status, 200, "sign-up of {email}: {}", reply.text);
        let field = |name: &str| match reply.body[name].as_str() {
            Some(v) => v.to_string(),
            None => panic!("sign-up answer has no {name}: {}", reply.text),
        };
        TestUser {
            uid: field("uid"),
            email: email.to_string(),
            access_token: field("access_token"),
            refresh_token: field("refresh_token"),
        }
    }

    /// A REST client that sends `user`'s access token.
    pub fn user_client(&self, user: &TestUser) -> Client {
        Client::new(self.base_url(), Some(user.access_token.clone()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A response: status and JSON body (`Value::Null` when the body is not JSON;
/// the raw text is kept too).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The error code of an error envelope, if this is one.
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// A small REST client for tests.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
}

impl Client {
    pub fn new(base: String, bearer: Option<String>) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            base,
            bearer,
        }
    }

    /// The same client with another bearer credential.
    pub fn with_bearer(&self, bearer: Option<String>) -> Client {
        Client {
            bearer,
            ..self.clone()
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional JSON body. Panics on transport errors
    /// (a test wants to fail loudly then), never on an error status.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => panic!("request to {path} failed: {e}"),
        };
        Self::reply(response).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path)).body(body);
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => panic!("request to {path} failed: {e}"),
        };
        Self::reply(response).await
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }
    /// `POST /v1/query`
    pub async fn query(&self, query: &Value) -> Reply {
        self.post("/v1/query", query).await
    }
    /// `POST /v1/batch` with `{"writes": writes}`
    pub async fn batch(&self, writes: Value) -> Reply {
        self.post("/v1/batch", &serde_json::json!({ "writes": writes }))
            .await
    }
}
