//! Rolling upgrades, server side: rollout groups and their leases (the agent's half is
//! `aptgate_agent::protocol::rollout`).
//!
//! A group is a counting semaphore over the hosts its selector matches. A host belongs to the
//! first group, by name, whose selector matches its effective labels. A lease is one
//! (host, run)'s slot with a fence (a number that only grows per group) and a state:
//! `acquired → updating → rebooting → verifying → released`, or `failed` from any of them.
//! Slots in use are every lease not `released`: a `failed` host keeps its slot (fail closed)
//! and so does a `stuck` one (silent past its deadline) until an admin releases it, unless the
//! group opts into `expire_stuck`. The wave stops once `failure_budget` hosts failed since it
//! began (its last resume, or its creation).
//!
//! | file | what it does |
//! |---|---|
//! | `window.rs` | maintenance windows: days, hours, time zone |
//! | `group.rs` | groups: parsed settings, configured groups copied into the catalog, membership |
//! | `lease.rs` | acquire (the semaphore, the line of waiters) and holder reports (fence, transitions) |
//! | `stuck.rs` | silent holders become `stuck`; the background check and the metric |
//! | `plan.rs` | a run's plan: the snapshot the host's channel points at now |
//! | `status.rs` | a group's wave as admins see it |

mod group;
mod lease;
mod plan;
mod status;
mod stuck;
pub mod window;

pub use group::{check_group_name, Group};
pub(crate) use status::unknown_group;
pub use status::{GroupStatus, HolderView};
pub(crate) use stuck::StuckGauge;

use crate::store::audit;
use crate::store::LeaseRow;
use aptgate_agent::protocol::rollout::HolderState;
use aptgate_channels::catalog::{AuditAction, NewAuditEntry};

pub(crate) fn parse_state(text: &str) -> Option<HolderState> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// Appends the audit entry of one lease transition (`action = lease`).
pub(crate) async fn audit_transition(
    conn: &mut sqlx::AnyConnection,
    actor: &str,
    lease: &LeaseRow,
    from: Option<&str>,
    comment: Option<String>,
    now: i64,
) -> crate::Result<()> {
    let summary = serde_json::json!({
        "group": lease.group_name,
        "host": lease.host_id,
        "run": lease.run_id,
        "fence": lease.fence,
        "from": from,
        "to": lease.state,
        "step": lease.step,
        "detail": lease.detail,
        "snapshot": lease.snapshot,
    });
    audit(
        conn,
        &NewAuditEntry {
            at: now,
            actor: actor.to_owned(),
            action: AuditAction::Lease,
            channel: None,
            from_snapshot: None,
            to_snapshot: lease.snapshot.clone(),
            comment,
            summary: Some(summary.to_string()),
        },
    )
    .await
}
