//! `/api/v1/replica/…` on the canonical server: every route checks the replica token first.

use super::{Canonical, CanonicalError};
use crate::protocol::{
    BlobBatch, ReplicaReport, BLOB_BATCH_PATH, KEYS_PATH, MANIFEST_PATH, MAX_WAIT_SECS, STATUS_PATH,
};
use aptgate_channels::api::ApiError;
use aptgate_mirror::routes::respond;
use aptgate_mirror::{MirrorError, Resolved, Sha256};
use axum::extract::{FromRef, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Canonical>: FromRef<S>,
{
    Router::new()
        .route(MANIFEST_PATH, get(manifest))
        .route(KEYS_PATH, get(keys))
        .route("/api/v1/replica/blobs/sha256/{hex}", get(blob))
        .route(BLOB_BATCH_PATH, post(blob_batch))
        .route(STATUS_PATH, post(status))
}

impl From<CanonicalError> for ApiError {
    fn from(e: CanonicalError) -> Self {
        match e {
            CanonicalError::Channels(e) => e.into(),
            e => {
                tracing::error!(error = %e, "replica feed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "catalog_unavailable",
                    "the replica feed cannot be read now; retry later",
                )
            }
        }
    }
}

/// The bearer token's sha256 (hex), as stored.
pub(crate) fn bearer_sha256(headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    (!token.is_empty()).then(|| Sha256::of(token.as_bytes()).to_hex())
}

pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid replica token is required (Authorization: Bearer …); create one with `aptgate replica token create NAME`",
    )
}

/// The replica the request's token belongs to.
async fn replica(canonical: &Canonical, headers: &HeaderMap) -> Result<String, ApiError> {
    let digest = bearer_sha256(headers).ok_or_else(unauthorized)?;
    canonical
        .store
        .token_name(&digest)
        .await?
        .ok_or_else(unauthorized)
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    pub after: Option<i64>,
    pub wait: Option<u64>,
}

async fn manifest(
    State(canonical): State<Arc<Canonical>>,
    headers: HeaderMap,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    replica(&canonical, &headers).await?;
    let deadline = Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    loop {
        let (seq, envelope) = canonical.envelope().await?;
        if q.after.is_none_or(|after| seq > after) || Instant::now() >= deadline {
            return Ok(Json(envelope).into_response());
        }
        // Moves are rare and replicas few: a cheap recheck beats wiring every move here.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn keys(
    State(canonical): State<Arc<Canonical>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    replica(&canonical, &headers).await?;
    let armored = canonical.channels.public_keys().map_err(ApiError::from)?;
    Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], armored).into_response())
}

#[derive(Deserialize)]
pub(crate) struct SizeQuery {
    #[expect(
        dead_code,
        reason = "the canonical knows sizes; a replica parent needs it"
    )]
    pub size: Option<u64>,
}

async fn blob(
    State(canonical): State<Arc<Canonical>>,
    Path(hex): Path<String>,
    Query(_): Query<SizeQuery>,
    request: Request,
) -> Response {
    if let Err(e) = replica(&canonical, request.headers()).await {
        return e.into_response();
    }
    let Ok(digest) = Sha256::from_hex(&hex) else {
        return MirrorError::BadRequest(format!("{hex:?} is not a sha256 digest")).into_response();
    };
    let what = format!("blobs/sha256/{hex}");
    let resolved = if canonical.mirror.store().contains(&digest) {
        Ok(Resolved::Blob {
            digest,
            stale: false,
        })
    } else {
        match canonical.channels.package_blob(&digest).await {
            Ok(Some(resolved)) => Ok(resolved),
            Ok(None) => Err(MirrorError::NotFound { what: what.clone() }),
            Err(e) => Err(e.into_mirror_error(&what)),
        }
    };
    respond(
        &canonical.mirror,
        resolved,
        request,
        &what,
        "public, max-age=31536000, immutable",
    )
    .await
}

/// The body of a `POST blobs`, read only once the caller's token was checked.
pub(crate) async fn batch_body(request: Request) -> Result<BlobBatch, ApiError> {
    let Json(batch) = Json::<BlobBatch>::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    Ok(batch)
}

async fn blob_batch(
    State(canonical): State<Arc<Canonical>>,
    request: Request,
) -> Result<Response, ApiError> {
    replica(&canonical, request.headers()).await?;
    let batch = batch_body(request).await?;
    Ok(crate::batch::respond(
        canonical.mirror.store().clone(),
        batch,
    ))
}

async fn status(
    State(canonical): State<Arc<Canonical>>,
    headers: HeaderMap,
    Json(report): Json<ReplicaReport>,
) -> Result<StatusCode, ApiError> {
    let name = replica(&canonical, &headers).await?;
    // Names end up in metrics labels and the CLI table: the channel-name rules keep them plain.
    if !report.name.is_empty() && report.name.parse::<aptgate_config::ChannelName>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{:?} is not a valid replica name", report.name),
        ));
    }
    // A replica's own report is kept under its token's name; one it forwards for a child
    // replica under `<its name>/<child>`, so a child cannot overwrite another replica's row.
    let text = serde_json::to_string(&report).expect("serializes");
    let at = aptgate_channels::now();
    if report.name == name || report.name.is_empty() {
        canonical.store.save_report(&name, at, &text).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let key = format!("{name}/{}", report.name);
    let saved = canonical
        .store
        .save_forwarded(&name, &key, at, super::admin::SILENT_AFTER_SECS, &text)
        .await?;
    if !saved {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_replicas",
            format!(
                "replica {name} already forwards reports for {} child replicas, all reporting; \
                 a new one is kept once one of them has been silent for {} s",
                super::store::MAX_FORWARDED_PER_REPLICA,
                super::admin::SILENT_AFTER_SECS
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
