//! # hearth-server
//!
//! The HTTP face of Hearth: one axum application that serves the REST API
//! (`/v1/db`, `/v1/query`, `/v1/batch`, `/v1/transactions`, admin routes),
//! health (`/healthz`, `/readyz`), Prometheus metrics (`/metrics`) and its own
//! OpenAPI description (`/v1/openapi.json`), and merges the routers of the
//! service crates (auth, the WebSocket gateway) under the same port.
//!
//! What it owns: translating HTTP to store calls ([`rest`]), deciding who the
//! caller is ([`access`]), mapping every error to the one envelope
//! ([`error`]), and graceful shutdown ([`serve`]). What it never does:
//! interpret writes or queries (that is `hearth-protocol`/`hearth-store`).
//!
//! ```text
//! request → CatchPanic → envelope fallback → metrics → timeout → body limit → route
//! ```

pub mod access;
pub mod admin_key;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod rest;
pub mod telemetry;
pub mod transactions;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_protocol::api::HealthResponse;
use hearth_protocol::ErrorCode;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use access::{Access, Principal, TokenVerifier};
pub use admin_key::{AdminKey, AdminKeySource};
pub use error::{error_response, ApiError};
pub use transactions::Transactions;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Longest time a request may take before `504 deadline-exceeded`.
    pub request_timeout: Duration,
    /// Largest request body (bytes) before `413 payload-too-large`.
    pub max_body_bytes: usize,
    /// How long an uncommitted REST transaction lives.
    pub transaction_ttl: Duration,
    /// Bound on REST transactions open at once.
    pub max_open_transactions: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            request_timeout: Duration::from_secs(30),
            max_body_bytes: extract::MAX_BODY_BYTES,
            transaction_ttl: transactions::DEFAULT_TRANSACTION_TTL,
            max_open_transactions: transactions::DEFAULT_MAX_OPEN_TRANSACTIONS,
        }
    }
}

struct Inner {
    store: hearth_store::Store,
    access: Access,
    transactions: Transactions,
    metrics: PrometheusHandle,
    /// Called before each `/metrics` render (services publish their gauges).
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
    ready: AtomicBool,
    options: ServerOptions,
}

/// A service's "publish your figures now" callback (see [`AppState::on_scrape`]).
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// Shared state of the REST handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("access", &self.0.access)
            .field("options", &self.0.options)
            .finish()
    }
}

impl AppState {
    /// Builds the state around an open store. Starts the transaction reaper,
    /// so it must be called inside a tokio runtime.
    pub fn new(store: hearth_store::Store, access: Access, options: ServerOptions) -> AppState {
        let transactions =
            Transactions::new(options.transaction_ttl, options.max_open_transactions);
        transactions.spawn_reaper();
        AppState(Arc::new(Inner {
            store,
            access,
            transactions,
            metrics: telemetry::install_recorder(),
            scrape_hooks: std::sync::Mutex::new(Vec::new()),
            ready: AtomicBool::new(true),
            options,
        }))
    }

