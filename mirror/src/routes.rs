//! HTTP routes: `GET`/`HEAD /mirror/<source>/<path>` and the source list at `/mirror/`.

use crate::error::MirrorError;
use crate::mirror::{Mirror, Resolved};
use crate::path::MirrorPath;
use crate::serve_blob;
use axum::body::Body;
use axum::extract::{FromRef, Path, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Mirror>: FromRef<S>,
{
    Router::new()
        .route("/mirror/", get(list_sources))
        .route("/mirror/{source}/{*path}", get(serve))
}

/// A plain-text list of sources with the apt line for each.
async fn list_sources(State(mirror): State<Arc<Mirror>>, request: Request) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("HOST:PORT");
    let mut sources: Vec<_> = mirror.source_configs().collect();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::from("# aptgate mirror sources: one apt line each\n");
    for s in sources {
        out.push_str(&format!(
            "deb http://{host}/mirror/{} {} {}    # upstream {}\n",
            s.name,
            s.suites.first().map(String::as_str).unwrap_or("SUITE"),
            s.components.join(" "),
            s.url.as_ref().map(url::Url::as_str).unwrap_or_default()
        ));
    }
    out
}

async fn serve(
    State(mirror): State<Arc<Mirror>>,
    Path((source, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let path = match MirrorPath::try_from(path) {
        Ok(p) => p,
        Err(e) => return MirrorError::BadRequest(e.to_string()).into_response(),
    };
    let cache_control = cache_control(path.as_str());
    let resolved = mirror.resolve(&source, &path).await;
    respond(&mirror, resolved, request, path.as_str(), cache_control).await
}

/// Turns what a request resolved to into the response apt gets: blobs with HEAD, `Range`
/// and conditional requests; downloads streamed; errors as statuses. Shared with the
/// channel routes, which resolve their paths differently but serve blobs the same way.
pub async fn respond(
    mirror: &Mirror,
    resolved: Result<Resolved, MirrorError>,
    request: Request,
    path: &str,
    cache_control: &'static str,
) -> Response {
    let mut response = match resolved {
        Ok(Resolved::Blob { digest, stale }) => {
            let blob = mirror.blob_path(&digest);
            let served = serve_blob::serve(
                &blob,
                &digest,
                is_immutable(path),
                request.method(),
                request.headers(),
            );
            let mut r = match served {
                Some(r) => r,
                // Unreadable (say, removed since it was resolved) or not matching its digest:
                // ServeFile answers as before.
                None => ServeFile::new(blob)
                    .oneshot(request)
                    .await
                    .map(|r| r.map(Body::new))
                    .unwrap_or_else(|e| match e {}),
            };
            let outcome = if stale { "stale" } else { "hit" };
            r.headers_mut()
                .insert("x-aptgate-cache", HeaderValue::from_static(outcome));
            if stale {
                r.headers_mut().insert(
                    header::WARNING,
                    HeaderValue::from_static("110 aptgate \"Response is Stale\""),
                );
            }
            r
        }
        Ok(Resolved::Streaming(flight)) => {
            if let Err(failure) = flight.started().await {
                return failure.into_error(path).into_response();
            }
            let size = flight.size;
            let body = if request.method() == Method::HEAD {
                Body::empty()
            } else {
                Body::from_stream(flight.body())
            };
            let mut r = Response::new(body);
            let headers = r.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert("x-aptgate-cache", HeaderValue::from_static("miss"));
            r
        }
        Ok(Resolved::PassThrough(flight)) => {
            let head = match flight.started().await {
                Ok(head) => head.clone(),
                Err(e) => return e.into_response(),
            };
            let body = if request.method() == Method::HEAD {
                Body::empty()
            } else {
                Body::from_stream(flight.body())
            };
            let mut r = Response::new(body);
            r.headers_mut().extend(head);
            r.headers_mut()
                .insert("x-aptgate-cache", HeaderValue::from_static("bypass"));
            return r;
        }
        Err(e) => return e.into_response(),
    };
    if response.status().is_success() {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        if let Some(len) = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            mirror
                .metrics()
                .bytes_served
                .fetch_add(len, Ordering::Relaxed);
        }
    }
    response
}

/// Whether the URL always names the same bytes: by-hash and pool files never change (a new
/// version has a new name); release files and indices by their stable name do.
pub fn is_immutable(p: &str) -> bool {
    p.starts_with("pool/") || p.contains("/by-hash/")
}

/// Release files change; by-hash and pool files never do.
pub fn cache_control(p: &str) -> &'static str {
    if p.ends_with("/InRelease") || p.ends_with("/Release") || p.ends_with("/Release.gpg") {
        "no-cache"
    } else if is_immutable(p) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    }
}
