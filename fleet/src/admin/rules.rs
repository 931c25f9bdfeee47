//! Assignment rules through the API (configured ones are listed too, and cannot be removed
//! here). A change raises the revision of the hosts the rule's selector matches, so they fetch
//! their new sources at once.

use super::*;
use crate::assignment::{check_mirrors, shared_host_warnings, Rule};
use crate::error::db;
use crate::selector::Selector;
use crate::store::{mirrors_json, RuleRow, Store};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::json;

pub(super) async fn list(State(fleet): State<Arc<Fleet>>, headers: HeaderMap) -> ApiResult {
    actor(&fleet, &headers, None)?;
    to_json(fleet.reload_rules().await?.as_ref())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBody {
    name: String,
    #[serde(default)]
    selector: String,
    channel: String,
    /// One mirror (before `mirrors`); kept for clients from before `mirrors`.
    mirror: Option<String>,
    /// Replicas' base URLs, tried in this order before this server.
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    disable_other_sources: bool,
    comment: Option<String>,
}

fn check_rule_name(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_request",
            format!("invalid rule name {name:?}\nhint: 1–64 characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Raises the revision of the active hosts `selector` matches.
pub(super) async fn wake_matching(fleet: &Fleet, selector: &Selector) -> Result<(), FleetError> {
    let ids: Vec<String> = fleet
        .select_hosts(selector)
        .await?
        .into_iter()
        .map(|(h, _)| h.id)
        .collect();
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    let revs = Fleet::raise_revs(&mut tx, &ids).await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.notify_waits(&revs);
    Ok(())
}

pub(super) async fn add(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<AddBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    check_rule_name(&body.name)?;
    let selector = Selector::parse(&body.selector)?;
    let mirrors: Vec<String> = body.mirror.iter().chain(&body.mirrors).cloned().collect();
    check_mirrors(&mirrors)?;
    fleet
        .channels
        .channel_rules(&body.channel)
        .await
        .map_err(FleetError::from)?;
    if fleet.config.rules.iter().any(|r| r.name == body.name) {
        return Err(FleetError::conflict(format!(
            "rule {} is configured ([[fleet.rules]]); change it in the configuration",
            body.name
        ))
        .into());
    }
    let row = RuleRow {
        name: body.name.clone(),
        selector: selector.to_string(),
        channel: body.channel.clone(),
        mirror: mirrors.first().cloned(),
        mirrors: Some(mirrors_json(&mirrors)),
        priority: body.priority,
        disable_other_sources: i64::from(body.disable_other_sources),
        created_by: actor.name.clone(),
        created_at: now(),
    };
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if !Store::insert_rule(&mut tx, &row).await? {
        return Err(FleetError::conflict(format!("rule {} exists", body.name)).into());
    }
    let summary = json!({"added": body.name, "selector": row.selector, "channel": body.channel,
        "mirrors": mirrors, "priority": body.priority,
        "disable_other_sources": body.disable_other_sources});
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Rule,
            Some(body.channel.clone()),
            summary,
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.reload_rules().await?;
    wake_matching(&fleet, &selector).await?;
    let warnings = shared_host_warnings(fleet.server_url(host(&headers)).as_deref(), &mirrors);
    Ok(Json(json!({"added": body.name, "warnings": warnings})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MirrorsBody {
    /// The new list, in order; empty: hosts fetch from this server only.
    mirrors: Vec<String>,
    comment: Option<String>,
}

/// Replaces an API rule's mirrors (a branch office gets a replica, or loses one) without
/// unassigning its hosts in between, as a remove and add would.
pub(super) async fn set_mirrors(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<MirrorsBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    check_mirrors(&body.mirrors)?;
    let rule = api_rule(&fleet, &name, "change its mirrors in the configuration").await?;
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if !Store::set_rule_mirrors(&mut tx, &name, &body.mirrors).await? {
        return Err(FleetError::not_found("unknown_rule", format!("no rule {name:?}")).into());
    }
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Rule,
            Some(rule.channel.clone()),
            json!({"rule": name, "mirrors": body.mirrors, "previous_mirrors": rule.mirrors}),
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.reload_rules().await?;
    wake_matching(&fleet, &rule.selector).await?;
    let warnings = shared_host_warnings(fleet.server_url(host(&headers)).as_deref(), &body.mirrors);
    Ok(Json(
        json!({"rule": name, "mirrors": body.mirrors, "warnings": warnings}),
    ))
}

/// The `Host` the admin's request came to (this server's URL when `fleet.public_url` is unset).
fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::HOST)?.to_str().ok()
}

/// The API rule `name` (a configured one cannot be changed here: `config_hint` says where).
async fn api_rule(fleet: &Fleet, name: &str, config_hint: &str) -> Result<Rule, FleetError> {
    let rules = fleet.reload_rules().await?;
    let Some(rule) = rules.iter().find(|r| r.name == name) else {
        return Err(FleetError::not_found(
            "unknown_rule",
            format!("no rule {name:?}"),
        ));
    };
    if rule.origin == "config" {
        return Err(FleetError::conflict(format!(
            "rule {name} is configured ([[fleet.rules]]); {config_hint}"
        )));
    }
    Ok(rule.clone())
}

pub(super) async fn remove(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CommentQuery>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, q.comment)?;
    let rule = api_rule(&fleet, &name, "remove it from the configuration").await?;
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    Store::delete_rule(&mut tx, &name).await?;
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Rule,
            Some(rule.channel.clone()),
            json!({"removed": name}),
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.reload_rules().await?;
    wake_matching(&fleet, &rule.selector).await?;
    Ok(Json(json!({"removed": name})))
}
