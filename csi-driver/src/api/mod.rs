//! The HTTP/JSON API (`studiodrive-csi api`, described by `GET /openapi.json`): media
//! DataStores, documents and queries, and the workspace operations other systems need (list,
//! stat, snapshot, publish).
//!
//! Every request but `/openapi.json`, `/healthz` and `/readyz` carries a Kubernetes service-account token
//! (`Authorization: Bearer`), verified by a TokenReview for the API's audience. DataStores are
//! authorized by their subjects (readers, writers, admins), workspaces by their namespace,
//! owners and Shares (`drive::rules::access`). A caller granted nothing gets the answer a
//! missing DataStore or workspace gets: it cannot learn that one exists.
//!
//! A document write or a query sent with `Prefer: respond-async` answers 202 with an operation
//! whose state is polled at `GET /v1/operations/{id}` (kept in the database, so any replica
//! answers; only the caller that started it may read it).

pub mod openapi;
pub mod tls;
pub mod types;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use drive::error::{ErrorKind, MetaError};
use drive::media::documents::DocumentStore;
use drive::media::{DataStoreRole, Filter, TimelineQuery};
use drive::meta::{
    DataStoreRecord, OPERATION_DEADLINE, OperationState, PgMetaStore, PublishMode, PublishOptions, Versions,
};
use drive::model::{
    Actor, Attr, MergeMode, Name, NodeId, NodeKind, Permission, Timestamp, View, WorkspaceId,
};
use drive::ports::{Clock as _, SystemClock};
use drive::rules::access::{Principal, WorkspaceFacts, decide, holds_any};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::csi::auth::{AuthError, TokenVerifier};
use types::*;

/// The largest request body but a document write's: a document kept in the metadata store
/// ([`drive::media::MAX_INLINE_DOCUMENT_BYTES`]) with its envelope.
pub const MAX_BODY_BYTES: usize = drive::media::MAX_INLINE_DOCUMENT_BYTES + (64 << 10);
/// What a document write's body may hold besides the document (media id, target).
const ENVELOPE_BYTES: usize = 64 << 10;
/// Request bodies over [`MAX_BODY_BYTES`] read at once: each is held in memory, parsed, several
/// times its size.
pub const LARGE_WRITES: usize = 2;
/// Hits and entities a query returns when it does not say.
const DEFAULT_LIMIT: u32 = 1000;
/// Entries per listing page at most.
const MAX_PAGE: u32 = 1000;

/// What the API serves from.
pub struct ApiState {
    pub meta: PgMetaStore,
    /// Documents, with the object store their large texts are kept in (if given).
    pub documents: DocumentStore,
    /// Permits to read a request body over [`MAX_BODY_BYTES`] ([`LARGE_WRITES`]).
    pub large_writes: tokio::sync::Semaphore,
    pub metrics: Arc<crate::metrics::ApiMetrics>,
    /// The largest document a write may carry (JSON bytes; at most
    /// [`drive::media::MAX_DOCUMENT_BYTES`]).
    pub max_document_bytes: usize,
    /// `None`: no Kubernetes API to verify tokens with; every request is refused (503).
    pub verifier: Option<TokenVerifier>,
    /// Why there is no verifier.
    pub no_verifier_reason: String,
}

/// A refusal or failure, as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Invalid", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> ApiError {
        let (status, code) = match e.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            ErrorKind::Exists | ErrorKind::NotEmpty | ErrorKind::Conflict | ErrorKind::ReadOnly => {
                (StatusCode::CONFLICT, "Conflict")
            }
            ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::InvalidName
            | ErrorKind::NameTooLong
            | ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "Invalid"),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "Forbidden"),
            ErrorKind::QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "QuotaExceeded"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "API request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Denied(m) => ApiError::new(StatusCode::UNAUTHORIZED, "Unauthenticated", m),
            AuthError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
        }
    }
}

type ApiResult = Result<(StatusCode, Value), ApiError>;

fn ok<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    serde_json::to_value(body)
        .map(|v| (status, v))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut response = json_response(e.status, &json!(ErrorBody { error: e.detail() }));
    if e.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// How long requests in flight may take to finish after a shutdown begins: inside the
