//! The admin API's error answer: an HTTP status, a stable machine code and a message (internal
//! details are logged, never sent).

use crate::ChannelsError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: status, stable code, message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ChannelsError> for ApiError {
    fn from(e: ChannelsError) -> Self {
        let code = e.code();
        let status = match code {
            "unknown_channel" | "unknown_snapshot" | "unknown_source" | "unknown_key" => {
                StatusCode::NOT_FOUND
            }
            "refused" | "unpublished" | "conflict" | "upload_conflict" => StatusCode::CONFLICT,
            "bad_upload" => StatusCode::BAD_REQUEST,
            "upload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "snapshot_deleted" => StatusCode::GONE,
            "upstream" | "fetch_failed" => StatusCode::BAD_GATEWAY,
            "bad_index" | "bad_key" => StatusCode::UNPROCESSABLE_ENTITY,
            "catalog_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "storage_full" => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "admin request failed");
        }
        if status == StatusCode::INSUFFICIENT_STORAGE {
            // The error names temp files; the client needs to know what to do.
            tracing::error!(error = %e, "admin request failed: no space left");
            return Self::new(
                status,
                code,
                "no space left to store what this change writes; nothing changed\nhint: free \
                 space on the file system of aptgate's data_dir (or the database's), e.g. with \
                 `aptgate gc`; no restart is needed",
            );
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Internal details go to the log, not to the client.
            tracing::error!(error = %e, "admin request failed");
            return Self::new(status, code, "internal error; see the server log");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = aptgate_mirror::error::json_error(
            self.status,
            &json!({ "code": self.code, "message": self.message }),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // The database is down for now; clients may retry.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}
