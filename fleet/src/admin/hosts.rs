//! Hosts: list (with a selector), show, revoke, accept, admin labels.

use super::tokens::CommentBody;
use super::*;
use crate::assignment::pick;
use crate::error::db;
use crate::selector::{check_label, parse_label, Selector};
use crate::store::{effective, HostRow, LabelOrigin, Store};
use aptgate_agent::protocol::{Facts, Labels, RebootState};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    selector: Option<String>,
}

fn facts(h: &HostRow) -> Facts {
    serde_json::from_str(&h.facts).unwrap_or_default()
}

pub(super) async fn list(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let selector = Selector::parse(q.selector.as_deref().unwrap_or(""))?;
    let mut labels = fleet.store.all_labels().await?;
    let rules = fleet.rules().await?;
    let hosts: Vec<(HostRow, Labels)> = fleet
        .store
        .hosts()
        .await?
        .into_iter()
        .map(|h| {
            let l = effective(&labels.remove(&h.id).unwrap_or_default());
            (h, l)
        })
        .filter(|(_, l)| selector.matches(l))
        .collect();
    let refs: Vec<(&HostRow, &Labels)> = hosts.iter().map(|(h, l)| (h, l)).collect();
    let pending = fleet.pending_of_hosts(&refs).await?;
    let open: HashMap<String, i64> = fleet
        .store
        .open_command_counts()
        .await?
        .into_iter()
        .collect();
    let out: Vec<Value> = hosts
        .iter()
        .map(|(h, l)| {
            let p = pending.get(&h.id).map(|(_, p)| p);
            json!({
                "id": h.id,
                "hostname": facts(h).hostname,
                "status": h.status,
                "flagged": h.flagged,
                "channel": pick(&rules, l).map(|r| r.channel.clone()),
                "labels": l,
                "last_seen": h.last_seen,
                "available": p.map(|p| p.available.len()),
                "awaiting": p.map(|p| p.awaiting.len()),
                "open_commands": open.get(&h.id).copied().unwrap_or(0),
            })
        })
        .collect();
    to_json(&out)
}

async fn host(fleet: &Fleet, id: &str) -> Result<HostRow, FleetError> {
    check_host_id(id)?;
    fleet.store.host(id).await?.ok_or_else(|| unknown_host(id))
}

pub(super) async fn show(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let h = host(&fleet, &id).await?;
    let rows = fleet.store.host_labels(&h.id).await?;
    let labels = effective(&rows);
    let rules = fleet.rules().await?;
    let rule = pick(&rules, &labels);
    let facts = facts(&h);
    let lists: Vec<String> = serde_json::from_str(&h.lists).unwrap_or_default();
    let reboot: RebootState = serde_json::from_str(&h.reboot).unwrap_or_default();
    let pending = fleet.host_pending(&h, &labels).await?;
    let inventory = match &h.inventory_digest {
        Some(d) => json!({"digest": d, "packages": fleet.store.inventory_size(d).await?}),
        None => Value::Null,
    };
    let commands: Vec<_> = fleet
        .store
        .commands(Some(&h.id), 50)
        .await?
        .into_iter()
        .filter(|c| c.status == "queued" || c.status == "sent")
        .collect();
    // Where the host fetches from: its rule's mirrors in order, then this server.
    let server_url = rule.map(|_| match fleet.config.public_url.as_str() {
        "" => "(this server, as the host reaches it)".to_owned(),
        url => url.to_owned(),
    });
    let mirrors = rule.map(|r| r.mirrors.clone()).unwrap_or_default();
    Ok(Json(json!({
        "id": h.id,
        "hostname": facts.hostname,
        "status": h.status,
        "flagged": h.flagged,
        "labels": rows.iter().map(|r| json!({"key": r.key, "value": r.value, "origin": r.origin})).collect::<Vec<_>>(),
        "effective_labels": labels,
        "rule": rule.map(|r| r.name.clone()),
        "channel": rule.map(|r| r.channel.clone()),
        "server_url": server_url,
        "mirrors": mirrors,
        "enrolled_at": h.enrolled_at,
        "last_seen": h.last_seen,
        "agent_version": h.agent_version,
        "os": facts.os_release.pretty_name,
        "kernel": facts.kernel,
        "architectures": facts.architectures,
        "applied_sources_rev": h.applied_sources_rev,
        "lists": lists,
        "reboot": reboot,
        "inventory": inventory,
        "pending": pending.as_deref(),
        "open_commands": commands,
    })))
}

async fn set_status(
    fleet: &Fleet,
    headers: &HeaderMap,
    id: &str,
    comment: Option<String>,
    to: &str,
) -> ApiResult {
    let actor = actor(fleet, headers, comment)?;
    let h = host(fleet, id).await?;
    if to == "active" && h.status != "pending" {
        return Err(FleetError::conflict(format!("host {id} is {}, not pending", h.status)).into());
    }
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    Store::set_status(&mut tx, id, to, now()).await?;
    let what = if to == "active" {
        "accepted"
    } else {
        "revoked"
    };
    audit(
        &mut tx,
        &entry(
            &actor,
            AuditAction::Host,
            None,
            json!({what: id, "was": h.status}),
        ),
    )
    .await?;
    tx.commit().await.map_err(db("commit"))?;
    if let Some(rev) = fleet.store.host_rev(id).await? {
        fleet.notify_waits(&[(id.to_owned(), rev)]);
    }
    Ok(Json(json!({"host": id, "status": to})))
}

pub(super) async fn revoke(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    set_status(
        &fleet,
        &headers,
        &id,
        body.and_then(|b| b.0.comment),
        "revoked",
    )
    .await
}

pub(super) async fn accept(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<CommentBody>>,
) -> ApiResult {
    set_status(
        &fleet,
        &headers,
        &id,
        body.and_then(|b| b.0.comment),
        "active",
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LabelBody {
    #[serde(default)]
    set: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
    comment: Option<String>,
}

pub(super) async fn label(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<LabelBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    host(&fleet, &id).await?;
    let set = body
        .set
        .iter()
        .map(|l| parse_label(l))
        .collect::<Result<Vec<_>, _>>()?;
    for k in &body.remove {
        check_label(k, "x")?;
    }
    if set.is_empty() && body.remove.is_empty() {
        return Err(FleetError::bad_request("bad_request", "nothing to set or remove").into());
    }
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    for (k, v) in &set {
        Store::set_label(&mut tx, &id, LabelOrigin::Admin, k, v).await?;
    }
    for k in &body.remove {
        Store::remove_label(&mut tx, &id, LabelOrigin::Admin, k).await?;
    }
    let revs = Fleet::raise_revs(&mut tx, std::slice::from_ref(&id)).await?;
    let summary = json!({"host": id, "set": body.set, "remove": body.remove});
    audit(&mut tx, &entry(&actor, AuditAction::Host, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.notify_waits(&revs);
    let rows = fleet.store.host_labels(&id).await?;
    Ok(Json(json!({"host": id, "labels": effective(&rows)})))
}
