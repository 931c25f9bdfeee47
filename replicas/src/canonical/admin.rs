//! Admin routes (behind the admin token, in the channels' route table and OpenAPI document):
//! replica tokens and the replica table; and the replicas' lines in `/metrics`.

use super::Canonical;
use crate::protocol::ReplicaReport;
use aptgate_channels::api::{authorize, endpoint, ApiError, Endpoint};
use aptgate_channels::catalog::{AuditAction, NewAuditEntry};
use aptgate_channels::{now, Channels};
use aptgate_config::ChannelName;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// A replica that has not reported for this long is `silent`.
pub const SILENT_AFTER_SECS: i64 = 300;
/// A replica whose served `InRelease` expires sooner than this is `expiring`.
pub const EXPIRING_WITHIN_SECS: i64 = 48 * 3600;

pub fn endpoints<S>() -> Vec<Endpoint<S>>
where
    S: Clone + Send + Sync + 'static,
    Arc<Canonical>: FromRef<S>,
    Arc<Channels>: FromRef<S>,
{
    use Method as M;
    vec![
        endpoint(M::POST, "/api/v1/replicas/tokens", create_token, "Create a replica token ({\"name\", \"comment\"?}); the secret is in this answer only"),
        endpoint(M::POST, "/api/v1/replicas/{name}/revoke", revoke_token, "Revoke a replica's token ({\"comment\"?}): its next request is refused"),
        endpoint(M::GET, "/api/v1/replicas", list, "Every replica with its last report, lag, and state: current, behind, silent, expiring, never_reported"),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    comment: Option<String>,
}

async fn create_token(
    State(canonical): State<Arc<Canonical>>,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = authorize(&canonical.channels, &headers, body.comment.clone())?;
    // Replica names appear in paths, metrics labels and logs: the channel name rules fit.
    if body.name.parse::<ChannelName>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{:?} is not a valid replica name (letters, digits, '.', '_', '-')",
                body.name
            ),
        ));
    }
    let secret = format!(
        "aptgate-replica-{}",
        hex::encode(rand::random::<[u8; 24]>())
    );
    let secret_sha256 = aptgate_mirror::Sha256::of(secret.as_bytes()).to_hex();
    let at = now();
    if !canonical
        .store
        .insert_token(&body.name, &secret_sha256, &actor.name, at)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a replica named {} exists", body.name),
        ));
    }
    canonical
        .channels
        .catalog()
        .append_audit(&NewAuditEntry {
            at,
            actor: actor.name.clone(),
            action: AuditAction::Token,
            channel: None,
            from_snapshot: None,
            to_snapshot: None,
            comment: actor.comment.clone(),
            summary: Some(json!({ "replica_token": body.name }).to_string()),
        })
        .await
        .map_err(|e| ApiError::from(aptgate_channels::ChannelsError::from(e)))?;
    Ok(Json(json!({ "name": body.name, "token": secret })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    comment: Option<String>,
}

async fn revoke_token(
    State(canonical): State<Arc<Canonical>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CommentBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = authorize(&canonical.channels, &headers, body.comment)?;
    if !canonical.store.revoke_token(&name).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no replica named {name}"),
        ));
    }
    canonical
        .channels
        .catalog()
        .append_audit(&NewAuditEntry {
            at: now(),
            actor: actor.name.clone(),
            action: AuditAction::Token,
            channel: None,
            from_snapshot: None,
            to_snapshot: None,
            comment: actor.comment.clone(),
            summary: Some(json!({ "replica_token_revoked": name }).to_string()),
        })
        .await
        .map_err(|e| ApiError::from(aptgate_channels::ChannelsError::from(e)))?;
    Ok(Json(json!({ "name": name, "revoked": true })))
}

/// One row of the replica table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    pub name: String,
    /// When its token was created (or its first forwarded report arrived).
    pub created_at: i64,
    pub revoked: bool,
    /// `current`, `behind`, `silent`, `expiring` or `never_reported`.
    pub state: String,
    /// `now − published_at` of the first feed position the replica has not applied (0 when
    /// current).
    pub lag_seconds: i64,
    pub last_report_at: Option<i64>,
    pub report: Option<ReplicaReport>,
}

impl Canonical {
    /// Every replica with its state, as `GET /api/v1/replicas` and `/metrics` show them.
    pub async fn replica_views(&self) -> super::Result<Vec<ReplicaView>> {
        // Records the newest position even when no replica is polling (all of them down):
        // otherwise a change nobody fetched would not count as lag.
        self.polled().await?;
        let now = now();
        let mut out = Vec::new();
        for row in self.store.replicas().await? {
            let report = row
                .report
                .as_ref()
                .and_then(|(_, text)| serde_json::from_str::<ReplicaReport>(text).ok());
            let behind_since = match report.as_ref().and_then(|r| r.seq_applied) {
                Some(seq) => self.store.first_published_after(seq).await?,
                None => self.store.first_published_after(0).await?,
            };
            let lag_seconds = behind_since.map(|at| (now - at).max(0)).unwrap_or(0);
            let last_report_at = row.report.as_ref().map(|(at, _)| *at);
            let state = match (&report, last_report_at) {
                (None, _) | (_, None) => "never_reported",
                (Some(_), Some(at)) if now - at > SILENT_AFTER_SECS => "silent",
                (Some(r), _)
                    if r.valid_until_headroom_secs
                        .is_some_and(|h| h < EXPIRING_WITHIN_SECS) =>
                {
                    "expiring"
                }
                _ if behind_since.is_some() => "behind",
                _ => "current",
            };
            out.push(ReplicaView {
                name: row.name,
                created_at: row.created_at,
                revoked: row.revoked,
                state: state.into(),
                lag_seconds,
                last_report_at,
                report,
            });
        }
        Ok(out)
    }

    /// `aptgate_replica_…` lines for `/metrics` (nothing when the catalog cannot be read).
    pub async fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let Ok(views) = self.replica_views().await else {
            return String::new();
        };
        let mut out = String::new();
        let families = [
            (
                "aptgate_replica_lag_seconds",
                "Seconds since the first feed position the replica has not applied (0: current).",
            ),
            (
                "aptgate_replica_blobs_missing",
                "Packages the replica's served indices list that it has not stored yet.",
            ),
            (
                "aptgate_replica_valid_until_headroom_seconds",
                "Seconds until the first InRelease the replica serves expires.",
            ),
            (
                "aptgate_replica_up",
                "1 when the replica reported within the silence limit and is not behind.",
            ),
        ];
        for (name, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for v in &views {
                let value = match name {
                    "aptgate_replica_lag_seconds" => Some(v.lag_seconds),
                    "aptgate_replica_blobs_missing" => {
                        v.report.as_ref().map(|r| r.blobs_missing as i64)
                    }
                    "aptgate_replica_valid_until_headroom_seconds" => {
                        v.report.as_ref().and_then(|r| r.valid_until_headroom_secs)
                    }
                    _ => Some(i64::from(v.state == "current")),
                };
                if let Some(value) = value {
                    let _ = writeln!(out, "{name}{{replica=\"{}\"}} {value}", v.name);
                }
            }
        }
        out
    }
}

async fn list(
    State(canonical): State<Arc<Canonical>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&canonical.channels, &headers, None)?;
    let views = canonical.replica_views().await?;
    Ok(Json(json!({ "replicas": views })))
}
