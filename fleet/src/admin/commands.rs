//! Commands for hosts (queued, sent at their next check-in — which a poke makes immediate)
//! and pokes.

use super::*;
use crate::error::db;
use crate::selector::Selector;
use crate::store::Store;
use aptgate_agent::protocol::CommandKind;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueBody {
    host: Option<String>,
    selector: Option<String>,
    kind: CommandKind,
    #[serde(default)]
    packages: Vec<String>,
    comment: Option<String>,
}

/// A package argument apt accepts: `name`, `name=version`, `name:arch`; never an option.
fn check_package_arg(p: &str) -> Result<(), FleetError> {
    let ok = !p.is_empty()
        && p.len() <= 256
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-:~_=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_package",
            format!("invalid package {p:?}\nhint: name, name=version or name:arch"),
        ))
    }
}

/// The active hosts a `host` or `selector` names.
async fn targets(
    fleet: &Fleet,
    host: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<String>, FleetError> {
    match (host, selector) {
        (Some(id), None) => {
            check_host_id(id)?;
            let h = fleet
                .store
                .host(id)
                .await?
                .ok_or_else(|| unknown_host(id))?;
            if h.status != "active" {
                return Err(FleetError::conflict(format!("host {id} is {}", h.status)));
            }
            Ok(vec![h.id])
        }
        (None, Some(s)) => Ok(fleet
            .select_hosts(&Selector::parse(s)?)
            .await?
            .into_iter()
            .map(|(h, _)| h.id)
            .collect()),
        _ => Err(FleetError::bad_request(
            "bad_request",
            "name either a host or a selector (\"\" selects every host)",
        )),
    }
}

pub(super) async fn queue(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<QueueBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    for p in &body.packages {
        check_package_arg(p)?;
    }
    let needs_packages = matches!(body.kind, CommandKind::Install | CommandKind::Remove);
    if needs_packages && body.packages.is_empty() {
        return Err(
            FleetError::bad_request("bad_request", "install and remove need packages").into(),
        );
    }
    let ids = targets(&fleet, body.host.as_deref(), body.selector.as_deref()).await?;
    let kind = serde_json::to_value(body.kind).expect("kind serializes");
    let kind = kind.as_str().expect("kind is a string");
    let packages = serde_json::to_string(&body.packages).expect("packages serialize");
    let now = now();
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    let mut commands = Vec::with_capacity(ids.len());
    for id in &ids {
        let command = Store::queue_command(&mut tx, id, kind, &packages, &actor.name, now).await?;
        commands.push(json!({"host": id, "command": command}));
    }
    let revs = Fleet::raise_revs(&mut tx, &ids).await?;
    let summary = json!({"kind": kind, "packages": body.packages, "host": body.host,
        "selector": body.selector, "hosts": ids.len()});
    audit(&mut tx, &entry(&actor, AuditAction::Command, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.notify_waits(&revs);
    Ok(Json(json!({"queued": commands})))
}

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    host: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn list(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    if let Some(h) = &q.host {
        check_host_id(h)?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let commands = fleet.store.commands(q.host.as_deref(), limit).await?;
    let out: Vec<Value> = commands
        .into_iter()
        .map(|c| {
            let packages: Value = serde_json::from_str(&c.packages).unwrap_or(Value::Null);
            json!({"id": c.id, "host": c.host_id, "kind": c.kind, "packages": packages,
                "status": c.status, "created_by": c.created_by, "created_at": c.created_at,
                "sent_at": c.sent_at, "exit_code": c.exit_code, "output": c.output,
                "finished_at": c.finished_at})
        })
        .collect();
    to_json(&out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PokeBody {
    selector: String,
    comment: Option<String>,
}

pub(super) async fn poke(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<PokeBody>,
) -> ApiResult {
    let actor = actor(&fleet, &headers, body.comment.clone())?;
    let ids = targets(&fleet, None, Some(&body.selector)).await?;
    let mut tx = fleet.store.begin().await.map_err(db("begin"))?;
    let revs = Fleet::raise_revs(&mut tx, &ids).await?;
    let summary = json!({"poke": body.selector, "hosts": ids.len()});
    audit(&mut tx, &entry(&actor, AuditAction::Command, None, summary)).await?;
    tx.commit().await.map_err(db("commit"))?;
    fleet.notify_waits(&revs);
    Ok(Json(json!({"poked": ids})))
}
