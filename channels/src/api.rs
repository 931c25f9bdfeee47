//! The admin JSON API under `/api/v1/`, used by the `aptgate` CLI.
//!
//! Every route but the OpenAPI document wants `Authorization: Bearer <token>`; the admin token
//! is created on first start in `<data_dir>/admin-token` (mode 0600). The acting user is taken
//! from `X-Aptgate-Actor` (the CLI sends the local user name) and recorded as
//! `<actor>` in the audit log. Errors are `{"code": "...", "message": "..."}` with a stable code.

pub use crate::admin_token::{load_or_create_token, token_path, TOKEN_FILE};
pub use endpoints::{endpoint, openapi_document, openapi_document_with, Endpoint};

mod endpoints;
mod error;
mod upload;
use crate::catalog::{AuditAction, AuditEntry, AuditFilter};
use crate::{Actor, Channels, ChannelsError, PromoteRequest};
use axum::extract::Request;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
pub use error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type ApiResult = Result<Json<Value>, ApiError>;

/// The admin routes. Every route in the table (`api/endpoints.rs`), and every one of `extra`
/// (other crates' admin routes, e.g. the fleet's), sits behind [`require_token`], so a new
/// route is guarded before its handler or its body extractor runs; the OpenAPI document
/// (which describes them all) is the one public route.
pub fn routes<S>(channels: Arc<Channels>, extra: Vec<Endpoint<S>>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Channels>: FromRef<S>,
{
    let described: Vec<_> = extra
        .iter()
        .map(|e| (e.method.clone(), e.path, e.summary))
        .collect();
    let document = Arc::new(endpoints::openapi_document_with(&described));
    let guarded = endpoints::all::<S>()
        .into_iter()
        .chain(extra)
        .fold(Router::new(), |router, e| router.route(e.path, e.handler))
        .layer(middleware::from_fn_with_state(channels, require_token));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(Value::clone(&document)) }),
        )
        .merge(guarded)
}

