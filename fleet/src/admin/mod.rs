//! The fleet's admin routes under `/api/v1/fleet/`. They join the channels' admin table
//! (`aptgate_channels::api::routes`), so the same bearer-token guard runs before any of them
//! and the OpenAPI document lists them. Every change is audited with the actor
//! (`X-Aptgate-Actor`) and the comment given.

mod commands;
mod hosts;
mod impact;
mod profiles;
mod queue;
mod rollout;
mod rules;
mod tokens;

use crate::error::FleetError;
use crate::store::audit;
use crate::Fleet;
use aptgate_channels::api::{authorize, endpoint, ApiError, Endpoint};
use aptgate_channels::catalog::{AuditAction, NewAuditEntry};
use aptgate_channels::{now, Actor, Channels};
use axum::extract::FromRef;
use axum::http::{HeaderMap, Method};
use axum::Json;
use serde_json::Value;
use std::sync::Arc;

type ApiResult = Result<Json<Value>, ApiError>;

/// Every fleet admin route (all behind the admin token).
pub fn endpoints<S>() -> Vec<Endpoint<S>>
where
    S: Clone + Send + Sync + 'static,
    Arc<Fleet>: FromRef<S>,
    Arc<Channels>: FromRef<S>,
{
    use Method as M;
    vec![
        endpoint(M::POST, "/api/v1/fleet/tokens", tokens::create, "Create an enrollment token ({\"labels\"?: {k: v}, \"uses\"?, \"expires\"?: \"7d\", \"manual_approval\"?, \"comment\"?}); the secret is in this answer only"),
        endpoint(M::GET, "/api/v1/fleet/tokens", tokens::list, "Enrollment tokens (never their secrets)"),
        endpoint(M::POST, "/api/v1/fleet/tokens/{id}/revoke", tokens::revoke, "Revoke an enrollment token ({\"comment\"?})"),
        endpoint(M::GET, "/api/v1/fleet/hosts", hosts::list, "Hosts with status, flags, channel, last check-in, pending counts (?selector=k=v,…)"),
        endpoint(M::GET, "/api/v1/fleet/hosts/{host}", hosts::show, "One host: labels with origin, channel, mirror, facts, apt lists, reboot, inventory, pending updates, open commands"),
        endpoint(M::POST, "/api/v1/fleet/hosts/{host}/revoke", hosts::revoke, "Revoke a host: its next request is refused ({\"comment\"?})"),
        endpoint(M::POST, "/api/v1/fleet/hosts/{host}/accept", hosts::accept, "Accept a pending host ({\"comment\"?})"),
        endpoint(M::POST, "/api/v1/fleet/hosts/{host}/labels", hosts::label, "Set or remove admin labels ({\"set\"?: [\"k=v\"], \"remove\"?: [\"k\"], \"comment\"?}); admin labels win over the agent's"),
        endpoint(M::GET, "/api/v1/fleet/rules", rules::list, "Assignment rules, configured and created through the API"),
        endpoint(M::POST, "/api/v1/fleet/rules", rules::add, "Add an assignment rule ({\"name\", \"selector\", \"channel\", \"mirror\"?, \"priority\"?, \"disable_other_sources\"?, \"comment\"?})"),
        endpoint(M::DELETE, "/api/v1/fleet/rules/{name}", rules::remove, "Remove an assignment rule created through the API (?comment=)"),
        endpoint(M::POST, "/api/v1/fleet/commands", commands::queue, "Queue a command for a host or the hosts a selector matches ({\"host\"|\"selector\", \"kind\": install|upgrade|remove|refresh-sources|report, \"packages\"?, \"comment\"?})"),
        endpoint(M::GET, "/api/v1/fleet/commands", commands::list, "Commands, newest first, with status, exit code and output (?host=&limit=)"),
        endpoint(M::POST, "/api/v1/fleet/poke", commands::poke, "Make the hosts a selector matches check in now ({\"selector\", \"comment\"?})"),
        endpoint(M::GET, "/api/v1/fleet/pending", queue::pending, "The fleet queue: updates awaiting approval and available now, grouped by package and versions, with host counts (?selector=)"),
        endpoint(M::POST, "/api/v1/fleet/approve", queue::approve, "Approve versions: a selective promotion into the channel from the one it promotes from ({\"channel\", \"packages\": [\"name=version\"], \"comment\"?})"),
        endpoint(M::GET, "/api/v1/fleet/profiles", profiles::list, "Package profiles: selector, packages wanted present (with a version pattern) or absent, priority"),
        endpoint(M::POST, "/api/v1/fleet/profiles", profiles::add, "Add a package profile ({\"name\", \"selector\", \"packages\": [{\"name\", \"state\": \"present\"|\"absent\", \"version\"?: \"2.10-*\"}], \"priority\"?, \"comment\"?})"),
        endpoint(M::DELETE, "/api/v1/fleet/profiles/{name}", profiles::remove, "Remove a package profile (?comment=); what it installed stays"),
        endpoint(M::GET, "/api/v1/fleet/compliance", profiles::compliance, "Compliance per profile, from the hosts' inventories: compliant hosts, the others with what is wrong, hosts no profile covers (?selector=)"),
        endpoint(M::POST, "/api/v1/fleet/decline", queue::decline, "Decline versions: hidden from the queue until a newer one appears ({\"channel\", \"packages\": [\"name[:arch]=version\"], \"comment\"?})"),
        endpoint(M::GET, "/api/v1/rollout/groups", rollout::list, "Rollout groups: selector, max_concurrent, failure budget, windows, deadlines, paused, origin (config or api)"),
        endpoint(M::POST, "/api/v1/rollout/groups", rollout::create, "Create a rollout group ({\"name\", \"selector\"?, \"max_concurrent\"?: 2 | \"25%\", \"failure_budget\"?, \"windows\"?: [{\"days\", \"start\", \"end\", \"time_zone\"}], \"reboot_grace_secs\"?, \"heartbeat_deadline_secs\"?, \"expire_stuck\"?, \"paused\"?, \"comment\"?})"),
        endpoint(M::GET, "/api/v1/rollout/groups/{name}", rollout::status, "A group's wave: settings, window open, hosts done, in progress (state, since), failed, stuck, waiting (position)"),
        endpoint(M::DELETE, "/api/v1/rollout/groups/{name}", rollout::delete, "Delete a rollout group created through the API, with no slot held (?comment=)"),
        endpoint(M::POST, "/api/v1/rollout/groups/{name}/pause", rollout::pause, "Pause a group: no new leases ({\"comment\"?})"),
        endpoint(M::POST, "/api/v1/rollout/groups/{name}/resume", rollout::resume, "Resume a group and start a new wave: earlier failures no longer count ({\"comment\"?})"),
        endpoint(M::POST, "/api/v1/rollout/hosts/{host}/release", rollout::release, "Release the slots a host holds (failed, stuck or in progress); its agent's next report is refused ({\"comment\"?})"),
        endpoint(M::POST, "/api/v1/fleet/impact", impact::impact, "What a move would do, changing nothing: the channel's diff and, from inventories, upgrades per package and host ({\"channel\", \"snapshot\"} or {\"promote\": {\"from\", \"to\", \"only\"?}})"),
    ]
}

