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
    /// Details are logged, never sent to the client.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl MirrorError {
    pub fn internal(e: impl Into<BoxError>) -> Self {
        Self::Internal(e.into())
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
        (status, axum::Json(body)).into_response()
    }
}