/// Refuses a request without the admin token before anything else looks at it.
async fn require_token(
    State(channels): State<Arc<Channels>>,
    request: Request,
    next: Next,
) -> Response {
    match check_token(&channels, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check_token(channels: &Channels, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token\nhint: the admin token is in <data_dir>/admin-token",
        )
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    if !constant_time_eq(given.trim().as_bytes(), channels.admin_token().as_bytes()) {
        return Err(unauthorized());
    }
    Ok(())
}

/// Checks the bearer token (again: the layer already did) and returns who acts (the
/// `X-Aptgate-Actor` header, else `admin`).
pub fn authorize(
    channels: &Channels,
    headers: &HeaderMap,
    comment: Option<String>,
) -> Result<Actor, ApiError> {
    check_token(channels, headers)?;
    let name = headers
        .get("x-aptgate-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .unwrap_or("admin");
    Ok(Actor {
        name: name.to_owned(),
        comment,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_json<T: serde::Serialize>(value: &T) -> ApiResult {
    Ok(Json(
        serde_json::to_value(value).expect("API values serialize"),
    ))
}

#[derive(Deserialize, Default)]
struct SyncBody {
    source: Option<String>,
}

async fn sync(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    body: Option<Json<SyncBody>>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, None)?;
    let sources: Vec<String> = match body.and_then(|b| b.0.source) {
        Some(s) => vec![s],
        None => channels.source_names(),
    };
    let mut outcomes = Vec::new();
    for source in sources {
        // Progress (indices read, packages downloaded) goes to the server log.
        let progress = |line: &str| tracing::info!(source = %source, "sync: {line}");
        outcomes.push(channels.sync(&source, &actor, &progress).await?);
    }
    to_json(&outcomes)
}

async fn snapshots(State(channels): State<Arc<Channels>>, headers: HeaderMap) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(
        &channels
            .catalog()
            .list_snapshots()
            .await
            .map_err(ChannelsError::from)?,
    )
}

async fn snapshot(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    let snapshot = channels.snapshot(&id).await?;
    let manifest = channels.manifest(&snapshot).await?;
    let indices: Vec<Value> = manifest
        .suites
        .iter()
        .flat_map(|(suite, sm)| {
            sm.indices.iter().map(move |(key, files)| {
                json!({ "suite": suite, "index": key, "packages": files.packages })
            })
        })
        .collect();
    Ok(Json(json!({
        "snapshot": snapshot,
        "packages": manifest.package_count(),
        "indices": indices,
    })))
}

async fn diff(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path((a, b)): Path<(String, String)>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.diff(&a, &b).await?)
}

#[derive(Deserialize)]
struct FilterBody {
    #[serde(flatten)]
    filter: crate::snapshots::SnapshotFilter,
    name: Option<String>,
    comment: Option<String>,
}

async fn filter(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<FilterBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(
        &channels
            .filter_snapshot(&id, &body.filter, body.name, &actor)
            .await?,
    )
}

#[derive(Deserialize)]
struct MergeBody {
    snapshots: Vec<String>,
    into_suite: Option<String>,
    name: Option<String>,
    comment: Option<String>,
}

async fn merge(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Json(body): Json<MergeBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(
        &channels
            .merge_snapshots(&body.snapshots, body.into_suite, body.name, &actor)
            .await?,
    )
}

#[derive(Deserialize)]
struct PullBody {
    from: String,
    packages: Vec<String>,
    name: Option<String>,
    comment: Option<String>,
}

async fn pull(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<PullBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(
        &channels
            .pull_snapshot(&id, &body.from, &body.packages, body.name, &actor)
            .await?,
    )
}

#[derive(Deserialize)]
struct PublishBody {
    snapshot: String,
    comment: Option<String>,
}

async fn publish(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(body): Json<PublishBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(
        &channels
            .publish_snapshot(&channel, &body.snapshot, &actor)
            .await?,
    )
}

async fn auto_approve(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.auto_approve(&channel).await?)
}

#[derive(Deserialize)]
struct ImportBody {
    armored: String,
    comment: Option<String>,
}

async fn import_key(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Json(body): Json<ImportBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    let fingerprint = channels.import_key(&body.armored, &actor).await?;
    Ok(Json(json!({ "imported": fingerprint })))
}

async fn create_channel(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Json(config): Json<aptgate_config::ChannelConfig>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, None)?;
    channels.create_channel(config.clone(), &actor).await?;
    to_json(&config)
}

async fn channels_list(State(channels): State<Arc<Channels>>, headers: HeaderMap) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(
        &channels
            .catalog()
            .list_channels()
            .await
            .map_err(ChannelsError::from)?,
    )
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn history(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.history(&channel, q.limit.unwrap_or(20)).await?)
}

async fn holds(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.holds(&channel).await?)
}

#[derive(Deserialize)]
struct HoldBody {
    package: String,
    comment: Option<String>,
}

async fn hold(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(body): Json<HoldBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    let changed = channels.hold(&channel, &body.package, &actor).await?;
    Ok(Json(json!({ "changed": changed })))
}

#[derive(Deserialize)]
struct CommentQuery {
    comment: Option<String>,
}

async fn unhold(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path((channel, package)): Path<(String, String)>,
    Query(q): Query<CommentQuery>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, q.comment)?;
    let changed = channels.unhold(&channel, &package, &actor).await?;
    Ok(Json(json!({ "changed": changed })))
}

#[derive(Deserialize)]
struct RollbackBody {
    to: Option<String>,
    comment: Option<String>,
}

async fn rollback(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(body): Json<RollbackBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(
        &channels
            .rollback(&channel, body.to.as_deref(), &actor)
            .await?,
    )
}

#[derive(Deserialize)]
struct PromoteBody {
    #[serde(flatten)]
    request: PromoteRequest,
    comment: Option<String>,
}

