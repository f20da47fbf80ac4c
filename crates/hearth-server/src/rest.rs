//! The REST data routes: documents, collections, queries, batches,
//! transactions, indexes, the changelog and backups.
//!
//! Each handler only translates: decode the request, find the caller
//! ([`Caller`]), ask [`crate::access::Access`] once per document operation,
//! call the store, encode the answer. Nothing here decides what a write or a
//! query means; that is `hearth-protocol` and `hearth-store`.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hearth_protocol::api::{
    fields_from_json, AggregateResponse, BackupRequest, BackupResponse, BatchRequest,
    BeginTransactionResponse, ChangeEntry, ChangeKind, ChangelogEntry, ChangelogResponse,
    DeleteResponse, ListResponse, PatchRequest, QueryRequest, QueryResponse, TransactionGetRequest,
    TransactionGetResponse,
};
use hearth_protocol::write::MAX_WRITES_PER_COMMIT;
use hearth_protocol::{
    AnyPath, CollectionPath, CommitResult, DocPath, Document, ErrorCode, Precondition, Query,
    Write, WriteKind,
};
use serde::Deserialize;

use crate::access::Principal;
use crate::error::ApiError;
use crate::extract::{decode_json, read_body, ApiJson, ApiQuery};
use crate::AppState;

/// The authenticated caller of a request (see [`crate::access`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .access()
            .principal_from_headers(&parts.headers)
            .map(Caller)
    }
}

/// Query-string parameters of `/v1/db/{path}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbParams {
    /// Write precondition: the document must (`true`) or must not (`false`) exist.
    pub exists: Option<bool>,
    /// Write precondition: the document must be at exactly this version.
    pub version: Option<u64>,
    /// List: documents per page (1..=1000, default 100).
    pub page_size: Option<u32>,
    /// List: the `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

impl DbParams {
    fn precondition(&self) -> Result<Option<Precondition>, ApiError> {
        match (self.exists, self.version) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "give at most one precondition: `exists` or `version`",
            )),
            (Some(e), None) => Ok(Some(Precondition::Exists(e))),
            (None, Some(v)) => Ok(Some(Precondition::Version(v))),
            (None, None) => Ok(None),
        }
    }

    fn no_write_params(&self) -> Result<(), ApiError> {
        if self.exists.is_some() || self.version.is_some() {
            return Err(ApiError::invalid(
                "`exists` and `version` are write preconditions; they do not apply to reads",
            ));
        }
        Ok(())
    }

    fn no_list_params(&self) -> Result<(), ApiError> {
        if self.page_size.is_some() || self.page_token.is_some() {
            return Err(ApiError::invalid(
                "`page_size` and `page_token` apply to listing a collection",
            ));
        }
        Ok(())
    }
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn parse_db_path(raw: &str) -> Result<AnyPath, ApiError> {
    AnyPath::parse(raw.trim_matches('/')).map_err(ApiError::from)
}

fn expect_doc(path: AnyPath, method: &str) -> Result<DocPath, ApiError> {
    match path {
        AnyPath::Document(d) => Ok(d),
        AnyPath::Collection(c) => Err(ApiError::invalid(format!(
            "{method} needs a document path (an even number of segments); {c} is a collection"
        ))),
    }
}

/// Rules-checked commits that keep losing a race to concurrent writers of
/// the same documents are answered `aborted` after this many attempts.
const CHECKED_COMMIT_ATTEMPTS: u32 = 12;

/// Commits writes after the access check of each one, recording metrics.
///
/// For callers the rules judge, the check reads the documents through a
/// store transaction, so the commit fails (and the check runs again on the
/// new state) if any of them changed in between: no write is ever let
/// through by a state that is gone when it commits.
pub(crate) async fn checked_commit(
    state: &AppState,
    principal: &Principal,
    writes: Vec<Write>,
) -> Result<CommitResult, ApiError> {
    let count = writes.len();
    let result = if principal.is_admin() {
        check_writes(state, principal, &writes, &mut |_| Ok(None))?;
        state.store().commit(writes).await?
    } else {
        let mut attempt = 0;
        loop {
            let tx = state.store().transaction();
            check_writes(state, principal, &writes, &mut |path| {
                tx.get(path).map_err(|e| e.to_string())
            })?;
            match tx.commit(writes.clone()).await {
                Err(hearth_store::StoreError::Aborted(_))
                    if attempt + 1 < CHECKED_COMMIT_ATTEMPTS =>
                {
                    attempt += 1;
                    hearth_store::contention_backoff(attempt).await;
                }
                other => break other?,
            }
        }
    };
    crate::telemetry::record_commit(count);
    Ok(result)
}

