//! Enrollment tokens: created (the secret shown once, only its sha256 kept), listed, revoked.

use super::*;
use crate::error::db;
use crate::selector::check_labels;
use crate::store::{NewToken, Store};
use aptgate_agent::protocol::Labels;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    #[serde(default)]
    labels: Labels,
    uses: Option<i64>,
    /// How long it is valid: `7d`, `12h`, `30m`.
    expires: Option<String>,
    #[serde(default)]
    manual_approval: bool,
    comment: Option<String>,
}

pub(super) async fn create(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    check_labels(&body.labels)?;
    if body.uses.is_some_and(|u| u < 1) {
        return Err(FleetError::bad_request("bad_request", "uses must be at least 1").into());
    }
    let now = now();
    let expires_at = match &body.expires {
        Some(text) => {
            let d = aptgate_config::humantime_secs::parse_duration(text)
                .map_err(|e| FleetError::bad_request("bad_request", e))?;
            Some(now + d.as_secs() as i64)
        }
        None => None,
    };
    let id = format!("t-{}", hex::encode(rand::random::<[u8; 4]>()));
    let secret = format!("aptgate-enroll-{}", hex::encode(rand::random::<[u8; 24]>()));
    let secret_sha256 = hex::encode(Sha256::digest(secret.as_bytes()));
    let labels = serde_json::to_string(&body.labels).expect("labels serialize");
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    Store::insert_token(
        &mut tx,
        &NewToken {
            id: &id,
            secret_sha256: &secret_sha256,
            labels: &labels,
            uses_left: body.uses,
            expires_at,
            manual_approval: body.manual_approval,
            comment: body.comment.as_deref(),
            created_by: &actor.name,
            created_at: now,
        },
    )
    .await?;
    let summary = json!({"created": id, "labels": body.labels, "uses": body.uses,
        "expires_at": expires_at, "manual_approval": body.manual_approval});
    audit(&mut tx, &entry(&actor, AuditAction::Token, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(json!({
        "id": id,
        "token": secret,
        "labels": body.labels,
        "uses_left": body.uses,
        "expires_at": expires_at,
        "manual_approval": body.manual_approval,
    })))
}

pub(super) async fn list(State(fleet): State<Arc<Fleet>>, headers: HeaderMap) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let tokens: Vec<Value> = fleet
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|t| {
            let labels: Value = serde_json::from_str(&t.labels).unwrap_or(Value::Null);
            json!({
                "id": t.id, "labels": labels, "uses_left": t.uses_left,
                "expires_at": t.expires_at, "manual_approval": t.manual_approval != 0,
                "comment": t.comment, "created_by": t.created_by, "created_at": t.created_at,
                "revoked": t.revoked != 0,
            })
        })
        .collect();
    to_json(&tokens)
}

#[derive(Deserialize, Default)]
pub(super) struct CommentBody {
    pub(super) comment: Option<String>,
}

pub(super) async fn revoke(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.and_then(|b| b.0.comment))?;
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if !Store::revoke_token(&mut tx, &id).await? {
        return Err(FleetError::not_found(
            "unknown_token",
            format!("no enrollment token {id:?}\nhint: `aptgate fleet token list`"),
        )
        .into());
    }
    audit(
        &mut tx,
        &entry(&actor, AuditAction::Token, None, json!({"revoked": id})),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(json!({"revoked": id})))
}
