//! Client conformance: checks a client SDK, not a server.
//!
//! The server scenarios prove what a server sends; an SDK author also needs
//! to prove what their *client* does with it: that its views equal the
//! server's query results through every change, that it resumes after a
//! network failure without losing or repeating a change, that a write whose
//! answer was lost is retried under the same mutation id and applied once,
//! that it shows its own writes at once, queues them offline, backs off,
//! answers pings and refreshes its token on the live socket.
//!
//! The SDK is driven through a small program written with it, the
//! *driver* (`sdk-spec/conformance/CLIENT.md` specifies its line protocol;
//! `hearth-client-driver` is the Rust SDK's). Each check starts a fresh
//! driver and a fresh [`proxy::Proxy`] between it and a live server, makes
//! side effects over REST with the admin key, breaks the network through
//! the proxy, and compares what the driver reports with the server's REST
//! answers and with the frames the proxy saw. Every frame the client sends
//! is validated against `sdk-spec/schema/`.

mod cached_view;
mod driver;
mod proxy;
mod restart;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::schema::SchemaSet;
use crate::{server_urls, Outcome, Report, ScenarioResult};
use driver::{doc_path, Driver, Snapshot};
use proxy::Proxy;

/// Upper bound for one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a converging view may take after the last side effect.
const SETTLE: Duration = Duration::from_secs(15);
const SHORT: Duration = Duration::from_secs(5);

/// The client checks, in order: `(name, required server capability)`.
pub const CLIENT_CHECKS: &[(&str, Option<&str>)] = &[
    ("client-01-handshake", None),
    ("client-02-live-query", None),
    ("client-03-document", None),
    ("client-04-limit-window", None),
    ("client-05-resume-without-loss", None),
    ("client-06-retry-lost-answer", None),
    ("client-07-latency-compensation", None),
    ("client-08-offline-queue", None),
    ("client-09-backoff", None),
    ("client-10-heartbeat", None),
    ("client-11-token-refresh", None),
    ("client-12-reset-past-retention", Some("tiny-retention")),
    ("client-13-revoked-session", None),
    ("client-14-backoff-after-welcome", None),
    ("client-15-retry-unavailable", None),
    ("client-16-pending-in-limit-window", None),
    ("client-17-merge-outside-view", None),
    ("client-18-dead-connection", None),
    ("client-19-expired-token", None),
    ("client-20-transaction", None),
    ("client-21-restart-with-pending-writes", None),
    ("client-22-pending-in-group-query", None),
    ("client-23-inflight-limit", None),
    ("client-24-restart-shows-cached-view", None),
];

/// What to run the client checks with.
#[derive(Debug, Clone, Default)]
pub struct ClientRunOptions {
    /// The server's admin key (required: checks make REST side effects).
    pub admin_key: String,
    /// The driver, run with `sh -c`.
    pub driver: String,
    /// Where the JSON Schemas are (`sdk-spec/schema`); `None`: no validation.
    pub schema_dir: Option<std::path::PathBuf>,
    /// Server capabilities beyond the defaults (`tiny-retention`).
    pub capabilities: Vec<String>,
    /// Run only checks whose name contains this text.
    pub filter: Option<String>,
    /// Ask the driver to speak `hearth.v1.msgpack`.
    pub msgpack: bool,
}

impl ClientRunOptions {
    /// What an SDK's own test suite in this repository runs: every check,
    /// with the schemas of `sdk-spec/schema` in this source tree, against a
    /// server with tiny retention (`[store.retention] max_commits = 10`).
    pub fn every_check_in_this_repo(admin_key: &str, driver: String, msgpack: bool) -> Self {
        ClientRunOptions {
            admin_key: admin_key.to_string(),
            driver,
            schema_dir: Some(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/schema"),
            ),
            capabilities: vec!["tiny-retention".into()],
            filter: None,
            msgpack,
        }
    }
}

/// Runs every client check against the server at `server_url`.
pub async fn run_client_checks(server_url: &str, options: ClientRunOptions) -> Report {
    let mut report = Report {
        frames_direction: "client",
        ..Report::default()
    };
    let (http_url, ws_url) = server_urls(server_url);
    let schemas = match &options.schema_dir {
        None => None,
        Some(dir) => match SchemaSet::load(dir) {
            Ok(Some(set)) => Some(Arc::new(set)),
            // A run that silently validated nothing would pass a client
            // that sends malformed frames.
            Ok(None) => {
                report.setup_error = Some(format!(
                    "the JSON Schemas are not at {}: run from the repository root, or pass \
                     --scenarios <path to sdk-spec/conformance/scenarios> so that they are \
                     found next to it",
                    dir.display()
                ));
                return report;
            }
            Err(e) => {
                report.setup_error = Some(format!("schemas: {e}"));
                return report;
            }
        },
    };
    let rest = match Rest::new(&http_url, &options.admin_key) {
        Ok(rest) => rest,
        Err(e) => {
            report.setup_error = Some(e);
            return report;
        }
    };
    let nonce = crate::run_nonce();
    let mut anonymous: Option<Json> = None;
    for (index, (name, requires)) in CLIENT_CHECKS.iter().enumerate() {
        if options
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        let started = Instant::now();
        if let Some(capability) = requires {
            if !options.capabilities.iter().any(|c| c == capability) {
                report.results.push(ScenarioResult {
                    name: name.to_string(),
                    file: std::path::PathBuf::from("sdk-spec/conformance/CLIENT.md"),
                    outcome: Outcome::Skipped(format!(
                        "needs a server with capability `{capability}` (see README.md)"
                    )),
                    duration: started.elapsed(),
                });
                continue;
            }
        }
        let outcome =
            match Check::start(&ws_url, &rest, &options, schemas.clone(), nonce, index).await {
                Err(e) => Outcome::Failed {
                    reason: e,
                    transcript: Vec::new(),
                },
                Ok(mut check) => {
                    let result =
                        tokio::time::timeout(CHECK_TIMEOUT, check.run(name, &mut anonymous)).await;
                    let result = match result {
                        Ok(result) => result.and_then(|()| check.wire_rules()),
                        Err(_) => Err(format!("did not finish within {CHECK_TIMEOUT:?}")),
                    };
                    report.frames_validated += check.proxy.frames_validated();
                    let transcript = check.transcript();
                    check.driver.close().await;
                    match (result, check.skipped.take()) {
                        (Ok(()), Some(why)) => Outcome::Skipped(why),
                        (Ok(()), None) => Outcome::Passed,
                        (Err(reason), _) => Outcome::Failed { reason, transcript },
                    }
                }
            };
        report.results.push(ScenarioResult {
            name: name.to_string(),
            file: std::path::PathBuf::from("sdk-spec/conformance/CLIENT.md"),
            outcome,
            duration: started.elapsed(),
        });
    }
    report
}

/// The admin's REST side effects and the server's answers to compare with.
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    base: String,
    admin_key: String,
}

