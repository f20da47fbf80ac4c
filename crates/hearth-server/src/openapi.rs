//! The OpenAPI 3.1 description of the REST API, generated from the handlers'
//! `#[utoipa::path]` annotations and served at `GET /v1/openapi.json`.
//!
//! The schema types below exist for documentation only: the wire types live
//! in `hearth-protocol` (which stays free of utoipa), and these mirror their
//! JSON shapes.
//!
//! ## Service documents
//! Routers of other crates merged into the app (auth today) describe their
//! own routes. This crate does not depend on them: the binary hands their
//! documents over once at start with [`set_service_documents`], and the
//! served document is [`document`] of this crate's routes plus those. Where
//! both define a schema of the same name (`ErrorEnvelope`), ours wins.
//!
//! `sdk-spec/openapi.json` is the whole document as `hearth serve` serves it
//! (this crate's routes plus `hearth_auth::openapi()`), committed. The tests
//! below keep it equal to the generated one and check that every operation
//! it lists is routed by the real application (regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p hearth-server openapi`).
#![allow(dead_code)]

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A stored document.
#[derive(ToSchema)]
#[schema(as = Document)]
pub struct DocumentSchema {
    /// The document path, e.g. `rooms/r1`.
    path: String,
    /// The fields. Values use Hearth's JSON encoding: integers and doubles are
    /// distinct (`1` vs `1.0`); `{"$bytes": base64}`, `{"$timestamp": RFC 3339}`,
    /// `{"$double": "NaN"}`; see sdk-spec.
    #[schema(value_type = Object)]
    fields: serde_json::Value,
    /// RFC 3339 UTC.
    create_time: String,
    update_time: String,
    /// The sequence number of the commit that last wrote it.
    version: u64,
}

/// A document's fields: a JSON object (values in Hearth's JSON encoding).
#[derive(ToSchema)]
#[schema(as = Fields, value_type = Object)]
pub struct FieldsSchema(serde_json::Map<String, serde_json::Value>);

/// A page of a collection.
#[derive(ToSchema)]
#[schema(as = ListResponse)]
pub struct ListSchema {
    documents: Vec<DocumentSchema>,
    /// Present when there are more documents.
    next_page_token: Option<String>,
}

/// `GET /v1/db/{path}` answers a Document for a document path and a
/// ListResponse for a collection path.
#[derive(ToSchema)]
#[schema(as = DocumentOrList)]
pub enum DocumentOrList {
    Document(DocumentSchema),
    List(ListSchema),
}

/// A PATCH body (or a plain object of field paths to values).
#[derive(ToSchema)]
#[schema(as = PatchRequest)]
pub struct PatchSchema {
    /// Dotted field paths (backtick-quote segments with dots) to values.
    #[schema(value_type = Object)]
    fields: serde_json::Value,
    transforms: Option<Vec<FieldTransformSchema>>,
    /// Create the document when missing (default false: not-found).
    upsert: Option<bool>,
}

/// A server-side field transform: `server_timestamp`, `increment` (`value`),
/// `array_union` / `array_remove` (`values`), `delete`.
#[derive(ToSchema)]
#[schema(as = FieldTransform)]
pub struct FieldTransformSchema {
    field: String,
    #[schema(example = "increment")]
    transform: String,
    #[schema(value_type = Option<Object>)]
    value: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    values: Option<Vec<serde_json::Value>>,
}

/// `exists` (bool) or `version` (integer).
#[derive(ToSchema)]
#[schema(as = Precondition)]
pub struct PreconditionSchema {
    exists: Option<bool>,
    version: Option<u64>,
}

/// One write. `op` is `set` (`data`), `create` (`data`), `update` (`fields`),
/// `merge` (`fields`, upsert) or `delete`. For `update` and `merge`,
/// `fields` defaults to `{}` (a write with only `transforms`).
#[derive(ToSchema)]
#[schema(as = Write)]
pub struct WriteSchema {
    #[schema(example = "set")]
    op: String,
    path: String,
    #[schema(value_type = Option<Object>)]
    data: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    fields: Option<serde_json::Value>,
    precondition: Option<PreconditionSchema>,
    transforms: Option<Vec<FieldTransformSchema>>,
}

/// Up to 500 writes committed atomically.
#[derive(ToSchema)]
#[schema(as = BatchRequest)]
pub struct BatchRequestSchema {
    writes: Vec<WriteSchema>,
}

#[derive(ToSchema)]
#[schema(as = WriteResult)]
pub struct WriteResultSchema {
    path: String,
    /// The new version, or null when the document no longer exists.
    version: Option<u64>,
    update_time: String,
}

/// The outcome of a commit.
#[derive(ToSchema)]
#[schema(as = CommitResult)]
pub struct CommitResultSchema {
    /// The commit's changelog sequence number.
    seq: u64,
    commit_time: String,
    results: Vec<WriteResultSchema>,
}

#[derive(ToSchema)]
#[schema(as = DeleteResponse)]
pub struct DeleteResponseSchema {
    path: String,
    seq: u64,
    commit_time: String,
}