/// chart's termination grace period (30 s) less its preStop pause (5 s).
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a connection accepted while stopping has to send its request before it is
/// closed unanswered (a client connected just before the stop has its request on the way).
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one connection until it ends; once `stop` fires, the request in flight finishes
/// and its answer goes out, then the connection closes. A connection that has not begun a
/// request yet gets [`FIRST_REQUEST_GRACE`] to begin one.
async fn serve_connection<I, S>(io: I, service: S, stop: CancellationToken) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Full<Bytes>> + Send,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => return served,
        () = stop.cancelled() => {}
    }
    // An idle connection would be closed at once: let one accepted late begin its request.
    tokio::select! {
        served = connection.as_mut() => return served,
        () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// Serves the API on `listener` until `shutdown`: HTTPS with `tls`, else plain HTTP. On
/// shutdown it stops accepting, lets requests in flight finish for up to [`DRAIN`], then
/// cuts what is left.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    tls: Option<Arc<tls::ServingCert>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Connections already queued are taken before stopping, and served as those open.
        let (stream, peer) = tokio::select! {
            biased;
            accepted = listener.accept() => accepted?,
            () = shutdown.cancelled() => break,
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req).await) }
        });
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let served = match acceptor {
                Some(acceptor) => {
                    // A client that never finishes its handshake does not hold a task forever.
                    let handshake =
                        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            serve_connection(hyper_util::rt::TokioIo::new(stream), service, stop).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => serve_connection(hyper_util::rt::TokioIo::new(stream), service, stop).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
        });
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "API requests still in flight after {DRAIN:?}: cut"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Answers one request, counted in the API's metrics.
pub async fn handle<B>(state: Arc<ApiState>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let metrics = state.metrics.clone();
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let segments = path_segments(req.uri().path());
    // A path no resource is at is counted as one route: its text is the caller's.
    let route = segments.as_ref().ok().and_then(|segments| {
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            ["openapi.json"] => Some("/openapi.json"),
            ["healthz"] => Some("/healthz"),
            ["readyz"] => Some("/readyz"),
            _ => openapi::route_of(&segments).map(|(template, _)| template),
        }
    });
    metrics.in_flight.inc();
    let response = answer(state, req, segments).await;
    metrics.in_flight.dec();
    metrics.observe_request(
        route.unwrap_or("(none)"),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Answers one request whose path is `segments` (decoded, or why it could not be).
async fn answer<B>(
    state: Arc<ApiState>,
    req: Request<B>,
    segments: Result<Vec<String>, ApiError>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let segments = match segments {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["openapi.json"]) => return json_response(StatusCode::OK, &openapi::document()),
        (&Method::GET, ["healthz"]) => return json_response(StatusCode::OK, &json!({"status": "ok"})),
        // Ready while the metadata store answers: a replica cut off from it leaves the Service.
        (&Method::GET, ["readyz"]) => {
            return match state.meta.ping().await {
                Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
                Err(e) => error_response(&ApiError::from(e)),
            };
        }
        _ => {}
    }
    let Some(allowed) = openapi::allowed_methods(&segments) else {
        return error_response(&ApiError::not_found(format!(
            "no such resource: {}",
            parts.uri.path()
        )));
    };
    if !allowed.contains(&parts.method) {
        let mut response = error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not served at {}", parts.method, parts.uri.path()),
        ));
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, v);
        }
        return response;
    }
    let principal = match authenticate(&state, &parts.headers).await {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    // Only a document write may be large, and only a few large bodies are read at once.
    let document_write = parts.method == Method::POST
        && matches!(segments.as_slice(), ["v1", "datastores", _, _, "documents"]);
    let largest_write = state.max_document_bytes + ENVELOPE_BYTES;
    let limit = if document_write {
        largest_write
    } else {
        MAX_BODY_BYTES
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let permits = state.clone();
    let _large = match declared {
        Some(n) if n <= MAX_BODY_BYTES as u64 || !document_write => None,
        _ => permits.large_writes.acquire().await.ok(),
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(&ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TooLarge",
                format!(
                    "this request's body is at most {limit} bytes (document writes up to {largest_write}; \
                     or the body could not be read)"
                ),
            ));
        }
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let request = Call {
        method: parts.method.clone(),
        state,
        principal,
        segments: segments.iter().map(ToString::to_string).collect(),
        query,
        body,
        respond_async: parts.headers.get_all("prefer").iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim() == "respond-async"))
        }),
    };
    match route(request).await {
        Ok((status, body)) => {
            let mut response = json_response(status, &body);
            if status == StatusCode::ACCEPTED
                && let Some(id) = body.get("id").and_then(Value::as_str)
                && let Ok(v) = HeaderValue::from_str(&format!("/v1/operations/{id}"))
            {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Err(e) => error_response(&e),
    }
}

/// The path's segments, percent-decoded; an empty path has none.
fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| ApiError::invalid("path segments must be UTF-8"))
        })
        .collect()
}