/// Who acts (the admin token is checked again).
fn actor(fleet: &Fleet, headers: &HeaderMap, comment: Option<String>) -> Result<Actor, ApiError> {
    authorize(&fleet.channels, headers, comment)
}

fn entry(
    actor: &Actor,
    action: AuditAction,
    channel: Option<String>,
    summary: Value,
) -> NewAuditEntry {
    NewAuditEntry {
        at: now(),
        actor: actor.name.clone(),
        action,
        channel,
        from_snapshot: None,
        to_snapshot: None,
        comment: actor.comment.clone(),
        summary: Some(summary.to_string()),
    }
}

/// `?comment=` on a DELETE: why, for the audit log.
#[derive(serde::Deserialize, Default)]
pub(super) struct CommentQuery {
    pub comment: Option<String>,
}

/// Appends one audit entry on its own.
async fn audit_alone(fleet: &Fleet, e: &NewAuditEntry) -> Result<(), FleetError> {
    let mut conn = fleet
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::error::db("acquire"))?;
    audit(&mut conn, e).await
}

fn to_json<T: serde::Serialize>(value: &T) -> ApiResult {
    Ok(Json(
        serde_json::to_value(value).expect("API values serialize"),
    ))
}

/// A host id as the API takes it (`h-` and 16 hex digits).
fn check_host_id(id: &str) -> Result<(), FleetError> {
    let ok = id.len() == 18
        && id.starts_with("h-")
        && id[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(unknown_host(id))
    }
}

fn unknown_host(id: &str) -> FleetError {
    FleetError::not_found(
        "unknown_host",
        format!("no host {id:?}\nhint: `aptgate host list` shows the hosts"),
    )
}