/// A structured query: `collection` or `collection_group`, `where`,
/// `order_by`, `limit`, `limit_to_last`, `start_at`, `end_at`. See
/// sdk-spec for the filter operators and cursor semantics.
#[derive(ToSchema)]
#[schema(as = Query)]
pub struct QuerySchema {
    collection: Option<String>,
    collection_group: Option<String>,
    #[schema(value_type = Option<Object>)]
    r#where: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    order_by: Option<Vec<serde_json::Value>>,
    limit: Option<u32>,
    limit_to_last: Option<bool>,
    #[schema(value_type = Option<Object>)]
    start_at: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    end_at: Option<serde_json::Value>,
}

/// `{"alias": "n", "op": "count"}`, or `sum`/`avg` with a `field`.
#[derive(ToSchema)]
#[schema(as = Aggregation)]
pub struct AggregationSchema {
    alias: String,
    op: String,
    field: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = AggregateQuery)]
pub struct AggregateQuerySchema {
    query: QuerySchema,
    aggregations: Vec<AggregationSchema>,
}

/// A query or an aggregate query.
#[derive(ToSchema)]
#[schema(as = QueryRequest)]
pub enum QueryRequestSchema {
    Query(QuerySchema),
    Aggregate(AggregateQuerySchema),
}

/// Documents (for a query) or values by alias (for aggregations), with the
/// changelog position the read reflects.
#[derive(ToSchema)]
#[schema(as = QueryResponse)]
pub struct QueryResponseSchema {
    documents: Option<Vec<DocumentSchema>>,
    #[schema(value_type = Option<Object>)]
    values: Option<serde_json::Value>,
    read_seq: u64,
}

#[derive(ToSchema)]
#[schema(as = BeginTransactionResponse)]
pub struct BeginTransactionSchema {
    transaction: String,
    expires_in_ms: u64,
}

#[derive(ToSchema)]
#[schema(as = TransactionGetRequest)]
pub struct TransactionGetSchema {
    path: String,
}

#[derive(ToSchema)]
#[schema(as = TransactionGetResponse)]
pub struct TransactionGetResponseSchema {
    document: Option<DocumentSchema>,
}

#[derive(ToSchema)]
#[schema(as = IndexesResponse)]
pub struct IndexesSchema {
    #[schema(value_type = Vec<Object>)]
    indexes: Vec<serde_json::Value>,
}

/// One document's change: `kind` is `created`, `updated` or `deleted`.
#[derive(ToSchema)]
#[schema(as = ChangeEntry)]
pub struct ChangeEntrySchema {
    path: String,
    kind: String,
    old: Option<DocumentSchema>,
    new: Option<DocumentSchema>,
}

#[derive(ToSchema)]
#[schema(as = ChangelogEntry)]
pub struct ChangelogEntrySchema {
    seq: u64,
    commit_time: String,
    changes: Vec<ChangeEntrySchema>,
}

#[derive(ToSchema)]
#[schema(as = ChangelogResponse)]
pub struct ChangelogSchema {
    commits: Vec<ChangelogEntrySchema>,
    head: u64,
}

#[derive(ToSchema)]
#[schema(as = BackupRequest)]
pub struct BackupRequestSchema {
    /// An absolute, missing or empty directory on the server's filesystem.
    dir: String,
}

#[derive(ToSchema)]
#[schema(as = BackupResponse)]
pub struct BackupResponseSchema {
    dir: String,
    seq: u64,
}

#[derive(ToSchema)]
#[schema(as = ErrorBody)]
pub struct ErrorBodySchema {
    /// One of: invalid-argument, not-found, already-exists,
    /// failed-precondition, aborted, permission-denied, unauthenticated,
    /// resource-exhausted, payload-too-large, deadline-exceeded,
    /// unimplemented, unavailable, internal.
    code: String,
    message: String,
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(ToSchema)]
#[schema(as = ErrorEnvelope)]
pub struct ErrorEnvelopeSchema {
    error: ErrorBodySchema,
}