    pub fn store(&self) -> &hearth_store::Store {
        &self.0.store
    }
    pub fn access(&self) -> &Access {
        &self.0.access
    }
    pub fn transactions(&self) -> &Transactions {
        &self.0.transactions
    }
    /// Registers a callback run before every `/metrics` render, for a
    /// service that keeps its own counters (the gateway) to publish them
    /// through the `metrics` facade.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.0.scrape_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }
    /// Marks the server as draining: `/readyz` answers 503 from now on.
    pub fn set_not_ready(&self) {
        self.0.ready.store(false, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = openapi::HealthSchema)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

/// `GET /readyz`: the store is open, can still commit (it has not failed to
/// sync), and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready to serve.", body = openapi::HealthSchema),
              (status = 503, description = "Shutting down, or the store failed to sync to disk and refuses writes until a restart (the message says which).", body = openapi::ErrorEnvelopeSchema)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    // A store that failed to sync refuses every write until a restart
    // (hearth-store's fail-stop): not ready, and the message says why.
    if let Some(failure) = state.store().storage_failure() {
        return Err(ApiError::new(ErrorCode::Unavailable, failure));
    }
    if state.is_ready() {
        Ok(Json(HealthResponse {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::new(ErrorCode::Unavailable, "shutting down"))
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.", content_type = "text/plain", body = String)))]
pub async fn metrics_text(State(state): State<AppState>) -> Response<Body> {
    metrics::gauge!("hearth_changelog_head").set(state.store().changelog().head() as f64);
    metrics::gauge!("hearth_open_transactions").set(state.transactions().len() as f64);
    let failed = state.store().storage_failure().is_some();
    metrics::gauge!("hearth_storage_failed").set(if failed { 1.0 } else { 0.0 });
    if let Ok(hooks) = state.0.scrape_hooks.lock() {
        hooks.iter().for_each(|hook| hook());
    }
    let mut response = Response::new(Body::from(state.0.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `GET /v1/openapi.json`: this API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document (also committed as sdk-spec/openapi.json).", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi::openapi_json(),
    )
}

/// The whole application: REST routes with `state`, plus `services` (routers
/// of other crates with their own state applied, e.g. auth and `/v1/ws`),
/// under the common layers.
pub fn app(state: AppState, services: Vec<Router>) -> Router {
    let options = state.0.options.clone();
    let db = get(rest::db_get)
        .put(rest::db_put)
        .patch(rest::db_patch)
        .delete(rest::db_delete)
        .post(rest::db_post);
    let mut router = Router::new()
        .route("/v1/db/{*path}", db)
        .route("/v1/query", post(rest::query))
        .route("/v1/batch", post(rest::batch))
        .route("/v1/transactions", post(rest::tx_begin))
        .route("/v1/transactions/{id}/get", post(rest::tx_get))
        .route("/v1/transactions/{id}/query", post(rest::tx_query))
        .route("/v1/transactions/{id}/commit", post(rest::tx_commit))
        .route(
            "/v1/transactions/{id}",
            axum::routing::delete(rest::tx_delete),
        )
        .route("/v1/indexes", get(rest::indexes))
        .route("/v1/changelog", get(rest::changelog))
        .route("/v1/admin/backup", post(rest::backup))
        .route("/v1/admin/export", get(rest::export))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi_json))
        .with_state(state);
    for service in services {
        router = router.merge(service);
    }
    router
        .fallback(error::not_found_fallback)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            options.request_timeout,
        ))
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .layer(axum::middleware::from_fn(error::envelope_fallback))
        .layer(CatchPanicLayer::custom(error::panic_response))
}

/// Serves `router` on `listener` (with `TCP_NODELAY` on every accepted
/// connection) until `shutdown` resolves, then stops accepting, lets in-flight requests finish and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small responses and WebSocket frames must not wait for Nagle's delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_reports_a_store_that_failed_to_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = hearth_store::SledEngine::open(dir.path(), 1 << 24).expect("sled");
        let engine = Arc::new(hearth_store::FaultyEngine::new(Arc::new(sled)));
        let store = hearth_store::Store::open_with_engine(
            hearth_store::StoreConfig::new(dir.path()),
            Arc::clone(&engine) as Arc<dyn hearth_store::Engine>,
        )
        .expect("store");
        let key = AdminKey::new("readyz-test-admin-key-0123456789").expect("key");
        let state = AppState::new(
            store.clone(),
            Access::new(key, false),
            ServerOptions::default(),
        );
        let app = app(state, Vec::new());
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);

        engine.fail_flushes(true);
        let write = hearth_protocol::Write::set(
            hearth_protocol::DocPath::parse("rooms/r1").expect("path"),
            hearth_protocol::Map::new(),
        );
        assert!(store.commit(vec![write]).await.is_err());
        engine.fail_flushes(false);

        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["error"]["code"], "unavailable", "{body}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("failed to sync") && message.contains("restart"),
            "{message}"
        );
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK, "still alive");
        let (_, metrics) = get(&app, "/metrics").await;
        assert!(metrics.contains("hearth_storage_failed 1"), "{metrics}");
    }
}
