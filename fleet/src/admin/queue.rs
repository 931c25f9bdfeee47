//! The fleet queue: pending updates, approvals (selective promotions) and declines.

use super::*;
use crate::error::db;
use crate::selector::Selector;
use crate::store::{Decline, Store};
use aptgate_channels::PromoteRequest;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Default)]
pub(super) struct PendingQuery {
    selector: Option<String>,
    /// Name the hosts of each group too.
    #[serde(default)]
    hosts: bool,
}

pub(super) async fn pending(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Query(q): Query<PendingQuery>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let selector = Selector::parse(q.selector.as_deref().unwrap_or(""))?;
    to_json(&fleet.fleet_pending(&selector, q.hosts).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionsBody {
    channel: String,
    packages: Vec<String>,
    comment: Option<String>,
}

/// `name[:arch]=version` → (name, arch or `any`, version).
fn parse_versioned(text: &str) -> Result<(String, String, String), FleetError> {
    let bad = || {
        FleetError::bad_request(
            "bad_package",
            format!("invalid {text:?}\nhint: write name=version (or name:arch=version)"),
        )
    };
    let (name, version) = text.split_once('=').ok_or_else(bad)?;
    let (name, arch) = name.split_once(':').unwrap_or((name, "any"));
    let valid = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    if !valid(name, b".+-") || !valid(arch, b"-") || !valid(version, b".+-:~") {
        return Err(bad());
    }
    Ok((name.to_owned(), arch.to_owned(), version.to_owned()))
}

pub(super) async fn approve(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<VersionsBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    if body.packages.is_empty() {
        return Err(
            FleetError::bad_request("bad_request", "name at least one name=version").into(),
        );
    }
    let mut from = String::new();
    let mut names = Vec::new();
    for p in &body.packages {
        let (name, _, version) = parse_versioned(p)?;
        from = fleet
            .upstream_version_check(&body.channel, &name, &version)
            .await?;
        names.push(name);
    }
    let outcome = fleet
        .channels
        .promote(
            &PromoteRequest {
                from: from.clone(),
                to: body.channel.clone(),
                only: names,
            },
            &actor,
        )
        .await
        .map_err(FleetError::from)?;
    let summary =
        json!({"approved": body.packages, "from": from, "to_snapshot": outcome.to_snapshot});
    audit_alone(
        &fleet,
        &entry(
            &actor,
            AuditAction::Approve,
            Some(body.channel.clone()),
            summary,
        ),
    )
    .await?;
    to_json(&outcome)
}

pub(super) async fn decline(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<VersionsBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    fleet
        .channels
        .channel_rules(&body.channel)
        .await
        .map_err(FleetError::from)?;
    let parsed = body
        .packages
        .iter()
        .map(|p| parse_versioned(p))
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err(
            FleetError::bad_request("bad_request", "name at least one name=version").into(),
        );
    }
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    for (name, architecture, version) in parsed {
        Store::insert_decline(
            &mut tx,
            &Decline {
                channel: body.channel.clone(),
                name,
                architecture,
                version,
                actor: actor.name.clone(),
                comment: actor.comment.clone(),
                at: now(),
            },
        )
        .await?;
    }
    let summary = json!({"declined": body.packages});
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Decline,
            Some(body.channel.clone()),
            summary,
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(
        json!({"declined": body.packages, "channel": body.channel}),
    ))
}