#[derive(ToSchema)]
#[schema(as = HealthResponse)]
pub struct HealthSchema {
    status: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin key (bypasses rules) or a user access token.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hearth REST API",
        description = "Documents, queries, batches and transactions over HTTP, plus the auth service (tags `auth` and `users`: sign-up, sign-in, tokens, user administration, and the JWKS at /.well-known/jwks.json). Errors are always `{\"error\": {\"code\", \"message\"}}`. Token handling is described in sdk-spec/AUTH.md, the WebSocket protocol in sdk-spec/PROTOCOL.md.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        crate::rest::db_get, crate::rest::db_put, crate::rest::db_patch, crate::rest::db_delete,
        crate::rest::db_post, crate::rest::query, crate::rest::batch,
        crate::rest::tx_begin, crate::rest::tx_get, crate::rest::tx_query, crate::rest::tx_commit,
        crate::rest::tx_delete, crate::rest::indexes, crate::rest::changelog,
        crate::rest::backup, crate::rest::export,
        crate::healthz, crate::readyz, crate::metrics_text, crate::openapi_json,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "documents", description = "Read and write documents by path."),
        (name = "queries", description = "Structured queries and aggregations."),
        (name = "writes", description = "Atomic batches."),
        (name = "transactions", description = "Read, then commit; aborted if a read changed."),
        (name = "admin", description = "Admin key only."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
pub struct ApiDoc;

static SERVICE_DOCUMENTS: OnceLock<Vec<utoipa::openapi::OpenApi>> = OnceLock::new();

/// Registers the OpenAPI documents of the service routers merged into the
/// app, so that `/v1/openapi.json` describes them too. Call once, before
/// serving; a second call is refused (returns `false`) and changes nothing.
pub fn set_service_documents(documents: Vec<utoipa::openapi::OpenApi>) -> bool {
    SERVICE_DOCUMENTS.set(documents).is_ok()
}

/// This crate's document with `services` merged in (paths and schemas they
/// add; ours win on a name clash).
pub fn document(
    services: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for service in services {
        doc.merge(service);
    }
    doc
}

/// The served OpenAPI document as pretty JSON: this crate's routes plus the
/// registered service documents (what `sdk-spec/openapi.json` holds).
pub fn openapi_json() -> String {
    let services = SERVICE_DOCUMENTS.get().cloned().unwrap_or_default();
    document(services)
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    const ADMIN_KEY: &str = "openapi-test-admin-key-0123456789";

    /// The document `hearth serve` serves: ours plus the auth service's.
    fn served_json() -> String {
        document([hearth_auth::openapi()]).to_pretty_json().unwrap()
    }

    #[test]
    fn committed_openapi_matches_the_generated_one() {
        let generated = served_json() + "\n";
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "sdk-spec/openapi.json is out of date; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p hearth-server openapi` and commit it"
        );
    }

    #[test]
    fn openapi_is_3_1_and_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&served_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/db/{path}",
            "/v1/query",
            "/v1/batch",
            "/v1/transactions",
            "/v1/transactions/{id}/get",
            "/v1/transactions/{id}/query",
            "/v1/transactions/{id}/commit",
            "/v1/transactions/{id}",
            "/v1/indexes",
            "/v1/changelog",
            "/v1/admin/backup",
            "/v1/admin/export",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/openapi.json",
            "/.well-known/jwks.json",
            "/v1/auth/signup",
            "/v1/auth/login",
            "/v1/auth/anonymous",
            "/v1/auth/refresh",
            "/v1/auth/logout",
            "/v1/auth/link",
            "/v1/auth/me",
            "/v1/auth/verify-email/send",
            "/v1/auth/verify-email/confirm",
            "/v1/auth/password-reset/send",
            "/v1/auth/password-reset/confirm",
            "/v1/auth/email-change/send",
            "/v1/auth/email-change/confirm",
            "/v1/admin/users",
            "/v1/admin/users/{uid}",
            "/v1/admin/users/{uid}/revoke",
            "/v1/admin/outbox",
            "/v1/admin/keys/rotate",
        ] {
            assert!(doc["paths"].get(path).is_some(), "missing {path}");
        }
        for schema in ["TokenResponse", "UserView", "Jwks", "ErrorEnvelope"] {
            assert!(
                doc["components"]["schemas"].get(schema).is_some(),
                "missing schema {schema}"
            );
        }
    }

    /// `true` when the router has no route for this method and path (the
    /// fallback's 404 or axum's 405), as opposed to a handler's answer.
    async fn unrouted(app: &axum::Router, method: Method, uri: &str) -> bool {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND && text.contains("no such route"))
    }

    /// The document and the real application agree: every documented
    /// operation reaches a handler, and on every documented path the
    /// methods the document does not list are not routed either.
    #[tokio::test]
    async fn every_documented_operation_is_routed_and_no_other_method_on_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            hearth_store::Store::open(hearth_store::StoreConfig::new(dir.path().join("data")))
                .unwrap();
        let auth =
            hearth_auth::AuthService::start(hearth_auth::AuthConfig::default(), store.clone())
                .await
                .unwrap();
        let admin_key = crate::AdminKey::new(ADMIN_KEY).unwrap();
        let state = crate::AppState::new(
            store,
            crate::Access::new(admin_key, false),
            crate::ServerOptions::default(),
        );
        let checker: hearth_auth::AdminKeyChecker =
            std::sync::Arc::new(|key: &str| key == ADMIN_KEY);
        let app = crate::app(state, vec![hearth_auth::router(auth, checker)]);

        let doc: serde_json::Value = serde_json::from_str(&served_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        let mut checked = 0;
        for (path, item) in paths {
            let uri = path
                .replace("{path}", "rooms/r1")
                .replace("{id}", "tx-unknown")
                .replace("{uid}", "no-such-user");
            for method in &methods {
                let documented = item.get(method.as_str().to_lowercase()).is_some();
                let unrouted = unrouted(&app, method.clone(), &uri).await;
                assert_eq!(
                    documented, !unrouted,
                    "{method} {path}: documented = {documented}, routed = {}",
                    !unrouted
                );
                checked += usize::from(documented);
            }
        }
        assert!(checked >= 40, "only {checked} operations checked");
    }
}