/// The caller's verified identity, from its bearer token.
async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(verifier) = &state.verifier else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            format!("cannot verify callers: {}", state.no_verifier_reason),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                format!(
                    "send a service-account token for audience {:?} as `Authorization: Bearer <token>`",
                    verifier.audience()
                ),
            )
        })?;
    Ok(verifier
        .verify(token, jwt_expiry(token), "the caller")
        .await?
        .principal)
}

/// The `exp` claim of a JWT, read without checking the signature: only used to bound how long
/// the API server's answer about the token is remembered, never to trust the token.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp))
}

/// One authenticated request.
struct Call {
    method: Method,
    state: Arc<ApiState>,
    principal: Principal,
    segments: Vec<String>,
    query: HashMap<String, String>,
    body: Bytes,
    respond_async: bool,
}

async fn route(call: Call) -> ApiResult {
    let segments: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["v1", "datastores"] => list_datastores(&call).await,
        ["v1", "datastores", ns, name] => get_datastore(&call, ns, name).await,
        ["v1", "datastores", ns, name, "documents"] if call.method == Method::GET => {
            list_documents(&call, ns, name).await
        }
        ["v1", "datastores", ns, name, "documents"] => {
            let (ns, name) = (ns.to_string(), name.to_string());
            maybe_async(call, "write-document", |c| async move {
                write_document(&c, &ns, &name).await
            })
            .await
        }
        ["v1", "datastores", ns, name, "query"] => {
            let (ns, name) = (ns.to_string(), name.to_string());
            maybe_async(
                call,
                "query",
                |c| async move { query_datastore(&c, &ns, &name).await },
            )
            .await
        }
        ["v1", "documents", id] => get_document(&call, id).await,
        ["v1", "documents", id, "timeline"] => timeline(&call, id).await,
        ["v1", "workspaces", ws, "entries"] => list_entries(&call, ws).await,
        ["v1", "workspaces", ws, "stat"] => stat(&call, ws).await,
        ["v1", "workspaces", ws, "snapshots"] => snapshot(&call, ws).await,
        ["v1", "workspaces", ws, "publish"] => publish(&call, ws).await,
        ["v1", "operations", id] => operation(&call, id).await,
        _ => Err(ApiError::not_found("no such resource")),
    }
}

/// Runs `work` now, or (with `Prefer: respond-async`) in the background behind an operation
/// handle answered 202.
async fn maybe_async<F, Fut>(call: Call, kind: &'static str, work: F) -> ApiResult
where
    F: FnOnce(Call) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiResult> + Send + 'static,
{
    if !call.respond_async {
        return work(call).await;
    }
    let state = call.state.clone();
    let id = state.meta.start_operation(&call.principal.username, kind).await?;
    tokio::spawn(async move {
        // Finished well inside the deadline after which a poll reports it lost.
        let limit = OPERATION_DEADLINE - std::time::Duration::from_secs(60);
        let outcome = match tokio::time::timeout(limit, work(call)).await {
            Ok(Ok((_, value))) => OperationState::Succeeded(value),
            Ok(Err(e)) => OperationState::Failed(json!(e.detail())),
            Err(_) => OperationState::Failed(json!(ErrorDetail {
                code: "Lost".into(),
                message: format!("the operation did not finish within {limit:?}"),
            })),
        };
        if let Err(e) = state.meta.finish_operation(id, &outcome).await {
            tracing::error!(%id, error = %e, "could not record how an API operation ended");
        }
    });
    ok(
        StatusCode::ACCEPTED,
        &OperationView {
            id,
            kind: kind.to_string(),
            state: "running".into(),
            result: None,
            error: None,
            started_at: rfc3339(now()),
        },
    )
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn rfc3339(t: Timestamp) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(t.0)).map_or_else(|_| String::new(), |t| t.to_string())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the request body: {e}")))
}

