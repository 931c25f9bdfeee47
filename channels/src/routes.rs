//! HTTP routes: every channel as a plain apt repository under `/channels/<channel>/`, and the
//! signing keys at `/keys/<name>.asc`.

use crate::{Channels, ChannelsError};
use aptgate_config::ChannelName;
use aptgate_mirror::path::MirrorPath;
use aptgate_mirror::routes::{cache_control, respond};
use aptgate_mirror::{Mirror, MirrorError, Resolved, Sha256};
use axum::extract::{FromRef, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Channels>: FromRef<S>,
    Arc<Mirror>: FromRef<S>,
{
    Router::new()
        .route("/channels/", get(list))
        .route("/channels/{channel}/{*path}", get(serve))
        .route(
            "/channels/{channel}/snapshots/{snapshot}/{*path}",
            get(serve_snapshot),
        )
        .route("/keys/{file}", get(key))
}

/// A plain-text list of channels with the apt line for each.
async fn list(State(channels): State<Arc<Channels>>, request: Request) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("HOST:PORT");
    let mut out = format!(
        "# aptgate channels: one apt line each (key: http://{host}/keys/{}.asc)\n",
        channels.key_name()
    );
    for c in channels.channel_configs().await {
        let suites = match channels.served(c.name.as_str()).await {
            Ok(served) => served
                .publication
                .suites
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => "(not published yet)".into(),
        };
        out.push_str(&format!(
            "deb [signed-by=/etc/apt/keyrings/{}.asc] http://{host}/channels/{} SUITE COMPONENTS    # suites: {suites}\n",
            channels.key_name(),
            c.name
        ));
    }
    out
}

async fn key(State(channels): State<Arc<Channels>>, Path(file): Path<String>) -> Response {
    if file != format!("{}.asc", channels.key_name()) {
        return (StatusCode::NOT_FOUND, "no such key\n").into_response();
    }
    match channels.public_keys() {
        Ok(armored) => ([(header::CONTENT_TYPE, "application/pgp-keys")], armored).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the public keys");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the public keys\n",
            )
                .into_response()
        }
    }
}

/// A snapshot from the channel's history, as the channel published it: what apt's
/// `Snapshots:` field points at (`apt update --snapshot <id>`).
async fn serve_snapshot(
    State(channels): State<Arc<Channels>>,
    State(mirror): State<Arc<Mirror>>,
    Path((channel, snapshot, path)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    serve_from(channels, mirror, channel, Some(snapshot), path, request).await
}

async fn serve(
    State(channels): State<Arc<Channels>>,
    State(mirror): State<Arc<Mirror>>,
    Path((channel, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve_from(channels, mirror, channel, None, path, request).await
}

async fn serve_from(
    channels: Arc<Channels>,
    mirror: Arc<Mirror>,
    channel: String,
    snapshot: Option<String>,
    path: String,
    request: Request,
) -> Response {
    let Ok(channel) = channel.parse::<ChannelName>() else {
        return not_found(&path);
    };
    let path = match MirrorPath::try_from(path) {
        Ok(p) => p,
        Err(e) => return MirrorError::BadRequest(e.to_string()).into_response(),
    };
    let resolved = resolve(
        &channels,
        &mirror,
        channel.as_str(),
        snapshot.as_deref(),
        &path,
    )
    .await;
    let resolved = match resolved {
        Ok(Some(r)) => Ok(r),
        Ok(None) => return not_found(path.as_str()),
        Err(
            ChannelsError::UnknownChannel { .. }
            | ChannelsError::Unpublished(_)
            | ChannelsError::UnknownSnapshot(_),
        ) => return not_found(path.as_str()),
        Err(e) => {
            let error = e.into_mirror_error(path.as_str());
            if let MirrorError::Internal(e) = &error {
                tracing::error!(channel = %channel, path = %path.as_str(), error = %e, "cannot serve");
            }
            Err(error)
        }
    };
    // A channel's Release can change twice within a second (two promotions), which
    // `Last-Modified` cannot express: apt revalidating with `If-Modified-Since` would be told
    // 304 and keep the old one. Release files go without dates; apt fetches them whole.
    let release_file = matches!(
        path.segments().last(),
        Some("InRelease" | "Release" | "Release.gpg")
    );
    let mut request = request;
    if release_file {
        request.headers_mut().remove(header::IF_MODIFIED_SINCE);
        request.headers_mut().remove(header::IF_RANGE);
    }
    let mut response = respond(
        &mirror,
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

fn not_found(path: &str) -> Response {
    MirrorError::NotFound {
        what: path.to_owned(),
    }
    .into_response()
}

async fn resolve(
    channels: &Channels,
    mirror: &Arc<Mirror>,
    channel: &str,
    snapshot: Option<&str>,
    path: &MirrorPath,
) -> Result<Option<Resolved>, ChannelsError> {
    let served = match snapshot {
        Some(id) => channels.served_snapshot(channel, id).await?,
        None => channels.served(channel).await?,
    };
    let blob = |digest: Sha256| {
        Some(Resolved::Blob {
            digest,
            stale: false,
        })
    };
    let segments: Vec<&str> = path.segments().collect();
    match segments.as_slice() {
        ["dists", suite, file @ ("InRelease" | "Release" | "Release.gpg")] => {
            let Some(signed) = served.publication.suites.get(*suite) else {
                return Ok(None);
            };
            Ok(blob(match *file {
                "InRelease" => signed.in_release.sha256,
                "Release" => signed.release.sha256,
                _ => signed.release_gpg.sha256,
            }))
        }
        ["dists", suite, component, arch_dir, "by-hash", "SHA256", hex] => {
            let key = format!("{component}/{arch_dir}");
            let published = served.publication.suites.contains_key(*suite)
                && served
                    .manifest
                    .suites
                    .get(*suite)
                    .is_some_and(|s| s.indices.contains_key(&key));
            let Ok(digest) = Sha256::from_hex(hex) else {
                return Ok(None);
            };
            if published && channels.by_hash_allowed(channel, &served, &digest).await {
                Ok(blob(digest))
            } else {
                Ok(None)
            }
        }
        ["dists", suite, component, arch_dir, file] => {
            if !served.publication.suites.contains_key(*suite) {
                return Ok(None);
            }
            let key = format!("{component}/{arch_dir}");
            let files = served
                .manifest
                .suites
                .get(*suite)
                .and_then(|s| s.indices.get(&key));
            Ok(files
                .and_then(|f| f.files().find(|(name, _)| name == file))
                .and_then(|(_, b)| blob(b.sha256)))
        }
        ["pool", ..] => {
            let Some((digest, size)) = channels.pool_file(&served, path.as_str()).await? else {
                return Ok(None);
            };
            if mirror.store().contains(&digest) {
                return Ok(blob(digest));
            }
            // Not stored yet (retain = "used"): fetched once, verified, stored.
            channels
                .fetch_pool_file(path.as_str(), digest, size)
                .await
                .map(Some)
        }
        _ => Ok(None),
    }
}
