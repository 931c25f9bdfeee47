//! The mirror's errors and how they look to HTTP clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Anything that stops a mirror request. Each variant maps to a status and a stable code;
/// the message is safe to show a client (no local paths).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("unknown source {name:?}")]
    UnknownSource { name: String, known: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    #[error("{what} not found upstream")]
    NotFound { what: String },
    #[error("dists/{suite}/{rest} is not listed in the verified Release of {suite}")]
    NotListed { suite: String, rest: String },
    #[error("{path}: upstream's index lists it in a stanza aptgate refused ({why})")]
    RefusedStanza { path: String, why: String },
    #[error("upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("upstream {url} failed verification: {reason}")]
    Verification { url: String, reason: String },
    /// The file system holding the store is full: nothing was stored.
    #[error("no space left to store {what}")]
    StorageFull { what: String },
    /// The channels' catalog (a database) cannot be reached, and the request needs it.
    #[error("the catalog database cannot be reached")]
    CatalogUnavailable,
    /// Details are logged, never sent to the client.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl MirrorError {
    pub fn internal(e: impl Into<BoxError>) -> Self {
        Self::Internal(e.into())
    }

    /// A store failure while storing `what`: a full file system says so (507), anything else
    /// is internal.
    pub fn from_store(what: &str, e: crate::store::StoreError) -> Self {
        if e.is_storage_full() {
            tracing::error!(what, error = %e, "the store's file system is full");
            Self::StorageFull {
                what: what.to_owned(),
            }
        } else {
            Self::internal(e)
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownSource { .. } => (StatusCode::NOT_FOUND, "unknown_source"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotListed { .. } => (StatusCode::NOT_FOUND, "not_listed"),
            Self::RefusedStanza { .. } => (StatusCode::FORBIDDEN, "refused_stanza"),
            Self::Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            Self::Verification { .. } => (StatusCode::BAD_GATEWAY, "upstream_unverified"),
            Self::StorageFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            Self::CatalogUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "catalog_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Self::UnknownSource { known, .. } => Some(format!(
                "configured sources: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )),
            Self::Verification { .. } => Some(
                "check the source's keyring in the aptgate configuration, and the upstream itself"
                    .into(),
            ),
            Self::RefusedStanza { .. } => Some(
                "the stanza cannot be verified or names an unsafe path; the server log says which, \
                 and the metric aptgate_mirror_refused_stanzas_total counts them"
                    .into(),
            ),
            Self::StorageFull { .. } => Some(
                "the file system of aptgate's data_dir is full; free space there (`aptgate gc`), \
                 no restart needed"
                    .into(),
            ),
            Self::CatalogUnavailable => Some(
                "aptgate reconnects by itself once its database answers again; try later".into(),
            ),
            _ => None,
        }
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(e) = &self {
            tracing::error!(error = %e, "internal error");
        }
        let mut body = serde_json::json!({ "code": code, "message": self.to_string() });
        if let Some(hint) = self.hint() {
            body["hint"] = hint.into();
        }
        let mut response = json_error(status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

/// An error answer as JSON that no browser renders as markup: `<`, `>` and `&` (which can come
/// from a request path echoed in a message) are written as `\u003c`, `\u003e`, `\u0026` — the
/// same JSON value — and `nosniff` stops content sniffing.
pub fn json_error(status: StatusCode, body: &serde_json::Value) -> Response {
    let text = body
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    (
        status,
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}