impl Rest {
    fn new(base: &str, admin_key: &str) -> Result<Rest, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Rest {
            http,
            base: base.to_string(),
            admin_key: admin_key.to_string(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
        bearer: Option<&str>,
    ) -> Result<Json, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{method} {path}: HTTP {status}: {body}"))
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<Json, String> {
        let key = self.admin_key.clone();
        self.call(method, path, body, Some(&key)).await
    }

    /// Commits `writes` as one batch.
    async fn batch(&self, writes: Json) -> Result<Json, String> {
        self.admin(
            reqwest::Method::POST,
            "/v1/batch",
            Some(json!({ "writes": writes })),
        )
        .await
    }

    /// `(path, fields)` of the query's result, in order.
    async fn query(&self, query: &Json) -> Result<Vec<(String, Json)>, String> {
        let answer = self
            .admin(reqwest::Method::POST, "/v1/query", Some(query.clone()))
            .await?;
        Ok(answer
            .get("documents")
            .and_then(Json::as_array)
            .map(|docs| {
                docs.iter()
                    .map(|d| (doc_path(d), d.get("fields").cloned().unwrap_or(Json::Null)))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn get(&self, path: &str) -> Result<Json, String> {
        self.admin(reqwest::Method::GET, &format!("/v1/db/{path}"), None)
            .await
    }
}

/// One check's world: a fresh proxy, a fresh driver, its own collection.
struct Check {
    rest: Rest,
    proxy: Proxy,
    driver: Driver,
    admin_key: String,
    msgpack: bool,
    /// A collection no other check or run touches.
    collection: String,
    /// How to start another driver process (a check that restarts it).
    driver_command: String,
    /// Set by a check that found the driver lacks an optional capability.
    skipped: Option<String>,
}

impl Check {
    async fn start(
        ws_url: &str,
        rest: &Rest,
        options: &ClientRunOptions,
        schemas: Option<Arc<SchemaSet>>,
        nonce: u64,
        index: usize,
    ) -> Result<Check, String> {
        let proxy = Proxy::start(ws_url, schemas).await?;
        let driver = Driver::spawn(&options.driver)?;
        Ok(Check {
            rest: rest.clone(),
            proxy,
            driver,
            admin_key: options.admin_key.clone(),
            msgpack: options.msgpack,
            collection: format!("conformance_client_{nonce}_{index:02}"),
            driver_command: options.driver.clone(),
            skipped: None,
        })
    }

    async fn run(&mut self, name: &str, anonymous: &mut Option<Json>) -> Result<(), String> {
        match name {
            "client-01-handshake" => self.handshake().await,
            "client-02-live-query" => self.live_query().await,
            "client-03-document" => self.document().await,
            "client-04-limit-window" => self.limit_window().await,
            "client-05-resume-without-loss" => self.resume_without_loss().await,
            "client-06-retry-lost-answer" => self.retry_lost_answer().await,
            "client-07-latency-compensation" => self.latency_compensation().await,
            "client-08-offline-queue" => self.offline_queue().await,
            "client-09-backoff" => self.backoff().await,
            "client-10-heartbeat" => self.heartbeat().await,
            "client-11-token-refresh" => self.token_refresh(anonymous).await,
            "client-12-reset-past-retention" => self.reset_past_retention().await,
            "client-13-revoked-session" => self.revoked_session().await,
            "client-14-backoff-after-welcome" => self.backoff_after_welcome().await,
            "client-15-retry-unavailable" => self.retry_unavailable().await,
            "client-16-pending-in-limit-window" => self.pending_in_limit_window().await,
            "client-17-merge-outside-view" => self.merge_outside_view().await,
            "client-18-dead-connection" => self.dead_connection().await,
            "client-19-expired-token" => self.expired_token().await,
            "client-20-transaction" => self.transaction().await,
            "client-21-restart-with-pending-writes" => self.restart_with_pending_writes().await,
            "client-22-pending-in-group-query" => self.pending_in_group_query().await,
            "client-23-inflight-limit" => self.inflight_limit().await,
            "client-24-restart-shows-cached-view" => self.restart_shows_cached_view().await,
            other => Err(format!("unknown check {other}")),
        }
    }

    /// The last frames through the proxy and the driver's stderr, for a
    /// failure report.
    fn transcript(&self) -> Vec<String> {
        let frames = self.proxy.frames();
        let mut lines: Vec<String> = frames
            .iter()
            .skip(frames.len().saturating_sub(12))
            .map(|f| {
                let arrow = if f.from_client {
                    "client →"
                } else {
                    "← server"
                };
                let mut text = f.frame.to_string();
                if text.len() > 300 {
                    let cut = (0..=300)
                        .rev()
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    text.truncate(cut);
                    text.push('…');
                }
                format!("[conn {}] {arrow} {text}", f.conn)
            })
            .collect();
        lines.extend(
            self.driver
                .stderr_tail()
                .into_iter()
                .map(|l| format!("driver stderr: {l}")),
        );
        lines
    }

    /// Rules every check enforces on what it saw: valid frames, `hello`
    /// first on every connection, a well-behaved driver.
    fn wire_rules(&self) -> Result<(), String> {
        if let Some(v) = self.proxy.violations().first() {
            return Err(v.clone());
        }
        if let Some(v) = self.driver.violations.first() {
            return Err(format!("driver: {v}"));
        }
        let wanted = if self.msgpack {
            "hearth.v1.msgpack"
        } else {
            "hearth.v1"
        };
        if let Some((conn, got)) = self
            .proxy
            .subprotocols()
            .into_iter()
            .find(|(_, got)| got.as_deref() != Some(wanted))
        {
            return Err(format!(
                "connection {conn} was opened with subprotocol {got:?}; this run asked the driver \
                 for {wanted:?}"
            ));
        }
        let frames = self.proxy.client_frames();
        for conn in 1..=self.proxy.connections() {
            if let Some(first) = frames.iter().find(|f| f.conn == conn) {
                if kind(&first.frame) != "hello" {
                    return Err(format!(
                        "the first frame on connection {conn} must be `hello`, was {}",
                        first.frame
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `connect` command's arguments for this run.
    fn connect_args(&self, token: Option<&str>) -> Json {
        let mut args = json!({"url": self.proxy.ws_url()});
        if let Some(token) = token {
            args["token"] = json!(token);
        }
        if self.msgpack {
            args["encoding"] = json!("msgpack");
        }
        args
    }

    async fn connect(&mut self, token: Option<&str>) -> Result<(), String> {
        let args = self.connect_args(token);
        self.driver
            .request("connect", args, Duration::from_secs(20))
            .await
            .map(drop)
    }

    async fn connect_admin(&mut self) -> Result<(), String> {
        let key = self.admin_key.clone();
        self.connect(Some(&key)).await
    }

    fn doc(&self, id: &str) -> String {
        format!("{}/{id}", self.collection)
    }

    /// The collection ordered by `n`.
    fn ordered_query(&self) -> Json {
        json!({"collection": self.collection, "order_by": [{"field": "n", "direction": "asc"}]})
    }

    /// Connects as the admin, subscribes `q` to the (empty) collection
    /// ordered by `n`, and waits for its first snapshot; returns the query.
    async fn watch_empty_collection(&mut self) -> Result<Json, String> {
        self.connect_admin().await?;
        let query = self.ordered_query();
        self.subscribe("q", json!({ "query": query })).await?;
        self.driver
            .wait_snapshot("q", SETTLE, "the initial (empty) result", |s| {
                s.docs.is_empty()
            })
            .await?;
        Ok(query)
    }

    async fn subscribe(&mut self, sub: &str, target: Json) -> Result<(), String> {
        self.driver
            .request("subscribe", json!({"sub": sub, "target": target}), SHORT)
            .await
            .map(drop)
    }

    /// Waits until `sub`'s view equals the REST answer to `query`, with no
    /// pending writes.
    async fn converge(&mut self, sub: &str, query: &Json, what: &str) -> Result<Snapshot, String> {
        let expected = self.rest.query(query).await?;
        self.driver
            .wait_snapshot(sub, SETTLE, what, |s| {
                s.contents() == expected && !s.has_pending_writes
            })
            .await
    }

    async fn handshake(&mut self) -> Result<(), String> {
        self.connect_admin().await?;
        let frames = self.proxy.client_frames();
        let hello = frames.first().ok_or("the client sent no frame")?;
        if kind(&hello.frame) != "hello" || hello.frame.get("protocol") != Some(&json!(1)) {
            return Err(format!(
                "the first frame must be hello with protocol 1, was {}",
                hello.frame
            ));
        }
        if hello.frame.get("token").and_then(Json::as_str) != Some(self.admin_key.as_str()) {
            return Err("hello must carry the credential it was given".into());
        }
        Ok(())
    }

    async fn live_query(&mut self) -> Result<(), String> {
        self.rest
            .batch(json!([
                {"op": "set", "path": self.doc("a"), "data": {"n": 10}},
                {"op": "set", "path": self.doc("b"), "data": {"n": 20}},
                {"op": "set", "path": self.doc("c"), "data": {"n": 30}},
            ]))
            .await?;
        self.connect_admin().await?;
        let query = self.ordered_query();
        self.subscribe("q", json!({ "query": query })).await?;
        let first = self.converge("q", &query, "the initial result").await?;
        if first.paths() != [self.doc("a"), self.doc("b"), self.doc("c")] {
            return Err(format!("wrong initial order {:?}", first.paths()));
        }
        let steps = [
            (
                "an added document",
                json!([{"op": "set", "path": self.doc("d"), "data": {"n": 25}}]),
            ),
            (
                "a document moving",
                json!([{"op": "update", "path": self.doc("b"), "fields": {"n": 35}}]),
            ),
            (
                "a modified document",
                json!([{"op": "update", "path": self.doc("c"), "fields": {"label": "x"}}]),
            ),
            (
                "a removed document",
                json!([{"op": "delete", "path": self.doc("a")}]),
            ),
            (
                "one commit touching three documents",
                json!([
                    {"op": "delete", "path": self.doc("d")},
                    {"op": "set", "path": self.doc("e"), "data": {"n": 1}},
                    {"op": "update", "path": self.doc("c"), "fields": {"n": 40}},
                ]),
            ),
        ];
        for (what, writes) in steps {
            let seen_before = self.driver.snapshots.get("q").map_or(0, Vec::len);
            self.rest.batch(writes).await?;
            self.converge("q", &query, what).await?;
            // A commit is atomic: no snapshot may show part of it.
            let history = self
                .driver
                .history("q")
                .get(seen_before..)
                .unwrap_or_default();
            if history.len() > 1 {
                return Err(format!(
                    "{what}: one commit produced {} snapshots (a state that never existed)",
                    history.len()
                ));
            }
        }
        Ok(())
    }

    async fn document(&mut self) -> Result<(), String> {
        self.connect_admin().await?;
        let path = self.doc("one");
        self.subscribe("d", json!({ "doc": path })).await?;
        self.driver
            .wait_snapshot(
                "d",
                SETTLE,
                "the empty snapshot of a missing document",
                |s| s.docs.is_empty(),
            )
            .await?;
        self.rest
            .batch(json!([{"op": "set", "path": path, "data": {"n": 1}}]))
            .await?;
        self.driver
            .wait_snapshot("d", SETTLE, "the created document", |s| {
                s.contents() == [(path.clone(), json!({"n": 1}))]
            })
            .await?;
        self.rest
            .batch(json!([{"op": "update", "path": path, "fields": {"n": 2}}]))
            .await?;
        self.driver
            .wait_snapshot("d", SETTLE, "the modified document", |s| {
                s.contents() == [(path.clone(), json!({"n": 2}))]
            })
            .await?;
        self.rest
            .batch(json!([{"op": "delete", "path": path}]))
            .await?;
        self.driver
            .wait_snapshot("d", SETTLE, "the deletion", |s| s.docs.is_empty())
            .await?;
        // Unsubscribing reaches the server, and nothing more is reported.
        self.driver
            .request("unsubscribe", json!({"sub": "d"}), SHORT)
            .await?;
        let deadline = Instant::now() + SHORT;
        while !self
            .proxy
            .client_frames()
            .iter()
            .any(|f| kind(&f.frame) == "unsubscribe")
        {
            if Instant::now() > deadline {
                return Err("`unsubscribe` sent no unsubscribe frame".into());
            }
            self.driver.drain_for(Duration::from_millis(50)).await;
        }
        let reported = self.driver.snapshots.get("d").map_or(0, Vec::len);
        self.rest
            .batch(json!([{"op": "set", "path": path, "data": {"n": 3}}]))
            .await?;
        self.driver.drain_for(Duration::from_millis(500)).await;
        if self.driver.snapshots.get("d").map_or(0, Vec::len) != reported {
            return Err("a snapshot was reported after `unsubscribe`".into());
        }
        Ok(())
    }

    async fn limit_window(&mut self) -> Result<(), String> {
        let writes: Vec<Json> = (1..=5)
            .map(|n| json!({"op": "set", "path": self.doc(&format!("w{n}")), "data": {"n": n}}))
            .collect();
        self.rest.batch(Json::Array(writes)).await?;
        self.connect_admin().await?;
        let mut query = self.ordered_query();
        query["limit"] = json!(2);
        self.subscribe("top", json!({ "query": query })).await?;
        self.converge("top", &query, "the first two").await?;
        self.rest
            .batch(json!([{"op": "delete", "path": self.doc("w1")}]))
            .await?;
        let next = self
            .converge("top", &query, "the next document entering the window")
            .await?;
        if next.paths() != [self.doc("w2"), self.doc("w3")] {
            return Err(format!("window after a removal: {:?}", next.paths()));
        }
        self.rest
            .batch(json!([{"op": "set", "path": self.doc("w0"), "data": {"n": 0}}]))
            .await?;
        let pushed = self
            .converge("top", &query, "a new first document pushing one out")
            .await?;
        if pushed.paths() != [self.doc("w0"), self.doc("w2")] {
            return Err(format!("window after an insertion: {:?}", pushed.paths()));
        }
        Ok(())
    }

    async fn resume_without_loss(&mut self) -> Result<(), String> {
        const WRITES: usize = 40;
        const DROPS: usize = 8;
        let query = self.watch_empty_collection().await?;
        let rest = self.rest.clone();
        let paths: Vec<String> = (0..WRITES).map(|i| self.doc(&format!("m{i:03}"))).collect();
        let to_write = paths.clone();
        let writer = tokio::spawn(async move {
            for (i, path) in to_write.iter().enumerate() {
                rest.batch(json!([{"op": "create", "path": path, "data": {"n": i}}]))
                    .await?;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok::<(), String>(())
        });
        for _ in 0..DROPS {
            self.driver.drain_for(Duration::from_millis(120)).await;
            self.proxy.drop_all();
        }
        writer.await.map_err(|e| e.to_string())??;
        let last = self.converge("q", &query, "every written document").await?;
        if last.paths() != paths {
            return Err(format!("final view {:?}", last.paths()));
        }
        if self.proxy.connections() < 3 {
            return Err(format!(
                "expected the client to reconnect after the drops; it opened {} connections",
                self.proxy.connections()
            ));
        }
        // Every state shown existed: documents are created in `n` order, so
        // each view is a prefix of the final one, and views never go back.
        let mut shown = 0;
        let mut added: std::collections::BTreeMap<String, usize> = Default::default();
        for snapshot in self.driver.history("q") {
            let view = snapshot.paths();
            if view.len() > paths.len() || view[..] != paths[..view.len()] {
                return Err(format!("a view that never existed: {view:?}"));
            }
            if view.len() < shown {
                return Err(format!(
                    "the view went back from {shown} to {} documents",
                    view.len()
                ));
            }
            shown = view.len();
            for change in &snapshot.changes {
                if kind_of_change(change) == "added" {
                    *added.entry(change_path(change)).or_default() += 1;
                }
            }
        }
        if let Some((path, n)) = added.iter().find(|(_, n)| **n != 1) {
            return Err(format!("{path} was reported added {n} times"));
        }
        self.check_resume_tokens(&json!({ "query": query }))
    }

    /// Every re-subscription to `target` on a later connection carries a
    /// resume token the server sent for it, when the client had received
    /// one (with 200 ms to spare) before its previous connection ended.
    fn check_resume_tokens(&self, target: &Json) -> Result<(), String> {
        let frames = self.proxy.frames();
        let mut subs: Vec<String> = Vec::new();
        let mut tokens_sent: Vec<(String, Instant)> = Vec::new();
        let mut checked = 0;
        for frame in &frames {
            let f = &frame.frame;
            if frame.from_client && kind(f) == "subscribe" && f.get("target") == Some(target) {
                if let Some(sub) = f.get("sub").and_then(Json::as_str) {
                    subs.push(sub.to_string());
                }
                if frame.conn > 1 {
                    let previous_end = self.proxy.ended(frame.conn - 1);
                    let had_token = tokens_sent.iter().any(|(_, at)| {
                        previous_end.is_some_and(|end| *at + Duration::from_millis(200) < end)
                    });
                    match f.get("resume").and_then(Json::as_str) {
                        Some(token) if tokens_sent.iter().any(|(t, _)| t == token) => checked += 1,
                        Some(token) => {
                            return Err(format!(
                                "resubscribed with a resume token the server never sent: {token}"
                            ))
                        }
                        None if had_token => {
                            return Err(format!(
                                "resubscribed on connection {} without its resume token: {f}",
                                frame.conn
                            ))
                        }
                        None => {}
                    }
                }
            } else if !frame.from_client
                && matches!(kind(f), "snapshot" | "changes")
                && f.get("sub")
                    .and_then(Json::as_str)
                    .is_some_and(|s| subs.iter().any(|x| x == s))
            {
                if let Some(token) = f.get("resume").and_then(Json::as_str) {
                    tokens_sent.push((token.to_string(), frame.at));
                }
            }
        }
        if checked == 0 {
            return Err("no re-subscription carried a resume token".into());
        }
        Ok(())
    }

    async fn retry_lost_answer(&mut self) -> Result<(), String> {
        const WRITES: usize = 3;
        let counter = self.doc("counter");
        self.rest
            .batch(json!([{"op": "set", "path": counter, "data": {"n": 0}}]))
            .await?;
        self.connect_admin().await?;
        self.subscribe("c", json!({ "doc": counter })).await?;
        self.driver
            .wait_snapshot("c", SETTLE, "the counter at 0", |s| {
                s.contents() == [(counter.clone(), json!({"n": 0}))]
            })
            .await?;
        self.proxy.lose_answers(true);
        for i in 0..WRITES {
            let increment = json!([{"op": "merge", "path": counter,
                "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]);
            let id = self
                .driver
                .send("write", json!({ "writes": increment }))
                .await?;
            match self.driver.reply(id, SETTLE).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("write {i} whose answer was lost failed: {e}")),
                Err(timeout) => {
                    let ids = self.mutations_sent().len();
                    return Err(if ids > i + 1 {
                        format!(
                            "{timeout}: {ids} mutation ids for {} writes; a retry must reuse its mutation id",
                            i + 1
                        )
                    } else {
                        timeout
                    });
                }
            }
        }
        let stored = self.rest.get(&counter).await?;
        if stored.get("fields") != Some(&json!({ "n": WRITES })) {
            return Err(format!(
                "{WRITES} increments whose answers were lost left {stored}: a retry must reuse its mutation id"
            ));
        }
        let sent = self.mutations_sent();
        if sent.len() != WRITES {
            return Err(format!(
                "expected {WRITES} mutation ids, the client used {}",
                sent.len()
            ));
        }
        for (id, copies) in &sent {
            if copies.len() < 2 {
                return Err(format!(
                    "mutation {id} was not retried after its answer was lost"
                ));
            }
            if copies.iter().any(|w| w != &copies[0]) {
                return Err(format!("mutation {id} was retried with different writes"));
            }
        }
        self.driver
            .wait_snapshot("c", SETTLE, "the counter at the number of writes", |s| {
                s.contents() == [(counter.clone(), json!({ "n": WRITES }))] && !s.has_pending_writes
            })
            .await?;
        // Increments only add: a view that shows more than was written, or
        // goes back, counted a retried write twice (its commit arrived with
        // the resumed subscription while the write still looked unanswered).
        let mut shown = 0;
        for snapshot in self.driver.history("c") {
            let n = snapshot
                .doc(&counter)
                .and_then(|d| d.pointer("/fields/n"))
                .and_then(Json::as_u64)
                .unwrap_or(0);
            if n < shown || n > WRITES as u64 {
                let history: Vec<Option<&Json>> = self
                    .driver
                    .history("c")
                    .iter()
                    .map(|s| s.doc(&counter).and_then(|d| d.pointer("/fields/n")))
                    .collect();
                return Err(format!(
                    "the counter showed {history:?}: a write retried after its answer was lost \
                     must not be counted twice while its retry is unanswered"
                ));
            }
            shown = n;
        }
        Ok(())
    }

    /// The `writes` of every `write` frame the client sent, by mutation id.
    fn mutations_sent(&self) -> std::collections::BTreeMap<String, Vec<Json>> {
        let mut sent: std::collections::BTreeMap<String, Vec<Json>> = Default::default();
        for frame in self.proxy.client_frames() {
            if kind(&frame.frame) == "write" {
                let id = frame
                    .frame
                    .get("mutation_id")
                    .and_then(Json::as_str)
                    .unwrap_or_default();
                sent.entry(id.to_string())
                    .or_default()
                    .push(frame.frame.get("writes").cloned().unwrap_or(Json::Null));
            }
        }
        sent
    }

    async fn latency_compensation(&mut self) -> Result<(), String> {
        let query = self.watch_empty_collection().await?;
        let path = self.doc("mine");
        self.proxy.hold(true);
        let id = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "set", "path": path, "data": {"n": 7}}]}),
            )
            .await?;
        let shown = self
            .driver
            .wait_snapshot(
                "q",
                SHORT,
                "the client's own write, flagged pending, before the server answers",
                |s| {
                    s.doc(&path)
                        .is_some_and(|d| d.get("pending") == Some(&json!(true)))
                        && s.has_pending_writes
                },
            )
            .await;
        let answered_early = self.driver.has_reply(id);
        self.proxy.hold(false);
        let shown = shown?;
        if shown.contents() != [(path.clone(), json!({"n": 7}))] {
            return Err(format!("the local view is {:?}", shown.contents()));
        }
        if answered_early {
            return Err(
                "the write was reported done while the server's answer was held back".into(),
            );
        }
        self.driver
            .reply(id, SETTLE)
            .await?
            .map_err(|e| format!("the write failed: {e}"))?;
        let confirmed = self.converge("q", &query, "the write confirmed").await?;
        if confirmed
            .docs
            .iter()
            .any(|d| d.get("pending") == Some(&json!(true)))
        {
            return Err("a confirmed document is still flagged pending".into());
        }
        Ok(())
    }

    /// Pending writes in a `limit` window: the local view is filtered,
    /// ordered and cut to the limit again (PROTOCOL.md §13), so a pending
    /// document entering the window pushes the last one out, and one
    /// leaving it lets the next known document in; the view never holds
    /// more than `limit` documents.
    async fn pending_in_limit_window(&mut self) -> Result<(), String> {
        let seeded: Vec<Json> = [("w1", 10), ("w2", 20), ("w3", 30), ("w4", 40)]
            .iter()
            .map(|(id, n)| json!({"op": "set", "path": self.doc(id), "data": {"n": n}}))
            .collect();
        self.rest.batch(Json::Array(seeded)).await?;
        self.connect_admin().await?;
        let mut query = self.ordered_query();
        query["limit"] = json!(3);
        self.subscribe("top", json!({ "query": query })).await?;
        self.converge("top", &query, "the first three").await?;
        self.proxy.hold(true);
        let entering = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "set", "path": self.doc("w0"), "data": {"n": 5}}]}),
            )
            .await?;
        let (w0, w1, w2, w3) = (
            self.doc("w0"),
            self.doc("w1"),
            self.doc("w2"),
            self.doc("w3"),
        );
        let pushed = self
            .driver
            .wait_snapshot(
                "top",
                SHORT,
                "a pending document entering the window and pushing the last one out",
                |s| s.paths() == [w0.clone(), w1.clone(), w2.clone()],
            )
            .await;
        let leaving = match pushed {
            Ok(_) => {
                self.driver
                    .send(
                        "write",
                        json!({"writes": [{"op": "update", "path": w1, "fields": {"n": 50}}]}),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let moved = match &leaving {
            Ok(_) => {
                self.driver
                    .wait_snapshot(
                        "top",
                        SHORT,
                        "a pending update moving a document out of the window, the next known one entering",
                        |s| s.paths() == [w0.clone(), w2.clone(), w3.clone()],
                    )
                    .await
            }
            Err(e) => Err(e.clone()),
        };
        self.proxy.hold(false);
        let moved = moved?;
        if moved.doc(&w0).and_then(|d| d.get("pending")) != Some(&json!(true)) {
            return Err(format!("{w0} is not flagged pending: {:?}", moved.docs));
        }
        if let Some(s) = self.driver.history("top").iter().find(|s| s.docs.len() > 3) {
            return Err(format!(
                "a snapshot of a query with limit 3 held {} documents: {:?}",
                s.docs.len(),
                s.paths()
            ));
        }
        self.writes_confirmed(&[entering, leaving?]).await?;
        let done = self
            .converge("top", &query, "the window once both writes are confirmed")
            .await?;
        if done.paths() != [self.doc("w0"), self.doc("w2"), self.doc("w3")] {
            return Err(format!("final window {:?}", done.paths()));
        }
        self.pending_in_last_window().await
    }

    /// The same for `limit_to_last`: the window is the last 3 (`w3` 30, `w4`
    /// 40, `w1` 50 after the writes above); a pending document at the end
    /// pushes the first one out, and one moved to the front leaves the
    /// window, letting the next known one back in.
    async fn pending_in_last_window(&mut self) -> Result<(), String> {
        let mut query = self.ordered_query();
        query["limit"] = json!(3);
        query["limit_to_last"] = json!(true);
        self.subscribe("last", json!({ "query": query })).await?;
        self.converge("last", &query, "the last three").await?;
        let (w1, w3, w4, w5) = (
            self.doc("w1"),
            self.doc("w3"),
            self.doc("w4"),
            self.doc("w5"),
        );
        self.proxy.hold(true);
        let shown = self.pending_last_window_steps(&w1, &w3, &w4, &w5).await;
        self.proxy.hold(false);
        let ids = shown?;
        if let Some(s) = self
            .driver
            .history("last")
            .iter()
            .find(|s| s.docs.len() > 3)
        {
            return Err(format!(
                "a snapshot of a query with limit_to_last 3 held {} documents: {:?}",
                s.docs.len(),
                s.paths()
            ));
        }
        self.writes_confirmed(&ids).await?;
        let done = self
            .converge(
                "last",
                &query,
                "the limit_to_last window once both writes are confirmed",
            )
            .await?;
        if done.paths() != [w3, w1, w5] {
            return Err(format!("final limit_to_last window {:?}", done.paths()));
        }
        Ok(())
    }

    /// The two pending writes of [`Self::pending_in_last_window`], while the
    /// server's frames are held back; returns their command ids.
    async fn pending_last_window_steps(
        &mut self,
        w1: &str,
        w3: &str,
        w4: &str,
        w5: &str,
    ) -> Result<[u64; 2], String> {
        let added = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "set", "path": w5, "data": {"n": 60}}]}),
            )
            .await?;
        self.driver
            .wait_snapshot(
                "last",
                SHORT,
                "a pending document at the end of a limit_to_last window pushing the first out",
                |s| s.paths() == [w4, w1, w5],
            )
            .await?;
        let moved = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "update", "path": w4, "fields": {"n": 1}}]}),
            )
            .await?;
        self.driver
            .wait_snapshot(
                "last",
                SHORT,
                "a pending update moving a document out of a limit_to_last window",
                |s| s.paths() == [w3, w1, w5],
            )
            .await?;
        Ok([added, moved])
    }

    /// A `merge` of a document a query's view does not hold: the client
    /// cannot know the document's other fields, so it must not show the
    /// merged fields alone as if they were the document (a state that never
    /// exists); it leaves such a write to the server (PROTOCOL.md §13). A
    /// `merge` of a document the view holds is shown at once, on top of the
    /// fields the view knows.
    async fn merge_outside_view(&mut self) -> Result<(), String> {
        let (x, y) = (self.doc("x"), self.doc("y"));
        self.rest
            .batch(json!([
                {"op": "set", "path": x, "data": {"n": 1, "name": "X"}},
                {"op": "set", "path": y, "data": {"n": 2}},
            ]))
            .await?;
        self.connect_admin().await?;
        let mut query = self.ordered_query();
        query["where"] = json!({"field": "n", "op": ">=", "value": 2});
        self.subscribe("q", json!({ "query": query })).await?;
        self.converge("q", &query, "the one document with n >= 2")
            .await?;
        self.proxy.hold(true);
        let merges = self
            .driver
            .send(
                "write",
                json!({"writes": [
                    {"op": "merge", "path": x, "fields": {"n": 3}},
                    {"op": "merge", "path": y, "fields": {"name": "Y"}},
                ]}),
            )
            .await?;
        let y_full = json!({"n": 2, "name": "Y"});
        let shown = self
            .driver
            .wait_snapshot(
                "q",
                SHORT,
                "the merge of a document in the view, on top of its known fields",
                |s| {
                    s.doc(&y).is_some_and(|d| {
                        d.get("fields") == Some(&y_full) && d.get("pending") == Some(&json!(true))
                    })
                },
            )
            .await;
        // Give a client that would show the partial document time to do so.
        self.driver.drain_for(Duration::from_millis(500)).await;
        self.proxy.hold(false);
        shown?;
        let x_full = json!({"n": 3, "name": "X"});
        for s in self.driver.history("q") {
            if let Some(d) = s.doc(&x) {
                if d.get("fields") != Some(&x_full) {
                    return Err(format!(
                        "the view showed {x} as {} before the server answered; the client does \
                         not know the document's other fields, so a merge of a document outside \
                         the view is left to the server",
                        d.get("fields").unwrap_or(&Json::Null)
                    ));
                }
            }
        }
        self.driver
            .reply(merges, SETTLE)
            .await?
            .map_err(|e| format!("the write failed: {e}"))?;
        let done = self
            .converge("q", &query, "both merged documents from the server")
            .await?;
        if done.contents() != [(y.clone(), y_full), (x.clone(), x_full)] {
            return Err(format!("final view {:?}", done.contents()));
        }
        Ok(())
    }

    /// A connection that goes silent without an error (half-open TCP, as
    /// after a phone changes networks) is given up after `idle_timeout_ms`
    /// without a frame, not before, and the client reconnects and catches
    /// up; an idle but healthy connection is kept alive by the client's
    /// own pings (PROTOCOL.md §8). The proxy tells the client 500 ms / 2 s
    /// timers so the check takes seconds.
    async fn dead_connection(&mut self) -> Result<(), String> {
        const HEARTBEAT_MS: u64 = 500;
        const IDLE_MS: u64 = 2_000;
        self.proxy.rewrite_welcome_timers(HEARTBEAT_MS, IDLE_MS);
        let query = self.watch_empty_collection().await?;
        // Three idle timeouts of quiet: only the client's pings and the
        // server's pongs pass, and they must keep the connection.
        self.driver
            .drain_for(Duration::from_millis(3 * IDLE_MS))
            .await;
        if self.proxy.connections() != 1 {
            return Err(format!(
                "the client opened {} connections while the connection was idle but healthy; \
                 with heartbeat_ms {HEARTBEAT_MS} and idle_timeout_ms {IDLE_MS} it must send its \
                 own ping when it has sent nothing for heartbeat_ms (and the server answers)",
                self.proxy.connections()
            ));
        }
        let pings = self
            .proxy
            .client_frames()
            .iter()
            .filter(|f| kind(&f.frame) == "ping")
            .count();
        if pings < 2 {
            return Err(format!(
                "the client sent {pings} ping(s) in {} ms of silence with heartbeat_ms {HEARTBEAT_MS}",
                3 * IDLE_MS
            ));
        }
        let attempts = self.proxy.attempts().len();
        let silent_at = Instant::now();
        self.proxy.go_silent();
        self.rest
            .batch(json!([{"op": "set", "path": self.doc("late"), "data": {"n": 1}}]))
            .await?;
        let deadline = silent_at + Duration::from_millis(IDLE_MS + 5_000);
        let reconnected_at = loop {
            if let Some(at) = self.proxy.attempts().get(attempts) {
                break *at;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no new connection {} ms after the connection went silent \
                     (idle_timeout_ms {IDLE_MS}): a client must give up a connection on which \
                     nothing arrived for idle_timeout_ms",
                    IDLE_MS + 5_000
                ));
            }
            self.driver.drain_for(Duration::from_millis(50)).await;
        };
        let after = reconnected_at.duration_since(silent_at);
        // The last frame before the silence arrived at most one heartbeat
        // earlier, so giving up sooner than this is not waiting idle_timeout_ms.
        if after < Duration::from_millis(IDLE_MS - HEARTBEAT_MS - 300) {
            return Err(format!(
                "the client gave up the silent connection after {after:?}; it must allow \
                 idle_timeout_ms ({IDLE_MS} ms) without a frame, not a multiple of heartbeat_ms"
            ));
        }
        self.converge(
            "q",
            &query,
            "the write made while the connection was silent",
        )
        .await?;
        Ok(())
    }

    /// Close 4001 (the access token expired): the client does not reconnect
    /// with the credential it has; a new one given with `set_token` makes it
    /// reconnect at once with that credential in `hello` and resume its
    /// subscriptions (PROTOCOL.md §4, §10, §13).
    async fn expired_token(&mut self) -> Result<(), String> {
        let query = self.watch_empty_collection().await?;
        let attempts = self.proxy.attempts().len();
        self.proxy.close_all_with(4001, "token expired");
        let deadline = Instant::now() + SHORT;
        while self.proxy.ended(1).is_none() {
            if Instant::now() > deadline {
                return Err("the proxy could not close the connection".into());
            }
            self.driver.drain_for(Duration::from_millis(50)).await;
        }
        self.rest
            .batch(json!([{"op": "set", "path": self.doc("meanwhile"), "data": {"n": 1}}]))
            .await?;
        self.driver.drain_for(Duration::from_secs(3)).await;
        let again = self.proxy.attempts().len() - attempts;
        if again > 0 {
            return Err(format!(
                "the client reconnected {again} time(s) after close 4001 (token expired) \
                 without a new credential; it must wait for one"
            ));
        }
        let asked = Instant::now();
        let key = self.admin_key.clone();
        let id = self
            .driver
            .send("set_token", json!({ "token": key }))
            .await?;
        self.converge(
            "q",
            &query,
            "the view after reconnecting with the new credential",
        )
        .await?;
        let hello = self
            .proxy
            .client_frames()
            .into_iter()
            .find(|f| f.conn > 1 && kind(&f.frame) == "hello")
            .ok_or("no new connection after set_token")?;
        if hello.frame.get("token").and_then(Json::as_str) != Some(key.as_str()) {
            return Err("the new connection's hello does not carry the new credential".into());
        }
        if hello.at.duration_since(asked) > Duration::from_secs(2) {
            return Err(format!(
                "the client took {:?} to reconnect after set_token; a new credential should \
                 end the wait at once",
                hello.at.duration_since(asked)
            ));
        }
        self.driver
            .reply(id, SHORT)
            .await?
            .map_err(|e| format!("set_token failed: {e}"))?;
        Ok(())
    }

    /// The document at `path` over REST: `(version, n)`.
    async fn counter(&self, path: &str) -> Result<(u64, Json), String> {
        let doc = self
            .rest
            .admin(reqwest::Method::GET, &format!("/v1/db/{path}"), None)
            .await?;
        let version = doc
            .get("version")
            .and_then(Json::as_u64)
            .ok_or_else(|| format!("no version in {doc}"))?;
        Ok((version, doc["fields"]["n"].clone()))
    }

    /// A transaction (read, decide, write): the client sends one
    /// `transaction` frame whose `reads` carry the version it read; when
    /// another writer changed the document in between, the server answers
    /// `aborted` and the client reads again and retries under a new
    /// mutation id; a commit whose answer was lost is resent under the same
    /// mutation id and applied once (PROTOCOL.md §7).
    async fn transaction(&mut self) -> Result<(), String> {
        let counter = self.doc("counter");
        self.rest
            .batch(json!([{"op": "set", "path": counter, "data": {"n": 0}}]))
            .await?;
        let (seeded, _) = self.counter(&counter).await?;
        self.connect_admin().await?;
        // A transaction reads the server's document, not the client's own
        // pending write to it (kept queued while the proxy answers every
        // `write` with `unavailable`).
        let other = self.doc("other");
        self.rest
            .batch(json!([{"op": "set", "path": other, "data": {"n": 5}}]))
            .await?;
        self.proxy.refuse_writes(usize::MAX);
        let pending = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "set", "path": other, "data": {"n": 100}}]}),
            )
            .await?;
        let over_pending = self
            .driver
            .send(
                "transaction_increment",
                json!({"path": other, "field": "n"}),
            )
            .await?;
        let answered = self.driver.reply(over_pending, SETTLE).await;
        self.proxy.refuse_writes(0);
        let value = answered?.map_err(|e| format!("the transaction failed: {e}"))?;
        if value.get("value") != Some(&json!(6)) {
            return Err(format!(
                "a transaction over a document with a pending write of n = 100 (server: n = 5) \
                 answered {value}; its read must be the server's document (6 expected), not the \
                 local view"
            ));
        }
        self.driver
            .reply(pending, SETTLE)
            .await?
            .map_err(|e| format!("the pending write failed: {e}"))?;
        // A conflict: the answer to the client's read is held back while
        // another writer changes the document.
        let before = self.proxy.frames().len();
        self.proxy.hold(true);
        let first = self
            .driver
            .send(
                "transaction_increment",
                json!({"path": counter, "field": "n"}),
            )
            .await?;
        let deadline = Instant::now() + SHORT;
        let read_answered = loop {
            let answered = self.proxy.frames()[before..].iter().any(|f| {
                !f.from_client
                    && kind(&f.frame) == "snapshot"
                    && f.frame["docs"][0]["path"] == counter
            });
            if answered || Instant::now() > deadline {
                break answered;
            }
            self.driver.drain_for(Duration::from_millis(20)).await;
        };
        let changed = self
            .rest
            .batch(json!([{"op": "update", "path": counter, "fields": {"n": 10}}]))
            .await;
        self.proxy.hold(false);
        if !read_answered {
            return Err(
                "the client did not read the document (no snapshot for it within 5 s) \
                 before committing the transaction"
                    .into(),
            );
        }
        changed?;
        let value = self
            .driver
            .reply(first, SETTLE)
            .await?
            .map_err(|e| format!("the transaction failed: {e}"))?;
        if value.get("value") != Some(&json!(11)) {
            return Err(format!(
                "the transaction should have read 10 on its retry and written 11; it answered {value}"
            ));
        }
        let sent: Vec<Json> = self
            .proxy
            .client_frames()
            .into_iter()
            .filter(|f| kind(&f.frame) == "transaction" && f.frame["writes"][0]["path"] == counter)
            .map(|f| f.frame)
            .collect();
        let first_reads = json!([{"path": counter, "version": seeded}]);
        match sent.as_slice() {
            [conflicted, retried, ..] => {
                if conflicted.get("reads") != Some(&first_reads) {
                    return Err(format!(
                        "the first transaction frame must carry the version read, {first_reads}; \
                         it was {conflicted}"
                    ));
                }
                if conflicted.get("mutation_id") == retried.get("mutation_id") {
                    return Err("a retry after `aborted` is a new mutation: it needs a new \
                         mutation id (the same id with other writes is invalid-argument)"
                        .into());
                }
            }
            _ => {
                return Err(format!(
                    "expected a `transaction` frame refused with `aborted` and a retry; the client \
                     sent {} `transaction` frame(s)",
                    sent.len()
                ))
            }
        }
        if self.counter(&counter).await?.1 != json!(11) {
            return Err("the counter is not 11 after the transaction".into());
        }
        // A commit whose answer is lost with its connection.
        let frames_before = sent.len();
        self.proxy.lose_answers(true);
        let second = self
            .driver
            .send(
                "transaction_increment",
                json!({"path": counter, "field": "n"}),
            )
            .await?;
        let answered = self.driver.reply(second, SETTLE).await;
        self.proxy.lose_answers(false);
        let value = answered?.map_err(|e| format!("the transaction failed: {e}"))?;
        let (_, n) = self.counter(&counter).await?;
        if n != json!(12) || value.get("value") != Some(&json!(12)) {
            return Err(format!(
                "after a transaction whose answer was lost the counter is {n} and the client \
                 answered {value}; expected 12 and 12 (applied exactly once)"
            ));
        }
        let resent: Vec<Json> = self
            .proxy
            .client_frames()
            .into_iter()
            .filter(|f| kind(&f.frame) == "transaction" && f.frame["writes"][0]["path"] == counter)
            .map(|f| f.frame)
            .skip(frames_before)
            .collect();
        let same = |a: &Json, b: &Json| {
            ["mutation_id", "reads", "writes"]
                .iter()
                .all(|k| a.get(k) == b.get(k))
        };
        if !(resent.len() >= 2 && same(&resent[0], &resent[1])) {
            return Err(format!(
                "the transaction whose answer was lost must be resent as the same frame (same \
                 mutation id, reads and writes); the client sent {resent:?}"
            ));
        }
        Ok(())
    }

    /// Pending writes in a collection-group query: a write to a document in
    /// *any* collection with the group's id (here under a parent the view
    /// has never shown) is shown at once, filtered, ordered and cut to the
    /// limit with the server's documents; a write to a collection with
    /// another id (one whose id starts with the group's, or a subcollection
    /// of a document in the group) is not (PROTOCOL.md §2, §5, §13).
    ///
    /// A collection-group query with a field filter or order needs an index
    /// declared in the server's config, so this one filters and orders by
    /// `__name__`: full paths compared segment by segment (`p1/…` before
    /// `p1-`, `p2/…` before `p2-x/…`), which a plain string comparison gets
    /// wrong (`-` sorts before `/`).
    async fn pending_in_group_query(&mut self) -> Result<(), String> {
        // A collection id no other check or run uses, in collections under
        // documents of this check's collection.
        let group = format!("{}_items", self.collection);
        let member = |parent: &str, id: &str| format!("{}/{parent}/{group}/{id}", self.collection);
        let docs = GroupDocs {
            filtered: member("p1", "z"),
            a: member("p2", "a"),
            m: member("p2", "m"),
            k: member("p3", "k"),
            new: member("p2-x", "b"),
            new_filtered: member("p1", "c"),
            decoys: [
                format!("{}/p2/{group}_x/d", self.collection),
                format!("{}/sub/e", member("p2", "a")),
            ],
        };
        self.rest
            .batch(json!([
                {"op": "set", "path": docs.filtered, "data": {"n": 1}},
                {"op": "set", "path": docs.a, "data": {"n": 2}},
                {"op": "set", "path": docs.m, "data": {"n": 3}},
                {"op": "set", "path": docs.k, "data": {"n": 4}},
            ]))
            .await?;
        self.connect_admin().await?;
        let query = json!({"collection_group": group,
            "where": {"field": "__name__", "op": ">", "value": format!("{}/p1-", self.collection)},
            "limit": 3});
        self.subscribe("g", json!({ "query": query })).await?;
        let first = self
            .converge(
                "g",
                &query,
                "the first three documents of the collection group",
            )
            .await?;
        if first.paths() != [docs.a.clone(), docs.m.clone(), docs.k.clone()] {
            return Err(format!(
                "wrong initial view of collection group {group}: {:?}",
                first.paths()
            ));
        }
        self.proxy.hold(true);
        let steps = self.pending_group_steps(&docs).await;
        self.proxy.hold(false);
        for s in self.driver.history("g") {
            if let Some(decoy) = docs.decoys.iter().find(|d| s.doc(d).is_some()) {
                return Err(format!(
                    "the view of collection group {group} showed {decoy}, whose collection id is \
                     not {group}: a collection group holds the documents whose parent \
                     collection's id (its last segment) is the group's"
                ));
            }
            if s.doc(&docs.new_filtered).is_some() {
                return Err(format!(
                    "the view showed {}, which the query's filter __name__ > {}/p1- excludes \
                     (document paths compare segment by segment: p1 < p1-)",
                    docs.new_filtered, self.collection
                ));
            }
        }
        let (ids, shown) = steps?;
        let expected = [
            (docs.m.clone(), json!({"n": 20})),
            (docs.new.clone(), json!({"n": 10})),
            (docs.k.clone(), json!({"n": 4})),
        ];
        if shown.contents() != expected {
            return Err(format!(
                "the local view with both writes pending is {:?}, expected {expected:?}",
                shown.contents()
            ));
        }
        for path in [&docs.m, &docs.new] {
            if shown.doc(path).and_then(|d| d.get("pending")) != Some(&json!(true)) {
                return Err(format!("{path} is not flagged pending: {:?}", shown.docs));
            }
        }
        if !shown.has_pending_writes {
            return Err("a view with pending documents must have has_pending_writes".into());
        }
        self.writes_confirmed(&ids).await?;
        let done = self
            .converge(
                "g",
                &query,
                "the collection group once both writes are confirmed",
            )
            .await?;
        if done.paths() != [docs.m, docs.new, docs.k] {
            return Err(format!(
                "final view of collection group {group}: {:?}",
                done.paths()
            ));
        }
        Ok(())
    }

    /// The two pending writes of [`Self::pending_in_group_query`], while the
    /// server's frames are held back: one frame creating a document in a
    /// third parent's collection of the group (it enters the window last,
    /// pushing `k` out), one the filter excludes and the two decoys outside
    /// the group; then one frame updating `m` and deleting `a` (`k` comes
    /// back). Returns their command ids and the view showing both.
    async fn pending_group_steps(
        &mut self,
        docs: &GroupDocs,
    ) -> Result<([u64; 2], Snapshot), String> {
        let created = self
            .driver
            .send(
                "write",
                json!({"writes": [
                    {"op": "set", "path": docs.new, "data": {"n": 10}},
                    {"op": "set", "path": docs.new_filtered, "data": {"n": 11}},
                    {"op": "set", "path": docs.decoys[0], "data": {"n": 12}},
                    {"op": "set", "path": docs.decoys[1], "data": {"n": 13}},
                ]}),
            )
            .await?;
        let (a, m, k, new) = (
            docs.a.as_str(),
            docs.m.as_str(),
            docs.k.as_str(),
            docs.new.as_str(),
        );
        self.driver
            .wait_snapshot(
                "g",
                SHORT,
                &format!(
                    "a pending document in a collection of the group under a parent the view \
                     had not shown, in __name__ order (paths compared segment by segment): \
                     {a}, {m}, {new}"
                ),
                |s| s.paths() == [a, m, new],
            )
            .await?;
        let changed = self
            .driver
            .send(
                "write",
                json!({"writes": [
                    {"op": "update", "path": m, "fields": {"n": 20}},
                    {"op": "delete", "path": a},
                ]}),
            )
            .await?;
        let shown = self
            .driver
            .wait_snapshot(
                "g",
                SHORT,
                &format!(
                    "a pending update of {m} and a pending delete of {a}, letting {k} back \
                     into the window: {m}, {new}, {k}"
                ),
                |s| s.paths() == [m, new, k],
            )
            .await?;
        Ok(([created, changed], shown))
    }

    /// A client keeps its unanswered writes under the `welcome`'s
    /// `limits.max_inflight_writes` on each connection and sends the rest as
    /// answers come in (PROTOCOL.md §7, §13). The proxy tells the client a
    /// limit of 2 (the server's own is far higher, so it would take them
    /// all) and holds the server's answers back while 6 writes are made.
    async fn inflight_limit(&mut self) -> Result<(), String> {
        const LIMIT: u64 = 2;
        const WRITES: usize = 6;
        self.proxy.rewrite_welcome_max_inflight(LIMIT);
        let query = self.watch_empty_collection().await?;
        let paths: Vec<String> = (0..WRITES).map(|i| self.doc(&format!("f{i}"))).collect();
        self.proxy.hold(true);
        let queued = self
            .queue_writes_unanswered(&paths, "while the server's answers were held back")
            .await;
        self.proxy.hold(false);
        let ids = queued?;
        self.writes_confirmed(&ids).await?;
        if let Some((conn, peak)) = self
            .proxy
            .unanswered_peaks()
            .into_iter()
            .find(|(_, peak)| *peak as u64 > LIMIT)
        {
            return Err(format!(
                "the client had {peak} write/transaction frames unanswered at once on connection \
                 {conn}, while `welcome` said limits.max_inflight_writes {LIMIT}: it must keep \
                 its writes under the limit and send the rest as answers come in"
            ));
        }
        let sent = self.mutations_sent();
        if sent.len() != WRITES || sent.values().any(|copies| copies.len() != 1) {
            return Err(format!(
                "expected {WRITES} mutations, each sent once on a connection that never broke; \
                 the client sent {:?}",
                sent.iter().map(|(id, c)| (id, c.len())).collect::<Vec<_>>()
            ));
        }
        let done = self
            .converge("q", &query, "the paced writes confirmed")
            .await?;
        if done.paths() != paths {
            return Err(format!("the server holds {:?}", done.paths()));
        }
        Ok(())
    }

    /// One `write` command creating each of `paths` (`n` = its index) while
    /// no answer can come (`while_`: why); all must be shown as pending
    /// (queued, whether sent or not), none answered. Returns their command
    /// ids.
    async fn queue_writes_unanswered(
        &mut self,
        paths: &[String],
        while_: &str,
    ) -> Result<Vec<u64>, String> {
        let mut ids = Vec::new();
        for (n, path) in paths.iter().enumerate() {
            let write = json!([{"op": "create", "path": path, "data": {"n": n}}]);
            ids.push(
                self.driver
                    .send("write", json!({ "writes": write }))
                    .await?,
            );
        }
        self.driver
            .wait_snapshot(
                "q",
                SHORT,
                "every write shown as pending, those beyond the in-flight limit included",
                |s| {
                    s.paths() == paths
                        && s.docs
                            .iter()
                            .all(|d| d.get("pending") == Some(&json!(true)))
                },
            )
            .await?;
        // Time for a client that ignores the limit to send everything.
        self.driver.drain_for(Duration::from_millis(800)).await;
        if let Some(id) = ids.iter().find(|id| self.driver.has_reply(**id)) {
            return Err(format!("command {id} was answered {while_}"));
        }
        Ok(ids)
    }

    /// Waits for each of the `write` commands `ids` to be answered `ok`.
    async fn writes_confirmed(&mut self, ids: &[u64]) -> Result<(), String> {
        for id in ids {
            self.driver
                .reply(*id, SETTLE)
                .await?
                .map_err(|e| format!("write command {id} failed: {e}"))?;
        }
        Ok(())
    }

    async fn offline_queue(&mut self) -> Result<(), String> {
        let query = self.watch_empty_collection().await?;
        self.proxy.refuse(true);
        self.proxy.drop_all();
        let paths: Vec<String> = (0..3).map(|i| self.doc(&format!("off{i}"))).collect();
        let ids = self
            .queue_writes_unanswered(&paths, "while the server was unreachable")
            .await?;
        if !self.rest.query(&query).await?.is_empty() {
            return Err("a write reached the server while it was unreachable".into());
        }
        self.proxy.refuse(false);
        for id in ids {
            self.driver
                .reply(id, Duration::from_secs(40))
                .await?
                .map_err(|e| format!("an offline write failed after reconnecting: {e}"))?;
        }
        let done = self
            .converge("q", &query, "the offline writes confirmed")
            .await?;
        if done.docs.len() != 3 {
            return Err(format!(
                "expected 3 documents, the server has {:?}",
                done.paths()
            ));
        }
        Ok(())
    }

    async fn backoff(&mut self) -> Result<(), String> {
        let query = self.watch_empty_collection().await?;
        self.proxy.refuse(true);
        self.count_reconnects(30, "back off exponentially between failed attempts")
            .await?;
        self.proxy.refuse(false);
        self.catches_up(&query).await
    }

    /// A server that accepts the handshake and drops the connection at once,
    /// again and again, must not be hammered: a session that ends before
    /// anything but `welcome` arrived counts as a failed attempt.
    async fn backoff_after_welcome(&mut self) -> Result<(), String> {
        let query = self.watch_empty_collection().await?;
        self.proxy.drop_after_welcome(true);
        self.count_reconnects(
            20,
            "to a server that drops each one right after `welcome`: such a session must count as \
             a failed attempt for the backoff",
        )
        .await?;
        self.proxy.drop_after_welcome(false);
        self.catches_up(&query).await
    }

    /// Drops the connection and counts the client's connection attempts
    /// over the next 6 s (the proxy set to fail them): at least 2 (it keeps
    /// trying), at most `most` (it backs off).
    async fn count_reconnects(&mut self, most: usize, hint: &str) -> Result<(), String> {
        const WINDOW: Duration = Duration::from_secs(6);
        let cut = Instant::now();
        self.proxy.drop_all();
        self.driver.drain_for(WINDOW).await;
        let attempts = self.proxy.attempts().iter().filter(|t| **t > cut).count();
        if attempts < 2 {
            return Err(format!(
                "{attempts} reconnect attempt(s) in {WINDOW:?}: the client must keep trying"
            ));
        }
        if attempts > most {
            return Err(format!(
                "{attempts} connection attempts in {WINDOW:?}: {hint}"
            ));
        }
        Ok(())
    }

    /// Changes the watched collection over REST and waits (up to 45 s, a
    /// backed-off client's next attempt included) for subscription `q` to
    /// show it.
    async fn catches_up(&mut self, query: &Json) -> Result<(), String> {
        self.rest
            .batch(json!([{"op": "set", "path": self.doc("after"), "data": {"n": 1}}]))
            .await?;
        let expected = self.rest.query(query).await?;
        self.driver
            .wait_snapshot(
                "q",
                Duration::from_secs(45),
                "the change made while it was away",
                |s| s.contents() == expected,
            )
            .await
            .map(drop)
    }

    /// A write answered `unavailable` (a server shutting down, or one whose
    /// storage failed and that refuses writes until a restart) stays queued
    /// and is resent with its mutation id after a backoff.
    async fn retry_unavailable(&mut self) -> Result<(), String> {
        const REFUSALS: usize = 2;
        let query = self.watch_empty_collection().await?;
        self.proxy.refuse_writes(REFUSALS);
        let path = self.doc("kept");
        let id = self
            .driver
            .send(
                "write",
                json!({"writes": [{"op": "create", "path": path, "data": {"n": 1}}]}),
            )
            .await?;
        match self.driver.reply(id, SETTLE).await? {
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "a write answered `unavailable` must stay queued and be retried, it failed: {e}"
                ))
            }
        }
        let sent = self.mutations_sent();
        let copies = sent.values().next().map_or(0, Vec::len);
        if sent.len() != 1 || copies < REFUSALS + 1 {
            return Err(format!(
                "expected one mutation id sent {} times, got {:?}",
                REFUSALS + 1,
                sent.iter().map(|(id, c)| (id, c.len())).collect::<Vec<_>>()
            ));
        }
        let done = self
            .converge("q", &query, "the retried write confirmed")
            .await?;
        if done.paths() != [path] {
            return Err(format!("the server holds {:?}", done.paths()));
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), String> {
        self.connect_admin().await?;
        let (conn, id) = self
            .proxy
            .inject_ping()
            .ok_or("no live connection to ping on")?;
        let deadline = Instant::now() + SHORT;
        while Instant::now() < deadline {
            if self
                .proxy
                .injected_pongs()
                .iter()
                .any(|(c, i, _)| *c == conn && *i == id)
            {
                return Ok(());
            }
            self.driver.drain_for(Duration::from_millis(50)).await;
        }
        Err(format!(
            "no pong with id {id} within {SHORT:?} of the server's ping"
        ))
    }

    async fn token_refresh(&mut self, anonymous: &mut Option<Json>) -> Result<(), String> {
        let tokens = match anonymous.take() {
            Some(tokens) => tokens,
            None => {
                self.rest
                    .call(
                        reqwest::Method::POST,
                        "/v1/auth/anonymous",
                        Some(json!({})),
                        None,
                    )
                    .await?
            }
        };
        let field = |t: &Json, k: &str| t.get(k).and_then(Json::as_str).map(str::to_string);
        let access =
            field(&tokens, "access_token").ok_or("no access_token from /v1/auth/anonymous")?;
        let refresh =
            field(&tokens, "refresh_token").ok_or("no refresh_token from /v1/auth/anonymous")?;
        self.connect(Some(&access)).await?;
        // Default rules deny an anonymous user: errors reach the application.
        self.subscribe("denied", json!({"query": self.ordered_query()}))
            .await?;
        self.driver
            .wait_snapshot("denied", SHORT, "the subscription's error", |_| false)
            .await
            .err()
            .filter(|e| e.contains("permission-denied"))
            .ok_or("a subscription the rules deny must end with permission-denied")?;
        let refreshed = self
            .rest
            .call(
                reqwest::Method::POST,
                "/v1/auth/refresh",
                Some(json!({ "refresh_token": refresh })),
                None,
            )
            .await?;
        *anonymous = Some(refreshed.clone());
        let fresh =
            field(&refreshed, "access_token").ok_or("no access_token from /v1/auth/refresh")?;
        self.driver
            .request("set_token", json!({ "token": fresh }), SHORT)
            .await?;
        let sent = self.proxy.client_frames().into_iter().find(|f| {
            kind(&f.frame) == "auth"
                && f.frame.get("token").and_then(Json::as_str) == Some(fresh.as_str())
        });
        match sent {
            Some(frame) if frame.conn == 1 && self.proxy.connections() == 1 => Ok(()),
            Some(frame) => Err(format!(
                "the token was sent on connection {} of {}: refresh it on the live socket with `auth`",
                frame.conn,
                self.proxy.connections()
            )),
            None => Err("no `auth` frame carried the new token".into()),
        }
    }

    /// A session revoked by sign-out is closed with 4003; the client must not
    /// reconnect with the same credential (PROTOCOL.md §4, §13).
    async fn revoked_session(&mut self) -> Result<(), String> {
        let tokens = self
            .rest
            .call(
                reqwest::Method::POST,
                "/v1/auth/anonymous",
                Some(json!({})),
                None,
            )
            .await?;
        let access = tokens
            .get("access_token")
            .and_then(Json::as_str)
            .ok_or("no access_token from /v1/auth/anonymous")?
            .to_string();
        self.connect(Some(&access)).await?;
        let attempts = self.proxy.attempts().len();
        self.rest
            .call(
                reqwest::Method::POST,
                "/v1/auth/logout",
                Some(json!({"everywhere": false})),
                Some(&access),
            )
            .await?;
        let deadline = Instant::now() + SHORT;
        while self.proxy.ended(1).is_none() {
            if Instant::now() > deadline {
                return Err("the server did not close the revoked session's connection".into());
            }
            self.driver.drain_for(Duration::from_millis(50)).await;
        }
        self.driver.drain_for(Duration::from_secs(3)).await;
        let again = self.proxy.attempts().len() - attempts;
        if again > 0 {
            return Err(format!(
                "the client reconnected {again} time(s) after close 4003 (session revoked); \
                 it must wait for a new credential"
            ));
        }
        Ok(())
    }

    async fn reset_past_retention(&mut self) -> Result<(), String> {
        self.rest
            .batch(json!([
                {"op": "set", "path": self.doc("a"), "data": {"n": 1}},
                {"op": "set", "path": self.doc("b"), "data": {"n": 2}},
            ]))
            .await?;
        self.connect_admin().await?;
        let query = self.ordered_query();
        self.subscribe("q", json!({ "query": query })).await?;
        self.converge("q", &query, "the initial result").await?;
        self.proxy.refuse(true);
        self.proxy.drop_all();
        self.rest
            .batch(json!([
                {"op": "delete", "path": self.doc("a")},
                {"op": "set", "path": self.doc("c"), "data": {"n": 3}},
            ]))
            .await?;
        let other = format!("{}_filler/f", self.collection);
        for i in 0..30 {
            self.rest
                .batch(json!([{"op": "set", "path": other, "data": {"i": i}}]))
                .await?;
        }
        // The server prunes in the background, at most every 200 ms.
        self.driver.drain_for(Duration::from_millis(1200)).await;
        self.proxy.refuse(false);
        let last = self
            .converge("q", &query, "the current result after a reset")
            .await?;
        if last.paths() != [self.doc("b"), self.doc("c")] {
            return Err(format!("after the reset the view is {:?}", last.paths()));
        }
        let reset_sent = self.proxy.frames().iter().any(|f| {
            !f.from_client
                && kind(&f.frame) == "snapshot"
                && f.frame.get("reset") == Some(&json!(true))
        });
        if !reset_sent {
            return Err(
                "the server never sent a reset snapshot: is it configured with tiny retention?"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The documents of `client-22-pending-in-group-query` (full paths).
struct GroupDocs {
    /// In the group under parent `p1`, excluded by the query's filter
    /// `__name__ > <collection>/p1-`.
    filtered: String,
    /// The window at first: `a`, `m`, `k` (under parents `p2`, `p2`, `p3`).
    a: String,
    m: String,
    k: String,
    /// Created by a pending write, under a third parent, `p2-x`.
    new: String,
    /// Created by a pending write, in the group under `p1`, excluded by the
    /// filter.
    new_filtered: String,
    /// Written with `new`, outside the group: a collection whose id starts
    /// with the group's, and a subcollection of `a`.
    decoys: [String; 2],
}

fn kind(frame: &Json) -> &str {
    frame.get("type").and_then(Json::as_str).unwrap_or_default()
}

fn kind_of_change(change: &Json) -> &str {
    change
        .get("kind")
        .and_then(Json::as_str)
        .unwrap_or_default()
}

fn change_path(change: &Json) -> String {
    change
        .get("path")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}