fn role_name(role: DataStoreRole) -> &'static str {
    match role {
        DataStoreRole::Reader => "reader",
        DataStoreRole::Writer => "writer",
        DataStoreRole::Admin => "admin",
    }
}

/// The caller's role on DataStore `record`: its subjects' say, or, for the store's own
/// DataStores (no subjects; written by the mounts), reader for every caller, each document
/// then readable only with its file ([`readable_by_target`]).
fn role_on(call: &Call, record: &DataStoreRecord) -> Option<DataStoreRole> {
    if drive::media::is_built_in(&record.spec.name) {
        Some(DataStoreRole::Reader)
    } else {
        record.spec.access.role_of(&call.principal)
    }
}

/// Whether a document of DataStore `datastore`, seen as `target`, is the caller's to see: any
/// document of a DataStore with subjects (the role decided), and a built-in DataStore's
/// document only when the caller may read the path it is attached to.
fn readable_by_target(datastore: &str, target: Option<&TargetView>) -> bool {
    !drive::media::is_built_in(datastore) || target.is_some_and(|t| t.path.is_some())
}

/// DataStore `<ns>/<name>` if the caller holds at least `need` on it. A caller named nowhere
/// gets the answer a missing DataStore gets.
async fn datastore(
    call: &Call,
    ns: &str,
    name: &str,
    need: DataStoreRole,
) -> Result<(DataStoreRecord, DataStoreRole), ApiError> {
    let full = format!("{ns}/{name}");
    let hidden = || ApiError::not_found(format!("no DataStore {full}"));
    if drive::media::validate_name(&full).is_err() {
        return Err(hidden());
    }
    let record = call.state.meta.media_datastore(&full).await?.ok_or_else(hidden)?;
    match role_on(call, &record) {
        None => Err(hidden()),
        Some(role) if role < need => Err(ApiError::forbidden(format!(
            "{} is a {} of DataStore {full}; this needs a {}",
            call.principal.username,
            role_name(role),
            role_name(need)
        ))),
        Some(role) => Ok((record, role)),
    }
}

fn datastore_view(record: &DataStoreRecord, role: DataStoreRole) -> DataStoreView {
    let (namespace, name) = record
        .spec
        .name
        .split_once('/')
        .unwrap_or(("", &record.spec.name));
    DataStoreView {
        namespace: namespace.to_string(),
        name: name.to_string(),
        analysis_type: record.spec.analysis_type.clone(),
        version: record.spec.version,
        schema: record.spec.schema.clone(),
        media_id_schema: record.spec.media_id_schema.clone(),
        queryable: record.spec.queryable.clone(),
        timeline: record
            .spec
            .timeline
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect(),
        role: role_name(role).to_string(),
    }
}

async fn list_datastores(call: &Call) -> ApiResult {
    let items = call
        .state
        .meta
        .media_datastores()
        .await?
        .iter()
        .filter(|d| d.spec.name.contains('/'))
        .filter_map(|d| role_on(call, d).map(|r| datastore_view(d, r)))
        .collect();
    ok(StatusCode::OK, &DataStoreList { items })
}

async fn get_datastore(call: &Call, ns: &str, name: &str) -> ApiResult {
    let (record, role) = datastore(call, ns, name, DataStoreRole::Reader).await?;
    ok(StatusCode::OK, &datastore_view(&record, role))
}

/// Workspace facts looked up once per request.
#[derive(Default)]
struct Workspaces {
    by_id: HashMap<WorkspaceId, Option<(String, Option<WorkspaceFacts>)>>,
}

