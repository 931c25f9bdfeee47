//! The lease: acquire (a counting semaphore per group, hosts served in the order they first
//! asked) and holder reports (fenced, forward-only transitions). Each runs in one transaction
//! that locks the group's row first.

use super::group::{group_of, Group};
use super::{audit_transition, parse_state};
use crate::error::{db, FleetError, Result};
use crate::store::{HostRow, LeaseRow, Store};
use crate::Fleet;
use aptgate_agent::protocol::rollout::{
    HolderState, HookResult, LeaseAcquire, LeaseAnswer, LeaseHolder, LeaseReport,
    LeaseReportAnswer, WaitReason,
};
use aptgate_channels::now;
use axum::http::StatusCode;

/// The longest run id, step and detail kept.
const MAX_RUN_ID: usize = 64;
const MAX_STEP: usize = 64;
const MAX_DETAIL: usize = 4096;
/// Hooks kept per report, and the output kept of each (the agent sends up to 64 KiB).
const MAX_HOOKS: usize = 64;
const MAX_HOOK_OUTPUT: usize = 4096;

/// A host that stopped asking this long ago loses its place in line.
pub(crate) fn waiter_ttl(retry_secs: u64) -> i64 {
    i64::try_from(retry_secs.saturating_mul(4).max(300)).unwrap_or(i64::MAX)
}

fn holding(state: HolderState) -> bool {
    state != HolderState::Released
}

/// Whether an agent may move a lease from `from` to `to`: forward along acquired → updating →
/// rebooting → verifying → released (steps may be skipped; the same state is a heartbeat), or
/// to `failed` from any step. A `stuck` holder that speaks again resumes. `failed` and
/// `released` are final for the agent; nobody but the server reports `stuck`.
pub fn allowed(from: HolderState, to: HolderState) -> bool {
    use HolderState::*;
    let rank = |s: HolderState| match s {
        Acquired => 0,
        Updating => 1,
        Rebooting => 2,
        Verifying => 3,
        Released => 4,
        Failed | Stuck => 5,
    };
    match (from, to) {
        (_, Stuck) => false,
        (Failed, Failed) | (Released, Released) => true,
        (Failed | Released, _) => false,
        (Stuck, _) => true,
        (_, Failed) => true,
        (from, to) => rank(to) >= rank(from),
    }
}

fn check_run_id(run: &str) -> Result<()> {
    if run.is_empty()
        || run.len() > MAX_RUN_ID
        || !run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FleetError::bad_request(
            "bad_request",
            "invalid run_id\nhint: 1–64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    Ok(())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FleetError::bad_request(
            "bad_request",
            format!("{what} too long or with control characters"),
        ));
    }
    Ok(())
}

fn stale_fence(message: String) -> FleetError {
    FleetError::new(StatusCode::CONFLICT, "stale_fence", message)
}

