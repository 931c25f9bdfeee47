//! Package profiles through the API, and compliance. A change raises the revision of the hosts
//! the profile's selector matches, so their agents converge at once.

use super::rules::wake_matching;
use super::*;
use crate::error::db;
use crate::profiles::{check_packages, check_profile_name, ProfilePackage};
use crate::selector::Selector;
use crate::store::{ProfileRow, Store};
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

pub(super) async fn list(State(fleet): State<Arc<Fleet>>, headers: HeaderMap) -> ApiResult {
    actor(&fleet, &headers, None)?;
    to_json(fleet.reload_profiles().await?.as_ref())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBody {
    name: String,
    #[serde(default)]
    selector: String,
    packages: Vec<ProfilePackage>,
    #[serde(default)]
    priority: i64,
    comment: Option<String>,
}

/// Takes the body as bytes so a malformed one is a 400 with serde's reason, like every other
/// refusal of profile input.
pub(super) async fn add(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let body: AddBody = serde_json::from_slice(&body).map_err(|e| {
        FleetError::bad_request(
            "bad_profile",
            format!(
                "invalid profile: {e}\nhint: {{\"name\", \"selector\", \"packages\": [{{\"name\", \
                 \"state\": \"present\"|\"absent\", \"version\"?}}], \"priority\"?, \"comment\"?}}"
            ),
        )
    })?;
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    check_profile_name(&body.name)?;
    let selector = Selector::parse(&body.selector)?;
    check_packages(&body.packages)?;
    let row = ProfileRow {
        name: body.name.clone(),
        selector: selector.to_string(),
        packages: serde_json::to_string(&body.packages).expect("packages serialize"),
        priority: body.priority,
        created_by: actor.name.clone(),
        created_at: now(),
    };
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if !Store::insert_profile(&mut tx, &row).await? {
        return Err(FleetError::conflict(format!(
            "profile {} exists\nhint: remove it first (`aptgate fleet profile remove {}`)",
            body.name, body.name
        ))
        .into());
    }
    let summary = json!({"added": body.name, "selector": row.selector,
        "packages": body.packages, "priority": body.priority});
    audit(&mut tx, &entry(&actor, AuditAction::Profile, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.reload_profiles().await?;
    wake_matching(&fleet, &selector).await?;
    Ok(Json(json!({"added": body.name})))
}

pub(super) async fn remove(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CommentQuery>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, q.comment)?;
    let profiles = fleet.reload_profiles().await?;
    let Some(profile) = profiles.iter().find(|p| p.name == name) else {
        return Err(FleetError::not_found(
            "unknown_profile",
            format!("no profile {name:?}\nhint: `aptgate fleet profile list` shows them"),
        )
        .into());
    };
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    Store::delete_profile(&mut tx, &name).await?;
    audit(
        &mut tx,
        &entry(&actor, AuditAction::Profile, None, json!({"removed": name})),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.reload_profiles().await?;
    wake_matching(&fleet, &profile.selector).await?;
    Ok(Json(json!({"removed": name})))
}

#[derive(Deserialize, Default)]
pub(super) struct ComplianceQuery {
    selector: Option<String>,
}

pub(super) async fn compliance(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Query(q): Query<ComplianceQuery>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let selector = Selector::parse(q.selector.as_deref().unwrap_or(""))?;
    to_json(&fleet.compliance(&selector).await?)
}