impl Workspaces {
    /// Where `target` is now, as far as the caller may see: the workspace's name, and the
    /// path when the caller may read it.
    async fn view(
        &mut self,
        call: &Call,
        target: Option<(WorkspaceId, NodeId)>,
        paths: &HashMap<(WorkspaceId, NodeId), String>,
    ) -> Result<Option<TargetView>, ApiError> {
        let Some((ws, ino)) = target else {
            return Ok(None);
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_id.entry(ws) {
            let entry = match call.state.meta.get_workspace_by_id(ws).await {
                Ok(w) => {
                    let facts = call.state.meta.access_facts(&w.name).await?;
                    Some((w.name, facts))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            slot.insert(entry);
        }
        let Some(Some((name, facts))) = self.by_id.get(&ws) else {
            return Ok(None);
        };
        let path = paths
            .get(&(ws, ino))
            .filter(|p| decide(&call.principal, facts.as_ref(), p, now()).is_some())
            .cloned();
        Ok(Some(TargetView {
            workspace: name.clone(),
            path,
        }))
    }
}

async fn document_views(
    call: &Call,
    docs: Vec<drive::meta::MediaDocument>,
) -> Result<Vec<DocumentView>, ApiError> {
    let paths = call
        .state
        .meta
        .live_paths_of(docs.iter().filter_map(|d| d.target))
        .await?;
    let mut workspaces = Workspaces::default();
    let mut views = Vec::with_capacity(docs.len());
    for d in docs {
        views.push(DocumentView {
            id: d.id,
            target: workspaces.view(call, d.target, &paths).await?,
            datastore: d.datastore,
            media_id: d.media_id,
            created_at: rfc3339(d.created_at),
            // A stored text not read here stays out (listings, write results).
            document: (d.stored_size.is_none() || !d.body.is_null()).then_some(d.body),
            stored_size: d.stored_size,
        });
    }
    Ok(views)
}

async fn list_documents(call: &Call, ns: &str, name: &str) -> ApiResult {
    let (record, _) = datastore(call, ns, name, DataStoreRole::Reader).await?;
    let media_id = call
        .query
        .get("mediaId")
        .ok_or_else(|| ApiError::invalid("the query parameter mediaId (JSON) is required"))?;
    let media_id: Value =
        serde_json::from_str(media_id).map_err(|e| ApiError::invalid(format!("mediaId is not JSON: {e}")))?;
    let versions = match call.query.get("all").map(String::as_str) {
        None | Some("false") => Versions::Latest,
        Some("true") => Versions::All,
        Some(other) => return Err(ApiError::invalid(format!("all={other}: true or false"))),
    };
    let docs = call
        .state
        .meta
        .media_documents(&record.spec.name, &media_id, versions)
        .await?;
    let mut items = document_views(call, docs).await?;
    items.retain(|d| readable_by_target(&d.datastore, d.target.as_ref()));
    ok(StatusCode::OK, &DocumentList { items })
}

async fn write_document(call: &Call, ns: &str, name: &str) -> ApiResult {
    let (record, _) = datastore(call, ns, name, DataStoreRole::Writer).await?;
    let write: DocumentWrite = parse_body(&call.body)?;
    let target = match &write.target {
        Some(t) => {
            let (ws, _) = workspace(call, &t.workspace, &t.path, Permission::Write).await?;
            Some((ws, call.state.meta.resolve(ws, &t.path).await?.ino))
        }
        None => None,
    };
    let doc = call
        .state
        .documents
        .put(&record.spec.name, &write.media_id, target, &write.document)
        .await?;
    let mut views = document_views(call, vec![doc]).await?;
    ok(StatusCode::CREATED, &views.pop())
}

fn limit_of(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        l @ 1..=10_000 => Ok(l as usize),
        l => Err(ApiError::invalid(format!("limit {l}: 1 to 10000"))),
    }
}

async fn query_datastore(call: &Call, ns: &str, name: &str) -> ApiResult {
    let (record, _) = datastore(call, ns, name, DataStoreRole::Reader).await?;
    let request: QueryRequest = parse_body(&call.body)?;
    let filter = Filter::from_json(&request.filter).map_err(|e| ApiError::invalid(e.to_string()))?;
    let versions = if request.all {
        Versions::All
    } else {
        Versions::Latest
    };
    let hits = call
        .state
        .meta
        .query_media(&record.spec.name, &filter, versions, limit_of(request.limit)?)
        .await?;
    let paths = call
        .state
        .meta
        .live_paths_of(hits.iter().filter_map(|h| h.target))
        .await?;
    let mut workspaces = Workspaces::default();
    let mut out = Vec::with_capacity(hits.len());
    for h in hits {
        let target = workspaces.view(call, h.target, &paths).await?;
        // A built-in DataStore's hits on files the caller may not read are not counted
        // out loud: the answer holds fewer hits than the limit allows.
        if readable_by_target(&record.spec.name, target.as_ref()) {
            out.push(QueryHit {
                id: h.id,
                target,
                media_id: h.media_id,
            });
        }
    }
    ok(StatusCode::OK, &QueryResult { hits: out })
}

fn document_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no document {id}")))
}

/// Document `id` if the caller may read its DataStore, and, in a built-in DataStore, the
/// path it is attached to (otherwise: not found).
async fn readable_document(call: &Call, id: &str) -> Result<drive::meta::MediaDocument, ApiError> {
    let uuid = document_id(id)?;
    let hidden = || ApiError::not_found(format!("no document {id}"));
    let doc = call.state.meta.media_document(uuid).await?.ok_or_else(hidden)?;
    let (ns, name) = doc.datastore.split_once('/').ok_or_else(hidden)?;
    datastore(call, ns, name, DataStoreRole::Reader)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                hidden()
            } else {
                e
            }
        })?;
    if drive::media::is_built_in(&doc.datastore) {
        let paths = call.state.meta.live_paths_of(doc.target).await?;
        let target = Workspaces::default().view(call, doc.target, &paths).await?;
        if !readable_by_target(&doc.datastore, target.as_ref()) {
            return Err(hidden());
        }
    }
    Ok(doc)
}

