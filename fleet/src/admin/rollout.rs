//! Rollout groups and leases through the API: groups created, listed, deleted; a group's
//! status; pause and resume (a resume starts a new wave); releasing a host's slot. Every change
//! is audited (`rollout` for groups, `lease` for a released slot).

use super::tokens::CommentBody;
use super::*;
use crate::error::db;
use crate::rollout::{audit_transition, parse_state, Group, GroupStatus};
use crate::store::{LeaseRow, Store};
use aptgate_agent::protocol::rollout::HolderState;
use aptgate_config::RolloutGroupConfig;
use axum::extract::{Path, Query, State};
use serde_json::json;

pub(super) async fn list(State(fleet): State<Arc<Fleet>>, headers: HeaderMap) -> ApiResult {
    actor(&fleet, &headers, None)?;
    to_json(&fleet.rollout_groups().await?)
}

pub(super) async fn status(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let status: GroupStatus = fleet.rollout_status(&name).await?;
    to_json(&status)
}

/// The group's settings as in `[[rollout.groups]]`, plus `comment`.
pub(super) async fn create(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> ApiResult {
    let comment = body
        .as_object_mut()
        .and_then(|o| o.remove("comment"))
        .and_then(|c| c.as_str().map(str::to_owned));
    let actor = actor(&fleet, &headers, comment)?;
    let config: RolloutGroupConfig = serde_json::from_value(body).map_err(|e| {
        FleetError::bad_request(
            "bad_request",
            format!(
                "invalid group: {e}\nhint: {{\"name\", \"selector\", \"max_concurrent\": 2 or \
                 \"25%\", \"failure_budget\", \"windows\": [{{\"days\", \"start\", \"end\", \
                 \"time_zone\"}}], \"reboot_grace_secs\", \"heartbeat_deadline_secs\", \
                 \"expire_stuck\", \"paused\"}}"
            ),
        )
    })?;
    let group = Group::from_config(&config, "api", &actor.name, now())?;
    if fleet.rollout.groups.iter().any(|g| g.name == group.name) {
        return Err(FleetError::conflict(format!(
            "group {} is configured ([[rollout.groups]]); change it in the configuration",
            group.name
        ))
        .into());
    }
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if !Store::insert_group(&mut tx, &group.to_row()).await? {
        return Err(FleetError::conflict(format!("group {} exists", group.name)).into());
    }
    let summary = json!({"group_created": group.name, "settings": group});
    audit(&mut tx, &entry(&actor, AuditAction::Rollout, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(json!({"created": group.name})))
}

pub(super) async fn delete(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CommentQuery>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, q.comment)?;
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    let Some(row) = Store::lock_group(&mut tx, &name).await? else {
        return Err(crate::rollout::unknown_group(&name).into());
    };
    if row.origin == "config" {
        return Err(FleetError::conflict(format!(
            "group {name} is configured ([[rollout.groups]]); remove it from the configuration"
        ))
        .into());
    }
    let holders = Store::holders(&mut tx, &name).await?;
    if !holders.is_empty() {
        return Err(FleetError::conflict(format!(
            "group {name} has {} slot(s) held\nhint: wait for them, or `aptgate rollout release \
             HOST` each of {}",
            holders.len(),
            holders
                .iter()
                .map(|h| h.host_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    Store::delete_group(&mut tx, &name).await?;
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Rollout,
            None,
            json!({"group_deleted": name}),
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(json!({"deleted": name})))
}

async fn set_paused(
    fleet: &Fleet,
    headers: &HeaderMap,
    name: &str,
    body: Option<Json<CommentBody>>,
    paused: bool,
) -> ApiResult {
    let comment = body.and_then(|Json(b)| b.comment);
    let actor = actor(fleet, headers, comment)?;
    let now = now();
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    if Store::lock_group(&mut tx, name).await?.is_none() {
        return Err(crate::rollout::unknown_group(name).into());
    }
    Store::set_group_paused(&mut tx, name, paused).await?;
    // A resume starts a new wave: earlier failures no longer count against the budget.
    let summary = if paused {
        json!({"group_paused": name})
    } else {
        Store::start_wave(&mut tx, name, now).await?;
        json!({"group_resumed": name, "wave_started_at": now})
    };
    audit(&mut tx, &entry(&actor, AuditAction::Rollout, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(Json(json!({"group": name, "paused": paused})))
}

pub(super) async fn pause(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    set_paused(&fleet, &headers, &name, body, true).await
}

pub(super) async fn resume(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    set_paused(&fleet, &headers, &name, body, false).await
}

/// Frees every slot the host holds (failed, stuck, or still in progress: its agent's next
/// report is then refused with `stale_fence`).
pub(super) async fn release(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(host): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    let comment = body.and_then(|Json(b)| b.comment);
    let actor = actor(&fleet, &headers, comment)?;
    check_host_id(&host)?;
    if fleet.store.host(&host).await?.is_none() {
        return Err(unknown_host(&host).into());
    }
    let now = now();
    let mut released = Vec::new();
    let held = {
        let mut conn = fleet.store.pool().acquire().await.map_err(db("acquire"))?;
        Store::host_holdings(&mut conn, &host).await?
    };
    for lease in held {
        let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
        Store::lock_group(&mut tx, &lease.group_name).await?;
        // Read again under the group's lock.
        let Some(lease) = Store::lease(&mut tx, &lease.host_id, &lease.run_id).await? else {
            continue;
        };
        let from = parse_state(&lease.state).unwrap_or(HolderState::Failed);
        if from == HolderState::Released {
            continue;
        }
        let next = LeaseRow {
            state: HolderState::Released.as_str().into(),
            since: now,
            released_at: Some(now),
            released_by: Some(actor.name.clone()),
            ..lease
        };
        Store::update_lease(&mut tx, &next).await?;
        audit_transition(
            &mut tx,
            &actor.name,
            &next,
            Some(from.as_str()),
            actor.comment.clone(),
            now,
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        released.push(json!({"group": next.group_name, "run": next.run_id,
            "fence": next.fence, "was": from.as_str()}));
    }
    if released.is_empty() {
        return Err(FleetError::conflict(format!(
            "host {host} holds no slot\nhint: `aptgate rollout status GROUP` shows who does"
        ))
        .into());
    }
    Ok(Json(json!({"host": host, "released": released})))
}