/// Validates a commit's writes and asks the rules about each; `load` reads a
/// document's current state (through the caller's transaction, if any).
fn check_writes(
    state: &AppState,
    principal: &Principal,
    writes: &[Write],
    load: &mut dyn FnMut(&DocPath) -> Result<Option<Document>, String>,
) -> Result<(), ApiError> {
    if writes.is_empty() {
        return Err(ApiError::invalid("a commit needs at least one write"));
    }
    if writes.len() > MAX_WRITES_PER_COMMIT {
        return Err(ApiError::invalid(format!(
            "a commit holds at most {MAX_WRITES_PER_COMMIT} writes, got {}",
            writes.len()
        )));
    }
    for write in writes {
        write.validate()?;
    }
    state.access().check_writes(principal, writes, load)
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut response = (status, Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn current_document(state: &AppState, path: &DocPath) -> Result<Document, ApiError> {
    state
        .store()
        .get(path)?
        .ok_or_else(|| ApiError::not_found(format!("document {path} does not exist")))
}

/// `GET /v1/db/{path}`: a document, or a page of a collection.
#[utoipa::path(get, path = "/v1/db/{path}", tag = "documents",
    params(("path" = String, Path, description = "A document path (`rooms/r1`) or a collection path (`rooms`, `rooms/r1/messages`); slashes are not escaped."),
           ("page_size" = Option<u32>, Query, description = "Listing: documents per page, 1..=1000 (default 100)."),
           ("page_token" = Option<String>, Query, description = "Listing: the previous page's next_page_token.")),
    responses((status = 200, description = "The document (document path) or a page of documents in id order (collection path).", body = crate::openapi::DocumentOrList),
              (status = 404, description = "No such document.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn db_get(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<DbParams>,
) -> Result<Response<Body>, ApiError> {
    params.no_write_params()?;
    match parse_db_path(&raw)? {
        AnyPath::Document(path) => {
            params.no_list_params()?;
            let doc = state.store().get(&path)?;
            state.access().check_get(&principal, &path, doc.as_ref())?;
            let doc =
                doc.ok_or_else(|| ApiError::not_found(format!("document {path} does not exist")))?;
            Ok(json_response(StatusCode::OK, &doc))
        }
        AnyPath::Collection(collection) => {
            state.access().check_list(&principal, &collection)?;
            let page_size = params.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
            if page_size == 0 || page_size > MAX_PAGE_SIZE {
                return Err(ApiError::invalid(format!(
                    "page_size must be between 1 and {MAX_PAGE_SIZE}"
                )));
            }
            let page = state.store().list(
                &collection,
                page_size as usize,
                params.page_token.as_deref(),
            )?;
            let documents = state.access().filter_readable(&principal, page.documents);
            Ok(json_response(
                StatusCode::OK,
                &ListResponse {
                    documents,
                    next_page_token: page.next_page_token,
                },
            ))
        }
    }
}

/// `PUT /v1/db/{doc}`: replace the document's fields (create if missing).
#[utoipa::path(put, path = "/v1/db/{path}", tag = "documents",
    params(("path" = String, Path, description = "A document path."),
           ("exists" = Option<bool>, Query, description = "Precondition: the document must (true) or must not (false) exist."),
           ("version" = Option<u64>, Query, description = "Precondition: the document must be at this version.")),
    request_body(content = crate::openapi::FieldsSchema, description = "The document's fields."),
    responses((status = 200, description = "The document as stored.", body = crate::openapi::DocumentSchema),
              (status = 412, description = "A precondition failed.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn db_put(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<DbParams>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    params.no_list_params()?;
    let path = expect_doc(parse_db_path(&raw)?, "PUT")?;
    let body: serde_json::Value = decode_json(&read_body(request, &()).await?)?;
    let data = fields_from_json(&body).map_err(ApiError::invalid)?;
    let mut write = Write::set(path.clone(), data);
    write.precondition = params.precondition()?;
    checked_commit(&state, &principal, vec![write]).await?;
    let doc = current_document(&state, &path).await?;
    Ok(json_response(StatusCode::OK, &doc))
}

/// `PATCH /v1/db/{doc}`: merge field paths and apply transforms.
#[utoipa::path(patch, path = "/v1/db/{path}", tag = "documents",
    params(("path" = String, Path, description = "A document path."),
           ("exists" = Option<bool>, Query, description = "Precondition: the document must (true) or must not (false) exist."),
           ("version" = Option<u64>, Query, description = "Precondition: the document must be at this version.")),
    request_body(content = crate::openapi::PatchSchema, description = "`{\"fields\": {\"a.b\": 1}, \"transforms\": [...], \"upsert\": false}`, or a plain object of field paths to values."),
    responses((status = 200, description = "The document as stored.", body = crate::openapi::DocumentSchema),
              (status = 404, description = "The document does not exist (and upsert is false).", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn db_patch(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<DbParams>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    params.no_list_params()?;
    let path = expect_doc(parse_db_path(&raw)?, "PATCH")?;
    let body: serde_json::Value = decode_json(&read_body(request, &()).await?)?;
    let patch = PatchRequest::from_json(body).map_err(ApiError::invalid)?;
    let mut write = if patch.upsert {
        Write::merge(path.clone(), patch.fields)
    } else {
        Write::update(path.clone(), patch.fields)
    };
    write.transforms = patch.transforms;
    write.precondition = params.precondition()?;
    checked_commit(&state, &principal, vec![write]).await?;
    let doc = current_document(&state, &path).await?;
    Ok(json_response(StatusCode::OK, &doc))
}

/// `DELETE /v1/db/{doc}`.
#[utoipa::path(delete, path = "/v1/db/{path}", tag = "documents",
    params(("path" = String, Path, description = "A document path."),
           ("exists" = Option<bool>, Query, description = "Precondition: the document must (true) or must not (false) exist."),
           ("version" = Option<u64>, Query, description = "Precondition: the document must be at this version.")),
    responses((status = 200, description = "Deleted (also when it was already missing, unless a precondition says otherwise).", body = crate::openapi::DeleteResponseSchema)),
    security(("bearer" = [])))]
pub async fn db_delete(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<DbParams>,
) -> Result<Response<Body>, ApiError> {
    params.no_list_params()?;
    let path = expect_doc(parse_db_path(&raw)?, "DELETE")?;
    let mut write = Write::delete(path.clone());
    write.precondition = params.precondition()?;
    let result = checked_commit(&state, &principal, vec![write]).await?;
    Ok(json_response(
        StatusCode::OK,
        &DeleteResponse {
            path,
            seq: result.seq,
            commit_time: result.commit_time,
        },
    ))
}

/// `POST /v1/db/{collection}`: create a document with a generated id.
#[utoipa::path(post, path = "/v1/db/{path}", tag = "documents",
    params(("path" = String, Path, description = "A collection path.")),
    request_body(content = crate::openapi::FieldsSchema, description = "The new document's fields."),
    responses((status = 201, description = "Created; `Location` names the document.", body = crate::openapi::DocumentSchema)),
    security(("bearer" = [])))]
pub async fn db_post(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<DbParams>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    params.no_write_params()?;
    params.no_list_params()?;
    let collection: CollectionPath = match parse_db_path(&raw)? {
        AnyPath::Collection(c) => c,
        AnyPath::Document(d) => {
            return Err(ApiError::invalid(format!(
            "POST creates a document in a collection; {d} is a document path (use PUT to write it)"
        )))
        }
    };
    let body: serde_json::Value = decode_json(&read_body(request, &()).await?)?;
    let data = fields_from_json(&body).map_err(ApiError::invalid)?;
    let id = hearth_protocol::path::document_id_from_random(rand::random());
    let path = collection.doc(&id)?;
    let write = Write::create(path.clone(), data);
    let result = checked_commit(&state, &principal, vec![write.clone()]).await?;
    let WriteKind::Create { data } = write.kind else {
        return Err(ApiError::internal("create write changed kind"));
    };
    // A create has no transforms: the stored document is exactly `data` at
    // this commit, so it is answered without reading it back.
    let doc = Document {
        path: path.clone(),
        fields: data,
        create_time: result.commit_time,
        update_time: result.commit_time,
        version: result.seq,
    };
    let mut response = json_response(StatusCode::CREATED, &doc);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/db/{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/query`: run a query or an aggregation.
#[utoipa::path(post, path = "/v1/query", tag = "queries",
    request_body(content = crate::openapi::QueryRequestSchema, description = "A query, or `{\"query\": ..., \"aggregations\": [...]}`."),
    responses((status = 200, description = "Matching documents (`documents`, `read_seq`) or aggregate values (`values`, `read_seq`).", body = crate::openapi::QueryResponseSchema),
              (status = 412, description = "No index serves the query; the message names the index to declare.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response<Body>, ApiError> {
    match QueryRequest::from_json(body).map_err(ApiError::invalid)? {
        QueryRequest::Documents(query) => {
            state.access().check_query(&principal, &query)?;
            let result = state.store().query(&query)?;
            let documents = state.access().filter_readable(&principal, result.documents);
            Ok(json_response(
                StatusCode::OK,
                &QueryResponse {
                    documents,
                    read_seq: result.read_seq,
                },
            ))
        }
        QueryRequest::Aggregate(aggregate) => {
            // Aggregates cannot be filtered document by document, so a
            // non-admin caller must be allowed to read the whole query.
            state.access().check_query(&principal, &aggregate.query)?;
            let result = state.store().aggregate(&aggregate)?;
            Ok(json_response(
                StatusCode::OK,
                &AggregateResponse {
                    values: result.values,
                    read_seq: result.read_seq,
                },
            ))
        }
    }
}

/// `POST /v1/batch`: commit up to 500 writes atomically.
#[utoipa::path(post, path = "/v1/batch", tag = "writes",
    request_body(content = crate::openapi::BatchRequestSchema, description = "`{\"writes\": [Write, ...]}` (1 to 500)."),
    responses((status = 200, description = "The commit: its sequence number, time and per-write results.", body = crate::openapi::CommitResultSchema),
              (status = 409, description = "A create found its document (already-exists).", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn batch(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<BatchRequest>,
) -> Result<Response<Body>, ApiError> {
    let result = checked_commit(&state, &principal, body.writes).await?;
    Ok(json_response(StatusCode::OK, &result))
}

/// `POST /v1/transactions`: open a transaction.
#[utoipa::path(post, path = "/v1/transactions", tag = "transactions",
    responses((status = 200, description = "The transaction id and its time to live.", body = crate::openapi::BeginTransactionSchema)),
    security(("bearer" = [])))]
pub async fn tx_begin(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Response<Body>, ApiError> {
    let tx = state.store().transaction();
    let id = state.transactions().insert(principal.stable_key(), tx)?;
    Ok(json_response(
        StatusCode::OK,
        &BeginTransactionResponse {
            transaction: id,
            expires_in_ms: state.transactions().ttl().as_millis() as u64,
        },
    ))
}

/// The open transaction `id`, if the caller is the one who began it.
fn caller_transaction(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<std::sync::Arc<crate::transactions::OpenTransaction>, ApiError> {
    state.transactions().lookup(id, &principal.stable_key())
}

/// A transaction that another request already committed or rolled back.
fn transaction_finished(id: &str) -> ApiError {
    ApiError::not_found(format!("transaction {id} is finished"))
}

/// `POST /v1/transactions/{id}/get`: read a document inside the transaction.
#[utoipa::path(post, path = "/v1/transactions/{id}/get", tag = "transactions",
    params(("id" = String, Path, description = "The transaction id.")),
    request_body(content = crate::openapi::TransactionGetSchema),
    responses((status = 200, description = "`{\"document\": Document | null}`", body = crate::openapi::TransactionGetResponseSchema),
              (status = 404, description = "Unknown or expired transaction.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn tx_get(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransactionGetRequest>,
) -> Result<Response<Body>, ApiError> {
    let open = caller_transaction(&state, &principal, &id)?;
    let mut guard = open.tx.lock().await;
    let tx = guard.as_mut().ok_or_else(|| transaction_finished(&id))?;
    let document = tx.get(&body.path)?;
    state
        .access()
        .check_get(&principal, &body.path, document.as_ref())?;
    Ok(json_response(
        StatusCode::OK,
        &TransactionGetResponse { document },
    ))
}

/// `POST /v1/transactions/{id}/query`: run a query inside the transaction.
#[utoipa::path(post, path = "/v1/transactions/{id}/query", tag = "transactions",
    params(("id" = String, Path, description = "The transaction id.")),
    request_body(content = crate::openapi::QuerySchema),
    responses((status = 200, description = "Matching documents; the read is validated at commit.", body = crate::openapi::QueryResponseSchema)),
    security(("bearer" = [])))]
pub async fn tx_query(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    ApiJson(query): ApiJson<Query>,
) -> Result<Response<Body>, ApiError> {
    state.access().check_query(&principal, &query)?;
    let open = caller_transaction(&state, &principal, &id)?;
    let mut guard = open.tx.lock().await;
    let tx = guard.as_mut().ok_or_else(|| transaction_finished(&id))?;
    let result = tx.query(&query)?;
    let documents = state.access().filter_readable(&principal, result.documents);
    Ok(json_response(
        StatusCode::OK,
        &QueryResponse {
            documents,
            read_seq: result.read_seq,
        },
    ))
}

/// `POST /v1/transactions/{id}/commit`: validate the reads and commit.
#[utoipa::path(post, path = "/v1/transactions/{id}/commit", tag = "transactions",
    params(("id" = String, Path, description = "The transaction id.")),
    request_body(content = crate::openapi::BatchRequestSchema),
    responses((status = 200, description = "Committed.", body = crate::openapi::CommitResultSchema),
              (status = 409, description = "`aborted`: a document read by the transaction changed; retry the whole transaction.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn tx_commit(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BatchRequest>,
) -> Result<Response<Body>, ApiError> {
    let open = caller_transaction(&state, &principal, &id)?;
    let mut guard = open.tx.lock().await;
    let tx = guard.take().ok_or_else(|| transaction_finished(&id))?;
    state.transactions().remove(&id);
    // The rules read through the transaction, so the documents they judged
    // are validated at commit like the transaction's own reads.
    check_writes(&state, &principal, &body.writes, &mut |path| {
        tx.get(path).map_err(|e| e.to_string())
    })?;
    let count = body.writes.len();
    let result = tx.commit(body.writes).await?;
    crate::telemetry::record_commit(count);
    Ok(json_response(StatusCode::OK, &result))
}

/// `DELETE /v1/transactions/{id}`: discard a transaction.
#[utoipa::path(delete, path = "/v1/transactions/{id}", tag = "transactions",
    params(("id" = String, Path, description = "The transaction id.")),
    responses((status = 204, description = "Discarded.")),
    security(("bearer" = [])))]
pub async fn tx_delete(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> Result<Response<Body>, ApiError> {
    caller_transaction(&state, &principal, &id)?;
    state.transactions().remove(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/indexes`: composite index status and build progress.
#[utoipa::path(get, path = "/v1/indexes", tag = "admin",
    responses((status = 200, description = "`{\"indexes\": [...]}` with each index's state and progress.", body = crate::openapi::IndexesSchema)),
    security(("bearer" = [])))]
pub async fn indexes(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Response<Body>, ApiError> {
    state.access().require_admin(&principal)?;
    let indexes: Vec<serde_json::Value> = state
        .store()
        .index_status()
        .into_iter()
        .map(|s| {
            let (state, done, total, error) = match s.state {
                hearth_store::IndexState::Building { done, total } => {
                    ("building", done, total, None)
                }
                hearth_store::IndexState::Ready => ("ready", 0, 0, None),
                hearth_store::IndexState::Failed(e) => ("failed", 0, 0, Some(e)),
            };
            serde_json::json!({
                "index": serde_json::to_value(&s.index).unwrap_or(serde_json::Value::Null),
                "state": state,
                "done": done,
                "total": total,
                "error": error,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "indexes": indexes }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogParams {
    #[serde(default)]
    pub after: u64,
    pub limit: Option<usize>,
}

pub const MAX_CHANGELOG_PAGE: usize = 1000;

/// `GET /v1/changelog?after=N&limit=M` (admin): commits after `N`, in order.
#[utoipa::path(get, path = "/v1/changelog", tag = "admin",
    params(("after" = Option<u64>, Query, description = "Return commits with seq > after (default 0)."),
           ("limit" = Option<usize>, Query, description = "At most this many commits (default and maximum 1000).")),
    responses((status = 200, description = "Commits in order and the current head.", body = crate::openapi::ChangelogSchema),
              (status = 412, description = "`after` is older than retention (`details.oldest` says what is left).", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn changelog(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(params): ApiQuery<ChangelogParams>,
) -> Result<Response<Body>, ApiError> {
    state.access().require_admin(&principal)?;
    let limit = params
        .limit
        .unwrap_or(MAX_CHANGELOG_PAGE)
        .clamp(1, MAX_CHANGELOG_PAGE);
    let changelog = state.store().changelog();
    let head = changelog.head();
    let records = changelog
        .read_from(params.after, limit)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let commits = records
        .into_iter()
        .map(|r| ChangelogEntry {
            seq: r.seq,
            commit_time: r.commit_time,
            changes: r
                .changes
                .iter()
                .cloned()
                .map(|c| ChangeEntry {
                    path: c.path,
                    kind: match c.kind {
                        hearth_store::ChangeKind::Created => ChangeKind::Created,
                        hearth_store::ChangeKind::Updated => ChangeKind::Updated,
                        hearth_store::ChangeKind::Deleted => ChangeKind::Deleted,
                    },
                    old: c.old,
                    new: c.new,
                })
                .collect(),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &ChangelogResponse { commits, head },
    ))
}

/// `POST /v1/admin/backup` (admin): a consistent snapshot into a directory on
/// the server's filesystem, taken while the server keeps serving.
#[utoipa::path(post, path = "/v1/admin/backup", tag = "admin",
    request_body(content = crate::openapi::BackupRequestSchema),
    responses((status = 200, description = "The backup is complete and durable.", body = crate::openapi::BackupResponseSchema),
              (status = 412, description = "The target directory is not empty.", body = crate::openapi::ErrorEnvelopeSchema)),
    security(("bearer" = [])))]
pub async fn backup(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<BackupRequest>,
) -> Result<Response<Body>, ApiError> {
    state.access().require_admin(&principal)?;
    let dir = std::path::PathBuf::from(&body.dir);
    if !dir.is_absolute() {
        return Err(ApiError::invalid(
            "dir must be an absolute path on the server's filesystem",
        ));
    }
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ApiError::new(
            ErrorCode::FailedPrecondition,
            format!("backup directory {} exists and is not empty", dir.display()),
        ));
    }
    let store = state.store().clone();
    let target = dir.clone();
    let info = tokio::task::spawn_blocking(move || store.backup_to(&target))
        .await
        .map_err(|e| ApiError::internal(format!("backup task failed: {e}")))??;
    Ok(json_response(
        StatusCode::OK,
        &BackupResponse {
            dir: body.dir,
            seq: info.seq,
        },
    ))
}

/// `GET /v1/admin/export` (admin): every document as JSON lines, so that
/// `hearth export` works while the server holds the data directory.
#[utoipa::path(get, path = "/v1/admin/export", tag = "admin",
    responses((status = 200, description = "One JSON document per line (application/x-ndjson).", content_type = "application/x-ndjson", body = String)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Response<Body>, ApiError> {
    state.access().require_admin(&principal)?;
    let store = state.store().clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::new();
        for doc in store.export() {
            let doc = doc?;
            serde_json::to_writer(&mut out, &doc)
                .map_err(|e| ApiError::internal(format!("encoding failed: {e}")))?;
            out.push(b'\n');
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("export task failed: {e}")))??;
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}