async fn get_document(call: &Call, id: &str) -> ApiResult {
    let mut doc = readable_document(call, id).await?;
    call.state.documents.fill_body(&mut doc).await?;
    let mut views = document_views(call, vec![doc]).await?;
    ok(StatusCode::OK, &views.pop())
}

async fn timeline(call: &Call, id: &str) -> ApiResult {
    let doc = readable_document(call, id).await?;
    let request: TimelineRequest = parse_body(&call.body)?;
    let time = match (request.from, request.to) {
        (Some(a), Some(b)) => Some((a, b)),
        (None, None) => None,
        _ => return Err(ApiError::invalid("give both from and to, or neither")),
    };
    let q = TimelineQuery {
        time,
        area: request.area,
    };
    q.check().map_err(ApiError::invalid)?;
    let entities = call
        .state
        .documents
        .timeline(doc.id, &q, limit_of(request.limit)?)
        .await?
        .into_iter()
        .map(|h| TimelineEntityView {
            collection: h.collection,
            index: h.index as u64,
            start: h.start,
            end: h.end,
            region: h.region,
            item: h.item,
        })
        .collect();
    ok(StatusCode::OK, &TimelineResult { entities })
}

/// Workspace `name` if the caller holds `need` on `path` in it. A caller holding nothing in
/// it gets the answer a missing workspace gets.
async fn workspace(
    call: &Call,
    name: &str,
    path: &str,
    need: Permission,
) -> Result<(WorkspaceId, Permission), ApiError> {
    let facts = call.state.meta.access_facts(name).await?;
    let at = now();
    if !holds_any(&call.principal, facts.as_ref(), at) {
        return Err(ApiError::not_found(format!("no workspace {name}")));
    }
    if !path.starts_with('/') {
        return Err(ApiError::invalid(format!("path {path:?}: absolute paths only")));
    }
    match decide(&call.principal, facts.as_ref(), path, at) {
        Some(p) if p >= need => {}
        _ => {
            return Err(ApiError::forbidden(format!(
                "{} holds no {} grant on {path} of workspace {name}",
                call.principal.username,
                need.as_str()
            )));
        }
    }
    let ws = call.state.meta.get_workspace(name).await?;
    Ok((ws.id, need))
}

fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Directory => "directory",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
        NodeKind::CharDevice => "char-device",
        NodeKind::BlockDevice => "block-device",
    }
}

fn node_view(name: String, attr: &Attr) -> NodeView {
    NodeView {
        name,
        kind: kind_name(attr.kind).to_string(),
        size: attr.size,
        mode: attr.mode,
        uid: attr.uid,
        gid: attr.gid,
        mtime: rfc3339(attr.mtime),
        content_version: attr.content_version,
    }
}

fn path_param(call: &Call) -> String {
    call.query.get("path").cloned().unwrap_or_else(|| "/".into())
}