async fn promote(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Json(body): Json<PromoteBody>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(&channels.promote(&body.request, &actor).await?)
}

#[derive(Deserialize)]
struct AuditQuery {
    channel: Option<String>,
    action: Option<String>,
    since: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    let action = match q.action {
        Some(a) => Some(AuditAction::parse(&a).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "unknown action {a:?}; one of sync, snapshot, promote, hold, release, rollback, key"
                ),
            )
        })?),
        None => None,
    };
    let entries = channels
        .catalog()
        .audit(&AuditFilter {
            channel: q.channel,
            action,
            since: q.since,
            limit: q.limit,
        })
        .await
        .map_err(ChannelsError::from)?;
    to_json(&entries)
}

#[derive(Deserialize)]
struct ExportQuery {
    after_id: Option<i64>,
}

/// The audit log as JSON lines, oldest first, read in pages so a long log is never held whole;
/// `after_id` resumes an export (the last line's `id`).
async fn audit_export(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    authorize(&channels, &headers, None)?;
    const PAGE: i64 = 1000;
    // The first page is read before answering, so a catalog error is a clean error status.
    let first = channels
        .catalog()
        .audit_after(q.after_id.unwrap_or(0), PAGE)
        .await
        .map_err(ChannelsError::from)?;
    // State: the page to send next, `None` at the end, or the error that ends the body (headers
    // are sent by then: an error, never a clean short export).
    type Next = Result<Option<Vec<AuditEntry>>, std::io::Error>;
    let pages = futures::stream::unfold(
        (channels, Ok(Some(first)) as Next),
        |(channels, next)| async move {
            let page = match next {
                Ok(Some(page)) if !page.is_empty() => page,
                Ok(_) => return None,
                Err(e) => return Some((Err(e), (channels, Ok(None)))),
            };
            let mut lines = Vec::new();
            for entry in &page {
                serde_json::to_writer(&mut lines, entry).expect("audit entries serialize");
                lines.push(b'\n');
            }
            let last = page.last().map_or(0, |e| e.id);
            let next = match channels.catalog().audit_after(last, PAGE).await {
                Ok(next) => Ok(Some(next)),
                Err(e) => Err(std::io::Error::other(e)),
            };
            Some((Ok::<_, std::io::Error>(lines), (channels, next)))
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

async fn keys(State(channels): State<Arc<Channels>>, headers: HeaderMap) -> ApiResult {
    authorize(&channels, &headers, None)?;
    Ok(Json(
        json!({ "armored": channels.public_keys()?, "keys": channels.keys() }),
    ))
}

#[derive(Deserialize, Default)]
struct CommentBody {
    comment: Option<String>,
}

async fn add_key(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.and_then(|b| b.0.comment))?;
    to_json(&channels.add_key(&actor).await?)
}

async fn retire_key(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, body.and_then(|b| b.0.comment))?;
    channels.retire_key(&fingerprint, &actor).await?;
    Ok(Json(json!({ "retired": fingerprint })))
}

async fn resign(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult {
    let actor = authorize(&channels, &headers, None)?;
    to_json(&channels.resign(&channel, &actor).await?)
}

async fn verify(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.verify_channel(&channel).await?)
}

#[derive(Deserialize, Default)]
struct GcBody {
    #[serde(default)]
    dry_run: bool,
    comment: Option<String>,
}

async fn gc(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    body: Option<Json<GcBody>>,
) -> ApiResult {
    let body = body.map(|b| b.0).unwrap_or_default();
    let actor = authorize(&channels, &headers, body.comment)?;
    to_json(&channels.gc(body.dry_run, &actor).await?)
}

async fn store_usage(State(channels): State<Arc<Channels>>, headers: HeaderMap) -> ApiResult {
    authorize(&channels, &headers, None)?;
    to_json(&channels.store_usage().await?)
}
