//! What a replica serves: `/channels/<channel>/…` from the applied state (byte for byte what
//! the canonical server serves), `/keys/<name>.asc`, `/status`, `/metrics`, `/healthz`, and
//! for child replicas (chains) the parent routes of the protocol, with the signed manifest
//! passed through unchanged. A file the served indices list but the store lacks is fetched
//! from the parent by digest (single flight, verified, stored) — never answered 404.

use super::Replica;
use crate::protocol::{
    blob_url, ManifestEnvelope, ReplicaReport, BLOB_BATCH_PATH, KEYS_PATH, MANIFEST_PATH,
    MAX_WAIT_SECS, STATUS_PATH,
};
use aptgate_channels::api::ApiError;
use aptgate_mirror::path::MirrorPath;
use aptgate_mirror::routes::{cache_control, respond};
use aptgate_mirror::{MirrorError, Resolved, Sha256};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub fn routes(replica: Arc<Replica>) -> Router {
    Router::new()
        .route("/channels/{channel}/{*path}", get(serve_channel))
        .route("/keys/{file}", get(key))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(MANIFEST_PATH, get(child_manifest))
        .route(KEYS_PATH, get(child_keys))
        .route("/api/v1/replica/blobs/sha256/{hex}", get(child_blob))
        .route(BLOB_BATCH_PATH, post(child_blob_batch))
        .route(STATUS_PATH, post(child_status))
        .with_state(replica)
}

fn not_found(what: &str) -> Response {
    MirrorError::NotFound {
        what: what.to_owned(),
    }
    .into_response()
}

impl Replica {
    /// A blob the applied state names: stored, or fetched from the parent now.
    async fn resolve_blob(&self, digest: Sha256, size: u64) -> Result<Resolved, MirrorError> {
        if self.mirror.store().contains(&digest) {
            return Ok(Resolved::Blob {
                digest,
                stale: false,
            });
        }
        let url = blob_url(self.config.parent.as_str(), &digest, size);
        match self.mirror.fetch_blob_at(&url, digest, size).await? {
            Resolved::Streaming(flight) => match flight.started().await {
                Ok(()) => Ok(Resolved::Streaming(flight)),
                Err(failure) => Err(failure.into_error(&format!("blobs/sha256/{digest}"))),
            },
            resolved => Ok(resolved),
        }
    }
}

async fn serve_channel(
    State(replica): State<Arc<Replica>>,
    Path((channel, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let path = match MirrorPath::try_from(path) {
        Ok(p) => p,
        Err(e) => return MirrorError::BadRequest(e.to_string()).into_response(),
    };
    let Some(applied) = replica.applied() else {
        return not_found(path.as_str());
    };
    let Some(served) = applied.channels.get(&channel) else {
        return not_found(path.as_str());
    };
    let segments: Vec<&str> = path.segments().collect();
    let found = match segments.as_slice() {
        ["dists", suite, file @ ("InRelease" | "Release" | "Release.gpg")] => {
            served.suites.get(*suite).map(|s| {
                let blob = match *file {
                    "InRelease" => s.signed.in_release,
                    "Release" => s.signed.release,
                    _ => s.signed.release_gpg,
                };
                (blob.sha256, blob.size)
            })
        }
        ["dists", suite, rest @ ..] if !rest.is_empty() => {
            served.suites.get(*suite).and_then(|s| match rest {
                [.., "by-hash", "SHA256", hex] => {
                    let digest = Sha256::from_hex(hex).ok()?;
                    s.by_hash
                        .get(&digest)
                        .or_else(|| served.grace.get(&digest))
                        .map(|size| (digest, *size))
                }
                _ => s.files.get(&rest.join("/")).copied(),
            })
        }
        ["pool", ..] => served.pool.get(path.as_str()).copied(),
        _ => None,
    };
    let Some((digest, size)) = found else {
        return not_found(path.as_str());
    };
    let resolved = match replica.resolve_blob(digest, size).await {
        // The parent cannot give it now: 503 with Retry-After, so apt (and a `mirror+file:`
        // list) moves on to the next server instead of taking it as a broken file.
        Err(MirrorError::Upstream { reason, .. }) => {
            tracing::warn!(path = %path.as_str(), %reason, "cannot fetch from the parent");
            return parent_unavailable(path.as_str());
        }
        resolved => resolved,
    };
    // As on the canonical server: release files go without dates (two moves within a second).
    let release_file = matches!(
        segments.last(),
        Some(&("InRelease" | "Release" | "Release.gpg"))
    );
    let mut request = request;
    if release_file {
        request.headers_mut().remove(header::IF_MODIFIED_SINCE);
        request.headers_mut().remove(header::IF_RANGE);
    }
    let mut response = respond(
        &replica.mirror,
        resolved,
        request,
        path.as_str(),
        cache_control(path.as_str()),
    )
    .await;
    if release_file {
        response.headers_mut().remove(header::LAST_MODIFIED);
    }
    response
}

fn parent_unavailable(path: &str) -> Response {
    let body = serde_json::json!({
        "code": "parent_unavailable",
        "message": format!("{path} is not on this replica yet and its parent cannot be reached"),
        "hint": "try again later, or another mirror",
    });
    let mut response = aptgate_mirror::error::json_error(StatusCode::SERVICE_UNAVAILABLE, &body);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    response
}

async fn key(State(replica): State<Arc<Replica>>, Path(file): Path<String>) -> Response {
    let Some(applied) = replica.applied() else {
        return not_found(&file);
    };
    if file != format!("{}.asc", applied.keys.name) {
        return not_found(&file);
    }
    match replica.read_text(&applied.keys.sha256).await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/pgp-keys")], text).into_response(),
        Err(e) => MirrorError::internal(e).into_response(),
    }
}

async fn status(State(replica): State<Arc<Replica>>) -> Json<ReplicaReport> {
    Json(replica.status().await)
}

async fn metrics(State(replica): State<Arc<Replica>>) -> String {
    use std::fmt::Write;
    let mut out = replica.mirror.metrics().render();
    let r = replica.status().await;
    let mut gauge = |name: &str, help: &str, value: Option<i64>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    };
    gauge(
        "aptgate_replica_seq_applied",
        "The manifest sequence number served.",
        r.seq_applied,
    );
    gauge(
        "aptgate_replica_seq_seen",
        "The newest manifest sequence number seen at the parent.",
        r.seq_seen,
    );
    gauge(
        "aptgate_replica_blobs_missing",
        "Packages the served indices list that are not stored yet.",
        Some(r.blobs_missing as i64),
    );
    gauge(
        "aptgate_replica_bytes_missing",
        "Bytes of the packages not stored yet.",
        Some(r.bytes_missing as i64),
    );
    gauge(
        "aptgate_replica_valid_until_headroom_seconds",
        "Seconds until the first served InRelease expires.",
        r.valid_until_headroom_secs,
    );
    gauge(
        "aptgate_replica_last_success_timestamp_seconds",
        "When the last sync attempt succeeded.",
        r.last_success_at,
    );
    gauge(
        "aptgate_replica_last_error_timestamp_seconds",
        "When the last sync attempt failed.",
        r.last_error.as_ref().map(|e| e.at),
    );
    out
}