pub(crate) fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl Fleet {
    pub(crate) fn check_active_host(host: &HostRow) -> Result<()> {
        if host.status != "active" {
            return Err(FleetError::forbidden(
                "not_active",
                format!(
                    "host {} is {}; only active hosts take leases\nhint: `aptgate host accept {}`",
                    host.id, host.status, host.id
                ),
            ));
        }
        Ok(())
    }

    pub(crate) async fn acquire_lease(
        &self,
        host: &HostRow,
        req: &LeaseAcquire,
    ) -> Result<LeaseAnswer> {
        Self::check_active_host(host)?;
        check_run_id(&req.run_id)?;
        if let Some(s) = &req.snapshot {
            check_text("snapshot", s, 128)?;
        }
        let now = now();
        // Read outside the transaction: the group a host is in, and its size.
        let groups = self.rollout_groups().await?;
        let labels = self.labels_of(&host.id).await?;
        let mut tx = self.store.begin().await.map_err(db("begin"))?;
        if let Some(mut lease) = Store::lease(&mut tx, &host.id, &req.run_id).await? {
            let state = parse_state(&lease.state).unwrap_or(HolderState::Failed);
            if holding(state)
                && Store::lock_group(&mut tx, &lease.group_name)
                    .await?
                    .is_some()
            {
                // Asked again for the same run: the same slot and fence.
                lease.last_seen = now;
                Store::update_lease(&mut tx, &lease).await?;
                tx.commit().await.map_err(db("commit"))?;
                return Ok(LeaseAnswer::Granted {
                    group: lease.group_name,
                    fence: lease.fence,
                    state,
                });
            }
        }
        let Some(group) = group_of(&groups, &labels) else {
            Store::drop_waiter(&mut tx, &host.id).await?;
            tx.commit().await.map_err(db("commit"))?;
            return Ok(LeaseAnswer::NotRequired);
        };
        let size = if matches!(
            group.max_concurrent,
            aptgate_config::MaxConcurrent::Percent(_)
        ) {
            self.group_size(&groups, &group.name).await?
        } else {
            0
        };
        let Some(row) = Store::lock_group(&mut tx, &group.name).await? else {
            // Deleted since it was read.
            tx.commit().await.map_err(db("commit"))?;
            return Ok(LeaseAnswer::NotRequired);
        };
        let group = Group::from_row(&row)?;
        self.sweep_stuck(&mut tx, &group, now).await?;
        // Another run of this host holding a slot: a failed one keeps it until an admin
        // releases it; any other was abandoned (the agent lost its run) and hands it over.
        for old in Store::host_holdings(&mut tx, &host.id).await? {
            if old.state == "failed" {
                return Err(FleetError::new(
                    StatusCode::CONFLICT,
                    "lease_failed",
                    format!(
                        "run {} of host {} failed in group {} and keeps its slot\nhint: fix the \
                         host, then `aptgate rollout release {}`",
                        old.run_id, host.id, old.group_name, host.id
                    ),
                ));
            }
            let from = old.state.clone();
            let old = LeaseRow {
                state: "released".into(),
                since: now,
                released_at: Some(now),
                released_by: Some("superseded".into()),
                detail: Some(format!("superseded by run {}", req.run_id)),
                ..old
            };
            Store::update_lease(&mut tx, &old).await?;
            audit_transition(&mut tx, "server", &old, Some(&from), None, now).await?;
        }
        let waiter = Store::touch_waiter(&mut tx, &group.name, &host.id, &req.run_id, now).await?;
        let ttl = waiter_ttl(self.rollout.retry_secs);
        Store::prune_waiters(&mut tx, now - 4 * ttl).await?;
        let line = Store::waiters(&mut tx, &group.name, now - ttl).await?;
        let position = line
            .iter()
            .position(|w| w.host_id == waiter.host_id)
            .map_or(line.len() + 1, |i| i + 1);
        let holders = Store::holders(&mut tx, &group.name).await?;
        let slots = group.max_concurrent.slots(size) as usize;
        let (open, opens_at) = group.window(now);
        let reason = if group.paused {
            Some(WaitReason::Paused)
        } else if Store::failures_since(&mut tx, &group.name, group.wave_started_at).await?
            >= i64::from(group.failure_budget)
        {
            Some(WaitReason::FailureBudgetSpent)
        } else if !open {
            Some(WaitReason::OutsideWindow)
        } else if position > slots.saturating_sub(holders.len()) {
            Some(WaitReason::Full)
        } else {
            None
        };
        if let Some(reason) = reason {
            tx.commit().await.map_err(db("commit"))?;
            let retry = match (reason, opens_at) {
                (WaitReason::OutsideWindow, Some(at)) => u64::try_from(at - now)
                    .unwrap_or(1)
                    .clamp(1, self.rollout.retry_secs.max(1) * 20),
                _ => self.rollout.retry_secs.max(1),
            };
            return Ok(LeaseAnswer::Wait {
                group: group.name.clone(),
                reason,
                holders: self.holder_views(&holders).await?,
                position: u32::try_from(position).unwrap_or(u32::MAX),
                retry_after_secs: retry,
                window_opens_at: opens_at.filter(|_| reason == WaitReason::OutsideWindow),
            });
        }
        let fence = Store::next_fence(&mut tx, &group.name).await?;
        let lease = LeaseRow {
            host_id: host.id.clone(),
            run_id: req.run_id.clone(),
            group_name: group.name.clone(),
            fence,
            state: HolderState::Acquired.as_str().into(),
            step: "acquire".into(),
            detail: None,
            snapshot: req.snapshot.clone(),
            hooks: "[]".into(),
            acquired_at: now,
            since: now,
            last_seen: now,
            failed_at: None,
            released_at: None,
            released_by: None,
        };
        Store::put_lease(&mut tx, &lease).await?;
        Store::drop_waiter(&mut tx, &host.id).await?;
        audit_transition(
            &mut tx,
            &format!("host:{}", host.id),
            &lease,
            None,
            None,
            now,
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(LeaseAnswer::Granted {
            group: group.name,
            fence,
            state: HolderState::Acquired,
        })
    }

    /// The holders as a waiting agent sees them.
    pub(crate) async fn holder_views(&self, holders: &[LeaseRow]) -> Result<Vec<LeaseHolder>> {
        let mut out = Vec::with_capacity(holders.len());
        for h in holders {
            out.push(LeaseHolder {
                host_id: h.host_id.clone(),
                hostname: self.hostname_of(&h.host_id).await?,
                state: parse_state(&h.state).unwrap_or(HolderState::Failed),
                since: h.since,
            });
        }
        Ok(out)
    }

    pub(crate) async fn hostname_of(&self, host: &str) -> Result<String> {
        Ok(self
            .store
            .host(host)
            .await?
            .and_then(|h| {
                serde_json::from_str::<aptgate_agent::protocol::Facts>(&h.facts)
                    .ok()
                    .map(|f| f.hostname)
            })
            .unwrap_or_default())
    }

    pub(crate) async fn report_lease(
        &self,
        host: &HostRow,
        req: &LeaseReport,
    ) -> Result<LeaseReportAnswer> {
        check_run_id(&req.run_id)?;
        check_text("step", &req.step, MAX_STEP)?;
        if req.hooks.len() > MAX_HOOKS {
            return Err(FleetError::bad_request(
                "bad_request",
                "too many hooks in one report",
            ));
        }
        for h in &req.hooks {
            check_text("hook dir", &h.dir, 64)?;
            check_text("hook name", &h.name, 255)?;
        }
        let now = now();
        let mut tx = self.store.begin().await.map_err(db("begin"))?;
        let not_held = || {
            stale_fence(format!(
                "run {} of host {} holds no lease with fence {}\nhint: the slot was released \
                 (by an admin, or expired); acquire again",
                req.run_id, host.id, req.fence
            ))
        };
        let Some(found) = Store::lease(&mut tx, &host.id, &req.run_id).await? else {
            return Err(not_held());
        };
        if Store::lock_group(&mut tx, &found.group_name)
            .await?
            .is_none()
        {
            return Err(not_held());
        }
        // Read again under the lock: a concurrent release may have changed it.
        let lease = Store::lease(&mut tx, &host.id, &req.run_id)
            .await?
            .ok_or_else(not_held)?;
        let from = parse_state(&lease.state).unwrap_or(HolderState::Failed);
        let by_agent = lease.released_by.as_deref() == Some("agent");
        if lease.fence != req.fence || (from == HolderState::Released && !by_agent) {
            return Err(not_held());
        }
        if !allowed(from, req.state) {
            return Err(FleetError::new(
                StatusCode::CONFLICT,
                "bad_transition",
                format!(
                    "a lease cannot go from {} to {}\nhint: acquired → updating → rebooting → \
                     verifying → released, or failed",
                    from.as_str(),
                    req.state.as_str()
                ),
            ));
        }
        let to = req.state;
        let mut next = LeaseRow {
            state: to.as_str().into(),
            last_seen: now,
            ..lease.clone()
        };
        if !req.step.is_empty() {
            next.step = req.step.clone();
        }
        if let Some(d) = &req.detail {
            next.detail = Some(cut(d, MAX_DETAIL));
        }
        if !req.hooks.is_empty() {
            next.hooks = hooks_json(&req.hooks);
        }
        if to != from {
            next.since = now;
            if to == HolderState::Failed {
                next.failed_at = Some(now);
            }
            if to == HolderState::Released {
                next.released_at = Some(now);
                next.released_by = Some("agent".into());
            }
        }
        Store::update_lease(&mut tx, &next).await?;
        if to != from {
            audit_transition(
                &mut tx,
                &format!("host:{}", host.id),
                &next,
                Some(from.as_str()),
                None,
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        if from == HolderState::Stuck {
            // Spoke again: no longer stuck; recount.
            let mut tx = self.store.begin().await.map_err(db("begin"))?;
            if let Some(row) = Store::lock_group(&mut tx, &lease.group_name).await? {
                self.sweep_stuck(&mut tx, &Group::from_row(&row)?, now)
                    .await?;
            }
            tx.commit().await.map_err(db("commit"))?;
        }
        Ok(LeaseReportAnswer { state: to })
    }
}

/// Hook results as kept with the lease: outputs cut to their tail's last few KiB.
fn hooks_json(hooks: &[HookResult]) -> String {
    let kept: Vec<HookResult> = hooks
        .iter()
        .map(|h| {
            let mut start = h.output.len().saturating_sub(MAX_HOOK_OUTPUT);
            while !h.output.is_char_boundary(start) {
                start += 1;
            }
            HookResult {
                output: h.output[start..].to_owned(),
                ..h.clone()
            }
        })
        .collect();
    serde_json::to_string(&kept).expect("hooks serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use HolderState::*;

    #[test]
    fn transitions_go_forward_or_fail_and_final_states_stay() {
        for (from, to) in [
            (Acquired, Updating),
            (Acquired, Acquired),
            (Updating, Rebooting),
            (Updating, Verifying),
            (Rebooting, Verifying),
            (Verifying, Released),
            (Updating, Failed),
            (Rebooting, Failed),
            (Stuck, Verifying),
            (Stuck, Failed),
            (Failed, Failed),
            (Released, Released),
        ] {
            assert!(allowed(from, to), "{from:?} → {to:?}");
        }
        for (from, to) in [
            (Updating, Acquired),
            (Verifying, Rebooting),
            (Failed, Updating),
            (Failed, Released),
            (Released, Updating),
            (Released, Failed),
            (Updating, Stuck),
            (Stuck, Stuck),
        ] {
            assert!(!allowed(from, to), "{from:?} → {to:?}");
        }
    }

    #[test]
    fn run_ids_are_short_plain_text() {
        assert!(check_run_id(&"a".repeat(32)).is_ok());
        for bad in ["", "a b", "a/b", &"a".repeat(65)] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
    }
}
