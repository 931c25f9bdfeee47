//! The fleet's errors: each carries the HTTP status and stable code it is answered with
//! (agents and the CLI read the code; `{"code", "message"}` like the admin API).

use aptgate_channels::api::ApiError;
use aptgate_channels::ChannelsError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request is refused as sent: status, code, message (with a `hint:` line where useful).
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("fleet storage: {what}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Channels(#[from] ChannelsError),
    #[error("cannot bring the fleet tables up to date")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T, E = FleetError> = std::result::Result<T, E>;

impl FleetError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused { code, .. } => code,
            Self::Db { .. } | Self::Migrate(_) => "catalog",
            Self::Config(_) => "config",
            Self::Channels(e) => e.code(),
        }
    }
}

/// Maps a database error, naming what was being done.
pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> FleetError {
    move |source| FleetError::Db { what, source }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Refused {
                status,
                code,
                message,
            } => ApiError::new(status, code, message),
            FleetError::Channels(e) => e.into(),
            FleetError::Db { what, ref source }
                if aptgate_channels::catalog::is_unavailable(source) =>
            {
                // Many agents at once (reconnecting after a restart) can exhaust the pool: a
                // 503 with Retry-After makes them back off instead of failing.
                tracing::warn!(error = %e, "fleet request: catalog unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "catalog_unavailable",
                    format!(
                        "the catalog database is busy or cannot be reached ({what})\nhint: \
                         retry later; agents back off by themselves"
                    ),
                )
            }
            FleetError::Db { .. } | FleetError::Migrate(_) | FleetError::Config(_) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "fleet request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "catalog",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl IntoResponse for FleetError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