// ---- the parent side, for child replicas ---------------------------------------------------

/// A child replica's token: one of `[replica] child_token_sha256`.
fn child(replica: &Replica, headers: &HeaderMap) -> Result<(), ApiError> {
    let digest =
        crate::canonical::bearer_sha256(headers).ok_or_else(crate::canonical::unauthorized)?;
    if replica
        .config
        .child_token_sha256
        .iter()
        .any(|known| known.eq_ignore_ascii_case(&digest))
    {
        Ok(())
    } else {
        Err(crate::canonical::unauthorized())
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    after: Option<i64>,
    wait: Option<u64>,
}

fn nothing_applied() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_synced",
        "this replica has not completed a sync yet",
    )
}

/// The canonical's signed manifest, unchanged, with this replica's hop in the path.
async fn child_manifest(
    State(replica): State<Arc<Replica>>,
    headers: HeaderMap,
    Query(q): Query<WaitQuery>,
) -> Result<Json<ManifestEnvelope>, ApiError> {
    child(&replica, &headers)?;
    if let Some(after) = q.after {
        let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
        let mut seq = replica.applied_seq.subscribe();
        let _ = tokio::time::timeout(wait, seq.wait_for(|s| *s > after)).await;
    }
    let applied = replica.applied().ok_or_else(nothing_applied)?;
    let signed = replica
        .read_text(&applied.manifest_blob)
        .await
        .map_err(|_| nothing_applied())?;
    Ok(Json(ManifestEnvelope {
        signed,
        path: applied.path.clone(),
    }))
}

async fn child_keys(
    State(replica): State<Arc<Replica>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    child(&replica, &headers)?;
    let applied = replica.applied().ok_or_else(nothing_applied)?;
    let text = replica
        .read_text(&applied.keys.sha256)
        .await
        .map_err(|_| nothing_applied())?;
    Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], text).into_response())
}

#[derive(Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

async fn child_blob(
    State(replica): State<Arc<Replica>>,
    Path(hex): Path<String>,
    Query(q): Query<SizeQuery>,
    request: Request,
) -> Response {
    if let Err(e) = child(&replica, request.headers()) {
        return e.into_response();
    }
    let Ok(digest) = Sha256::from_hex(&hex) else {
        return MirrorError::BadRequest(format!("{hex:?} is not a sha256 digest")).into_response();
    };
    let what = format!("blobs/sha256/{hex}");
    let resolved = match q.size {
        // Without a size the download could not be checked for length: only stored blobs.
        None if !replica.mirror.store().contains(&digest) => {
            Err(MirrorError::NotFound { what: what.clone() })
        }
        size => replica.resolve_blob(digest, size.unwrap_or(0)).await,
    };
    respond(
        &replica.mirror,
        resolved,
        request,
        &what,
        "public, max-age=31536000, immutable",
    )
    .await
}

/// Many blobs for a child, from what this replica stores (the child fetches the rest one by
/// one, which fetches them here from the parent).
async fn child_blob_batch(
    State(replica): State<Arc<Replica>>,
    request: Request,
) -> Result<Response, ApiError> {
    child(&replica, request.headers())?;
    let batch = crate::canonical::batch_body(request).await?;
    Ok(crate::batch::respond(replica.mirror.store().clone(), batch))
}

/// A child's report, passed up to this replica's parent; the parent's refusal (a bad name,
/// too many children) is passed back down as it was given, so the child sees why.
async fn child_status(
    State(replica): State<Arc<Replica>>,
    headers: HeaderMap,
    Json(report): Json<ReplicaReport>,
) -> Result<Response, ApiError> {
    child(&replica, &headers)?;
    match replica.post_report(&report).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(super::report::NotPosted::Refused { status, body }) => {
            tracing::warn!(child = %report.name, status, answer = %body, "the parent refused a child replica's report");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(e @ super::report::NotPosted::Unreachable(_)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "parent_unreachable",
            format!("cannot pass the report up: {e}"),
        )),
    }
}