async fn list_entries(call: &Call, ws_name: &str) -> ApiResult {
    let path = path_param(call);
    let (ws, _) = workspace(call, ws_name, &path, Permission::Read).await?;
    let limit = match call.query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::invalid(format!("limit {l:?}: 1 to {MAX_PAGE}")))?,
    };
    let after = call
        .query
        .get("after")
        .map(|a| Name::parse(a.as_bytes()))
        .transpose()
        .map_err(|e| ApiError::invalid(format!("after: {e}")))?;
    let dir = call.state.meta.resolve(ws, &path).await?;
    if dir.kind != NodeKind::Directory {
        return Err(ApiError::invalid(format!("{path} is not a folder")));
    }
    let mut page = call
        .state
        .meta
        .readdir_plus(View::Live, dir.ino, after.as_ref(), limit as usize + 1)
        .await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let next = more
        .then(|| page.last().map(|e| e.entry.name.to_string_lossy()))
        .flatten();
    let entries = page
        .iter()
        .map(|e| node_view(e.entry.name.to_string_lossy(), &e.attr))
        .collect();
    ok(StatusCode::OK, &EntryList { entries, next })
}

async fn stat(call: &Call, ws_name: &str) -> ApiResult {
    let path = path_param(call);
    let (ws, _) = workspace(call, ws_name, &path, Permission::Read).await?;
    let attr = call.state.meta.resolve(ws, &path).await?;
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    ok(StatusCode::OK, &node_view(name.to_string(), &attr))
}

fn actor(principal: &Principal) -> Actor {
    Actor(format!("api:{}", principal.username))
}

fn snapshot_view(s: &drive::model::Snapshot) -> SnapshotView {
    SnapshotView {
        name: s.name.clone(),
        path: s.path.clone(),
        epoch: s.epoch.0,
        created_at: rfc3339(s.created_at),
    }
}

async fn snapshot(call: &Call, ws_name: &str) -> ApiResult {
    let request: SnapshotRequest = parse_body(&call.body)?;
    let path = request.path.unwrap_or_else(|| "/".into());
    let (ws, _) = workspace(call, ws_name, &path, Permission::Write).await?;
    let snapshot = call
        .state
        .meta
        .create_snapshot(&actor(&call.principal), ws, &request.name, &path)
        .await?;
    ok(StatusCode::CREATED, &snapshot_view(&snapshot))
}

async fn publish(call: &Call, ws_name: &str) -> ApiResult {
    let request: PublishRequest = parse_body(&call.body)?;
    let (ws, _) = workspace(call, ws_name, &request.source, Permission::Write).await?;
    workspace(call, ws_name, &request.destination, Permission::Write).await?;
    let options = PublishOptions {
        mode: match request.mode {
            None | Some(PublishModeName::Move) => PublishMode::Move,
            Some(PublishModeName::Copy) => PublishMode::Copy,
        },
        snapshot: request.snapshot,
        merge: match request.merge {
            None | Some(MergeName::Fail) => MergeMode::Fail,
            Some(MergeName::Overwrite) => MergeMode::Overwrite,
            Some(MergeName::Skip) => MergeMode::Skip,
        },
    };
    let report = call
        .state
        .meta
        .publish(
            &actor(&call.principal),
            ws,
            &request.source,
            &request.destination,
            &options,
        )
        .await?;
    ok(
        StatusCode::CREATED,
        &PublishResult {
            snapshot: snapshot_view(&report.snapshot),
            renamed: report.renamed,
        },
    )
}

async fn operation(call: &Call, id: &str) -> ApiResult {
    let hidden = || ApiError::not_found(format!("no operation {id}"));
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| hidden())?;
    let op = call
        .state
        .meta
        .operation(&call.principal.username, uuid)
        .await?
        .ok_or_else(hidden)?;
    let (state, result, error) = match op.state {
        OperationState::Running => ("running", None, None),
        OperationState::Succeeded(v) => ("succeeded", Some(v), None),
        OperationState::Failed(e) => (
            "failed",
            None,
            Some(serde_json::from_value(e).unwrap_or(ErrorDetail {
                code: "Internal".into(),
                message: "the operation failed".into(),
            })),
        ),
    };
    ok(
        StatusCode::OK,
        &OperationView {
            id: op.id,
            kind: op.kind,
            state: state.into(),
            result,
            error,
            started_at: rfc3339(op.started_at),
        },
    )
}
